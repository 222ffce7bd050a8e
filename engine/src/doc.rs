//! A conversation's CRDT state as bounded automerge documents, and the fold of events into
//! them.
//!
//! # Layout
//! No document grows with the conversation's history:
//! - one **segment** document per [`SEGMENT_SEQS`] server sequences, holding each sequenced
//!   message once, with its place (`m:<id>` → record, seq, server ts);
//! - one small **head** document for what has no place yet (pending messages), the `Create`,
//!   membership changes and the receipt watermarks (one key per device, written only when it
//!   rises). A head that collects more than [`MAX_HEAD_OPS`] operations (messages placed since,
//!   overwritten watermarks) is rebuilt under a new actor from what is still live.
//!
//! Keys are flat (no nested objects, so two replicas never create "the same" object twice),
//! each key has one kind of writer, and reads take every conflicting value of a key
//! (`get_all`) and join them (lowest event, min sequence, max watermark), never automerge's
//! arbitrary winner. The key tables are in [`layout`].
//!
//! # One operation per message
//! Writes of messages, places and watermarks are staged while events are folded and written at
//! [`ConversationDoc::commit`], each document committing once: a `Send` whose place is known by
//! then (same page, or folded earlier) is one put into its segment; a `Send` folded and
//! committed before its place (own sends) is one put into the head, then one into its segment at
//! placement; several receipts of one device between two commits are one put.

mod layout;
mod part;

pub use part::PartId;

use crate::conversation::{Change, Conversation, MessageRecord, Receipt};
use crate::event::{Event, EventKind};
use crate::ids::{ConversationId, DeviceId, MessageId, ServerSeq, UserId};
use automerge::ActorId;
use layout::{
    ack_key, encode, mark_key, members_key, message_key, AckRecord, CreateRecord, MarkRecord,
    MembersRecord, SequencedRecord,
};
use part::Part;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Server sequences per segment document: a segment holds at most this many messages, so a
/// put, a load and a merge cost the same in a new or a ten-year-old conversation.
pub const SEGMENT_SEQS: u64 = 1_024;
/// Operations the head document takes before it is rebuilt from what is still live (or twice
/// the live keys, if more).
pub const MAX_HEAD_OPS: u64 = 4_096;
/// Starts the bytes of [`ConversationDoc::save`].
const BUNDLE_MAGIC: &[u8] = b"tidings-conversation-docs-v2\0";

/// Why a document could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocError {
    /// automerge refused the bytes.
    #[error("automerge document does not load: {0}")]
    Load(String),
    /// automerge panicked on the bytes.
    #[error("automerge panicked while reading the document")]
    Panicked,
    /// A key holds a value that is not ours.
    #[error("document key {key:?} holds an invalid value")]
    BadValue {
        /// The key.
        key: String,
    },
    /// automerge refused an operation.
    #[error("automerge operation failed: {0}")]
    Op(String),
}

/// What the next commit writes.
#[derive(Debug, Default)]
struct Staged {
    /// Messages whose record (with its lowest place, if any) is written.
    messages: BTreeSet<MessageId>,
    /// Places folded: (seq, message). Written as `s:` keys unless the message's record covers them.
    places: BTreeSet<(ServerSeq, MessageId)>,
    /// Watermarks that rose.
    marks: BTreeSet<(DeviceId, ReceiptKind)>,
}

impl Staged {
    fn len(&self) -> usize {
        self.messages.len() + self.places.len() + self.marks.len()
    }
}

/// [`Receipt`] with an order, for the staging set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ReceiptKind {
    Delivered,
    Read,
}

/// The bytes of [`ConversationDoc::save`]: every document, by [`PartId::to_u64`].
#[derive(Serialize, Deserialize)]
struct Bundle {
    parts: Vec<(u64, Vec<u8>)>,
}

/// One conversation's documents with their plain-Rust mirror.
#[derive(Debug)]
pub struct ConversationDoc {
    actor: ActorId,
    head: Part,
    /// Live keys of the head after its last rebuild: it is rebuilt again at twice that.
    head_live: u64,
    segments: BTreeMap<u64, Part>,
    state: Conversation,
    staged: Staged,
    /// Places staged since the last commit, with their server timestamps.
    place_ts: BTreeMap<(ServerSeq, MessageId), u64>,
}

