//! Catch-up benchmark: a device was offline while N messages arrived in C conversations. It
//! reconnects; how long until everything is pulled, verified, folded and the Delivered
//! receipts are acknowledged by the relay?
//!
//! `cargo run --release --example catchup -- --messages 100000 --conversations 100`
//!
//! The relay and the filler devices run in a child process (this example again, with
//! `--serve`), so the peak resident memory printed is the device's alone; `--in-process` runs
//! everything in this process, as the first measurements did.

use anyhow::{bail, Context, Result};
use clap::Parser;
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tidings::engine::wire::{SubmitOutcome, MAX_INVITATIONS_PER_INVITER};
use tidings::engine::{ConversationId, DeviceId, DeviceKey, Event, EventId, EventKind, UserId};
use tidings::relay::client::{client_endpoint, RelayClient};
use tidings::relay::config::RelayConfig;
use tidings::relay::server;
use tidings::relay::Limits;
use tidings::replica::Fingerprint;
use tidings::replica::{Replica, ReplicaConfig, Update};

#[derive(Parser, Debug)]
struct Args {
    /// Messages waiting for the device, in total.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Conversations they are spread over.
    #[arg(long, default_value_t = 100)]
    conversations: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 64)]
    body: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// The device log's page cache in MiB (default: the replica's, 16 MiB; redb's own is 1,024).
    #[arg(long)]
    log_cache_mib: Option<usize>,
    /// Pulls of one conversation in flight at most (default: the device's, 4).
    #[arg(long)]
    pull_window: Option<usize>,
    /// Run the relay and the fillers in this process too (the printed memory is then all of it).
    #[arg(long)]
    in_process: bool,
    /// Internal: be the child that serves the relay for Bob (hex of Bob's user key seed); it
    /// prints `addr relay-id fingerprint` once filled and stops when its stdin closes.
    #[arg(long, hide = true)]
    serve: Option<String>,
}

/// Where the device finds the filled relay.
struct Served {
    addr: SocketAddr,
    relay_id: DeviceId,
    fingerprint: Fingerprint,
    messages: usize,
}

/// Signs every event a filler device sends: a Create and the messages, per conversation of
/// `convs`.
fn sign_all(
    key: &DeviceKey,
    bob: UserId,
    args: &Args,
    convs: std::ops::Range<usize>,
) -> Vec<Event> {
    let per_conv = args.messages / args.conversations;
    let mut out = Vec::with_capacity((per_conv + 1) * convs.len());
    for c in convs {
        let mut id = [0xcc; 16];
        id[..8].copy_from_slice(&(c as u64).to_le_bytes());
        let conv = ConversationId(id);
        let mut prev: Option<EventId> = None;
        for i in 0..=per_conv {
            let counter = i as u64 + 1;
            let h = key.header(conv, counter, prev, counter, 0);
            let kind = if i == 0 {
                EventKind::Create {
                    members: vec![key.user(), bob],
                }
            } else {
                EventKind::Send {
                    message: h.message_id(),
                    body: vec![b'x'; args.body],
                    media: vec![],
                }
            };
            let ev = Event::sign(key.signing_key(), h, kind).expect("event within limits");
            prev = Some(ev.id());
            out.push(ev);
        }
    }
    out
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(seed) = &args.serve {
        return serve(&args, seed).await;
    }
    let seed: [u8; 32] = rand::random();
    let bob = SigningKey::from_bytes(&seed);
    let tmp = tempfile::tempdir()?;
    if args.in_process {
        let (relay, messages) = fill(&args, &bob, tmp.path()).await?;
        let served = Served {
            addr: relay.addr(),
            relay_id: relay.relay_id(),
            fingerprint: relay.fingerprint(),
            messages,
        };
        catch_up(
            &args,
            &bob,
            &served,
            tmp.path(),
            "this whole process: relay, fillers and device",
            None,
        )
        .await?;
        relay.shutdown().await?;
        return Ok(());
    }
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args().skip(1))
        .arg("--serve")
        .arg(hex::encode(seed))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the relay's child process")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let line = tokio::task::spawn_blocking(move || -> Result<String> {
        let mut lines = std::io::BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line?;
            if let Some(rest) = line.strip_prefix("SERVING ") {
                return Ok(rest.to_owned());
            }
            println!("{line}");
        }
        bail!("the relay's child process ended before it served")
    })
    .await??;
    let mut parts = line.split_whitespace();
    let mut next = |what: &str| {
        parts
            .next()
            .with_context(|| format!("no {what} in {line:?}"))
    };
    let served = Served {
        addr: next("address")?.parse()?,
        relay_id: DeviceId::from_hex(next("relay id")?).context("relay id")?,
        fingerprint: next("fingerprint")?.parse()?,
        messages: next("count")?.parse()?,
    };
    let result = catch_up(
        &args,
        &bob,
        &served,
        tmp.path(),
        "this process: the device alone",
        Some(child.id()),
    )
    .await;
    // Closing its stdin tells the child to shut the relay down.
    drop(child.stdin.take());
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    result?;
    if !status.success() {
        bail!("the relay's child process failed: {status}");
    }
    Ok(())
}

