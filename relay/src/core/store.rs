//! The relay's durable state in redb: sequenced events with their acks, conversations (with
//! their membership), device certificates, device revocations and device cursors. Synchronous; the core calls it directly.
//!
//! Tables (keys are fixed-size byte arrays, integers big-endian so that byte order is
//! numeric order):
//! - `events`: conversation (16) | seq (8) → (event envelope, ack envelope). The ack is empty
//!   for events sequenced since schema 6: the `statements` row that covers the sequence places
//!   them. Rows written before keep their own signed `ServerAck`.
//! - `statements`: conversation (16) | first seq (8) → the relay's signed `Sequenced`
//!   statement placing the events from that sequence on (schema 6)
//! - `event_index`: conversation (16) | author (32) | counter (8) | event id (32) →
//!   conversation (16) | seq (8) | prev (32: the event's `prev`, zeros for none). Keyed by author and counter rather than by id alone so that
//!   a group commit's inserts land next to each other (one device's events are consecutive)
//!   instead of on as many random pages as events: fewer pages written per fsync. The id
//!   suffix keeps two different events with the same counter apart; the relay refuses a
//!   second one (a chain fork), and the `prev` in the value lets it check chains.
//! - `conversations`: conversation (16) → postcard([`ConversationRecord`])
//! - `former_members`: conversation (16) | user (32) → (): users removed from the conversation
//!   at some point (a row per user, written once, so that a commit does not rewrite an
//!   ever-growing set; schema 5, migrated from the `former` field of schema 4's record)
//! - `device_certs`: device (32) → postcard([`DeviceRegistration`])
//! - `revocations`: device (32) → postcard([`DeviceRevocation`])
//! - `cursors`: device (32) | conversation (16) → highest sequence the device reported received
//! - `invitations`: user (32) | conversation (16) → decision (1: 0 pending, 1 accepted,
//!   2 declined) | inviter (32): the user's say in a conversation another user listed it in
//!   (and `accepted` for one it created)
//! - `blocked`: user (32) | blocked user (32) → 1
//! - `retained`, `seq_times`, `pruned_chains`, `seq_index`, `dedup_floor`: what retention
//!   dropped and what it measures against (schema 7, see [`retention`]).
//! - `meta`: `"schema"` → [`SCHEMA_VERSION`]. Schemas 5 and 6 open as 7 by adding the tables
//!   they lack (`statements`; the retention tables); schema 4 is migrated first.
//!
//! Since schema 7 an `events` row may be missing below a conversation's retention floor, and
//! a row of a legacy ack may hold an empty event (its body dropped, its ack kept for dedup).

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use tidings_engine::wire::{DeviceRegistration, DeviceRevocation, Envelope};
use tidings_engine::{ConversationId, DeviceId, Event, EventId, Membership, ServerSeq, UserId};

/// Version of the table layout; a store written by another version is refused.
pub const SCHEMA_VERSION: u64 = 7;

mod read;
mod retention;
pub use retention::{is_kept, is_kept_kind, PrunePlan, PruneStats};
use retention::{DEDUP_FLOOR, PRUNED_CHAINS, RETAINED, SEQ_INDEX, SEQ_TIMES};

type SeqKey = [u8; 24];
type CursorKey = [u8; 48];
/// Key of the `event_index` table (see the module docs).
pub type IndexKey = [u8; 88];

const EVENTS: TableDefinition<SeqKey, (&[u8], &[u8])> = TableDefinition::new("events");
const STATEMENTS: TableDefinition<SeqKey, &[u8]> = TableDefinition::new("statements");
type IndexValue = [u8; 56];
const EVENT_INDEX: TableDefinition<IndexKey, IndexValue> = TableDefinition::new("event_index");
const CONVERSATIONS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("conversations");
type FormerKey = [u8; 48];
const FORMER: TableDefinition<FormerKey, ()> = TableDefinition::new("former_members");
const DEVICES: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("device_certs");
const REVOCATIONS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("revocations");
const CURSORS: TableDefinition<CursorKey, u64> = TableDefinition::new("cursors");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
type UserConvKey = [u8; 48];
type DecisionValue = [u8; 33];
const INVITATIONS: TableDefinition<UserConvKey, DecisionValue> =
    TableDefinition::new("invitations");
