//! Device failover across relay nodes: three `tidings-test-relay` processes over one
//! PostgreSQL (the tests' harness, `relay/tests/support/pg.rs`), one relay identity, devices
//! spread over them, each given every node's address. One node is killed with SIGKILL while
//! every device sends at full speed: its devices move to the other nodes, every message
//! acknowledged before the kill is stored, and at the end every outbox drains with every
//! message exactly once, in its author's order, on every device.

mod common;
#[path = "../relay/tests/support/pg.rs"]
mod pg;
#[path = "common/procs.rs"]
mod procs;

use common::net::{eventually, open, start_conversation};
use common::{device, user};
use futures::StreamExt;
use procs::{replica_config, spawn_relay_config, RelayProc};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tidings::engine::{ConversationId, DeviceId, DeviceKey, EventKind, MessageId, Status};
use tidings::relay::client::{client_endpoint, RelayClient};
use tidings::replica::{Replica, Update};

const CONV: ConversationId = ConversationId([0xfa; 16]);
/// Messages each device sends, as fast as it can; the kill falls inside.
const BURST: u64 = 60;

type Acked = Arc<Mutex<HashSet<MessageId>>>;

/// Message ids seen at SENT or beyond on a device: a relay node acknowledged them.
fn watch_acks(r: &Replica, acked: Acked) {
    let mut updates = r.updates();
    tokio::spawn(async move {
        while let Some(u) = updates.next().await {
            let m = match u {
                Update::StatusChanged { message, to, .. } if to.rank() >= Status::Sent.rank() => {
                    message
                }
                Update::MessageAdded {
                    message, status, ..
                } if status.rank() >= Status::Sent.rank() => message,
                _ => continue,
            };
            acked.lock().expect("acked").insert(m);
        }
    });
}

/// A node over `url` with its data (and the shared identity) in `dir`.
fn node(dir: &Path, url: &str) -> RelayProc {
    std::fs::create_dir_all(dir).expect("data dir");
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nstorage = \"postgres\"\npostgres = {:?}\n",
            dir.display().to_string(),
            url
        ),
    )
    .expect("config");
    tokio::task::block_in_place(|| spawn_relay_config(&config))
}

/// The conversation as a node serves it: message ids of its Sends in sequence order, checked
/// gap-free and free of duplicates.
async fn stored(relay: &RelayProc, observer: &DeviceKey) -> Vec<MessageId> {
    let ep = client_endpoint("127.0.0.1:0".parse::<SocketAddr>().expect("addr")).expect("ep");
    let mut client = RelayClient::connect(&ep, relay.addr, relay.fingerprint, observer)
        .await
        .expect("observer connects");
    let items = client.pull_all(CONV, 0).await.expect("pull");
    client.close();
    let mut ids = HashSet::new();
    let mut messages = Vec::new();
    for (i, it) in items.iter().enumerate() {
        assert_eq!(it.seq, i as u64 + 1, "sequences are gap-free");
        assert!(ids.insert(it.event.id()), "event stored twice");
        if let EventKind::Send { message, .. } = it.event.kind() {
            messages.push(*message);
        }
    }
    messages
}

