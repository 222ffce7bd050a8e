//! A headless device for the crash tests (`tests/crash_device.rs`): opens a replica, creates
//! the conversation if asked, then sends numbered messages as fast as the replica takes them.
//!
//! Message bodies are their index (`0`, `1`, ...). After a restart the device counts its own
//! messages already in its log and goes on from there, so a test can kill it at any moment and
//! check that every index reaches the others exactly once, in order.
//!
//! stdout, one line each, flushed as they happen:
//! - `sent <index> <message id>`: durably in the local log and outbox (`Replica::send` returned);
//! - `acked <message id>`: the relay's ack arrived (status SENT);
//! - `drained`: all `--count` messages are sent and the outbox is empty; the process exits.
//!
//! With `--media-bytes N` it sends one media message instead (N bytes of a fixed pattern,
//! unless its log holds it already) and waits for the upload:
//! - `media-sent <message id>`: the message is durable and its upload queued;
//! - `progress <done> <total>`: the relay confirmed `done` ciphertext bytes of the upload;
//! - `uploaded`: the upload queue is empty; the process exits.
//!
//! Flags (all required unless marked): `--dir DIR --relay ADDR --relay-id HEX --cert HEX
//! --user-seed N --device-seed N --conversation HEX --count N`, optional `--member HEX`
//! (repeatable: other users of the conversation) and `--create`. Keys come from the seeds as in
//! the tests: the user key is `[user-seed; 32]`, the device key `[device-seed; 32]`.

use futures::StreamExt;
use std::time::Duration;
use tidings::engine::{ConversationId, DeviceId, DeviceKey, RetryPolicy, Status, UserId};
use tidings::replica::Fingerprint;
use tidings::replica::{Body, Replica, ReplicaConfig, Update};

type Error = Box<dyn std::error::Error>;

#[derive(Debug, clap::Parser)]
#[command(
    name = "tidings-test-device",
    about = "headless device for the crash tests"
)]
struct Flags {
    /// Data directory of the replica.
    #[arg(long)]
    dir: std::path::PathBuf,
    /// The relay's address.
    #[arg(long)]
    relay: std::net::SocketAddr,
    /// The relay's id (hex).
    #[arg(long)]
    relay_id: String,
    /// SHA-256 of the relay's certificate (hex).
    #[arg(long)]
    cert: String,
    /// The user key is `[user-seed; 32]`.
    #[arg(long)]
    user_seed: u8,
    /// The device key is `[device-seed; 32]`.
    #[arg(long)]
    device_seed: u8,
    /// The conversation (hex).
    #[arg(long)]
    conversation: String,
    /// Messages to send in all.
    #[arg(long)]
    count: u64,
    /// Other users of the conversation (hex), when creating it.
    #[arg(long)]
    member: Vec<String>,
    /// Create the conversation if this device does not know it yet.
    #[arg(long)]
    create: bool,
    /// Send one media message of this many bytes instead of numbered texts.
    #[arg(long)]
    media_bytes: Option<u64>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("tidings-test-device: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Error> {
    let flags = <Flags as clap::Parser>::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(device(flags))
}

async fn device(flags: Flags) -> Result<(), Error> {
    let user_key = DeviceKey::from_seed([flags.user_seed; 32], UserId([0; 32]));
    let user = UserId(user_key.device().0);
    let key = DeviceKey::from_seed([flags.device_seed; 32], user);
    let relay_id = DeviceId::from_hex(&flags.relay_id).ok_or("bad --relay-id")?;
    let cert: Fingerprint = flags.cert.parse().map_err(|_| "bad --cert")?;
    let conv = ConversationId::from_hex(&flags.conversation).ok_or("bad --conversation")?;
    let count = flags.count;
    let mut config = ReplicaConfig::new(flags.relay, relay_id, cert);
    config.keepalive = Duration::from_millis(300);
    config.idle_timeout = Duration::from_secs(2);
    config.device.registration = Some(key.certificate(user_key.signing_key(), 0));
    config.device.retry = RetryPolicy {
        base_ms: 100,
        max_ms: 1_000,
        max_attempts: u32::MAX,
        jitter_pct: 20,
    };
    config.device.reconnect = RetryPolicy {
        base_ms: 50,
        max_ms: 500,
        max_attempts: u32::MAX,
        jitter_pct: 20,
    };
    config.device.ack_timeout_ms = 1_000;
    let me = key.device();
    let replica = Replica::open(&flags.dir, key, config).await?;

    let mut updates = replica.updates();
    tokio::spawn(async move {
        while let Some(u) = updates.next().await {
            let acked = match u {
                Update::StatusChanged {
                    message,
                    to: Status::Sent,
                    ..
                } => Some(message),
                Update::MessageAdded {
                    message,
                    status: Status::Sent,
                    ..
                } => Some(message),
                _ => None,
            };
            if let Some(m) = acked {
                println!("acked {m}");
            }
            if let Update::MediaProgress {
                direction: tidings::replica::MediaDirection::Upload,
                done,
                total,
                ..
            } = u
            {
                println!("progress {done} {total}");
            }
        }
    });

    if flags.create && replica.conversation(conv).await.is_err() {
        let mut members = Vec::new();
        for m in &flags.member {
            members.push(UserId::from_hex(m).ok_or("bad --member")?);
        }
        replica.create_conversation(conv, members).await?;
    }
    if let Some(n) = flags.media_bytes {
        return media(&replica, conv, me, n).await;
    }
    // Go on after the last message this device already has in its log.
    let snap = replica.conversation(conv).await?;
    let own: Vec<&Body> = snap
        .messages
        .iter()
        .filter(|m| m.view.record.author == me)
        .map(|m| &m.body)
        .collect();
    for (i, body) in own.iter().enumerate() {
        // Its own messages: this device started (or holds) every epoch it sent under.
        if **body != Body::Text(i.to_string().into_bytes()) {
            return Err(format!("own message {i} in the log reads as {body:?}").into());
        }
    }
    for i in own.len() as u64..count {
        let m = replica.send(conv, i.to_string().into_bytes()).await?;
        println!("sent {i} {m}");
    }
    while !replica.outbox().await?.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("drained");
    replica.close().await?;
    Ok(())
}

/// Sends one media message of `n` pattern bytes (unless the log holds it) and waits until
/// its upload finished.
async fn media(replica: &Replica, conv: ConversationId, me: DeviceId, n: u64) -> Result<(), Error> {
    let snap = replica.conversation(conv).await?;
    let sent = snap
        .messages
        .iter()
        .any(|m| m.view.record.author == me && matches!(m.body, Body::Media(_)));
    if !sent {
        let bytes: Vec<u8> = b"MEDIA-PATTERN-"
            .iter()
            .copied()
            .cycle()
            .take(n as usize)
            .collect();
        let source = tidings::replica::MediaSource::Bytes(bytes);
        let m = replica
            .send_media(conv, source, b"clip".to_vec(), "video/mp4", Vec::new())
            .await?;
        println!("media-sent {m}");
    }
    while !replica.queued_uploads()?.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("uploaded");
    replica.close().await?;
    Ok(())
}
