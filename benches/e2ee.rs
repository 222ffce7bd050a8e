//! End-to-end encryption on the store's paths, encrypted against unencrypted in the same run
//! (`StoreConfig::encrypt`):
//!
//! 1. `e2ee_send`: `Store::send` of a 100-byte message on a file-backed log: encrypt (when on),
//!    sign, append + outbox in one durable transaction (one fsync), fold.
//! 2. `e2ee_catchup`: a fresh file-backed store takes in 2,000 messages of another member
//!    (each event with the relay's ack, pages of 256 items = 512 events per `Store::apply`;
//!    encrypted: the sender's `EpochKeys` event first), then reads every body with
//!    `Store::body`. The events come from a real sending `Store`; building them and the
//!    receiving store (with the sender's certificate) is outside the timed part. Split into
//!    `apply` alone and `bodies` alone as well.
//! 3. `e2ee_rekey`: a 100-member group (one certified device each); after a member's removal
//!    is sequenced, the next `send` starts a new epoch sealed to the 99 remaining devices.
//!
//! `cargo bench --bench e2ee`

mod common;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use std::hint::black_box;
use std::time::Duration;
use tidings::engine::store::Body;
use tidings::engine::wire::DeviceRegistration;
use tidings::engine::{
    ConversationId, DeviceKey, Event, EventId, EventKind, EventLog, MessageId, Store, StoreConfig,
    UserId,
};

/// Messages in the catch-up.
const N_CATCHUP: u64 = 2_000;
/// Items (event + ack) per page, as the relay sends them.
const PAGE_ITEMS: usize = 256;
/// Members of the rekeyed group.
const N_MEMBERS: u64 = 100;
/// Body size of every message.
const BODY_LEN: usize = 100;

const CONV: ConversationId = ConversationId([0xe2; 16]);
const T0: u64 = 1_700_000_000_000;

fn seed(i: u64, tag: u8) -> [u8; 32] {
    let mut s = [tag; 32];
    s[..8].copy_from_slice(&i.to_le_bytes());
    s
}

/// A user (ed25519 identity key) with one certified device.
struct Member {
    device: DeviceKey,
    cert: DeviceRegistration,
}

fn member(i: u64) -> Member {
    let user_key = SigningKey::from_bytes(&seed(i, 0x55));
    let user = UserId(user_key.verifying_key().to_bytes());
    let device = DeviceKey::from_seed(seed(i, 0x66), user);
    let cert = device.certificate(&user_key, 1);
    Member { device, cert }
}

fn relay() -> DeviceKey {
    DeviceKey::from_seed([9; 32], UserId([9; 32]))
}

/// The relay's side: sequences events and signs their acks, one ack chain.
struct Sequencer {
    key: DeviceKey,
    seq: u64,
    head: Option<EventId>,
}

impl Sequencer {
    fn new() -> Sequencer {
        Sequencer {
            key: relay(),
            seq: 0,
            head: None,
        }
    }

    fn ack(&mut self, event: &Event) -> Event {
        self.seq += 1;
        let message = match event.kind() {
            EventKind::Send { message, .. } => Some(*message),
            _ => None,
        };
        let ts = T0 + self.seq;
        let h = self.key.header(
            event.conversation(),
            self.seq,
            self.head,
            event.header().lamport,
            ts,
        );
        let kind = EventKind::ServerAck {
            event: event.id(),
            message,
            seq: self.seq,
            server_ts_ms: ts,
        };
        let ack = Event::sign(self.key.signing_key(), h, kind).expect("sign ack");
        self.head = Some(ack.id());
        ack
    }
}

fn config(encrypt: bool) -> StoreConfig {
    let mut c = StoreConfig::new(relay().device());
    c.encrypt = encrypt;
    c
}

fn label(encrypt: bool) -> &'static str {
    if encrypt {
        "encrypted"
    } else {
        "clear"
    }
}

fn message_id(i: u64) -> MessageId {
    let mut id = [0x4d; 16];
    id[..8].copy_from_slice(&i.to_be_bytes());
    MessageId(id)
}

fn body(i: u64) -> Vec<u8> {
    let mut b = vec![b'x'; BODY_LEN];
    let tag = format!("message {i}: ");
    b[..tag.len()].copy_from_slice(tag.as_bytes());
    b
}

