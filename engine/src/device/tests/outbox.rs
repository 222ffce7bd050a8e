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
    let (mut core, m1, ack_timeout) = one_try_then_create(DeviceConfig::default(), t0);
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

/// A device encrypting its bodies that knows no certificate of Bob yet, and the request id
/// of its catch-up's `Sync` (unanswered).
fn unacquainted(t0: u64) -> (DeviceCore, u64) {
    let me = DeviceKey::from_seed([1; 32], UserId([1; 32]));
    let mut config = StoreConfig::new(relay().device());
    config.encrypt = true;
    let store = Store::new(EventLog::in_memory().expect("log"), me, config, [1; 32]);
    let mut core = DeviceCore::new(store, relay().device(), DeviceConfig::default(), 1);
    handshake(&mut core, t0);
    let (sync, _) = sync_request(&drain(&mut core));
    (core, sync)
}

/// Accepts every event of `submit` from `seq` on, each with the relay's statement.
fn accept_all(submit: &ClientFrame, seq: &mut ServerSeq, t0: u64) -> ServerFrame {
    let ClientFrame::Submit { request_id, events } = submit else {
        panic!("expected a Submit, got {submit:?}");
    };
    let mut outcomes = Vec::new();
    let mut records = Vec::new();
    for e in events {
        *seq += 1;
        let ev = Event::decode(&e.0).expect("own event");
        outcomes.push(SubmitOutcome::Accepted { seq: *seq });
        records.push(Envelope(ack(&ev, *seq, t0).into_bytes()));
    }
    ServerFrame::SubmitResult {
        request_id: *request_id,
        outcomes,
        records,
    }
}

/// Accepts the Submit among `frames` (`what` says which one is expected) from `seq` on, and
/// returns what the device wrote next.
fn accept_submit_in(
    core: &mut DeviceCore,
    frames: &[ClientFrame],
    seq: &mut ServerSeq,
    t: u64,
    what: &str,
) -> Vec<ClientFrame> {
    let submit = frames
        .iter()
        .find(|f| matches!(f, ClientFrame::Submit { .. }))
        .unwrap_or_else(|| panic!("{what}: {frames:?}"));
    core.handle_frame(accept_all(submit, seq, t), t)
        .expect("result");
    drain(core)
}

/// The `Devices` asks among `frames` that name `user`: each one's request id and how many
/// users it names.
fn devices_asks(frames: &[ClientFrame], user: UserId) -> Vec<(u64, u32)> {
    frames
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Devices {
                request_id, users, ..
            } if users.contains(&user) => Some((*request_id, users.len() as u32)),
            _ => None,
        })
        .collect()
}

/// Creates CONV with Bob and has the relay sequence the Create (and the epoch's opening);
/// the connection drops before the relay says which devices Bob has.
fn created_then_cut_off(t0: u64) -> DeviceCore {
    let (mut core, _) = unacquainted(t0);
    core.create_conversation(CONV, vec![bob_user()], t0)
        .expect("create");
    let mut seq = 0;
    let frames = drain(&mut core);
    let next = accept_submit_in(&mut core, &frames, &mut seq, t0, "the Create goes");
    let asks = devices_asks(&next, bob_user());
    assert!(
        !asks.is_empty(),
        "asks for Bob's devices once the Create is placed"
    );
    core.handle_disconnected(t0).expect("disconnect");
    core
}

