//! Asking for and answering epoch keys: the epochs of folded messages this device lacks,
//! its `KeyRequest` events, and the answers it gives others' requests (one `EpochKeys` event
//! per epoch for all the devices that asked), with what its queued shares already carry.

use super::{Store, StoreError};
use crate::conversation::Change;
use crate::crypto::AgreementPublic;
use crate::event::EventKind;
use crate::ids::{ConversationId, DeviceId, EventId, UserId};
use std::collections::{BTreeMap, BTreeSet, HashMap};

impl Store {
    /// Answers the key requests folded since the last call (see
    /// [`Store::may_answer_key_request`]); the answers are events in the outbox. The devices
    /// asking for one epoch share its answer (one `EpochKeys` event sealed to all of them, up
    /// to `MAX_SEALED_KEYS`): a crowd of devices asking at once costs one event per epoch.
    pub fn answer_key_requests(&mut self, now_ms: u64) -> Result<Vec<Change>, StoreError> {
        let mut answers: BTreeMap<(ConversationId, EventId), Vec<(DeviceId, AgreementPublic)>> =
            BTreeMap::new();
        let mut queued = QueuedShares::default();
        for (conversation, epoch, device, user) in std::mem::take(&mut self.key_requests) {
            let Some(public) = self.may_answer_key_request(conversation, epoch, device, user)?
            else {
                continue;
            };
            if queued.seals(self, conversation, epoch, device)? {
                // The answer is already on its way (sealed when this device learned the
                // other's certificate, or an earlier request): a second copy would only cost
                // the sender's rate and the relay's storage.
                continue;
            }
            let to = answers.entry((conversation, epoch)).or_default();
            if !to.iter().any(|(d, _)| *d == device) {
                to.push((device, public));
            }
        }
        let mut changes = Vec::new();
        for ((conversation, epoch), to) in answers {
            tracing::debug!(%conversation, %epoch, n_devices = to.len(), "answering key requests");
            changes.extend(self.share_epoch(conversation, epoch, &to, now_ms)?.1);
        }
        Ok(changes)
    }

    /// The certified key of `device` of `user`, which asked for `epoch`, when this device
    /// answers it: this device started the epoch or belongs to the same user, the asking
    /// device is certified for `user`, `user` is a member now and joined before the epoch
    /// started (no history for new members), and this device holds no removal of `user`
    /// ahead of its gate.
    fn may_answer_key_request(
        &mut self,
        conversation: ConversationId,
        epoch: EventId,
        device: DeviceId,
        user: UserId,
    ) -> Result<Option<AgreementPublic>, StoreError> {
        let me = self.key.device();
        let Some(e) = self.epochs_of(conversation)?.get(&epoch).cloned() else {
            return Ok(None);
        };
        if e.creator != Some(me) && user != self.key.user() {
            return Ok(None);
        }
        let gate = self.log.gate(conversation)?;
        let Some(joined) = gate.joined.get(&user).copied() else {
            return Ok(None);
        };
        let Some((epoch_seq, _)) = self.log.ack_of(&epoch)? else {
            return Ok(None);
        };
        if joined > epoch_seq {
            return Ok(None);
        }
        if self
            .removals_ahead(conversation)?
            .iter()
            .any(|r| r.user == user)
        {
            tracing::warn!(%conversation, %epoch, %device,
                "not answering a key request of a user whose removal this device holds");
            return Ok(None);
        }
        Ok(self.directory()?.agreement_of(&device, &user))
    }

    /// The (epoch, device) pairs the `EpochKeys` events of this device still waiting in the
    /// outbox of `conversation` seal.
    fn pending_shares(
        &mut self,
        conversation: ConversationId,
    ) -> Result<BTreeSet<(EventId, DeviceId)>, StoreError> {
        let queued: Vec<EventId> = self
            .outbox_controls(conversation)?
            .filter(|e| e.state == crate::log::OutboxState::Queued)
            .map(|e| e.event)
            .collect();
        let mut out = BTreeSet::new();
        for id in queued {
            let Some(ev) = self.log.get(&id)? else {
                continue;
            };
            if let EventKind::EpochKeys {
                epoch: named, keys, ..
            } = ev.kind()
            {
                let epoch = named.unwrap_or(id);
                out.extend(keys.iter().map(|k| (epoch, k.device)));
            }
        }
        Ok(out)
    }

    /// Epochs of folded messages whose key this device lacks.
    pub fn missing_keys(&self) -> Vec<(ConversationId, EventId)> {
        self.missing.iter().copied().collect()
    }

    /// Asks the conversation's members for the key of `epoch` (a `KeyRequest` event). Nothing
    /// when the key arrived meanwhile.
    pub fn request_key(
        &mut self,
        conversation: ConversationId,
        epoch: EventId,
        now_ms: u64,
    ) -> Result<Vec<Change>, StoreError> {
        if self.epochs_of(conversation)?.contains_key(&epoch) {
            self.missing.remove(&(conversation, epoch));
            return Ok(Vec::new());
        }
        let (_, changes) =
            self.author_with(conversation, now_ms, |_| EventKind::KeyRequest { epoch })?;
        Ok(changes)
    }
}

/// The shares this device's queued `EpochKeys` events carry, read from the outbox once per
/// conversation asked about (a batch of shares or answers asks about many devices).
#[derive(Default)]
pub(super) struct QueuedShares(HashMap<ConversationId, BTreeSet<(EventId, DeviceId)>>);

impl QueuedShares {
    /// Whether a queued event of `store` already seals `epoch` of `conversation` to `device`.
    pub(super) fn seals(
        &mut self,
        store: &mut Store,
        conversation: ConversationId,
        epoch: EventId,
        device: DeviceId,
    ) -> Result<bool, StoreError> {
        let queued = match self.0.entry(conversation) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(store.pending_shares(conversation)?)
            }
        };
        Ok(queued.contains(&(epoch, device)))
    }
}
