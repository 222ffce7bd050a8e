//! Unit tests of the event log.

use super::*;
use crate::identity::DeviceKey;

const CONV: ConversationId = ConversationId([7; 16]);

fn send(key: &DeviceKey, counter: u64, message: u8) -> Event {
    let header = key.header(CONV, counter, None, counter, 1_000);
    let kind = EventKind::Send {
        message: MessageId([message; 16]),
        body: vec![message],
        media: Vec::new(),
    };
    Event::sign(key.signing_key(), header, kind).expect("sign")
}

fn ack(relay: &DeviceKey, event: &Event, seq: u64) -> Event {
    let header = relay.header(CONV, seq, None, 1, 2_000);
    let message = match event.kind() {
        EventKind::Send { message, .. } => Some(*message),
        _ => None,
    };
    let kind = EventKind::ServerAck {
        event: event.id(),
        message,
        seq,
        server_ts_ms: 2_000,
    };
    Event::sign(relay.signing_key(), header, kind).expect("sign")
}

/// Found by the simulator (tests/sim, seed 160): a submission's entry was acknowledged
/// through a page while the submission was in flight; when that submission then timed
/// out, the device updated its stale copy of the entry, whose position the next queued
/// event had taken. That event vanished from the outbox (never sent) and the acknowledged
/// message came back as a FAILED entry that nothing removed.
#[test]
fn a_stale_entry_does_not_overwrite_the_one_now_at_its_position() {
    let device = DeviceKey::from_seed([1; 32], UserId([1; 32]));
    let relay = DeviceKey::from_seed([9; 32], UserId([9; 32]));
    let log = EventLog::in_memory().expect("log");
    let first = send(&device, 1, 1);
    let stale = log
        .write(|t| {
            t.append(&first)?;
            t.enqueue(&first, 1_000)
        })
        .expect("queue the first");
    log.append(&[ack(&relay, &first, 1)])
        .expect("ack the first");
    assert!(log.outbox().expect("outbox").is_empty());
    let second = send(&device, 2, 2);
    let queued = log
        .write(|t| {
            t.append(&second)?;
            t.enqueue(&second, 1_000)
        })
        .expect("queue the second");
    assert_eq!(queued.position, stale.position, "positions are reused");
    let mut failed = stale.clone();
    failed.attempts = 3;
    failed.state = OutboxState::Failed;
    let present = log.write(|t| t.update_outbox(&failed)).expect("update");
    assert!(!present, "a gone entry was updated");
    assert_eq!(log.outbox().expect("outbox"), vec![queued]);
}

/// A message at `counter` that names `prev` as its predecessor.
fn linked(key: &DeviceKey, counter: u64, prev: Option<EventId>, message: u8) -> Event {
    let header = key.header(CONV, counter, prev, counter, 1_000);
    let kind = EventKind::Send {
        message: MessageId([message; 16]),
        body: vec![message],
        media: Vec::new(),
    };
    Event::sign(key.signing_key(), header, kind).expect("sign")
}

fn issues_of(log: &EventLog, events: &[Event]) -> Vec<ChainIssue> {
    log.write(|t| {
        for e in events {
            t.append(e)?;
        }
        t.take_chain_issues()
    })
    .expect("append")
}

