//! End-to-end over real QUIC on 127.0.0.1: relays started in-process, devices using the
//! reference client. Waits are bounded by timeouts; nothing asserts a duration.

use anyhow::{bail, Context, Result};
use ed25519_dalek::SigningKey;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tidings_engine::wire::{self, ClientFrame, ErrorCode, SubmitOutcome};
use tidings_engine::{
    ConversationId, DeviceKey, Event, EventId, EventKind, MessageId, ServerSeq, UserId,
};
use tidings_relay::client::{client_endpoint, ClientError, Placed, RelayClient};
use tidings_relay::{Limits, RelayConfig, RelayHandle};

const WAIT: Duration = Duration::from_secs(10);
const CONV: ConversationId = ConversationId([7; 16]);

fn user_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn user_id(seed: u8) -> UserId {
    UserId(user_key(seed).verifying_key().to_bytes())
}

struct Device {
    key: DeviceKey,
    user_seed: u8,
    counter: u64,
    /// Id of the device's last event (its chain's head).
    last: Option<EventId>,
    client: RelayClient,
}

async fn start(dir: &Path, limits: Limits) -> Result<RelayHandle> {
    let config = RelayConfig::dev(dir)
        .with_limits(limits)
        .with_metrics(Some("127.0.0.1:0".parse()?));
    Ok(tidings_relay::start(config).await?)
}

async fn connect(
    ep: &quinn::Endpoint,
    relay: &RelayHandle,
    user_seed: u8,
    dev_seed: u8,
) -> Result<Device> {
    let key = DeviceKey::from_seed([dev_seed; 32], user_id(user_seed));
    let mut client = RelayClient::connect(ep, relay.addr(), relay.fingerprint(), &key).await?;
    assert_eq!(client.welcome().relay, relay.relay_id());
    if !client.welcome().registered {
        client
            .register(
                &user_key(user_seed),
                key.device(),
                key.agreement_public().0,
                1,
            )
            .await?;
    }
    client.sync().await?;
    Ok(Device {
        key,
        user_seed,
        counter: 0,
        last: None,
        client,
    })
}

async fn reconnect(ep: &quinn::Endpoint, relay: &RelayHandle, d: Device) -> Result<Device> {
    let seed = d.key.seed()[0];
    let counter = d.counter;
    let mut fresh = connect(ep, relay, d.user_seed, seed).await?;
    fresh.counter = counter;
    fresh.last = d.last;
    Ok(fresh)
}

impl Device {
    fn event(&mut self, kind: EventKind) -> Event {
        self.counter += 1;
        let h = self
            .key
            .header(CONV, self.counter, self.last, self.counter, 1);
        let kind = h.bind(kind);
        let ev = Event::sign(self.key.signing_key(), h, kind).expect("sign");
        self.last = Some(ev.id());
        ev
    }

    fn create(&mut self, members: &[u8]) -> Event {
        let members = members.iter().map(|&m| user_id(m)).collect();
        self.event(EventKind::Create { members })
    }

    fn send(&mut self, text: &str) -> Event {
        self.event(EventKind::Send {
            message: MessageId::default(),
            body: text.as_bytes().to_vec(),
            media: vec![],
        })
    }

    async fn submit_ok(&mut self, events: &[Event]) -> Result<Vec<ServerSeq>> {
        let outcomes = self.client.submit(events).await?;
        outcomes.iter().map(seq_of).collect()
    }

    /// Collects pushed events until `n` arrived.
    async fn pushed(&mut self, n: usize) -> Result<Vec<(Event, ServerSeq)>> {
        let mut out = Vec::new();
        while out.len() < n {
            for it in self.client.next_push(WAIT).await? {
                out.push(decode(&it)?);
            }
        }
        Ok(out)
    }
}

fn seq_of(o: &SubmitOutcome) -> Result<ServerSeq> {
    match o {
        SubmitOutcome::Accepted { seq } => Ok(*seq),
        SubmitOutcome::Rejected { code, reason } => bail!("rejected {code}: {reason}"),
    }
}

fn code_of(o: &SubmitOutcome) -> Option<ErrorCode> {
    match o {
        SubmitOutcome::Rejected { code, .. } => Some(*code),
        SubmitOutcome::Accepted { .. } => None,
    }
}

