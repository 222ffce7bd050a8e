//! Retention on the device core: the app sets a conversation's policy; the erasure pass runs
//! on the core's clock (from `handle_timeout`, woken by `poll_timeout`) and reports what it
//! erased as [`Change::MessageErased`].

use super::*;
use crate::retention::RetentionPolicy;

impl DeviceCore {
    /// Sets the conversation's retention policy (any member may; see [`crate::retention`]).
    /// In force on every member device once the relay sequenced it.
    pub fn set_retention(
        &mut self,
        conversation: ConversationId,
        policy: RetentionPolicy,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        let (_, changes) = self.store.set_retention(conversation, policy, now_ms)?;
        self.emit(changes);
        self.flush(now_ms)
    }

    /// Runs the store's erasure pass when it is due and reports what it erased.
    pub(super) fn erase_due(&mut self, now_ms: u64) -> Result<(), DeviceError> {
        if self.store.erase_wakeup().is_none_or(|t| t > now_ms) {
            return Ok(());
        }
        let changes = self.store.erase_due(now_ms)?;
        self.emit(changes);
        Ok(())
    }
}
