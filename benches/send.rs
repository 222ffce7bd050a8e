//! Local send, offline, against SQLite in the same run (issue 13, "Local send at SQLite's cost").
//!
//! Alice's device holds a conversation with Bob of [`N_HISTORY`] of Bob's messages (taken in
//! as the relay serves them, encrypted, with acks) and has sent one message of her own (her
//! sending epoch is settled). The log is a file in a temporary directory under cargo's target
//! dir (the same disk as the SQLite peer; `/tmp` may be a tmpfs).
//!
//! 1. Latency, per-send durations recorded and sorted here (criterion reports no
//!    percentiles), p50 / p99 / max, in alternating rounds of [`PER_ROUND`] so that load on
//!    the machine falls on every side alike:
//!    - `store`: `Store::send` of a 100 B body: encrypt, sign, log append + outbox in one
//!      durable redb transaction, fold into the conversation's document;
//!    - `replica_mt` / `replica_ct`: `Replica::send` (offline: the relay address does not
//!      answer), one at a time, on a multi-thread / a current-thread tokio runtime: the same
//!      plus the hop to the driver task and back;
//!    - `sqlite`: SQLite (bundled, WAL, `synchronous=FULL`): one transaction inserting a
//!      message row (ids, lamport, timestamp, a body blob as long as our encrypted `Send`
//!      envelope) and an outbox row, into tables that already hold [`N_HISTORY`] rows;
//!    - `redb`: the library floor: redb alone, the same two rows into two tables in one
//!      `Durability::Immediate` commit (what a send cannot go below while the log is redb).
//!    - `store_cpu`: the thread CPU time of each `store` send (the rest of its wall time is
//!      waiting: the fsync, and other processes holding the core);
//!    - `store_mem`: `Store::send` on redb's in-memory backend: the send path's work without
//!      any I/O (also a criterion function, `store_mem_send_100B`, to profile alone);
//! 2. Burst: [`BURST`] `Replica::send` calls queued at once, timed until every caller has
//!    its answer; sends per second, median of [`N_BURSTS`] bursts, on both runtimes.
//! 3. The same single sends under criterion (means, with its statistics).
//!
//! `cargo bench --bench send`

mod common;

use common::encrypted::{self, body, cast, history, relay, Member, CONV, T0};
use criterion::{BenchmarkId, Criterion};
use rusqlite::Connection;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};
use tidings::engine::{Event, EventLog, Store};
use tidings::replica::{Replica, ReplicaConfig};

/// Bob's messages already in the conversation.
const N_HISTORY: u64 = 1_000;
/// Rounds of the percentile pass.
const ROUNDS: usize = 10;
/// Sends per side per round.
const PER_ROUND: usize = 100;
/// Sends queued at once in a burst.
const BURST: usize = 100;
/// Bursts timed.
const N_BURSTS: usize = 10;

/// Alice's log file at `path`: the history taken in, one message of hers sent. Returns the
/// size of her `Send` envelope.
fn alice_log(path: &Path, alice: &Member, bob: &Member, events: &[Event]) -> usize {
    let log = EventLog::open(path).expect("open log");
    alice_store(log, alice, bob, events).1
}

/// Alice's store on `log`: the history taken in, one message of hers sent.
fn alice_store(log: EventLog, alice: &Member, bob: &Member, events: &[Event]) -> (Store, usize) {
    let mut store = encrypted::alice_store(log, alice, bob, events);
    let (sent, _) = store.send(CONV, body(0), vec![], T0).expect("send");
    store.snapshot_all().expect("snapshot");
    (store, sent.bytes().len())
}

fn open_store(path: &Path, alice: &Member) -> Store {
    let log = EventLog::open(path).expect("open log");
    encrypted::open_alice(log, alice)
}

/// The peer: SQLite in WAL mode with `synchronous=FULL`, a message table and an outbox.
struct Sqlite {
    conn: Connection,
    body: Vec<u8>,
    next: i64,
}

