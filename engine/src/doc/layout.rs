//! What each key of a conversation's documents holds, and how a value joins the mirror.
//!
//! The head document (what is not sequenced yet, membership, receipt watermarks):
//!
//! | key | value (postcard bytes) | written by |
//! |---|---|---|
//! | `c` | [`CreateRecord`] | the `Create` event |
//! | `g:<seq, 16 hex digits>` | [`MembersRecord`] | the device's gate, after the membership change at `seq` |
//! | `m:<message id hex>` | [`MessageRecord`] | a `Send` folded before its placement was known |
//! | `d:<device hex>` | [`MarkRecord`] | the device's `Delivered` (max-register, written when it rises) |
//! | `r:<device hex>` | [`MarkRecord`] | the device's `Read` (max-register, written when it rises) |
//!
//! A segment document (sequences `k * SEGMENT_SEQS .. (k + 1) * SEGMENT_SEQS`):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `m:<message id hex>` | [`SequencedRecord`] | a `Send` with its (lowest) place: ONE put per sequenced message |
//! | `s:<seq, 16 hex digits>` | [`AckRecord`] | a place whose `Send` is unknown, or a second place of a message |

use crate::conversation::{Conversation, MessageRecord, Receipt};
use crate::ids::{DeviceId, EventId, MessageId, ServerSeq, UserId};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub(super) struct CreateRecord {
    pub event: EventId,
    pub members: Vec<UserId>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct MembersRecord {
    pub seq: ServerSeq,
    pub members: Vec<UserId>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct AckRecord {
    pub message: MessageId,
    pub ts_ms: u64,
}

#[derive(Serialize, Deserialize)]
pub(super) struct MarkRecord {
    pub user: UserId,
    pub up_to: ServerSeq,
}

/// A message as its author wrote it, with the place the relay gave it: the one record a
/// sequenced message costs.
#[derive(Serialize, Deserialize)]
pub(super) struct SequencedRecord {
    pub record: MessageRecord,
    pub seq: ServerSeq,
    pub ts_ms: u64,
}

/// The key of a message record (head or segment).
pub(super) fn message_key(message: &MessageId) -> String {
    format!("m:{message}")
}

/// The key of a place whose message record is elsewhere or unknown.
pub(super) fn ack_key(seq: ServerSeq) -> String {
    format!("s:{seq:016x}")
}

/// The key of a membership change.
pub(super) fn members_key(seq: ServerSeq) -> String {
    format!("g:{seq:016x}")
}

/// The key of a device's watermark.
pub(super) fn mark_key(receipt: Receipt, device: &DeviceId) -> String {
    let prefix = match receipt {
        Receipt::Delivered => 'd',
        Receipt::Read => 'r',
    };
    format!("{prefix}:{device}")
}

/// Joins one head value into the mirror; `None` when the value is not ours.
pub(super) fn apply_head_key(state: &mut Conversation, key: &str, bytes: &[u8]) -> Option<()> {
    let (prefix, rest) = key.split_once(':').unwrap_or((key, ""));
    match prefix {
        "c" => {
            let r: CreateRecord = postcard::from_bytes(bytes).ok()?;
            state.apply_create(r.event, r.members);
        }
        "g" => {
            let r: MembersRecord = postcard::from_bytes(bytes).ok()?;
            state.apply_membership(r.seq, r.members);
        }
        "m" => {
            let id = MessageId::from_hex(rest)?;
            let r: MessageRecord = postcard::from_bytes(bytes).ok()?;
            state.apply_message(id, r);
        }
        "d" | "r" => {
            let device = DeviceId::from_hex(rest)?;
            let r: MarkRecord = postcard::from_bytes(bytes).ok()?;
            let receipt = if prefix == "d" {
                Receipt::Delivered
            } else {
                Receipt::Read
            };
            state.apply_receipt(device, r.user, receipt, r.up_to);
        }
        // Keys from newer builds are left alone.
        _ => {}
    }
    Some(())
}

/// Joins one segment value into the mirror; `None` when the value is not ours.
pub(super) fn apply_segment_key(state: &mut Conversation, key: &str, bytes: &[u8]) -> Option<()> {
    let (prefix, rest) = key.split_once(':').unwrap_or((key, ""));
    match prefix {
        "m" => {
            let id = MessageId::from_hex(rest)?;
            let r: SequencedRecord = postcard::from_bytes(bytes).ok()?;
            state.apply_ack(id, r.seq, r.ts_ms);
            state.apply_message(id, r.record);
        }
        "s" => {
            let seq = u64::from_str_radix(rest, 16).ok()?;
            let r: AckRecord = postcard::from_bytes(bytes).ok()?;
            state.apply_ack(r.message, seq, r.ts_ms);
        }
        _ => {}
    }
    Some(())
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard into a Vec fails only when a Serialize impl errors; these derive it.
    postcard::to_stdvec(value).unwrap_or_default()
}