impl ConversationDoc {
    /// Empty documents written by `actor`. Give every (device, rebuild) its own actor: two
    /// documents that reuse an actor for different changes cannot be merged.
    pub fn new(id: ConversationId, actor: ActorId) -> ConversationDoc {
        ConversationDoc {
            head: Part::new(actor.clone()),
            actor,
            head_live: 0,
            segments: BTreeMap::new(),
            state: Conversation::new(id),
            staged: Staged::default(),
            place_ts: BTreeMap::new(),
        }
    }

    /// Loads what [`ConversationDoc::save`] wrote. Corrupt bytes give an error (the caller
    /// rebuilds from the log), never a panic.
    pub fn load(
        id: ConversationId,
        bytes: &[u8],
        actor: ActorId,
    ) -> Result<ConversationDoc, DocError> {
        let body = bytes
            .strip_prefix(BUNDLE_MAGIC)
            .ok_or_else(|| DocError::Load("not a conversation document bundle".into()))?;
        let bundle: Bundle =
            postcard::from_bytes(body).map_err(|e| DocError::Load(e.to_string()))?;
        let parts: Vec<(PartId, &[u8])> = bundle
            .parts
            .iter()
            .map(|(k, b)| (PartId::from_u64(*k), b.as_slice()))
            .collect();
        ConversationDoc::load_parts(id, &parts, actor)
    }

    /// Loads saved documents (as [`ConversationDoc::save_parts`] gave them); a missing head is
    /// an empty one.
    pub fn load_parts(
        id: ConversationId,
        parts: &[(PartId, &[u8])],
        actor: ActorId,
    ) -> Result<ConversationDoc, DocError> {
        let mut doc = ConversationDoc::new(id, actor.clone());
        for (part, bytes) in parts {
            let loaded = Part::load(bytes, actor.clone())?;
            match part {
                PartId::Head => doc.head = loaded,
                PartId::Segment(k) => {
                    doc.segments.insert(*k, loaded);
                }
            }
        }
        doc.head_live = doc.head.ops;
        doc.state = doc.read_state()?;
        Ok(doc)
    }

    /// The conversation as it stands.
    pub fn state(&self) -> &Conversation {
        &self.state
    }

    /// Marks a message FAILED or clears it (local, not written to the documents).
    pub fn set_failed(&mut self, message: MessageId, failed: bool) -> Vec<Change> {
        self.state.set_failed(message, failed)
    }

    /// Records who holds a message by a peer receipt (local, not written to the documents).
    pub fn set_peer_held(
        &mut self,
        message: MessageId,
        held: crate::status::PeerHeld,
    ) -> Vec<Change> {
        self.state.set_peer_held(message, held)
    }

    /// Records the members after the membership change the device's gate admitted at `seq`.
    pub fn set_members(
        &mut self,
        seq: ServerSeq,
        members: Vec<UserId>,
    ) -> Result<Vec<Change>, DocError> {
        if self.state.has_membership(seq) {
            return Ok(Vec::new());
        }
        let record = MembersRecord {
            seq,
            members: members.clone(),
        };
        self.head.put(members_key(seq), encode(&record))?;
        Ok(self.state.apply_membership(seq, members))
    }

    /// Folds one verified event. Deterministic; idempotent; order-independent in its result.
    /// Events of another conversation are ignored. What it writes is staged until
    /// [`ConversationDoc::commit`].
    pub fn fold(&mut self, event: &Event) -> Result<Vec<Change>, DocError> {
        if event.conversation() != self.state.id() {
            return Ok(Vec::new());
        }
        let h = event.header();
        let changes = match event.kind() {
            EventKind::Create { members } => {
                let changes = self.state.apply_create(event.id(), members.clone());
                if !changes.is_empty() {
                    let record = CreateRecord {
                        event: event.id(),
                        members: members.clone(),
                    };
                    self.head.put("c".to_owned(), encode(&record))?;
                }
                changes
            }
            EventKind::Send {
                message,
                body,
                media,
            } => {
                let record = MessageRecord {
                    event: event.id(),
                    author: h.author,
                    user: h.user,
                    lamport: h.lamport,
                    wall_ms: h.wall_ms,
                    body: body.clone(),
                    media: media.clone(),
                };
                let changes = self.state.apply_message(*message, record);
                if !changes.is_empty() {
                    self.staged.messages.insert(*message);
                }
                changes
            }
            EventKind::ServerAck { .. } | EventKind::Sequenced { .. } => {
                let mut changes = Vec::new();
                for p in event.placements() {
                    let Some(message) = p.message else { continue };
                    if self.state.knows_ack(&message, p.seq) {
                        continue;
                    }
                    self.staged.places.insert((p.seq, message));
                    self.place_ts.insert((p.seq, message), p.server_ts_ms);
                    changes.extend(self.state.apply_ack(message, p.seq, p.server_ts_ms));
                }
                changes
            }
            EventKind::Delivered { up_to, .. } => {
                self.receipt(h.author, h.user, Receipt::Delivered, *up_to)
            }
            EventKind::Read { up_to, .. } => self.receipt(h.author, h.user, Receipt::Read, *up_to),
            // Acks of non-message events and kinds from newer builds carry nothing to show.
            _ => Vec::new(),
        };
        Ok(changes)
    }

