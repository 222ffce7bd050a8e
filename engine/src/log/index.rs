//! The fast read path: messages in view order straight from the index tables (`msg_by_seq`,
//! `unsequenced`, `msg_by_id`, `acks`, `marks`, `memberships`), in redb read transactions.
//!
//! No automerge document is loaded, so the cost of a read depends on what it returns, not on
//! the conversation's history. A read transaction sees the last commit and never waits behind
//! a write (redb's MVCC), so a [`LogReader`] can serve a UI from another thread while the
//! device's task writes.
//!
//! View order is the one [`crate::conversation::Conversation::messages`] gives: messages with
//! a server sequence by sequence, then pending ones by (lamport, message id). A
//! [`PageCursor`] names a place in that order, so pages of older messages line up whether
//! their first message is sequenced or pending.

use super::{
    corrupt, read_history, read_meta, Conv, ConversationMeta, EventLog, Id32, LogError, MarksValue,
    OutboxEntry, OutboxState, UnseqKey, ACKS, CONVS, EPOCH_KEYS, MARKS, MEMBERSHIPS, MSG_BY_ID,
    MSG_BY_SEQ, OUTBOX, OUTBOX_BY_EVENT, UNSEQUENCED,
};
use crate::conversation::{members_at, MembershipHistory, MessageRecord, MessageView};
use crate::event::{Event, EventKind};
use crate::ids::{ConversationId, EventId, MessageId, ServerSeq, UserId};
use crate::status::{derive_status_with, UserMarks};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Most messages one read returns ([`LogReader::page`], [`LogReader::messages`]): a screen is
/// tens of messages; a caller asking for more gets this many and pages on.
pub const MAX_PAGE_LEN: usize = 1_000;

/// A place in a conversation's view order: a page of older messages ends just before it.
///
/// Sequenced messages come first (by sequence), pending ones after them (by lamport, then
/// message id), and the derived order of this enum is exactly that order. A pending message
/// that the relay sequences between two reads moves from the pending tail to the sequenced
/// part; a UI that keeps messages by id sees it once (its `Update::StatusChanged` says so).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageCursor {
    /// The place of a message with this server sequence.
    Seq(ServerSeq),
    /// The place of a message without a sequence yet.
    Pending {
        /// The author's lamport clock at send time.
        lamport: u64,
        /// The message.
        message: MessageId,
    },
}

impl PageCursor {
    /// The place of `view` (pass the first message of a page to read the page before it).
    pub fn of(view: &MessageView) -> PageCursor {
        match view.seq {
            Some(seq) => PageCursor::Seq(seq),
            None => PageCursor::Pending {
                lamport: view.record.lamport,
                message: view.id,
            },
        }
    }
}

/// The cursor (see [`EventLog::cursor`]) that holds how far this device read a conversation
/// without telling anyone: a device with read receipts off sends no `Read` event, and keeps
/// its own read mark here for its unread counts.
pub fn local_read_key(conversation: &ConversationId) -> Vec<u8> {
    let mut k = b"read-local/".to_vec();
    k.extend_from_slice(&conversation.0);
    k
}

/// A read handle on an [`EventLog`]'s index tables. Cheap to clone and `Send + Sync`: it shares
/// the log's redb database, whose read transactions see the last commit and never wait behind
/// the writer. It keeps the database (and its file lock) open while it lives.
#[derive(Clone, Debug)]
pub struct LogReader {
    db: Arc<super::seal::LogDb>,
}

impl EventLog {
    /// A read handle for the fast reads, usable from other threads (see [`LogReader`]).
    pub fn reader(&self) -> LogReader {
        LogReader {
            db: Arc::clone(&self.db),
        }
    }

    /// The last `n` messages of a conversation in view order (see [`LogReader::page`]).
    pub fn latest_messages(
        &self,
        conversation: ConversationId,
        n: usize,
    ) -> Result<Vec<MessageView>, LogError> {
        self.reader().page(conversation, None, n)
    }

