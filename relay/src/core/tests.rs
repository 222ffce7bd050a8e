//! Unit tests of the core, driven frame by frame with virtual time.

use super::*;
use ed25519_dalek::SigningKey;
use tidings_engine::wire::{self, ClientFrame, ConversationInfo, SubmitOutcome, UserChange};
use tidings_engine::wire::{SignatureBytes, PROTOCOL_VERSION};
use tidings_engine::MessageId;
use tidings_engine::{EventId, EventKind, ServerSeq};

mod race;
mod retention;

const RELAY_SEED: [u8; 32] = [0xee; 32];

fn user_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn user_id(seed: u8) -> UserId {
    UserId(user_key(seed).verifying_key().to_bytes())
}

struct Dev {
    key: DeviceKey,
    session: SessionId,
    counter: u64,
    /// Per conversation: the device's last counter and event id there (its chain).
    chain: BTreeMap<u8, (u64, EventId)>,
}

struct Net {
    core: RelayCore,
    now: u64,
    inbox: BTreeMap<SessionId, Vec<ServerFrame>>,
    closed: BTreeMap<SessionId, ErrorCode>,
    /// The statements of every submit answer, verified, by the events they place.
    placed_by: HashMap<EventId, Event>,
}

impl Net {
    fn new(limits: Limits) -> Net {
        Net::on_store(RelayStore::in_memory().expect("store"), limits)
    }

    fn on_store(store: RelayStore, limits: Limits) -> Net {
        let key = DeviceKey::from_seed(RELAY_SEED, UserId([0; 32]));
        Net {
            core: RelayCore::new(store, key, limits).expect("core"),
            now: 1_000,
            inbox: BTreeMap::new(),
            closed: BTreeMap::new(),
            placed_by: HashMap::new(),
        }
    }

    /// Commits what is staged and routes the outputs.
    fn pump(&mut self) {
        self.core.commit().expect("commit");
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Frame { session, frame } => {
                    self.inbox.entry(session).or_default().push(frame)
                }
                Output::Close { session, code, .. } => {
                    self.closed.insert(session, code);
                }
            }
        }
    }

    fn take(&mut self, s: SessionId) -> Vec<ServerFrame> {
        self.inbox.remove(&s).unwrap_or_default()
    }

    fn frame(&mut self, s: SessionId, f: ClientFrame) -> Vec<ServerFrame> {
        self.core.handle_frame(s, f, self.now);
        self.pump();
        self.take(s)
    }

    /// Handshake, registration and Sync for device `dev_seed` of user `user_seed`.
    fn connect(&mut self, user_seed: u8, dev_seed: u8) -> Dev {
        let key = DeviceKey::from_seed([dev_seed; 32], user_id(user_seed));
        let session = self.handshake(&key);
        let reg =
            DeviceRegistration::sign(&user_key(user_seed), key.device(), [dev_seed; 32], self.now);
        let got = self.frame(
            session,
            ClientFrame::RegisterDevice {
                request_id: 1,
                registration: reg,
            },
        );
        assert!(
            matches!(got[..], [ServerFrame::Registered { .. }]),
            "{got:?}"
        );
        let got = self.frame(
            session,
            ClientFrame::Sync {
                request_id: 2,
                after: None,
            },
        );
        assert!(
            matches!(got[..], [ServerFrame::Conversations { .. }]),
            "{got:?}"
        );
        Dev {
            key,
            session,
            counter: 0,
            chain: BTreeMap::new(),
        }
    }

    fn handshake(&mut self, key: &DeviceKey) -> SessionId {
        let binding = [key.device().0[0]; 32];
        let s = self
            .core
            .handle_connect("127.0.0.1".parse().expect("ip"), binding, [7; 32])
            .expect("connect");
        let got = self.frame(
            s,
            ClientFrame::Hello {
                protocol_version: PROTOCOL_VERSION,
                device: key.device(),
                user: key.user(),
            },
        );
        let [ServerFrame::Challenge { nonce }] = got[..] else {
            panic!("{got:?}")
        };
        let signature = wire::sign_auth(key.signing_key(), &key.user(), &nonce, &binding);
        let got = self.frame(s, ClientFrame::Auth { signature });
        assert!(matches!(got[..], [ServerFrame::Welcome(_)]), "{got:?}");
        s
    }

    fn submit(&mut self, dev: &Dev, events: &[Event]) -> Vec<SubmitOutcome> {
        let got = self.frame(
            dev.session,
            ClientFrame::Submit {
                request_id: 9,
                events: events
                    .iter()
                    .map(|e| Envelope(e.bytes().to_vec()))
                    .collect(),
            },
        );
        // Pushes of earlier events (or the switch to pull mode) may come first.
        let got: Vec<ServerFrame> = got
            .into_iter()
            .filter(|f| {
                !matches!(
                    f,
                    ServerFrame::Push { .. }
                        | ServerFrame::PullMode
                        | ServerFrame::UserChanged { .. }
                )
            })
            .collect();
        match &got[..] {
            [ServerFrame::SubmitResult {
                outcomes, records, ..
            }] => {
                for st in statements(records) {
                    for p in st.placements() {
                        self.placed_by.insert(p.event, st.clone());
                    }
                }
                outcomes.clone()
            }
            other => panic!("{other:?}"),
        }
    }

    /// The statement of a submit answer that placed `event`.
    fn statement_of(&self, event: &Event) -> &Event {
        self.placed_by
            .get(&event.id())
            .expect("a statement placed it")
    }
}

/// Statement envelopes, decoded with their signatures checked, and checked to be the relay's.
fn statements(records: &[Envelope]) -> Vec<Event> {
    let relay = DeviceKey::from_seed(RELAY_SEED, UserId([0; 32])).device();
    records
        .iter()
        .map(|r| {
            let st = Event::decode(&r.0).expect("statement verifies");
            assert_eq!(st.header().author, relay);
            assert!(matches!(st.kind(), EventKind::Sequenced { .. }));
            st
        })
        .collect()
}

/// Events of a page or push with the sequences their statements give them.
fn placed(events: &[Envelope], records: &[Envelope]) -> Vec<(Event, ServerSeq)> {
    let places: HashMap<EventId, ServerSeq> = statements(records)
        .iter()
        .flat_map(Event::placements)
        .map(|p| (p.event, p.seq))
        .collect();
    events
        .iter()
        .map(|e| {
            let e = Event::decode(&e.0).expect("event verifies");
            let seq = *places
                .get(&e.id())
                .expect("a statement of the frame places it");
            (e, seq)
        })
        .collect()
}

fn event(dev: &mut Dev, conv: u8, kind: EventKind) -> Event {
    dev.counter += 1;
    let (n, prev) = match dev.chain.get(&conv) {
        Some(&(n, id)) => (n + 1, Some(id)),
        None => (1, None),
    };
    let h = dev
        .key
        .header(ConversationId([conv; 16]), n, prev, dev.counter, 5);
    // A Send carries the message id bound to its header, as a device writes it.
    let kind = h.bind(kind);
    let ev = Event::sign(dev.key.signing_key(), h, kind).expect("sign");
    dev.chain.insert(conv, (n, ev.id()));
    ev
}

fn create(dev: &mut Dev, conv: u8, members: &[u8]) -> Event {
    let members = members.iter().map(|&m| user_id(m)).collect();
    event(dev, conv, EventKind::Create { members })
}

fn send(dev: &mut Dev, conv: u8, text: &str) -> Event {
    event(
        dev,
        conv,
        EventKind::Send {
            message: MessageId::default(),
            body: text.as_bytes().to_vec(),
            media: vec![],
        },
    )
}

/// The sequence of an accepted outcome.
fn seq_of(o: &SubmitOutcome) -> ServerSeq {
    let SubmitOutcome::Accepted { seq } = o else {
        panic!("not accepted: {o:?}")
    };
    *seq
}

fn code_of(o: &SubmitOutcome) -> ErrorCode {
    match o {
        SubmitOutcome::Rejected { code, .. } => *code,
        o => panic!("accepted: {o:?}"),
    }
}

fn pushed(frames: &[ServerFrame]) -> Vec<Event> {
    let mut out = Vec::new();
    for f in frames {
        if let ServerFrame::Push { events, records } = f {
            out.extend(placed(events, records).into_iter().map(|(e, _)| e));
        }
    }
    out
}

#[test]
fn sequences_and_acks_chain() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let c = create(&mut a, 1, &[1, 2]);
    let s1 = send(&mut a, 1, "hi");
    let s2 = send(&mut a, 1, "there");
    let out = net.submit(&a, &[c.clone(), s1.clone(), s2.clone()]);
    assert_eq!(out.iter().map(seq_of).collect::<Vec<_>>(), vec![1, 2, 3]);
    // One commit, one conversation: one statement, one signature, for the three events.
    let st = net.statement_of(&c).clone();
    assert_eq!(net.statement_of(&s2), &st);
    assert_eq!((st.header().counter, st.header().prev), (1, None));
    let places = st.placements();
    assert_eq!(
        places.iter().map(|p| (p.event, p.seq)).collect::<Vec<_>>(),
        vec![(c.id(), 1), (s1.id(), 2), (s2.id(), 3)]
    );
    assert!(places[1].message.is_some());
    // The next commit's statement continues the chain.
    let s3 = send(&mut a, 1, "again");
    assert_eq!(seq_of(&net.submit(&a, std::slice::from_ref(&s3))[0]), 4);
    let next = net.statement_of(&s3);
    assert_eq!(
        (next.header().counter, next.header().prev),
        (4, Some(st.id()))
    );
    assert_eq!(net.core.store().n_events().expect("n"), 4);
}