/// A placed event as (event, seq); the client checked the statement that places it.
fn decode(it: &Placed) -> Result<(Event, ServerSeq)> {
    Ok((it.event.clone(), it.seq))
}

fn endpoint() -> Result<quinn::Endpoint> {
    Ok(client_endpoint("127.0.0.1:0".parse::<SocketAddr>()?)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_three_devices() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path(), Limits::default()).await?;
    let ep = endpoint()?;
    let mut alice_phone = connect(&ep, &relay, 1, 11).await?;
    let mut alice_laptop = connect(&ep, &relay, 1, 12).await?;
    let mut bob = connect(&ep, &relay, 2, 21).await?;

    // Submit and ack; fan-out to Alice's laptop, not back to the phone, and to Bob once he
    // accepted the invitation (he pulls the Create).
    let create = alice_phone.create(&[1, 2]);
    let hello = alice_phone.send("Just took off");
    assert_eq!(
        alice_phone.submit_ok(std::slice::from_ref(&create)).await?,
        vec![1]
    );
    bob.client.accept(CONV).await?;
    assert_eq!(
        alice_phone.submit_ok(std::slice::from_ref(&hello)).await?,
        vec![2]
    );
    let got = alice_laptop.pushed(2).await?;
    assert_eq!(got[0].0.id(), create.id());
    assert_eq!((got[1].0.id(), got[1].1), (hello.id(), 2));
    alice_laptop.client.received(CONV, 2).await?;
    let got = bob.pushed(1).await?;
    assert_eq!((got[0].0.id(), got[0].1), (hello.id(), 2));
    assert_eq!(bob.client.pull(CONV, 0, 1).await?.0.len(), 1);
    bob.client.received(CONV, 2).await?;

    // Resubmission: same sequence, nothing stored twice.
    assert_eq!(
        alice_phone.submit_ok(std::slice::from_ref(&hello)).await?,
        vec![2]
    );

    // Bob goes offline; Alice sends three more; Bob comes back and pulls since his cursor.
    bob.client.close();
    let more: Vec<Event> = (0..3).map(|i| alice_phone.send(&format!("m{i}"))).collect();
    assert_eq!(alice_phone.submit_ok(&more).await?, vec![3, 4, 5]);
    let mut bob = reconnect(&ep, &relay, bob).await?;
    let convs = bob.client.sync().await?;
    assert_eq!(convs.len(), 1);
    assert_eq!((convs[0].max_seq, convs[0].cursor), (5, 2));
    let missed = bob.client.pull_all(CONV, convs[0].cursor).await?;
    let ids: Vec<_> = missed
        .iter()
        .map(|it| decode(it).map(|(e, _)| e.id()))
        .collect::<Result<_>>()?;
    assert_eq!(ids, more.iter().map(|e| e.id()).collect::<Vec<_>>());

    // Bob's receipt reaches both of Alice's devices.
    let read = bob.event(EventKind::Read {
        up_to: 5,
        head: None,
    });
    assert_eq!(bob.submit_ok(std::slice::from_ref(&read)).await?, vec![6]);
    let laptop_view = alice_laptop.pushed(4).await?;
    assert_eq!(
        laptop_view.last().map(|(e, s)| (e.id(), *s)),
        Some((read.id(), 6))
    );
    let phone_view = alice_phone.pushed(1).await?;
    assert_eq!(phone_view[0].0.id(), read.id());

    // The metrics endpoint reports what happened.
    let text = fetch_metrics(relay.metrics_addr().context("metrics")?).await?;
    assert!(
        text.contains("tidings_relay_events_accepted_total 6"),
        "{text}"
    );
    assert!(text.contains("tidings_relay_connected_devices 3"), "{text}");
    assert!(
        text.contains("tidings_relay_device_backlog_events{device="),
        "{text}"
    );
    relay.shutdown().await?;
    Ok(())
}

