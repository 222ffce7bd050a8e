//! The outbox against the relay: what a Submit holds (within the relay's frame and batch
//! limits), when queued entries are due, and which entries give up when retries run out.

use super::*;

/// A Submit fits in the frames the relay reads: messages written offline with large bodies
/// (long texts, photos' thumbnails) went in batches of `submit_batch` events whatever their
/// size, so 16 bodies of 40 KiB made a 640 KiB frame for a relay reading 100 KiB ones (and
/// 256 of them would not even encode under `MAX_FRAME_LEN`): the frame was dropped, the
/// submission timed out, and the same batch went again until the messages FAILED.
#[test]
fn a_submit_fits_in_the_relays_frames() {
    let t0 = 1_000_000;
    let max_frame_len: u32 = 100 * 1024;
    let mut core = DeviceCore::new(store(), relay().device(), DeviceConfig::default(), 1);
    for i in 0..16u8 {
        core.send(CONV, vec![i; 40 * 1024], vec![], t0)
            .expect("send");
    }
    handshake_with(
        &mut core,
        WireLimits {
            max_frame_len,
            ..limits()
        },
        t0,
    );
    let submits: Vec<ClientFrame> = drain(&mut core)
        .into_iter()
        .filter(|f| matches!(f, ClientFrame::Submit { .. }))
        .collect();
    let [submit] = submits.as_slice() else {
        panic!("one Submit in flight, got {}", submits.len());
    };
    let ClientFrame::Submit { events, .. } = submit else {
        unreachable!()
    };
    let len = crate::wire::encoded_len(submit);
    assert!(
        len <= max_frame_len as usize + crate::wire::FRAME_HEADER_LEN,
        "{} events in a frame of {len} bytes",
        events.len()
    );
    assert_eq!(events.len(), 2, "as many 40 KiB events as fit");
}

/// Found by the simulator (tests/sim, seed 53): a phone restarted with its clock set back
/// five minutes, and its queued messages, stamped with the old clock, waited those five
/// minutes before their first attempt.
#[test]
fn a_clock_set_back_does_not_hold_the_outbox() {
    let late = 1_000_000 + 300_000;
    let mut core = ready(DeviceConfig::default(), late);
    drain(&mut core);
    core.send(CONV, b"one".to_vec(), vec![], late)
        .expect("send");
    core.handle_disconnected(late).expect("disconnect");
    core.send(CONV, b"two".to_vec(), vec![], late)
        .expect("send");
    // Back online with the clock five minutes earlier.
    let early = 1_000_000;
    handshake(&mut core, early);
    let submitted: Vec<usize> = drain(&mut core)
        .into_iter()
        .filter_map(|f| match f {
            ClientFrame::Submit { events, .. } => Some(events.len()),
            _ => None,
        })
        .collect();
    assert_eq!(submitted, vec![2], "both messages go out at once");
}

/// Found by the simulator (tests/sim, seed 0): a receipt whose retries ran out went
/// FAILED, and nothing ever sent it again (`retry` takes a message id): the receipt was
/// lost and the sender's ticks never moved. Only messages give up.
#[test]
fn only_messages_give_up_when_retries_run_out() {
    let t0 = 1_000_000;
    let config = DeviceConfig {
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        ..DeviceConfig::default()
    };
    let ack_timeout = config.ack_timeout_ms;
    let mut core = ready(config, t0);
    drain(&mut core);
    let m1 = core.send(CONV, b"hi".to_vec(), vec![], t0).expect("send");
    core.create_conversation(CONV, vec![bob_user()], t0)
        .expect("create");
    let submitted = |core: &mut DeviceCore| match core.poll_transmit() {
        Some(ClientFrame::Submit { events, .. }) => events.len(),
        other => panic!("expected a Submit, got {other:?}"),
    };
    assert_eq!(submitted(&mut core), 1, "the message alone");
    // Its one attempt times out: the message is FAILED, the Create goes out.
    core.handle_timeout(t0 + ack_timeout).expect("timeout");
    assert_eq!(submitted(&mut core), 1, "the Create alone");
    // The Create's one attempt times out too: it stays queued.
    core.handle_timeout(t0 + 2 * ack_timeout).expect("timeout");
    let outbox = core.store_mut().outbox().expect("outbox");
    let states: Vec<(Option<MessageId>, OutboxState)> =
        outbox.iter().map(|e| (e.message, e.state)).collect();
    assert_eq!(
        states,
        vec![(Some(m1), OutboxState::Failed), (None, OutboxState::Queued),]
    );
    let next = core.poll_timeout().expect("the Create is retried");
    core.handle_timeout(next).expect("timeout");
    assert_eq!(submitted(&mut core), 1, "the Create again");
}

/// Found by the simulator (tests/sim, seed 0): a message queued behind one that is backing
/// off is due but held back, and `poll_timeout` asked to be woken for it at once, again and
/// again, until the first one was due: a busy loop in the shell.
#[test]
fn poll_timeout_ignores_entries_held_behind_a_backing_off_one() {
    let t0 = 1_000_000;
    let config = DeviceConfig::default();
    let ack_timeout = config.ack_timeout_ms;
    let mut core = ready(config, t0);
    drain(&mut core);
    core.send(CONV, b"first".to_vec(), vec![], t0)
        .expect("send");
    assert!(matches!(
        core.poll_transmit(),
        Some(ClientFrame::Submit { .. })
    ));
    // No answer: the attempt times out and the first message backs off.
    let t1 = t0 + ack_timeout;
    core.handle_timeout(t1).expect("timeout");
    let backoff_until = core.poll_timeout().expect("a wake-up for the retry");
    assert!(backoff_until > t1);
    // A second message in the same conversation waits behind the first.
    core.send(CONV, b"second".to_vec(), vec![], t1)
        .expect("send");
    assert!(core.poll_transmit().is_none(), "sent ahead of the first");
    core.handle_timeout(t1).expect("timeout");
    assert_eq!(core.poll_timeout(), Some(backoff_until));
    // When the first is due, both go out in order.
    core.handle_timeout(backoff_until).expect("timeout");
    match core.poll_transmit() {
        Some(ClientFrame::Submit { events, .. }) => assert_eq!(events.len(), 2),
        other => panic!("expected one Submit of both messages, got {other:?}"),
    }
}
