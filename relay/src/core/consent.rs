//! Each user's say in the conversations others put it in, and the users it blocks.
//!
//! A conversation another user created listing this user, or added this user to, is an
//! *invitation* until the user accepts it: the relay neither pushes its events to the user's
//! devices nor lists it in their Sync answer, and lists it apart, among at most
//! [`MAX_PENDING_INVITATIONS`] pending invitations (at most [`MAX_INVITATIONS_PER_INVITER`]
//! from one user). A conversation the user created is accepted from the start.
//!
//! Architecture invariant: consent never changes membership. Membership is what the signed
//! events say, checked the same way by the relay and by every device; consent only decides
//! what the relay delivers to a user's devices, and which Creates and AddMembers it takes
//! (a refused event was never sequenced, so no device has to agree with the refusal).

use super::store::{Decision, InvitationRecord, StoreError};
use crate::storage::Storage;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tidings_engine::wire::{
    ErrorCode, Invitation, MAX_BLOCKED_USERS, MAX_INVITATIONS_PER_INVITER, MAX_PENDING_INVITATIONS,
};
use tidings_engine::{ConversationId, EventKind, UserId};

/// One user's state.
#[derive(Debug, Default)]
struct UserConsent {
    /// Every conversation the user was listed in by an event, with its decision and inviter.
    decisions: HashMap<ConversationId, (Decision, UserId)>,
    /// The pending ones (a subset of `decisions`), in id order for the listing.
    pending: BTreeMap<ConversationId, UserId>,
    blocked: BTreeSet<UserId>,
}

/// Every user's consent state: durable rows plus, for pending invitations, those of events
/// staged for the next commit (so that the caps count them).
#[derive(Debug, Default)]
pub(super) struct Consent {
    users: HashMap<UserId, UserConsent>,
}

/// Why an event's invitations are refused: the code and the reason.
pub(super) type Refusal = (ErrorCode, String);

impl Consent {
    /// The state as stored.
    pub fn load(store: &impl Storage) -> Result<Consent, StoreError> {
        let mut c = Consent::default();
        for r in store.invitations()? {
            c.set(r.user, r.conversation, r.decision, r.inviter);
        }
        for (u, o) in store.blocked()? {
            c.users.entry(u).or_default().blocked.insert(o);
        }
        Ok(c)
    }

    /// The user's decision on a conversation it was listed in.
    pub fn decision(&self, user: &UserId, conv: &ConversationId) -> Option<Decision> {
        self.users
            .get(user)
            .and_then(|u| u.decisions.get(conv))
            .map(|(d, _)| *d)
    }

    /// Who listed the user in the conversation.
    pub fn inviter(&self, user: &UserId, conv: &ConversationId) -> Option<UserId> {
        self.users
            .get(user)
            .and_then(|u| u.decisions.get(conv))
            .map(|(_, i)| *i)
    }

    /// Whether the relay delivers the conversation to the user's devices.
    pub fn is_accepted(&self, user: &UserId, conv: &ConversationId) -> bool {
        self.decision(user, conv) == Some(Decision::Accepted)
    }

