//! The storage boundary's conformance suite: random operation sequences run against a plain
//! in-memory model, the redb store and the PostgreSQL store; every answer and every read must
//! agree. PostgreSQL is started by `support/pg.rs` (installed first if missing; never skipped).

mod support;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use support::pg::PgServer;
use tidings_engine::wire::{DeviceRegistration, DeviceRevocation, SignatureBytes};
use tidings_engine::{
    ConversationId, DeviceId, DeviceKey, Event, EventId, EventKind, Membership, MessageId,
    ServerSeq, UserId,
};
use tidings_relay::core::store::index_key;
use tidings_relay::storage::{
    ChainInfo, ChangeSeq, CommitBatch, ConversationRecord, Decision, InvitationRecord, PgStore,
    RelayStore, SequencedRecord, Storage, StoreError,
};

const N_CONVS: u8 = 3;
const N_AUTHORS: u8 = 3;
const N_DEVICES: u8 = 3;

fn conv(c: u8) -> ConversationId {
    ConversationId([c + 1; 16])
}

fn author(a: u8) -> DeviceKey {
    DeviceKey::from_seed([a + 1; 32], UserId([a + 1; 32]))
}

fn device(d: u8) -> DeviceId {
    DeviceId([d + 100; 32])
}

fn user(u: u8) -> UserId {
    UserId([u + 1; 32])
}

/// What a store answered to a commit, comparable across stores.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Ok,
    Conflict(ConversationId, ServerSeq, ServerSeq),
    Duplicate(ConversationId),
    Other(String),
}

