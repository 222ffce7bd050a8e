//! The attacks that must fail, device side: a malicious relay holds the pinned relay key and
//! sequences whatever it likes; honest stores judge every event themselves (membership at its
//! place in the order, certified and unrevoked authors, signatures, chains) and decrypt only
//! what was sealed to them under the identity it was sealed with. One test checks, on
//! the same cast, that membership changes never move a message's status back.
//!
//! The relay's own refusals (unauthenticated devices, non-members, other users' devices,
//! revoked devices, forks) are covered over QUIC by `relay/tests/e2e.rs`
//! (`refusals`, `membership_revocation_and_chain_attacks_are_refused`); not repeated here.

mod key_requests;
mod key_shares;
mod limits;
mod removals_ahead;

use ed25519_dalek::SigningKey;
use std::collections::HashMap;
use tidings::engine::e2ee::SealedBody;
use tidings::engine::gate::Refusal;
use tidings::engine::store::{
    Body, KeyShareRefusal, RefusedEvent, RefusedKeyShare, RemovalEvidence,
};
use tidings::engine::wire::{DeviceRegistration, DeviceRevocation};
use tidings::engine::{
    ApplyOutcome, ChainIssue, ConversationId, DecodeError, DeviceKey, Event, EventId, EventKind,
    EventLog, MembershipError, MessageId, ServerSeq, Status, Store, StoreConfig, UserId,
};

const X: ConversationId = ConversationId([0xa1; 16]);
const Y: ConversationId = ConversationId([0xb2; 16]);
const T0: u64 = 1_000_000;

struct User {
    key: SigningKey,
    id: UserId,
}

fn user(seed: u8) -> User {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let id = UserId(key.verifying_key().to_bytes());
    User { key, id }
}

fn device(u: &User, seed: u8) -> (DeviceKey, DeviceRegistration) {
    let key = DeviceKey::from_seed([seed; 32], u.id);
    let cert = key.certificate(&u.key, 0);
    (key, cert)
}

fn msg(n: u8) -> MessageId {
    MessageId([n; 16])
}

/// The relay's key: the sequencer every store pins.
fn relay_key() -> DeviceKey {
    DeviceKey::from_seed([0xee; 32], UserId([0xee; 32]))
}

/// An honest store of `key`, trusting the relay key, knowing `certs`.
fn store(key: DeviceKey, certs: &[DeviceRegistration]) -> Store {
    let config = StoreConfig::new(relay_key().device());
    let entropy = [key.device().0[0]; 32];
    let mut s = Store::new(EventLog::in_memory().expect("log"), key, config, entropy);
    s.absorb_devices(certs, &[], &[]).expect("certificates");
    s
}

/// A relay that signs acks with the pinned key for whatever, wherever, whenever it likes.
struct EvilRelay {
    key: DeviceKey,
    /// Per conversation: next server sequence, and the relay's own chain (counter, last ack).
    seq: HashMap<ConversationId, ServerSeq>,
    chain: HashMap<ConversationId, (u64, EventId)>,
    now: u64,
}

impl EvilRelay {
    fn new() -> EvilRelay {
        EvilRelay {
            key: relay_key(),
            seq: HashMap::new(),
            chain: HashMap::new(),
            now: T0,
        }
    }

    /// A ServerAck in `conv` naming `event` at `seq`, stamped `ts`.
    fn ack_at(&mut self, conv: ConversationId, event: &Event, seq: ServerSeq, ts: u64) -> Event {
        let message = match event.kind() {
            EventKind::Send { message, .. } => Some(*message),
            _ => None,
        };
        let (counter, prev) = match self.chain.get(&conv) {
            Some((c, id)) => (c + 1, Some(*id)),
            None => (1, None),
        };
        let header = self.key.header(conv, counter, prev, counter, ts);
        let kind = EventKind::ServerAck {
            event: event.id(),
            message,
            seq,
            server_ts_ms: ts,
        };
        let ack = Event::sign(self.key.signing_key(), header, kind).expect("sign ack");
        self.chain.insert(conv, (counter, ack.id()));
        let next = self.seq.entry(conv).or_insert(1);
        *next = (*next).max(seq + 1);
        ack
    }

