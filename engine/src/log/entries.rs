//! The events themselves: each envelope stored once, under its log position, with a small
//! index from event id to position (format 4, `docs/FORMAT.md`).
//!
//! Until format 3 the envelopes (~400 B each) were the values of a table keyed by event id.
//! Ids are hashes, so every append landed on a random leaf of the log's largest table: a
//! catch-up page of 1,000 events read back and rewrote about as many 4 KiB pages, most of
//! them evicted from the page cache since the last page (docs/BENCHMARKS.md, "the log's write
//! amplification"). Keyed by position, a page's envelopes fill a few new leaves at the end of
//! the table; what stays random is the id → position index, 40 B a row, which the cache holds.

use super::tables::Id32;
use super::{corrupt, LogError};
use redb::{AccessGuard, ReadableTable, TableDefinition};

/// event id → log position
pub(super) const EVENT_POS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("event_pos");
/// log position → (event id, envelope), in append order
pub(super) const ENTRIES: TableDefinition<u64, (&[u8; 32], &[u8])> =
    TableDefinition::new("entries");

/// The value of an `entries` row.
pub(super) type Entry = (Id32, &'static [u8]);

/// Format 3's tables, read once by [`migrate_to_positions`] and dropped.
pub(super) const OLD_EVENTS: TableDefinition<&[u8; 32], (u64, &[u8])> =
    TableDefinition::new("events");
pub(super) const OLD_LOG: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("log");

/// The two tables read together: an event by id is its position, then its entry.
pub(super) struct Events<P, E> {
    pub(super) pos: P,
    pub(super) entries: E,
}

/// [`Events`] in a read transaction.
pub(super) type ReadEvents =
    Events<redb::ReadOnlyTable<Id32, u64>, redb::ReadOnlyTable<u64, Entry>>;
/// [`Events`] in a write transaction.
pub(super) type WriteEvents<'a> = Events<redb::Table<'a, Id32, u64>, redb::Table<'a, u64, Entry>>;

/// Opens both tables in a read transaction.
pub(super) fn read(txn: &redb::ReadTransaction) -> Result<ReadEvents, LogError> {
    Ok(Events {
        pos: txn.open_table(EVENT_POS)?,
        entries: txn.open_table(ENTRIES)?,
    })
}

/// Opens both tables in a write transaction.
pub(super) fn write(txn: &redb::WriteTransaction) -> Result<WriteEvents<'_>, LogError> {
    Ok(Events {
        pos: txn.open_table(EVENT_POS)?,
        entries: txn.open_table(ENTRIES)?,
    })
}

impl<P: ReadableTable<Id32, u64>, E: ReadableTable<u64, Entry>> Events<P, E> {
    /// The stored event `id`: its entry, whose `.1` is the envelope. An index row without its
    /// entry is a damaged log.
    pub(super) fn get(&self, id: &[u8; 32]) -> Result<Option<AccessGuard<'_, Entry>>, LogError> {
        let Some(position) = self.position(id)? else {
            return Ok(None);
        };
        self.entries
            .get(position)?
            .map(Some)
            .ok_or_else(|| corrupt("event_pos", "names a position without an entry"))
    }

    /// The log position of the stored event `id`.
    pub(super) fn position(&self, id: &[u8; 32]) -> Result<Option<u64>, LogError> {
        Ok(self.pos.get(id)?.map(|g| g.value()))
    }

    /// Whether the event `id` is stored.
    pub(super) fn contains(&self, id: &[u8; 32]) -> Result<bool, LogError> {
        Ok(self.pos.get(id)?.is_some())
    }

    /// The highest position in use, 0 for an empty log.
    pub(super) fn last_position(&self) -> Result<u64, LogError> {
        Ok(self.entries.last()?.map_or(0, |(k, _)| k.value()))
    }
}

impl WriteEvents<'_> {
    /// Stores an envelope at `position`.
    pub(super) fn insert(
        &mut self,
        id: &[u8; 32],
        position: u64,
        bytes: &[u8],
    ) -> Result<(), LogError> {
        self.entries.insert(position, (id, bytes))?;
        self.pos.insert(id, position)?;
        Ok(())
    }

    /// Removes the event `id`: its position and envelope, if it was stored.
    pub(super) fn remove(&mut self, id: &[u8; 32]) -> Result<Option<(u64, Vec<u8>)>, LogError> {
        let Some(position) = self.pos.remove(id)?.map(|g| g.value()) else {
            return Ok(None);
        };
        let bytes = self
            .entries
            .remove(position)?
            .map(|g| g.value().1.to_vec())
            .ok_or_else(|| corrupt("event_pos", "names a position without an entry"))?;
        Ok(Some((position, bytes)))
    }
}

/// Format 4 keeps the envelopes by position: moves every row of a format-3 log's `events`
/// (id → (position, envelope)) into `entries` and `event_pos`, and drops `events` and `log`
/// (position → id, which `entries` now is). Nothing else names an event by where its bytes
/// were. Returns the number of events moved.
pub(super) fn migrate_to_positions(txn: &redb::WriteTransaction) -> Result<u64, LogError> {
    let mut moved = 0;
    {
        let mut new = write(txn)?;
        let old_events = txn.open_table(OLD_EVENTS)?;
        for row in old_events.iter()? {
            let (id, v) = row?;
            let (position, bytes) = v.value();
            new.insert(id.value(), position, bytes)?;
            moved += 1;
        }
    }
    txn.delete_table(OLD_EVENTS)?;
    txn.delete_table(OLD_LOG)?;
    Ok(moved)
}
