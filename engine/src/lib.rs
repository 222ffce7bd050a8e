//! # tidings-engine
//!
//! The sans-IO core of tidings: every user action is an [`Event`], signed by its device
//! (ed25519), named by its hash (blake3), encoded with postcard, appended to a redb
//! [`EventLog`] and folded into bounded automerge documents per conversation (a segment per
//! 1,024 sequences and a small head: [`ConversationDoc`]), whose plain-Rust mirror
//! ([`Conversation`]) answers reads.
//!
//! No async runtime, no sockets, no system clock, no OS randomness: time and key material come
//! in as arguments, so a simulator can drive many devices deterministically.
//!
//! # Layout
//! - [`ids`]: fixed-size identifiers.
//! - [`event`]: the event envelope, its codec, signing and verification.
//! - [`identity`]: device keys (ed25519 signing, X25519 agreement) and certificates.
//! - [`crypto`]: end-to-end and at-rest encryption primitives.
//! - [`membership`]: who belongs to a conversation and who may change that.
//! - [`directory`]: device certificates and revocations as this device verified them.
//! - [`status`]: the status lattice and how a message's status is derived.
//! - [`conversation`]: the visible state of a conversation and its read API.
//! - [`doc`]: the automerge document layout and the fold.
//! - [`log`]: the redb event log with its indexes, outbox, cursors and snapshots.
//! - [`store`]: the log and the documents together: append, fold, replay, fast reads.
//! - [`retention`]: retention policies (keep all, keep N days, disappearing messages).
//! - [`retry`]: exponential backoff with jitter.
//! - [`wire`]: the device ↔ relay frames and their codec.
//! - [`device`]: the device's protocol state machine (handshake, outbox, catch-up, receipts).
//! - [`peer`]: device-to-device reconciliation (version vectors, then the missing events with
//!   the relay statements that place them), admitted on the relay's path.
//! - [`media`]: media blobs: the segment cipher, the hash tree over the ciphertext, pieces.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod conversation;
pub mod crypto;
pub mod device;
pub mod directory;
pub mod doc;
pub mod e2ee;
pub mod event;
pub mod gate;
pub mod history;
pub mod identity;
pub mod ids;
pub mod link;
pub mod log;
pub mod media;
pub mod membership;
pub mod peer;
pub mod retention;
pub mod retry;
pub mod signature;
pub mod status;
pub mod store;
pub mod wire;

pub use conversation::{Change, Conversation, ConversationView, MessageRecord, MessageView};
pub use device::{ConnectionState, DeviceConfig, DeviceCore, DeviceError, DeviceEvent};
pub use directory::{DeviceDirectory, DirectoryRefusal};
pub use doc::{ConversationDoc, DocError, PartId};
pub use event::{
    DecodeError, Event, EventHeader, EventKind, MediaRef, Placement, SealedKey, SeqEntry,
};
pub use identity::DeviceKey;
pub use ids::{BlobId, ConversationId, DeviceId, EventId, MessageId, ServerSeq, UserId};
pub use log::{Appended, ChainIssue, EventLog, FailedMessage, LogError, OutboxEntry, OutboxState};
pub use membership::{Membership, MembershipError, Role};
pub use retention::{ErasureReason, RetentionPolicy};
pub use retry::RetryPolicy;
pub use status::Status;
pub use store::{ApplyOutcome, Store, StoreConfig, StoreError};
