//! Device compaction at 100k messages (issue 17): a device's log file in three states, its
//! size, and what an open costs from the closed file to the screen (the latest 50 messages,
//! bodies decrypted, as in `benches/open.rs`):
//! - `full`: 100,000 encrypted messages under `KeepDays { days: 1 }` (`common::kept`), none due;
//! - `erased`: at a `now` when the oldest 90% are past the policy, after the erasure passes
//!   (`Store::erase_due`), not compacted;
//! - `compacted`: the same after `Store::compact`.
//!
//! Each state is opened sealed (after a clean close: no page check) and checked (the seal
//! taken away, as after a crash: every page read). The erasure leaves far more than
//! `COMPACT_AFTER_BYTES` to give back, so an open of `erased` compacts the file itself: each
//! of its iterations opens a fresh copy, made untimed (for the sealed open, by erasing a copy
//! of `full` and closing it).
//!
//! Sizes go to stderr (criterion does not do sizes). Before anything is timed, every state is
//! checked to show what the policy keeps exactly as `full` showed it (ids, statuses, bodies),
//! so no figure is of a broken store.
//!
//! `cargo bench --bench compaction`

mod common;

use common::encrypted::{alice_store, body, cast, Member};
use common::kept::{due_at, erase_all_due, history, view, CONV};
use common::opens::{all_decrypted, open_store, timed_opens, unseal, SCREEN};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tidings::engine::store::Body;
use tidings::engine::{EventLog, RetentionPolicy, Store};

/// Messages in the conversation.
const N: u64 = 100_000;
/// Of which past the policy at `now`: the oldest 90%.
const N_ERASED: usize = 90_000;
/// The policy keeps a day.
const KEEP_DAYS: u32 = 1;

/// The three states, closed, and a place to open copies of `erased`.
struct Fixture {
    _dir: tempfile::TempDir,
    full: PathBuf,
    /// Never opened after its erasure (an open would compact it): only copied.
    erased: PathBuf,
    compacted: PathBuf,
    /// Where the timed opens of `erased` run, on a fresh copy each.
    work: PathBuf,
    /// The erasure passes' clock.
    now: u64,
}

fn fixture(alice: &Member, bob: &Member) -> Fixture {
    let policy = RetentionPolicy::KeepDays { days: KEEP_DAYS };
    let events = history(alice, bob, N, policy);
    let now = due_at(&events, N_ERASED, KEEP_DAYS);
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Fixture {
        full: dir.path().join("full.redb"),
        erased: dir.path().join("erased.redb"),
        compacted: dir.path().join("compacted.redb"),
        work: dir.path().join("work.redb"),
        now,
        _dir: dir,
    };

    let mut store = alice_store(EventLog::open(&fx.full).expect("open"), alice, bob, &events);
    store.snapshot_all().expect("snapshot");
    let full_view = view(&store);
    assert_eq!(full_view.len(), N as usize);
    drop(store);
    let kept = &full_view[N_ERASED..];
    for (i, (_, _, b)) in kept.iter().enumerate() {
        assert_eq!(*b, Body::Text(body((N_ERASED + i) as u64)));
    }

    // (b): erased, closed; and a copy opened, which compacts it.
    let (store, erase_time) = erased_copy(alice, &fx.full, &fx.erased, now);
    let erased_bytes = store.log().erased_bytes().expect("erased bytes");
    assert_eq!(view(&store), kept, "erased, before compaction");
    drop(store);
    copy_unsealed(&fx.erased, &fx.work);
    let store = open_store(alice, &fx.work);
    assert_eq!(store.log().erased_bytes().expect("erased bytes"), 0);
    assert_eq!(view(&store), kept, "erased, compacted by the open");
    drop(store);
    let opened_len = len(&fx.work);

    // (c): erased, then `Store::compact`.
    let (mut store, _) = erased_copy(alice, &fx.full, &fx.compacted, now);
    let start = Instant::now();
    store.compact().expect("compact");
    let compact_time = start.elapsed();
    drop(store);
    let store = open_store(alice, &fx.compacted);
    assert_eq!(view(&store), kept, "compacted");
    assert_eq!(store.erased(CONV).expect("tombstones").len(), N_ERASED);
    drop(store);

    eprintln!("compaction: {N} messages, {N_ERASED} erased (KeepDays {{ days: {KEEP_DAYS} }})");
    eprintln!(
        "  file size, full:                       {} B",
        len(&fx.full)
    );
    eprintln!(
        "  file size, erased (not compacted):     {} B",
        len(&fx.erased)
    );
    eprintln!(
        "  file size, compacted (Store::compact): {} B",
        len(&fx.compacted)
    );
    eprintln!("  file size, erased after one open:      {opened_len} B");
    eprintln!("  envelope bytes erased: {erased_bytes} B");
    eprintln!("  one run, untimed by criterion: erasure passes {erase_time:?}, Store::compact {compact_time:?}");
    fx
}

/// A copy of the closed log at `from` at `to`, without a seal: its first open checks it.
fn copy_unsealed(from: &Path, to: &Path) {
    unseal(to);
    std::fs::copy(from, to).expect("copy");
}

/// Alice's store on a copy of `full` at `to` after the erasure passes at `now`, and how long
/// the passes took.
fn erased_copy(alice: &Member, full: &Path, to: &Path, now: u64) -> (Store, Duration) {
    copy_unsealed(full, to);
    let mut store = open_store(alice, to);
    let start = Instant::now();
    assert_eq!(erase_all_due(&mut store, now), N_ERASED);
    let took = start.elapsed();
    (store, took)
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("metadata").len()
}

/// The screen after an open that was `sealed` or checked every page (which one is asserted:
/// a seal that failed to vouch would time the other open).
fn latest(sealed: bool) -> impl Fn(&mut Store) {
    move |store| {
        assert_eq!(store.log().checked_in_full(), !sealed);
        let page = store.reader().page(CONV, None, SCREEN).expect("page");
        all_decrypted(black_box(page).into_iter().map(|r| r.body));
    }
}

fn compaction(c: &mut Criterion) {
    let (alice, bob) = cast();
    let fx = fixture(&alice, &bob);

    let mut g = c.benchmark_group("compaction_open");
    common::slow_group_settings(&mut g, Duration::from_secs(5));
    for (state, path) in [("full", &fx.full), ("compacted", &fx.compacted)] {
        g.bench_function(BenchmarkId::new("sealed_latest_50", state), |b| {
            b.iter_custom(|iters| timed_opens(iters, &alice, path, || {}, latest(true)))
        });
        g.bench_function(BenchmarkId::new("checked_latest_50", state), |b| {
            b.iter_custom(|iters| timed_opens(iters, &alice, path, || unseal(path), latest(false)))
        });
    }
    // Erased: each open compacts, so each opens a fresh copy. Sealed: the copy is erased and
    // closed cleanly first, as an app that erased, closed and starts again.
    g.bench_function(BenchmarkId::new("sealed_latest_50", "erased"), |b| {
        b.iter_custom(|iters| {
            let prepare = || drop(erased_copy(&alice, &fx.full, &fx.work, fx.now));
            timed_opens(iters, &alice, &fx.work, prepare, latest(true))
        })
    });
    g.bench_function(BenchmarkId::new("checked_latest_50", "erased"), |b| {
        b.iter_custom(|iters| {
            let prepare = || copy_unsealed(&fx.erased, &fx.work);
            timed_opens(iters, &alice, &fx.work, prepare, latest(false))
        })
    });
    g.finish();
}

criterion_group!(benches, compaction);
criterion_main!(benches);
