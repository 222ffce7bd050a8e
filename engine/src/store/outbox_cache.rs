//! The store's in-memory copy of the outbox, in send order, with an index of its control
//! entries (everything but messages: receipts, membership changes, key shares and requests)
//! by conversation.
//!
//! The questions asked on every send ("which membership changes of mine are still unsent
//! here?", "which key shares are queued?") look at control entries of one conversation only.
//! Walking the whole outbox for them made each send cost more the more messages waited
//! offline (an outbox of a few thousand messages was 18% of a send's CPU in
//! `cargo bench --bench send`).

use crate::ids::ConversationId;
use crate::log::OutboxEntry;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
pub(super) struct OutboxCache {
    /// Every entry, by outbox position (send order).
    entries: BTreeMap<u64, OutboxEntry>,
    /// (conversation, position) of the entries that carry no message.
    controls: BTreeSet<(ConversationId, u64)>,
}

impl OutboxCache {
    pub(super) fn new(entries: impl IntoIterator<Item = OutboxEntry>) -> OutboxCache {
        let mut cache = OutboxCache::default();
        for e in entries {
            cache.insert(e);
        }
        cache
    }

    /// Adds `entry`, or replaces the one at its position.
    pub(super) fn insert(&mut self, entry: OutboxEntry) {
        if entry.message.is_none() {
            self.controls.insert((entry.conversation, entry.position));
        }
        if let Some(old) = self.entries.insert(entry.position, entry) {
            self.forget_control(&old);
        }
    }

    /// Removes the entry at `position`, if any.
    pub(super) fn remove(&mut self, position: u64) -> Option<OutboxEntry> {
        let old = self.entries.remove(&position)?;
        self.forget_control(&old);
        Some(old)
    }

    /// Keeps only the entries `keep` says to keep.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&OutboxEntry) -> bool) {
        let controls = &mut self.controls;
        self.entries.retain(|_, e| {
            let kept = keep(e);
            if !kept && e.message.is_none() {
                controls.remove(&(e.conversation, e.position));
            }
            kept
        });
    }

    /// Every entry, in send order.
    pub(super) fn values(&self) -> impl Iterator<Item = &OutboxEntry> + '_ {
        self.entries.values()
    }

    /// The control entries of `conversation`, in send order.
    pub(super) fn controls_of(
        &self,
        conversation: ConversationId,
    ) -> impl Iterator<Item = &OutboxEntry> + '_ {
        self.controls
            .range((conversation, 0)..=(conversation, u64::MAX))
            .filter_map(|(_, p)| self.entries.get(p))
    }

    /// Drops `old`'s control index row unless the entry now at its position still needs it.
    fn forget_control(&mut self, old: &OutboxEntry) {
        if old.message.is_some() {
            return;
        }
        let still = self
            .entries
            .get(&old.position)
            .is_some_and(|e| e.message.is_none() && e.conversation == old.conversation);
        if !still {
            self.controls.remove(&(old.conversation, old.position));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{EventId, MessageId};
    use crate::log::OutboxState;

    fn entry(position: u64, conv: u8, message: bool) -> OutboxEntry {
        OutboxEntry {
            position,
            event: EventId([position as u8; 32]),
            conversation: ConversationId([conv; 16]),
            message: message.then_some(MessageId([position as u8; 16])),
            attempts: 0,
            next_attempt_ms: 0,
            state: OutboxState::Queued,
        }
    }

    fn controls(c: &OutboxCache, conv: u8) -> Vec<u64> {
        c.controls_of(ConversationId([conv; 16]))
            .map(|e| e.position)
            .collect()
    }

    #[test]
    fn the_control_index_follows_inserts_replacements_removals_and_retain() {
        let mut c = OutboxCache::new([
            entry(1, 1, true),
            entry(2, 1, false),
            entry(3, 2, false),
            entry(4, 1, false),
        ]);
        assert_eq!(controls(&c, 1), vec![2, 4]);
        assert_eq!(controls(&c, 2), vec![3]);
        // An update of an entry (same position) keeps its row once.
        let mut updated = entry(2, 1, false);
        updated.attempts = 3;
        c.insert(updated);
        assert_eq!(controls(&c, 1), vec![2, 4]);
        assert_eq!(c.remove(4).map(|e| e.position), Some(4));
        assert_eq!(c.remove(4), None);
        assert_eq!(controls(&c, 1), vec![2]);
        c.retain(|e| e.position != 3);
        assert_eq!(controls(&c, 2), Vec::<u64>::new());
        assert_eq!(
            c.values().map(|e| e.position).collect::<Vec<_>>(),
            vec![1, 2]
        );
        // A position reused (the outbox emptied and filled again) by a message, then by a
        // control entry of another conversation.
        c.insert(entry(2, 1, true));
        assert_eq!(controls(&c, 1), Vec::<u64>::new());
        c.insert(entry(2, 2, false));
        assert_eq!(controls(&c, 2), vec![2]);
        c.insert(entry(2, 1, false));
        assert_eq!((controls(&c, 1), controls(&c, 2)), (vec![2], vec![]));
    }
}
