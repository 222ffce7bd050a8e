//! The change feed: what other writers of a shared store committed, for a node's caches.
//!
//! A relay node caches device certificates, revocations, consent and each conversation's
//! membership, and checks authentication, submits and pulls against that cache. Over a store
//! shared by several nodes, every commit that changes one of them takes the next
//! [`ChangeSeq`] in its own transaction and stamps the rows it writes with it; a node reads
//! the rows stamped after the last position it applied ([`Storage::changes`]) on every tick,
//! and before each authentication and pull, so what it enforces is what storage says.
//!
//! Conversation heads (new events) are not in the feed: appends would all queue on the one
//! counter. A node polls the heads of the conversations its devices are in instead
//! ([`Storage::heads`]) and pushes what other nodes appended.
//!
//! [`Storage::changes`]: super::Storage::changes
//! [`Storage::heads`]: super::Storage::heads

use crate::core::store::{ConversationRecord, InvitationRecord};
use tidings_engine::wire::{DeviceRegistration, DeviceRevocation};
use tidings_engine::{ConversationId, UserId};

/// A position in the change feed: the number of directory, membership and consent changes
/// committed so far (0 before the first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChangeSeq(pub u64);

/// The rows changed after a position, as stored now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Changes {
    /// The position these changes bring a reader to.
    pub upto: ChangeSeq,
    /// Conversations created or whose membership changed, with their current record.
    pub conversations: Vec<(ConversationId, ConversationRecord)>,
    /// Users removed from a conversation.
    pub former: Vec<(ConversationId, UserId)>,
    /// Device certificates written.
    pub registrations: Vec<DeviceRegistration>,
    /// Device revocations written.
    pub revocations: Vec<DeviceRevocation>,
    /// Invitation rows written (their current decision).
    pub invitations: Vec<InvitationRecord>,
    /// (user, other, blocks now).
    pub blocks: Vec<(UserId, UserId, bool)>,
}

impl Changes {
    /// Nothing changed after `at`.
    pub fn none(at: ChangeSeq) -> Changes {
        Changes {
            upto: at,
            ..Changes::default()
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.conversations.is_empty()
            && self.former.is_empty()
            && self.registrations.is_empty()
            && self.revocations.is_empty()
            && self.invitations.is_empty()
            && self.blocks.is_empty()
    }
}
