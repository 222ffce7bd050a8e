//! The seed scenario, end to end on loopback: a relay, Alice's phone and laptop, Bob's phone.
//!
//! Alice goes into airplane mode and sends three messages (⏰ PENDING, in order); Bob is offline
//! too. Alice comes back (✓ SENT on both her devices); Bob comes back (messages arrive in order,
//! ✓✓ DELIVERED); Bob reads (✓✓ READ on both of Alice's devices). Bodies are encrypted end to
//! end (🔐): Bob's phone and Alice's laptop decrypt them with the conversation key Alice's phone
//! sealed to them.
//!
//! Then a photo crosses the outage: Alice, offline again, sends a photo with a caption (the
//! message shows at once; the upload waits in a durable queue), comes back (the upload runs in
//! the background), and Bob downloads it, every piece checked, bytes identical.
//!
//! Then "same Wi-Fi, no internet": the relay goes down; Alice's and Bob's phones find each
//! other on the LAN (mDNS; the address the app would take from a QR code if multicast is not
//! there) and exchange a message directly; the relay comes back and the message takes its
//! server place on every device, Alice's laptop (which never saw the peer link) included.
//!
//! Exits 0 when every message ended READ on every device of Alice, readable on Bob's phone and
//! Alice's laptop, the photo arrived intact, and the peer message reached everyone in the
//! relay's order; 1 with the reason otherwise.
//!
//! `cargo run --release --example offline_demo`