    /// Writes what the folds since the last commit staged and commits each document written
    /// to as one automerge change. Folding a whole page per commit is what makes a sequenced
    /// message one operation.
    pub fn commit(&mut self) {
        if let Err(err) = self.flush() {
            // A put into a map root with a string key and a bytes value does not fail; if
            // automerge ever refuses one, the log still holds the event and a rebuild restores it.
            tracing::error!(conversation = %self.state.id(), %err, "automerge refused a staged write");
        }
        self.head.commit();
        for s in self.segments.values_mut() {
            s.commit();
        }
    }

    /// Every document, compacted, in one byte string ([`ConversationDoc::load`] reads it).
    pub fn save(&mut self) -> Vec<u8> {
        self.commit();
        let parts = self
            .all_parts_mut()
            .map(|(id, p)| (id.to_u64(), p.save()))
            .collect();
        let mut out = BUNDLE_MAGIC.to_vec();
        out.extend_from_slice(&encode(&Bundle { parts }));
        out
    }

    /// The documents changed since they were last saved, compacted (the head always: it is
    /// small, and a snapshot records the log position there).
    pub fn save_parts(&mut self) -> Vec<(PartId, Vec<u8>)> {
        self.commit();
        self.head.dirty = true;
        self.all_parts_mut()
            .filter(|(_, p)| p.dirty)
            .map(|(id, p)| (id, p.save()))
            .collect()
    }

    /// Merges another replica's documents into these, document by document, and returns what
    /// became visible.
    pub fn merge(&mut self, other: &mut ConversationDoc) -> Result<Vec<Change>, DocError> {
        self.commit();
        other.commit();
        self.head.merge(&mut other.head)?;
        for (k, theirs) in other.segments.iter_mut() {
            let actor = self.actor.clone();
            let ours = self.segments.entry(*k).or_insert_with(|| Part::new(actor));
            ours.merge(theirs)?;
        }
        let before = self.state.clone();
        let mut state = self.read_state()?;
        state.copy_failed_from(&before);
        let changes = before.diff_to(&state);
        self.state = state;
        Ok(changes)
    }

    /// Number of writes folded since the last commit (staged or written).
    pub fn uncommitted(&self) -> usize {
        self.staged.len()
            + self.head.uncommitted
            + self.segments.values().map(|s| s.uncommitted).sum::<usize>()
    }

    /// Operations written into the current documents since they were made or loaded (a loaded
    /// document counts its keys). Rebuilding the head starts its count again.
    pub fn n_ops(&self) -> u64 {
        self.head.ops + self.segments.values().map(|s| s.ops).sum::<u64>()
    }

    /// Each document with its number of keys.
    pub fn part_sizes(&self) -> Vec<(PartId, usize)> {
        use automerge::{ReadDoc, ROOT};
        std::iter::once((PartId::Head, &self.head))
            .chain(self.segments.iter().map(|(k, p)| (PartId::Segment(*k), p)))
            .map(|(id, p)| (id, p.doc.length(ROOT)))
            .collect()
    }

    fn receipt(
        &mut self,
        device: DeviceId,
        user: UserId,
        receipt: Receipt,
        up_to: ServerSeq,
    ) -> Vec<Change> {
        let changes = self.state.apply_receipt(device, user, receipt, up_to);
        if !changes.is_empty() {
            let kind = match receipt {
                Receipt::Delivered => ReceiptKind::Delivered,
                Receipt::Read => ReceiptKind::Read,
            };
            self.staged.marks.insert((device, kind));
        }
        changes
    }

