//! Media over real QUIC (issue 15): photos and videos sealed on the device, uploaded on blob
//! streams apart from the messages, fetched on demand and checked against their root.

mod common;
// Only the proxy, not the stock profiles.
#[allow(dead_code)]
#[path = "common/faults.rs"]
mod faults;

use common::media::*;
use common::net::eventually;
use std::path::Path;
use std::time::Duration;
use tidings::engine::media::wire::BlobRefusal;
use tidings::engine::ConversationId;
use tidings::relay::blobs::BlobLimits;
use tidings::replica::{BlobDescriptor, Body, MediaError, MediaSource, ReplicaError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_round_trips_at_every_edge_and_the_relay_holds_no_plaintext() {
    let p = pair(BlobLimits::default()).await;
    let seg = tidings::engine::media::SEGMENT_LEN as usize;
    for (i, len) in [0, 1, seg, seg + 1, 3 * 1024 * 1024 + 5]
        .into_iter()
        .enumerate()
    {
        let plain = pattern(len, i as u8);
        let caption = format!("photo {i}").into_bytes();
        let thumb = vec![i as u8; 1024];
        let id = p
            .alice
            .send_media(
                p.conv,
                MediaSource::Bytes(plain.clone()),
                caption.clone(),
                "image/jpeg",
                thumb.clone(),
            )
            .await
            .expect("send_media");
        let (got_caption, media) = received(&p.bob, p.conv, id).await;
        assert_eq!(got_caption, caption);
        assert_eq!(media.thumbnail, thumb);
        assert_eq!(media.len, len as u64);
        uploaded(&p.alice).await;
        let dest = p.root.join(format!("bob-got-{i}"));
        p.bob
            .download_media(p.conv, &media, &dest)
            .await
            .expect("download");
        assert_eq!(std::fs::read(&dest).expect("read"), plain, "len {len}");
        if len > 10 {
            let range = (len as u64 / 3)..(len as u64 / 3 + 7);
            let part = p
                .bob
                .fetch_media_range(p.conv, &media, range.clone())
                .await
                .expect("range");
            assert_eq!(part, &plain[range.start as usize..range.end as usize]);
        }
    }
    let blobs = p.root.join("relay").join("blobs");
    assert!(std::fs::read_dir(&blobs).expect("dir").count() >= 15);
    assert!(!files_contain(&blobs, b"PLAINTEXT-PHOTO"));
    assert!(!files_contain(&blobs, b"image/jpeg"));
    p.relay.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_is_refused_the_blob() {
    let p = pair(BlobLimits::default()).await;
    let carol = open(&p.root, "carol", 3, &p.relay).await;
    online(&carol).await;
    let id = send_bytes(
        &p.alice,
        p.conv,
        pattern(5000, 1),
        Vec::new(),
        "image/png",
        "send",
    )
    .await;
    let (_, media) = received(&p.bob, p.conv, id).await;
    uploaded(&p.alice).await;
    // Carol holds the descriptor (leaked to her, say) but is no member of the conversation.
    let err = carol
        .download_media(p.conv, &media, &p.root.join("carol-got"))
        .await
        .expect_err("refused");
    assert!(refused_as_non_member(&err), "{err:?}");
    assert!(!p.root.join("carol-got").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_cap_or_the_quota_is_refused_at_send_media() {
    let p = pair(BlobLimits {
        max_blob_len: 100_000,
        quota_per_user: 150_000,
        ..BlobLimits::default()
    })
    .await;
    let send = |len: usize| {
        p.alice.send_media(
            p.conv,
            MediaSource::Bytes(pattern(len, 0)),
            b"caption".to_vec(),
            "video/mp4",
            Vec::new(),
        )
    };
    let err = send(120_000).await.expect_err("over the cap");
    assert!(
        matches!(
            err,
            ReplicaError::Media(MediaError::Refused(BlobRefusal::TooLarge {
                max: 100_000,
                ..
            }))
        ),
        "{err:?}"
    );
    send(90_000).await.expect("within");
    let err = send(90_000).await.expect_err("over the quota");
    assert!(
        matches!(
            err,
            ReplicaError::Media(MediaError::Refused(BlobRefusal::OverQuota {
                quota: 150_000,
                ..
            }))
        ),
        "{err:?}"
    );
    // The device's own cap, before anything is read: a sparse 101 MiB file.
    let big = p.root.join("big.mp4");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(101 * 1024 * 1024))
        .expect("sparse file");
    let err = p
        .alice
        .send_media(
            p.conv,
            MediaSource::File(big),
            Vec::new(),
            "video/mp4",
            Vec::new(),
        )
        .await
        .expect_err("over the device's cap");
    assert!(
        matches!(err, ReplicaError::Media(MediaError::TooLarge { .. })),
        "{err:?}"
    );
    // Only the one that fitted was sent.
    let sent = p.alice.page(p.conv, None, 100).await.expect("page");
    assert_eq!(
        sent.iter()
            .filter(|m| matches!(m.body, Body::Media(_)))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_uploads_nothing_again() {
    let p = pair(BlobLimits::default()).await;
    let carol = open(&p.root, "carol", 3, &p.relay).await;
    let other = ConversationId([0x4e; 16]);
    start_with(&p.bob, &carol, other).await;
    online(&carol).await;
    let plain = pattern(700_000, 9);
    let path = p.root.join("photo.jpg");
    std::fs::write(&path, &plain).expect("write");
    let id = p
        .alice
        .send_media(
            p.conv,
            MediaSource::File(path),
            b"look".to_vec(),
            "image/jpeg",
            Vec::new(),
        )
        .await
        .expect("send");
    let (_, media) = received(&p.bob, p.conv, id).await;
    uploaded(&p.alice).await;
    let blobs = p.root.join("relay").join("blobs");
    let before: u64 = dir_bytes(&blobs);
    let mut progress = p.bob.updates();
    let fwd = p
        .bob
        .forward_media(p.conv, other, media.clone(), b"fwd".to_vec())
        .await
        .expect("forward");
    uploaded(&p.bob).await;
    let (_, forwarded) = received(&carol, other, fwd).await;
    assert_eq!(forwarded, media);
    let dest = p.root.join("carol-got");
    carol
        .download_media(other, &forwarded, &dest)
        .await
        .expect("download");
    assert_eq!(std::fs::read(&dest).expect("read"), plain);
    // No bytes of the blob went up again: the relay's data did not grow by a blob, and Bob's
    // device reported no upload progress.
    assert!(dir_bytes(&blobs) < before + 4096);
    tokio::time::sleep(Duration::from_millis(50)).await;
    while let Ok(u) = progress.try_next_now() {
        assert!(
            !matches!(
                u,
                tidings::replica::Update::MediaProgress {
                    direction: tidings::replica::MediaDirection::Upload,
                    ..
                }
            ),
            "{u:?}"
        );
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum()
}

/// Reads what a stream has ready, without waiting.
trait TryNextNow {
    fn try_next_now(&mut self) -> Result<tidings::replica::Update, ()>;
}

impl TryNextNow for tidings::replica::Updates {
    fn try_next_now(&mut self) -> Result<tidings::replica::Update, ()> {
        use futures::FutureExt;
        use futures::StreamExt;
        self.next().now_or_never().flatten().ok_or(())
    }
}

/// A blob damaged on the relay's disk is never shown: the relay checks what it reads against
/// the root and refuses the group, and the downloader writes no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_damaged_at_the_relay_is_refused_and_never_shown() {
    let p = pair(BlobLimits::default()).await;
    let plain = pattern(300_000, 4);
    let id = send_photo(&p.alice, p.conv, &plain, "send").await;
    let (_, media) = received(&p.bob, p.conv, id).await;
    uploaded(&p.alice).await;
    let data = p
        .root
        .join("relay")
        .join("blobs")
        .join(format!("{}.data", media.blob));
    let mut bytes = std::fs::read(&data).expect("read");
    let at = 5 * tidings::engine::media::CHUNK_GROUP_LEN as usize + 3;
    bytes[at] ^= 0x10;
    std::fs::write(&data, bytes).expect("damage");
    let dest = p.root.join("bob-got");
    let err = p
        .bob
        .download_media(p.conv, &media, &dest)
        .await
        .expect_err("refused");
    // The relay serves what it holds without hashing it again; the downloader checks every
    // group against the root and stops at the damaged one.
    assert!(
        matches!(err, ReplicaError::Media(MediaError::Corrupt { group: 5 })),
        "{err:?}"
    );
    assert!(!dest.exists());
    // A range before the damage still plays.
    let part = p
        .bob
        .fetch_media_range(p.conv, &media, 0..1000)
        .await
        .expect("range before the damage");
    assert_eq!(part, &plain[..1000]);
}

/// A descriptor whose key is not its blob's (the blob verifies, its segments do not open):
/// the download fails with the decrypt error, nothing appears at `dest` and nothing of the
/// download is left beside it. Several pieces long, so the error comes from the writer while
/// the stream is still delivering pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_with_another_key_shows_nothing_and_leaves_nothing() {
    let p = pair(BlobLimits::default()).await;
    let plain = pattern(3_000_000, 9);
    let id = send_bytes(&p.alice, p.conv, plain, Vec::new(), "video/mp4", "send").await;
    let (_, media) = received(&p.bob, p.conv, id).await;
    uploaded(&p.alice).await;
    let wrong = BlobDescriptor {
        key: tidings::engine::media::BlobKey::from_bytes([0x42; 32]),
        ..media
    };
    let dest = p.root.join("bob-wrong-key");
    let err = p
        .bob
        .download_media(p.conv, &wrong, &dest)
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            ReplicaError::Media(MediaError::Engine(
                tidings::engine::media::MediaError::Decrypt { index: 0 }
            ))
        ),
        "{err:?}"
    );
    assert!(!dest.exists());
    let left: Vec<_> = std::fs::read_dir(&p.root)
        .expect("root")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("bob-wrong-key"))
        .collect();
    assert!(left.is_empty(), "left beside dest: {left:?}");
}

/// Uploads and downloads complete through links that drop, duplicate and reorder
/// datagrams (seeded), and the bytes arrive intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_crosses_lossy_reordering_links() {
    use faults::{FaultProxy, Faults};
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().to_path_buf();
    let relay = relay(&root.join("relay"), BlobLimits::default()).await;
    // Loss high enough to hit every piece, low enough for QUIC's congestion control to move
    // a MiB in seconds (at 10% a MiB takes tens of seconds).
    let faults = Faults {
        drop_pct: 3,
        dup_pct: 3,
        delay_ms: (0, 20),
        reorder_pct: 10,
        reorder_ms: 40,
    };
    let to_alice = FaultProxy::start(relay.addr(), faults.clone(), 15).await;
    let to_bob = FaultProxy::start(relay.addr(), faults, 16).await;
    let alice = open_at(&root, "alice", 1, &relay, to_alice.addr).await;
    let bob = open_at(&root, "bob", 2, &relay, to_bob.addr).await;
    let conv = ConversationId([0x1f; 16]);
    start_with(&alice, &bob, conv).await;
    online(&alice).await;
    online(&bob).await;
    let plain = pattern(1024 * 1024 + 300_000, 3);
    let id = send_bytes(&alice, conv, plain.clone(), Vec::new(), "video/mp4", "send").await;
    let (_, media) = received(&bob, conv, id).await;
    eventually(120, "the upload over the lossy link", || async {
        alice.queued_uploads().is_ok_and(|q| q.is_empty())
    })
    .await;
    // A download may meet a broken connection (the link is bad): the app tries again.
    let dest = root.join("bob-got");
    let mut tries = 0;
    while let Err(e) = bob.download_media(conv, &media, &dest).await {
        tries += 1;
        assert!(tries < 20, "download keeps failing: {e}");
        online(&bob).await;
    }
    assert_eq!(std::fs::read(&dest).expect("read"), plain);
    let (_, dropped_a, _, reordered_a, _) = to_alice.stats.totals();
    let (_, dropped_b, _, reordered_b, _) = to_bob.stats.totals();
    assert!(dropped_a > 0 && dropped_b > 0 && reordered_a > 0 && reordered_b > 0);
}

