//! Peer reconciliation between two device cores, without the relay: the events a device
//! missed reach it from another device, admitted on the relay's path (signatures, the pinned
//! relay's statements, the gate), and the relay later adds nothing twice.

mod common;

use common::{user, World, CONV};
use tidings::engine::peer::{admitted_peers, PeerError, PeerFrame, PeerSession};
use tidings::engine::wire::{frame_bytes, DeviceRevocation, FrameDecoder, MAX_FRAME_LEN};
use tidings::engine::{DeviceId, MessageId};

/// Through the codec, as the transport carries it.
fn carried(frame: PeerFrame) -> PeerFrame {
    let bytes = frame_bytes(&frame).expect("encode");
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    decoder.push(&bytes);
    decoder
        .poll_frame::<PeerFrame>()
        .expect("decode")
        .expect("a whole frame")
}

fn device_id(w: &World, idx: usize) -> DeviceId {
    w.devices[idx].core.store().key().device()
}

/// Runs one peer session between devices `a` and `b` to its end, passing every frame from
/// `a` to `b` through `tamper`. Returns the events `b` received.
fn sync_with(w: &mut World, a: usize, b: usize, tamper: impl Fn(PeerFrame) -> PeerFrame) -> u64 {
    let (ida, idb) = (device_id(w, a), device_id(w, b));
    let mut sa = PeerSession::new(&mut w.devices[a].core, idb).expect("a admits b");
    let mut sb = PeerSession::new(&mut w.devices[b].core, ida).expect("b admits a");
    let now = w.now;
    for _ in 0..10_000 {
        let mut moved = false;
        while let Some(f) = sa.poll_transmit() {
            let f = tamper(carried(f));
            sb.handle_frame(&mut w.devices[b].core, f, now)
                .expect("b takes a's frame");
            moved = true;
        }
        while let Some(f) = sb.poll_transmit() {
            sa.handle_frame(&mut w.devices[a].core, carried(f), now)
                .expect("a takes b's frame");
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert!(sa.is_done() && sb.is_done(), "both sides said Done");
    sb.n_received()
}

fn message_ids(w: &mut World, idx: usize) -> Vec<MessageId> {
    w.devices[idx]
        .core
        .store_mut()
        .conversation(CONV)
        .expect("conversation")
        .messages()
        .iter()
        .map(|m| m.id)
        .collect()
}

/// Alice's phone and Bob's phone share CONV; Bob's phone goes offline, Alice sends `n`
/// messages that the relay sequences. Returns (world, alice's phone, bob's phone, ids).
fn bob_missed(n: u8) -> (World, usize, usize, Vec<MessageId>) {
    let (alice, bob) = (user(1), user(2));
    let mut w = World::new(9);
    let phone = w.add_device_of(&alice, 11);
    let bob_phone = w.add_device_of(&bob, 21);
    w.set_online(phone, true);
    w.devices[phone]
        .core
        .create_conversation(CONV, vec![bob.id], w.now)
        .expect("create");
    w.set_online(bob_phone, true);
    w.run(5_000);
    w.set_online(bob_phone, false);
    let mut ids = Vec::new();
    for i in 0..n {
        w.now += 10;
        let now = w.now;
        ids.push(
            w.devices[phone]
                .core
                .send(CONV, format!("message {i}").into_bytes(), vec![], now)
                .expect("send"),
        );
    }
    w.run(10_000);
    assert_eq!(message_ids(&mut w, phone), ids);
    assert!(message_ids(&mut w, bob_phone).is_empty());
    (w, phone, bob_phone, ids)
}

#[test]
fn a_device_gets_what_it_missed_from_a_peer_while_the_relay_is_out_of_reach() {
    let (mut w, phone, bob_phone, ids) = bob_missed(5);
    // The relay stays out of reach for Bob's phone; Alice's phone is next to it.
    let received = sync_with(&mut w, phone, bob_phone, |f| f);
    assert_eq!(received, 5, "the five messages");
    assert_eq!(message_ids(&mut w, bob_phone), ids, "in the relay's order");
    // A second session finds nothing missing.
    assert_eq!(sync_with(&mut w, phone, bob_phone, |f| f), 0);
    // The relay comes back: nothing twice, the same order, and Alice learns Bob has them.
    w.set_online(bob_phone, true);
    w.run(20_000);
    assert_eq!(message_ids(&mut w, bob_phone), ids);
    let statuses: Vec<_> = ids
        .iter()
        .map(|m| {
            w.devices[phone]
                .core
                .store_mut()
                .conversation(CONV)
                .expect("c")
                .status(m)
                .expect("s")
        })
        .collect();
    assert!(
        statuses
            .iter()
            .all(|s| s.rank() >= tidings::engine::Status::Delivered.rank()),
        "{statuses:?}"
    );
}

#[test]
fn a_peer_cannot_forge_or_inject_events() {
    let (mut w, phone, bob_phone, ids) = bob_missed(3);
    // Every event envelope altered in one byte: no signature verifies, nothing is shown.
    let received = sync_with(&mut w, phone, bob_phone, |f| match f {
        PeerFrame::Items {
            mut events,
            records,
        } => {
            for e in &mut events {
                let last = e.0.len() - 1;
                e.0[last] ^= 1;
            }
            PeerFrame::Items { events, records }
        }
        f => f,
    });
    assert_eq!(received, 3);
    assert!(message_ids(&mut w, bob_phone).is_empty());
    // Intact events without the relay statements that place them: not shown either (a peer
    // cannot put an event anywhere in the order).
    sync_with(&mut w, phone, bob_phone, |f| match f {
        PeerFrame::Items { events, .. } => PeerFrame::Items {
            events,
            records: Vec::new(),
        },
        f => f,
    });
    assert!(message_ids(&mut w, bob_phone).is_empty());
    // The same session untouched brings them: what kept them out above was the tampering.
    assert_eq!(sync_with(&mut w, phone, bob_phone, |f| f), 3);
    assert_eq!(message_ids(&mut w, bob_phone), ids);
}

#[test]
fn only_devices_that_share_a_conversation_are_peers() {
    let (mut w, phone, bob_phone, _) = bob_missed(1);
    let stranger = user(3);
    let outsider = w.add_device_of(&stranger, 31);
    w.set_online(outsider, true);
    w.run(5_000);
    let outsider_id = device_id(&w, outsider);
    let admitted = admitted_peers(&mut w.devices[phone].core).expect("peers");
    assert!(admitted.contains(&device_id(&w, bob_phone)));
    assert!(!admitted.contains(&outsider_id));
    assert!(matches!(
        PeerSession::new(&mut w.devices[phone].core, outsider_id),
        Err(PeerError::NotAdmitted(d)) if d == outsider_id
    ));
    // A device nobody certified is no peer either.
    let unknown = DeviceId([0x5a; 32]);
    assert!(matches!(
        PeerSession::new(&mut w.devices[bob_phone].core, unknown),
        Err(PeerError::NotAdmitted(_))
    ));
}

#[test]
fn a_revoked_device_is_no_peer() {
    let (alice, bob) = (user(1), user(2));
    let mut w = World::new(9);
    let phone = w.add_device_of(&alice, 11);
    let laptop = w.add_device_of(&alice, 12);
    let bob_phone = w.add_device_of(&bob, 21);
    for d in [phone, laptop, bob_phone] {
        w.set_online(d, true);
    }
    w.devices[phone]
        .core
        .create_conversation(CONV, vec![bob.id], w.now)
        .expect("create");
    w.run(5_000);
    let laptop_id = device_id(&w, laptop);
    let admitted = admitted_peers(&mut w.devices[phone].core).expect("peers");
    assert!(
        admitted.contains(&laptop_id),
        "a device of the same user is a peer"
    );
    // The laptop is lost (and off the network): Alice revokes it from her phone.
    w.set_online(laptop, false);
    let now = w.now;
    w.devices[phone]
        .core
        .revoke(DeviceRevocation::sign(&alice.key, laptop_id, now))
        .expect("revoke");
    w.run(10_000);
    let admitted = admitted_peers(&mut w.devices[phone].core).expect("peers");
    assert!(!admitted.contains(&laptop_id));
    assert!(matches!(
        PeerSession::new(&mut w.devices[phone].core, laptop_id),
        Err(PeerError::NotAdmitted(d)) if d == laptop_id
    ));
}