type UserPairKey = [u8; 64];
const BLOCKED: TableDefinition<UserPairKey, u8> = TableDefinition::new("blocked");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb reported an error.
    #[error("relay store: {0}")]
    Redb(#[from] redb::Error),
    /// A record does not decode: the file was damaged or written by something else.
    #[error("relay store is corrupt: {0}")]
    Corrupt(&'static str),
    /// Signing an ack failed (only possible if an event's fields are over their limits).
    #[error("signing an ack: {0}")]
    Ack(tidings_engine::event::DecodeError),
    /// A commit failed (the error as reported by the writer).
    #[error("commit failed: {0}")]
    Failed(String),
    /// PostgreSQL reported an error (connection, query or transaction).
    #[error("postgres: {0}")]
    Postgres(#[from] postgres::Error),
    /// A commit's first event of a conversation does not follow the stored head: another
    /// relay node appended to it since this one read it. Nothing of the commit was written.
    #[error("conversation {conversation}: commit expected head {expected}, store holds {found}")]
    Conflict {
        /// The conversation.
        conversation: ConversationId,
        /// The head the commit was sequenced after.
        expected: ServerSeq,
        /// The head in the store.
        found: ServerSeq,
    },
    /// An event id is already stored in its conversation (a resubmission sequenced by another
    /// node meanwhile). Nothing of the commit was written.
    #[error("conversation {conversation}: an event of the commit is already stored")]
    Duplicate {
        /// The conversation.
        conversation: ConversationId,
    },
    /// The connection to the database was lost during `COMMIT`, and whether the server
    /// committed could not be found out (nothing to look for, or the server is unreachable).
    #[error("commit outcome unknown: {0}")]
    CommitUnknown(String),
    /// The PostgreSQL store's connection thread is gone.
    #[error("postgres connection thread stopped")]
    ConnectionGone,
    /// The file was written with another table layout.
    #[error("relay store schema {found}, this build reads {expected}")]
    Schema {
        /// Found in the file.
        found: u64,
        /// Expected.
        expected: u64,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    redb::DatabaseError
);

/// Where an event was sequenced: its conversation, its sequence and the relay record that
/// places it (a `Sequenced` statement, or the legacy `ServerAck` of an older row).
pub type Sequenced = (ConversationId, ServerSeq, Vec<u8>);

/// What the relay keeps per conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRecord {
    /// The members after `max_seq`: from the Create event, then every accepted AddMember and
    /// RemoveMember in sequence order.
    pub membership: Membership,
    /// Highest sequence stored.
    pub max_seq: ServerSeq,
    /// Id of the ack of `max_seq` (the `prev` of the next ack).
    pub last_ack: EventId,
    /// Server timestamp of `max_seq`; later acks never go below it.
    pub last_ts_ms: u64,
}

/// Schema 4's conversation record: former members inside it (read by the migration only).
#[derive(Deserialize)]
struct ConversationRecordV4 {
    membership: Membership,
    former: BTreeSet<UserId>,
    max_seq: ServerSeq,
    last_ack: EventId,
    last_ts_ms: u64,
}

fn former_key(conv: &ConversationId, user: &UserId) -> FormerKey {
    let mut k = [0u8; 48];
    k[..16].copy_from_slice(&conv.0);
    k[16..].copy_from_slice(&user.0);
    k
}

/// A user's say in a conversation it was listed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Invited, not answered yet.
    Pending,
    /// Accepted (or created by the user).
    Accepted,
    /// Declined.
    Declined,
}

/// One row of the `invitations` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvitationRecord {
    /// The invited user.
    pub user: UserId,
    /// The conversation.
    pub conversation: ConversationId,
    /// Its decision.
    pub decision: Decision,
    /// Who listed it (the user itself for a conversation it created).
    pub inviter: UserId,
}

fn user_conv_key(user: &UserId, conv: &ConversationId) -> UserConvKey {
    let mut k = [0u8; 48];
    k[..32].copy_from_slice(&user.0);
    k[32..].copy_from_slice(&conv.0);
    k
}

fn user_pair_key(user: &UserId, other: &UserId) -> UserPairKey {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(&user.0);
    k[32..].copy_from_slice(&other.0);
    k
}