/// A download dropped part-way keeps its synced prefix: started again, it fetches only the
/// rest (it failed before this was built: every download started from zero).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_from_its_synced_prefix() {
    use futures::StreamExt;
    use tidings::replica::{MediaDirection, Update, DOWNLOAD_SYNC_INTERVAL};
    const MIB: u64 = 1024 * 1024;
    let p = pair(BlobLimits::default()).await;
    let plain = pattern(40 * MIB as usize, 7);
    let id = send_bytes(
        &p.alice,
        p.conv,
        plain.clone(),
        b"video".to_vec(),
        "video/mp4",
        "send",
    )
    .await;
    let (_, media) = received(&p.bob, p.conv, id).await;
    uploaded(&p.alice).await;
    let len = media.cipher_len();
    let dest = p.root.join("bob-video");
    let download_progress = |u: Update| match u {
        Update::MediaProgress {
            blob,
            direction: MediaDirection::Download,
            done,
            ..
        } if blob == media.blob => Some(done),
        _ => None,
    };
    // Dropped once it is past the first sync interval.
    let mut progress = p.bob.updates();
    let task = tokio::spawn({
        let (bob, conv, media, dest) = (p.bob.clone(), p.conv, media.clone(), dest.clone());
        async move { bob.download_media(conv, &media, &dest).await }
    });
    let mut seen = 0;
    while seen <= DOWNLOAD_SYNC_INTERVAL + MIB {
        let u = tokio::time::timeout(Duration::from_secs(SECS), progress.next())
            .await
            .expect("download progress")
            .expect("updates");
        seen = download_progress(u).unwrap_or(seen).max(seen);
    }
    task.abort();
    assert!(
        task.await.is_err(),
        "the download ended before it was dropped"
    );
    assert!(!dest.exists());
    // Started again: the first piece fetched is the one just past the synced prefix.
    let mut progress = p.bob.updates();
    p.bob
        .download_media(p.conv, &media, &dest)
        .await
        .expect("resumed download");
    let mut after = Vec::new();
    while after.last() != Some(&len) {
        let u = tokio::time::timeout(Duration::from_secs(SECS), progress.next())
            .await
            .expect("download progress")
            .expect("updates");
        after.extend(download_progress(u));
    }
    let resumed_at = after[0] - MIB;
    assert!(
        resumed_at >= DOWNLOAD_SYNC_INTERVAL && resumed_at.is_multiple_of(DOWNLOAD_SYNC_INTERVAL),
        "resumed at {resumed_at}, not at a synced prefix"
    );
    eprintln!(
        "download dropped at ≥ {seen} B of {len}; resumed at {resumed_at} B: fetched again \
         {} B, fetched in all {} B",
        seen.saturating_sub(resumed_at),
        seen + len - resumed_at
    );
    assert_eq!(std::fs::read(&dest).expect("read"), plain);
    let media_dir = p.root.join("bob").join("media");
    let left: Vec<_> = std::fs::read_dir(&media_dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        !left
            .iter()
            .any(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("part" | "got"))),
        "partial download files left: {left:?}"
    );
}

