//! New-device history on the store's side (see [`crate::history`]): which epoch keys the
//! policy offers, sealing them to another device of the same user (for a peer link, or as
//! `EpochKeys` re-shares through the relay), and taking in the keys a peer sealed to this
//! device under the checks of any key share.

use super::{Epoch, Store, StoreError};
use crate::conversation::Change;
use crate::crypto::AgreementPublic;
use crate::e2ee::{self, EpochOrigin};
use crate::history::{
    HistoryKey, HistoryKeysOutcome, HistoryPolicy, HistoryRefusal, MAX_HISTORY_KEYS,
    MAX_HISTORY_KEYS_PER_FRAME,
};
use crate::ids::{ConversationId, DeviceId, EventId};
use std::collections::{BTreeMap, BTreeSet};

/// An epoch as the policy judges it: where, which, who started it, and when the relay
/// placed its opening event (`None`: not sequenced yet, so current).
#[derive(Clone, Copy, Debug)]
struct Dated {
    conversation: ConversationId,
    epoch: EventId,
    creator: Option<DeviceId>,
    opened_ms: Option<u64>,
}

/// The one rule for which epochs a policy covers: everything opened since the cutoff, and per
/// (conversation, starting device) the last epoch opened before it, whose messages may reach
/// into the window. Applied by the device that offers and by the one that accepts.
fn in_policy(dated: &[Dated], policy: HistoryPolicy, now_ms: u64) -> BTreeSet<EventId> {
    let Some(cutoff) = policy.cutoff_ms(now_ms) else {
        return BTreeSet::new();
    };
    let mut out = BTreeSet::new();
    let mut last_before: BTreeMap<(ConversationId, Option<DeviceId>), (u64, EventId)> =
        BTreeMap::new();
    for d in dated {
        match d.opened_ms {
            Some(t) if t < cutoff => {
                let slot = last_before
                    .entry((d.conversation, d.creator))
                    .or_insert((t, d.epoch));
                if (t, d.epoch) > *slot {
                    *slot = (t, d.epoch);
                }
            }
            _ => {
                out.insert(d.epoch);
            }
        }
    }
    out.extend(last_before.into_values().map(|(_, e)| e));
    out
}

impl Store {
    /// Sets the history policy ([`crate::store::StoreConfig::history`]).
    pub fn set_history_policy(&mut self, policy: HistoryPolicy) {
        self.config.history = policy;
    }

    /// The history policy in force.
    pub fn history_policy(&self) -> HistoryPolicy {
        self.config.history
    }

    /// The certified X25519 key of `device` when it is another certified, unrevoked device of
    /// this device's own user: the only devices history goes to or comes from.
    fn own_device(&mut self, device: DeviceId) -> Result<Option<AgreementPublic>, StoreError> {
        let me = (self.key.device(), self.key.user());
        if device == me.0 {
            return Ok(None);
        }
        Ok(self.directory()?.agreement_of(&device, &me.1))
    }

