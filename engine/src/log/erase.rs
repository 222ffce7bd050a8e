//! Erasure: message bodies removed from the log by the conversation's retention policy (or,
//! for what the relay placed after this device's user was removed, because of that), with a
//! tombstone each, and the compaction that gives their space back to the file system.
//!
//! Erasing a message deletes its `Send` envelope (the only copy of its ciphertext body in the
//! log) and its rows in the message indexes (`msg_by_seq`, `msg_by_id`), drops the
//! conversation's document snapshots (automerge keeps the history of every value it ever
//! held, so a document that saw the body is rebuilt from the log rather than edited), and
//! writes a row in `erased`: what is gone, its place and why. What stays is what the protocol
//! needs: the event's id in `by_author` (so the author's chain stays verifiable and peers see
//! the counter as held), its place in `by_seq` and `acks` (the cursor and the gate never wait
//! for it again), the relay's statements, and every receipt mark (statuses of what is kept do
//! not move). The `erased` row makes a re-delivered copy (from the relay, a peer or a
//! resubmission) a duplicate: a body never comes back.
//!
//! Only messages the gate has passed are erased (at or below its `through`): the gate walk
//! never needs an erased envelope again.

use super::tables::{Conv, Id32};
use super::*;
use crate::retention::{ErasureReason, RetentionPolicy, DAY_MS};
use redb::TableDefinition;
use std::collections::HashSet;

/// (conversation, sequence of an admitted `SetRetention`) → postcard([`RetentionPolicy`]): the
/// policy in force after that sequence.
pub(super) const RETENTION: TableDefinition<(Conv, u64), &[u8]> = TableDefinition::new("retention");
/// `Send` event id → (conversation, message id, server seq, reason byte, erased at ms): the
/// tombstone of an erased message.
pub(super) const ERASED: TableDefinition<Id32, ErasedValue> = TableDefinition::new("erased");
/// An `erased` row.
pub(super) type ErasedValue = (Conv, &'static [u8; 16], u64, u8, u64);
/// (conversation, read mark of this device's user) → ms when this device learned of it: when
/// a disappearing message's delay starts.
pub(super) const READ_STEPS: TableDefinition<(Conv, u64), u64> = TableDefinition::new("read_steps");

/// The `cursors` row counting envelope bytes erased since the last compaction.
const ERASED_BYTES: &[u8] = b"erase/bytes";
/// Most messages one erasure pass removes: a pass is one write transaction, and a long one
/// would hold the writer (what is left is erased by the next pass, due at once).
pub const MAX_ERASE_BATCH: usize = 4_096;
/// Erased envelope bytes after which the next open compacts the file (see
/// [`EventLog::compact`]).
pub const COMPACT_AFTER_BYTES: u64 = 4 * 1024 * 1024;

/// One erased message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErasedMessage {
    /// Its conversation.
    pub conversation: ConversationId,
    /// The message.
    pub message: MessageId,
    /// Its `Send` event.
    pub event: EventId,
    /// Its server sequence.
    pub seq: ServerSeq,
    /// Why it is gone.
    pub reason: ErasureReason,
    /// When this device erased it (ms, the caller's clock).
    pub at_ms: u64,
}

/// What one erasure pass did.
#[derive(Clone, Debug, Default)]
pub struct ErasePass {
    /// Messages erased.
    pub erased: Vec<ErasedMessage>,
    /// Conversations whose epoch keys were erased (this device's user was removed).
    pub keys_dropped: Vec<ConversationId>,
    /// Per conversation looked at, when its next message is due (none: nothing will be
    /// until something changes: a read, a new message, a new policy).
    pub next_due_ms: Vec<(ConversationId, u64)>,
}

/// Creates the tables of this module (at open).
pub(super) fn create_tables(txn: &redb::WriteTransaction) -> Result<(), LogError> {
    txn.open_table(RETENTION)?;
    txn.open_table(ERASED)?;
    txn.open_table(READ_STEPS)?;
    Ok(())
}

/// Whether enough was erased since the last compaction for an open to compact.
pub(super) fn compaction_due(db: &Database) -> Result<bool, LogError> {
    let txn = db.begin_read()?;
    let bytes = txn
        .open_table(CURSORS)?
        .get(ERASED_BYTES)?
        .map_or(0, |g| g.value());
    Ok(bytes >= COMPACT_AFTER_BYTES)
}

