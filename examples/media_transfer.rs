//! Media transfer figures (issue 15): a blob uploaded by one device through an in-process
//! relay over loopback QUIC and downloaded by another, against a plain QUIC stream copy of
//! the same number of bytes in the same run; the process's peak resident memory after each
//! step (the blob is a file, never held whole in memory).
//!
//! `cargo run --release --example media_transfer -- --mib 100`

use anyhow::{bail, Context, Result};
use clap::Parser;
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use tidings::engine::{ConversationId, DeviceKey, UserId};
use tidings::relay::config::RelayConfig;
use tidings::relay::server;
use tidings::replica::{Body, MediaDirection, MediaSource, Replica, ReplicaConfig, Update};

#[derive(Parser, Debug)]
struct Args {
    /// Blob size in MiB.
    #[arg(long, default_value_t = 100)]
    mib: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let len = args.mib * 1024 * 1024;
    let tmp = tempfile::tempdir()?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let hwm0 = peak_rss_kib();

    // The plain copy first: the same bytes on one QUIC stream, nothing else.
    let plain = plain_quic_copy(len).await?;
    println!(
        "plain QUIC stream copy: {} MiB in {:.3} s = {:.1} MiB/s",
        args.mib,
        plain.as_secs_f64(),
        args.mib as f64 / plain.as_secs_f64()
    );

