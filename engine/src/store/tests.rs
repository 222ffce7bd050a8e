//! Unit tests of the store's send path: what a send costs in durable commits, and what a crash
//! right after a send keeps.

use super::*;
use crate::wire::DeviceRegistration;
use ed25519_dalek::SigningKey;

const CONV: ConversationId = ConversationId([0x5e; 16]);
const T0: u64 = 1_700_000_000_000;

/// A user (identity key) with one certified device.
struct Member {
    device: DeviceKey,
    cert: DeviceRegistration,
}

fn member(tag: u8) -> Member {
    let user_key = SigningKey::from_bytes(&[tag; 32]);
    let user = UserId(user_key.verifying_key().to_bytes());
    let device = DeviceKey::from_seed([tag ^ 0xff; 32], user);
    let cert = device.certificate(&user_key, 1);
    Member { device, cert }
}

fn relay() -> DeviceKey {
    DeviceKey::from_seed([9; 32], UserId([9; 32]))
}

fn store_on(log: EventLog, me: &Member) -> Store {
    let mut store = Store::new(
        log,
        me.device.clone(),
        StoreConfig::new(relay().device()),
        [3; 32],
    );
    store
        .absorb_devices(std::slice::from_ref(&me.cert), &[], &[])
        .expect("own certificate");
    store
}

/// Alice's store with a conversation with Bob, created before she knew Bob's device: her
/// first epoch is sealed to her own device only, so her next send shares it with Bob's
/// device first (an `EpochKeys` event) and then sends the message.
fn alice_before_sharing(log: EventLog) -> (Store, Member) {
    let alice = member(1);
    let bob = member(2);
    let mut store = store_on(log, &alice);
    store
        .create_conversation(CONV, vec![bob.device.user()], T0)
        .expect("create");
    store
        .absorb_devices(std::slice::from_ref(&bob.cert), &[], &[])
        .expect("Bob's certificate");
    (store, bob)
}

fn kinds_in_outbox(store: &mut Store) -> Vec<&'static str> {
    let ids: Vec<EventId> = store
        .outbox()
        .expect("outbox")
        .iter()
        .map(|e| e.event)
        .collect();
    ids.iter()
        .map(|id| {
            store
                .log()
                .get(id)
                .expect("get")
                .expect("stored")
                .kind()
                .name()
        })
        .collect()
}

#[test]
fn a_send_that_shares_its_epoch_is_one_durable_commit() {
    let (mut store, _bob) = alice_before_sharing(EventLog::in_memory().expect("log"));
    let before = store.log().durable_commits();
    store
        .send(CONV, b"hello".to_vec(), Vec::new(), T0 + 1)
        .expect("send");
    assert_eq!(
        kinds_in_outbox(&mut store),
        ["create", "epoch-keys", "epoch-keys", "send"],
        "the send shared the epoch with Bob's device first"
    );
    assert_eq!(store.log().durable_commits() - before, 1);
}

#[test]
fn a_plain_send_is_one_durable_commit() {
    let (mut store, _bob) = alice_before_sharing(EventLog::in_memory().expect("log"));
    store
        .send(CONV, b"first".to_vec(), Vec::new(), T0 + 1)
        .expect("send");
    let before = store.log().durable_commits();
    store
        .send(CONV, b"second".to_vec(), Vec::new(), T0 + 2)
        .expect("send");
    assert_eq!(store.log().durable_commits() - before, 1);
}

fn outgoing(n: usize) -> Vec<Outgoing> {
    (0..n)
        .map(|i| Outgoing {
            conversation: CONV,
            body: format!("message {i}").into_bytes(),
            media: Vec::new(),
        })
        .collect()
}

/// The events in the outbox, in order.
fn outbox_events(store: &mut Store) -> Vec<Event> {
    let ids: Vec<EventId> = store
        .outbox()
        .expect("outbox")
        .iter()
        .map(|e| e.event)
        .collect();
    ids.iter()
        .map(|id| store.log().get(id).expect("get").expect("stored"))
        .collect()
}

fn sent_bodies(store: &mut Store) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for ev in outbox_events(store) {
        if let Some(m) = ev.message() {
            let conv = store.conversation(CONV).expect("conversation");
            let view = conv
                .messages()
                .into_iter()
                .find(|v| v.id == m)
                .expect("folded");
            match store.body(&view).expect("body") {
                Body::Text(b) | Body::Clear(b) => out.push(b),
                other => panic!("unreadable own body: {other:?}"),
            }
        }
    }
    out
}

#[test]
fn a_batch_of_sends_is_one_durable_commit_in_order() {
    let (mut store, _bob) = alice_before_sharing(EventLog::in_memory().expect("log"));
    let before = store.log().durable_commits();
    let results = store.send_all(outgoing(10), T0 + 1);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(store.log().durable_commits() - before, 1);
    let expected: Vec<Vec<u8>> = outgoing(10).into_iter().map(|o| o.body).collect();
    assert_eq!(sent_bodies(&mut store), expected);
}

