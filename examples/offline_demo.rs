//! The seed scenario, end to end on loopback: a relay, Alice's phone and laptop, Bob's phone.
//!
//! Alice goes into airplane mode and sends three messages (⏰ PENDING, in order); Bob is offline
//! too. Alice comes back (✓ SENT on both her devices); Bob comes back (messages arrive in order,
//! ✓✓ DELIVERED); Bob reads (✓✓ READ on both of Alice's devices). Bodies are encrypted end to
//! end (🔐): Bob's phone and Alice's laptop decrypt them with the conversation key Alice's phone
//! sealed to them. Exits 0 when every message ended READ on every device of Alice and readable
//! on Bob's phone and Alice's laptop, 1 with the reason otherwise.
//!
//! `cargo run --release --example offline_demo`

use anyhow::{bail, Context, Result};
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};
use tidings::engine::{ConversationId, MessageId, RetryPolicy, Status, UserId};
use tidings::relay::config::RelayConfig;
use tidings::relay::server::{self, RelayHandle};
use tidings::replica::keystore::{DeviceSecrets, Keys, UserSecret};
use tidings::replica::{Body, Connectivity, DeviceConfig, RelayPin, Rendered, Replica, Update};

/// How long any one step may take before the demo gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages on one screen: what the demo reads of a conversation (`Replica::page`).
const SCREEN: usize = 50;

struct Device {
    name: &'static str,
    replica: Replica,
}

fn label(status: Status) -> String {
    match status {
        Status::Pending => "⏰ PENDING".into(),
        Status::Failed => "❗ FAILED".into(),
        Status::Sent => "✓ SENT".into(),
        Status::Delivered => "✓✓ DELIVERED".into(),
        Status::Read => "✓✓ READ (blue)".into(),
    }
}

async fn open_device(
    name: &'static str,
    dir: &Path,
    user_key: &SigningKey,
    relay: &RelayHandle,
) -> Result<Device> {
    // What a real app keeps in its key store (`Keys::create` once, `Keys::load` after).
    let keys = Keys::from_secrets(
        DeviceSecrets::generate()?,
        UserSecret::from_seed(user_key.to_bytes()),
    );
    // The string the relay prints on its `pin:` line.
    let pin: RelayPin = format!("{}@{}", relay.relay_id(), relay.fingerprint())
        .parse()
        .context("relay printed a bad pin")?;
    // Snappy for a demo: retries from 200 ms, reconnects from 100 ms.
    let device = DeviceConfig {
        retry: RetryPolicy {
            base_ms: 200,
            max_ms: 2_000,
            ..RetryPolicy::default()
        },
        reconnect: RetryPolicy {
            base_ms: 100,
            max_ms: 1_000,
            max_attempts: u32::MAX,
            jitter_pct: 20,
        },
        ..DeviceConfig::default()
    };
    let replica = Replica::builder(dir.join(name))
        .relay([relay.addr()], pin)
        .keys(keys)
        // The demo cuts the network itself (`network_changed`).
        .connectivity(Connectivity::App)
        .device_config(device)
        .open()
        .await?;
    // Print every status change this device sees, as it happens.
    let mut updates = replica.updates();
    tokio::spawn(async move {
        while let Some(u) = updates.next().await {
            if let Update::StatusChanged {
                message, from, to, ..
            } = u
            {
                println!(
                    "    [{name:>12}] {}… {} → {}",
                    &message.to_string()[..6],
                    label(from),
                    label(to)
                );
            }
        }
    });
    Ok(Device { name, replica })
}