fn answer(r: Result<(), StoreError>) -> Answer {
    match r {
        Ok(()) => Answer::Ok,
        Err(StoreError::Conflict {
            conversation,
            expected,
            found,
        }) => Answer::Conflict(conversation, expected, found),
        Err(StoreError::Duplicate { conversation }) => Answer::Duplicate(conversation),
        Err(e) => Answer::Other(e.to_string()),
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// New events of the given authors at the head of a conversation.
    Append {
        conv: u8,
        authors: Vec<u8>,
    },
    /// One new event sequenced `skew` places off the head (0: at the head itself).
    Stale {
        conv: u8,
        skew: bool,
    },
    /// A stored event appended again at the head of its conversation.
    Resubmit {
        pick: usize,
    },
    /// A different event at a stored event's (author, counter).
    Fork {
        pick: usize,
    },
    Cursor {
        device: u8,
        conv: u8,
        seq: u64,
    },
    Register {
        device: u8,
        issued: u64,
    },
    Revoke {
        device: u8,
        issued: u64,
    },
    Invite {
        user: u8,
        conv: u8,
        decision: u8,
        inviter: u8,
    },
    Block {
        user: u8,
        other: u8,
        on: bool,
    },
    Former {
        conv: u8,
        user: u8,
    },
    Page {
        conv: u8,
        after: u64,
        limit: usize,
        max_bytes: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..N_CONVS, prop::collection::vec(0..N_AUTHORS, 1..5))
            .prop_map(|(conv, authors)| Op::Append { conv, authors }),
        1 => (0..N_CONVS, any::<bool>()).prop_map(|(conv, skew)| Op::Stale { conv, skew }),
        1 => any::<usize>().prop_map(|pick| Op::Resubmit { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Fork { pick }),
        3 => (0..N_DEVICES, 0..N_CONVS, 0u64..12)
            .prop_map(|(device, conv, seq)| Op::Cursor { device, conv, seq }),
        1 => (0..N_DEVICES, 0u64..4).prop_map(|(device, issued)| Op::Register { device, issued }),
        1 => (0..N_DEVICES, 0u64..4).prop_map(|(device, issued)| Op::Revoke { device, issued }),
        1 => (0..3u8, 0..N_CONVS, 0..3u8, 0..3u8).prop_map(|(user, conv, decision, inviter)| {
            Op::Invite { user, conv, decision, inviter }
        }),
        1 => (0..3u8, 0..3u8, any::<bool>()).prop_map(|(user, other, on)| Op::Block { user, other, on }),
        1 => (0..N_CONVS, 0..3u8).prop_map(|(conv, user)| Op::Former { conv, user }),
        2 => (0..N_CONVS, 0u64..12, 1usize..6, 1usize..1200).prop_map(|(conv, after, limit, max_bytes)| {
            Op::Page { conv, after, limit, max_bytes }
        }),
    ]
}

/// The model: what the contract says a store holds.
#[derive(Default)]
struct Model {
    convs: BTreeMap<ConversationId, ConversationRecord>,
    /// (conversation, seq) → event.
    events: BTreeMap<(ConversationId, ServerSeq), Event>,
    statements: BTreeMap<(ConversationId, ServerSeq), Vec<u8>>,
    cursors: BTreeMap<(DeviceId, ConversationId), u64>,
    former: BTreeSet<(ConversationId, UserId)>,
    devices: BTreeMap<DeviceId, DeviceRegistration>,
    revocations: BTreeMap<DeviceId, DeviceRevocation>,
    invitations: BTreeMap<(UserId, ConversationId), InvitationRecord>,
    blocked: BTreeSet<(UserId, UserId)>,
    /// Per (conversation, author): the next counter and the last event (for `prev`).
    chains: BTreeMap<(ConversationId, u8), (u64, Option<EventId>)>,
    /// Every event made so far (stored or not), for chain reads.
    made: Vec<Event>,
    n_made: u64,
}

fn record(max_seq: ServerSeq) -> ConversationRecord {
    ConversationRecord {
        membership: Membership::create(user(0), &[user(0)]).expect("membership"),
        max_seq,
        last_ack: EventId([max_seq as u8; 32]),
        last_ts_ms: max_seq * 10,
    }
}

/// One commit to apply everywhere: owned parts a [`CommitBatch`] borrows.
#[derive(Default)]
struct Commit {
    events: Vec<(ConversationId, ServerSeq, Event)>,
    statements: Vec<(ConversationId, ServerSeq, Vec<u8>)>,
    conversations: Vec<(ConversationId, ConversationRecord)>,
    former: Vec<(ConversationId, UserId)>,
    devices: Vec<DeviceRegistration>,
    revocations: Vec<DeviceRevocation>,
    cursors: Vec<(DeviceId, ConversationId, ServerSeq)>,
    invitations: Vec<InvitationRecord>,
    blocks: Vec<(UserId, UserId, bool)>,
}

impl Commit {
    fn batch(&self) -> CommitBatch<'_> {
        CommitBatch {
            events: self
                .events
                .iter()
                .map(|(c, s, e)| SequencedRecord {
                    conversation: *c,
                    seq: *s,
                    index_key: index_key(e),
                    prev: e.header().prev,
                    event: e.bytes(),
                    ack: &[],
                })
                .collect(),
            statements: self
                .statements
                .iter()
                .map(|(c, s, b)| (*c, *s, b.as_slice()))
                .collect(),
            conversations: self.conversations.iter().map(|(c, r)| (*c, r)).collect(),
            membership_changed: self.conversations.iter().map(|(c, _)| *c).collect(),
            former: self.former.clone(),
            devices: self.devices.iter().collect(),
            revocations: self.revocations.iter().collect(),
            cursors: self.cursors.clone(),
            invitations: self.invitations.clone(),
            blocks: self.blocks.clone(),
        }
    }
}

impl Model {
    fn head(&self, c: ConversationId) -> ServerSeq {
        self.convs.get(&c).map_or(0, |r| r.max_seq)
    }

    fn new_event(&mut self, c: u8, a: u8, body: &[u8]) -> Event {
        let key = author(a);
        let (counter, prev) = self.chains.get(&(conv(c), a)).copied().unwrap_or((1, None));
        self.n_made += 1;
        let h = key.header(conv(c), counter, prev, counter, 1);
        let kind = h.bind(EventKind::Send {
            message: MessageId::default(),
            body: body.to_vec(),
            media: vec![],
        });
        let ev = Event::sign(key.signing_key(), h, kind).expect("sign");
        self.made.push(ev.clone());
        ev
    }