#[test]
fn a_body_over_the_limit_fails_alone_in_a_batch() {
    let (mut store, _bob) = alice_before_sharing(EventLog::in_memory().expect("log"));
    let mut batch = outgoing(3);
    batch[1].body = vec![0; crate::e2ee::MAX_PLAINTEXT_LEN + 1];
    let results = store.send_all(batch, T0 + 1);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(matches!(results[1], Err(StoreError::BodyTooLarge { .. })));
    assert_eq!(
        sent_bodies(&mut store),
        [b"message 0".to_vec(), b"message 2".to_vec()]
    );
}

#[test]
fn a_batch_over_the_limit_is_refused_before_anything_is_written() {
    let (mut store, _bob) = alice_before_sharing(EventLog::in_memory().expect("log"));
    let before = (
        store.log().durable_commits(),
        store.outbox().expect("outbox"),
    );
    let results = store.send_all(outgoing(MAX_SEND_BATCH + 1), T0 + 1);
    assert_eq!(results.len(), MAX_SEND_BATCH + 1);
    assert!(results.iter().all(|r| matches!(
        r,
        Err(StoreError::BatchTooLarge { len, max })
            if *len == MAX_SEND_BATCH + 1 && *max == MAX_SEND_BATCH
    )));
    assert_eq!(
        (
            store.log().durable_commits(),
            store.outbox().expect("outbox")
        ),
        before
    );
}

/// A disk that keeps only what was synced: `crash` gives a disk holding what the last
/// `sync_data` saw; `fail_syncs` makes every sync fail (a dying disk).
#[derive(Clone, Debug, Default)]
struct Disk(std::sync::Arc<std::sync::Mutex<Image>>);

#[derive(Debug, Default)]
struct Image {
    live: Vec<u8>,
    durable: Vec<u8>,
    fail_syncs: bool,
}

impl Disk {
    fn image(&self) -> std::sync::MutexGuard<'_, Image> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn crash(&self) -> Disk {
        let durable = self.image().durable.clone();
        Disk(std::sync::Arc::new(std::sync::Mutex::new(Image {
            live: durable.clone(),
            durable,
            fail_syncs: false,
        })))
    }
}

fn out_of_range() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, "out of range")
}

impl redb::StorageBackend for Disk {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.image().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let img = self.image();
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let src = img
            .live
            .get(start..start + out.len())
            .ok_or_else(out_of_range)?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let len = usize::try_from(len).map_err(|_| out_of_range())?;
        self.image().live.resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let mut img = self.image();
        if img.fail_syncs {
            return Err(std::io::Error::other("the disk failed"));
        }
        img.durable = img.live.clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut img = self.image();
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        img.live
            .get_mut(start..start + data.len())
            .ok_or_else(out_of_range)?
            .copy_from_slice(data);
        Ok(())
    }
}

#[test]
fn a_batch_that_returned_survives_a_crash() {
    let disk = Disk::default();
    let (mut store, _bob) =
        alice_before_sharing(EventLog::with_backend(disk.clone()).expect("log"));
    let results = store.send_all(outgoing(20), T0 + 1);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let queued = store.outbox().expect("outbox");
    drop(store);
    let log = EventLog::with_backend(disk.crash()).expect("reopen after the crash");
    let mut store = store_on(log, &member(1));
    assert_eq!(store.outbox().expect("outbox"), queued);
    let expected: Vec<Vec<u8>> = outgoing(20).into_iter().map(|o| o.body).collect();
    assert_eq!(sent_bodies(&mut store), expected);
}

#[test]
fn a_batch_on_a_failing_disk_fails_whole_and_is_absent_after_a_crash() {
    let disk = Disk::default();
    let (mut store, _bob) =
        alice_before_sharing(EventLog::with_backend(disk.clone()).expect("log"));
    let queued = store.outbox().expect("outbox");
    disk.image().fail_syncs = true;
    let results = store.send_all(outgoing(5), T0 + 1);
    // The failure shows at the final sync, or earlier when redb syncs a file it grows.
    assert!(results.iter().all(Result::is_err), "{results:?}");
    drop(store);
    let log = EventLog::with_backend(disk.crash()).expect("reopen after the crash");
    let mut store = store_on(log, &member(1));
    assert_eq!(store.outbox().expect("outbox"), queued, "none of the batch");
}

/// The recipient devices of each `EpochKeys` event in the outbox, in order.
fn sealed_to(store: &mut Store) -> Vec<Vec<DeviceId>> {
    let mut out = Vec::new();
    for event in outbox_events(store) {
        if let EventKind::EpochKeys { keys, .. } = event.kind() {
            out.push(keys.iter().map(|k| k.device).collect());
        }
    }
    out
}