    /// Sequences `event` next in `conv` (not necessarily its own conversation), now.
    fn sequence_in(&mut self, conv: ConversationId, event: &Event) -> Event {
        self.now += 10;
        let seq = *self.seq.get(&conv).unwrap_or(&1);
        let ts = self.now;
        self.ack_at(conv, event, seq, ts)
    }

    /// Sequences `event` next in its own conversation: the event and its ack.
    fn sequence(&mut self, event: &Event) -> Vec<Event> {
        let ack = self.sequence_in(event.conversation(), event);
        vec![event.clone(), ack]
    }

    /// Sequences everything in `author`'s outbox, in order, hands the acks back to the author,
    /// and returns events and acks for the other devices.
    fn pump(&mut self, author: &mut Store) -> Vec<Event> {
        let mut batch = Vec::new();
        for e in outbox_events(author) {
            batch.extend(self.sequence(&e));
        }
        author.apply(&batch).expect("author applies its acks");
        batch
    }
}

fn outbox_events(s: &mut Store) -> Vec<Event> {
    let ids: Vec<EventId> = s
        .outbox()
        .expect("outbox")
        .iter()
        .map(|e| e.event)
        .collect();
    ids.iter()
        .map(|id| s.log().get(id).expect("log").expect("own event"))
        .collect()
}

fn feed(s: &mut Store, batch: &[Event]) -> ApplyOutcome {
    let out = s.apply(batch).expect("apply");
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    out
}

/// An event signed with `key`, at (`conv`, `counter`) with `prev`, as a forger builds it.
fn forge(
    key: &DeviceKey,
    conv: ConversationId,
    counter: u64,
    prev: Option<EventId>,
    kind: EventKind,
) -> Event {
    let h = key.header(conv, counter, prev, 100 + counter, T0);
    let kind = h.bind(kind);
    Event::sign(key.signing_key(), h, kind).expect("sign")
}

/// The message a `Send` carries.
fn id_of(e: &Event) -> MessageId {
    e.message().expect("a Send")
}

/// `s` sends `body` in `conv`; the message's id.
fn send_text(s: &mut Store, conv: ConversationId, body: &[u8], now: u64) -> MessageId {
    let (event, _) = s.send(conv, body.to_vec(), vec![], now).expect("send");
    id_of(&event)
}

fn plain_send(m: MessageId) -> EventKind {
    EventKind::Send {
        message: m,
        body: b"\x00plain".to_vec(),
        media: vec![],
    }
}

fn shown(s: &mut Store, conv: ConversationId) -> Vec<MessageId> {
    s.conversation(conv)
        .expect("conversation")
        .messages()
        .iter()
        .map(|m| m.id)
        .collect()
}

/// What the document shows, what the index tables show (latest messages, and a page read
/// beside the store), and the document rebuilt from the log.
fn shown_everywhere(s: &mut Store, conv: ConversationId) -> Vec<MessageId> {
    let mut ids = shown(s, conv);
    ids.extend(s.latest(conv, 100).expect("latest").iter().map(|m| m.id));
    let paged = s.reader().page(conv, None, 100).expect("page");
    ids.extend(paged.iter().map(|r| r.view.id));
    s.unload_all();
    ids.extend(shown(s, conv));
    ids
}

/// Alice creates X with `members`, writes `text` and has the relay sequence both: her store,
/// the sequenced events, the message and the epoch it opened.
fn alice_opens_with(
    relay: &mut EvilRelay,
    k: &Cast,
    members: Vec<UserId>,
    text: &[u8],
) -> (Store, Vec<Event>, MessageId, EventId) {
    let mut a = store(k.a.clone(), &k.certs);
    let mut log = create(relay, &mut a, X, members);
    let m = send_text(&mut a, X, text, relay.now);
    log.extend(relay.pump(&mut a));
    let epoch = new_epochs(&log)[0].0;
    (a, log, m, epoch)
}

/// `s` reads `m` in X as `text`, and misses no key.
fn reads_all(s: &mut Store, m: MessageId, text: &[u8]) {
    assert_eq!(body_of(s, X, m), Body::Text(text.to_vec()));
    assert!(s.missing_keys().is_empty());
}

fn body_of(s: &mut Store, conv: ConversationId, m: MessageId) -> Body {
    let view = s
        .conversation(conv)
        .expect("conversation")
        .message(&m)
        .expect("message shown");
    let body = s.body(&view).expect("body");
    // The reader beside the store (index tables, epoch records) reads the same body.
    let read = s
        .reader()
        .message(conv, m)
        .expect("read")
        .expect("found by id");
    assert_eq!((&read.view, &read.body), (&view, &body));
    body
}

