//! New-device history over real sockets (issue 14), from the link on: Alice's phone leaves a
//! link bundle at the relay (`Replica::link_device`), a new laptop takes it with the code
//! (`link::join`), makes its own device key for her user (`Keys::create_linked`) and opens;
//! it then shows her conversation with Bob, every message readable, and its own message
//! reaches Bob. The engine-level tests (`tests/history.rs`) cover the peer and relay paths
//! with 3 × 1,000 messages; this one checks the pieces an app strings together.

mod common;

use common::net::{accept_invitation, all_pages, eventually, relay};
use std::path::Path;
use tidings::engine::store::Body;
use tidings::engine::ConversationId;
use tidings::relay::server::RelayHandle;
use tidings::relay::Limits;
use tidings::replica::keystore::Keys;
use tidings::replica::link::{join, LinkBundle};
use tidings::replica::{RelayPin, Replica};

/// Messages each of Alice and Bob send before the laptop exists.
const N: usize = 40;
const SECS: u64 = 60;

fn pin(relay: &RelayHandle) -> RelayPin {
    RelayPin {
        relay: relay.relay_id(),
        cert_sha256: relay.fingerprint(),
    }
}

async fn open(dir: &Path, keys: Keys, relay: &RelayHandle) -> Replica {
    Replica::builder(dir)
        .relay([relay.addr()], pin(relay))
        .keys(keys)
        .open()
        .await
        .expect("replica opens")
}

/// The texts `r` shows in `conv`, in order (`None` for a body it cannot read).
async fn texts(r: &Replica, conv: ConversationId) -> Vec<Option<String>> {
    all_pages(r, conv)
        .await
        .into_iter()
        .map(|m| match m.body {
            Body::Text(t) => Some(String::from_utf8_lossy(&t).into_owned()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_laptop_shows_alice_history_and_takes_part() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let relay = relay(&root.join("relay"), Limits::default()).await;
    let alice_keys = Keys::create(root.join("phone"), None).expect("Alice's keys");
    let bob_keys = Keys::create(root.join("bob"), None).expect("Bob's keys");
    let bob_user = bob_keys.user;
    let phone = open(&root.join("phone"), alice_keys.clone(), &relay).await;
    let bob = open(&root.join("bob"), bob_keys, &relay).await;
    let conv = ConversationId([0x4c; 16]);
    phone
        .create_conversation(conv, vec![bob_user])
        .await
        .expect("create");
    accept_invitation(&bob, conv).await;
    eventually(SECS, "Bob holds the conversation", || async {
        bob.conversation(conv)
            .await
            .is_ok_and(|s| s.members.is_some())
    })
    .await;
    for i in 0..N {
        phone
            .send(conv, format!("alice {i}").into_bytes())
            .await
            .expect("send");
        bob.send(conv, format!("bob {i}").into_bytes())
            .await
            .expect("send");
    }
    eventually(SECS, "both sides hold every message", || async {
        texts(&phone, conv).await.iter().flatten().count() == 2 * N
            && texts(&bob, conv).await.iter().flatten().count() == 2 * N
    })
    .await;
    let history = texts(&phone, conv).await;

    // The link: a code on the phone, typed into the laptop.
    let bundle = LinkBundle::new(&alice_keys, vec![relay.addr()], pin(&relay), Vec::new());
    let invite = phone.link_device(&bundle).await.expect("link left");
    let taken = join(&[relay.addr()], &pin(&relay), &invite.code)
        .await
        .expect("link taken");
    let laptop_keys = Keys::create_linked(root.join("laptop"), None, taken.user_secret.clone())
        .expect("laptop keys");
    assert_eq!(laptop_keys.user, alice_keys.user);
    let laptop = open(&root.join("laptop"), laptop_keys, &relay).await;

    eventually(
        SECS,
        "the laptop shows Alice's history, readable",
        || async { texts(&laptop, conv).await == history },
    )
    .await;
    laptop
        .send(conv, b"from the laptop".to_vec())
        .await
        .expect("send");
    eventually(SECS, "Bob reads the laptop's message", || async {
        texts(&bob, conv)
            .await
            .last()
            .is_some_and(|t| t.as_deref() == Some("from the laptop"))
    })
    .await;
}