/// One sequenced event to write.
#[derive(Debug)]
pub struct SequencedRecord<'a> {
    /// The conversation.
    pub conversation: ConversationId,
    /// Its sequence.
    pub seq: ServerSeq,
    /// The event's `event_index` key ([`index_key`]).
    pub index_key: IndexKey,
    /// The event's `prev` (the same author's previous event in the conversation).
    pub prev: Option<EventId>,
    /// The event envelope.
    pub event: &'a [u8],
    /// Its legacy ack envelope: empty (a statement of the batch places it).
    pub ack: &'a [u8],
}

/// Everything one group commit writes, in one transaction.
#[derive(Debug, Default)]
pub struct CommitBatch<'a> {
    /// New events.
    pub events: Vec<SequencedRecord<'a>>,
    /// The signed statements placing them: (conversation, first sequence, envelope).
    pub statements: Vec<(ConversationId, ServerSeq, &'a [u8])>,
    /// Conversations whose record changed.
    pub conversations: Vec<(ConversationId, &'a ConversationRecord)>,
    /// Conversations of `conversations` created or whose membership changed (a store shared
    /// by several relay nodes announces them in its change feed).
    pub membership_changed: Vec<ConversationId>,
    /// Users removed from a conversation (users devices that catch up still need the
    /// certificates of, to verify what they wrote while members).
    pub former: Vec<(ConversationId, UserId)>,
    /// New or renewed device certificates.
    pub devices: Vec<&'a DeviceRegistration>,
    /// New device revocations.
    pub revocations: Vec<&'a DeviceRevocation>,
    /// Cursor updates.
    pub cursors: Vec<(DeviceId, ConversationId, ServerSeq)>,
    /// Invitation rows to write (new invitations and decisions), in order.
    pub invitations: Vec<InvitationRecord>,
    /// (user, other, blocks): block rows to write (`true`) or delete (`false`), in order.
    pub blocks: Vec<(UserId, UserId, bool)>,
}

impl CommitBatch<'_> {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.conversations.is_empty()
            && self.former.is_empty()
            && self.devices.is_empty()
            && self.revocations.is_empty()
            && self.cursors.is_empty()
            && self.invitations.is_empty()
            && self.blocks.is_empty()
    }
}

/// The relay's redb store. Clones share the database (a writer thread writes commits while
/// the core reads).
#[derive(Debug, Clone)]
pub struct RelayStore {
    db: std::sync::Arc<Database>,
    durability: Durability,
}

fn seq_key(conv: &ConversationId, seq: ServerSeq) -> SeqKey {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&conv.0);
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The `event_index` key of an event.
pub fn index_key(event: &tidings_engine::Event) -> IndexKey {
    let h = event.header();
    let mut k = [0u8; 88];
    k[..16].copy_from_slice(&h.conversation.0);
    k[16..48].copy_from_slice(&h.author.0);
    k[48..56].copy_from_slice(&h.counter.to_be_bytes());
    k[56..].copy_from_slice(&event.id().0);
    k
}

fn index_value(seq: &SeqKey, prev: Option<EventId>) -> IndexValue {
    let mut v = [0u8; 56];
    v[..24].copy_from_slice(seq);
    if let Some(p) = prev {
        v[24..].copy_from_slice(&p.0);
    }
    v
}

fn split_index_value(v: &IndexValue) -> (SeqKey, Option<EventId>) {
    let mut k = [0u8; 24];
    k.copy_from_slice(&v[..24]);
    let mut p = [0u8; 32];
    p.copy_from_slice(&v[24..]);
    (k, (p != [0; 32]).then_some(EventId(p)))
}

/// The `event_index` keys of every event of `author` at `counter` in `conv`.
fn slot_range(conv: &ConversationId, author: &DeviceId, counter: u64) -> (IndexKey, IndexKey) {
    let mut lo = [0u8; 88];
    lo[..16].copy_from_slice(&conv.0);
    lo[16..48].copy_from_slice(&author.0);
    lo[48..56].copy_from_slice(&counter.to_be_bytes());
    let mut hi = lo;
    hi[56..].copy_from_slice(&[0xff; 32]);
    (lo, hi)
}

fn id_of(k: &IndexKey) -> EventId {
    let mut id = [0u8; 32];
    id.copy_from_slice(&k[56..]);
    EventId(id)
}