fn refusals(out: &ApplyOutcome) -> Vec<(EventId, Refusal)> {
    out.refused
        .iter()
        .map(|r: &RefusedEvent| (r.event, r.refusal.clone()))
        .collect()
}

/// Alice (admin, creator), Bob and Carol, one device each; every store knows every
/// certificate.
struct Cast {
    alice: User,
    bob: User,
    carol: User,
    a: DeviceKey,
    b: DeviceKey,
    c: DeviceKey,
    certs: Vec<DeviceRegistration>,
}

fn cast() -> Cast {
    let (alice, bob, carol) = (user(1), user(2), user(3));
    let (a, ca) = device(&alice, 11);
    let (b, cb) = device(&bob, 21);
    let (c, cc) = device(&carol, 31);
    Cast {
        alice,
        bob,
        carol,
        a,
        b,
        c,
        certs: vec![ca, cb, cc],
    }
}

/// Alice creates `conv` with `members` and the relay sequences it (Create, first epoch).
fn create(
    relay: &mut EvilRelay,
    a: &mut Store,
    conv: ConversationId,
    members: Vec<UserId>,
) -> Vec<Event> {
    a.create_conversation(conv, members, relay.now)
        .expect("create");
    relay.pump(a)
}

#[test]
fn a_non_members_event_is_refused_and_never_shown() {
    let k = cast();
    let mut relay = EvilRelay::new();
    let mut a = store(k.a.clone(), &k.certs);
    let mut b = store(k.b.clone(), &k.certs);
    let created = create(&mut relay, &mut a, X, vec![k.bob.id]);
    feed(&mut b, &created);
    let intrusion = forge(&k.c, X, 1, None, plain_send(msg(0xcc)));
    let batch = relay.sequence(&intrusion);
    let out = feed(&mut b, &batch);
    assert_eq!(
        refusals(&out),
        vec![(
            intrusion.id(),
            Refusal::Membership(MembershipError::NotMember(k.carol.id))
        )]
    );
    assert!(!shown_everywhere(&mut b, X).contains(&id_of(&intrusion)));
    let by_id = b.reader().message(X, id_of(&intrusion)).expect("read");
    assert_eq!(by_id, None);
    // Later honest messages still flow: the gate moved past the refused place.
    let m1 = send_text(&mut a, X, b"after", relay.now);
    let batch = relay.pump(&mut a);
    let out = feed(&mut b, &batch);
    assert!(out.refused.is_empty());
    assert_eq!(shown(&mut b, X), vec![m1]);
    assert_eq!(body_of(&mut b, X, m1), Body::Text(b"after".to_vec()));
}

#[test]
fn a_removed_members_later_events_and_a_non_admins_changes_are_refused() {
    let k = cast();
    let mut relay = EvilRelay::new();
    let mut a = store(k.a.clone(), &k.certs);
    let mut b = store(k.b.clone(), &k.certs);
    let created = create(&mut relay, &mut a, X, vec![k.bob.id]);
    feed(&mut b, &created);
    // Bob writes twice and tries to add Carol, all before he learns he was removed.
    let m1 = send_text(&mut b, X, b"before", relay.now);
    let (add, _) = b.add_member(X, k.carol.id, false, relay.now).expect("add");
    let m2 = send_text(&mut b, X, b"after", relay.now);
    let own = outbox_events(&mut b);
    let sends: Vec<&Event> = own
        .iter()
        .filter(|e| matches!(e.kind(), EventKind::Send { .. }))
        .collect();
    assert_eq!(sends.len(), 2);
    let (remove, _) = a.remove_member(X, k.bob.id, relay.now).expect("remove");
    // The relay orders them: Bob's first Send, his AddMember, the removal, his second Send.
    let mut batch = relay.sequence(sends[0]);
    batch.extend(relay.sequence(&add));
    batch.extend(relay.sequence(&remove));
    batch.extend(relay.sequence(sends[1]));
    let out = feed(&mut a, &batch);
    assert_eq!(
        refusals(&out),
        vec![
            (
                add.id(),
                Refusal::Membership(MembershipError::NotAdmin(k.bob.id))
            ),
            (
                sends[1].id(),
                Refusal::Membership(MembershipError::NotMember(k.bob.id))
            ),
        ]
    );
    let ids = shown_everywhere(&mut a, X);
    assert!(ids.contains(&m1), "the Send before the removal is shown");
    assert!(!ids.contains(&m2), "the Send after the removal is not");
    assert_eq!(body_of(&mut a, X, m1), Body::Text(b"before".to_vec()));
    let members = a
        .conversation(X)
        .expect("conv")
        .members()
        .expect("members")
        .to_vec();
    assert_eq!(members, vec![k.alice.id]);
    // The same order at a third store (Carol was never added).
    let mut c = store(k.c.clone(), &k.certs);
    let out = feed(&mut c, &[created, batch].concat());
    assert_eq!(out.refused.len(), 2);
}