/// Polls `check` until it returns true, or fails after [`STEP_TIMEOUT`].
async fn wait_until<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let start = Instant::now();
    while !check().await? {
        if start.elapsed() > STEP_TIMEOUT {
            bail!("timed out after {STEP_TIMEOUT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The latest screen of `conv` on `d`, with bodies (index reads, no document load).
async fn screen(d: &Device, conv: ConversationId) -> Result<Vec<Rendered>> {
    Ok(d.replica.page(conv, None, SCREEN).await?)
}

async fn statuses(d: &Device, conv: ConversationId, ids: &[MessageId]) -> Result<Vec<Status>> {
    let shown = screen(d, conv).await?;
    Ok(ids
        .iter()
        .map(|id| {
            shown
                .iter()
                .find(|m| m.view.id == *id)
                .map(|m| m.view.status)
                .unwrap_or(Status::Pending)
        })
        .collect())
}

async fn all_at(d: &Device, conv: ConversationId, ids: &[MessageId], want: Status) -> Result<bool> {
    let shown = screen(d, conv).await?;
    Ok(ids.iter().all(|id| {
        shown
            .iter()
            .any(|m| m.view.id == *id && m.view.status.rank() >= want.rank())
    }))
}

async fn show(d: &Device, conv: ConversationId) -> Result<()> {
    let shown = screen(d, conv).await?;
    let unread = d
        .replica
        .conversations()
        .await?
        .iter()
        .find(|c| c.id == conv)
        .map_or(0, |c| c.unread);
    println!("  {} sees ({unread} unread):", d.name);
    for m in &shown {
        let text = match &m.body {
            Body::Text(t) => format!("\"{}\" 🔐", String::from_utf8_lossy(t)),
            Body::Clear(t) => format!("\"{}\" (unencrypted)", String::from_utf8_lossy(t)),
            Body::WaitingForKey(_) => "🔒 waiting for key…".to_owned(),
            Body::Unreadable(why) => format!("⚠ unreadable: {why}"),
            Body::Media(m) => format!(
                "\"{}\" + {} media 🔐",
                String::from_utf8_lossy(&m.caption),
                m.media.len()
            ),
        };
        println!("    {text:<34} {}", label(m.view.status));
    }
    Ok(())
}

/// Whether `d` reads every message of `ids` in clear text (decrypted on the device).
async fn all_readable(d: &Device, conv: ConversationId, ids: &[MessageId]) -> Result<bool> {
    let shown = screen(d, conv).await?;
    Ok(ids.iter().all(|id| {
        shown
            .iter()
            .any(|m| m.view.id == *id && matches!(m.body, Body::Text(_)))
    }))
}

async fn demo() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    println!("tidings offline demo — relay and three devices on loopback\n");
    let relay = server::start(RelayConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: tmp.path().join("relay"),
        ..RelayConfig::default()
    })
    .await?;
    println!(
        "relay listening on {} (key {}…, certificate {}…)",
        relay.addr(),
        &relay.relay_id().to_string()[..12],
        &relay.fingerprint().to_string()[..16]
    );

    let alice = SigningKey::from_bytes(&rand::random());
    let bob = SigningKey::from_bytes(&rand::random());
    let bob_id = UserId(bob.verifying_key().to_bytes());
    let phone = open_device("alice-phone", tmp.path(), &alice, &relay).await?;
    let laptop = open_device("alice-laptop", tmp.path(), &alice, &relay).await?;
    let bob_phone = open_device("bob-phone", tmp.path(), &bob, &relay).await?;

    let conv = ConversationId(rand::random());
    phone
        .replica
        .create_conversation(conv, vec![bob_id])
        .await?;
    // For Bob it is an invitation: nothing of it reaches his devices until he accepts.
    wait_until("Bob's phone to get the invitation", || async {
        Ok(bob_phone
            .replica
            .invitations()
            .await?
            .iter()
            .any(|i| i.conversation == conv))
    })
    .await?;
    bob_phone.replica.accept(conv).await?;
    for d in [&phone, &laptop, &bob_phone] {
        wait_until("every device to see the conversation", || async {
            let listed = d.replica.conversations().await?;
            Ok(listed.iter().any(|c| c.id == conv && c.members.is_some()))
        })
        .await?;
    }
    println!("conversation created; all three devices connected\n");

    println!("1. Alice's phone goes into airplane mode; Bob's phone is off the network too.");
    phone.replica.network_changed(false).await?;
    bob_phone.replica.network_changed(false).await?;

    println!("2. Alice sends three messages while offline:");
    let texts = ["Just took off", "See you in Lisbon", "Landing at 6"];
    let mut ids = Vec::new();
    for t in texts {
        ids.push(phone.replica.send(conv, t.as_bytes().to_vec()).await?);
    }
    show(&phone, conv).await?;
    if statuses(&phone, conv, &ids).await? != vec![Status::Pending; 3] {
        bail!("messages sent offline should all be PENDING");
    }

    println!("\n3. Alice's phone is back online:");
    phone.replica.network_changed(true).await?;
    for d in [&phone, &laptop] {
        wait_until("SENT on Alice's devices", || {
            all_at(d, conv, &ids, Status::Sent)
        })
        .await?;
    }
    show(&phone, conv).await?;
    show(&laptop, conv).await?;

    println!("\n4. Bob's phone is back online:");
    bob_phone.replica.network_changed(true).await?;
    wait_until("Bob to receive all three", || async {
        let got: Vec<MessageId> = screen(&bob_phone, conv)
            .await?
            .iter()
            .map(|m| m.view.id)
            .collect();
        Ok(got == ids)
    })
    .await?;
    // End-to-end encrypted: Bob's phone decrypts with the conversation key Alice's phone
    // sealed to it (asking for it first if it arrived before the key).
    for d in [&bob_phone, &laptop] {
        wait_until("readable (decrypted) on the device", || {
            all_readable(d, conv, &ids)
        })
        .await?;
    }
    show(&bob_phone, conv).await?;
    for d in [&phone, &laptop] {
        wait_until("DELIVERED on Alice's devices", || {
            all_at(d, conv, &ids, Status::Delivered)
        })
        .await?;
    }
    show(&phone, conv).await?;

    println!("\n5. Bob reads the conversation:");
    bob_phone.replica.mark_read(conv, None).await?;
    for d in [&phone, &laptop] {
        wait_until("READ on Alice's devices", || {
            all_at(d, conv, &ids, Status::Read)
        })
        .await?;
    }
    show(&phone, conv).await?;
    show(&laptop, conv).await?;
    show(&bob_phone, conv).await?;

    for d in [&phone, &laptop] {
        let st = statuses(d, conv, &ids).await?;
        if st != vec![Status::Read; 3] {
            bail!(
                "{} ended with {:?}, expected every message READ",
                d.name,
                st
            );
        }
    }
    for d in [&phone, &laptop, &bob_phone] {
        d.replica.close().await?;
    }
    relay.shutdown().await?;
    println!("\nevery message ended READ on both of Alice's devices ✓✓");
    println!(
        "every body was encrypted end to end 🔐: the relay stored and forwarded ciphertext only"
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    if let Err(e) = demo().await {
        eprintln!("\noffline demo FAILED: {e:#}");
        std::process::exit(1);
    }
}