    /// Events appended at `first`, with their statement and the new record.
    fn append(&self, c: ConversationId, first: ServerSeq, events: Vec<Event>) -> Commit {
        let n = events.len() as u64;
        let mut commit = Commit::default();
        for (i, e) in events.into_iter().enumerate() {
            commit.events.push((c, first + i as u64, e));
        }
        commit
            .statements
            .push((c, first, format!("statement {c} {first}").into_bytes()));
        commit.conversations.push((c, record(first + n - 1)));
        commit
    }

    /// The commit an op makes (None for a read-only op) and the answer the contract gives.
    fn commit_of(&mut self, op: &Op) -> Option<(Commit, Answer)> {
        let commit = match op {
            Op::Append { conv: ci, authors } => {
                let c = conv(*ci);
                let mut events = Vec::new();
                for a in authors {
                    let body = format!("m{}", self.n_made).into_bytes();
                    let ev = self.new_event(*ci, *a, &body);
                    let (counter, _) = self.chains.get(&(c, *a)).copied().unwrap_or((1, None));
                    self.chains.insert((c, *a), (counter + 1, Some(ev.id())));
                    events.push(ev);
                }
                (self.append(c, self.head(c) + 1, events), Answer::Ok)
            }
            Op::Stale { conv: ci, skew } => {
                let c = conv(*ci);
                let head = self.head(c);
                let first = if *skew { head + 2 } else { head.max(1) };
                if !*skew && head == 0 {
                    return None;
                }
                let body = format!("stale{}", self.n_made).into_bytes();
                let ev = self.new_event(*ci, 0, &body);
                let expected = first - 1;
                (
                    self.append(c, first, vec![ev]),
                    Answer::Conflict(c, expected, head),
                )
            }
            Op::Resubmit { pick } => {
                if self.events.is_empty() {
                    return None;
                }
                let (&(c, _), ev) = self.events.iter().nth(pick % self.events.len())?;
                let ev = ev.clone();
                (
                    self.append(c, self.head(c) + 1, vec![ev]),
                    Answer::Duplicate(c),
                )
            }
            Op::Fork { pick } => {
                if self.events.is_empty() {
                    return None;
                }
                let (&(c, _), ev) = self.events.iter().nth(pick % self.events.len())?;
                let h = ev.header().clone();
                let a = (0..N_AUTHORS).find(|a| author(*a).device() == h.author)?;
                self.n_made += 1;
                let key = author(a);
                let fh = key.header(c, h.counter, h.prev, h.lamport, 2);
                let kind = fh.bind(EventKind::Send {
                    message: MessageId::default(),
                    body: format!("fork{}", self.n_made).into_bytes(),
                    media: vec![],
                });
                let fork = Event::sign(key.signing_key(), fh, kind).expect("sign");
                self.made.push(fork.clone());
                (self.append(c, self.head(c) + 1, vec![fork]), Answer::Ok)
            }
            Op::Cursor {
                device: d,
                conv: c,
                seq,
            } => (
                Commit {
                    cursors: vec![(device(*d), conv(*c), *seq)],
                    ..Commit::default()
                },
                Answer::Ok,
            ),
            Op::Register { device: d, issued } => (
                Commit {
                    devices: vec![DeviceRegistration {
                        user: user(*d),
                        device: device(*d),
                        agreement: [*issued as u8; 32],
                        issued_ms: *issued,
                        signature: SignatureBytes([0; 64]),
                    }],
                    ..Commit::default()
                },
                Answer::Ok,
            ),
            Op::Revoke { device: d, issued } => (
                Commit {
                    revocations: vec![DeviceRevocation {
                        user: user(*d),
                        device: device(*d),
                        issued_ms: *issued,
                        signature: SignatureBytes([1; 64]),
                    }],
                    ..Commit::default()
                },
                Answer::Ok,
            ),
            Op::Invite {
                user: u,
                conv: c,
                decision,
                inviter,
            } => (
                Commit {
                    invitations: vec![InvitationRecord {
                        user: user(*u),
                        conversation: conv(*c),
                        decision: match decision {
                            0 => Decision::Pending,
                            1 => Decision::Accepted,
                            _ => Decision::Declined,
                        },
                        inviter: user(*inviter),
                    }],
                    ..Commit::default()
                },
                Answer::Ok,
            ),
            Op::Block { user: u, other, on } => (
                Commit {
                    blocks: vec![(user(*u), user(*other), *on)],
                    ..Commit::default()
                },
                Answer::Ok,
            ),
            Op::Former { conv: c, user: u } => (
                Commit {
                    former: vec![(conv(*c), user(*u))],
                    ..Commit::default()
                },
                Answer::Ok,
            ),
            Op::Page { .. } => return None,
        };
        Some(commit)
    }