/// What the store holds around one event's place in its author's chain
/// ([`RelayStore::chain`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainInfo {
    /// The event itself, if it was sequenced: where, and its ack.
    pub stored: Option<Sequenced>,
    /// Another event stored at the same (conversation, author, counter): a fork.
    pub fork: Option<EventId>,
    /// Id of the author's stored event at `counter - 1`.
    pub pred: Option<EventId>,
    /// The `prev` of the author's stored event at `counter + 1`, if one is stored.
    pub succ_prev: Option<Option<EventId>>,
    /// Not stored, and at or below a counter of its author whose dedup record retention
    /// dropped: possibly a resubmission older than the dedup window, which the relay can no
    /// longer place (refused, never sequenced twice).
    pub expired: bool,
}

/// The relay record placing the event stored at `key` whose row holds `ack`: that legacy ack
/// when there is one, else the statement covering the sequence, with the statement's key.
fn placing_record(
    statements: &impl ReadableTable<SeqKey, &'static [u8]>,
    key: &SeqKey,
    ack: &[u8],
) -> Result<(Option<SeqKey>, Vec<u8>), StoreError> {
    if !ack.is_empty() {
        return Ok((None, ack.to_vec()));
    }
    let (sk, guard) = covering_statement(statements, key)?;
    Ok((Some(sk), guard.value().to_vec()))
}

/// The statement with the highest first sequence at or below the event at `key`, in its
/// conversation: the one placing it (statements of a conversation cover consecutive ranges).
fn covering_statement<'t>(
    statements: &'t impl ReadableTable<SeqKey, &'static [u8]>,
    key: &SeqKey,
) -> Result<(SeqKey, redb::AccessGuard<'t, &'static [u8]>), StoreError> {
    let missing = StoreError::Corrupt("an event no statement places");
    let Some(row) = statements.range(..=*key)?.next_back() else {
        return Err(missing);
    };
    let (sk, v) = row?;
    let sk = sk.value();
    if sk[..16] != key[..16] {
        return Err(missing);
    }
    Ok((sk, v))
}

/// The relay record placing the event the index says is at `key`: its row's legacy ack, or
/// (also when retention dropped the row) the statement covering the sequence.
fn stored_record(
    events: &impl ReadableTable<SeqKey, (&'static [u8], &'static [u8])>,
    statements: &impl ReadableTable<SeqKey, &'static [u8]>,
    key: &SeqKey,
) -> Result<Vec<u8>, StoreError> {
    let ack = events
        .get(key)?
        .map(|r| r.value().1.to_vec())
        .unwrap_or_default();
    Ok(placing_record(statements, key, &ack)?.1)
}

fn split_seq_key(k: &SeqKey) -> (ConversationId, ServerSeq) {
    let mut c = [0u8; 16];
    c.copy_from_slice(&k[..16]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&k[16..]);
    (ConversationId(c), u64::from_be_bytes(s))
}

fn cursor_key(device: &DeviceId, conv: &ConversationId) -> CursorKey {
    let mut k = [0u8; 48];
    k[..32].copy_from_slice(&device.0);
    k[32..].copy_from_slice(&conv.0);
    k
}

/// Schema 4 → 5: former members move out of the conversation records into their table.
fn migrate_v4(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut convs = txn.open_table(CONVERSATIONS)?;
    let mut former = txn.open_table(FORMER)?;
    let mut old = Vec::new();
    for row in convs.iter()? {
        let (k, v) = row?;
        let rec: ConversationRecordV4 = postcard::from_bytes(v.value())
            .map_err(|_| StoreError::Corrupt("conversation record (schema 4)"))?;
        old.push((k.value(), rec));
    }
    for (k, rec) in old {
        let conv = ConversationId(k);
        for u in &rec.former {
            former.insert(former_key(&conv, u), ())?;
        }
        let new = ConversationRecord {
            membership: rec.membership,
            max_seq: rec.max_seq,
            last_ack: rec.last_ack,
            last_ts_ms: rec.last_ts_ms,
        };
        let bytes = postcard::to_stdvec(&new)
            .map_err(|_| StoreError::Corrupt("unencodable conversation record"))?;
        convs.insert(k, bytes.as_slice())?;
    }
    Ok(())
}

