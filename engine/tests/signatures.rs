//! One acceptance rule for ed25519 signatures (SECURITY.md, invariant 2): a single check and a
//! batch check give the same verdict for every signature, including the edge cases that
//! implementations disagree on.
//!
//! The mixed-order forgery below is what an attacker grinds for: a signature that holds only
//! up to a small-order component. Strict verification refuses it; ed25519 batch verification
//! (a random linear combination of the cofactorless equations) accepts it whenever the
//! combination's coefficient kills the component, one time in eight. A relay that batch-verifies
//! would sequence such an event and every device checking strictly would refuse it.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use sha2::{Digest, Sha512};
use tidings_engine::event::ENVELOPE_PREFIX_LEN;
use tidings_engine::{ConversationId, DeviceKey, Event, EventKind, UserId};

/// An order-8 point (the first key of the speccheck vectors).
const ORDER_8_POINT: &str = "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa";

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).expect("hex");
    out
}

/// An event signed by `key` whose signature is replaced by one with nonce point
/// `R = r·B + T` (T of order 8): it satisfies the cofactored equation only.
fn mixed_order_event(key: &DeviceKey, r: u64) -> Vec<u8> {
    let header = key.header(ConversationId([3; 16]), 1, None, 1, 1_000);
    let honest =
        Event::sign(key.signing_key(), header, EventKind::Delivered { up_to: 1 }).expect("sign");
    let mut bytes = honest.into_bytes();
    let id: [u8; 32] = bytes[1..33].try_into().expect("id");
    let torsion = CompressedEdwardsY(hex32(ORDER_8_POINT))
        .decompress()
        .expect("point");
    assert!(torsion.is_small_order() && !(torsion + torsion + torsion + torsion).is_identity());
    let a = key.signing_key().to_scalar();
    let nonce = Scalar::from(r + 1_000);
    let big_r = (ED25519_BASEPOINT_POINT * nonce + torsion).compress();
    let mut h = Sha512::new();
    h.update(big_r.as_bytes());
    h.update(key.device().0);
    h.update(id);
    let wide: [u8; 64] = h.finalize().into();
    let k = Scalar::from_bytes_mod_order_wide(&wide);
    let s = nonce + k * a;
    bytes[33..65].copy_from_slice(big_r.as_bytes());
    bytes[65..ENVELOPE_PREFIX_LEN].copy_from_slice(s.as_bytes());
    bytes
}

#[test]
fn a_mixed_order_signature_gets_the_same_verdict_single_and_in_a_batch() {
    let key = DeviceKey::from_seed([5; 32], UserId([6; 32]));
    let other = DeviceKey::from_seed([7; 32], UserId([6; 32]));
    let honest = Event::sign(
        other.signing_key(),
        other.header(ConversationId([3; 16]), 1, None, 1, 1_000),
        EventKind::Read { up_to: 1 },
    )
    .expect("sign")
    .into_bytes();
    for r in 0..64 {
        let forged = mixed_order_event(&key, r);
        let single = Event::decode(&forged).is_ok();
        assert!(
            !single,
            "nonce {r}: strict single verification accepted a mixed-order signature"
        );
        let alone = Event::decode_batch(std::slice::from_ref(&forged));
        assert_eq!(
            alone[0].is_ok(),
            single,
            "nonce {r}: batch of one disagrees"
        );
        let mixed = Event::decode_batch(&[honest.clone(), forged.clone()]);
        assert!(
            mixed[0].is_ok(),
            "nonce {r}: the honest event must stay accepted"
        );
        assert_eq!(
            mixed[1].is_ok(),
            single,
            "nonce {r}: batch of two disagrees"
        );
    }
}
