//! Sending a message that carries media: its caption and blob descriptors travel inside the
//! end-to-end encrypted body ([`crate::media::MediaBody`]), never in the event's clear fields.

use super::{Sent, Store, StoreError};
use crate::ids::ConversationId;
use crate::media::MediaBody;

impl Store {
    /// Sends a message with media, as [`Store::send`] sends a text: encrypted, durable and
    /// PENDING before this returns. The event's clear `media` list stays empty; keys, roots,
    /// sizes, mime types and thumbnails are inside the sealed body. A body whose encoding is
    /// over [`crate::e2ee::MAX_PLAINTEXT_LEN`] (too many or too large thumbnails) is refused
    /// with [`StoreError::BodyTooLarge`] before anything is written.
    pub fn send_media(
        &mut self,
        conversation: ConversationId,
        body: &MediaBody,
        now_ms: u64,
    ) -> Result<Sent, StoreError> {
        let plaintext = body.encode()?;
        let max = crate::e2ee::MAX_PLAINTEXT_LEN;
        if plaintext.len() > max {
            return Err(StoreError::BodyTooLarge {
                len: plaintext.len(),
                max,
            });
        }
        self.durably(|s| s.send_encrypted(conversation, &plaintext, Vec::new(), now_ms, true))?
    }
}
