//! Who a conversation key goes to: the member users and their known devices, the users this
//! device's own queued `AddMember`s bring in, and the members of whom no device is known yet
//! (what `DeviceCore::held_for_devices` waits for).

use super::super::{Store, StoreError};
use crate::crypto::AgreementPublic;
use crate::event::EventKind;
use crate::ids::{ConversationId, DeviceId, EventId, UserId};
use std::collections::BTreeSet;

/// This device's own `AddMember`s still queued in a conversation (see
/// [`Store::own_additions`]).
pub(super) struct OwnAdditions {
    /// Epoch openings queued behind the last of them.
    pub(super) opened_after: BTreeSet<EventId>,
    /// Users they bring in.
    pub(super) joining: BTreeSet<UserId>,
}

impl Store {
    /// Member users new keys go to: the gate's membership, or the `Create` list before the
    /// relay sequenced anything (a conversation created offline), without the users whose
    /// removal this device holds ahead of its gate ([`Store::removals_ahead`]).
    pub(super) fn member_users(
        &mut self,
        conversation: ConversationId,
    ) -> Result<Vec<UserId>, StoreError> {
        let users = self.gate_or_create_members(conversation)?;
        let removed = self.removed_ahead(conversation)?;
        Ok(users.into_iter().filter(|u| !removed.contains(u)).collect())
    }

    /// The gate's members, or the `Create` list before the relay sequenced anything.
    fn gate_or_create_members(
        &mut self,
        conversation: ConversationId,
    ) -> Result<Vec<UserId>, StoreError> {
        let gate = self.log.gate(conversation)?;
        Ok(if gate.membership.is_some() {
            gate.members()
        } else {
            self.log
                .conversation_meta(conversation)?
                .and_then(|m| m.members)
                .map(|(_, m)| m)
                .unwrap_or_default()
        })
    }

    /// The users whose removal this device holds ahead of its gate.
    fn removed_ahead(
        &mut self,
        conversation: ConversationId,
    ) -> Result<BTreeSet<UserId>, StoreError> {
        Ok(self
            .removals_ahead(conversation)?
            .into_iter()
            .map(|r| r.user)
            .collect())
    }

    /// Whether this device seals its bodies (and so shares epoch keys).
    pub fn encrypts(&self) -> bool {
        self.config.encrypt
    }

    /// Members of `conversation` besides this device's user, among those `counted`, of whom
    /// the directory knows no device a key could be sealed to: what this device sends there
    /// now would reach them without a key (see `DeviceCore::held_for_devices`). Nothing when
    /// this device does not encrypt. The removals it holds ahead of its gate are looked up
    /// only when some member is left.
    pub fn members_without_devices(
        &mut self,
        conversation: ConversationId,
        counted: impl Fn(&UserId) -> bool,
    ) -> Result<Vec<UserId>, StoreError> {
        if !self.config.encrypt {
            return Ok(Vec::new());
        }
        let me = self.key.user();
        let users = self.gate_or_create_members(conversation)?;
        let dir = self.directory()?;
        let unknown: Vec<UserId> = users
            .into_iter()
            .filter(|u| *u != me && counted(u) && dir.devices_of(u).is_empty())
            .collect();
        if unknown.is_empty() {
            return Ok(unknown);
        }
        let removed = self.removed_ahead(conversation)?;
        Ok(unknown
            .into_iter()
            .filter(|u| !removed.contains(u))
            .collect())
    }

    /// The users this device's own `Create` or `AddMember` events among `events` (queued,
    /// not placed yet) bring in and of whom the directory knows no device: the relay says
    /// nothing about them before the event is placed. Messages queued behind such an event
    /// are sealed under an epoch opened after it (see `pick_epoch`), shared with their
    /// devices once they are known.
    pub fn joining_without_devices(
        &mut self,
        events: &[EventId],
    ) -> Result<Vec<UserId>, StoreError> {
        if !self.config.encrypt || events.is_empty() {
            return Ok(Vec::new());
        }
        let me = self.key.user();
        let mut users = BTreeSet::new();
        for id in events {
            if let Some(ev) = self.log.get(id)? {
                users.extend(ev.kind().users_brought_in().iter().copied());
            }
        }
        let dir = self.directory()?;
        Ok(users
            .into_iter()
            .filter(|u| *u != me && dir.devices_of(u).is_empty())
            .collect())
    }

    /// The member devices a new key goes to: every certified, unrevoked device of every member
    /// the directory knows, and this device.
    pub(in crate::store) fn member_devices(
        &mut self,
        conversation: ConversationId,
    ) -> Result<Vec<(DeviceId, AgreementPublic)>, StoreError> {
        self.recipient_devices(conversation, None)
    }

    /// [`Store::member_devices`], and the known devices of the users in `joining` (brought in
    /// by this device's own queued `AddMember`s, see [`Store::own_additions`]). Users whose
    /// removal this device holds ahead of its gate get nothing, members or joining.
    pub(super) fn recipient_devices(
        &mut self,
        conversation: ConversationId,
        joining: Option<&BTreeSet<UserId>>,
    ) -> Result<Vec<(DeviceId, AgreementPublic)>, StoreError> {
        let members = self.gate_or_create_members(conversation)?;
        let removed = self.removed_ahead(conversation)?;
        let me = (self.key.device(), self.key.agreement_public());
        let dir = self.directory()?;
        let mut out: Vec<_> = members
            .iter()
            .filter(|u| !removed.contains(u))
            .flat_map(|u| dir.devices_of(u))
            .collect();
        if !out.iter().any(|(d, _)| *d == me.0) {
            out.push(me);
        }
        for u in joining
            .into_iter()
            .flatten()
            .filter(|u| !removed.contains(u))
        {
            for d in dir.devices_of(u) {
                if !out.iter().any(|(known, _)| *known == d.0) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }
    /// When this device's own `AddMember` is queued in `conversation`: the epoch openings
    /// queued behind the last such one (the only epochs a message written now may use), and
    /// the users the queued additions bring in; `None` when no addition is queued.
    pub(super) fn own_additions(
        &mut self,
        conversation: ConversationId,
    ) -> Result<Option<OwnAdditions>, StoreError> {
        let queued: Vec<(u64, EventId)> = self
            .outbox_controls(conversation)?
            .map(|e| (e.position, e.event))
            .collect();
        let mut last_addition = None;
        let mut joining = BTreeSet::new();
        let mut openings = Vec::new();
        for (position, id) in queued {
            let Some(ev) = self.log.get(&id)? else {
                continue;
            };
            match ev.kind() {
                k @ EventKind::AddMember { .. } => {
                    last_addition = last_addition.max(Some(position));
                    joining.extend(k.users_brought_in().iter().copied());
                }
                EventKind::EpochKeys { epoch: None, .. } => openings.push((position, id)),
                _ => {}
            }
        }
        Ok(last_addition.map(|after| OwnAdditions {
            opened_after: openings
                .into_iter()
                .filter(|(p, _)| *p > after)
                .map(|(_, id)| id)
                .collect(),
            joining,
        }))
    }
}
