//! An encrypted two-party conversation under a retention policy, as Alice's device receives
//! it: Bob's real store creates it, sets the policy, sends every message (encrypted), and a
//! relay key acks each event (server time `T0 + seq` ms). With what a compaction check needs
//! beside it: the erasure passes, the time at which a share of the history is due, and the
//! full view a reader shows. For the compaction test and bench.
//!
//! Expects [`super::encrypted`] beside it (the cast, the keys, the bodies and Alice's store:
//! one definition); the test crate includes both files with `#[path]`.

use super::encrypted::{bob_store, relay, send_messages, Member, T0};
use tidings::engine::event::MAX_SEQUENCED_ENTRIES;
use tidings::engine::log::PageCursor;
use tidings::engine::retention::DAY_MS;
use tidings::engine::store::Body;
use tidings::engine::{
    ConversationId, Event, EventHeader, EventId, EventKind, MessageId, RetentionPolicy, SeqEntry,
    Status, Store, UserId,
};

/// The conversation.
pub const CONV: ConversationId = ConversationId([0x2d; 16]);

/// Messages read per page by [`view`].
const VIEW_PAGE: usize = 200;

/// Bob's conversation with Alice: `Create`, the epoch key, `policy`, then `n` messages, each
/// event placed by the relay's signed statements, 256 a statement (server time `T0 + seq`).
pub fn history(alice: &Member, bob: &Member, n: u64, policy: RetentionPolicy) -> Vec<Event> {
    let mut store = bob_store(alice, bob, CONV);
    store.set_retention(CONV, policy, T0).expect("policy");
    send_messages(&mut store, CONV, n);
    let key = relay();
    let stored: Vec<Event> = store
        .outbox()
        .expect("outbox")
        .iter()
        .map(|e| store.log().get(&e.event).expect("get").expect("stored"))
        .collect();
    // One signed statement per group of 256, as the relay's group commit places them.
    let (mut seq, mut last): (u64, Option<EventId>) = (0, None);
    let mut out = Vec::new();
    for chunk in stored.chunks(MAX_SEQUENCED_ENTRIES) {
        let first = seq + 1;
        let entries: Vec<SeqEntry> = chunk
            .iter()
            .map(|ev| {
                seq += 1;
                SeqEntry {
                    event: ev.id(),
                    message: ev.message(),
                    server_ts_ms: T0 + seq,
                }
            })
            .collect();
        let header = EventHeader {
            conversation: CONV,
            author: key.device(),
            user: UserId(key.device().0),
            counter: first,
            prev: last,
            lamport: chunk.iter().map(|e| e.header().lamport).max().unwrap_or(0),
            wall_ms: T0 + seq,
        };
        let statement = Event::sign(key.signing_key(), header, EventKind::Sequenced { entries })
            .expect("sign statement");
        last = Some(statement.id());
        out.push(statement);
        out.extend(chunk.iter().cloned());
    }
    out
}

/// Runs erasure passes at `now_ms` until nothing is due; the number of messages erased.
pub fn erase_all_due(store: &mut Store, now_ms: u64) -> usize {
    let mut n = 0;
    loop {
        let changes = store.erase_due(now_ms).expect("erase");
        if changes.is_empty() {
            return n;
        }
        n += changes.len();
    }
}

/// The time at which the first `n_due` messages of `events` (by server time) are past a
/// [`RetentionPolicy::KeepDays`] of `days`, and no later one is: the `now` of an erasure pass
/// that erases exactly those.
pub fn due_at(events: &[Event], n_due: usize, days: u32) -> u64 {
    let mut placed: Vec<u64> = events
        .iter()
        .filter_map(|e| match e.kind() {
            EventKind::Sequenced { entries } => Some(
                entries
                    .iter()
                    .filter(|e| e.message.is_some())
                    .map(|e| e.server_ts_ms)
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    placed.sort();
    placed[n_due - 1] + u64::from(days) * DAY_MS
}

/// Every message of [`CONV`] the reader shows, oldest first: id, status and body.
pub fn view(store: &Store) -> Vec<(MessageId, Status, Body)> {
    let reader = store.reader();
    // Newest page first; each page oldest first.
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = reader.page(CONV, before, VIEW_PAGE).expect("page");
        let Some(first) = page.first() else {
            break;
        };
        before = Some(PageCursor::of(&first.view));
        pages.push(page);
    }
    pages
        .into_iter()
        .rev()
        .flatten()
        .map(|r| (r.view.id, r.view.status, r.body))
        .collect()
}