    fn apply(&mut self, commit: &Commit) {
        for (c, s, e) in &commit.events {
            self.events.insert((*c, *s), e.clone());
        }
        for (c, s, b) in &commit.statements {
            self.statements.insert((*c, *s), b.clone());
        }
        for (c, r) in &commit.conversations {
            self.convs.insert(*c, r.clone());
        }
        self.former.extend(commit.former.iter().copied());
        for d in &commit.devices {
            self.devices.insert(d.device, d.clone());
        }
        for r in &commit.revocations {
            self.revocations.insert(r.device, r.clone());
        }
        for (d, c, s) in &commit.cursors {
            let slot = self.cursors.entry((*d, *c)).or_insert(*s);
            *slot = (*slot).max(*s);
        }
        for i in &commit.invitations {
            self.invitations.insert((i.user, i.conversation), *i);
        }
        for (u, o, on) in &commit.blocks {
            if *on {
                self.blocked.insert((*u, *o));
            } else {
                self.blocked.remove(&(*u, *o));
            }
        }
    }

    fn placing(&self, c: ConversationId, seq: ServerSeq) -> ((ConversationId, ServerSeq), Vec<u8>) {
        let (k, v) = self
            .statements
            .range((c, 0)..=(c, seq))
            .next_back()
            .expect("a statement places every event");
        (*k, v.clone())
    }

    fn chain(&self, events: &[Event]) -> Vec<ChainInfo> {
        events
            .iter()
            .map(|ev| {
                let h = ev.header();
                let mut info = ChainInfo::default();
                let at = |counter: u64| {
                    let mut v: Vec<(EventId, ServerSeq, Option<EventId>)> = self
                        .events
                        .iter()
                        .filter(|((c, _), e)| {
                            *c == h.conversation
                                && e.header().author == h.author
                                && e.header().counter == counter
                        })
                        .map(|((_, s), e)| (e.id(), *s, e.header().prev))
                        .collect();
                    v.sort();
                    v
                };
                for (id, seq, _) in at(h.counter) {
                    if id == ev.id() {
                        let (_, st) = self.placing(h.conversation, seq);
                        info.stored = Some((h.conversation, seq, st));
                    } else {
                        info.fork.get_or_insert(id);
                    }
                }
                if let Some(before) = h.counter.checked_sub(1) {
                    info.pred = at(before).first().map(|x| x.0);
                }
                if let Some(after) = h.counter.checked_add(1) {
                    info.succ_prev = at(after).first().map(|x| x.2);
                }
                info
            })
            .collect()
    }

