//! The automerge document of one conversation, and the fold of events into it.
//!
//! # Layout
//! Flat keys in the root map, each written by one kind of author, one put per event:
//!
//! | key | value (postcard bytes) | written by |
//! |---|---|---|
//! | `c` | `CreateRecord { event, members }` | the `Create` event |
//! | `g:<seq, 16 hex digits>` | `MembersRecord { seq, members }` | the device's gate, after the membership change at `seq` (the `Create` included) |
//! | `m:<message id hex>` | [`MessageRecord`] | the message's `Send` |
//! | `s:<seq, 16 hex digits>` | `AckRecord { message, ts_ms }` | a placement of the relay's `Sequenced` (or `ServerAck`) |
//! | `d:<device hex>` | `(user, up_to)` | the device's `Delivered` (max-register) |
//! | `r:<device hex>` | `(user, up_to)` | the device's `Read` (max-register) |
//!
//! No nested objects, so two replicas never create "the same" object twice. Reads take every
//! conflicting value of a key (`get_all`) and join them (min sequence, max watermark), never
//! automerge's arbitrary winner. A receipt that would not raise a watermark writes nothing.

use crate::conversation::{Change, Conversation, MessageRecord, Receipt};
use crate::event::{Event, EventKind};
use crate::ids::{ConversationId, DeviceId, EventId, MessageId, ServerSeq, UserId};
use automerge::{ActorId, AutoCommit, ReadDoc, ScalarValue, ScalarValueRef, Value, ValueRef, ROOT};
use serde::{Deserialize, Serialize};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Why a document could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocError {
    /// automerge refused the bytes.
    #[error("automerge document does not load: {0}")]
    Load(String),
    /// automerge panicked on the bytes.
    #[error("automerge panicked while reading the document")]
    Panicked,
    /// A key holds a value that is not ours.
    #[error("document key {key:?} holds an invalid value")]
    BadValue {
        /// The key.
        key: String,
    },
    /// automerge refused an operation.
    #[error("automerge operation failed: {0}")]
    Op(String),
}

#[derive(Serialize, Deserialize)]
struct CreateRecord {
    event: EventId,
    members: Vec<UserId>,
}

#[derive(Serialize, Deserialize)]
struct MembersRecord {
    seq: ServerSeq,
    members: Vec<UserId>,
}

#[derive(Serialize, Deserialize)]
struct AckRecord {
    message: MessageId,
    ts_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct MarkRecord {
    user: UserId,
    up_to: ServerSeq,
}

/// One conversation's automerge document with its plain-Rust mirror.
#[derive(Debug)]
pub struct ConversationDoc {
    doc: AutoCommit,
    state: Conversation,
    uncommitted: usize,
}

impl ConversationDoc {
    /// An empty document written by `actor`. Give every (device, rebuild) its own actor:
    /// two documents that reuse an actor for different changes cannot be merged.
    pub fn new(id: ConversationId, actor: ActorId) -> ConversationDoc {
        ConversationDoc {
            doc: AutoCommit::new().with_actor(actor),
            state: Conversation::new(id),
            uncommitted: 0,
        }
    }

    /// Loads a saved document. Corrupt bytes give an error (the caller rebuilds from the log),
    /// never a panic.
    pub fn load(
        id: ConversationId,
        bytes: &[u8],
        actor: ActorId,
    ) -> Result<ConversationDoc, DocError> {
        let doc = catch_unwind(|| AutoCommit::load(bytes))
            .map_err(|_| DocError::Panicked)?
            .map_err(|e| DocError::Load(e.to_string()))?
            .with_actor(actor);
        let state = catch_unwind(AssertUnwindSafe(|| read_state(id, &doc)))
            .map_err(|_| DocError::Panicked)??;
        Ok(ConversationDoc {
            doc,
            state,
            uncommitted: 0,
        })
    }

    /// The conversation as it stands.
    pub fn state(&self) -> &Conversation {
        &self.state
    }

    /// Marks a message FAILED or clears it (local, not written to the document).
    pub fn set_failed(&mut self, message: MessageId, failed: bool) -> Vec<Change> {
        self.state.set_failed(message, failed)
    }

    /// Records the members after the membership change the device's gate admitted at `seq`.
    pub fn set_members(
        &mut self,
        seq: ServerSeq,
        members: Vec<UserId>,
    ) -> Result<Vec<Change>, DocError> {
        if self.state.has_membership(seq) {
            return Ok(Vec::new());
        }
        self.put(
            format!("g:{seq:016x}"),
            &MembersRecord {
                seq,
                members: members.clone(),
            },
        )?;
        Ok(self.state.apply_membership(seq, members))
    }

