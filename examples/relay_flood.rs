//! Flood measurement over real QUIC on loopback (issue 12): an honest device keeps sending
//! while (a) strangers hold thousands of unauthenticated connections with keep-alives and (b) a
//! member pipelines thousands of `Devices` requests (its client buffers at most 4,096 answers,
//! then reads no more).
//!
//! ```text
//! cargo run --release --example relay_flood -- [--strangers 5000] [--devices-requests 10000]
//!     [--sends 300] [--flood-secs 30] [--handshake-ms 10000]
//! ```
//!
//! The relay runs in this process; strangers connect from 127.0.1.1, 127.0.1.2, ... (250 per
//! address, under the per-prefix limit, so the handshake deadline is what stops them), the
//! honest device from 127.0.0.2, the member from 127.0.0.3. Bounded in count and time,
//! loopback only. Prints the honest device's ack latency p50/p99 unloaded and under flood, the
//! ratio, what the relay refused or closed, and this process's VmRSS/VmHWM (relay and all the
//! clients) against the documented bound.

use anyhow::{bail, Result};
use clap::Parser;
use ed25519_dalek::SigningKey;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidings::engine::wire::{self, ClientFrame};
use tidings::engine::{ConversationId, DeviceKey, Event, EventKind, MessageId, UserId};
use tidings::relay::client::{client_config, client_endpoint, RelayClient, SERVER_NAME};
use tidings::relay::{Limits, RelayConfig};

/// Resident memory this process may reach (relay, 5,000 stranger connections on both ends,
/// the member's metered queue): documented in docs/BENCHMARKS.md.
const RSS_BOUND_MIB: u64 = 1024;
/// Strangers per source address (the per-prefix limit is 256).
const PER_ADDRESS: usize = 250;

#[derive(Debug, Parser)]
struct Args {
    /// Unauthenticated connections held at once.
    #[arg(long, default_value_t = 5000)]
    strangers: usize,
    /// `Devices` requests the member pipelines.
    #[arg(long, default_value_t = 10_000)]
    devices_requests: u64,
    /// Sequential one-event submits the honest device times in each phase.
    #[arg(long, default_value_t = 300)]
    sends: usize,
    /// Longest flood phase, seconds.
    #[arg(long, default_value_t = 30)]
    flood_secs: u64,
    /// The relay's handshake deadline, ms.
    #[arg(long, default_value_t = 10_000)]
    handshake_ms: u64,
}

fn user_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Honest {
    client: RelayClient,
    key: DeviceKey,
    counter: u64,
    last: Option<tidings::engine::EventId>,
}

impl Honest {
    fn event(&mut self, kind: EventKind) -> Result<Event> {
        self.counter += 1;
        let h = self.key.header(
            ConversationId([1; 16]),
            self.counter,
            self.last,
            self.counter,
            1,
        );
        let kind = h.bind(kind);
        let ev = Event::sign(self.key.signing_key(), h, kind)?;
        self.last = Some(ev.id());
        Ok(ev)
    }

    /// Times `n` sequential one-event submits; all must be accepted.
    async fn timed_sends(&mut self, n: usize) -> Result<Vec<Duration>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let ev = self.event(EventKind::Send {
                message: MessageId::default(),
                body: b"hello".to_vec(),
                media: vec![],
            })?;
            let t = Instant::now();
            let outcomes = self.client.submit(&[ev]).await?;
            out.push(t.elapsed());
            if !matches!(outcomes[..], [wire::SubmitOutcome::Accepted { .. }]) {
                bail!("honest send refused: {outcomes:?}");
            }
        }
        out.sort();
        Ok(out)
    }
}

#[derive(Default)]
struct StrangerCounts {
    connected: AtomicU64,
    closed_by_relay: AtomicU64,
    failed: AtomicU64,
}

