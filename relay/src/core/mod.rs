//! The relay's protocol logic, sans-IO: sessions and authentication, membership checks, the
//! per-conversation sequencer with group commit, device cursors, fan-out decisions and limits.
//!
//! [`RelayCore`] owns a [`RelayStore`] and calls it synchronously; it has no sockets, no
//! clock and no randomness: `now_ms` (Unix milliseconds) and nonces come in as arguments, so
//! a simulator can drive it on virtual time over a fake network.
//!
//! # Call order
//! 1. A connection arrives: [`RelayCore::handle_connect`] with the peer address, the TLS
//!    binding exported from the session and a fresh nonce → a [`SessionId`]; the core counts
//!    it against the connection limits. A shell that admits connections itself, before TLS
//!    (the server, with [`crate::admission::Admission`]), calls [`RelayCore::handle_admitted`]
//!    instead, and the core does not count it again.
//! 2. Each frame read from it: [`RelayCore::handle_frame`] (or, for Submit frames whose
//!    signatures the caller verified elsewhere, [`RelayCore::handle_submit_verified`]).
//! 3. When no input is waiting, or [`RelayCore::wants_commit`] says so: [`RelayCore::commit`],
//!    one durable transaction for everything staged since the last one. Acks, registrations
//!    and pushes are produced only after it.
//! 4. After every call: drain [`RelayCore::poll_output`] and deliver each frame to its
//!    session (or close it).
//! 5. The connection ends: [`RelayCore::handle_disconnect`].
//!
//! ```
//! use tidings_relay::core::{RelayCore, RelayStore, Output};
//! use tidings_relay::Limits;
//! use tidings_engine::{DeviceKey, UserId};
//! use tidings_engine::wire::{ClientFrame, ServerFrame, PROTOCOL_VERSION};
//!
//! let relay_key = DeviceKey::from_seed([1; 32], UserId([0; 32]));
//! let mut core = RelayCore::new(RelayStore::in_memory()?, relay_key, Limits::default())?;
//! let session = core.handle_connect("127.0.0.1".parse()?, [7; 32], [9; 32])?;
//! let device = DeviceKey::from_seed([2; 32], UserId([3; 32]));
//! core.handle_frame(session, ClientFrame::Hello {
//!     protocol_version: PROTOCOL_VERSION, device: device.device(), user: device.user(),
//! }, 0);
//! match core.poll_output() {
//!     Some(Output::Frame { frame: ServerFrame::Challenge { nonce }, .. }) => assert_eq!(nonce, [9; 32]),
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod consent;
mod rates;
mod sequencing;
mod session;
pub mod store;

pub use store::{ChainInfo, ConversationRecord, RelayStore, StoreError};

use crate::admission::Admission;
use crate::limits::Limits;
use crate::metrics::RelayMetrics;
use consent::Consent;
use rates::RateBuckets;
use sequencing::{Outgoing, Resolved, Statement, ToPlace};
use session::{Phase, Session};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::ops::Bound;
use store::{CommitBatch, Decision, InvitationRecord, SequencedRecord};
use tidings_engine::directory::{self, CertificateCheck, DirectoryRefusal, RevocationCheck};
use tidings_engine::event::DecodeError;
use tidings_engine::wire::{
    self, ClientFrame, ConversationInfo, DeviceRegistration, DeviceRevocation, Envelope, ErrorCode,
    ServerFrame, SubmitOutcome, UserChange, Welcome, NONCE_LEN, TLS_BINDING_LEN,
};
use tidings_engine::{
    ConversationId, DeviceId, DeviceKey, Event, EventId, EventKind, Membership, MembershipError,
    ServerSeq, UserId,
};

/// One place in a device's chain: (conversation, author, counter).
type ChainSlot = (ConversationId, DeviceId, u64);

/// A connection's handle in the core.
pub type SessionId = u64;

/// Something the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this frame on the session's stream.
    Frame {
        /// The session.
        session: SessionId,
        /// The frame.
        frame: ServerFrame,
    },
    /// Send `ServerFrame::Error { code, message }`, then close the connection. The core has
    /// already forgotten the session.
    Close {
        /// The session.
        session: SessionId,
        /// Why.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
}

/// Why a connection was refused before any frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The relay holds its maximum number of connections.
    #[error("too many connections ({max})")]
    TooManyConnections {
        /// The limit.
        max: usize,
    },
    /// The relay holds its maximum number of connections that have not authenticated.
    #[error("too many connections awaiting authentication ({max})")]
    TooManyPending {
        /// The limit.
        max: usize,
    },
    /// The address prefix holds its maximum number of connections.
    #[error("too many connections from {addr} ({max})")]
    TooManyFromAddress {
        /// The address prefix (the peer's address cut to the configured prefix length).
        addr: IpAddr,
        /// The limit.
        max: usize,
    },
}

/// A point-in-time view of the core, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Authenticated sessions.
    pub connected_devices: usize,
    /// All sessions, authenticated or not.
    pub sessions: usize,
    /// Events staged for the next commit.
    pub staged_events: usize,
    /// Pushed events not yet acknowledged, over all sessions.
    pub fanout_queue_depth: usize,
    /// Per connected device (lowercase hex id): events of its conversations above its cursors.
    pub device_backlog: Vec<(DeviceId, u64)>,
    /// Conversations known.
    pub conversations: usize,
}

/// The relay's sans-IO core. See the module documentation for the call order.
#[derive(Debug)]
pub struct RelayCore {
    store: RelayStore,
    key: DeviceKey,
    limits: Limits,
    metrics: RelayMetrics,
    next_session: SessionId,
    sessions: BTreeMap<SessionId, Session>,
    /// Sessions opened by [`RelayCore::handle_connect`] (those of
    /// [`RelayCore::handle_admitted`] are counted by the shell).
    admission: Admission,
    /// Event budgets of devices and users, kept across connections.
    rates: RateBuckets,
    device_sessions: HashMap<DeviceId, SessionId>,
    devices: HashMap<DeviceId, UserId>,
    /// Durable device certificates, served by `Devices`.
    certs: HashMap<DeviceId, DeviceRegistration>,
    /// Revocations, durable or staged (they take effect when accepted).
    revoked: HashMap<DeviceId, DeviceRevocation>,
    user_devices: HashMap<UserId, Vec<DeviceId>>,
    /// Conversations each user is a member of now (committed).
    user_convs: HashMap<UserId, BTreeSet<ConversationId>>,
    /// Conversations each user was removed from (committed; a re-added user is in both).
    user_former: HashMap<UserId, BTreeSet<ConversationId>>,
    convs: HashMap<ConversationId, Conv>,
    /// Each user's invitations, decisions and blocks (durable, plus staged invitations).
    consent: Consent,
    staged: Staged,
    outputs: VecDeque<Output>,
    sign_threads: usize,
    inflight: Option<Inflight>,
    inflight_waiters: Vec<PendingSubmit>,
}

#[derive(Debug)]
struct Conv {
    /// As durably stored; `None` while the Create event is only staged.
    committed: Option<ConversationRecord>,
    /// Including staged events.
    head: ConversationRecord,
}

#[derive(Debug, Default)]
struct Staged {
    events: Vec<StagedEvent>,
    by_id: HashMap<EventId, usize>,
    submits: Vec<PendingSubmit>,
    registrations: Vec<PendingRegistration>,
    revocations: Vec<PendingRevocation>,
    /// Invitation rows of the staged Creates and AddMembers (already in `consent`).
    invitations: Vec<InvitationRecord>,
    /// Accept, Decline, Block and Unblock requests (applied to `consent` once durable).
    user_requests: Vec<PendingUserRequest>,
    cursors: BTreeMap<(DeviceId, ConversationId), ServerSeq>,
    touched: BTreeSet<ConversationId>,
    /// Conversations created or whose membership changed in this batch.
    membership_changed: BTreeSet<ConversationId>,
    /// Users removed from a conversation in this batch.
    former: Vec<(ConversationId, UserId)>,
    /// Staged events by their place in their author's chain.
    chain: HashMap<ChainSlot, usize>,
    /// The statements signed when the commit starts: (conversation, first seq, envelope).
    statements: Vec<(ConversationId, ServerSeq, Statement)>,
    since_ms: Option<u64>,
}

impl Staged {
    fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.registrations.is_empty()
            && self.revocations.is_empty()
            && self.cursors.is_empty()
            && self.invitations.is_empty()
            && self.user_requests.is_empty()
    }
}

/// What a user asked to change about itself.
#[derive(Debug, Clone, Copy)]
enum UserRequest {
    Accept(ConversationId),
    Decline(ConversationId),
    Block(UserId),
    Unblock(UserId),
}

/// A user request waiting for the commit that makes it durable.
#[derive(Debug)]
struct PendingUserRequest {
    session: SessionId,
    request_id: u64,
    user: UserId,
    request: UserRequest,
    /// Invitation rows it writes (the decision; for a block, the blocked user's pending
    /// invitations declined).
    rows: Vec<InvitationRecord>,
    /// Block rows it writes.
    blocks: Vec<(UserId, UserId, bool)>,
}