/// Found by the crash test (tests/crash_device.rs, 3 seeds of 29 with the cores loaded): the
/// phone's Create was sequenced but the phone was killed before the relay said which devices
/// Bob has. The next run flushed its messages, saw its outbox empty and exited before it
/// asked the directory again (that ask waits for the catch-up, after the flush), so the
/// epoch's key never reached Bob: he held 150 messages and could read none until the phone
/// came back. Now a message waits while the device knows no device of a member and has not
/// heard from the relay about that user since it started.
#[test]
fn messages_wait_for_the_devices_of_a_member_none_of_whose_is_known() {
    let t0 = 1_000_000;
    let mut core = created_then_cut_off(t0);
    let message = core.send(CONV, b"hi".to_vec(), vec![], t0).expect("send");
    handshake(&mut core, t0);
    let frames = drain(&mut core);
    let early: Vec<Event> = submitted(&frames)
        .into_iter()
        .filter(|e| matches!(e.kind(), EventKind::Send { .. }))
        .collect();
    assert!(
        early.is_empty(),
        "the message left before Bob's devices were known: {frames:?}"
    );
    let asks = devices_asks(&frames, bob_user());
    let [ask] = asks.as_slice() else {
        panic!("one ask for Bob's devices, got {frames:?}");
    };
    answer_about_bob(&mut core, *ask, true, t0);
    assert_shared_then_sent(&submitted(&drain(&mut core)), message);
}

/// The relay's whole answer to `ask` (Bob among the users it names): Bob's device, or
/// nothing.
fn answer_about_bob(core: &mut DeviceCore, ask: (u64, u32), device: bool, t: u64) {
    let (request_id, complete) = ask;
    let registrations = if device {
        vec![bob().certificate(&bob_user_key(), 1)]
    } else {
        vec![]
    };
    let answer = ServerFrame::Devices {
        request_id,
        registrations,
        revocations: vec![],
        complete,
        resume_after: None,
    };
    core.handle_frame(answer, t).expect("devices");
}

/// The message ids of the `Send` events among `events`.
fn sends(events: &[Event]) -> Vec<MessageId> {
    events
        .iter()
        .filter_map(|e| match e.kind() {
            EventKind::Send { message, .. } => Some(*message),
            _ => None,
        })
        .collect()
}

/// `sent` carries an epoch share sealed to Bob's device and `message`.
fn assert_shared_then_sent(sent: &[Event], message: MessageId) {
    let shared_to_bob = sent.iter().any(|e| {
        matches!(e.kind(), EventKind::EpochKeys { keys, .. }
            if keys.iter().any(|k| k.device == bob().device()))
    });
    assert!(shared_to_bob, "the epoch goes to Bob's device: {sent:?}");
    assert_eq!(
        sends(sent),
        vec![message],
        "and the message, in the same Submit"
    );
}

/// The epoch a message is sealed under, from its `Send` event.
fn sealed_epoch(send: &Event) -> EventId {
    let EventKind::Send { body, .. } = send.kind() else {
        panic!("not a Send: {send:?}");
    };
    match crate::e2ee::SealedBody::parse(body) {
        Ok(crate::e2ee::SealedBody::Sealed { epoch, .. }) => epoch,
        other => panic!("a sealed body, got {other:?}"),
    }
}

/// Creates CONV without Bob and has it placed, then adds Bob and writes a message right
/// behind the `AddMember`: the frames that follow, whose first `Submit` carries the
/// `AddMember`, and the message.
fn add_bob_then_send(
    core: &mut DeviceCore,
    seq: &mut ServerSeq,
    t0: u64,
) -> (Vec<ClientFrame>, MessageId) {
    core.create_conversation(CONV, vec![], t0).expect("create");
    let frames = drain(core);
    accept_submit_in(core, &frames, seq, t0, "the Create goes");
    core.add_member(CONV, bob_user(), false, t0).expect("add");
    let message = core.send(CONV, b"hi".to_vec(), vec![], t0).expect("send");
    let frames = drain(core);
    assert!(
        submitted(&frames)
            .iter()
            .any(|e| matches!(e.kind(), EventKind::AddMember { .. })),
        "the AddMember goes: {frames:?}"
    );
    (frames, message)
}

