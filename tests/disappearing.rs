//! Retention policies on member devices, sans-IO on virtual time: a member sets a policy (a
//! signed event, in force from its place in the server order); each device's erasure pass,
//! driven by its clock, erases what the policy no longer keeps: disappearing messages some
//! time after they were read (the sender's own copy after it was sent), kept-for-N-days
//! messages once N days old. Erased messages leave every view and index, a tombstone says
//! why, the app is told, and a re-delivered copy does not bring a body back.

mod common;

use common::{user, World, CONV};
use tidings::engine::{
    Appended, Change, DeviceEvent, ErasureReason, Event, EventKind, MessageId, RetentionPolicy,
};

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 24 * 3600 * 1000;

/// What the index shows (the app's fast path), with bodies.
fn indexed(w: &World, d: usize) -> Vec<MessageId> {
    let reader = w.devices[d].core.store().reader();
    reader
        .page(CONV, None, 100)
        .expect("page")
        .iter()
        .map(|r| r.view.id)
        .collect()
}

fn erased_reported(w: &World, d: usize) -> Vec<(MessageId, ErasureReason)> {
    w.devices[d]
        .events
        .iter()
        .filter_map(|e| match e {
            DeviceEvent::Changes(ch) => Some(ch),
            _ => None,
        })
        .flatten()
        .filter_map(|c| match c {
            Change::MessageErased {
                conversation,
                message,
                reason,
            } if *conversation == CONV => Some((*message, *reason)),
            _ => None,
        })
        .collect()
}

/// Alice creates the conversation with Bob, both online; returns (alice, bob) device indexes.
fn pair(w: &mut World) -> (usize, usize) {
    let (alice, bob) = (user(1), user(2));
    let a = w.add_device_of(&alice, 11);
    let b = w.add_device_of(&bob, 21);
    for d in [a, b] {
        w.set_online(d, true);
    }
    w.devices[a]
        .core
        .create_conversation(CONV, vec![bob.id], w.now)
        .expect("create");
    w.run(5_000);
    (a, b)
}

fn set_policy(w: &mut World, d: usize, policy: RetentionPolicy) {
    let now = w.now;
    w.devices[d]
        .core
        .set_retention(CONV, policy, now)
        .expect("set retention");
    w.run(5_000);
}

#[test]
fn a_disappearing_message_is_erased_after_it_was_read_and_stays_erased() {
    let mut w = World::new(9);
    let (a, b) = pair(&mut w);
    // Bob, a member but not an admin, turns disappearing messages on.
    set_policy(
        &mut w,
        b,
        RetentionPolicy::Disappear {
            after_read_secs: 60,
        },
    );
    for d in [a, b] {
        assert_eq!(
            w.devices[d].core.store().retention(CONV).expect("policy"),
            RetentionPolicy::Disappear {
                after_read_secs: 60
            },
            "device {d}"
        );
    }
    let m = w.send_text(a, "this message will self-destruct");
    w.run(5_000);
    assert_eq!(w.shown_ids(b), vec![m]);

    // Unread, it stays on Bob's device however long; Alice's copy goes a minute after sending.
    w.now += 10 * MINUTE_MS;
    w.run(5_000);
    assert_eq!(w.shown_ids(b), vec![m], "unread: kept");
    assert_eq!(indexed(&w, b), vec![m]);
    assert_eq!(w.shown_ids(a), Vec::<MessageId>::new(), "sender's copy");
    assert_eq!(indexed(&w, a), Vec::<MessageId>::new());
    assert_eq!(
        erased_reported(&w, a),
        vec![(m, ErasureReason::Disappeared)]
    );

    // Bob reads it: a minute later it is gone from his device too.
    let now = w.now;
    w.devices[b].core.mark_read(CONV, None, now).expect("read");
    w.run(5_000);
    assert_eq!(w.shown_ids(b), vec![m], "just read: still there");
    w.now += MINUTE_MS + 1;
    w.run(5_000);
    assert_eq!(w.shown_ids(b), Vec::<MessageId>::new());
    assert_eq!(indexed(&w, b), Vec::<MessageId>::new());
    let reader = w.devices[b].core.store().reader();
    assert!(reader.message(CONV, m).expect("read").is_none());
    assert_eq!(
        erased_reported(&w, b),
        vec![(m, ErasureReason::Disappeared)]
    );
    let tombs = w.devices[b].core.store().erased(CONV).expect("tombstones");
    assert_eq!(tombs.len(), 1);
    assert_eq!(
        (tombs[0].message, tombs[0].reason),
        (m, ErasureReason::Disappeared)
    );
    let event = tombs[0].event;
    assert!(
        w.devices[b]
            .core
            .store()
            .log()
            .get(&event)
            .expect("get")
            .is_none(),
        "the envelope (and its ciphertext) left the log"
    );

    // The relay still holds it (its own retention drops it later): a re-delivery is a
    // duplicate, the body does not come back, and a reopened view stays without it.
    let (envelopes, _, _) = w
        .relay
        .store()
        .page(&CONV, 0, 100, 1 << 20)
        .expect("relay events");
    let copy = envelopes
        .iter()
        .map(|e| Event::decode_trusted(&e.0).expect("decode"))
        .find(|e| matches!(e.kind(), EventKind::Send { .. }))
        .expect("the relay's copy");
    assert_eq!(copy.id(), event);
    let log = w.devices[b].core.store().log();
    assert_eq!(
        log.append(std::slice::from_ref(&copy)).expect("append"),
        vec![Appended::Duplicate]
    );
    w.devices[b].core.store_mut().unload_all();
    assert_eq!(w.shown_ids(b), Vec::<MessageId>::new());

    // Both member devices confirmed it (`Received`): the relay's next retention pass drops
    // its copy too, and what it serves no longer holds the event.
    let stats = w.relay.handle_retention(w.now).expect("retention");
    assert!(stats.n_bodies >= 1, "{stats:?}");
    let (left, _, _) = w
        .relay
        .store()
        .page(&CONV, 0, 100, 1 << 20)
        .expect("relay events");
    assert!(
        left.iter()
            .all(|e| Event::decode_trusted(&e.0).map(|e| e.id()) != Ok(event)),
        "the relay's copy is gone"
    );

    // Messages keep flowing and statuses of what is kept are intact.
    let later = w.send_text(a, "after");
    w.run(5_000);
    assert_eq!(w.shown_ids(b), vec![later]);
}

#[test]
fn keep_days_erases_what_is_older_and_a_policy_does_not_reach_back() {
    let mut w = World::new(9);
    let (a, b) = pair(&mut w);
    let before = w.send_text(a, "before any policy");
    w.run(5_000);
    set_policy(&mut w, a, RetentionPolicy::KeepDays { days: 7 });
    let old = w.send_text(a, "old");
    w.run(5_000);
    w.now += 5 * DAY_MS;
    let young = w.send_text(b, "young");
    w.run(5_000);
    w.now += 3 * DAY_MS;
    w.run(5_000);
    for d in [a, b] {
        assert_eq!(w.shown_ids(d), vec![before, young], "device {d}");
        assert_eq!(indexed(&w, d), vec![before, young], "device {d}");
        assert_eq!(erased_reported(&w, d), vec![(old, ErasureReason::Expired)]);
    }
    // Back to keeping everything: what came after stays whatever its age.
    set_policy(&mut w, b, RetentionPolicy::KeepAll);
    let kept = w.send_text(a, "kept");
    w.run(5_000);
    w.now += 30 * DAY_MS;
    w.run(5_000);
    for d in [a, b] {
        assert_eq!(w.shown_ids(d), vec![before, kept], "device {d}");
    }
}
