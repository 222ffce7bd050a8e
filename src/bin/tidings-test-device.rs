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
//! Flags (all required unless marked): `--dir DIR --relay ADDR --relay-id HEX --cert HEX
//! --user-seed N --device-seed N --conversation HEX --count N`, optional `--member HEX`
//! (repeatable: other users of the conversation) and `--create`. Keys come from the seeds as in
//! the tests: the user key is `[user-seed; 32]`, the device key `[device-seed; 32]`.

use std::collections::HashMap;
use std::time::Duration;
use tidings::engine::wire::DeviceRegistration;
use tidings::engine::{ConversationId, DeviceId, DeviceKey, RetryPolicy, Status, UserId};
use tidings::replica::pin::parse_fingerprint;
use tidings::replica::{Replica, ReplicaConfig, Update};

type Error = Box<dyn std::error::Error>;

struct Flags {
    values: HashMap<String, Vec<String>>,
}

impl Flags {
    fn parse() -> Result<Flags, Error> {
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let name = a.strip_prefix("--").ok_or(format!("unexpected {a}"))?;
            if name == "create" {
                values.entry(name.into()).or_default().push(String::new());
                continue;
            }
            let v = args.next().ok_or(format!("--{name} needs a value"))?;
            values.entry(name.into()).or_default().push(v);
        }
        Ok(Flags { values })
    }

    fn one(&self, name: &str) -> Result<&str, Error> {
        self.values
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
            .ok_or_else(|| format!("--{name} is required").into())
    }

    fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map(Vec::as_slice).unwrap_or_default()
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("tidings-test-device: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Error> {
    let flags = Flags::parse()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(device(flags))
}

fn seed(flags: &Flags, name: &str) -> Result<[u8; 32], Error> {
    Ok([flags.one(name)?.parse::<u8>()?; 32])
}

async fn device(flags: Flags) -> Result<(), Error> {
    let user_key = DeviceKey::from_seed(seed(&flags, "user-seed")?, UserId([0; 32]));
    let user = UserId(user_key.device().0);
    let key = DeviceKey::from_seed(seed(&flags, "device-seed")?, user);
    let relay_id = DeviceId::from_hex(flags.one("relay-id")?).ok_or("bad --relay-id")?;
    let cert = parse_fingerprint(flags.one("cert")?).ok_or("bad --cert")?;
    let conv = ConversationId::from_hex(flags.one("conversation")?).ok_or("bad --conversation")?;
    let count: u64 = flags.one("count")?.parse()?;
    let mut config = ReplicaConfig::new(flags.one("relay")?.parse()?, relay_id, cert);
    config.keepalive = Duration::from_millis(300);
    config.idle_timeout = Duration::from_secs(2);
    config.device.registration = Some(DeviceRegistration::sign(
        user_key.signing_key(),
        key.device(),
        key.device().0,
        0,
    ));
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
    let replica = Replica::open(flags.one("dir")?, key, config).await?;

    let mut updates = replica.subscribe();
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
        }
    });

    if flags.values.contains_key("create") && replica.conversation(conv).await?.members.is_none() {
        let mut members = Vec::new();
        for m in flags.all("member") {
            members.push(UserId::from_hex(m).ok_or("bad --member")?);
        }
        replica.create_conversation(conv, members).await?;
    }
    // Go on after the last message this device already has in its log.
    let own: Vec<Vec<u8>> = replica
        .conversation(conv)
        .await?
        .messages
        .into_iter()
        .filter(|m| m.record.author == me)
        .map(|m| m.record.body)
        .collect();
    for (i, body) in own.iter().enumerate() {
        if body != i.to_string().as_bytes() {
            return Err(format!("own message {i} in the log has body {body:?}").into());
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
