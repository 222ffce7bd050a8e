//! The store's loaded documents: snapshots, loading and rebuilding from the log, folding
//! what is new, eviction when too many are loaded.

use super::*;

/// A conversation's document in memory, with where its fold stands.
#[derive(Debug)]
pub(super) struct Loaded {
    pub(super) doc: ConversationDoc,
    /// Highest log position folded into `doc`.
    pub(super) position: u64,
    pub(super) since_snapshot: u64,
    pub(super) last_used: u64,
}

impl Loaded {
    /// Folds the events past `position` (given at their log positions, in order) and commits
    /// them as one change.
    pub(super) fn fold<'e>(
        &mut self,
        events: impl IntoIterator<Item = (u64, &'e Event)>,
    ) -> Result<Vec<Change>, DocError> {
        let mut changes = Vec::new();
        for (position, ev) in events {
            if position <= self.position {
                continue;
            }
            changes.extend(self.doc.fold(ev)?);
            self.position = position;
            self.since_snapshot += 1;
        }
        self.doc.commit();
        Ok(changes)
    }
}

impl Store {
    /// Snapshots every loaded document that folded events since its last snapshot.
    pub fn snapshot_all(&mut self) -> Result<(), StoreError> {
        self.settle_folds()?;
        let convs: Vec<ConversationId> = self
            .docs
            .iter()
            .filter(|(_, l)| l.since_snapshot > 0)
            .map(|(c, _)| *c)
            .collect();
        for c in convs {
            self.snapshot(c)?;
        }
        Ok(())
    }

    /// Drops every loaded document (they reload from snapshot + log tail on next use).
    pub fn unload_all(&mut self) {
        // A job's documents are dropped with the rest (they reload from the log); what it
        // folded is in the log already.
        if let Err(err) = self.settle_folds() {
            tracing::warn!(%err, "a page's fold failed while unloading");
        }
        self.docs.clear();
    }

    pub(super) fn snapshot(&mut self, conversation: ConversationId) -> Result<(), StoreError> {
        if self.is_out(conversation) {
            self.settle_folds()?;
        }
        let Some(l) = self.docs.get_mut(&conversation) else {
            return Ok(());
        };
        // Only the documents written since their last save (the head always): a snapshot
        // costs what was folded, not the conversation's history.
        let parts = l.doc.save_parts();
        let position = l.position;
        l.since_snapshot = 0;
        self.log.write_lazy(|t| {
            for (part, bytes) in &parts {
                t.put_snapshot_part(conversation, part.to_u64(), position, bytes)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    pub(super) fn loaded(
        &mut self,
        conversation: ConversationId,
    ) -> Result<&mut Loaded, StoreError> {
        if self.is_out(conversation) {
            self.settle_folds()?;
        }
        self.tick += 1;
        let tick = self.tick;
        let l = self
            .docs
            .get_mut(&conversation)
            .ok_or(StoreError::Doc(DocError::Op("document not loaded".into())))?;
        l.last_used = tick;
        Ok(l)
    }

    /// Folds events already appended at the given positions into the loaded document.
    pub(super) fn fold_new(
        &mut self,
        conversation: ConversationId,
        events: &[(u64, &Event)],
    ) -> Result<Vec<Change>, StoreError> {
        if self.queue_behind_job(conversation, events) {
            return Ok(Vec::new());
        }
        let every = self.config.snapshot_every;
        let l = self.loaded(conversation)?;
        let changes = l.fold(events.iter().map(|(p, e)| (*p, *e)))?;
        if l.since_snapshot >= every {
            self.snapshot(conversation)?;
        }
        Ok(changes)
    }

    pub(super) fn actor(&self, conversation: ConversationId) -> ActorId {
        // Device, conversation and log incarnation: unique per (device, rebuild).
        let mut bytes = Vec::with_capacity(32 + 16 + 8);
        bytes.extend_from_slice(&self.key.device().0[..16]);
        bytes.extend_from_slice(&conversation.0);
        bytes.extend_from_slice(&self.log.incarnation().to_be_bytes());
        ActorId::from(bytes)
    }

    /// Loads a conversation's document if it is not in memory: the snapshot if it loads, else
    /// an empty document; then the log tail after the snapshot. A snapshot that fails to load
    /// is dropped and the document rebuilt from the log (the log is the truth).
    pub(super) fn ensure_loaded(&mut self, conversation: ConversationId) -> Result<(), StoreError> {
        // A document out with a page's fold is loaded: it comes back before its next use.
        if self.docs.contains_key(&conversation) || self.is_out(conversation) {
            return Ok(());
        }
        self.evict_if_full()?;
        let actor = self.actor(conversation);
        let (mut doc, mut position) = match self.log.snapshot_parts(conversation)? {
            Some((pos, rows)) => {
                let parts: Vec<(PartId, &[u8])> = rows
                    .iter()
                    .map(|(k, b)| (PartId::from_u64(*k), b.as_slice()))
                    .collect();
                match ConversationDoc::load_parts(conversation, &parts, actor.clone()) {
                    Ok(doc) => (doc, pos),
                    Err(err) => {
                        tracing::warn!(%conversation, %err, "snapshot unusable; rebuilding from the log");
                        self.log.write_lazy(|t| t.drop_snapshot(conversation))?;
                        (ConversationDoc::new(conversation, actor), 0)
                    }
                }
            }
            None => (ConversationDoc::new(conversation, actor), 0),
        };
        let tail = self.log.conversation_events(conversation, position)?;
        let since_snapshot = tail.len() as u64;
        for (pos, ev) in &tail {
            doc.fold(ev)?;
            position = *pos;
        }
        // Every membership the gate admitted, not only the latest: a message's recipients are
        // the members at its sequence (a snapshot older than a change, or none, lacks some).
        // The gate writes each change's row in the transaction that admits it, the latest
        // (`gate.changed_at`) included.
        for (seq, members) in self.log.membership_history(conversation)? {
            doc.set_members(seq, members)?;
        }
        doc.commit();
        let failed: Vec<MessageId> = self
            .outbox_entries()?
            .filter(|e| e.conversation == conversation && e.state == OutboxState::Failed)
            .filter_map(|e| e.message)
            .collect();
        for m in failed {
            doc.set_failed(m, true);
        }
        for (m, held) in self.log.peer_held(conversation)? {
            doc.set_peer_held(m, held);
        }
        self.tick += 1;
        self.docs.insert(
            conversation,
            Loaded {
                doc,
                position,
                since_snapshot,
                last_used: self.tick,
            },
        );
        Ok(())
    }

    pub(super) fn evict_if_full(&mut self) -> Result<(), StoreError> {
        if self.docs.len() < self.config.max_loaded_docs.max(1) {
            return Ok(());
        }
        let Some(victim) = self
            .docs
            .iter()
            .min_by_key(|(_, l)| l.last_used)
            .map(|(c, _)| *c)
        else {
            return Ok(());
        };
        self.snapshot(victim)?;
        self.docs.remove(&victim);
        Ok(())
    }
}