/// Compacts `db` and resets the erased-bytes count.
pub(super) fn compact_db(db: &mut Database) -> Result<(), LogError> {
    db.compact()?;
    let txn = db.begin_write()?;
    txn.open_table(CURSORS)?.insert(ERASED_BYTES, 0)?;
    txn.commit()?;
    // The reset's commit copies pages to the end of the compacted file, and redb cannot cut
    // the file behind them: compacted once more, the file ends at the live data again (it
    // ended up to twice as long: tests/compaction.rs).
    db.compact()?;
    Ok(())
}

impl LogTxn<'_> {
    /// Records the policy a `SetRetention` admitted at `seq` puts in force (called by the gate
    /// walk).
    pub(super) fn record_policy(
        &mut self,
        conversation: ConversationId,
        seq: ServerSeq,
        policy: &RetentionPolicy,
    ) -> Result<(), LogError> {
        self.retention.insert(
            (&conversation.0, seq),
            super::txn::encode(policy).as_slice(),
        )?;
        Ok(())
    }

    /// Whether `event` was erased here (a copy delivered again is a duplicate).
    pub(super) fn is_erased(&self, event: &EventId) -> Result<bool, LogError> {
        Ok(self.erased.get(&event.0)?.is_some())
    }
}

/// The tables one pass writes.
struct Tables<'t> {
    events: super::entries::WriteEvents<'t>,
    msg_by_seq: redb::Table<'t, (Conv, u64), Id32>,
    msg_by_id: redb::Table<'t, UnseqKey, Id32>,
    acks: redb::Table<'t, Id32, (u64, u64, Id32)>,
    marks: redb::Table<'t, (Conv, Id32), MarksValue>,
    snapshots: redb::Table<'t, (Conv, u64), SnapshotValue>,
    epoch_keys: redb::Table<'t, (Conv, Id32), &'static [u8]>,
    erased: redb::Table<'t, Id32, ErasedValue>,
    read_steps: redb::Table<'t, (Conv, u64), u64>,
    bytes: u64,
}

/// A message found due: its place, event and reason.
struct Due {
    seq: ServerSeq,
    event: EventId,
    reason: ErasureReason,
}

