//! How long a conversation's messages stay on its member devices.
//!
//! A conversation's retention policy is an event ([`crate::EventKind::SetRetention`]), signed
//! by the member device that set it and placed in the server order like any other. **Any
//! member may set it** (as WhatsApp's disappearing messages: a setting of the conversation,
//! not an admin's privilege); the gate admits it under the membership rules at its place, so a
//! non-member's or a removed member's policy is refused on every device, whatever the relay
//! accepted.
//!
//! A policy governs the messages sequenced **after** it, up to the next policy: every member
//! device reads the same events in the same order, so every device erases the same messages
//! (a policy does not reach back to what was sent before it was set, exactly as a message
//! sent before disappearing messages were turned on stays).
//!
//! What each policy erases (the erasure pass, [`crate::Store::erase_due`]):
//! - [`RetentionPolicy::KeepAll`]: nothing (the default, and how a conversation starts).
//! - [`RetentionPolicy::KeepDays`]: a message once its server timestamp is `days` old.
//! - [`RetentionPolicy::Disappear`]: a message `after_read_secs` after it was read on this
//!   device's user's side: for a message of another user, from the moment this device learned
//!   that its user read it (a read mark of any of the user's devices covering it); for the
//!   user's own message, from its server timestamp (its writer read it as they wrote it).
//!   A message nobody of the user's devices has read stays.
//!
//! An erased message leaves a tombstone (what is gone, its place, why, when), so that the
//! same event delivered again (by the relay, a peer, a resubmission) is never stored again.

use serde::{Deserialize, Serialize};

/// One day in milliseconds.
pub const DAY_MS: u64 = 24 * 3600 * 1000;
/// Longest [`RetentionPolicy::KeepDays`]: ten years (longer is [`RetentionPolicy::KeepAll`]).
pub const MAX_KEEP_DAYS: u32 = 3_650;
/// Longest [`RetentionPolicy::Disappear`] delay: 90 days.
pub const MAX_DISAPPEAR_SECS: u32 = 90 * 24 * 3600;

/// A conversation's retention policy. Encoded with postcard inside the event (variant index,
/// then the field as a varint): `KeepAll` = `00`, `KeepDays(n)` = `01 varint(n)`,
/// `Disappear(s)` = `02 varint(s)`. A variant this build does not know makes the event
/// malformed (refused by the relay and by devices alike).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RetentionPolicy {
    /// Keep every message.
    #[default]
    KeepAll,
    /// Keep a message for `days` days from its server timestamp (1..=[`MAX_KEEP_DAYS`]).
    KeepDays {
        /// Days kept.
        days: u32,
    },
    /// Erase a message `after_read_secs` seconds after it was read (1..=[`MAX_DISAPPEAR_SECS`]).
    Disappear {
        /// Seconds after the read.
        after_read_secs: u32,
    },
}

/// Why a policy was refused before it was signed or when it was decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `KeepDays` outside 1..=[`MAX_KEEP_DAYS`].
    #[error("keep {0} days: must be 1..={MAX_KEEP_DAYS}")]
    Days(u32),
    /// `Disappear` outside 1..=[`MAX_DISAPPEAR_SECS`].
    #[error("disappear after {0} s: must be 1..={MAX_DISAPPEAR_SECS}")]
    Secs(u32),
}

impl RetentionPolicy {
    /// Whether the policy's numbers are inside their limits.
    pub fn check(&self) -> Result<(), PolicyError> {
        match *self {
            RetentionPolicy::KeepAll => Ok(()),
            RetentionPolicy::KeepDays { days } if days == 0 || days > MAX_KEEP_DAYS => {
                Err(PolicyError::Days(days))
            }
            RetentionPolicy::Disappear { after_read_secs: s }
                if s == 0 || s > MAX_DISAPPEAR_SECS =>
            {
                Err(PolicyError::Secs(s))
            }
            _ => Ok(()),
        }
    }

    /// Whether the policy ever erases anything.
    pub fn erases(&self) -> bool {
        !matches!(self, RetentionPolicy::KeepAll)
    }
}

/// Why a message's body is gone from this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErasureReason {
    /// Older than the conversation's [`RetentionPolicy::KeepDays`].
    Expired,
    /// Read, and the conversation's [`RetentionPolicy::Disappear`] delay passed.
    Disappeared,
    /// This device's user was removed from the conversation and the relay placed the message
    /// after the removal: the device must not read it.
    Removed,
}

impl ErasureReason {
    /// The byte stored in the `erased` table.
    pub fn to_u8(self) -> u8 {
        match self {
            ErasureReason::Expired => 1,
            ErasureReason::Disappeared => 2,
            ErasureReason::Removed => 3,
        }
    }

    /// The reason stored as `b` (`None` for a byte no build wrote).
    pub fn from_u8(b: u8) -> Option<ErasureReason> {
        match b {
            1 => Some(ErasureReason::Expired),
            2 => Some(ErasureReason::Disappeared),
            3 => Some(ErasureReason::Removed),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_encoding() {
        assert!(RetentionPolicy::KeepDays { days: 0 }.check().is_err());
        assert!(RetentionPolicy::KeepDays {
            days: MAX_KEEP_DAYS + 1
        }
        .check()
        .is_err());
        assert!(RetentionPolicy::Disappear { after_read_secs: 0 }
            .check()
            .is_err());
        assert!(RetentionPolicy::Disappear {
            after_read_secs: 30
        }
        .check()
        .is_ok());
        let bytes = postcard::to_stdvec(&RetentionPolicy::KeepDays { days: 300 }).expect("enc");
        assert_eq!(bytes, vec![1, 0xac, 0x02]);
        assert_eq!(
            postcard::to_stdvec(&RetentionPolicy::KeepAll).expect("enc"),
            vec![0]
        );
        for r in [
            ErasureReason::Expired,
            ErasureReason::Disappeared,
            ErasureReason::Removed,
        ] {
            assert_eq!(ErasureReason::from_u8(r.to_u8()), Some(r));
        }
    }
}
