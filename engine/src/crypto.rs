//! End-to-end encryption primitives: key agreement, sealing small secrets to a device, message
//! body encryption, at-rest record encryption and passphrase wrapping.
//!
//! Like the rest of the engine this module is pure: it never reads the clock or the OS random
//! number generator. Every function that needs randomness takes the random bytes as an argument
//! (`ephemeral: [u8; 32]`, `nonce: [u8; 24]`, `salt: [u8; 16]`). **The caller must pass fresh
//! bytes from a CSPRNG for every call** (the replica uses the OS RNG, the simulator a seeded
//! one); reusing them breaks confidentiality as described on each function.
//!
//! # Constructions
//! | what | function | construction | bytes |
//! | --- | --- | --- | --- |
//! | epoch key (or any small secret) to a device | [`seal`] / [`open`] | X25519 + HKDF-SHA256 + ChaCha20-Poly1305 | `0x01 ‖ ephemeral_pub[32] ‖ ct ‖ tag[16]` |
//! | message body under an epoch key | [`encrypt_body`] / [`decrypt_body`] | XChaCha20-Poly1305, header as AAD | `nonce[24] ‖ ct ‖ tag[16]` |
//! | local record under the storage key | [`StorageKey::seal_record`] / [`StorageKey::open_record`] | XChaCha20-Poly1305, `"tidings/record/v1\0" ‖ context` as AAD | `nonce[24] ‖ ct ‖ tag[16]` |
//! | 32-byte secret under a passphrase | [`wrap_with_passphrase`] / [`unwrap_with_passphrase`] | Argon2id v1.3 + XChaCha20-Poly1305 | see [`wrap_with_passphrase`] |
//!
//! ## Sealing: why not the `hpke` crate
//! [`seal`] is a one-shot ECIES-style construction close to HPKE base mode (RFC 9180,
//! DHKEM(X25519, HKDF-SHA256) + ChaCha20-Poly1305) but not wire-compatible with it. The `hpke`
//! crate (0.15) was considered: it takes its ephemeral randomness through a `rand_core`
//! `CryptoRng`, which couples our public API to one `rand_core` version (the workspace already
//! carries 0.9 and 0.10), and it pulls ML-KEM/SHA-3 by default. The hand-rolled construction is
//! ~40 lines over the same maintained RustCrypto/dalek primitives, takes the ephemeral scalar as
//! plain bytes, and its format is pinned by a known-answer test.
//!
//! Seal, step by step (`context` is caller-chosen, e.g. conversation id ‖ epoch number ‖
//! recipient device id):
//! 1. `e = X25519 scalar(ephemeral)`, `E = e·G`, `dh = X25519(e, recipient)`; an all-zero `dh`
//!    (recipient is a low-order point) is refused with [`CryptoError::LowOrderPoint`].
//! 2. `key = HKDF-SHA256(salt = E ‖ recipient, ikm = dh, info = "tidings/seal/v1\0" ‖ context)`,
//!    32 bytes.
//! 3. `ct ‖ tag = ChaCha20-Poly1305(key, nonce = 0^12, aad = context, secret)`.
//!
//! The all-zero nonce is safe because every key is used for exactly one encryption: the key is
//! derived from a fresh ephemeral scalar, so two seals never share a key unless the caller
//! reuses `ephemeral` for the same recipient and context, which is forbidden. Putting `E` and the
//! recipient key in the salt ties the derived key to this exact pair of public keys (as HPKE's
//! `kem_context` does), and `context` is bound twice, in the KDF and as AAD.
//!
//! ## Errors
//! Every opening function accepts arbitrary bytes and answers with a [`CryptoError`]; none of
//! them panics. Authentication failures of any kind (wrong key, wrong context/AAD, tampered
//! bytes, wrong passphrase) are one variant, [`CryptoError::Decrypt`], on purpose: the AEAD
//! cannot tell them apart and callers must not try to.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, AeadInOut, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Why a cryptographic operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The bytes are too short or otherwise not in the expected layout.
    #[error("malformed ciphertext: {0}")]
    Malformed(&'static str),
    /// The bytes carry a format version this build does not know.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// Authentication failed: wrong key or passphrase, wrong context/AAD, or tampered bytes.
    #[error("decryption failed (wrong key, wrong context or tampered data)")]
    Decrypt,
    /// The peer's X25519 key is a low-order point: the shared secret would be all zeros.
    #[error("the X25519 public key is a low-order point")]
    LowOrderPoint,
    /// Key-derivation parameters out of the accepted range.
    #[error("bad key-derivation parameters: {0}")]
    BadParams(&'static str),
    /// The password hash itself failed (e.g. it could not allocate its memory).
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

fn hex_prefix(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes.iter().take(4) {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// An X25519 public key (a device's key-agreement key, published in its device record).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AgreementPublic(pub [u8; 32]);

impl AgreementPublic {
    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for AgreementPublic {
    /// The first 4 bytes in hex, like the other ids.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgreementPublic(")?;
        hex_prefix(f, &self.0)?;
        f.write_str("…)")
    }
}

/// A device's static X25519 secret. Zeroized on drop; `Debug` shows only the public key.
#[derive(Clone)]
pub struct AgreementSecret {
    secret: StaticSecret,
    public: AgreementPublic,
}

impl AgreementSecret {
    /// The secret from 32 random bytes (clamped as X25519 requires; any 32 bytes are valid).
    pub fn from_seed(mut seed: [u8; 32]) -> AgreementSecret {
        let secret = StaticSecret::from(seed);
        seed.zeroize();
        let public = AgreementPublic(PublicKey::from(&secret).to_bytes());
        AgreementSecret { secret, public }
    }

    /// The public key to publish.
    pub fn public(&self) -> AgreementPublic {
        self.public
    }

    /// The seed bytes, for storing the key on the device.
    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }
}

impl fmt::Debug for AgreementSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgreementSecret")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// A conversation's epoch key: 32 bytes, zeroized on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct EpochKey([u8; 32]);

impl EpochKey {
    /// The key from 32 bytes: fresh random bytes for a new epoch, or the bytes [`open`] returned.
    pub fn from_bytes(bytes: [u8; 32]) -> EpochKey {
        EpochKey(bytes)
    }

    /// The key bytes, to [`seal`] them to member devices.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key from an opened secret; [`CryptoError::Malformed`] unless it is 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<EpochKey, CryptoError> {
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::Malformed("an epoch key is 32 bytes"))?;
        Ok(EpochKey(bytes))
    }
}

impl fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EpochKey(..)")
    }
}

