//! [`Storage`] over [`RelayStore`], the embedded redb store: the relay's default, one process
//! per file. Its single writer makes [`StoreError::Conflict`] impossible; the checks of the
//! contract that cost nothing on one writer (dense sequences, ids stored once) are made by the
//! core before it stages an event.

use super::{ChangeSeq, Changes, Page, Storage};
use crate::core::store::{
    ChainInfo, CommitBatch, ConversationRecord, InvitationRecord, PrunePlan, PruneStats,
    RelayStore, StoreError,
};
use std::collections::HashMap;
use tidings_engine::wire::{DeviceRegistration, DeviceRevocation, Envelope};
use tidings_engine::{ConversationId, DeviceId, Event, ServerSeq, UserId};

impl Storage for RelayStore {
    fn commit(&self, batch: &CommitBatch<'_>) -> Result<(), StoreError> {
        RelayStore::commit(self, batch)
    }
    fn conversations(&self) -> Result<Vec<(ConversationId, ConversationRecord)>, StoreError> {
        RelayStore::conversations(self)
    }
    fn conversation(&self, id: &ConversationId) -> Result<Option<ConversationRecord>, StoreError> {
        RelayStore::conversation(self, id)
    }
    fn former_members(&self) -> Result<Vec<(ConversationId, UserId)>, StoreError> {
        RelayStore::former_members(self)
    }
    fn registrations(&self) -> Result<Vec<DeviceRegistration>, StoreError> {
        RelayStore::registrations(self)
    }
    fn revocations(&self) -> Result<Vec<DeviceRevocation>, StoreError> {
        RelayStore::revocations(self)
    }
    fn invitations(&self) -> Result<Vec<InvitationRecord>, StoreError> {
        RelayStore::invitations(self)
    }
    fn blocked(&self) -> Result<Vec<(UserId, UserId)>, StoreError> {
        RelayStore::blocked(self)
    }
    fn cursors(&self, device: &DeviceId) -> Result<HashMap<ConversationId, u64>, StoreError> {
        RelayStore::cursors(self, device)
    }
    fn chain(&self, events: &[&Event]) -> Result<Vec<ChainInfo>, StoreError> {
        RelayStore::chain(self, events)
    }
    fn page(
        &self,
        conv: &ConversationId,
        after_seq: ServerSeq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, StoreError> {
        RelayStore::page(self, conv, after_seq, limit, max_bytes)
    }
    fn statements_between(
        &self,
        conv: &ConversationId,
        from: ServerSeq,
        to: ServerSeq,
        max_bytes: usize,
    ) -> Result<(Vec<Envelope>, bool), StoreError> {
        RelayStore::statements_between(self, conv, from, to, max_bytes)
    }
    fn retained_floor(&self, conv: &ConversationId) -> Result<ServerSeq, StoreError> {
        RelayStore::retained_floor(self, conv)
    }
    fn sequenced_before(&self, conv: &ConversationId, ts_ms: u64) -> Result<ServerSeq, StoreError> {
        RelayStore::sequenced_before(self, conv, ts_ms)
    }
    fn prune(&self, plans: &[PrunePlan]) -> Result<PruneStats, StoreError> {
        RelayStore::prune(self, plans)
    }
    fn n_events(&self) -> Result<u64, StoreError> {
        RelayStore::n_events(self)
    }
    /// One process owns the file.
    fn is_shared(&self) -> bool {
        false
    }
    /// This process made every change, and its caches hold them already.
    fn changes(&self, after: ChangeSeq) -> Result<Changes, StoreError> {
        Ok(Changes::none(after))
    }
    fn change_position(&self) -> Result<ChangeSeq, StoreError> {
        Ok(ChangeSeq::default())
    }
    fn heads(
        &self,
        ids: &[ConversationId],
    ) -> Result<Vec<(ConversationId, ServerSeq)>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(rec) = RelayStore::conversation(self, id)? {
                out.push((*id, rec.max_seq));
            }
        }
        Ok(out)
    }
}
