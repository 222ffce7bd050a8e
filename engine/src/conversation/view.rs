//! What a conversation shows and reports: message records, views, receipts and the
//! [`Change`]s a fold reports for the UI to re-render.

use crate::event::MediaRef;
use crate::ids::{ConversationId, DeviceId, EventId, MessageId, ServerSeq, UserId};
use crate::status::Status;
use serde::{Deserialize, Serialize};

/// A message as its author wrote it (what an `m:` key of the documents holds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The `Send` event.
    pub event: EventId,
    /// The sending device.
    pub author: DeviceId,
    /// The sending user.
    pub user: UserId,
    /// The sender's lamport clock at send time.
    pub lamport: u64,
    /// The sender's wall clock at send time.
    pub wall_ms: u64,
    /// Opaque body.
    pub body: Vec<u8>,
    /// Media references.
    pub media: Vec<MediaRef>,
}

/// Which cumulative receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Receipt {
    /// Reached the device.
    Delivered,
    /// Read on the device.
    Read,
}

/// Watermarks of one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMarks {
    /// The user the device acts for.
    pub user: UserId,
    /// Delivered up to (a read implies delivery, so this is at least `read`).
    pub delivered: ServerSeq,
    /// Read up to.
    pub read: ServerSeq,
}

/// Something a folded event changed, for the UI to re-render.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A message became visible.
    MessageAdded {
        /// Conversation.
        conversation: ConversationId,
        /// Message.
        message: MessageId,
        /// Its status when it appeared.
        status: Status,
    },
    /// A message's summary status moved.
    StatusChanged {
        /// Conversation.
        conversation: ConversationId,
        /// Message.
        message: MessageId,
        /// Before.
        from: Status,
        /// After.
        to: Status,
    },
    /// A device's receipts moved (per-recipient detail, unread counts).
    MarksChanged {
        /// Conversation.
        conversation: ConversationId,
        /// The device whose watermark moved.
        device: DeviceId,
        /// Its user.
        user: UserId,
    },
    /// The member list became known.
    MembersChanged {
        /// Conversation.
        conversation: ConversationId,
    },
    /// The key of an epoch reached this device: messages shown as waiting for it can be
    /// read now.
    KeyArrived {
        /// Conversation.
        conversation: ConversationId,
        /// The epoch.
        epoch: EventId,
    },
    /// A message's body was erased from this device (see [`crate::retention`]): it is gone
    /// from every view; [`crate::Store::erased`] keeps its tombstone.
    MessageErased {
        /// Conversation.
        conversation: ConversationId,
        /// Message.
        message: MessageId,
        /// Why.
        reason: crate::retention::ErasureReason,
    },
}

/// One message as a UI shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageView {
    /// Message id.
    pub id: MessageId,
    /// Conversation.
    pub conversation: ConversationId,
    /// What the author wrote.
    pub record: MessageRecord,
    /// Server sequence, once the relay acknowledged it.
    pub seq: Option<ServerSeq>,
    /// Server timestamp, once acknowledged.
    pub server_ts_ms: Option<u64>,
    /// Summary status for the sender.
    pub status: Status,
}

/// A message's status for one recipient user, with the user's devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientView {
    /// The recipient user.
    pub user: UserId,
    /// Highest status over the user's devices.
    pub status: Status,
    /// Each device of the user that sent a receipt, with its watermarks.
    pub devices: Vec<(DeviceId, DeviceMarks)>,
}

/// Everything visible about a conversation, for comparing two replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationView {
    /// Members, once the `Create` event is known.
    pub members: Option<Vec<UserId>>,
    /// Messages in view order.
    pub messages: Vec<MessageView>,
    /// Per-device watermarks.
    pub devices: Vec<(DeviceId, DeviceMarks)>,
}