#[test]
fn resubmission_returns_the_same_ack_and_stores_nothing_twice() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let c = create(&mut a, 1, &[1]);
    let s = send(&mut a, 1, "once");
    let first = net.submit(&a, &[c, s.clone()]);
    let again = net.submit(&a, std::slice::from_ref(&s));
    assert_eq!(again[0], first[1]);
    // Twice in one batch, not yet committed: one sequence.
    let t = send(&mut a, 1, "twice");
    let both = net.submit(&a, &[t.clone(), t]);
    assert_eq!(both[0], both[1]);
    assert_eq!(seq_of(&both[0]), 3);
    assert_eq!(net.core.store().n_events().expect("n"), 3);
}

#[test]
fn refuses_what_it_must() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let mut eve = net.connect(3, 30);
    let c = create(&mut a, 1, &[1, 2]);
    assert_eq!(seq_of(&net.submit(&a, &[c])[0]), 1);

    // Not a member: submit and pull.
    let intrusion = send(&mut eve, 1, "let me in");
    assert_eq!(
        code_of(&net.submit(&eve, &[intrusion])[0]),
        ErrorCode::NOT_MEMBER
    );
    let got = net.frame(
        eve.session,
        ClientFrame::Pull {
            request_id: 4,
            conversation: ConversationId([1; 16]),
            after_seq: 0,
            limit: 10,
        },
    );
    assert!(
        matches!(
            got[..],
            [ServerFrame::Refused {
                code: ErrorCode::NOT_MEMBER,
                ..
            }]
        ),
        "{got:?}"
    );

    // A forged signature.
    let good = send(&mut a, 1, "real");
    let mut bytes = good.bytes().to_vec();
    bytes[40] ^= 1;
    let got = net.frame(
        a.session,
        ClientFrame::Submit {
            request_id: 5,
            events: vec![Envelope(bytes)],
        },
    );
    let [ServerFrame::SubmitResult { outcomes, .. }] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!(code_of(&outcomes[0]), ErrorCode::BAD_EVENT);

    // A ServerAck from a device.
    let fake_ack = event(
        &mut a,
        1,
        EventKind::ServerAck {
            event: good.id(),
            message: None,
            seq: 99,
            server_ts_ms: 0,
        },
    );
    assert_eq!(
        code_of(&net.submit(&a, &[fake_ack])[0]),
        ErrorCode::FORBIDDEN_KIND
    );

    // An author device not registered to the user it claims (signed by a stray key).
    let mut stray = Dev {
        key: DeviceKey::from_seed([77; 32], user_id(1)),
        session: a.session,
        counter: 0,
        chain: BTreeMap::new(),
    };
    let e = send(&mut stray, 1, "who am I");
    assert_eq!(code_of(&net.submit(&a, &[e])[0]), ErrorCode::NOT_REGISTERED);

    // No Create, a second Create, a Create without its author's user.
    let orphan = send(&mut a, 9, "nowhere");
    assert_eq!(
        code_of(&net.submit(&a, &[orphan])[0]),
        ErrorCode::UNKNOWN_CONVERSATION
    );
    let again = create(&mut a, 1, &[1]);
    assert_eq!(
        code_of(&net.submit(&a, &[again])[0]),
        ErrorCode::CONVERSATION_EXISTS
    );
    let without_me = create(&mut a, 2, &[2]);
    assert_eq!(
        code_of(&net.submit(&a, &[without_me])[0]),
        ErrorCode::BAD_MEMBERS
    );
    assert_eq!(net.core.store().n_events().expect("n"), 1);
}

#[test]
fn handshake_failures_close_only_that_session() {
    let mut net = Net::new(Limits::default());
    let key = DeviceKey::from_seed([5; 32], user_id(1));
    let ip = "127.0.0.1".parse().expect("ip");
    let s = net
        .core
        .handle_connect(ip, [1; 32], [2; 32])
        .expect("connect");
    net.frame(
        s,
        ClientFrame::Hello {
            protocol_version: 99,
            device: key.device(),
            user: key.user(),
        },
    );
    assert_eq!(net.closed.get(&s), Some(&ErrorCode::UNSUPPORTED_VERSION));

    // A signature over another TLS binding (a relayed challenge) does not authenticate.
    let s = net
        .core
        .handle_connect(ip, [1; 32], [2; 32])
        .expect("connect");
    net.frame(
        s,
        ClientFrame::Hello {
            protocol_version: PROTOCOL_VERSION,
            device: key.device(),
            user: key.user(),
        },
    );
    let signature = wire::sign_auth(key.signing_key(), &key.user(), &[2; 32], &[9; 32]);
    net.frame(s, ClientFrame::Auth { signature });
    assert_eq!(net.closed.get(&s), Some(&ErrorCode::AUTH_FAILED));

    // Submit before authenticating.
    let s = net
        .core
        .handle_connect(ip, [1; 32], [2; 32])
        .expect("connect");
    net.frame(
        s,
        ClientFrame::Sync {
            request_id: 1,
            after: None,
        },
    );
    assert_eq!(net.closed.get(&s), Some(&ErrorCode::UNEXPECTED_FRAME));
    let s2 = net
        .core
        .handle_connect(ip, [1; 32], [2; 32])
        .expect("connect");
    net.frame(
        s2,
        ClientFrame::Auth {
            signature: SignatureBytes([0; 64]),
        },
    );
    assert_eq!(net.closed.get(&s2), Some(&ErrorCode::UNEXPECTED_FRAME));

    // Others are unaffected.
    let mut a = net.connect(1, 10);
    let c = create(&mut a, 1, &[1]);
    assert_eq!(seq_of(&net.submit(&a, &[c])[0]), 1);
    assert_eq!(net.core.stats().sessions, 1);
}

#[test]
fn fans_out_to_every_member_device_but_the_submitter() {
    let mut net = Net::new(Limits::default());
    let mut a1 = net.connect(1, 10);
    let a2 = net.connect(1, 11);
    let b = net.connect(2, 20);
    let c = create(&mut a1, 1, &[1, 2]);
    net.submit(&a1, std::slice::from_ref(&c));
    // For Bob the conversation is an invitation: told, nothing pushed until he accepts.
    let got = net.take(b.session);
    assert!(
        matches!(&got[..], [ServerFrame::UserChanged { change: UserChange::Invited(i) }] if i.conversation == c.conversation()),
        "{got:?}"
    );
    accept(&mut net, &b, 1);
    let s = send(&mut a1, 1, "hello");
    net.submit(&a1, std::slice::from_ref(&s));
    assert!(net.take(a1.session).is_empty());
    let got = pushed(&net.take(a2.session));
    assert_eq!(
        got.iter().map(|e| e.id()).collect::<Vec<_>>(),
        vec![c.id(), s.id()]
    );
    let got = pushed(&net.take(b.session));
    assert_eq!(got.iter().map(|e| e.id()).collect::<Vec<_>>(), vec![s.id()]);
    // Nothing for a device of a non-member.
    let eve = net.connect(3, 30);
    let mut b = b;
    let r = event(
        &mut b,
        1,
        EventKind::Delivered {
            up_to: 2,
            head: None,
        },
    );
    net.submit(&b, std::slice::from_ref(&r));
    assert!(net.take(eve.session).is_empty());
    // The receipt reaches both of the sender's devices.
    assert_eq!(pushed(&net.take(a1.session))[0].id(), r.id());
    assert_eq!(pushed(&net.take(a2.session))[0].id(), r.id());
}

#[test]
fn a_slow_device_is_switched_to_pull_mode_and_resumes_on_sync() {
    let mut net = Net::new(Limits::default().with_push_window(3));
    let mut a = net.connect(1, 10);
    let b = net.connect(2, 20);
    let c = create(&mut a, 1, &[1, 2]);
    net.submit(&a, &[c]);
    accept(&mut net, &b, 1);
    for i in 0..5 {
        let s = send(&mut a, 1, &format!("m{i}"));
        net.submit(&a, &[s]);
    }
    let got = net.take(b.session);
    assert_eq!(pushed(&got).len(), 3);
    assert_eq!(got.last(), Some(&ServerFrame::PullMode));
    assert_eq!(net.core.stats().fanout_queue_depth, 0);
    let s = send(&mut a, 1, "while pulling");
    net.submit(&a, &[s]);
    assert!(net.take(b.session).is_empty());
    // Catch up: pull everything, acknowledge, sync; pushes resume.
    let got = net.frame(
        b.session,
        ClientFrame::Pull {
            request_id: 3,
            conversation: ConversationId([1; 16]),
            after_seq: 0,
            limit: 1000,
        },
    );
    let [ServerFrame::Page {
        events,
        records,
        more,
        ..
    }] = &got[..]
    else {
        panic!("{got:?}")
    };
    assert_eq!((placed(events, records).len(), *more), (7, false));
    net.frame(
        b.session,
        ClientFrame::Received {
            conversation: ConversationId([1; 16]),
            up_to: 7,
        },
    );
    let got = net.frame(
        b.session,
        ClientFrame::Sync {
            request_id: 4,
            after: None,
        },
    );
    let [ServerFrame::Conversations { conversations, .. }] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!(
        conversations[..],
        [ConversationInfo {
            conversation: ConversationId([1; 16]),
            max_seq: 7,
            cursor: 7
        }]
    );
    let s = send(&mut a, 1, "pushed again");
    net.submit(&a, std::slice::from_ref(&s));
    assert_eq!(pushed(&net.take(b.session))[0].id(), s.id());
}

#[test]
fn pages_respect_limits_and_order() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let c = create(&mut a, 1, &[1]);
    let mut evs = vec![c];
    for i in 0..9 {
        evs.push(send(&mut a, 1, &format!("m{i}")));
    }
    net.submit(&a, &evs);
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let got = net.frame(
            a.session,
            ClientFrame::Pull {
                request_id: 1,
                conversation: ConversationId([1; 16]),
                after_seq: after,
                limit: 4,
            },
        );
        let [ServerFrame::Page {
            events,
            records,
            more,
            ..
        }] = &got[..]
        else {
            panic!("{got:?}")
        };
        assert!(events.len() <= 4);
        for (_, seq) in placed(events, records) {
            seen.push(seq);
            after = seq;
        }
        if !more {
            break;
        }
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
}

