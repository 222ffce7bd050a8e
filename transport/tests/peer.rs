//! Peer links over real QUIC on 127.0.0.1: each side proves its device key, and only devices
//! the policy admits get through.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tidings_engine::{DeviceKey, UserId};
use tidings_transport::{
    client_endpoint, device_of_cert, endpoint, peer_device, udp_socket, PeerAllowList, PeerConfig,
    PeerIdentity, PEER_SERVER_NAME,
};

fn key(seed: u8) -> DeviceKey {
    DeviceKey::from_seed([seed; 32], UserId([seed; 32]))
}

struct Side {
    key: DeviceKey,
    allow: Arc<PeerAllowList>,
    config: PeerConfig,
}

fn side(seed: u8) -> Side {
    let key = key(seed);
    let allow = Arc::new(PeerAllowList::default());
    let identity = PeerIdentity::new(&key).expect("identity");
    let config = PeerConfig::new(identity, allow.clone()).idle_timeout(Duration::from_secs(5));
    Side { key, allow, config }
}

fn listen(side: &Side) -> quinn::Endpoint {
    let (socket, _) = udp_socket(SocketAddr::from(([127, 0, 0, 1], 0)), 1 << 20).expect("socket");
    endpoint(socket, Some(side.config.listen().expect("listen config"))).expect("endpoint")
}

/// Dials `server` as `client`, expecting `expect`; the server accepts one connection. Each
/// side sends the other one byte on the stream and reads the other's: returns the device each
/// side sees on the other end once that exchange worked, `None` for a side where it did not
/// (in TLS 1.3 the client's handshake completes before the server judged the client's
/// certificate: a refused client learns it when its connection is closed).
async fn link(
    client: &Side,
    server: &quinn::Endpoint,
    expect: tidings_engine::DeviceId,
) -> (
    Option<tidings_engine::DeviceId>,
    Option<tidings_engine::DeviceId>,
) {
    let addr = server.local_addr().expect("address");
    let accept = {
        let server = server.clone();
        tokio::spawn(async move {
            let conn = server.accept().await?.await.ok()?;
            let (mut send, mut recv) = conn.accept_bi().await.ok()?;
            recv.read_to_end(16).await.ok()?;
            send.write_all(b"y").await.ok()?;
            send.finish().ok()?;
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            peer_device(&conn)
        })
    };
    let ep = client_endpoint(addr, client.config.dial(expect).expect("dial config"))
        .expect("client endpoint");
    let client_saw = async {
        let conn = ep.connect(addr, PEER_SERVER_NAME).ok()?.await.ok()?;
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        send.write_all(b"x").await.ok()?;
        send.finish().ok()?;
        let answer = recv.read_to_end(16).await.ok()?;
        let seen = (answer == b"y").then(|| peer_device(&conn)).flatten();
        conn.close(0u32.into(), b"done");
        seen
    };
    let client_saw = tokio::time::timeout(Duration::from_secs(5), client_saw)
        .await
        .ok()
        .flatten();
    let server_saw = tokio::time::timeout(Duration::from_secs(5), accept)
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten();
    (client_saw, server_saw)
}

#[tokio::test]
async fn admitted_peers_prove_their_device_keys_to_each_other() {
    let (a, b) = (side(1), side(2));
    a.allow.set([b.key.device()]);
    b.allow.set([a.key.device()]);
    let server = listen(&b);
    let (client_saw, server_saw) = link(&a, &server, b.key.device()).await;
    assert_eq!(client_saw, Some(b.key.device()));
    assert_eq!(server_saw, Some(a.key.device()));
}

#[tokio::test]
async fn a_device_the_policy_does_not_name_is_refused_by_the_listener() {
    let (a, b) = (side(1), side(2));
    a.allow.set([b.key.device()]);
    // b admits nobody: a stranger (or a revoked device) cannot link.
    let server = listen(&b);
    let (client_saw, server_saw) = link(&a, &server, b.key.device()).await;
    assert_eq!(server_saw, None);
    assert_eq!(client_saw, None);
    // Once b admits a, the same link works; once it removes a again, it does not.
    b.allow.set([a.key.device()]);
    assert_eq!(
        link(&a, &server, b.key.device()).await.1,
        Some(a.key.device())
    );
    b.allow.remove(&a.key.device());
    assert_eq!(link(&a, &server, b.key.device()).await.1, None);
}

#[tokio::test]
async fn a_dialer_refuses_a_listener_that_is_not_the_device_it_dialed() {
    let (a, b, c) = (side(1), side(2), side(3));
    // a admits both b and c, b admits a; a dials b's address expecting c.
    a.allow.set([b.key.device(), c.key.device()]);
    b.allow.set([a.key.device()]);
    let server = listen(&b);
    let (client_saw, server_saw) = link(&a, &server, c.key.device()).await;
    assert_eq!((client_saw, server_saw), (None, None));
}

#[test]
fn a_peer_certificate_carries_its_device_key() {
    let k = key(7);
    let identity = PeerIdentity::new(&k).expect("identity");
    assert_eq!(identity.device(), k.device());
    assert_eq!(device_of_cert(identity.cert()), Some(k.device()));
    // A certificate over another kind of key names no device.
    let other = rcgen::generate_simple_self_signed(vec!["x".to_string()]).expect("cert");
    assert_eq!(device_of_cert(other.cert.der()), None);
    assert_eq!(device_of_cert(&b"garbage".to_vec().into()), None);
}
