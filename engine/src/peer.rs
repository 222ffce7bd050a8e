//! Device-to-device reconciliation, sans-IO: two devices that share conversations send each
//! other the events the other is missing, without the relay.
//!
//! Each side opens with [`PeerFrame::Hello`]: per shared conversation, its version vector
//! (per author device, relay included, the highest counter it holds every event up to), then
//! [`PeerFrame::Above`]: the conversations in which it holds events *above* its vector (past a
//! hole in an author's counters: relay pages that came out of order, a session cut short, a
//! retention gap, a message that never reached the relay). Both sides see both, and decide
//! alike for each shared conversation:
//!
//! - **Neither side holds anything above its vector** (the usual case): vectors describe each
//!   side's set exactly, so the other side answers with what is above the counters — the device
//!   certificates it holds ([`PeerFrame::Directory`]), then the events in [`PeerFrame::Items`]
//!   together with the relay statements that place them. No round trip beyond the Hellos.
//! - **Either does**: a vector would make the other side send events the receiver already holds
//!   above its hole (every one of them, every session), or, when the sender's own prefix is the
//!   shorter, nothing at all of what is above it. The two sides run a range-based set
//!   reconciliation instead (the negentropy protocol, see `reconcile`) over the events each
//!   holds above the lower of the two vectors, author by author, in [`PeerFrame::Reconcile`]
//!   messages. The side with the lower device id initiates; when it knows the two
//!   differences, it sends what the other lacks and asks, with [`PeerFrame::Want`], for what
//!   it lacks itself. Only the missing events cross, each with the relay statement that
//!   places it unless the receiver holds that statement already.
//!
//! Each side ends with [`PeerFrame::Done`] once its answer is queued and its reconciliations
//! are over. The receiver admits the items through [`crate::DeviceCore::handle_peer_items`],
//! the very path of a relay page: signatures checked, only the pinned relay's statements
//! trusted (in the frame, or already in the log), every event through the gate at its place in
//! the relay's order. A peer can therefore withhold events, never forge, reorder or inject one.
//! Reconciliation messages carry no events: malformed ones end the session with
//! [`PeerError::Reconcile`], and the rounds, message sizes and wanted ids are bounded
//! ([`MAX_RECONCILE_ROUNDS`], [`MAX_RECONCILE_MESSAGE_LEN`], [`MAX_WANT_IDS`]).
//!
//! Events the relay has not sequenced yet (two phones on one Wi-Fi with no internet) go in
//! [`PeerFrame::Unsequenced`], after the placed ones. The receiver checks their signatures and
//! takes them in through [`crate::DeviceCore::handle_peer_early`]: the gate's rules judge each
//! one now, against the membership where the conversation's gate stands (as if the relay placed
//! it next); an admitted message shows at once, after the sequenced ones like a pending message,
//! and moves to its server place when the relay's statement comes, where the gate judges it
//! again (see [`crate::log::LogTxn::append_early`]).
//!
//! Each side answers the other's `Done` with [`PeerFrame::Holds`], its version vectors after
//! taking everything in: a receipt from the recipient device itself, which shows DELIVERED for
//! the messages every recipient now holds, placed by the relay or not
//! ([`crate::status::derive_status_with`]).
//!
//! # Sync state
//! There is no per-peer sync state besides the log, and none is needed for an interrupted
//! session to resume: every event is admitted (durably, one transaction per frame) as its
//! frame arrives, so a session cut at any point leaves the receiver holding exactly what it
//! admitted. The next session starts from the two logs: the vectors cover every prefix held,
//! and the reconciliation finds the rest whatever holes the cut left. What a resumed session
//! re-sends is therefore at most what was in flight when the link broke (frames written but
//! not yet admitted), never what was already taken in. A per-peer cursor would add nothing
//! but a second truth to keep in step with the log (and would be wrong after the log learns
//! the same events from the relay or a third device).
//!
//! # Call order
//! [`PeerSession::new`] (it queues the Hello and Above), then for each frame read
//! [`PeerSession::handle_frame`]; after every call drain [`PeerSession::poll_transmit`]. The
//! session is over when [`PeerSession::is_done`].