async fn fetch_metrics(addr: SocketAddr) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out)).await??;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path(), Limits::default()).await?;
    let ep = endpoint()?;
    let mut alice = connect(&ep, &relay, 1, 11).await?;
    let mut eve = connect(&ep, &relay, 3, 31).await?;
    let create = alice.create(&[1, 2]);
    alice.submit_ok(&[create]).await?;

    // A non-member cannot submit or pull.
    let intrusion = eve.send("hi");
    let out = eve.client.submit(&[intrusion]).await?;
    assert_eq!(code_of(&out[0]), Some(ErrorCode::NOT_MEMBER));
    match eve.client.pull(CONV, 0, 10).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::NOT_MEMBER),
        other => bail!("pull by a non-member: {other:?}"),
    }
    // A forged signature.
    let real = alice.send("real");
    let mut forged = real.bytes().to_vec();
    forged[50] ^= 0x40;
    alice
        .client
        .send(&ClientFrame::Submit {
            request_id: 900,
            events: vec![wire::Envelope(forged)],
        })
        .await?;
    match alice.client.next_frame_within(WAIT).await? {
        wire::ServerFrame::SubmitResult { outcomes, .. } => {
            assert_eq!(code_of(&outcomes[0]), Some(ErrorCode::BAD_EVENT))
        }
        f => bail!("{f:?}"),
    }
    // The same device pretending to be a ServerAck author.
    let fake = alice.event(EventKind::ServerAck {
        event: real.id(),
        message: None,
        seq: 1,
        server_ts_ms: 0,
    });
    let out = alice.client.submit(&[fake]).await?;
    assert_eq!(code_of(&out[0]), Some(ErrorCode::FORBIDDEN_KIND));
    // ... or a sequencing statement's.
    let fake = alice.event(EventKind::Sequenced {
        entries: vec![tidings_engine::SeqEntry {
            event: real.id(),
            message: None,
            server_ts_ms: 0,
        }],
    });
    let out = alice.client.submit(&[fake]).await?;
    assert_eq!(code_of(&out[0]), Some(ErrorCode::FORBIDDEN_KIND));
    // Authentication with a key other than the one named in Hello: refused.
    let stranger = DeviceKey::from_seed([99; 32], user_id(1));
    let liar = DeviceKey::from_seed([98; 32], user_id(1));
    let (conn, mut send, mut recv) = raw(&ep, &relay).await?;
    send_frame(&mut send, &hello(&stranger, wire::PROTOCOL_VERSION)).await?;
    let wire::ServerFrame::Challenge { nonce } = read_frame(&mut recv).await? else {
        bail!("no challenge")
    };
    let mut binding = [0u8; wire::TLS_BINDING_LEN];
    conn.export_keying_material(&mut binding, wire::TLS_EXPORTER_LABEL, b"")
        .map_err(|_| anyhow::anyhow!("export"))?;
    let signature = wire::sign_auth(liar.signing_key(), &stranger.user(), &nonce, &binding);
    send_frame(&mut send, &ClientFrame::Auth { signature }).await?;
    match read_frame(&mut recv).await? {
        wire::ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::AUTH_FAILED),
        f => bail!("{f:?}"),
    }
    assert_eq!(alice.submit_ok(&[real]).await?, vec![2]);
    // Wrong certificate pin: no connection at all.
    let wrong: tidings_relay::Fingerprint = "00".repeat(32).parse()?;
    assert!(RelayClient::connect(&ep, relay.addr(), wrong, &stranger)
        .await
        .is_err());
    relay.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_that_connection() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path(), Limits::default()).await?;
    let ep = endpoint()?;
    let mut alice = connect(&ep, &relay, 1, 11).await?;
    let create = alice.create(&[1]);
    alice.submit_ok(&[create]).await?;

    // Oversized: a length prefix over the limit, refused before anything is read.
    let mut big = connect(&ep, &relay, 2, 21).await?;
    let len = (wire::MAX_FRAME_LEN as u32) + 1;
    big.client.send_raw(&len.to_be_bytes()).await?;
    match big.client.next_frame_within(WAIT).await {
        Err(ClientError::Relay { code, .. }) => assert_eq!(code, ErrorCode::FRAME_TOO_LARGE),
        other => bail!("oversized frame: {other:?}"),
    }
    // Garbage: a valid length with an undecodable body.
    let mut junk = connect(&ep, &relay, 3, 31).await?;
    let mut bytes = 5u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, 0x01, 0x02, 0x03]);
    junk.client.send_raw(&bytes).await?;
    match junk.client.next_frame_within(WAIT).await {
        Err(ClientError::Relay { code, .. }) => assert_eq!(code, ErrorCode::MALFORMED_FRAME),
        other => bail!("garbage frame: {other:?}"),
    }
    // A protocol version the relay does not speak, on a raw connection.
    let key = DeviceKey::from_seed([41; 32], user_id(4));
    let (_conn, mut send, mut recv) = raw(&ep, &relay).await?;
    send_frame(&mut send, &hello(&key, 99)).await?;
    match read_frame(&mut recv).await? {
        wire::ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::UNSUPPORTED_VERSION),
        f => bail!("{f:?}"),
    }

    // Alice's connection is untouched.
    let m = alice.send("still here");
    assert_eq!(alice.submit_ok(&[m]).await?, vec![2]);
    relay.shutdown().await?;
    Ok(())
}

