//! What the blob store asks of the core: who a session is and whether their user may use a
//! conversation's blobs.

use super::{RelayCore, SessionId};
use crate::storage::Storage;
use tidings_engine::{ConversationId, UserId};

/// A session's right to a conversation's blobs, as the core knows it when asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobAccess {
    /// The session's user.
    pub user: UserId,
    /// Whether that user is a member of the conversation after its last durable event (what
    /// reads are checked against).
    pub is_member: bool,
}

impl<S: Storage> RelayCore<S> {
    /// The blob access of an authenticated, registered session to `conversation`; `None`
    /// for a session that is not (or no longer) one.
    pub fn blob_access(
        &mut self,
        session: SessionId,
        conversation: ConversationId,
    ) -> Option<BlobAccess> {
        let (_, user) = self.registered(session)?;
        // Another node may have removed the user: what storage says now.
        self.sync_changes();
        self.ensure_conv(&conversation);
        let is_member = self.is_committed_member(&user, &conversation);
        Some(BlobAccess { user, is_member })
    }
}
