//! An encrypted two-party conversation under a retention policy, as Alice's device receives
//! it: Bob's real store creates it, sets the policy, sends every message (encrypted), and a
//! relay key acks each event (server time `T0 + seq` ms). For the compaction test and the
//! `device_compaction` example (included with `#[path]`).
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use tidings::engine::event::MAX_SEQUENCED_ENTRIES;
use tidings::engine::store::Outgoing;
use tidings::engine::wire::DeviceRegistration;
use tidings::engine::{
    ConversationId, DeviceKey, Event, EventHeader, EventId, EventKind, EventLog, RetentionPolicy,
    SeqEntry, Store, StoreConfig, UserId,
};

/// The conversation.
pub const CONV: ConversationId = ConversationId([0x2d; 16]);
/// Wall clock of the first event, and the relay's clock at sequence 0.
pub const T0: u64 = 1_700_000_000_000;

/// A user (identity key) with one certified device.
#[derive(Clone)]
pub struct Member {
    pub device: DeviceKey,
    pub cert: DeviceRegistration,
}

fn member(i: u8) -> Member {
    let user_key = SigningKey::from_bytes(&[0x51 ^ i; 32]);
    let user = UserId(user_key.verifying_key().to_bytes());
    let device = DeviceKey::from_seed([0x62 ^ i; 32], user);
    let cert = device.certificate(&user_key, 1);
    Member { device, cert }
}

/// Alice (the reading device) and Bob (the sender).
pub fn cast() -> (Member, Member) {
    (member(1), member(2))
}

fn relay() -> DeviceKey {
    DeviceKey::from_seed([0x19; 32], UserId([0x19; 32]))
}

fn config() -> StoreConfig {
    StoreConfig::new(relay().device())
}

/// The text of message `i` (100 bytes).
pub fn body(i: u64) -> Vec<u8> {
    let mut b = vec![b'x'; 100];
    let tag = format!("message {i}: ");
    b[..tag.len()].copy_from_slice(tag.as_bytes());
    b
}

/// Bob's conversation with Alice: `Create`, the epoch key, `policy`, then `n` messages, each
/// event placed by the relay's signed statements, 256 a statement (server time `T0 + seq`).
pub fn history(alice: &Member, bob: &Member, n: u64, policy: RetentionPolicy) -> Vec<Event> {
    let mut store = Store::new(
        EventLog::in_memory().expect("log"),
        bob.device.clone(),
        config(),
        [7; 32],
    );
    store
        .absorb_devices(&[alice.cert.clone(), bob.cert.clone()], &[], &[])
        .expect("certificates");
    store
        .create_conversation(CONV, vec![alice.device.user()], T0)
        .expect("create");
    store.set_retention(CONV, policy, T0).expect("policy");
    let mut i = 0;
    while i < n {
        let batch: Vec<Outgoing> = (i..n.min(i + 256))
            .map(|j| Outgoing {
                conversation: CONV,
                body: body(j),
                media: Vec::new(),
            })
            .collect();
        let len = batch.len() as u64;
        for sent in store.send_all(batch, T0 + 1 + i) {
            sent.expect("send");
        }
        i += len;
    }
    let key = relay();
    let stored: Vec<Event> = store
        .outbox()
        .expect("outbox")
        .iter()
        .map(|e| store.log().get(&e.event).expect("get").expect("stored"))
        .collect();
    // One signed statement per group of 256, as the relay's group commit places them.
    let (mut seq, mut last): (u64, Option<EventId>) = (0, None);
    let mut out = Vec::new();
    for chunk in stored.chunks(MAX_SEQUENCED_ENTRIES) {
        let first = seq + 1;
        let entries: Vec<SeqEntry> = chunk
            .iter()
            .map(|ev| {
                seq += 1;
                SeqEntry {
                    event: ev.id(),
                    message: ev.message(),
                    server_ts_ms: T0 + seq,
                }
            })
            .collect();
        let header = EventHeader {
            conversation: CONV,
            author: key.device(),
            user: UserId(key.device().0),
            counter: first,
            prev: last,
            lamport: chunk.iter().map(|e| e.header().lamport).max().unwrap_or(0),
            wall_ms: T0 + seq,
        };
        let statement = Event::sign(key.signing_key(), header, EventKind::Sequenced { entries })
            .expect("sign statement");
        last = Some(statement.id());
        out.push(statement);
        out.extend(chunk.iter().cloned());
    }
    out
}

/// Alice's store on `log` with both certificates, `events` taken in as pages of 512.
pub fn alice_store(log: EventLog, alice: &Member, bob: &Member, events: &[Event]) -> Store {
    let mut store = open_alice(log, alice);
    store
        .absorb_devices(&[alice.cert.clone(), bob.cert.clone()], &[], &[])
        .expect("certificates");
    for page in events.chunks(512) {
        let out = store.apply(page).expect("apply");
        assert!(out.rejected.is_empty() && out.refused.is_empty());
    }
    store
}

/// Alice's store over an existing log.
pub fn open_alice(log: EventLog, alice: &Member) -> Store {
    Store::new(log, alice.device.clone(), config(), [8; 32])
}

/// Runs erasure passes at `now_ms` until nothing is due; the number of messages erased.
pub fn erase_all_due(store: &mut Store, now_ms: u64) -> usize {
    let mut n = 0;
    loop {
        let changes = store.erase_due(now_ms).expect("erase");
        if changes.is_empty() {
            return n;
        }
        n += changes.len();
    }
}