mod admitted;
mod batches;
mod blobs;
mod reconcile;

pub use admitted::{admitted_peers, shared_conversations};
pub use blobs::{judge_blob_fetch, HeldBlob};

pub use reconcile::{
    MAX_RECONCILE_ITEMS, MAX_RECONCILE_MESSAGE_LEN, MAX_RECONCILE_ROUNDS, RECONCILE_FRAME_LIMIT,
};

use crate::device::{DeviceCore, DeviceError, VerifiedItems};
use crate::event::MAX_SEALED_KEY_LEN;
use crate::history::{HistoryKey, MAX_HISTORY_KEYS_PER_FRAME};
use crate::ids::{ConversationId, DeviceId, EventId};
use crate::log::LogError;
use crate::store::StoreError;
use crate::wire::{
    check, DeviceRegistration, DeviceRevocation, Envelope, Frame, WireError, MAX_FRAME_LEN,
    MAX_LISTED_CONVERSATIONS, MAX_LISTED_DEVICES, MAX_PAGE_ITEMS,
};
use admitted::{is_own_device, withheld_conversations};
use batches::Batches;
use reconcile::{Reconciler, Step};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

/// The peer protocol version this build speaks.
///
/// 2: [`PeerFrame::HistoryKeys`] (a new device's history), [`PeerFrame::Unsequenced`] (events
/// the relay has not placed yet) and [`PeerFrame::Holds`] (peer receipts).
/// 3: [`PeerFrame::Above`], [`PeerFrame::Reconcile`] and [`PeerFrame::Want`] (set
/// reconciliation above the version vectors). A peer of another version is refused with
/// [`PeerError::Version`]: the two sides' Hellos cross, so a side cannot wait to learn the
/// other's version before it speaks its own, and a version 2 peer refuses this Hello in turn.
pub const PEER_PROTOCOL_VERSION: u16 = 3;
/// Most author devices in one conversation's version vector.
pub const MAX_VECTOR_AUTHORS: usize = 4096;
/// Most events one side sends in one session (with their statements): what it holds in
/// memory for the answer. A peer missing more gets the rest in its next session, which starts
/// from where its log stands (the state of a sync is the log itself, so an interrupted one
/// resumes there too).
pub const MAX_SESSION_EVENTS: usize = 100_000;
/// Bytes of envelopes one [`PeerFrame::Items`] carries at most (the frame limit, with room for
/// the encoding around them).
pub const MAX_ITEMS_BYTES: usize = MAX_FRAME_LEN / 2;
/// Most event ids in one [`PeerFrame::Want`] (128 KiB of ids).
pub const MAX_WANT_IDS: usize = 4096;

/// What one conversation's log holds: per author device, every event up to this counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationVector {
    /// The conversation.
    pub conversation: ConversationId,
    /// (author device, counter), one per author.
    pub authors: Vec<(DeviceId, u64)>,
}

