//! The relay's protocol logic, sans-IO: sessions and authentication, membership checks, the
//! per-conversation sequencer with group commit, device cursors, fan-out decisions and limits.
//!
//! [`RelayCore`] owns a [`Storage`] (by default the redb [`RelayStore`]; PostgreSQL for a
//! tier of relay nodes, see [`crate::storage`]) and calls it synchronously; it has no sockets, no
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
//!    and pushes are produced only after it. Submits past a full batch wait in the core and
//!    are staged round-robin by session as commits make room; while
//!    [`RelayCore::is_backlogged`], hand the core no more input.
//! 4. After every call: drain [`RelayCore::poll_output`] and deliver each frame to its
//!    session (or close it).
//! 5. The connection ends: [`RelayCore::handle_disconnect`].
//! 6. Every [`Retention::interval_secs`]: [`RelayCore::retention_plans`], then
//!    [`Storage::prune`] on them (off the core's thread), or [`RelayCore::handle_retention`]
//!    for both.
//! 7. Over a store shared by several relay nodes ([`Storage::is_shared`]): at
//!    [`RelayCore::next_tick_ms`], [`RelayCore::handle_tick`], which applies the other nodes'
//!    changes and pushes what they appended (see `feed.rs`); then drain the outputs.
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

mod blob_access;
mod commit;
mod connection;
mod consent;
mod devices;
mod fanout;
mod feed;
mod link;
mod pull;
mod rates;
mod retention;
mod sequencing;
mod session;
mod staged;
pub mod store;
mod submit;
mod user_requests;
mod waiting;

pub use blob_access::BlobAccess;
pub use commit::CommitJob;
pub use feed::CHANGE_POLL_MS;
pub use retention::{Retention, MAX_PRUNE_PLANS};
pub use store::{ChainInfo, ConversationRecord, RelayStore, StoreError};

use crate::admission::Admission;
use crate::limits::Limits;
use crate::metrics::RelayMetrics;
use crate::storage::Storage;
use consent::Consent;
use rates::RateBuckets;
use session::{Phase, Session};
use staged::{Inflight, PendingSubmit, Staged};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use tidings_engine::event::DecodeError;
use tidings_engine::wire::{
    DeviceRegistration, DeviceRevocation, Envelope, ErrorCode, ServerFrame,
};
use tidings_engine::{ConversationId, DeviceId, DeviceKey, Event, UserId};
use waiting::Waiting;

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
pub struct RelayCore<S = RelayStore> {
    store: S,
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
    /// Link bundles waiting for new devices (in memory).
    links: link::Mailbox,
    /// The shell's QUIC idle timeout, told to devices in `Welcome`.
    idle_timeout_ms: u64,
    staged: Staged,
    /// Submits waiting for room in a commit, served round-robin by session.
    waiting: Waiting,
    outputs: VecDeque<Output>,
    sign_threads: usize,
    inflight: Option<Inflight>,
    inflight_waiters: Vec<PendingSubmit>,
    /// Over a shared store: the change feed position applied to the caches.
    change_pos: crate::storage::ChangeSeq,
    /// Over a shared store: when the feed and the heads are read next (ms).
    next_poll_ms: u64,
    /// The last conversation whose head was polled, when there were more than one tick polls.
    heads_cursor: Option<ConversationId>,
    /// What the relay keeps and for how long (see `retention.rs`).
    retention: Retention,
}

#[derive(Debug)]
struct Conv {
    /// As durably stored; `None` while the Create event is only staged.
    committed: Option<ConversationRecord>,
    /// Including staged events.
    head: ConversationRecord,
    /// The sequence up to which this node pushed the conversation's events to its devices
    /// (its own commits, and over a shared store what other nodes appended).
    pushed: tidings_engine::ServerSeq,
}

impl<S: Storage> RelayCore<S> {
    /// A core over `store`, signing acks with `key` (its DeviceId is the relay's identity).
    pub fn new(store: S, key: DeviceKey, limits: Limits) -> Result<RelayCore<S>, StoreError> {
        RelayCore::with_metrics(store, key, limits, RelayMetrics::default())
    }

