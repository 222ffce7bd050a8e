//! The event log: every verified event in redb, with the indexes a device needs.
//!
//! The log is the truth; automerge documents and the fast-read tables below are derived from
//! it and can be rebuilt. Table layouts are documented in `docs/FORMAT.md`.
//!
//! Everything a local action writes goes into one write transaction ([`LogTxn`]), so a crash
//! leaves either all of it or none of it.

use crate::conversation::MembershipHistory;
use crate::directory::DeviceDirectory;
use crate::event::{DecodeError, Event, EventKind, Placement};
use crate::gate::{Gate, Refusal, Verdict};
use crate::ids::{ConversationId, DeviceId, EventId, MessageId, ServerSeq, UserId};
use crate::wire::{DeviceRegistration, DeviceRevocation};
use redb::{
    backends::InMemoryBackend, Database, Durability, ReadableDatabase, ReadableTable,
    TableDefinition,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

mod index;
use index::user_marks;
pub use index::{local_read_key, LogReader, PageCursor, MAX_PAGE_LEN};

/// Written in the `meta` table so that a file of someone else's is never mistaken for ours.
pub const LOG_MAGIC: &[u8] = b"tidings-event-log";
/// The table layout this build writes. A file with a higher number is refused.
pub const LOG_FORMAT_VERSION: u32 = 3;

type Conv = &'static [u8; 16];
type Id32 = &'static [u8; 32];
/// (conversation, device, counter)
type AuthorKey = (Conv, Id32, u64);
/// (conversation, message id)
type UnseqKey = (Conv, &'static [u8; 16]);
/// (user, delivered, read)
type MarksValue = (Id32, u64, u64);

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// event id → (log position, envelope)
const EVENTS: TableDefinition<&[u8; 32], (u64, &[u8])> = TableDefinition::new("events");
/// log position → event id (append order)
const LOG: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("log");
/// (conversation, fold position) → event id: the events admitted to the conversation's fold,
/// in the order they were admitted (own events and relay acks at once, others' events when
/// the [`Gate`] passed them)
const CONV_LOG: TableDefinition<(&[u8; 16], u64), &[u8; 32]> = TableDefinition::new("conv_log");
/// (conversation, author device, counter) → event id
const BY_AUTHOR: TableDefinition<AuthorKey, &[u8; 32]> = TableDefinition::new("by_author");
/// (conversation, server seq) → id of the sequenced event (any kind)
const BY_SEQ: TableDefinition<(&[u8; 16], u64), &[u8; 32]> = TableDefinition::new("by_seq");
/// (conversation, server seq) → id of the `Send` event at that seq (the fast message view)
const MSG_BY_SEQ: TableDefinition<(&[u8; 16], u64), &[u8; 32]> = TableDefinition::new("msg_by_seq");
/// (conversation, message id) → id of the `Send` event admitted to the conversation's fold
/// with that message id (the first one): how [`LogReader::message`] finds a message (format 3)
const MSG_BY_ID: TableDefinition<UnseqKey, Id32> = TableDefinition::new("msg_by_id");
/// (conversation, message id) → (lamport, `Send` event id), for messages without a seq yet
const UNSEQUENCED: TableDefinition<UnseqKey, (u64, Id32)> = TableDefinition::new("unsequenced");
/// acknowledged event id → (seq, server ts, ack event id)
const ACKS: TableDefinition<&[u8; 32], (u64, u64, &[u8; 32])> = TableDefinition::new("acks");
/// (conversation, device) → (user, delivered up to, read up to)
const MARKS: TableDefinition<(Conv, Id32), MarksValue> = TableDefinition::new("marks");
/// conversation → postcard([`ConversationMeta`])
const CONVS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("conversations");
/// outbox position → postcard([`OutboxEntry`])
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// event id → outbox position
const OUTBOX_BY_EVENT: TableDefinition<&[u8; 32], u64> = TableDefinition::new("outbox_by_event");
/// free-form cursor name → value (e.g. the last pulled server seq of a conversation)
const CURSORS: TableDefinition<&[u8], u64> = TableDefinition::new("cursors");
/// (conversation, document: a segment number, or `u64::MAX` for the head) → (log position
/// covered, saved automerge document). The head's row is written at every snapshot and its
/// position is the one all of the conversation's rows cover (see [`crate::doc::PartId`]).
const SNAPSHOTS: TableDefinition<(Conv, u64), SnapshotValue> =
    TableDefinition::new("doc_snapshots");
/// A `doc_snapshots` row: (log position covered, saved automerge document).
type SnapshotValue = (u64, &'static [u8]);
/// The table of one document per conversation that `doc_snapshots` replaced: dropped at open
/// (snapshots are derived; the documents are rebuilt from the log).
const OLD_SNAPSHOTS: TableDefinition<&[u8; 16], (u64, &[u8])> = TableDefinition::new("snapshots");
/// The `doc_snapshots` row of a conversation's head document.
const HEAD_PART: u64 = u64::MAX;
/// conversation → postcard([`Gate`]): how far the device's own checks got
const GATES: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("gates");
/// event id → (): stored events of others waiting for the gate
const HELD: TableDefinition<&[u8; 32], ()> = TableDefinition::new("held");
/// event id → (conversation, the refusal for people): events the gate refused
const REFUSED: TableDefinition<&[u8; 32], (&[u8; 16], &str)> = TableDefinition::new("refused");
/// (conversation, epoch) → the epoch key and what is known of it, sealed under the device's
/// storage key (see [`crate::store`])
const EPOCH_KEYS: TableDefinition<(&[u8; 16], &[u8; 32]), &[u8]> =
    TableDefinition::new("epoch_keys");
/// (device, 0 = certificate / 1 = revocation) → the signed statement (postcard), as this
/// device verified it
const DIRECTORY: TableDefinition<(&[u8; 32], u8), &[u8]> = TableDefinition::new("directory");
/// (conversation, seq of a membership change the gate admitted) → postcard(`Vec<UserId>`): the
/// members after it. A message's recipients are the members at its seq.
const MEMBERSHIPS: TableDefinition<(&[u8; 16], u64), &[u8]> = TableDefinition::new("memberships");
/// (event id, conversation of the statement) → server seq: places a relay statement gave to
/// events the log does not hold yet (a statement covers a whole group commit; a page may bring
/// only part of its events). Moved into `by_seq` of the statement's conversation when the
/// event arrives (whatever conversation the event names: the gate there judges it), so that a
/// cursor never passes an event the log lacks.
const WAITING: TableDefinition<(&[u8; 32], &[u8; 16]), u64> = TableDefinition::new("waiting");
/// (conversation, last seq placed) → (id, first seq placed) of the relay statement
/// (`Sequenced`, or a legacy `ServerAck` written from now on) placing that range: the relay's
/// hash chain, checked like an author's chain but by sequence range, and the chain head a
/// receipt names.
const STATEMENTS: TableDefinition<(&[u8; 16], u64), StatementValue> =
    TableDefinition::new("statements");
/// n → a [`ChainIssue`] this log found (postcard), in the order found: kept so that a report
/// the process found but died before the app took is reported again by the next process (see
/// [`EventLog::chain_reports`]). Gaps and withheld sequences are not kept: the device derives
/// them again after every catch-up. At most [`MAX_CHAIN_REPORTS`] rows.
const CHAIN_REPORTS: TableDefinition<u64, &[u8]> = TableDefinition::new("chain_reports");
/// Most chain reports a log keeps (the first ones: one is enough to know the relay or an
/// author misbehaved, and a hostile relay must not grow the log without bound).
pub const MAX_CHAIN_REPORTS: u64 = 256;
/// A conversation's document snapshots: (log position covered, (part number, bytes) each).
pub type SnapshotParts = (u64, Vec<(u64, Vec<u8>)>);
/// A `statements` row: (statement id, first seq it places).
type StatementValue = (&'static [u8; 32], u64);

/// Why the log could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// redb failed (I/O, a full disk, corruption it detected).
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
    /// Another `EventLog` (in this process or another) has the file open.
    #[error("{0} is already open")]
    AlreadyOpen(String),
    /// The file is a database, but not a tidings event log.
    #[error("{0} is not a tidings event log")]
    NotOurs(String),
    /// The file was written by a newer build.
    #[error("event log format {found} is newer than this build supports ({supported})")]
    NewerFormat {
        /// Version in the file.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },
    /// The file's pages do not match their checksums: it was damaged after it was written.
    /// Nothing is read from it (and it is never reset).
    #[error("{0} is damaged: its pages do not match their checksums")]
    Damaged(String),
    /// A stored record does not decode: the file was damaged or written by a bug.
    #[error("corrupt record in table {table}: {detail}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// What was wrong.
        detail: String,
    },
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for LogError {
            fn from(e: $t) -> Self {
                LogError::Storage(e.into())
            }
        }
    )*};
}
storage_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

fn corrupt(table: &'static str, detail: impl ToString) -> LogError {
    LogError::Corrupt {
        table,
        detail: detail.to_string(),
    }
}

/// Per-conversation facts kept up to date on every append.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationMeta {
    /// Members and the `Create` event that named them (lowest event id wins); after the gate
    /// admitted a membership change, the members it left. Earlier memberships are in
    /// [`EventLog::membership_history`].
    pub members: Option<(EventId, Vec<UserId>)>,
    /// Highest lamport clock seen.
    pub max_lamport: u64,
    /// Highest server seq seen (of any event).
    pub max_seq: ServerSeq,
    /// Events stored.
    pub n_events: u64,
}

