//! FAILED messages: reported once they are old enough, dropped only on the app's word.

use super::*;
use crate::Status;

const REPORT_AFTER_MS: u64 = 60_000;

/// A core whose messages fail after one attempt, reporting them after [`REPORT_AFTER_MS`];
/// `m1` is FAILED, `m2` queued behind it. Returns the core and the time `m1` failed.
fn check() -> (DeviceCore, MessageId, MessageId, u64) {
    let t0 = 1_000_000;
    let config = DeviceConfig {
        failed_report_after_ms: Some(REPORT_AFTER_MS),
        ..DeviceConfig::default()
    };
    let (mut core, m1, ack_timeout) = one_try_then_create(config, t0);
    // The message goes alone, never answered: it is FAILED (the Create goes next).
    let failed_at = t0 + ack_timeout;
    core.handle_timeout(failed_at).expect("timeout");
    let m2 = core
        .send(CONV, b"again".to_vec(), vec![], failed_at)
        .expect("send");
    drain(&mut core);
    while core.poll_event().is_some() {}
    (core, m1, m2, failed_at)
}

fn expired(core: &mut DeviceCore) -> Vec<(ConversationId, Vec<MessageId>)> {
    let mut out = Vec::new();
    while let Some(ev) = core.poll_event() {
        if let DeviceEvent::FailedExpired {
            conversation,
            messages,
        } = ev
        {
            out.push((conversation, messages.iter().map(|m| m.message).collect()));
        }
    }
    out
}

#[test]
fn a_failed_message_is_reported_once_when_old_enough_and_never_dropped_on_its_own() {
    let (mut core, m1, _, failed_at) = check();
    let listed = core.failed_messages(failed_at, 0).expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].message, listed[0].conversation),
        (m1, CONV),
        "the FAILED message, typed"
    );
    assert_eq!(listed[0].attempts, 1);
    let report_at = listed[0].failed_since_ms + REPORT_AFTER_MS;
    assert!(
        core.failed_messages(report_at - 1, REPORT_AFTER_MS)
            .expect("list")
            .is_empty(),
        "not old enough yet"
    );
    // The core asks to be woken when it crosses the age, and reports it then, once.
    let wake = core.poll_timeout().expect("a wake-up");
    assert!(
        wake <= report_at,
        "woken by {wake}, report due at {report_at}"
    );
    core.handle_timeout(report_at - 1).expect("timeout");
    assert!(expired(&mut core).is_empty(), "reported before its age");
    core.handle_timeout(report_at).expect("timeout");
    assert_eq!(expired(&mut core), vec![(CONV, vec![m1])]);
    core.handle_timeout(report_at + 10 * REPORT_AFTER_MS)
        .expect("timeout");
    assert!(expired(&mut core).is_empty(), "reported twice");
    // Nothing dropped it: still in the outbox, still shown FAILED.
    let later = report_at + 100 * REPORT_AFTER_MS;
    assert_eq!(
        core.failed_messages(later, REPORT_AFTER_MS)
            .expect("list")
            .iter()
            .map(|f| f.message)
            .collect::<Vec<_>>(),
        vec![m1]
    );
    let shown = core.store_mut().conversation(CONV).expect("conversation");
    assert_eq!(shown.status(&m1), Some(Status::Failed));
}

#[test]
fn discarding_drops_the_message_from_outbox_indexes_and_documents_in_one_go() {
    let (mut core, m1, m2, _) = check();
    // Typed refusals, and nothing dropped by them.
    let unknown = MessageId([9; 16]);
    assert!(matches!(
        core.discard_failed(&[m1, unknown]),
        Err(DeviceError::Store(StoreError::NotInOutbox(m))) if m == unknown
    ));
    assert!(matches!(
        core.discard_failed(&[m1, m2]),
        Err(DeviceError::Store(StoreError::NotFailed(m))) if m == m2
    ));
    assert_eq!(core.failed_messages(u64::MAX, 0).expect("list").len(), 1);

    let dropped = core.discard_failed(&[m1]).expect("discard");
    assert_eq!(
        dropped.iter().map(|f| f.message).collect::<Vec<_>>(),
        vec![m1]
    );
    let store = core.store_mut();
    let outbox: Vec<Option<MessageId>> = store
        .outbox()
        .expect("outbox")
        .iter()
        .map(|e| e.message)
        .collect();
    assert!(!outbox.contains(&Some(m1)), "still queued: {outbox:?}");
    assert!(outbox.contains(&Some(m2)), "the queued message stays");
    let indexed: Vec<MessageId> = store
        .latest(CONV, 10)
        .expect("index")
        .iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(indexed, vec![m2], "the index still lists it");
    let shown: Vec<MessageId> = store
        .conversation(CONV)
        .expect("conversation")
        .messages()
        .iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(shown, vec![m2], "the document still shows it");
    // Rebuilt from the log (snapshots and loaded documents gone), it stays gone.
    store.unload_all();
    let shown = store.conversation(CONV).expect("conversation");
    assert_eq!(shown.message(&m1), None);
    assert!(shown.message(&m2).is_some());
    // Gone for good: a second discard names an unknown message.
    assert!(matches!(
        core.discard_failed(&[m1]),
        Err(DeviceError::Store(StoreError::NotInOutbox(m))) if m == m1
    ));
}
