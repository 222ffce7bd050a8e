//! The relay never sees a message's plaintext: a real relay over QUIC, two replicas, one
//! message with a distinctive text; after delivery, no file under the relay's data directory
//! holds those bytes (nor any file of the devices' data directories: bodies stay encrypted in
//! the logs, epoch keys sealed under the storage key), while the recipient's store reads the
//! text back.

mod common;

use common::net::{accept_invitation, config, eventually, ids, open, relay};
use common::{device, user};
use std::path::Path;
use tidings::engine::store::Body;
use tidings::engine::{ConversationId, EventLog, Store, StoreConfig};
use tidings::relay::Limits;

const SECRET: &[u8] = b"attack at dawn 7f3a9c";

/// Every file under `dir`, recursively, with its bytes.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read file");
                out.push((path, bytes));
            }
        }
    }
    out
}

fn holds(bytes: &[u8], needle: &[u8]) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_stores_no_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay_dir = dir.path().join("relay");
    let relay = relay(&relay_dir, Limits::default()).await;
    let relay_id = relay.relay_id();
    let (alice, bobu) = (user(1), user(2));
    let (ka, _) = device(&alice, 11);
    let (kb, _) = device(&bobu, 21);
    let phone = open(
        dir.path(),
        "phone",
        ka.clone(),
        config(&relay, relay.addr(), &ka, &alice),
    )
    .await;
    let bob = open(
        dir.path(),
        "bob",
        kb.clone(),
        config(&relay, relay.addr(), &kb, &bobu),
    )
    .await;
    let conv = ConversationId([0x5e; 16]);
    phone
        .create_conversation(conv, vec![bobu.id])
        .await
        .expect("create");
    accept_invitation(&bob, conv).await;
    eventually(20, "Bob sees the conversation", || async {
        bob.conversation(conv)
            .await
            .is_ok_and(|s| s.members.is_some())
    })
    .await;
    let id = phone.send(conv, SECRET.to_vec()).await.expect("send");
    eventually(20, "Bob has the message", || async {
        ids(&bob, conv).await == vec![id]
    })
    .await;
    // What Bob's replica shows carries the body encrypted.
    let shown = bob.conversation(conv).await.expect("conv");
    assert!(!holds(&shown.messages[0].view.record.body, SECRET));

    phone.close().await.expect("close phone");
    bob.close().await.expect("close bob");
    relay.shutdown().await.expect("relay stops");

    let relay_files = files(&relay_dir);
    assert!(!relay_files.is_empty(), "the relay wrote nothing?");
    for (path, bytes) in &relay_files {
        assert!(!holds(bytes, SECRET), "plaintext in {}", path.display());
    }
    for name in ["phone", "bob"] {
        for (path, bytes) in files(&dir.path().join(name)) {
            assert!(!holds(&bytes, SECRET), "plaintext in {}", path.display());
        }
    }

    // The recipient does read it: its store, reopened from its data directory, decrypts.
    let log = EventLog::open(dir.path().join("bob").join("device.redb")).expect("bob's log");
    let mut store = Store::new(log, kb, StoreConfig::new(relay_id), [5; 32]);
    let view = store
        .conversation(conv)
        .expect("conversation")
        .message(&id)
        .expect("message");
    assert_eq!(
        store.body(&view).expect("body"),
        Body::Text(SECRET.to_vec())
    );
}
