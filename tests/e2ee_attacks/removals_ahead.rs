//! Removals a device holds ahead of its gate (the relay withholds a sequence before them):
//! no new epoch is sealed to the removed member, whose next message is not shown either.

use super::*;

/// Issue #12, "Malicious relay": the relay withholds from Carol the sequences before Alice's
/// `RemoveMember` of Bob and pushes her the removal, which her gate cannot place yet. Carol
/// holds the signed removal of an admin all the same: the epoch she opens must not be sealed
/// to Bob, and a key request of Bob's that the relay slips into the withheld place is not
/// answered either.
#[test]
fn a_device_does_not_seal_a_new_epoch_to_a_member_whose_removal_it_holds() {
    let k = cast();
    let dave = user(4);
    let (d, cd) = device(&dave, 41);
    let certs = [k.certs.clone(), vec![cd]].concat();
    let mut relay = EvilRelay::new();
    let mut a = store(k.a.clone(), &certs);
    let mut b = store(k.b.clone(), &certs);
    let mut c = store(k.c.clone(), &certs);
    let mut dv = store(d.clone(), &certs);
    let mut log = create(&mut relay, &mut a, X, vec![k.bob.id, k.carol.id]);
    // Dave joins: whoever writes next opens a new epoch.
    a.add_member(X, dave.id, false, relay.now).expect("add");
    log.extend(relay.pump(&mut a));
    for s in [&mut b, &mut c, &mut dv] {
        feed(s, &log);
    }
    // Alice writes (her new epoch, her message), then removes Bob. Carol gets the removal only.
    send_text(&mut a, X, b"before bob leaves", relay.now);
    let withheld = relay.pump(&mut a);
    a.remove_member(X, k.bob.id, relay.now).expect("remove");
    let removal = relay.pump(&mut a);
    let out = feed(&mut c, &removal);
    assert!(out.refused.is_empty(), "{:?}", out.refused);
    let evidence = vec![RemovalEvidence {
        conversation: X,
        user: k.bob.id,
        event: removal[0].id(),
        seq: Some(6),
    }];
    assert_eq!(out.removals_ahead, evidence, "reported");
    assert_eq!(c.removals_ahead(X).expect("evidence"), evidence);
    let m = send_text(&mut c, X, b"bob is gone", relay.now);
    let sent = relay.pump(&mut c);
    let epochs = new_epochs(&sent);
    assert_eq!(epochs.len(), 1, "Carol opens an epoch after Dave joined");
    let (epoch, sealed_to) = epochs[0].clone();
    assert!(
        !sealed_to.contains(&k.b.device()),
        "Carol sealed her new epoch to Bob, whose removal she holds: {sealed_to:?}"
    );
    assert!(sealed_to.contains(&d.device()) && sealed_to.contains(&k.a.device()));
    // The relay feeds Bob everything: he cannot read Carol's message.
    for batch in [&withheld, &removal, &sent] {
        feed(&mut b, batch);
    }
    assert_eq!(body_of(&mut b, X, m), Body::WaitingForKey(epoch));
    // Bob asks; the relay places his request, for Carol, where Alice's withheld events were.
    b.request_key(X, epoch, relay.now).expect("request");
    let ask = outbox_events(&mut b);
    let slipped = relay.ack_at(X, &ask[0], withheld_seq(&withheld), relay.now);
    feed(&mut c, &[ask[0].clone(), slipped]);
    c.answer_key_requests(relay.now).expect("answer");
    assert!(
        outbox_events(&mut c).is_empty(),
        "Carol answered Bob, whose removal she holds"
    );
    // Alice and Dave read Carol's message; once Alice's events arrive, Carol's gate places
    // the removal and her epoch stays the one without Bob.
    for s in [&mut a, &mut dv] {
        feed(s, &withheld);
        feed(s, &removal);
        feed(s, &sent);
        assert_eq!(body_of(s, X, m), Body::Text(b"bob is gone".to_vec()));
    }
    let out = c.apply(&withheld).expect("apply");
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert!(c.removals_ahead(X).expect("evidence").is_empty());
    send_text(&mut c, X, b"still without bob", relay.now);
    assert!(
        new_epochs(&relay.pump(&mut c)).is_empty(),
        "no epoch needed"
    );
}

/// The first sequence of a pumped batch (its first event's ack).
fn withheld_seq(batch: &[Event]) -> ServerSeq {
    match batch[1].kind() {
        EventKind::ServerAck { seq, .. } => *seq,
        other => panic!("not an ack: {other:?}"),
    }
}

/// The same evidence from the device's own hand: Alice removes Bob and writes before the
/// relay sequenced the removal. Her message must not go out under the epoch Bob holds.
#[test]
fn a_removal_not_yet_sequenced_keeps_the_next_message_from_the_removed_member() {
    let k = cast();
    let mut relay = EvilRelay::new();
    let mut a = store(k.a.clone(), &k.certs);
    let mut b = store(k.b.clone(), &k.certs);
    let log = create(&mut relay, &mut a, X, vec![k.bob.id, k.carol.id]);
    feed(&mut b, &log);
    a.remove_member(X, k.bob.id, relay.now).expect("remove");
    let m = send_text(&mut a, X, b"after removing bob", relay.now);
    let batch = relay.pump(&mut a);
    let epochs = new_epochs(&batch);
    assert_eq!(
        epochs.len(),
        1,
        "Alice sent under the epoch Bob holds, after removing him"
    );
    assert!(!epochs[0].1.contains(&k.b.device()), "{:?}", epochs[0].1);
    // The relay hands Bob the message all the same: he cannot read it.
    feed(&mut b, &batch);
    assert_eq!(body_of(&mut b, X, m), Body::WaitingForKey(epochs[0].0));
}

// ---- Who holds an epoch key: re-shares and recipient lists (issue #12 follow-up) ----