/// A file-backed store of `key` in a fresh temporary directory, knowing `certs`.
fn file_store(
    key: &DeviceKey,
    encrypt: bool,
    certs: &[DeviceRegistration],
) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(dir.path().join("e2ee.redb")).expect("open log");
    let mut store = Store::new(log, key.clone(), config(encrypt), [7; 32]);
    store.absorb_devices(certs, &[], &[]).expect("certificates");
    (dir, store)
}

/// Every event a store authored, in send order (its outbox: nothing was acked).
fn authored(store: &mut Store) -> Vec<Event> {
    let ids: Vec<EventId> = store
        .outbox()
        .expect("outbox")
        .iter()
        .map(|e| e.event)
        .collect();
    ids.iter()
        .map(|id| store.log().get(id).expect("get").expect("stored"))
        .collect()
}

/// Alice's conversation with Bob as the relay hands it to Bob's device: `n` messages sent by
/// Alice's store, each event followed by its ack.
fn catchup_events(alice: &Member, bob: &Member, encrypt: bool, n: u64) -> Vec<Event> {
    let log = EventLog::in_memory().expect("log");
    let mut store = Store::new(log, alice.device.clone(), config(encrypt), [7; 32]);
    store
        .absorb_devices(&[alice.cert.clone(), bob.cert.clone()], &[], &[])
        .expect("certificates");
    store
        .create_conversation(CONV, vec![bob.device.user()], T0)
        .expect("create");
    for i in 0..n {
        store
            .send(CONV, message_id(i), body(i), vec![], T0 + 1 + i)
            .expect("send");
    }
    let mut relay = Sequencer::new();
    let mut out = Vec::new();
    for ev in authored(&mut store) {
        let ack = relay.ack(&ev);
        out.push(ev);
        out.push(ack);
    }
    out
}

/// Applies the pages, then reads every body; returns the number of readable bodies.
fn catch_up(store: &mut Store, events: &[Event]) -> usize {
    apply_pages(store, events);
    read_bodies(store)
}

fn apply_pages(store: &mut Store, events: &[Event]) {
    for page in events.chunks(2 * PAGE_ITEMS) {
        let out = store.apply(page).expect("apply");
        assert!(out.rejected.is_empty() && out.refused.is_empty());
    }
}

fn read_bodies(store: &mut Store) -> usize {
    let messages = store.conversation(CONV).expect("conversation").messages();
    let mut readable = 0;
    for m in &messages {
        match store.body(m).expect("body") {
            Body::Text(b) | Body::Clear(b) => {
                readable += 1;
                black_box(b);
            }
            other => panic!("body not readable: {other:?}"),
        }
    }
    readable
}

