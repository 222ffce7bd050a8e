//! The device side of the protocol as a sans-IO state machine.
//!
//! [`DeviceCore`] owns the device's [`Store`] and decides everything the device does on the
//! wire: the handshake, flushing the outbox in order with backoff, pulling what was missed
//! since the stored cursor, receipts, reconnect timing. It never touches a socket or a clock.
//!
//! # Call order
//! - App actions: [`DeviceCore::send`], [`DeviceCore::mark_read`], [`DeviceCore::retry`],
//!   [`DeviceCore::create_conversation`], [`DeviceCore::network_changed`], the user's
//!   say in invitations: [`DeviceCore::accept`], [`DeviceCore::decline`],
//!   [`DeviceCore::block`], [`DeviceCore::unblock`], and the user's devices:
//!   [`DeviceCore::deposit_link`], [`DeviceCore::revoke`].
//! - Connection: when [`DeviceCore::poll_connect`] says so, the shell dials; it then calls
//!   [`DeviceCore::handle_connected`] (with the TLS exporter bytes) or
//!   [`DeviceCore::handle_connect_failed`]; each frame read goes to
//!   [`DeviceCore::handle_frame`]; a lost connection to [`DeviceCore::handle_disconnected`].
//! - Time: call [`DeviceCore::handle_timeout`] at [`DeviceCore::poll_timeout`].
//! - After every call, drain [`DeviceCore::poll_transmit`] (frames to write, in order) and
//!   [`DeviceCore::poll_event`] (what the app should show).
//!
//! An error from `handle_frame` means the connection is unusable: the shell closes it and
//! calls `handle_disconnected`.

use crate::conversation::Change;
use crate::event::{Event, MediaRef};
use crate::ids::{ConversationId, DeviceId, EventId, MessageId, ServerSeq, UserId};
use crate::log::{ChainIssue, OutboxEntry, OutboxState};
use crate::retry::RetryPolicy;
use crate::store::RefusedEvent;
use crate::store::{Outgoing, Store, StoreError};
use crate::wire::{
    sign_auth, ClientFrame, ConversationInfo, DeviceRegistration, DeviceRevocation, Envelope,
    ErrorCode, Invitation, ServerFrame, SubmitOutcome, UserChange, Welcome, MAX_FRAME_LEN,
    MAX_PAGE_ITEMS, MAX_SUBMIT_BATCH, PROTOCOL_VERSION, TLS_BINDING_LEN,
};
pub use events::{ConnectionState, DeviceEvent};
use linking::DeviceRequest;
pub use linking::RequestRefused;
use rand::{rngs::SmallRng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

/// Device protocol settings.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Outbox retries: backoff between unacknowledged submissions; a message is FAILED when
    /// they are exhausted (receipts and creations keep retrying, see `attempt_failed`).
    pub retry: RetryPolicy,
    /// Reconnect backoff (its `max_attempts` is ignored: a device never stops reconnecting).
    pub reconnect: RetryPolicy,
    /// Most events per Submit (capped by [`MAX_SUBMIT_BATCH`]).
    pub submit_batch: usize,
    /// Most items asked for per Pull (capped by [`MAX_PAGE_ITEMS`]).
    pub pull_limit: u32,
    /// Pulls of one conversation in flight at most during a catch-up (at least 1; default
    /// [`PULL_WINDOW`]).
    pub pull_window: usize,
    /// Pulls in flight at most over all conversations (at least 1; default
    /// [`MAX_PULLS_IN_FLIGHT`]), and never more than half of the relay's request window.
    pub max_pulls_in_flight: usize,
    /// A Submit without a result after this long counts as a failed attempt.
    pub ack_timeout_ms: u64,
    /// The user-signed statement that adds this device to its user, sent when the relay does
    /// not know the device yet.
    pub registration: Option<DeviceRegistration>,
    /// The history policy ([`crate::history`]) set on the store; `None` keeps its config's.
    pub history: Option<crate::history::HistoryPolicy>,
    /// Whether [`DeviceCore::mark_read`] tells the conversation (a `Read` event: the senders'
    /// blue ticks, and the user's other devices' unread counts). Off, the device keeps its read
    /// mark to itself ([`crate::log::local_read_key`]); by WhatsApp's rule the app then shows
    /// others' READ as DELIVERED too (the replica does).
    pub read_receipts: bool,
    /// After how long a FAILED message is reported ([`DeviceEvent::FailedExpired`], once per
    /// failure and process); `None` (the default) reports none. Nothing is dropped on its
    /// own: the app decides ([`DeviceCore::discard_failed`] or [`DeviceCore::retry`]).
    pub failed_report_after_ms: Option<u64>,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            retry: RetryPolicy::default(),
            reconnect: RetryPolicy {
                base_ms: 500,
                max_ms: 30_000,
                max_attempts: u32::MAX,
                jitter_pct: 20,
            },
            submit_batch: 256,
            pull_limit: MAX_PAGE_ITEMS as u32,
            pull_window: PULL_WINDOW,
            max_pulls_in_flight: MAX_PULLS_IN_FLIGHT,
            ack_timeout_ms: 10_000,
            registration: None,
            history: None,
            read_receipts: true,
            failed_report_after_ms: None,
        }
    }
}