    fn page(
        &self,
        c: ConversationId,
        after: ServerSeq,
        limit: usize,
        max_bytes: usize,
    ) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, bool) {
        let (mut out, mut records) = (Vec::new(), Vec::new());
        let mut last = None;
        let mut bytes = 0;
        for ((_, seq), e) in self
            .events
            .range((c, after.saturating_add(1))..=(c, u64::MAX))
        {
            let (k, st) = self.placing(c, *seq);
            let record = (last != Some(k)).then_some((k, st));
            let size = e.bytes().len() + record.as_ref().map_or(0, |(_, r)| r.len()) + 16;
            if out.len() >= limit || (!out.is_empty() && bytes + size > max_bytes) {
                return (out, records, true);
            }
            bytes += size;
            out.push(e.bytes().to_vec());
            if let Some((k, r)) = record {
                last = Some(k);
                records.push(r);
            }
        }
        (out, records, false)
    }
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// Every read of `store` agrees with the model.
fn check_reads(name: &str, model: &Model, store: &impl Storage) {
    let mut convs = store.conversations().expect("conversations");
    convs.sort_by_key(|(c, _)| *c);
    let want: Vec<_> = model.convs.iter().map(|(c, r)| (*c, r.clone())).collect();
    assert_eq!(convs, want, "{name}: conversations");
    for c in 0..N_CONVS {
        assert_eq!(
            store.conversation(&conv(c)).expect("conversation"),
            model.convs.get(&conv(c)).cloned(),
            "{name}: conversation {c}"
        );
        let (e, r, more) = store.page(&conv(c), 0, 1000, 1 << 20).expect("page");
        let got = (
            e.into_iter().map(|x| x.0).collect::<Vec<_>>(),
            r.into_iter().map(|x| x.0).collect::<Vec<_>>(),
            more,
        );
        assert_eq!(
            got,
            model.page(conv(c), 0, 1000, 1 << 20),
            "{name}: page {c}"
        );
    }
    for d in 0..N_DEVICES {
        let got: BTreeMap<_, _> = store
            .cursors(&device(d))
            .expect("cursors")
            .into_iter()
            .collect();
        let want: BTreeMap<_, _> = model
            .cursors
            .iter()
            .filter(|((dd, _), _)| *dd == device(d))
            .map(|((_, c), s)| (*c, *s))
            .collect();
        assert_eq!(got, want, "{name}: cursors of {d}");
    }
    let regs = sorted(
        store
            .registrations()
            .expect("registrations")
            .into_iter()
            .map(|r| (r.device, r.issued_ms, r.agreement))
            .collect(),
    );
    let want: Vec<_> = model
        .devices
        .values()
        .map(|r| (r.device, r.issued_ms, r.agreement))
        .collect();
    assert_eq!(regs, want, "{name}: registrations");
    let revs = sorted(
        store
            .revocations()
            .expect("revocations")
            .into_iter()
            .map(|r| (r.device, r.issued_ms))
            .collect(),
    );
    let want: Vec<_> = model
        .revocations
        .values()
        .map(|r| (r.device, r.issued_ms))
        .collect();
    assert_eq!(revs, want, "{name}: revocations");
    let inv = sorted(
        store
            .invitations()
            .expect("invitations")
            .into_iter()
            .map(|i| {
                (
                    i.user,
                    i.conversation,
                    format!("{:?}", i.decision),
                    i.inviter,
                )
            })
            .collect(),
    );
    let want: Vec<_> = model
        .invitations
        .values()
        .map(|i| {
            (
                i.user,
                i.conversation,
                format!("{:?}", i.decision),
                i.inviter,
            )
        })
        .collect();
    assert_eq!(inv, want, "{name}: invitations");
    assert_eq!(
        sorted(store.blocked().expect("blocked")),
        model.blocked.iter().copied().collect::<Vec<_>>(),
        "{name}: blocked"
    );
    assert_eq!(
        sorted(store.former_members().expect("former")),
        model.former.iter().copied().collect::<Vec<_>>(),
        "{name}: former members"
    );
    assert_eq!(
        store.n_events().expect("n_events"),
        model.events.len() as u64,
        "{name}: n_events"
    );
    let made: Vec<&Event> = model.made.iter().collect();
    assert_eq!(
        store.chain(&made).expect("chain"),
        model.chain(&model.made),
        "{name}: chain"
    );
}

