//! Who belongs to a conversation and who may change that.
//!
//! One set of rules, applied to each event at its place in the server order: by the relay when
//! it sequences an event, and by every device when it folds the sequenced events. A device
//! does not take the relay's word: an event the rules refuse is ignored and reported, whatever
//! the relay accepted.
//!
//! The rules:
//! - `Create` starts the conversation; it must list its author's user, who becomes its
//!   creator and first admin. Only one `Create` per conversation.
//! - Every other event of a device needs the device's user to be a member at that point.
//! - `AddMember` and removing somebody else need an admin. Anyone may leave
//!   (`RemoveMember` of their own user), except the creator, who can neither leave nor be
//!   removed (the conversation always has an admin).
//! - `Sequenced` (and the legacy `ServerAck`) is the relay's, never a member's.

use crate::event::{EventKind, MAX_MEMBERS};
use crate::ids::UserId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A member's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// May send and leave.
    Member,
    /// May also add and remove members.
    Admin,
}

/// Why an event breaks the membership rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The event's user is not a member (never was, or was removed).
    #[error("user {0} is not a member")]
    NotMember(UserId),
    /// Adding or removing someone else needs an admin.
    #[error("user {0} is not an admin")]
    NotAdmin(UserId),
    /// `AddMember` of a current member.
    #[error("user {0} is already a member")]
    AlreadyMember(UserId),
    /// `RemoveMember` of a user who is not a member.
    #[error("user {0} cannot be removed: not a member")]
    NoSuchMember(UserId),
    /// The creator can neither leave nor be removed.
    #[error("the creator cannot be removed")]
    CreatorStays,
    /// A second `Create`.
    #[error("the conversation exists already")]
    AlreadyCreated,
    /// A `Create` that does not list its author's user.
    #[error("a Create event must list its author's user")]
    CreatorNotListed,
    /// More than [`MAX_MEMBERS`] members.
    #[error("too many members (limit {MAX_MEMBERS})")]
    TooManyMembers,
    /// A `ServerAck` is the relay's event.
    #[error("server acks come from the relay, not from a member")]
    RelayOnly,
}

/// The members of a conversation at one point of its server order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    creator: UserId,
    members: BTreeMap<UserId, Role>,
}

impl Membership {
    /// The membership a `Create` by a device of `author` with `members` starts.
    pub fn create(author: UserId, members: &[UserId]) -> Result<Membership, MembershipError> {
        if !members.contains(&author) {
            return Err(MembershipError::CreatorNotListed);
        }
        if members.len() > MAX_MEMBERS {
            return Err(MembershipError::TooManyMembers);
        }
        let mut map: BTreeMap<UserId, Role> = members.iter().map(|u| (*u, Role::Member)).collect();
        map.insert(author, Role::Admin);
        Ok(Membership {
            creator: author,
            members: map,
        })
    }

