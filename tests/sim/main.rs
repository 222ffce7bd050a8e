//! Deterministic simulation of devices and the relay: the sans-IO cores over a simulated,
//! faulty network, with crashes, on virtual time; every random choice comes from one seed.
//!
//! - `cargo test --test sim` runs [`DEFAULT_SEEDS`] seeds, spread over every core (each seed
//!   runs on one thread from start to end: the simulation itself has no threads).
//! - `SIM_SEEDS=<n>` runs `n` seeds instead; `SIM_SEED_START=<s>` starts at seed `s`.
//! - `SEED=<n> cargo test --test sim -- --nocapture` runs seed `n` alone and prints its trace.
//! - `SIM_PEERS=0` turns peer links off (on by default in one seed of three, see
//!   `world::peers`).
//! - `NO_FOLD=1` folds every relay page in place (by default half the device incarnations
//!   fold beside the core, see `world::device`); the random draws stay, so a seed keeps its
//!   schedule otherwise.
//!
//! A failing seed prints the seed, the command that reruns it, and the last trace lines.
//! See docs/RELIABILITY.md ("Deterministic simulation") for the fault model and invariants.
//!
//! # Layout
//! - `world`: the simulator (devices, relay, app actions, faults, the heal, the end checks).
//! - `net`: connections and the event queue.
//! - `disk`: a redb storage backend that loses what was not synced.
//! - `check`: the oracle and the invariants.
//! - `trace`: the hashed step trace.

mod check;
mod disk;
mod net;
mod trace;
mod world;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;
use world::{Failure, Sim, Stats};

/// Seeds `cargo test` runs without `SIM_SEEDS`.
const DEFAULT_SEEDS: u64 = 1_000;
/// A run stops starting new seeds after this many failures.
const MAX_FAILURES: usize = 3;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a number"),
    }
}

/// Runs one seed; a panic inside a core counts as a failure of that seed.
fn run_seed(seed: u64, verbose: bool) -> Result<world::Report, Failure> {
    let mut sim = match Sim::new(seed, verbose) {
        Ok(s) => s,
        Err(message) => {
            return Err(Failure {
                seed,
                step: 0,
                time_ms: 0,
                message,
                tail: Vec::new(),
            })
        }
    };
    let result = catch_unwind(AssertUnwindSafe(|| sim.run()));
    let message = match result {
        Ok(Ok(report)) => return Ok(report),
        Ok(Err(violation)) => violation,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            format!("panic: {what}")
        }
    };
    Err(Failure {
        seed: sim.seed(),
        step: sim.step(),
        time_ms: sim.elapsed_ms(),
        message,
        tail: sim.trace.tail(),
    })
}

/// Runs the seeds on every core (each seed on one thread, start to end), the next seed going
/// to whichever worker is free; stops early after a few failures.
#[test]
fn seeds() {
    if let Some(seed) = env_u64("SEED") {
        match run_seed(seed, true) {
            Ok(r) => println!("seed {seed}: ok, trace hash {}\n{}", r.trace_hash, r.stats),
            Err(f) => panic!("{f}"),
        }
        return;
    }
    let n = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let start = env_u64("SIM_SEED_START").unwrap_or(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = AtomicU64::new(start);
    let stop = AtomicBool::new(false);
    let began = Instant::now();
    let results: Vec<(Stats, Vec<Failure>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut stats = Stats::default();
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let seed = next.fetch_add(1, Ordering::Relaxed);
                        if seed >= start + n {
                            break;
                        }
                        match run_seed(seed, false) {
                            Ok(r) => stats.add(&r.stats),
                            Err(f) => {
                                eprintln!("{f}");
                                failures.push(f);
                                if failures.len() >= MAX_FAILURES {
                                    stop.store(true, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    (stats, failures)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .expect("a simulation worker panicked outside a seed")
            })
            .collect()
    });
    let secs = began.elapsed().as_secs_f64();
    let mut total = Stats::default();
    let mut failed = Vec::new();
    for (stats, failures) in &results {
        total.add(stats);
        failed.extend(failures.iter().map(|f| f.seed));
    }
    println!(
        "simulated seeds {start}..{} on {workers} threads: {secs:.1} s wall, {:.1} seeds/s\n{total}",
        start + n,
        total.seeds as f64 / secs.max(1e-9),
    );
    assert!(
        failed.is_empty(),
        "simulation failed for seeds {failed:?} (details above; rerun one with SEED=<n>)"
    );
}

/// A seed that runs with retention on the relay (see `world::retention`).
const RETENTION_SEED: u64 = 23;

/// The same seed gives the same trace, in one process, with fresh hash-map seeds each time
/// (seed 7, and a seed with retention on).
#[test]
fn same_seed_same_trace() {
    let seed = env_u64("SEED").unwrap_or(7);
    let a = run_seed(seed, false).unwrap_or_else(|f| panic!("{f}"));
    for s in [seed, RETENTION_SEED] {
        let first = run_seed(s, false).unwrap_or_else(|f| panic!("{f}"));
        let again = run_seed(s, false).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(
            first.trace_hash, again.trace_hash,
            "seed {s} replayed to a different trace"
        );
    }
    assert!(
        run_seed(RETENTION_SEED, false)
            .is_ok_and(|r| r.stats.retention_seeds == 1 && r.stats.bodies_pruned > 0),
        "seed {RETENTION_SEED} runs with retention on and drops bodies"
    );
    let c = run_seed(seed + 1, false).unwrap_or_else(|f| panic!("{f}"));
    assert_ne!(
        a.trace_hash, c.trace_hash,
        "two seeds gave one trace: the trace does not depend on the seed"
    );
    println!("seed {seed}: trace hash {}", a.trace_hash);
}

/// The simulated disk keeps what was synced and only that.
#[test]
fn disk_crash_loses_exactly_the_unsynced_writes() {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    const T: TableDefinition<u64, u64> = TableDefinition::new("t");
    let disk = disk::SimDisk::new();
    let open = |disk: &disk::SimDisk| {
        redb::Database::builder()
            .create_with_backend(disk.backend())
            .expect("open the simulated disk")
    };
    let put = |db: &redb::Database, k: u64, durable: bool| {
        let mut txn = db.begin_write().expect("begin");
        if !durable {
            txn.set_durability(redb::Durability::None)
                .expect("durability");
        }
        txn.open_table(T)
            .expect("table")
            .insert(k, k)
            .expect("insert");
        txn.commit().expect("commit");
    };
    let keys = |db: &redb::Database| -> Vec<u64> {
        let txn = db.begin_read().expect("read");
        let t = txn.open_table(T).expect("table");
        t.iter()
            .expect("iter")
            .map(|r| r.expect("row").0.value())
            .collect()
    };
    let db = open(&disk);
    put(&db, 1, true);
    put(&db, 2, false);
    assert_eq!(keys(&db), vec![1, 2]);
    disk.crash();
    drop(db);
    let db = open(&disk);
    assert_eq!(keys(&db), vec![1], "the lazy commit survived a crash");
    // A power cut at the next sync: that commit fails and is gone after the crash.
    disk.arm_power_cut(1);
    let txn = db.begin_write().expect("begin");
    txn.open_table(T)
        .expect("table")
        .insert(3, 3)
        .expect("insert");
    assert!(txn.commit().is_err(), "the commit survived its power cut");
    assert!(disk.is_dead());
    disk.crash();
    drop(db);
    let db = open(&disk);
    assert_eq!(keys(&db), vec![1]);
    put(&db, 4, true);
    assert_eq!(keys(&db), vec![1, 4]);
}
