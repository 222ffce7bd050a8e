//! Relay nodes over PostgreSQL for the cluster tests: nodes sharing one identity, a device's
//! chain of events independent of its connections, submits retried past lost races, reads
//! checked dense, and bounded waits (nothing asserts a duration).

#![allow(dead_code)]

use super::pg::PgServer;
use anyhow::{bail, Context, Result};
use ed25519_dalek::SigningKey;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tidings_engine::wire::{ErrorCode, SubmitOutcome};
use tidings_engine::{
    ConversationId, DeviceKey, Event, EventId, EventKind, MessageId, ServerSeq, UserId,
};
use tidings_relay::client::{client_endpoint, RelayClient};
use tidings_relay::{RelayConfig, RelayHandle};

pub const CONV: ConversationId = ConversationId([9; 16]);
/// Attempts of a submit refused with INTERNAL (a commit that lost a race to another node).
pub const MAX_RETRIES: usize = 50;

pub fn user_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn user_id(seed: u8) -> UserId {
    UserId(user_key(seed).verifying_key().to_bytes())
}

pub fn endpoint() -> Result<quinn::Endpoint> {
    Ok(client_endpoint("127.0.0.1:0".parse::<SocketAddr>()?)?)
}

/// A relay node over the database at `url`, its identity in `dir`.
pub async fn node(dir: &Path, url: &str) -> Result<RelayHandle> {
    let config = RelayConfig::dev(dir).with_postgres(url);
    Ok(tidings_relay::start(config).await?)
}

/// A second node's data directory holding the same relay identity as `from` (nodes over one
/// database sign one chain of statements per conversation).
pub fn same_identity(from: &Path) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for f in ["relay.key", "tls.cert.der", "tls.key.der"] {
        std::fs::copy(from.join(f), dir.path().join(f)).with_context(|| f.to_string())?;
    }
    Ok(dir)
}

/// A device's chain of events, independent of the connections it submits them on.
pub struct Author {
    pub key: DeviceKey,
    user_seed: u8,
    counter: u64,
    last: Option<EventId>,
    conv: ConversationId,
}

impl Author {
    pub fn new(user_seed: u8, dev_seed: u8) -> Author {
        Author {
            key: DeviceKey::from_seed([dev_seed; 32], user_id(user_seed)),
            user_seed,
            counter: 0,
            last: None,
            conv: CONV,
        }
    }

    /// The same device writing in another conversation (a chain of its own there).
    pub fn in_conv(user_seed: u8, dev_seed: u8, conv: ConversationId) -> Author {
        Author {
            conv,
            ..Author::new(user_seed, dev_seed)
        }
    }

    pub fn event(&mut self, kind: EventKind) -> Event {
        self.counter += 1;
        let h = self
            .key
            .header(self.conv, self.counter, self.last, self.counter, 1);
        let kind = h.bind(kind);
        let ev = Event::sign(self.key.signing_key(), h, kind).expect("sign");
        self.last = Some(ev.id());
        ev
    }

    pub fn create(&mut self, members: &[u8]) -> Event {
        let members = members.iter().map(|&m| user_id(m)).collect();
        self.event(EventKind::Create { members })
    }

    pub fn send(&mut self, text: &str) -> Event {
        self.event(EventKind::Send {
            message: MessageId::default(),
            body: text.as_bytes().to_vec(),
            media: vec![],
        })
    }

    /// A connection to `relay`, registered.
    pub async fn connect(&self, ep: &quinn::Endpoint, relay: &RelayHandle) -> Result<RelayClient> {
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
pub async fn submit_until_placed(
    client: &mut RelayClient,
    events: &[Event],
) -> Result<Vec<ServerSeq>> {
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
pub async fn read_all(client: &mut RelayClient) -> Result<Vec<(ServerSeq, EventId)>> {
    let items = client.pull_all(CONV, 0).await?;
    let got: Vec<(ServerSeq, EventId)> = items.iter().map(|p| (p.seq, p.event.id())).collect();
    let seqs: Vec<ServerSeq> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=got.len() as u64).collect::<Vec<_>>(), "dense");
    let ids: BTreeSet<EventId> = got.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), got.len(), "each event once");
    Ok(got)
}

/// How long a change made through one node may take to be seen by another (the feed is read
/// every `change_poll_ms` and before each authentication and pull; this is a generous bound
/// for a loaded CI machine, not a measurement).
pub const SEEN_WITHIN: Duration = Duration::from_secs(10);

/// Two nodes with one relay identity over a fresh database.
pub async fn two_nodes(
    pg: &PgServer,
    db: &str,
) -> Result<(RelayHandle, RelayHandle, Vec<tempfile::TempDir>)> {
    let url = pg.create_database(db)?;
    let dir_a = tempfile::tempdir()?;
    let a = node(dir_a.path(), &url).await?;
    let dir_b = same_identity(dir_a.path())?;
    let b = node(dir_b.path(), &url).await?;
    Ok((a, b, vec![dir_a, dir_b]))
}

/// The bound on an attempt loop: [`SEEN_WITHIN`] from its start.
pub struct Deadline {
    what: &'static str,
    at: tokio::time::Instant,
}

impl Deadline {
    pub fn new(what: &'static str) -> Deadline {
        Deadline {
            what,
            at: tokio::time::Instant::now() + SEEN_WITHIN,
        }
    }

    /// Waits before the next attempt; an error once the bound is over.
    pub async fn next(&self) -> Result<()> {
        if tokio::time::Instant::now() > self.at {
            bail!("{}: not seen within {SEEN_WITHIN:?}", self.what);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    }
}