    let relay = server::start(RelayConfig::dev(tmp.path().join("relay"))).await?;
    let alice = open(tmp.path(), "alice", 1, &relay).await?;
    let bob = open(tmp.path(), "bob", 2, &relay).await?;
    let conv = ConversationId([0x6d; 16]);
    alice.create_conversation(conv, vec![bob.user()]).await?;
    let start = Instant::now();
    loop {
        let invited = bob.invitations().await?;
        if invited.iter().any(|i| i.conversation == conv) {
            bob.accept(conv).await?;
            break;
        }
        if start.elapsed() > timeout {
            bail!("no invitation");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while alice.connection().await?.state != tidings::replica::ConnectionState::Online {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The app's file, written in 1 MiB steps.
    let file = tmp.path().join("video.mp4");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let mut chunk = vec![0u8; 1024 * 1024];
        for i in 0..args.mib {
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = (i as usize * 7 + j * 13) as u8;
            }
            f.write_all(&chunk)?;
        }
        f.flush()?;
    }
    let hwm_before = peak_rss_kib();

    let mut updates = alice.updates();
    let t0 = Instant::now();
    let id = alice
        .send_media(
            conv,
            MediaSource::File(file.clone()),
            b"clip".to_vec(),
            "video/mp4",
            Vec::new(),
        )
        .await?;
    let sealed = t0.elapsed();
    let t1 = Instant::now();
    let total = tidings::engine::media::cipher_len(len);
    loop {
        let u = tokio::time::timeout(timeout, updates.next())
            .await
            .context("upload timed out")?
            .context("updates ended")?;
        if let Update::MediaProgress {
            direction: MediaDirection::Upload,
            done,
            ..
        } = u
        {
            if done == total {
                break;
            }
        }
    }
    let upload = t1.elapsed();
    let hwm_upload = peak_rss_kib();
    println!(
        "send_media returned (sealed {} MiB to the device's media dir) in {:.3} s",
        args.mib,
        sealed.as_secs_f64()
    );
    println!(
        "upload to the relay: {:.3} s = {:.1} MiB/s ({:.2}x the plain copy)",
        upload.as_secs_f64(),
        args.mib as f64 / upload.as_secs_f64(),
        plain.as_secs_f64() / upload.as_secs_f64()
    );

    // Bob: the message, then the blob on demand.
    let media = loop {
        let page = bob.page(conv, None, 10).await?;
        if let Some(m) = page.into_iter().find_map(|m| match m.body {
            Body::Media(b) if m.view.id == id => Some(b.media[0].clone()),
            _ => None,
        }) {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let t2 = Instant::now();
    let first = bob.fetch_media_range(conv, &media, 0..64 * 1024).await?;
    let first_range = t2.elapsed();
    assert_eq!(first.len(), 64 * 1024);
    let dest = tmp.path().join("bob-video.mp4");
    let t3 = Instant::now();
    bob.download_media(conv, &media, &dest).await?;
    let download = t3.elapsed();
    let hwm_download = peak_rss_kib();
    if !same_file(&file, &dest)? {
        bail!("the downloaded file differs");
    }
    println!(
        "time to the first playable range (64 KiB): {:.1} ms",
        first_range.as_secs_f64() * 1000.0
    );
    println!(
        "download and decrypt: {:.3} s = {:.1} MiB/s ({:.2}x the plain copy)",
        download.as_secs_f64(),
        args.mib as f64 / download.as_secs_f64(),
        plain.as_secs_f64() / download.as_secs_f64()
    );
    println!(
        "peak RSS (whole process: relay, two devices, plain copy): start {} MiB, before send {} MiB, after upload {} MiB, after download {} MiB",
        hwm0 / 1024,
        hwm_before / 1024,
        hwm_upload / 1024,
        hwm_download / 1024
    );
    alice.close().await?;
    bob.close().await?;
    relay.shutdown().await?;
    Ok(())
}

async fn open(dir: &Path, name: &str, seed: u8, relay: &server::RelayHandle) -> Result<Replica> {
    let user_key = SigningKey::from_bytes(&[seed; 32]);
    let user = UserId(user_key.verifying_key().to_bytes());
    let key = DeviceKey::from_seed([seed ^ 0x55; 32], user);
    let mut config = ReplicaConfig::new(relay.addr(), relay.relay_id(), relay.fingerprint());
    config.device.registration = Some(key.certificate(&user_key, 0));
    Ok(Replica::open(dir.join(name), key, config).await?)
}

/// Copies `len` bytes on one QUIC stream over loopback (1 MiB writes) and waits for the
/// receiver's one-byte answer.
async fn plain_quic_copy(len: u64) -> Result<Duration> {
    let identity = tidings::relay::RelayIdentity::generate([7; 32])?;
    let server = tidings::relay::server_endpoint(
        &identity,
        "127.0.0.1:0".parse()?,
        30,
        tidings::relay::limits::UDP_BUFFER_BYTES,
    )?;
    let addr = server.local_addr()?;
    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.context("accept")?.await?;
        let (mut send, mut recv) = conn.accept_bi().await?;
        let mut buf = vec![0u8; 1024 * 1024];
        let mut got = 0u64;
        while let Some(n) = recv.read(&mut buf).await? {
            got += n as u64;
        }
        send.write_all(&[1]).await?;
        send.finish()?;
        let _ = send.stopped().await;
        anyhow::Ok(got)
    });
    let client = tidings::relay::client::client_endpoint("127.0.0.1:0".parse()?)?;
    let config = tidings::relay::client::client_config(identity.fingerprint())?;
    let start = Instant::now();
    let conn = client.connect_with(config, addr, "tidings-relay")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let chunk = vec![0x5au8; 1024 * 1024];
    let mut sent = 0;
    while sent < len {
        let n = (len - sent).min(chunk.len() as u64) as usize;
        send.write_all(&chunk[..n]).await?;
        sent += n as u64;
    }
    send.finish()?;
    let mut ack = [0u8; 1];
    recv.read_exact(&mut ack).await?;
    let took = start.elapsed();
    let got = receiver.await??;
    if got != len {
        bail!("plain copy received {got} of {len}");
    }
    Ok(took)
}

fn same_file(a: &Path, b: &Path) -> Result<bool> {
    use std::io::Read;
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba)?;
        let mut nb = 0;
        while nb < na {
            let n = fb.read(&mut bb[nb..na])?;
            if n == 0 {
                return Ok(false);
            }
            nb += n;
        }
        if na == 0 {
            return Ok(fb.read(&mut bb)? == 0);
        }
        if ba[..na] != bb[..na] {
            return Ok(false);
        }
    }
}

/// The process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
