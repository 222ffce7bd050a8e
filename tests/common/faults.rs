//! A UDP proxy that drops, duplicates, delays and reorders datagrams between one device and
//! the relay. Every decision comes from a seeded generator: the same seed makes the same
//! choices for the same sequence of datagrams (timing on a real network still varies).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Datagrams held back at most; past that, new ones are dropped (and counted as drops).
pub const MAX_HELD: usize = 4096;
/// Largest datagram forwarded.
pub const MAX_DATAGRAM: usize = 65_536;

/// What the proxy does to each datagram, in both directions.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Percent of datagrams dropped.
    pub drop_pct: u32,
    /// Percent of datagrams sent twice (each copy with its own delay).
    pub dup_pct: u32,
    /// Every datagram waits a uniform delay in this range (ms).
    pub delay_ms: (u64, u64),
    /// Percent of datagrams held back a further `reorder_ms`, so later ones overtake them.
    pub reorder_pct: u32,
    /// The extra wait of a reordered datagram (ms).
    pub reorder_ms: u64,
}

impl Faults {
    /// A bad mobile link: 10% loss, 5% duplicates, 0–30 ms jitter, 10% reordered by 60 ms.
    pub fn lossy() -> Faults {
        Faults {
            drop_pct: 10,
            dup_pct: 5,
            delay_ms: (0, 30),
            reorder_pct: 10,
            reorder_ms: 60,
        }
    }
}

/// What the proxy did so far.
#[derive(Debug, Default)]
pub struct FaultStats {
    /// Datagrams received from either side.
    pub received: AtomicU64,
    /// Dropped (by choice or because too many were held).
    pub dropped: AtomicU64,
    /// Extra copies sent.
    pub duplicated: AtomicU64,
    /// Held back to be overtaken.
    pub reordered: AtomicU64,
    /// Copies delivered.
    pub delivered: AtomicU64,
}

impl FaultStats {
    /// (received, dropped, duplicated, reordered, delivered).
    pub fn totals(&self) -> (u64, u64, u64, u64, u64) {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (
            l(&self.received),
            l(&self.dropped),
            l(&self.duplicated),
            l(&self.reordered),
            l(&self.delivered),
        )
    }
}

/// A faulty UDP path from one client to `upstream`. Dropping it stops the proxy.
pub struct FaultProxy {
    /// Where the client sends.
    pub addr: SocketAddr,
    /// What happened so far.
    pub stats: Arc<FaultStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    ToServer,
    ToClient,
}

/// A datagram waiting for its time: (due, arrival number, direction, bytes).
type Held = Reverse<(Instant, u64, Dir, Vec<u8>)>;

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 in front of `upstream`.
    pub async fn start(upstream: SocketAddr, faults: Faults, seed: u64) -> FaultProxy {
        let front = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let back = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        back.connect(upstream).await.expect("connect");
        let addr = front.local_addr().expect("addr");
        let stats = Arc::new(FaultStats::default());
        let task = tokio::spawn(run(front, back, faults, seed, stats.clone()));
        FaultProxy { addr, stats, task }
    }
}

async fn run(front: UdpSocket, back: UdpSocket, faults: Faults, seed: u64, stats: Arc<FaultStats>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut held: BinaryHeap<Held> = BinaryHeap::new();
    let mut n = 0u64;
    let mut client: Option<SocketAddr> = None;
    let mut a = vec![0u8; MAX_DATAGRAM];
    let mut b = vec![0u8; MAX_DATAGRAM];
    loop {
        let next_due = held.peek().map(|Reverse((t, ..))| *t);
        let arrived = tokio::select! {
            r = front.recv_from(&mut a) => match r {
                Ok((len, from)) => {
                    client = Some(from);
                    Some((Dir::ToServer, a[..len].to_vec()))
                }
                Err(_) => return,
            },
            r = back.recv(&mut b) => match r {
                Ok(len) => Some((Dir::ToClient, b[..len].to_vec())),
                Err(_) => return,
            },
            _ = sleep_until(next_due) => None,
        };
        if let Some((dir, bytes)) = arrived {
            bump(&stats.received);
            if rng.random_range(0..100) < faults.drop_pct {
                bump(&stats.dropped);
                continue;
            }
            let copies = if rng.random_range(0..100) < faults.dup_pct {
                bump(&stats.duplicated);
                2
            } else {
                1
            };
            for _ in 0..copies {
                let (lo, hi) = faults.delay_ms;
                let mut delay = rng.random_range(lo..=hi.max(lo));
                if rng.random_range(0..100) < faults.reorder_pct {
                    bump(&stats.reordered);
                    delay += faults.reorder_ms;
                }
                if held.len() >= MAX_HELD {
                    bump(&stats.dropped);
                    continue;
                }
                n += 1;
                let due = Instant::now() + Duration::from_millis(delay);
                held.push(Reverse((due, n, dir, bytes.clone())));
            }
        }
        let now = Instant::now();
        while let Some(Reverse((due, ..))) = held.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, _, dir, bytes))) = held.pop() else {
                break;
            };
            let sent = match (dir, client) {
                (Dir::ToServer, _) => back.send(&bytes).await.is_ok(),
                (Dir::ToClient, Some(c)) => front.send_to(&bytes, c).await.is_ok(),
                (Dir::ToClient, None) => false,
            };
            if sent {
                bump(&stats.delivered);
            }
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
