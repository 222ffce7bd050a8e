//! Retention from the app: a conversation's policy (see `tidings_engine::retention`).

use super::*;

impl Replica {
    /// Sets the conversation's retention policy: keep everything, keep `days` days, or
    /// disappearing messages (erased `after_read_secs` after they were read; the sender's copy
    /// that long after it was sent). Any member may set it; it is a signed event, in force on
    /// every member device from its place in the conversation's order. What a device erases
    /// is announced as [`Update::MessageErased`].
    pub async fn set_retention(
        &self,
        conversation: ConversationId,
        policy: RetentionPolicy,
    ) -> Result<(), ReplicaError> {
        self.call(|r| Command::SetRetention(conversation, policy, r))
            .await
    }
}