/// A frame of the peer protocol (over `tidings_transport`'s framed stream, ALPN
/// `tidings-peer/1`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PeerFrame {
    /// The sender's version vectors of the conversations it shares with the receiver.
    Hello {
        /// [`PEER_PROTOCOL_VERSION`].
        protocol_version: u16,
        /// One per shared conversation.
        conversations: Vec<ConversationVector>,
    },
    /// Device certificates and revocations the receiver needs to judge the events that follow
    /// (each verified by the receiver under its user's key).
    Directory {
        /// Certificates.
        registrations: Vec<DeviceRegistration>,
        /// Revocations.
        revocations: Vec<DeviceRevocation>,
    },
    /// Events and the relay statements that place them.
    Items {
        /// The events.
        events: Vec<Envelope>,
        /// The statements.
        records: Vec<Envelope>,
    },
    /// Everything missing by the receiver's Hello was sent.
    Done,
    /// Epoch keys sealed to the receiver by another device of the same user: its history
    /// (see [`crate::history`]). Sent after the Items, before Done, to the sender's own
    /// user's devices only; the receiver refuses it from anyone else.
    HistoryKeys {
        /// At most [`crate::history::MAX_HISTORY_KEYS_PER_FRAME`].
        keys: Vec<HistoryKey>,
    },
    /// Events the relay has not placed yet (protocol 2), sent after every placed one: each
    /// judged by the receiver's gate rules now, shown before its place.
    Unsequenced {
        /// The events.
        events: Vec<Envelope>,
    },
    /// A receipt, sent once the other side's [`PeerFrame::Done`] came (protocol 2): per shared
    /// conversation, per author device, every event up to this counter is now held here. The
    /// receiver shows DELIVERED for the messages every recipient holds, sequenced or not.
    Holds {
        /// One per shared conversation.
        conversations: Vec<ConversationVector>,
    },
    /// Sent right after the Hello (protocol 3): the shared conversations in which the sender
    /// holds events above its version vector (past a hole in an author's counters), with how
    /// many. A conversation either side lists is reconciled with [`PeerFrame::Reconcile`];
    /// the others by the vectors alone.
    Above {
        /// (conversation, events held above the vector), only those with some.
        conversations: Vec<(ConversationId, u64)>,
    },
    /// A negentropy message of one conversation's set reconciliation (protocol 3): the
    /// initiator's queries and the responder's answers alternate until the initiator knows
    /// both differences.
    Reconcile {
        /// The conversation.
        conversation: ConversationId,
        /// At most [`MAX_RECONCILE_MESSAGE_LEN`] bytes.
        message: Vec<u8>,
    },
    /// The initiator's last word on a conversation's reconciliation (protocol 3): the events
    /// it lacks, which the responder sends back, and, on the last frame, that it is over.
    Want {
        /// The conversation.
        conversation: ConversationId,
        /// At most [`MAX_WANT_IDS`].
        ids: Vec<EventId>,
        /// No more `Want` for this conversation in this session.
        last: bool,
    },
}

impl Frame for PeerFrame {
    fn check_limits(&self) -> Result<(), WireError> {
        match self {
            PeerFrame::Hello { conversations, .. } | PeerFrame::Holds { conversations } => {
                check(
                    "conversations",
                    conversations.len(),
                    MAX_LISTED_CONVERSATIONS,
                )?;
                for c in conversations {
                    check("authors", c.authors.len(), MAX_VECTOR_AUTHORS)?;
                }
                Ok(())
            }
            PeerFrame::Directory {
                registrations,
                revocations,
            } => {
                check("registrations", registrations.len(), MAX_LISTED_DEVICES)?;
                check("revocations", revocations.len(), MAX_LISTED_DEVICES)
            }
            PeerFrame::Items { events, records } => {
                check("events", events.len(), MAX_PAGE_ITEMS)?;
                check("records", records.len(), MAX_PAGE_ITEMS)?;
                for e in events.iter().chain(records) {
                    check("envelope", e.0.len(), crate::event::MAX_EVENT_LEN)?;
                }
                Ok(())
            }
            PeerFrame::Done => Ok(()),
            PeerFrame::HistoryKeys { keys } => {
                check("history keys", keys.len(), MAX_HISTORY_KEYS_PER_FRAME)?;
                for k in keys {
                    check("sealed key", k.sealed.sealed.len(), MAX_SEALED_KEY_LEN)?;
                }
                Ok(())
            }
            PeerFrame::Unsequenced { events } => {
                check("events", events.len(), MAX_PAGE_ITEMS)?;
                for e in events {
                    check("envelope", e.0.len(), crate::event::MAX_EVENT_LEN)?;
                }
                Ok(())
            }
            PeerFrame::Above { conversations } => check(
                "conversations",
                conversations.len(),
                MAX_LISTED_CONVERSATIONS,
            ),
            PeerFrame::Reconcile { message, .. } => check(
                "reconcile message",
                message.len(),
                MAX_RECONCILE_MESSAGE_LEN,
            ),
            PeerFrame::Want { ids, .. } => check("wanted ids", ids.len(), MAX_WANT_IDS),
        }
    }
}

