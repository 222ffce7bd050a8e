//! Relay nodes over PostgreSQL, end to end over real QUIC on 127.0.0.1: restart, a hot
//! conversation raced by concurrent appenders and resubmissions, and two nodes sharing one
//! conversation. PostgreSQL is started by `support/pg.rs` (installed first if missing; never
//! skipped). Waits are bounded by timeouts; nothing asserts a duration.

mod support;

use anyhow::{bail, Context, Result};
use ed25519_dalek::SigningKey;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use support::pg::PgServer;
use tidings_engine::wire::{ErrorCode, SubmitOutcome};
use tidings_engine::{
    ConversationId, DeviceKey, Event, EventId, EventKind, MessageId, ServerSeq, UserId,
};
use tidings_relay::client::{client_endpoint, RelayClient};
use tidings_relay::{RelayConfig, RelayHandle};

const CONV: ConversationId = ConversationId([9; 16]);
/// Attempts of a submit refused with INTERNAL (a commit that lost a race to another node).
const MAX_RETRIES: usize = 50;

fn user_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn user_id(seed: u8) -> UserId {
    UserId(user_key(seed).verifying_key().to_bytes())
}

fn endpoint() -> Result<quinn::Endpoint> {
    Ok(client_endpoint("127.0.0.1:0".parse::<SocketAddr>()?)?)
}

/// A relay node over the database at `url`, its identity in `dir`.
async fn node(dir: &Path, url: &str) -> Result<RelayHandle> {
    let config = RelayConfig::dev(dir).with_postgres(url);
    Ok(tidings_relay::start(config).await?)
}

/// A second node's data directory holding the same relay identity as `from` (nodes over one
/// database sign one chain of statements per conversation).
fn same_identity(from: &Path) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for f in ["relay.key", "tls.cert.der", "tls.key.der"] {
        std::fs::copy(from.join(f), dir.path().join(f)).with_context(|| f.to_string())?;
    }
    Ok(dir)
}

/// A device's chain of events, independent of the connections it submits them on.
struct Author {
    key: DeviceKey,
    user_seed: u8,
    counter: u64,
    last: Option<EventId>,
}

impl Author {
    fn new(user_seed: u8, dev_seed: u8) -> Author {
        Author {
            key: DeviceKey::from_seed([dev_seed; 32], user_id(user_seed)),
            user_seed,
            counter: 0,
            last: None,
        }
    }

    fn event(&mut self, kind: EventKind) -> Event {
        self.counter += 1;
        let h = self
            .key
            .header(CONV, self.counter, self.last, self.counter, 1);
        let kind = h.bind(kind);
        let ev = Event::sign(self.key.signing_key(), h, kind).expect("sign");
        self.last = Some(ev.id());
        ev
    }

    fn create(&mut self, members: &[u8]) -> Event {
        let members = members.iter().map(|&m| user_id(m)).collect();
        self.event(EventKind::Create { members })
    }

    fn send(&mut self, text: &str) -> Event {
        self.event(EventKind::Send {
            message: MessageId::default(),
            body: text.as_bytes().to_vec(),
            media: vec![],
        })
    }

    /// A connection to `relay`, registered.
    async fn connect(&self, ep: &quinn::Endpoint, relay: &RelayHandle) -> Result<RelayClient> {
        let mut client =
            RelayClient::connect(ep, relay.addr(), relay.fingerprint(), &self.key).await?;
        if !client.welcome().registered {
            client
                .register(
                    &user_key(self.user_seed),
                    self.key.device(),
                    self.key.agreement_public().0,
                    1,
                )
                .await?;
        }
        Ok(client)
    }
}

/// Submits until every event is placed: a submit refused with INTERNAL (its commit lost a
/// race with another node, which the node then catches up on) is sent again as it was.
async fn submit_until_placed(client: &mut RelayClient, events: &[Event]) -> Result<Vec<ServerSeq>> {
    for _ in 0..MAX_RETRIES {
        let outcomes = client.submit(events).await?;
        let mut seqs = Vec::new();
        let mut retry = false;
        for o in &outcomes {
            match o {
                SubmitOutcome::Accepted { seq } => seqs.push(*seq),
                SubmitOutcome::Rejected { code, .. } if *code == ErrorCode::INTERNAL => {
                    retry = true
                }
                SubmitOutcome::Rejected { code, reason } => bail!("rejected {code}: {reason}"),
            }
        }
        if !retry {
            return Ok(seqs);
        }
    }
    bail!("still refused after {MAX_RETRIES} attempts")
}

/// Every event of the conversation as one node serves it: (seq, id), checked dense from 1
/// and free of duplicates.
async fn read_all(client: &mut RelayClient) -> Result<Vec<(ServerSeq, EventId)>> {
    let items = client.pull_all(CONV, 0).await?;
    let got: Vec<(ServerSeq, EventId)> = items.iter().map(|p| (p.seq, p.event.id())).collect();
    let seqs: Vec<ServerSeq> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=got.len() as u64).collect::<Vec<_>>(), "dense");
    let ids: BTreeSet<EventId> = got.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), got.len(), "each event once");
    Ok(got)
}

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