impl RelayStore {
    /// Opens (creating the tables if needed) a store on an open database. `durable` selects
    /// `Durability::Immediate` (fsync per commit) or `Durability::None` (tests, simulations).
    ///
    /// Every page is checked against its checksum first (redb itself checks them only when it
    /// recovers from a crash, and a damaged page makes it panic or return wrong values): a
    /// damaged file is [`StoreError::Corrupt`], never a panic or silent loss.
    pub fn open(mut db: Database, durable: bool) -> Result<RelayStore, StoreError> {
        match db.check_integrity() {
            Ok(true) => {}
            // Repaired, possibly back to an earlier commit: acked events may be gone.
            Ok(false) => return Err(StoreError::Corrupt("file damaged (repaired by redb)")),
            Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(_))) => {
                return Err(StoreError::Corrupt("file damaged (page checksums)"))
            }
            Err(e) => return Err(e.into()),
        }
        let txn = db.begin_write()?;
        {
            // The schema first: a file of another layout may hold tables of other types.
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema", SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                // 6 only adds the `statements` table, 7 the retention tables (opened below).
                Some(5 | 6) => {
                    retention::fill_seq_index(&txn)?;
                    meta.insert("schema", SCHEMA_VERSION)?;
                }
                Some(4) => {
                    migrate_v4(&txn)?;
                    retention::fill_seq_index(&txn)?;
                    meta.insert("schema", SCHEMA_VERSION)?;
                }
                Some(found) => {
                    return Err(StoreError::Schema {
                        found,
                        expected: SCHEMA_VERSION,
                    })
                }
            }
            txn.open_table(EVENTS)?;
            txn.open_table(STATEMENTS)?;
            txn.open_table(EVENT_INDEX)?;
            txn.open_table(CONVERSATIONS)?;
            txn.open_table(FORMER)?;
            txn.open_table(DEVICES)?;
            txn.open_table(REVOCATIONS)?;
            txn.open_table(CURSORS)?;
            txn.open_table(INVITATIONS)?;
            txn.open_table(BLOCKED)?;
            txn.open_table(RETAINED)?;
            txn.open_table(SEQ_TIMES)?;
            txn.open_table(PRUNED_CHAINS)?;
            txn.open_table(SEQ_INDEX)?;
            txn.open_table(DEDUP_FLOOR)?;
        }
        txn.commit()?;
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        Ok(RelayStore {
            db: std::sync::Arc::new(db),
            durability,
        })
    }

    /// A store in memory (redb's `InMemoryBackend`), for tests and the simulator.
    pub fn in_memory() -> Result<RelayStore, StoreError> {
        RelayStore::open_backend(redb::backends::InMemoryBackend::new(), false)
    }

    /// Opens (or creates) the store in the file at `path`. A damaged file is
    /// [`StoreError::Corrupt`], even one that makes redb itself panic while opening it.
    pub fn open_path(path: &std::path::Path, durable: bool) -> Result<RelayStore, StoreError> {
        let db = tidings_engine::log::guarded_open(|| Database::create(path))?
            .ok_or(StoreError::Corrupt("file damaged (redb failed to open it)"))?;
        RelayStore::open(db, durable)
    }

    /// Opens (or creates) the store on any redb storage backend (simulations, fuzzing).
    pub fn open_backend(
        backend: impl redb::StorageBackend,
        durable: bool,
    ) -> Result<RelayStore, StoreError> {
        let db =
            tidings_engine::log::guarded_open(|| Database::builder().create_with_backend(backend))?
                .ok_or(StoreError::Corrupt("file damaged (redb failed to open it)"))?;
        RelayStore::open(db, durable)
    }

    /// Gives the database back (e.g. to reopen it as after a restart in a simulation);
    /// `None` while another clone of the store is alive.
    pub fn into_database(self) -> Option<Database> {
        std::sync::Arc::try_unwrap(self.db).ok()
    }

    /// Writes a batch in one transaction; returns after it is durable. The storage contract
    /// ([`crate::storage`]): a conversation's first new sequence must follow its stored head
    /// ([`StoreError::Conflict`]), an event stored before is refused
    /// ([`StoreError::Duplicate`]), a cursor only grows. A refused batch writes nothing.
    pub fn commit(&self, batch: &CommitBatch<'_>) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(self.durability)?;
        match Self::write_batch(&txn, batch) {
            Ok(()) => txn.commit()?,
            Err(e) => {
                txn.abort()?;
                return Err(e);
            }
        }
        Ok(())
    }

    fn write_batch(
        txn: &redb::WriteTransaction,
        batch: &CommitBatch<'_>,
    ) -> Result<(), StoreError> {
        {
            // Dense sequences: each conversation's first new event follows the stored head.
            let mut first: HashMap<ConversationId, ServerSeq> = HashMap::new();
            for r in &batch.events {
                let f = first.entry(r.conversation).or_insert(r.seq);
                *f = (*f).min(r.seq);
            }
            let convs = txn.open_table(CONVERSATIONS)?;
            for (id, rec) in &batch.conversations {
                let expected = first.get(id).map_or(rec.max_seq, |f| f.saturating_sub(1));
                let found = match convs.get(id.0)? {
                    Some(v) => {
                        postcard::from_bytes::<ConversationRecord>(v.value())
                            .map_err(|_| StoreError::Corrupt("conversation record"))?
                            .max_seq
                    }
                    None => 0,
                };
                if found != expected {
                    return Err(StoreError::Conflict {
                        conversation: *id,
                        expected,
                        found,
                    });
                }
            }
        }
        {
            let mut events = txn.open_table(EVENTS)?;
            let mut index = txn.open_table(EVENT_INDEX)?;
            let mut seq_index = txn.open_table(SEQ_INDEX)?;
            for r in &batch.events {
                let k = seq_key(&r.conversation, r.seq);
                // An id is stored once, forever: a second copy at another sequence would
                // be the same message twice in the order.
                if index
                    .insert(r.index_key, index_value(&k, r.prev))?
                    .is_some()
                {
                    return Err(StoreError::Duplicate {
                        conversation: r.conversation,
                    });
                }
                events.insert(k, (r.event, r.ack))?;
                seq_index.insert(k, r.index_key)?;
            }
            let mut statements = txn.open_table(STATEMENTS)?;
            for (c, first, bytes) in &batch.statements {
                statements.insert(seq_key(c, *first), *bytes)?;
            }
            let mut convs = txn.open_table(CONVERSATIONS)?;
            let mut times = txn.open_table(SEQ_TIMES)?;
            for (id, rec) in &batch.conversations {
                let bytes = postcard::to_stdvec(rec)
                    .map_err(|_| StoreError::Corrupt("unencodable conversation record"))?;
                convs.insert(id.0, bytes.as_slice())?;
                // The time-to-live counts from here (see `retention`).
                if rec.max_seq > 0 {
                    times.insert(seq_key(id, rec.max_seq), rec.last_ts_ms)?;
                }
            }
            let mut former = txn.open_table(FORMER)?;
            for (c, u) in &batch.former {
                former.insert(former_key(c, u), ())?;
            }
            let mut devices = txn.open_table(DEVICES)?;
            for r in &batch.devices {
                let bytes = postcard::to_stdvec(r)
                    .map_err(|_| StoreError::Corrupt("unencodable registration"))?;
                devices.insert(r.device.0, bytes.as_slice())?;
            }
            let mut revocations = txn.open_table(REVOCATIONS)?;
            for r in &batch.revocations {
                let bytes = postcard::to_stdvec(r)
                    .map_err(|_| StoreError::Corrupt("unencodable revocation"))?;
                revocations.insert(r.device.0, bytes.as_slice())?;
            }
            let mut cursors = txn.open_table(CURSORS)?;
            for (d, c, s) in &batch.cursors {
                // A cursor is a maximum: a lower position written later does not move it back.
                let key = cursor_key(d, c);
                if cursors.get(key)?.is_none_or(|old| old.value() < *s) {
                    cursors.insert(key, *s)?;
                }
            }
            let mut invitations = txn.open_table(INVITATIONS)?;
            for r in &batch.invitations {
                let mut v = [0u8; 33];
                v[0] = match r.decision {
                    Decision::Pending => 0,
                    Decision::Accepted => 1,
                    Decision::Declined => 2,
                };
                v[1..].copy_from_slice(&r.inviter.0);
                invitations.insert(user_conv_key(&r.user, &r.conversation), v)?;
            }
            let mut blocked = txn.open_table(BLOCKED)?;
            for (u, o, on) in &batch.blocks {
                if *on {
                    blocked.insert(user_pair_key(u, o), 1)?;
                } else {
                    blocked.remove(user_pair_key(u, o))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