    /// Same as [`RelayCore::new`], reporting into `metrics`.
    pub fn with_metrics(
        store: S,
        key: DeviceKey,
        limits: Limits,
        metrics: RelayMetrics,
    ) -> Result<RelayCore<S>, StoreError> {
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
            links: link::Mailbox::default(),
            idle_timeout_ms: crate::limits::IDLE_TIMEOUT_SECS * 1000,
            staged: Staged::default(),
            waiting: Waiting::default(),
            outputs: VecDeque::new(),
            sign_threads: match limits.ack_sign_threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            inflight: None,
            inflight_waiters: Vec::new(),
            change_pos: crate::storage::ChangeSeq::default(),
            next_poll_ms: 0,
            heads_cursor: None,
            retention: Retention::default(),
        };
        // Read before loading: a change committed meanwhile is read again from the feed
        // (applying a change twice is harmless; missing one is not).
        core.change_pos = core.store.change_position()?;
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
            self.cache_conv(id, rec);
        }
        Ok(())
    }

    /// Whether the conversation is known, loading it from storage if this node has not seen
    /// it (another relay node over the same storage may have created it).
    fn ensure_conv(&mut self, id: &ConversationId) -> bool {
        if self.convs.contains_key(id) {
            return true;
        }
        match self.store.conversation(id) {
            Ok(Some(rec)) => {
                self.cache_conv(*id, rec);
                true
            }
            _ => false,
        }
    }

    /// Replaces what this node knows of a conversation by its stored record.
    fn cache_conv(&mut self, id: ConversationId, rec: ConversationRecord) {
        self.set_committed(id, rec, true);
    }

    /// Sets a conversation's committed record (and its members' lists); with `head`, its
    /// head too (not while events of it are staged or being written: they were sequenced
    /// after the old head, and their commit settles it).
    fn set_committed(&mut self, id: ConversationId, rec: ConversationRecord, head: bool) {
        let old = self.convs.get(&id).and_then(|c| c.committed.as_ref());
        for m in old.into_iter().flat_map(|r| r.membership.members()) {
            if !rec.membership.is_member(m) {
                if let Some(set) = self.user_convs.get_mut(m) {
                    set.remove(&id);
                }
            }
        }
        for m in rec.membership.members() {
            self.user_convs.entry(*m).or_default().insert(id);
        }
        match self.convs.get_mut(&id) {
            Some(conv) => {
                if head {
                    conv.head = rec.clone();
                }
                conv.committed = Some(rec);
            }
            None => {
                self.convs.insert(
                    id,
                    Conv {
                        committed: Some(rec.clone()),
                        pushed: rec.max_seq,
                        head: rec,
                    },
                );
            }
        }
    }

    /// Reads the given conversations' heads again after a failed commit: another node may
    /// have appended to them (a [`StoreError::Conflict`]), and a head left stale would make
    /// every later commit to them conflict the same way.
    fn refresh_convs(&mut self, ids: &[ConversationId]) {
        for id in ids {
            if let Ok(Some(rec)) = self.store.conversation(id) {
                self.cache_conv(*id, rec);
            }
        }
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

    /// Tells the core the QUIC idle timeout its shell runs connections with (default
    /// [`crate::limits::IDLE_TIMEOUT_SECS`]): devices learn it in `Welcome` and may keep their
    /// connection alive just often enough for it.
    pub fn set_idle_timeout_ms(&mut self, ms: u64) {
        self.idle_timeout_ms = ms.max(1);
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The store (read access, for tests and metrics).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Drops all in-memory state, staged work included, and gives the store back: what a
    /// crash leaves behind.
    pub fn into_store(self) -> S {
        self.store
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

/// Decodes and verifies a Submit's envelopes together (batch ed25519): the CPU-heavy part of
/// a submit, which a shell may run off the core's thread.
pub fn verify_batch(envelopes: &[Envelope]) -> Vec<Result<Event, DecodeError>> {
    Event::decode_batch(envelopes)
}

#[cfg(test)]
mod link_tests;
#[cfg(test)]
mod tests;
