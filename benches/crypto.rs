//! Encryption primitives (issue 6): message bodies, a group rekey, at-rest records and the
//! passphrase unwrap, and the signature rule (issue 13), on one core.
//!
//! `cargo bench --bench crypto`

mod common;

use criterion::{BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use tidings::engine::crypto::{
    decrypt_body, encrypt_body, open, seal, unwrap_with_passphrase, wrap_with_passphrase,
    AgreementSecret, EpochKey, KdfParams, StorageKey,
};
use tidings::engine::signature;

/// A 100-member group with 2 devices each.
const N_DEVICES: usize = 200;

/// Distinct 24-byte nonces (randomness comes from the caller; here a counter will do).
fn nonce(i: u64) -> [u8; 24] {
    let mut n = [0x5a; 24];
    n[..8].copy_from_slice(&i.to_le_bytes());
    n
}

fn seed(i: u64, tag: u8) -> [u8; 32] {
    let mut s = [tag; 32];
    s[..8].copy_from_slice(&i.to_le_bytes());
    s
}

fn crypto<M: common::Clock>(c: &mut Criterion<M>) {
    let header = [0x11u8; 120]; // about the size of an encoded event header
    let key = EpochKey::from_bytes([7; 32]);

    let mut g = c.benchmark_group(common::group::<M>("crypto_body"));
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for size in [100usize, 1024] {
        let body = vec![0x42u8; size];
        let sealed = encrypt_body(&key, &header, &body, nonce(0));
        let mut i = 0u64;
        g.bench_with_input(BenchmarkId::new("encrypt", size), &body, |b, body| {
            b.iter(|| {
                i += 1;
                black_box(encrypt_body(&key, &header, body, nonce(i)))
            })
        });
        g.bench_with_input(BenchmarkId::new("decrypt", size), &sealed, |b, sealed| {
            b.iter(|| black_box(decrypt_body(&key, &header, sealed).expect("decrypt")))
        });
        let mut i = 0u64;
        g.bench_with_input(
            BenchmarkId::new("encrypt_decrypt", size),
            &body,
            |b, body| {
                b.iter(|| {
                    i += 1;
                    let bytes = encrypt_body(&key, &header, body, nonce(i));
                    black_box(decrypt_body(&key, &header, &bytes).expect("decrypt"))
                })
            },
        );
    }
    g.finish();

    let devices: Vec<AgreementSecret> = (0..N_DEVICES as u64)
        .map(|i| AgreementSecret::from_seed(seed(i, 1)))
        .collect();
    let publics: Vec<_> = devices.iter().map(AgreementSecret::public).collect();
    let context = b"conversation-id-32-bytes........epoch-0001";
    let mut g = c.benchmark_group(common::group::<M>("crypto_rekey"));
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(N_DEVICES as u64));
    let mut round = 0u64;
    g.bench_function("seal_epoch_key_to_200_devices", |b| {
        b.iter(|| {
            round += 1;
            let sealed: Vec<Vec<u8>> = publics
                .iter()
                .enumerate()
                .map(|(d, p)| seal(p, context, key.as_bytes(), seed(round, d as u8)).expect("seal"))
                .collect();
            black_box(sealed)
        })
    });
    let one = seal(&publics[0], context, key.as_bytes(), seed(0, 9)).expect("seal");
    g.throughput(Throughput::Elements(1));
    g.bench_function("open_epoch_key", |b| {
        b.iter(|| black_box(open(&devices[0], context, &one).expect("open")))
    });
    g.finish();

    let storage = StorageKey::from_bytes([3; 32]);
    let record = vec![0x33u8; 200];
    let record_context = b"\x08messages\x00\x00\x00\x00\x00\x00\x00\x2a";
    let sealed_record = storage.seal_record(record_context, &record, nonce(0));
    let mut g = c.benchmark_group(common::group::<M>("crypto_record"));
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("seal_200B", |b| {
        b.iter(|| {
            i += 1;
            black_box(storage.seal_record(record_context, &record, nonce(i)))
        })
    });
    g.bench_function("open_200B", |b| {
        b.iter(|| {
            black_box(
                storage
                    .open_record(record_context, &sealed_record)
                    .expect("open"),
            )
        })
    });
    g.finish();

    // The one signature rule on an event id (what the relay and every device run per event),
    // against ed25519-dalek's `verify_strict`, which decompresses R to check its order.
    let signing = ed25519_dalek::SigningKey::from_bytes(&[6; 32]);
    let key = signature::verifying_key(&signing.verifying_key().to_bytes()).expect("key");
    let id = [7u8; 32];
    let sig = ed25519_dalek::Signer::sign(&signing, &id);
    let mut g = c.benchmark_group(common::group::<M>("crypto_signature"));
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    g.bench_function("verify_rule", |b| {
        b.iter(|| assert!(signature::verify(&key, black_box(&id), black_box(&sig))))
    });
    g.bench_function("verify_strict_dalek", |b| {
        b.iter(|| assert!(key.verify_strict(black_box(&id), black_box(&sig)).is_ok()))
    });
    g.bench_function("sign", |b| {
        b.iter(|| black_box(ed25519_dalek::Signer::sign(&signing, black_box(&id))))
    });
    g.finish();

    let wrapped = wrap_with_passphrase(
        &[4; 32],
        b"correct horse battery staple",
        [5; 16],
        nonce(1),
        KdfParams::default(),
    )
    .expect("wrap");
    let mut g = c.benchmark_group(common::group::<M>("crypto_passphrase"));
    common::slow_group_settings(&mut g, Duration::from_secs(5));
    g.bench_function("unwrap_default_params", |b| {
        b.iter(|| {
            black_box(
                unwrap_with_passphrase(&wrapped, b"correct horse battery staple").expect("unwrap"),
            )
        })
    });
    g.finish();
}

fn main() {
    common::main(crypto, crypto);
}