/// Why the connection must be dropped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The relay is not the one this device pins.
    #[error("relay key {got} is not the pinned {expected}")]
    WrongRelay {
        /// Pinned.
        expected: DeviceId,
        /// Presented.
        got: DeviceId,
    },
    /// The relay ended the session.
    #[error("relay closed the session: {code:?}: {message}")]
    Closed {
        /// Code.
        code: ErrorCode,
        /// Message.
        message: String,
    },
    /// A frame that makes no sense at this point.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// [`DeviceCore::deposit_link`] with a bundle over [`crate::link::MAX_LINK_BUNDLE_LEN`].
    #[error("link bundle too large: {len} bytes, the limit is {max}")]
    LinkTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// [`DeviceCore::revoke`] with a revocation that is not this user's, or does not verify.
    #[error("the revocation of device {device} is not signed by this device's user")]
    BadRevocation {
        /// The device it names.
        device: DeviceId,
    },
}

impl From<crate::log::LogError> for DeviceError {
    fn from(e: crate::log::LogError) -> Self {
        DeviceError::Store(e.into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Offline,
    AwaitChallenge,
    AwaitWelcome,
    AwaitRegistered,
    Ready,
}

/// The events of a page, a push or a submit answer and the relay statements that place them,
/// each decoded with its signature checked (or why it failed). Whether a statement is the
/// pinned relay's and places the events is checked by the core.
#[derive(Debug, Default)]
pub struct VerifiedItems {
    events: Vec<Result<Event, crate::event::DecodeError>>,
    records: Vec<Result<Event, crate::event::DecodeError>>,
}

impl VerifiedItems {
    /// Decodes and verifies every envelope: one signature per event, one per statement
    /// (however many events it places).
    pub fn verify(events: &[Envelope], records: &[Envelope]) -> VerifiedItems {
        VerifiedItems {
            events: Event::decode_batch(events),
            records: Event::decode_batch(records),
        }
    }
}

/// A relay frame whose event signatures were checked by [`DeviceCore::prepare`].
#[derive(Debug)]
pub struct PreparedFrame {
    frame: ServerFrame,
    items: VerifiedItems,
}

/// The user's say in an invitation or about another user, sent to the relay, which keeps it
/// for every device of the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserAction {
    Accept(ConversationId),
    Decline(ConversationId),
    Block(UserId),
    Unblock(UserId),
}

/// An outstanding request that expects a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    Sync,
    /// A later page of the Sync answer.
    SyncPage,
    /// Answered by `UserState`; sent again after a reconnect until answered.
    User(UserAction),
    /// A page of a conversation after a sequence.
    Pull(ConversationId, ServerSeq),
    /// One page of device certificates.
    Devices(DevicesAsk),
    /// A link deposit or a revocation; sent again after a reconnect until answered.
    Device(DeviceRequest),
}

/// A `Devices` request in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DevicesAsk {
    /// The users asked, in order.
    users: Vec<UserId>,
    /// Those whose complete answer settles a waiting gate (see [`Store::absorb_devices`]).
    settles: Vec<UserId>,
    /// Where the first user's devices start (a continuation page).
    after: Option<DeviceId>,
    /// Past this with no answer, the ask counts as failed.
    deadline_ms: u64,
}