/// The most bytes one [`ConversationInfo`] takes in a frame: the id and two varints.
const CONVERSATION_INFO_MAX_LEN: usize = 16 + 10 + 10;
/// The most bytes one [`wire::Invitation`] takes in a frame.
const INVITATION_MAX_LEN: usize = 16 + 32;

#[derive(Debug)]
struct StagedEvent {
    event: Event,
    /// The statement placing it, signed when the commit starts (`None` until then).
    statement: Option<Statement>,
    seq: ServerSeq,
    ts_ms: u64,
    origin: SessionId,
}

#[derive(Debug)]
struct PendingSubmit {
    session: SessionId,
    request_id: u64,
    slots: Vec<Slot>,
}

#[derive(Debug)]
enum Slot {
    Done(SubmitOutcome),
    Staged(usize),
    /// A duplicate of an event in the commit being written: its place and statement, valid
    /// once that commit is durable.
    Inflight(ServerSeq, Statement),
    /// A duplicate of a stored event: its place and the record placing it.
    Stored(ServerSeq, Statement),
}

/// What the core remembers of the commit being written.
#[derive(Debug, Default)]
struct Inflight {
    placed: HashMap<EventId, (ServerSeq, Statement)>,
    registrations: Vec<(DeviceId, UserId)>,
    /// The certificates being written.
    certs: Vec<DeviceRegistration>,
    revocations: Vec<DeviceId>,
    /// The events being written, by chain place: (id, prev).
    chain: HashMap<ChainSlot, (EventId, Option<EventId>)>,
}

/// One group commit taken out of the core by [`RelayCore::start_commit`]: write it with
/// [`CommitJob::write`] (on any thread), then hand it back with [`RelayCore::finish_commit`].
#[derive(Debug)]
pub struct CommitJob {
    staged: Staged,
    records: Vec<(ConversationId, ConversationRecord)>,
}

impl CommitJob {
    /// Writes the job in one durable transaction.
    pub fn write(&self, store: &RelayStore) -> Result<(), StoreError> {
        let mut batch = CommitBatch::default();
        for s in &self.staged.events {
            batch.events.push(SequencedRecord {
                conversation: s.event.conversation(),
                seq: s.seq,
                index_key: store::index_key(&s.event),
                prev: s.event.header().prev,
                event: s.event.bytes(),
                ack: &[],
            });
        }
        for (c, first, st) in &self.staged.statements {
            batch.statements.push((*c, *first, st));
        }
        for (c, rec) in &self.records {
            batch.conversations.push((*c, rec));
        }
        batch.former.extend(self.staged.former.iter().copied());
        for r in &self.staged.registrations {
            batch.devices.push(&r.cert);
        }
        for r in &self.staged.revocations {
            batch.revocations.push(&r.revocation);
        }
        for ((d, c), s) in &self.staged.cursors {
            batch.cursors.push((*d, *c, *s));
        }
        batch
            .invitations
            .extend_from_slice(&self.staged.invitations);
        for r in &self.staged.user_requests {
            batch.invitations.extend_from_slice(&r.rows);
            batch.blocks.extend_from_slice(&r.blocks);
        }
        store.commit(&batch)
    }

    /// Events in the job.
    pub fn n_events(&self) -> usize {
        self.staged.events.len()
    }
}

#[derive(Debug)]
struct PendingRegistration {
    session: SessionId,
    request_id: u64,
    user: UserId,
    device: DeviceId,
    cert: DeviceRegistration,
}

#[derive(Debug)]
struct PendingRevocation {
    session: SessionId,
    request_id: u64,
    revocation: DeviceRevocation,
}

/// The rejection for an event the membership rules refuse.
fn membership_rejection(e: &MembershipError) -> SubmitOutcome {
    let code = match e {
        MembershipError::NotMember(_) => ErrorCode::NOT_MEMBER,
        MembershipError::AlreadyCreated => ErrorCode::CONVERSATION_EXISTS,
        MembershipError::CreatorNotListed => ErrorCode::BAD_MEMBERS,
        MembershipError::RelayOnly => ErrorCode::FORBIDDEN_KIND,
        _ => ErrorCode::FORBIDDEN,
    };
    rejected(code, e.to_string())
}

fn rejected(code: ErrorCode, reason: impl Into<String>) -> SubmitOutcome {
    SubmitOutcome::Rejected {
        code,
        reason: reason.into(),
    }
}

impl RelayCore {
    /// A core over `store`, signing acks with `key` (its DeviceId is the relay's identity).
    pub fn new(store: RelayStore, key: DeviceKey, limits: Limits) -> Result<RelayCore, StoreError> {
        RelayCore::with_metrics(store, key, limits, RelayMetrics::default())
    }

    /// Same as [`RelayCore::new`], reporting into `metrics`.
    pub fn with_metrics(
        store: RelayStore,
        key: DeviceKey,
        limits: Limits,
        metrics: RelayMetrics,
    ) -> Result<RelayCore, StoreError> {
        let limits = limits.clamped();
        let mut core = RelayCore {
            store,
            key,
            limits: limits.clone(),
            metrics,
            next_session: 1,
            sessions: BTreeMap::new(),
            admission: Admission::new(&limits),
            rates: RateBuckets::new(limits.max_rate_buckets),
            device_sessions: HashMap::new(),
            devices: HashMap::new(),
            certs: HashMap::new(),
            revoked: HashMap::new(),
            user_devices: HashMap::new(),
            user_convs: HashMap::new(),
            user_former: HashMap::new(),
            convs: HashMap::new(),
            consent: Consent::default(),
            staged: Staged::default(),
            outputs: VecDeque::new(),
            sign_threads: match limits.ack_sign_threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            inflight: None,
            inflight_waiters: Vec::new(),
        };
        core.load()?;
        core.metrics.set_stored_events(core.store.n_events()?);
        Ok(core)
    }

    fn load(&mut self) -> Result<(), StoreError> {
        for cert in self.store.registrations()? {
            self.add_device(cert.device, cert.user);
            self.certs.insert(cert.device, cert);
        }
        for rev in self.store.revocations()? {
            self.revoked.insert(rev.device, rev);
        }
        self.consent = Consent::load(&self.store)?;
        for (c, u) in self.store.former_members()? {
            self.user_former.entry(u).or_default().insert(c);
        }
        for (id, rec) in self.store.conversations()? {
            for m in rec.membership.members() {
                self.user_convs.entry(*m).or_default().insert(id);
            }
            self.convs.insert(
                id,
                Conv {
                    committed: Some(rec.clone()),
                    head: rec,
                },
            );
        }
        Ok(())
    }

    fn add_device(&mut self, device: DeviceId, user: UserId) {
        if self.devices.insert(device, user).is_none() {
            self.user_devices.entry(user).or_default().push(device);
        }
    }

    /// The relay's identity: the DeviceId that signs acks (also used as its UserId).
    pub fn relay_id(&self) -> DeviceId {
        self.key.device()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The store (read access, for tests and metrics).
    pub fn store(&self) -> &RelayStore {
        &self.store
    }

    /// Drops all in-memory state, staged work included, and gives the store back: what a
    /// crash leaves behind.
    pub fn into_store(self) -> RelayStore {
        self.store
    }

    /// A new connection from `peer`, counted against the connection limits by the core's own
    /// [`Admission`]. `tls_binding` is the keying material exported from its TLS session,
    /// `nonce` fresh random bytes for its challenge.
    pub fn handle_connect(
        &mut self,
        peer: IpAddr,
        tls_binding: [u8; TLS_BINDING_LEN],
        nonce: [u8; NONCE_LEN],
    ) -> Result<SessionId, ConnectError> {
        if let Err(e) = self.admission.handle_incoming(peer, true) {
            self.metrics.connection_refused();
            return Err(e);
        }
        Ok(self.open_session(peer, tls_binding, nonce, true))
    }

    /// A new connection from `peer` that an [`Admission`] outside the core already admitted
    /// and counts (the server's shell, which decides on the first packet, before TLS).
    pub fn handle_admitted(
        &mut self,
        peer: IpAddr,
        tls_binding: [u8; TLS_BINDING_LEN],
        nonce: [u8; NONCE_LEN],
    ) -> SessionId {
        self.open_session(peer, tls_binding, nonce, false)
    }

    fn open_session(
        &mut self,
        peer: IpAddr,
        tls_binding: [u8; TLS_BINDING_LEN],
        nonce: [u8; NONCE_LEN],
        counted: bool,
    ) -> SessionId {
        let id = self.next_session;
        self.next_session += 1;
        self.sessions
            .insert(id, Session::new(peer, tls_binding, nonce, counted));
        id
    }

    /// The connection ended (by either side). Staged events of the session still commit; the
    /// device gets their acks by resubmitting.
    pub fn handle_disconnect(&mut self, session: SessionId) {
        self.forget(session);
    }

    fn forget(&mut self, session: SessionId) {
        let Some(s) = self.sessions.remove(&session) else {
            return;
        };
        if s.counted {
            let pending = !matches!(s.phase, Phase::Ready { .. });
            self.admission.handle_closed(s.peer, pending);
        }
        if let Phase::Ready { device, .. } = s.phase {
            if self.device_sessions.get(&device) == Some(&session) {
                self.device_sessions.remove(&device);
            }
            self.metrics.set_connected(self.device_sessions.len());
        }
        self.update_fanout_metric();
    }

    fn close(&mut self, session: SessionId, code: ErrorCode, message: impl Into<String>) {
        if self.sessions.contains_key(&session) {
            self.forget(session);
            self.outputs.push_back(Output::Close {
                session,
                code,
                message: message.into(),
            });
        }
    }

    fn send(&mut self, session: SessionId, frame: ServerFrame) {
        self.outputs.push_back(Output::Frame { session, frame });
    }

    fn refuse(&mut self, session: SessionId, request_id: u64, code: ErrorCode, msg: &str) {
        self.send(
            session,
            ServerFrame::Refused {
                request_id,
                code,
                message: msg.to_string(),
            },
        );
    }

    /// Closes every session with `code` (e.g. [`ErrorCode::SHUTTING_DOWN`]).
    pub fn close_all(&mut self, code: ErrorCode, message: &str) {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.close(id, code, message);
        }
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// One frame from a session.
    pub fn handle_frame(&mut self, session: SessionId, frame: ClientFrame, now_ms: u64) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        match (&s.phase, frame) {
            (
                Phase::AwaitHello,
                ClientFrame::Hello {
                    protocol_version,
                    device,
                    user,
                },
            ) => self.on_hello(session, protocol_version, device, user),
            (Phase::AwaitAuth { .. }, ClientFrame::Auth { signature }) => {
                self.on_auth(session, signature)
            }
            (Phase::Ready { .. }, ClientFrame::Submit { request_id, events }) => {
                if events.len() > self.limits.max_submit_batch {
                    return self.batch_too_large(session, request_id, events.len());
                }
                let results = verify_batch(&events);
                self.handle_submit_verified(session, request_id, results, now_ms);
            }
            (Phase::Ready { .. }, frame) => self.on_request(session, frame, now_ms),
            (_, frame) => self.close(
                session,
                ErrorCode::UNEXPECTED_FRAME,
                format!("{} not allowed here", frame_name(&frame)),
            ),
        }
    }