fn read_history(
    table: &impl ReadableTable<(&'static [u8; 16], u64), &'static [u8]>,
    conversation: &ConversationId,
) -> Result<MembershipHistory, LogError> {
    let c = &conversation.0;
    let mut out = MembershipHistory::new();
    for row in table.range((c, 0u64)..=(c, u64::MAX))? {
        let (k, v) = row?;
        let members = postcard::from_bytes(v.value()).map_err(|e| corrupt("memberships", e))?;
        out.insert(k.value().1, members);
    }
    Ok(out)
}

/// Whether the outbox still tries an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboxState {
    /// Waiting for its next attempt.
    Queued,
    /// The retry policy ran out: shown FAILED until `retry`.
    Failed,
}

/// An event waiting to reach the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Position in the outbox (global send order).
    pub position: u64,
    /// The event.
    pub event: EventId,
    /// Its conversation.
    pub conversation: ConversationId,
    /// The message it sends, for `Send` events.
    pub message: Option<MessageId>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Earliest time of the next attempt (ms since the Unix epoch).
    pub next_attempt_ms: u64,
    /// Queued or failed.
    pub state: OutboxState,
}

/// What appending one event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Stored, and admitted to its conversation's fold at this position.
    New {
        /// Fold position in the conversation.
        position: u64,
    },
    /// Stored, waiting for the conversation's [`Gate`] (see [`LogTxn::advance_gate`]); or a
    /// relay statement contradicting places the log holds, stored as evidence and never
    /// folded (see [`LogTxn::append`]).
    Held,
    /// Already stored: nothing was written.
    Duplicate,
}

/// What one run of a conversation's [`Gate`] did.
#[derive(Debug, Default)]
pub struct GateRun {
    /// Events admitted by this run, with their fold positions, in server order. Own events
    /// the gate passed are not listed: they were folded when they were written.
    pub admitted: Vec<(u64, Event)>,
    /// Events refused, with why.
    pub refused: Vec<(Event, Refusal)>,
    /// The user whose certificates the gate waits for, if it stopped for that.
    pub waiting: Option<UserId>,
    /// The gate after the run.
    pub gate: Gate,
    /// Each membership change admitted in this run (none: the membership did not change): its
    /// sequence and the members after it.
    pub changes: Vec<(ServerSeq, Vec<UserId>)>,
}

/// A break in one device's chain of events in a conversation (its per-conversation counter
/// and `prev` link), as this device's log sees it. Only the author can sign its events, so a
/// fork means the author's key signed two events for one place (a cloned, restored or
/// misbehaving device); a broken link or a gap means events were withheld, dropped or
/// reordered on the way (by the relay, for example).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainIssue {
    /// Two different events claim the same place in an author's chain.
    Fork {
        /// Conversation.
        conversation: ConversationId,
        /// The author device.
        author: DeviceId,
        /// The contested place.
        counter: u64,
        /// The event stored first (it keeps the place in the index).
        first: EventId,
        /// The other one.
        second: EventId,
    },
    /// An event's `prev` does not name the author's event before it (or names one where
    /// there can be none, at counter 1).
    BrokenLink {
        /// Conversation.
        conversation: ConversationId,
        /// The author device.
        author: DeviceId,
        /// The event's place.
        counter: u64,
        /// What the event names as its predecessor.
        prev: Option<EventId>,
        /// The event the log holds at `counter - 1`, if any.
        found: Option<EventId>,
    },
    /// An author's events are missing below one the log holds.
    Gap {
        /// Conversation.
        conversation: ConversationId,
        /// The author device.
        author: DeviceId,
        /// The missing places (at most [`MAX_GAP_REPORT`] of them).
        missing: Vec<u64>,
    },
    /// The relay's signed statements give one server sequence to two different events: it
    /// showed this device (or this device and another) two histories.
    Equivocation {
        /// Conversation.
        conversation: ConversationId,
        /// The contested sequence.
        seq: ServerSeq,
        /// The event placed there first (it keeps the place).
        first: EventId,
        /// The other one.
        second: EventId,
    },
    /// A member device's receipt names, as the relay statement placing `seq` on that device,
    /// another statement than the one this log holds there: the relay showed the two devices
    /// different histories up to `seq` (equivocation).
    HeadMismatch {
        /// Conversation.
        conversation: ConversationId,
        /// The sequence the receipt covers up to.
        seq: ServerSeq,
        /// The statement this log holds there.
        ours: EventId,
        /// The one the receipt names.
        theirs: EventId,
        /// The device that signed the receipt.
        device: DeviceId,
    },
    /// A member's receipt (signed by its device) covers sequences this log does not hold,
    /// after catch-up: the relay withheld them (the tail of an author's chain, or an event no
    /// later event of its author reveals, such as a `RemoveMember`).
    Withheld {
        /// Conversation.
        conversation: ConversationId,
        /// The highest sequence a receipt covers.
        receipt_up_to: ServerSeq,
        /// The missing sequences (at most [`MAX_GAP_REPORT`] of them).
        missing: Vec<ServerSeq>,
    },
}

/// The id of the relay statement in `table` that places `seq` in `conversation`, if the log
/// holds one.
fn covering_statement(
    table: &impl ReadableTable<(&'static [u8; 16], u64), StatementValue>,
    conversation: &ConversationId,
    seq: ServerSeq,
) -> Result<Option<EventId>, LogError> {
    let c = &conversation.0;
    let Some(row) = table.range((c, seq)..=(c, u64::MAX))?.next() else {
        return Ok(None);
    };
    let (_, v) = row?;
    let (id, first) = v.value();
    Ok((first <= seq).then_some(EventId(*id)))
}

/// Most missing places one [`ChainIssue::Gap`] lists.
pub const MAX_GAP_REPORT: usize = 64;

/// A redb-backed event log.
#[derive(Debug)]
pub struct EventLog {
    /// Shared with every [`LogReader`]: redb read transactions run beside the writer.
    db: Arc<Database>,
    incarnation: u64,
    /// Durable commits made through this handle (see [`EventLog::durable_commits`]).
    durable_commits: std::sync::atomic::AtomicU64,
}

/// Runs `open`, a redb `Database::create*` call, turning a panic inside redb into
/// `Ok(None)`.
///
/// redb reads its allocator state while opening a file, before anything can check the file's
/// checksums, and some damaged files make it panic there (`unreachable!` in its B-tree
/// cursor; found by the `event_log_file` and `relay_store_file` fuzz targets). A damaged file
/// must give an error, not take the process down, so the open runs under `catch_unwind`.
/// Nothing of the half-opened database survives the panic. The default panic hook still
/// prints redb's message to stderr.
pub fn guarded_open<F>(open: F) -> Result<Option<Database>, redb::DatabaseError>
where
    F: FnOnce() -> Result<Database, redb::DatabaseError>,
{
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(open)) {
        Ok(result) => result.map(Some),
        Err(_) => Ok(None),
    }
}