/// How many times a device asks the relay for a user's certificates, for a gate waiting at
/// that user's event, and gets an answer that is not the complete one (a refusal, or a page
/// that moves nothing forward) before that event gets its final verdict,
/// [`crate::gate::Refusal::Unanswered`]. A refusal the relay marks as passing
/// (`RATE_LIMITED`, `INTERNAL`, `SHUTTING_DOWN`) counts a quarter. Asks lost with their
/// connection or unanswered within the ack timeout are asked again without counting: an
/// honest network failure must not refuse an honest event (a relay that stays silent is
/// withholding, like a relay that does not deliver an event). Counted per process.
pub const MAX_DEVICE_ASKS: u32 = 4;
/// Wait before asking again after a failed ask; doubled after each one, at most
/// [`MAX_DEVICE_ASK_RETRY_MS`].
pub const DEVICE_ASK_RETRY_MS: u64 = 1_000;
/// Longest wait between two asks for the same user.
pub const MAX_DEVICE_ASK_RETRY_MS: u64 = 60_000;
/// Quarter-ask units: see [`MAX_DEVICE_ASKS`].
const ASK_UNITS: u32 = 4;
/// Pulls of one conversation in flight at most, by default ([`DeviceConfig::pull_window`]): a
/// catch-up pays one round trip per `PULL_WINDOW` pages instead of one per page (a phone on a
/// slow link with thousands of events to fetch).
pub const PULL_WINDOW: usize = 4;
/// Pulls in flight over all conversations at most, by default
/// ([`DeviceConfig::max_pulls_in_flight`]). The relay reads a connection's requests in order
/// and a window of them at a time, so every request made during a catch-up (the certificates
/// that open a gate, a Submit of the user's message) waits behind the pulls sent before it:
/// with a pull per conversation sent at once, behind the whole catch-up. Conversations
/// waiting for a pull are served in turn.
pub const MAX_PULLS_IN_FLIGHT: usize = 8;

/// The pulls of one conversation in flight.
#[derive(Debug, Default, Clone, Copy)]
struct Pulls {
    in_flight: usize,
    /// Every sequence up to here is asked for (or answered).
    asked_to: ServerSeq,
    /// One pull is due whatever the announced target says (a gap a push revealed, the first
    /// pull of a catch-up).
    owed: bool,
    /// In `pull_turns`, waiting for its turn.
    in_turn: bool,
}

#[derive(Debug)]
struct Inflight {
    request_id: u64,
    entries: Vec<OutboxEntry>,
    deadline_ms: u64,
}