#[test]
fn restart_keeps_committed_events_and_continues_the_sequence() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let c = create(&mut a, 1, &[1]);
    let s = send(&mut a, 1, "before");
    let out = net.submit(&a, &[c, s.clone()]);
    // Staged but never committed: lost in the crash, never acknowledged.
    let lost = send(&mut a, 1, "in flight");
    net.core.handle_frame(
        a.session,
        ClientFrame::Submit {
            request_id: 1,
            events: vec![Envelope(lost.bytes().to_vec())],
        },
        net.now,
    );
    assert_eq!(net.core.stats().staged_events, 1);
    let store = std::mem::replace(&mut net.core, {
        let key = DeviceKey::from_seed(RELAY_SEED, UserId([0; 32]));
        RelayCore::new(
            RelayStore::in_memory().expect("store"),
            key,
            Limits::default(),
        )
        .expect("core")
    })
    .into_store();
    let db = store.into_database().expect("sole owner of the database");
    let mut net = Net::on_store(
        RelayStore::open(db, false).expect("reopen"),
        Limits::default(),
    );
    let a = Dev {
        session: net.connect(1, 10).session,
        ..a
    };
    let before = net.submit(&a, std::slice::from_ref(&s));
    assert_eq!(before[0], out[1]);
    let after = net.submit(&a, std::slice::from_ref(&lost));
    assert_eq!(seq_of(&after[0]), 3);
    // The chain continues from the statement stored before the restart.
    let prev = net.statement_of(&s).id();
    assert_eq!(net.statement_of(&lost).header().prev, Some(prev));
}

#[test]
fn rate_and_connection_limits() {
    let mut net = Net::new(
        Limits::default()
            .with_rate(10, 3)
            .with_connections_per_prefix(3),
    );
    let mut a = net.connect(1, 10);
    let mut evs = vec![create(&mut a, 1, &[1])];
    for i in 0..4 {
        evs.push(send(&mut a, 1, &format!("m{i}")));
    }
    let out = net.submit(&a, &evs);
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, SubmitOutcome::Accepted { .. }))
            .count(),
        3
    );
    assert_eq!(code_of(&out[3]), ErrorCode::RATE_LIMITED);
    // A second later the budget is back.
    net.now += 1_000;
    assert_eq!(seq_of(&net.submit(&a, &evs[3..4])[0]), 4);

    let ip = "127.0.0.1".parse().expect("ip");
    net.core
        .handle_connect(ip, [0; 32], [0; 32])
        .expect("second");
    net.core
        .handle_connect(ip, [0; 32], [0; 32])
        .expect("third");
    assert!(matches!(
        net.core.handle_connect(ip, [0; 32], [0; 32]),
        Err(ConnectError::TooManyFromAddress { .. })
    ));
    let other = "127.0.0.2".parse().expect("ip");
    net.core
        .handle_connect(other, [0; 32], [0; 32])
        .expect("other address");
}

#[test]
fn cursors_persist_and_drive_the_backlog() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let b = net.connect(2, 20);
    let mut evs = vec![create(&mut a, 1, &[1, 2])];
    for i in 0..4 {
        evs.push(send(&mut a, 1, &format!("m{i}")));
    }
    net.submit(&a, &evs);
    accept(&mut net, &b, 1);
    let backlog = |net: &Net| {
        net.core
            .stats()
            .device_backlog
            .into_iter()
            .find(|(d, _)| *d == b.key.device())
            .map(|(_, n)| n)
    };
    assert_eq!(backlog(&net), Some(5));
    net.frame(
        b.session,
        ClientFrame::Received {
            conversation: ConversationId([1; 16]),
            up_to: 3,
        },
    );
    assert_eq!(backlog(&net), Some(2));
    // A second connection of the same device replaces the first and sees the stored cursor.
    let s = net.handshake(&b.key);
    assert_eq!(net.closed.get(&b.session), Some(&ErrorCode::REPLACED));
    let got = net.frame(
        s,
        ClientFrame::Sync {
            request_id: 1,
            after: None,
        },
    );
    let [ServerFrame::Conversations { conversations, .. }] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!((conversations[0].max_seq, conversations[0].cursor), (5, 3));
}

#[test]
fn registration_rules() {
    let mut net = Net::new(Limits::default());
    let key = DeviceKey::from_seed([40; 32], user_id(4));
    let s = net.handshake(&key);
    // Unregistered: no submit, pull or sync.
    let got = net.frame(
        s,
        ClientFrame::Sync {
            request_id: 1,
            after: None,
        },
    );
    assert!(
        matches!(
            got[..],
            [ServerFrame::Refused {
                code: ErrorCode::NOT_REGISTERED,
                ..
            }]
        ),
        "{got:?}"
    );
    // Signed by the wrong key.
    let bad = DeviceRegistration::sign(&user_key(5), key.device(), [0; 32], 0);
    let bad = DeviceRegistration {
        user: user_id(4),
        ..bad
    };
    let got = net.frame(
        s,
        ClientFrame::RegisterDevice {
            request_id: 2,
            registration: bad,
        },
    );
    assert!(
        matches!(
            got[..],
            [ServerFrame::Refused {
                code: ErrorCode::BAD_REGISTRATION,
                ..
            }]
        ),
        "{got:?}"
    );
    let good = DeviceRegistration::sign(&user_key(4), key.device(), [0; 32], 0);
    let got = net.frame(
        s,
        ClientFrame::RegisterDevice {
            request_id: 3,
            registration: good,
        },
    );
    assert!(
        matches!(got[..], [ServerFrame::Registered { .. }]),
        "{got:?}"
    );
    // The same device for another user.
    let other = DeviceRegistration::sign(&user_key(5), key.device(), [0; 32], 0);
    let got = net.frame(
        s,
        ClientFrame::RegisterDevice {
            request_id: 4,
            registration: other,
        },
    );
    assert!(
        matches!(
            got[..],
            [ServerFrame::Refused {
                code: ErrorCode::DEVICE_TAKEN,
                ..
            }]
        ),
        "{got:?}"
    );
}

/// Acks signed on several threads chain exactly as when signed on one.
#[test]
fn parallel_ack_signing_matches_serial() {
    let run = |threads: usize| {
        let mut net = Net::new(Limits {
            ack_sign_threads: threads,
            ..Limits::default()
        });
        let mut a = net.connect(1, 10);
        let mut evs = Vec::new();
        for conv in 1..=3 {
            evs.push(create(&mut a, conv, &[1]));
        }
        for i in 0..150 {
            evs.push(send(&mut a, 1 + (i % 3) as u8, &format!("m{i}")));
        }
        let mut outcomes = Vec::new();
        for chunk in evs.chunks(wire::MAX_SUBMIT_BATCH) {
            // One commit for the whole batch: above the parallel threshold.
            net.core.handle_frame(
                a.session,
                ClientFrame::Submit {
                    request_id: 1,
                    events: chunk.iter().map(|e| Envelope(e.bytes().to_vec())).collect(),
                },
                net.now,
            );
        }
        net.pump();
        let mut sts = Vec::new();
        for f in net.take(a.session) {
            if let ServerFrame::SubmitResult {
                outcomes: o,
                records,
                ..
            } = f
            {
                outcomes.extend(o);
                sts.extend(statements(&records));
            }
        }
        (outcomes, sts)
    };
    let serial = run(1);
    let parallel = run(2);
    assert_eq!(serial.0.len(), 153);
    assert_eq!(serial, parallel);
    // One statement per conversation of the commit; per conversation, sequences 1..
    // without gaps, each statement's prev the previous statement.
    assert_eq!(parallel.1.len(), 3);
    let mut last: HashMap<ConversationId, (ServerSeq, EventId)> = HashMap::new();
    for st in &parallel.1 {
        let prev = last.get(&st.conversation()).copied();
        assert_eq!(st.header().counter, prev.map_or(1, |(s, _)| s + 1));
        assert_eq!(st.header().prev, prev.map(|(_, id)| id));
        let end = st.last_placed().expect("places events");
        assert_eq!(end, 51);
        last.insert(st.conversation(), (end, st.id()));
    }
}

/// A commit being written while the next batch is staged: duplicates of in-flight events get
/// the in-flight ack only once it is durable; a failed write refuses it and everything staged
/// after it, and the sequence resumes from the last durable state.
/// Hands a Submit to the core without committing it.
fn submit_nowait(net: &mut Net, dev: &Dev, events: &[Event], request_id: u64) {
    net.core.handle_frame(
        dev.session,
        ClientFrame::Submit {
            request_id,
            events: events
                .iter()
                .map(|e| Envelope(e.bytes().to_vec()))
                .collect(),
        },
        net.now,
    );
}

/// The SubmitResults the core has answered, by request id.
fn submit_results(net: &mut Net) -> BTreeMap<u64, Vec<SubmitOutcome>> {
    let mut out = BTreeMap::new();
    while let Some(o) = net.core.poll_output() {
        if let Output::Frame {
            frame:
                ServerFrame::SubmitResult {
                    request_id,
                    outcomes,
                    ..
                },
            ..
        } = o
        {
            out.insert(request_id, outcomes);
        }
    }
    out
}