struct Stores {
    redb: RelayStore,
    pg: Option<PgStore>,
}

/// Runs `ops` on the model and on every store, comparing answers and reads after each.
fn check_ops(ops: &[Op], stores: &Stores) {
    let mut model = Model::default();
    for op in ops {
        if let Op::Page {
            conv: c,
            after,
            limit,
            max_bytes,
        } = op
        {
            let want = model.page(conv(*c), *after, *limit, *max_bytes);
            let page = |s: &dyn Fn() -> Result<tidings_relay::storage::Page, StoreError>| {
                let (e, r, more) = s().expect("page");
                (
                    e.into_iter().map(|x| x.0).collect::<Vec<_>>(),
                    r.into_iter().map(|x| x.0).collect::<Vec<_>>(),
                    more,
                )
            };
            assert_eq!(
                page(&|| stores.redb.page(&conv(*c), *after, *limit, *max_bytes)),
                want,
                "redb: {op:?}"
            );
            if let Some(pg) = &stores.pg {
                assert_eq!(
                    page(&|| Storage::page(pg, &conv(*c), *after, *limit, *max_bytes)),
                    want,
                    "postgres: {op:?}"
                );
            }
            continue;
        }
        let Some((commit, expected)) = model.commit_of(op) else {
            continue;
        };
        let batch = commit.batch();
        assert_eq!(
            answer(Storage::commit(&stores.redb, &batch)),
            expected,
            "redb: {op:?}"
        );
        if let Some(pg) = &stores.pg {
            assert_eq!(answer(pg.commit(&batch)), expected, "postgres: {op:?}");
        }
        if expected == Answer::Ok {
            model.apply(&commit);
        }
        check_reads("redb", &model, &stores.redb);
        if let Some(pg) = &stores.pg {
            check_reads("postgres", &model, pg);
        }
    }
}