/// The device's protocol state machine. See the module docs for the call order.
#[derive(Debug)]
pub struct DeviceCore {
    store: Store,
    config: DeviceConfig,
    relay: DeviceId,
    rng: SmallRng,
    state: State,
    online_hint: bool,
    reconnect_attempts: u32,
    next_connect_ms: u64,
    tls_binding: [u8; TLS_BINDING_LEN],
    next_request: u64,
    inflight: Option<Inflight>,
    requests: HashMap<u64, Request>,
    /// Per conversation being caught up on: the pulls in flight.
    pulling: HashMap<ConversationId, Pulls>,
    /// Conversations waiting for a pull, in turn (see [`MAX_PULLS_IN_FLIGHT`]).
    pull_turns: VecDeque<ConversationId>,
    /// Pulls in flight over all conversations.
    pulls_in_flight: usize,
    /// This session's bound on `pulls_in_flight`: the config's, within the relay's window.
    pull_budget: usize,
    /// The largest frame body the relay reads (its `Welcome`), within [`MAX_FRAME_LEN`].
    frame_limit: usize,
    sync_sent: bool,
    targets: HashMap<ConversationId, ServerSeq>,
    /// Per conversation, a sequence up to which the log holds no message of another user
    /// above this device's delivered mark (saves rescanning on every cursor move).
    checked_for_delivery: HashMap<ConversationId, ServerSeq>,
    /// FAILED messages already reported as expired: (event, when it failed).
    failed_reported: HashSet<(EventId, u64)>,
    /// Chain gaps already reported (each once per process).
    reported_gaps: HashSet<(ConversationId, DeviceId, u64)>,
    /// Sequences already reported as withheld (a receipt covers them, the log lacks them).
    reported_withheld: HashSet<(ConversationId, ServerSeq)>,
    /// Removals held ahead of a gate already reported (each once per process).
    reported_removals: HashSet<EventId>,
    /// Conversations the relay listed in this connection's Sync, with their sequence then:
    /// only there does a receipt past what the log holds mean withholding (a removed member's
    /// device keeps receipts it got pushed but may no longer pull what came before them).
    synced: HashMap<ConversationId, ServerSeq>,
    /// Whether this session's catch-up was checked for chain gaps.
    gaps_checked: bool,
    /// Conversations with a history gap recorded in this process (see `report_gaps`).
    gap_conversations: BTreeSet<ConversationId>,
    /// Per conversation, the relay time before which this device does not take bodies (its
    /// history policy at its first catch-up; see `history_since`).
    history_since: HashMap<ConversationId, u64>,
    /// Whether this session asked for the members' device certificates.
    directory_asked: bool,
    /// Users the relay answered for completely since this core started: messages no longer
    /// wait for their certificates (see `held_for_devices`).
    heard_of: HashSet<UserId>,
    /// Users whose ask this connection gave up on (refused, no progress, past its deadline):
    /// messages go without waiting for them until the next connection asks again.
    gave_up_on: HashSet<UserId>,
    /// Per user this device brought into a conversation: the first request id whose answer
    /// about them counts (one sent before the relay placed the `Create` or `AddMember` was
    /// answered with nothing, as about a stranger).
    counts_from: HashMap<UserId, u64>,
    /// Conversations whose messages the last flush held for a member's certificates.
    held: HashSet<ConversationId>,
    /// Users whose certificates a request in flight asks for, to settle a waiting gate.
    asking: HashSet<UserId>,
    /// Failed asks per user for a waiting gate (see [`MAX_DEVICE_ASKS`]), kept across
    /// connections.
    failed_asks: HashMap<UserId, u32>,
    /// Users to ask about again, and when.
    reask: BTreeMap<UserId, u64>,
    /// Epoch keys asked for in this process (each once, until a refused share makes a key
    /// worth asking for again; a restart asks again).
    keys_requested: HashSet<(ConversationId, EventId)>,
    /// Pending invitations, as the relay last listed them (and changed since).
    invitations: BTreeMap<ConversationId, Invitation>,
    /// Users this user blocks, as the relay last listed them.
    blocked: BTreeSet<UserId>,
    /// User actions waiting for a connection (in memory: they also reach the relay through
    /// any other device the user acts on).
    user_actions: VecDeque<UserAction>,
    /// Link deposits and revocations waiting for a connection.
    device_requests: VecDeque<DeviceRequest>,
    transmit: VecDeque<ClientFrame>,
    events: VecDeque<DeviceEvent>,
}

pub(crate) fn cursor_key(conversation: &ConversationId) -> Vec<u8> {
    let mut k = b"pull/".to_vec();
    k.extend_from_slice(&conversation.0);
    k
}

/// The log's cursor holding when this device, under a history policy other than `All`, first
/// caught up on a conversation it held nothing of (Unix ms, its clock): the time the policy
/// counts back from.
pub(crate) const JOINED_KEY: &[u8] = b"history/joined";

/// The log's cursor holding a conversation's history bound (see `DeviceCore::history_since`).
pub(crate) fn since_key(conversation: &ConversationId) -> Vec<u8> {
    let mut k = b"since/".to_vec();
    k.extend_from_slice(&conversation.0);
    k
}