#[test]
fn pipelined_commits() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let c = create(&mut a, 1, &[1]);
    assert_eq!(seq_of(&net.submit(&a, &[c])[0]), 1);
    let m1 = send(&mut a, 1, "one");
    submit_nowait(&mut net, &a, std::slice::from_ref(&m1), 1);
    let job = net.core.start_commit().expect("sign").expect("a job");
    assert!(net.core.commit_in_flight());
    // While it is written: a duplicate, and a new event.
    submit_nowait(&mut net, &a, std::slice::from_ref(&m1), 2);
    let m2 = send(&mut a, 1, "two");
    submit_nowait(&mut net, &a, std::slice::from_ref(&m2), 3);
    assert!(
        submit_results(&mut net).is_empty(),
        "nothing answered before the write"
    );
    assert!(
        net.core.start_commit().expect("ok").is_none(),
        "one job at a time"
    );
    let r = job.write(net.core.store());
    net.core.finish_commit(job, r);
    let got = submit_results(&mut net);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(got[&1], got[&2]);
    assert_eq!(seq_of(&got[&1][0]), 2);
    net.core.commit().expect("commit");
    assert_eq!(seq_of(&submit_results(&mut net)[&3][0]), 3);

    // A failed write: its events and those staged after it are refused.
    let m3 = send(&mut a, 1, "three");
    submit_nowait(&mut net, &a, std::slice::from_ref(&m3), 4);
    let job = net.core.start_commit().expect("sign").expect("a job");
    let m4 = send(&mut a, 1, "four");
    submit_nowait(&mut net, &a, std::slice::from_ref(&m4), 5);
    net.core
        .finish_commit(job, Err(StoreError::Failed("disk on fire".into())));
    let got = submit_results(&mut net);
    assert_eq!(code_of(&got[&4][0]), ErrorCode::INTERNAL);
    assert_eq!(code_of(&got[&5][0]), ErrorCode::INTERNAL);
    assert!(!net.core.has_staged());
    // Resubmitted, they get the sequences the failed ones would have had.
    assert_eq!(
        net.submit(&a, &[m3, m4])
            .iter()
            .map(seq_of)
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert_eq!(net.core.store().n_events().expect("n"), 5);
}

/// A crash and restart of the core on the same store.
fn restart(net: Net) -> Net {
    let db = net
        .core
        .into_store()
        .into_database()
        .expect("sole owner of the database");
    Net::on_store(
        RelayStore::open(db, false).expect("reopen"),
        Limits::default(),
    )
}

fn pull(net: &mut Net, dev: &Dev, conv: u8) -> Result<Vec<(Event, ServerSeq)>, ErrorCode> {
    let got = net.frame(
        dev.session,
        ClientFrame::Pull {
            request_id: 5,
            conversation: ConversationId([conv; 16]),
            after_seq: 0,
            limit: 100,
        },
    );
    match &got[..] {
        [ServerFrame::Page {
            events, records, ..
        }] => Ok(placed(events, records)),
        [ServerFrame::Refused { code, .. }] => Err(*code),
        other => panic!("{other:?}"),
    }
}

fn add(dev: &mut Dev, conv: u8, user: u8, admin: bool) -> Event {
    let user = user_id(user);
    event(dev, conv, EventKind::AddMember { user, admin })
}

fn remove(dev: &mut Dev, conv: u8, user: u8) -> Event {
    let user = user_id(user);
    event(dev, conv, EventKind::RemoveMember { user })
}

fn revoke(net: &mut Net, from: SessionId, rev: DeviceRevocation) -> ServerFrame {
    let mut got = net.frame(
        from,
        ClientFrame::Revoke {
            request_id: 3,
            revocation: rev,
        },
    );
    got.retain(|f| {
        !matches!(
            f,
            ServerFrame::Push { .. } | ServerFrame::UserChanged { .. }
        )
    });
    assert_eq!(got.len(), 1, "{got:?}");
    got.remove(0)
}

#[test]
fn a_revoked_device_cannot_auth_submit_or_register_again() {
    let mut net = Net::new(Limits::default());
    let mut a1 = net.connect(1, 10);
    let a2 = net.connect(1, 11);
    let c = create(&mut a1, 1, &[1]);
    seq_of(&net.submit(&a1, &[c])[0]);
    // Signed before the revocation, submitted after: refused too.
    let late = send(&mut a1, 1, "from a lost phone");

    let rev = DeviceRevocation::sign(&user_key(1), a1.key.device(), 5);
    let got = revoke(&mut net, a2.session, rev.clone());
    assert!(
        matches!(got, ServerFrame::Revoked { device, .. } if device == a1.key.device()),
        "{got:?}"
    );
    assert_eq!(net.closed.get(&a1.session), Some(&ErrorCode::REVOKED));
    assert_eq!(code_of(&net.submit(&a2, &[late])[0]), ErrorCode::REVOKED);
    // Sending it again is answered the same way.
    assert!(matches!(
        revoke(&mut net, a2.session, rev),
        ServerFrame::Revoked { .. }
    ));

    // Survives a restart: Auth is refused with a clear code, so is registering again.
    let mut net = restart(net);
    let s = net
        .core
        .handle_connect("127.0.0.1".parse().expect("ip"), [1; 32], [7; 32])
        .expect("connect");
    net.frame(
        s,
        ClientFrame::Hello {
            protocol_version: PROTOCOL_VERSION,
            device: a1.key.device(),
            user: a1.key.user(),
        },
    );
    let signature = wire::sign_auth(a1.key.signing_key(), &a1.key.user(), &[7; 32], &[1; 32]);
    net.frame(s, ClientFrame::Auth { signature });
    assert_eq!(net.closed.get(&s), Some(&ErrorCode::REVOKED));

    let a2 = net.connect(1, 11);
    let again = DeviceRegistration::sign(&user_key(1), a1.key.device(), [3; 32], 99);
    let got = net.frame(
        a2.session,
        ClientFrame::RegisterDevice {
            request_id: 4,
            registration: again,
        },
    );
    assert!(
        matches!(
            got[..],
            [ServerFrame::Refused {
                code: ErrorCode::REVOKED,
                ..
            }]
        ),
        "{got:?}"
    );
}

#[test]
fn forged_revocations_are_refused() {
    let mut net = Net::new(Limits::default());
    let a = net.connect(1, 10);
    let b = net.connect(2, 20);
    // User 2 revoking user 1's device, with a valid signature of user 2.
    let rev = DeviceRevocation::sign(&user_key(2), a.key.device(), 1);
    let got = revoke(&mut net, b.session, rev);
    assert!(
        matches!(
            got,
            ServerFrame::Refused {
                code: ErrorCode::BAD_REVOCATION,
                ..
            }
        ),
        "{got:?}"
    );
    // Claims user 1 but signed by user 2.
    let rev = DeviceRevocation {
        user: user_id(1),
        ..DeviceRevocation::sign(&user_key(2), a.key.device(), 1)
    };
    let got = revoke(&mut net, b.session, rev);
    assert!(
        matches!(
            got,
            ServerFrame::Refused {
                code: ErrorCode::BAD_REVOCATION,
                ..
            }
        ),
        "{got:?}"
    );
    assert!(!net.closed.contains_key(&a.session));
    assert!(net.core.store().revocations().expect("read").is_empty());
}

#[test]
fn devices_lists_verified_certificates_of_co_members_only() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let b = net.connect(2, 20);
    let b2 = net.connect(2, 21);
    let stranger = net.connect(3, 30);
    let c = create(&mut a, 1, &[1, 2]);
    seq_of(&net.submit(&a, &[c])[0]);
    let rev = DeviceRevocation::sign(&user_key(2), b2.key.device(), 7);
    assert!(matches!(
        revoke(&mut net, b.session, rev.clone()),
        ServerFrame::Revoked { .. }
    ));
    let ask = |net: &mut Net, dev: &Dev, users: &[u8]| {
        let got = net.frame(
            dev.session,
            ClientFrame::Devices {
                request_id: 8,
                users: users.iter().map(|&u| user_id(u)).collect(),
                after: None,
            },
        );
        match &got[..] {
            [ServerFrame::Devices {
                registrations,
                revocations,
                ..
            }] => (registrations.clone(), revocations.clone()),
            other => panic!("{other:?}"),
        }
    };
    let (regs, revs) = ask(&mut net, &a, &[1, 2, 3]);
    let mut devices: Vec<DeviceId> = regs.iter().map(|r| r.device).collect();
    devices.sort();
    let mut want = vec![a.key.device(), b.key.device(), b2.key.device()];
    want.sort();
    assert_eq!(devices, want, "user 3 shares nothing with user 1");
    assert!(regs.iter().all(|r| r.verify()));
    let b_cert = regs.iter().find(|r| r.device == b.key.device()).expect("b");
    assert_eq!(b_cert.agreement, [20; 32]);
    assert_eq!(revs, vec![rev]);
    assert!(revs.iter().all(|r| r.verify()));
    // The stranger sees only itself.
    let (regs, revs) = ask(&mut net, &stranger, &[1, 2, 3]);
    assert_eq!(
        regs.iter().map(|r| r.device).collect::<Vec<_>>(),
        vec![stranger.key.device()]
    );
    assert!(revs.is_empty());
    // Certificates survive a restart.
    let mut net = restart(net);
    let a = net.connect(1, 10);
    let (regs, _) = ask(&mut net, &a, &[2]);
    assert_eq!(regs.len(), 2);
}