impl Sqlite {
    fn open(path: &Path, body_len: usize) -> Sqlite {
        let conn = Connection::open(path).expect("sqlite open");
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .expect("wal");
        assert_eq!(mode, "wal");
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation BLOB NOT NULL,
                 message BLOB NOT NULL UNIQUE, lamport INTEGER NOT NULL,
                 sent_ms INTEGER NOT NULL, body BLOB NOT NULL);
             CREATE TABLE outbox (position INTEGER PRIMARY KEY, message BLOB NOT NULL,
                 attempts INTEGER NOT NULL, next_attempt_ms INTEGER NOT NULL,
                 state INTEGER NOT NULL);",
        )
        .expect("schema");
        let mut db = Sqlite {
            conn,
            body: vec![0xab; body_len],
            next: 0,
        };
        for _ in 0..N_HISTORY {
            db.insert();
        }
        db
    }

    /// One message and its outbox row, one transaction.
    fn insert(&mut self) {
        self.next += 1;
        let n = self.next;
        let mut message = [0u8; 16];
        message[..8].copy_from_slice(&n.to_le_bytes());
        let tx = self.conn.transaction().expect("begin");
        tx.execute(
            "INSERT INTO messages (id, conversation, message, lamport, sent_ms, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![n, &CONV.0[..], &message[..], n, T0 as i64 + n, &self.body],
        )
        .expect("insert message");
        tx.execute(
            "INSERT INTO outbox (position, message, attempts, next_attempt_ms, state)
             VALUES (?1, ?2, 0, ?3, 0)",
            rusqlite::params![n, &message[..], T0 as i64 + n],
        )
        .expect("insert outbox");
        tx.commit().expect("commit");
    }
}

/// The floor: the SQLite peer's transaction done in redb (two rows, two tables, one durable
/// commit).
struct RedbFloor {
    db: redb::Database,
    body: Vec<u8>,
    next: u64,
}

const FLOOR_MESSAGES: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("messages");
const FLOOR_OUTBOX: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("outbox");

impl RedbFloor {
    fn open(path: &Path, body_len: usize) -> RedbFloor {
        let db = redb::Database::create(path).expect("redb open");
        let mut floor = RedbFloor {
            db,
            body: vec![0xab; body_len],
            next: 0,
        };
        for _ in 0..N_HISTORY {
            floor.insert();
        }
        floor
    }

    fn insert(&mut self) {
        self.next += 1;
        let n = self.next;
        let txn = self.db.begin_write().expect("begin");
        {
            let mut messages = txn.open_table(FLOOR_MESSAGES).expect("messages");
            let mut row = n.to_le_bytes().to_vec();
            row.extend_from_slice(&self.body);
            messages.insert(n, row.as_slice()).expect("insert message");
            let mut outbox = txn.open_table(FLOOR_OUTBOX).expect("outbox");
            outbox
                .insert(n, n.to_le_bytes().as_slice())
                .expect("insert outbox");
        }
        txn.commit().expect("commit");
    }
}

/// A replica over the log in `dir`, offline: nothing answers at the relay address.
fn open_replica(rt: &tokio::runtime::Runtime, dir: &Path, alice: &Member) -> Replica {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let config = ReplicaConfig::new(addr, relay().device(), [0; 32]);
    rt.block_on(Replica::open(dir, alice.device.clone(), config))
        .expect("replica")
}

fn time(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn report(name: &str, mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 50), percentile(&samples, 99));
    let max = samples.last().copied().unwrap_or_default();
    println!(
        "local_send/{name:<8} n={:<5} p50 {:>8.1} µs  p99 {:>8.1} µs  max {:>8.1} µs",
        samples.len(),
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        max.as_secs_f64() * 1e6
    );
    (p50, p99)
}

struct Fixture {
    _dir: tempfile::TempDir,
    /// The same store on redb's in-memory backend: the send path without I/O.
    in_memory: Store,
    store_path: std::path::PathBuf,
    replica_dirs: [std::path::PathBuf; 2],
    sqlite_path: std::path::PathBuf,
    floor_path: std::path::PathBuf,
    envelope_len: usize,
}