impl DeviceCore {
    /// A device over `store`, pinning `relay` (the relay's DeviceId). `seed` drives jitter.
    ///
    /// The first events are the chain reports the log holds (forks, broken links,
    /// equivocations, head mismatches, see [`crate::EventLog::chain_reports`]): a report is
    /// given at least once, even when the process that found it died before the app took it.
    pub fn new(mut store: Store, relay: DeviceId, config: DeviceConfig, seed: u64) -> DeviceCore {
        if let Some(policy) = config.history {
            store.set_history_policy(policy);
        }
        let events = match store.log().chain_reports() {
            Ok(reports) => reports.into_iter().map(DeviceEvent::Chain).collect(),
            Err(err) => {
                tracing::warn!(%err, "chain reports unreadable; not reported again");
                VecDeque::new()
            }
        };
        DeviceCore {
            store,
            config,
            relay,
            rng: SmallRng::seed_from_u64(seed),
            state: State::Offline,
            online_hint: true,
            reconnect_attempts: 0,
            next_connect_ms: 0,
            tls_binding: [0; TLS_BINDING_LEN],
            next_request: 1,
            inflight: None,
            requests: HashMap::new(),
            pulling: HashMap::new(),
            pull_turns: VecDeque::new(),
            pulls_in_flight: 0,
            pull_budget: 1,
            frame_limit: MAX_FRAME_LEN,
            sync_sent: false,
            targets: HashMap::new(),
            reported_gaps: HashSet::new(),
            reported_withheld: HashSet::new(),
            reported_removals: HashSet::new(),
            synced: HashMap::new(),
            gaps_checked: false,
            gap_conversations: BTreeSet::new(),
            history_since: HashMap::new(),
            directory_asked: false,
            asking: HashSet::new(),
            heard_of: HashSet::new(),
            gave_up_on: HashSet::new(),
            counts_from: HashMap::new(),
            held: HashSet::new(),
            failed_asks: HashMap::new(),
            reask: BTreeMap::new(),
            keys_requested: HashSet::new(),
            checked_for_delivery: HashMap::new(),
            failed_reported: HashSet::new(),
            invitations: BTreeMap::new(),
            blocked: BTreeSet::new(),
            user_actions: VecDeque::new(),
            device_requests: VecDeque::new(),
            transmit: VecDeque::new(),
            events,
        }
    }

    /// The relay this device pins (whose statements it trusts).
    pub fn relay(&self) -> DeviceId {
        self.relay
    }

    /// The store (for reads).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store (for reads that load documents).
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Where the connection stands.
    pub fn connection(&self) -> ConnectionState {
        match self.state {
            State::Offline => ConnectionState::Offline,
            State::AwaitChallenge | State::AwaitWelcome | State::AwaitRegistered => {
                ConnectionState::Authenticating
            }
            State::Ready if self.caught_up() => ConnectionState::Online,
            State::Ready => ConnectionState::Syncing,
        }
    }

    fn caught_up(&self) -> bool {
        self.sync_sent && self.requests.is_empty() && self.pulling.is_empty()
    }

    // ---- app actions ----

    /// The operating system's connectivity signal. Going online retries at once: the
    /// reconnect backoff and every queued entry's backoff are cut short.
    pub fn network_changed(&mut self, online: bool, now_ms: u64) -> Result<(), DeviceError> {
        self.online_hint = online;
        if online {
            self.reconnect_attempts = 0;
            self.next_connect_ms = now_ms;
            let waiting: Vec<OutboxEntry> = self
                .store
                .outbox_entries()?
                .filter(|e| e.state == OutboxState::Queued && e.next_attempt_ms > now_ms)
                .cloned()
                .collect();
            for mut entry in waiting {
                entry.next_attempt_ms = now_ms;
                let changes = self.store.update_outbox(&entry)?;
                self.emit(changes);
            }
            self.flush(now_ms)?;
        }
        Ok(())
    }

    // ---- connection ----

    /// Whether the shell should dial the relay now.
    pub fn poll_connect(&self, now_ms: u64) -> bool {
        self.state == State::Offline && self.online_hint && now_ms >= self.next_connect_ms
    }

    /// The dial failed.
    pub fn handle_connect_failed(&mut self, now_ms: u64) {
        self.reconnect_attempts = self.reconnect_attempts.saturating_add(1);
        let delay = self
            .config
            .reconnect
            .delay_ms(self.reconnect_attempts, &mut self.rng);
        self.next_connect_ms = now_ms + delay;
    }

    /// A connection is up; `tls_binding` is the exporter output of its TLS session.
    pub fn handle_connected(&mut self, tls_binding: [u8; TLS_BINDING_LEN], _now_ms: u64) {
        self.reset_session();
        self.tls_binding = tls_binding;
        self.state = State::AwaitChallenge;
        let key = self.store.key();
        self.transmit.push_back(ClientFrame::Hello {
            protocol_version: PROTOCOL_VERSION,
            device: key.device(),
            user: key.user(),
        });
        self.events
            .push_back(DeviceEvent::Connection(ConnectionState::Authenticating));
    }

