//! Relay nodes over PostgreSQL, end to end over real QUIC on 127.0.0.1: restart, a hot
//! conversation raced by concurrent appenders and resubmissions, and two nodes sharing one
//! conversation. PostgreSQL is started by `support/pg.rs` (installed first if missing; never
//! skipped). Waits are bounded by timeouts; nothing asserts a duration.

mod support;

use anyhow::{bail, Result};
use support::cluster::*;
use support::pg::PgServer;
use tidings_engine::wire::{DeviceRevocation, ErrorCode, SubmitOutcome};
use tidings_engine::{ConversationId, Event, EventKind};
use tidings_relay::client::{ClientError, RelayClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relay_restart_keeps_acked_events() -> Result<()> {
    let pg = PgServer::start(true, &[])?;
    let url = pg.create_database("restart")?;
    let dir = tempfile::tempdir()?;
    let ep = endpoint()?;

    let relay = node(dir.path(), &url).await?;
    let mut alice = Author::new(1, 11);
    let mut client = alice.connect(&ep, &relay).await?;
    let create = alice.create(&[1, 2]);
    assert_eq!(submit_until_placed(&mut client, &[create]).await?, vec![1]);
    let batch: Vec<Event> = (0..20).map(|i| alice.send(&format!("m{i}"))).collect();
    assert_eq!(
        submit_until_placed(&mut client, &batch).await?,
        (2..=21).collect::<Vec<_>>()
    );
    // Abrupt: drop without shutdown while a submit may be in flight.
    let in_flight = alice.send("in flight");
    client
        .submit_nowait(std::slice::from_ref(&in_flight))
        .await?;
    drop(relay);

    let relay = node(dir.path(), &url).await?;
    let mut client = alice.connect(&ep, &relay).await?;
    // Acked as 22 before the drop, or never stored: resent, it is 22 either way.
    assert_eq!(
        submit_until_placed(&mut client, &[in_flight]).await?,
        vec![22]
    );
    let next = alice.send("after");
    assert_eq!(submit_until_placed(&mut client, &[next]).await?, vec![23]);
    let mut bob = Author::new(2, 22).connect(&ep, &relay).await?;
    assert_eq!(read_all(&mut bob).await?.len(), 23);
    relay.shutdown().await?;
    Ok(())
}

/// Two nodes over one database; a device on each appends to the same conversation at the
/// same time. A node's commit that raced the other's is refused whole (a typed conflict in
/// the store), the node reads the conversation's head again, and the device's resubmission
/// lands: one dense order, each event once, the same on both nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_nodes_share_one_conversation() -> Result<()> {
    let pg = PgServer::start(true, &[])?;
    let url = pg.create_database("two_nodes")?;
    let dir_a = tempfile::tempdir()?;
    let ep = endpoint()?;
    let a = node(dir_a.path(), &url).await?;
    let dir_b = same_identity(dir_a.path())?;
    let b = node(dir_b.path(), &url).await?;
    assert_eq!(a.fingerprint(), b.fingerprint());

    let mut alice = Author::new(1, 11);
    let mut on_a = alice.connect(&ep, &a).await?;
    let create = alice.create(&[1, 2]);
    submit_until_placed(&mut on_a, &[create]).await?;
    // Bob's node learns the conversation from the database.
    let mut bob = Author::new(2, 22);
    let mut on_b = bob.connect(&ep, &b).await?;

    const ROUNDS: usize = 15;
    let alice_batches: Vec<Vec<Event>> = (0..ROUNDS)
        .map(|r| (0..4).map(|i| alice.send(&format!("a{r}.{i}"))).collect())
        .collect();
    let bob_batches: Vec<Vec<Event>> = (0..ROUNDS)
        .map(|r| (0..4).map(|i| bob.send(&format!("b{r}.{i}"))).collect())
        .collect();
    let ta = tokio::spawn(async move {
        for batch in &alice_batches {
            submit_until_placed(&mut on_a, batch).await?;
        }
        anyhow::Ok(on_a)
    });
    let tb = tokio::spawn(async move {
        for batch in &bob_batches {
            submit_until_placed(&mut on_b, batch).await?;
        }
        anyhow::Ok(on_b)
    });
    let mut on_a = ta.await??;
    let mut on_b = tb.await??;
    let from_a = read_all(&mut on_a).await?;
    let from_b = read_all(&mut on_b).await?;
    assert_eq!(from_a.len(), 1 + 2 * ROUNDS * 4);
    assert_eq!(from_a, from_b, "both nodes serve one order");
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

/// Eight appenders on one hot conversation, spread over two nodes, each submitting every
/// batch on both nodes at once (resubmissions of the same event ids racing each other):
/// sequences stay dense, no event is stored twice, and both copies of a submit get the same
/// places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hot_conversation_race_stays_dense_without_duplicates() -> Result<()> {
    let pg = PgServer::start(true, &[])?;
    let url = pg.create_database("race")?;
    let dir_a = tempfile::tempdir()?;
    let ep = endpoint()?;
    let a = node(dir_a.path(), &url).await?;
    let dir_b = same_identity(dir_a.path())?;
    let b = node(dir_b.path(), &url).await?;

    const APPENDERS: u8 = 8;
    const BATCHES: usize = 6;
    const BATCH: usize = 5;
    let mut creator = Author::new(1, 100);
    let mut c = creator.connect(&ep, &a).await?;
    let create = creator.create(&[1]);
    submit_until_placed(&mut c, &[create]).await?;

    // Everyone connects (and registers on both nodes) first: a registration committed with
    // events that lost a race is refused with them.
    let mut appenders = Vec::new();
    for d in 0..APPENDERS {
        let mut author = Author::new(1, 10 + d);
        let on_a = author.connect(&ep, &a).await?;
        let on_b = author.connect(&ep, &b).await?;
        let batches: Vec<Vec<Event>> = (0..BATCHES)
            .map(|r| {
                (0..BATCH)
                    .map(|i| author.send(&format!("{d}.{r}.{i}")))
                    .collect()
            })
            .collect();
        appenders.push((on_a, on_b, batches));
    }
    let mut tasks = Vec::new();
    for (mut on_a, mut on_b, batches) in appenders {
        tasks.push(tokio::spawn(async move {
            for batch in &batches {
                let (x, y) = tokio::join!(
                    submit_until_placed(&mut on_a, batch),
                    submit_until_placed(&mut on_b, batch)
                );
                let (x, y) = (x?, y?);
                assert_eq!(x, y, "one place per event, whichever node answers");
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let all = read_all(&mut c).await?;
    assert_eq!(all.len(), 1 + APPENDERS as usize * BATCHES * BATCH);
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

/// A device revoked through node B can no longer authenticate on node A, and its open session
/// on A is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_revocation_through_one_node_holds_on_the_other() -> Result<()> {
    let pg = PgServer::start(true, &[])?;
    let (a, b, _dirs) = two_nodes(&pg, "revoke").await?;
    let ep = endpoint()?;
    let phone = Author::new(1, 11);
    let laptop = Author::new(1, 12);
    let mut laptop_on_a = laptop.connect(&ep, &a).await?;
    let mut phone_on_b = phone.connect(&ep, &b).await?;
    phone_on_b
        .revoke(DeviceRevocation::sign(&user_key(1), laptop.key.device(), 1))
        .await?;
    // The open session on A ends.
    let closed = tokio::time::timeout(SEEN_WITHIN, async {
        loop {
            if laptop_on_a.next_frame().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the revoked device's session on A stayed open"
    );
    // And it cannot authenticate on A again.
    let deadline = Deadline::new("revocation refused on A");
    while RelayClient::connect(&ep, a.addr(), a.fingerprint(), &laptop.key)
        .await
        .is_ok()
    {
        deadline.next().await?;
    }
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

/// A member removed through node B can no longer pull the conversation through node A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_removal_through_one_node_holds_on_the_other() -> Result<()> {
    let pg = PgServer::start(true, &[])?;
    let (a, b, _dirs) = two_nodes(&pg, "remove").await?;
    let ep = endpoint()?;
    let mut alice = Author::new(1, 11);
    let mut alice_on_b = alice.connect(&ep, &b).await?;
    let bob = Author::new(2, 22);
    let mut bob_on_a = bob.connect(&ep, &a).await?;
    submit_until_placed(&mut alice_on_b, &[alice.create(&[1, 2])]).await?;
    let deadline = Deadline::new("the conversation readable on A");
    let first = loop {
        if let Ok(all) = bob_on_a.pull_all(CONV, 0).await {
            break all;
        }
        deadline.next().await?;
    };
    assert_eq!(first.len(), 1);
    let remove = alice.event(EventKind::RemoveMember { user: user_id(2) });
    submit_until_placed(&mut alice_on_b, &[remove]).await?;
    let after = alice.send("after the removal");
    submit_until_placed(&mut alice_on_b, &[after]).await?;
    let deadline = Deadline::new("pull refused on A");
    loop {
        match bob_on_a.pull_all(CONV, 0).await {
            Err(ClientError::Refused { code, .. }) if code == ErrorCode::NOT_MEMBER => break,
            Err(e) => bail!("unexpected error: {e}"),
            Ok(_) => deadline.next().await?,
        }
    }
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

/// An invitation made through node B is listed on node A; a block made through B makes A
/// refuse the blocked user's invitations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_consent_through_one_node_holds_on_the_other() -> Result<()> {
    let pg = PgServer::start(true, &[])?;
    let (a, b, _dirs) = two_nodes(&pg, "consent").await?;
    let ep = endpoint()?;
    let mut alice = Author::new(1, 11);
    let mut alice_on_b = alice.connect(&ep, &b).await?;
    let bob = Author::new(2, 22);
    let mut bob_on_a = bob.connect(&ep, &a).await?;
    submit_until_placed(&mut alice_on_b, &[alice.create(&[1, 2])]).await?;
    let deadline = Deadline::new("invitation listed on A");
    while !bob_on_a
        .sync_state()
        .await?
        .1
        .iter()
        .any(|i| i.conversation == CONV)
    {
        deadline.next().await?;
    }
    // Bob blocks Carol through B; Carol's invitation through A is refused.
    let mut bob_on_b = bob.connect(&ep, &b).await?;
    bob_on_b.block(user_id(3)).await?;
    let carol = Author::new(3, 33);
    let mut carol_on_a = carol.connect(&ep, &a).await?;
    let deadline = Deadline::new("block seen on A");
    for attempt in 1u8.. {
        let mut c = Author::in_conv(3, 33, ConversationId([attempt; 16]));
        match carol_on_a.submit(&[c.create(&[3, 2])]).await?.as_slice() {
            [SubmitOutcome::Rejected { code, .. }] if *code == ErrorCode::BLOCKED => break,
            [SubmitOutcome::Accepted { .. }] => deadline.next().await?,
            other => bail!("unexpected outcome {other:?}"),
        }
    }
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

/// A device connected to node A receives a push of an event appended through node B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_push_crosses_nodes() -> Result<()> {
    let pg = PgServer::start(true, &[])?;
    let (a, b, _dirs) = two_nodes(&pg, "push").await?;
    let ep = endpoint()?;
    let mut alice = Author::new(1, 11);
    let mut alice_on_b = alice.connect(&ep, &b).await?;
    let bob = Author::new(2, 22);
    let mut bob_on_a = bob.connect(&ep, &a).await?;
    submit_until_placed(&mut alice_on_b, &[alice.create(&[1, 2])]).await?;
    let deadline = Deadline::new("invitation accepted on A");
    while bob_on_a.accept(CONV).await.is_err() {
        deadline.next().await?;
    }
    bob_on_a.sync().await?;
    let sent = alice.send("across nodes");
    let id = sent.id();
    submit_until_placed(&mut alice_on_b, &[sent]).await?;
    let pushed = bob_on_a.next_push(SEEN_WITHIN).await?;
    assert!(
        pushed.iter().any(|p| p.event.id() == id),
        "the push carries the event"
    );
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}
