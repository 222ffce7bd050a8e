//! Identifiers: fixed-size byte strings with a hex `Display`.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length of the identifier in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Parses the lowercase hex form written by `Display`.
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Self(out))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Eight hex digits are enough to tell ids apart in logs and test output.
                write!(f, "{}({})", stringify!($name), hex::encode(&self.0[..4]))
            }
        }

        impl From<[u8; $len]> for $name {
            fn from(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }
        }
    };
}

byte_id!(
    /// A conversation, chosen by its creator (random, or derived from the creating event).
    ConversationId,
    16
);
byte_id!(
    /// A message, chosen by the sending device; unique within its conversation.
    MessageId,
    16
);
byte_id!(
    /// A device: its ed25519 public key.
    DeviceId,
    32
);
byte_id!(
    /// A user: the ed25519 public key of the user's identity.
    UserId,
    32
);
byte_id!(
    /// An event: blake3 of its canonical encoding (see `docs/FORMAT.md`).
    EventId,
    32
);
byte_id!(
    /// A media blob: the BLAKE3 (bao) root of its ciphertext (see `media`).
    BlobId,
    32
);

/// The relay's per-conversation sequence number: strictly increasing from 1, without gaps.
pub type ServerSeq = u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = MessageId([0xab; 16]);
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(MessageId::from_hex(&s), Some(id));
        assert_eq!(MessageId::from_hex("zz"), None);
        assert_eq!(MessageId::from_hex(&"g".repeat(32)), None);
    }
}