    /// The connection is gone. What was in flight counts as an unacknowledged attempt.
    pub fn handle_disconnected(&mut self, now_ms: u64) -> Result<(), DeviceError> {
        if self.state == State::Offline {
            return Ok(());
        }
        let inflight = self.inflight.take();
        self.reset_session();
        self.state = State::Offline;
        self.handle_connect_failed(now_ms);
        if let Some(f) = inflight {
            for e in f.entries {
                self.attempt_failed(e, now_ms)?;
            }
        }
        self.events
            .push_back(DeviceEvent::Connection(ConnectionState::Offline));
        Ok(())
    }

    fn reset_session(&mut self) {
        self.inflight = None;
        // Unanswered user actions go again on the next connection, in their order.
        let mut unanswered: Vec<(u64, UserAction)> = self
            .requests
            .iter()
            .filter_map(|(id, r)| match r {
                Request::User(a) => Some((*id, *a)),
                _ => None,
            })
            .collect();
        unanswered.sort_by_key(|(id, _)| *id);
        for (_, a) in unanswered.into_iter().rev() {
            self.user_actions.push_front(a);
        }
        let mut unanswered: Vec<(u64, DeviceRequest)> = self
            .requests
            .iter()
            .filter_map(|(id, r)| match r {
                Request::Device(d) => Some((*id, d.clone())),
                _ => None,
            })
            .collect();
        unanswered.sort_by_key(|(id, _)| *id);
        for (_, d) in unanswered.into_iter().rev() {
            self.device_requests.push_front(d);
        }
        self.requests.clear();
        self.pulling.clear();
        self.pull_turns.clear();
        self.pulls_in_flight = 0;
        self.sync_sent = false;
        self.gaps_checked = false;
        self.synced.clear();
        self.directory_asked = false;
        self.asking.clear();
        self.gave_up_on.clear();
        self.transmit.clear();
    }

    /// A frame from the relay. Same as [`DeviceCore::prepare`] then
    /// [`DeviceCore::handle_prepared`].
    pub fn handle_frame(&mut self, frame: ServerFrame, now_ms: u64) -> Result<(), DeviceError> {
        self.handle_prepared(Self::prepare(frame), now_ms)
    }

    /// Checks the signatures of a frame's events: the CPU-heavy part of handling a page or a
    /// push, pure, so a shell can run it on another thread than the one driving the core.
    pub fn prepare(mut frame: ServerFrame) -> PreparedFrame {
        let items = match &mut frame {
            ServerFrame::Page {
                events, records, ..
            }
            | ServerFrame::HistoryGap {
                events, records, ..
            }
            | ServerFrame::Push { events, records } => {
                let v = VerifiedItems::verify(events, records);
                events.clear();
                records.clear();
                v
            }
            ServerFrame::SubmitResult { records, .. } => {
                let v = VerifiedItems::verify(&[], records);
                records.clear();
                v
            }
            _ => VerifiedItems::default(),
        };
        PreparedFrame { frame, items }
    }

    /// A frame from [`DeviceCore::prepare`].
    pub fn handle_prepared(
        &mut self,
        prepared: PreparedFrame,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        self.handle_prepared_inner(prepared, now_ms)?;
        self.after_frame(now_ms)
    }

    /// Key work after a frame: answers the key requests it brought, and once caught up asks
    /// for the keys of messages still waiting for one (once per epoch and session).
    fn after_frame(&mut self, now_ms: u64) -> Result<(), DeviceError> {
        let mut changes = self.store.answer_key_requests(now_ms)?;
        if self.state == State::Ready && self.caught_up() {
            for (conversation, epoch) in self.store.missing_keys() {
                if self.keys_requested.insert((conversation, epoch)) {
                    tracing::info!(%conversation, %epoch, "asking for a missing epoch key");
                    changes.extend(self.store.request_key(conversation, epoch, now_ms)?);
                }
            }
        }
        if !changes.is_empty() {
            self.emit(changes);
        }
        self.flush(now_ms)
    }

