//! History gaps: ranges of a conversation's server order that the relay's retention dropped
//! before this device received them (the relay said so in a `HistoryGap` answer).
//!
//! Inside a recorded range, a sequence the log does not hold is gone for good: the cursor and
//! the gate step over it instead of waiting for it. Sequences of the range the log does hold
//! (the relay keeps membership changes and epoch openings) are walked as usual, so the gate
//! still judges every event that is left under the membership in force at its place.

use super::tables::Conv;
use super::*;
use redb::TableDefinition;

/// (conversation, first sequence of a gap) → last sequence of the gap.
pub(super) const HISTORY_GAPS: TableDefinition<(Conv, u64), u64> =
    TableDefinition::new("history_gaps");

/// The last sequence of the recorded gap covering `seq` in `conversation`, if one does.
pub(super) fn gap_end(
    table: &impl ReadableTable<(Conv, u64), u64>,
    conversation: &ConversationId,
    seq: ServerSeq,
) -> Result<Option<ServerSeq>, LogError> {
    let c = &conversation.0;
    let Some(row) = table.range((c, 0)..=(c, seq))?.next_back() else {
        return Ok(None);
    };
    let (_, to) = row?;
    Ok((to.value() >= seq).then(|| to.value()))
}

/// Where the walk from `after` stops: past every held sequence and every gap sequence, up to
/// the first sequence that is neither held nor inside a recorded gap.
pub(super) fn run_end(
    by_seq: &impl ReadableTable<(Conv, u64), Id32>,
    gaps: &impl ReadableTable<(Conv, u64), u64>,
    conversation: &ConversationId,
    after: ServerSeq,
) -> Result<ServerSeq, LogError> {
    let c = &conversation.0;
    let mut end = after;
    loop {
        let mut moved = false;
        for row in by_seq.range((c, end.saturating_add(1))..=(c, u64::MAX))? {
            let (k, _) = row?;
            let (_, seq) = k.value();
            if seq != end + 1 {
                break;
            }
            end = seq;
            moved = true;
        }
        if let Some(to) = gap_end(gaps, conversation, end.saturating_add(1))? {
            // Step over the gap up to the next held sequence inside it, or its end.
            let next_held = by_seq
                .range((c, end.saturating_add(1))..=(c, to))?
                .next()
                .transpose()?
                .map(|(k, _)| k.value().1);
            end = next_held.map_or(to, |s| s - 1);
            moved = true;
        }
        if !moved || end == u64::MAX {
            return Ok(end);
        }
    }
}

impl LogTxn<'_> {
    /// Records that the relay no longer holds `from..=to` of `conversation` (a `HistoryGap`
    /// answer): what the log lacks there is gone, not late.
    pub fn record_gap(
        &mut self,
        conversation: ConversationId,
        from: ServerSeq,
        to: ServerSeq,
    ) -> Result<(), LogError> {
        if from == 0 || to < from {
            return Ok(());
        }
        let c = &conversation.0;
        let old = self.gaps.get((c, from))?.map_or(0, |v| v.value());
        self.gaps.insert((c, from), to.max(old))?;
        Ok(())
    }
}

impl EventLog {
    /// The history gaps recorded in `conversation`, in order.
    pub fn history_gaps(
        &self,
        conversation: ConversationId,
    ) -> Result<Vec<(ServerSeq, ServerSeq)>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HISTORY_GAPS)?;
        let c = &conversation.0;
        let mut out = Vec::new();
        for row in table.range((c, 0)..=(c, u64::MAX))? {
            let (k, v) = row?;
            out.push((k.value().1, v.value()));
        }
        Ok(out)
    }
}