/// Version byte that starts every [`seal`]ed secret.
pub const SEAL_VERSION: u8 = 1;
/// Bytes [`seal`] adds to the secret: version, ephemeral public key, tag.
pub const SEAL_OVERHEAD: usize = 1 + 32 + TAG_LEN;
const TAG_LEN: usize = 16;
const SEAL_INFO: &[u8] = b"tidings/seal/v1\0";

fn seal_key(
    dh: &x25519_dalek::SharedSecret,
    ephemeral_pub: &[u8; 32],
    recipient: &[u8; 32],
    context: &[u8],
) -> Result<ChaCha20Poly1305, CryptoError> {
    if !dh.was_contributory() {
        return Err(CryptoError::LowOrderPoint);
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral_pub);
    salt[32..].copy_from_slice(recipient);
    let hk = Hkdf::<Sha256>::new(Some(&salt), dh.as_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand_multi_info(&[SEAL_INFO, context], &mut key[..])
        .map_err(|_| CryptoError::Kdf("HKDF output length".into()))?;
    Ok(ChaCha20Poly1305::new((&*key).into()))
}

/// Seals `secret` (an epoch key, or any small secret) to one device's X25519 key.
///
/// `context` names what is sealed and for whom (e.g. conversation id ‖ epoch ‖ device id); it is
/// bound into the key derivation and as AAD, so [`open`] with any other context fails.
/// `ephemeral` must be 32 fresh random bytes for every call: reusing them for the same
/// recipient and context reuses an AEAD key and nonce. Output: `0x01 ‖ ephemeral_pub[32] ‖
/// ciphertext ‖ tag[16]` ([`SEAL_OVERHEAD`] bytes longer than `secret`).
///
/// Fails only with [`CryptoError::LowOrderPoint`] when `recipient` is a low-order point (the
/// shared secret would be public).
///
/// # Panics
/// Only if `secret` is 256 GiB or longer (the ChaCha20 block counter limit).
pub fn seal(
    recipient: &AgreementPublic,
    context: &[u8],
    secret: &[u8],
    ephemeral: [u8; 32],
) -> Result<Vec<u8>, CryptoError> {
    let eph = AgreementSecret::from_seed(ephemeral);
    let dh = eph.secret.diffie_hellman(&PublicKey::from(recipient.0));
    let cipher = seal_key(&dh, &eph.public.0, &recipient.0, context)?;
    let ct = cipher
        .encrypt(
            &Default::default(),
            Payload {
                msg: secret,
                aad: context,
            },
        )
        .expect("a secret under 256 GiB always encrypts");
    let mut out = Vec::with_capacity(1 + 32 + ct.len());
    out.push(SEAL_VERSION);
    out.extend_from_slice(&eph.public.0);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens what [`seal`] sealed to `own`'s public key under the same `context`.
pub fn open(
    own: &AgreementSecret,
    context: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let (&version, rest) = sealed
        .split_first()
        .ok_or(CryptoError::Malformed("empty sealed secret"))?;
    if version != SEAL_VERSION {
        return Err(CryptoError::UnsupportedVersion(version));
    }
    if rest.len() < 32 + TAG_LEN {
        return Err(CryptoError::Malformed("sealed secret too short"));
    }
    let (eph_pub, ct) = rest.split_at(32);
    let eph_pub: [u8; 32] = eph_pub
        .try_into()
        .map_err(|_| CryptoError::Malformed("sealed secret too short"))?;
    let dh = own.secret.diffie_hellman(&PublicKey::from(eph_pub));
    let cipher = seal_key(&dh, &eph_pub, &own.public.0, context)?;
    cipher
        .decrypt(
            &Default::default(),
            Payload {
                msg: ct,
                aad: context,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Decrypt)
}

/// Bytes [`encrypt_body`] and [`StorageKey::seal_record`] add: nonce and tag.
pub const BODY_OVERHEAD: usize = 24 + TAG_LEN;

pub(crate) fn xencrypt(key: &[u8; 32], aad: &[u8], plaintext: &[u8], nonce: [u8; 24]) -> Vec<u8> {
    // One allocation: nonce ‖ plaintext, encrypted in place, then the tag.
    let mut out = Vec::with_capacity(BODY_OVERHEAD + plaintext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = XChaCha20Poly1305::new(key.into())
        .encrypt_inout_detached(&XNonce::from(nonce), aad, (&mut out[24..]).into())
        .expect("a plaintext under 256 GiB always encrypts");
    out.extend_from_slice(&tag);
    out
}

pub(crate) fn xdecrypt(key: &[u8; 32], aad: &[u8], bytes: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if bytes.len() < BODY_OVERHEAD {
        return Err(CryptoError::Malformed(
            "ciphertext shorter than nonce and tag",
        ));
    }
    let (nonce, ct) = bytes.split_at(24);
    let nonce: [u8; 24] = nonce
        .try_into()
        .map_err(|_| CryptoError::Malformed("ciphertext shorter than nonce and tag"))?;
    XChaCha20Poly1305::new(key.into())
        .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad })
        .map_err(|_| CryptoError::Decrypt)
}

/// Encrypts a message body under the conversation's epoch key with XChaCha20-Poly1305.
///
/// `aad` is the event header's encoding: the body cannot be moved to another event. `nonce`
/// must be 24 fresh random bytes per call (random 192-bit nonces do not collide in practice;
/// a repeated nonce under one key leaks the XOR of two bodies). Output: `nonce[24] ‖ ciphertext
/// ‖ tag[16]` ([`BODY_OVERHEAD`] bytes longer than the plaintext).
///
/// # Panics
/// Only if `plaintext` is 256 GiB or longer.
pub fn encrypt_body(key: &EpochKey, aad: &[u8], plaintext: &[u8], nonce: [u8; 24]) -> Vec<u8> {
    xencrypt(&key.0, aad, plaintext, nonce)
}

/// Decrypts what [`encrypt_body`] produced, with the same key and `aad`.
pub fn decrypt_body(key: &EpochKey, aad: &[u8], bytes: &[u8]) -> Result<Vec<u8>, CryptoError> {
    xdecrypt(&key.0, aad, bytes)
}

const RECORD_DOMAIN: &[u8] = b"tidings/record/v1\0";

/// The device's key for data at rest: 32 bytes, zeroized on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StorageKey([u8; 32]);

impl StorageKey {
    /// The key from 32 random bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> StorageKey {
        StorageKey(bytes)
    }

    /// The key bytes, for storing the key on the device.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Encrypts a local record with XChaCha20-Poly1305.
    ///
    /// `context` says where the record lives (e.g. table name ‖ record key) and is bound as AAD
    /// (after a fixed domain string), so a record copied to another row or table fails to open.
    /// Encode it unambiguously (fixed-size or length-prefixed parts). `nonce` must be 24 fresh
    /// random bytes per call. Output: `nonce[24] ‖ ciphertext ‖ tag[16]`.
    ///
    /// # Panics
    /// Only if `plaintext` is 256 GiB or longer.
    pub fn seal_record(&self, context: &[u8], plaintext: &[u8], nonce: [u8; 24]) -> Vec<u8> {
        let aad = record_aad(context);
        xencrypt(&self.0, &aad, plaintext, nonce)
    }

    /// Decrypts what [`StorageKey::seal_record`] produced under the same `context`.
    pub fn open_record(&self, context: &[u8], bytes: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let aad = record_aad(context);
        xdecrypt(&self.0, &aad, bytes)
    }
}

fn record_aad(context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(RECORD_DOMAIN.len() + context.len());
    aad.extend_from_slice(RECORD_DOMAIN);
    aad.extend_from_slice(context);
    aad
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StorageKey(..)")
    }
}

