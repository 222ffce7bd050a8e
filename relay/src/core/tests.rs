//! Unit tests of the core, driven frame by frame with virtual time.

use super::*;
use ed25519_dalek::SigningKey;
use tidings_engine::wire::{self, ClientFrame, ConversationInfo, SubmitOutcome, UserChange};
use tidings_engine::wire::{SignatureBytes, PROTOCOL_VERSION};
use tidings_engine::MessageId;
use tidings_engine::{EventId, EventKind, ServerSeq};

mod limits;
mod members;
mod race;
mod retention;
mod sequencing;
mod users;

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
            history_since_ms: None,
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
            history_since_ms: None,
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

/// Device `a` (user 1) in conversation 1, whose `Create` is sequenced at 1, and a message of
/// it (`text`) submitted as request 1 and taken into a commit job that is started, not yet
/// written: (the net, the device, the message, the job).
fn one_send_in_a_started_job(text: &str) -> (Net, Dev, Event, CommitJob) {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let c = create(&mut a, 1, &[1]);
    assert_eq!(seq_of(&net.submit(&a, &[c])[0]), 1);
    let m = send(&mut a, 1, text);
    submit_nowait(&mut net, &a, std::slice::from_ref(&m), 1);
    let job = net.core.start_commit().expect("sign").expect("a job");
    (net, a, m, job)
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
            history_since_ms: None,
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

/// The server timestamp the statement of a submit answer gives `event`.
fn ts_of(net: &Net, event: &Event) -> u64 {
    let st = net.statement_of(event);
    let p = st.placements().into_iter().find(|p| p.event == event.id());
    p.expect("placed").server_ts_ms
}