impl EventLog {
    /// The policy in force in `conversation` after its last admitted `SetRetention`
    /// ([`RetentionPolicy::KeepAll`] when none).
    pub fn retention(&self, conversation: ConversationId) -> Result<RetentionPolicy, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RETENTION)?;
        let c = &conversation.0;
        let last = table
            .range((c, 0)..=(c, u64::MAX))?
            .next_back()
            .transpose()?;
        match last {
            Some((_, v)) => postcard::from_bytes(v.value()).map_err(|e| corrupt("retention", e)),
            None => Ok(RetentionPolicy::KeepAll),
        }
    }

    /// Conversations with at least one admitted retention policy.
    pub fn policed_conversations(&self) -> Result<Vec<ConversationId>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RETENTION)?;
        let mut out: Vec<ConversationId> = Vec::new();
        for row in table.iter()? {
            let (k, _) = row?;
            let c = ConversationId(*k.value().0);
            if out.last() != Some(&c) {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Every conversation the log knows.
    pub fn conversation_ids(&self) -> Result<Vec<ConversationId>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CONVS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            out.push(ConversationId(*row?.0.value()));
        }
        Ok(out)
    }

    /// The tombstones of `conversation`'s erased messages, in server order.
    pub fn erased(&self, conversation: ConversationId) -> Result<Vec<ErasedMessage>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ERASED)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let (c, message, seq, reason, at_ms) = v.value();
            if *c != conversation.0 {
                continue;
            }
            let reason = ErasureReason::from_u8(reason)
                .ok_or_else(|| corrupt("erased", "unknown reason"))?;
            out.push(ErasedMessage {
                conversation,
                message: MessageId(*message),
                event: EventId(*k.value()),
                seq,
                reason,
                at_ms,
            });
        }
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }

    /// Erases, in `conversations`, every message that is due at `now_ms` for device user `me`
    /// (see [`crate::retention`]), at most [`MAX_ERASE_BATCH`], in one durable transaction.
    pub fn erase_due(
        &self,
        me: UserId,
        conversations: &[ConversationId],
        now_ms: u64,
    ) -> Result<ErasePass, LogError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut pass = ErasePass::default();
        {
            let mut t = Tables {
                events: super::entries::write(&txn)?,
                msg_by_seq: txn.open_table(MSG_BY_SEQ)?,
                msg_by_id: txn.open_table(MSG_BY_ID)?,
                acks: txn.open_table(ACKS)?,
                marks: txn.open_table(MARKS)?,
                snapshots: txn.open_table(SNAPSHOTS)?,
                epoch_keys: txn.open_table(EPOCH_KEYS)?,
                erased: txn.open_table(ERASED)?,
                read_steps: txn.open_table(READ_STEPS)?,
                bytes: 0,
            };
            let gates = txn.open_table(GATES)?;
            let memberships = txn.open_table(MEMBERSHIPS)?;
            let retention = txn.open_table(RETENTION)?;
            let mut cursors = txn.open_table(CURSORS)?;
            for c in conversations {
                let budget = MAX_ERASE_BATCH.saturating_sub(pass.erased.len());
                let gate: Gate = match gates.get(&c.0)? {
                    Some(g) => postcard::from_bytes(g.value()).map_err(|e| corrupt("gates", e))?,
                    None => continue,
                };
                let history = read_history(&memberships, c)?;
                let (due, next) = if let Some(at) = removed_at(&gate, &history, &me) {
                    let due = removed_due(&t, c, at, gate.through, budget)?;
                    // The keys are judged again only when something may have changed: a
                    // message erased now, or keys other than those left by the last judgement
                    // (judging reads every message kept from before the removal).
                    let judged = keys_cursor(c);
                    let left = cursors.get(judged.as_slice())?.map(|g| g.value());
                    if !due.is_empty() || left != Some(count_keys(&t, c)?) {
                        if drop_unused_keys(&mut t, c, at)? {
                            pass.keys_dropped.push(*c);
                        }
                        cursors.insert(judged.as_slice(), count_keys(&t, c)?)?;
                    }
                    (due, None)
                } else {
                    let policies = read_policies(&retention, c)?;
                    policy_due(&mut t, c, &policies, gate.through, me, now_ms, budget)?
                };
                // Out of budget: the rest is due at once (the next pass goes on).
                let next = if due.len() >= budget {
                    Some(now_ms)
                } else {
                    next
                };
                if let Some(n) = next {
                    pass.next_due_ms.push((*c, n));
                }
                if due.is_empty() {
                    continue;
                }
                for d in due {
                    if let Some(m) = erase_one(&mut t, c, &d, now_ms)? {
                        pass.erased.push(m);
                    }
                }
                // The documents saw the bodies: they are rebuilt from the log.
                t.snapshots
                    .retain_in((&c.0, 0)..=(&c.0, u64::MAX), |_, _| false)?;
            }
            let before = cursors.get(ERASED_BYTES)?.map_or(0, |g| g.value());
            cursors.insert(ERASED_BYTES, before.saturating_add(t.bytes))?;
        }
        txn.commit()?;
        self.count_durable(Durability::Immediate);
        Ok(pass)
    }

    /// Gives the space of erased events back to the file system (redb's `compact`: live pages
    /// move to the front of the file and the file is cut), and resets the count that makes
    /// an open compact ([`COMPACT_AFTER_BYTES`]). Needs the only handle on the database: it
    /// fails with [`LogError::CompactionBusy`] while a [`LogReader`] is alive.
    pub fn compact(&mut self) -> Result<(), LogError> {
        let db = Arc::get_mut(&mut self.db).ok_or(LogError::CompactionBusy)?;
        compact_db(db)
    }

    /// Envelope bytes erased since the last compaction.
    pub fn erased_bytes(&self) -> Result<u64, LogError> {
        self.cursor(ERASED_BYTES)
    }
}

/// Where `me` stopped being a member, if it was one and, at the gate's point, no longer is:
/// the sequence of the membership change that removed it (the last such change).
fn removed_at(
    gate: &Gate,
    history: &crate::conversation::MembershipHistory,
    me: &UserId,
) -> Option<ServerSeq> {
    let m = gate.membership.as_ref()?;
    if m.is_member(me) {
        return None;
    }
    let mut was_member = false;
    let mut at = None;
    for (seq, members) in history.range(..=gate.through) {
        let is_member = members.contains(me);
        if was_member && !is_member {
            at = Some(*seq);
        }
        was_member = is_member;
    }
    at
}