/// Argon2id cost parameters, stored in the wrapped bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    m_kib: u32,
    t: u32,
    p: u32,
}

impl KdfParams {
    /// Largest memory cost [`unwrap_with_passphrase`] accepts: 256 MiB.
    pub const MAX_MEMORY_KIB: u32 = 256 * 1024;
    /// Largest time cost (passes) accepted.
    pub const MAX_TIME: u32 = 16;
    /// Largest parallelism (lanes) accepted.
    pub const MAX_LANES: u32 = 8;

    /// Parameters within the accepted bounds: memory in KiB (at least 8 per lane, at most
    /// [`KdfParams::MAX_MEMORY_KIB`]), passes (1..=[`KdfParams::MAX_TIME`]) and lanes
    /// (1..=[`KdfParams::MAX_LANES`]).
    pub fn new(memory_kib: u32, time: u32, lanes: u32) -> Result<KdfParams, CryptoError> {
        if !(1..=Self::MAX_LANES).contains(&lanes) {
            return Err(CryptoError::BadParams("lanes out of range"));
        }
        if !(1..=Self::MAX_TIME).contains(&time) {
            return Err(CryptoError::BadParams("time cost out of range"));
        }
        if memory_kib < 8 * lanes || memory_kib > Self::MAX_MEMORY_KIB {
            return Err(CryptoError::BadParams("memory cost out of range"));
        }
        Ok(KdfParams {
            m_kib: memory_kib,
            t: time,
            p: lanes,
        })
    }