impl EventLog {
    /// Opens or creates the log at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<EventLog, LogError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let db = guarded_open(|| Database::create(path))
            .map_err(|e| match e {
                redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => {
                    LogError::NotOurs(name.clone())
                }
                redb::DatabaseError::DatabaseAlreadyOpen => LogError::AlreadyOpen(name.clone()),
                other => other.into(),
            })?
            .ok_or_else(|| LogError::Damaged(name.clone()))?;
        Self::init(db, &name)
    }

    /// A log in memory (redb's in-memory backend), for tests and simulations.
    pub fn in_memory() -> Result<EventLog, LogError> {
        Self::with_backend(InMemoryBackend::new())
    }

    /// A log over any redb storage backend: a simulator can hand in one that keeps only what
    /// was synced, to model a crash that loses every write after the last fsync.
    pub fn with_backend(backend: impl redb::StorageBackend) -> Result<EventLog, LogError> {
        let name = "log on a custom backend";
        let db = guarded_open(|| Database::builder().create_with_backend(backend))?
            .ok_or_else(|| LogError::Damaged(name.to_owned()))?;
        Self::init(db, name)
    }

    fn init(mut db: Database, name: &str) -> Result<EventLog, LogError> {
        // redb checks page checksums only when it recovers from a crash. A file damaged after
        // a clean close would be read as it is, and a damaged page makes redb index out of
        // bounds (a panic) or return wrong values. So every page is checked once, here, before
        // anything is read: a damaged log is an error, never a panic or silent loss.
        match db.check_integrity() {
            Ok(true) => {}
            // redb repaired it, possibly back to an earlier commit: events may be gone.
            Ok(false) => return Err(LogError::Damaged(name.to_owned())),
            Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(_))) => {
                return Err(LogError::Damaged(name.to_owned()))
            }
            Err(e) => return Err(e.into()),
        }
        let txn = db.begin_write()?;
        let incarnation;
        {
            let fresh = txn.list_tables()?.next().is_none();
            let mut meta = txn.open_table(META)?;
            if fresh {
                meta.insert("magic", LOG_MAGIC)?;
                meta.insert("format", LOG_FORMAT_VERSION.to_le_bytes().as_slice())?;
            }
            let magic = meta.get("magic")?.map(|g| g.value().to_vec());
            if magic.as_deref() != Some(LOG_MAGIC) {
                return Err(LogError::NotOurs(name.to_owned()));
            }
            let format = meta
                .get("format")?
                .and_then(|g| <[u8; 4]>::try_from(g.value()).ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| corrupt("meta", "missing format version"))?;
            if format > LOG_FORMAT_VERSION {
                return Err(LogError::NewerFormat {
                    found: format,
                    supported: LOG_FORMAT_VERSION,
                });
            }
            // Each open gets a fresh number, used to give rebuilt automerge documents a new
            // actor id: an actor must never write two different changes with one sequence number.
            incarnation = meta
                .get("incarnation")?
                .and_then(|g| <[u8; 8]>::try_from(g.value()).ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0)
                + 1;
            meta.insert("incarnation", incarnation.to_le_bytes().as_slice())?;
            // Create every table up front, so readers never meet a missing one.
            txn.open_table(EVENTS)?;
            txn.open_table(LOG)?;
            txn.open_table(CONV_LOG)?;
            txn.open_table(BY_AUTHOR)?;
            txn.open_table(BY_SEQ)?;
            txn.open_table(MSG_BY_SEQ)?;
            txn.open_table(MSG_BY_ID)?;
            txn.open_table(UNSEQUENCED)?;
            txn.open_table(ACKS)?;
            txn.open_table(MARKS)?;
            txn.open_table(CONVS)?;
            txn.open_table(OUTBOX)?;
            txn.open_table(OUTBOX_BY_EVENT)?;
            txn.open_table(CURSORS)?;
            txn.open_table(SNAPSHOTS)?;
            txn.delete_table(OLD_SNAPSHOTS)?;
            txn.open_table(GATES)?;
            txn.open_table(HELD)?;
            txn.open_table(REFUSED)?;
            txn.open_table(MEMBERSHIPS)?;
            txn.open_table(DIRECTORY)?;
            txn.open_table(EPOCH_KEYS)?;
            if format < 3 {
                migrate_msg_by_id(&txn)?;
                meta.insert("format", LOG_FORMAT_VERSION.to_le_bytes().as_slice())?;
            }
        }
        txn.commit()?;
        Ok(EventLog {
            db: Arc::new(db),
            incarnation,
            durable_commits: Default::default(),
        })
    }

    /// A number that grows with every open of this log.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Runs `f` in one write transaction and commits it durably (fsync) if `f` succeeds. If
    /// `f` fails or the process dies first, nothing of it is visible afterwards.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut LogTxn<'_>) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        self.write_with(Durability::Immediate, f)
    }

    /// Like [`EventLog::write`], without the fsync: the commit is durable only once a later
    /// durable commit succeeds. For bulk loads that end with a durable commit.
    pub fn write_lazy<T>(
        &self,
        f: impl FnOnce(&mut LogTxn<'_>) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        self.write_with(Durability::None, f)
    }

    /// Makes every commit before it durable (one fsync): the end of a run of
    /// [`EventLog::write_lazy`] commits whose results nobody may rely on before it returns (a
    /// group of sends, say). redb keeps lazy commits in memory and writes them with the next
    /// durable commit, all or nothing: a crash before this returns loses the whole run.
    pub fn sync(&self) -> Result<(), LogError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        self.count_durable(Durability::Immediate);
        Ok(())
    }

    /// Durable commits (each one fsync) made through this handle since it was opened: what a
    /// local action costs in syncs, for tests and benches.
    pub fn durable_commits(&self) -> u64 {
        self.durable_commits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_durable(&self, durability: Durability) {
        if matches!(durability, Durability::Immediate) {
            self.durable_commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn write_with<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&mut LogTxn<'_>) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        let out = {
            let mut t = LogTxn::open(&txn)?;
            let out = f(&mut t)?;
            t.finish()?;
            out
        };
        txn.commit()?;
        self.count_durable(durability);
        Ok(out)
    }

    /// Appends verified events in one durable transaction. Idempotent by event id.
    pub fn append(&self, events: &[Event]) -> Result<Vec<Appended>, LogError> {
        self.write(|t| events.iter().map(|e| t.append(e)).collect())
    }

    /// An event by id.
    pub fn get(&self, id: &EventId) -> Result<Option<Event>, LogError> {
        let txn = self.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let Some(guard) = events.get(&id.0)? else {
            return Ok(None);
        };
        let (_, bytes) = guard.value();
        Event::decode_trusted(bytes)
            .map(Some)
            .map_err(|e| corrupt("events", e))
    }

    /// True when the event is stored.
    pub fn contains(&self, id: &EventId) -> Result<bool, LogError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(EVENTS)?.get(&id.0)?.is_some())
    }

    /// The highest log position, 0 for an empty log.
    pub fn head(&self) -> Result<u64, LogError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(LOG)?
            .last()?
            .map(|(k, _)| k.value())
            .unwrap_or(0))
    }

    /// Events of a conversation after log position `after`, in log order, with their positions.
    pub fn conversation_events(
        &self,
        conversation: ConversationId,
        after: u64,
    ) -> Result<Vec<(u64, Event)>, LogError> {
        let txn = self.db.begin_read()?;
        let conv_log = txn.open_table(CONV_LOG)?;
        let events = txn.open_table(EVENTS)?;
        let mut out = Vec::new();
        let lo = (&conversation.0, after.saturating_add(1));
        let hi = (&conversation.0, u64::MAX);
        for row in conv_log.range(lo..=hi)? {
            let (k, id) = row?;
            let (_, pos) = k.value();
            let guard = events
                .get(id.value())?
                .ok_or_else(|| corrupt("conv_log", "points at a missing event"))?;
            let ev = Event::decode_trusted(guard.value().1).map_err(|e| corrupt("events", e))?;
            out.push((pos, ev));
        }
        Ok(out)
    }

    /// Every conversation with its facts.
    pub fn conversations(&self) -> Result<Vec<(ConversationId, ConversationMeta)>, LogError> {
        self.reader().conversations()
    }

    /// Facts of one conversation.
    pub fn conversation_meta(
        &self,
        conversation: ConversationId,
    ) -> Result<Option<ConversationMeta>, LogError> {
        let txn = self.db.begin_read()?;
        read_meta(&txn.open_table(CONVS)?, &conversation)
    }

    /// Every membership change the gate admitted in a conversation, in server order.
    pub fn membership_history(
        &self,
        conversation: ConversationId,
    ) -> Result<MembershipHistory, LogError> {
        let txn = self.db.begin_read()?;
        read_history(&txn.open_table(MEMBERSHIPS)?, &conversation)
    }

    /// Every fork, broken link, equivocation and head mismatch this log found (the first
    /// [`MAX_CHAIN_REPORTS`]), in the order found. A device reports them again when it starts:
    /// the process that found one may have died before the app took the report.
    pub fn chain_reports(&self) -> Result<Vec<ChainIssue>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CHAIN_REPORTS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(postcard::from_bytes(v.value()).map_err(|e| corrupt("chain_reports", e))?);
        }
        Ok(out)
    }

    /// The id of the relay statement placing `seq` in `conversation` (the relay's chain head
    /// there, as this device was shown it), if the log holds it.
    pub fn statement_at(
        &self,
        conversation: ConversationId,
        seq: ServerSeq,
    ) -> Result<Option<EventId>, LogError> {
        let txn = self.db.begin_read()?;
        covering_statement(&txn.open_table(STATEMENTS)?, &conversation, seq)
    }

    /// The last event of `device` in `conversation`: (counter, id).
    pub fn chain_head(
        &self,
        conversation: ConversationId,
        device: DeviceId,
    ) -> Result<Option<(u64, EventId)>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BY_AUTHOR)?;
        chain_head(&table, &conversation, &device)
    }

    /// Per author of the conversation, the places missing below the highest one the log holds
    /// (see [`ChainIssue::Gap`]). Empty when every chain is complete.
    pub fn chain_gaps(&self, conversation: ConversationId) -> Result<Vec<ChainIssue>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BY_AUTHOR)?;
        let c = &conversation.0;
        let mut out = Vec::new();
        let mut current: Option<(DeviceId, u64, Vec<u64>)> = None;
        let flush = |cur: Option<(DeviceId, u64, Vec<u64>)>, out: &mut Vec<ChainIssue>| {
            if let Some((author, _, missing)) = cur {
                if !missing.is_empty() {
                    out.push(ChainIssue::Gap {
                        conversation,
                        author,
                        missing,
                    });
                }
            }
        };
        for row in table.range((c, &[0u8; 32], 0u64)..=(c, &[0xFFu8; 32], u64::MAX))? {
            let (k, _) = row?;
            let (_, author, counter) = k.value();
            let author = DeviceId(*author);
            if current.as_ref().is_none_or(|(a, _, _)| *a != author) {
                flush(current.take(), &mut out);
                current = Some((author, 0, Vec::new()));
            }
            if let Some((_, last, missing)) = current.as_mut() {
                let mut n = *last + 1;
                while n < counter && missing.len() < MAX_GAP_REPORT {
                    missing.push(n);
                    n += 1;
                }
                *last = counter;
            }
        }
        flush(current, &mut out);
        Ok(out)
    }

    /// The outbox in send order.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(postcard::from_bytes(v.value()).map_err(|e| corrupt("outbox", e))?);
        }
        Ok(out)
    }

    /// Sequences that members' receipts cover but this log does not hold, between the first
    /// sequence it holds and the highest receipt, at most `limit` (the relay's announced
    /// sequence: past it, pushes may still be on their way). A device that joined later holds
    /// nothing before its first sequence, which is not a gap. `None` when nothing is missing.
    pub fn receipt_gap(
        &self,
        conversation: ConversationId,
        limit: ServerSeq,
    ) -> Result<Option<ChainIssue>, LogError> {
        let txn = self.db.begin_read()?;
        let marks = user_marks(&txn.open_table(MARKS)?, &conversation)?;
        let Some(up_to) = marks.values().map(|m| m.delivered.max(m.read)).max() else {
            return Ok(None);
        };
        let up_to = up_to.min(limit);
        let by_seq = txn.open_table(BY_SEQ)?;
        let c = &conversation.0;
        let mut expected = None;
        let mut missing = Vec::new();
        for row in by_seq.range((c, 0u64)..=(c, up_to))? {
            let (k, _) = row?;
            let (_, seq) = k.value();
            let mut next = expected.unwrap_or(seq);
            while next < seq && missing.len() < MAX_GAP_REPORT {
                missing.push(next);
                next += 1;
            }
            expected = Some(seq + 1);
        }
        if let Some(mut next) = expected {
            while next <= up_to && missing.len() < MAX_GAP_REPORT {
                missing.push(next);
                next += 1;
            }
        }
        Ok((!missing.is_empty()).then_some(ChainIssue::Withheld {
            conversation,
            receipt_up_to: up_to,
            missing,
        }))
    }

    /// Sequenced events of `conversation` past `after`, in server order, with their server
    /// timestamps; at most `limit` sequences are looked at. Past the gate these are events the
    /// log holds but cannot place yet (a sequence before them is missing).
    pub fn sequenced_after(
        &self,
        conversation: ConversationId,
        after: ServerSeq,
        limit: usize,
    ) -> Result<Vec<(ServerSeq, u64, Event)>, LogError> {
        let txn = self.db.begin_read()?;
        let by_seq = txn.open_table(BY_SEQ)?;
        let events = txn.open_table(EVENTS)?;
        let acks = txn.open_table(ACKS)?;
        let c = &conversation.0;
        let mut out = Vec::new();
        for row in by_seq
            .range((c, after.saturating_add(1))..=(c, u64::MAX))?
            .take(limit)
        {
            let (k, v) = row?;
            let (_, seq) = k.value();
            let id = *v.value();
            let Some(bytes) = events.get(&id)?.map(|g| g.value().1.to_vec()) else {
                continue;
            };
            let event = Event::decode_trusted(&bytes).map_err(|e| corrupt("events", e))?;
            let ts = acks.get(&id)?.map(|g| g.value().1).unwrap_or(0);
            out.push((seq, ts, event));
        }
        Ok(out)
    }

    /// The end of the run of sequences held right after `after` in `conversation`: the
    /// highest `s` such that every sequence in `after + 1..=s` is in the log (`after` itself
    /// when the next one is missing).
    pub fn contiguous_seq(
        &self,
        conversation: ConversationId,
        after: ServerSeq,
    ) -> Result<ServerSeq, LogError> {
        let txn = self.db.begin_read()?;
        let by_seq = txn.open_table(BY_SEQ)?;
        let c = &conversation.0;
        let mut end = after;
        for row in by_seq.range((c, after.saturating_add(1))..=(c, u64::MAX))? {
            let (k, _) = row?;
            let (_, seq) = k.value();
            if seq != end + 1 {
                break;
            }
            end = seq;
        }
        Ok(end)
    }

    /// The highest sequence in `after + 1..=up_to` of a message (`Send`) in `conversation` by
    /// a user other than `user`, from the index tables.
    pub fn message_from_others(
        &self,
        conversation: ConversationId,
        user: UserId,
        after: ServerSeq,
        up_to: ServerSeq,
    ) -> Result<Option<ServerSeq>, LogError> {
        if up_to <= after {
            return Ok(None);
        }
        let txn = self.db.begin_read()?;
        let by_seq = txn.open_table(MSG_BY_SEQ)?;
        let events = txn.open_table(EVENTS)?;
        let c = &conversation.0;
        for row in by_seq.range((c, after + 1)..=(c, up_to))?.rev() {
            let (k, id) = row?;
            let Some(guard) = events.get(id.value())? else {
                return Err(corrupt("msg_by_seq", "points at a missing event"));
            };
            let ev = Event::decode_trusted(guard.value().1).map_err(|e| corrupt("events", e))?;
            if ev.header().user != user {
                return Ok(Some(k.value().1));
            }
        }
        Ok(None)
    }

    /// A cursor's value (0 when never set).
    pub fn cursor(&self, name: &[u8]) -> Result<u64, LogError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(CURSORS)?
            .get(name)?
            .map(|g| g.value())
            .unwrap_or(0))
    }

    /// Watermarks of one device in a conversation: (delivered, read).
    pub fn device_marks(
        &self,
        conversation: ConversationId,
        device: DeviceId,
    ) -> Result<(ServerSeq, ServerSeq), LogError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(MARKS)?
            .get((&conversation.0, &device.0))?
            .map(|g| (g.value().1, g.value().2))
            .unwrap_or((0, 0)))
    }

    /// The latest snapshot of a conversation's head document: (log position covered by every
    /// document of the conversation, bytes).
    pub fn snapshot(
        &self,
        conversation: ConversationId,
    ) -> Result<Option<(u64, Vec<u8>)>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        Ok(table.get((&conversation.0, HEAD_PART))?.map(|g| {
            let (pos, bytes) = g.value();
            (pos, bytes.to_vec())
        }))
    }

    /// The latest snapshot of every document of a conversation: the log position they cover
    /// (the head's), and each document's bytes by part number. `None` without a head row.
    pub fn snapshot_parts(
        &self,
        conversation: ConversationId,
    ) -> Result<Option<SnapshotParts>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let c = &conversation.0;
        let Some(position) = table.get((c, HEAD_PART))?.map(|g| g.value().0) else {
            return Ok(None);
        };
        let mut parts = Vec::new();
        for row in table.range((c, 0u64)..=(c, u64::MAX))? {
            let (k, v) = row?;
            parts.push((k.value().1, v.value().1.to_vec()));
        }
        Ok(Some((position, parts)))
    }

    /// The server seq and timestamp an event was acknowledged with.
    pub fn ack_of(&self, event: &EventId) -> Result<Option<(ServerSeq, u64)>, LogError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(ACKS)?
            .get(&event.0)?
            .map(|g| (g.value().0, g.value().1)))
    }

    /// A conversation's gate as it was last saved (the default before any event was judged).
    pub fn gate(&self, conversation: ConversationId) -> Result<Gate, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(GATES)?;
        match table.get(&conversation.0)? {
            Some(g) => postcard::from_bytes(g.value()).map_err(|e| corrupt("gates", e)),
            None => Ok(Gate::default()),
        }
    }

    /// Conversations whose gate stopped before an event the log holds (waiting for a device
    /// certificate): the next sequence after the gate's `through` is in the log.
    pub fn stalled_gates(&self) -> Result<Vec<ConversationId>, LogError> {
        let txn = self.db.begin_read()?;
        let convs = txn.open_table(CONVS)?;
        let gates = txn.open_table(GATES)?;
        let by_seq = txn.open_table(BY_SEQ)?;
        let mut out = Vec::new();
        for row in convs.iter()? {
            let (k, _) = row?;
            let c = k.value();
            let through = match gates.get(c)? {
                Some(g) => {
                    let gate: Gate =
                        postcard::from_bytes(g.value()).map_err(|e| corrupt("gates", e))?;
                    gate.through
                }
                None => 0,
            };
            if by_seq.get((c, through.saturating_add(1)))?.is_some() {
                out.push(ConversationId(*c));
            }
        }
        Ok(out)
    }

    /// The stored (sealed) epoch keys of a conversation.
    pub fn epoch_keys(
        &self,
        conversation: ConversationId,
    ) -> Result<Vec<(EventId, Vec<u8>)>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EPOCH_KEYS)?;
        let c = &conversation.0;
        let mut out = Vec::new();
        for row in table.range((c, &[0u8; 32])..=(c, &[0xFFu8; 32]))? {
            let (k, v) = row?;
            out.push((EventId(*k.value().1), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Why the gate refused an event, if it did.
    pub fn refusal(&self, event: &EventId) -> Result<Option<String>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REFUSED)?;
        Ok(table.get(&event.0)?.map(|g| g.value().1.to_owned()))
    }

    /// Every certificate and revocation this device took into its directory.
    pub fn directory(&self) -> Result<(Vec<DeviceRegistration>, Vec<DeviceRevocation>), LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DIRECTORY)?;
        let (mut certs, mut revs) = (Vec::new(), Vec::new());
        for row in table.iter()? {
            let (k, v) = row?;
            if k.value().1 == 0 {
                certs.push(postcard::from_bytes(v.value()).map_err(|e| corrupt("directory", e))?);
            } else {
                revs.push(postcard::from_bytes(v.value()).map_err(|e| corrupt("directory", e))?);
            }
        }
        Ok((certs, revs))
    }
}