fn read_policies(
    table: &impl ReadableTable<(Conv, u64), &'static [u8]>,
    c: &ConversationId,
) -> Result<Vec<(ServerSeq, RetentionPolicy)>, LogError> {
    let mut out = Vec::new();
    for row in table.range((&c.0, 0)..=(&c.0, u64::MAX))? {
        let (k, v) = row?;
        let policy = postcard::from_bytes(v.value()).map_err(|e| corrupt("retention", e))?;
        out.push((k.value().1, policy));
    }
    Ok(out)
}

/// Every message sequenced after the removal at `removed` (up to `through`): the device's
/// user was no longer a member when the relay placed them, so the device must not read them,
/// whoever sealed them under which epoch. What came before stays: a removal does not take
/// away what the device had already accepted.
fn removed_due(
    t: &Tables<'_>,
    c: &ConversationId,
    removed: ServerSeq,
    through: ServerSeq,
    budget: usize,
) -> Result<Vec<Due>, LogError> {
    let mut out = Vec::new();
    if removed >= through {
        return Ok(out);
    }
    for row in t
        .msg_by_seq
        .range((&c.0, removed + 1)..=(&c.0, through))?
        .take(budget)
    {
        let (k, v) = row?;
        out.push(Due {
            seq: k.value().1,
            event: EventId(*v.value()),
            reason: ErasureReason::Removed,
        });
    }
    Ok(out)
}

/// The `cursors` row holding how many epoch keys of `c` the last judgement of a removed
/// member's keys left.
fn keys_cursor(c: &ConversationId) -> Vec<u8> {
    let mut k = b"erase/keys-left/".to_vec();
    k.extend_from_slice(&c.0);
    k
}

/// The epoch keys of `c` the device holds.
fn count_keys(t: &Tables<'_>, c: &ConversationId) -> Result<u64, LogError> {
    let mut n = 0;
    for row in t
        .epoch_keys
        .range((&c.0, &[0u8; 32])..=(&c.0, &[0xffu8; 32]))?
    {
        row?;
        n += 1;
    }
    Ok(n)
}

/// Erases the conversation's epoch keys that no message kept from before the removal at
/// `removed` is sealed under: the keys the device can no longer use (what they open is not
/// for it). True when it erased some.
fn drop_unused_keys(
    t: &mut Tables<'_>,
    c: &ConversationId,
    removed: ServerSeq,
) -> Result<bool, LogError> {
    if count_keys(t, c)? == 0 {
        return Ok(false);
    }
    let mut needed: HashSet<[u8; 32]> = HashSet::new();
    for row in t.msg_by_seq.range((&c.0, 0)..=(&c.0, removed))? {
        let (_, v) = row?;
        let Some(g) = t.events.get(v.value())? else {
            continue;
        };
        let ev = Event::decode_trusted(g.value().1).map_err(|e| corrupt("events", e))?;
        if let EventKind::Send { body, .. } = ev.kind() {
            match crate::e2ee::SealedBody::parse(body) {
                Ok(crate::e2ee::SealedBody::Sealed { epoch, .. })
                | Ok(crate::e2ee::SealedBody::SealedMedia { epoch, .. }) => {
                    needed.insert(epoch.0);
                }
                _ => {}
            }
        }
    }
    let mut any = false;
    t.epoch_keys
        .retain_in((&c.0, &[0u8; 32])..=(&c.0, &[0xffu8; 32]), |k, _| {
            let keep = needed.contains(k.1);
            any |= !keep;
            keep
        })?;
    Ok(any)
}

