//! Message status: a lattice PENDING < SENT < DELIVERED < READ, plus the local FAILED outcome.

use crate::ids::{ServerSeq, UserId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the sender sees for a message (the ticks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Written locally, not yet acknowledged by the relay (clock icon).
    Pending,
    /// The outbox gave up after its retry policy ran out. A local outcome: a later
    /// `ServerAck` overrides it (the message reached the relay after all), `retry` resets it.
    Failed,
    /// The relay sequenced it (one grey tick).
    Sent,
    /// Every recipient user has it on at least one device (two grey ticks).
    Delivered,
    /// Every recipient user read it (two blue ticks).
    Read,
}

impl Status {
    /// Position in the lattice. `Pending` and `Failed` share the bottom: neither is "more" than
    /// the other, and both are below anything the relay or a recipient confirmed.
    pub fn rank(self) -> u8 {
        match self {
            Status::Pending | Status::Failed => 0,
            Status::Sent => 1,
            Status::Delivered => 2,
            Status::Read => 3,
        }
    }

    /// The tick a chat UI shows.
    pub fn tick(self) -> &'static str {
        match self {
            Status::Pending => "⏰",
            Status::Failed => "❗",
            Status::Sent => "✓",
            Status::Delivered => "✓✓",
            Status::Read => "✓✓ READ",
        }
    }
}

/// Cumulative receipt watermarks of one user, the maximum over the user's devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserMarks {
    /// Highest sequence that reached at least one of the user's devices (a read implies delivery).
    pub delivered: ServerSeq,
    /// Highest sequence read on any of the user's devices.
    pub read: ServerSeq,
}

/// The status of an acknowledged or pending message, from the conversation's members and the
/// per-user watermarks. Shared by the automerge view and the fast redb view so both agree.
///
/// Without a known member list the message cannot be claimed delivered: it stays `Sent`. That
/// keeps the result monotonic in the events seen (members are fixed once known, marks only grow).
pub fn derive_status(
    seq: Option<ServerSeq>,
    failed: bool,
    sender: UserId,
    members: Option<&[UserId]>,
    marks: &BTreeMap<UserId, UserMarks>,
) -> Status {
    let Some(seq) = seq else {
        return if failed {
            Status::Failed
        } else {
            Status::Pending
        };
    };
    let Some(members) = members else {
        return Status::Sent;
    };
    let mut recipients = members.iter().filter(|u| **u != sender).peekable();
    if recipients.peek().is_none() {
        return Status::Sent;
    }
    let mut all_read = true;
    for user in recipients {
        let m = marks.get(user).copied().unwrap_or_default();
        if m.delivered < seq {
            return Status::Sent;
        }
        all_read &= m.read >= seq;
    }
    if all_read {
        Status::Read
    } else {
        Status::Delivered
    }
}

/// Who holds a message by a peer receipt ([`crate::peer::PeerFrame::Holds`]): a recipient
/// device that got it directly said so, before (or beside) its `Delivered` receipt through the
/// relay. Both only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHeld {
    /// Users one of whose devices holds the message.
    pub users: std::collections::BTreeSet<UserId>,
    /// Every recipient held it when a receipt came (the members then): DELIVERED from then
    /// on, even if a member joins before the relay places the message (a max-register: the
    /// status never goes back).
    pub complete: bool,
}

/// [`derive_status`], with the peer receipts of the message: a recipient user has it when
/// their relay receipt covers its sequence or a device of theirs said it holds it; DELIVERED
/// once every recipient has it, with or without a sequence (✓✓ means the recipients have it,
/// however it reached them). READ still comes only from read receipts through the relay.
pub fn derive_status_with(
    seq: Option<ServerSeq>,
    failed: bool,
    sender: UserId,
    members: Option<&[UserId]>,
    marks: &BTreeMap<UserId, UserMarks>,
    held: Option<&PeerHeld>,
) -> Status {
    let base = derive_status(seq, failed, sender, members, marks);
    let Some(held) = held else {
        return base;
    };
    if base.rank() >= Status::Delivered.rank() {
        return base;
    }
    let has_it = |u: &UserId| {
        held.users.contains(u)
            || seq.is_some_and(|s| marks.get(u).is_some_and(|m| m.delivered >= s))
    };
    let all = members.is_some_and(|m| {
        let mut recipients = m.iter().filter(|u| **u != sender).peekable();
        recipients.peek().is_some() && recipients.all(has_it)
    });
    if held.complete || all {
        Status::Delivered
    } else {
        base
    }
}

/// Status of a message for one recipient user.
pub fn recipient_status(seq: Option<ServerSeq>, marks: UserMarks) -> Status {
    match seq {
        None => Status::Pending,
        Some(s) if marks.read >= s => Status::Read,
        Some(s) if marks.delivered >= s => Status::Delivered,
        Some(_) => Status::Sent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_lowest_over_recipients() {
        let (a, b, c) = (UserId([1; 32]), UserId([2; 32]), UserId([3; 32]));
        let members = [a, b, c];
        let mut marks = BTreeMap::new();
        let st = |marks: &BTreeMap<_, _>| derive_status(Some(5), false, a, Some(&members), marks);
        assert_eq!(st(&marks), Status::Sent);
        marks.insert(
            b,
            UserMarks {
                delivered: 9,
                read: 9,
            },
        );
        assert_eq!(st(&marks), Status::Sent);
        marks.insert(
            c,
            UserMarks {
                delivered: 5,
                read: 0,
            },
        );
        assert_eq!(st(&marks), Status::Delivered);
        marks.insert(
            c,
            UserMarks {
                delivered: 5,
                read: 5,
            },
        );
        assert_eq!(st(&marks), Status::Read);
        assert_eq!(derive_status(None, true, a, None, &marks), Status::Failed);
        assert_eq!(derive_status(Some(1), true, a, None, &marks), Status::Sent);
    }
}
