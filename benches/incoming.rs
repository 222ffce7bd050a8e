//! One incoming message in a long conversation against a short one (issue 13, "updates with
//! content": a UI renders a new message from its update, never by reloading the conversation).
//!
//! Alice's device holds an encrypted conversation of [`SIZES`] of Bob's messages (taken in as
//! the relay serves them, folded, the document loaded as on a running device). Then one more
//! message of Bob's arrives with its ack, and is timed through:
//! - `apply`: `Store::apply` of the two events (gate, log append with every index, fold into
//!   the conversation's document, one commit);
//! - `render`: what the replica's driver does to give the `Update` its content after the fold:
//!   `MessageReader::messages` (the message from the index tables in one read transaction,
//!   its status, its epoch key opened from its sealed record, the body decrypted).
//!
//! Rounds of [`PER_ROUND`] messages alternate between the sizes so that load on the machine
//! falls on both alike; p50 / p99 per size and the ratio of the sizes' p50s and p99s are
//! printed, for the log on redb's in-memory backend (the work, no I/O) and on a file (the
//! fsync included).
//!
//! `cargo bench --bench incoming`

mod common;

use common::encrypted::{alice_store, cast, history, Member, CONV};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tidings::engine::store::Body;
use tidings::engine::{Event, EventLog, Store};

/// Conversation lengths compared: the second against the first.
const SIZES: [u64; 2] = [1_000, 100_000];
/// Incoming messages timed per size and backend.
const N_INCOMING: usize = 300;
/// Messages per size per round.
const PER_ROUND: usize = 30;

struct Side {
    n: u64,
    store: Store,
    /// Bob's next messages with their acks, in order.
    incoming: VecDeque<Event>,
    apply: Vec<Duration>,
    render: Vec<Duration>,
}

impl Side {
    fn new(n: u64, log: EventLog, alice: &Member, bob: &Member, events: &[Event]) -> Side {
        let cut = events.len() - 2 * N_INCOMING;
        let store = alice_store(log, alice, bob, &events[..cut]);
        Side {
            n,
            store,
            incoming: events[cut..].iter().cloned().collect(),
            apply: Vec::new(),
            render: Vec::new(),
        }
    }

    fn one(&mut self) {
        let (send, ack) = (
            self.incoming.pop_front().expect("a message"),
            self.incoming.pop_front().expect("its ack"),
        );
        let message = send.message().expect("a Send");
        let reader = self.store.reader();
        let start = Instant::now();
        self.store.apply(&[send, ack]).expect("apply");
        let folded = Instant::now();
        let shown = reader.messages(&[(CONV, message)]).expect("render");
        let end = Instant::now();
        let shown = shown.into_iter().next().flatten().expect("shown");
        assert!(matches!(shown.body, Body::Text(_)), "{:?}", shown.body);
        self.apply.push(folded - start);
        self.render.push(end - folded);
    }
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort_unstable();
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn run(backend: &str, sides: &mut [Side]) {
    for _ in 0..N_INCOMING / PER_ROUND {
        for side in sides.iter_mut() {
            for _ in 0..PER_ROUND {
                side.one();
            }
        }
    }
    let total = |s: &Side| -> Vec<Duration> {
        s.apply
            .iter()
            .zip(&s.render)
            .map(|(a, r)| *a + *r)
            .collect()
    };
    for s in sides.iter() {
        println!(
            "incoming/{backend}/{}: apply+render p50 {:.0} µs p99 {:.0} µs | apply p50 {:.0} µs p99 {:.0} µs | render p50 {:.1} µs p99 {:.1} µs",
            s.n,
            us(pct(&total(s), 0.5)),
            us(pct(&total(s), 0.99)),
            us(pct(&s.apply, 0.5)),
            us(pct(&s.apply, 0.99)),
            us(pct(&s.render, 0.5)),
            us(pct(&s.render, 0.99)),
        );
    }
    let (small, big) = (&sides[0], &sides[1]);
    let ratio = |f: &dyn Fn(&Side) -> Vec<Duration>, p| us(pct(&f(big), p)) / us(pct(&f(small), p));
    println!(
        "incoming/{backend}: {} vs {} messages: apply+render p50 {:.2}x p99 {:.2}x | render p50 {:.2}x p99 {:.2}x",
        big.n,
        small.n,
        ratio(&total, 0.5),
        ratio(&total, 0.99),
        ratio(&|s: &Side| s.render.clone(), 0.5),
        ratio(&|s: &Side| s.render.clone(), 0.99),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that names no bench here skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"incoming".contains(a.as_str()))
    {
        return;
    }
    let (alice, bob) = cast();
    let histories: Vec<(u64, Vec<Event>)> = SIZES
        .iter()
        .map(|&n| (n, history(&alice, &bob, n + N_INCOMING as u64)))
        .collect();

    let mut sides: Vec<Side> = histories
        .iter()
        .map(|(n, events)| {
            let log = EventLog::in_memory().expect("log");
            Side::new(*n, log, &alice, &bob, events)
        })
        .collect();
    run("memory", &mut sides);
    drop(sides);

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let mut sides: Vec<Side> = histories
        .iter()
        .map(|(n, events)| {
            let log = EventLog::open(dir.path().join(format!("alice-{n}.redb"))).expect("log");
            Side::new(*n, log, &alice, &bob, events)
        })
        .collect();
    run("file", &mut sides);
}