#[test]
fn a_revoked_devices_events_sequenced_after_the_revocation_are_refused() {
    let k = cast();
    let mut relay = EvilRelay::new();
    let mut a = store(k.a.clone(), &k.certs);
    let _ = create(&mut relay, &mut a, X, vec![k.bob.id]);
    let revoked_at = T0 + 5_000;
    let revocation = DeviceRevocation::sign(&k.bob.key, k.b.device(), revoked_at);
    a.absorb_devices(&[], &[revocation], &[])
        .expect("revocation");
    let before = forge(&k.b, X, 1, None, plain_send(msg(1)));
    let after = forge(&k.b, X, 2, Some(before.id()), plain_send(msg(2)));
    let (before_id, after_id) = (id_of(&before), id_of(&after));
    let ack_before = relay.ack_at(X, &before, 3, revoked_at - 1);
    let ack_after = relay.ack_at(X, &after, 4, revoked_at);
    let out = feed(&mut a, &[before, ack_before, after.clone(), ack_after]);
    assert_eq!(
        refusals(&out),
        vec![(after.id(), Refusal::Revoked(k.b.device()))]
    );
    let ids = shown_everywhere(&mut a, X);
    assert!(ids.contains(&before_id));
    assert!(!ids.contains(&after_id));
}

#[test]
fn forged_envelopes_do_not_decode_and_a_device_cannot_act_for_another_user() {
    let k = cast();
    let mut relay = EvilRelay::new();
    let mut a = store(k.a.clone(), &k.certs);
    let _ = create(&mut relay, &mut a, X, vec![k.bob.id]);
    let real = forge(&k.b, X, 1, None, plain_send(msg(1)));
    assert!(Event::decode(real.bytes()).is_ok());
    // envelope := version (1) | id (32) | signature (64) | body
    let mut bad_sig = real.bytes().to_vec();
    bad_sig[1 + 32 + 10] ^= 0x01;
    assert!(matches!(
        Event::decode(&bad_sig),
        Err(DecodeError::BadSignature(_))
    ));
    let mut bad_body = real.bytes().to_vec();
    let last = bad_body.len() - 1;
    bad_body[last] ^= 0x01;
    assert!(matches!(
        Event::decode(&bad_body),
        Err(DecodeError::IdMismatch { .. } | DecodeError::Malformed(_) | DecodeError::NonCanonical)
    ));
    let mut bad_id = real.bytes().to_vec();
    bad_id[5] ^= 0x01;
    assert!(matches!(
        Event::decode(&bad_id),
        Err(DecodeError::IdMismatch { .. })
    ));
    // Carol's device, certified for Carol, signs as Bob (a member).
    let liar = DeviceKey::from_seed([31; 32], k.bob.id);
    assert_eq!(liar.device(), k.c.device());
    let lie = forge(&liar, X, 1, None, plain_send(msg(2)));
    let out = feed(&mut a, &relay.sequence(&lie));
    assert_eq!(
        refusals(&out),
        vec![(
            lie.id(),
            Refusal::WrongUser {
                device: k.c.device(),
                certified: k.carol.id,
                claimed: k.bob.id,
            }
        )]
    );
    assert!(!shown_everywhere(&mut a, X).contains(&id_of(&lie)));
}

