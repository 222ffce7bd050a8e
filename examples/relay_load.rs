//! Load generator for the relay: N devices in M conversations on loopback, every event
//! signature-verified and fsynced (group commit) before its ack.
//!
//! ```text
//! cargo run --release --example relay_load -- [--devices 100] [--conversations 50]
//!     [--events 3000] [--batch 32] [--window 4] [--rate 0] [--payload 100] [--no-mqtt]
//!     [--storage redb,postgres,postgres:2,postgres:3]
//! ```
//!
//! `--storage` lists the relay stores to run, one after the other in the same run: `redb`
//! (default) and/or `postgres`, and `postgres:N` for N relay nodes (N = 1..3, one identity)
//! over one database, each conversation's devices on node `conversation mod N` (its
//! sequencer pinned to one node, so nodes never race on a conversation). For `postgres` the example starts a throwaway PostgreSQL
//! server (fsync and synchronous_commit on, as shipped) with the tests' harness
//! (`relay/tests/support/pg.rs`: initdb + pg_ctl as the `postgres` user in a temporary
//! directory); it needs an installed server (`apt-get install -y postgresql`) and says so if
//! none is found.
//!
//! Prints accepted events/s and p50/p99 latency from submit to ServerAck and from submit to
//! arrival at another member device, and fairness: ack p99/p50 and the spread of the devices'
//! own median ack latencies. If `mosquitto` is on PATH (Debian package `mosquitto`, which
//! installs it in /usr/sbin: run with `PATH=$PATH:/usr/sbin`),
//! it also runs the same load against it (QoS 1, persistent sessions, same payload size, same
//! senders and receivers) and prints the ratio. It installs nothing itself.
//!
//! Devices are paired into conversations by index (device `i` is in conversation
//! `i % conversations`); each device sends `--events` messages to its conversation and
//! receives every other member's. `--rate` is the total target events/s (0 = as fast as acks
//! allow, with `--window` submits of `--batch` events in flight per device). Events are
//! signed before the clock starts: the figure is the relay's, not the signer's.

use anyhow::{bail, Context, Result};
use clap::Parser;
use ed25519_dalek::SigningKey;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidings::engine::wire::{ServerFrame, SubmitOutcome};
use tidings::engine::{ConversationId, DeviceKey, Event, EventId, EventKind, MessageId, UserId};
use tidings::relay::client::{client_endpoint, RelayClient};
use tidings::relay::{Limits, RelayConfig};

#[path = "../relay/tests/support/pg.rs"]
mod pg;

#[derive(Debug, Parser, Clone)]
struct Args {
    /// Connected devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Conversations (devices are spread over them; each needs at least 2 members).
    #[arg(long, default_value_t = 50)]
    conversations: usize,
    /// Events each device sends.
    #[arg(long, default_value_t = 3000)]
    events: usize,
    /// Events per Submit (and per MQTT burst).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Submits in flight per device.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Total target events per second; 0 sends as fast as acks allow.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Message body bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Relay stores to run, comma-separated: redb, postgres, or postgres:N for N relay nodes
    /// over one database (each conversation's devices on one node, node = conversation mod N).
    #[arg(long, value_delimiter = ',', default_value = "redb")]
    storage: Vec<String>,
    /// Skip the mosquitto comparison.
    #[arg(long)]
    no_mqtt: bool,
    /// Give up after this many seconds per run.
    #[arg(long, default_value_t = 180)]
    timeout_secs: u64,
    /// Diagnostic: commit without fsync (the figures are then not durable ones).
    #[arg(long)]
    no_fsync: bool,
    /// Client UDP sockets the devices share.
    #[arg(long, default_value_t = 4)]
    endpoints: usize,
    /// Worker threads of the relay's own runtime, apart from the devices' (mosquitto runs in
    /// its own process too); 0 runs the relay on the devices' runtime (before 2026-12-05).
    #[arg(long, default_value_t = 2)]
    relay_threads: usize,
}

