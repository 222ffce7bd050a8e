//! The history-key frame (`PeerFrame::HistoryKeys`, see `tidings_engine::history`): only a
//! device of the same user hands over history, only keys sealed to the receiver are taken,
//! and only the key the epoch's opening event committed to.

mod common;

use common::{device, user, World, CONV};
use tidings::engine::crypto::EpochKey;
use tidings::engine::e2ee::{seal_epoch_key_checkable, EpochOrigin};
use tidings::engine::history::{HistoryKey, HistoryRefusal};
use tidings::engine::peer::{PeerError, PeerFrame, PeerSession};
use tidings::engine::store::{Body, StoreError};
use tidings::engine::wire::DeviceRevocation;
use tidings::engine::{DeviceError, EventId};

struct Cast {
    w: World,
    phone: usize,
    bob: usize,
    laptop: usize,
}

/// Alice's phone and Bob's phone share CONV with 6 messages; Alice's new laptop knows the
/// phone's certificate and the phone the laptop's, the laptop holds the events (from a peer
/// session of the phone's with history keys left out) but no key.
fn cast() -> Cast {
    let (alice, bob_user) = (user(1), user(2));
    let mut w = World::new(9);
    let [phone, bob] = w.phone_and_bob(&alice, &bob_user, CONV);
    for i in 0..3 {
        for d in [phone, bob] {
            w.now += 10;
            let now = w.now;
            w.devices[d]
                .core
                .send(CONV, format!("m{i}").into_bytes(), vec![], now)
                .expect("send");
        }
        w.run(5_000);
    }
    let laptop = w.add_device_of(&alice, 12);
    let now = w.now;
    let (phone_reg, laptop_reg) = (device(&alice, 11).1, device(&alice, 12).1);
    w.devices[phone]
        .core
        .handle_peer_directory(&[laptop_reg], &[], now)
        .expect("phone learns laptop");
    w.devices[laptop]
        .core
        .handle_peer_directory(&[phone_reg], &[], now)
        .expect("laptop learns phone");
    let mut c = Cast {
        w,
        phone,
        bob,
        laptop,
    };
    peer_sync(&mut c, |f| !matches!(f, PeerFrame::HistoryKeys { .. }));
    assert_eq!(readable(&mut c), (6, 0), "events without keys");
    c
}

fn peer_sync(c: &mut Cast, keep: impl Fn(&PeerFrame) -> bool) {
    let (a, b) = (c.phone, c.laptop);
    let (ida, idb) = (c.w.device_id(a), c.w.device_id(b));
    let now = c.w.now;
    let mut sa = PeerSession::new(&mut c.w.devices[a].core, idb).expect("a admits b");
    let mut sb = PeerSession::new(&mut c.w.devices[b].core, ida).expect("b admits a");
    for _ in 0..1_000 {
        let mut moved = false;
        while let Some(f) = sa.poll_transmit() {
            if keep(&f) {
                sb.handle_frame(&mut c.w.devices[b].core, f, now)
                    .expect("laptop");
            }
            moved = true;
        }
        while let Some(f) = sb.poll_transmit() {
            sa.handle_frame(&mut c.w.devices[a].core, f, now)
                .expect("phone");
            moved = true;
        }
        if !moved {
            break;
        }
    }
}

/// (messages the laptop shows, how many it reads).
fn readable(c: &mut Cast) -> (usize, usize) {
    let store = c.w.devices[c.laptop].core.store_mut();
    let messages = store.conversation(CONV).expect("view").messages().to_vec();
    let n = messages
        .iter()
        .filter(|m| matches!(store.body(m), Ok(Body::Text(_))))
        .count();
    (messages.len(), n)
}

fn genuine_keys(c: &mut Cast) -> Vec<HistoryKey> {
    let (laptop, now) = (c.w.device_id(c.laptop), c.w.now);
    let keys = c.w.devices[c.phone]
        .core
        .seal_history_keys(laptop, now)
        .expect("seal");
    assert!(!keys.is_empty());
    keys
}

fn take(c: &mut Cast, from: usize, keys: &[HistoryKey]) -> Result<(usize, usize), DeviceError> {
    let (from, now) = (c.w.device_id(from), c.w.now);
    let o = c.w.devices[c.laptop]
        .core
        .handle_history_keys(from, keys, now)?;
    Ok((o.taken, o.refused))
}

fn is_refusal(r: Result<(usize, usize), DeviceError>, why: HistoryRefusal) -> bool {
    matches!(r, Err(DeviceError::Store(StoreError::History(w))) if w == why)
}