static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// The conformance proptest, redb and PostgreSQL side by side.
#[test]
fn redb_and_postgres_agree_with_the_model() {
    // Conformance, not durability: fsync off keeps the suite quick.
    let server = PgServer::start(true, &["fsync=off", "synchronous_commit=off"]).expect("postgres");
    let mut runner = TestRunner::new(Config {
        cases: 40,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..30), |ops| {
        let n = DATABASES.fetch_add(1, Ordering::Relaxed);
        let url = server
            .create_database(&format!("conformance_{n}"))
            .expect("database");
        let stores = Stores {
            redb: RelayStore::in_memory().expect("redb"),
            pg: Some(PgStore::connect(&url).expect("connect")),
        };
        check_ops(&ops, &stores);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A device's cursor is a monotonic maximum: a lower one written later does not move it
/// back (a device reporting an old position, or two nodes' commits in either order).
fn cursor_only_grows(store: &impl Storage) {
    let (d, c) = (device(0), conv(0));
    for seq in [5, 3] {
        let batch = CommitBatch {
            cursors: vec![(d, c, seq)],
            ..CommitBatch::default()
        };
        store.commit(&batch).expect("commit");
    }
    assert_eq!(store.cursors(&d).expect("cursors").get(&c), Some(&5));
}

#[test]
fn redb_cursor_only_grows() {
    cursor_only_grows(&RelayStore::in_memory().expect("redb"));
}

#[test]
fn postgres_cursor_only_grows() {
    let server = PgServer::start(true, &[]).expect("postgres");
    let url = server.create_database("cursor").expect("database");
    cursor_only_grows(&PgStore::connect(&url).expect("connect"));
}

/// Two stores over one database, each with a stale view: the second commit at the same place
/// is a typed conflict, nothing of it written; sequences stay dense.
#[test]
fn postgres_two_writers_conflict_instead_of_forking() {
    let server = PgServer::start(true, &[]).expect("postgres");
    let url = server.create_database("two_writers").expect("database");
    let (a, b) = (
        PgStore::connect(&url).expect("a"),
        PgStore::connect(&url).expect("b"),
    );
    let mut model = Model::default();
    let c = conv(0);
    let e1 = model.new_event(0, 0, b"from a");
    let e2 = model.new_event(0, 1, b"from b");
    let first = model.append(c, 1, vec![e1]);
    let second = model.append(c, 1, vec![e2]);
    assert_eq!(answer(a.commit(&first.batch())), Answer::Ok);
    assert_eq!(answer(b.commit(&second.batch())), Answer::Conflict(c, 0, 1));
    model.apply(&first);
    check_reads("postgres", &model, &b);
}

/// The change feed: what one writer commits to the directory, consent and membership, a
/// second writer over the same database reads after its position, once; an unblock is
/// reported as such; appends that change no membership are not in it.
#[test]
fn postgres_change_feed_reports_another_writers_changes() {
    let server = PgServer::start(true, &[]).expect("postgres");
    let url = server.create_database("feed").expect("database");
    let (a, b) = (
        PgStore::connect(&url).expect("a"),
        PgStore::connect(&url).expect("b"),
    );
    let start = b.changes(ChangeSeq::default()).expect("feed");
    assert!(start.is_empty());
    let mut model = Model::default();
    let c = conv(0);
    let create = model.new_event(0, 0, b"first");
    let mut first = model.append(c, 1, vec![create]);
    first.devices.push(DeviceRegistration {
        user: user(1),
        device: device(1),
        agreement: [1; 32],
        issued_ms: 1,
        signature: SignatureBytes([0; 64]),
    });
    first.blocks.push((user(1), user(2), true));
    assert_eq!(answer(a.commit(&first.batch())), Answer::Ok);
    let seen = b.changes(start.upto).expect("feed");
    assert!(seen.upto > start.upto);
    assert_eq!(seen.registrations, first.devices);
    assert_eq!(seen.blocks, vec![(user(1), user(2), true)]);
    assert_eq!(seen.conversations.len(), 1);
    assert_eq!(seen.conversations[0].0, c);
    assert!(b.changes(seen.upto).expect("feed").is_empty(), "read once");

    // An append that changes no membership is not in the feed; an unblock is.
    model.apply(&first);
    let more = model.new_event(0, 1, b"second");
    let mut second = model.append(c, 2, vec![more]);
    second.conversations.clear();
    assert_eq!(answer(a.commit(&second.batch())), Answer::Ok);
    assert!(b.changes(seen.upto).expect("feed").is_empty());
    let unblock = Commit {
        blocks: vec![(user(1), user(2), false)],
        ..Commit::default()
    };
    assert_eq!(answer(a.commit(&unblock.batch())), Answer::Ok);
    let later = b.changes(seen.upto).expect("feed");
    assert_eq!(later.blocks, vec![(user(1), user(2), false)]);
    assert!(b.blocked().expect("blocked").is_empty());
}

/// A column of an unexpected type (a database changed behind the relay's back) is a typed
/// error for the read that meets it; the store goes on answering other reads.
#[test]
fn postgres_unexpected_column_type_is_an_error_not_a_panic() {
    let server = PgServer::start(true, &[]).expect("postgres");
    let url = server.create_database("column_type").expect("database");
    let store = PgStore::connect(&url).expect("connect");
    let (d, c) = (device(0), conv(0));
    let cursor = Commit {
        cursors: vec![(d, c, 3)],
        ..Commit::default()
    };
    assert_eq!(answer(store.commit(&cursor.batch())), Answer::Ok);
    let admin = url.clone();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).expect("admin");
        client
            .batch_execute("ALTER TABLE cursors ALTER COLUMN seq TYPE int4")
            .expect("alter");
    })
    .join()
    .expect("admin thread");
    assert!(matches!(store.cursors(&d), Err(StoreError::Postgres(_))));
    assert_eq!(store.n_events().expect("still answers"), 0);
}
