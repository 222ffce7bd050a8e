//! FAILED messages: listed by age, dropped only on the app's word.

use super::*;
use crate::log::FailedMessage;

/// Most messages one [`Store::discard_failed`] drops (one durable commit; a longer list is
/// several calls).
pub const MAX_DISCARD_BATCH: usize = 1024;

impl Store {
    /// The FAILED messages that turned FAILED at or before `now_ms - older_than_ms`, in send
    /// order (every one for an age of 0).
    pub fn failed_messages(
        &mut self,
        now_ms: u64,
        older_than_ms: u64,
    ) -> Result<Vec<FailedMessage>, StoreError> {
        let cutoff = now_ms.saturating_sub(older_than_ms);
        Ok(self
            .outbox_entries()?
            .filter_map(OutboxEntry::as_failed)
            .filter(|f| f.failed_since_ms <= cutoff)
            .collect())
    }

    /// Drops FAILED messages for good: their outbox entries, their places in the message
    /// indexes and in their conversations' documents, in one durable commit. Every id must
    /// name a FAILED message of the outbox ([`StoreError::NotInOutbox`],
    /// [`StoreError::NotFailed`] otherwise, and nothing is dropped). Returns what was dropped.
    ///
    /// The signed envelopes stay in the log, in their authors' chains (see
    /// [`crate::log::LogTxn::discard_unsent`]): a relay that sequenced one after all, its
    /// acknowledgement lost, serves it again and it shows as sent.
    pub fn discard_failed(
        &mut self,
        messages: &[MessageId],
    ) -> Result<Vec<FailedMessage>, StoreError> {
        if messages.len() > MAX_DISCARD_BATCH {
            return Err(StoreError::BatchTooLarge {
                len: messages.len(),
                max: MAX_DISCARD_BATCH,
            });
        }
        let mut entries = Vec::with_capacity(messages.len());
        for m in messages {
            let entry = self
                .outbox_entries()?
                .find(|e| e.message == Some(*m))
                .cloned()
                .ok_or(StoreError::NotInOutbox(*m))?;
            if entry.state != OutboxState::Failed {
                return Err(StoreError::NotFailed(*m));
            }
            if !entries.contains(&entry) {
                entries.push(entry);
            }
        }
        let dropped = self.log.write(|t| {
            let mut dropped = Vec::with_capacity(entries.len());
            for e in &entries {
                if t.discard_unsent(e)? {
                    dropped.push(e.clone());
                }
            }
            Ok(dropped)
        })?;
        let outbox = self.outbox_map()?;
        for e in &dropped {
            outbox.remove(e.position);
        }
        self.settle_folds()?;
        for e in &dropped {
            // Its snapshots are gone: the next load rebuilds it from the log, without them.
            self.docs.remove(&e.conversation);
        }
        Ok(dropped.iter().filter_map(OutboxEntry::as_failed).collect())
    }
}