fn e2ee<M: common::Clock>(c: &mut Criterion<M>) {
    let alice = member(0);
    let bob = member(1);
    let certs = [alice.cert.clone(), bob.cert.clone()];

    // 1. Send path.
    let mut g = c.benchmark_group(common::group::<M>("e2ee_send"));
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(1));
    for encrypt in [false, true] {
        let (_dir, mut store) = file_store(&alice.device, encrypt, &certs);
        store
            .create_conversation(CONV, vec![bob.device.user()], T0)
            .expect("create");
        let mut i = 0u64;
        g.bench_function(
            BenchmarkId::new("send_100B_file_log", label(encrypt)),
            |b| {
                b.iter(|| {
                    i += 1;
                    black_box(
                        store
                            .send(CONV, message_id(i), body(i), vec![], T0 + i)
                            .expect("send"),
                    )
                })
            },
        );
    }
    g.finish();

    // 2. Catch-up.
    let fixtures: Vec<(bool, Vec<Event>)> = [false, true]
        .into_iter()
        .map(|e| (e, catchup_events(&alice, &bob, e, N_CATCHUP)))
        .collect();
    for (encrypt, events) in &fixtures {
        let epoch_keys: usize = events
            .iter()
            .filter(|e| matches!(e.kind(), EventKind::EpochKeys { .. }))
            .count();
        let send = events
            .iter()
            .find(|e| matches!(e.kind(), EventKind::Send { .. }))
            .expect("a send");
        eprintln!(
            "catch-up fixture, {}: {} events ({} EpochKeys), Send event {} B",
            label(*encrypt),
            events.len(),
            epoch_keys,
            send.bytes().len()
        );
    }
    let mut g = c.benchmark_group(common::group::<M>("e2ee_catchup"));
    common::slow_group_settings(&mut g, Duration::from_secs(15));
    g.throughput(Throughput::Elements(N_CATCHUP));
    for (encrypt, events) in &fixtures {
        g.bench_with_input(
            BenchmarkId::new("apply_and_read_2000", label(*encrypt)),
            events,
            |b, events| {
                b.iter_batched(
                    || file_store(&bob.device, *encrypt, &certs),
                    |(dir, mut store)| {
                        assert_eq!(catch_up(&mut store, events), N_CATCHUP as usize);
                        (dir, store)
                    },
                    BatchSize::PerIteration,
                )
            },
        );
    }
    // The same, in two parts: taking the pages in, then reading the bodies.
    for (encrypt, events) in &fixtures {
        g.bench_with_input(
            BenchmarkId::new("apply_only_2000", label(*encrypt)),
            events,
            |b, events| {
                b.iter_batched(
                    || file_store(&bob.device, *encrypt, &certs),
                    |(dir, mut store)| {
                        apply_pages(&mut store, events);
                        (dir, store)
                    },
                    BatchSize::PerIteration,
                )
            },
        );
    }
    for (encrypt, events) in &fixtures {
        let (_dir, mut store) = file_store(&bob.device, *encrypt, &certs);
        apply_pages(&mut store, events);
        g.bench_function(BenchmarkId::new("read_bodies_2000", label(*encrypt)), |b| {
            b.iter(|| assert_eq!(read_bodies(&mut store), N_CATCHUP as usize))
        });
    }
    g.finish();

    // 3. Rekey of a 100-member group.
    let members: Vec<Member> = (0..N_MEMBERS).map(member).collect();
    let all_certs: Vec<DeviceRegistration> = members.iter().map(|m| m.cert.clone()).collect();
    let users: Vec<UserId> = members.iter().map(|m| m.device.user()).collect();
    let removed = users[N_MEMBERS as usize - 1];
    // Alice's store right after the removal of the last member was sequenced.
    let after_removal = |encrypt: bool| {
        let (dir, mut store) = file_store(&members[0].device, encrypt, &all_certs);
        let mut relay = Sequencer::new();
        store
            .create_conversation(CONV, users.clone(), T0)
            .expect("create");
        store.remove_member(CONV, removed, T0 + 1).expect("remove");
        let acks: Vec<Event> = authored(&mut store).iter().map(|e| relay.ack(e)).collect();
        store.apply(&acks).expect("acks");
        (dir, store)
    };
    {
        let (_dir, mut store) = after_removal(true);
        let before = store.epochs(CONV).expect("epochs").len();
        store
            .send(CONV, message_id(0), body(0), vec![], T0 + 2)
            .expect("send");
        assert_eq!(store.epochs(CONV).expect("epochs").len(), before + 1);
        let events = authored(&mut store);
        let rekey = events
            .iter()
            .find_map(|e| match e.kind() {
                EventKind::EpochKeys { keys, .. } => Some((e.bytes().len(), keys.len())),
                _ => None,
            })
            .expect("the new epoch's EpochKeys event");
        eprintln!(
            "rekey: EpochKeys event {} B, sealed to {} devices ({} B per device)",
            rekey.0,
            rekey.1,
            rekey.0 / rekey.1
        );
    }
    let mut g = c.benchmark_group(common::group::<M>("e2ee_rekey"));
    common::slow_group_settings(&mut g, Duration::from_secs(10));
    for encrypt in [false, true] {
        g.bench_function(
            BenchmarkId::new("send_after_removal_100_members", label(encrypt)),
            |b| {
                b.iter_batched(
                    || after_removal(encrypt),
                    |(dir, mut store)| {
                        let sent = store
                            .send(CONV, message_id(0), body(0), vec![], T0 + 2)
                            .expect("send");
                        (dir, store, sent)
                    },
                    BatchSize::PerIteration,
                )
            },
        );
    }
    g.finish();
}

fn main() {
    common::main(e2ee, e2ee);
}
