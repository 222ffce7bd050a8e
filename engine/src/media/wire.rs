//! The blob transfer frames: what travels on a blob stream.
//!
//! A device opens a QUIC bidirectional stream of its own for each transfer, beside the
//! connection's message stream, after the connection authenticated; a large upload then
//! never queues in front of a text message. On the stream it sends [`BlobRequest`]s and
//! reads one [`BlobReply`] per request, in order, framed like every other frame (a 4-byte
//! big-endian length, then the postcard body: [`crate::wire::encode_frame`]). A piece is at
//! most [`MAX_PIECE_GROUPS`] chunk groups (1 MiB and its parents), under
//! [`crate::wire::MAX_FRAME_LEN`].
//!
//! A piece's bytes are never copied between the network and the disk: [`put_frame`] and
//! [`piece_frame`] give a frame as two parts (the length prefix and the fields before the
//! bytes, then the bytes themselves), and [`decode_request`] and [`decode_reply`] hand a
//! piece back as a view of the frame body it arrived in. The bytes on the wire are the same
//! as [`crate::wire::encode_frame`]'s.

use super::{Piece, MAX_PIECE_GROUPS};
use crate::ids::{BlobId, ConversationId};
use crate::wire::{decode_body, Frame, WireError, FRAME_HEADER_LEN, MAX_FRAME_LEN};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Bytes of a piece's encoding at most (its groups and the parent pairs above them).
pub const MAX_PIECE_BYTES: usize =
    (MAX_PIECE_GROUPS * super::CHUNK_GROUP_LEN) as usize + MAX_PIECE_PARENTS * 64;
/// Parent pairs a piece carries at most: the 63 inside 64 groups and the two sides of the
/// path from the root (at most 2 × 34 levels for the largest blob), rounded up.
const MAX_PIECE_PARENTS: usize = 256;
/// Longest refusal detail.
pub const MAX_DETAIL_LEN: usize = 256;

/// A request on a blob stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BlobRequest {
    /// Start or resume an upload of `blob` (`len` ciphertext bytes) for `conversation`.
    /// Answered with where the relay stands ([`BlobReply::State`]); a blob the relay holds
    /// already is only referenced (a forward uploads nothing).
    Upload {
        /// The conversation whose message will reference it.
        conversation: ConversationId,
        /// Its root.
        blob: BlobId,
        /// Ciphertext bytes.
        len: u64,
    },
    /// The next piece of an upload begun on this stream.
    Put {
        /// The blob.
        blob: BlobId,
        /// The piece.
        piece: Piece,
    },
    /// Chunk groups of a blob, for a member of `conversation`.
    Fetch {
        /// A conversation that references the blob.
        conversation: ConversationId,
        /// The blob.
        blob: BlobId,
        /// The first chunk group.
        first_group: u64,
        /// Groups wanted (at most [`MAX_PIECE_GROUPS`] are sent per answer).
        n_groups: u64,
    },
    /// Reference a blob held in `from` from `to` as well (a forward).
    Attach {
        /// The blob.
        blob: BlobId,
        /// A conversation that references it, of which the device's user is a member.
        from: ConversationId,
        /// The conversation it is forwarded to.
        to: ConversationId,
    },
}

/// The relay's answer to one [`BlobRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BlobReply {
    /// Where the blob stands at the relay.
    State {
        /// Ciphertext bytes verified and held from the start.
        verified: u64,
        /// Its ciphertext length.
        len: u64,
    },
    /// Groups asked for, with their proof.
    Piece(Piece),
    /// The request was refused.
    Refused(BlobRefusal),
}

/// Why the relay refused a blob request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum BlobRefusal {
    /// Over the relay's size cap.
    #[error("blob of {len} bytes is over the relay's cap of {max}")]
    TooLarge {
        /// Ciphertext bytes.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// Over the user's quota.
    #[error("quota exceeded: {used} bytes held + {len} > {quota}")]
    OverQuota {
        /// Bytes held.
        used: u64,
        /// The blob's bytes.
        len: u64,
        /// The quota.
        quota: u64,
    },
    /// Not a member of a conversation that references the blob.
    #[error("not a member of a conversation that references this blob")]
    NotMember,
    /// The relay does not hold the blob.
    #[error("no such blob")]
    NotFound,
    /// The blob is not complete at the relay.
    #[error("blob incomplete: {verified} of {len} bytes")]
    Incomplete {
        /// Bytes held.
        verified: u64,
        /// Its length.
        len: u64,
    },
    /// A piece that does not continue the upload where it stands.
    #[error("piece at group {first}, the upload stands at {expected}")]
    OutOfOrder {
        /// The piece's first group.
        first: u64,
        /// Where the upload stands.
        expected: u64,
    },
    /// A chunk group did not verify; the groups before it were kept.
    #[error("chunk group {group} does not match the blob's hash")]
    Corrupt {
        /// The group.
        group: u64,
    },
    /// Anything else (a malformed piece, a full store, a relay fault), with a detail.
    #[error("refused: {0}")]
    Other(String),
}

