//! Sends queued at once through one replica (group commit: one durable commit for the
//! queue): every caller gets its own message id, every message is in the outbox before its
//! caller hears back, the relay takes them all, and the other member sees them in the
//! sender's outbox order.

mod common;

use common::net::{accept_invitation, all_at_least, config, eventually, ids, open, relay};
use common::{device, user};
use std::collections::BTreeSet;
use tidings::engine::{ConversationId, MessageId, Status};
use tidings::relay::Limits;

const CONV: ConversationId = ConversationId([0xb5; 16]);
/// Sends queued at once.
const BURST: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_queued_sends_is_durable_delivered_and_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir.path().join("relay"), Limits::default()).await;
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
    phone
        .create_conversation(CONV, vec![bobu.id])
        .await
        .expect("create");
    accept_invitation(&bob, CONV).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..BURST {
        let r = phone.clone();
        tasks.spawn(async move {
            let id = r.send(CONV, format!("burst {i}").into_bytes()).await?;
            // Answered only once durable: it is in the outbox or already acknowledged.
            let queued = r.outbox().await?.iter().any(|e| e.message == Some(id));
            let shown = r
                .conversation(CONV)
                .await?
                .messages
                .iter()
                .any(|m| m.view.id == id);
            Ok::<_, tidings::replica::ReplicaError>((id, queued || shown))
        });
    }
    let mut sent: BTreeSet<MessageId> = BTreeSet::new();
    while let Some(done) = tasks.join_next().await {
        let (id, stored) = done.expect("task").expect("send");
        assert!(stored, "message {id} answered before it was stored");
        assert!(sent.insert(id), "message {id} returned twice");
    }
    assert_eq!(sent.len(), BURST);

    let want: Vec<MessageId> = sent.iter().copied().collect();
    eventually(60, "every message at Bob's device, sequenced", || async {
        all_at_least(&bob, CONV, &want, Status::Sent).await
    })
    .await;
    eventually(60, "an empty outbox", || async {
        phone.outbox().await.map(|o| o.is_empty()).unwrap_or(false)
    })
    .await;
    let on_phone = ids(&phone, CONV).await;
    let on_bob = ids(&bob, CONV).await;
    assert_eq!(on_phone, on_bob, "one order on both devices");
    assert_eq!(
        on_phone.iter().copied().collect::<BTreeSet<_>>(),
        sent,
        "exactly the burst"
    );
    phone.close().await.expect("close");
    bob.close().await.expect("close");
}
