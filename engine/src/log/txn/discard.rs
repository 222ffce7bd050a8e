//! Dropping an own message the relay never took ([`LogTxn::discard_unsent`]).

use super::*;

impl LogTxn<'_> {
    /// Drops a FAILED outbox entry and its message from the outbox, the message indexes and
    /// the conversation's fold, and drops the conversation's document snapshots (the document
    /// is rebuilt from the log on its next load, without the message). Returns `false`, and
    /// writes nothing, when the entry is no longer in the outbox (the relay acknowledged it
    /// meanwhile, or it was dropped already).
    ///
    /// The signed envelope and its place in the author chain stay: the device's later events
    /// name it as `prev`, and a counter must never be given to a second event (the relay may
    /// hold the first one after all, its acknowledgement lost). A relay that did sequence it
    /// serves it again on catch-up, and it shows as sent.
    pub fn discard_unsent(&mut self, entry: &OutboxEntry) -> Result<bool, LogError> {
        let current = self.outbox_by_event.get(&entry.event.0)?.map(|g| g.value());
        if current != Some(entry.position) {
            return Ok(false);
        }
        self.outbox_by_event.remove(&entry.event.0)?;
        self.outbox.remove(entry.position)?;
        let conversation = entry.conversation;
        let c = &conversation.0;
        if let Some(message) = entry.message {
            let unsequenced = self
                .unsequenced
                .get((c, &message.0))?
                .map(|g| EventId(*g.value().1));
            if unsequenced == Some(entry.event) {
                self.unsequenced.remove((c, &message.0))?;
            }
            let indexed = self.msg_by_id.get((c, &message.0))?.map(|g| *g.value());
            if indexed == Some(entry.event.0) {
                self.msg_by_id.remove((c, &message.0))?;
            }
        }
        // An unsent event is among the conversation's latest fold positions: look from the end.
        let mut position = None;
        for row in self.conv_log.range((c, 0u64)..=(c, u64::MAX))?.rev() {
            let (k, v) = row?;
            if *v.value() == entry.event.0 {
                position = Some(k.value().1);
                break;
            }
        }
        if let Some(p) = position {
            self.conv_log.remove((c, p))?;
        }
        self.fold_next.remove(&conversation);
        self.drop_snapshot(conversation)?;
        Ok(true)
    }
}