/// One write transaction over the log's tables. Every table is opened once per transaction,
/// and per-conversation facts are cached and written back once, at the end.
pub struct LogTxn<'a> {
    events: redb::Table<'a, Id32, (u64, &'static [u8])>,
    log: redb::Table<'a, u64, Id32>,
    conv_log: redb::Table<'a, (Conv, u64), Id32>,
    by_author: redb::Table<'a, AuthorKey, Id32>,
    by_seq: redb::Table<'a, (Conv, u64), Id32>,
    msg_by_seq: redb::Table<'a, (Conv, u64), Id32>,
    msg_by_id: redb::Table<'a, UnseqKey, Id32>,
    unsequenced: redb::Table<'a, UnseqKey, (u64, Id32)>,
    acks: redb::Table<'a, Id32, (u64, u64, Id32)>,
    marks: redb::Table<'a, (Conv, Id32), MarksValue>,
    convs: redb::Table<'a, Conv, &'static [u8]>,
    outbox: redb::Table<'a, u64, &'static [u8]>,
    outbox_by_event: redb::Table<'a, Id32, u64>,
    cursors: redb::Table<'a, &'static [u8], u64>,
    snapshots: redb::Table<'a, (Conv, u64), SnapshotValue>,
    gates: redb::Table<'a, Conv, &'static [u8]>,
    held: redb::Table<'a, Id32, ()>,
    refused: redb::Table<'a, Id32, (Conv, &'static str)>,
    directory: redb::Table<'a, (Id32, u8), &'static [u8]>,
    epoch_keys: redb::Table<'a, (Conv, Id32), &'static [u8]>,
    memberships: redb::Table<'a, (Conv, u64), &'static [u8]>,
    waiting: redb::Table<'a, (Id32, Conv), u64>,
    statements: redb::Table<'a, (Conv, u64), (Id32, u64)>,
    chain_reports: redb::Table<'a, u64, &'static [u8]>,
    metas: HashMap<ConversationId, ConversationMeta>,
    /// Next fold position per conversation, once looked up.
    fold_next: HashMap<ConversationId, u64>,
    next_position: Option<u64>,
    dequeued: Vec<EventId>,
    chain_issues: Vec<ChainIssue>,
}