    /// Messages from other users that no device of `user` has read, from the index tables.
    pub fn unread_count(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<usize, LogError> {
        self.reader().unread_count(conversation, user)
    }
}

impl LogReader {
    /// Up to `n` (at most [`MAX_PAGE_LEN`]) messages of a conversation that come just before
    /// `before` in view order (the latest ones for `None`), in view order, with statuses.
    /// Pass [`PageCursor::of`] the first message returned to read the page before it.
    pub fn page(
        &self,
        conversation: ConversationId,
        before: Option<PageCursor>,
        n: usize,
    ) -> Result<Vec<MessageView>, LogError> {
        let n = n.min(MAX_PAGE_LEN);
        let txn = self.db.begin_read()?;
        let ids = page_ids(&txn, conversation, before, n)?;
        let mut views = Views::open(&txn)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(views.view(conversation, &id)?);
        }
        Ok(out)
    }

    /// One message, if it is visible in the conversation.
    pub fn message(
        &self,
        conversation: ConversationId,
        message: MessageId,
    ) -> Result<Option<MessageView>, LogError> {
        Ok(self.messages(&[(conversation, message)])?.pop().flatten())
    }

    /// Several messages (at most [`MAX_PAGE_LEN`]; the rest are not looked at), from one read
    /// transaction: each one's view, `None` where it is not visible (unknown, refused by the
    /// gate, or held for it).
    pub fn messages(
        &self,
        wanted: &[(ConversationId, MessageId)],
    ) -> Result<Vec<Option<MessageView>>, LogError> {
        let txn = self.db.begin_read()?;
        let by_id = txn.open_table(MSG_BY_ID)?;
        let unsequenced = txn.open_table(UNSEQUENCED)?;
        let by_seq = txn.open_table(MSG_BY_SEQ)?;
        let acks = txn.open_table(ACKS)?;
        let mut views = Views::open(&txn)?;
        let mut out = Vec::with_capacity(wanted.len().min(MAX_PAGE_LEN));
        for (conversation, message) in wanted.iter().take(MAX_PAGE_LEN) {
            let c = &conversation.0;
            let Some(id) = by_id.get((c, &message.0))?.map(|g| *g.value()) else {
                out.push(None);
                continue;
            };
            // Visible exactly when one of the two listings that `page` reads names it.
            let visible = match acks.get(&id)?.map(|g| g.value().0) {
                Some(seq) => by_seq.get((c, seq))?.is_some_and(|g| *g.value() == id),
                None => unsequenced.get((c, &message.0))?.is_some(),
            };
            out.push(if visible {
                views.view(*conversation, &id)?
            } else {
                None
            });
        }
        Ok(out)
    }

    /// Messages from other users that no device of `user` has read, from the index tables
    /// (nor this device, on its own, with read receipts off: see [`local_read_key`]).
    pub fn unread_count(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<usize, LogError> {
        let txn = self.db.begin_read()?;
        let c = &conversation.0;
        let marks = user_marks(&txn.open_table(MARKS)?, &conversation)?;
        let local = txn
            .open_table(super::CURSORS)?
            .get(local_read_key(&conversation).as_slice())?
            .map(|g| g.value())
            .unwrap_or(0);
        let read = marks.get(&user).map(|m| m.read).unwrap_or(0).max(local);
        let by_seq = txn.open_table(MSG_BY_SEQ)?;
        let events = super::entries::read(&txn)?;
        let pending = unsequenced(&txn.open_table(UNSEQUENCED)?, &conversation)?;
        let acked = by_seq.range((c, read.saturating_add(1))..=(c, u64::MAX))?;
        let mut n = 0;
        for id in acked
            .map(|r| r.map(|(_, v)| *v.value()))
            .chain(pending.into_iter().map(|(_, _, id)| Ok(id)))
        {
            if let Some(g) = events.get(&id?)? {
                let ev = Event::decode_trusted(g.value().1).map_err(|e| corrupt("events", e))?;
                n += usize::from(ev.header().user != user);
            }
        }
        Ok(n)
    }

    /// Every conversation with its facts.
    pub fn conversations(&self) -> Result<Vec<(ConversationId, ConversationMeta)>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CONVS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let meta = postcard::from_bytes(v.value()).map_err(|e| corrupt("conversations", e))?;
            out.push((ConversationId(*k.value()), meta));
        }
        Ok(out)
    }

    /// The stored (sealed) record of one epoch key, if this device holds it.
    pub fn epoch_key(
        &self,
        conversation: ConversationId,
        epoch: EventId,
    ) -> Result<Option<Vec<u8>>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EPOCH_KEYS)?;
        Ok(table
            .get((&conversation.0, &epoch.0))?
            .map(|g| g.value().to_vec()))
    }
}