#[test]
fn chains_report_gaps_forks_and_broken_links() {
    let author = DeviceKey::from_seed([1; 32], UserId([1; 32]));
    let log = EventLog::in_memory().expect("log");
    let e1 = linked(&author, 1, None, 1);
    let e2 = linked(&author, 2, Some(e1.id()), 2);
    let e3 = linked(&author, 3, Some(e2.id()), 3);
    // 1 and 3 arrive, 2 is withheld: a gap, and nothing else is wrong.
    assert_eq!(issues_of(&log, &[e1.clone(), e3.clone()]), vec![]);
    assert_eq!(
        log.chain_gaps(CONV).expect("gaps"),
        vec![ChainIssue::Gap {
            conversation: CONV,
            author: author.device(),
            missing: vec![2],
        }]
    );
    // 2 arrives late and links both ways: the gap closes.
    assert_eq!(issues_of(&log, std::slice::from_ref(&e2)), vec![]);
    assert_eq!(log.chain_gaps(CONV).expect("gaps"), vec![]);
    // Another event signed for place 2: a fork; the first keeps the place.
    let other2 = linked(&author, 2, Some(e1.id()), 22);
    assert_eq!(
        issues_of(&log, std::slice::from_ref(&other2)),
        vec![ChainIssue::Fork {
            conversation: CONV,
            author: author.device(),
            counter: 2,
            first: e2.id(),
            second: other2.id(),
        }]
    );
    // Place 4 names 1 as its predecessor: a broken link.
    let bad4 = linked(&author, 4, Some(e1.id()), 4);
    assert_eq!(
        issues_of(&log, std::slice::from_ref(&bad4)),
        vec![ChainIssue::BrokenLink {
            conversation: CONV,
            author: author.device(),
            counter: 4,
            prev: Some(e1.id()),
            found: Some(e3.id()),
        }]
    );
    // 6 arrives before 5, and 5 is not what 6 names: the break shows when 5 arrives.
    let e6 = linked(&author, 6, Some(EventId([6; 32])), 6);
    assert_eq!(issues_of(&log, std::slice::from_ref(&e6)), vec![]);
    let e5 = linked(&author, 5, Some(bad4.id()), 5);
    assert_eq!(
        issues_of(&log, std::slice::from_ref(&e5)),
        vec![ChainIssue::BrokenLink {
            conversation: CONV,
            author: author.device(),
            counter: 6,
            prev: Some(EventId([6; 32])),
            found: Some(e5.id()),
        }]
    );
    // A first event that names a predecessor, or a later one that names none.
    let other = DeviceKey::from_seed([2; 32], UserId([1; 32]));
    let issues = issues_of(
        &log,
        &[
            linked(&other, 1, Some(e1.id()), 31),
            linked(&other, 2, None, 32),
        ],
    );
    assert_eq!(issues.len(), 2, "{issues:?}");
    assert!(issues
        .iter()
        .all(|i| matches!(i, ChainIssue::BrokenLink { found: None, .. })));
}

/// A log holding Alice's first message at seq 1 and Bob's receipt, sequenced at `at`, saying
/// he holds everything up to `up_to`.
fn log_with_receipt(up_to: u64, at: u64) -> EventLog {
    let alice = DeviceKey::from_seed([1; 32], UserId([1; 32]));
    let bob = DeviceKey::from_seed([2; 32], UserId([2; 32]));
    let relay = DeviceKey::from_seed([9; 32], UserId([9; 32]));
    let log = EventLog::in_memory().expect("log");
    assert_eq!(log.receipt_gap(CONV, 10).expect("gap"), None);
    let one = send(&alice, 1, 1);
    log.append(&[one.clone(), ack(&relay, &one, 1)])
        .expect("append");
    let receipt = Event::sign(
        bob.signing_key(),
        bob.header(CONV, 1, None, 6, 3_000),
        EventKind::Delivered { up_to, head: None },
    )
    .expect("sign");
    log.append(&[receipt.clone(), ack(&relay, &receipt, at)])
        .expect("append");
    log
}

/// Issue #12, "malicious relay, withholding": a member's receipt covers sequences this log
/// never got (the tail of an author's chain, which no later event of that author reveals).
#[test]
fn a_receipt_past_what_the_log_holds_reveals_withheld_sequences() {
    // Seqs 2..=4 withheld; Bob's receipt, sequenced at 5, says he has them.
    let log = log_with_receipt(4, 5);
    assert_eq!(
        log.receipt_gap(CONV, 10).expect("gap"),
        Some(ChainIssue::Withheld {
            conversation: CONV,
            receipt_up_to: 4,
            missing: vec![2, 3, 4],
        })
    );
    // Only up to what the relay announced: past it, events may still be on their way.
    assert_eq!(
        log.receipt_gap(CONV, 2).expect("gap"),
        Some(ChainIssue::Withheld {
            conversation: CONV,
            receipt_up_to: 2,
            missing: vec![2],
        })
    );
    assert_eq!(log.receipt_gap(CONV, 1).expect("gap"), None);
}