fn fixture(alice: &Member, bob: &Member) -> Fixture {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let events = history(alice, bob, N_HISTORY);
    let log = EventLog::in_memory().expect("log");
    let in_memory = alice_store(log, alice, bob, &events).0;
    let store_path = dir.path().join("store.redb");
    let envelope_len = alice_log(&store_path, alice, bob, &events);
    let replica_dirs = ["replica_mt", "replica_ct"].map(|name| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("replica dir");
        alice_log(&d.join("device.redb"), alice, bob, &events);
        d
    });
    Fixture {
        in_memory,
        store_path,
        replica_dirs,
        sqlite_path: dir.path().join("peer.sqlite"),
        floor_path: dir.path().join("floor.redb"),
        envelope_len,
        _dir: dir,
    }
}

/// A replica and the runtime it runs on: the app picks the runtime, and on 2 cores a
/// multi-thread runtime adds two cross-thread wake-ups per call (see MEASUREMENTS).
struct OnRuntime {
    name: &'static str,
    rt: tokio::runtime::Runtime,
    replica: Replica,
}

impl OnRuntime {
    fn open(name: &'static str, rt: tokio::runtime::Runtime, dir: &Path, alice: &Member) -> Self {
        let replica = open_replica(&rt, dir, alice);
        OnRuntime { name, rt, replica }
    }

    fn send(&self, i: u64) {
        black_box(
            self.rt
                .block_on(self.replica.send(CONV, body(i)))
                .expect("send"),
        );
    }

    /// Sends/s of [`BURST`] sends queued at once, until every caller has its answer.
    fn burst(&self, first: u64) -> f64 {
        let bodies: Vec<Vec<u8>> = (0..BURST as u64).map(|k| body(first + k)).collect();
        let took = time(|| {
            self.rt.block_on(async {
                let mut tasks = tokio::task::JoinSet::new();
                for b in bodies {
                    let r = self.replica.clone();
                    tasks.spawn(async move { r.send(CONV, b).await });
                }
                while let Some(done) = tasks.join_next().await {
                    done.expect("task").expect("send");
                }
            })
        });
        BURST as f64 / took.as_secs_f64()
    }
}

/// Messages already queued (offline) in the long-outbox store of [`outbox_length`].
const QUEUED: usize = 5_000;