/// Found by reviewing the fix above: a member this device adds is not in its gate before the
/// `AddMember` is placed, so messages queued behind it went in the same Submit, sealed under
/// the epoch from before the join: the new member never gets that key (key requests for an
/// epoch from before a join are refused), though the messages are placed after the join.
/// They now wait, and are sealed under an epoch opened behind the `AddMember`, which the
/// new member's devices get once the relay names them.
#[test]
fn messages_behind_an_unplaced_add_member_are_sealed_for_the_new_member() {
    let t0 = 1_000_000;
    let (mut core, _) = unacquainted(t0);
    let mut seq = 0;
    let (frames, message) = add_bob_then_send(&mut core, &mut seq, t0);
    assert!(
        sends(&submitted(&frames)).is_empty(),
        "the message waits: {frames:?}"
    );
    let frames = accept_submit_in(&mut core, &frames, &mut seq, t0, "a Submit");
    assert!(sends(&submitted(&frames)).is_empty(), "{frames:?}");
    let asks = devices_asks(&frames, bob_user());
    let [ask] = asks.as_slice() else {
        panic!("one ask for Bob's devices once the AddMember is placed, got {frames:?}");
    };
    // The epoch's opening, queued behind the AddMember, goes on its own.
    let next = accept_submit_in(&mut core, &frames, &mut seq, t0, "the opening goes");
    assert!(sends(&submitted(&next)).is_empty());
    answer_about_bob(&mut core, *ask, true, t0);
    let sent = submitted(&drain(&mut core));
    assert_shared_then_sent(&sent, message);
    // And the share is of the very epoch the message is sealed under.
    let shared: Vec<EventId> = sent
        .iter()
        .filter_map(|e| match e.kind() {
            EventKind::EpochKeys {
                epoch: Some(epoch), ..
            } => Some(*epoch),
            _ => None,
        })
        .collect();
    let send = sent
        .iter()
        .find(|e| matches!(e.kind(), EventKind::Send { .. }))
        .expect("the message");
    let epoch = sealed_epoch(send);
    assert!(
        shared.contains(&epoch),
        "the message's epoch {epoch} is shared with Bob: {shared:?}"
    );
}

/// Left open at stop 31: a member this device adds whose devices it already knows (from
/// another conversation) was not held for, and the epoch opened behind the `AddMember` was
/// sealed to the members from before the join only. The new member's devices got it only
/// once the relay answered the ask made at placement: a sender gone in that round trip (killed,
/// out of coverage) left the messages unreadable for them until it came back. The opening is
/// now sealed to the known devices of the users its own queued `AddMember`s bring in, so the
/// key leaves with the messages.
#[test]
fn an_added_member_whose_devices_are_known_gets_the_key_with_the_messages() {
    let t0 = 1_000_000;
    let (mut core, _) = unacquainted(t0);
    let mut seq = 0;
    // Bob's device becomes known through another conversation.
    let other = ConversationId([8; 16]);
    core.create_conversation(other, vec![bob_user()], t0)
        .expect("create");
    let frames = drain(&mut core);
    let frames = accept_submit_in(&mut core, &frames, &mut seq, t0, "other Create");
    let [ask] = devices_asks(&frames, bob_user())[..] else {
        panic!("one ask for Bob's devices: {frames:?}");
    };
    answer_about_bob(&mut core, ask, true, t0);
    let frames = drain(&mut core);
    accept_submit_in(
        &mut core,
        &frames,
        &mut seq,
        t0,
        "the share in the other conversation",
    );
    // A conversation without Bob, then Bob added and a message right behind.
    let (frames, message) = add_bob_then_send(&mut core, &mut seq, t0);
    // Placed; the relay has not answered the ask about Bob yet (and never does here).
    let frames = accept_submit_in(&mut core, &frames, &mut seq, t0, "the AddMember goes");
    let sent = submitted(&frames);
    assert_eq!(sends(&sent), vec![message], "the message goes: {frames:?}");
    let send = sent
        .iter()
        .find(|e| e.conversation() == CONV && matches!(e.kind(), EventKind::Send { .. }))
        .expect("the message");
    let epoch = sealed_epoch(send);
    let to_bob = sent.iter().any(|e| {
        e.id() == epoch
            && matches!(e.kind(), EventKind::EpochKeys { keys, .. }
                if keys.iter().any(|k| k.device == bob().device()))
    });
    assert!(
        to_bob,
        "the message's epoch {epoch} is opened with a share for Bob's known device: {sent:?}"
    );
}