#[test]
fn an_event_resequenced_into_another_conversation_is_not_shown_there_or_in_its_own() {
    let k = cast();
    let mut relay = EvilRelay::new();
    let mut a = store(k.a.clone(), &k.certs);
    // X: Alice and Bob. Y: Alice, Bob and Carol.
    let _ = create(&mut relay, &mut a, X, vec![k.bob.id]);
    let _ = create(&mut relay, &mut a, Y, vec![k.bob.id, k.carol.id]);
    // Carol, not a member of X, writes into X; the relay sequences it in Y, where she is one.
    let smuggled = forge(&k.c, X, 1, None, plain_send(msg(0xcc)));
    let ack = relay.sequence_in(Y, &smuggled);
    let out = feed(&mut a, &[smuggled.clone(), ack]);
    assert!(
        !shown_everywhere(&mut a, Y).contains(&id_of(&smuggled)),
        "shown in the conversation the relay put it in"
    );
    assert!(
        !shown_everywhere(&mut a, X).contains(&id_of(&smuggled)),
        "shown in its own conversation, where its author is no member: {out:?}"
    );
    assert_eq!(
        refusals(&out),
        vec![(smuggled.id(), Refusal::OtherConversation(X))]
    );
    // Sequenced where it belongs, X's own gate judges it: Carol is no member of X.
    let out = feed(&mut a, &relay.sequence(&smuggled));
    assert_eq!(
        refusals(&out),
        vec![(
            smuggled.id(),
            Refusal::Membership(MembershipError::NotMember(k.carol.id))
        )]
    );
    assert!(!shown_everywhere(&mut a, X).contains(&id_of(&smuggled)));
    // Later events of Y still pass the gate.
    let m1 = send_text(&mut a, Y, b"y", relay.now);
    relay.pump(&mut a);
    assert!(shown(&mut a, Y).contains(&m1));
}

#[test]
fn a_second_event_at_the_same_place_in_a_chain_is_reported_as_a_fork() {
    let k = cast();
    let mut relay = EvilRelay::new();
    let mut a = store(k.a.clone(), &k.certs);
    let _ = create(&mut relay, &mut a, X, vec![k.bob.id]);
    let first = forge(&k.b, X, 1, None, plain_send(msg(1)));
    let second = forge(
        &k.b,
        X,
        1,
        None,
        EventKind::Send {
            message: msg(2),
            body: b"\x00another".to_vec(),
            media: vec![],
        },
    );
    assert_ne!(first.id(), second.id());
    let mut batch = relay.sequence(&first);
    batch.extend(relay.sequence(&second));
    let out = feed(&mut a, &batch);
    assert!(
        out.chain_issues.contains(&ChainIssue::Fork {
            conversation: X,
            author: k.b.device(),
            counter: 1,
            first: first.id(),
            second: second.id(),
        }),
        "{:?}",
        out.chain_issues
    );
}