impl Frame for BlobRequest {
    fn check_limits(&self) -> Result<(), WireError> {
        match self {
            BlobRequest::Put { piece, .. } if piece.bytes.len() > MAX_PIECE_BYTES => {
                Err(WireError::FieldTooLarge {
                    field: "piece",
                    len: piece.bytes.len(),
                    max: MAX_PIECE_BYTES,
                })
            }
            _ => Ok(()),
        }
    }
}

impl Frame for BlobReply {
    fn check_limits(&self) -> Result<(), WireError> {
        match self {
            BlobReply::Piece(piece) if piece.bytes.len() > MAX_PIECE_BYTES => {
                Err(WireError::FieldTooLarge {
                    field: "piece",
                    len: piece.bytes.len(),
                    max: MAX_PIECE_BYTES,
                })
            }
            BlobReply::Refused(BlobRefusal::Other(s)) if s.len() > MAX_DETAIL_LEN => {
                Err(WireError::FieldTooLarge {
                    field: "detail",
                    len: s.len(),
                    max: MAX_DETAIL_LEN,
                })
            }
            _ => Ok(()),
        }
    }
}

/// postcard's variant index of [`BlobRequest::Put`] (its first byte).
const PUT_VARIANT: u8 = 1;
/// postcard's variant index of [`BlobReply::Piece`].
const PIECE_VARIANT: u8 = 1;

/// A [`BlobRequest::Put`] frame for `piece`, as the two parts to write one after the other.
pub fn put_frame(blob: BlobId, piece: &Piece) -> Result<[Bytes; 2], WireError> {
    let empty = BlobRequest::Put {
        blob,
        piece: hollow(piece),
    };
    split_frame(&empty, &piece.bytes)
}

/// A [`BlobReply::Piece`] frame for `piece`, as the two parts to write one after the other.
pub fn piece_frame(piece: &Piece) -> Result<[Bytes; 2], WireError> {
    split_frame(&BlobReply::Piece(hollow(piece)), &piece.bytes)
}

/// Decodes a request body ([`crate::wire::decode_body`]); a `Put`'s piece is a view of
/// `body`, not a copy.
pub fn decode_request(body: Bytes) -> Result<BlobRequest, WireError> {
    if body.first() != Some(&PUT_VARIANT) {
        return decode_body(&body);
    }
    let view: PutView<'_> = exactly(&body[1..])?;
    let request = BlobRequest::Put {
        blob: view.blob,
        piece: view.piece.share(&body),
    };
    request.check_limits()?;
    Ok(request)
}

/// Decodes a reply body; a piece is a view of `body`, not a copy.
pub fn decode_reply(body: Bytes) -> Result<BlobReply, WireError> {
    if body.first() != Some(&PIECE_VARIANT) {
        return decode_body(&body);
    }
    let view: PieceView<'_> = exactly(&body[1..])?;
    let reply = BlobReply::Piece(view.share(&body));
    reply.check_limits()?;
    Ok(reply)
}

/// The piece's place without its bytes.
fn hollow(piece: &Piece) -> Piece {
    Piece {
        first_group: piece.first_group,
        n_groups: piece.n_groups,
        bytes: Bytes::new(),
    }
}

/// The length prefix and the body of `empty` (a frame whose piece is empty, last in its
/// encoding) with the piece's real length in place of its zero; then the bytes.
fn split_frame<F: Frame>(empty: &F, bytes: &Bytes) -> Result<[Bytes; 2], WireError> {
    if bytes.len() > MAX_PIECE_BYTES {
        return Err(WireError::FieldTooLarge {
            field: "piece",
            len: bytes.len(),
            max: MAX_PIECE_BYTES,
        });
    }
    let unencodable = || WireError::Malformed("unencodable frame");
    let mut head = vec![0u8; FRAME_HEADER_LEN];
    head = postcard::to_extend(empty, head).map_err(|_| unencodable())?;
    // postcard writes a byte string as a varint length then the bytes: an empty piece
    // ends the frame with one zero byte.
    if head.pop() != Some(0) {
        return Err(unencodable());
    }
    head = postcard::to_extend(&(bytes.len() as u64), head).map_err(|_| unencodable())?;
    let body_len = head.len() - FRAME_HEADER_LEN + bytes.len();
    if body_len > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge {
            len: body_len,
            max: MAX_FRAME_LEN,
        });
    }
    // body_len <= MAX_FRAME_LEN < u32::MAX.
    head[..FRAME_HEADER_LEN].copy_from_slice(&(body_len as u32).to_be_bytes());
    Ok([Bytes::from(head), bytes.clone()])
}

/// A `Put` as postcard lays it out after its variant index, the piece's bytes borrowed.
#[derive(Deserialize)]
struct PutView<'a> {
    blob: BlobId,
    #[serde(borrow)]
    piece: PieceView<'a>,
}

