//! What the terminal client shows, and the one seam to the device library: [`ChatBackend`].
//!
//! The UI never sees engine or replica types: a test drives it with a fake backend and
//! hand-made [`ChatLine`]s, without a network or a data directory.

use std::future::Future;
use tidings_engine::{ConnectionState, ConversationId, MessageId, Status};

/// One line of the conversation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvItem {
    /// The conversation.
    pub id: ConversationId,
    /// The contact's name (or the conversation id when it has none).
    pub name: String,
    /// Messages from others not read on any device of this user.
    pub unread: usize,
}

/// What a message's body shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shown {
    /// The text (lossy UTF-8).
    Text(String),
    /// Its epoch key has not reached this device yet (asked for).
    WaitingForKey,
    /// It references media that has not arrived yet.
    WaitingForMedia(String),
    /// It does not decrypt.
    Unreadable,
}

/// One message of the message pane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatLine {
    /// The message.
    pub id: MessageId,
    /// Sent by this user (ticks are shown only on these).
    pub mine: bool,
    /// Who wrote it, as shown.
    pub author: String,
    /// The body.
    pub shown: Shown,
    /// Its ticks.
    pub status: Status,
}

/// The connection as the status bar shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    /// Where it stands.
    pub state: ConnectionState,
    /// Why it last failed, for people.
    pub problem: Option<String>,
}

/// What the device library does for the terminal client. [`crate::backend::ReplicaBackend`]
/// is the real one; tests bring their own.
pub trait ChatBackend {
    /// The conversation list.
    fn conversations(&self) -> impl Future<Output = anyhow::Result<Vec<ConvItem>>> + Send;
    /// Up to `n` messages of `conversation` just before `before` (the latest for `None`),
    /// oldest first.
    fn page(
        &self,
        conversation: ConversationId,
        before: Option<MessageId>,
        n: usize,
    ) -> impl Future<Output = anyhow::Result<Vec<ChatLine>>> + Send;
    /// Sends a message.
    fn send(
        &self,
        conversation: ConversationId,
        text: String,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Marks everything shown in `conversation` read.
    fn mark_read(
        &self,
        conversation: ConversationId,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Tries a FAILED message again.
    fn retry(&self, message: MessageId) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Messages waiting to reach the relay.
    fn outbox_len(&self) -> impl Future<Output = anyhow::Result<usize>> + Send;
}
