//! Compaction on a device: a conversation kept for a day, most of it erased by the policy,
//! then the file compacted. The file shrinks; reopened, every kept message reads with the
//! same status as before, nothing erased comes back, and the erased ciphertext is no longer
//! in the file.

// The fixture is the compaction bench's (benches/common: one definition).
#[allow(dead_code)]
#[path = "../benches/common/encrypted.rs"]
mod encrypted;
#[allow(dead_code)]
#[path = "../benches/common/kept.rs"]
mod kept;

use encrypted::{alice_store, body, cast, open_alice};
use kept::{due_at, erase_all_due, history, view, CONV};
use tidings::engine::store::Body;
use tidings::engine::{EventKind, EventLog, MessageId, RetentionPolicy};

const N: u64 = 2_000;
/// The policy keeps a day.
const KEEP_DAYS: u32 = 1;

#[test]
fn compaction_shrinks_the_file_and_keeps_everything_the_policy_keeps() {
    let (alice, bob) = cast();
    let policy = RetentionPolicy::KeepDays { days: KEEP_DAYS };
    let events = history(&alice, &bob, N, policy);
    // 90% are a day old at `now`.
    let n_erased = (N * 9 / 10) as usize;
    let now = due_at(&events, n_erased, KEEP_DAYS);
    // The ciphertext of the first message (erased), to look for in the file.
    let first_send = events
        .iter()
        .find_map(|e| match e.kind() {
            EventKind::Send { body, .. } => Some(body[body.len() - 48..].to_vec()),
            _ => None,
        })
        .expect("a send");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("device.redb");
    let mut store = alice_store(EventLog::open(&path).expect("open"), &alice, &bob, &events);
    store.snapshot_all().expect("snapshot");
    let before = view(&store);
    assert_eq!(before.len(), N as usize);
    let kept_before: Vec<_> = before[n_erased..].to_vec();
    drop(store);
    let full_len = std::fs::metadata(&path).expect("len").len();

    let contains = |needle: &[u8]| {
        let bytes = std::fs::read(&path).expect("read");
        bytes.windows(needle.len()).any(|w| w == needle)
    };
    assert!(
        contains(&first_send),
        "the fixture's ciphertext is in the file"
    );

    let mut store = open_alice(EventLog::open(&path).expect("open"), &alice);
    assert_eq!(erase_all_due(&mut store, now), n_erased);
    assert!(store.log().erased_bytes().expect("bytes") > 0);
    store.compact().expect("compact");
    assert_eq!(store.log().erased_bytes().expect("bytes"), 0);
    drop(store);
    let compacted_len = std::fs::metadata(&path).expect("len").len();
    assert!(
        compacted_len * 2 < full_len,
        "{full_len} bytes before, {compacted_len} after"
    );
    assert!(!contains(&first_send), "erased ciphertext left in the file");

    let mut store = open_alice(EventLog::open(&path).expect("reopen"), &alice);
    let after = view(&store);
    assert_eq!(after, kept_before, "the kept messages, statuses and bodies");
    for (i, (_, _, b)) in after.iter().enumerate() {
        assert_eq!(*b, Body::Text(body(n_erased as u64 + i as u64)));
    }
    let full: Vec<MessageId> = store
        .conversation(CONV)
        .expect("conversation")
        .messages()
        .iter()
        .map(|m| m.id)
        .collect();
    let kept_ids: Vec<MessageId> = kept_before.iter().map(|k| k.0).collect();
    assert_eq!(full, kept_ids, "the documents, rebuilt, agree");
    assert_eq!(store.erased(CONV).expect("tombstones").len(), n_erased);
    // Nothing more is due, and the history re-delivered brings nothing back.
    assert_eq!(erase_all_due(&mut store, now), 0);
    let out = store.apply(&events).expect("apply");
    assert_eq!(out.n_new, 0);
    assert_eq!(view(&store).len(), kept_ids.len());
}