/// One run's figures.
struct Row {
    system: &'static str,
    events: usize,
    secs: f64,
    ack_us: Vec<u64>,
    arrival_us: Vec<u64>,
    /// Each device's median ack latency (µs): a starved device shows here even when the
    /// overall percentiles hide it.
    device_ack_p50_us: Vec<u64>,
}

impl Row {
    /// Adds one device's figures.
    fn add(&mut self, r: DeviceResult) {
        let mut own = r.ack_us.clone();
        own.sort_unstable();
        if let Some(m) = own.get(own.len() / 2) {
            self.device_ack_p50_us.push(*m);
        }
        self.events += r.acked;
        self.ack_us.extend(r.ack_us);
        self.arrival_us.extend(r.arrival_us);
    }

    fn rate(&self) -> f64 {
        self.events as f64 / self.secs.max(1e-9)
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn print_rows(rows: &mut [Row]) {
    println!(
        "{:<14} {:>9} {:>7} {:>10} {:>9} {:>9} {:>11} {:>11}",
        "system", "events", "secs", "events/s", "ack p50", "ack p99", "arrive p50", "arrive p99"
    );
    for r in rows.iter_mut() {
        r.ack_us.sort_unstable();
        r.arrival_us.sort_unstable();
        println!(
            "{:<14} {:>9} {:>7.2} {:>10.0} {:>7.2}ms {:>7.2}ms {:>9.2}ms {:>9.2}ms",
            r.system,
            r.events,
            r.secs,
            r.rate(),
            pct(&r.ack_us, 0.5),
            pct(&r.ack_us, 0.99),
            pct(&r.arrival_us, 0.5),
            pct(&r.arrival_us, 0.99),
        );
    }
    for r in rows.iter_mut() {
        r.device_ack_p50_us.sort_unstable();
        println!(
            "{:<14} fairness: ack p99/p50 {:.1}; device ack medians min {:.2} ms, p50 {:.2} ms, max {:.2} ms",
            r.system,
            pct(&r.ack_us, 0.99) / pct(&r.ack_us, 0.5),
            pct(&r.device_ack_p50_us, 0.0),
            pct(&r.device_ack_p50_us, 0.5),
            pct(&r.device_ack_p50_us, 1.0),
        );
    }
}

fn user_key(i: usize) -> SigningKey {
    let mut seed = [0x55u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    SigningKey::from_bytes(&seed)
}

fn device_seed(i: usize) -> [u8; 32] {
    let mut seed = [0xaau8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    seed
}

fn conv_of(args: &Args, i: usize) -> usize {
    i % args.conversations
}

fn members(args: &Args, c: usize) -> Vec<usize> {
    (0..args.devices)
        .filter(|&i| conv_of(args, i) == c)
        .collect()
}

fn conv_id(c: usize) -> ConversationId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(c as u64).to_be_bytes());
    ConversationId(id)
}

/// The body: the event's global index, then padding.
fn body(idx: usize, len: usize) -> Vec<u8> {
    let mut b = vec![0x42u8; len.max(8)];
    b[..8].copy_from_slice(&(idx as u64).to_be_bytes());
    b
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.conversations == 0 || args.devices < 2 * args.conversations {
        bail!("need at least two devices per conversation");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "relay_load: {} devices, {} conversations, {} events/device, batch {}, window {}, rate {}, payload {} B",
        args.devices,
        args.conversations,
        args.events,
        args.batch,
        args.window,
        if args.rate > 0.0 { format!("{}/s", args.rate) } else { "flood".into() },
        args.payload
    );
    let relay_rt = (args.relay_threads > 0)
        .then(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.relay_threads)
                .thread_name("relay-rt")
                .enable_all()
                .build()
        })
        .transpose()?;
    let relay_on = relay_rt.as_ref().map(|r| r.handle().clone());
    let mut rows = Vec::new();
    for storage in &args.storage {
        let (system, server, nodes) = match storage.as_str() {
            "redb" => ("relay/redb", None, 1),
            "postgres" | "postgres:1" => {
                ("relay/postgres", Some(pg::PgServer::start(false, &[])?), 1)
            }
            "postgres:2" => (
                "relay/postgres x2",
                Some(pg::PgServer::start(false, &[])?),
                2,
            ),
            "postgres:3" => (
                "relay/postgres x3",
                Some(pg::PgServer::start(false, &[])?),
                3,
            ),
            other => bail!("--storage {other}: redb, postgres or postgres:N (N = 1..3)"),
        };
        let url = match &server {
            Some(s) => Some(s.create_database("relay_load")?),
            None => None,
        };
        rows.push(rt.block_on(run_relay(
            &args,
            relay_on.clone(),
            system,
            url.clone(),
            nodes,
        ))?);
        if let Some(url) = url {
            print_pg_sizes(&url)?;
        }
    }
    let envelope_len = rows_envelope_len(&args)?;
    if args.no_mqtt {
        println!("mosquitto: skipped (--no-mqtt)");
    } else if let Some(bin) = find_on_path("mosquitto") {
        rows.push(rt.block_on(run_mqtt(&args, &bin, envelope_len))?);
    } else {
        println!("mosquitto: not on PATH, comparison skipped (Debian package `mosquitto`)");
    }
    print_rows(&mut rows);
    if let Some(mqtt) = rows.iter().find(|r| r.system == "mosquitto") {
        for r in rows.iter().filter(|r| r.system != "mosquitto") {
            println!(
                "ratio {}/mosquitto (events/s): {:.2}",
                r.system,
                r.rate() / mqtt.rate()
            );
        }
    }
    Ok(())
}

