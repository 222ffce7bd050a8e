//! Flood measurement over real QUIC on loopback (issue 12): an honest device keeps sending
//! while (a) strangers hold thousands of unauthenticated connections with keep-alives and (b) a
//! member pipelines thousands of `Devices` requests (its client buffers at most 4,096 answers,
//! then reads no more).
//!
//! ```text
//! cargo run --release --example relay_flood -- [--strangers 5000] [--devices-requests 10000]
//!     [--sends 300] [--flood-secs 30] [--handshake-ms 10000] [--strangers-in-process]
//!     [--attacker-nice 0]
//! ```
//!
//! The relay runs in this process; the strangers run in a child process (this example again,
//! in its hidden `--attack` mode) so that the figures measure the relay and not the attacker's
//! own TLS and tokio work in the relay's runtime (`--strangers-in-process` puts them back in
//! this process, as the first measurement did; `--attacker-nice N` runs the child under
//! `nice -n N`, a stand-in for an attacker on another machine on this 2-core box). Strangers
//! connect from 127.0.1.1, 127.0.1.2, ... (250 per address, under the per-prefix limit, so the
//! pending-handshake cap and the handshake deadline are what stop them; a refused stranger
//! tries again after 200 ms), the honest device from 127.0.0.2, the member from 127.0.0.3.
//! Bounded in count and time, loopback only. Prints the honest device's ack latency p50/p99
//! unloaded and under flood, the ratio, what the relay refused or closed, and this process's
//! VmRSS/VmHWM (the relay and the two devices; the strangers too with
//! `--strangers-in-process`) against the documented bound.

use anyhow::{anyhow, bail, Result};
use clap::Parser;
use ed25519_dalek::SigningKey;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidings::engine::wire::{self, ClientFrame};
use tidings::engine::{ConversationId, DeviceKey, Event, EventKind, MessageId, UserId};
use tidings::relay::client::{client_config, client_endpoint, RelayClient, SERVER_NAME};
use tidings::relay::Fingerprint;
use tidings::relay::{Limits, RelayConfig};

/// Resident memory this process may reach (the relay with 5,000 stranger connections, their
/// client ends too with `--strangers-in-process`, the member's metered queue): documented in
/// docs/BENCHMARKS.md.
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
    /// Run the strangers in this process (as the first measurement did).
    #[arg(long)]
    strangers_in_process: bool,
    /// Niceness of the strangers' child process (0: none).
    #[arg(long, default_value_t = 0)]
    attacker_nice: i32,
    /// Child mode: run only the strangers against this relay address.
    #[arg(long, hide = true)]
    attack: Option<SocketAddr>,
    /// Child mode: the relay's certificate fingerprint.
    #[arg(long, hide = true)]
    fingerprint: Option<String>,
    /// Child mode: seconds to flood before reporting and exiting.
    #[arg(long, hide = true, default_value_t = 30)]
    attack_secs: u64,
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

/// Starts `n` strangers against `addr` in this process; they stop once `stop` is set.
fn start_strangers(
    n: usize,
    addr: SocketAddr,
    fingerprint: Fingerprint,
    stop: &Arc<AtomicBool>,
    counts: &Arc<StrangerCounts>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut cfg = client_config(fingerprint)?;
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(60))?));
    cfg.transport_config(Arc::new(t));
    let mut tasks = Vec::new();
    for a in 0..n.div_ceil(PER_ADDRESS) {
        let ep = client_endpoint(format!("127.0.1.{}:0", a + 1).parse()?)?;
        for j in 0..PER_ADDRESS.min(n - a * PER_ADDRESS) {
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
    Ok(tasks)
}

/// Child mode: floods `addr` until the parent closes our stdin (or `--attack-secs` pass),
/// then prints the counts on one line: connected, closed by the relay, failed.
async fn attack(args: &Args, addr: SocketAddr) -> Result<()> {
    let fingerprint: Fingerprint = args
        .fingerprint
        .as_deref()
        .ok_or_else(|| anyhow!("--attack needs --fingerprint"))?
        .parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(StrangerCounts::default());
    let tasks = start_strangers(args.strangers, addr, fingerprint, &stop, &counts)?;
    let parent_done = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)
    });
    let _ = tokio::time::timeout(Duration::from_secs(args.attack_secs), parent_done).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    println!(
        "{} {} {}",
        counts.connected.load(Ordering::Relaxed),
        counts.closed_by_relay.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Where the strangers run.
enum Attacker {
    InProcess {
        stop: Arc<AtomicBool>,
        counts: Arc<StrangerCounts>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    },
    Child(std::process::Child),
}

impl Attacker {
    fn start(args: &Args, addr: SocketAddr, fingerprint: Fingerprint) -> Result<Attacker> {
        if args.strangers_in_process {
            let stop = Arc::new(AtomicBool::new(false));
            let counts = Arc::new(StrangerCounts::default());
            let tasks = start_strangers(args.strangers, addr, fingerprint, &stop, &counts)?;
            return Ok(Attacker::InProcess {
                stop,
                counts,
                tasks,
            });
        }
        let exe = std::env::current_exe()?;
        let mut cmd = if args.attacker_nice != 0 {
            let mut c = std::process::Command::new("nice");
            c.arg("-n").arg(args.attacker_nice.to_string()).arg(exe);
            c
        } else {
            std::process::Command::new(exe)
        };
        let secs = args.flood_secs * 2 + args.handshake_ms / 1000 + 10;
        cmd.args(["--attack", &addr.to_string()])
            .args(["--fingerprint", &fingerprint.to_string()])
            .args(["--strangers", &args.strangers.to_string()])
            .args(["--attack-secs", &secs.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        Ok(Attacker::Child(cmd.spawn()?))
    }

    /// Stops the strangers; their counts: connected, closed by the relay, failed.
    async fn finish(self) -> Result<(u64, u64, u64)> {
        match self {
            Attacker::InProcess {
                stop,
                counts,
                tasks,
            } => {
                stop.store(true, Ordering::Relaxed);
                for t in tasks {
                    let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
                }
                Ok((
                    counts.connected.load(Ordering::Relaxed),
                    counts.closed_by_relay.load(Ordering::Relaxed),
                    counts.failed.load(Ordering::Relaxed),
                ))
            }
            Attacker::Child(mut child) => {
                // Closing its stdin tells the child to stop.
                drop(child.stdin.take());
                let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
                let line = String::from_utf8_lossy(&out.stdout);
                let n: Vec<u64> = line
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
                match n[..] {
                    [a, b, c] => Ok((a, b, c)),
                    _ => bail!("the strangers' process reported {line:?}"),
                }
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(addr) = args.attack {
        return attack(&args, addr).await;
    }
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
    let member_task = tokio::spawn(async move {
        // Blocks once the relay stops reading (QUIC flow control); the answers are never read.
        let _ = tokio::time::timeout(Duration::from_secs(120), member.send_raw(&bytes)).await;
        member
    });

    // The strangers.
    let attacker = Attacker::start(&args, addr, relay.fingerprint())?;
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
    let (connected, closed, failed) = attacker.finish().await?;
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
        "strangers ({}): {connected} connections established, {closed} closed by the relay, {failed} failed to connect; relay: {} closed at the handshake deadline, {} refused by a connection limit, {} of them on the first packet, {} address validations (Retry)",
        if args.strangers_in_process { "in this process" } else { "child process" },
        relay.metrics().handshake_timeouts(),
        relay.metrics().connections_refused(),
        relay.metrics().refused_before_handshake(),
        relay.metrics().address_validations(),
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
