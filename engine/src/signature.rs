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
///
/// This is `verify_strict`'s verdict (given a canonical `R`) without its decompression of
/// `R`, about a tenth of a check's cost: the cofactorless equation (`Verifier::verify`)
/// compares `R` with the *encoding* of `[s]B - [k]A`, so when it holds, `R` is the canonical
/// encoding of that point, and the point is of small order exactly when `R` is one of the
/// eight canonical encodings of the small-order points. `verify_strict` decompresses `R` to
/// ask the same question of the point; a table lookup asks it of the bytes.
pub fn verify(key: &VerifyingKey, msg: &[u8], signature: &Signature) -> bool {
    let r = signature.r_bytes();
    is_canonical_point(r)
        && !is_small_order_encoding(r)
        && ed25519_dalek::Verifier::verify(key, msg, signature).is_ok()
}

/// Whether `bytes` is the canonical encoding of one of the eight points of small order.
fn is_small_order_encoding(bytes: &[u8; 32]) -> bool {
    static SMALL_ORDER: std::sync::LazyLock<[[u8; 32]; 8]> = std::sync::LazyLock::new(|| {
        curve25519_dalek::constants::EIGHT_TORSION.map(|p| p.compress().to_bytes())
    });
    SMALL_ORDER.contains(bytes)
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

    /// The table holds the eight distinct encodings of the small-order points, and the fast
    /// rule gives `verify_strict`'s verdict on honest signatures, on signatures whose `R` is
    /// a small-order point or carries a small-order component, and on altered ones.
    #[test]
    fn the_fast_rule_is_verify_strict() {
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
        use curve25519_dalek::edwards::CompressedEdwardsY;
        use curve25519_dalek::scalar::Scalar;
        use ed25519_dalek::{Signer, SigningKey};
        use sha2::{Digest, Sha512};
        let table: std::collections::BTreeSet<[u8; 32]> = EIGHT_TORSION
            .iter()
            .map(|p| p.compress().to_bytes())
            .collect();
        assert_eq!(table.len(), 8);
        for bytes in &table {
            let point = CompressedEdwardsY(*bytes).decompress().expect("point");
            assert!(point.is_small_order() && is_canonical_point(bytes));
            assert!(is_small_order_encoding(bytes));
        }
        let strict = |key: &VerifyingKey, msg: &[u8], sig: &Signature| {
            is_canonical_point(sig.r_bytes()) && key.verify_strict(msg, sig).is_ok()
        };
        let mut verdicts = [0usize; 2];
        for i in 0u8..64 {
            let signing = SigningKey::from_bytes(&[i.wrapping_add(1); 32]);
            let key = verifying_key(&signing.verifying_key().to_bytes()).expect("key");
            let msg = [i; 32];
            let honest = signing.sign(&msg);
            // A signature with R = [r]B + T for T of small order: the equation holds up to T
            // (for T the identity it is an honest signature with another nonce).
            let torsion = EIGHT_TORSION[usize::from(i % 8)];
            let nonce = Scalar::from(u64::from(i) + 7);
            let big_r = (ED25519_BASEPOINT_POINT * nonce + torsion).compress();
            let wide: [u8; 64] = Sha512::new()
                .chain_update(big_r.as_bytes())
                .chain_update(key.as_bytes())
                .chain_update(msg)
                .finalize()
                .into();
            let k = Scalar::from_bytes_mod_order_wide(&wide);
            let s = nonce + k * signing.to_scalar();
            let mut mixed = [0u8; 64];
            mixed[..32].copy_from_slice(big_r.as_bytes());
            mixed[32..].copy_from_slice(s.as_bytes());
            // R itself of small order, with the scalar of the honest signature.
            let mut small = honest.to_bytes();
            small[..32].copy_from_slice(&torsion.compress().to_bytes());
            let mut altered = honest.to_bytes();
            altered[40] ^= 1;
            for sig in [honest.to_bytes(), mixed, small, altered] {
                let sig = Signature::from_bytes(&sig);
                let fast = verify(&key, &msg, &sig);
                assert_eq!(fast, strict(&key, &msg, &sig), "key {i}");
                verdicts[usize::from(fast)] += 1;
            }
        }
        // Both verdicts occur: honest and torsion-free signatures pass, the rest fail.
        assert_eq!(verdicts, [64 * 4 - 64 - 8, 64 + 8]);
    }
}
