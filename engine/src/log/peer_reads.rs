//! The reads peer reconciliation needs: what the log holds per author, and an author's events
//! past a point.

use super::error::corrupt;
use super::tables::{BY_AUTHOR, EVENTS};
use super::{EventLog, LogError};
use crate::event::Event;
use crate::ids::{ConversationId, DeviceId};
use redb::ReadableDatabase;

impl EventLog {
    /// Per author device of the conversation (relay included), the highest counter up to
    /// which the log holds every one of its events from the first: the conversation's version
    /// vector. Authors whose first event is missing are not listed.
    pub fn version_vector(
        &self,
        conversation: ConversationId,
    ) -> Result<Vec<(DeviceId, u64)>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BY_AUTHOR)?;
        let c = &conversation.0;
        let mut out: Vec<(DeviceId, u64)> = Vec::new();
        // (author, next counter expected; u64::MAX once a gap was seen)
        let mut current: Option<(DeviceId, u64)> = None;
        let close = |cur: Option<(DeviceId, u64)>, out: &mut Vec<(DeviceId, u64)>| {
            if let Some((author, next)) = cur {
                let held = if next == u64::MAX {
                    None
                } else {
                    Some(next - 1)
                };
                if let Some(n) = held.filter(|n| *n > 0) {
                    out.push((author, n));
                }
            }
        };
        for row in table.range((c, &[0u8; 32], 0u64)..=(c, &[0xFFu8; 32], u64::MAX))? {
            let (k, _) = row?;
            let (_, author, counter) = k.value();
            let author = DeviceId(*author);
            if current.as_ref().is_none_or(|(a, _)| *a != author) {
                close(current.take(), &mut out);
                current = Some((author, 1));
            }
            if let Some((_, next)) = current.as_mut() {
                if *next != u64::MAX {
                    *next = if counter == *next {
                        *next + 1
                    } else {
                        u64::MAX
                    };
                }
            }
        }
        close(current, &mut out);
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
        let events = txn.open_table(EVENTS)?;
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