impl std::fmt::Debug for LogTxn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogTxn")
    }
}

impl<'a> LogTxn<'a> {
    fn open(txn: &'a redb::WriteTransaction) -> Result<LogTxn<'a>, LogError> {
        Ok(LogTxn {
            events: txn.open_table(EVENTS)?,
            log: txn.open_table(LOG)?,
            conv_log: txn.open_table(CONV_LOG)?,
            by_author: txn.open_table(BY_AUTHOR)?,
            by_seq: txn.open_table(BY_SEQ)?,
            msg_by_seq: txn.open_table(MSG_BY_SEQ)?,
            msg_by_id: txn.open_table(MSG_BY_ID)?,
            unsequenced: txn.open_table(UNSEQUENCED)?,
            acks: txn.open_table(ACKS)?,
            marks: txn.open_table(MARKS)?,
            convs: txn.open_table(CONVS)?,
            outbox: txn.open_table(OUTBOX)?,
            outbox_by_event: txn.open_table(OUTBOX_BY_EVENT)?,
            cursors: txn.open_table(CURSORS)?,
            snapshots: txn.open_table(SNAPSHOTS)?,
            gates: txn.open_table(GATES)?,
            held: txn.open_table(HELD)?,
            refused: txn.open_table(REFUSED)?,
            directory: txn.open_table(DIRECTORY)?,
            epoch_keys: txn.open_table(EPOCH_KEYS)?,
            memberships: txn.open_table(MEMBERSHIPS)?,
            waiting: txn.open_table(WAITING)?,
            statements: txn.open_table(STATEMENTS)?,
            chain_reports: txn.open_table(CHAIN_REPORTS)?,
            metas: HashMap::new(),
            fold_next: HashMap::new(),
            next_position: None,
            dequeued: Vec::new(),
            chain_issues: Vec::new(),
        })
    }

    /// Writes back the cached per-conversation facts.
    fn finish(mut self) -> Result<(), LogError> {
        for (conv, meta) in std::mem::take(&mut self.metas) {
            self.convs.insert(&conv.0, encode(&meta).as_slice())?;
        }
        Ok(())
    }

    fn meta_mut(
        &mut self,
        conversation: ConversationId,
    ) -> Result<&mut ConversationMeta, LogError> {
        if !self.metas.contains_key(&conversation) {
            let meta = read_meta(&self.convs, &conversation)?.unwrap_or_default();
            self.metas.insert(conversation, meta);
        }
        self.metas
            .get_mut(&conversation)
            .ok_or_else(|| corrupt("conversations", "cache miss"))
    }

    /// Appends one verified event, updates every index and admits it to its conversation's
    /// fold at once (for the device's own events, relay acks and tests). A duplicate writes
    /// nothing.
    ///
    /// A relay statement that gives a sequence to another event than a statement this log
    /// already holds (the relay equivocated) is stored as evidence and reported
    /// ([`ChainIssue::Equivocation`]), but never folded: the places shown first stay, and the
    /// view never holds two messages claiming one sequence (one of them would vanish).
    pub fn append(&mut self, event: &Event) -> Result<Appended, LogError> {
        let contested = if event.kind().is_sequencing() && !self.contains_event(event)? {
            self.contested_places(event)?
        } else {
            Vec::new()
        };
        if !self.store(event)? {
            return Ok(Appended::Duplicate);
        }
        if !contested.is_empty() {
            self.chain_issues.extend(contested);
            return Ok(Appended::Held);
        }
        let position = self.admit(event)?;
        Ok(Appended::New { position })
    }

    fn contains_event(&self, event: &Event) -> Result<bool, LogError> {
        Ok(self.events.get(&event.id().0)?.is_some())
    }

    /// The places `statement` gives that a statement this log holds gives to another event.
    fn contested_places(&self, statement: &Event) -> Result<Vec<ChainIssue>, LogError> {
        let conversation = statement.conversation();
        let mut issues = Vec::new();
        // The statement holding the previous place, decoded once for the places it covers.
        let mut held: Option<(EventId, Vec<Placement>)> = None;
        for p in statement.placements() {
            let Some(other) = covering_statement(&self.statements, &conversation, p.seq)? else {
                continue;
            };
            if other == statement.id() {
                continue;
            }
            if held.as_ref().is_none_or(|(id, _)| *id != other) {
                let Some(g) = self.events.get(&other.0)? else {
                    continue;
                };
                let ev = Event::decode_trusted(g.value().1).map_err(|e| corrupt("events", e))?;
                held = Some((other, ev.placements()));
            }
            let theirs = held
                .as_ref()
                .and_then(|(_, places)| places.iter().find(|q| q.seq == p.seq))
                .map(|q| q.event);
            if let Some(first) = theirs.filter(|e| *e != p.event) {
                issues.push(ChainIssue::Equivocation {
                    conversation,
                    seq: p.seq,
                    first,
                    second: p.event,
                });
            }
        }
        Ok(issues)
    }

    /// Appends one verified event of another device: stored and chain-checked now, folded only
    /// once the conversation's gate passed it (relay acks are admitted at once: they come from
    /// a pinned key and carry no content of their own).
    pub fn append_held(&mut self, event: &Event) -> Result<Appended, LogError> {
        if event.kind().is_sequencing() {
            return self.append(event);
        }
        if !self.store(event)? {
            return Ok(Appended::Duplicate);
        }
        self.held.insert(&event.id().0, ())?;
        Ok(Appended::Held)
    }

    /// Writes the event and its append-time indexes. False for a duplicate.
    fn store(&mut self, event: &Event) -> Result<bool, LogError> {
        let id = event.id();
        if self.events.get(&id.0)?.is_some() {
            return Ok(false);
        }
        let position = match self.next_position {
            Some(p) => p,
            None => self.log.last()?.map(|(k, _)| k.value()).unwrap_or(0) + 1,
        };
        self.next_position = Some(position + 1);
        self.log.insert(position, &id.0)?;
        self.events.insert(&id.0, (position, event.bytes()))?;
        let h = event.header();
        let mut placed = Vec::new();
        for row in self
            .waiting
            .range((&id.0, &[0u8; 16])..=(&id.0, &[0xffu8; 16]))?
        {
            let (k, v) = row?;
            placed.push((*k.value().1, v.value()));
        }
        for (c, seq) in placed {
            self.waiting.remove((&id.0, &c))?;
            self.by_seq.insert((&c, seq), &id.0)?;
        }
        match event.last_placed() {
            Some(last) => self.check_statement_chain(event, last)?,
            None => self.check_chain(event)?,
        }
        let meta = self.meta_mut(h.conversation)?;
        meta.max_lamport = meta.max_lamport.max(h.lamport);
        meta.n_events += 1;
        Ok(true)
    }

    /// Puts a stored event in its conversation's fold order and updates the view indexes.
    fn admit(&mut self, event: &Event) -> Result<u64, LogError> {
        let id = event.id();
        let h = event.header();
        let conv = h.conversation;
        let c = &conv.0;
        let position = match self.fold_next.get(&conv) {
            Some(p) => *p,
            None => {
                self.conv_log
                    .range((c, 0u64)..=(c, u64::MAX))?
                    .next_back()
                    .transpose()?
                    .map(|(k, _)| k.value().1)
                    .unwrap_or(0)
                    + 1
            }
        };
        self.fold_next.insert(conv, position + 1);
        self.conv_log.insert((c, position), &id.0)?;
        match event.kind() {
            EventKind::Create { members } => {
                let meta = self.meta_mut(conv)?;
                if meta.members.is_none() {
                    meta.members = Some((id, members.clone()));
                }
            }
            EventKind::Send { message, .. } => {
                if self.msg_by_id.get((c, &message.0))?.is_none() {
                    self.msg_by_id.insert((c, &message.0), &id.0)?;
                }
                match self.acks.get(&id.0)?.map(|g| g.value().0) {
                    Some(seq) => {
                        self.msg_by_seq.insert((c, seq), &id.0)?;
                    }
                    None => {
                        self.unsequenced
                            .insert((c, &message.0), (h.lamport, &id.0))?;
                    }
                }
            }
            EventKind::ServerAck { .. } | EventKind::Sequenced { .. } => {
                let placements = event.placements();
                if let Some(last) = placements.last() {
                    let meta = self.meta_mut(conv)?;
                    meta.max_seq = meta.max_seq.max(last.seq);
                }
                for p in placements {
                    self.record_ack(conv, p, id)?;
                }
            }
            EventKind::Delivered { up_to, head } | EventKind::Read { up_to, head } => {
                if let Some(theirs) = *head {
                    let ours = covering_statement(&self.statements, &conv, *up_to)?;
                    if let Some(ours) = ours.filter(|o| *o != theirs) {
                        self.chain_issues.push(ChainIssue::HeadMismatch {
                            conversation: conv,
                            seq: *up_to,
                            ours,
                            theirs,
                            device: h.author,
                        });
                    }
                }
                let read = matches!(event.kind(), EventKind::Read { .. });
                let (d, r) = self
                    .marks
                    .get((c, &h.author.0))?
                    .map(|g| (g.value().1, g.value().2))
                    .unwrap_or((0, 0));
                let (d, r) = if read {
                    (d.max(*up_to), r.max(*up_to))
                } else {
                    (d.max(*up_to), r)
                };
                self.marks.insert((c, &h.author.0), (&h.user.0, d, r))?;
            }
            _ => {}
        }
        Ok(position)
    }

    /// Walks `conversation`'s sequenced events in server order from where its gate stopped,
    /// judging each one (see [`crate::gate`]), until a sequence the log lacks or an author
    /// the directory does not know. Admitted events of others join the fold order; refused
    /// ones are recorded and stay out of every view.
    pub fn advance_gate(
        &mut self,
        conversation: ConversationId,
        directory: &DeviceDirectory,
        me: DeviceId,
        lookup: &dyn Fn(&UserId) -> crate::gate::AuthorLookup,
    ) -> Result<GateRun, LogError> {
        let c = &conversation.0;
        let mut gate: Gate = match self.gates.get(c)? {
            Some(g) => postcard::from_bytes(g.value()).map_err(|e| corrupt("gates", e))?,
            None => Gate::default(),
        };
        let start = gate.through;
        let mut run = GateRun::default();
        loop {
            let seq = gate.through + 1;
            let Some(id) = self.by_seq.get((c, seq))?.map(|g| *g.value()) else {
                break;
            };
            let Some(bytes) = self.events.get(&id)?.map(|g| g.value().1.to_vec()) else {
                break;
            };
            let event = Event::decode_trusted(&bytes).map_err(|e| corrupt("events", e))?;
            let ts = self.acks.get(&id)?.map(|g| g.value().1).unwrap_or(0);
            // An ack in this conversation for an event of another one: the relay moved it.
            // Judged here it would be admitted into its own conversation's fold under this
            // conversation's membership.
            let foreign = event.conversation() != conversation;
            let verdict = if foreign {
                Verdict::Refuse(Refusal::OtherConversation(event.conversation()))
            } else {
                gate.judge(&event, seq, ts, directory, me, lookup)
            };
            match verdict {
                Verdict::Admit { membership_changed } => {
                    if membership_changed {
                        run.changes.push((seq, gate.members()));
                    }
                    // Own events, and events stored before gates existed, were admitted
                    // when they were written.
                    if self.held.remove(&id)?.is_some() && event.header().author != me {
                        let position = self.admit(&event)?;
                        run.admitted.push((position, event));
                    }
                }
                Verdict::Refuse(refusal) => {
                    if !foreign {
                        self.held.remove(&id)?;
                    }
                    self.msg_by_seq.remove((c, seq))?;
                    let text = refusal.to_string();
                    self.refused.insert(&id, (c, text.as_str()))?;
                    run.refused.push((event, refusal));
                }
                Verdict::Wait(user) => {
                    run.waiting = Some(user);
                    break;
                }
            }
            gate.through = seq;
        }
        if !run.changes.is_empty() {
            let members = gate.members();
            let meta = self.meta_mut(conversation)?;
            let create = gate.created_by.unwrap_or(EventId([0; 32]));
            meta.members = Some((create, members));
            for (seq, members) in &run.changes {
                self.memberships
                    .insert((c, *seq), encode(members).as_slice())?;
            }
        }
        if gate.through != start || !run.changes.is_empty() {
            self.gates.insert(c, encode(&gate).as_slice())?;
        }
        run.gate = gate;
        Ok(run)
    }

    fn record_ack(
        &mut self,
        conversation: ConversationId,
        placement: Placement,
        ack_id: EventId,
    ) -> Result<(), LogError> {
        let Placement {
            event: acked,
            message,
            seq,
            server_ts_ms: ts,
        } = placement;
        let c = &conversation.0;
        // The place in this conversation's order, whatever other acks name the event: a
        // relay that acked it in another conversation first must not leave a hole here
        // (the gate refuses it there, see `advance_gate`, and judges it here). An event the
        // log does not hold yet waits for it: the gap-free cursor counts `by_seq` rows.
        if self.events.get(&acked.0)?.is_some() {
            let before = self
                .by_seq
                .insert((c, seq), &acked.0)?
                .map(|g| EventId(*g.value()));
            if let Some(before) = before.filter(|b| *b != acked) {
                // Two signed statements give one place to two events: the relay showed
                // two histories. The first keeps the place.
                self.by_seq.insert((c, seq), &before.0)?;
                self.chain_issues.push(ChainIssue::Equivocation {
                    conversation,
                    seq,
                    first: before,
                    second: acked,
                });
                return Ok(());
            }
        } else {
            self.waiting.insert((&acked.0, c), seq)?;
        }
        if self.acks.get(&acked.0)?.is_some_and(|g| g.value().0 <= seq) {
            return Ok(());
        }
        self.acks.insert(&acked.0, (seq, ts, &ack_id.0))?;
        // A Send that is already stored moves from the unsequenced to the sequenced index;
        // one stored later finds this ack when it is appended. (The ack names the message:
        // acks come from the trusted relay.)
        if let Some(message) = message {
            if self.events.get(&acked.0)?.is_some() && self.held.get(&acked.0)?.is_none() {
                self.unsequenced.remove((c, &message.0))?;
                self.msg_by_seq.insert((c, seq), &acked.0)?;
            }
        }
        // The relay has it: the outbox is done with it.
        let pos = self.outbox_by_event.remove(&acked.0)?.map(|g| g.value());
        if let Some(pos) = pos {
            self.outbox.remove(pos)?;
            self.dequeued.push(acked);
        }
        Ok(())
    }

    /// Events that left the outbox in this transaction because the relay acknowledged them.
    pub fn take_dequeued(&mut self) -> Vec<EventId> {
        std::mem::take(&mut self.dequeued)
    }

    /// Stores a sealed epoch key record (replacing an older record of the epoch).
    pub fn put_epoch_key(
        &mut self,
        conversation: ConversationId,
        epoch: EventId,
        sealed: &[u8],
    ) -> Result<(), LogError> {
        self.epoch_keys
            .insert((&conversation.0, &epoch.0), sealed)?;
        Ok(())
    }

    /// Keeps a verified certificate (replacing an older one of the device) or revocation.
    pub fn put_statement(
        &mut self,
        statement: Result<&DeviceRegistration, &DeviceRevocation>,
    ) -> Result<(), LogError> {
        let table = &mut self.directory;
        match statement {
            Ok(cert) => table.insert((&cert.device.0, 0u8), encode(cert).as_slice())?,
            Err(rev) => table.insert((&rev.device.0, 1u8), encode(rev).as_slice())?,
        };
        Ok(())
    }

    /// Breaks in authors' chains found by the appends of this transaction. Forks, broken
    /// links, equivocations and head mismatches are also kept in the log, within
    /// [`MAX_CHAIN_REPORTS`] (see [`EventLog::chain_reports`]).
    pub fn take_chain_issues(&mut self) -> Result<Vec<ChainIssue>, LogError> {
        let issues = std::mem::take(&mut self.chain_issues);
        let mut next = self.chain_reports.last()?.map_or(0, |(k, _)| k.value() + 1);
        for issue in &issues {
            if next >= MAX_CHAIN_REPORTS {
                break;
            }
            if matches!(issue, ChainIssue::Gap { .. } | ChainIssue::Withheld { .. }) {
                continue;
            }
            self.chain_reports.insert(next, encode(issue).as_slice())?;
            next += 1;
        }
        Ok(issues)
    }

    /// Indexes `event` at its place in its author's chain, and records a [`ChainIssue`] when
    /// that place is taken by another event, or when `prev` does not name the author's event
    /// before it (checked both ways: against the one before, and the one after if it arrived
    /// first). The event is stored either way: the issue is reported, the first event at a
    /// place keeps the index.
    fn check_chain(&mut self, event: &Event) -> Result<(), LogError> {
        let id = event.id();
        let h = event.header();
        let (conversation, author, counter) = (h.conversation, h.author, h.counter);
        let c = &conversation.0;
        let taken = self
            .by_author
            .get((c, &author.0, counter))?
            .map(|g| EventId(*g.value()));
        match taken {
            Some(first) if first != id => {
                self.chain_issues.push(ChainIssue::Fork {
                    conversation,
                    author,
                    counter,
                    first,
                    second: id,
                });
                return Ok(());
            }
            Some(_) => return Ok(()),
            None => {
                self.by_author.insert((c, &author.0, counter), &id.0)?;
            }
        }
        let broken = |found: Option<EventId>| ChainIssue::BrokenLink {
            conversation,
            author,
            counter,
            prev: h.prev,
            found,
        };
        // The first event of a chain names no predecessor; every other one does.
        if (counter <= 1) != h.prev.is_none() {
            self.chain_issues.push(broken(None));
            return Ok(());
        }
        if counter > 1 {
            let before = self
                .by_author
                .get((c, &author.0, counter - 1))?
                .map(|g| EventId(*g.value()));
            if let Some(before) = before {
                if Some(before) != h.prev {
                    self.chain_issues.push(broken(Some(before)));
                }
            }
        }
        let after = self
            .by_author
            .get((c, &author.0, counter.saturating_add(1)))?
            .map(|g| EventId(*g.value()));
        if let Some(after) = after {
            if let Some(g) = self.events.get(&after.0)? {
                let next = Event::decode_trusted(g.value().1).map_err(|e| corrupt("events", e))?;
                if next.header().prev != Some(id) {
                    self.chain_issues.push(ChainIssue::BrokenLink {
                        conversation,
                        author,
                        counter: counter + 1,
                        prev: next.header().prev,
                        found: Some(id),
                    });
                }
            }
        }
        Ok(())
    }

    /// Indexes a relay statement by the last sequence it places, and records a [`ChainIssue`]
    /// when another statement ends at the same sequence (the relay signed two histories), or
    /// when `prev` does not name the statement that ends right before its first sequence
    /// (checked both ways, as for authors' chains).
    fn check_statement_chain(&mut self, event: &Event, last: ServerSeq) -> Result<(), LogError> {
        let id = event.id();
        let h = event.header();
        let (conversation, author, first) = (h.conversation, h.author, h.counter);
        let c = &conversation.0;
        let taken = self
            .statements
            .get((c, last))?
            .map(|g| EventId(*g.value().0));
        match taken {
            Some(other) if other != id => {
                self.chain_issues.push(ChainIssue::Fork {
                    conversation,
                    author,
                    counter: last,
                    first: other,
                    second: id,
                });
                return Ok(());
            }
            Some(_) => return Ok(()),
            None => {
                self.statements.insert((c, last), (&id.0, first))?;
            }
        }
        if (first <= 1) != h.prev.is_none() {
            self.chain_issues.push(ChainIssue::BrokenLink {
                conversation,
                author,
                counter: first,
                prev: h.prev,
                found: None,
            });
            return Ok(());
        }
        if first > 1 {
            if let Some(before) = self
                .statements
                .get((c, first - 1))?
                .map(|g| EventId(*g.value().0))
            {
                if Some(before) != h.prev {
                    self.chain_issues.push(ChainIssue::BrokenLink {
                        conversation,
                        author,
                        counter: first,
                        prev: h.prev,
                        found: Some(before),
                    });
                }
            }
        }
        let after = self
            .statements
            .range((c, last.saturating_add(1))..=(c, u64::MAX))?
            .next()
            .transpose()?
            .map(|(_, v)| EventId(*v.value().0));
        if let Some(after) = after {
            if let Some(g) = self.events.get(&after.0)? {
                let next = Event::decode_trusted(g.value().1).map_err(|e| corrupt("events", e))?;
                let nh = next.header();
                if nh.counter == last.saturating_add(1) && nh.prev != Some(id) {
                    self.chain_issues.push(ChainIssue::BrokenLink {
                        conversation,
                        author,
                        counter: nh.counter,
                        prev: nh.prev,
                        found: Some(id),
                    });
                }
            }
        }
        Ok(())
    }

    /// Queues an event for the relay, at the end of the outbox.
    pub fn enqueue(&mut self, event: &Event, now_ms: u64) -> Result<OutboxEntry, LogError> {
        if let Some(pos) = self.outbox_by_event.get(&event.id().0)?.map(|g| g.value()) {
            if let Some(v) = self.outbox.get(pos)? {
                return postcard::from_bytes(v.value()).map_err(|e| corrupt("outbox", e));
            }
        }
        let position = self.outbox.last()?.map(|(k, _)| k.value()).unwrap_or(0) + 1;
        let entry = OutboxEntry {
            position,
            event: event.id(),
            conversation: event.conversation(),
            message: match event.kind() {
                EventKind::Send { message, .. } => Some(*message),
                _ => None,
            },
            attempts: 0,
            next_attempt_ms: now_ms,
            state: OutboxState::Queued,
        };
        self.outbox.insert(position, encode(&entry).as_slice())?;
        self.outbox_by_event.insert(&event.id().0, position)?;
        Ok(entry)
    }

    /// Rewrites an outbox entry (attempt count, next attempt, state). Gone entries are ignored.
    pub fn update_outbox(&mut self, entry: &OutboxEntry) -> Result<bool, LogError> {
        // The position alone does not say the entry is still there: positions start again at
        // 1 once the outbox empties, so a stale copy of an acknowledged entry would overwrite
        // whichever event was queued at its old position since.
        let current = self.outbox_by_event.get(&entry.event.0)?.map(|g| g.value());
        if current != Some(entry.position) {
            return Ok(false);
        }
        self.outbox
            .insert(entry.position, encode(entry).as_slice())?;
        Ok(true)
    }

    /// Whether the relay acknowledged this event.
    pub fn ack_of(&self, event: &EventId) -> Result<Option<(ServerSeq, u64)>, LogError> {
        Ok(self.acks.get(&event.0)?.map(|g| (g.value().0, g.value().1)))
    }

    /// The last event of `device` in `conversation`: (counter, id).
    pub fn chain_head(
        &self,
        conversation: ConversationId,
        device: DeviceId,
    ) -> Result<Option<(u64, EventId)>, LogError> {
        chain_head(&self.by_author, &conversation, &device)
    }

    /// Facts of one conversation, as of this transaction.
    pub fn conversation_meta(
        &mut self,
        conversation: ConversationId,
    ) -> Result<Option<ConversationMeta>, LogError> {
        match self.metas.get(&conversation) {
            Some(m) => Ok(Some(m.clone())),
            None => read_meta(&self.convs, &conversation),
        }
    }

    /// Watermarks of one device in a conversation: (delivered, read).
    pub fn device_marks(
        &self,
        conversation: ConversationId,
        device: DeviceId,
    ) -> Result<(ServerSeq, ServerSeq), LogError> {
        Ok(self
            .marks
            .get((&conversation.0, &device.0))?
            .map(|g| (g.value().1, g.value().2))
            .unwrap_or((0, 0)))
    }

    /// Sets a cursor.
    pub fn set_cursor(&mut self, name: &[u8], value: u64) -> Result<(), LogError> {
        self.cursors.insert(name, value)?;
        Ok(())
    }

    /// A cursor's value (0 when never set).
    pub fn cursor(&self, name: &[u8]) -> Result<u64, LogError> {
        Ok(self.cursors.get(name)?.map(|g| g.value()).unwrap_or(0))
    }

    /// Stores a conversation's head document as of log position `position`.
    pub fn put_snapshot(
        &mut self,
        conversation: ConversationId,
        position: u64,
        bytes: &[u8],
    ) -> Result<(), LogError> {
        self.put_snapshot_part(conversation, HEAD_PART, position, bytes)
    }

    /// Stores one document of a conversation (by part number, `u64::MAX` for the head) as of
    /// log position `position`.
    pub fn put_snapshot_part(
        &mut self,
        conversation: ConversationId,
        part: u64,
        position: u64,
        bytes: &[u8],
    ) -> Result<(), LogError> {
        self.snapshots
            .insert((&conversation.0, part), (position, bytes))?;
        Ok(())
    }

    /// Drops every document snapshot of a conversation (they will be rebuilt from the log).
    pub fn drop_snapshot(&mut self, conversation: ConversationId) -> Result<(), LogError> {
        let c = &conversation.0;
        self.snapshots
            .retain_in((c, 0u64)..=(c, u64::MAX), |_, _| false)?;
        Ok(())
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard into a Vec fails only when a Serialize impl errors; these derive it.
    postcard::to_stdvec(value).unwrap_or_default()
}

fn read_meta(
    table: &impl ReadableTable<&'static [u8; 16], &'static [u8]>,
    conversation: &ConversationId,
) -> Result<Option<ConversationMeta>, LogError> {
    match table.get(&conversation.0)? {
        Some(v) => postcard::from_bytes(v.value())
            .map(Some)
            .map_err(|e| corrupt("conversations", e)),
        None => Ok(None),
    }
}

fn chain_head(
    table: &impl ReadableTable<AuthorKey, Id32>,
    conversation: &ConversationId,
    device: &DeviceId,
) -> Result<Option<(u64, EventId)>, LogError> {
    let lo = (&conversation.0, &device.0, 0u64);
    let hi = (&conversation.0, &device.0, u64::MAX);
    Ok(table
        .range(lo..=hi)?
        .next_back()
        .transpose()?
        .map(|(k, v)| {
            let (_, _, counter) = k.value();
            (counter, EventId(*v.value()))
        }))
}

/// Format 3 added `msg_by_id`: fills it from the two message listings of an older log (one
/// decode per sequenced message, once).
fn migrate_msg_by_id(txn: &redb::WriteTransaction) -> Result<(), LogError> {
    let mut by_id = txn.open_table(MSG_BY_ID)?;
    let events = txn.open_table(EVENTS)?;
    for row in txn.open_table(UNSEQUENCED)?.iter()? {
        let (k, v) = row?;
        let (c, m) = k.value();
        by_id.insert((c, m), v.value().1)?;
    }
    for row in txn.open_table(MSG_BY_SEQ)?.iter()? {
        let (k, id) = row?;
        let (c, _) = k.value();
        let Some(g) = events.get(id.value())? else {
            return Err(corrupt("msg_by_seq", "points at a missing event"));
        };
        let ev = Event::decode_trusted(g.value().1).map_err(|e| corrupt("events", e))?;
        if let EventKind::Send { message, .. } = ev.kind() {
            by_id.insert((c, &message.0), id.value())?;
        }
    }
    Ok(())
}

impl From<DecodeError> for LogError {
    fn from(e: DecodeError) -> Self {
        corrupt("events", e)
    }
}

#[cfg(test)]
mod tests;
