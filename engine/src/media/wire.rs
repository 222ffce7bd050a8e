//! The blob transfer frames: what travels on a blob stream.
//!
//! A device opens a QUIC bidirectional stream of its own for each transfer, beside the
//! connection's message stream, after the connection authenticated; a large upload then
//! never queues in front of a text message. On the stream it sends [`BlobRequest`]s and
//! reads one [`BlobReply`] per request, in order, framed like every other frame (a 4-byte
//! big-endian length, then the postcard body: [`crate::wire::encode_frame`]). A piece is at
//! most [`MAX_PIECE_GROUPS`] chunk groups (1 MiB and its parents), under
//! [`crate::wire::MAX_FRAME_LEN`].

use super::{Piece, MAX_PIECE_GROUPS};
use crate::ids::{BlobId, ConversationId};
use crate::wire::{Frame, WireError};
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
            bytes: vec![7; MAX_PIECE_BYTES],
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
                bytes: vec![0; MAX_PIECE_BYTES + 1],
            },
        };
        let body = postcard::to_stdvec(&f).expect("encode");
        assert!(matches!(
            decode_body::<BlobRequest>(&body),
            Err(WireError::FieldTooLarge { field: "piece", .. })
        ));
    }
}
