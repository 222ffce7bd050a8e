//! Media blobs: encrypt, then hash.
//!
//! A photo or a video travels apart from its message. The sending device picks a random
//! [`BlobKey`] per blob (the caller's randomness: the engine has none) and encrypts the bytes
//! with XChaCha20-Poly1305 in the STREAM construction over fixed segments of
//! [`SEGMENT_LEN`] bytes ([`BlobSealer`]): any segment decrypts on its own, so a video can be
//! played from a range, and a truncated or reordered blob fails to decrypt. It then hashes
//! the **ciphertext** with BLAKE3 verified streaming (bao, chunk groups of
//! [`CHUNK_GROUP_LEN`]): the root hash is the blob's [`BlobId`]. The relay checks every chunk
//! group it receives against the root without knowing the key, and a downloader refuses a
//! damaged chunk group before it reads the next one ([`verify_piece`]).
//!
//! The key, the root, the sizes, the mime type and a small thumbnail travel only inside the
//! message's end-to-end encrypted body, as a [`MediaBody`]; the relay sees an opaque blob id
//! and a ciphertext length.
//!
//! Transfers move [`Piece`]s: a run of at most [`MAX_PIECE_GROUPS`] chunk groups with the
//! parent hashes from the root down, so every piece verifies alone and an upload or a
//! download resumes at any chunk group.
//!
//! # Layout
//! - this file: limits, [`BlobKey`], [`BlobDescriptor`], [`MediaBody`], sizes and ranges.
//! - [`seal`]: the segment cipher.
//! - [`verify`]: the hash tree, pieces and their verification.
//! - [`wire`]: the frames of a blob stream.

pub mod seal;
#[cfg(test)]
mod tests;
pub mod verify;
pub mod wire;

pub use bytes::Bytes;
pub use seal::{open_blob, seal_blob, BlobSealer};
pub use verify::{verify_piece, BlobTree, Piece, PieceRefused, VerifiedPiece};

use crate::ids::BlobId;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Plaintext bytes per STREAM segment (the last segment may be shorter, even empty).
pub const SEGMENT_LEN: u64 = 64 * 1024;
/// What each segment's authentication tag adds.
pub const SEGMENT_TAG_LEN: u64 = 16;
/// Ciphertext bytes of a full segment.
pub const SEALED_SEGMENT_LEN: u64 = SEGMENT_LEN + SEGMENT_TAG_LEN;
/// log2 of the BLAKE3 chunks (1 KiB) in a chunk group: 16 chunks.
pub const CHUNK_GROUP_LOG: u8 = 4;
/// Bytes of ciphertext per chunk group: the unit the relay and a downloader verify.
pub const CHUNK_GROUP_LEN: u64 = 1024 << CHUNK_GROUP_LOG;
/// Chunk groups per piece at most (1 MiB of ciphertext): bounds what a receiver buffers
/// before it has verified it.
pub const MAX_PIECE_GROUPS: u64 = 64;
/// Largest blob plaintext the format describes (STREAM's 32-bit segment counter). The
/// relay's own cap is lower (`Limits::max_blob_len`, 100 MiB by default).
pub const MAX_FORMAT_LEN: u64 = (u32::MAX as u64) * SEGMENT_LEN;
/// Largest inline thumbnail in a [`BlobDescriptor`].
pub const MAX_THUMBNAIL_LEN: usize = 8 * 1024;
/// Longest mime type in a [`BlobDescriptor`].
pub const MAX_MIME_LEN: usize = 127;
/// Media per message at most.
pub const MAX_MEDIA_PER_MESSAGE: usize = 16;
/// Version byte of an encoded [`MediaBody`].
pub const MEDIA_BODY_V1: u8 = 1;

/// Why a media operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The blob is larger than the format allows.
    #[error("blob of {len} bytes is over the format's limit of {max}")]
    TooLarge {
        /// Its plaintext length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A segment index past the blob's last segment.
    #[error("segment {index} out of range (the blob has {n_segments})")]
    NoSuchSegment {
        /// The index asked for.
        index: u64,
        /// Segments in the blob.
        n_segments: u64,
    },
    /// A segment's bytes have the wrong length for its place.
    #[error("segment {index} has {len} bytes, expected {expected}")]
    SegmentLength {
        /// Its index.
        index: u64,
        /// Bytes given.
        len: usize,
        /// Bytes its place holds.
        expected: u64,
    },
    /// A segment did not decrypt: wrong key, or damaged or moved bytes.
    #[error("segment {index} does not decrypt")]
    Decrypt {
        /// Its index.
        index: u64,
    },
    /// A byte range outside the blob, or empty.
    #[error("range {start}..{end} is not inside a blob of {len} bytes")]
    BadRange {
        /// Start asked for.
        start: u64,
        /// End asked for.
        end: u64,
        /// The blob's length.
        len: u64,
    },
    /// A piece names chunk groups outside the blob or more than [`MAX_PIECE_GROUPS`].
    #[error("piece of groups {first}+{n_groups} is not inside a blob of {groups} groups")]
    BadPiece {
        /// First group.
        first: u64,
        /// Groups in the piece.
        n_groups: u64,
        /// Groups in the blob.
        groups: u64,
    },
    /// A chunk group or a parent hash does not match the blob's root.
    #[error("chunk group {group} does not match the blob's hash")]
    Corrupt {
        /// The first group that failed (for a parent: the first group under it).
        group: u64,
    },
    /// The piece's bytes end early or run past what its groups hold.
    #[error("piece bytes are {len}, expected {expected}")]
    PieceLength {
        /// Bytes given.
        len: usize,
        /// Bytes the piece holds.
        expected: u64,
    },
    /// The hash tree could not be read or written.
    #[error("hash tree: {0}")]
    Io(String),
    /// An encoded [`MediaBody`] or [`BlobDescriptor`] is malformed or over a limit.
    #[error("media body: {0}")]
    Malformed(&'static str),
}

/// The random key of one blob. Never reused: each blob has its own (the caller draws it from
/// its randomness source), which is why the segment nonces can be fixed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct BlobKey([u8; 32]);

impl BlobKey {
    /// Wraps 32 random bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> BlobKey {
        BlobKey(bytes)
    }

    /// The raw key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for BlobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlobKey(..)")
    }
}