/// What the PostgreSQL store holds after the run: bytes per event on disk (heap, indexes and
/// TOAST of `events`; `statements` apart).
fn print_pg_sizes(url: &str) -> Result<()> {
    let url = url.to_string();
    let (n, events, statements, envelope): (i64, i64, i64, f64) =
        std::thread::spawn(move || -> Result<_> {
            let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
            c.batch_execute("CHECKPOINT")?;
            let row = c.query_one(
                "SELECT (SELECT count(*) FROM events), pg_total_relation_size('events'), \
             pg_total_relation_size('statements'), \
             (SELECT avg(octet_length(event))::float8 FROM events)",
                &[],
            )?;
            Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("size query panicked"))??;
    let per = |b: i64| b as f64 / (n.max(1) as f64);
    println!(
        "postgres: {n} events, envelope {envelope:.0} B; events table with indexes {:.0} B/event, \
         statements {:.0} B/event",
        per(events),
        per(statements)
    );
    Ok(())
}

fn rows_envelope_len(args: &Args) -> Result<usize> {
    let key = DeviceKey::from_seed(device_seed(0), UserId([0; 32]));
    let h = key.header(conv_id(0), 2, Some(EventId([0; 32])), 2, 0);
    let e = Event::sign(
        key.signing_key(),
        h,
        EventKind::Send {
            message: MessageId::default(),
            body: body(0, args.payload),
            media: vec![],
        },
    )?;
    Ok(e.bytes().len())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Signs every device's events (before the clock starts), on both cores. Each device's events
/// form its chain in its conversation: after `heads[i]` (a creator's Create) or from counter 1.
fn sign_all(args: &Args, keys: &[DeviceKey], heads: &[Option<EventId>]) -> Vec<Vec<Event>> {
    let n = keys.len();
    let mut out: Vec<Vec<Event>> = vec![Vec::new(); n];
    std::thread::scope(|s| {
        for (t, chunk) in out.chunks_mut(n.div_ceil(2)).enumerate() {
            let base = t * n.div_ceil(2);
            s.spawn(move || {
                for (j, evs) in chunk.iter_mut().enumerate() {
                    let i = base + j;
                    let key = &keys[i];
                    let mut prev = heads.get(i).copied().flatten();
                    let first = if prev.is_some() { 2 } else { 1 };
                    for k in 0..args.events {
                        let idx = i * args.events + k;
                        let counter = k as u64 + first;
                        let h = key.header(conv_id(conv_of(args, i)), counter, prev, counter, 0);
                        let kind = EventKind::Send {
                            message: h.message_id(),
                            body: body(idx, args.payload),
                            media: vec![],
                        };
                        if let Ok(e) = Event::sign(key.signing_key(), h, kind) {
                            prev = Some(e.id());
                            evs.push(e);
                        }
                    }
                }
            });
        }
    });
    out
}

async fn run_relay(
    args: &Args,
    relay_on: Option<tokio::runtime::Handle>,
    system: &'static str,
    postgres: Option<String>,
    n_nodes: usize,
) -> Result<Row> {
    let dir = tempfile::tempdir()?;
    let limits = Limits::default()
        .with_connections_per_prefix(args.devices + 16)
        .with_rate(10_000_000, 10_000_000);
    let mut config = RelayConfig::dev(dir.path())
        .with_limits(limits)
        .with_durable(!args.no_fsync);
    if let Some(url) = postgres {
        config = config.with_postgres(url);
    }
    let relay = match &relay_on {
        Some(h) => h.spawn(tidings::relay::start(config.clone())).await??,
        None => tidings::relay::start(config.clone()).await?,
    };
    // Further nodes over the same database share the first one's identity.
    let mut nodes = vec![relay];
    let mut node_dirs = Vec::new();
    for _ in 1..n_nodes {
        let d = tempfile::tempdir()?;
        for f in ["relay.key", "tls.cert.der", "tls.key.der"] {
            std::fs::copy(dir.path().join(f), d.path().join(f))?;
        }
        let mut c = config.clone();
        c.data_dir = d.path().to_path_buf();
        node_dirs.push(d);
        nodes.push(match &relay_on {
            Some(h) => h.spawn(tidings::relay::start(c)).await??,
            None => tidings::relay::start(c).await?,
        });
    }
    let keys: Vec<DeviceKey> = (0..args.devices)
        .map(|i| {
            let user = UserId(user_key(i).verifying_key().to_bytes());
            DeviceKey::from_seed(device_seed(i), user)
        })
        .collect();
    let endpoints: Vec<quinn::Endpoint> = (0..args.endpoints.max(1))
        .map(|_| client_endpoint("127.0.0.1:0".parse::<SocketAddr>().expect("addr")))
        .collect::<Result<_, _>>()?;
    let mut clients = Vec::with_capacity(args.devices);
    for (i, key) in keys.iter().enumerate() {
        let ep = &endpoints[i % endpoints.len()];
        let relay = &nodes[conv_of(args, i) % nodes.len()];
        let mut c = RelayClient::connect(ep, relay.addr(), relay.fingerprint(), key).await?;
        c.register(&user_key(i), key.device(), key.agreement_public().0, 0)
            .await?;
        clients.push(c);
    }
    let mut heads = vec![None; args.devices];
    for c in 0..args.conversations {
        let m = members(args, c);
        let creator = m[0];
        let users = m.iter().map(|&i| keys[i].user()).collect();
        let h = keys[creator].header(conv_id(c), 1, None, 1, 0);
        let create = Event::sign(
            keys[creator].signing_key(),
            h,
            EventKind::Create { members: users },
        )?;
        if conv_of(args, creator) == c {
            heads[creator] = Some(create.id());
        }
        let out = clients[creator].submit(&[create]).await?;
        if !matches!(out[..], [SubmitOutcome::Accepted { .. }]) {
            bail!("create refused: {out:?}");
        }
        // The other members take the invitation, or nothing would be pushed to them.
        for &i in &m[1..] {
            if keys[i].user() != keys[creator].user() {
                clients[i].accept(conv_id(c)).await?;
            }
        }
    }
    for c in clients.iter_mut() {
        c.sync().await?;
    }
    let events = sign_all(args, &keys, &heads);
    let total: usize = events.iter().map(|e| e.len()).sum();
    let submit_ns: Arc<Vec<AtomicU64>> = Arc::new(
        (0..args.devices * args.events)
            .map(|_| AtomicU64::new(0))
            .collect(),
    );
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.timeout_secs);
    let mut tasks = Vec::new();
    for (i, (client, evs)) in clients.into_iter().zip(events).enumerate() {
        let expected_pushes = (members(args, conv_of(args, i)).len() - 1) * args.events;
        let args = args.clone();
        let submit_ns = submit_ns.clone();
        tasks.push(tokio::spawn(async move {
            let clock = Clock {
                submit_ns,
                start,
                deadline,
            };
            device_loop(&args, client, evs, expected_pushes, clock, i).await
        }));
    }
    let mut row = Row {
        system,
        events: 0,
        secs: 0.0,
        ack_us: Vec::new(),
        arrival_us: Vec::new(),
        device_ack_p50_us: Vec::new(),
    };
    let mut last_ack = start;
    for t in tasks {
        let r = t.await??;
        last_ack = last_ack.max(r.last_ack);
        row.add(r);
    }
    row.secs = (last_ack - start).as_secs_f64();
    if row.events != total {
        println!(
            "warning: {} of {} events acked before the timeout",
            row.events, total
        );
    }
    for relay in nodes {
        match &relay_on {
            Some(h) => h.spawn(relay.shutdown()).await??,
            None => relay.shutdown().await?,
        }
    }
    drop(node_dirs);
    Ok(row)
}

struct DeviceResult {
    acked: usize,
    last_ack: Instant,
    ack_us: Vec<u64>,
    arrival_us: Vec<u64>,
}

/// Shared timing state of one run: submit times by event, the start and the deadline.
struct Clock {
    submit_ns: Arc<Vec<AtomicU64>>,
    start: Instant,
    deadline: Instant,
}

async fn device_loop(
    args: &Args,
    mut client: RelayClient,
    events: Vec<Event>,
    expected_pushes: usize,
    clock: Clock,
    device_idx: usize,
) -> Result<DeviceResult> {
    let Clock {
        submit_ns,
        start,
        deadline,
    } = clock;
    let per_device_rate = args.rate / args.devices as f64;
    let interval = (per_device_rate > 0.0)
        .then(|| Duration::from_secs_f64(args.batch as f64 / per_device_rate));
    // Devices start spread over one interval, so paced load arrives evenly, not in bursts.
    let mut next_send = start + stagger(interval, device_idx, args.devices);
    let mut in_flight: std::collections::HashMap<u64, (Instant, usize)> = Default::default();
    let mut sent = 0;
    let mut res = DeviceResult {
        acked: 0,
        last_ack: start,
        ack_us: Vec::with_capacity(events.len()),
        arrival_us: Vec::with_capacity(expected_pushes),
    };
    let mut pushes = 0;
    while res.acked < events.len() || pushes < expected_pushes {
        let now = Instant::now();
        if now > deadline {
            break;
        }
        let may_send = sent < events.len()
            && in_flight.len() < args.window
            && interval.is_none_or(|_| now >= next_send);
        if may_send {
            let end = (sent + args.batch).min(events.len());
            let batch = &events[sent..end];
            let t = start.elapsed().as_nanos() as u64;
            for e in batch {
                if let Some(slot) = event_index(e).and_then(|i| submit_ns.get(i)) {
                    slot.store(t, Ordering::Relaxed);
                }
            }
            let id = client.submit_nowait(batch).await?;
            in_flight.insert(id, (Instant::now(), batch.len()));
            sent = end;
            if let Some(iv) = interval {
                next_send += iv;
            }
            continue;
        }
        let wait = match interval {
            Some(_) if sent < events.len() && in_flight.len() < args.window => {
                next_send.saturating_duration_since(now)
            }
            _ => deadline.saturating_duration_since(now),
        };
        let frame = match client
            .next_frame_within(wait.max(Duration::from_micros(50)))
            .await
        {
            Ok(f) => f,
            Err(tidings::relay::client::ClientError::Timeout) => continue,
            Err(e) => return Err(e.into()),
        };
        match frame {
            ServerFrame::SubmitResult {
                request_id,
                outcomes,
                ..
            } => {
                let now = Instant::now();
                let Some((t0, n)) = in_flight.remove(&request_id) else {
                    bail!("unknown request {request_id}");
                };
                let ok = outcomes
                    .iter()
                    .filter(|o| matches!(o, SubmitOutcome::Accepted { .. }))
                    .count();
                if ok != n {
                    bail!("{} of {n} events refused: {:?}", n - ok, outcomes.first());
                }
                let us = (now - t0).as_micros() as u64;
                res.ack_us.extend(std::iter::repeat_n(us, n));
                res.acked += n;
                res.last_ack = now;
            }
            ServerFrame::Push { events, records } => {
                let now_ns = start.elapsed().as_nanos() as u64;
                for it in &events {
                    let ev = Event::decode_trusted(&it.0)?;
                    if let Some(t) = event_index(&ev).and_then(|i| submit_ns.get(i)) {
                        let t = t.load(Ordering::Relaxed);
                        res.arrival_us.push(now_ns.saturating_sub(t) / 1000);
                    }
                }
                let mut top = None;
                for r in &records {
                    let st = Event::decode_trusted(&r.0)?;
                    if let Some(last) = st.last_placed() {
                        top = Some((st.conversation(), last));
                    }
                }
                pushes += events.len();
                if let Some((c, s)) = top {
                    client.received(c, s).await?;
                }
            }
            ServerFrame::PullMode => bail!("device fell behind and was switched to pull mode"),
            _ => {}
        }
    }
    client.close();
    Ok(res)
}

/// Device `i`'s offset within one sending interval.
fn stagger(interval: Option<Duration>, i: usize, n: usize) -> Duration {
    interval.map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / n.max(1) as f64))
}

