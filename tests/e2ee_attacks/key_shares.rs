//! Epoch key shares a member forges: a wrong key handed to another member's device, an
//! opener sealing different keys to different devices. The recipient refuses what does not
//! match the epoch's commitment, keeps asking, and no sender counts it as holding the key.

use super::*;

/// Carol's "share" of `epoch` in X with `to`: a key of her own, not the epoch's.
fn carols_wrong_share(k: &Cast, epoch: EventId, to: &DeviceKey) -> Event {
    let wrong = tidings::engine::crypto::EpochKey::from_bytes([0x66; 32]);
    let keys = tidings::engine::e2ee::seal_epoch_key(
        X,
        tidings::engine::e2ee::EpochOrigin::Shared(epoch),
        &wrong,
        &[(to.device(), to.agreement_public())],
        &[[0x67; 32]],
    );
    forge(
        &k.c,
        X,
        1,
        None,
        EventKind::EpochKeys {
            epoch: Some(epoch),
            commitment: None,
            keys,
        },
    )
}

/// Alice opens X with Bob and Carol and writes "before the link" before she knows Bob's
/// second device `b2`; Carol then hands `b2` a wrong key for that epoch, which Alice sees
/// sequenced. Alice's store, the sequenced events, the message, the epoch and Carol's event.
fn carol_poisons_alices_epoch(
    relay: &mut EvilRelay,
    k: &Cast,
    b2: &DeviceKey,
) -> (Store, Vec<Event>, MessageId, EventId, Event) {
    let members = vec![k.bob.id, k.carol.id];
    let (mut a, mut log, m1, epoch) = alice_opens_with(relay, k, members, b"before the link");
    let poison = carols_wrong_share(k, epoch, b2);
    let poisoned = relay.sequence(&poison);
    feed(&mut a, &poisoned);
    log.extend(poisoned);
    (a, log, m1, epoch, poison)
}

#[test]
fn a_wrong_epoch_key_share_is_refused_and_the_device_keeps_asking() {
    let k = cast();
    let (b2, cb2) = device(&k.bob, 22);
    let mut relay = EvilRelay::new();
    // Alice does not know Bob's second device when she starts the epoch; Carol, a member,
    // hands that device a key of her own for Alice's epoch.
    let (mut a, log, m1, epoch, poison) = carol_poisons_alices_epoch(&mut relay, &k, &b2);
    let certs = [k.certs.clone(), vec![cb2.clone()]].concat();
    let mut phone2 = store(b2.clone(), &certs);
    let out = feed(&mut phone2, &log);
    assert_eq!(
        out.refused_keys,
        vec![RefusedKeyShare {
            conversation: X,
            epoch,
            event: poison.id(),
            author: k.c.device(),
            reason: KeyShareRefusal::Mismatch,
        }]
    );
    // The wrong key is not kept: the body waits for the right one, and the key is asked for.
    assert_eq!(body_of(&mut phone2, X, m1), Body::WaitingForKey(epoch));
    assert_eq!(phone2.missing_keys(), vec![(X, epoch)]);
    // Asking again and again until a share matches: here Alice, the epoch's opener, answers.
    phone2.request_key(X, epoch, relay.now).expect("request");
    let ask = relay.pump(&mut phone2);
    a.absorb_devices(&[cb2], &[], &[]).expect("certificate");
    feed(&mut a, &ask);
    a.answer_key_requests(relay.now).expect("answer");
    let answer = relay.pump(&mut a);
    feed(&mut phone2, &answer);
    reads_all(&mut phone2, m1, b"before the link");
}

/// Carol's opening of an epoch in X that seals one key to Alice's device and another to
/// Bob's, committed to Alice's: the opening and the key Alice got.
fn carols_split_opening(k: &Cast) -> (Event, tidings::engine::crypto::EpochKey) {
    let (k1, k2) = (
        tidings::engine::crypto::EpochKey::from_bytes([0x71; 32]),
        tidings::engine::crypto::EpochKey::from_bytes([0x72; 32]),
    );
    let origin = tidings::engine::e2ee::EpochOrigin::New {
        author: k.c.device(),
        counter: 1,
    };
    let mut keys = tidings::engine::e2ee::seal_epoch_key(
        X,
        origin,
        &k1,
        &[(k.a.device(), k.a.agreement_public())],
        &[[0x73; 32]],
    );
    keys.extend(tidings::engine::e2ee::seal_epoch_key(
        X,
        origin,
        &k2,
        &[(k.b.device(), k.b.agreement_public())],
        &[[0x74; 32]],
    ));
    let commitment = tidings::engine::e2ee::epoch_commitment(X, k.c.device(), 1, &k1);
    let open = forge(
        &k.c,
        X,
        1,
        None,
        EventKind::EpochKeys {
            epoch: None,
            commitment: Some(commitment),
            keys,
        },
    );
    (open, k1)
}