/// Everything a member needs to fetch, check and open a blob. It travels only inside the
/// message's encrypted body ([`MediaBody`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobDescriptor {
    /// The BLAKE3 root of the ciphertext (the blob's address at the relay).
    pub blob: BlobId,
    /// The blob's key.
    pub key: BlobKey,
    /// Plaintext length in bytes (the ciphertext length follows: [`cipher_len`]).
    pub len: u64,
    /// MIME type, e.g. `image/jpeg`.
    pub mime: String,
    /// An inline preview shown before the blob is fetched (at most [`MAX_THUMBNAIL_LEN`]).
    #[serde(with = "crate::event::serde_bytes_vec")]
    pub thumbnail: Vec<u8>,
}

impl BlobDescriptor {
    /// Checks the descriptor's limits.
    pub fn check(&self) -> Result<(), MediaError> {
        if self.len > MAX_FORMAT_LEN {
            return Err(MediaError::TooLarge {
                len: self.len,
                max: MAX_FORMAT_LEN,
            });
        }
        if self.thumbnail.len() > MAX_THUMBNAIL_LEN {
            return Err(MediaError::Malformed("thumbnail over 8 KiB"));
        }
        if self.mime.len() > MAX_MIME_LEN {
            return Err(MediaError::Malformed("mime type too long"));
        }
        Ok(())
    }

    /// The ciphertext length the relay stores.
    pub fn cipher_len(&self) -> u64 {
        cipher_len(self.len)
    }
}

/// The plaintext of a message that carries media: a caption and the blobs' descriptors.
/// Encoded as `MEDIA_BODY_V1 ‖ postcard(MediaBody)`; it is what the message's end-to-end
/// encryption seals, so the relay never sees a key, a root, a size or a mime type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaBody {
    /// The text shown with the media (may be empty).
    #[serde(with = "crate::event::serde_bytes_vec")]
    pub caption: Vec<u8>,
    /// The blobs, in order.
    pub media: Vec<BlobDescriptor>,
}

impl MediaBody {
    /// Encodes the body, checking its limits.
    pub fn encode(&self) -> Result<Vec<u8>, MediaError> {
        self.check()?;
        let mut out = vec![MEDIA_BODY_V1];
        postcard::to_io(self, &mut out).map_err(|_| MediaError::Malformed("encode"))?;
        Ok(out)
    }

    /// Decodes a body written by [`MediaBody::encode`].
    pub fn decode(bytes: &[u8]) -> Result<MediaBody, MediaError> {
        match bytes.split_first() {
            Some((&MEDIA_BODY_V1, rest)) => {
                let body: MediaBody =
                    postcard::from_bytes(rest).map_err(|_| MediaError::Malformed("layout"))?;
                body.check()?;
                Ok(body)
            }
            Some(_) => Err(MediaError::Malformed("unknown version")),
            None => Err(MediaError::Malformed("empty")),
        }
    }

    fn check(&self) -> Result<(), MediaError> {
        if self.media.len() > MAX_MEDIA_PER_MESSAGE {
            return Err(MediaError::Malformed("more than 16 media"));
        }
        self.media.iter().try_for_each(BlobDescriptor::check)
    }
}

/// Segments in a blob of `plain_len` bytes: at least one (an empty blob is one empty final
/// segment, so even it authenticates its end).
pub const fn n_segments(plain_len: u64) -> u64 {
    let n = plain_len.div_ceil(SEGMENT_LEN);
    if n == 0 {
        1
    } else {
        n
    }
}

/// Ciphertext length of a blob of `plain_len` bytes.
pub const fn cipher_len(plain_len: u64) -> u64 {
    plain_len + n_segments(plain_len) * SEGMENT_TAG_LEN
}

/// Chunk groups in a ciphertext of `cipher_len` bytes (at least one).
pub fn n_groups(cipher_len: u64) -> u64 {
    cipher_len.div_ceil(CHUNK_GROUP_LEN).max(1)
}

/// What to fetch for a plaintext byte range: the segments that hold it, the ciphertext bytes
/// of those segments, and the chunk groups that cover those bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangePlan {
    /// Segment indexes.
    pub segments: Range<u64>,
    /// Ciphertext byte range of those segments.
    pub cipher: Range<u64>,
    /// Chunk groups covering `cipher`.
    pub groups: Range<u64>,
}

/// Plans a ranged read of `plain` from a blob of `plain_len` bytes.
pub fn plan_range(plain_len: u64, plain: Range<u64>) -> Result<RangePlan, MediaError> {
    let bad = || MediaError::BadRange {
        start: plain.start,
        end: plain.end,
        len: plain_len,
    };
    if plain.start >= plain.end || plain.end > plain_len {
        return Err(bad());
    }
    let segments = plain.start / SEGMENT_LEN..plain.end.div_ceil(SEGMENT_LEN);
    let total = cipher_len(plain_len);
    let cipher =
        segments.start * SEALED_SEGMENT_LEN..(segments.end * SEALED_SEGMENT_LEN).min(total);
    let groups = cipher.start / CHUNK_GROUP_LEN..cipher.end.div_ceil(CHUNK_GROUP_LEN);
    Ok(RangePlan {
        segments,
        cipher,
        groups,
    })
}
