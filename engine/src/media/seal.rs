//! The segment cipher: XChaCha20-Poly1305 in the STREAM construction (`StreamBE32`: a 32-bit
//! big-endian segment counter and a last-segment flag in the nonce).
//!
//! Segment `i` of a blob is `XChaCha20-Poly1305(key, nonce = prefix ‖ be32(i) ‖ last, aad =
//! "tidings/blob/v1\0" ‖ be64(plain_len))`. The counter in the nonce pins a segment to its
//! place, the flag marks the end (a blob cut after a full segment does not decrypt), and the
//! length in the associated data binds every segment to the blob's size, so a segment opens
//! alone, without its neighbours, and only at its own place in its own blob.

use super::{n_segments, BlobKey, MediaError, MAX_FORMAT_LEN, SEGMENT_LEN, SEGMENT_TAG_LEN};
use aead_stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::aead::Payload;
use chacha20poly1305::XChaCha20Poly1305;

/// The nonce prefix of every blob. Fixed, because a blob key encrypts exactly one blob.
const NONCE_PREFIX: [u8; 19] = *b"tidings/blob/v1\0\0\0\0";
const AAD_DOMAIN: &[u8] = b"tidings/blob/v1\0";

/// Encrypts and decrypts the segments of one blob, each on its own.
pub struct BlobSealer {
    stream: StreamBE32<XChaCha20Poly1305>,
    plain_len: u64,
    n_segments: u64,
    aad: [u8; AAD_DOMAIN.len() + 8],
}

impl std::fmt::Debug for BlobSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobSealer")
            .field("plain_len", &self.plain_len)
            .field("n_segments", &self.n_segments)
            .finish_non_exhaustive()
    }
}

impl BlobSealer {
    /// A sealer for a blob of `plain_len` bytes under `key`.
    pub fn new(key: &BlobKey, plain_len: u64) -> Result<BlobSealer, MediaError> {
        if plain_len > MAX_FORMAT_LEN {
            return Err(MediaError::TooLarge {
                len: plain_len,
                max: MAX_FORMAT_LEN,
            });
        }
        let stream = StreamBE32::new(key.as_bytes().into(), &NONCE_PREFIX.into());
        let mut aad = [0u8; AAD_DOMAIN.len() + 8];
        aad[..AAD_DOMAIN.len()].copy_from_slice(AAD_DOMAIN);
        aad[AAD_DOMAIN.len()..].copy_from_slice(&plain_len.to_be_bytes());
        Ok(BlobSealer {
            stream,
            plain_len,
            n_segments: n_segments(plain_len),
            aad,
        })
    }

    /// Segments in the blob.
    pub fn n_segments(&self) -> u64 {
        self.n_segments
    }

    /// Plaintext bytes of segment `index`.
    pub fn segment_len(&self, index: u64) -> Result<u64, MediaError> {
        if index >= self.n_segments {
            return Err(MediaError::NoSuchSegment {
                index,
                n_segments: self.n_segments,
            });
        }
        Ok((self.plain_len - index * SEGMENT_LEN).min(SEGMENT_LEN))
    }

    /// Encrypts segment `index` (exactly [`BlobSealer::segment_len`] bytes).
    pub fn seal_segment(&self, index: u64, plaintext: &[u8]) -> Result<Vec<u8>, MediaError> {
        let expected = self.segment_len(index)?;
        if plaintext.len() as u64 != expected {
            return Err(MediaError::SegmentLength {
                index,
                len: plaintext.len(),
                expected,
            });
        }
        let (position, last) = self.position(index)?;
        let payload = Payload {
            msg: plaintext,
            aad: &self.aad,
        };
        // Encryption fails only for a message over the cipher's limit (256 GiB): segments are
        // 64 KiB.
        self.stream
            .encrypt(position, last, payload)
            .map_err(|_| MediaError::Decrypt { index })
    }

    /// Decrypts segment `index` (its plaintext length plus the 16-byte tag).
    pub fn open_segment(&self, index: u64, ciphertext: &[u8]) -> Result<Vec<u8>, MediaError> {
        let mut buf = ciphertext.to_vec();
        self.open_segment_in_place(index, &mut buf)?;
        Ok(buf)
    }

    /// Decrypts segment `index` where it lies: `buf` holds its ciphertext and tag and is left
    /// holding its plaintext (the tag cut off). A download opens each segment in the buffer it
    /// gathered the ciphertext in, rather than copying it into a fresh one first. On an error
    /// the content of `buf` is unspecified: nothing of it may be used.
    pub fn open_segment_in_place(&self, index: u64, buf: &mut Vec<u8>) -> Result<(), MediaError> {
        let expected = self.segment_len(index)? + SEGMENT_TAG_LEN;
        if buf.len() as u64 != expected {
            return Err(MediaError::SegmentLength {
                index,
                len: buf.len(),
                expected,
            });
        }
        let (position, last) = self.position(index)?;
        self.stream
            .decrypt_in_place(position, last, &self.aad, buf)
            .map_err(|_| MediaError::Decrypt { index })
    }

    fn position(&self, index: u64) -> Result<(u32, bool), MediaError> {
        let position = u32::try_from(index).map_err(|_| MediaError::NoSuchSegment {
            index,
            n_segments: self.n_segments,
        })?;
        Ok((position, index + 1 == self.n_segments))
    }
}

/// Encrypts a whole blob held in memory (tests, small blobs). Large blobs go segment by
/// segment through [`BlobSealer`], so they are never held whole.
pub fn seal_blob(key: &BlobKey, plaintext: &[u8]) -> Result<Vec<u8>, MediaError> {
    let sealer = BlobSealer::new(key, plaintext.len() as u64)?;
    let mut out = Vec::with_capacity(super::cipher_len(plaintext.len() as u64) as usize);
    for index in 0..sealer.n_segments() {
        let start = (index * SEGMENT_LEN) as usize;
        let end = start + sealer.segment_len(index)? as usize;
        out.extend_from_slice(&sealer.seal_segment(index, &plaintext[start..end])?);
    }
    Ok(out)
}

/// Decrypts a whole blob of `plain_len` bytes held in memory.
pub fn open_blob(key: &BlobKey, plain_len: u64, ciphertext: &[u8]) -> Result<Vec<u8>, MediaError> {
    let sealer = BlobSealer::new(key, plain_len)?;
    let expected = super::cipher_len(plain_len);
    if ciphertext.len() as u64 != expected {
        return Err(MediaError::SegmentLength {
            index: 0,
            len: ciphertext.len(),
            expected,
        });
    }
    let mut out = Vec::with_capacity(plain_len as usize);
    let mut at = 0usize;
    for index in 0..sealer.n_segments() {
        let len = (sealer.segment_len(index)? + SEGMENT_TAG_LEN) as usize;
        out.extend_from_slice(&sealer.open_segment(index, &ciphertext[at..at + len])?);
        at += len;
    }
    Ok(out)
}