    fn batch_too_large(&mut self, session: SessionId, request_id: u64, n: usize) {
        let msg = format!("{n} events, limit {}", self.limits.max_submit_batch);
        self.refuse(session, request_id, ErrorCode::BATCH_TOO_LARGE, &msg);
    }

    fn on_hello(&mut self, session: SessionId, version: u16, device: DeviceId, user: UserId) {
        if version != wire::PROTOCOL_VERSION {
            let msg = format!(
                "protocol version {version} not supported; this relay speaks {}",
                wire::PROTOCOL_VERSION
            );
            return self.close(session, ErrorCode::UNSUPPORTED_VERSION, msg);
        }
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        s.phase = Phase::AwaitAuth { device, user };
        let nonce = s.nonce;
        self.send(session, ServerFrame::Challenge { nonce });
    }

    fn on_auth(&mut self, session: SessionId, signature: wire::SignatureBytes) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let Phase::AwaitAuth { device, user } = s.phase else {
            return;
        };
        if !wire::verify_auth(&signature, &device, &user, &s.nonce, &s.tls_binding) {
            return self.close(session, ErrorCode::AUTH_FAILED, "signature does not verify");
        }
        if self.revoked.contains_key(&device) {
            return self.close(
                session,
                ErrorCode::REVOKED,
                "the device was revoked by its user",
            );
        }
        let cursors = match self.store.cursors(&device) {
            Ok(c) => c,
            Err(e) => return self.close(session, ErrorCode::INTERNAL, e.to_string()),
        };
        if let Some(old) = self.device_sessions.insert(device, session) {
            self.close(old, ErrorCode::REPLACED, "the device connected again");
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.phase = Phase::Ready { device, user };
            s.cursors = cursors;
            if s.counted {
                self.admission.handle_authenticated();
            }
        }
        self.metrics.set_connected(self.device_sessions.len());
        let registered = self.devices.get(&device) == Some(&user);
        let welcome = Welcome {
            relay: self.key.device(),
            registered,
            limits: self.limits.wire(),
        };
        self.send(session, ServerFrame::Welcome(welcome));
    }

    /// The session's device and user, if it authenticated and its device is registered to
    /// the user it claimed.
    fn registered(&self, session: SessionId) -> Option<(DeviceId, UserId)> {
        let s = self.sessions.get(&session)?;
        let Phase::Ready { device, user } = s.phase else {
            return None;
        };
        (self.devices.get(&device) == Some(&user) && !self.revoked.contains_key(&device))
            .then_some((device, user))
    }

    fn on_request(&mut self, session: SessionId, frame: ClientFrame, now_ms: u64) {
        match frame {
            ClientFrame::RegisterDevice {
                request_id,
                registration,
            } => self.on_register(session, request_id, registration, now_ms),
            ClientFrame::Pull {
                request_id,
                conversation,
                after_seq,
                limit,
            } => self.on_pull(session, request_id, conversation, after_seq, limit),
            ClientFrame::Sync { request_id, after } => self.on_sync(session, request_id, after),
            ClientFrame::Revoke {
                request_id,
                revocation,
            } => self.on_revoke(session, request_id, revocation, now_ms),
            ClientFrame::Devices {
                request_id,
                users,
                after,
            } => self.on_devices(session, request_id, &users, after),
            ClientFrame::Received {
                conversation,
                up_to,
            } => self.on_received(session, conversation, up_to, now_ms),
            ClientFrame::Accept {
                request_id,
                conversation,
            } => self.on_user_request(
                session,
                request_id,
                UserRequest::Accept(conversation),
                now_ms,
            ),
            ClientFrame::Decline {
                request_id,
                conversation,
            } => self.on_user_request(
                session,
                request_id,
                UserRequest::Decline(conversation),
                now_ms,
            ),
            ClientFrame::Block { request_id, user } => {
                self.on_user_request(session, request_id, UserRequest::Block(user), now_ms)
            }
            ClientFrame::Unblock { request_id, user } => {
                self.on_user_request(session, request_id, UserRequest::Unblock(user), now_ms)
            }
            frame => self.close(
                session,
                ErrorCode::UNEXPECTED_FRAME,
                format!("{} not allowed here", frame_name(&frame)),
            ),
        }
    }

    fn on_register(
        &mut self,
        session: SessionId,
        request_id: u64,
        reg: DeviceRegistration,
        now_ms: u64,
    ) {
        // The one directory rule (the devices' own, see `tidings_engine::directory`), against
        // the certificate held, staged or in flight.
        let staged = self.staged_registration(&reg.device);
        let held = staged.as_ref().or_else(|| self.certs.get(&reg.device));
        let revoked = self.revoked.contains_key(&reg.device);
        let n_devices = self.n_devices(&reg.user);
        match directory::check_certificate(&reg, held, revoked, n_devices) {
            Err(e) => {
                let code = match e {
                    DirectoryRefusal::BadCertificate { .. } => ErrorCode::BAD_REGISTRATION,
                    DirectoryRefusal::Revoked(_) => ErrorCode::REVOKED,
                    DirectoryRefusal::OtherUser { .. } => ErrorCode::DEVICE_TAKEN,
                    DirectoryRefusal::AgreementChanged { .. } => ErrorCode::AGREEMENT_KEY_CHANGED,
                    DirectoryRefusal::TooManyDevices { .. } => ErrorCode::TOO_MANY_DEVICES,
                    _ => ErrorCode::BAD_REGISTRATION,
                };
                self.refuse(session, request_id, code, &e.to_string())
            }
            // Already registered (an equal or older certificate): nothing to store.
            Ok(CertificateCheck::Held) if staged.is_none() => self.send(
                session,
                ServerFrame::Registered {
                    request_id,
                    user: reg.user,
                    device: reg.device,
                },
            ),
            Ok(_) => {
                self.staged.since_ms.get_or_insert(now_ms);
                self.staged.registrations.push(PendingRegistration {
                    session,
                    request_id,
                    user: reg.user,
                    device: reg.device,
                    cert: reg,
                });
            }
        }
    }

    /// Device ids of `user`, revoked ones included, registered or being registered.
    fn n_devices(&self, user: &UserId) -> usize {
        let known = self.user_devices.get(user).map_or(0, Vec::len);
        let mut new: BTreeSet<DeviceId> = BTreeSet::new();
        let staged = self.staged.registrations.iter().map(|r| (r.device, r.user));
        let inflight = self
            .inflight
            .iter()
            .flat_map(|i| i.registrations.iter().copied());
        for (d, u) in staged.chain(inflight) {
            if u == *user && !self.devices.contains_key(&d) {
                new.insert(d);
            }
        }
        known + new.len()
    }

    /// The newest certificate of `device` staged or in flight, if any.
    fn staged_registration(&self, device: &DeviceId) -> Option<DeviceRegistration> {
        let staged = self
            .staged
            .registrations
            .iter()
            .filter(|r| r.device == *device)
            .map(|r| &r.cert);
        let inflight = self
            .inflight
            .iter()
            .flat_map(|i| i.certs.iter())
            .filter(|c| c.device == *device);
        staged.chain(inflight).max_by_key(|c| c.issued_ms).cloned()
    }

    /// The user a device is being registered to in the staged batch or the commit in flight.
    fn staged_device_user(&self, device: &DeviceId) -> Option<UserId> {
        self.staged
            .registrations
            .iter()
            .map(|r| (r.device, r.user))
            .chain(
                self.inflight
                    .iter()
                    .flat_map(|i| i.registrations.iter().copied()),
            )
            .find(|(d, _)| d == device)
            .map(|(_, u)| u)
    }

    fn on_revoke(&mut self, session: SessionId, request_id: u64, rev: DeviceRevocation, now: u64) {
        // The one directory rule: only the user that certified the device revokes it. The
        // relay knows every registration, so a revocation of a device it has no certificate
        // of (pending on a device) is refused here.
        let certified_by = self
            .devices
            .get(&rev.device)
            .copied()
            .or_else(|| self.staged_device_user(&rev.device));
        match directory::check_revocation(&rev, certified_by) {
            Ok(RevocationCheck::Applies) => {}
            Ok(RevocationCheck::Pending) => {
                let msg = "the device is not registered to the revoking user";
                return self.refuse(session, request_id, ErrorCode::BAD_REVOCATION, msg);
            }
            Err(e) => {
                return self.refuse(
                    session,
                    request_id,
                    ErrorCode::BAD_REVOCATION,
                    &e.to_string(),
                )
            }
        }
        let pending = self
            .staged
            .revocations
            .iter()
            .any(|r| r.revocation.device == rev.device)
            || self
                .inflight
                .as_ref()
                .is_some_and(|i| i.revocations.contains(&rev.device));
        if self.revoked.contains_key(&rev.device) && !pending {
            return self.send(
                session,
                ServerFrame::Revoked {
                    request_id,
                    user: rev.user,
                    device: rev.device,
                },
            );
        }
        // In force at once: the device's session ends and nothing more of it is accepted;
        // the answer waits for the commit.
        self.revoked
            .entry(rev.device)
            .or_insert_with(|| rev.clone());
        if let Some(&sid) = self.device_sessions.get(&rev.device) {
            self.close(
                sid,
                ErrorCode::REVOKED,
                "the device was revoked by its user",
            );
        }
        self.staged.since_ms.get_or_insert(now);
        self.staged.revocations.push(PendingRevocation {
            session,
            request_id,
            revocation: rev,
        });
    }

    /// Certificates and durable revocations of the asked users who are or were members of a
    /// conversation the asking user is or was a member of, and of itself.
    fn on_devices(
        &mut self,
        session: SessionId,
        request_id: u64,
        users: &[UserId],
        after: Option<DeviceId>,
    ) {
        let Some((_, me)) = self.registered(session) else {
            let msg = "device is not registered to its user";
            return self.refuse(session, request_id, ErrorCode::NOT_REGISTERED, msg);
        };
        // A removed member's device may still hold events from its time in the conversation
        // that it has not verified yet (it crashed before asking, say): it needs the same
        // certificates as the members.
        let my_convs = self.user_convs.get(&me).into_iter().flatten();
        let my_former = self.user_former.get(&me).into_iter().flatten();
        let my_convs: BTreeSet<&ConversationId> = my_convs.chain(my_former).collect();
        let shares = |u: &UserId| {
            *u == me
                || my_convs.iter().any(|c| {
                    self.convs
                        .get(c)
                        .and_then(|c| c.committed.as_ref())
                        .is_some_and(|r| r.membership.is_member(u))
                        || self.user_former.get(u).is_some_and(|f| f.contains(*c))
                })
        };
        // One page: users in the order asked, each user's devices in id order, at most
        // `max_devices` devices (certificate and revocation each) so that the frame stays
        // within the relay's frame length.
        let max_devices = (self.limits.max_frame_len.saturating_sub(4096)
            / wire::MAX_DEVICE_STATEMENTS_LEN)
            .clamp(1, wire::MAX_LISTED_DEVICES);
        let mut registrations = Vec::new();
        let mut revocations = Vec::new();
        let mut seen = BTreeSet::new();
        let mut complete = users.len();
        let mut resume_after = None;
        let mut n_listed = 0usize;
        'users: for (i, u) in users.iter().enumerate() {
            if !seen.insert(*u) || !shares(u) {
                continue;
            }
            let mut devices: Vec<DeviceId> = self
                .user_devices
                .get(u)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            devices.sort();
            let start = if i == 0 { after } else { None };
            let mut last = start;
            for d in devices.into_iter().filter(|d| start.is_none_or(|a| *d > a)) {
                if n_listed >= max_devices {
                    complete = i;
                    resume_after = last;
                    break 'users;
                }
                n_listed += 1;
                last = Some(d);
                if let Some(c) = self.certs.get(&d) {
                    registrations.push(c.clone());
                }
                // Only durable revocations: the answer states what the relay keeps.
                let pending = self
                    .staged
                    .revocations
                    .iter()
                    .any(|r| r.revocation.device == d)
                    || self
                        .inflight
                        .as_ref()
                        .is_some_and(|i| i.revocations.contains(&d));
                if let (Some(r), false) = (self.revoked.get(&d), pending) {
                    revocations.push(r.clone());
                }
            }
        }
        // `complete` fits: users are at most MAX_DEVICE_QUERY_USERS.
        let complete = u32::try_from(complete).unwrap_or(u32::MAX);
        self.send(
            session,
            ServerFrame::Devices {
                request_id,
                registrations,
                revocations,
                complete,
                resume_after,
            },
        );
    }

    /// Whether `user` is a member at the head of the order (staged events included): what
    /// submissions are checked against.
    fn is_member(&self, user: &UserId, conv: &ConversationId) -> bool {
        self.convs
            .get(conv)
            .is_some_and(|c| c.head.membership.is_member(user))
    }

    /// Whether `user` is a member after the last durable event: what reads are checked
    /// against.
    fn is_committed_member(&self, user: &UserId, conv: &ConversationId) -> bool {
        self.convs
            .get(conv)
            .and_then(|c| c.committed.as_ref())
            .is_some_and(|r| r.membership.is_member(user))
    }

    fn committed_seq(&self, conv: &ConversationId) -> Option<ServerSeq> {
        self.convs
            .get(conv)
            .and_then(|c| c.committed.as_ref())
            .map(|r| r.max_seq)
    }

    fn on_pull(
        &mut self,
        session: SessionId,
        request_id: u64,
        conv: ConversationId,
        after_seq: ServerSeq,
        limit: u32,
    ) {
        let Some((_, user)) = self.registered(session) else {
            let msg = "device is not registered to its user";
            return self.refuse(session, request_id, ErrorCode::NOT_REGISTERED, msg);
        };
        if !self.is_committed_member(&user, &conv) {
            let msg = "unknown conversation or not a member";
            return self.refuse(session, request_id, ErrorCode::NOT_MEMBER, msg);
        }
        let limit = (limit as usize).clamp(1, self.limits.max_page_items);
        let budget = self.limits.max_frame_len.saturating_sub(4096);
        match self.store.page(&conv, after_seq, limit, budget) {
            Ok((events, records, more)) => self.send(
                session,
                ServerFrame::Page {
                    request_id,
                    conversation: conv,
                    events,
                    records,
                    more,
                },
            ),
            Err(e) => self.refuse(session, request_id, ErrorCode::INTERNAL, &e.to_string()),
        }
    }

    /// One page of the user's accepted conversations after `after`, in id order; the first
    /// page also carries the pending invitations and the blocked users. Pages are cut by
    /// count and by the frame budget, and every page but the last names the next `after`:
    /// however many conversations a user is in, a device reaches all of them.
    fn on_sync(&mut self, session: SessionId, request_id: u64, after: Option<ConversationId>) {
        let Some((_, user)) = self.registered(session) else {
            let msg = "device is not registered to its user";
            return self.refuse(session, request_id, ErrorCode::NOT_REGISTERED, msg);
        };
        let (invitations, blocked) = if after.is_none() {
            let invitations: Vec<wire::Invitation> = self
                .consent
                .pending(&user)
                .into_iter()
                .filter(|i| self.is_committed_member(&user, &i.conversation))
                .take(wire::MAX_PENDING_INVITATIONS)
                .collect();
            let mut blocked = self.consent.blocked(&user);
            blocked.truncate(wire::MAX_BLOCKED_USERS);
            (invitations, blocked)
        } else {
            (Vec::new(), Vec::new())
        };
        let lists = invitations.len() * INVITATION_MAX_LEN + blocked.len() * 32;
        let budget = self.limits.max_frame_len.saturating_sub(4096 + lists);
        let page = (budget / CONVERSATION_INFO_MAX_LEN).clamp(1, wire::MAX_LISTED_CONVERSATIONS);
        let mut list: Vec<ConversationInfo> = Vec::new();
        let mut next = None;
        if let (Some(convs), Some(s)) = (self.user_convs.get(&user), self.sessions.get(&session)) {
            let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
            for c in convs.range((lower, Bound::Unbounded)) {
                if !self.consent.is_accepted(&user, c) {
                    continue;
                }
                let Some(rec) = self.convs.get(c).and_then(|c| c.committed.as_ref()) else {
                    continue;
                };
                if list.len() == page {
                    next = list.last().map(|i| i.conversation);
                    break;
                }
                list.push(ConversationInfo {
                    conversation: *c,
                    max_seq: rec.max_seq,
                    cursor: s.cursors.get(c).copied().unwrap_or(0),
                });
            }
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.push_on = true;
            s.pull_mode = false;
        }
        self.send(
            session,
            ServerFrame::Conversations {
                request_id,
                conversations: list,
                next,
                invitations,
                blocked,
            },
        );
    }

    /// Accept, Decline, Block or Unblock from one of the user's devices: checked now,
    /// answered with `UserState` once durable (and told to the user's other devices).
    fn on_user_request(
        &mut self,
        session: SessionId,
        request_id: u64,
        request: UserRequest,
        now_ms: u64,
    ) {
        let Some((_, user)) = self.registered(session) else {
            let msg = "device is not registered to its user";
            return self.refuse(session, request_id, ErrorCode::NOT_REGISTERED, msg);
        };
        let mut rows = Vec::new();
        let mut blocks = Vec::new();
        match request {
            UserRequest::Accept(c) | UserRequest::Decline(c) => {
                if !self.is_member(&user, &c) {
                    let msg = "unknown conversation or not a member";
                    return self.refuse(session, request_id, ErrorCode::NOT_MEMBER, msg);
                }
                let decision = match request {
                    UserRequest::Accept(_) => Decision::Accepted,
                    _ => Decision::Declined,
                };
                let inviter = self
                    .consent
                    .inviter(&user, &c)
                    .or_else(|| self.convs.get(&c).map(|cv| cv.head.membership.creator()))
                    .unwrap_or(user);
                rows.push(InvitationRecord {
                    user,
                    conversation: c,
                    decision,
                    inviter,
                });
            }
            UserRequest::Block(other) => {
                if other == user {
                    let msg = "a user cannot block itself";
                    return self.refuse(session, request_id, ErrorCode::FORBIDDEN, msg);
                }
                if !self.consent.can_block(&user, &other) {
                    let msg = format!("already blocking {} users", wire::MAX_BLOCKED_USERS);
                    return self.refuse(session, request_id, ErrorCode::BLOCK_LIST_FULL, &msg);
                }
                for c in self.consent.pending_from(&user, &other) {
                    rows.push(InvitationRecord {
                        user,
                        conversation: c,
                        decision: Decision::Declined,
                        inviter: other,
                    });
                }
                blocks.push((user, other, true));
            }
            UserRequest::Unblock(other) => blocks.push((user, other, false)),
        }
        self.staged.since_ms.get_or_insert(now_ms);
        self.staged.user_requests.push(PendingUserRequest {
            session,
            request_id,
            user,
            request,
            rows,
            blocks,
        });
    }

    /// The change a durable user request made, as `session` sees it.
    fn user_change(&self, request: UserRequest, session: SessionId) -> UserChange {
        match request {
            UserRequest::Accept(c) => UserChange::Accepted(ConversationInfo {
                conversation: c,
                max_seq: self.committed_seq(&c).unwrap_or(0),
                cursor: self
                    .sessions
                    .get(&session)
                    .and_then(|s| s.cursors.get(&c).copied())
                    .unwrap_or(0),
            }),
            UserRequest::Decline(c) => UserChange::Declined(c),
            UserRequest::Block(u) => UserChange::Blocked(u),
            UserRequest::Unblock(u) => UserChange::Unblocked(u),
        }
    }

    /// The authenticated sessions of `user`'s devices.
    fn user_sessions(&self, user: &UserId) -> Vec<SessionId> {
        self.user_devices
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|d| self.device_sessions.get(d).copied())
            .filter(|sid| self.registered(*sid).is_some())
            .collect()
    }

    /// Applies durable user requests and new invitations: answers the requests, and tells
    /// every other online device of each user what changed.
    fn settle_consent(
        &mut self,
        invitations: Vec<InvitationRecord>,
        requests: Vec<PendingUserRequest>,
    ) {
        for r in requests {
            for row in &r.rows {
                self.consent
                    .set(row.user, row.conversation, row.decision, row.inviter);
            }
            for (u, o, on) in &r.blocks {
                self.consent.set_block(*u, *o, *on);
            }
            let change = self.user_change(r.request, r.session);
            self.send_live(
                r.session,
                ServerFrame::UserState {
                    request_id: r.request_id,
                    change,
                },
            );
            for sid in self.user_sessions(&r.user) {
                if sid != r.session {
                    let change = self.user_change(r.request, sid);
                    self.send(sid, ServerFrame::UserChanged { change });
                }
            }
        }
        for row in invitations {
            if row.decision != Decision::Pending {
                continue;
            }
            let change = UserChange::Invited(wire::Invitation {
                conversation: row.conversation,
                inviter: row.inviter,
            });
            for sid in self.user_sessions(&row.user) {
                self.send(
                    sid,
                    ServerFrame::UserChanged {
                        change: change.clone(),
                    },
                );
            }
        }
    }

    fn on_received(&mut self, session: SessionId, conv: ConversationId, up_to: u64, now: u64) {
        let Some((device, user)) = self.registered(session) else {
            return;
        };
        let Some(max) = self.committed_seq(&conv) else {
            return;
        };
        if !self.is_committed_member(&user, &conv) {
            return;
        }
        let up_to = up_to.min(max);
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        s.acknowledge(conv, up_to);
        let cur = s.cursors.entry(conv).or_insert(0);
        if up_to > *cur {
            *cur = up_to;
            self.staged.cursors.insert((device, conv), up_to);
            self.staged.since_ms.get_or_insert(now);
        }
        self.update_fanout_metric();
    }

    /// A Submit whose envelopes were decoded and verified by the caller (with
    /// [`verify_batch`], e.g. on another thread), one result per envelope in batch order.
    pub fn handle_submit_verified(
        &mut self,
        session: SessionId,
        request_id: u64,
        results: Vec<Result<Event, DecodeError>>,
        now_ms: u64,
    ) {
        if !matches!(
            self.sessions.get(&session).map(|s| &s.phase),
            Some(Phase::Ready { .. })
        ) {
            return self.close(session, ErrorCode::UNEXPECTED_FRAME, "Submit before Auth");
        }
        if results.len() > self.limits.max_submit_batch {
            return self.batch_too_large(session, request_id, results.len());
        }
        let Some((_, user)) = self.registered(session) else {
            let msg = "device is not registered to its user";
            return self.refuse(session, request_id, ErrorCode::NOT_REGISTERED, msg);
        };
        let evs: Vec<&Event> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let known = match self.store.chain(&evs) {
            Ok(k) => k,
            Err(e) => return self.refuse(session, request_id, ErrorCode::INTERNAL, &e.to_string()),
        };
        let mut known = known.into_iter();
        let mut slots = Vec::with_capacity(results.len());
        let mut n_rejected = 0;
        for r in results {
            let slot = match r {
                Err(e) => Slot::Done(rejected(ErrorCode::BAD_EVENT, e.to_string())),
                Ok(ev) => {
                    let chain = known.next().unwrap_or_default();
                    self.submit_one(session, user, ev, chain, now_ms)
                }
            };
            if matches!(slot, Slot::Done(SubmitOutcome::Rejected { .. })) {
                n_rejected += 1;
            }
            slots.push(slot);
        }
        self.metrics.rejected(n_rejected);
        let any_staged = slots.iter().any(|s| matches!(s, Slot::Staged(_)));
        let any_inflight = slots.iter().any(|s| matches!(s, Slot::Inflight(..)));
        if any_inflight && !any_staged {
            self.inflight_waiters.push(PendingSubmit {
                session,
                request_id,
                slots,
            });
        } else if !any_staged {
            self.answer(
                PendingSubmit {
                    session,
                    request_id,
                    slots,
                },
                None,
            );
        } else {
            self.staged.submits.push(PendingSubmit {
                session,
                request_id,
                slots,
            });
        }
    }

    fn submit_one(
        &mut self,
        session: SessionId,
        user: UserId,
        ev: Event,
        chain: ChainInfo,
        now_ms: u64,
    ) -> Slot {
        let conv = ev.conversation();
        let id = ev.id();
        let author = ev.header().author;
        let author_user = ev.header().user;
        if ev.kind().is_sequencing() {
            return Slot::Done(rejected(
                ErrorCode::FORBIDDEN_KIND,
                "devices may not submit the relay's statements",
            ));
        }
        let created_here = matches!(ev.kind(), EventKind::Create { .. });
        if let EventKind::Create { members } = ev.kind() {
            if !members.contains(&author_user) || !members.contains(&user) {
                return Slot::Done(rejected(
                    ErrorCode::BAD_MEMBERS,
                    "a Create event must list its author's user and the submitter's user",
                ));
            }
        }
        // Resubmission of an accepted event (by its user, or a member): the same place and
        // statement, nothing stored twice, whatever happened since (removal, revocation).
        if author_user == user || self.is_member(&user, &conv) {
            if let Some((_, seq, record)) = chain.stored {
                return Slot::Stored(seq, Statement::from(record));
            }
            if let Some(&idx) = self.staged.by_id.get(&id) {
                return Slot::Staged(idx);
            }
            if let Some((seq, st)) = self.inflight.as_ref().and_then(|i| i.placed.get(&id)) {
                return Slot::Inflight(*seq, st.clone());
            }
        }
        if !self.convs.contains_key(&conv) {
            if !created_here {
                return Slot::Done(rejected(
                    ErrorCode::UNKNOWN_CONVERSATION,
                    "no Create event for this conversation",
                ));
            }
        } else if created_here {
            return Slot::Done(rejected(
                ErrorCode::CONVERSATION_EXISTS,
                "another Create event made this conversation",
            ));
        }
        if self.revoked.contains_key(&author) {
            return Slot::Done(rejected(
                ErrorCode::REVOKED,
                "the author device was revoked by its user",
            ));
        }
        if self.devices.get(&author) != Some(&author_user) {
            return Slot::Done(rejected(
                ErrorCode::NOT_REGISTERED,
                "the author device is not registered to the event's user",
            ));
        }
        let membership = if let EventKind::Create { members } = ev.kind() {
            match Membership::create(author_user, members) {
                Ok(m) => Some(m),
                Err(e) => return Slot::Done(membership_rejection(&e)),
            }
        } else {
            if !self.is_member(&user, &conv) {
                return Slot::Done(rejected(
                    ErrorCode::NOT_MEMBER,
                    "the submitting user is not a member of the conversation",
                ));
            }
            let head = self.convs.get(&conv).map(|c| &c.head.membership);
            if let Some(Err(e)) = head.map(|m| m.check(author_user, ev.kind())) {
                return Slot::Done(membership_rejection(&e));
            }
            None
        };
        if let Some(outcome) = self.check_chain(&ev, &chain) {
            return Slot::Done(outcome);
        }
        let live = |user: &UserId, c: &ConversationId, inviter: &UserId| {
            self.is_member(user, c) && self.is_member(inviter, c)
        };
        let invitations = match self.consent.rows_for(author_user, conv, ev.kind(), live) {
            Ok(rows) => rows,
            Err((code, reason)) => return Slot::Done(rejected(code, reason)),
        };
        let Some(Phase::Ready { device, .. }) = self.sessions.get(&session).map(|s| s.phase) else {
            return Slot::Done(rejected(ErrorCode::INTERNAL, "session vanished"));
        };
        if let Err(who) = self.rates.take(device, user, now_ms, &self.limits) {
            return Slot::Done(rejected(
                ErrorCode::RATE_LIMITED,
                format!("over the {who}'s rate"),
            ));
        }
        if let Some(membership) = membership {
            self.convs.insert(
                conv,
                Conv {
                    committed: None,
                    head: ConversationRecord {
                        membership,
                        max_seq: 0,
                        last_ack: EventId([0; 32]),
                        last_ts_ms: 0,
                    },
                },
            );
            self.staged.membership_changed.insert(conv);
        } else if Membership::changes_membership(ev.kind()) {
            // Checked above against the same head: this applies.
            if let Some(c) = self.convs.get_mut(&conv) {
                if let Err(e) = c.head.membership.apply(author_user, ev.kind()) {
                    return Slot::Done(membership_rejection(&e));
                }
                if let EventKind::RemoveMember { user } = ev.kind() {
                    self.staged.former.push((conv, *user));
                }
            }
            self.staged.membership_changed.insert(conv);
        }
        // Counted at once, so that the caps hold within a batch too.
        for row in invitations {
            self.consent
                .set(row.user, row.conversation, row.decision, row.inviter);
            self.staged.invitations.push(row);
        }
        match self.sequence(session, ev, now_ms) {
            Ok(idx) => Slot::Staged(idx),
            Err(e) => Slot::Done(rejected(ErrorCode::INTERNAL, e.to_string())),
        }
    }

    /// The (id, prev) of the event at a chain place, staged, in flight or stored.
    fn chain_at(&self, slot: &ChainSlot) -> Option<(EventId, Option<EventId>)> {
        if let Some(e) = self
            .staged
            .chain
            .get(slot)
            .and_then(|&i| self.staged.events.get(i))
        {
            return Some((e.event.id(), e.event.header().prev));
        }
        self.inflight
            .as_ref()
            .and_then(|i| i.chain.get(slot).copied())
    }

    /// Refuses an event that forks or breaks its author's chain (see docs/PROTOCOL.md).
    fn check_chain(&self, ev: &Event, stored: &ChainInfo) -> Option<SubmitOutcome> {
        let h = ev.header();
        let id = ev.id();
        if h.counter == 0 || (h.counter == 1 && h.prev.is_some()) {
            return Some(rejected(
                ErrorCode::BROKEN_CHAIN,
                "counters start at 1, with no prev",
            ));
        }
        let here = (h.conversation, h.author, h.counter);
        let fork = stored.fork.is_some() || self.chain_at(&here).is_some_and(|(o, _)| o != id);
        if fork {
            return Some(rejected(
                ErrorCode::CHAIN_FORK,
                format!(
                    "another event of this device has counter {} in the conversation",
                    h.counter
                ),
            ));
        }
        let pred = self
            .chain_at(&(h.conversation, h.author, h.counter - 1))
            .map(|(p, _)| p)
            .or(stored.pred);
        if let Some(p) = pred {
            if h.prev != Some(p) {
                return Some(rejected(
                    ErrorCode::BROKEN_CHAIN,
                    "prev is not the device's event at counter - 1",
                ));
            }
        }
        let succ = h.counter.checked_add(1).and_then(|n| {
            self.chain_at(&(h.conversation, h.author, n))
                .map(|(_, p)| p)
                .or(stored.succ_prev)
        });
        if let Some(sp) = succ {
            if sp != Some(id) {
                return Some(rejected(
                    ErrorCode::BROKEN_CHAIN,
                    "the device's event at counter + 1 names another prev",
                ));
            }
        }
        None
    }

    /// Gives `ev` the next sequence of its conversation (staged; the ack is signed when the
    /// commit starts, see [`RelayCore::sign_acks`]).
    fn sequence(
        &mut self,
        origin: SessionId,
        ev: Event,
        now_ms: u64,
    ) -> Result<usize, DecodeError> {
        let conv_id = ev.conversation();
        let Some(conv) = self.convs.get_mut(&conv_id) else {
            return Err(DecodeError::Malformed("conversation vanished"));
        };
        let head = &mut conv.head;
        let seq = head.max_seq + 1;
        let ts_ms = server_ts(now_ms, head.last_ts_ms, self.limits.max_ts_lead_ms);
        head.max_seq = seq;
        head.last_ts_ms = ts_ms;
        let idx = self.staged.events.len();
        self.staged.by_id.insert(ev.id(), idx);
        let h = ev.header();
        self.staged
            .chain
            .insert((h.conversation, h.author, h.counter), idx);
        self.staged.touched.insert(conv_id);
        self.staged.since_ms.get_or_insert(now_ms);
        self.staged.events.push(StagedEvent {
            event: ev,
            statement: None,
            seq,
            ts_ms,
            origin,
        });
        Ok(idx)
    }

    /// Signs the statements of a commit: per conversation, its staged events (consecutive
    /// sequences) in statements of up to `MAX_SEQUENCED_ENTRIES`, chained after the
    /// conversation's head; conversations spread over threads (the result does not depend on
    /// their number). One signature per statement, not per event.
    fn sign_statements(&mut self, staged: &mut Staged) -> Result<(), DecodeError> {
        let mut runs: BTreeMap<ConversationId, Vec<ToPlace<'_>>> = BTreeMap::new();
        for (index, e) in staged.events.iter().enumerate() {
            runs.entry(e.event.conversation())
                .or_default()
                .push(ToPlace {
                    index,
                    event: &e.event,
                    seq: e.seq,
                    ts_ms: e.ts_ms,
                });
        }
        let jobs: Vec<(ConversationId, EventId, Vec<ToPlace<'_>>)> = runs
            .into_iter()
            .map(|(c, run)| {
                let last = self.convs.get(&c).map(|cv| cv.head.last_ack);
                (c, last.unwrap_or(EventId([0; 32])), run)
            })
            .collect();
        let n_threads = self.sign_threads.min(jobs.len()).max(1);
        let key = &self.key;
        let sign = |job: &(ConversationId, EventId, Vec<ToPlace<'_>>)| {
            sequencing::sign_run(key, job.0, job.1, &job.2)
        };
        let signed: Vec<Result<Vec<sequencing::Signed>, DecodeError>> =
            if n_threads == 1 || jobs.len() < MIN_PARALLEL_SIGN {
                jobs.iter().map(sign).collect()
            } else {
                let per_thread = jobs.len().div_ceil(n_threads);
                std::thread::scope(|scope| {
                    let handles: Vec<_> = jobs
                        .chunks(per_thread)
                        .map(|part| {
                            scope.spawn(move || {
                                let mut out = Vec::new();
                                for job in part {
                                    out.extend(sign(job)?);
                                }
                                Ok(out)
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join()
                                .unwrap_or(Err(DecodeError::Malformed("statement signer panicked")))
                        })
                        .collect()
                })
            };
        drop(jobs);
        for part in signed {
            for st in part? {
                if let Some(c) = self.convs.get_mut(&st.conversation) {
                    // Runs are signed in order, so the last write per conversation wins.
                    c.head.last_ack = st.id;
                }
                for &i in &st.places {
                    if let Some(e) = staged.events.get_mut(i) {
                        e.statement = Some(st.envelope.clone());
                    }
                }
                staged
                    .statements
                    .push((st.conversation, st.first, st.envelope));
            }
        }
        Ok(())
    }

    /// Events staged for the next commit.
    pub fn n_staged_events(&self) -> usize {
        self.staged.events.len()
    }

    /// Whether anything waits for a commit.
    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// When the staged work must be committed at the latest (ms), if any is staged.
    pub fn commit_deadline(&self) -> Option<u64> {
        self.staged
            .since_ms
            .filter(|_| self.has_staged())
            .map(|t| t.saturating_add(self.limits.commit_window_ms))
    }

    /// Whether to commit now rather than wait for more input: the batch is full or its
    /// window has passed. (A shell also commits whenever no input is waiting.)
    pub fn wants_commit(&self, now_ms: u64) -> bool {
        self.has_staged()
            && (self.staged.events.len() >= self.limits.max_commit_batch
                || self.commit_deadline().is_some_and(|d| now_ms >= d))
    }

    /// Writes everything staged in one durable transaction, then answers the submitters,
    /// confirms registrations and pushes the new events to online member devices
    /// ([`RelayCore::start_commit`], [`CommitJob::write`] and [`RelayCore::finish_commit`] in
    /// one call). On a store error the staged events are refused with [`ErrorCode::INTERNAL`]
    /// and the sequencer goes back to the last committed state. Does nothing while a job from
    /// `start_commit` is out.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        let Some(job) = self.start_commit()? else {
            return Ok(());
        };
        let result = job.write(&self.store);
        let out = match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(StoreError::Failed(e.to_string())),
        };
        self.finish_commit(job, result);
        out
    }

    /// Whether a job from [`RelayCore::start_commit`] is being written.
    pub fn commit_in_flight(&self) -> bool {
        self.inflight.is_some()
    }

    /// Takes everything staged as one group commit and signs its acks. The caller writes the
    /// job ([`CommitJob::write`], e.g. on a writer thread, while the core goes on staging the
    /// next batch) and hands it back with [`RelayCore::finish_commit`]; nothing of it is
    /// answered before that. `None` if nothing is staged or a job is already out (one at a
    /// time, so commits reach the disk in sequence order).
    pub fn start_commit(&mut self) -> Result<Option<CommitJob>, StoreError> {
        if self.inflight.is_some() || !self.has_staged() {
            return Ok(None);
        }
        let mut staged = std::mem::take(&mut self.staged);
        if let Err(e) = self.sign_statements(&mut staged) {
            let e = StoreError::Ack(e);
            self.reset_heads();
            self.fail(staged, &e.to_string());
            return Err(e);
        }
        let records = staged
            .touched
            .iter()
            .filter_map(|c| self.convs.get(c).map(|conv| (*c, conv.head.clone())))
            .collect();
        self.inflight = Some(Inflight {
            placed: staged
                .events
                .iter()
                .filter_map(|e| Some((e.event.id(), (e.seq, e.statement.clone()?))))
                .collect(),
            registrations: staged
                .registrations
                .iter()
                .map(|r| (r.device, r.user))
                .collect(),
            certs: staged
                .registrations
                .iter()
                .map(|r| r.cert.clone())
                .collect(),
            revocations: staged
                .revocations
                .iter()
                .map(|r| r.revocation.device)
                .collect(),
            chain: staged
                .events
                .iter()
                .map(|e| {
                    let h = e.event.header();
                    (
                        (h.conversation, h.author, h.counter),
                        (e.event.id(), h.prev),
                    )
                })
                .collect(),
        });
        Ok(Some(CommitJob { staged, records }))
    }

    /// The outcome of writing `job`. On success its submitters get their acks and its events
    /// are pushed; on failure they are refused with [`ErrorCode::INTERNAL`], and so is
    /// everything staged since (its sequences followed the failed ones), and the sequencer
    /// goes back to the last committed state.
    pub fn finish_commit(&mut self, job: CommitJob, result: Result<(), StoreError>) {
        self.inflight = None;
        let waiters = std::mem::take(&mut self.inflight_waiters);
        match result {
            Ok(()) => {
                self.after_commit(job.staged, job.records);
                for p in waiters {
                    self.answer(p, None);
                }
            }
            Err(e) => {
                let msg = format!("store failure: {e}");
                self.reset_heads();
                self.fail(job.staged, &msg);
                let later = std::mem::take(&mut self.staged);
                self.fail(later, &msg);
                for p in waiters {
                    self.answer(p, Some(&msg));
                }
            }
        }
    }

    /// Every conversation back to its committed state (uncommitted ones forgotten), and
    /// the users' consent back to what is stored (if it cannot be read, staged invitations
    /// stay counted: the caps err on the safe side).
    fn reset_heads(&mut self) {
        if let Ok(c) = Consent::load(&self.store) {
            self.consent = c;
        }
        self.convs.retain(|_, conv| match &conv.committed {
            Some(rec) => {
                conv.head = rec.clone();
                true
            }
            None => false,
        });
    }

    /// Answers a submit whose slots are all decided; with `failure`, places that depended on
    /// an unwritten commit become INTERNAL refusals.
    fn answer(&mut self, p: PendingSubmit, failure: Option<&str>) {
        let resolved = p.slots.into_iter().map(|s| match (s, failure) {
            (Slot::Done(o), _) => Resolved::Outcome(o),
            (Slot::Stored(seq, st), _) | (Slot::Inflight(seq, st), None) => {
                Resolved::Placed(seq, st)
            }
            (Slot::Inflight(..) | Slot::Staged(_), Some(msg)) => {
                Resolved::Outcome(sequencing::lost(msg))
            }
            (Slot::Staged(_), None) => Resolved::Outcome(sequencing::lost("lost staged event")),
        });
        let (outcomes, records) = sequencing::submit_answer(resolved, self.frame_budget());
        self.send_live(
            p.session,
            ServerFrame::SubmitResult {
                request_id: p.request_id,
                outcomes,
                records,
            },
        );
    }

    /// Bytes of envelopes one frame may carry (room left for its other fields).
    fn frame_budget(&self) -> usize {
        self.limits.max_frame_len.saturating_sub(4096)
    }

    fn fail(&mut self, staged: Staged, msg: &str) {
        self.metrics.rejected(staged.events.len());
        for p in staged.submits {
            self.answer(p, Some(msg));
        }
        let refused = |request_id| ServerFrame::Refused {
            request_id,
            code: ErrorCode::INTERNAL,
            message: msg.to_string(),
        };
        for r in staged.registrations {
            self.send_live(r.session, refused(r.request_id));
        }
        for r in staged.user_requests {
            self.send_live(r.session, refused(r.request_id));
        }
        // Revocations that were not durable are forgotten, unless stored before (the relay
        // refuses only for what it keeps); the user sends them again. The stored ones are read
        // once; if they cannot be read, every revocation is kept (the safe side).
        let stored: Option<HashSet<DeviceId>> = if staged.revocations.is_empty() {
            None
        } else {
            self.store
                .revocations()
                .ok()
                .map(|all| all.iter().map(|d| d.device).collect())
        };
        for r in staged.revocations {
            let durable = stored
                .as_ref()
                .is_none_or(|s| s.contains(&r.revocation.device));
            if !durable {
                self.revoked.remove(&r.revocation.device);
            }
            self.send_live(r.session, refused(r.request_id));
        }
    }

    fn send_live(&mut self, session: SessionId, frame: ServerFrame) {
        if self.sessions.contains_key(&session) {
            self.send(session, frame);
        }
    }

    fn after_commit(&mut self, staged: Staged, records: Vec<(ConversationId, ConversationRecord)>) {
        self.metrics.committed();
        self.metrics.accepted(staged.events.len());
        self.metrics.add_stored_events(staged.events.len());
        // Membership before this batch, for the conversations it changed: fan-out replays
        // the batch from there so that every event reaches the members at its place.
        let mut replay: HashMap<ConversationId, Option<Membership>> = HashMap::new();
        for c in &staged.membership_changed {
            let before = self
                .convs
                .get(c)
                .and_then(|cv| cv.committed.as_ref())
                .map(|r| r.membership.clone());
            replay.insert(*c, before);
        }
        for (c, rec) in records {
            let Some(conv) = self.convs.get_mut(&c) else {
                continue;
            };
            if staged.membership_changed.contains(&c) {
                if let Some(old) = &conv.committed {
                    for m in old.membership.members() {
                        if !rec.membership.is_member(m) {
                            if let Some(set) = self.user_convs.get_mut(m) {
                                set.remove(&c);
                            }
                        }
                    }
                }
                for m in rec.membership.members() {
                    self.user_convs.entry(*m).or_default().insert(c);
                }
            }
            conv.committed = Some(rec);
        }
        for (c, u) in &staged.former {
            self.user_former.entry(*u).or_default().insert(*c);
        }
        for r in staged.registrations {
            self.add_device(r.device, r.user);
            let newer = self
                .certs
                .get(&r.device)
                .is_none_or(|c| c.issued_ms < r.cert.issued_ms);
            if newer {
                self.certs.insert(r.device, r.cert);
            }
            self.send_live(
                r.session,
                ServerFrame::Registered {
                    request_id: r.request_id,
                    user: r.user,
                    device: r.device,
                },
            );
        }
        for r in staged.revocations {
            self.send_live(
                r.session,
                ServerFrame::Revoked {
                    request_id: r.request_id,
                    user: r.revocation.user,
                    device: r.revocation.device,
                },
            );
        }
        let budget = self.frame_budget();
        for p in staged.submits {
            let resolved = p.slots.into_iter().map(|s| match s {
                Slot::Done(o) => Resolved::Outcome(o),
                Slot::Staged(i) => match staged.events.get(i) {
                    Some(StagedEvent {
                        seq,
                        statement: Some(st),
                        ..
                    }) => Resolved::Placed(*seq, st.clone()),
                    _ => Resolved::Outcome(sequencing::lost("lost staged event")),
                },
                Slot::Inflight(seq, st) | Slot::Stored(seq, st) => Resolved::Placed(seq, st),
            });
            let (outcomes, records) = sequencing::submit_answer(resolved, budget);
            self.send_live(
                p.session,
                ServerFrame::SubmitResult {
                    request_id: p.request_id,
                    outcomes,
                    records,
                },
            );
        }
        self.settle_consent(staged.invitations, staged.user_requests);
        self.fan_out(&staged.events, replay);
        self.update_fanout_metric();
    }

    /// Pushes each new event to every online, push-enabled device of every member at the
    /// event's place in the order (for a membership change: the members before it and an
    /// added user), except the connection that submitted it (it has the ack). A device past
    /// its push window is switched to pull mode instead of being buffered for.
    ///
    /// `replay` holds, for each conversation whose membership the events change, the
    /// membership before them; the others use their committed record.
    fn fan_out(
        &mut self,
        events: &[StagedEvent],
        mut replay: HashMap<ConversationId, Option<Membership>>,
    ) {
        let mut ctx = FanOut {
            per_session: BTreeMap::new(),
            window: self.limits.push_window,
            user_devices: &self.user_devices,
            device_sessions: &self.device_sessions,
            consent: &self.consent,
            sessions: &mut self.sessions,
            outputs: &mut self.outputs,
            metrics: &self.metrics,
        };
        for e in events {
            let conv = e.event.conversation();
            let Some(statement) = e.statement.clone() else {
                continue;
            };
            let item = Outgoing {
                event: e.event.bytes().to_vec(),
                statement,
            };
            match replay.get_mut(&conv) {
                Some(state) => {
                    let author = e.event.header().user;
                    let mut extra = None;
                    match e.event.kind() {
                        EventKind::Create { members } => {
                            *state = Membership::create(author, members).ok();
                        }
                        kind => {
                            if let EventKind::AddMember { user, .. } = kind {
                                extra = Some(*user);
                            }
                            // Recipients: the members before the change...
                            if let Some(m) = state.as_ref() {
                                ctx.push(m.members().chain(extra.iter()), conv, e, &item);
                            }
                            if let Some(m) = state.as_mut() {
                                // Accepted by the same rules when it was sequenced.
                                let _ = m.apply(author, kind);
                            }
                            continue;
                        }
                    }
                    if let Some(m) = state.as_ref() {
                        ctx.push(m.members(), conv, e, &item);
                    }
                }
                None => {
                    let Some(rec) = self.convs.get(&conv).and_then(|c| c.committed.as_ref()) else {
                        continue;
                    };
                    ctx.push(rec.membership.members(), conv, e, &item);
                }
            }
        }
        let per_session = std::mem::take(&mut ctx.per_session);
        let budget = self.frame_budget();
        let max_items = self.limits.max_page_items;
        for (sid, items) in per_session {
            let still_pushing = self
                .sessions
                .get(&sid)
                .is_some_and(|s| s.push_on && !s.pull_mode);
            if !still_pushing {
                continue;
            }
            for (events, records) in sequencing::push_frames(items, max_items, budget) {
                self.send(sid, ServerFrame::Push { events, records });
            }
        }
    }

    fn update_fanout_metric(&self) {
        let depth: usize = self.sessions.values().map(|s| s.unacked()).sum();
        self.metrics.set_fanout_depth(depth);
    }

    /// A snapshot for metrics and tests.
    pub fn stats(&self) -> CoreStats {
        let mut backlog = Vec::new();
        for (device, sid) in &self.device_sessions {
            let (Some(s), Some(user)) = (self.sessions.get(sid), self.devices.get(device)) else {
                continue;
            };
            let mut n = 0u64;
            for c in self.user_convs.get(user).into_iter().flatten() {
                let max = self.committed_seq(c).unwrap_or(0);
                n += max.saturating_sub(s.cursors.get(c).copied().unwrap_or(0));
            }
            backlog.push((*device, n));
        }
        backlog.sort();
        CoreStats {
            connected_devices: self.device_sessions.len(),
            sessions: self.sessions.len(),
            staged_events: self.staged.events.len(),
            fanout_queue_depth: self.sessions.values().map(|s| s.unacked()).sum(),
            device_backlog: backlog,
            conversations: self.convs.len(),
        }
    }

    /// Rate buckets kept (devices plus users; bounded by [`Limits::max_rate_buckets`]).
    pub fn n_rate_buckets(&self) -> usize {
        self.rates.len()
    }

    /// Whether `session` authenticated (got `Welcome`): the shell reads requests, and verifies
    /// signatures, only for such sessions.
    pub fn is_authenticated(&self, session: SessionId) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| matches!(s.phase, Phase::Ready { .. }))
    }

    /// The metrics this core reports into.
    pub fn metrics(&self) -> &RelayMetrics {
        &self.metrics
    }
}