#[test]
fn devices_keeps_serving_certificates_across_a_removal_but_not_to_strangers() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let mut b = net.connect(2, 20);
    let c = net.connect(3, 30);
    let stranger = net.connect(4, 40);
    let created = create(&mut a, 1, &[1, 2, 3]);
    seq_of(&net.submit(&a, &[created])[0]);
    let said = send(&mut b, 1, "before I leave");
    seq_of(&net.submit(&b, &[said])[0]);
    let gone = remove(&mut a, 1, 2);
    seq_of(&net.submit(&a, &[gone])[0]);
    let ask = |net: &mut Net, dev: &Dev, users: &[u8]| -> Vec<DeviceId> {
        let got = net.frame(
            dev.session,
            ClientFrame::Devices {
                request_id: 9,
                users: users.iter().map(|&u| user_id(u)).collect(),
                after: None,
            },
        );
        // Pushes of the events above may come first.
        let listed = got.iter().find_map(|f| match f {
            ServerFrame::Devices { registrations, .. } => Some(registrations),
            _ => None,
        });
        let mut d: Vec<DeviceId> = listed
            .unwrap_or_else(|| panic!("{got:?}"))
            .iter()
            .map(|r| r.device)
            .collect();
        d.sort();
        d
    };
    // c catches up on b's message after b left: it still needs b's certificate.
    let mut want = vec![a.key.device(), b.key.device(), c.key.device()];
    want.sort();
    assert_eq!(ask(&mut net, &c, &[1, 2, 3]), want);
    // The removed member may still hold unverified events from its time as a member.
    let mut want = vec![a.key.device(), c.key.device()];
    want.sort();
    assert_eq!(ask(&mut net, &b, &[1, 3]), want);
    // A stranger still learns nothing.
    assert_eq!(
        ask(&mut net, &stranger, &[1, 2, 3, 4]),
        vec![stranger.key.device()]
    );
    // The former member is remembered across a restart.
    let mut net = restart(net);
    let c = net.connect(3, 30);
    assert_eq!(ask(&mut net, &c, &[2]), vec![b.key.device()]);
    let b = net.connect(2, 20);
    assert_eq!(ask(&mut net, &b, &[3]), vec![c.key.device()]);
}
#[test]
fn membership_rules_are_enforced_in_server_order() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let mut b = net.connect(2, 20);
    let mut c = net.connect(3, 30);
    let created = create(&mut a, 1, &[1, 2]);
    seq_of(&net.submit(&a, &[created])[0]);
    // A non-member writes nothing.
    let e = send(&mut c, 1, "let me in");
    assert_eq!(code_of(&net.submit(&c, &[e])[0]), ErrorCode::NOT_MEMBER);
    // A member who is not an admin adds nobody, and nobody removes the creator.
    let e = add(&mut b, 1, 3, false);
    let out = net.submit(&b, &[e]);
    assert_eq!(code_of(&out[0]), ErrorCode::FORBIDDEN);
    let SubmitOutcome::Rejected { reason, .. } = &out[0] else {
        panic!()
    };
    assert!(reason.contains("not an admin"), "{reason}");
    let e = remove(&mut b, 1, 1);
    assert_eq!(code_of(&net.submit(&b, &[e])[0]), ErrorCode::FORBIDDEN);
    // The admin adds user 3 and removes user 2 in one batch, with a message of 2 between
    // them: in server order, 2 is still a member for the message and not after.
    let e1 = add(&mut a, 1, 3, false);
    let e2 = remove(&mut a, 1, 2);
    let out = net.submit(&a, &[e1, e2]);
    assert_eq!((seq_of(&out[0]), seq_of(&out[1])), (2, 3));
    let e = send(&mut b, 1, "still here?");
    assert_eq!(code_of(&net.submit(&b, &[e])[0]), ErrorCode::NOT_MEMBER);
    let e = send(&mut c, 1, "hello all");
    assert_eq!(seq_of(&net.submit(&c, &[e])[0]), 4);
}

#[test]
fn added_members_read_and_get_pushes_removed_members_do_not() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let b = net.connect(2, 20);
    let c = net.connect(3, 30);
    let created = create(&mut a, 1, &[1, 2]);
    seq_of(&net.submit(&a, &[created])[0]);
    assert_eq!(pull(&mut net, &c, 1).err(), Some(ErrorCode::NOT_MEMBER));
    net.take(b.session);
    accept(&mut net, &b, 1);

    let e = add(&mut a, 1, 3, false);
    seq_of(&net.submit(&a, &[e])[0]);
    // The added member is told of its invitation (nothing pushed before it accepts), and
    // can read the conversation.
    let got = net.take(c.session);
    assert!(
        matches!(&got[..], [ServerFrame::UserChanged { change: UserChange::Invited(i) }] if i.inviter == user_id(1)),
        "{got:?}"
    );
    accept(&mut net, &c, 1);
    assert_eq!(pull(&mut net, &c, 1).map(|i| i.len()), Ok(2));
    let got = net.frame(
        c.session,
        ClientFrame::Sync {
            request_id: 6,
            after: None,
        },
    );
    assert!(
        matches!(&got[..], [ServerFrame::Conversations { conversations, .. }] if conversations.len() == 1),
        "{got:?}"
    );
    let e = send(&mut a, 1, "welcome");
    seq_of(&net.submit(&a, &[e])[0]);
    assert_eq!(pushed(&net.take(c.session)).len(), 1);
    assert_eq!(pushed(&net.take(b.session)).len(), 2);

    // The removed member is told of its removal, then nothing more.
    let e = remove(&mut a, 1, 2);
    seq_of(&net.submit(&a, &[e])[0]);
    assert_eq!(pushed(&net.take(b.session)).len(), 1);
    let e = send(&mut a, 1, "after b left");
    seq_of(&net.submit(&a, &[e])[0]);
    assert!(pushed(&net.take(b.session)).is_empty());
    assert_eq!(pull(&mut net, &b, 1).err(), Some(ErrorCode::NOT_MEMBER));

    // All of it survives a restart.
    let mut net = restart(net);
    let b = net.connect(2, 20);
    let mut c = net.connect(3, 30);
    assert_eq!(pull(&mut net, &b, 1).err(), Some(ErrorCode::NOT_MEMBER));
    assert_eq!(pull(&mut net, &c, 1).map(|i| i.len()), Ok(5));
    let e = send(&mut c, 1, "after restart");
    assert_eq!(seq_of(&net.submit(&c, &[e])[0]), 6);
    let e = event(
        &mut Dev {
            key: b.key.clone(),
            session: b.session,
            counter: 50,
            chain: BTreeMap::new(),
        },
        1,
        EventKind::Read {
            up_to: 1,
            head: None,
        },
    );
    assert_eq!(code_of(&net.submit(&b, &[e])[0]), ErrorCode::NOT_MEMBER);
}

#[test]
fn chains_refuse_forks_and_broken_prev_but_resubmission_is_idempotent() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let created = create(&mut a, 1, &[1]);
    let first = send(&mut a, 1, "one");
    let out = net.submit(&a, &[created, first.clone()]);
    let ack = out[1].clone();
    seq_of(&ack);
    // Identical resubmission: the same ack.
    assert_eq!(net.submit(&a, std::slice::from_ref(&first))[0], ack);

    // Another event at the same counter (2): a fork.
    let mut twin = Dev {
        key: a.key.clone(),
        session: a.session,
        counter: 90,
        chain: BTreeMap::new(),
    };
    twin.chain
        .insert(1, (1, first.header().prev.expect("the create")));
    let fork = send(&mut twin, 1, "two-faced");
    assert_eq!(fork.header().counter, 2);
    assert_eq!(code_of(&net.submit(&a, &[fork])[0]), ErrorCode::CHAIN_FORK);

    // Counter 3 whose prev is not the stored counter 2.
    let mut skew = Dev {
        key: a.key.clone(),
        session: a.session,
        counter: 95,
        chain: BTreeMap::new(),
    };
    skew.chain.insert(1, (2, EventId([0x55; 32])));
    let broken = send(&mut skew, 1, "out of line");
    assert_eq!(
        code_of(&net.submit(&a, &[broken])[0]),
        ErrorCode::BROKEN_CHAIN
    );

    // A staged event at counter 4 (the relay does not hold 3): then a counter 3 that the
    // held counter 4 does not name as its prev.
    let mut ahead = Dev {
        key: a.key.clone(),
        session: a.session,
        counter: 97,
        chain: BTreeMap::new(),
    };
    ahead.chain.insert(1, (3, EventId([0x66; 32])));
    let four = send(&mut ahead, 1, "four");
    seq_of(&net.submit(&a, &[four])[0]);
    let three = send(&mut a, 1, "three");
    assert_eq!(three.header().counter, 3);
    assert_eq!(
        code_of(&net.submit(&a, &[three])[0]),
        ErrorCode::BROKEN_CHAIN
    );

    // Counter 1 with a prev is malformed.
    let mut bad = Dev {
        key: a.key.clone(),
        session: a.session,
        counter: 99,
        chain: BTreeMap::new(),
    };
    bad.chain.insert(2, (0, EventId([1; 32])));
    let created2 = create(&mut bad, 2, &[1]);
    assert_eq!(
        code_of(&net.submit(&a, &[created2])[0]),
        ErrorCode::BROKEN_CHAIN
    );
    // And all of it after a restart, against the stored chain.
    let mut net = restart(net);
    let a2 = net.connect(1, 10);
    assert_eq!(net.submit(&a2, &[first])[0], ack);
}

/// Every conversation the relay lists to `dev` in answer to Sync (all pages).
fn sync_all(net: &mut Net, dev: &Dev) -> Vec<ConversationInfo> {
    sync_state(net, dev).0
}

