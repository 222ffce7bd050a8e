//! Device-to-device reconciliation, sans-IO: two devices that share conversations send each
//! other the events the other is missing, without the relay.
//!
//! Each side opens with [`PeerFrame::Hello`]: per shared conversation, its version vector
//! (per author device, relay included, the highest counter it holds every event up to). The
//! other side answers with what is above those counters — the device certificates it holds
//! ([`PeerFrame::Directory`]), then the events in [`PeerFrame::Items`] together with the relay
//! statements that place them — and ends with [`PeerFrame::Done`]. The receiver admits the
//! items through [`crate::DeviceCore::handle_peer_items`], the very path of a relay page:
//! signatures checked, only the pinned relay's statements trusted, every event through the
//! gate at its place in the relay's order. A peer can therefore withhold events, never forge,
//! reorder or inject one.
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
//! # Call order
//! [`PeerSession::new`] (it queues the Hello), then for each frame read
//! [`PeerSession::handle_frame`]; after every call drain [`PeerSession::poll_transmit`]. The
//! session is over when [`PeerSession::is_done`].

use crate::device::{DeviceCore, DeviceError, VerifiedItems};
use crate::event::{Event, MAX_SEALED_KEY_LEN};
use crate::history::{HistoryKey, MAX_HISTORY_KEYS_PER_FRAME};
use crate::ids::{ConversationId, DeviceId, EventId, UserId};
use crate::log::LogError;
use crate::store::StoreError;
use crate::wire::{
    check, DeviceRegistration, DeviceRevocation, Envelope, Frame, WireError, MAX_FRAME_LEN,
    MAX_LISTED_CONVERSATIONS, MAX_LISTED_DEVICES, MAX_PAGE_ITEMS,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

/// The peer protocol version this build speaks.
///
/// 2: [`PeerFrame::HistoryKeys`] (a new device's history), [`PeerFrame::Unsequenced`] (events
/// the relay has not placed yet) and [`PeerFrame::Holds`] (peer receipts).
pub const PEER_PROTOCOL_VERSION: u16 = 2;
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
}

/// The devices this device admits as peers: every certified, unrevoked device (its own
/// user's included) of a user who shares a conversation with it, by the memberships the gate
/// admitted and the certificates the directory verified.
pub fn admitted_peers(core: &mut DeviceCore) -> Result<BTreeSet<DeviceId>, PeerError> {
    let me = core.store().key().device();
    let mut users: BTreeSet<UserId> = shared_users(core)?.into_keys().collect();
    // A device of the same user is a peer even before it holds any conversation: it may be
    // new, and its history comes from here (see `crate::history`).
    users.insert(core.store().key().user());
    let directory = core.store_mut().directory()?;
    let mut out = BTreeSet::new();
    for user in users {
        for (device, revoked) in directory.all_devices_of(&user) {
            if !revoked && device != me {
                out.insert(device);
            }
        }
    }
    Ok(out)
}

/// The conversations this device shares with `peer` (none if the directory cannot place it).
pub fn shared_conversations(
    core: &mut DeviceCore,
    peer: DeviceId,
) -> Result<BTreeSet<ConversationId>, PeerError> {
    let directory = core.store_mut().directory()?;
    let user = match directory.user_of(&peer) {
        Some(u) if !directory.is_revoked(&peer) => u,
        _ => return Ok(BTreeSet::new()),
    };
    Ok(shared_users(core)?.remove(&user).unwrap_or_default())
}

/// Whether `peer` is a certified, unrevoked device of this device's own user.
fn is_own_device(core: &mut DeviceCore, peer: DeviceId) -> Result<bool, PeerError> {
    let me = core.store().key();
    let (me_user, me_device) = (me.user(), me.device());
    let directory = core.store_mut().directory()?;
    Ok(peer != me_device
        && directory.user_of(&peer) == Some(me_user)
        && !directory.is_revoked(&peer))
}

