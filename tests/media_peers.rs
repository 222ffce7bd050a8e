//! Media from peer devices over real QUIC (issue 15): a member fetches a blob from another
//! member's device with no relay, a non-member is refused, a damaged copy is refused within
//! one chunk group and another source serves the rest.

mod common;

use common::media::*;
use common::net::{accept_invitation, eventually};
use std::time::Duration;
use tidings::engine::ConversationId;
use tidings::relay::blobs::BlobLimits;
use tidings::replica::{MediaError, ReplicaError};

/// Alice sends a photo with no relay running; Bob takes the message from her device over
/// the peer link and then the photo itself, every piece verified, from her device too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_downloads_a_photo_from_the_senders_device_with_no_relay() {
    let p = pair(BlobLimits::default()).await;
    greet(&p.alice, &p.bob, p.conv).await;
    p.relay.shutdown().await.expect("relay stops");
    let plain = pattern(3 * 1024 * 1024 + 5, 9);
    let id = send_bytes(
        &p.alice,
        p.conv,
        plain.clone(),
        b"no relay".to_vec(),
        "image/jpeg",
        "send without a relay",
    )
    .await;
    let (_alice_link, alice_at) = peer_link(&p.alice).await;
    let (bob_link, _) = peer_link(&p.bob).await;
    bob_link.sync(alice_at).await.expect("synced");
    let (caption, media) = received(&p.bob, p.conv, id).await;
    assert_eq!(caption, b"no relay");
    let dest = p.root.join("bob-photo.jpg");
    p.bob
        .download_media(p.conv, &media, &dest)
        .await
        .expect("downloaded from Alice's device");
    assert_eq!(std::fs::read(&dest).expect("read"), plain);
    let range = p
        .bob
        .fetch_media_range(p.conv, &media, 70_000..80_000)
        .await
        .expect("a range from Alice's device");
    assert_eq!(range, &plain[70_000..80_000]);
}

/// A device that is not a member of the conversation that references a blob is refused it
/// by the peer that holds it, though the peer link admits it (it shares another
/// conversation with the holder) and it names the blob right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_refuses_a_blob_to_a_device_that_is_not_a_member() {
    let p = pair(BlobLimits::default()).await;
    let carol = open(&p.root, "carol", 3, &p.relay).await;
    let elsewhere = ConversationId([0x3e; 16]);
    start_with(&p.alice, &carol, elsewhere).await;
    greet(&p.alice, &p.bob, p.conv).await;
    greet(&p.alice, &carol, elsewhere).await;
    p.relay.shutdown().await.expect("relay stops");
    let plain = pattern(100_000, 5);
    let id = send_photo(&p.alice, p.conv, &plain, "send without a relay").await;
    let (_alice_link, alice_at) = peer_link(&p.alice).await;
    let (bob_link, _) = peer_link(&p.bob).await;
    let (carol_link, _) = peer_link(&carol).await;
    bob_link.sync(alice_at).await.expect("Bob synced");
    carol_link.sync(alice_at).await.expect("Carol synced");
    // Carol learned the descriptor somewhere else; she never saw the message.
    let (_, media) = received(&p.bob, p.conv, id).await;
    for named in [p.conv, elsewhere] {
        let dest = p.root.join("carol-photo");
        let err = carol
            .download_media(named, &media, &dest)
            .await
            .expect_err("refused");
        assert!(refused_as_non_member(&err), "named {named:?}: {err:?}");
        assert!(!dest.exists());
    }
    // The member is served by the same peer.
    let dest = p.root.join("bob-photo");
    p.bob
        .download_media(p.conv, &media, &dest)
        .await
        .expect("the member is served");
    assert_eq!(std::fs::read(&dest).expect("read"), plain);
}

/// Carol prefetched a photo (its verified ciphertext kept); her copy is then damaged on
/// disk. Bob asks her first: the damaged group is refused, nothing of it shown; with the
/// relay out of reach the download fails with the group named, and once the relay is back it
/// serves the rest, and the file is the photo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_serves_a_damaged_group_is_refused_and_the_relay_serves_the_rest() {
    use futures::StreamExt;
    use tidings::replica::{PrefetchPolicy, Update};
    const MIB: usize = 1024 * 1024;
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().to_path_buf();
    let relay = relay(&root.join("relay"), BlobLimits::default()).await;
    let proxy = common::net::Proxy::start(relay.addr()).await;
    let alice = open(&root, "alice", 1, &relay).await;
    let bob = open_at(&root, "bob", 2, &relay, proxy.addr).await;
    let carol = open(&root, "carol", 3, &relay).await;
    let conv = ConversationId([0x3f; 16]);
    alice
        .create_conversation(conv, vec![bob.user(), carol.user()])
        .await
        .expect("create");
    accept_invitation(&bob, conv).await;
    accept_invitation(&carol, conv).await;
    for r in [&alice, &bob, &carol] {
        online(r).await;
    }
    carol.set_prefetch(PrefetchPolicy::up_to(8 * MIB as u64));
    let mut carol_updates = carol.updates();
    let plain = pattern(3 * MIB + 5, 6);
    let id = send_photo(&alice, conv, &plain, "send").await;
    let (_, media) = received(&bob, conv, id).await;
    // Carol's first tries may come before the upload ends and back off (2, 4, 8, 16 s...):
    // on a loaded machine the copy can take more than one `SECS`.
    loop {
        let u = tokio::time::timeout(Duration::from_secs(4 * SECS), carol_updates.next())
            .await
            .expect("Carol prefetched in time")
            .expect("updates");
        if matches!(u, Update::MediaReady { blob, .. } if blob == media.blob) {
            break;
        }
    }
    let part = root
        .join("carol")
        .join("media")
        .join(format!("{}.part", hex::encode(media.blob.0)));
    let mut bytes = std::fs::read(&part).expect("Carol's copy");
    bytes[100 * tidings::engine::media::CHUNK_GROUP_LEN as usize + 7] ^= 0x01;
    std::fs::write(&part, bytes).expect("damage");
    let (_carol_link, carol_at) = peer_link(&carol).await;
    let (bob_link, _) = peer_link(&bob).await;
    bob_link.sync(carol_at).await.expect("synced");

    proxy.set_up(false);
    eventually(SECS, "Bob offline", || async {
        bob.connection()
            .await
            .is_ok_and(|s| s.state != tidings::replica::ConnectionState::Online)
    })
    .await;
    let dest = root.join("bob-photo");
    let err = bob
        .download_media(conv, &media, &dest)
        .await
        .expect_err("only a damaged source");
    assert!(
        matches!(err, ReplicaError::Media(MediaError::Corrupt { group: 100 })),
        "{err:?}"
    );
    assert!(!dest.exists());

    proxy.set_up(true);
    online(&bob).await;
    bob.download_media(conv, &media, &dest)
        .await
        .expect("the relay serves what the peer could not");
    assert_eq!(std::fs::read(&dest).expect("read"), plain);
}