#[test]
fn genuine_history_keys_from_the_users_phone_make_the_history_readable() {
    let mut c = cast();
    let keys = genuine_keys(&mut c);
    let phone = c.phone;
    assert_eq!(take(&mut c, phone, &keys).expect("taken"), (keys.len(), 0));
    assert_eq!(readable(&mut c), (6, 6));
    // Again: nothing new, nothing refused.
    assert_eq!(take(&mut c, phone, &keys).expect("again"), (0, 0));
}

#[test]
fn forged_history_keys_are_refused() {
    let mut c = cast();
    let keys = genuine_keys(&mut c);
    let phone = c.phone;
    // Garbled in transit: the seal does not open.
    let garbled: Vec<HistoryKey> = keys
        .iter()
        .cloned()
        .map(|mut k| {
            let last = k.sealed.sealed.len() - 1;
            k.sealed.sealed[last] ^= 1;
            k
        })
        .collect();
    assert_eq!(
        take(&mut c, phone, &garbled).expect("frame"),
        (0, keys.len())
    );
    // Well sealed to the laptop, but not the key the epoch committed to.
    let laptop_public = c.w.devices[c.laptop].core.store().key().agreement_public();
    let laptop = c.w.device_id(c.laptop);
    let wrong: Vec<HistoryKey> = keys
        .iter()
        .map(|k| {
            let fake = EpochKey::from_bytes([0x66; 32]);
            let origin = EpochOrigin::Shared(k.epoch);
            let sealed =
                seal_epoch_key_checkable(k.conversation, origin, &fake, &[(laptop, laptop_public)]);
            HistoryKey {
                sealed: sealed.into_iter().next().expect("sealed"),
                ..k.clone()
            }
        })
        .collect();
    assert_eq!(take(&mut c, phone, &wrong).expect("frame"), (0, keys.len()));
    // A genuine key under an epoch name the laptop holds no opening event for.
    let renamed: Vec<HistoryKey> = keys
        .iter()
        .map(|k| HistoryKey {
            epoch: EventId([7; 32]),
            ..k.clone()
        })
        .collect();
    assert_eq!(
        take(&mut c, phone, &renamed).expect("frame"),
        (0, keys.len())
    );
    assert_eq!(readable(&mut c), (6, 0));
}

#[test]
fn history_keys_from_another_users_device_are_refused() {
    let mut c = cast();
    let keys = genuine_keys(&mut c);
    let bob = c.bob;
    assert!(is_refusal(
        take(&mut c, bob, &keys),
        HistoryRefusal::NotOwnDevice
    ));
    // Over a peer link too: Bob's phone is a peer of the laptop's only for what they share,
    // and a HistoryKeys frame from it closes the link.
    let (bob_id, now) = (c.w.device_id(bob), c.w.now);
    let laptop = c.laptop;
    c.w.devices[laptop]
        .core
        .handle_peer_directory(&[device(&user(2), 21).1], &[], now)
        .expect("laptop learns Bob's phone");
    let mut session =
        PeerSession::new(&mut c.w.devices[laptop].core, bob_id).expect("Bob shares CONV");
    assert!(!session.is_own_device());
    let r = session.handle_frame(
        &mut c.w.devices[laptop].core,
        PeerFrame::HistoryKeys { keys },
        now,
    );
    assert!(matches!(
        r,
        Err(PeerError::Device(DeviceError::Store(StoreError::History(
            HistoryRefusal::NotOwnDevice
        ))))
    ));
    assert_eq!(readable(&mut c), (6, 0));
}

#[test]
fn history_keys_sealed_to_another_device_or_from_a_revoked_one_are_refused() {
    let mut c = cast();
    let alice = user(1);
    // Alice's tablet: the phone seals its history to the tablet, the keys reach the laptop.
    let tablet_reg = device(&alice, 13).1;
    let (phone, now) = (c.phone, c.w.now);
    c.w.devices[phone]
        .core
        .handle_peer_directory(std::slice::from_ref(&tablet_reg), &[], now)
        .expect("phone learns tablet");
    let to_tablet = c.w.devices[phone]
        .core
        .seal_history_keys(tablet_reg.device, now)
        .expect("seal");
    assert!(!to_tablet.is_empty());
    assert_eq!(
        take(&mut c, phone, &to_tablet).expect("frame"),
        (0, to_tablet.len())
    );
    // Alice revokes her phone: from then on the laptop takes nothing from it.
    let keys = genuine_keys(&mut c);
    let revocation = DeviceRevocation::sign(&alice.key, c.w.device_id(phone), now);
    let laptop = c.laptop;
    c.w.devices[laptop]
        .core
        .handle_peer_directory(&[], &[revocation], now)
        .expect("laptop learns the revocation");
    assert!(is_refusal(
        take(&mut c, phone, &keys),
        HistoryRefusal::NotOwnDevice
    ));
    assert_eq!(readable(&mut c), (6, 0));
}