    fn emit_outcome(&mut self, out: crate::store::ApplyOutcome, now_ms: u64) {
        for issue in out.chain_issues {
            tracing::warn!(?issue, "break in an author's chain");
            self.events.push_back(DeviceEvent::Chain(issue));
        }
        for refused in out.directory_refused {
            tracing::warn!(%refused, "ignored a device statement the relay served");
            self.events.push_back(DeviceEvent::Directory(refused));
        }
        for refused in out.refused {
            tracing::warn!(conversation = %refused.conversation, event = %refused.event,
                author = %refused.author, kind = refused.kind, reason = %refused.refusal,
                "ignored an event the relay sequenced");
            self.events.push_back(DeviceEvent::Ignored(refused));
        }
        for removal in out.removals_ahead {
            if self.reported_removals.insert(removal.event) {
                tracing::warn!(conversation = %removal.conversation, user = %removal.user,
                    event = %removal.event, seq = ?removal.seq,
                    "holding a removal the gate cannot place yet: no new keys for that user");
                self.events.push_back(DeviceEvent::RemovalAhead(removal));
            }
        }
        for refused in out.refused_keys {
            // Asked again once caught up: the answer of a member whose key matches is taken
            // in, however many wrong ones came first (each one costs its sender an event).
            self.keys_requested
                .remove(&(refused.conversation, refused.epoch));
            self.events.push_back(DeviceEvent::KeyShareRefused(refused));
        }
        self.emit(out.changes);
        if self.state == State::Ready {
            let users: Vec<UserId> = out
                .waiting
                .into_iter()
                .filter(|u| self.asking.insert(*u))
                .collect();
            if !users.is_empty() {
                self.ask_devices(users.clone(), users, None, now_ms);
            }
        }
    }

    // ---- the outbox ----

    /// Stores the events of a page or a push that the frame's relay statements place (with
    /// those statements), advances each conversation's gap-free cursor, tells the relay, and
    /// sends one cumulative Delivered receipt per conversation for messages of other users.
    /// Takes in verified relay items (a page, a push, a gap answer's kept events): stores and
    /// folds them, moves the cursors, authors the Delivered receipts due, all made durable by
    /// one fsync at the end; only then is the outbox offered. Frames queued meanwhile (the
    /// `Received` claims) are dropped if that fsync fails: nothing claims what is not on disk.
    fn on_items(&mut self, items: VerifiedItems, now_ms: u64) -> Result<(), DeviceError> {
        if items.events.is_empty() && items.records.is_empty() {
            return Ok(());
        }
        let queued = self.transmit.len();
        let outer = self.store.defer_sync();
        let taken = self.take_items(items, now_ms);
        if let Err(e) = self.store.end_deferred(outer) {
            self.transmit.truncate(queued);
            return Err(e.into());
        }
        taken?;
        self.flush(now_ms)
    }

