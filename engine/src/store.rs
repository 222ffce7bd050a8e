//! A device's store: the event log plus the conversations folded from it.
//!
//! Call order: author local actions with [`Store::send`], [`Store::send_all`],
//! [`Store::mark_read`], [`Store::mark_delivered`], [`Store::create_conversation`] (each one
//! durable commit, one fsync, covering every event it writes with its outbox entry: a send that
//! first shares its epoch key, or a batch of sends); hand verified remote events to
//! [`Store::apply`]; read with
//! [`Store::conversation`] (full view, loads every document of the conversation: O(history)) or
//! [`Store::latest`] (index tables only, cheap whatever the history). Each call returns the [`Change`]s to show.

use crate::conversation::{Change, Conversation, MessageView};
use crate::directory::{Certified, DeviceDirectory, DirectoryRefusal, Revoked};
use crate::doc::{ConversationDoc, DocError, PartId};
use crate::event::{DecodeError, Event, EventKind, MediaRef};
use crate::gate::{AuthorLookup, Refusal};
use crate::identity::DeviceKey;
use crate::ids::{ConversationId, DeviceId, EventId, MessageId, ServerSeq, UserId};
use crate::log::{
    Appended, ChainIssue, EventLog, GateRun, LogError, LogTxn, OutboxEntry, OutboxState,
};
use crate::wire::{DeviceRegistration, DeviceRevocation};
use automerge::ActorId;
use rand::{rngs::StdRng, SeedableRng};

mod directory;
mod documents;
use documents::Loaded;
mod early;
mod evidence;
mod failed;
mod history;
mod holds;
mod keys;
mod media;
mod offload;
mod outbox_cache;
mod read;
mod retention;
pub use evidence::{RemovalEvidence, MAX_EVIDENCE_SCAN};
pub use failed::MAX_DISCARD_BATCH;
pub use offload::{FoldDone, FoldHandle, FoldJob, FoldRunner, OFFLOAD_MIN_EVENTS};
pub use read::{MessageReader, Rendered};
#[cfg(test)]
mod tests;
pub use keys::{Body, KeyShareRefusal, RefusedKeyShare};
use std::collections::{HashMap, HashSet};

/// Documents kept in memory at once; the least recently used one is snapshotted and dropped.
pub const MAX_LOADED_DOCS: usize = 256;
/// A conversation's documents are snapshotted after at least this many folded events; only the
/// documents written since their last snapshot are saved, so the cost stays proportional to
/// the work folded.
pub const SNAPSHOT_EVERY: u64 = 1_000;
/// Most messages one [`Store::send_all`] takes: one durable commit covers them all, and the
/// first caller of a batch waits for the last message's work, so the batch stays short.
pub const MAX_SEND_BATCH: usize = 256;

/// Store settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Keys whose `Sequenced` statements (and legacy `ServerAck`s) are trusted (the pinned
    /// relay keys).
    pub sequencers: Vec<DeviceId>,
    /// See [`MAX_LOADED_DOCS`].
    pub max_loaded_docs: usize,
    /// See [`SNAPSHOT_EVERY`].
    pub snapshot_every: u64,
    /// Whether message bodies are encrypted end to end (on unless measuring the cost).
    pub encrypt: bool,
    /// How much history this device hands a new device of its user, and takes from one.
    pub history: crate::history::HistoryPolicy,
    /// Smallest page whose fold leaves as a job when a fold runner is set (see
    /// [`OFFLOAD_MIN_EVENTS`]; the simulator lowers it to exercise the path).
    pub offload_min_events: usize,
}

impl StoreConfig {
    /// Defaults, trusting acks from `sequencer`.
    pub fn new(sequencer: DeviceId) -> StoreConfig {
        StoreConfig {
            sequencers: vec![sequencer],
            max_loaded_docs: MAX_LOADED_DOCS,
            snapshot_every: SNAPSHOT_EVERY,
            encrypt: true,
            history: crate::history::HistoryPolicy::All,
            offload_min_events: OFFLOAD_MIN_EVENTS,
        }
    }
}

