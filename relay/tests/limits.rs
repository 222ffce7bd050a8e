//! Relay resource limits over real QUIC on 127.0.0.1 (issue 12): the handshake deadline,
//! nothing read or verified for strangers beyond Hello/Auth, every request kind metered, and a
//! short flood. Waits are bounded; nothing asserts a duration.

use anyhow::{bail, Result};
use ed25519_dalek::SigningKey;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tidings_engine::wire::{self, ClientFrame, Envelope, ErrorCode, ServerFrame};
use tidings_engine::{ConversationId, DeviceKey, Event, EventKind, UserId};
use tidings_relay::client::{client_config, client_endpoint, RelayClient, SERVER_NAME};
use tidings_relay::{Limits, RelayConfig, RelayHandle};

const WAIT: Duration = Duration::from_secs(10);

fn user_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn user_id(seed: u8) -> UserId {
    UserId(user_key(seed).verifying_key().to_bytes())
}

async fn start(dir: &std::path::Path, limits: Limits, idle_secs: u64) -> Result<RelayHandle> {
    let mut config = RelayConfig::dev(dir).with_limits(limits);
    config.idle_timeout_secs = idle_secs;
    Ok(tidings_relay::start(config).await?)
}

fn endpoint() -> Result<quinn::Endpoint> {
    Ok(client_endpoint("127.0.0.1:0".parse::<SocketAddr>()?)?)
}

/// A client config that keeps the connection alive every 100 ms and, if `window` is given,
/// lets the relay send at most that many unread bytes on the stream.
fn config(relay: &RelayHandle, window: Option<u32>) -> Result<quinn::ClientConfig> {
    let mut c = client_config(relay.fingerprint())?;
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_millis(100)));
    if let Some(w) = window {
        t.stream_receive_window(w.into());
        t.receive_window(w.into());
    }
    c.transport_config(Arc::new(t));
    Ok(c)
}

async fn raw(
    ep: &quinn::Endpoint,
    relay: &RelayHandle,
    window: Option<u32>,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let conn = ep
        .connect_with(config(relay, window)?, relay.addr(), SERVER_NAME)?
        .await?;
    let (send, recv) = conn.open_bi().await?;
    Ok((conn, send, recv))
}

async fn send_frame(send: &mut quinn::SendStream, f: &ClientFrame) -> Result<()> {
    send.write_all(&wire::frame_bytes(f)?).await?;
    Ok(())
}

async fn read_frame(recv: &mut quinn::RecvStream) -> Result<ServerFrame> {
    let mut header = [0u8; 4];
    tokio::time::timeout(WAIT, recv.read_exact(&mut header)).await??;
    let len = wire::decode_len(header, wire::MAX_FRAME_LEN)?;
    let mut body = vec![0u8; len];
    tokio::time::timeout(WAIT, recv.read_exact(&mut body)).await??;
    Ok(wire::decode_body(&body)?)
}

fn hello(key: &DeviceKey) -> ClientFrame {
    ClientFrame::Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        device: key.device(),
        user: key.user(),
    }
}

/// Hello, Challenge, Auth, Welcome on a raw connection; registers the device if needed.
async fn raw_device(
    ep: &quinn::Endpoint,
    relay: &RelayHandle,
    window: Option<u32>,
    user_seed: u8,
    key: &DeviceKey,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let (conn, mut send, mut recv) = raw(ep, relay, window).await?;
    send_frame(&mut send, &hello(key)).await?;
    let ServerFrame::Challenge { nonce } = read_frame(&mut recv).await? else {
        bail!("no challenge")
    };
    let mut binding = [0u8; wire::TLS_BINDING_LEN];
    conn.export_keying_material(&mut binding, wire::TLS_EXPORTER_LABEL, b"")
        .map_err(|_| anyhow::anyhow!("export"))?;
    let signature = wire::sign_auth(key.signing_key(), &key.user(), &nonce, &binding);
    send_frame(&mut send, &ClientFrame::Auth { signature }).await?;
    let ServerFrame::Welcome(w) = read_frame(&mut recv).await? else {
        bail!("no welcome")
    };
    if !w.registered {
        let registration = wire::DeviceRegistration::sign(
            &user_key(user_seed),
            key.device(),
            key.agreement_public().0,
            1,
        );
        send_frame(
            &mut send,
            &ClientFrame::RegisterDevice {
                request_id: 1,
                registration,
            },
        )
        .await?;
        let f = read_frame(&mut recv).await?;
        if !matches!(f, ServerFrame::Registered { .. }) {
            bail!("not registered: {f:?}")
        }
    }
    Ok((conn, send, recv))
}

