//! The app developer's surface (issue 18): the builder with keys from the key store and the
//! relay's printed pin, typed updates as a Stream, `wait_for`, the connection's reason, the
//! clock.

mod common;

use common::net::{accept_invitation, next_update, relay};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tidings::engine::{ConversationId, DeviceId};
use tidings::relay::Limits;
use tidings::replica::keystore::Keys;
use tidings::replica::{
    Clock, ConnectionProblem, Connectivity, FingerprintError, PinError, RelayPin, Replica,
    ReplicaConfig, Status, Update,
};

const WAIT: Duration = Duration::from_secs(30);

fn pin_of(relay: &tidings::relay::server::RelayHandle) -> RelayPin {
    // The string the relay prints on its `pin:` line.
    format!("{}@{}", relay.relay_id(), relay.fingerprint())
        .parse()
        .expect("the printed pin parses")
}

async fn open(dir: &std::path::Path, relay: &tidings::relay::server::RelayHandle) -> Replica {
    let keys = Keys::create(dir, None).expect("keys");
    Replica::builder(dir)
        .relay([relay.addr()], pin_of(relay))
        .keys(keys)
        .connectivity(Connectivity::App)
        .open()
        .await
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_keys_and_pin_are_all_an_app_needs_to_reach_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = relay(&tmp.path().join("relay"), Limits::default()).await;
    let alice = open(&tmp.path().join("alice"), &relay).await;
    let bob = open(&tmp.path().join("bob"), &relay).await;
    let c = ConversationId([4; 16]);
    alice
        .create_conversation(c, vec![bob.user()])
        .await
        .expect("create");
    accept_invitation(&bob, c).await;

    let mut on_bob = bob.updates();
    let id = alice.send(c, b"hello".to_vec()).await.expect("send");
    let arrived = next_update(&mut on_bob, 30, "bob's copy", |u| match u {
        Update::MessageAdded {
            rendered: Some(r), ..
        } if r.view.id == id => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(
        arrived.body,
        tidings::replica::Body::Text(b"hello".to_vec())
    );
    bob.mark_read(c, None).await.expect("read");
    let shown = tokio::time::timeout(WAIT, alice.wait_for(c, id, Status::Read))
        .await
        .expect("READ in time")
        .expect("wait_for");
    assert_eq!(shown.view.status, Status::Read);
    assert_eq!(
        alice.connection().await.expect("status").problem,
        None,
        "a connection that works has no problem"
    );
    alice.close().await.expect("close");
    bob.close().await.expect("close");
    // `close` let go of every handle on the log (the driver's and the reads'): the file is
    // sealed, and the next open does not read every page again.
    let log = tmp.path().join("bob").join("device.redb");
    assert!(
        tidings::engine::EventLog::seal_path(&log).exists(),
        "close did not seal the log"
    );
    let reopened = tidings::engine::EventLog::open(&log).expect("reopen");
    assert!(!reopened.checked_in_full());
}

/// The first connection problem `r` reports.
async fn problem(r: &Replica) -> ConnectionProblem {
    let mut updates = r.updates();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(p) = r.connection().await.expect("status").problem {
                return p;
            }
            updates.next().await.expect("updates");
        }
    })
    .await
    .expect("a problem is reported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_that_does_not_match_is_reported_as_such() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = relay(&tmp.path().join("relay"), Limits::default()).await;
    let dir = tmp.path().join("alice");
    let keys = Keys::create(&dir, None).expect("keys");
    let wrong = RelayPin {
        cert_sha256: [7; 32].into(),
        ..pin_of(&relay)
    };
    let r = Replica::builder(&dir)
        .relay([relay.addr()], wrong)
        .keys(keys)
        .connectivity(Connectivity::App)
        .open()
        .await
        .expect("open");
    assert_eq!(problem(&r).await, ConnectionProblem::PinMismatch);
    r.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_without_registration_is_told_it_is_not_registered() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = relay(&tmp.path().join("relay"), Limits::default()).await;
    let (key, _) = common::device(&common::user(1), 11);
    let pin = pin_of(&relay);
    // The low-level path, without the registration the key store's keys carry.
    let config = ReplicaConfig::new(relay.addr(), pin.relay, pin.cert_sha256);
    let r = Replica::open(tmp.path().join("alice"), key, config)
        .await
        .expect("open");
    assert_eq!(problem(&r).await, ConnectionProblem::NotRegistered);
    r.close().await.expect("close");
}