    /// The epochs this device holds, in conversations its user is a member of, that its
    /// history policy offers at `now_ms`.
    fn history_epochs(
        &mut self,
        now_ms: u64,
    ) -> Result<Vec<(ConversationId, EventId)>, StoreError> {
        let me = self.key.user();
        let mut dated = Vec::new();
        for (c, _) in self.log.conversations()? {
            if !self.member_users(c)?.contains(&me) {
                continue;
            }
            let epochs: Vec<(EventId, Option<DeviceId>)> = self
                .epochs_of(c)?
                .iter()
                .map(|(id, e)| (*id, e.creator))
                .collect();
            for (epoch, creator) in epochs {
                dated.push(Dated {
                    conversation: c,
                    epoch,
                    creator,
                    opened_ms: self.log.ack_of(&epoch)?.map(|(_, ts)| ts),
                });
            }
        }
        let chosen = in_policy(&dated, self.config.history, now_ms);
        let mut out: Vec<_> = dated
            .into_iter()
            .filter(|d| chosen.contains(&d.epoch))
            .map(|d| (d.conversation, d.epoch))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The epoch keys the policy offers, each sealed to `device` (another device of this
    /// user) for a peer link, at most [`MAX_HISTORY_KEYS`]. None for any other device. The
    /// device is counted as holding them from now on (this device vouches for what it
    /// sealed), so they are not re-shared through the relay as well.
    pub fn seal_history_keys(
        &mut self,
        device: DeviceId,
        now_ms: u64,
    ) -> Result<Vec<HistoryKey>, StoreError> {
        let Some(public) = self.own_device(device)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (conversation, epoch) in self.history_epochs(now_ms)? {
            if out.len() >= MAX_HISTORY_KEYS {
                break;
            }
            let Some(mut e) = self.epochs_of(conversation)?.get(&epoch).cloned() else {
                continue;
            };
            let origin = EpochOrigin::Shared(epoch);
            let key = e.key();
            let sealed =
                e2ee::seal_epoch_key_checkable(conversation, origin, &key, &[(device, public)]);
            let Some(sealed) = sealed.into_iter().next() else {
                continue;
            };
            out.push(HistoryKey {
                conversation,
                epoch,
                sealed,
            });
            let fresh = e.named.insert(device) | e.holders.insert(device);
            if fresh {
                self.keep_epoch(conversation, epoch, e)?;
            }
        }
        Ok(out)
    }

    /// Shares the epoch keys the policy offers with `devices` (other devices of this user)
    /// through the relay: the `EpochKeys` re-shares a key request is answered with, for the
    /// devices not known to hold an epoch and to which no queued share already seals it. The
    /// devices missing an epoch share its events (up to `MAX_SEALED_KEYS` each): a user's
    /// devices listed together cost one event per epoch, not one per device and epoch (a
    /// registration flood on the account would otherwise fill the outbox with thousands of
    /// events, ahead of the user's own). Devices of other users are ignored; nothing happens
    /// when bodies are not encrypted. Returns how many epochs were shared (events now in the
    /// outbox) and the changes to show.
    pub fn share_history(
        &mut self,
        devices: &[DeviceId],
        now_ms: u64,
    ) -> Result<(usize, Vec<Change>), StoreError> {
        if !self.config.encrypt {
            return Ok((0, Vec::new()));
        }
        let mut own = Vec::new();
        for d in devices.iter().collect::<BTreeSet<_>>() {
            if let Some(public) = self.own_device(*d)? {
                own.push((*d, public));
            }
        }
        if own.is_empty() {
            return Ok((0, Vec::new()));
        }
        let mut n_shared = 0;
        let mut changes = Vec::new();
        let mut queued = super::requests::QueuedShares::default();
        for (conversation, epoch) in self.history_epochs(now_ms)? {
            let Some(holders) = self
                .epochs_of(conversation)?
                .get(&epoch)
                .map(|e| e.holders.clone())
            else {
                continue;
            };
            let mut to = Vec::new();
            for (d, public) in &own {
                if !holders.contains(d) && !queued.seals(self, conversation, epoch, *d)? {
                    to.push((*d, *public));
                }
            }
            if to.is_empty() {
                continue;
            }
            let (n_events, more) = self.share_epoch(conversation, epoch, &to, now_ms)?;
            changes.extend(more);
            if n_events > 0 {
                n_shared += 1;
            }
        }
        if n_shared > 0 {
            tracing::debug!(
                n_devices = own.len(),
                n_shared,
                "shared history keys with devices of this user"
            );
        }
        Ok((n_shared, changes))
    }

    /// Takes in the history keys another device of this user sealed to this one (see
    /// [`crate::history`]): refused as a whole unless `from` is a certified, unrevoked device
    /// of this user; each key only when sealed to this device, opening, naming an epoch whose
    /// opening event this device holds in that conversation, equal to the key that event
    /// committed to, and within this device's policy at `now_ms`.
    pub fn take_history_keys(
        &mut self,
        from: DeviceId,
        keys: &[HistoryKey],
        now_ms: u64,
    ) -> Result<(HistoryKeysOutcome, Vec<Change>), StoreError> {
        if keys.len() > MAX_HISTORY_KEYS_PER_FRAME {
            return Err(StoreError::History(HistoryRefusal::TooMany));
        }
        if self.own_device(from)?.is_none() {
            return Err(StoreError::History(HistoryRefusal::NotOwnDevice));
        }
        let me = self.key.device();
        let mut outcome = HistoryKeysOutcome::default();
        let mut changes = Vec::new();
        // The opening events first: the policy is judged over the keys offered.
        let mut candidates = Vec::new();
        let mut dated = Vec::new();
        for k in keys {
            let opening = self
                .log
                .get(&k.epoch)?
                .filter(|o| o.conversation() == k.conversation);
            let Some(opening) = opening.filter(|_| k.sealed.device == me) else {
                outcome.refused += 1;
                continue;
            };
            if self.epochs_of(k.conversation)?.contains_key(&k.epoch) {
                outcome.skipped += 1;
                continue;
            }
            dated.push(Dated {
                conversation: k.conversation,
                epoch: k.epoch,
                creator: Some(opening.header().author),
                opened_ms: self.log.ack_of(&k.epoch)?.map(|(_, ts)| ts),
            });
            candidates.push((k, opening));
        }
        let chosen = in_policy(&dated, self.config.history, now_ms);
        for (k, opening) in candidates {
            if !chosen.contains(&k.epoch) {
                outcome.skipped += 1;
                continue;
            }
            let origin = EpochOrigin::Shared(k.epoch);
            let shares = std::slice::from_ref(&k.sealed);
            let key = match e2ee::open_epoch_key(
                k.conversation,
                origin,
                shares,
                me,
                self.key.agreement(),
            ) {
                Some(Ok(key)) => key,
                _ => {
                    outcome.refused += 1;
                    continue;
                }
            };
            if let Err(reason) = self.check_share(k.conversation, &opening, k.epoch, &key)? {
                tracing::warn!(conversation = %k.conversation, epoch = %k.epoch, %from, %reason,
                    "refused a history key");
                outcome.refused += 1;
                continue;
            }
            let e = Epoch {
                key: *key.as_bytes(),
                creator: Some(opening.header().author),
                named: BTreeSet::from([me]),
                based_on: None,
                holders: BTreeSet::from([me]),
            };
            self.keep_epoch(k.conversation, k.epoch, e)?;
            outcome.taken += 1;
            changes.push(Change::KeyArrived {
                conversation: k.conversation,
                epoch: k.epoch,
            });
        }
        Ok((outcome, changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dated(c: u8, e: u8, creator: u8, opened_ms: Option<u64>) -> Dated {
        Dated {
            conversation: ConversationId([c; 16]),
            epoch: EventId([e; 32]),
            creator: Some(DeviceId([creator; 32])),
            opened_ms,
        }
    }

    #[test]
    fn the_policy_keeps_the_window_and_the_last_epoch_before_it_per_starter() {
        let day = crate::history::DAY_MS;
        let now = 100 * day;
        let all = [
            dated(1, 1, 1, Some(10 * day)),
            dated(1, 2, 1, Some(50 * day)),
            dated(1, 3, 1, Some(95 * day)),
            dated(1, 4, 2, Some(20 * day)),
            dated(2, 5, 1, Some(40 * day)),
            dated(2, 6, 1, None),
        ];
        let ids = |v: &[u8]| v.iter().map(|b| EventId([*b; 32])).collect::<BTreeSet<_>>();
        assert_eq!(
            in_policy(&all, HistoryPolicy::All, now),
            ids(&[1, 2, 3, 4, 5, 6])
        );
        // Last 7 days: epoch 3 (inside), 2 (its starter's last before), 4 (device 2's last),
        // 5 (conversation 2's last before), 6 (not sequenced: current).
        assert_eq!(
            in_policy(&all, HistoryPolicy::LastDays(7), now),
            ids(&[2, 3, 4, 5, 6])
        );
        assert_eq!(in_policy(&all, HistoryPolicy::Nothing, now), ids(&[]));
    }
}