/// The application close code of a closed connection.
fn close_code(e: &quinn::ConnectionError) -> Option<u16> {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            u16::try_from(c.error_code.into_inner()).ok()
        }
        _ => None,
    }
}

/// Waits until the relay's count of requests read stops moving (or reaches `all`).
async fn requests_read_settled(relay: &RelayHandle, all: u64) -> u64 {
    let mut last = relay.metrics().requests_read();
    let mut still = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = relay.metrics().requests_read();
        if now >= all {
            return now;
        }
        still = if now == last { still + 1 } else { 0 };
        if still >= 5 {
            return now;
        }
        last = now;
    }
    last
}

/// Unauthenticated connections are closed at the handshake deadline whatever keep-alives they
/// send (with no stream, and after Hello); an authenticated one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_deadline_closes_strangers_despite_keepalive() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let limits = Limits::default().with_handshake_timeout_ms(300);
    let relay = start(dir.path(), limits, 1).await?;
    let ep = endpoint()?;
    let key = DeviceKey::from_seed([11; 32], user_id(1));
    let (_honest, mut honest_send, mut honest_recv) =
        raw_device(&ep, &relay, None, 1, &key).await?;

    let silent = ep
        .connect_with(config(&relay, None)?, relay.addr(), SERVER_NAME)?
        .await?;
    let (after_hello, mut send, mut recv) = raw(&ep, &relay, None).await?;
    let stranger = DeviceKey::from_seed([12; 32], user_id(2));
    send_frame(&mut send, &hello(&stranger)).await?;
    assert!(matches!(
        read_frame(&mut recv).await?,
        ServerFrame::Challenge { .. }
    ));
    for conn in [&silent, &after_hello] {
        // Keep-alives every 100 ms defeat the 1 s idle timeout; only the deadline closes it.
        let Ok(e) = tokio::time::timeout(WAIT, conn.closed()).await else {
            bail!("an unauthenticated connection is still open after {WAIT:?}")
        };
        assert_eq!(close_code(&e), Some(ErrorCode::AUTH_FAILED.0), "{e}");
    }
    assert!(relay.metrics().handshake_timeouts() >= 2);
    // The authenticated device is past its handshake: still served.
    send_frame(
        &mut honest_send,
        &ClientFrame::Sync {
            request_id: 7,
            after: None,
        },
    )
    .await?;
    assert!(matches!(
        read_frame(&mut honest_recv).await?,
        ServerFrame::Conversations { .. }
    ));
    relay.shutdown().await?;
    Ok(())
}