#[test]
fn a_body_moved_into_another_event_does_not_decrypt() {
    let k = cast();
    let mut relay = EvilRelay::new();
    let mut a = store(k.a.clone(), &k.certs);
    let mut b = store(k.b.clone(), &k.certs);
    let cx = create(&mut relay, &mut a, X, vec![k.bob.id]);
    let cy = create(&mut relay, &mut a, Y, vec![k.bob.id]);
    feed(&mut b, &[cx, cy].concat());
    let (original, _) = b
        .send(X, b"the original".to_vec(), vec![], relay.now)
        .expect("send");
    let m1 = id_of(&original);
    let batch = relay.pump(&mut b);
    feed(&mut a, &batch);
    assert_eq!(body_of(&mut a, X, m1), Body::Text(b"the original".to_vec()));
    let EventKind::Send { body, .. } = original.kind().clone() else {
        panic!("a Send")
    };
    let Ok(SealedBody::Sealed { epoch, .. }) = SealedBody::parse(&body) else {
        panic!("an encrypted body")
    };
    let h = original.header().clone();
    let stolen = |m: MessageId| EventKind::Send {
        message: m,
        body: body.clone(),
        media: vec![],
    };
    // Same author and key; the message id changes (it must: the original holds its id), alone,
    // then with the lamport clock, then with the wall clock.
    let mut prev = h.prev;
    let mut counter = h.counter;
    let mut next = |conv: ConversationId, kind: EventKind, lamport: u64, wall: u64| {
        counter += 1;
        let hh = k.b.header(conv, counter, prev, lamport, wall);
        let kind = hh.bind(kind);
        let e = Event::sign(k.b.signing_key(), hh, kind).expect("sign");
        prev = Some(e.id());
        e
    };
    let other_id = next(X, stolen(msg(2)), h.lamport, h.wall_ms);
    let other_place = next(X, stolen(msg(3)), h.lamport + 7, h.wall_ms);
    let other_clock = next(X, stolen(msg(4)), h.lamport, h.wall_ms + 1);
    let mut batch = Vec::new();
    for e in [&other_id, &other_place, &other_clock] {
        batch.extend(relay.sequence(e));
    }
    let out = feed(&mut a, &batch);
    assert!(out.refused.is_empty(), "{:?}", out.refused);
    for m in [&other_id, &other_place, &other_clock].map(id_of) {
        assert!(
            matches!(body_of(&mut a, X, m), Body::Unreadable(_)),
            "moved body of {m:?} read as {:?}",
            body_of(&mut a, X, m)
        );
    }
    // Into another conversation (Bob's chain there starts at 1): its epoch is not Y's.
    let hy = k.b.header(Y, 1, None, h.lamport, h.wall_ms);
    let kind = hy.bind(stolen(msg(1)));
    let other_conv = Event::sign(k.b.signing_key(), hy, kind).expect("sign");
    feed(&mut a, &relay.sequence(&other_conv));
    let moved = body_of(&mut a, Y, id_of(&other_conv));
    assert!(
        matches!(moved, Body::WaitingForKey(e) if e == epoch),
        "{moved:?}"
    );
    // The original still reads.
    assert_eq!(body_of(&mut a, X, m1), Body::Text(b"the original".to_vec()));
}

