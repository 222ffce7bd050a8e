//! The relay's storage boundary: the durable operations the core needs, as one trait.
//!
//! [`Storage`] is what [`RelayCore`](crate::core::RelayCore) calls: append a group commit
//! (events with dense sequences per conversation, idempotent by event id forever, their signed
//! `Sequenced` statements, conversation records, directory and consent rows, device cursors as
//! monotonic maxima), and the reads behind sessions, submits and pulls. Two implementations:
//!
//! - [`redb`]: [`RelayStore`], the embedded default (one file, one relay process);
//! - [`postgres`]: [`PgStore`], PostgreSQL, so that several stateless relay nodes share one
//!   database (one transaction per group commit, the conversation row as its sequencer).
//!
//! The contract both keep (checked by `relay/tests/storage.rs` against one in-memory model):
//! - a commit is all or nothing;
//! - a conversation's sequences are dense (1, 2, 3, …): a commit whose first event of a
//!   conversation does not follow the stored head is refused with [`StoreError::Conflict`]
//!   (only a store shared by several writers can see one), and an event id stored twice in a
//!   conversation is refused with [`StoreError::Duplicate`], whatever its sequence;
//! - a device's cursor only grows: writing a lower one keeps the higher;
//! - retention ([`Storage::prune`]) drops event bodies at or below a conversation's floor
//!   (membership and epoch openings excepted) and dedup records at or below the dedup floor;
//!   a page skips what is gone, an event whose dedup record is gone is reported `expired` by
//!   [`Storage::chain`], and the floor only grows.
//!
//! Architecture invariant: the relay core holds no connection, socket or thread of a storage
//! engine; it calls this trait synchronously (the shell runs commits on its writer thread) and
//! the PostgreSQL store runs its connections on threads of its own.
//!
//! # Layout
//! - `mod.rs`: the [`Storage`] trait and [`AnyStorage`] (redb or PostgreSQL, chosen by the
//!   config at start).
//! - [`redb`]: the trait over [`RelayStore`] (its tables: [`crate::core::store`]).
//! - [`postgres`]: [`PgStore`] and its schema.
//! - [`feed`]: what a node reads to see other nodes' changes ([`Changes`]).

pub mod feed;
pub mod postgres;
pub mod redb;

pub use feed::{ChangeSeq, Changes};

pub use crate::core::store::{
    ChainInfo, CommitBatch, ConversationRecord, Decision, InvitationRecord, PrunePlan, PruneStats,
    RelayStore, SequencedRecord, StoreError,
};
pub use postgres::PgStore;

use std::collections::HashMap;
use tidings_engine::wire::{DeviceRegistration, DeviceRevocation, Envelope};
use tidings_engine::{ConversationId, DeviceId, Event, ServerSeq, UserId};

/// One page of a conversation: events, the relay records placing them (each once), and
/// whether more exist.
pub type Page = (Vec<Envelope>, Vec<Envelope>, bool);

/// The durable operations of the relay core. Clones share the store (the writer thread
/// commits while the core reads).
pub trait Storage: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// Writes a batch in one transaction; returns after it is durable. Refused whole with
    /// [`StoreError::Conflict`] if a conversation's first new sequence does not follow its
    /// stored head, with [`StoreError::Duplicate`] if an event id is already stored in its
    /// conversation. Cursors are kept as maxima.
    fn commit(&self, batch: &CommitBatch<'_>) -> Result<(), StoreError>;

    /// Every conversation record.
    fn conversations(&self) -> Result<Vec<(ConversationId, ConversationRecord)>, StoreError>;

    /// One conversation's record, as stored now (a node refreshes its cache from it).
    fn conversation(&self, id: &ConversationId) -> Result<Option<ConversationRecord>, StoreError>;

    /// Every (conversation, user) a user was removed from.
    fn former_members(&self) -> Result<Vec<(ConversationId, UserId)>, StoreError>;

    /// Every device certificate.
    fn registrations(&self) -> Result<Vec<DeviceRegistration>, StoreError>;

    /// Every device revocation.
    fn revocations(&self) -> Result<Vec<DeviceRevocation>, StoreError>;

    /// Every invitation row.
    fn invitations(&self) -> Result<Vec<InvitationRecord>, StoreError>;

    /// Every (user, blocked user) pair.
    fn blocked(&self) -> Result<Vec<(UserId, UserId)>, StoreError>;

    /// A device's cursors (the highest sequence it reported received, per conversation).
    fn cursors(&self, device: &DeviceId) -> Result<HashMap<ConversationId, u64>, StoreError>;

    /// For each event, what is stored at its place in its author's chain (see [`ChainInfo`]).
    fn chain(&self, events: &[&Event]) -> Result<Vec<ChainInfo>, StoreError>;

    /// The retention floor of `conv`: event bodies at or below it are gone, except the kept
    /// ones ([`crate::core::store::is_kept`]); 0 when nothing was dropped.
    fn retained_floor(&self, conv: &ConversationId) -> Result<ServerSeq, StoreError>;

    /// The highest sequence of `conv` committed at or before `ts_ms` (server clock) whose
    /// commit time the store still holds (0 when none): what the time-to-live drops.
    fn sequenced_before(&self, conv: &ConversationId, ts_ms: u64) -> Result<ServerSeq, StoreError>;

    /// One retention pass, in one transaction: per plan, drops the event bodies at or below
    /// its body floor and the dedup records at or below its index floor.
    fn prune(&self, plans: &[PrunePlan]) -> Result<PruneStats, StoreError>;

    /// Events of `conv` after `after_seq` in sequence order with the records placing them:
    /// at most `limit` events and about `max_bytes` (at least one event if any exists).
    fn page(
        &self,
        conv: &ConversationId,
        after_seq: ServerSeq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, StoreError>;

    /// The signed statements of `conv` that place sequences in `from..=to` and that the store
    /// still holds (retention keeps them for the dedup window, after the bodies they place
    /// are gone), in sequence order: about `max_bytes` (at least one if any exists), and
    /// whether every such statement is among them.
    fn statements_between(
        &self,
        conv: &ConversationId,
        from: ServerSeq,
        to: ServerSeq,
        max_bytes: usize,
    ) -> Result<(Vec<Envelope>, bool), StoreError>;

    /// Number of stored events (bodies: those retention dropped do not count).
    fn n_events(&self) -> Result<u64, StoreError>;

    /// Whether other relay nodes may write this store (then the core reads the change feed
    /// and polls conversation heads; see [`feed`]).
    fn is_shared(&self) -> bool;

    /// The directory, membership and consent rows committed after `after`, as stored now,
    /// and the position they bring the reader to. A store only this process writes has
    /// nothing to report.
    fn changes(&self, after: ChangeSeq) -> Result<Changes, StoreError>;

    /// The change feed's position now: a node that loads everything after reading it reads
    /// the feed from there.
    fn change_position(&self) -> Result<ChangeSeq, StoreError>;

    /// The stored head (`max_seq`) of each of `ids` that exists, in any order.
    fn heads(&self, ids: &[ConversationId])
        -> Result<Vec<(ConversationId, ServerSeq)>, StoreError>;
}

/// The store a relay started from its config uses: redb or PostgreSQL.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyStorage {
    /// The embedded redb file.
    Redb(RelayStore),
    /// A PostgreSQL database shared by relay nodes.
    Postgres(PgStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStorage::Redb($s) => $e,
            AnyStorage::Postgres($s) => $e,
        }
    };
}