/// The whole Sync answer: every page's conversations, the invitations and the blocked users.
fn sync_state(
    net: &mut Net,
    dev: &Dev,
) -> (Vec<ConversationInfo>, Vec<wire::Invitation>, Vec<UserId>) {
    let mut all = Vec::new();
    let mut first = None;
    let mut after = None;
    loop {
        let got = net.frame(
            dev.session,
            ClientFrame::Sync {
                request_id: 77,
                after,
            },
        );
        let Some(ServerFrame::Conversations {
            conversations,
            next,
            invitations,
            blocked,
            ..
        }) = got
            .into_iter()
            .find(|f| matches!(f, ServerFrame::Conversations { .. }))
        else {
            panic!("no Conversations answer")
        };
        all.extend(conversations);
        first.get_or_insert((invitations, blocked));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let (invitations, blocked) = first.unwrap_or_default();
    (all, invitations, blocked)
}

/// A user request from `dev`, answered once durable; the change it made.
fn user_request(net: &mut Net, dev: &Dev, f: ClientFrame) -> Result<UserChange, ErrorCode> {
    let got = net.frame(dev.session, f);
    for f in got {
        match f {
            ServerFrame::UserState { change, .. } => return Ok(change),
            ServerFrame::Refused { code, .. } => return Err(code),
            _ => {}
        }
    }
    panic!("no answer to the user request")
}

/// `dev`'s user accepts the conversation `conv` (see `create`).
fn accept(net: &mut Net, dev: &Dev, conv: u8) {
    let f = ClientFrame::Accept {
        request_id: 88,
        conversation: ConversationId([conv; 16]),
    };
    let change = user_request(net, dev, f).expect("accepted");
    assert!(matches!(change, UserChange::Accepted(_)), "{change:?}");
}

/// A Create of the conversation with the big-endian id `n` (first event of its chain).
fn create_numbered(dev: &mut Dev, n: u32, members: &[UserId]) -> Event {
    let mut id = [0u8; 16];
    id[12..].copy_from_slice(&n.to_be_bytes());
    dev.counter += 1;
    let h = dev.key.header(ConversationId(id), 1, None, dev.counter, 5);
    Event::sign(
        dev.key.signing_key(),
        h,
        EventKind::Create {
            members: members.to_vec(),
        },
    )
    .expect("sign")
}

/// Submits `events` in batches the relay takes, asserting each is accepted or refused with
/// one of `allowed`; returns how many were accepted.
fn submit_all(net: &mut Net, dev: &Dev, events: &[Event], allowed: &[ErrorCode]) -> usize {
    let mut n = 0;
    for chunk in events.chunks(wire::MAX_SUBMIT_BATCH) {
        for o in net.submit(dev, chunk) {
            match o {
                SubmitOutcome::Accepted { .. } => n += 1,
                SubmitOutcome::Rejected { code, reason } => {
                    assert!(allowed.contains(&code), "{code:?}: {reason}")
                }
            }
        }
    }
    n
}

/// More conversations than one Sync answer holds: every one of them is still listed, the
/// last in byte order included (it used to be cut at 16,384).
#[test]
fn sync_lists_every_conversation_however_many() {
    let mut net = Net::new(Limits::default().with_rate(1_000_000, 1_000_000));
    let mut a = net.connect(1, 10);
    let n = wire::MAX_LISTED_CONVERSATIONS as u32 + 100;
    let evs: Vec<Event> = (0..n)
        .map(|i| create_numbered(&mut a, i, &[user_id(1)]))
        .collect();
    assert_eq!(submit_all(&mut net, &a, &evs, &[]), n as usize);
    let listed = sync_all(&mut net, &a);
    assert_eq!(listed.len(), n as usize);
    let mut last = [0u8; 16];
    last[12..].copy_from_slice(&(n - 1).to_be_bytes());
    assert!(listed
        .iter()
        .any(|c| c.conversation == ConversationId(last)));
}

/// A stranger lists the victim in more conversations than one Sync answer holds, with ids
/// that sort before the victim's real ones: the victim's conversations still sync.
#[test]
fn stranger_flood_does_not_push_real_conversations_out_of_sync() {
    let mut net = Net::new(Limits::default().with_rate(1_000_000, 1_000_000));
    let mut stranger = net.connect(3, 30);
    let mut victim = net.connect(2, 20);
    let n = wire::MAX_LISTED_CONVERSATIONS as u32 + 100;
    let flood: Vec<Event> = (0..n)
        .map(|i| create_numbered(&mut stranger, i, &[user_id(3), user_id(2)]))
        .collect();
    // However many of these the relay takes, none may cost the victim its conversations.
    submit_all(&mut net, &stranger, &flood, &[ErrorCode::INVITATIONS_FULL]);
    let real = create_numbered(&mut victim, u32::MAX, &[user_id(2)]);
    assert_eq!(
        submit_all(&mut net, &victim, std::slice::from_ref(&real), &[]),
        1
    );
    let listed = sync_all(&mut net, &victim);
    assert!(
        listed.iter().any(|c| c.conversation == real.conversation()),
        "the victim's own conversation is missing from {} listed",
        listed.len()
    );
}

/// Invitations are listed apart and capped; acceptance on one device reaches the user's other
/// device at once and lists the conversation; a blocked user's Create and AddMember listing
/// the blocker are refused; all of it survives a restart.
#[test]
fn invitations_are_accepted_declined_and_blocked_per_user() {
    let mut net = Net::new(Limits::default().with_rate(1_000_000, 1_000_000));
    let mut alice = net.connect(1, 10);
    let bob1 = net.connect(2, 20);
    let bob2 = net.connect(2, 21);
    let mut eve = net.connect(3, 30);

    // Alice invites Bob; both of Bob's devices are told; nothing is listed yet.
    let c = create(&mut alice, 1, &[1, 2]);
    seq_of(&net.submit(&alice, &[c])[0]);
    let (convs, invitations, _) = sync_state(&mut net, &bob1);
    assert!(convs.is_empty());
    assert_eq!(
        invitations,
        vec![wire::Invitation {
            conversation: ConversationId([1; 16]),
            inviter: user_id(1)
        }]
    );
    net.take(bob2.session);
    // Bob accepts on one device: the other hears it without asking.
    accept(&mut net, &bob1, 1);
    let got = net.take(bob2.session);
    assert!(
        matches!(&got[..], [ServerFrame::UserChanged { change: UserChange::Accepted(i) }] if i.conversation == ConversationId([1; 16]) && i.max_seq == 1),
        "{got:?}"
    );
    let (convs, invitations, _) = sync_state(&mut net, &bob2);
    assert_eq!(convs.len(), 1);
    assert!(invitations.is_empty());

    // One stranger holds at most MAX_INVITATIONS_PER_INVITER of Bob's invitations.
    let n = wire::MAX_INVITATIONS_PER_INVITER as u32 + 5;
    let flood: Vec<Event> = (0..n)
        .map(|i| create_numbered(&mut eve, 1000 + i, &[user_id(3), user_id(2)]))
        .collect();
    let taken = submit_all(&mut net, &eve, &flood, &[ErrorCode::INVITATIONS_FULL]);
    assert_eq!(taken, wire::MAX_INVITATIONS_PER_INVITER);
    assert_eq!(
        sync_state(&mut net, &bob1).1.len(),
        wire::MAX_INVITATIONS_PER_INVITER
    );
    // Bob declines one, then blocks Eve: her pending invitations go, her new ones are refused.
    let declined = flood[0].conversation();
    let f = ClientFrame::Decline {
        request_id: 5,
        conversation: declined,
    };
    assert_eq!(
        user_request(&mut net, &bob1, f),
        Ok(UserChange::Declined(declined))
    );
    let f = ClientFrame::Block {
        request_id: 6,
        user: user_id(3),
    };
    assert_eq!(
        user_request(&mut net, &bob2, f),
        Ok(UserChange::Blocked(user_id(3)))
    );
    let (_, invitations, blocked) = sync_state(&mut net, &bob1);
    assert!(invitations.is_empty());
    assert_eq!(blocked, vec![user_id(3)]);
    let again = create_numbered(&mut eve, 5000, &[user_id(3), user_id(2)]);
    assert_eq!(code_of(&net.submit(&eve, &[again])[0]), ErrorCode::BLOCKED);
    let mut own = create(&mut eve, 7, &[3]);
    seq_of(&net.submit(&eve, std::slice::from_ref(&own))[0]);
    let add_bob = add(&mut eve, 7, 2, false);
    assert_eq!(
        code_of(&net.submit(&eve, &[add_bob])[0]),
        ErrorCode::BLOCKED
    );
    // Others may still invite Bob; a user cannot block itself.
    let f = ClientFrame::Block {
        request_id: 7,
        user: user_id(2),
    };
    assert_eq!(user_request(&mut net, &bob1, f), Err(ErrorCode::FORBIDDEN));
    own = create(&mut alice, 2, &[1, 2]);
    seq_of(&net.submit(&alice, &[own])[0]);

    // After a restart: the acceptance, the block and the pending invitation are still there.
    let mut net = restart(net);
    let bob = net.connect(2, 20);
    let mut eve = net.connect(3, 30);
    let (convs, invitations, blocked) = sync_state(&mut net, &bob);
    assert_eq!(
        convs.iter().map(|c| c.conversation).collect::<Vec<_>>(),
        vec![ConversationId([1; 16])]
    );
    assert_eq!(
        invitations
            .iter()
            .map(|i| i.conversation)
            .collect::<Vec<_>>(),
        vec![ConversationId([2; 16])]
    );
    assert_eq!(blocked, vec![user_id(3)]);
    let again = create_numbered(&mut eve, 6000, &[user_id(3), user_id(2)]);
    assert_eq!(code_of(&net.submit(&eve, &[again])[0]), ErrorCode::BLOCKED);
    // Unblocked, Eve may invite Bob again.
    let f = ClientFrame::Unblock {
        request_id: 8,
        user: user_id(3),
    };
    assert_eq!(
        user_request(&mut net, &bob, f),
        Ok(UserChange::Unblocked(user_id(3)))
    );
    let again = create_numbered(&mut eve, 6001, &[user_id(3), user_id(2)]);
    assert_eq!(submit_all(&mut net, &eve, &[again], &[]), 1);
}

/// An invitation whose inviter has since left the conversation no longer counts toward the
/// inviter's cap: it speaks for nobody in the conversation (issue 12, stale invitations).
#[test]
fn a_stale_invitation_does_not_count_toward_the_caps() {
    let mut net = Net::new(Limits::default().with_rate(1_000_000, 1_000_000));
    let mut alice = net.connect(1, 10);
    let _bob = net.connect(2, 20);
    let mut eve = net.connect(3, 30);
    // In each of Alice's conversations Eve is an admin and invites Bob.
    let n = u8::try_from(wire::MAX_INVITATIONS_PER_INVITER).expect("fits");
    for conv in 1..=n {
        let c = create(&mut alice, conv, &[1]);
        let a = add(&mut alice, conv, 3, true);
        assert_eq!(submit_all(&mut net, &alice, &[c, a], &[]), 2);
        let b = add(&mut eve, conv, 2, false);
        assert_eq!(submit_all(&mut net, &eve, &[b], &[]), 1);
    }
    let more = create_numbered(&mut eve, 9000, &[user_id(3), user_id(2)]);
    assert_eq!(
        code_of(&net.submit(&eve, &[more])[0]),
        ErrorCode::INVITATIONS_FULL
    );
    // Eve leaves one of them: that invitation no longer speaks for her, one slot is free.
    let leave = remove(&mut eve, 1, 3);
    assert_eq!(submit_all(&mut net, &eve, &[leave], &[]), 1);
    let more = create_numbered(&mut eve, 9001, &[user_id(3), user_id(2)]);
    assert_eq!(
        submit_all(&mut net, &eve, &[more], &[]),
        1,
        "a stale invitation still counts toward the inviter's cap"
    );
    let more = create_numbered(&mut eve, 9002, &[user_id(3), user_id(2)]);
    assert_eq!(
        code_of(&net.submit(&eve, &[more])[0]),
        ErrorCode::INVITATIONS_FULL
    );
}

/// Registers a certificate of device `dev_seed` (a key derived from it, any agreement key)
/// for user `user_seed` from `session`; the answer.
fn register_for(net: &mut Net, session: SessionId, user_seed: u8, dev: [u8; 32]) -> ServerFrame {
    let key = DeviceKey::from_seed(dev, user_id(user_seed));
    let reg = DeviceRegistration::sign(&user_key(user_seed), key.device(), dev, net.now);
    let got = net.frame(
        session,
        ClientFrame::RegisterDevice {
            request_id: 5,
            registration: reg,
        },
    );
    got.into_iter()
        .find(|f| {
            matches!(
                f,
                ServerFrame::Registered { .. } | ServerFrame::Refused { .. }
            )
        })
        .expect("an answer")
}

fn device_seed(user: u8, n: usize) -> [u8; 32] {
    let mut s = [user; 32];
    s[..8].copy_from_slice(&(n as u64 + 1_000).to_be_bytes());
    s
}

/// Issue #12, "Device-registration freeze": a user could register any number of devices,
/// until a `Devices` answer about them was over its limit and refused.
#[test]
fn devices_per_user_are_capped_revoked_ones_included() {
    let mut net = Net::new(Limits::default());
    let a = net.connect(1, 10);
    let cap = tidings_engine::directory::MAX_DEVICES_PER_USER;
    // Device 10 is one already.
    let mut refused = Vec::new();
    for n in 1..cap + 40 {
        if let ServerFrame::Refused { code, .. } =
            register_for(&mut net, a.session, 1, device_seed(1, n))
        {
            refused.push((n, code));
        }
    }
    assert_eq!(
        refused.first(),
        Some(&(cap, ErrorCode::TOO_MANY_DEVICES)),
        "{} devices registered for one user",
        cap + 40 - refused.len()
    );
    assert_eq!(refused.len(), 40);
    // Revoking one does not free its place: revoked ids are kept for good.
    let gone = DeviceKey::from_seed(device_seed(1, 1), user_id(1)).device();
    let rev = DeviceRevocation::sign(&user_key(1), gone, net.now);
    assert!(matches!(
        revoke(&mut net, a.session, rev),
        ServerFrame::Revoked { .. }
    ));
    assert!(matches!(
        register_for(&mut net, a.session, 1, device_seed(1, 9_999)),
        ServerFrame::Refused {
            code: ErrorCode::TOO_MANY_DEVICES,
            ..
        }
    ));
    // The cap survives a restart.
    let mut net = restart(net);
    let a = net.connect(1, 10);
    assert!(matches!(
        register_for(&mut net, a.session, 1, device_seed(1, 9_998)),
        ServerFrame::Refused {
            code: ErrorCode::TOO_MANY_DEVICES,
            ..
        }
    ));
}

/// Issue #12, "Device-registration freeze": one `Devices` answer held every statement asked
/// for, and was refused over 4,096 devices (or went over the frame length): an honest
/// 1,024-user ask could not be answered. Pages now stay within both limits, and the asker
/// goes on from where a page stopped.
#[test]
fn devices_answers_are_paged_within_the_frame_length() {
    let limits = Limits::default().with_max_frame_len(0);
    let max_frame_len = limits.clone().clamped().max_frame_len;
    let mut net = Net::new(limits);
    let mut a = net.connect(1, 10);
    let users: Vec<u8> = vec![2, 3, 4];
    let mut want = vec![a.key.device()];
    for &u in &users {
        let d = net.connect(u, u * 10);
        want.push(d.key.device());
        for n in 0..150 {
            let seed = device_seed(u, n);
            assert!(matches!(
                register_for(&mut net, d.session, u, seed),
                ServerFrame::Registered { .. }
            ));
            want.push(DeviceKey::from_seed(seed, user_id(u)).device());
        }
    }
    let created = create(&mut a, 1, &[1, 2, 3, 4]);
    seq_of(&net.submit(&a, &[created])[0]);
    let mut asked: Vec<UserId> = [1, 2, 3, 4].iter().map(|&u| user_id(u)).collect();
    let mut after = None;
    let mut got = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 100, "no end to the pages");
        let frames = net.frame(
            a.session,
            ClientFrame::Devices {
                request_id: 40,
                users: asked.clone(),
                after,
            },
        );
        let page = frames
            .into_iter()
            .find(|f| matches!(f, ServerFrame::Devices { .. } | ServerFrame::Refused { .. }))
            .expect("an answer");
        let len = wire::frame_bytes(&page).expect("encode").len();
        assert!(
            len <= max_frame_len,
            "a {len}-byte answer, frame limit {max_frame_len}"
        );
        let ServerFrame::Devices {
            registrations,
            complete,
            resume_after,
            ..
        } = page
        else {
            panic!("{page:?}");
        };
        got.extend(registrations.iter().map(|r| r.device));
        let complete = complete as usize;
        if complete >= asked.len() {
            break;
        }
        asked.drain(..complete);
        after = resume_after;
    }
    assert!(pages > 1);
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