/// The child: fills a relay for Bob (`seed`), says where it is, serves until stdin closes.
async fn serve(args: &Args, seed: &str) -> Result<()> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(seed, &mut bytes).context("--serve takes 64 hex digits")?;
    let bob = SigningKey::from_bytes(&bytes);
    let tmp = tempfile::tempdir()?;
    let (relay, messages) = fill(args, &bob, tmp.path()).await?;
    println!(
        "SERVING {} {} {} {messages}",
        relay.addr(),
        relay.relay_id(),
        relay.fingerprint()
    );
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::stdin().read_to_end(&mut sink)
    })
    .await??;
    relay.shutdown().await?;
    Ok(())
}

/// Starts a relay in `dir` and fills it with `args.messages` messages for Bob while his device
/// is off; returns it and the number of messages.
async fn fill(
    args: &Args,
    bob: &SigningKey,
    dir: &std::path::Path,
) -> Result<(server::RelayHandle, usize)> {
    let relay = server::start(RelayConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.join("relay"),
        // The filler device sends far over a phone's rate.
        limits: Limits::default().with_rate(10_000_000, 10_000_000),
        ..RelayConfig::default()
    })
    .await?;
    let bob_id = UserId(bob.verifying_key().to_bytes());
    // Fill the relay while Bob's device is off. The relay keeps at most
    // MAX_INVITATIONS_PER_INVITER pending invitations from one user to another, so the
    // conversations are spread over as many inviting users as that takes.
    let endpoint = client_endpoint("127.0.0.1:0".parse()?)?;
    let (mut sign_s, mut fill_s, mut n_msgs, mut n_creates) = (0.0, 0.0, 0, 0);
    let per_filler = MAX_INVITATIONS_PER_INVITER;
    for first in (0..args.conversations).step_by(per_filler) {
        let convs = first..(first + per_filler).min(args.conversations);
        let alice = SigningKey::from_bytes(&rand::random());
        let filler = DeviceKey::from_seed(rand::random(), UserId(alice.verifying_key().to_bytes()));
        let t = Instant::now();
        let events = sign_all(&filler, bob_id, args, convs);
        sign_s += t.elapsed().as_secs_f64();
        let mut client =
            RelayClient::connect(&endpoint, relay.addr(), relay.fingerprint(), &filler).await?;
        client
            .register(&alice, filler.device(), filler.agreement_public().0, 0)
            .await?;
        let t = Instant::now();
        let batch = client.welcome().limits.max_submit_batch as usize;
        // Creates first (a message may only follow its conversation's creation).
        let (creates, sends): (Vec<Event>, Vec<Event>) = events
            .into_iter()
            .partition(|e| matches!(e.kind(), EventKind::Create { .. }));
        for chunk in creates.chunks(batch).chain(sends.chunks(batch)) {
            for o in client.submit(chunk).await? {
                if let SubmitOutcome::Rejected { code, reason } = o {
                    bail!("filler event rejected: {code:?} {reason}");
                }
            }
        }
        fill_s += t.elapsed().as_secs_f64();
        client.close();
        n_msgs += sends.len();
        n_creates += creates.len();
    }
    println!(
        "filled the relay: {} messages in {} conversations (signing {:.2} s, submit {:.2} s = {:.0} events/s)",
        n_msgs, args.conversations, sign_s, fill_s, (n_msgs + n_creates) as f64 / fill_s
    );

    Ok((relay, n_msgs))
}