    /// Folds one verified event. Deterministic; idempotent; order-independent in its result.
    /// Events of another conversation are ignored.
    pub fn fold(&mut self, event: &Event) -> Result<Vec<Change>, DocError> {
        if event.conversation() != self.state.id() {
            return Ok(Vec::new());
        }
        let h = event.header();
        let changes = match event.kind() {
            EventKind::Create { members } => {
                let changes = self.state.apply_create(event.id(), members.clone());
                if !changes.is_empty() {
                    self.put(
                        "c".to_owned(),
                        &CreateRecord {
                            event: event.id(),
                            members: members.clone(),
                        },
                    )?;
                }
                changes
            }
            EventKind::Send {
                message,
                body,
                media,
            } => {
                let record = MessageRecord {
                    event: event.id(),
                    author: h.author,
                    user: h.user,
                    lamport: h.lamport,
                    wall_ms: h.wall_ms,
                    body: body.clone(),
                    media: media.clone(),
                };
                let encoded = encode(&record);
                let changes = self.state.apply_message(*message, record);
                if !changes.is_empty() {
                    self.put_raw(format!("m:{message}"), encoded)?;
                }
                changes
            }
            EventKind::ServerAck { .. } | EventKind::Sequenced { .. } => {
                let mut changes = Vec::new();
                for p in event.placements() {
                    let Some(message) = p.message else { continue };
                    if self.state.knows_ack(&message, p.seq) {
                        continue;
                    }
                    self.put(
                        format!("s:{:016x}", p.seq),
                        &AckRecord {
                            message,
                            ts_ms: p.server_ts_ms,
                        },
                    )?;
                    changes.extend(self.state.apply_ack(message, p.seq, p.server_ts_ms));
                }
                changes
            }
            EventKind::Delivered { up_to, .. } => {
                self.receipt(h.author, h.user, Receipt::Delivered, *up_to)?
            }
            EventKind::Read { up_to, .. } => {
                self.receipt(h.author, h.user, Receipt::Read, *up_to)?
            }
            // Acks of non-message events and kinds from newer builds carry nothing to show.
            _ => Vec::new(),
        };
        Ok(changes)
    }

    /// Commits the pending operations as one automerge change. Folding many events per commit
    /// is what keeps the per-event cost near one operation.
    pub fn commit(&mut self) {
        if self.uncommitted > 0 {
            self.doc.commit();
            self.uncommitted = 0;
        }
    }

    /// The compacted document.
    pub fn save(&mut self) -> Vec<u8> {
        self.commit();
        self.doc.save()
    }

    /// Merges another replica's document into this one and returns what became visible.
    pub fn merge(&mut self, other: &mut ConversationDoc) -> Result<Vec<Change>, DocError> {
        self.commit();
        other.commit();
        self.doc
            .merge(&mut other.doc)
            .map_err(|e| DocError::Op(e.to_string()))?;
        let before = self.state.clone();
        let mut state = read_state(self.state.id(), &self.doc)?;
        state.copy_failed_from(&before);
        let changes = before.diff_to(&state);
        self.state = state;
        Ok(changes)
    }

    /// Number of operations folded since the last commit.
    pub fn uncommitted(&self) -> usize {
        self.uncommitted
    }

    fn receipt(
        &mut self,
        device: DeviceId,
        user: UserId,
        receipt: Receipt,
        up_to: ServerSeq,
    ) -> Result<Vec<Change>, DocError> {
        let changes = self.state.apply_receipt(device, user, receipt, up_to);
        if !changes.is_empty() {
            let prefix = match receipt {
                Receipt::Delivered => 'd',
                Receipt::Read => 'r',
            };
            self.put(format!("{prefix}:{device}"), &MarkRecord { user, up_to })?;
        }
        Ok(changes)
    }

    fn put<T: Serialize>(&mut self, key: String, value: &T) -> Result<(), DocError> {
        self.put_raw(key, encode(value))
    }

    fn put_raw(&mut self, key: String, bytes: Vec<u8>) -> Result<(), DocError> {
        use automerge::transaction::Transactable;
        self.doc
            .put(ROOT, key, ScalarValue::Bytes(bytes))
            .map_err(|e| DocError::Op(e.to_string()))?;
        self.uncommitted += 1;
        Ok(())
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard into a Vec fails only when a Serialize impl errors; these derive it.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Rebuilds the mirror from a document: every value of every key, joined.
///
/// One pass over the root map. Only a key holding concurrent values (`conflict`) is looked up
/// again with `get_all`, so that all of them are joined rather than automerge's winner alone;
/// a `get_all` per key made loading a large document several times slower.
fn read_state(id: ConversationId, doc: &AutoCommit) -> Result<Conversation, DocError> {
    let mut state = Conversation::new(id);
    for item in doc.map_range(ROOT, ..) {
        let key: &str = &item.key;
        let bad = || DocError::BadValue {
            key: key.to_owned(),
        };
        if item.conflict {
            let values = doc
                .get_all(ROOT, key)
                .map_err(|e| DocError::Op(e.to_string()))?;
            for (value, _) in values {
                let Value::Scalar(scalar) = value else {
                    return Err(bad());
                };
                let ScalarValue::Bytes(bytes) = scalar.as_ref() else {
                    return Err(bad());
                };
                apply_key(&mut state, key, bytes).ok_or_else(bad)?;
            }
        } else {
            let ValueRef::Scalar(ScalarValueRef::Bytes(bytes)) = &item.value else {
                return Err(bad());
            };
            apply_key(&mut state, key, bytes).ok_or_else(bad)?;
        }
    }
    Ok(state)
}

fn apply_key(state: &mut Conversation, key: &str, bytes: &[u8]) -> Option<()> {
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
        "s" => {
            let seq = u64::from_str_radix(rest, 16).ok()?;
            let r: AckRecord = postcard::from_bytes(bytes).ok()?;
            state.apply_ack(r.message, seq, r.ts_ms);
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