async fn raw(
    ep: &quinn::Endpoint,
    relay: &RelayHandle,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let conn = ep
        .connect_with(
            tidings_relay::client::client_config(relay.fingerprint())?,
            relay.addr(),
            tidings_relay::client::SERVER_NAME,
        )?
        .await?;
    let (send, recv) = conn.open_bi().await?;
    Ok((conn, send, recv))
}

fn hello(key: &DeviceKey, protocol_version: u16) -> ClientFrame {
    ClientFrame::Hello {
        protocol_version,
        device: key.device(),
        user: key.user(),
    }
}

async fn send_frame(send: &mut quinn::SendStream, f: &ClientFrame) -> Result<()> {
    send.write_all(&wire::frame_bytes(f)?).await?;
    Ok(())
}

async fn read_frame(recv: &mut quinn::RecvStream) -> Result<wire::ServerFrame> {
    let mut header = [0u8; 4];
    tokio::time::timeout(WAIT, recv.read_exact(&mut header)).await??;
    let len = wire::decode_len(header, wire::MAX_FRAME_LEN)?;
    let mut body = vec![0u8; len];
    tokio::time::timeout(WAIT, recv.read_exact(&mut body)).await??;
    Ok(wire::decode_body(&body)?)
}

/// Sends `n` messages, returns the acked sequences.
async fn send_many(d: &mut Device, n: usize) -> Result<Vec<ServerSeq>> {
    let evs: Vec<Event> = (0..n).map(|i| d.send(&format!("n{i}"))).collect();
    d.submit_ok(&evs).await
}

async fn check_all_there(ep: &quinn::Endpoint, relay: &RelayHandle, upto: ServerSeq) -> Result<()> {
    let mut reader = connect(ep, relay, 2, 22).await?;
    let items = reader.client.pull_all(CONV, 0).await?;
    let seqs: Vec<ServerSeq> = items
        .iter()
        .map(|it| decode(it).map(|(_, s)| s))
        .collect::<Result<_>>()?;
    assert_eq!(seqs, (1..=upto).collect::<Vec<_>>());
    reader.client.close();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_acked_events_and_continues_the_sequence() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ep = endpoint()?;

    let relay = start(dir.path(), Limits::default()).await?;
    let id = (relay.relay_id(), relay.fingerprint().to_string());
    let mut alice = connect(&ep, &relay, 1, 11).await?;
    let create = alice.create(&[1, 2]);
    alice.submit_ok(&[create]).await?;
    assert_eq!(
        send_many(&mut alice, 20).await?,
        (2..=21).collect::<Vec<_>>()
    );
    // Graceful.
    relay.shutdown().await?;

    let relay = start(dir.path(), Limits::default()).await?;
    assert_eq!((relay.relay_id(), relay.fingerprint().to_string()), id);
    let mut alice = reconnect(&ep, &relay, alice).await?;
    check_all_there(&ep, &relay, 21).await?;
    assert_eq!(
        send_many(&mut alice, 5).await?,
        (22..=26).collect::<Vec<_>>()
    );
    // Abrupt: drop without shutdown while a submit may be in flight.
    let in_flight = alice.send("in flight");
    alice
        .client
        .submit_nowait(std::slice::from_ref(&in_flight))
        .await?;
    drop(relay);

    let relay = start(dir.path(), Limits::default()).await?;
    let mut alice = reconnect(&ep, &relay, alice).await?;
    // The in-flight event was either acked as 27 before the drop or never stored; resending
    // it gives 27 either way, and the next one 28: no gap, no reuse.
    assert_eq!(alice.submit_ok(&[in_flight]).await?, vec![27]);
    assert_eq!(send_many(&mut alice, 1).await?, vec![28]);
    check_all_there(&ep, &relay, 28).await?;
    relay.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_device_is_switched_to_pull_mode() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path(), Limits::default().with_push_window(8)).await?;
    let ep = endpoint()?;
    let mut alice = connect(&ep, &relay, 1, 11).await?;
    let mut bob = connect(&ep, &relay, 2, 21).await?;
    let create = alice.create(&[1, 2]);
    alice.submit_ok(&[create]).await?;
    bob.client.accept(CONV).await?;
    for _ in 0..4 {
        send_many(&mut alice, 5).await?;
    }
    // Bob never acknowledged: after the window he is told to pull.
    let mut n_pushed = 0;
    loop {
        match bob.client.next_frame_within(WAIT).await? {
            wire::ServerFrame::Push { events, .. } => n_pushed += events.len(),
            wire::ServerFrame::PullMode => break,
            wire::ServerFrame::UserChanged { .. } => {}
            f => bail!("{f:?}"),
        }
    }
    assert!(n_pushed <= 8);
    let all = bob.client.pull_all(CONV, 0).await?;
    assert_eq!(all.len(), 21);
    bob.client.received(CONV, 21).await?;
    bob.client.sync().await?;
    let m = alice.send("pushes again");
    alice.submit_ok(std::slice::from_ref(&m)).await?;
    assert_eq!(bob.pushed(1).await?[0].0.id(), m.id());
    relay.shutdown().await?;
    Ok(())
}