/// The parts of the core one fan-out pass works with.
struct FanOut<'a> {
    per_session: BTreeMap<SessionId, Vec<Outgoing>>,
    window: usize,
    user_devices: &'a HashMap<UserId, Vec<DeviceId>>,
    device_sessions: &'a HashMap<DeviceId, SessionId>,
    consent: &'a Consent,
    sessions: &'a mut BTreeMap<SessionId, Session>,
    outputs: &'a mut VecDeque<Output>,
    metrics: &'a RelayMetrics,
}

impl FanOut<'_> {
    /// Queues `item` for the online, push-enabled devices of those of `users` who accepted
    /// the conversation (an invitation's events wait for the user's acceptance).
    fn push<'u>(
        &mut self,
        users: impl Iterator<Item = &'u UserId>,
        conv: ConversationId,
        e: &StagedEvent,
        item: &Outgoing,
    ) {
        for user in users {
            if !self.consent.is_accepted(user, &conv) {
                continue;
            }
            let Some(devs) = self.user_devices.get(user) else {
                continue;
            };
            for d in devs {
                let Some(&sid) = self.device_sessions.get(d) else {
                    continue;
                };
                if sid == e.origin {
                    continue;
                }
                let Some(s) = self.sessions.get_mut(&sid) else {
                    continue;
                };
                if !s.push_on || s.pull_mode {
                    continue;
                }
                if s.unacked() >= self.window {
                    s.enter_pull_mode();
                    self.per_session.remove(&sid);
                    self.metrics.pull_mode_switch();
                    self.outputs.push_back(Output::Frame {
                        session: sid,
                        frame: ServerFrame::PullMode,
                    });
                    continue;
                }
                s.pushed(conv, e.seq);
                self.per_session.entry(sid).or_default().push(item.clone());
            }
        }
    }
}

