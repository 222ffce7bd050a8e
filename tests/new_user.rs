//! Issue 18, "Found when tried as a new user would": one test per bug, each written to fail
//! on the code that had it.

mod common;
#[path = "common/procs.rs"]
mod procs;

use common::{device, user};
use futures::StreamExt;
use std::path::Path;
use std::time::Duration;
use tidings::engine::{ConversationId, DeviceId};
use tidings::replica::{Replica, ReplicaConfig, ReplicaError, MAX_BODY_LEN};

/// A replica pointed at a relay that is not there: everything below is local.
async fn offline(dir: &Path) -> Result<Replica, ReplicaError> {
    let alice = user(1);
    let (key, _) = device(&alice, 11);
    let nowhere = "127.0.0.1:9".parse().expect("addr");
    Replica::open(
        dir,
        key,
        ReplicaConfig::new(nowhere, DeviceId([7; 32]), [0; 32]),
    )
    .await
}

#[tokio::test]
async fn send_to_an_unknown_conversation_is_an_error_at_the_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = offline(dir.path()).await.expect("open");
    let made_up = ConversationId([9; 16]);
    let res = r.send(made_up, b"hello?".to_vec()).await;
    assert!(
        matches!(res, Err(ReplicaError::UnknownConversation(c)) if c == made_up),
        "{res:?}"
    );
    let listed = r.conversations().await.expect("list");
    assert!(listed.iter().all(|s| s.id != made_up), "{listed:?}");
}

#[tokio::test]
async fn close_ends_every_update_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = offline(dir.path()).await.expect("open");
    let mut before = r.updates();
    r.close().await.expect("close");
    let end = tokio::time::timeout(Duration::from_secs(10), before.next()).await;
    assert!(matches!(end, Ok(None)), "stream made before close: {end:?}");
    let mut after = r.updates();
    let end = tokio::time::timeout(Duration::from_secs(10), after.next()).await;
    assert!(matches!(end, Ok(None)), "stream made after close: {end:?}");
}

#[tokio::test]
async fn the_published_body_limit_is_the_real_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = offline(dir.path()).await.expect("open");
    let c = ConversationId([3; 16]);
    r.create_conversation(c, vec![user(2).id])
        .await
        .expect("create");
    r.send(c, vec![b'x'; MAX_BODY_LEN])
        .await
        .expect("a body of exactly MAX_BODY_LEN is taken");
    let err = r
        .send(c, vec![b'x'; MAX_BODY_LEN + 1])
        .await
        .expect_err("one byte more is refused");
    assert!(
        matches!(err, ReplicaError::BodyTooLarge { len, max } if len == MAX_BODY_LEN + 1 && max == MAX_BODY_LEN),
        "{err:?}"
    );
    assert!(err.to_string().contains("too large"), "{err}");
}

#[tokio::test]
async fn data_directory_errors_belong_to_the_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = offline(dir.path()).await.expect("open");
    let err = offline(dir.path()).await.expect_err("second open");
    assert!(matches!(err, ReplicaError::AlreadyOpen { .. }), "{err:?}");

    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").expect("write");
    let err = offline(&file).await.expect_err("a file as data directory");
    match &err {
        ReplicaError::Io { path, .. } => assert_eq!(path, &file),
        other => panic!("expected Io with the path, got {other:?}"),
    }
    assert!(err.to_string().contains("not-a-directory"), "{err}");
}

#[tokio::test]
async fn an_unknown_conversation_has_no_view() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = offline(dir.path()).await.expect("open");
    let made_up = ConversationId([9; 16]);
    let res = r.conversation(made_up).await;
    assert!(
        matches!(res, Err(ReplicaError::UnknownConversation(c)) if c == made_up),
        "{res:?}"
    );
}

#[test]
fn a_dev_relay_with_a_data_dir_keeps_its_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dev_relay_addr(dir.path());
    let second = dev_relay_addr(dir.path());
    assert_eq!(first, second, "the --dev relay's address after a restart");
    let kept = std::fs::read_to_string(dir.path().join("dev-listen")).expect("dev-listen");
    assert_eq!(kept.trim(), first);
}

/// Starts `tidings-relay --dev --data-dir DIR`, reads the address it prints, stops it.
fn dev_relay_addr(dir: &Path) -> String {
    let relay = procs::spawn_relay(dir, None);
    relay.addr.to_string()
}