impl Storage for AnyStorage {
    fn commit(&self, batch: &CommitBatch<'_>) -> Result<(), StoreError> {
        dispatch!(self, s => s.commit(batch))
    }
    fn conversations(&self) -> Result<Vec<(ConversationId, ConversationRecord)>, StoreError> {
        dispatch!(self, s => Storage::conversations(s))
    }
    fn conversation(&self, id: &ConversationId) -> Result<Option<ConversationRecord>, StoreError> {
        dispatch!(self, s => Storage::conversation(s, id))
    }
    fn former_members(&self) -> Result<Vec<(ConversationId, UserId)>, StoreError> {
        dispatch!(self, s => Storage::former_members(s))
    }
    fn registrations(&self) -> Result<Vec<DeviceRegistration>, StoreError> {
        dispatch!(self, s => Storage::registrations(s))
    }
    fn revocations(&self) -> Result<Vec<DeviceRevocation>, StoreError> {
        dispatch!(self, s => Storage::revocations(s))
    }
    fn invitations(&self) -> Result<Vec<InvitationRecord>, StoreError> {
        dispatch!(self, s => Storage::invitations(s))
    }
    fn blocked(&self) -> Result<Vec<(UserId, UserId)>, StoreError> {
        dispatch!(self, s => Storage::blocked(s))
    }
    fn cursors(&self, device: &DeviceId) -> Result<HashMap<ConversationId, u64>, StoreError> {
        dispatch!(self, s => Storage::cursors(s, device))
    }
    fn chain(&self, events: &[&Event]) -> Result<Vec<ChainInfo>, StoreError> {
        dispatch!(self, s => Storage::chain(s, events))
    }
    fn page(
        &self,
        conv: &ConversationId,
        after_seq: ServerSeq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, StoreError> {
        dispatch!(self, s => Storage::page(s, conv, after_seq, limit, max_bytes))
    }
    fn statements_between(
        &self,
        conv: &ConversationId,
        from: ServerSeq,
        to: ServerSeq,
        max_bytes: usize,
    ) -> Result<(Vec<Envelope>, bool), StoreError> {
        dispatch!(self, s => Storage::statements_between(s, conv, from, to, max_bytes))
    }
    fn n_events(&self) -> Result<u64, StoreError> {
        dispatch!(self, s => Storage::n_events(s))
    }
    fn retained_floor(&self, conv: &ConversationId) -> Result<ServerSeq, StoreError> {
        dispatch!(self, s => Storage::retained_floor(s, conv))
    }
    fn sequenced_before(&self, conv: &ConversationId, ts_ms: u64) -> Result<ServerSeq, StoreError> {
        dispatch!(self, s => Storage::sequenced_before(s, conv, ts_ms))
    }
    fn prune(&self, plans: &[PrunePlan]) -> Result<PruneStats, StoreError> {
        dispatch!(self, s => Storage::prune(s, plans))
    }
    fn is_shared(&self) -> bool {
        dispatch!(self, s => Storage::is_shared(s))
    }
    fn changes(&self, after: ChangeSeq) -> Result<Changes, StoreError> {
        dispatch!(self, s => Storage::changes(s, after))
    }
    fn change_position(&self) -> Result<ChangeSeq, StoreError> {
        dispatch!(self, s => Storage::change_position(s))
    }
    fn heads(
        &self,
        ids: &[ConversationId],
    ) -> Result<Vec<(ConversationId, ServerSeq)>, StoreError> {
        dispatch!(self, s => Storage::heads(s, ids))
    }
}