/// Before authentication the relay reads only small frames and decodes only Hello and Auth:
/// a large frame is refused by its length, a Submit by its kind, and no signature is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_get_nothing_read_or_verified() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path(), Limits::default(), 30).await?;
    let ep = endpoint()?;
    let key = DeviceKey::from_seed([21; 32], user_id(2));
    let h = key.header(ConversationId([1; 16]), 1, None, 1, 1);
    let ev = Event::sign(
        key.signing_key(),
        h,
        EventKind::Create {
            members: vec![user_id(2)],
        },
    )?;
    let small = ClientFrame::Submit {
        request_id: 1,
        events: vec![Envelope(ev.bytes().to_vec())],
    };
    let large = ClientFrame::Submit {
        request_id: 2,
        events: vec![Envelope(ev.bytes().to_vec()); 200],
    };
    // A large Submit before Hello: refused by its length, before its body is read.
    let (_c, mut send, mut recv) = raw(&ep, &relay, None).await?;
    send_frame(&mut send, &large).await?;
    match read_frame(&mut recv).await? {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::FRAME_TOO_LARGE),
        f => bail!("{f:?}"),
    }
    // A small Submit, before Hello and between Hello and Auth: refused, nothing verified.
    for say_hello in [false, true] {
        let (_c, mut send, mut recv) = raw(&ep, &relay, None).await?;
        if say_hello {
            send_frame(&mut send, &hello(&key)).await?;
            assert!(matches!(
                read_frame(&mut recv).await?,
                ServerFrame::Challenge { .. }
            ));
        }
        send_frame(&mut send, &small).await?;
        match read_frame(&mut recv).await? {
            ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::UNEXPECTED_FRAME),
            f => bail!("{f:?}"),
        }
    }
    assert_eq!(
        relay.metrics().envelopes_verified(),
        0,
        "a signature was checked for an unauthenticated connection"
    );
    // The counter counts: an authenticated device's Submit is verified.
    let (_c, mut send, mut recv) = raw_device(&ep, &relay, None, 2, &key).await?;
    send_frame(&mut send, &small).await?;
    assert!(matches!(
        read_frame(&mut recv).await?,
        ServerFrame::SubmitResult { .. }
    ));
    assert_eq!(relay.metrics().envelopes_verified(), 1);
    relay.shutdown().await?;
    Ok(())
}

/// `Devices` and `Revoke` are metered like every request (refused ones included): a device
/// that pipelines them and reads nothing gets at most its in-flight allowance read, plus what
/// its own receive window absorbed; every request is answered once it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_kind_is_metered() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let limits = Limits {
        max_inflight_requests: 4,
        ..Limits::default()
    };
    let relay = start(dir.path(), limits, 30).await?;
    let ep = endpoint()?;
    let key = DeviceKey::from_seed([31; 32], user_id(3));
    const WINDOW: u32 = 2048;
    let (_c, mut send, mut recv) = raw_device(&ep, &relay, Some(WINDOW), 3, &key).await?;
    let devices = |i: u64| ClientFrame::Devices {
        request_id: 100 + i,
        users: vec![user_id(3)],
        after: None,
    };
    // A refused Revoke: the user does not own the device.
    let revoke = |i: u64| ClientFrame::Revoke {
        request_id: 100 + i,
        revocation: wire::DeviceRevocation::sign(&user_key(4), key.device(), 1),
    };
    const N: u64 = 200;
    let mut bytes = Vec::new();
    for i in 0..N {
        let f = if i % 2 == 0 { devices(i) } else { revoke(i) };
        wire::encode_frame(&f, &mut bytes)?;
    }
    let before = relay.metrics().requests_read();
    send.write_all(&bytes).await?;
    let read = requests_read_settled(&relay, before + N).await - before;
    // The smallest answer bounds how many the window can absorb.
    let refused = ServerFrame::Refused {
        request_id: 100,
        code: ErrorCode::BAD_REVOCATION,
        message: "the device is not registered to the revoking user".into(),
    };
    let absorbed = WINDOW as u64 / wire::encoded_len(&refused) as u64;
    let bound = 4 + absorbed + 1;
    assert!(
        read <= bound,
        "{read} requests read from a device that reads nothing (bound {bound})"
    );
    // Reading, the device gets one answer per request.
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < N as usize {
        let f = read_frame(&mut recv).await?;
        let Some(id) = f.answers() else { continue };
        assert!(answered.insert(id), "two answers to {id}");
    }
    relay.shutdown().await?;
    Ok(())
}

