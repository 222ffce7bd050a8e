//! Linking a new device to its user: the one-time code an existing device shows, the relay
//! mailbox slot the code names, and the sealed bundle the slot holds (sans-IO).
//!
//! The existing device draws a [`LinkSecret`] (128 random bits) and shows it as a code
//! ([`LinkSecret::code`]): 32 base32 characters in groups of four, the secret followed by a
//! 32-bit checksum, so a typo is caught on the new device before anything is sent. Two keys are
//! derived from the secret with BLAKE3's `derive_key`, under different contexts:
//! - the **slot** ([`LinkSlot`], [`LinkSecret::slot`]): where the relay keeps the bundle. The
//!   relay sees it, and learns nothing about the other key from it;
//! - the **bundle key**: XChaCha20-Poly1305 over the bundle, with the slot as associated data
//!   ([`LinkSecret::seal`], [`LinkSecret::open`]).
//!
//! The existing device deposits the sealed bundle with [`crate::wire::ClientFrame::LinkDeposit`]
//! (an authenticated, registered device only); the new device takes it once, before it has
//! any identity, with [`LinkSecret::take_frame`] as the only frame of a connection, and reads
//! the answer with [`LinkSecret::take_answer`]. What the bundle holds is the caller's
//! business (the replica puts the user's identity seed and the relay's address in it); this
//! module only sees bytes. `docs/PROTOCOL.md` has the frames, `docs/SECURITY.md` the argument.

use crate::crypto::{self, CryptoError};
use crate::wire::{ClientFrame, ErrorCode, ServerFrame};
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Bytes of a link secret (128 bits).
pub const LINK_SECRET_LEN: usize = 16;
/// Bytes of the checksum a code carries after the secret.
pub const LINK_CHECKSUM_LEN: usize = 4;
/// Base32 characters of a code, without its separators: (16 + 4) bytes × 8 / 5.
pub const LINK_CODE_CHARS: usize = 32;
/// Largest sealed bundle a relay keeps (bytes, nonce and tag included).
pub const MAX_LINK_BUNDLE_LEN: usize = 16 * 1024;
/// Largest bundle before sealing.
pub const MAX_LINK_PLAINTEXT_LEN: usize = MAX_LINK_BUNDLE_LEN - crypto::BODY_OVERHEAD;

const SLOT_CONTEXT: &str = "tidings link slot v1";
const KEY_CONTEXT: &str = "tidings link bundle key v1";
const CHECKSUM_CONTEXT: &str = "tidings link code checksum v1";
const AAD_DOMAIN: &[u8] = b"tidings/link-bundle/v1\0";

/// Where a relay keeps one sealed link bundle: a BLAKE3 key derived from the link secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LinkSlot(pub [u8; 32]);

impl fmt::Debug for LinkSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkSlot({})", hex::encode(&self.0[..8]))
    }
}

/// Why a typed code is not a link code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkCodeError {
    /// Too few or too many characters (separators and spaces do not count).
    #[error("a link code has {LINK_CODE_CHARS} letters and digits; this one has {0}")]
    Length(usize),
    /// A character outside the code's alphabet (A–Z and 2–7).
    #[error("a link code has only the letters A-Z and the digits 2-7")]
    Character,
    /// The checksum does not match: a typo.
    #[error("the link code does not check out: a typo?")]
    Checksum,
}

/// Why a link bundle could not be sealed, taken or opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The bundle is over [`MAX_LINK_PLAINTEXT_LEN`].
    #[error("link bundle too large: {len} bytes, the limit is {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The relay holds no bundle under the code's slot: the code is wrong, expired, or was
    /// used already.
    #[error("no link is waiting under this code: it is wrong, expired, or was used already")]
    NotFound,
    /// The bundle does not open with the code's key (damaged, or not the code's bundle).
    #[error("the link bundle does not open with this code")]
    Damaged,
    /// The relay refused the take for another reason.
    #[error("the relay refused: {message} ({code})")]
    Refused {
        /// The relay's code.
        code: ErrorCode,
        /// The relay's words.
        message: String,
    },
    /// The relay answered with a frame that is no answer to a take.
    #[error("the relay answered the link request with an unexpected frame")]
    Unexpected,
}

/// The one-time secret behind a link code. Zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct LinkSecret([u8; LINK_SECRET_LEN]);

