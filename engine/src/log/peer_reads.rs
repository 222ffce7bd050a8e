//! The reads peer reconciliation needs: what the log holds per author, and an author's events
//! past a point.

use super::error::corrupt;
use super::records::OutboxEntry;
use super::tables::{BY_AUTHOR, HELD, OUTBOX};
use super::{EventLog, LogError};
use crate::event::{Event, EventKind};
use crate::ids::{ConversationId, DeviceId, EventId, UserId};
use redb::{ReadableDatabase, ReadableTable};
use std::collections::{BTreeMap, BTreeSet};

impl EventLog {
    /// Per author device of the conversation (relay included), the highest counter up to
    /// which the log holds every one of its events from the first: the conversation's version
    /// vector. Authors whose first event is missing are not listed.
    pub fn version_vector(
        &self,
        conversation: ConversationId,
    ) -> Result<Vec<(DeviceId, u64)>, LogError> {
        Ok(self.vector_and_above(conversation)?.0)
    }

    /// The version vector ([`EventLog::version_vector`]) and how many events the log holds
    /// above it (past a hole in an author's counters, or of an author whose first event is
    /// missing): the part a vector cannot describe.
    pub fn vector_and_above(
        &self,
        conversation: ConversationId,
    ) -> Result<(Vec<(DeviceId, u64)>, u64), LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BY_AUTHOR)?;
        let c = &conversation.0;
        let mut out: Vec<(DeviceId, u64)> = Vec::new();
        let mut n_above = 0u64;
        // (author, counters held from the first, whether a hole came after them)
        let mut current: Option<(DeviceId, u64, bool)> = None;
        let close = |cur: Option<(DeviceId, u64, bool)>, out: &mut Vec<(DeviceId, u64)>| {
            if let Some((author, held, _)) = cur.filter(|(_, held, _)| *held > 0) {
                out.push((author, held));
            }
        };
        for row in table.range((c, &[0u8; 32], 0u64)..=(c, &[0xFFu8; 32], u64::MAX))? {
            let (k, _) = row?;
            let (_, author, counter) = k.value();
            let author = DeviceId(*author);
            if current.as_ref().is_none_or(|(a, _, _)| *a != author) {
                close(current.take(), &mut out);
                current = Some((author, 0, false));
            }
            if let Some((_, held, holed)) = current.as_mut() {
                if !*holed && counter == *held + 1 {
                    *held += 1;
                } else {
                    *holed = true;
                    n_above += 1;
                }
            }
        }
        close(current, &mut out);
        Ok((out, n_above))
    }

    /// The ids of the events of `conversation` each author holds above `floor(author)`, as
    /// (counter, id) in (author, counter) order, at most `limit`: one side's items of a set
    /// reconciliation (see `crate::peer`).
    pub fn ids_above(
        &self,
        conversation: ConversationId,
        floor: impl Fn(&DeviceId) -> u64,
        limit: usize,
    ) -> Result<Vec<(u64, EventId)>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BY_AUTHOR)?;
        let c = &conversation.0;
        let mut out = Vec::new();
        let mut from = [0u8; 32];
        // One range per author, from its floor up: what both sides hold below it is not read.
        loop {
            let mut rows = table.range((c, &from, 0u64)..=(c, &[0xFFu8; 32], u64::MAX))?;
            let Some(first) = rows.next() else {
                break;
            };
            let (k, _) = first?;
            let author = DeviceId(*k.value().1);
            drop(rows);
            let start = floor(&author).saturating_add(1);
            for row in table.range((c, &author.0, start)..=(c, &author.0, u64::MAX))? {
                if out.len() >= limit {
                    return Ok(out);
                }
                let (k, id) = row?;
                out.push((k.value().2, EventId(*id.value())));
            }
            match next_device_id(author.0) {
                Some(a) => from = a,
                None => break,
            }
        }
        Ok(out)
    }

    /// The events of `author` in `conversation` whose counter is above `after`, in counter
    /// order, at most `limit`.
    pub fn author_events_after(
        &self,
        conversation: ConversationId,
        author: DeviceId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>, LogError> {
        let txn = self.db.begin_read()?;
        let by_author = txn.open_table(BY_AUTHOR)?;
        let events = super::entries::read(&txn)?;
        let (c, a) = (&conversation.0, &author.0);
        let mut out = Vec::new();
        let start = after.saturating_add(1);
        for row in by_author.range((c, a, start)..=(c, a, u64::MAX))? {
            if out.len() >= limit {
                break;
            }
            let (_, id) = row?;
            let Some(stored) = events.get(id.value())? else {
                continue;
            };
            let (_, bytes) = stored.value();
            out.push(Event::decode_trusted(bytes).map_err(|e| corrupt("events", e))?);
        }
        Ok(out)
    }
}

impl EventLog {
    /// Per conversation, the users that a removal this log holds but has not admitted takes
    /// out: this device's own removals still in the outbox, and others' held for their place
    /// (or placed, before the gate reached them). The relay places such a removal before
    /// the author's later events, and perhaps before other events not placed yet: a peer of a user listed here gets none of
    /// the conversation's unplaced events (see `crate::peer`).
    pub fn pending_removals(&self) -> Result<BTreeMap<ConversationId, BTreeSet<UserId>>, LogError> {
        let txn = self.db.begin_read()?;
        let events = super::entries::read(&txn)?;
        let mut ids: Vec<[u8; 32]> = Vec::new();
        for row in txn.open_table(OUTBOX)?.iter()? {
            let (_, v) = row?;
            let entry: OutboxEntry =
                postcard::from_bytes(v.value()).map_err(|e| corrupt("outbox", e))?;
            ids.push(entry.event.0);
        }
        for row in txn.open_table(HELD)?.iter()? {
            ids.push(*row?.0.value());
        }
        let mut out: BTreeMap<ConversationId, BTreeSet<UserId>> = BTreeMap::new();
        for id in ids {
            let Some(stored) = events.get(&id)? else {
                continue;
            };
            let ev = Event::decode_trusted(stored.value().1).map_err(|e| corrupt("events", e))?;
            if let EventKind::RemoveMember { user } = ev.kind() {
                out.entry(ev.conversation()).or_default().insert(*user);
            }
        }
        Ok(out)
    }
}

/// The smallest device id above `id`, if any (big-endian increment).
fn next_device_id(mut id: [u8; 32]) -> Option<[u8; 32]> {
    for b in id.iter_mut().rev() {
        if *b == 0xFF {
            *b = 0;
        } else {
            *b += 1;
            return Some(id);
        }
    }
    None
}