/// Issue #12, "Re-certification takeover": a newer certificate of a registered device with
/// another X25519 key replaced the stored one ("newer wins"); whoever held the user key then
/// received that device's epoch keys.
#[test]
fn recertifying_a_device_with_another_agreement_key_is_refused() {
    let mut net = Net::new(Limits::default());
    let a = net.connect(1, 10);
    let takeover = DeviceRegistration::sign(&user_key(1), a.key.device(), [66; 32], net.now + 5);
    let got = net.frame(
        a.session,
        ClientFrame::RegisterDevice {
            request_id: 3,
            registration: takeover,
        },
    );
    assert!(
        matches!(
            got[..],
            [ServerFrame::Refused {
                code: ErrorCode::AGREEMENT_KEY_CHANGED,
                ..
            }]
        ),
        "{got:?}"
    );
    let stored = net.core.store().registrations().expect("read");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].agreement, [10; 32]);
    // A renewal with the same keys is stored.
    let renewal = DeviceRegistration::sign(&user_key(1), a.key.device(), [10; 32], net.now + 6);
    let got = net.frame(
        a.session,
        ClientFrame::RegisterDevice {
            request_id: 4,
            registration: renewal.clone(),
        },
    );
    assert!(
        matches!(got[..], [ServerFrame::Registered { .. }]),
        "{got:?}"
    );
    assert_eq!(
        net.core.store().registrations().expect("read"),
        vec![renewal]
    );
}

/// Issue #12, "Smaller ones": the conversation record held every user ever removed, and
/// every commit touching the conversation rewrote it whole.
#[test]
fn a_conversation_record_does_not_grow_with_its_former_members() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let created = create(&mut a, 1, &[1]);
    seq_of(&net.submit(&a, &[created])[0]);
    let record_len = |net: &Net| {
        let convs = net.core.store().conversations().expect("read");
        postcard::to_stdvec(&convs[0].1).expect("encode").len()
    };
    let before = record_len(&net);
    for u in 2..40u8 {
        let add = add(&mut a, 1, u, false);
        seq_of(&net.submit(&a, &[add])[0]);
        let gone = remove(&mut a, 1, u);
        seq_of(&net.submit(&a, &[gone])[0]);
    }
    let after = record_len(&net);
    assert!(
        after <= before + 16,
        "the record grew from {before} to {after} bytes with 38 former members"
    );
}

// ---- Relay resource limits (issue 12): address prefixes, rates, server stamps, answers ----

/// Connection limits count by address prefix: every address of an IPv6 /64 shares one limit
/// (an attacker holds 2^64 of them), an IPv4-mapped IPv6 address counts as its IPv4 address,
/// and the IPv4 prefix length is configurable.
#[test]
fn connections_are_limited_per_address_prefix() {
    let mut limits = Limits::default().with_connections_per_prefix(2);
    let mut net = Net::new(limits.clone());
    let connect = |net: &mut Net, ip: &str| {
        let ip: IpAddr = ip.parse().expect("ip");
        net.core.handle_connect(ip, [0; 32], [0; 32])
    };
    connect(&mut net, "2001:db8::1").expect("first of the /64");
    connect(&mut net, "2001:db8::2").expect("second of the /64");
    assert!(
        matches!(
            connect(&mut net, "2001:db8::ffff:3"),
            Err(ConnectError::TooManyFromAddress { .. })
        ),
        "a third address of the same /64 is refused"
    );
    connect(&mut net, "2001:db8:0:1::1").expect("another /64");
    connect(&mut net, "10.0.0.1").expect("v4");
    connect(&mut net, "10.0.0.1").expect("v4 again");
    assert!(
        connect(&mut net, "::ffff:10.0.0.1").is_err(),
        "an IPv4-mapped address counts as the IPv4 address"
    );
    connect(&mut net, "10.0.0.2").expect("IPv4 counts per /32 by default");

    limits.ipv4_prefix_len = 24;
    let mut net = Net::new(limits);
    connect(&mut net, "10.0.0.1").expect("first of the /24");
    connect(&mut net, "10.0.0.2").expect("second of the /24");
    assert!(connect(&mut net, "10.0.0.3").is_err(), "/24 configured");
    connect(&mut net, "10.0.1.1").expect("another /24");
}

