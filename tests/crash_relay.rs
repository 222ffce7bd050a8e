//! The relay process killed with SIGKILL while three devices send at full speed, restarted on
//! the same data directory, again and again at seeded random moments (`CRASH_SEED=<n>`,
//! `CRASH_KILLS=<n>`): every message acknowledged before a kill is stored after it, sequences
//! stay gap-free, and at the end every outbox drains with every message exactly once, in its
//! author's order, on every device.

mod common;
#[path = "common/procs.rs"]
mod procs;

use common::net::{eventually, open, start_conversation};
use common::{device, user};
use futures::StreamExt;
use procs::{replica_config, spawn_relay, RelayProc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidings::engine::{ConversationId, DeviceId, DeviceKey, EventKind, MessageId, Status};
use tidings::relay::client::{client_endpoint, RelayClient};
use tidings::replica::{Replica, Update};
use tokio::sync::watch;

const CONV: ConversationId = ConversationId([0xcc; 16]);
/// Messages each device sends per round, as fast as it can; the kill falls inside the burst.
const BURST: u64 = 40;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Message ids seen at SENT or beyond on any device: the relay acknowledged them.
type Acked = Arc<Mutex<HashSet<MessageId>>>;

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

/// What the relay holds for the conversation, read through a fresh connection: the message
/// ids of its Send events in sequence order. Checks sequences are 1..=n and no event twice.
async fn stored(relay: &RelayProc, observer: &DeviceKey) -> Vec<MessageId> {
    let ep = client_endpoint("127.0.0.1:0".parse::<SocketAddr>().expect("addr")).expect("ep");
    let mut client = RelayClient::connect(&ep, relay.addr, relay.fingerprint, observer)
        .await
        .expect("observer connects");
    assert!(client.welcome().registered, "the registration survived");
    let items = client.pull_all(CONV, 0).await.expect("pull");
    client.close();
    let mut ids = HashSet::new();
    let mut messages = Vec::new();
    for (i, it) in items.iter().enumerate() {
        // The client verified the event and the relay statement that places it.
        let e = &it.event;
        assert_eq!(it.seq, i as u64 + 1, "sequences are gap-free");
        assert!(ids.insert(e.id()), "event {} stored twice", e.id());
        if let EventKind::Send { message, .. } = e.kind() {
            messages.push(*message);
        }
    }
    messages
}

/// The bodies (message indexes) each author's messages show on `r`, in view order.
async fn by_author(r: &Replica) -> HashMap<DeviceId, Vec<u64>> {
    let mut out: HashMap<DeviceId, Vec<u64>> = HashMap::new();
    // Not known yet (the invitation not taken): nothing shown.
    let snap = match r.conversation(CONV).await {
        Err(tidings::replica::ReplicaError::UnknownConversation(_)) => return out,
        snap => snap.expect("conversation"),
    };
    for tidings::replica::Rendered { view: m, body } in &snap.messages {
        // Decrypted on the device; a body still waiting for its key counts as no index yet.
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

fn kill(relay: &mut RelayProc) {
    tokio::task::block_in_place(|| relay.proc.kill());
}

fn restart(dir: &Path, addr: SocketAddr) -> RelayProc {
    tokio::task::block_in_place(|| spawn_relay(dir, Some(addr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_mid_send_loses_no_acked_message() {
    let seed = env_u64("CRASH_SEED", 1);
    let kills = env_u64("CRASH_KILLS", 20);
    eprintln!("CRASH_SEED={seed} CRASH_KILLS={kills}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let relay_dir = dir.path().join("relay");
    let mut relay = tokio::task::block_in_place(|| spawn_relay(&relay_dir, None));
    let addr = relay.addr;

    let (alice, bob) = (user(1), user(2));
    let cast = [
        (&alice, 11u8, "phone"),
        (&alice, 12, "laptop"),
        (&bob, 21, "bob"),
    ];
    let acked: Acked = Arc::default();
    let mut devices = Vec::new();
    for (u, s, name) in cast {
        let (key, _) = device(u, s);
        let cfg = replica_config(&relay, &key, u);
        let r = open(dir.path(), name, key, cfg).await;
        watch_acks(&r, acked.clone());
        devices.push(r);
    }
    start_conversation(&devices[0], &devices[2], bob.id, CONV, &devices, 30).await;
    // An observer device of Alice's reads what the relay stored after each restart.
    let (observer, _) = device(&alice, 99);
    {
        let ep = client_endpoint("127.0.0.1:0".parse::<SocketAddr>().expect("addr")).expect("ep");
        let mut c = RelayClient::connect(&ep, addr, relay.fingerprint, &observer)
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

    // Each device sends a burst at full speed whenever the round number moves.
    let (round_tx, round_rx) = watch::channel(0u64);
    let mut senders = Vec::new();
    for d in &devices {
        let (d, mut rx) = (d.clone(), round_rx.clone());
        senders.push(tokio::spawn(async move {
            let mut next = 0u64;
            while rx.changed().await.is_ok() {
                for _ in 0..BURST {
                    d.send(CONV, next.to_string().into_bytes())
                        .await
                        .expect("send");
                    next += 1;
                }
            }
            next
        }));
    }

    let mut acked_at_kills = 0;
    for round in 1..=kills {
        let before = acked.lock().expect("acked").len();
        round_tx.send(round).expect("senders alive");
        eventually(30, "acks flowing after the restart", || async {
            acked.lock().expect("acked").len() > before
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..250))).await;
        let acked_before_kill = acked.lock().expect("acked").clone();
        kill(&mut relay);
        relay = restart(&relay_dir, addr);
        let stored: HashSet<MessageId> = stored(&relay, &observer).await.into_iter().collect();
        let lost: Vec<&MessageId> = acked_before_kill.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acked messages missing after the restart: {lost:?}",
            lost.len()
        );
        acked_at_kills = acked_before_kill.len();
    }
    drop(round_tx);
    let mut n_sent = Vec::new();
    for s in senders {
        n_sent.push(s.await.expect("sender"));
    }
    let total: u64 = n_sent.iter().sum();

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
    // Exactly once, in each author's order, everywhere; and at the relay.
    let authors: Vec<DeviceId> = devices.iter().map(|d| d.device()).collect();
    for d in &devices {
        let seen = by_author(d).await;
        for (author, n) in authors.iter().zip(&n_sent) {
            assert_eq!(
                seen.get(author).cloned().unwrap_or_default(),
                (0..*n).collect::<Vec<u64>>(),
                "author {author:?} on {:?}",
                d.device()
            );
        }
    }
    let at_relay = stored(&relay, &observer).await;
    assert_eq!(at_relay.len() as u64, total, "no message stored twice");
    eprintln!(
        "{kills} kills survived; {total} messages sent, {acked_at_kills} acked before the last kill"
    );
    for d in &devices {
        d.close().await.expect("close");
    }
    kill(&mut relay);
}

/// The relay process is killed (SIGKILL) mid-upload and restarted on the same address: the
/// upload resumes from the offset the relay had recorded — which covers every offset it had
/// confirmed — not from zero, and the blob arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_mid_upload_resumes_from_its_recorded_offset() {
    use tidings::relay::blobs::{BlobLimits, BlobStore};
    use tidings::replica::{Body, MediaDirection, MediaSource};
    const MEDIA_CONV: ConversationId = ConversationId([0xcd; 16]);
    const MIB: u64 = 1024 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay_dir = dir.path().join("relay");
    let mut relay = tokio::task::block_in_place(|| spawn_relay(&relay_dir, None));
    let addr = relay.addr;
    let (alice, bob) = (user(1), user(2));
    let (ka, _) = device(&alice, 31);
    let (kb, _) = device(&bob, 32);
    let a = open(
        dir.path(),
        "alice",
        ka.clone(),
        replica_config(&relay, &ka, &alice),
    )
    .await;
    let b = open(
        dir.path(),
        "bob",
        kb.clone(),
        replica_config(&relay, &kb, &bob),
    )
    .await;
    start_conversation(&a, &b, bob.id, MEDIA_CONV, &[a.clone(), b.clone()], 30).await;
    let plain: Vec<u8> = b"RELAY-CRASH-"
        .iter()
        .copied()
        .cycle()
        .take(40 * MIB as usize)
        .collect();
    let mut progress = a.updates();
    let id = a
        .send_media(
            MEDIA_CONV,
            MediaSource::Bytes(plain.clone()),
            Vec::new(),
            "video/mp4",
            Vec::new(),
        )
        .await
        .expect("send");
    let mut confirmed = 0;
    let mut blob = None;
    while confirmed < 3 * MIB {
        let u = tokio::time::timeout(Duration::from_secs(60), progress.next())
            .await
            .expect("progress")
            .expect("stream");
        if let Update::MediaProgress {
            blob: bl,
            direction: MediaDirection::Upload,
            done,
            ..
        } = u
        {
            confirmed = confirmed.max(done);
            blob = Some(bl);
        }
    }
    tokio::task::block_in_place(|| relay.proc.kill());
    let blob = blob.expect("blob");
    let recorded = BlobStore::open(relay_dir.join("blobs"), BlobLimits::default())
        .expect("blob store")
        .state(blob)
        .expect("held");
    assert!(recorded.verified >= confirmed, "{recorded:?} < {confirmed}");
    assert!(!recorded.complete(), "killed too late to test a resume");
    relay = tokio::task::block_in_place(|| spawn_relay(&relay_dir, Some(addr)));
    // Offsets confirmed after the restart (the old connection's last answers came before
    // the kill: none is past what the relay recorded).
    let mut after = Vec::new();
    loop {
        let u = tokio::time::timeout(Duration::from_secs(60), progress.next())
            .await
            .expect("progress")
            .expect("stream");
        if let Update::MediaProgress {
            direction: MediaDirection::Upload,
            done,
            total,
            ..
        } = u
        {
            if done > recorded.verified {
                after.push(done);
            }
            if done == total {
                break;
            }
        }
    }
    let first_after = after[0];
    assert!(
        first_after <= recorded.verified + MIB + 16,
        "resumed from before the recorded offset: {first_after} vs {recorded:?}"
    );
    eprintln!(
        "relay killed: {confirmed} B confirmed, {} B recorded, resumed there; re-sent at most \
         the pieces in flight ({} B)",
        recorded.verified,
        tidings::replica::UPLOAD_WINDOW as u64 * MIB
    );
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    let media = loop {
        let page = b.page(MEDIA_CONV, None, 10).await.unwrap_or_default();
        if let Some(m) = page.into_iter().find_map(|m| match m.body {
            Body::Media(body) if m.view.id == id => Some(body.media[0].clone()),
            _ => None,
        }) {
            break m;
        }
        assert!(std::time::Instant::now() < give_up, "no media message");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let dest = dir.path().join("bob-got");
    let mut tries = 0;
    while let Err(e) = b.download_media(MEDIA_CONV, &media, &dest).await {
        tries += 1;
        assert!(tries < 100, "download keeps failing: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        std::fs::read(&dest).expect("read") == plain,
        "the blob differs"
    );
    tokio::task::block_in_place(|| relay.proc.kill());
}