/// A relay process started from the binary, killed with SIGKILL.
struct RelayProcess {
    child: std::process::Child,
    addr: SocketAddr,
    fingerprint: tidings_relay::Fingerprint,
}

impl RelayProcess {
    fn spawn(dir: &Path) -> Result<RelayProcess> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidings-relay"))
            .arg("--dev")
            .arg("--data-dir")
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let (mut addr, mut fingerprint) = (None, None);
        while addr.is_none() || fingerprint.is_none() {
            let line = lines
                .next()
                .context("relay exited before printing its address")??;
            if let Some(a) = line.strip_prefix("tidings-relay listening on ") {
                addr = Some(a.trim().parse()?);
            }
            if let Some(f) = line.strip_prefix("certificate sha256:") {
                fingerprint = Some(f.parse()?);
            }
        }
        Ok(RelayProcess {
            child,
            addr: addr.context("addr")?,
            fingerprint: fingerprint.context("fingerprint")?,
        })
    }

    async fn connect(&self, ep: &quinn::Endpoint, user_seed: u8, dev_seed: u8) -> Result<Device> {
        let key = DeviceKey::from_seed([dev_seed; 32], user_id(user_seed));
        let mut client = RelayClient::connect(ep, self.addr, self.fingerprint, &key).await?;
        if !client.welcome().registered {
            client
                .register(
                    &user_key(user_seed),
                    key.device(),
                    key.agreement_public().0,
                    1,
                )
                .await?;
        }
        client.sync().await?;
        Ok(Device {
            key,
            user_seed,
            counter: 0,
            last: None,
            client,
        })
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acked_event() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ep = endpoint()?;
    let relay = RelayProcess::spawn(dir.path())?;
    let mut alice = relay.connect(&ep, 1, 11).await?;
    let create = alice.create(&[1]);
    alice.submit_ok(&[create]).await?;
    let mut acked = 1;
    for _ in 0..10 {
        acked = *send_many(&mut alice, 10).await?.last().context("acks")?;
    }
    // More in flight, unacknowledged, when the process is killed.
    let in_flight: Vec<Event> = (0..50).map(|i| alice.send(&format!("late {i}"))).collect();
    alice.client.submit_nowait(&in_flight).await?;
    drop(relay);

    let relay = RelayProcess::spawn(dir.path())?;
    let (counter, last) = (alice.counter, alice.last);
    let mut alice = relay.connect(&ep, 1, 11).await?;
    alice.counter = counter;
    alice.last = last;
    let stored = alice.client.pull_all(CONV, 0).await?;
    let seqs: Vec<ServerSeq> = stored
        .iter()
        .map(|it| decode(it).map(|(_, s)| s))
        .collect::<Result<_>>()?;
    // Every acked event is there, with no gap; some in-flight ones may be too.
    assert!(seqs.len() as u64 >= acked);
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    // Resending the in-flight batch: stored ones keep their sequence, the rest follow.
    let again = alice.submit_ok(&in_flight).await?;
    assert_eq!(again, (acked + 1..=acked + 50).collect::<Vec<_>>());
    Ok(())
}

