//! Two replicas reconcile over a peer link on 127.0.0.1 while one of them cannot reach the
//! relay; the relay later adds nothing twice. Two replicas find each other on the host's
//! interfaces by mDNS, with no address passed in, and sync.

mod common;

use common::net::{
    all_at_least, all_pages, eventually, ids, open_device, relay, start_conversation,
};
use common::user;
use std::net::SocketAddr;
use std::sync::Arc;
use tidings::engine::{ConversationId, Status};
use tidings::relay::Limits;
use tidings::replica::peers::mdns::MdnsConfig;
use tidings::replica::peers::{Discovery, ExplicitPeers, PeerAddr};
use tidings::transport::{
    client_endpoint, PeerAllowList, PeerConfig, PeerIdentity, PEER_SERVER_NAME,
};

const CONV: ConversationId = ConversationId([7; 16]);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Alice's phone and Bob share [`CONV`]; Carol, a stranger to both, is on the same relay.
struct Scene {
    _dir: tempfile::TempDir,
    _relay: tidings::relay::server::RelayHandle,
    phone: tidings::replica::Replica,
    bob: tidings::replica::Replica,
    carol: tidings::replica::Replica,
    carol_key: tidings::engine::DeviceKey,
    /// What Bob read before he lost the relay: the phone's greeting.
    before: Vec<tidings::engine::MessageId>,
    /// What the phone sent while Bob was away from the relay.
    sent: Vec<tidings::engine::MessageId>,
}

impl Scene {
    /// Every message Bob should end with, in order.
    fn all(&self) -> Vec<tidings::engine::MessageId> {
        self.before.iter().chain(&self.sent).copied().collect()
    }
}

