//! Fixtures shared by the engine benches: a two-party conversation as a device receives it.
//!
//! Each message is a `Send` by its author and the relay's `ServerAck`; every few messages the
//! other party's device sends a cumulative `Delivered`, and less often a cumulative `Read`. All
//! events are signed here, outside any timed section.
#![allow(dead_code)]

pub mod encrypted;
pub mod kept;
pub mod opens;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::Criterion;
use std::time::Duration;
use tidings::engine::{
    ConversationId, DeviceId, DeviceKey, Event, EventId, EventKind, MessageId, UserId,
};

/// A `Delivered` receipt every this many messages.
pub const DELIVERED_EVERY: u64 = 4;
/// A `Read` receipt every this many messages.
pub const READ_EVERY: u64 = 10;
/// Commit the automerge document every this many folded events (as a bulk `apply` does).
pub const COMMIT_EVERY: usize = 1_000;

/// Set to `thread-cpu` to time with the benchmark thread's CPU clock instead of the wall clock.
pub const CLOCK_ENV: &str = "TIDINGS_BENCH_CLOCK";

/// Measures the CPU time of the benchmark thread (`CLOCK_THREAD_CPUTIME_ID`): on a shared,
/// loaded machine it leaves out the time other processes hold the core, which the wall clock
/// counts. Only for single-threaded, CPU-bound routines; I/O waits are not counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadCpu;

static WALL: WallTime = WallTime;

impl Measurement for ThreadCpu {
    type Intermediate = cpu_time::ThreadTime;
    type Value = Duration;