impl fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkSecret(..)")
    }
}

impl LinkSecret {
    /// A secret from random bytes (the caller draws them from the OS).
    pub fn from_bytes(bytes: [u8; LINK_SECRET_LEN]) -> LinkSecret {
        LinkSecret(bytes)
    }

    /// The code to show: 32 base32 characters in eight groups of four, `ABCD-EFGH-…`.
    ///
    /// ```
    /// use tidings_engine::link::LinkSecret;
    /// let secret = LinkSecret::from_bytes([7; 16]);
    /// let code = secret.code();
    /// assert_eq!(code.len(), 32 + 7);
    /// assert_eq!(LinkSecret::parse(&code.to_lowercase()), Ok(secret));
    /// ```
    pub fn code(&self) -> String {
        let mut raw = Zeroizing::new([0u8; LINK_SECRET_LEN + LINK_CHECKSUM_LEN]);
        raw[..LINK_SECRET_LEN].copy_from_slice(&self.0);
        raw[LINK_SECRET_LEN..].copy_from_slice(&checksum(&self.0));
        let text = Zeroizing::new(data_encoding::BASE32_NOPAD.encode(&raw[..]));
        let groups: Vec<&str> = text
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        groups.join("-")
    }

    /// Reads a code as a person typed it: any case, with or without the dashes and spaces.
    pub fn parse(code: &str) -> Result<LinkSecret, LinkCodeError> {
        let cleaned: Zeroizing<String> = Zeroizing::new(
            code.chars()
                .filter(|c| !c.is_whitespace() && *c != '-')
                .map(|c| c.to_ascii_uppercase())
                .collect(),
        );
        let n = cleaned.chars().count();
        if n != LINK_CODE_CHARS {
            return Err(LinkCodeError::Length(n));
        }
        let raw = Zeroizing::new(
            data_encoding::BASE32_NOPAD
                .decode(cleaned.as_bytes())
                .map_err(|_| LinkCodeError::Character)?,
        );
        if raw.len() != LINK_SECRET_LEN + LINK_CHECKSUM_LEN {
            return Err(LinkCodeError::Character);
        }
        let mut secret = [0u8; LINK_SECRET_LEN];
        secret.copy_from_slice(&raw[..LINK_SECRET_LEN]);
        let secret = LinkSecret(secret);
        if checksum(&secret.0)[..] != raw[LINK_SECRET_LEN..] {
            return Err(LinkCodeError::Checksum);
        }
        Ok(secret)
    }

    /// The relay slot this secret's bundle is kept in.
    pub fn slot(&self) -> LinkSlot {
        LinkSlot(blake3::derive_key(SLOT_CONTEXT, &self.0))
    }

    fn key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(KEY_CONTEXT, &self.0))
    }

    fn aad(&self) -> Vec<u8> {
        let mut aad = AAD_DOMAIN.to_vec();
        aad.extend_from_slice(&self.slot().0);
        aad
    }

    /// Seals `bundle` for the slot; `nonce` must be 24 fresh random bytes.
    pub fn seal(&self, bundle: &[u8], nonce: [u8; 24]) -> Result<Vec<u8>, LinkError> {
        if bundle.len() > MAX_LINK_PLAINTEXT_LEN {
            return Err(LinkError::TooLarge {
                len: bundle.len(),
                max: MAX_LINK_PLAINTEXT_LEN,
            });
        }
        Ok(crypto::xencrypt(&self.key(), &self.aad(), bundle, nonce))
    }

    /// Opens what [`LinkSecret::seal`] sealed.
    pub fn open(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, LinkError> {
        crypto::xdecrypt(&self.key(), &self.aad(), sealed)
            .map(Zeroizing::new)
            .map_err(|_: CryptoError| LinkError::Damaged)
    }

    /// The only frame a new device sends on a link connection: take the slot's bundle.
    pub fn take_frame(&self) -> ClientFrame {
        ClientFrame::LinkTake { slot: self.slot() }
    }

    /// The relay's answer to [`LinkSecret::take_frame`], opened.
    pub fn take_answer(&self, answer: ServerFrame) -> Result<Zeroizing<Vec<u8>>, LinkError> {
        match answer {
            ServerFrame::LinkBundle { sealed } => self.open(&sealed),
            ServerFrame::Error { code, .. } if code == ErrorCode::LINK_NOT_FOUND => {
                Err(LinkError::NotFound)
            }
            ServerFrame::Error { code, message } => Err(LinkError::Refused { code, message }),
            _ => Err(LinkError::Unexpected),
        }
    }
}