    /// Whether an event of kind `kind` by a device of `author` is allowed now.
    pub fn check(&self, author: UserId, kind: &EventKind) -> Result<(), MembershipError> {
        let role = match kind {
            EventKind::ServerAck { .. } | EventKind::Sequenced { .. } => {
                return Err(MembershipError::RelayOnly)
            }
            EventKind::Create { .. } => return Err(MembershipError::AlreadyCreated),
            _ => self
                .members
                .get(&author)
                .copied()
                .ok_or(MembershipError::NotMember(author))?,
        };
        match kind {
            EventKind::AddMember { user, .. } => {
                if role != Role::Admin {
                    return Err(MembershipError::NotAdmin(author));
                }
                if self.members.contains_key(user) {
                    return Err(MembershipError::AlreadyMember(*user));
                }
                if self.members.len() >= MAX_MEMBERS {
                    return Err(MembershipError::TooManyMembers);
                }
                Ok(())
            }
            EventKind::RemoveMember { user } => {
                if *user != author && role != Role::Admin {
                    return Err(MembershipError::NotAdmin(author));
                }
                if *user == self.creator {
                    return Err(MembershipError::CreatorStays);
                }
                if !self.members.contains_key(user) {
                    return Err(MembershipError::NoSuchMember(*user));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Checks and applies an event. Returns whether the membership changed.
    pub fn apply(&mut self, author: UserId, kind: &EventKind) -> Result<bool, MembershipError> {
        self.check(author, kind)?;
        Ok(match kind {
            EventKind::AddMember { user, admin } => {
                let role = if *admin { Role::Admin } else { Role::Member };
                self.members.insert(*user, role);
                true
            }
            EventKind::RemoveMember { user } => self.members.remove(user).is_some(),
            _ => false,
        })
    }

    /// Whether the event kind changes the membership when allowed.
    pub fn changes_membership(kind: &EventKind) -> bool {
        matches!(
            kind,
            EventKind::AddMember { .. } | EventKind::RemoveMember { .. }
        )
    }

    /// The creator (the author's user of the `Create`).
    pub fn creator(&self) -> UserId {
        self.creator
    }

    /// Whether `user` is a member now.
    pub fn is_member(&self, user: &UserId) -> bool {
        self.members.contains_key(user)
    }

    /// `user`'s role, if a member.
    pub fn role(&self, user: &UserId) -> Option<Role> {
        self.members.get(user).copied()
    }

    /// The members, in id order.
    pub fn members(&self) -> impl Iterator<Item = &UserId> + '_ {
        self.members.keys()
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Never true for a created conversation (the creator stays); for API completeness.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{EventId, MessageId};

    fn u(b: u8) -> UserId {
        UserId([b; 32])
    }

    fn send() -> EventKind {
        EventKind::Send {
            message: MessageId([1; 16]),
            body: vec![],
            media: vec![],
        }
    }

    fn add(user: UserId, admin: bool) -> EventKind {
        EventKind::AddMember { user, admin }
    }

    fn remove(user: UserId) -> EventKind {
        EventKind::RemoveMember { user }
    }

    #[test]
    fn create_needs_its_author() {
        assert_eq!(
            Membership::create(u(1), &[u(2)]),
            Err(MembershipError::CreatorNotListed)
        );
        let m = Membership::create(u(1), &[u(1), u(2), u(2)]).expect("create");
        assert_eq!(m.len(), 2);
        assert_eq!(m.role(&u(1)), Some(Role::Admin));
        assert_eq!(m.role(&u(2)), Some(Role::Member));
        assert_eq!(
            m.check(u(1), &EventKind::Create { members: vec![] }),
            Err(MembershipError::AlreadyCreated)
        );
    }

    #[test]
    fn only_members_write_and_only_admins_change_membership() {
        let mut m = Membership::create(u(1), &[u(1), u(2)]).expect("create");
        assert_eq!(m.check(u(2), &send()), Ok(()));
        assert_eq!(
            m.check(u(3), &send()),
            Err(MembershipError::NotMember(u(3)))
        );
        assert_eq!(
            m.check(u(2), &add(u(3), false)),
            Err(MembershipError::NotAdmin(u(2)))
        );
        assert_eq!(m.apply(u(1), &add(u(3), false)), Ok(true));
        assert_eq!(m.check(u(3), &send()), Ok(()));
        assert_eq!(
            m.check(u(1), &add(u(3), false)),
            Err(MembershipError::AlreadyMember(u(3)))
        );
        assert_eq!(
            m.check(u(2), &remove(u(3))),
            Err(MembershipError::NotAdmin(u(2)))
        );
        // A promoted admin may remove; nobody removes the creator.
        assert_eq!(m.apply(u(1), &add(u(4), true)), Ok(true));
        assert_eq!(m.apply(u(4), &remove(u(3))), Ok(true));
        assert_eq!(
            m.check(u(4), &remove(u(1))),
            Err(MembershipError::CreatorStays)
        );
        assert_eq!(
            m.check(u(1), &remove(u(1))),
            Err(MembershipError::CreatorStays)
        );
        assert_eq!(
            m.check(u(1), &remove(u(3))),
            Err(MembershipError::NoSuchMember(u(3)))
        );
        // A removed member writes nothing more, not even a key request.
        let req = EventKind::KeyRequest {
            epoch: EventId([0; 32]),
        };
        assert_eq!(m.check(u(3), &req), Err(MembershipError::NotMember(u(3))));
    }

    #[test]
    fn members_may_leave() {
        let mut m = Membership::create(u(1), &[u(1), u(2)]).expect("create");
        assert_eq!(m.apply(u(2), &remove(u(2))), Ok(true));
        assert!(!m.is_member(&u(2)));
        assert_eq!(
            m.check(u(2), &send()),
            Err(MembershipError::NotMember(u(2)))
        );
    }

    #[test]
    fn acks_are_never_a_members_event() {
        let m = Membership::create(u(1), &[u(1)]).expect("create");
        let ack = EventKind::ServerAck {
            event: EventId([0; 32]),
            message: None,
            seq: 1,
            server_ts_ms: 0,
        };
        assert_eq!(m.check(u(1), &ack), Err(MembershipError::RelayOnly));
    }
}