fn event_index(e: &Event) -> Option<usize> {
    match e.kind() {
        EventKind::Send { body, .. } => {
            let b: [u8; 8] = body.get(..8)?.try_into().ok()?;
            Some(u64::from_be_bytes(b) as usize)
        }
        _ => None,
    }
}

/// The same load against mosquitto: QoS 1, persistent sessions (clean_session = false),
/// device `i` publishes to `c/<conv>/<i>` and subscribes to every other member's topic, so
/// each message reaches the same devices as on the relay.
async fn run_mqtt(args: &Args, bin: &std::path::Path, payload_len: usize) -> Result<Row> {
    use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Outgoing, Packet, QoS};
    let dir = tempfile::tempdir()?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 0\nmax_inflight_messages 0\n",
            dir.path().display()
        ),
    )?;
    let mut child = std::process::Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting mosquitto")?;
    let result = async {
        let up = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if up.elapsed() > Duration::from_secs(10) {
                bail!("mosquitto did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let start_holder: Arc<std::sync::OnceLock<Instant>> = Arc::new(std::sync::OnceLock::new());
        let inflight = (args.window * args.batch).clamp(1, 65_535) as u16;
        let mut devices = Vec::new();
        for i in 0..args.devices {
            let mut opts = MqttOptions::new(format!("dev{i}"), "127.0.0.1", port);
            opts.set_keep_alive(Duration::from_secs(30))
                .set_clean_session(false)
                .set_inflight(inflight)
                .set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut eventloop) = AsyncClient::new(opts, args.window * args.batch + 16);
            let c = conv_of(args, i);
            for j in members(args, c) {
                if j != i {
                    client
                        .subscribe(format!("c/{c}/{j}"), QoS::AtLeastOnce)
                        .await?;
                }
            }
            // Drive the loop until the broker confirmed every subscription.
            let mut subacks = 0;
            let want = members(args, c).len() - 1;
            while subacks < want {
                if let MqttEvent::Incoming(Packet::SubAck(_)) = eventloop.poll().await? {
                    subacks += 1;
                }
            }
            devices.push((client, eventloop));
        }
        let start = Instant::now();
        let _ = start_holder.set(start);
        let deadline = start + Duration::from_secs(args.timeout_secs);
        let mut tasks = Vec::new();
        for (i, (client, mut eventloop)) in devices.into_iter().enumerate() {
            let c = conv_of(args, i);
            let expected = (members(args, c).len() - 1) * args.events;
            let args = args.clone();
            tasks.push(tokio::spawn(async move {
                let window = Arc::new(tokio::sync::Semaphore::new(args.window * args.batch));
                let fifo = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
                let sender = {
                    let (window, fifo, client, args) =
                        (window.clone(), fifo.clone(), client.clone(), args.clone());
                    tokio::spawn(async move {
                        let per = args.rate / args.devices as f64;
                        let interval =
                            (per > 0.0).then(|| Duration::from_secs_f64(args.batch as f64 / per));
                        let mut next = start + stagger(interval, i, args.devices);
                        for k in 0..args.events {
                            if let Some(iv) = interval {
                                if k % args.batch == 0 {
                                    tokio::time::sleep_until(next.into()).await;
                                    next += iv;
                                }
                            }
                            let Ok(p) = window.acquire().await else {
                                return;
                            };
                            p.forget();
                            let t = start.elapsed().as_nanos() as u64;
                            let mut payload = vec![0x42u8; payload_len.max(16)];
                            payload[..8].copy_from_slice(&t.to_be_bytes());
                            fifo.lock().map(|mut f| f.push_back(t)).ok();
                            if client
                                .publish(format!("c/{c}/{i}"), QoS::AtLeastOnce, false, payload)
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    })
                };
                let mut pkid_sent = std::collections::HashMap::new();
                let mut res = DeviceResult {
                    acked: 0,
                    last_ack: start,
                    ack_us: Vec::with_capacity(args.events),
                    arrival_us: Vec::with_capacity(expected),
                };
                let mut arrived = 0;
                while res.acked < args.events || arrived < expected {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let ev = match tokio::time::timeout(left, eventloop.poll()).await {
                        Ok(Ok(ev)) => ev,
                        Ok(Err(e)) => return Err(anyhow::Error::from(e)),
                        Err(_) => break,
                    };
                    match ev {
                        MqttEvent::Outgoing(Outgoing::Publish(pkid)) => {
                            if let Some(t) = fifo.lock().ok().and_then(|mut f| f.pop_front()) {
                                pkid_sent.insert(pkid, t);
                            }
                        }
                        MqttEvent::Incoming(Packet::PubAck(ack)) => {
                            if let Some(t) = pkid_sent.remove(&ack.pkid) {
                                let now = start.elapsed().as_nanos() as u64;
                                res.ack_us.push(now.saturating_sub(t) / 1000);
                            }
                            res.acked += 1;
                            res.last_ack = Instant::now();
                            window.add_permits(1);
                        }
                        MqttEvent::Incoming(Packet::Publish(p)) => {
                            let now = start.elapsed().as_nanos() as u64;
                            if let Some(b) = p.payload.get(..8) {
                                let mut t = [0u8; 8];
                                t.copy_from_slice(b);
                                res.arrival_us
                                    .push(now.saturating_sub(u64::from_be_bytes(t)) / 1000);
                            }
                            arrived += 1;
                        }
                        _ => {}
                    }
                }
                sender.abort();
                let _ = client.disconnect().await;
                Ok(res)
            }));
        }
        let mut row = Row {
            system: "mosquitto",
            events: 0,
            secs: 0.0,
            ack_us: Vec::new(),
            arrival_us: Vec::new(),
            device_ack_p50_us: Vec::new(),
        };
        let mut last = start;
        for t in tasks {
            let r = t.await??;
            last = last.max(r.last_ack);
            row.add(r);
        }
        row.secs = (last - start).as_secs_f64();
        Ok(row)
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}
