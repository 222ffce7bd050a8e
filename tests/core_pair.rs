//! The device core and the relay core together, sans-IO, on virtual time: the seed scenario.

mod common;

use common::{user, World, CONV};
use tidings::engine::{MessageId, Status};

#[test]
fn seed_scenario_pending_to_read_across_an_outage() {
    let (alice, bob) = (user(1), user(2));
    let mut w = World::new(9);
    let phone = w.add_device_of(&alice, 11);
    let laptop = w.add_device_of(&alice, 12);
    let bob_phone = w.add_device_of(&bob, 21);

    // Alice creates the conversation while online; everyone syncs it.
    w.set_online(phone, true);
    w.devices[phone]
        .core
        .create_conversation(CONV, vec![bob.id], w.now)
        .expect("create");
    w.set_online(laptop, true);
    w.set_online(bob_phone, true);
    w.run(5_000);

    // Airplane mode for Alice's phone and Bob: three messages, PENDING in order.
    w.set_online(phone, false);
    w.set_online(bob_phone, false);
    let mut ids: Vec<MessageId> = Vec::new();
    for i in 0..3u8 {
        w.now += 10;
        let now = w.now;
        let id = w.devices[phone]
            .core
            .send(CONV, format!("message {i}").into_bytes(), vec![], now)
            .expect("send");
        ids.push(id);
    }
    w.run(10_000);
    let view = w.devices[phone]
        .core
        .store_mut()
        .conversation(CONV)
        .expect("conv")
        .messages();
    assert_eq!(view.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert!(view.iter().all(|m| m.status == Status::Pending));

    // Alice comes back: SENT, on both of her devices.
    w.set_online(phone, true);
    w.run(10_000);
    for d in [phone, laptop] {
        let st: Vec<Status> = ids
            .iter()
            .map(|m| {
                w.devices[d]
                    .core
                    .store_mut()
                    .conversation(CONV)
                    .expect("c")
                    .status(m)
                    .expect("s")
            })
            .collect();
        assert_eq!(st, vec![Status::Sent; 3], "device {d}");
    }

    // Bob comes back: messages arrive in order, DELIVERED on Alice's devices.
    w.set_online(bob_phone, true);
    w.run(10_000);
    let bob_view = w.devices[bob_phone]
        .core
        .store_mut()
        .conversation(CONV)
        .expect("c")
        .messages();
    assert_eq!(bob_view.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert_eq!(
        w.devices[bob_phone]
            .core
            .store_mut()
            .conversation(CONV)
            .expect("c")
            .unread_count(bob.id),
        3
    );
    for d in [phone, laptop] {
        for m in &ids {
            let st = w.devices[d]
                .core
                .store_mut()
                .conversation(CONV)
                .expect("c")
                .status(m);
            assert_eq!(st, Some(Status::Delivered), "device {d}");
        }
    }

    // Bob reads: READ on both of Alice's devices.
    let now = w.now;
    w.devices[bob_phone]
        .core
        .mark_read(CONV, None, now)
        .expect("read");
    w.run(10_000);
    for d in [phone, laptop] {
        for m in &ids {
            let st = w.devices[d]
                .core
                .store_mut()
                .conversation(CONV)
                .expect("c")
                .status(m);
            assert_eq!(st, Some(Status::Read), "device {d}");
        }
    }
    assert_eq!(
        w.devices[bob_phone]
            .core
            .store_mut()
            .conversation(CONV)
            .expect("c")
            .unread_count(bob.id),
        0
    );
}
