//! Device keys. The engine takes key material as bytes: randomness comes from the caller.

use crate::event::EventHeader;
use crate::ids::{ConversationId, DeviceId, EventId, UserId};
use ed25519_dalek::SigningKey;
use std::fmt;

/// A device's ed25519 signing key and the user it acts for.
#[derive(Clone)]
pub struct DeviceKey {
    signing: SigningKey,
    device: DeviceId,
    user: UserId,
}

impl fmt::Debug for DeviceKey {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey")
            .field("device", &self.device)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// A key from 32 secret bytes (from the OS RNG, or a test seed).
    pub fn from_seed(seed: [u8; 32], user: UserId) -> DeviceKey {
        let signing = SigningKey::from_bytes(&seed);
        let device = DeviceId(signing.verifying_key().to_bytes());
        DeviceKey {
            signing,
            device,
            user,
        }
    }

    /// The secret bytes, for storing the key on the device.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The device id (public key).
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The user this device acts for.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// The ed25519 key, for signing.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// A header authored by this device.
    pub fn header(
        &self,
        conversation: ConversationId,
        counter: u64,
        prev: Option<EventId>,
        lamport: u64,
        wall_ms: u64,
    ) -> EventHeader {
        EventHeader {
            conversation,
            author: self.device,
            user: self.user,
            counter,
            prev,
            lamport,
            wall_ms,
        }
    }
}

/// The user id that belongs to a user identity key seed (the user's own ed25519 key).
pub fn user_id_from_seed(seed: [u8; 32]) -> UserId {
    UserId(SigningKey::from_bytes(&seed).verifying_key().to_bytes())
}
