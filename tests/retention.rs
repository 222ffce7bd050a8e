//! Relay retention seen from devices, sans-IO on virtual time: nothing a member device has
//! not confirmed is dropped before the relay's time-to-live; a device that stays away past it
//! is told exactly which range it missed (one `HistoryGap`, no endless pull), and converges
//! on what is left.

mod common;

use common::{user, World, CONV};
use tidings::engine::DeviceEvent;
use tidings::engine::{MessageId, ServerSeq};
use tidings::relay::core::Retention;

const DAY_MS: u64 = 24 * 3600 * 1000;

fn gaps(w: &World, d: usize) -> Vec<(ServerSeq, ServerSeq)> {
    w.devices[d]
        .events
        .iter()
        .filter_map(|e| match e {
            DeviceEvent::HistoryGap {
                conversation,
                from,
                to,
            } if *conversation == CONV => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_device_away_past_the_ttl_gets_the_exact_gap_and_converges() {
    let (alice, bob, carol) = (user(1), user(2), user(3));
    let mut w = World::new(9);
    w.relay.set_retention(Retention::default());
    let [a, b, c] = w.online_in_conversation([&alice, &bob, &carol]);

    // Carol away for a day: the others confirm, a pass runs, nothing she lacks goes.
    w.set_online(c, false);
    let first: Vec<MessageId> = (0..5)
        .map(|i| w.send_text(a, &format!("first {i}")))
        .collect();
    w.run(10_000);
    w.now += DAY_MS;
    w.relay.handle_retention(w.now).expect("retention");
    let floor = w.relay.store().retained_floor(&CONV).expect("floor");
    assert!(
        floor <= w.relay_cursor(c),
        "dropped up to {floor}, carol confirmed {}",
        w.relay_cursor(c)
    );
    w.set_online(c, true);
    w.run(10_000);
    assert_eq!(w.shown_ids(c), first);
    assert!(gaps(&w, c).is_empty());
    // Everyone confirmed: the next pass drops what all have.
    let stats = w.relay.handle_retention(w.now).expect("retention");
    assert!(stats.n_bodies >= 5, "{stats:?}");

    // Carol away past the time-to-live.
    w.set_online(c, false);
    let away_from = w.relay_cursor(c) + 1;
    for i in 0..4 {
        w.send_text(a, &format!("missed {i}"));
    }
    w.run(10_000);
    w.now += Retention::default().ttl_ms() + DAY_MS;
    let after: Vec<MessageId> = (0..3)
        .map(|i| w.send_text(a, &format!("after {i}")))
        .collect();
    w.run(10_000);
    w.relay.handle_retention(w.now).expect("retention");
    let floor = w.relay.store().retained_floor(&CONV).expect("floor");
    assert!(floor >= away_from, "{floor} >= {away_from}");

    w.set_online(c, true);
    w.run(30_000);
    assert_eq!(
        gaps(&w, c),
        vec![(away_from, floor)],
        "the exact range, once"
    );
    let mut expected = first.clone();
    expected.extend(after.iter().copied());
    assert_eq!(w.shown_ids(c), expected, "what is left, in order");
    let max_seq = w.relay_head();
    assert_eq!(w.relay_cursor(c), max_seq, "carol caught up: no pull loop");
    // The others still see everything they had.
    assert_eq!(w.shown_ids(b).len(), 5 + 4 + 3);
}

/// A member away since before the conversation began, back after the TTL: the relay keeps
/// the `Create` (and the epoch opening) inside the range it dropped, and the device takes
/// them from the gap answer, so it shows the members and what is sent next. Found by the
/// simulator with retention on: the device recorded the gap before taking the answer's
/// events, stepped its gate over the `Create` it had not stored yet, and refused every later
/// event of the conversation as "not created".
#[test]
fn a_device_away_since_before_the_create_takes_what_the_relay_kept() {
    let (alice, bob, carol) = (user(1), user(2), user(3));
    let mut w = World::new(9);
    w.relay.set_retention(Retention::default());
    let [a, b] = [w.add_device_of(&alice, 11), w.add_device_of(&bob, 21)];
    let c = w.add_device_of(&carol, 31);
    for d in [a, b, c] {
        w.set_online(d, true);
    }
    w.run(5_000);
    w.set_online(c, false);
    let now = w.now;
    w.devices[a]
        .core
        .create_conversation(CONV, vec![bob.id, carol.id], now)
        .expect("create");
    w.run(5_000);
    for i in 0..3 {
        w.send_text(a, &format!("missed {i}"));
    }
    w.run(10_000);
    w.now += Retention::default().ttl_ms() + DAY_MS;
    w.relay.handle_retention(w.now).expect("retention");
    let floor = w.relay.store().retained_floor(&CONV).expect("floor");
    assert!(floor >= 4, "the messages are gone: floor {floor}");

    w.set_online(c, true);
    w.run(30_000);
    let after = w.send_text(a, "after");
    w.run(10_000);
    assert_eq!(gaps(&w, c), vec![(1, floor)], "told once, from the start");
    let ignored: Vec<_> = w.devices[c]
        .events
        .iter()
        .filter(|e| matches!(e, DeviceEvent::Ignored(_)))
        .collect();
    assert!(
        ignored.is_empty(),
        "carol refused honest events: {ignored:?}"
    );
    let members = w.devices[c]
        .core
        .store_mut()
        .conversation(CONV)
        .expect("conversation")
        .members()
        .map(|m| m.len());
    assert_eq!(members, Some(3), "the Create was taken from the gap answer");
    assert_eq!(w.shown_ids(c), vec![after]);
    assert_eq!(w.shown_ids(b).len(), 4);
}