/// Issue 17: what the relay's retention dropped, and said so (a recorded history gap), is
/// gone, not withheld: a receipt covering it reports only what lies outside the gap.
#[test]
fn a_receipt_over_a_recorded_history_gap_reports_only_what_lies_outside_it() {
    // Bob's receipt, sequenced at 6, covers 2..=5; the relay said 2..=3 are gone.
    let log = log_with_receipt(5, 6);
    log.write(|t| t.record_gap(CONV, 2, 3)).expect("gap");
    assert_eq!(
        log.receipt_gap(CONV, 10).expect("gap"),
        Some(ChainIssue::Withheld {
            conversation: CONV,
            receipt_up_to: 5,
            missing: vec![4, 5],
        })
    );
    log.write(|t| t.record_gap(CONV, 4, 5)).expect("gap");
    assert_eq!(log.receipt_gap(CONV, 10).expect("gap"), None);
}

/// The relay's statement placing `events` from `first` on, after the statement `prev`.
fn statement(relay: &DeviceKey, events: &[&Event], first: u64, prev: Option<EventId>) -> Event {
    let header = relay.header(CONV, first, prev, 1, 2_000);
    let entries = events
        .iter()
        .map(|e| crate::event::SeqEntry {
            event: e.id(),
            message: match e.kind() {
                EventKind::Send { message, .. } => Some(*message),
                _ => None,
            },
            server_ts_ms: 2_000,
        })
        .collect();
    Event::sign(
        relay.signing_key(),
        header,
        EventKind::Sequenced { entries },
    )
    .expect("sign")
}

/// One statement places a run of events: every event it names takes its place (events the log
/// does not hold yet wait for it, and the cursor never passes them); the statements chain, and
/// a statement that does not continue the chain, or a second one over the same range, is
/// reported.
#[test]
fn statements_place_runs_and_chain() {
    let relay = DeviceKey::from_seed([9; 32], UserId([9; 32]));
    let alice = DeviceKey::from_seed([1; 32], UserId([1; 32]));
    let log = EventLog::in_memory().expect("log");
    let m1 = linked(&alice, 1, None, 1);
    let m2 = linked(&alice, 2, Some(m1.id()), 2);
    let m3 = linked(&alice, 3, Some(m2.id()), 3);
    let first = statement(&relay, &[&m1, &m2], 1, None);
    // The statement and only the first event: the second waits, the cursor stops at 1.
    assert_eq!(issues_of(&log, &[first.clone(), m1.clone()]), vec![]);
    assert_eq!(log.contiguous_seq(CONV, 0).expect("cursor"), 1);
    assert_eq!(issues_of(&log, std::slice::from_ref(&m2)), vec![]);
    assert_eq!(log.contiguous_seq(CONV, 0).expect("cursor"), 2);
    assert_eq!(log.statement_at(CONV, 2).expect("head"), Some(first.id()));
    // The next statement continues the chain.
    let second = statement(&relay, &[&m3], 3, Some(first.id()));
    assert_eq!(issues_of(&log, &[second.clone(), m3.clone()]), vec![]);
    assert_eq!(log.statement_at(CONV, 3).expect("head"), Some(second.id()));
    // A statement from 3 that names another predecessor: a broken link in the relay's chain.
    let liar = statement(&relay, &[&m3], 3, Some(EventId([5; 32])));
    let issues = issues_of(&log, std::slice::from_ref(&liar));
    assert!(
        issues
            .iter()
            .any(|i| matches!(i, ChainIssue::Fork { counter: 3, .. })),
        "{issues:?}"
    );
    // Another statement over 1..=2 with the events swapped: two events at one sequence.
    let swapped = statement(&relay, &[&m2, &m1], 1, None);
    let issues = issues_of(&log, std::slice::from_ref(&swapped));
    assert!(
        issues
            .iter()
            .any(|i| matches!(i, ChainIssue::Equivocation { seq: 1, .. })),
        "{issues:?}"
    );
}

