//! Retention on the device: setting a conversation's policy, the erasure pass that applies
//! it (and erases what a removed member can no longer read), and compaction.
//!
//! The pass is driven by the caller's clock ([`Store::erase_due`] with `now_ms`; the device
//! core calls it from `handle_timeout` and asks to be woken by [`Store::erase_wakeup`]). It
//! looks only at the conversations that may have something due: those an `apply` or a read
//! mark touched since the last pass, and those whose next erasure time came (the first pass
//! after opening looks at every conversation once, so a crash between an apply and its pass
//! loses nothing).

use super::*;
use crate::log::ErasedMessage;
use crate::retention::{PolicyError, RetentionPolicy};
use std::collections::BTreeSet;

/// What the store knows about pending erasures.
#[derive(Debug, Default)]
pub(super) struct Eraser {
    /// Whether a pass ran since the store was opened.
    started: bool,
    /// Conversations to look at in the next pass.
    dirty: BTreeSet<ConversationId>,
    /// Per conversation, when its next message is due.
    due: HashMap<ConversationId, u64>,
}

impl Eraser {
    /// Marks conversations to look at in the next pass.
    pub(super) fn touch(&mut self, conversations: impl IntoIterator<Item = ConversationId>) {
        self.dirty.extend(conversations);
    }
}

impl Store {
    /// Sets the conversation's retention policy (any member may, see [`crate::retention`]):
    /// a signed event, in force from its place in the server order on every member device.
    pub fn set_retention(
        &mut self,
        conversation: ConversationId,
        policy: RetentionPolicy,
        now_ms: u64,
    ) -> Result<(Event, Vec<Change>), StoreError> {
        policy.check()?;
        self.author(conversation, EventKind::SetRetention { policy }, now_ms)
    }

    /// The policy in force in `conversation`: the last one the gate admitted (a policy this
    /// device set takes effect once the relay sequenced it).
    pub fn retention(&self, conversation: ConversationId) -> Result<RetentionPolicy, StoreError> {
        Ok(self.log.retention(conversation)?)
    }

    /// The tombstones of the conversation's erased messages: what is gone and why.
    pub fn erased(&self, conversation: ConversationId) -> Result<Vec<ErasedMessage>, StoreError> {
        Ok(self.log.erased(conversation)?)
    }

    /// When the store wants [`Store::erase_due`] to run: at once (`Some(0)`) after an open or
    /// when something changed, else when the next message is due (`None`: nothing is).
    pub fn erase_wakeup(&self) -> Option<u64> {
        if !self.eraser.started || !self.eraser.dirty.is_empty() {
            return Some(0);
        }
        self.eraser.due.values().copied().min()
    }

    /// The erasure pass: erases every message that is due at `now_ms` (see
    /// [`crate::retention`]), and, in a conversation this device's user was removed from,
    /// every message placed after the removal and the epoch keys only those used (what came
    /// before stays readable). One durable commit when
    /// anything is due. The documents of a conversation that lost messages are rebuilt from
    /// the log on next use. Returns a [`Change::MessageErased`] per message.
    pub fn erase_due(&mut self, now_ms: u64) -> Result<Vec<Change>, StoreError> {
        let convs: Vec<ConversationId> = if self.eraser.started {
            let due = self
                .eraser
                .due
                .iter()
                .filter(|(_, t)| **t <= now_ms)
                .map(|(c, _)| *c);
            let mut all: BTreeSet<ConversationId> = due.collect();
            all.extend(self.eraser.dirty.iter().copied());
            all.into_iter().collect()
        } else {
            self.log.conversation_ids()?
        };
        self.eraser.started = true;
        self.eraser.dirty.clear();
        if convs.is_empty() {
            return Ok(Vec::new());
        }
        for c in &convs {
            self.eraser.due.remove(c);
        }
        let pass = self.log.erase_due(self.key.user(), &convs, now_ms)?;
        self.eraser.due.extend(pass.next_due_ms.iter().copied());
        for c in &pass.keys_dropped {
            self.epochs.remove(c);
            self.missing.retain(|(conv, _)| conv != c);
        }
        let touched: BTreeSet<ConversationId> =
            pass.erased.iter().map(|m| m.conversation).collect();
        self.settle_folds()?;
        for c in touched {
            // Its snapshots are gone with the bodies: the next use rebuilds it from the log.
            self.docs.remove(&c);
        }
        Ok(pass
            .erased
            .into_iter()
            .map(|m| Change::MessageErased {
                conversation: m.conversation,
                message: m.message,
                reason: m.reason,
            })
            .collect())
    }

    /// Gives the space of erased messages back to the file system (see
    /// [`EventLog::compact`]); an open does it by itself once enough was erased
    /// ([`crate::log::COMPACT_AFTER_BYTES`]). Fails while a [`MessageReader`] is alive.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        self.snapshot_all()?;
        Ok(self.log.compact()?)
    }
}

impl From<PolicyError> for StoreError {
    fn from(e: PolicyError) -> Self {
        StoreError::Policy(e)
    }
}