/// Each author's message indexes as `r` shows them, in view order.
async fn by_author(r: &Replica) -> HashMap<DeviceId, Vec<u64>> {
    let mut out: HashMap<DeviceId, Vec<u64>> = HashMap::new();
    let Ok(snap) = r.conversation(CONV).await else {
        return out;
    };
    for tidings::replica::Rendered { view: m, body } in &snap.messages {
        let i = match body {
            tidings::replica::Body::Text(t) => std::str::from_utf8(t)
                .expect("utf8")
                .parse()
                .expect("index"),
            _ => u64::MAX,
        };
        out.entry(m.record.author).or_default().push(i);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_move_to_another_node_when_theirs_is_killed() {
    let server = pg::PgServer::start(true, &[]).expect("postgres");
    let url = server.create_database("failover").expect("database");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = vec![node(&dir.path().join("n0"), &url)];
    for i in 1..3 {
        let d = dir.path().join(format!("n{i}"));
        std::fs::create_dir_all(&d).expect("dir");
        for f in ["relay.key", "tls.cert.der", "tls.key.der"] {
            std::fs::copy(dir.path().join("n0").join(f), d.join(f)).expect("identity");
        }
        nodes.push(node(&d, &url));
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();

    let (alice, bob) = (user(1), user(2));
    let cast = [
        (&alice, 11u8, "phone"),
        (&alice, 12, "laptop"),
        (&bob, 21, "bob"),
    ];
    let acked: Acked = Arc::default();
    let mut devices = Vec::new();
    for (i, (u, s, name)) in cast.into_iter().enumerate() {
        let (key, _) = device(u, s);
        // Device i starts on node i, then tries the others in turn.
        let mut cfg = replica_config(&nodes[i], &key, u);
        cfg.fallback_addrs = (1..3).map(|k| addrs[(i + k) % 3]).collect();
        let r = open(dir.path(), name, key, cfg).await;
        watch_acks(&r, acked.clone());
        devices.push(r);
    }
    start_conversation(&devices[0], &devices[2], bob.id, CONV, &devices, 30).await;
    let (observer, _) = device(&alice, 99);
    {
        let ep = client_endpoint("127.0.0.1:0".parse::<SocketAddr>().expect("addr")).expect("ep");
        let mut c = RelayClient::connect(&ep, addrs[1], nodes[1].fingerprint, &observer)
            .await
            .expect("observer connects");
        c.register(
            &alice.key,
            observer.device(),
            observer.agreement_public().0,
            0,
        )
        .await
        .expect("observer registers");
        c.close();
    }

    let mut senders = Vec::new();
    for d in &devices {
        let d = d.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..BURST {
                d.send(CONV, i.to_string().into_bytes())
                    .await
                    .expect("send");
            }
        }));
    }
    eventually(30, "acks flowing", || async {
        acked.lock().expect("acked").len() as u64 >= BURST
    })
    .await;
    let acked_before_kill = acked.lock().expect("acked").clone();
    tokio::task::block_in_place(|| nodes[0].proc.kill());
    let at_survivor: HashSet<MessageId> = stored(&nodes[1], &observer).await.into_iter().collect();
    let lost: Vec<&MessageId> = acked_before_kill.difference(&at_survivor).collect();
    assert!(
        lost.is_empty(),
        "{} acked messages lost: {lost:?}",
        lost.len()
    );
    for s in senders {
        s.await.expect("sender");
    }
    let total = BURST * devices.len() as u64;
    for d in &devices {
        eventually(60, "outbox drained", || async {
            d.outbox().await.expect("outbox").is_empty()
        })
        .await;
        eventually(60, "every message on every device", || async {
            d.conversation(CONV)
                .await
                .is_ok_and(|s| s.messages.len() as u64 >= total)
        })
        .await;
    }
    let authors: Vec<DeviceId> = devices.iter().map(|d| d.device()).collect();
    for d in &devices {
        // Keys travel between devices through the relay nodes too: wait for every body.
        eventually(60, "every message readable on every device", || async {
            by_author(d)
                .await
                .values()
                .flatten()
                .all(|i| *i != u64::MAX)
        })
        .await;
        let seen = by_author(d).await;
        for author in &authors {
            assert_eq!(
                seen.get(author).cloned().unwrap_or_default(),
                (0..BURST).collect::<Vec<u64>>(),
                "author {author:?} on {:?}",
                d.device()
            );
        }
    }
    for n in &nodes[1..] {
        assert_eq!(
            stored(n, &observer).await.len() as u64,
            total,
            "each message once"
        );
    }
    for d in &devices {
        d.close().await.expect("close");
    }
}