/// The `Send` event ids of the page of `n` messages before `before`, in view order.
fn page_ids(
    txn: &ReadTransaction,
    conversation: ConversationId,
    before: Option<PageCursor>,
    n: usize,
) -> Result<Vec<[u8; 32]>, LogError> {
    let c = &conversation.0;
    let mut ids: Vec<[u8; 32]> = Vec::with_capacity(n);
    // Newest first, then reversed. Pending messages come after every sequenced one.
    let top_seq = match before {
        Some(PageCursor::Seq(seq)) => seq.checked_sub(1),
        None | Some(PageCursor::Pending { .. }) => {
            // Pending messages are few (they wait for the relay): read them all and order them.
            let mut pending = unsequenced(&txn.open_table(UNSEQUENCED)?, &conversation)?;
            pending.sort_unstable();
            let end = match before {
                Some(PageCursor::Pending { lamport, message }) => {
                    pending.partition_point(|(l, m, _)| (*l, *m) < (lamport, message.0))
                }
                _ => pending.len(),
            };
            ids.extend(pending[..end].iter().rev().take(n).map(|(_, _, id)| *id));
            Some(u64::MAX)
        }
    };
    let rest = n - ids.len();
    if let Some(top) = top_seq.filter(|_| rest > 0) {
        let by_seq = txn.open_table(MSG_BY_SEQ)?;
        for row in by_seq.range((c, 0u64)..=(c, top))?.rev().take(rest) {
            ids.push(*row?.1.value());
        }
    }
    ids.reverse();
    Ok(ids)
}

/// What a message's status needs about its conversation, read once per read transaction.
struct Facts {
    history: MembershipHistory,
    create: Option<Vec<UserId>>,
    marks: BTreeMap<UserId, UserMarks>,
}

/// The tables that turn a `Send` event id into its [`MessageView`], open in one read
/// transaction, with each conversation's [`Facts`] read once.
struct Views {
    events: super::entries::ReadEvents,
    acks: redb::ReadOnlyTable<Id32, (u64, u64, Id32)>,
    outbox: redb::ReadOnlyTable<u64, &'static [u8]>,
    outbox_by_event: redb::ReadOnlyTable<Id32, u64>,
    convs: redb::ReadOnlyTable<Conv, &'static [u8]>,
    memberships: redb::ReadOnlyTable<(Conv, u64), &'static [u8]>,
    marks: redb::ReadOnlyTable<(Conv, Id32), MarksValue>,
    peer_held: redb::ReadOnlyTable<(Conv, &'static [u8; 16]), &'static [u8]>,
    facts: HashMap<ConversationId, Facts>,
}

impl Views {
    fn open(txn: &ReadTransaction) -> Result<Views, LogError> {
        Ok(Views {
            events: super::entries::read(txn)?,
            acks: txn.open_table(ACKS)?,
            outbox: txn.open_table(OUTBOX)?,
            outbox_by_event: txn.open_table(OUTBOX_BY_EVENT)?,
            convs: txn.open_table(CONVS)?,
            memberships: txn.open_table(MEMBERSHIPS)?,
            marks: txn.open_table(MARKS)?,
            peer_held: txn.open_table(super::holds::PEER_HELD)?,
            facts: HashMap::new(),
        })
    }

