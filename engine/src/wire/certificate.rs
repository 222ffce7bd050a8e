//! Device certificates and revocations (statements signed by a user's identity key) and the
//! authentication transcript a device signs in the handshake.

use super::*;

/// A device certificate: a statement, signed by a user's identity key, that `device` acts
/// for `user` and that `agreement` is the device's X25519 public key (other devices seal
/// conversation keys to it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRegistration {
    /// The user (its ed25519 identity public key).
    pub user: UserId,
    /// The device being added (its ed25519 signing public key).
    pub device: DeviceId,
    /// The device's X25519 public key.
    pub agreement: [u8; 32],
    /// When the user signed it, ms since the Unix epoch (informational).
    pub issued_ms: u64,
    /// ed25519 signature by the user key over [`DeviceRegistration::signed_bytes`].
    pub signature: SignatureBytes,
}

impl DeviceRegistration {
    /// The exact bytes the user key signs:
    /// `REGISTER_DOMAIN | user (32) | device (32) | agreement (32) | issued_ms (u64 big-endian)`.
    pub fn signed_bytes(
        user: &UserId,
        device: &DeviceId,
        agreement: &[u8; 32],
        issued_ms: u64,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(REGISTER_DOMAIN.len() + 104);
        out.extend_from_slice(REGISTER_DOMAIN);
        out.extend_from_slice(&user.0);
        out.extend_from_slice(&device.0);
        out.extend_from_slice(agreement);
        out.extend_from_slice(&issued_ms.to_be_bytes());
        out
    }

    /// Signs a certificate of `device` (with its X25519 key `agreement`) with the user's
    /// identity key.
    pub fn sign(
        user_key: &SigningKey,
        device: DeviceId,
        agreement: [u8; 32],
        issued_ms: u64,
    ) -> DeviceRegistration {
        let user = UserId(user_key.verifying_key().to_bytes());
        let sig = user_key.sign(&Self::signed_bytes(&user, &device, &agreement, issued_ms));
        DeviceRegistration {
            user,
            device,
            agreement,
            issued_ms,
            signature: sig.into(),
        }
    }

    /// Whether the signature verifies under `user`'s key.
    pub fn verify(&self) -> bool {
        let msg = Self::signed_bytes(&self.user, &self.device, &self.agreement, self.issued_ms);
        self.signature.verify(&self.user.0, &msg)
    }
}

/// A statement, signed by a user's identity key, that `device` no longer acts for `user`
/// (lost or retired). Final: a revoked device cannot authenticate or be registered again, and
/// events it authored are refused from then on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRevocation {
    /// The user (its ed25519 identity public key).
    pub user: UserId,
    /// The device revoked.
    pub device: DeviceId,
    /// When the user signed it, ms since the Unix epoch (informational).
    pub issued_ms: u64,
    /// ed25519 signature by the user key over [`DeviceRevocation::signed_bytes`].
    pub signature: SignatureBytes,
}

impl DeviceRevocation {
    /// The exact bytes the user key signs:
    /// `REVOKE_DOMAIN | user (32) | device (32) | issued_ms (u64 big-endian)`.
    pub fn signed_bytes(user: &UserId, device: &DeviceId, issued_ms: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(REVOKE_DOMAIN.len() + 72);
        out.extend_from_slice(REVOKE_DOMAIN);
        out.extend_from_slice(&user.0);
        out.extend_from_slice(&device.0);
        out.extend_from_slice(&issued_ms.to_be_bytes());
        out
    }

    /// Signs a revocation of `device` with the user's identity key.
    pub fn sign(user_key: &SigningKey, device: DeviceId, issued_ms: u64) -> DeviceRevocation {
        let user = UserId(user_key.verifying_key().to_bytes());
        let sig = user_key.sign(&Self::signed_bytes(&user, &device, issued_ms));
        DeviceRevocation {
            user,
            device,
            issued_ms,
            signature: sig.into(),
        }
    }

    /// Whether the signature verifies under `user`'s key.
    pub fn verify(&self) -> bool {
        let msg = Self::signed_bytes(&self.user, &self.device, self.issued_ms);
        self.signature.verify(&self.user.0, &msg)
    }
}

/// The bytes a device signs to authenticate:
/// `AUTH_DOMAIN | nonce (32) | tls binding (32) | device (32) | user (32)`.
pub fn auth_transcript(
    nonce: &[u8; NONCE_LEN],
    tls_binding: &[u8; TLS_BINDING_LEN],
    device: &DeviceId,
    user: &UserId,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(AUTH_DOMAIN.len() + 128);
    out.extend_from_slice(AUTH_DOMAIN);
    out.extend_from_slice(nonce);
    out.extend_from_slice(tls_binding);
    out.extend_from_slice(&device.0);
    out.extend_from_slice(&user.0);
    out
}

/// Signs the authentication transcript with the device key, for [`ClientFrame::Auth`].
pub fn sign_auth(
    device_key: &SigningKey,
    user: &UserId,
    nonce: &[u8; NONCE_LEN],
    tls_binding: &[u8; TLS_BINDING_LEN],
) -> SignatureBytes {
    let device = DeviceId(device_key.verifying_key().to_bytes());
    device_key
        .sign(&auth_transcript(nonce, tls_binding, &device, user))
        .into()
}

/// Checks an authentication signature (the relay's side of [`sign_auth`]).
pub fn verify_auth(
    signature: &SignatureBytes,
    device: &DeviceId,
    user: &UserId,
    nonce: &[u8; NONCE_LEN],
    tls_binding: &[u8; TLS_BINDING_LEN],
) -> bool {
    signature.verify(
        &device.0,
        &auth_transcript(nonce, tls_binding, device, user),
    )
}
