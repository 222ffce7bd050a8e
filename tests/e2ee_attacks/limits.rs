//! Encryption at its limits: a group past the sealed keys one event carries, a body at the
//! plaintext limit and one byte over it, and nonces across a store reopened with the same
//! entropy.

use super::*;

/// Users of `n_devices` devices each, certified; returns the users and the devices' keys and
/// certificates.
fn big_group(n_users: u8, n_devices: u8) -> (Vec<User>, Vec<(DeviceKey, DeviceRegistration)>) {
    let users: Vec<User> = (0..n_users).map(|i| user(100 + i)).collect();
    let mut devices = Vec::new();
    for (i, u) in users.iter().enumerate() {
        for j in 0..n_devices {
            let mut seed = [0u8; 32];
            seed[0] = 0xd0;
            seed[1] = i as u8;
            seed[2] = j;
            let key = DeviceKey::from_seed(seed, u.id);
            let cert = key.certificate(&u.key, 0);
            devices.push((key, cert));
        }
    }
    (users, devices)
}

#[test]
fn every_device_of_a_group_past_512_devices_reads_its_messages() {
    let k = cast();
    // 65 users of 8 devices: 520 devices besides Alice's.
    let (users, devices) = big_group(65, 8);
    assert!(devices.len() + 1 > tidings::engine::event::MAX_SEALED_KEYS);
    let mut certs = k.certs.clone();
    certs.extend(devices.iter().map(|(_, c)| c.clone()));
    let mut relay = EvilRelay::new();
    let mut a = store(k.a.clone(), &certs);
    let members: Vec<UserId> = users.iter().map(|u| u.id).collect();
    let mut log = create(&mut relay, &mut a, X, members);
    // A membership change: the next message starts a new epoch for every device at once.
    a.add_member(X, user(99).id, false, relay.now).expect("add");
    log.extend(relay.pump(&mut a));
    let m1 = send_text(&mut a, X, b"to all of you", relay.now);
    log.extend(relay.pump(&mut a));
    let alice_cert = k.certs[0].clone();
    for (key, _) in &devices {
        // A reader needs only the author's certificate.
        let mut s = store(key.clone(), std::slice::from_ref(&alice_cert));
        feed(&mut s, &log);
        assert_eq!(
            body_of(&mut s, X, m1),
            Body::Text(b"to all of you".to_vec()),
            "device {}",
            key.device()
        );
    }
}

#[test]
fn a_body_at_the_plaintext_limit_is_read_and_one_byte_more_is_refused_typed() {
    let k = cast();
    let mut relay = EvilRelay::new();
    let mut a = store(k.a.clone(), &k.certs);
    let mut b = store(k.b.clone(), &k.certs);
    let mut log = create(&mut relay, &mut a, X, vec![k.bob.id]);
    let max = tidings::engine::e2ee::MAX_PLAINTEXT_LEN;
    assert_eq!(
        max,
        tidings::engine::event::MAX_BODY_LEN - tidings::engine::e2ee::SEALED_BODY_OVERHEAD
    );
    let m1 = a
        .send(X, vec![7; max], vec![], relay.now)
        .expect("a body at the limit is sent")
        .0
        .message()
        .expect("a Send");
    log.extend(relay.pump(&mut a));
    feed(&mut b, &log);
    assert_eq!(body_of(&mut b, X, m1), Body::Text(vec![7; max]));
    let err = a
        .send(X, vec![7; max + 1], vec![], relay.now)
        .expect_err("one byte more is refused");
    assert!(
        matches!(
            err,
            tidings::engine::StoreError::BodyTooLarge { len, max: m } if len == max + 1 && m == max
        ),
        "{err:?}"
    );
    assert!(
        outbox_events(&mut a).is_empty(),
        "nothing of a refused body is queued"
    );
}

#[test]
fn reopening_a_store_with_the_same_entropy_never_repeats_a_nonce() {
    let k = cast();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alice.redb");
    let open = || {
        let config = StoreConfig::new(relay_key().device());
        let log = EventLog::open(&path).expect("log");
        // The same entropy at every open, as a careless caller would pass it.
        let mut s = Store::new(log, k.a.clone(), config, [9; 32]);
        s.absorb_devices(&k.certs, &[], &[]).expect("certificates");
        s
    };
    // The same steps after each open: a conversation, a message.
    let mut sent = Vec::new();
    for conv in [X, Y] {
        let mut a = open();
        a.create_conversation(conv, vec![k.bob.id], T0)
            .expect("create");
        let (ev, _) = a
            .send(conv, b"same steps".to_vec(), vec![], T0)
            .expect("send");
        sent.push(ev);
    }
    assert_ne!(nonce_of(&sent[0]), nonce_of(&sent[1]), "a nonce repeated");
}
