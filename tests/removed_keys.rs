//! A removed member's device drops the keys it can no longer use: once its gate admits the
//! removal of its user, the erasure pass erases every message sequenced after the removal
//! (tombstoned, reason `Removed`), so that even a message sent after the removal under an
//! epoch the device knew (by a member who had not learned of the removal yet), fed to it by a
//! relay that does not stop, cannot be read there; and it erases every epoch key that no
//! message kept from before the removal is sealed under. What the device had accepted before
//! the removal stays readable: an admin's removal does not wipe a member's copy.

mod common;

use common::{user, World, CONV};
use tidings::engine::store::Body;
use tidings::engine::{ErasureReason, Event, MessageId, UserId};

fn body(w: &World, d: usize, m: MessageId) -> Option<Body> {
    let reader = w.devices[d].core.store().reader();
    reader.message(CONV, m).expect("read").map(|r| r.body)
}

/// Every event and statement the relay holds for the conversation, as a relay that keeps
/// feeding a removed member would hand them over.
fn everything(w: &World) -> Vec<Event> {
    let (events, records, _) = w
        .relay
        .store()
        .page(&CONV, 0, 10_000, 1 << 24)
        .expect("relay page");
    records
        .iter()
        .chain(events.iter())
        .map(|e| Event::decode_trusted(&e.0).expect("decode"))
        .collect()
}

/// Carol (`c`) is away when Alice (`a`) removes Bob: then she writes `text`, under an epoch
/// Bob's device holds, and comes back. Returns her message.
fn remove_bob_while_carol_is_away(
    w: &mut World,
    (a, c): (usize, usize),
    bob: UserId,
    text: &str,
) -> MessageId {
    w.set_online(c, false);
    let now = w.now;
    w.devices[a]
        .core
        .remove_member(CONV, bob, now)
        .expect("remove");
    w.run(5_000);
    let late = w.send_text(c, text);
    w.set_online(c, true);
    w.run(10_000);
    late
}

/// A relay that keeps feeding the removed device `b` everything it holds.
fn feed_everything(w: &mut World, b: usize) {
    let all = everything(w);
    w.devices[b].core.store_mut().apply(&all).expect("apply");
    w.run(5_000);
}

#[test]
fn a_removed_members_device_erases_its_keys_and_cannot_read_what_follows() {
    let (alice, bob, carol) = (user(1), user(2), user(3));
    let mut w = World::new(9);
    let [a, b, c] = w.online_in_conversation([&alice, &bob, &carol]);
    let m1 = w.send_text(a, "all three");
    w.run(5_000);
    assert_eq!(body(&w, b, m1), Some(Body::Text(b"all three".to_vec())));
    assert!(!w.devices[b]
        .core
        .store_mut()
        .epochs(CONV)
        .expect("epochs")
        .is_empty());

    let late = remove_bob_while_carol_is_away(&mut w, (a, c), bob.id, "bob must not read this");
    assert_eq!(
        body(&w, a, late),
        Some(Body::Text(b"bob must not read this".to_vec())),
        "the members read it"
    );

    feed_everything(&mut w, b);

    assert_eq!(body(&w, b, late), None, "not readable, not shown");
    assert_eq!(
        body(&w, b, m1),
        Some(Body::Text(b"all three".to_vec())),
        "what came before the removal stays readable"
    );
    let tombs = w.devices[b].core.store().erased(CONV).expect("tombstones");
    let gone: Vec<(MessageId, ErasureReason)> =
        tombs.iter().map(|t| (t.message, t.reason)).collect();
    assert!(gone.contains(&(late, ErasureReason::Removed)), "{gone:?}");
    assert!(
        !gone.iter().any(|(m, _)| *m == m1),
        "nothing from before the removal is erased: {gone:?}"
    );
    // Fed again, nothing comes back.
    feed_everything(&mut w, b);
    assert_eq!(body(&w, b, late), None);
    // The members keep everything.
    assert_eq!(body(&w, c, m1), Some(Body::Text(b"all three".to_vec())));
}

#[test]
fn a_removed_members_device_keeps_the_keys_of_what_it_read_and_drops_the_rest() {
    let (alice, bob, carol, dave) = (user(1), user(2), user(3), user(4));
    let mut w = World::new(10);
    let [a, b, c] = w.online_in_conversation([&alice, &bob, &carol]);
    // Dave's device, online, not a member yet.
    let d = w.add_device_of(&dave, 41);
    w.set_online(d, true);
    let m1 = w.send_text(a, "before");
    w.run(5_000);
    let first = w.devices[b].core.store_mut().epochs(CONV).expect("epochs");
    assert_eq!(first.len(), 1, "one epoch so far: {first:?}");

    // Dave joins; Carol learns of it, then goes away before Bob's removal. Her next message
    // starts a new epoch for the members she knows, Bob's device among them.
    let now = w.now;
    w.devices[a]
        .core
        .add_member(CONV, dave.id, false, now)
        .expect("add");
    w.run(5_000);
    let late = remove_bob_while_carol_is_away(&mut w, (a, c), bob.id, "after");
    feed_everything(&mut w, b);
    assert_eq!(body(&w, b, late), None, "not readable, not shown");
    assert_eq!(body(&w, b, m1), Some(Body::Text(b"before".to_vec())));
    assert_eq!(
        w.devices[b].core.store_mut().epochs(CONV).expect("epochs"),
        first,
        "the key of what it read stays, the one only later messages use is gone"
    );
}