/// Found by reviewing the fix above: the relay answers about a user it shares no
/// conversation with with nothing, and answers a `Devices` ask at once while a `Submit`
/// waits for its durable commit. An ask sent while the `Create` was not placed yet (the
/// catch-up's, here) got that answer, which let the messages go as if Bob had no device.
#[test]
fn an_answer_from_before_the_create_was_placed_does_not_count() {
    let t0 = 1_000_000;
    let (mut core, sync) = unacquainted(t0);
    core.create_conversation(CONV, vec![bob_user()], t0)
        .expect("create");
    let message = core.send(CONV, b"hi".to_vec(), vec![], t0).expect("send");
    let frames = drain(&mut core);
    let submit = frames
        .iter()
        .find(|f| matches!(f, ClientFrame::Submit { .. }))
        .expect("the Create goes")
        .clone();
    assert!(sends(&submitted(&frames)).is_empty(), "{frames:?}");
    // The catch-up's answer comes while the Create is not committed yet: it asks about Bob,
    // and the relay, sharing no conversation of Bob's with this user yet, says nothing.
    let listed = ServerFrame::Conversations {
        request_id: sync,
        conversations: vec![],
        next: None,
        invitations: vec![],
        blocked: vec![],
    };
    core.handle_frame(listed, t0).expect("list");
    let frames = drain(&mut core);
    let asks = devices_asks(&frames, bob_user());
    let [early] = asks.as_slice() else {
        panic!("the catch-up asks about Bob, got {frames:?}");
    };
    // Then the Create is placed, and the device asks about Bob again.
    let mut seq = 0;
    core.handle_frame(accept_all(&submit, &mut seq, t0), t0)
        .expect("result");
    let frames = drain(&mut core);
    assert!(sends(&submitted(&frames)).is_empty(), "{frames:?}");
    let asks = devices_asks(&frames, bob_user());
    let [ask] = asks.as_slice() else {
        panic!("asks about Bob again once the Create is placed, got {frames:?}");
    };
    // The answers come in order: the early one first, then the one that counts.
    answer_about_bob(&mut core, *early, false, t0);
    let frames = drain(&mut core);
    assert!(
        sends(&submitted(&frames)).is_empty(),
        "the answer to the ask from before the Create was placed let the message go: {frames:?}"
    );
    answer_about_bob(&mut core, *ask, true, t0);
    assert_shared_then_sent(&submitted(&drain(&mut core)), message);
}

/// The wait is bounded: a relay that never answers for Bob holds the message for one ask's
/// deadline, then it goes (Bob's devices get the key when the directory answers later).
#[test]
fn a_member_the_relay_never_answers_for_holds_messages_one_deadline_at_most() {
    let t0 = 1_000_000;
    let config = DeviceConfig::default();
    let mut core = created_then_cut_off(t0);
    core.send(CONV, b"hi".to_vec(), vec![], t0).expect("send");
    handshake(&mut core, t0);
    let frames = drain(&mut core);
    assert!(!devices_asks(&frames, bob_user()).is_empty(), "{frames:?}");
    assert!(submitted(&frames).is_empty(), "{frames:?}");
    // The first erasure pass (due at once on a fresh core) out of the way.
    core.handle_timeout(t0).expect("timeout");
    assert!(submitted(&drain(&mut core)).is_empty());
    let wake = core
        .poll_timeout()
        .expect("a wakeup for the ask's deadline");
    assert_eq!(
        wake,
        t0 + config.ack_timeout_ms,
        "wakes at the ask's deadline, not before"
    );
    core.handle_timeout(t0 + config.ack_timeout_ms)
        .expect("timeout");
    let sends = submitted(&drain(&mut core))
        .into_iter()
        .filter(|e| matches!(e.kind(), EventKind::Send { .. }))
        .count();
    assert_eq!(sends, 1, "the message goes once the ask is given up");
}
