//! History the relay no longer holds: a `HistoryGap` answer recorded in the log (see
//! `log/gaps.rs`), then the conversation's gate walks on over what is left.

use super::*;

impl Store {
    /// Records that the relay dropped `from..=to` of `conversation` before this device got
    /// it, and judges what the log holds after the gap (events that waited for the missing
    /// sequences are admitted or refused now).
    pub fn record_history_gap(
        &mut self,
        conversation: ConversationId,
        from: ServerSeq,
        to: ServerSeq,
    ) -> Result<ApplyOutcome, StoreError> {
        self.ready_to_judge([conversation])?;
        let me = self.key.device();
        let directory = self.loaded_directory()?;
        let run = self.log.write(|t| {
            t.record_gap(conversation, from, to)?;
            t.advance_gate(conversation, directory, me, &|_| AuthorLookup::Asking)
        })?;
        let mut outcome = ApplyOutcome::default();
        self.fold_runs(HashMap::new(), &[(conversation, run)], &mut outcome)?;
        Ok(outcome)
    }
}