/// The event rate belongs to the device and to its user, not to a connection: reconnecting
/// does not refill the device's bucket, and a user's devices share the user's bucket.
#[test]
fn rates_are_per_device_and_per_user_across_reconnects() {
    let mut net = Net::new(Limits::default().with_rate(10, 3).with_user_rate(10, 5));
    let mut a = net.connect(1, 10);
    let mut evs = vec![create(&mut a, 1, &[1])];
    for i in 0..3 {
        evs.push(send(&mut a, 1, &format!("m{i}")));
    }
    let out = net.submit(&a, &evs);
    assert_eq!(seq_of(&out[2]), 3);
    assert_eq!(code_of(&out[3]), ErrorCode::RATE_LIMITED);

    // Same instant, new connection: the device's budget is still spent.
    net.core.handle_disconnect(a.session);
    let a = Dev {
        session: net.connect(1, 10).session,
        ..a
    };
    let out = net.submit(&a, &evs[3..4]);
    assert_eq!(
        code_of(&out[0]),
        ErrorCode::RATE_LIMITED,
        "a reconnect must not refill the device's bucket"
    );

    // A second device of the same user: its own bucket is full, the user's has 2 left.
    let mut b = net.connect(1, 11);
    let evs: Vec<Event> = (0..3).map(|i| send(&mut b, 1, &format!("b{i}"))).collect();
    let out = net.submit(&b, &evs);
    assert_eq!(seq_of(&out[0]), 4);
    assert_eq!(seq_of(&out[1]), 5);
    assert_eq!(
        code_of(&out[2]),
        ErrorCode::RATE_LIMITED,
        "the user's devices share the user's bucket"
    );
    // Another user is not affected.
    let mut c = net.connect(2, 20);
    let ev = create(&mut c, 2, &[2]);
    let out = net.submit(&c, &[ev]);
    assert_eq!(seq_of(&out[0]), 1);
}

/// Rate buckets are bounded: past the limit, idle (refilled) buckets are dropped, and a
/// dropped bucket behaves like a full one.
#[test]
fn rate_buckets_stay_bounded() {
    let mut limits = Limits::default().with_rate(1_000, 1);
    limits.max_rate_buckets = 4;
    let mut net = Net::new(limits);
    for u in 1..=6u8 {
        let mut d = net.connect(u, 100 + u);
        let ev = create(&mut d, u, &[u]);
        let out = net.submit(&d, &[ev]);
        assert_eq!(seq_of(&out[0]), 1, "user {u}");
        net.now += 10;
    }
    assert!(net.core.n_rate_buckets() <= 4);
}

/// The server timestamp the statement of a submit answer gives `event`.
fn ts_of(net: &Net, event: &Event) -> u64 {
    let st = net.statement_of(event);
    let p = st.placements().into_iter().find(|p| p.event == event.id());
    p.expect("placed").server_ts_ms
}

/// A relay clock that jumped a year ahead and came back does not stamp a year ahead forever;
/// a small step back is absorbed (stamps do not decrease); sequences stay in order.
#[test]
fn a_forward_clock_jump_does_not_stick() {
    const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
    let t0 = 1_800_000_000_000;
    let mut net = Net::new(Limits::default());
    net.now = t0;
    let mut a = net.connect(1, 10);
    let ev = create(&mut a, 1, &[1]);
    net.submit(&a, std::slice::from_ref(&ev));
    assert_eq!(ts_of(&net, &ev), t0);

    net.now = t0 + YEAR_MS;
    let ev = send(&mut a, 1, "from the future");
    net.submit(&a, std::slice::from_ref(&ev));
    assert_eq!(ts_of(&net, &ev), t0 + YEAR_MS);

    net.now = t0 + 1_000;
    let ev = send(&mut a, 1, "back to now");
    let out = net.submit(&a, std::slice::from_ref(&ev));
    assert_eq!(seq_of(&out[0]), 3);
    assert_eq!(
        ts_of(&net, &ev),
        t0 + 1_000,
        "the stamp follows the clock once it is far behind the previous stamp"
    );

    // A small step back (under the lead limit) keeps stamps non-decreasing.
    net.now = t0 + 1_000 - 500;
    let ev = send(&mut a, 1, "small step back");
    let out = net.submit(&a, std::slice::from_ref(&ev));
    assert_eq!(seq_of(&out[0]), 4);
    assert_eq!(ts_of(&net, &ev), t0 + 1_000);
}

/// Every request gets exactly one answer naming it, refusals included: the shell's metering
/// (one in-flight permit per request, released by its answer) relies on it.
#[test]
fn every_request_gets_exactly_one_answer() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let create_ev = create(&mut a, 1, &[1]);
    let stranger = DeviceKey::from_seed([99; 32], user_id(9));
    let unregistered = net.handshake(&stranger);
    let requests = [
        ClientFrame::Submit {
            request_id: 41,
            events: vec![Envelope(create_ev.bytes().to_vec())],
        },
        ClientFrame::Submit {
            request_id: 42,
            events: vec![Envelope(vec![1, 2, 3])],
        },
        ClientFrame::Pull {
            request_id: 43,
            conversation: ConversationId([1; 16]),
            after_seq: 0,
            limit: 10,
        },
        ClientFrame::Pull {
            request_id: 44,
            conversation: ConversationId([77; 16]),
            after_seq: 0,
            limit: 10,
        },
        ClientFrame::Sync {
            request_id: 45,
            after: None,
        },
        ClientFrame::Devices {
            request_id: 46,
            users: vec![user_id(1)],
            after: None,
        },
        ClientFrame::Accept {
            request_id: 49,
            conversation: ConversationId([1; 16]),
        },
        ClientFrame::Block {
            request_id: 50,
            user: user_id(7),
        },
        ClientFrame::Revoke {
            request_id: 47,
            revocation: DeviceRevocation::sign(&user_key(2), stranger.device(), 1),
        },
        ClientFrame::RegisterDevice {
            request_id: 48,
            registration: DeviceRegistration::sign(&user_key(1), a.key.device(), [10; 32], 1),
        },
    ];
    for session in [a.session, unregistered] {
        for r in &requests {
            let id = r.request_id().expect("a request");
            let got = net.frame(session, r.clone());
            let answers: Vec<&ServerFrame> = got.iter().filter(|f| f.answers().is_some()).collect();
            assert!(
                matches!(answers[..], [f] if f.answers() == Some(id)),
                "{r:?} on session {session}: {got:?}"
            );
        }
    }
}

/// A device that queues many submits cannot hold another back: a commit takes at most
/// `max_commit_batch` events (plus the rest of one submit), one submit per session per round,
/// so a light device's submit is answered by the next commit however many the flooder queued
/// before it, and the flooder's backlog follows in later commits, in its own order.
#[test]
fn commits_take_sessions_round_robin_within_the_batch_cap() {
    let limits = Limits {
        max_commit_batch: 4,
        ..Limits::default()
    };
    let mut net = Net::new(limits);
    let mut a = net.connect(1, 10);
    let mut b = net.connect(2, 20);
    let c = create(&mut a, 1, &[1, 2]);
    assert_eq!(seq_of(&net.submit(&a, &[c])[0]), 1);
    accept(&mut net, &b, 1);
    let submit = |net: &mut Net, dev: &Dev, evs: &[Event], id: u64| {
        net.core.handle_frame(
            dev.session,
            ClientFrame::Submit {
                request_id: id,
                events: evs.iter().map(|e| Envelope(e.bytes().to_vec())).collect(),
            },
            net.now,
        );
    };
    // The flooder queues 4 submits of 4 events, then the light device one of 1 event.
    for id in 10..14 {
        let evs: Vec<Event> = (0..4)
            .map(|i| send(&mut a, 1, &format!("a{id}.{i}")))
            .collect();
        submit(&mut net, &a, &evs, id);
    }
    let light = send(&mut b, 1, "b");
    submit(&mut net, &b, std::slice::from_ref(&light), 20);
    let answered = |net: &mut Net| -> Vec<(SessionId, u64)> {
        net.pump();
        let mut out = Vec::new();
        for (s, frames) in std::mem::take(&mut net.inbox) {
            for f in frames {
                if let ServerFrame::SubmitResult {
                    request_id,
                    outcomes,
                    ..
                } = f
                {
                    assert!(outcomes
                        .iter()
                        .all(|o| matches!(o, SubmitOutcome::Accepted { .. })));
                    out.push((s, request_id));
                }
            }
        }
        out
    };
    let commits: Vec<Vec<(SessionId, u64)>> = (0..8).map(|_| answered(&mut net)).collect();
    assert_eq!(
        commits[0],
        vec![(a.session, 10)],
        "the first commit was full with the flooder's first submit"
    );
    assert!(
        commits[1].contains(&(b.session, 20)),
        "the light device waits behind the flooder's backlog: {commits:?}"
    );
    for c in &commits {
        assert!(
            c.len() <= 2,
            "a commit past its cap of 4 events: {commits:?}"
        );
    }
    let order: Vec<u64> = commits
        .iter()
        .flatten()
        .filter(|(s, _)| *s == a.session)
        .map(|(_, r)| *r)
        .collect();
    assert_eq!(
        order,
        vec![10, 11, 12, 13],
        "the flooder's submits, each once, in order"
    );
    assert!(!net.core.has_staged());
}
