//! Open: from a closed store (a log file on disk) to a conversation's latest 50 messages in
//! view order. Fast path: the redb index tables (`Store::latest`); slow path for comparison:
//! load the automerge document from its snapshot, then `latest(50)`.
//!
//! `cargo bench --bench open`

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tidings::engine::{ConversationId, EventLog, Store, StoreConfig};

/// Events per `Store::apply` batch while building the fixture.
const APPLY_BATCH: usize = 1_000;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    conv: ConversationId,
}

/// A log file with one conversation of `n_messages`, folded and snapshotted, store closed.
fn fixture(cast: &common::Cast, n_messages: u64) -> Fixture {
    let conv = common::conversation_id(n_messages);
    let events = common::conversation(cast, conv, n_messages);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("open.redb");
    let log = EventLog::open(&path).expect("open");
    let mut store = Store::new(
        log,
        cast.alice.clone(),
        StoreConfig::new(cast.relay_id()),
        [3; 32],
    );
    for batch in events.chunks(APPLY_BATCH) {
        store.apply(batch).expect("apply");
    }
    store.snapshot_all().expect("snapshot");
    drop(store);
    Fixture {
        _dir: dir,
        path,
        conv,
    }
}

fn open_store(cast: &common::Cast, path: &Path) -> Store {
    let log = EventLog::open(path).expect("open");
    Store::new(
        log,
        cast.alice.clone(),
        StoreConfig::new(cast.relay_id()),
        [3; 32],
    )
}

/// Times `f` from a closed store each iteration; closing the store is not timed.
fn timed_from_closed(
    iters: u64,
    cast: &common::Cast,
    path: &Path,
    f: impl Fn(&mut Store),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let mut store = open_store(cast, path);
        f(&mut store);
        total += start.elapsed();
        drop(store);
    }
    total
}

fn open(c: &mut Criterion) {
    let cast = common::Cast::new();
    let fixtures: Vec<(u64, Fixture)> = [1_000, 100_000]
        .into_iter()
        .map(|n| (n, fixture(&cast, n)))
        .collect();

    let mut g = c.benchmark_group("open_fast");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (n, fx) in &fixtures {
        g.bench_with_input(BenchmarkId::new("latest_50", n), fx, |b, fx| {
            b.iter_custom(|iters| {
                timed_from_closed(iters, &cast, &fx.path, |s| {
                    black_box(s.latest(fx.conv, 50).expect("latest"));
                })
            })
        });
    }
    // Part of the above: opening the redb file alone (one durable write: the incarnation).
    let (_, big) = &fixtures[1];
    g.bench_function("log_open_only/100000", |b| {
        b.iter_custom(|iters| timed_from_closed(iters, &cast, &big.path, |_| {}))
    });
    g.finish();

    let mut g = c.benchmark_group("open_slow");
    common::slow_group_settings(&mut g, Duration::from_secs(20));
    for (n, fx) in &fixtures {
        g.bench_with_input(
            BenchmarkId::new("snapshot_load_latest_50", n),
            fx,
            |b, fx| {
                b.iter_custom(|iters| {
                    timed_from_closed(iters, &cast, &fx.path, |s| {
                        black_box(s.conversation(fx.conv).expect("load").latest(50));
                    })
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, open);
criterion_main!(benches);