    fn flush(&mut self) -> Result<(), DocError> {
        let staged = std::mem::take(&mut self.staged);
        let place_ts = std::mem::take(&mut self.place_ts);
        let mut messages = staged.messages;
        for (seq, m) in &staged.places {
            if self.covers(m, *seq) {
                messages.insert(*m);
            } else {
                let ts_ms = place_ts.get(&(*seq, *m)).copied().unwrap_or_default();
                let record = AckRecord { message: *m, ts_ms };
                self.segment(*seq).put(ack_key(*seq), encode(&record))?;
            }
        }
        for m in messages {
            let Some(record) = self.state.record(&m).cloned() else {
                continue;
            };
            match self.state.place_of(&m) {
                Some((seq, ts_ms)) => {
                    let value = SequencedRecord { record, seq, ts_ms };
                    self.segment(seq).put(message_key(&m), encode(&value))?;
                }
                None => self.head.put(message_key(&m), encode(&record))?,
            }
        }
        for (device, kind) in staged.marks {
            let Some(marks) = self.state.device_marks(&device) else {
                continue;
            };
            let (receipt, up_to) = match kind {
                ReceiptKind::Delivered => (Receipt::Delivered, marks.delivered),
                ReceiptKind::Read => (Receipt::Read, marks.read),
            };
            let record = MarkRecord {
                user: marks.user,
                up_to,
            };
            self.head.put(mark_key(receipt, &device), encode(&record))?;
        }
        if self.head.ops > MAX_HEAD_OPS.max(2 * self.head_live) {
            self.rebuild_head()?;
        }
        Ok(())
    }

    /// Whether the message's record, written with its lowest place, carries this place.
    fn covers(&self, message: &MessageId, seq: ServerSeq) -> bool {
        self.state.record(message).is_some()
            && self.state.place_of(message).is_some_and(|(s, _)| s == seq)
    }

    fn segment(&mut self, seq: ServerSeq) -> &mut Part {
        let actor = self.actor.clone();
        self.segments
            .entry(seq / SEGMENT_SEQS)
            .or_insert_with(|| Part::new(actor))
    }

    /// Replaces the head with a new document holding only what is live: the `Create`, the
    /// membership changes, the watermarks and the messages still without a place. The new
    /// document's actor is derived from the old one and its heads, so no actor ever writes two
    /// different changes under one sequence number.
    fn rebuild_head(&mut self) -> Result<(), DocError> {
        self.head.commit();
        let mut seed = self.head.doc.get_actor().to_bytes().to_vec();
        for h in self.head.doc.get_heads() {
            seed.extend_from_slice(&h.0);
        }
        let derived = blake3::derive_key("tidings head document actor v1", &seed);
        let mut head = Part::new(ActorId::from(&derived[..16]));
        if let Some((event, members)) = self.state.create_record() {
            let record = CreateRecord {
                event,
                members: members.to_vec(),
            };
            head.put("c".to_owned(), encode(&record))?;
        }
        for (seq, members) in self.state.memberships() {
            let record = MembersRecord {
                seq: *seq,
                members: members.clone(),
            };
            head.put(members_key(*seq), encode(&record))?;
        }
        for (device, marks) in self.state.all_device_marks() {
            for (receipt, up_to) in [
                (Receipt::Delivered, marks.delivered),
                (Receipt::Read, marks.read),
            ] {
                if up_to > 0 {
                    let record = MarkRecord {
                        user: marks.user,
                        up_to,
                    };
                    head.put(mark_key(receipt, device), encode(&record))?;
                }
            }
        }
        for m in self.state.pending_ids() {
            if let Some(record) = self.state.record(&m) {
                head.put(message_key(&m), encode(record))?;
            }
        }
        head.commit();
        self.head_live = head.ops;
        self.head = head;
        Ok(())
    }

    fn all_parts_mut(&mut self) -> impl Iterator<Item = (PartId, &mut Part)> {
        std::iter::once((PartId::Head, &mut self.head)).chain(
            self.segments
                .iter_mut()
                .map(|(k, p)| (PartId::Segment(*k), p)),
        )
    }

    /// Rebuilds the mirror from the documents: every value of every key, joined.
    fn read_state(&self) -> Result<Conversation, DocError> {
        let mut state = Conversation::new(self.state.id());
        self.head.read_into(&mut state, layout::apply_head_key)?;
        for s in self.segments.values() {
            s.read_into(&mut state, layout::apply_segment_key)?;
        }
        Ok(state)
    }
}