/// Why the store refused something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// History keys refused as a whole (see [`crate::history`]).
    #[error(transparent)]
    History(#[from] crate::history::HistoryRefusal),
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A media body over its limits (descriptors, thumbnail, mime type).
    #[error(transparent)]
    Media(#[from] crate::media::MediaError),
    /// A document could not be used (and the log could not rebuild it).
    #[error(transparent)]
    Doc(#[from] DocError),
    /// An event could not be built.
    #[error(transparent)]
    Event(#[from] DecodeError),
    /// A `Sequenced` statement or `ServerAck` not signed by a trusted relay key.
    #[error("server ack {event} signed by untrusted key {author}")]
    UntrustedAck {
        /// The ack event.
        event: EventId,
        /// Its author.
        author: DeviceId,
    },
    /// No such message in the outbox.
    #[error("message {0} is not in the outbox")]
    NotInOutbox(MessageId),
    /// The message is in the outbox but not FAILED (its retries have not run out): only a
    /// FAILED message may be discarded.
    #[error("message {0} is not FAILED")]
    NotFailed(MessageId),
    /// More messages than [`MAX_SEND_BATCH`] for one [`Store::send_all`], or than
    /// [`MAX_DISCARD_BATCH`] for one [`Store::discard_failed`].
    #[error("{len} messages in one send batch, over the limit of {max}")]
    BatchTooLarge {
        /// Messages in the batch.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The durable commit that ended a [`Store::send_all`] failed: whether the batch's
    /// messages are on disk is unknown (a later commit may still write them). The store
    /// dropped what it cached, so reads show what the log holds.
    #[error("the send batch's durable commit failed: {detail}")]
    Unsynced {
        /// The storage error.
        detail: String,
    },
    /// An epoch key this device should hold is missing.
    #[error("no key for epoch {0}")]
    NoKey(EventId),
    /// A retention policy outside its limits.
    #[error(transparent)]
    Policy(crate::retention::PolicyError),
    /// A message body longer than [`crate::e2ee::MAX_PLAINTEXT_LEN`].
    #[error("message body of {len} bytes is over the limit of {max}")]
    BodyTooLarge {
        /// The body's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// What [`Store::apply`] did with a batch.
#[derive(Debug, Default)]
pub struct ApplyOutcome {
    /// Visible changes.
    pub changes: Vec<Change>,
    /// Events stored for the first time.
    pub n_new: usize,
    /// Events already stored.
    pub n_duplicate: usize,
    /// Events refused, with the reason.
    pub rejected: Vec<(EventId, StoreError)>,
    /// Own events the relay acknowledged in this batch (they left the outbox).
    pub acked: Vec<EventId>,
    /// Breaks in authors' chains these events revealed.
    pub chain_issues: Vec<ChainIssue>,
    /// Sequenced events this device's own checks refused (see [`crate::gate`]): stored as
    /// evidence, never shown.
    pub refused: Vec<RefusedEvent>,
    /// Users whose device certificates a conversation's gate waits for: ask the relay
    /// (`Devices`) and hand the answer to [`Store::absorb_devices`].
    pub waiting: Vec<UserId>,
    /// Conversations whose gate moved forward (receipts may be due).
    pub gated: Vec<ConversationId>,
    /// Device statements the relay served that this device's directory refused (a
    /// certificate changing a device's agreement key, a foreign revocation, ...): ignored,
    /// reported.
    pub directory_refused: Vec<DirectoryRefusal>,
    /// Epoch-key shares that opened here but were refused (see [`RefusedKeyShare`]): their
    /// epochs are still missing and worth asking for again.
    pub refused_keys: Vec<RefusedKeyShare>,
    /// Removals this device holds, verified, in the batch's conversations, that the gate
    /// cannot place yet (see [`Store::removals_ahead`]): no new epoch key goes to those users
    /// meanwhile. Listed after every batch while they last.
    pub removals_ahead: Vec<RemovalEvidence>,
    /// Events a peer handed over before the relay placed them that the gate's rules refuse
    /// now ([`Store::apply_early`]): kept out of sight, judged again at their place.
    pub held_early: Vec<RefusedEvent>,
}

/// One message for [`Store::send_all`].
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Its conversation.
    pub conversation: ConversationId,
    /// The body (at most [`crate::e2ee::MAX_PLAINTEXT_LEN`] bytes).
    pub body: Vec<u8>,
    /// Media it references.
    pub media: Vec<MediaRef>,
}

/// What [`Store::send`] returns for one message: the event and the changes to show.
pub type Sent = (Event, Vec<Change>);

/// An event the device refused after the relay sequenced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedEvent {
    /// Its conversation.
    pub conversation: ConversationId,
    /// The event.
    pub event: EventId,
    /// Its author device.
    pub author: DeviceId,
    /// Its kind's name.
    pub kind: &'static str,
    /// Why.
    pub refusal: Refusal,
}

/// The store generator's seed: the caller's entropy, the log's incarnation (persisted, raised
/// at every open) and the device, hashed together.
fn rng_seed(entropy: &[u8; 32], incarnation: u64, device: DeviceId) -> [u8; 32] {
    let mut input = Vec::with_capacity(32 + 8 + 32);
    input.extend_from_slice(entropy);
    input.extend_from_slice(&incarnation.to_be_bytes());
    input.extend_from_slice(&device.0);
    blake3::derive_key("tidings store rng v1", &input)
}

/// The log and the folded conversations of one device.
#[derive(Debug)]
pub struct Store {
    log: EventLog,
    key: DeviceKey,
    config: StoreConfig,
    docs: HashMap<ConversationId, Loaded>,
    tick: u64,
    /// Mirror of the outbox table, loaded on first use: the device core consults the outbox
    /// on every wake-up, and it changes only through this store.
    outbox: Option<outbox_cache::OutboxCache>,
    /// Verified device certificates and revocations, loaded from the log on first use.
    directory: Option<DeviceDirectory>,
    /// Conversations whose gate waits for a user's certificates.
    waiting: HashSet<ConversationId>,
    /// Randomness for keys and nonces.
    rng: StdRng,
    /// Seals what the device keeps at rest (epoch keys).
    storage: crate::crypto::StorageKey,
    /// Epoch keys, per conversation, loaded on first use.
    epochs: keys::EpochCache,
    /// Epochs of folded messages whose key is missing.
    missing: std::collections::BTreeSet<(ConversationId, EventId)>,
    /// Key requests folded and not answered yet: (conversation, epoch, device, user).
    key_requests: Vec<(ConversationId, EventId, DeviceId, UserId)>,
    /// Epoch-key shares refused since the last [`ApplyOutcome`].
    refused_keys: Vec<RefusedKeyShare>,
    /// Inside [`Store::durably`]: events are committed without an fsync...
    deferred: bool,
    /// ... and one is owed at its end.
    unsynced: bool,
    /// Conversations the next erasure pass looks at, and when messages are due.
    eraser: retention::Eraser,
    /// A relay page's fold running beside the rest of the page (see `store/offload.rs`).
    offload: offload::Offload,
}

/// A log transaction committed without an fsync when `lazy` (inside a deferred scope, which
/// then owes one: the caller marks it), durably otherwise.
fn commit<T>(
    log: &EventLog,
    lazy: bool,
    f: impl FnOnce(&mut LogTxn<'_>) -> Result<T, LogError>,
) -> Result<T, LogError> {
    if lazy {
        log.write_lazy(f)
    } else {
        log.write(f)
    }
}

impl Store {
    /// A store over `log`, authoring as `key`.
    ///
    /// `entropy` seeds every random value the store makes (epoch keys, X25519 ephemerals,
    /// nonces): the engine never reads the OS generator, so the caller passes fresh OS
    /// randomness at every open (the replica does) or a seed (the simulator). The generator's
    /// seed also mixes in the log's incarnation, a number the log persists and raises on
    /// every open, and the device id: passing the same `entropy` twice, across restarts or
    /// by mistake, still gives a different stream, so no nonce, ephemeral or key repeats.
    pub fn new(log: EventLog, key: DeviceKey, config: StoreConfig, entropy: [u8; 32]) -> Store {
        let rng = StdRng::from_seed(rng_seed(&entropy, log.incarnation(), key.device()));
        let storage = keys::derived_storage_key(&key);
        Store {
            rng,
            storage,
            epochs: HashMap::new(),
            missing: Default::default(),
            key_requests: Vec::new(),
            refused_keys: Vec::new(),
            log,
            key,
            config,
            docs: HashMap::new(),
            tick: 0,
            outbox: None,
            directory: None,
            waiting: HashSet::new(),
            deferred: false,
            unsynced: false,
            eraser: Default::default(),
            offload: Default::default(),
        }
    }

    /// Replaces the key that seals data at rest (by default derived from the device key);
    /// the replica passes the one its key store keeps. Set it before anything is stored.
    pub fn set_storage_key(&mut self, key: crate::crypto::StorageKey) {
        self.storage = key;
        self.epochs.clear();
    }

    /// The underlying log.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// This device's key.
    pub fn key(&self) -> &DeviceKey {
        &self.key
    }

    /// Creates a conversation with `members` (this device's user is added if missing).
    pub fn create_conversation(
        &mut self,
        conversation: ConversationId,
        mut members: Vec<UserId>,
        now_ms: u64,
    ) -> Result<(Event, Vec<Change>), StoreError> {
        if !members.contains(&self.key.user()) {
            members.insert(0, self.key.user());
        }
        self.durably(|s| {
            let (event, mut changes) =
                s.author(conversation, EventKind::Create { members }, now_ms)?;
            if s.config.encrypt {
                // The first epoch, sealed to the member devices known now (others get it when
                // this device learns their certificates, or when they ask).
                let devices = s.member_devices(conversation)?;
                let (_, more) = s.start_epoch(conversation, 0, &devices, now_ms)?;
                changes.extend(more);
            }
            Ok((event, changes))
        })?
    }

    /// Sends a message: encrypted under the conversation's current epoch key (a new epoch is
    /// started, or the current one shared with member devices that lack it, first when
    /// needed), durably in the log and the outbox before this returns, PENDING at once: one
    /// durable commit (one fsync) for all the events it writes. A body over
    /// [`crate::e2ee::MAX_PLAINTEXT_LEN`] is refused with [`StoreError::BodyTooLarge`] before
    /// anything is written.
    ///
    /// The message id is derived from the event's header ([`EventHeader::message_id`]): a
    /// message belongs to its author. Read it from the returned event
    /// ([`Event::message`]).
    pub fn send(
        &mut self,
        conversation: ConversationId,
        body: Vec<u8>,
        media: Vec<MediaRef>,
        now_ms: u64,
    ) -> Result<Sent, StoreError> {
        self.durably(|s| s.send_one(conversation, &body, media, now_ms))?
    }

    /// Sends several messages, in order, with ONE durable commit for them all (group commit):
    /// each message is written as [`Store::send`] writes it, and none of them is on disk or
    /// offered to the relay before the commit at the end. Each message has its own outcome
    /// (a body over the limit fails alone); if the final commit fails, every message that got
    /// that far fails with [`StoreError::Unsynced`]. At most [`MAX_SEND_BATCH`] messages: a
    /// longer batch is refused, every message with [`StoreError::BatchTooLarge`], before
    /// anything is written.
    pub fn send_all(
        &mut self,
        outgoing: Vec<Outgoing>,
        now_ms: u64,
    ) -> Vec<Result<Sent, StoreError>> {
        let len = outgoing.len();
        if len > MAX_SEND_BATCH {
            let max = MAX_SEND_BATCH;
            return (0..len)
                .map(|_| Err(StoreError::BatchTooLarge { len, max }))
                .collect();
        }
        let mut results = Vec::with_capacity(outgoing.len());
        let synced = self.durably(|s| {
            for o in outgoing {
                results.push(s.send_one(o.conversation, &o.body, o.media, now_ms));
            }
        });
        if let Err(e) = synced {
            let detail = e.to_string();
            for r in &mut results {
                if r.is_ok() {
                    *r = Err(StoreError::Unsynced {
                        detail: detail.clone(),
                    });
                }
            }
        }
        results
    }

    fn send_one(
        &mut self,
        conversation: ConversationId,
        body: &[u8],
        media: Vec<MediaRef>,
        now_ms: u64,
    ) -> Result<Sent, StoreError> {
        let max = crate::e2ee::MAX_PLAINTEXT_LEN;
        if body.len() > max {
            return Err(StoreError::BodyTooLarge {
                len: body.len(),
                max,
            });
        }
        self.send_encrypted(conversation, body, media, now_ms, false)
    }

    /// Runs `f` with the events it authors committed without an fsync, then makes them all
    /// durable with one: a local action that writes several events, or several actions at
    /// once, costs one fsync. What `f` wrote is synced even when `f` fails part-way (as each
    /// event's own durable commit did before), so the log never keeps less than it told.
    /// Nothing `f` writes may leave the device before this returns: the device core offers
    /// its outbox to the relay only after the store call returned.
    ///
    /// When the sync fails, the cached outbox, documents and epoch keys are dropped (they may
    /// hold what did not reach the disk) and reload from the log on next use.
    fn durably<T>(&mut self, f: impl FnOnce(&mut Store) -> T) -> Result<T, StoreError> {
        let outer = self.defer_sync();
        let out = f(self);
        self.end_deferred(outer)?;
        Ok(out)
    }

    /// Opens a scope like [`Store::durably`]'s for a caller that cannot pass a closure (the
    /// device core around a relay page): until [`Store::end_deferred`], the store's commits
    /// of authored and received events skip their fsync. Returns what `end_deferred` takes.
    pub(crate) fn defer_sync(&mut self) -> bool {
        std::mem::replace(&mut self.deferred, true)
    }

    /// Closes the scope [`Store::defer_sync`] opened: makes everything committed in it durable
    /// with one fsync (none if nothing was written; an inner scope leaves it to the outer
    /// one). When the sync fails, the cached outbox, documents and epoch keys are dropped
    /// (they may hold what did not reach the disk) and reload from the log on next use.
    ///
    /// A page's fold running beside the page (`store/offload.rs`) goes on past the scope: it
    /// holds no durable state, and is taken back at the next use of its documents.
    pub(crate) fn end_deferred(&mut self, outer: bool) -> Result<(), StoreError> {
        self.deferred = outer;
        if outer || !self.unsynced {
            return Ok(());
        }
        self.unsynced = false;
        if let Err(e) = self.log.sync() {
            // The job's documents come back first, to be dropped with the others.
            if let Err(err) = self.settle_folds() {
                tracing::warn!(%err, "a page's fold failed");
            }
            self.outbox = None;
            self.docs.clear();
            self.epochs.clear();
            self.offload_late_clear();
            return Err(e.into());
        }
        Ok(())
    }

    /// A log transaction: committed without an fsync inside a deferred scope (which then owes
    /// one), durably otherwise.
    pub(crate) fn write_log<T>(
        &mut self,
        f: impl FnOnce(&mut LogTxn<'_>) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        let out = commit(&self.log, self.deferred, f);
        self.unsynced |= self.deferred;
        out
    }

    /// Adds `user` to the conversation (an admin's act); the next message starts a new epoch.
    pub fn add_member(
        &mut self,
        conversation: ConversationId,
        user: UserId,
        admin: bool,
        now_ms: u64,
    ) -> Result<(Event, Vec<Change>), StoreError> {
        self.author(conversation, EventKind::AddMember { user, admin }, now_ms)
    }

    /// Removes `user` from the conversation (an admin's act, or leaving when `user` is this
    /// device's user). The next message starts a new epoch without the removed user's devices.
    pub fn remove_member(
        &mut self,
        conversation: ConversationId,
        user: UserId,
        now_ms: u64,
    ) -> Result<(Event, Vec<Change>), StoreError> {
        self.author(conversation, EventKind::RemoveMember { user }, now_ms)
    }

    /// Records that this device read everything up to `up_to`. `None` when that adds nothing.
    pub fn mark_read(
        &mut self,
        conversation: ConversationId,
        up_to: ServerSeq,
        now_ms: u64,
    ) -> Result<Option<(Event, Vec<Change>)>, StoreError> {
        let (_, read) = self.own_marks(conversation)?;
        if up_to <= read {
            return Ok(None);
        }
        let head = self.log.statement_at(conversation, up_to)?;
        self.eraser.touch([conversation]);
        self.author(conversation, EventKind::Read { up_to, head }, now_ms)
            .map(Some)
    }

    /// Records that everything up to `up_to` reached this device. `None` when that adds nothing.
    pub fn mark_delivered(
        &mut self,
        conversation: ConversationId,
        up_to: ServerSeq,
        now_ms: u64,
    ) -> Result<Option<(Event, Vec<Change>)>, StoreError> {
        let (delivered, _) = self.own_marks(conversation)?;
        if up_to <= delivered {
            return Ok(None);
        }
        let head = self.log.statement_at(conversation, up_to)?;
        self.author(conversation, EventKind::Delivered { up_to, head }, now_ms)
            .map(Some)
    }

    fn own_marks(
        &self,
        conversation: ConversationId,
    ) -> Result<(ServerSeq, ServerSeq), StoreError> {
        Ok(self.log.device_marks(conversation, self.key.device())?)
    }

    /// Signs a new event of this device, appends it and queues it in one transaction (durable
    /// at once, or with the sync that ends [`Store::durably`]), then folds it.
    fn author(
        &mut self,
        conversation: ConversationId,
        kind: EventKind,
        now_ms: u64,
    ) -> Result<(Event, Vec<Change>), StoreError> {
        self.author_with(conversation, now_ms, |_| kind)
    }

    /// Like [`Store::author`], with the kind made from the event's header (for content bound
    /// to the header: encrypted bodies, sealed keys).
    fn author_with(
        &mut self,
        conversation: ConversationId,
        now_ms: u64,
        make: impl FnOnce(&crate::event::EventHeader) -> EventKind,
    ) -> Result<(Event, Vec<Change>), StoreError> {
        self.ensure_loaded(conversation)?;
        let key = self.key.clone();
        let txn = |t: &mut crate::log::LogTxn<'_>| {
            let head = t.chain_head(conversation, key.device())?;
            let lamport = t
                .conversation_meta(conversation)?
                .map(|m| m.max_lamport)
                .unwrap_or(0)
                + 1;
            let (counter, prev) = match head {
                Some((c, id)) => (c + 1, Some(id)),
                None => (1, None),
            };
            let header = key.header(conversation, counter, prev, lamport, now_ms);
            let kind = make(&header);
            let event =
                Event::sign(key.signing_key(), header, kind).map_err(|e| LogError::Corrupt {
                    table: "events",
                    detail: e.to_string(),
                })?;
            let position = match t.append(&event)? {
                Appended::New { position } => position,
                Appended::Held | Appended::Duplicate => 0,
            };
            let entry = t.enqueue(&event, now_ms)?;
            Ok((event, position, entry))
        };
        // Inside `durably`, not visible to the relay before its sync: the device core reads
        // the outbox only after this store call returns.
        let (event, position, entry) = commit(&self.log, self.deferred, txn)?;
        self.unsynced |= self.deferred;
        if let Some(o) = self.outbox.as_mut() {
            o.insert(entry);
        }
        let changes = self.fold_new(conversation, &[(position, &event)])?;
        Ok((event, changes))
    }

    /// Stores and folds verified remote events in one durable transaction. Duplicates are
    /// harmless; acks from untrusted keys are refused (and reported) without failing the batch.
    pub fn apply(&mut self, events: &[Event]) -> Result<ApplyOutcome, StoreError> {
        let mut outcome = ApplyOutcome::default();
        let mut accepted: Vec<&Event> = Vec::with_capacity(events.len());
        for ev in events {
            if ev.kind().is_sequencing() && !self.config.sequencers.contains(&ev.header().author) {
                outcome.rejected.push((
                    ev.id(),
                    StoreError::UntrustedAck {
                        event: ev.id(),
                        author: ev.header().author,
                    },
                ));
            } else {
                accepted.push(ev);
            }
        }
        // Other devices' events first, then the relay's statements, then this device's own
        // events. A statement finds the others' events stored and indexes their places at
        // once (placed before them, each place went into the `waiting` table and out again
        // when its event came); this device's own Send, admitted as it is stored, finds its
        // ack and goes straight to the sequenced index instead of into the unsequenced one
        // and out again. Stable: each group keeps the page's order.
        let me = self.key.device();
        accepted.sort_by_key(
            |e| match (e.kind().is_sequencing(), e.header().author == me) {
                (false, false) => 0u8,
                (true, _) => 1,
                (false, true) => 2,
            },
        );
        let convs: HashSet<ConversationId> = accepted.iter().map(|e| e.conversation()).collect();
        self.ready_to_judge(convs.iter().copied())?;
        let directory = self.loaded_directory()?;
        // Inside a deferred scope (a relay page) the commit's fsync is the scope's.
        let lazy = self.deferred;
        let txn = |t: &mut LogTxn<'_>| {
            let results = accepted
                .iter()
                .map(|ev| {
                    if ev.header().author == me {
                        t.append(ev)
                    } else {
                        t.append_held(ev)
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut runs = Vec::with_capacity(convs.len());
            for c in &convs {
                runs.push((
                    *c,
                    t.advance_gate(*c, directory, me, &|_| AuthorLookup::Asking)?,
                ));
            }
            Ok((results, t.take_dequeued(), t.take_chain_issues()?, runs))
        };
        let (results, acked, chain_issues, runs) = commit(&self.log, lazy, txn)?;
        self.unsynced |= lazy;
        outcome.chain_issues = chain_issues;
        if let Some(o) = self.outbox.as_mut() {
            let gone: HashSet<&EventId> = acked.iter().collect();
            o.retain(|e| !gone.contains(&e.event));
        }
        outcome.acked = acked;
        let mut by_conv: HashMap<ConversationId, Vec<(u64, &Event)>> = HashMap::new();
        for (ev, appended) in accepted.iter().zip(results) {
            match appended {
                Appended::New { position } => {
                    outcome.n_new += 1;
                    by_conv
                        .entry(ev.conversation())
                        .or_default()
                        .push((position, ev));
                }
                Appended::Held => outcome.n_new += 1,
                Appended::Duplicate => outcome.n_duplicate += 1,
            }
        }
        self.fold_runs(by_conv, &runs, &mut outcome)?;
        self.eraser.touch(convs.iter().copied());
        for c in &convs {
            let ahead = self.removals_ahead(*c)?;
            outcome
                .removals_ahead
                .extend(ahead.into_iter().filter(|r| r.seq.is_some()));
        }
        Ok(outcome)
    }

    /// Folds what appends and gate runs admitted, and reports refusals and waits.
    fn fold_runs<'e>(
        &mut self,
        mut by_conv: HashMap<ConversationId, Vec<(u64, &'e Event)>>,
        runs: &'e [(ConversationId, GateRun)],
        outcome: &mut ApplyOutcome,
    ) -> Result<(), StoreError> {
        for (conv, run) in runs {
            if !run.retracted.is_empty() {
                self.rebuild_retracted(*conv, outcome)?;
            }
        }
        for (conv, run) in runs {
            if !run.admitted.is_empty() || !run.refused.is_empty() {
                outcome.gated.push(*conv);
            }
            by_conv
                .entry(*conv)
                .or_default()
                .extend(run.admitted.iter().map(|(p, e)| (*p, e)));
            outcome
                .refused
                .extend(run.refused.iter().map(|(ev, refusal)| RefusedEvent {
                    conversation: *conv,
                    event: ev.id(),
                    author: ev.header().author,
                    kind: ev.kind().name(),
                    refusal: refusal.clone(),
                }));
            match run.waiting {
                Some(user) => {
                    self.waiting.insert(*conv);
                    if !outcome.waiting.contains(&user) {
                        outcome.waiting.push(user);
                    }
                }
                None => {
                    self.waiting.remove(conv);
                }
            }
        }
        let page: Vec<(ConversationId, Vec<(u64, &Event)>)> = by_conv
            .into_iter()
            .map(|(conv, mut evs)| {
                evs.sort_by_key(|(p, _)| *p);
                (conv, evs)
            })
            .collect();
        outcome.changes.extend(self.fold_page(page)?);
        for (conv, run) in runs {
            let events: Vec<&Event> = run.admitted.iter().map(|(_, e)| e).collect();
            outcome.changes.extend(self.after_fold(*conv, &events)?);
        }
        outcome.refused_keys.extend(self.take_refused_keys());
        for (conv, run) in runs {
            if !run.changes.is_empty() {
                self.ensure_loaded(*conv)?;
                for (seq, members) in &run.changes {
                    // Behind the page's fold when that runs beside the page.
                    if self.queue_members_behind_job(*conv, *seq, members) {
                        continue;
                    }
                    let doc = &mut self.loaded(*conv)?.doc;
                    outcome
                        .changes
                        .extend(doc.set_members(*seq, members.clone())?);
                }
            }
        }
        Ok(())
    }

    /// The full conversation (loads its document: snapshot + log tail).
    pub fn conversation(
        &mut self,
        conversation: ConversationId,
    ) -> Result<&Conversation, StoreError> {
        self.ensure_loaded(conversation)?;
        Ok(self.loaded(conversation)?.doc.state())
    }

    /// The conversation's automerge documents (loaded if needed).
    pub fn doc_mut(
        &mut self,
        conversation: ConversationId,
    ) -> Result<&mut ConversationDoc, StoreError> {
        self.ensure_loaded(conversation)?;
        Ok(&mut self.loaded(conversation)?.doc)
    }

    /// The last `n` messages in view order, from the index tables (no document load).
    pub fn latest(
        &self,
        conversation: ConversationId,
        n: usize,
    ) -> Result<Vec<MessageView>, StoreError> {
        Ok(self.log.latest_messages(conversation, n)?)
    }

    /// The outbox in send order.
    pub fn outbox(&mut self) -> Result<Vec<OutboxEntry>, StoreError> {
        Ok(self.outbox_map()?.values().cloned().collect())
    }

    /// Visits the outbox in send order without copying it.
    pub fn outbox_entries(
        &mut self,
    ) -> Result<impl Iterator<Item = &OutboxEntry> + '_, StoreError> {
        Ok(self.outbox_map()?.values())
    }

    fn outbox_map(&mut self) -> Result<&mut outbox_cache::OutboxCache, StoreError> {
        if self.outbox.is_none() {
            self.outbox = Some(outbox_cache::OutboxCache::new(self.log.outbox()?));
        }
        Ok(self.outbox.get_or_insert_with(Default::default))
    }

    /// The outbox entries of `conversation` that carry no message (receipts, membership
    /// changes, key shares and requests), in send order, without walking the messages.
    pub(crate) fn outbox_controls(
        &mut self,
        conversation: ConversationId,
    ) -> Result<impl Iterator<Item = &OutboxEntry> + '_, StoreError> {
        Ok(self.outbox_map()?.controls_of(conversation))
    }

    /// Records an outbox attempt's outcome (next attempt time, or FAILED when the policy ran
    /// out) and returns the visible changes.
    pub fn update_outbox(&mut self, entry: &OutboxEntry) -> Result<Vec<Change>, StoreError> {
        let present = self.log.write(|t| t.update_outbox(entry))?;
        if !present {
            return Ok(Vec::new());
        }
        self.outbox_map()?.insert(entry.clone());
        self.show_failed(entry, entry.state == OutboxState::Failed)
    }

    /// Puts a FAILED message back in the queue for an attempt now.
    pub fn retry(
        &mut self,
        message: MessageId,
        now_ms: u64,
    ) -> Result<(OutboxEntry, Vec<Change>), StoreError> {
        let mut entry = self
            .outbox_entries()?
            .find(|e| e.message == Some(message))
            .cloned()
            .ok_or(StoreError::NotInOutbox(message))?;
        entry.state = OutboxState::Queued;
        entry.attempts = 0;
        entry.next_attempt_ms = now_ms;
        // What waits ahead of it in its conversation (keys, receipts) goes now too, or the
        // retried message would wait behind their backoff.
        let ahead: Vec<OutboxEntry> = self
            .outbox_entries()?
            .filter(|e| {
                e.conversation == entry.conversation
                    && e.position < entry.position
                    && e.state == OutboxState::Queued
                    && e.next_attempt_ms > now_ms
            })
            .cloned()
            .collect();
        for mut e in ahead {
            e.next_attempt_ms = now_ms;
            if self.log.write(|t| t.update_outbox(&e))? {
                self.outbox_map()?.insert(e);
            }
        }
        if !self.log.write(|t| t.update_outbox(&entry))? {
            return Err(StoreError::NotInOutbox(message));
        }
        self.outbox_map()?.insert(entry.clone());
        let changes = self.show_failed(&entry, false)?;
        Ok((entry, changes))
    }

    fn show_failed(
        &mut self,
        entry: &OutboxEntry,
        failed: bool,
    ) -> Result<Vec<Change>, StoreError> {
        let Some(message) = entry.message else {
            return Ok(Vec::new());
        };
        self.ensure_loaded(entry.conversation)?;
        Ok(self
            .loaded(entry.conversation)?
            .doc
            .set_failed(message, failed))
    }
}
