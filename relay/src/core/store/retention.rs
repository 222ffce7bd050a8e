//! Retention in the redb store: dropping what no device needs any more, and the records that
//! say what was dropped (see docs/RELIABILITY.md, "What the relay keeps").
//!
//! Five tables (schema 7):
//! - `retained`: conversation (16) → the retention floor: every event body at or below it is
//!   gone, except the kept ones ([`is_kept`]);
//! - `seq_times`: conversation (16) | seq (8) → server timestamp (ms) of the commit whose last
//!   sequence of the conversation that was: what the time-to-live is measured against;
//! - `pruned_chains`: conversation (16) | author (32) → the highest counter of the author whose
//!   `event_index` row is gone: an event at or below it may be a resubmission the relay can no
//!   longer recognise, so it is refused ([`crate::core::ChainInfo::expired`]) rather than
//!   sequenced twice;
//! - `seq_index`: conversation (16) | seq (8) → the event's `event_index` key, so that a pass
//!   finds the dedup rows to drop by sequence, in time proportional to what it drops;
//! - `dedup_floor`: conversation (16) → the index floor of the last pass.
//!
//! A pass ([`RelayStore::prune`]) drops, per conversation, the bodies at or below its body
//! floor and, at or below its index floor (the dedup window), the index rows, the statements
//! that place nothing kept and the `seq_times` rows. Freed pages are reused by later commits
//! (the file stops growing); [`RelayStore::compact`] gives them back to the file system.

use super::{
    seq_key, split_index_value, split_seq_key, IndexKey, RelayStore, SeqKey, StoreError, EVENTS,
    EVENT_INDEX, STATEMENTS,
};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tidings_engine::event::EventKind;
use tidings_engine::{ConversationId, DeviceId, Event, ServerSeq};

pub(super) const RETAINED: TableDefinition<[u8; 16], u64> = TableDefinition::new("retained");
pub(super) const SEQ_TIMES: TableDefinition<SeqKey, u64> = TableDefinition::new("seq_times");
pub(super) const PRUNED_CHAINS: TableDefinition<[u8; 48], u64> =
    TableDefinition::new("pruned_chains");
pub(super) const SEQ_INDEX: TableDefinition<SeqKey, IndexKey> = TableDefinition::new("seq_index");
pub(super) const DEDUP_FLOOR: TableDefinition<[u8; 16], u64> = TableDefinition::new("dedup_floor");

/// Fills `seq_index` from `event_index` (a store opened from schema 5 or 6).
pub(super) fn fill_seq_index(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let index = txn.open_table(EVENT_INDEX)?;
    let mut by_seq = txn.open_table(SEQ_INDEX)?;
    for row in index.iter()? {
        let (k, v) = row?;
        let (sk, _) = split_index_value(&v.value());
        by_seq.insert(sk, k.value())?;
    }
    Ok(())
}

/// What one retention pass drops in one conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrunePlan {
    /// The conversation.
    pub conversation: ConversationId,
    /// Event bodies at or below this sequence go (kept kinds excepted).
    pub body_floor: ServerSeq,
    /// Dedup records (index rows, statements placing nothing kept, commit times) at or below
    /// this sequence go; at most `body_floor`.
    pub index_floor: ServerSeq,
}

/// What a retention pass dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PruneStats {
    /// Event bodies removed.
    pub n_bodies: u64,
    /// Dedup index rows removed.
    pub n_index: u64,
    /// Statements removed.
    pub n_statements: u64,
}

impl std::ops::AddAssign for PruneStats {
    fn add_assign(&mut self, o: PruneStats) {
        self.n_bodies += o.n_bodies;
        self.n_index += o.n_index;
        self.n_statements += o.n_statements;
    }
}

/// Whether the relay keeps an event past every floor: what a device that comes back after a
/// gap (or a new member's device) needs to judge what is left. Membership changes (its gate
/// walks the membership through the order) and epoch openings (the keys of messages after the
/// gap may belong to an epoch opened inside it). Everything else (messages, receipts, key
/// requests and re-shares, which a device asks for again) may go. Retention policies stay too
/// (a device's gate needs them to erase what the conversation no longer keeps). An envelope that does not
/// decode is not kept (the relay stored only envelopes it decoded).
pub fn is_kept(envelope: &[u8]) -> bool {
    Event::decode_trusted(envelope).is_ok_and(|ev| is_kept_kind(ev.kind()))
}

/// [`is_kept`] of an event already decoded.
pub fn is_kept_kind(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create { .. }
            | EventKind::AddMember { .. }
            | EventKind::RemoveMember { .. }
            | EventKind::EpochKeys { epoch: None, .. }
            | EventKind::SetRetention { .. }
    )
}

fn chain_key(conv: &ConversationId, author: &[u8]) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..16].copy_from_slice(&conv.0);
    k[16..].copy_from_slice(author);
    k
}