/// Why a peer session failed or a peer was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The peer is not a device this one can place: unknown to its directory, revoked, or
    /// sharing no conversation with it.
    #[error("device {0} is not a peer of this device")]
    NotAdmitted(DeviceId),
    /// The peer speaks another protocol version.
    #[error("peer protocol version {0} is not supported")]
    Version(u16),
    /// A frame out of order.
    #[error("unexpected peer frame: {0}")]
    Unexpected(&'static str),
    /// The device's log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The device's store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The device core failed on the items.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A reconciliation message that does not parse, or that the negentropy protocol refuses.
    #[error("reconciliation of conversation {conversation} failed: {source}")]
    Reconcile {
        /// The conversation.
        conversation: ConversationId,
        /// What negentropy found wrong.
        #[source]
        source: negentropy::Error,
    },
    /// The peer went past a limit of the protocol.
    #[error("peer went past the limit of {max} {what}")]
    Limit {
        /// What was counted.
        what: &'static str,
        /// The limit.
        max: usize,
    },
}

/// One reconciliation with one peer. See the module docs for the call order.
#[derive(Debug)]
pub struct PeerSession {
    peer: DeviceId,
    /// This device: the lower id of the two initiates the set reconciliations.
    me: DeviceId,
    shared: BTreeSet<ConversationId>,
    /// The peer is another device of this device's user: it gets every conversation of the
    /// user (listed in its Hello or not) and the history keys.
    own: bool,
    /// This side's Hello: its vectors, and the events it said it holds above them (both sides
    /// decide what to reconcile from the two Hellos, so each keeps what it sent).
    my_vectors: BTreeMap<ConversationId, Vec<(DeviceId, u64)>>,
    my_above: BTreeMap<ConversationId, u64>,
    /// The peer's Hello, until its `Above` comes.
    their_hello: Option<Vec<ConversationVector>>,
    /// Set reconciliations under way, by conversation.
    reconciling: BTreeMap<ConversationId, Reconciler>,
    transmit: VecDeque<PeerFrame>,
    answered: bool,
    /// This side sent its Done.
    sent_done: bool,
    /// The peer's Done came.
    done: bool,
    /// The peer's receipt came.
    holds: bool,
    /// Shared conversations whose unplaced events the peer does not get: a removal of its
    /// user waits for its place, and the relay may place those events after it (the
    /// simulator with peer links found one shown early on the removed user's device, then
    /// erased there).
    withheld: HashSet<ConversationId>,
    /// Events queued for the peer so far (at most [`MAX_SESSION_EVENTS`]).
    n_sent: usize,
    /// Items put in this session's reconciliations (at most [`MAX_RECONCILE_ITEMS`]).
    n_items: usize,
    /// Events received from this peer, counted.
    n_received: u64,
    /// History keys taken from this peer.
    n_keys: u64,
}

impl PeerSession {
    /// A session with `peer`, refused unless this device admits it ([`admitted_peers`]);
    /// queues the Hello.
    pub fn new(core: &mut DeviceCore, peer: DeviceId) -> Result<PeerSession, PeerError> {
        PeerSession::start(core, peer, true)
    }

    /// A session that reconciles by version vectors alone, unless the peer asks for more: its
    /// [`PeerFrame::Above`] lists nothing, whatever the log holds above its vectors. The
    /// protocol 2 exchange, kept to measure what the set reconciliation saves
    /// (`examples/peer_sync.rs`).
    pub fn vectors_only(core: &mut DeviceCore, peer: DeviceId) -> Result<PeerSession, PeerError> {
        PeerSession::start(core, peer, false)
    }

