//! New-device history: what a device of a user hands a newly linked device of the same user
//! so that it reads the user's past conversations, and how far back.
//!
//! The events themselves travel as any events do (relay pulls, peer sessions). What a new
//! device lacks is the epoch keys: a key is sealed to the devices that were members when its
//! epoch started, so a device linked later cannot open any of the past ones. Another device
//! of the same user seals them again, to the new device's certified X25519 key:
//! - over a peer link, in [`crate::peer::PeerFrame::HistoryKeys`] ([`HistoryKey`]s);
//! - through the relay, as `EpochKeys` re-shares naming the epoch (the very events a key
//!   request is answered with), when the device learns a new device of its user.
//!
//! A share is taken in only under the checks of any key share: sealed to this device, from a
//! certified, unrevoked device of this device's own user, and opening to the key the epoch's
//! opening event committed to ([`crate::store::KeyShareRefusal`]). [`HistoryPolicy`] bounds
//! what is offered and what is accepted; both sides apply their own.

use crate::event::SealedKey;
use crate::ids::{ConversationId, EventId};
use serde::{Deserialize, Serialize};

/// Most keys one [`crate::peer::PeerFrame::HistoryKeys`] carries (a key is ~150 bytes).
pub const MAX_HISTORY_KEYS_PER_FRAME: usize = 1024;
/// Most keys one device hands over in one peer session; the rest go in the next session (or
/// through the relay, or on the new device's key requests).
pub const MAX_HISTORY_KEYS: usize = 65_536;
/// Milliseconds in a day, for [`HistoryPolicy::LastDays`].
pub const DAY_MS: u64 = 86_400_000;

/// How much of a user's history a new device of theirs receives (and an old one hands over).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HistoryPolicy {
    /// Every epoch key the device holds.
    #[default]
    All,
    /// The keys of the epochs in use during the last `n` days: every epoch started since,
    /// and per starting device the last one started before (its messages may reach into
    /// the window). Days count back from the `now_ms` the caller passes.
    LastDays(u32),
    /// No past keys: the device reads what is sent after it joined (and what the senders
    /// seal to it anyway).
    Nothing,
}

impl HistoryPolicy {
    /// The oldest relay time (Unix ms) whose epochs the policy covers at `now_ms`; `None`
    /// for no history at all.
    pub fn cutoff_ms(self, now_ms: u64) -> Option<u64> {
        match self {
            HistoryPolicy::All => Some(0),
            HistoryPolicy::LastDays(n) => Some(now_ms.saturating_sub(u64::from(n) * DAY_MS)),
            HistoryPolicy::Nothing => None,
        }
    }
}

/// One epoch key sealed to one device of the same user, as a peer hands it over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryKey {
    /// Its conversation.
    pub conversation: ConversationId,
    /// The epoch (the id of the `EpochKeys` event that opened it).
    pub epoch: EventId,
    /// The key, sealed as a re-share of `epoch` (`EpochOrigin::Shared`) to the receiver.
    pub sealed: SealedKey,
}

/// What a device made of the history keys a peer handed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryKeysOutcome {
    /// Keys taken in (new epochs readable now).
    pub taken: usize,
    /// Keys already held, or outside this device's policy.
    pub skipped: usize,
    /// Keys refused: not sealed to this device, not opening, or not the committed key.
    pub refused: usize,
}

/// Why a device refused a whole [`crate::peer::PeerFrame::HistoryKeys`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryRefusal {
    /// The sender is not a certified, unrevoked device of this device's user: only a user's
    /// own devices hand over history.
    #[error("history keys from a device that is not one of this user's")]
    NotOwnDevice,
    /// More keys than [`MAX_HISTORY_KEYS_PER_FRAME`].
    #[error("too many history keys in one frame")]
    TooMany,
}