/// Authenticates `key` over a raw connection and returns the relay's answer to Auth.
async fn auth_answer(
    ep: &quinn::Endpoint,
    relay: &RelayHandle,
    key: &DeviceKey,
) -> Result<wire::ServerFrame> {
    let (conn, mut send, mut recv) = raw(ep, relay).await?;
    send_frame(&mut send, &hello(key, wire::PROTOCOL_VERSION)).await?;
    let wire::ServerFrame::Challenge { nonce } = read_frame(&mut recv).await? else {
        bail!("no challenge")
    };
    let mut binding = [0u8; wire::TLS_BINDING_LEN];
    conn.export_keying_material(&mut binding, wire::TLS_EXPORTER_LABEL, b"")
        .map_err(|_| anyhow::anyhow!("export"))?;
    let signature = wire::sign_auth(key.signing_key(), &key.user(), &nonce, &binding);
    send_frame(&mut send, &ClientFrame::Auth { signature }).await?;
    read_frame(&mut recv).await
}

/// The attacks issue 6 lists that the relay must refuse, over real QUIC: writes by
/// non-members, non-admins, removed members and revoked devices; forks of a device's chain;
/// a revoked device's authentication; device lists for strangers. Every refusal has its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_revocation_and_chain_attacks_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path(), Limits::default()).await?;
    let ep = endpoint()?;
    let mut alice = connect(&ep, &relay, 1, 11).await?;
    let mut alice_laptop = connect(&ep, &relay, 1, 12).await?;
    let mut bob = connect(&ep, &relay, 2, 21).await?;
    let mut carol = connect(&ep, &relay, 3, 31).await?;
    let create = alice.create(&[1, 2]);
    let hello = alice.send("hello");
    assert_eq!(alice.submit_ok(&[create, hello.clone()]).await?, vec![1, 2]);

    // Carol is no member: she writes and reads nothing.
    let intrusion = carol.send("let me in");
    let out = carol.client.submit(&[intrusion]).await?;
    assert_eq!(code_of(&out[0]), Some(ErrorCode::NOT_MEMBER));
    match carol.client.pull(CONV, 0, 10).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::NOT_MEMBER),
        other => bail!("pull by a non-member: {other:?}"),
    }
    // Bob is a member but no admin: he cannot add Carol.
    let add_by_bob = bob.event(EventKind::AddMember {
        user: user_id(3),
        admin: false,
    });
    let out = bob.client.submit(&[add_by_bob]).await?;
    assert_eq!(code_of(&out[0]), Some(ErrorCode::FORBIDDEN));
    // The relay does not serve Carol's devices to Bob: they share no conversation.
    let (certs, _) = bob.client.devices(vec![user_id(1), user_id(3)]).await?;
    assert!(!certs.is_empty());
    assert!(certs.iter().all(|c| c.user == user_id(1) && c.verify()));
    assert!(certs
        .iter()
        .any(|c| c.device == alice.key.device() && c.agreement == alice.key.agreement_public().0));

    // Alice adds Carol, who can now read the conversation from the start.
    let add = alice.event(EventKind::AddMember {
        user: user_id(3),
        admin: false,
    });
    alice.submit_ok(&[add]).await?;
    let items = carol.client.pull_all(CONV, 0).await?;
    assert_eq!(items.len(), 3, "Create, hello and the AddMember");

    // Alice removes Bob: his writes and reads are refused from then on.
    let remove = alice.event(EventKind::RemoveMember { user: user_id(2) });
    alice.submit_ok(&[remove]).await?;
    let after = bob.send("still here?");
    let out = bob.client.submit(&[after]).await?;
    assert_eq!(code_of(&out[0]), Some(ErrorCode::NOT_MEMBER));
    match bob.client.pull(CONV, 0, 10).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::NOT_MEMBER),
        other => bail!("pull by a removed member: {other:?}"),
    }

    // Replays: the same event again is the same event (same seq, stored once); another event
    // signed for a place Alice's chain already used is a fork.
    assert_eq!(
        alice.submit_ok(std::slice::from_ref(&hello)).await?,
        vec![2]
    );
    let fork_header = alice.key.header(CONV, 2, hello.header().prev, 2, 1);
    let fork = Event::sign(
        alice.key.signing_key(),
        fork_header.clone(),
        EventKind::Send {
            message: fork_header.message_id(),
            body: b"other words".to_vec(),
            media: vec![],
        },
    )?;
    let out = alice.client.submit(&[fork]).await?;
    assert_eq!(code_of(&out[0]), Some(ErrorCode::CHAIN_FORK));
    // An event whose prev does not name the one before it breaks the chain.
    alice.counter += 1;
    let broken_header = alice
        .key
        .header(CONV, alice.counter, Some(hello.id()), 9, 1);
    let broken = Event::sign(
        alice.key.signing_key(),
        broken_header,
        EventKind::Read {
            up_to: 1,
            head: None,
        },
    )?;
    let out = alice.client.submit(&[broken]).await?;
    assert_eq!(code_of(&out[0]), Some(ErrorCode::BROKEN_CHAIN));
    alice.counter -= 1;

    // A revocation Carol forges for Alice's laptop is refused; Alice's own is stored.
    let forged = wire::DeviceRevocation::sign(&user_key(3), alice_laptop.key.device(), 5);
    let forged = wire::DeviceRevocation {
        user: user_id(1),
        ..forged
    };
    match carol.client.revoke(forged).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::BAD_REVOCATION),
        other => bail!("forged revocation: {other:?}"),
    }
    let revocation = wire::DeviceRevocation::sign(&user_key(1), alice_laptop.key.device(), 5);
    alice.client.revoke(revocation.clone()).await?;
    // The laptop can no longer submit, and cannot authenticate again.
    let late = alice_laptop.send("from the lost laptop");
    // (Or no answer at all: its session may be closed first.)
    if let Ok(out) = alice_laptop.client.submit(&[late]).await {
        assert_eq!(code_of(&out[0]), Some(ErrorCode::REVOKED));
    }
    match auth_answer(&ep, &relay, &alice_laptop.key).await? {
        wire::ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::REVOKED),
        f => bail!("a revoked device authenticated: {f:?}"),
    }
    // Co-members learn of the revocation, signed by Alice's user key.
    let (_, revocations) = carol.client.devices(vec![user_id(1)]).await?;
    assert_eq!(revocations, vec![revocation.clone()]);
    assert!(revocations[0].verify());

    // All of it holds after a restart.
    relay.shutdown().await?;
    let relay = start(dir.path(), Limits::default()).await?;
    match auth_answer(&ep, &relay, &alice_laptop.key).await? {
        wire::ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::REVOKED),
        f => bail!("a revoked device authenticated after a restart: {f:?}"),
    }
    let mut bob = reconnect(&ep, &relay, bob).await?;
    match bob.client.pull(CONV, 0, 10).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::NOT_MEMBER),
        other => bail!("pull by a removed member after a restart: {other:?}"),
    }
    relay.shutdown().await?;
    Ok(())
}