use anyhow::{bail, Context, Result};
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tidings::engine::{ConversationId, MessageId, RetryPolicy, Status, UserId};
use tidings::relay::config::RelayConfig;
use tidings::relay::server::{self, RelayHandle};
use tidings::replica::keystore::{DeviceSecrets, Keys, UserSecret};
use tidings::replica::peers::mdns::MdnsConfig;
use tidings::replica::peers::{Discovery, PeerAddr};
use tidings::replica::{
    Body, Connectivity, DeviceConfig, MediaDirection, MediaSource, RelayPin, Rendered, Replica,
    Update,
};

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
            match u {
                Update::StatusChanged {
                    message, from, to, ..
                } => println!(
                    "    [{name:>12}] {}… {} → {}",
                    &message.to_string()[..6],
                    label(from),
                    label(to)
                ),
                Update::MediaProgress {
                    direction,
                    done,
                    total,
                    ..
                } if done == total => {
                    let way = match direction {
                        MediaDirection::Upload => "uploaded",
                        MediaDirection::Download => "downloaded",
                    };
                    println!("    [{name:>12}] 📷 photo {way}: {} KiB", total / 1024);
                }
                _ => {}
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
    photo_act(tmp.path(), conv, &phone, &bob_phone).await?;
    let relay = lan_act(tmp.path(), relay, conv, &phone, &laptop, &bob_phone).await?;

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

/// A picture for the photo act: a `width`×`height` gradient as a binary PPM (what a camera
/// app would hand over as a JPEG; the bytes are opaque to tidings either way).
fn picture(width: u32, height: u32) -> Vec<u8> {
    let mut out = format!("P6\n{width} {height}\n255\n").into_bytes();
    for y in 0..height {
        for x in 0..width {
            out.extend_from_slice(&[
                (x * 255 / width) as u8,
                (y * 255 / height) as u8,
                ((x + y) % 256) as u8,
            ]);
        }
    }
    out
}

/// The message `id` as `d` shows it, if it does.
async fn find(d: &Device, conv: ConversationId, id: MessageId) -> Result<Option<Rendered>> {
    Ok(screen(d, conv).await?.into_iter().find(|m| m.view.id == id))
}

/// Act 6: a photo sent offline, uploaded when the network is back, downloaded by Bob.
async fn photo_act(dir: &Path, conv: ConversationId, phone: &Device, bob: &Device) -> Result<()> {
    println!("\n6. A photo across the outage: Alice's phone goes offline again and sends a photo.");
    phone.replica.network_changed(false).await?;
    let photo = picture(640, 480);
    let path = dir.join("lisbon.ppm");
    std::fs::write(&path, &photo)?;
    let thumbnail = picture(32, 24);
    let id = phone
        .replica
        .send_media(
            conv,
            MediaSource::File(path),
            b"Sunset over the Tagus".to_vec(),
            "image/x-portable-pixmap",
            thumbnail,
        )
        .await?;
    let queued = phone.replica.queued_uploads()?.len();
    println!(
        "  the message shows at once with its thumbnail; {} KiB sealed on the phone, {queued} \
         upload queued",
        photo.len() / 1024
    );
    show(phone, conv).await?;
    if find(phone, conv, id).await?.map(|m| m.view.status) != Some(Status::Pending) {
        bail!("a photo sent offline should show PENDING");
    }

    println!("\n7. Alice's phone is back: the caption goes at once, the photo uploads behind it.");
    phone.replica.network_changed(true).await?;
    wait_until("the upload queue to empty", || async {
        Ok(phone.replica.queued_uploads()?.is_empty())
    })
    .await?;
    wait_until("the photo message on Bob's phone", || async {
        Ok(find(bob, conv, id).await?.is_some())
    })
    .await?;
    show(bob, conv).await?;
    let Some(Body::Media(media)) = find(bob, conv, id).await?.map(|m| m.body) else {
        bail!("Bob's phone does not read the photo message");
    };
    let Some(descriptor) = media.media.first() else {
        bail!("the photo message carries no media");
    };
    println!(
        "  Bob taps the thumbnail ({} B, inline, encrypted with the message): download",
        descriptor.thumbnail.len()
    );
    let dest = dir.join("bob-lisbon.ppm");
    bob.replica.download_media(conv, descriptor, &dest).await?;
    let got = std::fs::read(&dest)?;
    if got != photo {
        bail!("the downloaded photo differs from the one sent");
    }
    println!(
        "  📷 the photo arrived intact on Bob's phone ({} KiB, every piece checked against its \
         root before decryption); the relay held only ciphertext",
        got.len() / 1024
    );
    bob.replica.mark_read(conv, None).await?;
    wait_until("the photo READ on Alice's phone", || async {
        Ok(find(phone, conv, id)
            .await?
            .is_some_and(|m| m.view.status == Status::Read))
    })
    .await?;
    Ok(())
}

/// The multicast DNS port of the LAN act: not 5353, so a host's own responder stays out.
const DEMO_MDNS_PORT: u16 = 53_536;
/// How long the LAN act waits for mDNS before taking the address the app passes in.
const MDNS_WAIT: Duration = Duration::from_secs(5);

/// Act 8: the relay goes down; the two phones exchange a message over the LAN; the relay comes
/// back and the message takes its place everywhere. Returns the restarted relay.
async fn lan_act(
    dir: &Path,
    relay: RelayHandle,
    conv: ConversationId,
    phone: &Device,
    laptop: &Device,
    bob: &Device,
) -> Result<RelayHandle> {
    println!("\n8. Same Wi-Fi, no internet: the relay goes down.");
    let addr = relay.addr();
    relay.shutdown().await?;
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let phone_link = phone.replica.peer_link(unspecified).await?;
    let bob_link = bob.replica.peer_link(unspecified).await?;
    let mdns = || MdnsConfig::default().mdns_port(DEMO_MDNS_PORT);
    let phone_lan = phone_link.advertise(mdns())?;
    let bob_lan = bob_link.advertise(mdns())?;
    let start = Instant::now();
    let (mut to_phone, mut to_bob) = (None, None);
    while start.elapsed() < MDNS_WAIT && (to_phone.is_none() || to_bob.is_none()) {
        to_phone = to_phone.or(bob_lan
            .peers()
            .into_iter()
            .find(|p| p.device == phone.replica.device()));
        to_bob = to_bob.or(phone_lan
            .peers()
            .into_iter()
            .find(|p| p.device == bob.replica.device()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let loopback = |link_addr: SocketAddr| SocketAddr::from(([127, 0, 0, 1], link_addr.port()));
    let (to_phone, to_bob) = match (to_phone, to_bob) {
        (Some(p), Some(b)) => {
            println!(
                "  the phones found each other on the LAN by mDNS (each record names no device)"
            );
            (p, b)
        }
        _ => {
            println!(
                "  mDNS found nothing within {MDNS_WAIT:?} (no multicast on this host): the \
                 phones take each other's address as an app would from a QR code"
            );
            (
                PeerAddr {
                    device: phone.replica.device(),
                    addr: loopback(phone_link.local_addr()?),
                },
                PeerAddr {
                    device: bob.replica.device(),
                    addr: loopback(bob_link.local_addr()?),
                },
            )
        }
    };
    let keep_phone = phone_link.keep_synced(to_bob);
    let keep_bob = bob_link.keep_synced(to_phone);
    let id = bob
        .replica
        .send(
            conv,
            b"No signal on this train. Got this over the Wi-Fi?".to_vec(),
        )
        .await?;
    wait_until(
        "Bob's message on Alice's phone over the peer link",
        || async { Ok(find(phone, conv, id).await?.is_some()) },
    )
    .await?;
    println!("  Bob's message reached Alice's phone directly (no relay, no server place yet):");
    show(phone, conv).await?;
    if find(laptop, conv, id).await?.is_some() {
        bail!("Alice's laptop has no peer link: it cannot have the message yet");
    }

    println!("\n9. The relay comes back: the message takes its server place on every device.");
    let relay = server::start(RelayConfig {
        listen: addr,
        data_dir: dir.join("relay"),
        ..RelayConfig::default()
    })
    .await?;
    for d in [phone, laptop, bob] {
        wait_until("the peer message in its server place", || async {
            Ok(find(d, conv, id)
                .await?
                .is_some_and(|m| m.view.seq.is_some()))
        })
        .await?;
    }
    phone.replica.mark_read(conv, None).await?;
    wait_until("Bob's message READ on Bob's phone", || async {
        Ok(find(bob, conv, id)
            .await?
            .is_some_and(|m| m.view.status == Status::Read))
    })
    .await?;
    let sent = keep_bob.stats();
    println!(
        "  peer sessions run by Bob's phone: {}; the laptop, on the relay only, shows it too:",
        sent.sessions
    );
    show(laptop, conv).await?;
    show(bob, conv).await?;
    drop((keep_phone, keep_bob));
    phone_lan.close().await?;
    bob_lan.close().await?;
    drop((phone_link, bob_link));
    let screens = [
        screen(phone, conv).await?,
        screen(laptop, conv).await?,
        screen(bob, conv).await?,
    ];
    let order = |s: &[Rendered]| {
        s.iter()
            .map(|m| (m.view.id, m.view.seq))
            .collect::<Vec<_>>()
    };
    if order(&screens[0]) != order(&screens[1]) || order(&screens[0]) != order(&screens[2]) {
        bail!("the three devices do not show one order");
    }
    println!("  all three devices show the same messages in the relay's order");
    Ok(relay)
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
