//! Retention on PostgreSQL: the same passes as the redb store (see
//! `crate::core::store::retention`), over three tables of schema 3:
//! - `retained (conversation PK, floor)`: event bodies at or below `floor` are gone, except
//!   the kept ones;
//! - `seq_times (conversation, seq) PK, ts_ms`: the server time of each commit's head;
//! - `pruned_chains (conversation, author) PK, counter`: the highest counter of an author whose
//!   dedup row is gone.
//!
//! A dropped body is an `events` row with an empty `event` (its id, chain place and ack stay
//! as the dedup record); past the index floor the row goes. PostgreSQL reuses the space of
//! deleted rows and dropped TOAST values after (auto)vacuum; `VACUUM FULL` gives it back to
//! the file system.

use super::{counter_of, seq_i64, seq_u64, PgStore};
use crate::core::store::{is_kept, ChainInfo, PrunePlan, PruneStats, StoreError};
use postgres::Client;
use tidings_engine::{ConversationId, DeviceId, EventId, ServerSeq};

/// Sets `expired` on the chain infos of events not stored and at or below their author's
/// pruned counter.
pub(super) fn mark_expired(
    client: &mut Client,
    slots: &[(ConversationId, u64, EventId, DeviceId)],
    out: &mut [ChainInfo],
) -> Result<(), StoreError> {
    for (info, (conv, counter, _, author)) in out.iter_mut().zip(slots) {
        if info.stored.is_some() {
            continue;
        }
        let row = client.query_opt(
            "SELECT counter FROM pruned_chains WHERE conversation = $1 AND author = $2",
            &[&conv.0.to_vec(), &author.0.to_vec()],
        )?;
        if let Some(r) = row {
            info.expired = *counter <= counter_of(r.try_get(0)?);
        }
    }
    Ok(())
}

fn prune_one(
    tx: &mut postgres::Transaction<'_>,
    plan: &PrunePlan,
) -> Result<PruneStats, StoreError> {
    let conv = plan.conversation.0.to_vec();
    let mut stats = PruneStats::default();
    let old: i64 = tx
        .query_opt(
            "SELECT floor FROM retained WHERE conversation = $1 FOR UPDATE",
            &[&conv],
        )?
        .map(|r| r.try_get(0))
        .transpose()?
        .unwrap_or(0);
    let body_floor = seq_i64(plan.body_floor)?;
    if body_floor > old {
        let rows = tx.query(
            "SELECT seq, event FROM events WHERE conversation = $1 AND seq > $2 AND seq <= $3 \
             AND length(event) > 0",
            &[&conv, &old, &body_floor],
        )?;
        let mut drop = Vec::new();
        for r in rows {
            let body: &[u8] = r.try_get(1)?;
            if !is_kept(body) {
                drop.push(r.try_get::<_, i64>(0)?);
            }
        }
        stats.n_bodies = tx.execute(
            "UPDATE events SET event = ''::bytea WHERE conversation = $1 AND seq = ANY($2)",
            &[&conv, &drop],
        )?;
        tx.execute(
            "INSERT INTO retained (conversation, floor) VALUES ($1, $2) \
             ON CONFLICT (conversation) DO UPDATE SET floor = EXCLUDED.floor",
            &[&conv, &body_floor],
        )?;
    }
    let index_floor = seq_i64(plan.index_floor)?.min(body_floor.max(old));
    if index_floor == 0 {
        return Ok(stats);
    }
    let gone = tx.query(
        "DELETE FROM events WHERE conversation = $1 AND seq <= $2 AND length(event) = 0 \
         RETURNING author, counter",
        &[&conv, &index_floor],
    )?;
    stats.n_index = gone.len() as u64;
    let mut heads: std::collections::BTreeMap<Vec<u8>, i64> = Default::default();
    for r in gone {
        let author: Vec<u8> = r.try_get(0)?;
        let counter: i64 = r.try_get(1)?;
        let slot = heads.entry(author).or_insert(counter);
        *slot = (*slot).max(counter);
    }
    for (author, counter) in heads {
        tx.execute(
            "INSERT INTO pruned_chains (conversation, author, counter) VALUES ($1, $2, $3) \
             ON CONFLICT (conversation, author) \
             DO UPDATE SET counter = GREATEST(pruned_chains.counter, EXCLUDED.counter)",
            &[&conv, &author, &counter],
        )?;
    }
    // Statements wholly at or below the floor (a later statement starts at or below
    // floor + 1) that place no stored event; the conversation's last one always stays.
    stats.n_statements = tx.execute(
        "DELETE FROM statements s WHERE s.conversation = $1 AND EXISTS ( \
           SELECT 1 FROM statements n WHERE n.conversation = $1 AND n.first_seq > s.first_seq \
           AND n.first_seq <= $2::int8 + 1 AND NOT EXISTS ( \
             SELECT 1 FROM events e WHERE e.conversation = $1 \
             AND e.seq >= s.first_seq AND e.seq < ( \
               SELECT min(m.first_seq) FROM statements m \
               WHERE m.conversation = $1 AND m.first_seq > s.first_seq)))",
        &[&conv, &index_floor],
    )?;
    tx.execute(
        "DELETE FROM seq_times WHERE conversation = $1 AND seq <= $2",
        &[&conv, &index_floor],
    )?;
    Ok(stats)
}

impl PgStore {
    /// See [`crate::storage::Storage::retained_floor`].
    pub fn retained_floor(&self, conv: &ConversationId) -> Result<ServerSeq, StoreError> {
        let conv = conv.0.to_vec();
        self.read(move |c| {
            let row = c.query_opt(
                "SELECT floor FROM retained WHERE conversation = $1",
                &[&conv],
            )?;
            match row {
                Some(r) => seq_u64(r.try_get(0)?),
                None => Ok(0),
            }
        })
    }

    /// See [`crate::storage::Storage::sequenced_before`].
    pub fn sequenced_before(
        &self,
        conv: &ConversationId,
        ts_ms: u64,
    ) -> Result<ServerSeq, StoreError> {
        let conv = conv.0.to_vec();
        let ts = i64::try_from(ts_ms).unwrap_or(i64::MAX);
        self.read(move |c| {
            let row = c.query_one(
                "SELECT COALESCE(max(seq), 0) FROM seq_times WHERE conversation = $1 \
                 AND ts_ms <= $2",
                &[&conv, &ts],
            )?;
            seq_u64(row.try_get(0)?)
        })
    }

    /// See [`crate::storage::Storage::prune`].
    pub fn prune(&self, plans: &[PrunePlan]) -> Result<PruneStats, StoreError> {
        let plans = plans.to_vec();
        self.writer.call(move |c| {
            let mut tx = c.transaction()?;
            let mut stats = PruneStats::default();
            for plan in &plans {
                stats += prune_one(&mut tx, plan)?;
            }
            tx.commit()?;
            Ok(stats)
        })
    }
}