/// The messages each policy segment makes due, and when the next one will be.
fn policy_due(
    t: &mut Tables<'_>,
    c: &ConversationId,
    policies: &[(ServerSeq, RetentionPolicy)],
    through: ServerSeq,
    me: UserId,
    now_ms: u64,
    budget: usize,
) -> Result<(Vec<Due>, Option<u64>), LogError> {
    let mut due = Vec::new();
    let mut next: Option<u64> = None;
    let mut soonest = |at: u64| next = Some(next.map_or(at, |n| n.min(at)));
    if policies
        .iter()
        .any(|(_, p)| matches!(p, RetentionPolicy::Disappear { .. }))
    {
        record_read_step(t, c, me, now_ms)?;
    }
    for (i, (from, policy)) in policies.iter().enumerate() {
        let end = policies
            .get(i + 1)
            .map_or(through, |(s, _)| (*s).min(through));
        if *from >= end || !policy.erases() {
            continue;
        }
        for row in t.msg_by_seq.range((&c.0, from + 1)..=(&c.0, end))? {
            if due.len() >= budget {
                break;
            }
            let (k, v) = row?;
            let (seq, event) = (k.value().1, EventId(*v.value()));
            let ts = t.acks.get(&event.0)?.map_or(0, |g| g.value().1);
            let (at, reason) = match *policy {
                RetentionPolicy::KeepDays { days } => (
                    Some(ts.saturating_add(u64::from(days) * DAY_MS)),
                    ErasureReason::Expired,
                ),
                RetentionPolicy::Disappear { after_read_secs } => {
                    let delay = u64::from(after_read_secs) * 1000;
                    let read_at = if author_user(t, &event)? == Some(me) {
                        Some(ts)
                    } else {
                        t.read_steps
                            .range((&c.0, seq)..=(&c.0, u64::MAX))?
                            .next()
                            .transpose()?
                            .map(|(_, v)| v.value())
                    };
                    (
                        read_at.map(|r| r.saturating_add(delay)),
                        ErasureReason::Disappeared,
                    )
                }
                RetentionPolicy::KeepAll => (None, ErasureReason::Expired),
            };
            match at {
                Some(at) if at <= now_ms => due.push(Due { seq, event, reason }),
                Some(at) => {
                    soonest(at);
                    // Server time only grows along the order: the rest are due later.
                    if matches!(policy, RetentionPolicy::KeepDays { .. }) {
                        break;
                    }
                }
                None => {}
            }
        }
    }
    Ok((due, next))
}

fn author_user(t: &Tables<'_>, event: &EventId) -> Result<Option<UserId>, LogError> {
    let Some(g) = t.events.get(&event.0)? else {
        return Ok(None);
    };
    let ev = Event::decode_trusted(g.value().1).map_err(|e| corrupt("events", e))?;
    Ok(Some(ev.header().user))
}

/// Notes when this device learned that its user read further (the start of a disappearing
/// message's delay).
fn record_read_step(
    t: &mut Tables<'_>,
    c: &ConversationId,
    me: UserId,
    now_ms: u64,
) -> Result<(), LogError> {
    let read = user_marks(&t.marks, c)?.get(&me).map_or(0, |m| m.read);
    let last = t
        .read_steps
        .range((&c.0, 0)..=(&c.0, u64::MAX))?
        .next_back()
        .transpose()?
        .map_or(0, |(k, _)| k.value().1);
    if read > last {
        t.read_steps.insert((&c.0, read), now_ms)?;
    }
    Ok(())
}

fn erase_one(
    t: &mut Tables<'_>,
    c: &ConversationId,
    d: &Due,
    now_ms: u64,
) -> Result<Option<ErasedMessage>, LogError> {
    let Some((_, bytes)) = t.events.remove(&d.event.0)? else {
        return Ok(None);
    };
    t.bytes += bytes.len() as u64;
    let event = Event::decode_trusted(&bytes).map_err(|e| corrupt("events", e))?;
    let Some(message) = event.message() else {
        return Err(corrupt(
            "msg_by_seq",
            "points at an event that is not a Send",
        ));
    };
    t.msg_by_seq.remove((&c.0, d.seq))?;
    if t.msg_by_id
        .get((&c.0, &message.0))?
        .is_some_and(|g| *g.value() == d.event.0)
    {
        t.msg_by_id.remove((&c.0, &message.0))?;
    }
    t.erased.insert(
        &d.event.0,
        (&c.0, &message.0, d.seq, d.reason.to_u8(), now_ms),
    )?;
    Ok(Some(ErasedMessage {
        conversation: *c,
        message,
        event: d.event,
        seq: d.seq,
        reason: d.reason,
        at_ms: now_ms,
    }))
}