/// A receipt carries the statement its author holds at `up_to`: a device holding another one
/// there reports that the relay showed them different histories; the same one is silent.
#[test]
fn a_receipt_naming_another_chain_head_is_reported() {
    let relay = DeviceKey::from_seed([9; 32], UserId([9; 32]));
    let alice = DeviceKey::from_seed([1; 32], UserId([1; 32]));
    let bob = DeviceKey::from_seed([2; 32], UserId([2; 32]));
    let log = EventLog::in_memory().expect("log");
    let m1 = linked(&alice, 1, None, 1);
    let m2 = linked(&alice, 2, Some(m1.id()), 2);
    let shown = statement(&relay, &[&m1, &m2], 1, None);
    assert_eq!(issues_of(&log, &[shown.clone(), m1, m2.clone()]), vec![]);
    let mut prev = None;
    let mut receipt = |counter: u64, head: Option<EventId>| {
        let h = bob.header(CONV, counter, prev, 9, 3_000);
        let kind = EventKind::Delivered { up_to: 2, head };
        let e = Event::sign(bob.signing_key(), h, kind).expect("sign");
        prev = Some(e.id());
        e
    };
    assert_eq!(issues_of(&log, &[receipt(1, Some(shown.id()))]), vec![]);
    let other = EventId([3; 32]);
    let issues = issues_of(&log, &[receipt(2, Some(other))]);
    assert!(
        issues.contains(&ChainIssue::HeadMismatch {
            conversation: CONV,
            seq: 2,
            ours: shown.id(),
            theirs: other,
            device: bob.device(),
        }),
        "{issues:?}"
    );
    // A receipt without a head (written before heads were carried) says nothing.
    let issues = issues_of(&log, &[receipt(3, None)]);
    assert!(
        !issues
            .iter()
            .any(|i| matches!(i, ChainIssue::HeadMismatch { .. })),
        "{issues:?}"
    );
}

/// The device and relay keys of the on-disk format tests.
fn alice() -> DeviceKey {
    DeviceKey::from_seed([1; 32], UserId([1; 32]))
}

fn relay_key() -> DeviceKey {
    DeviceKey::from_seed([9; 32], UserId([9; 32]))
}

/// Rewrites a log's events the way formats 2 and 3 kept them (`events`: id → (position,
/// envelope), `log`: position → id), drops the format-4 tables and says `format`.
fn to_old_layout(log: &EventLog, format: u32) {
    let txn = log.db.begin_write().expect("write");
    {
        let mut old_events = txn.open_table(entries::OLD_EVENTS).expect("events");
        let mut old_log = txn.open_table(entries::OLD_LOG).expect("log");
        for row in txn
            .open_table(entries::ENTRIES)
            .expect("entries")
            .iter()
            .expect("iter")
        {
            let (k, v) = row.expect("row");
            let (id, bytes) = v.value();
            old_events.insert(id, (k.value(), bytes)).expect("insert");
            old_log.insert(k.value(), id).expect("insert");
        }
        txn.open_table(META)
            .expect("meta")
            .insert("format", format.to_le_bytes().as_slice())
            .expect("format");
    }
    txn.delete_table(entries::ENTRIES).expect("delete");
    txn.delete_table(entries::EVENT_POS).expect("delete");
    txn.commit().expect("commit");
}

fn format_of(log: &EventLog) -> Option<Vec<u8>> {
    let txn = log.db.begin_read().expect("read");
    let meta = txn.open_table(META).expect("meta");
    let format = meta.get("format").expect("get").map(|g| g.value().to_vec());
    format
}

