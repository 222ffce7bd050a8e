//! The pinned form of a certificate: the SHA-256 of its DER encoding.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// The SHA-256 of a DER certificate: what a device pins instead of trusting a certificate
/// authority. Printed as 64 lowercase hex digits (what `tidings-relay` prints); parsed from
/// that or from 32 colon-separated byte pairs (`AB:CD:…`, the form certificate tools print),
/// in either case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; Fingerprint::LEN]);

/// Why a string is not a [`Fingerprint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintError {
    /// Not 64 hex digits (colons aside).
    #[error("a certificate fingerprint has 64 hex digits, not {digits}")]
    Length {
        /// The hex digits found.
        digits: usize,
    },
    /// A character that is neither a hex digit nor a byte separator.
    #[error("a certificate fingerprint holds hex digits only: {found:?} at byte {index}")]
    NotHex {
        /// Its byte offset in the trimmed input.
        index: usize,
        /// The character.
        found: char,
    },
    /// Colons anywhere but between every two bytes.
    #[error("colons in a certificate fingerprint separate every byte (AB:CD:…) or none")]
    Separator,
}

impl Fingerprint {
    /// Bytes in a fingerprint.
    pub const LEN: usize = 32;

    /// The fingerprint of a DER certificate.
    pub fn of_cert(cert_der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(cert_der).into())
    }

    /// The raw digest.
    pub fn to_bytes(self) -> [u8; Fingerprint::LEN] {
        self.0
    }

    /// Whether `cert_der` is the certificate this fingerprint pins.
    pub fn matches(&self, cert_der: &[u8]) -> bool {
        Fingerprint::of_cert(cert_der) == *self
    }
}

impl From<[u8; Fingerprint::LEN]> for Fingerprint {
    fn from(bytes: [u8; Fingerprint::LEN]) -> Fingerprint {
        Fingerprint(bytes)
    }
}

impl From<Fingerprint> for [u8; Fingerprint::LEN] {
    fn from(fp: Fingerprint) -> [u8; Fingerprint::LEN] {
        fp.0
    }
}

impl PartialEq<[u8; Fingerprint::LEN]> for Fingerprint {
    fn eq(&self, other: &[u8; Fingerprint::LEN]) -> bool {
        &self.0 == other
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Fingerprint, FingerprintError> {
        let s = s.trim();
        if let Some((index, found)) = s
            .char_indices()
            .find(|(_, c)| !c.is_ascii_hexdigit() && *c != ':')
        {
            return Err(FingerprintError::NotHex { index, found });
        }
        let digits: String = if s.contains(':') {
            let pairs: Vec<&str> = s.split(':').collect();
            if pairs.iter().any(|p| p.len() != 2) {
                return Err(FingerprintError::Separator);
            }
            pairs.concat()
        } else {
            s.to_string()
        };
        if digits.len() != 2 * Fingerprint::LEN {
            return Err(FingerprintError::Length {
                digits: digits.len(),
            });
        }
        let mut out = [0u8; Fingerprint::LEN];
        // Every character is an ASCII hex digit and there are 64 of them, so this cannot fail;
        // a failure still gets a typed error rather than a panic.
        hex::decode_to_slice(&digits, &mut out).map_err(|_| FingerprintError::Length {
            digits: digits.len(),
        })?;
        Ok(Fingerprint(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn colons(fp: [u8; 32], upper: bool) -> String {
        let pairs: Vec<String> = fp
            .iter()
            .map(|b| {
                if upper {
                    format!("{b:02X}")
                } else {
                    format!("{b:02x}")
                }
            })
            .collect();
        pairs.join(":")
    }

    #[test]
    fn both_printed_forms_parse() {
        let fp = [0xab; 32];
        assert_eq!(hex::encode(fp).parse::<Fingerprint>(), Ok(fp.into()));
        assert_eq!(colons(fp, true).parse::<Fingerprint>(), Ok(fp.into()));
        assert_eq!(
            format!("  {}\n", colons(fp, false)).parse::<Fingerprint>(),
            Ok(fp.into())
        );
    }

    #[test]
    fn bad_fingerprints_get_typed_errors() {
        assert_eq!(
            "abc".parse::<Fingerprint>(),
            Err(FingerprintError::Length { digits: 3 })
        );
        assert_eq!(
            "ab:c".parse::<Fingerprint>(),
            Err(FingerprintError::Separator)
        );
        let mut s = hex::encode([1u8; 32]);
        s.replace_range(5..6, "g");
        assert_eq!(
            s.parse::<Fingerprint>(),
            Err(FingerprintError::NotHex {
                index: 5,
                found: 'g'
            })
        );
        // A colon inside a byte is not a separator.
        let odd = format!("a:{}", &hex::encode([1u8; 32])[1..]);
        assert_eq!(odd.parse::<Fingerprint>(), Err(FingerprintError::Separator));
        assert!(format!("{}:", hex::encode([1u8; 32]))
            .parse::<Fingerprint>()
            .is_err());
    }

    #[test]
    fn a_certificate_matches_its_own_fingerprint_only() {
        let fp = Fingerprint::of_cert(b"certificate");
        assert!(fp.matches(b"certificate"));
        assert!(!fp.matches(b"certificatf"));
    }

    proptest! {
        #[test]
        fn display_round_trips(bytes in any::<[u8; 32]>(), upper in any::<bool>()) {
            let fp = Fingerprint::from(bytes);
            prop_assert_eq!(fp.to_string().parse::<Fingerprint>(), Ok(fp));
            prop_assert_eq!(colons(bytes, upper).parse::<Fingerprint>(), Ok(fp));
            prop_assert_eq!(fp.to_string().len(), 64);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,100}") {
            let _ = s.parse::<Fingerprint>();
        }
    }
}