#[test]
fn relay_pins_parse_only_in_the_printed_form() {
    let id = DeviceId([0xab; 32]);
    let text = format!("{id}@{}", "cd".repeat(32));
    let pin: RelayPin = text.parse().expect("pin");
    assert_eq!(pin.relay, id);
    assert_eq!(pin.cert_sha256, [0xcd; 32]);
    assert_eq!(pin.to_string(), text);
    assert_eq!("nonsense".parse::<RelayPin>(), Err(PinError::Shape));
    assert_eq!(
        format!("zz@{}", "cd".repeat(32)).parse::<RelayPin>(),
        Err(PinError::RelayId)
    );
    assert_eq!(
        format!("{id}@abc").parse::<RelayPin>(),
        Err(PinError::Fingerprint(FingerprintError::Length {
            digits: 3
        }))
    );
}

/// A clock stuck at one instant.
#[derive(Debug)]
struct Stopped(u64);

impl Clock for Stopped {
    fn now_ms(&self) -> u64 {
        self.0
    }
}

#[tokio::test]
async fn the_device_stamps_events_with_the_clock_it_is_given() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("alice");
    let keys = Keys::create(&dir, None).expect("keys");
    let nowhere = "127.0.0.1:9".parse().expect("addr");
    let when = 1_234_567_890_000;
    let r = Replica::builder(&dir)
        .relay(
            [nowhere],
            format!("{}@{}", "ab".repeat(32), "cd".repeat(32))
                .parse()
                .expect("pin"),
        )
        .keys(keys)
        .connectivity(Connectivity::App)
        .clock(Arc::new(Stopped(when)))
        .open()
        .await
        .expect("open");
    let c = ConversationId([5; 16]);
    r.create_conversation(c, vec![common::user(2).id])
        .await
        .expect("create");
    let id = r.send(c, b"when?".to_vec()).await.expect("send");
    let shown = r.message(c, id).await.expect("read").expect("shown");
    assert_eq!(shown.view.record.wall_ms, when);
    r.close().await.expect("close");
}

/// Waits for `message`'s erasure on `updates`; its reason.
async fn erased(
    updates: &mut tidings::replica::Updates,
    message: tidings::engine::MessageId,
) -> tidings::replica::ErasureReason {
    next_update(updates, 30, "the erasure", |u| match u {
        Update::MessageErased {
            message: m, reason, ..
        } if m == message => Some(reason),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disappearing_message_leaves_both_screens_through_an_update() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = relay(&tmp.path().join("relay"), Limits::default()).await;
    let alice = open(&tmp.path().join("alice"), &relay).await;
    let bob = open(&tmp.path().join("bob"), &relay).await;
    let c = ConversationId([5; 16]);
    alice
        .create_conversation(c, vec![bob.user()])
        .await
        .expect("create");
    accept_invitation(&bob, c).await;
    alice
        .set_retention(
            c,
            tidings::replica::RetentionPolicy::Disappear { after_read_secs: 1 },
        )
        .await
        .expect("policy");
    let (mut on_alice, mut on_bob) = (alice.updates(), bob.updates());
    let id = alice.send(c, b"gone soon".to_vec()).await.expect("send");
    next_update(&mut on_bob, 30, "bob's copy", |u| {
        matches!(u, Update::MessageAdded { message, .. } if message == id).then_some(())
    })
    .await;
    bob.mark_read(c, None).await.expect("read");
    assert_eq!(
        erased(&mut on_bob, id).await,
        tidings::replica::ErasureReason::Disappeared
    );
    assert_eq!(
        erased(&mut on_alice, id).await,
        tidings::replica::ErasureReason::Disappeared
    );
    for r in [&alice, &bob] {
        let left = r.page(c, None, 50).await.expect("page");
        assert!(left.iter().all(|m| m.view.id != id), "still listed");
    }
}