    fn start(
        core: &mut DeviceCore,
        peer: DeviceId,
        tell_above: bool,
    ) -> Result<PeerSession, PeerError> {
        let shared = shared_conversations(core, peer)?;
        let own = is_own_device(core, peer)?;
        if shared.is_empty() && !own {
            return Err(PeerError::NotAdmitted(peer));
        }
        let withheld = withheld_conversations(core, peer)?;
        let log = core.store().log();
        let mut my_vectors = BTreeMap::new();
        let mut my_above = BTreeMap::new();
        for c in &shared {
            let (vector, n_above) = log.vector_and_above(*c)?;
            my_vectors.insert(*c, vector);
            if n_above > 0 && tell_above {
                my_above.insert(*c, n_above);
            }
        }
        let relay = core.relay();
        let mut conversations = Vec::with_capacity(my_vectors.len());
        for (c, v) in &my_vectors {
            let mut authors = v.clone();
            // The relay's entry: every sequence up to it is placed here (see `placed_after`).
            let placed = placed_up_to(log, *c)?;
            // Within the frame's limit of authors (past it the peer learns places from the
            // events it is sent, as before).
            if placed > 0 && authors.len() < MAX_VECTOR_AUTHORS {
                authors.push((relay, placed));
            }
            conversations.push(ConversationVector {
                conversation: *c,
                authors,
            });
        }
        let mut transmit = VecDeque::new();
        transmit.push_back(PeerFrame::Hello {
            protocol_version: PEER_PROTOCOL_VERSION,
            conversations,
        });
        transmit.push_back(PeerFrame::Above {
            conversations: my_above.iter().map(|(c, n)| (*c, *n)).collect(),
        });
        Ok(PeerSession {
            peer,
            me: core.store().key().device(),
            shared,
            own,
            withheld,
            my_vectors,
            my_above,
            their_hello: None,
            reconciling: BTreeMap::new(),
            transmit,
            answered: false,
            sent_done: false,
            done: false,
            holds: false,
            n_sent: 0,
            n_items: 0,
            n_received: 0,
            n_keys: 0,
        })
    }

    /// The peer device.
    pub fn peer(&self) -> DeviceId {
        self.peer
    }

    /// Both sides sent everything the other was missing, and the peer's receipt came.
    pub fn is_done(&self) -> bool {
        self.answered && self.sent_done && self.done && self.holds
    }

    /// Events received from the peer so far (before the store's deduplication).
    pub fn n_received(&self) -> u64 {
        self.n_received
    }

    /// History keys taken from the peer so far (epochs readable now that were not).
    pub fn n_keys(&self) -> u64 {
        self.n_keys
    }

    /// Whether the peer is another device of this device's user (a history peer).
    pub fn is_own_device(&self) -> bool {
        self.own
    }

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<PeerFrame> {
        self.transmit.pop_front()
    }

    /// A frame from the peer. An error means the link is unusable: close it.
    pub fn handle_frame(
        &mut self,
        core: &mut DeviceCore,
        frame: PeerFrame,
        now_ms: u64,
    ) -> Result<(), PeerError> {
        let progress = matches!(
            frame,
            PeerFrame::Items { .. } | PeerFrame::HistoryKeys { .. } | PeerFrame::Done
        );
        self.take_frame(core, frame, now_ms)?;
        if self.own && progress && (self.n_received > 0 || self.n_keys > 0) {
            core.report_history_progress(self.peer, self.n_received, self.n_keys, self.done);
        }
        Ok(())
    }

