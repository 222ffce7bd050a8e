//! Who may be a peer: devices of users who share a conversation with this device, by the
//! memberships the gate admitted and the certificates the directory verified.

use super::PeerError;
use crate::device::DeviceCore;
use crate::ids::{ConversationId, DeviceId, UserId};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// The devices this device admits as peers: every certified, unrevoked device (its own
/// user's included) of a user who shares a conversation with it, by the memberships the gate
/// admitted and the certificates the directory verified.
pub fn admitted_peers(core: &mut DeviceCore) -> Result<BTreeSet<DeviceId>, PeerError> {
    let me = core.store().key().device();
    let mut users: BTreeSet<UserId> = shared_users(core)?.into_keys().collect();
    // A device of the same user is a peer even before it holds any conversation: it may be
    // new, and its history comes from here (see `crate::history`).
    users.insert(core.store().key().user());
    let directory = core.store_mut().directory()?;
    let mut out = BTreeSet::new();
    for user in users {
        for (device, revoked) in directory.all_devices_of(&user) {
            if !revoked && device != me {
                out.insert(device);
            }
        }
    }
    Ok(out)
}

/// The conversations this device shares with `peer` (none if the directory cannot place it).
pub fn shared_conversations(
    core: &mut DeviceCore,
    peer: DeviceId,
) -> Result<BTreeSet<ConversationId>, PeerError> {
    let directory = core.store_mut().directory()?;
    let user = match directory.user_of(&peer) {
        Some(u) if !directory.is_revoked(&peer) => u,
        _ => return Ok(BTreeSet::new()),
    };
    Ok(shared_users(core)?.remove(&user).unwrap_or_default())
}

/// The conversations in which a removal of `peer`'s user waits for its place in this log
/// (see [`crate::log::EventLog::pending_removals`]): the peer gets none of their unplaced
/// events, which the relay may place after the removal.
pub(super) fn withheld_conversations(
    core: &mut DeviceCore,
    peer: DeviceId,
) -> Result<HashSet<ConversationId>, PeerError> {
    let Some(user) = core.store_mut().directory()?.user_of(&peer) else {
        return Ok(HashSet::new());
    };
    Ok(core
        .store()
        .log()
        .pending_removals()?
        .into_iter()
        .filter(|(_, users)| users.contains(&user))
        .map(|(c, _)| c)
        .collect())
}

/// Whether `peer` is a certified, unrevoked device of this device's own user.
pub(super) fn is_own_device(core: &mut DeviceCore, peer: DeviceId) -> Result<bool, PeerError> {
    let me = core.store().key();
    let (me_user, me_device) = (me.user(), me.device());
    let directory = core.store_mut().directory()?;
    Ok(peer != me_device
        && directory.user_of(&peer) == Some(me_user)
        && !directory.is_revoked(&peer))
}

/// Per user, the conversations whose current members include both that user and this
/// device's user.
fn shared_users(
    core: &DeviceCore,
) -> Result<BTreeMap<UserId, BTreeSet<ConversationId>>, PeerError> {
    let me = core.store().key().user();
    let mut out: BTreeMap<UserId, BTreeSet<ConversationId>> = BTreeMap::new();
    for (conversation, meta) in core.store().log().conversations()? {
        let Some((_, members)) = meta.members else {
            continue;
        };
        if !members.contains(&me) {
            continue;
        }
        for user in members {
            out.entry(user).or_default().insert(conversation);
        }
    }
    Ok(out)
}
