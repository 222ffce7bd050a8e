//! Codec: encode + hash + sign, decode + verify, and batch decode, per event, on one core.
//!
//! `cargo bench --bench codec`

mod common;

use criterion::{Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use tidings::engine::{Event, EventHeader, EventKind};

/// Events per measured batch (also the `decode_batch` size).
const N_EVENTS: usize = 256;

fn codec<M: common::Clock>(c: &mut Criterion<M>) {
    let cast = common::Cast::new();
    let conv = common::conversation_id(0);
    // A realistic mix: sends, relay acks, receipts.
    let mut events = common::conversation(&cast, conv, 120);
    events.truncate(N_EVENTS);
    assert_eq!(events.len(), N_EVENTS, "fixture too short");
    let keys = [&cast.alice, &cast.bob, &cast.relay];
    let to_sign: Vec<(&ed25519_dalek::SigningKey, EventHeader, EventKind)> = events
        .iter()
        .map(|e| {
            let key = keys
                .iter()
                .find(|k| k.device() == e.header().author)
                .expect("author in cast");
            (key.signing_key(), e.header().clone(), e.kind().clone())
        })
        .collect();
    let envelopes: Vec<Vec<u8>> = events.iter().map(|e| e.bytes().to_vec()).collect();

    let mut g = c.benchmark_group(common::group::<M>("codec"));
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(N_EVENTS as u64));
    g.bench_function("encode_hash_sign", |b| {
        b.iter(|| {
            for (key, header, kind) in &to_sign {
                black_box(Event::sign(key, header.clone(), kind.clone()).expect("sign"));
            }
        })
    });
    g.bench_function("decode_verify", |b| {
        b.iter(|| {
            for env in &envelopes {
                black_box(Event::decode(env).expect("decode"));
            }
        })
    });
    g.bench_function("decode_batch_256", |b| {
        b.iter(|| {
            let out = Event::decode_batch(&envelopes);
            debug_assert!(out.iter().all(Result::is_ok));
            black_box(out)
        })
    });
    // Without the signature check: what is left is postcard, blake3 and the canonical re-encode.
    g.bench_function("decode_trusted_no_verify", |b| {
        b.iter(|| {
            for env in &envelopes {
                black_box(Event::decode_trusted(env).expect("decode"));
            }
        })
    });
    g.finish();
}

fn main() {
    common::main(codec, codec);
}
