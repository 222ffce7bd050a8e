//! Open: from a closed store (a log file on disk) to a conversation's latest 50 messages in
//! view order with their bodies decrypted, what a screen shows. Fast path: the redb index
//! tables (`MessageReader::page`, what `Replica::page` runs); slow path for comparison: load
//! the automerge document from its snapshot, then `latest(50)` and `Store::body` for each.
//!
//! The conversation is encrypted (`common::encrypted`: Bob's real store sends every message),
//! so every body read opens its epoch key and decrypts.
//!
//! `cargo bench --bench open`

mod common;

use common::encrypted::{alice_store, cast, history, Member, CONV};
use common::opens::{all_decrypted, open_store, timed_from_closed, timed_opens, unseal, SCREEN};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tidings::engine::EventLog;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

/// A log file with one encrypted conversation of `n_messages`, folded and snapshotted, store
/// closed.
fn fixture(alice: &Member, bob: &Member, n_messages: u64) -> Fixture {
    let events = history(alice, bob, n_messages);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("open.redb");
    let log = EventLog::open(&path).expect("open");
    let mut store = alice_store(log, alice, bob, &events);
    store.snapshot_all().expect("snapshot");
    drop(store);
    Fixture { _dir: dir, path }
}

fn open(c: &mut Criterion) {
    let (alice, bob) = cast();
    let fixtures: Vec<(u64, Fixture)> = [1_000, 100_000]
        .into_iter()
        .map(|n| (n, fixture(&alice, &bob, n)))
        .collect();

    let mut g = c.benchmark_group("open_fast");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (n, fx) in &fixtures {
        g.bench_with_input(BenchmarkId::new("latest_50", n), fx, |b, fx| {
            b.iter_custom(|iters| {
                timed_from_closed(iters, &alice, &fx.path, |s| {
                    let page = s.reader().page(CONV, None, SCREEN).expect("page");
                    all_decrypted(black_box(page).into_iter().map(|r| r.body));
                })
            })
        });
    }
    // Part of the above: opening the redb file alone (one durable write: the incarnation).
    let (_, big) = &fixtures[1];
    g.bench_function("log_open_only/100000", |b| {
        b.iter_custom(|iters| timed_from_closed(iters, &alice, &big.path, |_| {}))
    });
    // The same open with every page checked (no seal: after a crash or an outside write).
    g.bench_function("log_open_checked/100000", |b| {
        b.iter_custom(|iters| timed_opens(iters, &alice, &big.path, || unseal(&big.path), |_| {}))
    });
    // Part of that: redb's own open of the file, without `EventLog::open`'s full page check
    // (`check_integrity`) and its incarnation commit.
    g.bench_function("redb_open_only/100000", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let db = black_box(redb::Database::create(&big.path).expect("redb open"));
                total += start.elapsed();
                drop(db);
            }
            total
        })
    });
    g.finish();

    // The read alone, the store already open (what `Replica::page` costs a running app).
    let mut g = c.benchmark_group("page_open_store");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (n, fx) in &fixtures {
        let store = open_store(&alice, &fx.path);
        let reader = store.reader();
        g.bench_with_input(BenchmarkId::new("latest_50", n), fx, |b, _| {
            b.iter(|| {
                let page = reader.page(CONV, None, SCREEN).expect("page");
                all_decrypted(black_box(page).into_iter().map(|r| r.body));
            })
        });
        drop(store);
    }
    g.finish();

    let mut g = c.benchmark_group("open_slow");
    common::slow_group_settings(&mut g, Duration::from_secs(20));
    for (n, fx) in &fixtures {
        g.bench_with_input(
            BenchmarkId::new("snapshot_load_latest_50", n),
            fx,
            |b, fx| {
                b.iter_custom(|iters| {
                    timed_from_closed(iters, &alice, &fx.path, |s| {
                        let latest = s.conversation(CONV).expect("load").latest(SCREEN);
                        let bodies = latest.iter().map(|m| s.body(m).expect("body"));
                        all_decrypted(black_box(bodies.collect::<Vec<_>>()));
                    })
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, open);
criterion_main!(benches);