/// Peak growth of this test binary's resident memory the short flood may cause: the relay's
/// side of at most `FLOOD_PENDING` stranger connections plus the 500 client sides, the member's
/// metered queue and the honest device (measured at about 30 MiB; the bound leaves room for
/// the other tests of this binary running at the same time).
const FLOOD_RSS_GROWTH_MIB: u64 = 256;
const FLOOD_ADDRESSES: u8 = 5;
const FLOOD_PER_ADDRESS: usize = 100;
const FLOOD_PER_PREFIX: usize = 64;
const FLOOD_PENDING: usize = 200;
const FLOOD_RETRY_FROM: usize = 100;
/// How long a stranger waits for its handshake: long, so that a loaded machine slows the test
/// rather than failing it.
const STRANGER_WAIT: Duration = Duration::from_secs(60);

/// This process's resident memory and its peak, in MiB (`/proc/self/status`).
fn rss_mib() -> Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/self/status"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("bad line {line}"))?
            .parse()?;
        Ok(kib / 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Strangers that hold what they get.
struct Strangers {
    conns: Vec<quinn::Connection>,
    _endpoints: Vec<quinn::Endpoint>,
    /// Refused by the relay before the handshake completed (`CONNECTION_REFUSED`).
    refused: usize,
}

/// One connection attempt per stranger, `per_address` strangers from each of `addresses`
/// loopback addresses 127.0.1.x, all at once.
async fn strangers(relay: &RelayHandle, addresses: u8, per_address: usize) -> Result<Strangers> {
    let mut cfg = client_config(relay.fingerprint())?;
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_millis(500)));
    // A handshake packet the kernel dropped (a full socket buffer) is sent again after a timeout
    // that doubles each time: the stranger keeps trying for as long as it waits.
    t.max_idle_timeout(Some(STRANGER_WAIT.try_into()?));
    cfg.transport_config(Arc::new(t));
    let mut tasks = tokio::task::JoinSet::new();
    let mut endpoints = Vec::new();
    for a in 1..=addresses {
        let ep = client_endpoint(format!("127.0.1.{a}:0").parse()?)?;
        for _ in 0..per_address {
            let connecting = ep.connect_with(cfg.clone(), relay.addr(), SERVER_NAME)?;
            tasks.spawn(async move { tokio::time::timeout(STRANGER_WAIT, connecting).await });
        }
        endpoints.push(ep);
    }
    let mut s = Strangers {
        conns: Vec::new(),
        _endpoints: endpoints,
        refused: 0,
    };
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(Ok(c)) => s.conns.push(c),
            Ok(Err(quinn::ConnectionError::ConnectionClosed(c)))
                if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                s.refused += 1
            }
            Ok(Err(e)) => bail!("a stranger's connection failed otherwise: {e}"),
            Err(_) => bail!("a stranger's connection neither completed nor was refused"),
        }
    }
    Ok(s)
}