    /// Cheap parameters for tests only (8 KiB, 1 pass): no protection against guessing.
    pub fn for_tests() -> KdfParams {
        KdfParams {
            m_kib: 8,
            t: 1,
            p: 1,
        }
    }

    /// Memory cost in KiB.
    pub fn memory_kib(&self) -> u32 {
        self.m_kib
    }

    /// Time cost (passes).
    pub fn time(&self) -> u32 {
        self.t
    }

    /// Parallelism (lanes).
    pub fn lanes(&self) -> u32 {
        self.p
    }

    fn derive(&self, passphrase: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let params = Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        let mut key = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase, salt, &mut key[..])
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        Ok(key)
    }
}

impl Default for KdfParams {
    /// OWASP's Argon2id recommendation: 19 MiB, 2 passes, 1 lane.
    fn default() -> KdfParams {
        KdfParams {
            m_kib: 19 * 1024,
            t: 2,
            p: 1,
        }
    }
}

/// Version byte that starts a passphrase-wrapped secret.
pub const WRAP_VERSION: u8 = 1;
/// Length of [`wrap_with_passphrase`]'s output.
pub const WRAPPED_LEN: usize = WRAP_HEADER_LEN + 32 + TAG_LEN;
const WRAP_HEADER_LEN: usize = 1 + 1 + 4 + 4 + 4 + 16 + 24;
const WRAP_ALG_ARGON2ID_V13: u8 = 1;