    /// Whether `user` blocks `other`.
    pub fn blocks(&self, user: &UserId, other: &UserId) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.blocked.contains(other))
    }

    /// The users `user` blocks.
    pub fn blocked(&self, user: &UserId) -> Vec<UserId> {
        self.users
            .get(user)
            .map(|u| u.blocked.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Number of users `user` blocks.
    pub fn n_blocked(&self, user: &UserId) -> usize {
        self.users.get(user).map_or(0, |u| u.blocked.len())
    }

    /// The user's pending invitations, in conversation id order.
    pub fn pending(&self, user: &UserId) -> Vec<Invitation> {
        self.users
            .get(user)
            .map(|u| {
                u.pending
                    .iter()
                    .map(|(c, i)| Invitation {
                        conversation: *c,
                        inviter: *i,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The conversations of `user` pending from `inviter`.
    pub fn pending_from(&self, user: &UserId, inviter: &UserId) -> Vec<ConversationId> {
        self.users
            .get(user)
            .map(|u| {
                u.pending
                    .iter()
                    .filter(|(_, i)| *i == inviter)
                    .map(|(c, _)| *c)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sets a decision (in memory).
    pub fn set(&mut self, user: UserId, conv: ConversationId, d: Decision, inviter: UserId) {
        let u = self.users.entry(user).or_default();
        u.decisions.insert(conv, (d, inviter));
        if d == Decision::Pending {
            u.pending.insert(conv, inviter);
        } else {
            u.pending.remove(&conv);
        }
    }

    /// Blocks or unblocks (in memory).
    pub fn set_block(&mut self, user: UserId, other: UserId, on: bool) {
        let u = self.users.entry(user).or_default();
        if on {
            u.blocked.insert(other);
        } else {
            u.blocked.remove(&other);
        }
    }

    /// Whether a block of `other` by `user` fits in the block list.
    pub fn can_block(&self, user: &UserId, other: &UserId) -> bool {
        self.blocks(user, other) || self.n_blocked(user) < MAX_BLOCKED_USERS
    }

    /// The user's pending invitations that still speak for someone: `live(user, conv,
    /// inviter)` says whether the conversation exists with both of them as members. Counted
    /// only when the raw count reaches `cap` (below it, stale ones cannot matter), so the
    /// usual case stays O(1).
    fn n_live_pending(
        &self,
        user: &UserId,
        inviter: Option<&UserId>,
        cap: usize,
        live: &impl Fn(&UserId, &ConversationId, &UserId) -> bool,
    ) -> usize {
        let Some(u) = self.users.get(user) else {
            return 0;
        };
        let of_inviter = |i: &UserId| inviter.is_none_or(|want| want == i);
        let raw = u.pending.values().filter(|i| of_inviter(i)).count();
        if raw < cap {
            return raw;
        }
        u.pending
            .iter()
            .filter(|(c, i)| of_inviter(i) && live(user, c, i))
            .count()
    }

    /// The rows a `Create` or `AddMember` by `author` in `conv` writes: the author's own
    /// acceptance of a conversation it creates, and a pending invitation for every user it
    /// lists who has no say in the conversation yet. Refused if one of them blocks the
    /// author or holds too many pending invitations. Other kinds write nothing.
    ///
    /// Only live invitations count toward the caps: `live(user, conv, inviter)` is false once
    /// the conversation is gone or either of them left it (a stale invitation stays on record,
    /// but it no longer takes anyone's room).
    pub fn rows_for(
        &self,
        author: UserId,
        conv: ConversationId,
        kind: &EventKind,
        live: impl Fn(&UserId, &ConversationId, &UserId) -> bool,
    ) -> Result<Vec<InvitationRecord>, Refusal> {
        let (listed, creates): (Vec<UserId>, bool) = match kind {
            EventKind::Create { members } => (members.clone(), true),
            EventKind::AddMember { user, .. } => (vec![*user], false),
            _ => return Ok(Vec::new()),
        };
        let mut rows = Vec::new();
        if creates {
            rows.push(InvitationRecord {
                user: author,
                conversation: conv,
                decision: Decision::Accepted,
                inviter: author,
            });
        }
        let invited: BTreeSet<UserId> = listed.into_iter().filter(|u| *u != author).collect();
        for user in invited {
            if self.blocks(&user, &author) {
                return Err((
                    ErrorCode::BLOCKED,
                    format!("user {user} does not take invitations from this user"),
                ));
            }
            if self.decision(&user, &conv).is_some() {
                continue;
            }
            let pending = self.n_live_pending(&user, None, MAX_PENDING_INVITATIONS, &live);
            if pending >= MAX_PENDING_INVITATIONS {
                return Err((
                    ErrorCode::INVITATIONS_FULL,
                    format!("user {user} holds {pending} pending invitations"),
                ));
            }
            let from_author =
                self.n_live_pending(&user, Some(&author), MAX_INVITATIONS_PER_INVITER, &live);
            if from_author >= MAX_INVITATIONS_PER_INVITER {
                return Err((
                    ErrorCode::INVITATIONS_FULL,
                    format!(
                        "user {user} holds {MAX_INVITATIONS_PER_INVITER} pending invitations \
                         from this user"
                    ),
                ));
            }
            rows.push(InvitationRecord {
                user,
                conversation: conv,
                decision: Decision::Pending,
                inviter: author,
            });
        }
        Ok(rows)
    }
}