impl RelayStore {
    /// The retention floor of `conv`: events at or below it may be gone (0: nothing dropped).
    pub fn retained_floor(&self, conv: &ConversationId) -> Result<ServerSeq, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RETAINED)?;
        Ok(t.get(conv.0)?.map_or(0, |v| v.value()))
    }

    /// The highest sequence of `conv` committed at or before `ts_ms` (server clock) that the
    /// store still has a time for (0 when none).
    pub fn sequenced_before(
        &self,
        conv: &ConversationId,
        ts_ms: u64,
    ) -> Result<ServerSeq, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SEQ_TIMES)?;
        let mut out = 0;
        // Timestamps never go back within a conversation: stop at the first later one.
        for row in t.range(seq_key(conv, 0)..=seq_key(conv, u64::MAX))? {
            let (k, v) = row?;
            if v.value() > ts_ms {
                break;
            }
            out = split_seq_key(&k.value()).1;
        }
        Ok(out)
    }

    /// The highest pruned counter of `author` in `conv` (see the module docs).
    pub(super) fn pruned_counter(
        table: &impl ReadableTable<[u8; 48], u64>,
        conv: &ConversationId,
        author: &DeviceId,
    ) -> Result<Option<u64>, StoreError> {
        Ok(table.get(chain_key(conv, &author.0))?.map(|v| v.value()))
    }

    /// Runs one retention pass in one transaction (see the module docs).
    pub fn prune(&self, plans: &[PrunePlan]) -> Result<PruneStats, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(self.durability)?;
        let mut stats = PruneStats::default();
        for plan in plans {
            match prune_one(&txn, plan) {
                Ok(s) => stats += s,
                Err(e) => {
                    txn.abort()?;
                    return Err(e);
                }
            }
        }
        txn.commit()?;
        Ok(stats)
    }

    /// Rewrites the file without its free pages (redb's compaction), so that what retention
    /// dropped leaves the disk. Needs the only handle on the database: `false` (nothing done)
    /// while another clone of the store is alive.
    pub fn compact(&mut self) -> Result<bool, StoreError> {
        let Some(db) = std::sync::Arc::get_mut(&mut self.db) else {
            return Ok(false);
        };
        db.compact()
            .map_err(|e| StoreError::Redb(redb::Error::from(e)))?;
        Ok(true)
    }
}

fn prune_one(txn: &redb::WriteTransaction, plan: &PrunePlan) -> Result<PruneStats, StoreError> {
    let c = plan.conversation;
    let mut stats = PruneStats::default();
    let mut retained = txn.open_table(RETAINED)?;
    let old = retained.get(c.0)?.map_or(0, |v| v.value());
    let mut events = txn.open_table(EVENTS)?;
    if plan.body_floor > old {
        let mut drop = Vec::new();
        for row in
            events.range(seq_key(&c, old.saturating_add(1))..=seq_key(&c, plan.body_floor))?
        {
            let (k, v) = row?;
            let (body, ack) = v.value();
            if !body.is_empty() && !is_kept(body) {
                drop.push((k.value(), (!ack.is_empty()).then(|| ack.to_vec())));
            }
        }
        for (k, legacy_ack) in drop {
            // A row of a legacy ack keeps the ack (it places the event for dedup) until the
            // index floor passes it.
            match legacy_ack {
                Some(ack) => events.insert(k, (&b""[..], ack.as_slice()))?,
                None => events.remove(k)?,
            };
            stats.n_bodies += 1;
        }
        retained.insert(c.0, plan.body_floor)?;
    }
    let index_floor = plan.index_floor.min(plan.body_floor.max(old));
    if index_floor == 0 {
        return Ok(stats);
    }
    let mut dedup = txn.open_table(DEDUP_FLOOR)?;
    let done = dedup.get(c.0)?.map_or(0, |v| v.value());
    if index_floor <= done {
        return Ok(stats);
    }
    dedup.insert(c.0, index_floor)?;
    // Dedup rows placing a dropped event in `done + 1..=index_floor`, found by sequence.
    let mut index = txn.open_table(EVENT_INDEX)?;
    let mut by_seq = txn.open_table(SEQ_INDEX)?;
    let mut gone = Vec::new();
    for row in by_seq.range(seq_key(&c, done.saturating_add(1))..=seq_key(&c, index_floor))? {
        let (sk, ik) = row?;
        let sk = sk.value();
        let kept = match events.get(sk)? {
            Some(r) => !r.value().0.is_empty(),
            None => false,
        };
        if !kept {
            gone.push((ik.value(), sk));
        }
    }
    let mut chains = txn.open_table(PRUNED_CHAINS)?;
    for (k, sk) in gone {
        index.remove(k)?;
        by_seq.remove(sk)?;
        // A legacy row (empty body, its own ack) goes with its index row.
        events.remove(sk)?;
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&k[48..56]);
        let counter = u64::from_be_bytes(counter);
        let ck = chain_key(&c, &k[16..48]);
        if chains.get(ck)?.is_none_or(|v| v.value() < counter) {
            chains.insert(ck, counter)?;
        }
        stats.n_index += 1;
    }
    // Statements wholly at or below the floor that place no kept event. The last statement
    // of the conversation always stays (it holds the chain head).
    let mut statements = txn.open_table(STATEMENTS)?;
    let firsts: Vec<ServerSeq> = statements
        .range(seq_key(&c, 0)..=seq_key(&c, index_floor.saturating_add(1)))?
        .map(|r| r.map(|(k, _)| split_seq_key(&k.value()).1))
        .collect::<Result<_, _>>()?;
    for pair in firsts.windows(2) {
        let (first, last) = (pair[0], pair[1] - 1);
        if last > index_floor {
            break;
        }
        let placed = events
            .range(seq_key(&c, first)..=seq_key(&c, last))?
            .next()
            .is_some();
        if !placed {
            statements.remove(seq_key(&c, first))?;
            stats.n_statements += 1;
        }
    }
    let mut times = txn.open_table(SEQ_TIMES)?;
    let stale: Vec<SeqKey> = times
        .range(seq_key(&c, 0)..=seq_key(&c, index_floor))?
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    for k in stale {
        times.remove(k)?;
    }
    Ok(stats)
}