/// The [`Scene`] after Bob lost the relay and Alice's phone sent `n` messages.
///
/// Bob reads the phone's greeting before he goes: he holds the phone's epoch key then, so a
/// peer has exactly the `n` messages to give him. (Without it, whether the phone's key share
/// reached Bob through the relay before he went was a race, and a peer link gave him the
/// share too: `n + 1` events.)
async fn bob_away_while_alice_sends(n: usize) -> Scene {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir.path().join("relay"), Limits::default()).await;
    let (alice, bobu, carolu) = (user(1), user(2), user(3));
    let (phone, _) = open_device(&relay, dir.path(), "phone", &alice, 11).await;
    let (bob, _) = open_device(&relay, dir.path(), "bob", &bobu, 21).await;
    let (carol, carol_key) = open_device(&relay, dir.path(), "carol", &carolu, 31).await;
    start_conversation(
        &phone,
        &bob,
        bobu.id,
        CONV,
        &[phone.clone(), bob.clone()],
        20,
    )
    .await;
    let hello = phone.send(CONV, b"hello".to_vec()).await.expect("greeting");
    eventually(20, "Bob reads the greeting", || async {
        all_pages(&bob, CONV).await.iter().any(|m| {
            m.view.id == hello
                && matches!(&m.body, tidings::replica::Body::Text(t) if t == b"hello")
        })
    })
    .await;
    bob.network_changed(false).await.expect("offline");
    let mut sent = Vec::new();
    for i in 0..n {
        sent.push(
            phone
                .send(CONV, format!("m{i}").into_bytes())
                .await
                .expect("send"),
        );
    }
    Scene {
        _dir: dir,
        _relay: relay,
        phone,
        bob,
        carol,
        carol_key,
        before: vec![hello],
        sent,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_reach_the_relay_gets_messages_from_a_peer() {
    let scene = bob_away_while_alice_sends(5).await;
    let all = scene.all();
    let Scene {
        _dir,
        _relay,
        phone,
        bob,
        carol,
        carol_key: k3,
        before,
        sent,
    } = scene;
    eventually(20, "SENT on the phone", || {
        all_at_least(&phone, CONV, &sent, Status::Sent)
    })
    .await;
    assert_eq!(ids(&bob, CONV).await, before);

    // Bob's phone next to Alice's: a peer link, at the address her phone shows.
    let phone_link = phone.peer_link(loopback()).await.expect("phone link");
    let bob_link = bob.peer_link(loopback()).await.expect("bob link");
    let peers = ExplicitPeers::default();
    peers.add(PeerAddr {
        device: phone.device(),
        addr: phone_link.local_addr().expect("address"),
    });
    let reports = bob_link.sync_all(&peers).await;
    assert_eq!(reports.len(), 1);
    let report = reports[0].1.as_ref().expect("synced");
    assert_eq!((report.peer, report.received), (phone.device(), 5));
    eventually(10, "Bob has them from the peer", || async {
        ids(&bob, CONV).await == all
    })
    .await;

    // Carol shares no conversation with Alice: her phone refuses the link.
    let carol_link = carol.peer_link(loopback()).await.expect("carol link");
    let refused = carol_link
        .sync(PeerAddr {
            device: phone.device(),
            addr: phone_link.local_addr().expect("address"),
        })
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // And Alice's phone refuses Carol's device even when Carol's side would link.
    let allow = Arc::new(PeerAllowList::default());
    allow.set([phone.device()]);
    let carol_config = PeerConfig::new(PeerIdentity::new(&k3).expect("identity"), allow);
    let addr = phone_link.local_addr().expect("address");
    let ep =
        client_endpoint(addr, carol_config.dial(phone.device()).expect("dial")).expect("endpoint");
    let exchanged = async {
        let conn = ep.connect(addr, PEER_SERVER_NAME).ok()?.await.ok()?;
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        send.write_all(b"x").await.ok()?;
        send.finish().ok()?;
        recv.read_to_end(1024).await.ok()
    };
    let exchanged = tokio::time::timeout(std::time::Duration::from_secs(10), exchanged).await;
    assert!(
        matches!(exchanged, Ok(None)),
        "the phone closed Carol's link during the handshake: {exchanged:?}"
    );
    assert!(ids(&carol, CONV).await.is_empty());

    // The relay comes back for Bob: the same messages, once each, in the same order, and
    // Alice's phone learns he has them.
    bob.network_changed(true).await.expect("online");
    eventually(20, "DELIVERED on the phone", || {
        all_at_least(&phone, CONV, &sent, Status::Delivered)
    })
    .await;
    assert_eq!(ids(&bob, CONV).await, all);
    for r in [&phone, &bob, &carol] {
        r.close().await.expect("close");
    }
}

/// The mDNS port of the discovery test: not 5353, so that the host's own responder (if any)
/// and other tests stay out of it.
const TEST_MDNS_PORT: u16 = 53_535;

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_find_each_other_on_the_lan_and_sync() {
    let scene = bob_away_while_alice_sends(3).await;
    let all = scene.all();
    let Scene {
        _dir,
        _relay,
        phone,
        bob,
        carol,
        ..
    } = scene;

    // All three advertise; nobody is told an address.
    let mdns = || MdnsConfig::default().mdns_port(TEST_MDNS_PORT);
    let phone_link = phone.peer_link(unspecified()).await.expect("phone link");
    let bob_link = bob.peer_link(unspecified()).await.expect("bob link");
    let carol_link = carol.peer_link(unspecified()).await.expect("carol link");
    let phone_lan = phone_link.advertise(mdns()).expect("phone advertises");
    let bob_lan = bob_link.advertise(mdns()).expect("bob advertises");
    let carol_lan = carol_link.advertise(mdns()).expect("carol advertises");
    eventually(
        20,
        "Bob's discovery to see Alice's phone by mDNS: no multicast DNS answer came back on \
         this host's interfaces, so multicast is not available here (the explicit-address \
         test covers the peer link itself)",
        || async { bob_lan.peers().iter().any(|p| p.device == phone.device()) },
    )
    .await;
    let found = bob_lan.peers();
    assert_eq!(
        found.iter().map(|p| p.device).collect::<Vec<_>>(),
        vec![phone.device()],
        "Bob recognises only the device he shares a conversation with: {found:?}"
    );
    assert_eq!(
        found[0].addr.port(),
        phone_link.local_addr().expect("addr").port()
    );
    let reports = bob_link.sync_all(&bob_lan).await;
    let report = reports[0].1.as_ref().expect("synced");
    assert_eq!((report.peer, report.received), (phone.device(), 3));
    eventually(10, "Bob has them from the LAN peer", || async {
        ids(&bob, CONV).await == all
    })
    .await;
    // Carol sees the records too, but recognises none: she shares nothing with them.
    eventually(20, "Alice's phone to see Bob by mDNS", || async {
        phone_lan.peers().iter().any(|p| p.device == bob.device())
    })
    .await;
    assert!(carol_lan.peers().is_empty(), "{:?}", carol_lan.peers());

    // Alice's phone leaves: its record is withdrawn, and Bob forgets it.
    phone_lan.close().await.expect("withdrawn");
    eventually(20, "Bob to forget the withdrawn record", || async {
        bob_lan.peers().is_empty()
    })
    .await;
    drop((bob_lan, carol_lan));
    for r in [&phone, &bob, &carol] {
        r.close().await.expect("close");
    }
}