/// Format 4 keeps envelopes by log position. A format-3 log (envelopes keyed by event id)
/// is moved over at open: every event is found by id and by conversation as before, at the
/// position it had, the next append takes the next position, and the old tables are gone.
#[test]
fn a_format_3_log_is_moved_to_envelopes_by_position_at_open() {
    let (device, relay, dir) = (alice(), relay_key(), tempfile::tempdir().expect("tempdir"));
    let path = dir.path().join("log.redb");
    let events: Vec<Event> = (1..=5).map(|i| send(&device, i, i as u8)).collect();
    let placed = ack(&relay, &events[0], 1);
    let before = {
        let log = EventLog::open(&path).expect("open");
        let mut all = events.clone();
        all.push(placed.clone());
        log.append(&all).expect("append");
        let before = log.conversation_events(CONV, 0).expect("events");
        to_old_layout(&log, 3);
        before
    };
    let log = EventLog::open(&path).expect("reopen");
    assert_eq!(
        format_of(&log),
        Some(LOG_FORMAT_VERSION.to_le_bytes().to_vec())
    );
    for e in events.iter().chain([&placed]) {
        assert_eq!(log.get(&e.id()).expect("get").as_ref(), Some(e));
    }
    let after = log.conversation_events(CONV, 0).expect("events");
    assert_eq!(
        after.iter().map(|(p, e)| (*p, e.id())).collect::<Vec<_>>(),
        before.iter().map(|(p, e)| (*p, e.id())).collect::<Vec<_>>()
    );
    let head = log.head().expect("head");
    assert_eq!(head, 6);
    let next = send(&device, 6, 6);
    assert_eq!(
        log.append(std::slice::from_ref(&next)).expect("append"),
        vec![Appended::New { position: head + 1 }]
    );
    let txn = log.db.begin_read().expect("read");
    let names: Vec<String> = txn
        .list_tables()
        .expect("list")
        .map(|t| redb::TableHandle::name(&t).to_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n == "events" || n == "log"),
        "{names:?}"
    );
}

/// Format 3 added `msg_by_id`; a format-2 log gets it filled at open from its two message
/// listings (a sequenced and a pending message here), and says the current format from then
/// on (the format-4 move of its envelopes comes first).
#[test]
fn a_format_2_log_gets_its_message_index_at_open() {
    let (device, relay, dir) = (alice(), relay_key(), tempfile::tempdir().expect("tempdir"));
    let path = dir.path().join("log.redb");
    let (placed, pending) = (send(&device, 1, 1), send(&device, 2, 2));
    {
        let log = EventLog::open(&path).expect("open");
        log.append(&[placed.clone(), pending.clone(), ack(&relay, &placed, 1)])
            .expect("append");
        // What a format-2 build left: no message index, the old event tables.
        to_old_layout(&log, 2);
        let txn = log.db.begin_write().expect("write");
        txn.delete_table(MSG_BY_ID).expect("delete");
        txn.commit().expect("commit");
    }
    let log = EventLog::open(&path).expect("reopen");
    let reader = log.reader();
    for (event, message, seq) in [(&placed, 1, Some(1)), (&pending, 2, None)] {
        let view = reader
            .message(CONV, MessageId([message; 16]))
            .expect("read")
            .expect("found by id");
        assert_eq!((view.record.event, view.seq), (event.id(), seq));
    }
    assert_eq!(
        format_of(&log),
        Some(LOG_FORMAT_VERSION.to_le_bytes().to_vec())
    );
}

/// `message` reads only what a page would show: a message held for the gate (stored, not
/// admitted) is neither found by id nor listed.
#[test]
fn a_message_held_for_the_gate_is_not_found_by_id() {
    let other = DeviceKey::from_seed([2; 32], UserId([2; 32]));
    let log = EventLog::in_memory().expect("log");
    let held = send(&other, 1, 3);
    log.write(|t| t.append_held(&held)).expect("hold");
    let reader = log.reader();
    assert_eq!(
        reader.message(CONV, MessageId([3; 16])).expect("read"),
        None
    );
    assert!(reader.page(CONV, None, 10).expect("page").is_empty());
}