/// Prefetch by policy: on a metered network a "Wi-Fi only" policy queues small media and
/// fetches nothing; back on an unmetered one it fetches them ahead of any tap (a tap then
/// needs no network: the relay is gone by then), and a blob over the size is left for a tap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_fetches_small_media_ahead_and_only_when_unmetered() {
    use futures::StreamExt;
    use tidings::replica::{PrefetchPolicy, Update};
    const KIB: usize = 1024;
    let p = pair(BlobLimits::default()).await;
    let mut updates = p.bob.updates();
    // Set from a thread outside the runtime, as a UI thread would.
    let bob = p.bob.clone();
    std::thread::spawn(move || {
        bob.set_prefetch(PrefetchPolicy::up_to(1024 * KIB as u64).unmetered_only());
        bob.set_metered(true);
    })
    .join()
    .expect("set from any thread");
    let mut sent = Vec::new();
    for (i, len) in [300 * KIB, 3 * 1024 * KIB, 200 * KIB]
        .into_iter()
        .enumerate()
    {
        let plain = pattern(len, i as u8);
        let id = send_bytes(
            &p.alice,
            p.conv,
            plain.clone(),
            format!("photo {i}").into_bytes(),
            "image/jpeg",
            "send_media",
        )
        .await;
        let (_, media) = received(&p.bob, p.conv, id).await;
        sent.push((plain, media));
    }
    uploaded(&p.alice).await;
    let (small, big, last) = (&sent[0].1, &sent[1].1, &sent[2].1);
    // The last one queued means the big one was judged before it.
    eventually(SECS, "both small blobs queued", || async {
        let q = p.bob.prefetch_queue();
        q.contains(&small.blob) && q.contains(&last.blob)
    })
    .await;
    assert!(!p.bob.prefetch_queue().contains(&big.blob), "over the size");
    let parts = || {
        std::fs::read_dir(p.root.join("bob").join("media"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(parts(), 0, "nothing fetched on a metered network");

    p.bob.set_metered(false);
    let mut ready = Vec::new();
    while ready.len() < 2 {
        let u = tokio::time::timeout(Duration::from_secs(SECS), updates.next())
            .await
            .expect("prefetched in time")
            .expect("updates");
        if let Update::MediaReady { conversation, blob } = u {
            assert_eq!(conversation, p.conv);
            ready.push(blob);
        }
    }
    ready.sort();
    let mut want = vec![small.blob, last.blob];
    want.sort();
    assert_eq!(ready, want);
    assert!(p.bob.prefetch_queue().is_empty());

    // No relay any more: what was prefetched opens without it; the big one cannot.
    p.relay.shutdown().await.expect("shutdown");
    for (i, (plain, media)) in sent.iter().enumerate() {
        let dest = p.root.join(format!("bob-prefetched-{i}"));
        let r = p.bob.download_media(p.conv, media, &dest).await;
        if media.blob == big.blob {
            assert!(r.is_err(), "the big one was never fetched: {r:?}");
        } else {
            r.unwrap_or_else(|e| panic!("#{i} not opened from the prefetched ciphertext: {e}"));
            assert_eq!(&std::fs::read(&dest).expect("read"), plain);
        }
    }
}