/// Bob's device comes online with an empty store and catches up from the relay at `served`.
async fn catch_up(
    args: &Args,
    bob: &SigningKey,
    served: &Served,
    dir: &std::path::Path,
    memory_of: &str,
    relay_pid: Option<u32>,
) -> Result<()> {
    let device_cpu = cpu_time::ProcessTime::now();
    let relay_cpu = relay_pid.and_then(cpu_seconds);
    let n_msgs = served.messages;
    let bob_id = UserId(bob.verifying_key().to_bytes());
    let per_conv_seq = (n_msgs / args.conversations) as u64 + 1;
    // Bob's device comes online with an empty store.
    let key = DeviceKey::from_seed(rand::random(), bob_id);
    let mut config = ReplicaConfig::new(served.addr, served.relay_id, served.fingerprint);
    if let Some(mib) = args.log_cache_mib {
        config.log_cache_bytes = mib * 1024 * 1024;
    }
    if let Some(w) = args.pull_window {
        config.device.pull_window = w;
    }
    config.device.registration = Some(key.certificate(bob, 0));
    let t = Instant::now();
    let replica = Replica::open(dir.join("bob"), key, config).await?;
    let mut updates = replica.updates();
    let mut received: HashMap<ConversationId, u64> = HashMap::new();
    let deadline = Duration::from_secs(args.timeout_secs);
    let mut folded_s = None;
    loop {
        if t.elapsed() > deadline {
            bail!(
                "timed out after {deadline:?}: {} of {} conversations caught up",
                received.values().filter(|s| **s >= per_conv_seq).count(),
                args.conversations
            );
        }
        match tokio::time::timeout(Duration::from_millis(200), updates.next()).await {
            // The user agrees to the conversations it was invited to: the relay lists and
            // pushes a conversation only after that.
            Ok(Some(Update::Invited(invitation))) => {
                replica.accept(invitation.conversation).await?;
            }
            Ok(Some(Update::SyncProgress {
                conversation,
                received: r,
                ..
            })) => {
                received.insert(conversation, r);
            }
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => bail!("replica closed"),
        }
        let done =
            received.len() == args.conversations && received.values().all(|s| *s >= per_conv_seq);
        if done && folded_s.is_none() {
            folded_s = Some(t.elapsed().as_secs_f64());
        }
        if done && replica.outbox().await?.is_empty() {
            break;
        }
    }
    let total_s = t.elapsed().as_secs_f64();
    let device = device_cpu.elapsed().as_secs_f64();
    let relay = match (relay_cpu, relay_pid.and_then(cpu_seconds)) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let folded_s = folded_s.unwrap_or(total_s);
    let list = replica.conversations().await?;
    let unread: usize = list.iter().map(|c| c.unread).sum();
    if unread != n_msgs {
        bail!("expected {n_msgs} unread messages, found {unread}");
    }
    println!(
        "catch-up of {n_msgs} messages in {} conversations:",
        args.conversations
    );
    println!(
        "  pulled + verified + folded:   {folded_s:>7.2} s  {:>9.0} messages/s",
        n_msgs as f64 / folded_s
    );
    println!(
        "  … and receipts acknowledged: {total_s:>7.2} s  {:>9.0} messages/s",
        n_msgs as f64 / total_s
    );
    // In-process, the relay's time is in the device's.
    let (relay_s, relay_text) = match relay {
        Some(r) => (r, format!(", relay {r:.2} s")),
        None => (0.0, String::new()),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "  CPU time until acknowledged: device {device:.2} s{relay_text} ({:.1} µs a message; \
         {:.2} s of {total_s:.2} s with all {cores} cores busy)",
        (device + relay_s) * 1e6 / n_msgs as f64,
        (device + relay_s) / cores as f64
    );
    match peak_resident_kib() {
        Some(kib) => println!(
            "  peak resident memory (VmHWM, {memory_of}): {:.1} MiB",
            kib as f64 / 1024.0
        ),
        None => println!("  peak resident memory: /proc/self/status has no VmHWM here"),
    }
    replica.close().await?;
    Ok(())
}

/// User and system CPU time another process used so far, all its threads (`utime` and
/// `stime` of /proc/<pid>/stat, in the kernel's USER_HZ ticks: 100 a second on Linux; the
/// `cpu-time` crate reads only the calling process).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// The process's peak resident set (`VmHWM` in /proc/self/status), in KiB.
fn peak_resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
