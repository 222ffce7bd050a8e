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