/// A short flood over real QUIC: 500 strangers from five addresses hold what they get while a
/// member pipelines 1,000 `Devices` requests. Strangers past the per-prefix limit or the
/// pending-handshake cap are refused on their first packet, before the handshake completes
/// (the relay's metric counts each at least once); past the retry threshold the relay asks for
/// address validation; the honest device's sends are all acknowledged; the process's resident
/// memory grows by less than [`FLOOD_RSS_GROWTH_MIB`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_flood_is_refused_before_the_handshake() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The handshake deadline outlasts the flood: no stranger's slot is freed while others still
    // try, so the counts below are exact however slow the machine.
    let limits = Limits::default()
        .with_connections_per_prefix(FLOOD_PER_PREFIX)
        .with_pending_handshakes(FLOOD_PENDING, FLOOD_RETRY_FROM)
        .with_handshake_timeout_ms(3_000 * STRANGER_WAIT.as_secs());
    let relay = start(dir.path(), limits, 3 * STRANGER_WAIT.as_secs()).await?;
    let (rss_start, _) = rss_mib()?;

    let honest_ep = client_endpoint("127.0.0.2:0".parse()?)?;
    let honest_key = DeviceKey::from_seed([41; 32], user_id(4));
    let mut honest =
        RelayClient::connect(&honest_ep, relay.addr(), relay.fingerprint(), &honest_key).await?;
    honest
        .register(
            &user_key(4),
            honest_key.device(),
            honest_key.agreement_public().0,
            1,
        )
        .await?;
    let member_ep = client_endpoint("127.0.0.3:0".parse()?)?;
    let member_key = DeviceKey::from_seed([51; 32], user_id(5));
    let mut member =
        RelayClient::connect(&member_ep, relay.addr(), relay.fingerprint(), &member_key).await?;
    member
        .register(
            &user_key(5),
            member_key.device(),
            member_key.agreement_public().0,
            1,
        )
        .await?;
    let mut bytes = Vec::new();
    for i in 0..1_000u64 {
        let f = ClientFrame::Devices {
            request_id: 1_000 + i,
            users: vec![user_id(4), user_id(5)],
            after: None,
        };
        wire::encode_frame(&f, &mut bytes)?;
    }
    // The member never reads its answers: the relay stops reading it (metered).
    let member_task = tokio::spawn(async move {
        let _ = tokio::time::timeout(WAIT, member.send_raw(&bytes)).await;
        member
    });

    let flood = strangers(&relay, FLOOD_ADDRESSES, FLOOD_PER_ADDRESS).await?;
    let conv = ConversationId([4; 16]);
    let mut prev = None;
    for n in 1..=50u64 {
        let kind = if n == 1 {
            EventKind::Create {
                members: vec![user_id(4), user_id(5)],
            }
        } else {
            EventKind::Send {
                message: tidings_engine::MessageId::default(),
                body: format!("m{n}").into_bytes(),
                media: vec![],
            }
        };
        let h = honest_key.header(conv, n, prev, n, 1);
        let kind = h.bind(kind);
        let ev = Event::sign(honest_key.signing_key(), h, kind)?;
        prev = Some(ev.id());
        let out = honest.submit(&[ev]).await?;
        assert!(
            matches!(out[..], [wire::SubmitOutcome::Accepted { .. }]),
            "honest send {n} under the flood: {out:?}"
        );
    }
    let (_, rss_peak) = rss_mib()?;

    println!(
        "short flood: {} strangers completed the handshake, {} refused before it, {} Retry \
         packets; RSS {rss_start} MiB at start, peak {rss_peak} MiB",
        flood.conns.len(),
        flood.refused,
        relay.metrics().address_validations()
    );
    let past_prefix = usize::from(FLOOD_ADDRESSES) * (FLOOD_PER_ADDRESS - FLOOD_PER_PREFIX);
    assert!(
        flood.refused >= past_prefix,
        "{past_prefix} strangers are past the prefix limit; {} were refused before the handshake \
         ({} completed it)",
        flood.refused,
        flood.conns.len()
    );
    assert!(
        flood.conns.len() <= FLOOD_PENDING,
        "{} strangers completed their handshake past the pending cap {FLOOD_PENDING}",
        flood.conns.len()
    );
    assert_eq!(
        flood.conns.len() + flood.refused,
        usize::from(FLOOD_ADDRESSES) * FLOOD_PER_ADDRESS
    );
    // At least once each: a stranger's Initial packet sent again (lost reply, retransmit
    // timer) is refused again.
    assert!(
        relay.metrics().refused_before_handshake() >= flood.refused as u64,
        "the relay counted {} connections refused on their first packet, the strangers saw {}",
        relay.metrics().refused_before_handshake(),
        flood.refused
    );
    assert!(
        relay.metrics().address_validations() > 0,
        "past {FLOOD_RETRY_FROM} pending handshakes, unvalidated peers are asked to validate"
    );
    assert!(
        rss_peak.saturating_sub(rss_start) < FLOOD_RSS_GROWTH_MIB,
        "resident memory grew from {rss_start} MiB to a peak of {rss_peak} MiB"
    );
    member_task.abort();
    drop(flood);
    relay.shutdown().await?;
    Ok(())
}