/// The first event of a conversation with the big-endian id `n` (it sorts before `CONV`).
fn create_numbered(d: &mut Device, n: u32, members: &[u8]) -> Event {
    let mut id = [0u8; 16];
    id[12..].copy_from_slice(&n.to_be_bytes());
    d.counter += 1;
    let h = d.key.header(ConversationId(id), 1, None, d.counter, 1);
    let members = members.iter().map(|&m| user_id(m)).collect();
    Event::sign(d.key.signing_key(), h, EventKind::Create { members }).expect("sign")
}

/// Invitations over real QUIC: a stranger's flood of invitations leaves the victim's accepted
/// conversation in its catch-up; acceptance on one device reaches the user's other device at
/// once; a blocked user's Create listing the victim is refused; all of it survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitation_flood_acceptance_and_blocking() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let limits = Limits::default().with_rate(1_000_000, 1_000_000);
    let relay = start(dir.path(), limits.clone()).await?;
    let ep = endpoint()?;
    let mut alice = connect(&ep, &relay, 1, 11).await?;
    let mut bob_phone = connect(&ep, &relay, 2, 21).await?;
    let mut bob_laptop = connect(&ep, &relay, 2, 22).await?;
    let mut eve = connect(&ep, &relay, 3, 31).await?;

    // Alice invites Bob; he accepts on his phone; his laptop is told without asking.
    let create = alice.create(&[1, 2]);
    alice.submit_ok(&[create]).await?;
    let (convs, invitations, _) = bob_phone.client.sync_state().await?;
    assert!(convs.is_empty());
    assert_eq!(invitations.len(), 1);
    assert_eq!(invitations[0].conversation, CONV);
    bob_phone.client.accept(CONV).await?;
    loop {
        match bob_laptop.client.next_frame_within(WAIT).await? {
            wire::ServerFrame::UserChanged {
                change: wire::UserChange::Accepted(info),
            } => {
                assert_eq!((info.conversation, info.max_seq), (CONV, 1));
                break;
            }
            wire::ServerFrame::UserChanged { .. } => {}
            f => bail!("{f:?}"),
        }
    }
    let hello = alice.send("hello Bob");
    alice.submit_ok(std::slice::from_ref(&hello)).await?;
    for d in [&mut bob_phone, &mut bob_laptop] {
        assert_eq!(d.pushed(1).await?[0].0.id(), hello.id());
    }

    // Eve floods Bob with invitations whose ids sort before Alice's conversation.
    let n = wire::MAX_INVITATIONS_PER_INVITER as u32 + 8;
    let flood: Vec<Event> = (0..n)
        .map(|i| create_numbered(&mut eve, i, &[3, 2]))
        .collect();
    let out = eve.client.submit(&flood).await?;
    let accepted = out
        .iter()
        .filter(|o| matches!(o, SubmitOutcome::Accepted { .. }))
        .count();
    assert_eq!(accepted, wire::MAX_INVITATIONS_PER_INVITER);
    assert!(out
        .iter()
        .all(|o| matches!(o, SubmitOutcome::Accepted { .. })
            || code_of(o) == Some(ErrorCode::INVITATIONS_FULL)));
    let (convs, invitations, _) = bob_laptop.client.sync_state().await?;
    assert_eq!(
        convs.iter().map(|c| c.conversation).collect::<Vec<_>>(),
        vec![CONV]
    );
    assert_eq!(invitations.len(), wire::MAX_INVITATIONS_PER_INVITER);

    // Bob blocks Eve from his laptop: her invitations go, her next one is refused.
    bob_laptop.client.block(user_id(3)).await?;
    let again = create_numbered(&mut eve, 10_000, &[3, 2]);
    let out = eve.client.submit(&[again]).await?;
    assert_eq!(code_of(&out[0]), Some(ErrorCode::BLOCKED));
    let (_, invitations, blocked) = bob_phone.client.sync_state().await?;
    assert!(invitations.is_empty());
    assert_eq!(blocked, vec![user_id(3)]);

    // After a restart: the acceptance and the block hold.
    relay.shutdown().await?;
    let relay = start(dir.path(), limits).await?;
    let mut bob_phone = reconnect(&ep, &relay, bob_phone).await?;
    let (convs, invitations, blocked) = bob_phone.client.sync_state().await?;
    assert_eq!(
        convs
            .iter()
            .map(|c| (c.conversation, c.max_seq))
            .collect::<Vec<_>>(),
        vec![(CONV, 2)]
    );
    assert!(invitations.is_empty());
    assert_eq!(blocked, vec![user_id(3)]);
    let mut eve = reconnect(&ep, &relay, eve).await?;
    let again = create_numbered(&mut eve, 10_001, &[3, 2]);
    let out = eve.client.submit(&[again]).await?;
    assert_eq!(code_of(&out[0]), Some(ErrorCode::BLOCKED));
    relay.shutdown().await?;
    Ok(())
}