/// `Store::send` on redb's in-memory backend, in alternating rounds, on a store with an empty
/// outbox and on one with [`QUEUED`] messages waiting offline (a phone that wrote for days in
/// a tunnel): a send's cost must not grow with what waits to be sent.
fn outbox_length(alice: &Member, bob: &Member, i: &mut u64) {
    let events = history(alice, bob, N_HISTORY);
    let mut short = alice_store(EventLog::in_memory().expect("log"), alice, bob, &events).0;
    let mut long = alice_store(EventLog::in_memory().expect("log"), alice, bob, &events).0;
    for chunk in (0..QUEUED as u64).collect::<Vec<_>>().chunks(250) {
        let batch = chunk
            .iter()
            .map(|k| tidings::engine::store::Outgoing {
                conversation: CONV,
                body: body(*k),
                media: vec![],
            })
            .collect();
        for r in long.send_all(batch, T0) {
            r.expect("queue");
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for (store, samples) in [(&mut short, &mut a), (&mut long, &mut b)] {
            for _ in 0..PER_ROUND / 5 {
                *i += 1;
                let n = *i;
                samples.push(time(|| {
                    black_box(store.send(CONV, body(n), vec![], T0 + n).expect("send"));
                }));
            }
        }
    }
    let (short_p50, _) = report("store_mem outbox 1-200", a);
    let (long_p50, _) = report(&format!("store_mem outbox {QUEUED}+"), b);
    println!(
        "local_send p50 with {QUEUED} queued / with none: {:.2}x",
        long_p50.as_secs_f64() / short_p50.as_secs_f64()
    );
}

fn main() {
    let (alice, bob) = cast();
    let mut fx = fixture(&alice, &bob);
    println!(
        "fixture: {N_HISTORY} messages of history, Send envelope {} B, files in {}",
        fx.envelope_len,
        env!("CARGO_TARGET_TMPDIR")
    );
    let multi = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let replicas = [
        OnRuntime::open("replica_mt", multi, &fx.replica_dirs[0], &alice),
        OnRuntime::open("replica_ct", current, &fx.replica_dirs[1], &alice),
    ];
    let mut store = open_store(&fx.store_path, &alice);
    let mut sqlite = Sqlite::open(&fx.sqlite_path, fx.envelope_len);
    let mut floor = RedbFloor::open(&fx.floor_path, fx.envelope_len);
    let mut i = 1u64;

    // 1. Latency, alternating rounds.
    let (mut ours, mut ours_cpu, mut in_memory) = (Vec::new(), Vec::new(), Vec::new());
    let mut via_replica = [Vec::new(), Vec::new()];
    let (mut peer, mut redb_floor) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            i += 1;
            let cpu = cpu_time::ThreadTime::now();
            ours.push(time(|| {
                black_box(store.send(CONV, body(i), vec![], T0 + i).expect("send"));
            }));
            ours_cpu.push(cpu.elapsed());
        }
        for _ in 0..PER_ROUND {
            i += 1;
            let s = &mut fx.in_memory;
            in_memory.push(time(|| {
                black_box(s.send(CONV, body(i), vec![], T0 + i).expect("send"));
            }));
        }
        for (r, samples) in replicas.iter().zip(&mut via_replica) {
            for _ in 0..PER_ROUND {
                i += 1;
                samples.push(time(|| r.send(i)));
            }
        }
        for _ in 0..PER_ROUND {
            peer.push(time(|| sqlite.insert()));
        }
        for _ in 0..PER_ROUND {
            redb_floor.push(time(|| floor.insert()));
        }
    }
    let mut p99s = vec![("store", report("store", ours).1)];
    report("store_cpu", ours_cpu);
    report("store_mem", in_memory);
    for (r, samples) in replicas.iter().zip(via_replica) {
        p99s.push((r.name, report(r.name, samples).1));
    }
    p99s.push(("redb floor", report("redb", redb_floor).1));
    let (_, sqlite_p99) = report("sqlite", peer);
    for (name, p99) in p99s {
        println!(
            "local_send p99 ratio to sqlite: {name} {:.2}x",
            p99.as_secs_f64() / sqlite_p99.as_secs_f64()
        );
    }

    // 1b. The send's cost against the outbox's length.
    outbox_length(&alice, &bob, &mut i);

    // 2. Bursts through the replicas.
    for r in &replicas {
        let mut rates = Vec::with_capacity(N_BURSTS);
        for _ in 0..N_BURSTS {
            rates.push(r.burst(i));
            i += BURST as u64;
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "local_send/burst {}: {BURST} queued sends: median {:.0} sends/s (min {:.0}, max {:.0}, \
             {N_BURSTS} bursts)",
            r.name,
            rates[rates.len() / 2],
            rates[0],
            rates[rates.len() - 1]
        );
    }

    // 3. Criterion's view of the same single sends.
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("local_send");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.bench_function(BenchmarkId::new("store_send_100B", N_HISTORY), |b| {
        b.iter(|| {
            i += 1;
            black_box(store.send(CONV, body(i), vec![], T0 + i).expect("send"))
        })
    });
    // The same send with no I/O at all (redb's in-memory backend): what a profile of the
    // send's own work runs (`send --bench store_mem`).
    g.bench_function(BenchmarkId::new("store_mem_send_100B", N_HISTORY), |b| {
        let s = &mut fx.in_memory;
        b.iter(|| {
            i += 1;
            black_box(s.send(CONV, body(i), vec![], T0 + i).expect("send"))
        })
    });
    for r in &replicas {
        let id = format!("{}_send_100B", r.name);
        g.bench_function(BenchmarkId::new(id, N_HISTORY), |b| {
            b.iter(|| {
                i += 1;
                r.send(i)
            })
        });
    }
    g.bench_function(
        BenchmarkId::new("sqlite_wal_full_message_outbox", N_HISTORY),
        |b| b.iter(|| sqlite.insert()),
    );
    g.bench_function(
        BenchmarkId::new("redb_immediate_message_outbox", N_HISTORY),
        |b| b.iter(|| floor.insert()),
    );
    g.finish();
    for r in &replicas {
        r.rt.block_on(r.replica.close()).expect("close");
    }
    c.final_summary();
}