/// Issue 18: once a device's directory holds the revocation of a member's device (the
/// revoking device takes it when the relay answers `Revoked`; the others when they read the
/// user's devices), its next message starts an epoch without that device.
#[test]
fn a_revoked_device_gets_no_new_epoch() {
    let (mut store, bob) = alice_before_sharing(EventLog::in_memory().expect("log"));
    let bob_key = SigningKey::from_bytes(&[2; 32]);
    let phone = DeviceKey::from_seed([0x77; 32], bob.device.user());
    store
        .absorb_devices(&[phone.certificate(&bob_key, 1)], &[], &[])
        .expect("Bob's phone");
    store
        .send(CONV, b"to both".to_vec(), Vec::new(), T0 + 1)
        .expect("send");
    let before = sealed_to(&mut store);
    assert!(
        before.iter().flatten().any(|d| *d == phone.device()),
        "the phone got the first epoch: {before:?}"
    );
    let revocation = crate::wire::DeviceRevocation::sign(&bob_key, phone.device(), T0 + 2);
    store
        .absorb_devices(&[], &[revocation], &[])
        .expect("revocation");
    store
        .send(CONV, b"not to the phone".to_vec(), Vec::new(), T0 + 3)
        .expect("send");
    let after = sealed_to(&mut store);
    let new: Vec<DeviceId> = after[before.len()..].iter().flatten().copied().collect();
    assert!(!new.is_empty(), "a new epoch was started: {after:?}");
    assert!(
        !new.contains(&phone.device()),
        "sealed to the revoked phone: {new:?}"
    );
    assert!(
        new.contains(&bob.device.device()),
        "Bob's other device: {new:?}"
    );
}

#[test]
fn a_media_body_travels_sealed_and_reads_back_with_its_descriptors() {
    use crate::media::{BlobDescriptor, BlobKey, MediaBody};
    let (mut store, _bob) = alice_before_sharing(EventLog::in_memory().expect("log"));
    let body = MediaBody {
        caption: b"the view".to_vec(),
        media: vec![BlobDescriptor {
            blob: crate::ids::BlobId([0xb1; 32]),
            key: BlobKey::from_bytes([0x4b; 32]),
            len: 123_456,
            mime: "image/jpeg".into(),
            thumbnail: vec![0x7e; 2048],
        }],
    };
    let (event, _) = store.send_media(CONV, &body, T0 + 1).expect("send");
    let EventKind::Send {
        body: wire_body,
        media,
        ..
    } = event.kind()
    else {
        panic!("a send");
    };
    // Nothing of the media in clear: no clear references, and neither the key, the root,
    // the mime type nor the thumbnail in the body's bytes.
    assert!(media.is_empty());
    assert_eq!(wire_body[0], crate::e2ee::BODY_SEALED_MEDIA_V1);
    for needle in [&[0x4b; 32][..], &[0xb1; 32], b"image/jpeg", &[0x7e; 64]] {
        assert!(!wire_body.windows(needle.len()).any(|w| w == needle));
    }
    let view = store
        .conversation(CONV)
        .expect("conversation")
        .messages()
        .into_iter()
        .find(|v| Some(v.id) == event.message())
        .expect("folded");
    assert_eq!(store.body(&view).expect("body"), Body::Media(body.clone()));
    // A text body relabelled as media (or the reverse) does not open.
    let mut relabelled = view.clone();
    relabelled.record.body[0] = crate::e2ee::BODY_SEALED_V1;
    assert!(matches!(
        store.body(&relabelled).expect("body"),
        Body::Unreadable(_)
    ));
    // Over the body limit: refused before anything is written.
    let many = MediaBody {
        caption: Vec::new(),
        media: vec![body.media[0].clone(); 16]
            .into_iter()
            .map(|mut d| {
                d.thumbnail = vec![1; crate::media::MAX_THUMBNAIL_LEN];
                d
            })
            .collect(),
    };
    assert!(matches!(
        store.send_media(CONV, &many, T0 + 2),
        Err(StoreError::BodyTooLarge { .. })
    ));
}

/// The open's incarnation bump is not synced (docs/FORMAT.md): after a crash with nothing
/// durable since the open, the next open may take the same number again, harmlessly. But a
/// number under which anything became durable survives every crash with it, so a store
/// reopened with the same entropy never draws the same nonces and keys again.
#[test]
fn an_incarnation_that_made_anything_durable_is_never_taken_again() {
    let disk = Disk::default();
    let (mut store, _bob) =
        alice_before_sharing(EventLog::with_backend(disk.clone()).expect("log"));
    let used = store.log().incarnation();
    store
        .send(
            CONV,
            b"made under this incarnation".to_vec(),
            vec![],
            T0 + 1,
        )
        .expect("send");
    drop(store);
    let log = EventLog::with_backend(disk.crash()).expect("reopen after the crash");
    assert!(
        log.incarnation() > used,
        "incarnation {used} made a durable send and was taken again after a crash"
    );
    // Crash again at once: nothing durable under the new number, which may come back.
    let again = log.incarnation();
    drop(log);
    let log = EventLog::with_backend(disk.crash()).expect("reopen after the second crash");
    assert!(log.incarnation() > used);
    assert!(log.incarnation() <= again + 1);
}