/// Wraps a 32-byte secret (e.g. the user's identity seed) under a passphrase.
///
/// `salt` (16) and `nonce` (24) must be fresh random bytes. Layout, version 1, 102 bytes:
///
/// | offset | len | field |
/// | --- | --- | --- |
/// | 0 | 1 | version = 1 |
/// | 1 | 1 | KDF = 1 (Argon2id, v1.3) |
/// | 2 | 4 | memory cost in KiB, u32 little-endian |
/// | 6 | 4 | time cost, u32 LE |
/// | 10 | 4 | lanes, u32 LE |
/// | 14 | 16 | salt |
/// | 30 | 24 | nonce |
/// | 54 | 48 | XChaCha20-Poly1305(key = Argon2id(passphrase, salt), aad = bytes 0..54, secret) |
///
/// The header is the AAD, so the stored parameters cannot be altered without detection.
pub fn wrap_with_passphrase(
    secret: &[u8; 32],
    passphrase: &[u8],
    salt: [u8; 16],
    nonce: [u8; 24],
    params: KdfParams,
) -> Result<Vec<u8>, CryptoError> {
    // Re-check: the fields are private, but keep one rule for wrap and unwrap.
    let params = KdfParams::new(params.m_kib, params.t, params.p)?;
    let mut out = Vec::with_capacity(WRAPPED_LEN);
    out.push(WRAP_VERSION);
    out.push(WRAP_ALG_ARGON2ID_V13);
    out.extend_from_slice(&params.m_kib.to_le_bytes());
    out.extend_from_slice(&params.t.to_le_bytes());
    out.extend_from_slice(&params.p.to_le_bytes());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    let key = params.derive(passphrase, &salt)?;
    let ct = XChaCha20Poly1305::new((&*key).into())
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: secret,
                aad: &out,
            },
        )
        .map_err(|_| CryptoError::Kdf("encryption failed".into()))?;
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Whether `bytes` look like [`wrap_with_passphrase`]'s output (version and length only).
pub fn is_passphrase_wrapped(bytes: &[u8]) -> bool {
    bytes.len() == WRAPPED_LEN && bytes.first() == Some(&WRAP_VERSION)
}

fn le_u32(bytes: &[u8], at: usize) -> Result<u32, CryptoError> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(CryptoError::Malformed("wrapped secret too short"))
}