    fn take_frame(
        &mut self,
        core: &mut DeviceCore,
        frame: PeerFrame,
        now_ms: u64,
    ) -> Result<(), PeerError> {
        match frame {
            PeerFrame::Hello {
                protocol_version,
                conversations,
            } => {
                if protocol_version != PEER_PROTOCOL_VERSION {
                    return Err(PeerError::Version(protocol_version));
                }
                if self.answered || self.their_hello.is_some() {
                    return Err(PeerError::Unexpected("a second Hello"));
                }
                self.their_hello = Some(conversations);
                Ok(())
            }
            PeerFrame::Above { conversations } => {
                let Some(theirs) = self.their_hello.take() else {
                    return Err(PeerError::Unexpected("Above without a Hello before it"));
                };
                self.answer(core, theirs, conversations, now_ms)?;
                self.answered = true;
                self.finish_if_settled();
                Ok(())
            }
            PeerFrame::Directory {
                registrations,
                revocations,
            } => {
                // Settles nobody: a peer's list is never the complete answer the relay gives.
                core.handle_peer_directory(&registrations, &revocations, now_ms)?;
                Ok(())
            }
            PeerFrame::Items { events, records } => {
                self.n_received += events.len() as u64;
                let items = VerifiedItems::verify(&events, &records);
                core.handle_peer_items(items, now_ms)?;
                Ok(())
            }
            PeerFrame::Done => {
                if self.done {
                    return Err(PeerError::Unexpected("a second Done"));
                }
                self.done = true;
                // Everything the peer sent is in: say what this device holds now.
                self.transmit.push_back(PeerFrame::Holds {
                    conversations: vectors(core, &self.shared)?,
                });
                Ok(())
            }
            PeerFrame::Holds { conversations } => {
                let theirs: Vec<_> = conversations
                    .iter()
                    .filter(|v| self.shared.contains(&v.conversation))
                    .map(|v| (v.conversation, v.authors.as_slice()))
                    .collect();
                core.handle_peer_holds(self.peer, &theirs)?;
                self.holds = true;
                Ok(())
            }
            PeerFrame::Unsequenced { events } => {
                self.n_received += events.len() as u64;
                core.handle_peer_early(&events, now_ms)?;
                Ok(())
            }
            PeerFrame::HistoryKeys { keys } => {
                let outcome = core.handle_history_keys(self.peer, &keys, now_ms)?;
                self.n_keys += outcome.taken as u64;
                Ok(())
            }
            PeerFrame::Reconcile {
                conversation,
                message,
            } => self.take_reconcile(core, conversation, &message),
            PeerFrame::Want {
                conversation,
                ids,
                last,
            } => {
                let Some(r) = self
                    .reconciling
                    .get_mut(&conversation)
                    .filter(|r| !r.is_initiator())
                else {
                    return Err(PeerError::Unexpected("Want for no reconciliation"));
                };
                r.count_wanted(ids.len())?;
                self.send_ids(core, conversation, &ids)?;
                if last {
                    self.reconciling.remove(&conversation);
                    self.finish_if_settled();
                }
                Ok(())
            }
        }
    }

    /// A negentropy message: the responder answers it; the initiator sends the next query,
    /// or, reconciled, the events the peer lacks and the ids it lacks itself.
    fn take_reconcile(
        &mut self,
        core: &mut DeviceCore,
        conversation: ConversationId,
        message: &[u8],
    ) -> Result<(), PeerError> {
        let Some(r) = self.reconciling.get_mut(&conversation) else {
            return Err(PeerError::Unexpected("Reconcile for no reconciliation"));
        };
        if !r.is_initiator() {
            let message = r.respond(message)?;
            self.transmit.push_back(PeerFrame::Reconcile {
                conversation,
                message,
            });
            return Ok(());
        }
        match r.step(message)? {
            Step::Next(message) => self.transmit.push_back(PeerFrame::Reconcile {
                conversation,
                message,
            }),
            Step::Finished { have, need } => {
                self.reconciling.remove(&conversation);
                self.send_ids(core, conversation, &have)?;
                let mut chunks = need.chunks(MAX_WANT_IDS).peekable();
                if chunks.peek().is_none() {
                    self.transmit.push_back(PeerFrame::Want {
                        conversation,
                        ids: Vec::new(),
                        last: true,
                    });
                }
                while let Some(chunk) = chunks.next() {
                    self.transmit.push_back(PeerFrame::Want {
                        conversation,
                        ids: chunk.to_vec(),
                        last: chunks.peek().is_none(),
                    });
                }
                self.finish_if_settled();
            }
        }
        Ok(())
    }