/// The server stamp of the next event of a conversation whose last stamp is `last_ms`: the
/// clock, but never below the last stamp while that is at most `max_lead_ms` ahead of the clock
/// (small steps back keep stamps non-decreasing). A last stamp further ahead came from a clock
/// that was wrong (jumped forward, then corrected): following it would stamp every later event
/// that far ahead forever, so the stamp follows the clock again. Order is the sequence, which
/// stays strictly increasing whatever the clock does.
fn server_ts(now_ms: u64, last_ms: u64, max_lead_ms: u64) -> u64 {
    if last_ms > now_ms && last_ms - now_ms <= max_lead_ms {
        last_ms
    } else {
        now_ms
    }
}

/// Below this many conversations in a commit, statements are signed on the calling thread.
const MIN_PARALLEL_SIGN: usize = 8;

/// Decodes and verifies a Submit's envelopes together (batch ed25519): the CPU-heavy part of
/// a submit, which a shell may run off the core's thread.
pub fn verify_batch(envelopes: &[Envelope]) -> Vec<Result<Event, DecodeError>> {
    Event::decode_batch(envelopes)
}

fn frame_name(f: &ClientFrame) -> &'static str {
    match f {
        ClientFrame::Hello { .. } => "Hello",
        ClientFrame::Auth { .. } => "Auth",
        ClientFrame::RegisterDevice { .. } => "RegisterDevice",
        ClientFrame::Submit { .. } => "Submit",
        ClientFrame::Pull { .. } => "Pull",
        ClientFrame::Sync { .. } => "Sync",
        ClientFrame::Received { .. } => "Received",
        ClientFrame::Revoke { .. } => "Revoke",
        ClientFrame::Devices { .. } => "Devices",
        ClientFrame::Accept { .. } => "Accept",
        ClientFrame::Decline { .. } => "Decline",
        ClientFrame::Block { .. } => "Block",
        ClientFrame::Unblock { .. } => "Unblock",
        _ => "frame",
    }
}

#[cfg(test)]
mod tests;