fn checksum(secret: &[u8; LINK_SECRET_LEN]) -> [u8; LINK_CHECKSUM_LEN] {
    let h = blake3::derive_key(CHECKSUM_CONTEXT, secret);
    let mut out = [0u8; LINK_CHECKSUM_LEN];
    out.copy_from_slice(&h[..LINK_CHECKSUM_LEN]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> LinkSecret {
        LinkSecret::from_bytes([b; LINK_SECRET_LEN])
    }

    #[test]
    fn a_code_reads_back_in_any_case_with_or_without_separators() {
        let s = LinkSecret::from_bytes(*b"0123456789abcdef");
        let code = s.code();
        assert_eq!(code.split('-').count(), 8);
        assert_eq!(LinkSecret::parse(&code), Ok(s.clone()));
        assert_eq!(LinkSecret::parse(&code.to_lowercase()), Ok(s.clone()));
        let spaced = code.replace('-', " ");
        assert_eq!(LinkSecret::parse(&spaced), Ok(s.clone()));
        assert_eq!(LinkSecret::parse(&code.replace('-', "")), Ok(s));
    }

    #[test]
    fn a_typo_is_caught_by_the_checksum() {
        let code = secret(1).code();
        let mut chars: Vec<char> = code.chars().collect();
        // Change one character of the secret part to another of the alphabet.
        chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
        let typo: String = chars.into_iter().collect();
        assert_eq!(LinkSecret::parse(&typo), Err(LinkCodeError::Checksum));
    }

    #[test]
    fn codes_of_the_wrong_shape_are_typed_errors() {
        assert_eq!(LinkSecret::parse("ABCD"), Err(LinkCodeError::Length(4)));
        assert_eq!(LinkSecret::parse(""), Err(LinkCodeError::Length(0)));
        let bad = "1".repeat(LINK_CODE_CHARS);
        assert_eq!(LinkSecret::parse(&bad), Err(LinkCodeError::Character));
        let unicode = "é".repeat(LINK_CODE_CHARS);
        assert_eq!(LinkSecret::parse(&unicode), Err(LinkCodeError::Character));
    }

    #[test]
    fn a_bundle_opens_only_with_its_own_secret() {
        let (a, b) = (secret(1), secret(2));
        assert_ne!(a.slot(), b.slot());
        let sealed = a.seal(b"the user seed", [9; 24]).expect("seal");
        assert_eq!(&a.open(&sealed).expect("open")[..], b"the user seed");
        assert_eq!(b.open(&sealed), Err(LinkError::Damaged));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(a.open(&flipped), Err(LinkError::Damaged));
        assert_eq!(a.open(&sealed[..10]), Err(LinkError::Damaged));
    }

    #[test]
    fn the_size_limit_is_the_sealed_size_limit() {
        let s = secret(3);
        let max = vec![0u8; MAX_LINK_PLAINTEXT_LEN];
        assert_eq!(
            s.seal(&max, [0; 24]).expect("fits").len(),
            MAX_LINK_BUNDLE_LEN
        );
        let over = vec![0u8; MAX_LINK_PLAINTEXT_LEN + 1];
        assert_eq!(
            s.seal(&over, [0; 24]),
            Err(LinkError::TooLarge {
                len: MAX_LINK_PLAINTEXT_LEN + 1,
                max: MAX_LINK_PLAINTEXT_LEN
            })
        );
    }

    #[test]
    fn take_answers_are_typed() {
        let s = secret(4);
        let sealed = s.seal(b"x", [1; 24]).expect("seal");
        let got = s
            .take_answer(ServerFrame::LinkBundle { sealed })
            .expect("opens");
        assert_eq!(&got[..], b"x");
        let gone = ServerFrame::Error {
            code: ErrorCode::LINK_NOT_FOUND,
            message: "no".into(),
        };
        assert_eq!(s.take_answer(gone), Err(LinkError::NotFound));
        assert_eq!(
            s.take_answer(ServerFrame::PullMode),
            Err(LinkError::Unexpected)
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        assert_eq!(format!("{:?}", secret(5)), "LinkSecret(..)");
    }
}
