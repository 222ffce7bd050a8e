//! The payloads of event kinds as they are encoded (postcard) after their stable tag.

use super::{MediaRef, SealedKey};
use crate::ids::{EventId, MessageId, ServerSeq, UserId};
use serde::{Deserialize, Serialize};

/// Stable kind tags. Never reuse a number; new kinds (Edit, Delete, React, membership) take new ones.
pub(super) mod tag {
    pub const CREATE: u16 = 1;
    pub const SEND: u16 = 2;
    pub const SERVER_ACK: u16 = 3;
    pub const DELIVERED: u16 = 4;
    pub const READ: u16 = 5;
    pub const ADD_MEMBER: u16 = 6;
    pub const REMOVE_MEMBER: u16 = 7;
    pub const EPOCH_KEYS: u16 = 8;
    pub const KEY_REQUEST: u16 = 9;
    /// An `EpochKeys` that opens an epoch with a key commitment.
    pub const EPOCH_OPEN: u16 = 10;
    /// The relay's statement placing a run of events (protocol 3).
    pub const SEQUENCED: u16 = 11;
    /// A `Delivered` carrying the chain head its author saw at `up_to`.
    pub const DELIVERED_AT: u16 = 12;
    /// A `Read` carrying the chain head its author saw at `up_to`.
    pub const READ_AT: u16 = 13;
    /// A conversation's retention policy.
    pub const SET_RETENTION: u16 = 14;

    /// Whether this build gives `tag` a kind of its own: an `EventKind::Unknown` must not
    /// carry one, or it would be read back as that kind (or not at all).
    pub fn is_known(tag: u16) -> bool {
        (CREATE..=SET_RETENTION).contains(&tag)
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct AddMemberPayload {
    pub(super) user: UserId,
    pub(super) admin: bool,
}

#[derive(Deserialize)]
pub(super) struct EpochKeysPayload {
    pub(super) epoch: Option<EventId>,
    pub(super) keys: Vec<SealedKey>,
}

#[derive(Serialize)]
pub(super) struct EpochKeysPayloadRef<'a> {
    pub(super) epoch: Option<EventId>,
    pub(super) keys: &'a [SealedKey],
}

#[derive(Deserialize)]
pub(super) struct EpochOpenPayload {
    pub(super) commitment: [u8; 32],
    pub(super) keys: Vec<SealedKey>,
}

#[derive(Serialize)]
pub(super) struct EpochOpenPayloadRef<'a> {
    pub(super) commitment: [u8; 32],
    pub(super) keys: &'a [SealedKey],
}

#[derive(Deserialize)]
pub(super) struct SendPayload {
    pub(super) message: MessageId,
    #[serde(deserialize_with = "serde_bytes_vec::deserialize")]
    pub(super) body: Vec<u8>,
    pub(super) media: Vec<MediaRef>,
}

#[derive(Serialize)]
pub(super) struct SendPayloadRef<'a> {
    pub(super) message: MessageId,
    #[serde(with = "serde_bytes_vec")]
    pub(super) body: &'a [u8],
    pub(super) media: &'a [MediaRef],
}

#[derive(Serialize, Deserialize)]
pub(super) struct AckPayload {
    pub(super) event: EventId,
    pub(super) message: Option<MessageId>,
    pub(super) seq: ServerSeq,
    pub(super) server_ts_ms: u64,
}

/// postcard writes `Vec<u8>` as a sequence of varint-free bytes either way; going through
/// `serialize_bytes` lets the decoder borrow the slice instead of visiting byte by byte.
pub(crate) mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(V)
    }
}