    fn facts(&mut self, conversation: ConversationId) -> Result<&Facts, LogError> {
        if !self.facts.contains_key(&conversation) {
            let meta = read_meta(&self.convs, &conversation)?.unwrap_or_default();
            let facts = Facts {
                history: read_history(&self.memberships, &conversation)?,
                create: meta.members.map(|(_, m)| m),
                marks: user_marks(&self.marks, &conversation)?,
            };
            self.facts.insert(conversation, facts);
        }
        self.facts
            .get(&conversation)
            .ok_or_else(|| corrupt("conversations", "facts cache miss"))
    }

    /// The view of the `Send` event `id`; `None` (logged) when an index names another kind.
    fn view(
        &mut self,
        conversation: ConversationId,
        id: &[u8; 32],
    ) -> Result<Option<MessageView>, LogError> {
        let ev = {
            let guard = self
                .events
                .get(id)?
                .ok_or_else(|| corrupt("msg_by_seq", "points at a missing event"))?;
            Event::decode_trusted(guard.value().1).map_err(|e| corrupt("events", e))?
        };
        let EventKind::Send {
            message,
            body,
            media,
        } = ev.kind()
        else {
            tracing::warn!(event = %ev.id(), "an ack named a message for a non-message event");
            return Ok(None);
        };
        let ack = self.acks.get(id)?.map(|g| (g.value().0, g.value().1));
        let failed = match self.outbox_by_event.get(id)? {
            Some(pos) => match self.outbox.get(pos.value())? {
                Some(v) => {
                    let e: OutboxEntry =
                        postcard::from_bytes(v.value()).map_err(|e| corrupt("outbox", e))?;
                    e.state == OutboxState::Failed
                }
                None => false,
            },
            None => false,
        };
        let h = ev.header();
        let seq = ack.map(|a| a.0);
        let held = super::holds::read_peer_held(&self.peer_held, &conversation, message)?;
        let facts = self.facts(conversation)?;
        let members = members_at(&facts.history, facts.create.as_deref(), seq);
        Ok(Some(MessageView {
            id: *message,
            conversation,
            seq,
            server_ts_ms: ack.map(|a| a.1),
            status: derive_status_with(seq, failed, h.user, members, &facts.marks, held.as_ref()),
            record: MessageRecord {
                event: ev.id(),
                author: h.author,
                user: h.user,
                lamport: h.lamport,
                wall_ms: h.wall_ms,
                body: body.clone(),
                media: media.clone(),
            },
        }))
    }
}

/// A message without a sequence: (lamport, message id, event id), ordered as the view is.
type Unsequenced = (u64, [u8; 16], [u8; 32]);

/// A conversation's messages without a sequence.
fn unsequenced(
    table: &impl ReadableTable<UnseqKey, (u64, Id32)>,
    conversation: &ConversationId,
) -> Result<Vec<Unsequenced>, LogError> {
    let c = &conversation.0;
    let mut out = Vec::new();
    for row in table.range((c, &[0u8; 16])..=(c, &[0xffu8; 16]))? {
        let (k, v) = row?;
        let (_, m) = k.value();
        let (lamport, id) = v.value();
        out.push((lamport, *m, *id));
    }
    Ok(out)
}

pub(super) fn user_marks(
    table: &impl ReadableTable<(Conv, Id32), MarksValue>,
    conversation: &ConversationId,
) -> Result<BTreeMap<UserId, UserMarks>, LogError> {
    let c = &conversation.0;
    let mut out: BTreeMap<UserId, UserMarks> = BTreeMap::new();
    for row in table.range((c, &[0u8; 32])..=(c, &[0xffu8; 32]))? {
        let (_, v) = row?;
        let (user, d, r) = v.value();
        let m = out.entry(UserId(*user)).or_default();
        m.delivered = m.delivered.max(d);
        m.read = m.read.max(r);
    }
    Ok(out)
}