    fn start(&self) -> Self::Intermediate {
        cpu_time::ThreadTime::now()
    }
    fn end(&self, started: Self::Intermediate) -> Self::Value {
        started.elapsed()
    }
    fn add(&self, v1: &Self::Value, v2: &Self::Value) -> Self::Value {
        *v1 + *v2
    }
    fn zero(&self) -> Self::Value {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Self::Value) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

/// A clock a bench can run under; its results go to their own criterion group names so that
/// the two clocks are never compared with each other.
pub trait Clock: Measurement {
    /// Appended to every group name.
    const SUFFIX: &'static str;
}

impl Clock for WallTime {
    const SUFFIX: &'static str = "";
}

impl Clock for ThreadCpu {
    const SUFFIX: &'static str = "@thread-cpu";
}

/// The group name under clock `M`.
pub fn group<M: Clock>(name: &str) -> String {
    format!("{name}{}", M::SUFFIX)
}

/// `main` of a bench: runs `wall`, or `cpu` when [`CLOCK_ENV`] is `thread-cpu`.
pub fn main(wall: fn(&mut Criterion<WallTime>), cpu: fn(&mut Criterion<ThreadCpu>)) {
    if std::env::var(CLOCK_ENV).as_deref() == Ok("thread-cpu") {
        let mut c = Criterion::default()
            .with_measurement(ThreadCpu)
            .configure_from_args();
        cpu(&mut c);
        c.final_summary();
    } else {
        let mut c = Criterion::default().configure_from_args();
        wall(&mut c);
        c.final_summary();
    }
}

/// Bench settings for fixtures that take seconds per iteration: few samples, flat sampling.
pub fn slow_group_settings<M: Measurement>(
    g: &mut criterion::BenchmarkGroup<'_, M>,
    measurement: Duration,
) {
    g.sample_size(10)
        .sampling_mode(criterion::SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(measurement);
}

/// Alice's phone, Bob's phone and the relay.
#[derive(Clone, Debug)]
pub struct Cast {
    pub alice: DeviceKey,
    pub bob: DeviceKey,
    pub relay: DeviceKey,
}

impl Cast {
    pub fn new() -> Cast {
        Cast {
            alice: DeviceKey::from_seed([1; 32], UserId([0xa1; 32])),
            bob: DeviceKey::from_seed([2; 32], UserId([0xb0; 32])),
            relay: DeviceKey::from_seed([9; 32], UserId([9; 32])),
        }
    }

    pub fn relay_id(&self) -> DeviceId {
        self.relay.device()
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Head {
    counter: u64,
    prev: Option<EventId>,
}

/// One conversation's event stream, signed as the devices and the relay would write it.
#[derive(Debug)]
pub struct Stream {
    pub cast: Cast,
    pub conversation: ConversationId,
    heads: [Head; 3],
    lamport: u64,
    seq: u64,
    n_messages: u64,
}

const ALICE: usize = 0;
const BOB: usize = 1;
const RELAY: usize = 2;

impl Stream {
    /// A new conversation: Alice's `Create` and its ack (seq 1).
    pub fn new(cast: &Cast, conversation: ConversationId, out: &mut Vec<Event>) -> Stream {
        let mut s = Stream {
            cast: cast.clone(),
            conversation,
            heads: [Head::default(); 3],
            lamport: 0,
            seq: 0,
            n_messages: 0,
        };
        let members = vec![cast.alice.user(), cast.bob.user()];
        let create = s.author(ALICE, EventKind::Create { members });
        let ack = s.ack(&create, None);
        out.push(create);
        out.push(ack);
        s
    }

    /// `n` more messages, alternating authors, each with its ack and the receipts due.
    pub fn messages(&mut self, n: u64, out: &mut Vec<Event>) {
        for _ in 0..n {
            self.message(out);
        }
    }

    fn message(&mut self, out: &mut Vec<Event>) {
        let i = self.n_messages;
        self.n_messages += 1;
        let (from, to) = if i.is_multiple_of(2) {
            (ALICE, BOB)
        } else {
            (BOB, ALICE)
        };
        let body = format!("message {i}: see you at the station at half past six, bring the map")
            .into_bytes();
        let send = self.author(
            from,
            EventKind::Send {
                message: MessageId::default(),
                body,
                media: vec![],
            },
        );
        let ack = self.ack(&send, send.message());
        out.push(send);
        out.push(ack);
        let up_to = self.seq;
        if (i + 1).is_multiple_of(DELIVERED_EVERY) {
            out.push(self.author(to, EventKind::Delivered { up_to, head: None }));
        }
        if (i + 1).is_multiple_of(READ_EVERY) {
            out.push(self.author(to, EventKind::Read { up_to, head: None }));
        }
    }

    fn key(&self, who: usize) -> &DeviceKey {
        match who {
            ALICE => &self.cast.alice,
            BOB => &self.cast.bob,
            _ => &self.cast.relay,
        }
    }

    fn author(&mut self, who: usize, kind: EventKind) -> Event {
        self.lamport += 1;
        let head = self.heads[who];
        let key = self.key(who);
        let h = key.header(
            self.conversation,
            head.counter + 1,
            head.prev,
            self.lamport,
            1_700_000_000_000 + self.lamport,
        );
        let kind = h.bind(kind);
        let ev = Event::sign(key.signing_key(), h, kind).expect("sign");
        self.heads[who] = Head {
            counter: head.counter + 1,
            prev: Some(ev.id()),
        };
        ev
    }

    fn ack(&mut self, event: &Event, message: Option<MessageId>) -> Event {
        self.seq += 1;
        let head = self.heads[RELAY];
        let key = &self.cast.relay;
        let ts = 1_700_000_000_000 + self.seq;
        let h = key.header(
            self.conversation,
            head.counter + 1,
            head.prev,
            event.header().lamport,
            ts,
        );
        let ev = Event::sign(
            key.signing_key(),
            h,
            EventKind::ServerAck {
                event: event.id(),
                message,
                seq: self.seq,
                server_ts_ms: ts,
            },
        )
        .expect("sign ack");
        self.heads[RELAY] = Head {
            counter: head.counter + 1,
            prev: Some(ev.id()),
        };
        ev
    }
}

/// Conversation number `i`.
pub fn conversation_id(i: u64) -> ConversationId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&i.to_be_bytes());
    id[8] = 0xc0;
    ConversationId(id)
}

/// Every event of one conversation with `n_messages` messages.
pub fn conversation(cast: &Cast, conversation: ConversationId, n_messages: u64) -> Vec<Event> {
    let mut out = Vec::new();
    let mut s = Stream::new(cast, conversation, &mut out);
    s.messages(n_messages, &mut out);
    out
}

/// The same, signed on every core (signing 100k messages takes seconds on one).
pub fn conversations(cast: &Cast, n_conversations: u64, n_messages: u64) -> Vec<Vec<Event>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let chunk = n_conversations.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let lo = t * chunk;
                    let hi = ((t + 1) * chunk).min(n_conversations);
                    (lo..hi)
                        .map(|i| conversation(cast, conversation_id(i), n_messages))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("signing thread"))
            .collect()
    })
}

/// An automerge actor id for a bench document.
pub fn actor(n: u8) -> automerge::ActorId {
    automerge::ActorId::from(vec![n; 16])
}