/// One stranger: connect, say Hello, hold the connection with keep-alives until the relay
/// closes it, again, until `stop`.
async fn stranger(
    ep: quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    i: usize,
    stop: Arc<AtomicBool>,
    counts: Arc<StrangerCounts>,
) {
    let key = DeviceKey::from_seed([7; 32], UserId([i as u8; 32]));
    while !stop.load(Ordering::Relaxed) {
        let conn = match ep.connect_with(cfg.clone(), addr, SERVER_NAME) {
            Ok(c) => match c.await {
                Ok(c) => c,
                Err(_) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            Err(_) => return,
        };
        counts.connected.fetch_add(1, Ordering::Relaxed);
        if let Ok((mut send, _recv)) = conn.open_bi().await {
            let hello = ClientFrame::Hello {
                protocol_version: wire::PROTOCOL_VERSION,
                device: key.device(),
                user: key.user(),
            };
            if let Ok(b) = wire::frame_bytes(&hello) {
                let _ = send.write_all(&b).await;
            }
            tokio::select! {
                _ = conn.closed() => { counts.closed_by_relay.fetch_add(1, Ordering::Relaxed); }
                _ = async { while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                } } => { conn.close(0u32.into(), b""); return; }
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let limits = Limits::default().with_handshake_timeout_ms(args.handshake_ms);
    let relay = tidings::relay::start(RelayConfig::dev(dir.path()).with_limits(limits)).await?;
    let addr = relay.addr();
    let (rss0, _) = rss();

    // The honest device (user 1) and the member (user 2) share a conversation.
    let ep = client_endpoint("127.0.0.2:0".parse()?)?;
    let key = DeviceKey::from_seed([11; 32], UserId(user_key(1).verifying_key().to_bytes()));
    let mut client = RelayClient::connect(&ep, addr, relay.fingerprint(), &key).await?;
    client
        .register(&user_key(1), key.device(), key.agreement_public().0, 1)
        .await?;
    client.sync().await?;
    let mut honest = Honest {
        client,
        key,
        counter: 0,
        last: None,
    };
    let member_user = UserId(user_key(2).verifying_key().to_bytes());
    let create = honest.event(EventKind::Create {
        members: vec![honest.key.user(), member_user],
    })?;
    honest.client.submit(&[create]).await?;
    let unloaded = honest.timed_sends(args.sends).await?;

    // The member: registered, pipelines Devices requests, never takes an answer.
    let member_ep = client_endpoint("127.0.0.3:0".parse()?)?;
    let member_key = DeviceKey::from_seed([21; 32], member_user);
    let mut member =
        RelayClient::connect(&member_ep, addr, relay.fingerprint(), &member_key).await?;
    member
        .register(
            &user_key(2),
            member_key.device(),
            member_key.agreement_public().0,
            1,
        )
        .await?;
    let reads_before = relay.metrics().requests_read();
    let mut bytes = Vec::new();
    for i in 0..args.devices_requests {
        wire::encode_frame(
            &ClientFrame::Devices {
                request_id: 1_000_000 + i,
                users: vec![honest.key.user(), member_user],
                after: None,
            },
            &mut bytes,
        )?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let member_task = tokio::spawn(async move {
        // Blocks once the relay stops reading (QUIC flow control); the answers are never read.
        let _ = tokio::time::timeout(Duration::from_secs(120), member.send_raw(&bytes)).await;
        member
    });

    // The strangers.
    let counts = Arc::new(StrangerCounts::default());
    let mut cfg = client_config(relay.fingerprint())?;
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(60))?));
    cfg.transport_config(Arc::new(t));
    let mut tasks = Vec::new();
    for a in 0..args.strangers.div_ceil(PER_ADDRESS) {
        let ep = client_endpoint(format!("127.0.1.{}:0", a + 1).parse()?)?;
        for j in 0..PER_ADDRESS.min(args.strangers - a * PER_ADDRESS) {
            tasks.push(tokio::spawn(stranger(
                ep.clone(),
                cfg.clone(),
                addr,
                a * PER_ADDRESS + j,
                stop.clone(),
                counts.clone(),
            )));
        }
    }
    // Let the strangers pile up, then time the honest device under the flood.
    let flood_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded = tokio::time::timeout(
        Duration::from_secs(args.flood_secs),
        honest.timed_sends(args.sends),
    )
    .await??;
    let (rss_flood, _) = rss();
    // Hold the flood past one handshake deadline so that closes are counted.
    let past_deadline = Duration::from_millis(args.handshake_ms + 2_000);
    if let Some(rest) = past_deadline.checked_sub(flood_start.elapsed()) {
        tokio::time::sleep(rest.min(Duration::from_secs(args.flood_secs))).await;
    }
    let devices_read = relay.metrics().requests_read() - reads_before;
    let in_flight = relay.metrics().requests_in_flight();
    let queued = relay.metrics().outgoing_bytes();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    member_task.abort();
    let (rss1, hwm) = rss();

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (u50, u99) = (pct(&unloaded, 0.5), pct(&unloaded, 0.99));
    let (l50, l99) = (pct(&loaded, 0.5), pct(&loaded, 0.99));
    println!(
        "honest acks unloaded: p50 {:.2} ms, p99 {:.2} ms ({} sends)",
        ms(u50),
        ms(u99),
        unloaded.len()
    );
    println!(
        "honest acks flooded:  p50 {:.2} ms, p99 {:.2} ms ({} sends, all acked)",
        ms(l50),
        ms(l99),
        loaded.len()
    );
    println!(
        "p99 ratio flooded/unloaded: {:.2} (target < 2)",
        ms(l99) / ms(u99).max(1e-9)
    );
    println!(
        "strangers: {} connections established, {} closed by the relay, {} failed to connect; relay: {} closed at the handshake deadline, {} refused by a connection limit",
        counts.connected.load(Ordering::Relaxed),
        counts.closed_by_relay.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        relay.metrics().handshake_timeouts(),
        relay.metrics().connections_refused(),
    );
    println!(
        "member: {} Devices requests pipelined, {} read by the relay, {} in flight, {} bytes queued for all connections at the end of the flood",
        args.devices_requests, devices_read, in_flight, queued
    );
    println!(
        "process RSS (relay + all clients): start {} MiB, flooded {} MiB, end {} MiB, peak (VmHWM) {} MiB; bound {} MiB: {}",
        rss0, rss_flood, rss1, hwm, RSS_BOUND_MIB,
        if hwm <= RSS_BOUND_MIB { "under" } else { "OVER" }
    );
    relay.shutdown().await?;
    Ok(())
}
