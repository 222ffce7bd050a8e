//! Device keys. The engine takes key material as bytes: randomness comes from the caller.

use crate::crypto::{AgreementPublic, AgreementSecret};
use crate::event::EventHeader;
use crate::ids::{ConversationId, DeviceId, EventId, UserId};
use crate::wire::DeviceRegistration;
use ed25519_dalek::SigningKey;
use std::fmt;

/// Domain string for deriving a device's X25519 seed from its ed25519 seed (see
/// [`DeviceKey::from_seed`]).
const AGREEMENT_FROM_SIGNING: &str = "tidings 2026-11 device X25519 seed from the ed25519 seed";

/// A device's keys: its ed25519 signing key (its id), its X25519 agreement key (conversation
/// keys are sealed to it), and the user it acts for.
#[derive(Clone)]
pub struct DeviceKey {
    signing: SigningKey,
    agreement: AgreementSecret,
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
    /// Keys from one 32-byte secret (from the OS RNG, or a test seed): the X25519 seed is
    /// derived from it with blake3's key derivation, so one secret restores both keys.
    pub fn from_seed(seed: [u8; 32], user: UserId) -> DeviceKey {
        let agreement = blake3::derive_key(AGREEMENT_FROM_SIGNING, &seed);
        Self::from_seeds(seed, agreement, user)
    }

    /// Keys from two independent secrets (what the replica's key store keeps).
    pub fn from_seeds(signing_seed: [u8; 32], agreement_seed: [u8; 32], user: UserId) -> DeviceKey {
        let signing = SigningKey::from_bytes(&signing_seed);
        let device = DeviceId(signing.verifying_key().to_bytes());
        DeviceKey {
            signing,
            agreement: AgreementSecret::from_seed(agreement_seed),
            device,
            user,
        }
    }

    /// The X25519 secret conversation keys are sealed to.
    pub fn agreement(&self) -> &AgreementSecret {
        &self.agreement
    }

    /// The X25519 public key, published in the device's certificate.
    pub fn agreement_public(&self) -> AgreementPublic {
        self.agreement.public()
    }

    /// This device's certificate, signed by its user's identity key.
    pub fn certificate(&self, user_key: &SigningKey, issued_ms: u64) -> DeviceRegistration {
        DeviceRegistration::sign(user_key, self.device, self.agreement_public().0, issued_ms)
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
