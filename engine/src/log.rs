//! The event log: every verified event in redb, with the indexes a device needs.
//!
//! The log is the truth; automerge documents and the fast-read tables below are derived from
//! it and can be rebuilt. Table layouts are documented in `docs/FORMAT.md`.
//!
//! Everything a local action writes goes into one write transaction ([`LogTxn`]), so a crash
//! leaves either all of it or none of it.

use crate::conversation::MembershipHistory;
use crate::directory::DeviceDirectory;
use crate::event::{Event, EventKind, Placement};
use crate::gate::{Gate, Refusal, Verdict};
use crate::ids::{ConversationId, DeviceId, EventId, MessageId, ServerSeq, UserId};
use crate::wire::{DeviceRegistration, DeviceRevocation};
use redb::{backends::InMemoryBackend, Database, Durability, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

mod entries;
mod erase;
mod error;
mod gaps;
mod holds;
mod index;
mod peer_reads;
mod records;
mod seal;
mod tables;
mod txn;
pub use erase::{ErasePass, ErasedMessage, COMPACT_AFTER_BYTES, MAX_ERASE_BATCH};
use error::corrupt;
pub use error::LogError;
pub use holds::HoldsVector;
use index::user_marks;
pub use index::{local_read_key, LogReader, PageCursor, MAX_PAGE_LEN};
use records::{covering_statement, read_history};
pub use records::{
    Appended, ChainIssue, ConversationMeta, FailedMessage, GateRun, OutboxEntry, OutboxState,
    MAX_GAP_REPORT,
};
use tables::*;
pub use tables::{SnapshotParts, MAX_CHAIN_REPORTS};
use txn::{chain_head, migrate_msg_by_id, read_meta};
pub use txn::{goes_early, EarlyAppend, LogTxn};

/// Written in the `meta` table so that a file of someone else's is never mistaken for ours.
pub const LOG_MAGIC: &[u8] = b"tidings-event-log";
/// The table layout this build writes. A file with a higher number is refused.
pub const LOG_FORMAT_VERSION: u32 = 4;

/// Bytes of redb's page cache for a log [`EventLog::open`] opens. redb's own default is 1 GiB,
/// which a device filling its log (a week's catch-up) grows into: with it, a 100k-message
/// catch-up peaked at 306–317 MiB of resident memory, with 16 MiB at 190–236 MiB
/// (docs/BENCHMARKS.md). What a screen reads is a few index pages; a catch-up writes each
/// page once.
pub const LOG_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// A redb-backed event log.
#[derive(Debug)]
pub struct EventLog {
    /// Shared with every [`LogReader`]: redb read transactions run beside the writer.
    db: Arc<seal::LogDb>,
    incarnation: u64,
    /// Durable commits made through this handle (see [`EventLog::durable_commits`]).
    durable_commits: std::sync::atomic::AtomicU64,
    /// Whether this open checked every page (see [`EventLog::checked_in_full`]).
    checked_in_full: bool,
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
    /// Opens or creates the log at `path`, with a page cache of [`LOG_CACHE_BYTES`].
    pub fn open(path: impl AsRef<Path>) -> Result<EventLog, LogError> {
        Self::open_with_cache(path, LOG_CACHE_BYTES)
    }

    /// Opens or creates the log at `path`, with a page cache of at most `cache_bytes`.
    pub fn open_with_cache(
        path: impl AsRef<Path>,
        cache_bytes: usize,
    ) -> Result<EventLog, LogError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        // Before redb opens the file: opening writes to it.
        let sealed = seal::take(path);
        let db = guarded_open(|| Database::builder().set_cache_size(cache_bytes).create(path))
            .map_err(|e| match e {
                redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => {
                    LogError::NotOurs(name.clone())
                }
                redb::DatabaseError::DatabaseAlreadyOpen => LogError::AlreadyOpen(name.clone()),
                other => other.into(),
            })?
            .ok_or_else(|| LogError::Damaged(name.clone()))?;
        Self::init(db, &name, !sealed, Some(path.to_owned()))
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
        Self::init(db, name, true, None)
    }

    /// `file`: the log's file, sealed when the last handle on it closes.
    fn init(
        mut db: Database,
        name: &str,
        check: bool,
        file: Option<std::path::PathBuf>,
    ) -> Result<EventLog, LogError> {
        // redb checks page checksums only when it recovers from a crash. A file damaged after
        // a clean close would be read as it is, and a damaged page makes redb index out of
        // bounds (a panic) or return wrong values. So every page is checked, here, before
        // anything is read: a damaged log is an error, never a panic or silent loss. Unless
        // this process's own clean close sealed the file and nothing has written to it since
        // (`seal`): then the check would read the very pages redb wrote and synced.
        if check {
            match db.check_integrity() {
                Ok(true) => {}
                // redb repaired it, possibly back to an earlier commit: events may be gone.
                Ok(false) => return Err(LogError::Damaged(name.to_owned())),
                Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(_))) => {
                    return Err(LogError::Damaged(name.to_owned()))
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut txn = db.begin_write()?;
        // Not synced: made durable by the next durable commit, or lost with everything after
        // it. Nothing this incarnation writes (a snapshot under its actor id) can be durable
        // without it, since redb makes commits durable in order; an open costs no fsync.
        txn.set_durability(Durability::None)?;
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
            // Create every table up front, so readers never meet a missing one: the write
            // path's set (one list, in `LogTxn::open`) and the few it does not touch.
            txn::LogTxn::open(&txn)?.finish()?;
            txn.delete_table(OLD_SNAPSHOTS)?;
            txn.open_table(holds::PEER_HOLDS)?;
            txn.open_table(holds::PEER_HELD)?;
            erase::create_tables(&txn)?;
            if format < 4 {
                let moved = entries::migrate_to_positions(&txn)?;
                tracing::info!(events = moved, "log format 4: envelopes keyed by position");
            }
            if format < 3 {
                migrate_msg_by_id(&txn)?;
            }
            if format < LOG_FORMAT_VERSION {
                meta.insert("format", LOG_FORMAT_VERSION.to_le_bytes().as_slice())?;
            }
        }
        txn.commit()?;
        if erase::compaction_due(&db)? {
            erase::compact_db(&mut db)?;
        }
        Ok(EventLog {
            db: Arc::new(seal::LogDb::new(db, file)),
            incarnation,
            durable_commits: Default::default(),
            checked_in_full: check,
        })
    }

    /// The file beside a log at `log` that seals its clean close: `<log>.closed`. Backups
    /// need not keep it; without it the next open checks every page.
    pub fn seal_path(log: &Path) -> std::path::PathBuf {
        seal::seal_path(log)
    }

    /// Whether this open read and verified every page of the file. It does unless the file
    /// carries the seal of a clean close by this code and is unchanged since (`docs/FORMAT.md`).
    pub fn checked_in_full(&self) -> bool {
        self.checked_in_full
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
        let events = entries::read(&txn)?;
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
        entries::read(&txn)?.contains(&id.0)
    }

    /// The highest log position, 0 for an empty log.
    pub fn head(&self) -> Result<u64, LogError> {
        let txn = self.db.begin_read()?;
        entries::read(&txn)?.last_position()
    }

    /// Events of a conversation after log position `after`, in log order, with their positions.
    pub fn conversation_events(
        &self,
        conversation: ConversationId,
        after: u64,
    ) -> Result<Vec<(u64, Event)>, LogError> {
        let txn = self.db.begin_read()?;
        let conv_log = txn.open_table(CONV_LOG)?;
        let events = entries::read(&txn)?;
        let erased = txn.open_table(erase::ERASED)?;
        let mut out = Vec::new();
        let lo = (&conversation.0, after.saturating_add(1));
        let hi = (&conversation.0, u64::MAX);
        for row in conv_log.range(lo..=hi)? {
            let (k, id) = row?;
            let (_, pos) = k.value();
            let Some(guard) = events.get(id.value())? else {
                if erased.get(id.value())?.is_some() {
                    continue;
                }
                return Err(corrupt("conv_log", "points at a missing event"));
            };
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
    /// nothing before its first sequence, which is not a gap; nor is a sequence inside a
    /// recorded history gap (the relay's retention dropped it, and said so). `None` when
    /// nothing is missing.
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
        let gaps = txn.open_table(gaps::HISTORY_GAPS)?;
        let c = &conversation.0;
        let mut missing = Vec::new();
        let Some(first) = by_seq.range((c, 0u64)..=(c, up_to))?.next().transpose()? else {
            return Ok(None);
        };
        // From the first held sequence on, walk runs of held or dropped sequences; what
        // stops a run is missing.
        let mut after = first.0.value().1.saturating_sub(1);
        while missing.len() < MAX_GAP_REPORT {
            after = gaps::run_end(&by_seq, &gaps, &conversation, after)?;
            if after >= up_to {
                break;
            }
            missing.push(after + 1);
            after += 1;
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
        let events = entries::read(&txn)?;
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
    /// highest `s` such that every sequence in `after + 1..=s` is in the log or inside a
    /// recorded history gap (`after` itself when the next one is missing).
    pub fn contiguous_seq(
        &self,
        conversation: ConversationId,
        after: ServerSeq,
    ) -> Result<ServerSeq, LogError> {
        let txn = self.db.begin_read()?;
        let by_seq = txn.open_table(BY_SEQ)?;
        let gaps = txn.open_table(gaps::HISTORY_GAPS)?;
        gaps::run_end(&by_seq, &gaps, &conversation, after)
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
        let events = entries::read(&txn)?;
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

#[cfg(test)]
mod tests;
