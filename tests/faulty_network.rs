//! End to end through a network that drops, duplicates, delays and reorders datagrams (seeded;
//! `FAULT_SEED=<n>` picks another schedule): three devices of two users still converge, every
//! message delivered once, in order, every status at least DELIVERED.

mod common;
#[path = "common/faults.rs"]
mod faults;

use common::net::{all_at_least, config, eventually, ids, open, start_conversation};
use common::{device, user};
use faults::{FaultProxy, Faults};
use std::collections::HashSet;
use std::time::Duration;
use tidings::engine::{ConversationId, MessageId, Status};
use tidings::relay::Limits;
use tidings::replica::Replica;

const CONV: ConversationId = ConversationId([0x5e; 16]);
/// Messages each device sends.
const PER_DEVICE: usize = 20;

fn seed() -> u64 {
    std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_duplicating_reordering_network_still_converges() {
    let seed = seed();
    eprintln!("FAULT_SEED={seed}");
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = common::net::relay(&dir.path().join("relay"), Limits::default()).await;
    let (alice, bob) = (user(1), user(2));
    let cast = [
        (&alice, 11u8, "phone"),
        (&alice, 12, "laptop"),
        (&bob, 21, "bob"),
    ];
    let mut proxies = Vec::new();
    let mut devices: Vec<Replica> = Vec::new();
    for (i, (u, dev_seed, name)) in cast.iter().enumerate() {
        let proxy = FaultProxy::start(relay.addr(), Faults::lossy(), seed * 10 + i as u64).await;
        let (key, _) = device(u, *dev_seed);
        let mut cfg = config(&relay, proxy.addr, &key, u);
        // Loss makes the path look dead now and then; reconnects are part of the test, but a
        // connection should survive a few lost keep-alives.
        cfg.idle_timeout = Duration::from_secs(4);
        devices.push(open(dir.path(), name, key, cfg).await);
        proxies.push(proxy);
    }
    start_conversation(&devices[0], &devices[2], bob.id, CONV, &devices, 60).await;

    // Everyone sends at once; each device's messages in its own order.
    let mut sent: Vec<Vec<MessageId>> = vec![Vec::new(); devices.len()];
    for i in 0..PER_DEVICE {
        for (d, s) in devices.iter().zip(&mut sent) {
            s.push(
                d.send(CONV, format!("{i}").into_bytes())
                    .await
                    .expect("send"),
            );
        }
    }
    let all: Vec<MessageId> = sent.iter().flatten().copied().collect();
    for d in &devices {
        eventually(120, "every message on every device", || async {
            ids(d, CONV).await.len() >= all.len()
        })
        .await;
    }
    for d in &devices {
        eventually(120, "every message DELIVERED", || {
            all_at_least(d, CONV, &all, Status::Delivered)
        })
        .await;
        eventually(60, "outbox drained", || async {
            d.outbox().await.expect("outbox").is_empty()
        })
        .await;
    }

    // Same view everywhere: every message once, the server order, each author's messages in
    // the order they were sent.
    let view = ids(&devices[0], CONV).await;
    assert_eq!(view.len(), all.len(), "no message twice");
    assert_eq!(
        view.iter().collect::<HashSet<_>>(),
        all.iter().collect::<HashSet<_>>()
    );
    for d in &devices[1..] {
        assert_eq!(
            ids(d, CONV).await,
            view,
            "every device shows the same order"
        );
    }
    for s in &sent {
        let in_view: Vec<MessageId> = view.iter().copied().filter(|m| s.contains(m)).collect();
        assert_eq!(&in_view, s, "one device's messages in its send order");
    }
    let snap = devices[2].conversation(CONV).await.expect("conv");
    let seqs: Vec<u64> = snap
        .messages
        .iter()
        .map(|m| m.view.seq.expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // The faults happened.
    for p in &proxies {
        let (received, dropped, duplicated, reordered, _) = p.stats.totals();
        eprintln!("proxy: {received} datagrams, {dropped} dropped, {duplicated} duplicated, {reordered} reordered");
        assert!(dropped > 0 && duplicated > 0 && reordered > 0);
    }
    relay.shutdown().await.expect("shutdown");
}