    /// Queues the events of `conversation` among `ids` this log holds (with their
    /// statements), within the session's budget. An id of another conversation, or one this
    /// log does not hold, is skipped: a peer asks only for what it may read.
    fn send_ids(
        &mut self,
        core: &DeviceCore,
        conversation: ConversationId,
        ids: &[EventId],
    ) -> Result<(), PeerError> {
        let log = core.store().log();
        let mut batches = Batches::sending(ids).withholding(&self.withheld);
        for id in ids {
            if self.n_sent + batches.n_events >= MAX_SESSION_EVENTS {
                break;
            }
            match log.get(id)? {
                Some(event) if event.conversation() == conversation => {
                    batches.add(log, &event)?;
                }
                _ => {}
            }
        }
        self.n_sent += batches.n_events;
        self.transmit.extend(batches.finish());
        Ok(())
    }

    /// Queues Done once the vectors' answer is queued and every reconciliation is over.
    fn finish_if_settled(&mut self) {
        if self.answered && self.reconciling.is_empty() && !self.sent_done {
            self.sent_done = true;
            self.transmit.push_back(PeerFrame::Done);
        }
    }

    /// Queues what the peer's vectors say it is missing, in shared conversations only, and
    /// starts a set reconciliation for each shared conversation in which either side holds
    /// events above its vector.
    fn answer(
        &mut self,
        core: &mut DeviceCore,
        mut theirs: Vec<ConversationVector>,
        their_above: Vec<(ConversationId, u64)>,
        now_ms: u64,
    ) -> Result<(), PeerError> {
        let listed: BTreeSet<ConversationId> = theirs.iter().map(|v| v.conversation).collect();
        let their_above: BTreeSet<ConversationId> = their_above
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(c, _)| c)
            .collect();
        if self.own {
            // A new device of this user lists nothing yet: it gets every conversation.
            theirs.extend(self.shared.difference(&listed).map(|c| ConversationVector {
                conversation: *c,
                authors: Vec::new(),
            }));
        }
        let log = core.store().log();
        let relay = core.relay();
        let mut batches = Batches::default().withholding(&self.withheld);
        let mut to_reconcile = Vec::new();
        let mut placements = Vec::new();
        for vector in theirs {
            let c = vector.conversation;
            if !self.shared.contains(&c) {
                continue;
            }
            let their_placed = vector
                .authors
                .iter()
                .find(|(a, _)| *a == relay)
                .map_or(0, |(_, n)| *n);
            placements.push((c, their_placed));
            // Both sides see both Hellos and decide alike: a conversation both list, in which
            // either holds events above its vector (what a vector cannot describe).
            let ragged = self.my_above.contains_key(&c) || their_above.contains(&c);
            if listed.contains(&c) && ragged {
                to_reconcile.push((c, vector.authors));
                continue;
            }
            let have: BTreeMap<DeviceId, u64> = vector.authors.into_iter().collect();
            for (author, ours) in log.version_vector(c)? {
                let after = have.get(&author).copied().unwrap_or(0);
                if ours <= after {
                    continue;
                }
                let budget = MAX_SESSION_EVENTS.saturating_sub(self.n_sent + batches.n_events);
                if budget == 0 {
                    // The rest goes in the next session: the peer's vectors will have moved.
                    break;
                }
                for event in log.author_events_after(c, author, after, budget)? {
                    batches.add(log, &event)?;
                }
            }
        }
        let (registrations, revocations) = log.directory()?;
        for chunk in registrations.chunks(MAX_LISTED_DEVICES) {
            self.transmit.push_back(PeerFrame::Directory {
                registrations: chunk.to_vec(),
                revocations: Vec::new(),
            });
        }
        for chunk in revocations.chunks(MAX_LISTED_DEVICES) {
            self.transmit.push_back(PeerFrame::Directory {
                registrations: Vec::new(),
                revocations: chunk.to_vec(),
            });
        }
        // After the events (a statement that went with one is not sent again): the statements
        // placing what the peer holds unplaced, an event it took early from a peer, say.
        for (c, their_placed) in placements {
            placed_after(log, &mut batches, c, their_placed)?;
        }
        self.n_sent += batches.n_events;
        self.transmit.extend(batches.finish());
        if self.own {
            let keys = core.seal_history_keys(self.peer, now_ms)?;
            for chunk in keys.chunks(MAX_HISTORY_KEYS_PER_FRAME) {
                self.transmit.push_back(PeerFrame::HistoryKeys {
                    keys: chunk.to_vec(),
                });
            }
        }
        for (c, authors) in to_reconcile {
            self.start_reconcile(core, c, authors)?;
        }
        Ok(())
    }

    /// Starts the set reconciliation of `conversation` over the events above the lower of
    /// the two vectors, per author: below it both sides hold everything.
    fn start_reconcile(
        &mut self,
        core: &DeviceCore,
        conversation: ConversationId,
        their_authors: Vec<(DeviceId, u64)>,
    ) -> Result<(), PeerError> {
        if self.reconciling.contains_key(&conversation) {
            return Ok(());
        }
        let mine: BTreeMap<DeviceId, u64> = self
            .my_vectors
            .get(&conversation)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default();
        let theirs: BTreeMap<DeviceId, u64> = their_authors.into_iter().collect();
        let floor = |a: &DeviceId| {
            let m = mine.get(a).copied().unwrap_or(0);
            m.min(theirs.get(a).copied().unwrap_or(0))
        };
        let budget = MAX_RECONCILE_ITEMS.saturating_sub(self.n_items);
        let items = core.store().log().ids_above(conversation, floor, budget)?;
        self.n_items += items.len();
        let initiator = self.me < self.peer;
        let (reconciler, first) = Reconciler::new(conversation, items, initiator)?;
        if let Some(message) = first {
            self.transmit.push_back(PeerFrame::Reconcile {
                conversation,
                message,
            });
        }
        self.reconciling.insert(conversation, reconciler);
        Ok(())
    }
}

