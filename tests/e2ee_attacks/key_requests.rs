//! Key requests: a device without its copy of an epoch key asks the conversation, and the
//! device that may answer seals the key to it; devices asking for one epoch together get one
//! answer.

use super::*;

/// Alice's store with conversation `X` created with Bob and one message of hers in it, all
/// sequenced: (her store, the sequenced events, the message, its epoch).
fn alice_sends_one(
    relay: &mut EvilRelay,
    k: &Cast,
    text: &[u8],
) -> (Store, Vec<Event>, MessageId, EventId) {
    alice_opens_with(relay, k, vec![k.bob.id], text)
}

/// The devices (sorted) the one event in `s`'s outbox, an `EpochKeys` re-share of `epoch`,
/// seals it to.
fn one_share_of(s: &mut Store, epoch: EventId) -> Vec<tidings::engine::DeviceId> {
    let queued = outbox_events(s);
    assert_eq!(queued.len(), 1, "one event queued: {queued:?}");
    match queued[0].kind() {
        EventKind::EpochKeys {
            epoch: Some(e),
            keys,
            ..
        } if *e == epoch => {
            let mut sealed_to: Vec<_> = keys.iter().map(|k| k.device).collect();
            sealed_to.sort();
            sealed_to
        }
        other => panic!("expected a re-share of {epoch}, got {other:?}"),
    }
}

#[test]
fn a_device_without_its_key_copy_asks_and_reads_once_answered() {
    let k = cast();
    let (b2, cb2) = device(&k.bob, 22);
    let mut relay = EvilRelay::new();
    // Alice does not know Bob's second device yet when she starts the epoch.
    let (mut a, log, m1, epoch) = alice_sends_one(&mut relay, &k, b"before the link");
    assert!(!new_epochs(&log)[0].1.contains(&b2.device()));
    let certs = [k.certs.clone(), vec![cb2.clone()]].concat();
    let mut phone2 = store(b2.clone(), &certs);
    feed(&mut phone2, &log);
    assert_eq!(body_of(&mut phone2, X, m1), Body::WaitingForKey(epoch));
    assert_eq!(phone2.missing_keys(), vec![(X, epoch)]);
    phone2.request_key(X, epoch, relay.now).expect("request");
    let ask = outbox_events(&mut phone2);
    assert_eq!(ask.len(), 1);
    assert_eq!(ask[0].kind(), &EventKind::KeyRequest { epoch });
    let ask = relay.pump(&mut phone2);
    // Alice learns the new device's certificate, then the request.
    a.absorb_devices(&[cb2], &[], &[]).expect("certificate");
    let out = feed(&mut a, &ask);
    assert!(out.refused.is_empty(), "{:?}", out.refused);
    a.answer_key_requests(relay.now).expect("answer");
    assert_eq!(one_share_of(&mut a, epoch), vec![b2.device()]);
    // Asked again before the answer went out: the answer waiting in the outbox serves both.
    phone2.request_key(X, epoch, relay.now).expect("request");
    let again = relay.pump(&mut phone2);
    let out = feed(&mut a, &again);
    assert!(out.refused.is_empty(), "{:?}", out.refused);
    a.answer_key_requests(relay.now).expect("answer");
    assert_eq!(outbox_events(&mut a).len(), 1, "one answer per device");
    let answer = relay.pump(&mut a);
    feed(&mut phone2, &answer);
    reads_all(&mut phone2, m1, b"before the link");
}

/// Devices asking for one epoch's key together get one answer sealed to all of them, as
/// devices of her own user listed together do (a crowd of new devices asking at once cost
/// their epoch's creator one `EpochKeys` event per device).
#[test]
fn key_requests_for_one_epoch_are_answered_in_one_event() {
    let k = cast();
    let (b2, cb2) = device(&k.bob, 22);
    let (b3, cb3) = device(&k.bob, 23);
    let mut relay = EvilRelay::new();
    let (mut a, log, m1, epoch) = alice_sends_one(&mut relay, &k, b"before the links");
    let certs = [k.certs.clone(), vec![cb2.clone(), cb3.clone()]].concat();
    let mut asks = Vec::new();
    let mut phones = Vec::new();
    for key in [b2.clone(), b3.clone()] {
        let mut phone = store(key, &certs);
        feed(&mut phone, &log);
        phone.request_key(X, epoch, relay.now).expect("request");
        asks.extend(relay.pump(&mut phone));
        phones.push(phone);
    }
    a.absorb_devices(&[cb2, cb3], &[], &[])
        .expect("certificates");
    let out = feed(&mut a, &asks);
    assert!(out.refused.is_empty(), "{:?}", out.refused);
    a.answer_key_requests(relay.now).expect("answer");
    let mut asked = vec![b2.device(), b3.device()];
    asked.sort();
    assert_eq!(
        one_share_of(&mut a, epoch),
        asked,
        "one answer for both devices"
    );
    let answer = relay.pump(&mut a);
    for phone in &mut phones {
        // The other phone's request too: each device holds the whole sequence.
        feed(phone, &[asks.clone(), answer.clone()].concat());
        assert_eq!(
            body_of(phone, X, m1),
            Body::Text(b"before the links".to_vec())
        );
    }
}
