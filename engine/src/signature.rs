//! The one acceptance rule for ed25519 signatures, used by every check in the system: event
//! envelopes on the relay and on devices (one at a time or in a batch), device certificates,
//! revocations and the authentication handshake.
//!
//! A signature `(R, s)` by key `A` over `msg` is accepted when:
//! - `A` and `R` are canonical encodings (y < p) of points that are not of small order;
//! - `s < ℓ` (canonical scalar);
//! - `R == [s]B - [H(R‖A‖msg)]A`, compared as encodings (ed25519-dalek's `verify_strict`).
//!
//! There is no ed25519 batch verification here on purpose. A batch check is a random linear
//! combination of the cofactorless equations: for a signature whose equation holds only up to
//! a small-order component (a mixed-order `R`), the combination passes whenever its coefficient
//! kills that component (one time in eight, and ed25519-dalek derives the coefficients from
//! the inputs, so an attacker can grind for a passing one). Refusing such signatures before a
//! batch needs a torsion check of every `R` (a full scalar multiplication), which costs about
//! what batching saves. So a "batch" is the single rule applied to each signature, and the
//! relay, every device, batch or single, accept exactly the same set (docs/SECURITY.md lists
//! the verdicts on the edge-case vectors of the "Taming the many EdDSAs" study).

use ed25519_dalek::{Signature, VerifyingKey};

/// Whether a 32-byte point encoding is canonical: its y coordinate (the low 255 bits) is
/// below p = 2^255 - 19. (The other non-canonical form, x = 0 with the sign bit set, only
/// exists for small-order points, which are refused anyway.)
pub fn is_canonical_point(bytes: &[u8; 32]) -> bool {
    // y >= p exactly when the top byte (sign bit masked) is 0x7f, bytes 1..=30 are 0xff and the
    // lowest byte is at least 0xed (p's lowest byte).
    let top = bytes[31] & 0x7f == 0x7f;
    let middle = bytes[1..31].iter().all(|&b| b == 0xff);
    !(top && middle && bytes[0] >= 0xed)
}

/// A public key the rule accepts: canonical, on the curve, not of small order. `None`
/// otherwise.
pub fn verifying_key(bytes: &[u8; 32]) -> Option<VerifyingKey> {
    if !is_canonical_point(bytes) {
        return None;
    }
    let key = VerifyingKey::from_bytes(bytes).ok()?;
    (!key.is_weak()).then_some(key)
}

/// Whether `signature` by `key` over `msg` is accepted (see the module doc for the rule).
/// `key` must come from [`verifying_key`].
pub fn verify(key: &VerifyingKey, msg: &[u8], signature: &Signature) -> bool {
    is_canonical_point(signature.r_bytes()) && key.verify_strict(msg, signature).is_ok()
}

/// [`verifying_key`] and [`verify`] on raw bytes.
pub fn verify_bytes(key: &[u8; 32], msg: &[u8], signature: &[u8; 64]) -> bool {
    verifying_key(key).is_some_and(|k| verify(&k, msg, &Signature::from_bytes(signature)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_points() {
        let mut p = [0xff; 32];
        p[31] = 0x7f;
        p[0] = 0xed;
        assert!(!is_canonical_point(&p), "p itself");
        p[0] = 0xec;
        assert!(is_canonical_point(&p), "p - 1");
        p[31] = 0xff;
        p[0] = 0xee;
        assert!(!is_canonical_point(&p), "p + 1 with the sign bit");
        assert!(is_canonical_point(&[0; 32]));
    }
}