#[test]
fn an_opener_sealing_different_keys_to_different_devices_is_caught() {
    let k = cast();
    let mut relay = EvilRelay::new();
    let mut a = store(k.a.clone(), &k.certs);
    let mut b = store(k.b.clone(), &k.certs);
    let mut c = store(k.c.clone(), &k.certs);
    let mut log = create(&mut relay, &mut a, X, vec![k.bob.id, k.carol.id]);
    feed(&mut b, &log);
    feed(&mut c, &log);
    // Carol opens an epoch with one key for Alice and another for Bob: a split group.
    // She commits to the key she gave Alice, the one public value every device checks.
    let (open, k1) = carols_split_opening(&k);
    let start = log.len();
    log.extend(relay.sequence(&open));
    let epoch = open.id();
    // Carol writes under the key she gave Alice.
    let send = {
        let h = k.c.header(X, 2, Some(open.id()), 200, T0);
        let aad = tidings::engine::e2ee::body_aad(
            X,
            h.author,
            h.user,
            h.message_id(),
            h.lamport,
            h.wall_ms,
            &[],
        );
        let body = tidings::engine::e2ee::seal_body(epoch, &k1, &aad, b"split", [0x75; 24]);
        let message = h.message_id();
        Event::sign(
            k.c.signing_key(),
            h,
            EventKind::Send {
                message,
                body,
                media: vec![],
            },
        )
        .expect("sign")
    };
    log.extend(relay.sequence(&send));
    let m9 = id_of(&send);
    let out_a = feed(&mut a, &log[start..]);
    let out_b = feed(&mut b, &log[start..]);
    assert!(out_a.refused_keys.is_empty(), "{:?}", out_a.refused_keys);
    assert_eq!(
        out_b
            .refused_keys
            .iter()
            .map(|r| (r.epoch, r.author, r.reason))
            .collect::<Vec<_>>(),
        vec![(epoch, k.c.device(), KeyShareRefusal::Mismatch)]
    );
    // Alice's key matches what Carol committed to; Bob's does not and is refused: Bob never
    // holds a second key for the epoch, he waits for (and asks for) the committed one.
    assert_eq!(body_of(&mut a, X, m9), Body::Text(b"split".to_vec()));
    assert_eq!(body_of(&mut b, X, m9), Body::WaitingForKey(epoch));
    assert_eq!(b.missing_keys(), vec![(X, epoch)]);
}

/// The devices the `EpochKeys` events of `batch` share `epoch` with again.
fn re_shared_to(batch: &[Event], epoch: EventId) -> Vec<tidings::engine::DeviceId> {
    batch
        .iter()
        .filter_map(|e| match e.kind() {
            EventKind::EpochKeys {
                epoch: Some(named),
                keys,
                ..
            } if *named == epoch => Some(keys.iter().map(|k| k.device)),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn a_members_wrong_re_share_does_not_count_its_recipient_as_holding_the_key() {
    let k = cast();
    let (b2, cb2) = device(&k.bob, 22);
    let certs = [k.certs.clone(), vec![cb2.clone()]].concat();
    let mut relay = EvilRelay::new();
    // Neither Alice nor Bob knows Bob's second device when the epoch starts. Carol, a member,
    // "shares" Alice's epoch with Bob's new device: a key of her own.
    let mut b = store(k.b.clone(), &k.certs);
    let (mut a, mut log, m1, epoch, _) = carol_poisons_alices_epoch(&mut relay, &k, &b2);
    // Alice learns the new device and shares her epoch with the member devices that lack it.
    a.absorb_devices(std::slice::from_ref(&cb2), &[], &[])
        .expect("certificate");
    a.share_current_epoch(X, relay.now).expect("share");
    let share = relay.pump(&mut a);
    assert_eq!(
        re_shared_to(&share, epoch),
        vec![b2.device()],
        "Alice counts Bob's new device as holding the key although Carol sealed it a wrong one"
    );
    log.extend(share);
    let mut phone2 = store(b2.clone(), &certs);
    let out = feed(&mut phone2, &log);
    assert_eq!(out.refused_keys.len(), 1, "{:?}", out.refused_keys);
    reads_all(&mut phone2, m1, b"before the link");
    // Bob checks the shares he cannot open against the key he holds: Alice's to his phone is
    // right, so his next message shares nothing again (honest re-shares still count).
    b.absorb_devices(&[cb2], &[], &[]).expect("certificate");
    feed(&mut b, &log);
    let m2 = send_text(&mut b, X, b"from bob", relay.now);
    let sent = relay.pump(&mut b);
    assert_eq!(re_shared_to(&sent, epoch), vec![], "a needless re-share");
    assert_eq!(new_epochs(&sent), vec![]);
    feed(&mut phone2, &sent);
    assert_eq!(
        body_of(&mut phone2, X, m2),
        Body::Text(b"from bob".to_vec())
    );
}

#[test]
fn an_honest_sender_shares_an_epoch_with_a_device_its_opener_sealed_a_wrong_key_to() {
    let k = cast();
    let mut relay = EvilRelay::new();
    let mut a = store(k.a.clone(), &k.certs);
    let mut b = store(k.b.clone(), &k.certs);
    let mut log = create(&mut relay, &mut a, X, vec![k.bob.id, k.carol.id]);
    feed(&mut b, &log);
    // Carol opens an epoch, commits to the key she seals to Alice and seals Bob another one.
    let (open, _) = carols_split_opening(&k);
    let start = log.len();
    log.extend(relay.sequence(&open));
    let epoch = open.id();
    feed(&mut a, &log[start..]);
    let out = feed(&mut b, &log[start..]);
    assert_eq!(out.refused_keys.len(), 1, "{:?}", out.refused_keys);
    // Alice sends under Carol's epoch, the newest. Only Carol (who will not) or Bob's own
    // devices answer Bob's key requests, so Alice must not take Bob for a holder.
    let m = send_text(&mut a, X, b"for everyone", relay.now);
    let sent = relay.pump(&mut a);
    assert!(
        re_shared_to(&sent, epoch).contains(&k.b.device()),
        "Alice counts Bob as holding the key although Carol sealed him a wrong one"
    );
    feed(&mut b, &sent);
    assert_eq!(body_of(&mut b, X, m), Body::Text(b"for everyone".to_vec()));
    assert!(b.missing_keys().is_empty());
}
