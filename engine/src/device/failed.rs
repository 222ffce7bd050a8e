//! FAILED messages: reported once they are old enough, dropped only on the app's word.

use super::*;
use crate::log::FailedMessage;

impl DeviceCore {
    /// The FAILED messages that have been FAILED for at least `older_than_ms` (every one for
    /// 0), in send order.
    pub fn failed_messages(
        &mut self,
        now_ms: u64,
        older_than_ms: u64,
    ) -> Result<Vec<FailedMessage>, DeviceError> {
        Ok(self.store.failed_messages(now_ms, older_than_ms)?)
    }

    /// Drops FAILED messages for good, in one durable commit (see [`Store::discard_failed`]):
    /// every id must name a FAILED message, or nothing is dropped. Returns what was dropped.
    pub fn discard_failed(
        &mut self,
        messages: &[MessageId],
    ) -> Result<Vec<FailedMessage>, DeviceError> {
        let dropped = self.store.discard_failed(messages)?;
        self.failed_reported
            .retain(|(event, _)| !dropped.iter().any(|d| d.event == *event));
        Ok(dropped)
    }

    /// Reports the FAILED messages that crossed [`DeviceConfig::failed_report_after_ms`] and
    /// were not reported yet, one [`DeviceEvent::FailedExpired`] per conversation.
    pub(super) fn report_failed(&mut self, now_ms: u64) -> Result<(), DeviceError> {
        let Some(after) = self.config.failed_report_after_ms else {
            return Ok(());
        };
        let failed = self.store.failed_messages(now_ms, 0)?;
        // Entries retried or discarded since leave the set: it stays as small as the outbox.
        self.failed_reported
            .retain(|key| failed.iter().any(|f| (f.event, f.failed_since_ms) == *key));
        let mut due: BTreeMap<ConversationId, Vec<FailedMessage>> = BTreeMap::new();
        for f in failed {
            let old = f.failed_since_ms.saturating_add(after) <= now_ms;
            if old && self.failed_reported.insert((f.event, f.failed_since_ms)) {
                due.entry(f.conversation).or_default().push(f);
            }
        }
        for (conversation, messages) in due {
            self.events.push_back(DeviceEvent::FailedExpired {
                conversation,
                messages,
            });
        }
        Ok(())
    }

    /// When the next FAILED message crosses the report age.
    pub(super) fn failed_wakeup(&mut self) -> Option<u64> {
        let after = self.config.failed_report_after_ms?;
        let reported = &self.failed_reported;
        self.store
            .outbox_entries()
            .ok()?
            .filter_map(OutboxEntry::as_failed)
            .filter(|f| !reported.contains(&(f.event, f.failed_since_ms)))
            .map(|f| f.failed_since_ms.saturating_add(after))
            .min()
    }
}