/// A [`Piece`] as postcard lays it out, its bytes borrowed.
#[derive(Deserialize)]
struct PieceView<'a> {
    first_group: u64,
    n_groups: u64,
    bytes: &'a [u8],
}

impl PieceView<'_> {
    /// The piece, its bytes a view of `body` (which they were borrowed from).
    fn share(&self, body: &Bytes) -> Piece {
        Piece {
            first_group: self.first_group,
            n_groups: self.n_groups,
            bytes: body.slice_ref(self.bytes),
        }
    }
}

fn exactly<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => WireError::Malformed("frame body cut short"),
        _ => WireError::Malformed("frame body"),
    })?;
    if !rest.is_empty() {
        return Err(WireError::Malformed("trailing bytes after frame"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode_body, decode_len, frame_bytes, FRAME_HEADER_LEN};

    fn round_trip<F: Frame + PartialEq + std::fmt::Debug>(f: F) {
        let bytes = frame_bytes(&f).expect("encode");
        let mut header = [0u8; FRAME_HEADER_LEN];
        header.copy_from_slice(&bytes[..FRAME_HEADER_LEN]);
        let len = decode_len(header, crate::wire::MAX_FRAME_LEN).expect("len");
        assert_eq!(len, bytes.len() - FRAME_HEADER_LEN);
        assert_eq!(
            decode_body::<F>(&bytes[FRAME_HEADER_LEN..]).expect("decode"),
            f
        );
    }

    #[test]
    fn blob_frames_round_trip_and_the_largest_piece_fits_a_frame() {
        let piece = Piece {
            first_group: 3,
            n_groups: MAX_PIECE_GROUPS,
            bytes: Bytes::from(vec![7; MAX_PIECE_BYTES]),
        };
        round_trip(BlobRequest::Put {
            blob: BlobId([1; 32]),
            piece: piece.clone(),
        });
        round_trip(BlobReply::Piece(piece));
        round_trip(BlobReply::Refused(BlobRefusal::OverQuota {
            used: 1,
            len: 2,
            quota: 3,
        }));
        round_trip(BlobRequest::Fetch {
            conversation: ConversationId([2; 16]),
            blob: BlobId([1; 32]),
            first_group: 0,
            n_groups: 4,
        });
    }

    #[test]
    fn an_oversized_piece_is_refused_by_the_decoder() {
        let f = BlobRequest::Put {
            blob: BlobId([1; 32]),
            piece: Piece {
                first_group: 0,
                n_groups: 1,
                bytes: Bytes::from(vec![0; MAX_PIECE_BYTES + 1]),
            },
        };
        let body = postcard::to_stdvec(&f).expect("encode");
        assert!(matches!(
            decode_body::<BlobRequest>(&body),
            Err(WireError::FieldTooLarge { field: "piece", .. })
        ));
    }

    /// The two-part frames are `encode_frame`'s bytes, and the sharing decoders give what
    /// `decode_body` gives, their pieces views of the body.
    #[test]
    fn piece_frames_without_copies_are_the_plain_frames() {
        for len in [0usize, 1, 127, 128, 16_384, MAX_PIECE_BYTES] {
            let piece = Piece {
                first_group: 300,
                n_groups: 5,
                bytes: Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>()),
            };
            let blob = BlobId([9; 32]);
            let put = BlobRequest::Put {
                blob,
                piece: piece.clone(),
            };
            let reply = BlobReply::Piece(piece.clone());
            for (parts, plain) in [
                (put_frame(blob, &piece).expect("put"), frame_bytes(&put)),
                (piece_frame(&piece).expect("piece"), frame_bytes(&reply)),
            ] {
                assert_eq!(parts.concat(), plain.expect("plain"), "len {len}");
            }
            let body = Bytes::from(frame_bytes(&put).expect("encode")).slice(FRAME_HEADER_LEN..);
            let got = decode_request(body.clone()).expect("decode");
            assert_eq!(got, put);
            let BlobRequest::Put { piece: p, .. } = got else {
                panic!("not a put")
            };
            if len > 0 {
                assert!(body.as_ptr_range().contains(&p.bytes.as_ptr()), "copied");
            }
            let body = Bytes::from(frame_bytes(&reply).expect("encode")).slice(FRAME_HEADER_LEN..);
            assert_eq!(decode_reply(body).expect("decode"), reply);
        }
        let other = BlobReply::State {
            verified: 3,
            len: 4,
        };
        let body = Bytes::from(frame_bytes(&other).expect("encode")).slice(FRAME_HEADER_LEN..);
        assert_eq!(decode_reply(body).expect("decode"), other);
        let mut cut = Bytes::from(
            frame_bytes(&BlobReply::Piece(Piece {
                first_group: 0,
                n_groups: 1,
                bytes: Bytes::from_static(b"abc"),
            }))
            .expect("encode"),
        )
        .slice(FRAME_HEADER_LEN..);
        cut.truncate(cut.len() - 1);
        assert!(decode_reply(cut).is_err());
    }
}
