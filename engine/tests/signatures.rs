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
    let honest = Event::sign(
        key.signing_key(),
        header,
        EventKind::Delivered {
            up_to: 1,
            head: None,
        },
    )
    .expect("sign");
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
        EventKind::Read {
            up_to: 1,
            head: None,
        },
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

/// The edge-case vectors of the "Taming the many EdDSAs" study (ed25519-speccheck's
/// `cases.json`, 15 cases): message, public key, signature. docs/SECURITY.md lists what is
/// unusual about each and the verdict of the one rule.
const SPECCHECK: [(&str, &str, &str); 15] = [
    ("2a66241a42a9ee12994d8068dcf1bb7dfc6637b45450acd43711f637fa5080fc", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a0000000000000000000000000000000000000000000000000000000000000000"),
    ("8c93255d71dcab10e8f379c26200f3c7bd5f09d9bc3068d3ef4edeb4853022b6", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a0000000000000000000000000000000000000000000000000000000000000000"),
    ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
    ("9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
    ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41", "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa182ef1a5b928da07fec769cc8a12db6bcf70dab3f3227fa315e9d5e3e01a3405"),
    ("aebf3f2601a0c8c5d39cc7d8911642f740b78168218da8471772b35f9d35b9ab", "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa8c4bd45aecaca5b24fb97bc10ac27ac8751a7dfe1baff8b953ec9f5833ca260e"),
    ("9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79", "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d", "9046a64750444938de19f227bb80485e92b83fdb4b6506c160484c016cc1852f87909e14428a7a1d62e9f22f3d3ad7802db02eb2e688b6c52fcd6648a98bd009"),
    ("e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c", "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d", "160a1cb0dc9c0258cd0a7d23e94d8fa878bcb1925f2c64246b2dee1796bed5125ec6bc982a269b723e0668e540911a9a6a58921d6925e434ab10aa7940551a09"),
    ("e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c", "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d", "21122a84e0b5fca4052f5b1235c80a537878b38f3142356b2c2384ebad4668b7e40bc836dac0f71076f9abe3a53f9c03c1ceeeddb658d0030494ace586687405"),
    ("85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40", "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623", "e96f66be976d82e60150baecff9906684aebb1ef181f67a7189ac78ea23b6c0e547f7690a0e2ddcd04d87dbc3490dc19b3b3052f7ff0538cb68afb369ba3a514"),
    ("85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40", "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623", "8ce5b96c8f26d0ab6c47958c9e68b937104cd36e13c33566acd2fe8d38aa19427e71f98a473474f2f13f06f97c20d58cc3f54b8bd0d272f42b695dd7e89a8c22"),
    ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41", "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43", "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff03be9678ac102edcd92b0210bb34d7428d12ffc5df5f37e359941266a4e35f0f"),
    ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41", "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43", "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffca8c5b64cd208982aa38d4936621a4775aa233aa0505711d8fdcfdaa943d4908"),
    ("e96b7021eb39c1a163b6da4e3093dcd3f21387da4cc4572be588fafae23c155b", "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dca5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
    ("39a591f5321bbe07fd5a23dc2f39d025d74526615746727ceefd6e82ae65c06f", "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dca5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
];

/// The verdicts of the one rule on the speccheck vectors, as docs/SECURITY.md lists them
/// (true = accepted): only case 6, a signature with mixed-order A and R whose cofactorless
/// equation holds, the one every implementation in the study accepts.
const SPECCHECK_VERDICTS: [bool; 15] = [
    false, false, false, false, false, false, true, false, false, false, false, false, false,
    false, false,
];

#[test]
fn speccheck_vectors_get_one_verdict_everywhere() {
    use tidings_engine::signature;
    use tidings_engine::wire::SignatureBytes;
    let mut verdicts = Vec::new();
    for (i, (msg, key, sig)) in SPECCHECK.iter().enumerate() {
        let msg = hex::decode(msg).expect("hex");
        let key = hex32(key);
        let mut s = [0u8; 64];
        hex::decode_to_slice(sig, &mut s).expect("hex");
        // The primitive every path calls: event decode (relay and device, single and
        // batch), certificates, revocations and the authentication handshake.
        let single = signature::verify_bytes(&key, &msg, &s);
        // The certificate / handshake path.
        let statement = SignatureBytes(s).verify(&key, &msg);
        // A "batch" of the vector with an honest signature around it: each is judged alone.
        let honest = DeviceKey::from_seed([9; 32], UserId([9; 32]));
        let good = ed25519_dalek::Signer::sign(honest.signing_key(), &msg).to_bytes();
        let batch: Vec<bool> = [
            (honest.device().0, good),
            (key, s),
            (honest.device().0, good),
        ]
        .iter()
        .map(|(k, sig)| signature::verify_bytes(k, &msg, sig))
        .collect();
        assert_eq!(batch, vec![true, single, true], "case {i}");
        assert_eq!(statement, single, "case {i}");
        verdicts.push(single);
    }
    assert_eq!(
        verdicts, SPECCHECK_VERDICTS,
        "verdicts per case: {verdicts:?}"
    );
}