/// Per user, the conversations whose current members include both that user and this
/// device's user.
fn shared_users(
    core: &DeviceCore,
) -> Result<BTreeMap<UserId, BTreeSet<ConversationId>>, PeerError> {
    let me = core.store().key().user();
    let mut out: BTreeMap<UserId, BTreeSet<ConversationId>> = BTreeMap::new();
    for (conversation, meta) in core.store().log().conversations()? {
        let Some((_, members)) = meta.members else {
            continue;
        };
        if !members.contains(&me) {
            continue;
        }
        for user in members {
            out.entry(user).or_default().insert(conversation);
        }
    }
    Ok(out)
}

/// One reconciliation with one peer. See the module docs for the call order.
#[derive(Debug)]
pub struct PeerSession {
    peer: DeviceId,
    shared: BTreeSet<ConversationId>,
    /// The peer is another device of this device's user: it gets every conversation of the
    /// user (listed in its Hello or not) and the history keys.
    own: bool,
    transmit: VecDeque<PeerFrame>,
    answered: bool,
    done: bool,
    /// The peer's receipt came.
    holds: bool,
    /// Events received from this peer, counted.
    n_received: u64,
    /// History keys taken from this peer.
    n_keys: u64,
}

impl PeerSession {
    /// A session with `peer`, refused unless this device admits it ([`admitted_peers`]);
    /// queues the Hello.
    pub fn new(core: &mut DeviceCore, peer: DeviceId) -> Result<PeerSession, PeerError> {
        let shared = shared_conversations(core, peer)?;
        let own = is_own_device(core, peer)?;
        if shared.is_empty() && !own {
            return Err(PeerError::NotAdmitted(peer));
        }
        let conversations = vectors(core, &shared)?;
        let mut transmit = VecDeque::new();
        transmit.push_back(PeerFrame::Hello {
            protocol_version: PEER_PROTOCOL_VERSION,
            conversations,
        });
        Ok(PeerSession {
            peer,
            shared,
            own,
            transmit,
            answered: false,
            done: false,
            holds: false,
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
        self.answered && self.done && self.holds
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
        match frame {
            PeerFrame::Hello {
                protocol_version,
                conversations,
            } => {
                if protocol_version != PEER_PROTOCOL_VERSION {
                    return Err(PeerError::Version(protocol_version));
                }
                if self.answered {
                    return Err(PeerError::Unexpected("a second Hello"));
                }
                self.answer(core, conversations, now_ms)?;
                self.answered = true;
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
        }
    }

    /// Queues what the peer's vectors say it is missing, in shared conversations only.
    fn answer(
        &mut self,
        core: &mut DeviceCore,
        mut theirs: Vec<ConversationVector>,
        now_ms: u64,
    ) -> Result<(), PeerError> {
        if self.own {
            // A new device of this user lists nothing yet: it gets every conversation.
            let listed: BTreeSet<ConversationId> = theirs.iter().map(|v| v.conversation).collect();
            theirs.extend(self.shared.difference(&listed).map(|c| ConversationVector {
                conversation: *c,
                authors: Vec::new(),
            }));
        }
        let log = core.store().log();
        let mut batches = Batches::default();
        for vector in theirs {
            if !self.shared.contains(&vector.conversation) {
                continue;
            }
            let c = vector.conversation;
            let have: BTreeMap<DeviceId, u64> = vector.authors.into_iter().collect();
            for (author, ours) in log.version_vector(c)? {
                let after = have.get(&author).copied().unwrap_or(0);
                if ours <= after {
                    continue;
                }
                let budget = MAX_SESSION_EVENTS.saturating_sub(batches.n_events);
                if budget == 0 {
                    // The rest goes in the next session: the peer's vectors will have moved.
                    break;
                }
                for event in log.author_events_after(c, author, after, budget)? {
                    if event.kind().is_sequencing() {
                        // A statement the peer lacks: it goes with the events it places.
                        for p in event.placements() {
                            if let Some(placed) = log.get(&p.event)? {
                                batches.pair(&placed, &event);
                            }
                        }
                    } else if let Some((seq, _)) = log.ack_of(&event.id())? {
                        let statement = match log.statement_at(c, seq)? {
                            Some(id) => log.get(&id)?,
                            None => None,
                        };
                        if let Some(statement) = statement {
                            batches.pair(&event, &statement);
                        }
                    } else {
                        batches.early(&event);
                    }
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
        self.transmit.extend(batches.finish());
        if self.own {
            let keys = core.seal_history_keys(self.peer, now_ms)?;
            for chunk in keys.chunks(MAX_HISTORY_KEYS_PER_FRAME) {
                self.transmit.push_back(PeerFrame::HistoryKeys {
                    keys: chunk.to_vec(),
                });
            }
        }
        self.transmit.push_back(PeerFrame::Done);
        Ok(())
    }
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

/// Items frames under construction: every event goes out with the statement that places it,
/// in the same frame, and each frame keeps to the limits.
#[derive(Default)]
struct Batches {
    frames: Vec<PeerFrame>,
    events: Vec<Envelope>,
    records: Vec<Envelope>,
    bytes: usize,
    /// Ids of the events and statements in the current frame.
    here: HashSet<EventId>,
    /// Events sent in an earlier frame (each event goes once; a statement goes with each
    /// frame that carries one of its events, as the receiver places each frame on its own).
    sent: HashSet<EventId>,
    /// Events added so far.
    n_events: usize,
    /// Unsequenced frames, and the one under construction with its bytes.
    early_frames: Vec<PeerFrame>,
    early: Vec<Envelope>,
    early_bytes: usize,
}

impl Batches {
    /// Adds `event` with the statement that places it.
    fn pair(&mut self, event: &Event, statement: &Event) {
        if self.sent.contains(&event.id()) || self.here.contains(&event.id()) {
            return;
        }
        let mut need = event.bytes().len();
        if !self.here.contains(&statement.id()) {
            need += statement.bytes().len();
        }
        let full = self.events.len() + 1 > MAX_PAGE_ITEMS
            || self.records.len() + 1 > MAX_PAGE_ITEMS
            || self.bytes + need > MAX_ITEMS_BYTES;
        if full {
            self.cut();
        }
        if self.here.insert(statement.id()) {
            self.bytes += statement.bytes().len();
            self.records.push(Envelope(statement.bytes().to_vec()));
        }
        self.here.insert(event.id());
        self.n_events += 1;
        self.bytes += event.bytes().len();
        self.events.push(Envelope(event.bytes().to_vec()));
    }

    /// Adds an event the relay has not placed yet.
    fn early(&mut self, event: &Event) {
        let len = event.bytes().len();
        if self.early.len() + 1 > MAX_PAGE_ITEMS || self.early_bytes + len > MAX_ITEMS_BYTES {
            self.cut_early();
        }
        self.n_events += 1;
        self.early_bytes += len;
        self.early.push(Envelope(event.bytes().to_vec()));
    }

    fn cut_early(&mut self) {
        if self.early.is_empty() {
            return;
        }
        self.early_bytes = 0;
        self.early_frames.push(PeerFrame::Unsequenced {
            events: std::mem::take(&mut self.early),
        });
    }

    fn cut(&mut self) {
        if self.events.is_empty() {
            return;
        }
        self.sent.extend(self.here.drain());
        self.bytes = 0;
        self.frames.push(PeerFrame::Items {
            events: std::mem::take(&mut self.events),
            records: std::mem::take(&mut self.records),
        });
    }

    /// Every frame: the placed events first, then the unplaced ones.
    fn finish(mut self) -> Vec<PeerFrame> {
        self.cut();
        self.cut_early();
        self.frames.append(&mut self.early_frames);
        self.frames
    }
}
