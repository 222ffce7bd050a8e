//! Helpers of the media tests (tests/media.rs, tests/media_peers.rs): a relay with blob
//! limits, devices on it, the conversation of a pair, and waits for what a download needs.

use super::net::{accept_invitation, config, eventually};
use super::{device, user};
use std::path::Path;
use std::time::Duration;
use tidings::engine::ConversationId;
use tidings::relay::blobs::BlobLimits;
use tidings::relay::server::RelayHandle;
use tidings::relay::{Limits, RelayConfig};
use tidings::replica::peers::PeerAddr;
use tidings::replica::{BlobDescriptor, Body, Connectivity, MediaSource, Replica};

pub const SECS: u64 = 30;

pub async fn relay(dir: &Path, blobs: BlobLimits) -> RelayHandle {
    tidings::relay::server::start(RelayConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.to_path_buf(),
        limits: Limits::default(),
        blobs,
        ..RelayConfig::default()
    })
    .await
    .expect("relay starts")
}

/// A device of user `seed` (its device key seeded alike), with quick reconnects.
pub async fn open(root: &Path, name: &str, seed: u8, relay: &RelayHandle) -> Replica {
    open_at(root, name, seed, relay, relay.addr()).await
}

pub async fn open_at(
    root: &Path,
    name: &str,
    seed: u8,
    relay: &RelayHandle,
    addr: std::net::SocketAddr,
) -> Replica {
    let u = user(seed);
    let (key, _) = device(&u, seed);
    let mut cfg = config(relay, addr, &key, &u);
    cfg.connectivity = Connectivity::App;
    super::net::open(root, name, key, cfg).await
}

/// Waits until the replica is connected (its media worker has a link).
pub async fn online(r: &Replica) {
    eventually(SECS, "online", || async {
        r.connection()
            .await
            .is_ok_and(|s| s.state == tidings::replica::ConnectionState::Online)
    })
    .await;
}

/// A pattern that is easy to search for in the relay's files.
pub fn pattern(len: usize, tag: u8) -> Vec<u8> {
    let mut v: Vec<u8> = b"PLAINTEXT-PHOTO-"
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect();
    if let Some(b) = v.last_mut() {
        *b = tag;
    }
    v
}

/// The media descriptor of the message `message` once `r` shows it.
pub async fn received(
    r: &Replica,
    conv: ConversationId,
    message: tidings::engine::MessageId,
) -> (Vec<u8>, BlobDescriptor) {
    let start = std::time::Instant::now();
    loop {
        let page = r.page(conv, None, 100).await.unwrap_or_default();
        let found = page.into_iter().find_map(|m| match m.body {
            Body::Media(body) if m.view.id == message => {
                Some((body.caption, body.media[0].clone()))
            }
            _ => None,
        });
        if let Some(f) = found {
            return f;
        }
        assert!(
            start.elapsed() < Duration::from_secs(SECS),
            "timed out waiting for the media message"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn uploaded(r: &Replica) {
    eventually(SECS, "the upload queue to drain", || async {
        r.queued_uploads().is_ok_and(|q| q.is_empty())
    })
    .await;
}

/// `who` sends `plain` as a JPEG without caption or thumbnail in `conv`: the message's id.
pub async fn send_photo(
    who: &Replica,
    conv: ConversationId,
    plain: &[u8],
    what: &str,
) -> tidings::engine::MessageId {
    send_bytes(who, conv, plain.to_vec(), Vec::new(), "image/jpeg", what).await
}

/// `who` sends `plain` as a `mime` attachment with `caption` and no thumbnail; `what` names
/// the step if it fails.
pub async fn send_bytes(
    who: &Replica,
    conv: ConversationId,
    plain: Vec<u8>,
    caption: Vec<u8>,
    mime: &str,
    what: &str,
) -> tidings::engine::MessageId {
    who.send_media(conv, MediaSource::Bytes(plain), caption, mime, Vec::new())
        .await
        .expect(what)
}

/// Whether a download was refused because the device is no member of the conversation.
pub fn refused_as_non_member(err: &tidings::replica::ReplicaError) -> bool {
    matches!(
        err,
        tidings::replica::ReplicaError::Media(tidings::replica::MediaError::Refused(
            tidings::engine::media::wire::BlobRefusal::NotMember
        ))
    )
}

pub fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).expect("dir").any(|e| {
        let bytes = std::fs::read(e.expect("entry").path()).expect("read");
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

pub struct Pair {
    pub _tmp: tempfile::TempDir,
    pub relay: RelayHandle,
    pub alice: Replica,
    pub bob: Replica,
    pub conv: ConversationId,
    pub root: std::path::PathBuf,
}

/// `owner` starts `conv` with `member`, who accepts the invitation.
pub async fn start_with(owner: &Replica, member: &Replica, conv: ConversationId) {
    owner
        .create_conversation(conv, vec![member.user()])
        .await
        .expect("create");
    accept_invitation(member, conv).await;
}

pub async fn pair(blobs: BlobLimits) -> Pair {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().to_path_buf();
    let relay = relay(&root.join("relay"), blobs).await;
    let alice = open(&root, "alice", 1, &relay).await;
    let bob = open(&root, "bob", 2, &relay).await;
    let conv = ConversationId([0x3d; 16]);
    start_with(&alice, &bob, conv).await;
    online(&alice).await;
    online(&bob).await;
    Pair {
        _tmp: tmp,
        relay,
        alice,
        bob,
        conv,
        root,
    }
}

/// A text through the relay, so both hold the conversation's key before the relay goes.
pub async fn greet(alice: &Replica, bob: &Replica, conv: ConversationId) {
    let id = alice.send(conv, b"hello".to_vec()).await.expect("send");
    eventually(SECS, "Bob has the greeting", || async {
        bob.page(conv, None, 100)
            .await
            .unwrap_or_default()
            .iter()
            .any(|m| m.view.id == id)
    })
    .await;
}

/// `r`'s peer link on 127.0.0.1, and where others dial it.
pub async fn peer_link(r: &Replica) -> (tidings::replica::peers::PeerLink, PeerAddr) {
    let link = r
        .peer_link(([127, 0, 0, 1], 0).into())
        .await
        .expect("peer link");
    let at = PeerAddr {
        device: r.device(),
        addr: link.local_addr().expect("address"),
    };
    (link, at)
}