    fn take_items(&mut self, items: VerifiedItems, now_ms: u64) -> Result<(), DeviceError> {
        let placed = self.placed(items.records);
        let mut accepted = Vec::with_capacity(items.events.len() + placed.statements.len());
        // Per conversation: sequences received in this batch.
        let mut seqs: BTreeMap<ConversationId, Vec<ServerSeq>> = BTreeMap::new();
        for ev in items.events {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(error = %e, "relay sent an event that does not verify; skipped");
                    continue;
                }
            };
            match placed.places.get(&ev.id()) {
                Some((conversation, p, _)) if *conversation == ev.conversation() => {
                    seqs.entry(ev.conversation()).or_default().push(p.seq);
                    accepted.push(ev);
                }
                _ => match self.place_held(&ev)? {
                    // A peer that knows this device holds the statement leaves it out.
                    Some(seq) => {
                        seqs.entry(ev.conversation()).or_default().push(seq);
                        accepted.push(ev);
                    }
                    None => {
                        tracing::warn!(event = %ev.id(), "event no statement places; skipped");
                    }
                },
            }
        }
        accepted.extend(placed.statements);
        let out = self.store.apply(&accepted)?;
        for (id, err) in &out.rejected {
            tracing::warn!(event = %id, %err, "relay item refused by the store");
        }
        self.emit_outcome(out, now_ms);
        for (conversation, got) in seqs {
            let cursor = self.advance_cursor(conversation, now_ms)?;
            if got.iter().max().is_some_and(|last| *last > cursor) {
                // A gap: something between the cursor and what was pushed is missing.
                self.pull(conversation, cursor);
            }
            let target = self.targets.entry(conversation).or_insert(cursor);
            *target = (*target).max(cursor);
            let target = *target;
            self.events.push_back(DeviceEvent::SyncProgress {
                conversation,
                received: cursor,
                target,
            });
        }
        Ok(())
    }

    /// A gap answer's items without the statements that place only events retention dropped
    /// (neither in the answer nor in this log): this device never gets those, and storing
    /// their statements would keep their places waiting for good.
    fn gap_items(&self, mut items: VerifiedItems) -> Result<VerifiedItems, DeviceError> {
        let carried: HashSet<EventId> = items
            .events
            .iter()
            .filter_map(|e| e.as_ref().ok().map(Event::id))
            .collect();
        let log = self.store.log();
        let mut kept = Vec::with_capacity(items.records.len());
        for record in items.records {
            let Ok(st) = &record else {
                kept.push(record);
                continue;
            };
            let mut useful = false;
            for p in st.placements() {
                if carried.contains(&p.event) || log.contains(&p.event)? {
                    useful = true;
                    break;
                }
            }
            if useful {
                kept.push(record);
            }
        }
        items.records = kept;
        Ok(items)
    }

    /// The place of `ev` by a statement this log holds (stored only if signed by the pinned
    /// relay, see [`crate::Store::apply`]), when that statement places it in its own conversation.
    fn place_held(&self, ev: &Event) -> Result<Option<ServerSeq>, DeviceError> {
        let log = self.store.log();
        let Some((seq, _)) = log.ack_of(&ev.id())? else {
            return Ok(None);
        };
        let Some(statement) = log.statement_at(ev.conversation(), seq)? else {
            return Ok(None);
        };
        let Some(statement) = log.get(&statement)? else {
            return Ok(None);
        };
        let places = statement.conversation() == ev.conversation()
            && statement
                .placements()
                .iter()
                .any(|p| p.event == ev.id() && p.seq == seq);
        Ok(places.then_some(seq))
    }

    // ---- time and outputs ----

    /// Call at (or after) [`DeviceCore::poll_timeout`].
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), DeviceError> {
        if let Some(f) = self.inflight.take_if(|f| f.deadline_ms <= now_ms) {
            for e in f.entries {
                self.attempt_failed(e, now_ms)?;
            }
        }
        self.devices_timeouts(now_ms)?;
        self.report_failed(now_ms)?;
        self.erase_due(now_ms)?;
        self.flush(now_ms)
    }

    /// The next time the device wants [`DeviceCore::handle_timeout`] (or to dial).
    pub fn poll_timeout(&mut self) -> Option<u64> {
        let connection = self.connection_timeout();
        [connection, self.failed_wakeup(), self.store.erase_wakeup()]
            .into_iter()
            .flatten()
            .min()
    }

    fn connection_timeout(&mut self) -> Option<u64> {
        match self.state {
            State::Offline => self.online_hint.then_some(self.next_connect_ms),
            State::Ready => {
                let inflight = self.inflight.as_ref().map(|f| f.deadline_ms);
                let due = if self.inflight.is_none() {
                    let held = &self.held;
                    self.store
                        .outbox_entries()
                        .ok()
                        .and_then(|e| next_attempt_ms(e, held))
                } else {
                    None
                };
                [inflight, due, self.devices_wakeup()]
                    .into_iter()
                    .flatten()
                    .min()
            }
            _ => None,
        }
    }

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<ClientFrame> {
        self.transmit.pop_front()
    }

    /// The next thing the app should know.
    pub fn poll_event(&mut self) -> Option<DeviceEvent> {
        // Changes of a page's fold taken back since (see `Store::set_fold_runner`).
        self.emit(Vec::new());
        self.events.pop_front()
    }
}

mod actions;
mod directory_ask;
mod events;
mod failed;
mod frames;
mod history;
mod linking;
mod outbox;
use outbox::{next_attempt_ms, retryable};
mod peer_items;
mod relay_places;
mod retention;
mod session;
pub use relay_places::RelayPlaces;
#[cfg(test)]
mod tests;