/// A reader does not wait for a write under way: in the middle of a write transaction (here
/// on the same thread, so any waiting would never end) it reads the last commit, without the
/// write's message; after the commit it reads the message.
#[test]
fn a_read_beside_an_open_write_sees_the_last_commit() {
    let device = DeviceKey::from_seed([1; 32], UserId([1; 32]));
    let log = EventLog::in_memory().expect("log");
    let reader = log.reader();
    let first = send(&device, 1, 1);
    log.append(std::slice::from_ref(&first)).expect("first");
    let during = log
        .write(|t| {
            t.append(&send(&device, 2, 2))?;
            reader.page(CONV, None, 10)
        })
        .expect("write with a read inside");
    let ids = |v: &[crate::conversation::MessageView]| v.iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(ids(&during), vec![MessageId([1; 16])]);
    let after = reader.page(CONV, None, 10).expect("page");
    assert_eq!(ids(&after), vec![MessageId([1; 16]), MessageId([2; 16])]);
}

/// A log file closed cleanly by this code and untouched since opens without reading every
/// page again; each open takes the seal away and each clean close writes a new one.
#[test]
fn a_clean_close_lets_the_next_open_skip_the_full_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("device.redb");
    let device = DeviceKey::from_seed([1; 32], UserId([1; 32]));
    let event = send(&device, 1, 1);
    let log = EventLog::open(&path).expect("create");
    assert!(log.checked_in_full(), "a new file has no seal");
    log.append(std::slice::from_ref(&event)).expect("append");
    drop(log);
    assert!(
        seal::seal_path(&path).exists(),
        "a clean close seals the file"
    );
    for _ in 0..2 {
        let log = EventLog::open(&path).expect("reopen");
        assert!(
            !seal::seal_path(&path).exists(),
            "an open takes the seal away"
        );
        assert!(
            !log.checked_in_full(),
            "a sealed, unchanged file is not checked again"
        );
        assert_eq!(log.get(&event.id()).expect("get"), Some(event.clone()));
    }
}

/// Any write to the file after the seal (here: the same bytes written back, as a restore or
/// a copy would) makes the next open check every page again.
#[test]
fn a_file_written_after_its_seal_is_checked_in_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("device.redb");
    drop(EventLog::open(&path).expect("create"));
    assert!(seal::seal_path(&path).exists());
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes).expect("write back");
    let log = EventLog::open(&path).expect("reopen");
    assert!(
        log.checked_in_full(),
        "a seal vouched for a file written after it"
    );
}

/// A seal that is not one (garbage, or another file's) never lets an open skip the check. The
/// file is sealed when the last handle on it closes, a reader that outlives the log included.
#[test]
fn only_a_real_seal_of_a_closed_file_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("device.redb");
    drop(EventLog::open(&path).expect("create"));
    std::fs::write(seal::seal_path(&path), b"not a seal").expect("garbage seal");
    let log = EventLog::open(&path).expect("reopen");
    assert!(log.checked_in_full());
    let reader = log.reader();
    drop(log);
    assert!(
        !seal::seal_path(&path).exists(),
        "sealed while a reader still had the file open"
    );
    drop(reader);
    assert!(
        seal::seal_path(&path).exists(),
        "the last handle's close sealed nothing"
    );
    assert!(!EventLog::open(&path).expect("reopen").checked_in_full());
    std::fs::write(seal::seal_path(&path), b"not a seal").expect("garbage seal");
    assert!(EventLog::open(&path).expect("reopen").checked_in_full());
    // Another log's seal, copied beside this one.
    let other = dir.path().join("other.redb");
    drop(EventLog::open(&other).expect("create other"));
    std::fs::copy(seal::seal_path(&other), seal::seal_path(&path)).expect("copy seal");
    assert!(EventLog::open(&path).expect("reopen").checked_in_full());
}

/// Every reader works on a log that was opened and never written: a table a reader opens
/// must exist from the open on (redb's read transactions cannot create one).
#[test]
fn a_fresh_log_answers_every_reader() {
    let log = EventLog::in_memory().expect("log");
    assert_eq!(log.chain_reports().expect("chain reports"), Vec::new());
    assert_eq!(log.statement_at(CONV, 1).expect("statement"), None);
}