fn new_epochs(batch: &[Event]) -> Vec<(EventId, Vec<tidings::engine::DeviceId>)> {
    batch
        .iter()
        .filter_map(|e| match e.kind() {
            EventKind::EpochKeys {
                epoch: None, keys, ..
            } => Some((e.id(), keys.iter().map(|k| k.device).collect())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_removed_member_cannot_read_on_and_a_new_member_cannot_read_back() {
    let k = cast();
    let dave = user(4);
    let (d, cd) = device(&dave, 41);
    let certs = [k.certs.clone(), vec![cd]].concat();
    let mut relay = EvilRelay::new();
    let mut a = store(k.a.clone(), &certs);
    let mut b = store(k.b.clone(), &certs);
    let mut c = store(k.c.clone(), &certs);
    let mut log = create(&mut relay, &mut a, X, vec![k.bob.id, k.carol.id]);
    let m1 = send_text(&mut a, X, b"all three", relay.now);
    log.extend(relay.pump(&mut a));
    a.remove_member(X, k.bob.id, relay.now).expect("remove");
    log.extend(relay.pump(&mut a));
    let start = log.len();
    let m2 = send_text(&mut a, X, b"without bob", relay.now);
    log.extend(relay.pump(&mut a));
    let epochs = new_epochs(&log[start..]);
    assert_eq!(epochs.len(), 1, "the removal starts a new epoch");
    let (after_removal, sealed_to) = epochs[0].clone();
    assert!(!sealed_to.contains(&k.b.device()));
    assert!(sealed_to.contains(&k.c.device()));
    // The relay keeps feeding Bob everything.
    feed(&mut b, &log);
    feed(&mut c, &log);
    assert_eq!(body_of(&mut b, X, m1), Body::Text(b"all three".to_vec()));
    assert_eq!(body_of(&mut b, X, m2), Body::WaitingForKey(after_removal));
    assert_eq!(body_of(&mut c, X, m2), Body::Text(b"without bob".to_vec()));
    // Bob asks for the key; Alice gives nothing to a non-member.
    assert!(b.missing_keys().contains(&(X, after_removal)));
    b.request_key(X, after_removal, relay.now).expect("request");
    let ask = relay.pump(&mut b);
    let out = feed(&mut a, &ask);
    assert_eq!(
        refusals(&out),
        vec![(
            ask[0].id(),
            Refusal::Membership(MembershipError::NotMember(k.bob.id))
        )]
    );
    a.answer_key_requests(relay.now).expect("answer");
    assert!(outbox_events(&mut a).is_empty());
    log.extend(ask);

    // Dave joins; history before his join stays sealed to him.
    a.add_member(X, dave.id, false, relay.now).expect("add");
    log.extend(relay.pump(&mut a));
    let start = log.len();
    let m3 = send_text(&mut a, X, b"welcome dave", relay.now);
    log.extend(relay.pump(&mut a));
    let epochs = new_epochs(&log[start..]);
    assert_eq!(epochs.len(), 1, "the join starts a new epoch");
    assert!(epochs[0].1.contains(&d.device()));
    let mut dv = store(d.clone(), &certs);
    feed(&mut dv, &log);
    assert!(matches!(body_of(&mut dv, X, m1), Body::WaitingForKey(_)));
    assert_eq!(body_of(&mut dv, X, m2), Body::WaitingForKey(after_removal));
    assert_eq!(
        body_of(&mut dv, X, m3),
        Body::Text(b"welcome dave".to_vec())
    );
    let missing = dv.missing_keys();
    assert_eq!(missing.len(), 2, "{missing:?}");
    for (conv, epoch) in missing {
        dv.request_key(conv, epoch, relay.now).expect("request");
    }
    let asks = relay.pump(&mut dv);
    let out = feed(&mut a, &asks);
    assert!(
        out.refused.is_empty(),
        "Dave is a member: {:?}",
        out.refused
    );
    a.answer_key_requests(relay.now).expect("answer");
    assert!(
        outbox_events(&mut a).is_empty(),
        "history keys were given to a member who joined after them"
    );
    // Carol, a member all along, holds them but is not their creator: nothing either.
    feed(&mut c, &asks);
    c.answer_key_requests(relay.now).expect("answer");
    assert!(outbox_events(&mut c).is_empty());
    assert!(matches!(body_of(&mut dv, X, m1), Body::WaitingForKey(_)));
}

/// Statuses of Alice's messages on her store and on the index tables, before and after the
/// document is rebuilt from the log.
fn statuses(s: &mut Store, conv: ConversationId) -> Vec<Vec<(MessageId, Status)>> {
    let of_doc = |s: &mut Store| -> Vec<(MessageId, Status)> {
        let view = s.conversation(conv).expect("conversation");
        view.messages().iter().map(|m| (m.id, m.status)).collect()
    };
    let live = of_doc(s);
    let index: Vec<(MessageId, Status)> = s
        .latest(conv, 100)
        .expect("latest")
        .iter()
        .map(|m| (m.id, m.status))
        .collect();
    s.unload_all();
    let mut all = vec![live, index, of_doc(s)];
    for v in &mut all {
        v.sort_by_key(|(id, _)| *id);
    }
    all
}

/// Not an attack: membership changes must not move a status back. A message's recipients are
/// the members at its sequence, on every path (live fold, index tables, rebuilt document).
#[test]
fn a_members_join_or_removal_never_moves_a_status_back() {
    let k = cast();
    let mut relay = EvilRelay::new();
    let mut a = store(k.a.clone(), &k.certs);
    let mut b = store(k.b.clone(), &k.certs);
    let mut c = store(k.c.clone(), &k.certs);
    let mut log = create(&mut relay, &mut a, X, vec![k.bob.id]);
    let m1 = send_text(&mut a, X, b"to bob", relay.now);
    log.extend(relay.pump(&mut a));
    feed(&mut b, &log);
    let top = b.conversation(X).expect("conversation").max_seq();
    b.mark_read(X, top, relay.now).expect("read");
    let read = relay.pump(&mut b);
    log.extend(read.iter().cloned());
    feed(&mut a, &read);
    let one_read = vec![(m1, Status::Read)];
    assert_eq!(statuses(&mut a, X), vec![one_read.clone(); 3]);
    // Carol joins: she never saw msg 1, and it stays read.
    a.add_member(X, k.carol.id, false, relay.now).expect("add");
    let added = relay.pump(&mut a);
    log.extend(added.iter().cloned());
    feed(&mut b, &added);
    assert_eq!(statuses(&mut a, X), vec![one_read; 3]);
    // msg 2 goes to Bob and Carol: Bob reads it, Carol only receives it.
    let m2 = send_text(&mut a, X, b"to both", relay.now);
    let sent = relay.pump(&mut a);
    log.extend(sent.iter().cloned());
    feed(&mut b, &sent);
    feed(&mut c, &log);
    let top = b.conversation(X).expect("conversation").max_seq();
    b.mark_read(X, top, relay.now).expect("read");
    c.mark_delivered(X, top, relay.now).expect("delivered");
    let mut marks = relay.pump(&mut b);
    marks.extend(relay.pump(&mut c));
    feed(&mut a, &marks);
    let mut want = vec![(m1, Status::Read), (m2, Status::Delivered)];
    want.sort_by_key(|(id, _)| *id);
    assert_eq!(statuses(&mut a, X), vec![want.clone(); 3]);
    // Carol leaves: msg 2 was hers too, so it does not turn Read without her.
    a.remove_member(X, k.carol.id, relay.now).expect("remove");
    relay.pump(&mut a);
    assert_eq!(statuses(&mut a, X), vec![want; 3]);
}

// ---- Epoch keys (issue #12): poisoning, large groups, the body limit, nonces ----

/// The sealed-body nonce of a `Send` event.
fn nonce_of(ev: &Event) -> Vec<u8> {
    let EventKind::Send { body, .. } = ev.kind() else {
        panic!("a send expected, got {}", ev.kind().name());
    };
    match SealedBody::parse(body).expect("body") {
        SealedBody::Sealed { ciphertext, .. } => ciphertext[..24].to_vec(),
        other => panic!("an encrypted body expected, got {other:?}"),
    }
}

/// Issue #12, "message hijack": a member who saw Alice's message signs a `Send` of the same
/// message id, grinding his wall clock until his event id is the lower one (the document
/// kept the lowest event id for a message id). Every device must keep showing Alice's author,
/// body and place, and report Bob's event as refused.
#[test]
fn a_member_cannot_take_over_another_members_message() {
    let k = cast();
    let mut relay = EvilRelay::new();
    let mut a = store(k.a.clone(), &k.certs);
    let mut b = store(k.b.clone(), &k.certs);
    let mut c = store(k.c.clone(), &k.certs);
    let created = create(&mut relay, &mut a, X, vec![k.bob.id, k.carol.id]);
    feed(&mut b, &created);
    feed(&mut c, &created);
    let (original, _) = a
        .send(X, b"alice wrote this".to_vec(), vec![], relay.now)
        .expect("send");
    let m = id_of(&original);
    let batch = relay.pump(&mut a);
    feed(&mut b, &batch);
    feed(&mut c, &batch);
    let place = c
        .conversation(X)
        .expect("conversation")
        .message(&m)
        .expect("shown")
        .seq;
    assert!(place.is_some());
    // Bob copies the sealed body (he can read it) and grinds for a lower event id.
    let EventKind::Send { body, .. } = original.kind().clone() else {
        panic!("a Send")
    };
    let hijack = (0..10_000u64)
        .map(|wall| {
            let h = k.b.header(X, 1, None, 100, T0 + wall);
            let kind = EventKind::Send {
                message: m,
                body: body.clone(),
                media: vec![],
            };
            Event::sign(k.b.signing_key(), h, kind).expect("sign")
        })
        .find(|e| e.id() < original.id())
        .expect("a lower event id");
    assert!(
        matches!(
            Event::decode(hijack.bytes()),
            Err(DecodeError::UnboundMessage { .. })
        ),
        "the relay's decode refuses it"
    );
    // A relay that sequences it anyway: every device refuses it on its own.
    let batch = relay.sequence(&hijack);
    let out = feed(&mut c, &batch);
    assert_eq!(
        refusals(&out),
        vec![(
            hijack.id(),
            Refusal::Shape(DecodeError::UnboundMessage {
                event: hijack.id(),
                message: m,
            })
        )]
    );
    feed(&mut a, &batch);
    for s in [&mut a, &mut c] {
        let view = s
            .conversation(X)
            .expect("conversation")
            .message(&m)
            .expect("shown");
        assert_eq!(
            view.record.author,
            k.a.device(),
            "the author stays Alice's device"
        );
        assert_eq!(view.record.event, original.id());
        assert_eq!(view.seq, place, "the place stays the original's");
        assert_eq!(body_of(s, X, m), Body::Text(b"alice wrote this".to_vec()));
        // Once in each listing: the document, the latest messages, the reader's page, and
        // the document rebuilt from the log.
        assert_eq!(
            shown_everywhere(s, X).iter().filter(|x| **x == m).count(),
            4
        );
    }
}
