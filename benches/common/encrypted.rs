//! An encrypted two-party conversation as Alice's device receives it: Bob's real store sends
//! every message (encrypted under the epoch it shares with Alice's device at `Create`), and
//! the relay acks each event. For the benches that read bodies (`open`, `incoming`).

use ed25519_dalek::SigningKey;
use tidings::engine::store::Outgoing;
use tidings::engine::wire::DeviceRegistration;
use tidings::engine::{
    ConversationId, DeviceKey, Event, EventId, EventKind, EventLog, Store, StoreConfig, UserId,
};

/// The conversation.
pub const CONV: ConversationId = ConversationId([0x1c; 16]);
/// Wall clock of the first event.
pub const T0: u64 = 1_700_000_000_000;
/// Body size of every message.
pub const BODY_LEN: usize = 100;

/// A user (ed25519 identity key) with one certified device.
#[derive(Clone)]
pub struct Member {
    pub device: DeviceKey,
    pub cert: DeviceRegistration,
}

/// Alice (the reading device) and Bob (the sender).
pub fn cast() -> (Member, Member) {
    (member(1), member(2))
}

fn member(i: u8) -> Member {
    let user_key = SigningKey::from_bytes(&[0x37 ^ i; 32]);
    let user = UserId(user_key.verifying_key().to_bytes());
    let device = DeviceKey::from_seed([0x48 ^ i; 32], user);
    let cert = device.certificate(&user_key, 1);
    Member { device, cert }
}

pub fn relay() -> DeviceKey {
    DeviceKey::from_seed([9; 32], UserId([9; 32]))
}

pub fn config() -> StoreConfig {
    StoreConfig::new(relay().device())
}

/// The text of message `i`: [`BODY_LEN`] bytes.
pub fn body(i: u64) -> Vec<u8> {
    let mut b = vec![b'x'; BODY_LEN];
    let tag = format!("message {i}: ");
    b[..tag.len()].copy_from_slice(tag.as_bytes());
    b
}

/// Signs the relay's acks, one chain.
struct Sequencer {
    key: DeviceKey,
    seq: u64,
    head: Option<EventId>,
}

impl Sequencer {
    fn ack(&mut self, event: &Event) -> Event {
        self.seq += 1;
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
            message: event.message(),
            seq: self.seq,
            server_ts_ms: ts,
        };
        let ack = Event::sign(self.key.signing_key(), h, kind).expect("sign ack");
        self.head = Some(ack.id());
        ack
    }
}

/// Bob's store (in memory) with both certificates, having created `conversation` with Alice.
pub fn bob_store(alice: &Member, bob: &Member, conversation: ConversationId) -> Store {
    let log = EventLog::in_memory().expect("log");
    let mut store = Store::new(log, bob.device.clone(), config(), [7; 32]);
    store
        .absorb_devices(&[alice.cert.clone(), bob.cert.clone()], &[], &[])
        .expect("certificates");
    store
        .create_conversation(conversation, vec![alice.device.user()], T0)
        .expect("create");
    store
}

/// Sends `n` messages (`body(0..n)`) into `conversation` from `store`, 256 to a group
/// commit, the one at index `j` at `T0 + 1 + j`.
pub fn send_messages(store: &mut Store, conversation: ConversationId, n: u64) {
    let mut i = 0;
    while i < n {
        let batch: Vec<Outgoing> = (i..n.min(i + 256))
            .map(|j| Outgoing {
                conversation,
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
}

/// Bob's conversation with Alice of `n` messages as the relay serves it: Bob's events
/// (`Create`, the epoch key sealed to both devices, the messages), each followed by its ack.
pub fn history(alice: &Member, bob: &Member, n: u64) -> Vec<Event> {
    let mut store = bob_store(alice, bob, CONV);
    send_messages(&mut store, CONV, n);
    let ids: Vec<EventId> = store
        .outbox()
        .expect("outbox")
        .iter()
        .map(|e| e.event)
        .collect();
    let mut relay = Sequencer {
        key: relay(),
        seq: 0,
        head: None,
    };
    let mut out = Vec::with_capacity(2 * ids.len());
    for id in ids {
        let ev = store.log().get(&id).expect("get").expect("stored");
        let ack = relay.ack(&ev);
        out.push(ev);
        out.push(ack);
    }
    out
}

/// Alice's store on `log` with her and Bob's certificates, `events` taken in as pages of 512.
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