/// Unwraps what [`wrap_with_passphrase`] produced. The parameters are read from the bytes and
/// refused ([`CryptoError::BadParams`]) outside [`KdfParams::new`]'s bounds, so a tampered file
/// cannot make this allocate more than 256 MiB; a wrong passphrase is [`CryptoError::Decrypt`].
pub fn unwrap_with_passphrase(
    bytes: &[u8],
    passphrase: &[u8],
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let (&version, _) = bytes
        .split_first()
        .ok_or(CryptoError::Malformed("empty wrapped secret"))?;
    if version != WRAP_VERSION {
        return Err(CryptoError::UnsupportedVersion(version));
    }
    if bytes.len() != WRAPPED_LEN {
        return Err(CryptoError::Malformed(
            "wrapped secret has the wrong length",
        ));
    }
    if bytes[1] != WRAP_ALG_ARGON2ID_V13 {
        return Err(CryptoError::BadParams("unknown key-derivation function"));
    }
    let params = KdfParams::new(le_u32(bytes, 2)?, le_u32(bytes, 6)?, le_u32(bytes, 10)?)?;
    let (header, ct) = bytes.split_at(WRAP_HEADER_LEN);
    let salt = &header[14..30];
    let nonce: [u8; 24] = header[30..54]
        .try_into()
        .map_err(|_| CryptoError::Malformed("wrapped secret too short"))?;
    let key = params.derive(passphrase, salt)?;
    let plain = Zeroizing::new(
        XChaCha20Poly1305::new((&*key).into())
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: header,
                },
            )
            .map_err(|_| CryptoError::Decrypt)?,
    );
    let mut out = Zeroizing::new([0u8; 32]);
    if plain.len() != 32 {
        return Err(CryptoError::Malformed("wrapped secret is not 32 bytes"));
    }
    out.copy_from_slice(&plain);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn device(n: u8) -> AgreementSecret {
        AgreementSecret::from_seed([n; 32])
    }

    fn flip_each_bit_fails(bytes: &[u8], check: impl Fn(&[u8]) -> Result<(), CryptoError>) {
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.to_vec();
            b[i / 8] ^= 1 << (i % 8);
            let err = check(&b).expect_err("a flipped bit must not open");
            // Flipping the version byte is a version error; every other bit is an AEAD failure
            // (or, for the ephemeral key, possibly a low-order point).
            assert!(
                matches!(
                    err,
                    CryptoError::Decrypt
                        | CryptoError::UnsupportedVersion(_)
                        | CryptoError::LowOrderPoint
                ),
                "bit {i}: {err:?}"
            );
        }
    }

    #[test]
    fn seal_round_trip_and_failures() {
        let bob = device(2);
        let key = EpochKey::from_bytes([7; 32]);
        let sealed = seal(&bob.public(), b"conv-1/epoch-3", key.as_bytes(), [9; 32]).unwrap();
        assert_eq!(sealed.len(), 32 + SEAL_OVERHEAD);
        let opened = open(&bob, b"conv-1/epoch-3", &sealed).unwrap();
        assert_eq!(EpochKey::from_slice(&opened).unwrap().as_bytes(), &[7; 32]);

        // Wrong device, wrong context.
        assert_eq!(
            open(&device(3), b"conv-1/epoch-3", &sealed).unwrap_err(),
            CryptoError::Decrypt
        );
        assert_eq!(
            open(&bob, b"conv-1/epoch-4", &sealed).unwrap_err(),
            CryptoError::Decrypt
        );
        // Every flipped bit, every truncation.
        flip_each_bit_fails(&sealed, |b| open(&bob, b"conv-1/epoch-3", b).map(drop));
        for len in 0..sealed.len() {
            let err = open(&bob, b"conv-1/epoch-3", &sealed[..len]).unwrap_err();
            assert!(
                matches!(err, CryptoError::Malformed(_) | CryptoError::Decrypt),
                "{len}: {err:?}"
            );
        }
        assert_eq!(
            open(&bob, b"conv-1/epoch-3", &sealed[..SEAL_OVERHEAD - 1]).unwrap_err(),
            CryptoError::Malformed("sealed secret too short")
        );
        let mut v2 = sealed.clone();
        v2[0] = 2;
        assert_eq!(
            open(&bob, b"conv-1/epoch-3", &v2).unwrap_err(),
            CryptoError::UnsupportedVersion(2)
        );
    }

    #[test]
    fn empty_secret_and_context_seal() {
        let bob = device(2);
        let sealed = seal(&bob.public(), b"", b"", [1; 32]).unwrap();
        assert_eq!(sealed.len(), SEAL_OVERHEAD);
        assert!(open(&bob, b"", &sealed).unwrap().is_empty());
    }

    /// Points of small order on Curve25519 (and their non-canonical encodings): X25519 with any
    /// of them gives an all-zero shared secret.
    const LOW_ORDER: [[u8; 32]; 3] = {
        let zero = [0u8; 32];
        let mut one = [0u8; 32];
        one[0] = 1;
        // p - 1 (order 2 point u = -1), little-endian.
        let mut minus_one = [0xffu8; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        [zero, one, minus_one]
    };

    #[test]
    fn low_order_points_are_refused() {
        for point in LOW_ORDER {
            assert_eq!(
                seal(&AgreementPublic(point), b"c", b"s", [5; 32]).unwrap_err(),
                CryptoError::LowOrderPoint
            );
            let mut sealed = vec![SEAL_VERSION];
            sealed.extend_from_slice(&point);
            sealed.extend_from_slice(&[0; 40]);
            assert_eq!(
                open(&device(2), b"c", &sealed).unwrap_err(),
                CryptoError::LowOrderPoint
            );
        }
    }

    /// Pins the sealed format: if this changes, old sealed keys no longer open. The expected
    /// bytes were cross-checked against an independent implementation (Python `cryptography`
    /// 48: X25519, HKDF-SHA256, ChaCha20-Poly1305) of the steps in the module docs.
    #[test]
    fn seal_known_answer() {
        let bob = device(0x42);
        let sealed = seal(
            &bob.public(),
            b"tidings kat context",
            &[0x11; 32],
            [0x24; 32],
        )
        .unwrap();
        assert_eq!(
            hex::encode(bob.public().as_bytes()),
            "132c442be010fbd57e72603328aa76e71fccc1503aae219327d14d9c9993f472"
        );
        assert_eq!(hex::encode(&sealed), "0104bcd2e0d00f2cce5fe8f1c6c2fbec5c07fa56e3aa5c88a5689975d88b3fce05d1b11b4d6f49e45e4ab16700da3d1825936d9d7a123a3eb7c860fe46ff6bab4ac785c824dc77b238ecf46e17723bb7d3");
        assert_eq!(
            &open(&bob, b"tidings kat context", &sealed).unwrap()[..],
            &[0x11; 32]
        );
    }

    /// Pins the body and record formats.
    #[test]
    fn body_and_record_known_answer() {
        let key = EpochKey::from_bytes([0x33; 32]);
        let body = encrypt_body(&key, b"header", b"hello", [0x44; 24]);
        assert_eq!(hex::encode(&body), "44444444444444444444444444444444444444444444444470c31cb85f60a67f70db5c46735e92104211a5a31e");
        let storage = StorageKey::from_bytes([0x33; 32]);
        let record = storage.seal_record(b"header", b"hello", [0x44; 24]);
        assert_eq!(hex::encode(&record), "44444444444444444444444444444444444444444444444470c31cb85f2c2af678c780852e9c5e6b95b3d5a932");
        // Same key, nonce and context bytes: the record domain keeps them apart.
        assert_ne!(body, record);
        assert_eq!(
            decrypt_body(&key, b"header", &record).unwrap_err(),
            CryptoError::Decrypt
        );
    }

    #[test]
    fn body_round_trip_and_failures() {
        let key = EpochKey::from_bytes([1; 32]);
        let bytes = encrypt_body(&key, b"hdr", b"Just took off", [2; 24]);
        assert_eq!(bytes.len(), 13 + BODY_OVERHEAD);
        assert_eq!(&bytes[..24], &[2; 24]);
        assert_eq!(
            decrypt_body(&key, b"hdr", &bytes).unwrap(),
            b"Just took off"
        );
        assert_eq!(
            decrypt_body(&EpochKey::from_bytes([3; 32]), b"hdr", &bytes).unwrap_err(),
            CryptoError::Decrypt
        );
        assert_eq!(
            decrypt_body(&key, b"hdR", &bytes).unwrap_err(),
            CryptoError::Decrypt
        );
        flip_each_bit_fails(&bytes, |b| decrypt_body(&key, b"hdr", b).map(drop));
        for len in 0..bytes.len() {
            let want = if len < BODY_OVERHEAD {
                CryptoError::Malformed("ciphertext shorter than nonce and tag")
            } else {
                CryptoError::Decrypt
            };
            assert_eq!(decrypt_body(&key, b"hdr", &bytes[..len]).unwrap_err(), want);
        }
    }

    #[test]
    fn record_round_trip_and_swap() {
        let key = StorageKey::from_bytes([8; 32]);
        let a = key.seal_record(b"messages/1", b"first", [1; 24]);
        let b = key.seal_record(b"messages/2", b"second", [2; 24]);
        assert_eq!(key.open_record(b"messages/1", &a).unwrap(), b"first");
        assert_eq!(key.open_record(b"messages/2", &b).unwrap(), b"second");
        // Swapped rows do not open.
        assert_eq!(
            key.open_record(b"messages/1", &b).unwrap_err(),
            CryptoError::Decrypt
        );
        assert_eq!(
            StorageKey::from_bytes([9; 32])
                .open_record(b"messages/1", &a)
                .unwrap_err(),
            CryptoError::Decrypt
        );
        flip_each_bit_fails(&a, |x| key.open_record(b"messages/1", x).map(drop));
        assert!(matches!(
            key.open_record(b"messages/1", &a[..10]),
            Err(CryptoError::Malformed(_))
        ));
    }

    #[test]
    fn passphrase_round_trip_and_failures() {
        let params = KdfParams::for_tests();
        let wrapped =
            wrap_with_passphrase(&[5; 32], b"correct horse", [6; 16], [7; 24], params).unwrap();
        assert_eq!(wrapped.len(), WRAPPED_LEN);
        assert!(is_passphrase_wrapped(&wrapped));
        assert_eq!(
            *unwrap_with_passphrase(&wrapped, b"correct horse").unwrap(),
            [5; 32]
        );
        assert_eq!(
            unwrap_with_passphrase(&wrapped, "correct hörse".as_bytes()).unwrap_err(),
            CryptoError::Decrypt
        );
        assert_eq!(
            unwrap_with_passphrase(&wrapped, b"").unwrap_err(),
            CryptoError::Decrypt
        );
        // Any flipped bit in salt, nonce or ciphertext.
        for i in 14 * 8..wrapped.len() * 8 {
            let mut b = wrapped.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert_eq!(
                unwrap_with_passphrase(&b, b"correct horse").unwrap_err(),
                CryptoError::Decrypt,
                "bit {i}"
            );
        }
        for len in 0..wrapped.len() {
            assert!(unwrap_with_passphrase(&wrapped[..len], b"correct horse").is_err());
        }
    }

    #[test]
    fn tampered_params_are_bounded() {
        let wrapped =
            wrap_with_passphrase(&[5; 32], b"pw", [6; 16], [7; 24], KdfParams::for_tests())
                .unwrap();
        let with = |at: usize, v: u32| {
            let mut b = wrapped.clone();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            unwrap_with_passphrase(&b, b"pw").unwrap_err()
        };
        // 4 GiB of memory, 2^32-1 passes, too many lanes: refused before hashing.
        assert_eq!(
            with(2, u32::MAX),
            CryptoError::BadParams("memory cost out of range")
        );
        assert_eq!(
            with(6, u32::MAX),
            CryptoError::BadParams("time cost out of range")
        );
        assert_eq!(with(10, 1000), CryptoError::BadParams("lanes out of range"));
        assert_eq!(with(6, 0), CryptoError::BadParams("time cost out of range"));
        assert_eq!(
            with(2, 7),
            CryptoError::BadParams("memory cost out of range")
        );
        // Within bounds but different from what was used: the header is the AAD.
        assert_eq!(with(6, 2), CryptoError::Decrypt);
        let mut b = wrapped.clone();
        b[1] = 2;
        assert_eq!(
            unwrap_with_passphrase(&b, b"pw").unwrap_err(),
            CryptoError::BadParams("unknown key-derivation function")
        );
        b[0] = 9;
        assert_eq!(
            unwrap_with_passphrase(&b, b"pw").unwrap_err(),
            CryptoError::UnsupportedVersion(9)
        );
        assert!(KdfParams::new(KdfParams::MAX_MEMORY_KIB + 1, 1, 1).is_err());
        assert!(KdfParams::new(19 * 1024, 2, 1).is_ok());
    }

    /// Pins the wrapped layout.
    #[test]
    fn passphrase_known_answer() {
        let wrapped =
            wrap_with_passphrase(&[5; 32], b"pw", [6; 16], [7; 24], KdfParams::for_tests())
                .unwrap();
        assert_eq!(hex::encode(&wrapped), "0101080000000100000001000000060606060606060606060606060606060707070707070707070707070707070707070707070707071d84bbc347ac8770785d32db7767163a1d48cdcb80333235ad99508a8a6bb217b6e011df7296c0dd9bd3a226b9f4a955");
    }

    #[test]
    fn debug_never_prints_secrets() {
        let secret = device(0xab);
        let shown = format!(
            "{secret:?} {:?} {:?}",
            EpochKey::from_bytes([0xab; 32]),
            StorageKey::from_bytes([0xab; 32])
        );
        assert!(!shown.contains("abab"), "{shown}");
        assert!(shown.contains("AgreementPublic("), "{shown}");
        let public = format!("{:?}", AgreementPublic([0x12; 32]));
        assert_eq!(public, "AgreementPublic(12121212…)");
    }

    #[test]
    fn agreement_secret_seed_round_trip() {
        let a = device(4);
        let b = AgreementSecret::from_seed(*a.to_seed());
        assert_eq!(a.public(), b.public());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn seal_open_round_trip(
            secret in proptest::collection::vec(any::<u8>(), 0..100),
            context in proptest::collection::vec(any::<u8>(), 0..40),
            seed in any::<[u8; 32]>(),
            eph in any::<[u8; 32]>(),
        ) {
            let own = AgreementSecret::from_seed(seed);
            let sealed = seal(&own.public(), &context, &secret, eph).unwrap();
            prop_assert_eq!(&open(&own, &context, &sealed).unwrap()[..], &secret[..]);
        }

        #[test]
        fn body_round_trip(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            aad in proptest::collection::vec(any::<u8>(), 0..40),
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; 24]>(),
        ) {
            let key = EpochKey::from_bytes(key);
            let bytes = encrypt_body(&key, &aad, &body, nonce);
            prop_assert_eq!(decrypt_body(&key, &aad, &bytes).unwrap(), body);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            context in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let mut with_version = vec![SEAL_VERSION];
            with_version.extend_from_slice(&bytes);
            prop_assert!(open(&device(1), &context, &bytes).is_err());
            prop_assert!(open(&device(1), &context, &with_version).is_err());
            let key = EpochKey::from_bytes([1; 32]);
            prop_assert!(decrypt_body(&key, &context, &bytes).is_err());
            prop_assert!(StorageKey::from_bytes([1; 32]).open_record(&context, &bytes).is_err());
            prop_assert!(unwrap_with_passphrase(&bytes, b"pw").is_err());
        }

        /// A wrapped-looking blob with random header fields: parameters are bounded, never a
        /// panic, never success.
        #[test]
        fn arbitrary_wrapped_never_panics(
            m in prop_oneof![any::<u32>(), 0u32..64],
            t in prop_oneof![any::<u32>(), 0u32..3],
            p in prop_oneof![any::<u32>(), 0u32..3],
            rest in any::<[u8; 88]>(),
        ) {
            let mut b = vec![WRAP_VERSION, 1];
            b.extend_from_slice(&m.to_le_bytes());
            b.extend_from_slice(&t.to_le_bytes());
            b.extend_from_slice(&p.to_le_bytes());
            b.extend_from_slice(&rest);
            // Keep the hash cheap: only small memory/time values can reach argon2.
            prop_assume!(m <= 64 || KdfParams::new(m, t, p).is_err());
            prop_assert!(unwrap_with_passphrase(&b, b"pw").is_err());
        }
    }
}