/// The sequence up to which every event of `conversation` this log holds is placed (or inside a
/// recorded history gap): the device's gap-free pull cursor, walked on over what came since it
/// was stored (a peer's events), so a session start does not read the whole history.
fn placed_up_to(log: &crate::log::EventLog, conversation: ConversationId) -> Result<u64, LogError> {
    let stored = log.cursor(&crate::device::cursor_key(&conversation))?;
    log.contiguous_seq(conversation, stored)
}

/// Adds the relay statements placing `conversation`'s sequences after `their_placed` that
/// this log holds placed, at most [`MAX_SESSION_EVENTS`] of them. A version vector counts an
/// event the peer holds whatever its place, so an event it took early (from a peer, before the
/// relay placed it) is not sent again, and neither would the statement that places it be: the
/// Hello therefore carries, under the relay's id, the sequence up to which every event is
/// placed on its side (its gap-free cursor).
fn placed_after(
    log: &crate::log::EventLog,
    batches: &mut Batches,
    conversation: ConversationId,
    their_placed: u64,
) -> Result<(), PeerError> {
    let ours = placed_up_to(log, conversation)?;
    let last = ours.min(their_placed.saturating_add(MAX_SESSION_EVENTS as u64));
    let mut seen = std::collections::HashSet::new();
    for seq in their_placed.saturating_add(1)..=last {
        let Some(id) = log.statement_at(conversation, seq)? else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        if let Some(statement) = log.get(&id)? {
            batches.statement(&statement);
        }
    }
    Ok(())
}

/// This device's version vectors of `shared`.
fn vectors(
    core: &DeviceCore,
    shared: &BTreeSet<ConversationId>,
) -> Result<Vec<ConversationVector>, LogError> {
    let log = core.store().log();
    shared
        .iter()
        .map(|c| {
            Ok(ConversationVector {
                conversation: *c,
                authors: log.version_vector(*c)?,
            })
        })
        .collect()
}
