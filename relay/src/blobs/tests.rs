use super::*;
use tidings_engine::media::{
    n_groups, open_blob, seal_blob, verify_piece, BlobKey, BlobTree, MediaError, SEGMENT_LEN,
};

const ALICE: UserId = UserId([1; 32]);
const BOB: UserId = UserId([2; 32]);
const CHAT: ConversationId = ConversationId([10; 16]);
const OTHER: ConversationId = ConversationId([11; 16]);
const NOW: u64 = 1_000_000;

fn pattern(len: usize) -> Vec<u8> {
    b"RELAY-SEES-NO-PLAINTEXT-"
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// A blob sealed and hashed on the "device" side.
struct Sealed {
    plain: Vec<u8>,
    cipher: Vec<u8>,
    tree: BlobTree,
}

fn sealed(len: usize) -> Sealed {
    let plain = pattern(len);
    let cipher = seal_blob(&BlobKey::from_bytes([5; 32]), &plain).expect("seal");
    let tree = BlobTree::hash(&cipher[..], cipher.len() as u64).expect("hash");
    Sealed {
        plain,
        cipher,
        tree,
    }
}

fn store(dir: &Path) -> BlobStore {
    BlobStore::open(dir, BlobLimits::default()).expect("open")
}

/// Sends pieces from where the store stands until `stop_after` pieces went (or the end);
/// returns the ciphertext bytes sent.
fn upload(s: &mut BlobStore, b: &Sealed, stop_after: usize) -> u64 {
    let id = b.tree.root();
    let len = b.cipher.len() as u64;
    let mut state = s
        .begin_upload(ALICE, CHAT, true, id, len, NOW)
        .expect("begin");
    let mut sent = 0;
    for _ in 0..stop_after {
        if state.complete() {
            break;
        }
        let first = state.next_group();
        let n = (n_groups(len) - first).min(MAX_PIECE_GROUPS);
        let piece = b
            .tree
            .encode_piece(&b.cipher[..], first, n)
            .expect("encode");
        sent += group_bytes(len, first, n).end - group_bytes(len, first, n).start;
        state = s.put_piece(ALICE, id, &piece).expect("piece");
    }
    sent
}

/// Downloads every group as a member of `conversation` and opens the blob.
fn download(s: &BlobStore, b: &Sealed, conversation: ConversationId) -> Vec<u8> {
    let id = b.tree.root();
    let len = b.cipher.len() as u64;
    let mut got = vec![0u8; len as usize];
    let mut first = 0;
    while first < n_groups(len) {
        let piece = s
            .read_piece(id, conversation, true, first, MAX_PIECE_GROUPS, NOW)
            .expect("read");
        let v = verify_piece(id, len, &piece).expect("verifies");
        for (at, bytes) in v.leaves {
            got[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
        }
        first += piece.n_groups;
    }
    open_blob(&BlobKey::from_bytes([5; 32]), b.plain.len() as u64, &got).expect("open")
}

fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    fs::read_dir(dir).expect("dir").any(|e| {
        let bytes = fs::read(e.expect("entry").path()).expect("read");
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

#[test]
fn blobs_round_trip_and_the_relay_files_hold_no_plaintext() {
    for len in [
        0,
        1,
        SEGMENT_LEN as usize,
        SEGMENT_LEN as usize + 1,
        5 * 1024 * 1024 + 3,
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = store(dir.path());
        let b = sealed(len);
        upload(&mut s, &b, usize::MAX);
        assert!(s.state(b.tree.root()).expect("held").complete());
        assert_eq!(download(&s, &b, CHAT), b.plain, "len {len}");
        assert!(!files_contain(dir.path(), b"SEES-NO-PLAIN"), "len {len}");
    }
}

#[test]
fn an_upload_resumes_from_the_recorded_offset_after_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let b = sealed(3 * 1024 * 1024);
    let len = b.cipher.len() as u64;
    let first_run = {
        let mut s = store(dir.path());
        upload(&mut s, &b, 2)
    };
    // Reopened: the store stands where the synced record says, and only the rest is sent.
    let mut s = store(dir.path());
    let state = s.state(b.tree.root()).expect("held");
    assert_eq!(state.verified, first_run);
    let second_run = upload(&mut s, &b, usize::MAX);
    assert_eq!(first_run + second_run, len);
    assert_eq!(download(&s, &b, CHAT), b.plain);
    assert_eq!(s.used(ALICE), len);
}

#[test]
fn a_corrupted_group_is_refused_and_the_groups_before_it_are_kept() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = store(dir.path());
    let b = sealed(2 * 1024 * 1024);
    let id = b.tree.root();
    let len = b.cipher.len() as u64;
    s.begin_upload(ALICE, CHAT, true, id, len, NOW)
        .expect("begin");
    let mut piece = b.tree.encode_piece(&b.cipher[..], 0, 64).expect("encode");
    let bad_at = group_bytes(len, 9, 1).start as usize + 100;
    let needle = &b.cipher[bad_at..bad_at + 32];
    let i = piece
        .bytes
        .windows(32)
        .position(|w| w == needle)
        .expect("in piece");
    let mut bytes = piece.bytes.to_vec();
    bytes[i] ^= 0x80;
    piece.bytes = bytes.into();
    match s.put_piece(ALICE, id, &piece) {
        Err(BlobError::Media(MediaError::Corrupt { group: 9 })) => {}
        other => panic!("expected a refusal at group 9, got {other:?}"),
    }
    // Groups 0..9 verified and are kept: the upload resumes at group 9.
    assert_eq!(s.state(id).expect("held").next_group(), 9);
    upload(&mut s, &b, usize::MAX);
    assert_eq!(download(&s, &b, CHAT), b.plain);
}

/// A file damaged on disk after its groups verified: the relay serves what it holds without
/// hashing it again, and the downloader refuses the damaged group (keeping the ones before).
#[test]
fn a_group_damaged_on_disk_is_refused_by_the_downloader() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = store(dir.path());
    let b = sealed(200_000);
    upload(&mut s, &b, usize::MAX);
    let data = dir
        .path()
        .join(hex::encode(b.tree.root().0))
        .with_extension("data");
    let mut bytes = fs::read(&data).expect("read");
    bytes[50_000] ^= 1;
    fs::write(&data, bytes).expect("write");
    let group = 50_000 / media::CHUNK_GROUP_LEN;
    let len = b.cipher.len() as u64;
    let piece = s
        .read_piece(b.tree.root(), CHAT, true, 0, MAX_PIECE_GROUPS, NOW)
        .expect("served");
    let refused = verify_piece(b.tree.root(), len, &piece).expect_err("refused");
    assert_eq!(refused.error, MediaError::Corrupt { group });
    assert_eq!(refused.kept.leaves.len() as u64, group);
}

/// A relay killed mid-upload: what its files hold past the last synced record, and the last
/// sync interval before it, is checked against the root when it opens again. A group that
/// does not verify (a write torn by the crash, a tail the disk lost) is not counted as held,
/// nor is anything after it; what verified before it is, so the upload resumes there.
#[test]
fn after_a_crash_the_tail_is_checked_and_a_torn_group_is_not_counted_as_held() {
    let b = sealed(10 * 1024 * 1024);
    let id = b.tree.root();
    let len = b.cipher.len() as u64;
    let piece_bytes = MAX_PIECE_GROUPS * media::CHUNK_GROUP_LEN;
    // Nine pieces: synced and recorded at 8 MiB, the ninth written past the record. Torn:
    // nothing, groups the record vouches for (the disk lost them), a group past it.
    for torn_group in [None, Some(10u64), Some(400), Some(520)] {
        let dir = tempfile::tempdir().expect("tmp");
        let sent = {
            let mut s = store(dir.path());
            upload(&mut s, &b, 9)
        };
        assert_eq!(sent, 9 * piece_bytes);
        let meta = dir.path().join(hex::encode(id.0)).with_extension("meta");
        let recorded = BlobRecord::read(&meta).expect("record").verified;
        assert_eq!(recorded, BLOB_SYNC_INTERVAL, "synced once, at the interval");
        let data = dir.path().join(hex::encode(id.0)).with_extension("data");
        if let Some(g) = torn_group {
            let f = open_rw(&data).expect("open data");
            f.write_all_at(&[0xee; 64], group_bytes(len, g, 1).start + 1000)
                .expect("tear");
        }
        let mut s = store(dir.path());
        let state = s.state(id).expect("held");
        let expected = torn_group.map_or(sent, |g| group_bytes(len, g, 1).start);
        assert_eq!(
            state.verified, expected,
            "torn {torn_group:?}: the store claims what its file does not hold, or lost what it does"
        );
        let rest = upload(&mut s, &b, usize::MAX);
        assert_eq!(rest, len - state.verified);
        assert_eq!(download(&s, &b, CHAT), b.plain);
    }
}

#[test]
fn only_members_of_a_referencing_conversation_read_a_blob() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = store(dir.path());
    let b = sealed(1000);
    let id = b.tree.root();
    upload(&mut s, &b, usize::MAX);
    // Not a member of the conversation that references it.
    assert!(matches!(
        s.read_piece(id, CHAT, false, 0, 1, NOW),
        Err(BlobError::NotMember)
    ));
    // A member of a conversation that does not reference it.
    assert!(matches!(
        s.read_piece(id, OTHER, true, 0, 1, NOW),
        Err(BlobError::NotMember)
    ));
    // A non-member cannot start an upload into a conversation either.
    assert!(matches!(
        s.begin_upload(BOB, OTHER, false, id, b.cipher.len() as u64, NOW),
        Err(BlobError::NotMember)
    ));
    assert!(matches!(
        s.read_piece(BlobId([9; 32]), CHAT, true, 0, 1, NOW),
        Err(BlobError::NotFound)
    ));
}

#[test]
fn a_forward_references_the_blob_without_uploading_it_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = store(dir.path());
    let b = sealed(300_000);
    let id = b.tree.root();
    let len = b.cipher.len() as u64;
    upload(&mut s, &b, usize::MAX);
    // Forwarding needs read access in the source conversation.
    assert!(matches!(
        s.attach(id, (CHAT, false), (OTHER, true), NOW),
        Err(BlobError::NotMember)
    ));
    let state = s
        .attach(id, (CHAT, true), (OTHER, true), NOW)
        .expect("attach");
    assert!(state.complete());
    assert_eq!(download(&s, &b, OTHER), b.plain);
    // A device that asks to upload it into a third conversation is told it is complete.
    let again = s
        .begin_upload(BOB, ConversationId([12; 16]), true, id, len, NOW)
        .expect("begin");
    assert!(again.complete());
    assert_eq!(s.used(BOB), 0);
    assert_eq!(s.used(ALICE), len);
}

#[test]
fn over_the_cap_or_the_quota_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tmp");
    let limits = BlobLimits {
        max_blob_len: 1000,
        quota_per_user: 1500,
        ..BlobLimits::default()
    };
    let mut s = BlobStore::open(dir.path(), limits).expect("open");
    assert!(matches!(
        s.begin_upload(ALICE, CHAT, true, BlobId([1; 32]), 1001, NOW),
        Err(BlobError::TooLarge {
            len: 1001,
            max: 1000
        })
    ));
    s.begin_upload(ALICE, CHAT, true, BlobId([2; 32]), 1000, NOW)
        .expect("within");
    assert!(matches!(
        s.begin_upload(ALICE, CHAT, true, BlobId([3; 32]), 600, NOW),
        Err(BlobError::OverQuota {
            used: 1000,
            len: 600,
            quota: 1500
        })
    ));
    // Another user's quota is their own.
    s.begin_upload(BOB, CHAT, true, BlobId([3; 32]), 600, NOW)
        .expect("bob");
    assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 6);
}

#[test]
fn pieces_out_of_order_or_from_another_user_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = store(dir.path());
    let b = sealed(2 * 1024 * 1024);
    let id = b.tree.root();
    let len = b.cipher.len() as u64;
    s.begin_upload(ALICE, CHAT, true, id, len, NOW)
        .expect("begin");
    let later = b.tree.encode_piece(&b.cipher[..], 64, 10).expect("encode");
    assert!(matches!(
        s.put_piece(ALICE, id, &later),
        Err(BlobError::OutOfOrder {
            first: 64,
            expected: 0
        })
    ));
    let first = b.tree.encode_piece(&b.cipher[..], 0, 10).expect("encode");
    assert!(matches!(
        s.put_piece(BOB, id, &first),
        Err(BlobError::NotUploader)
    ));
    assert!(matches!(
        s.begin_upload(BOB, CHAT, true, id, len, NOW),
        Err(BlobError::NotUploader)
    ));
    // A resend of a piece already held changes nothing.
    let state = s.put_piece(ALICE, id, &first).expect("first");
    assert_eq!(s.put_piece(ALICE, id, &first).expect("again"), state);
    assert!(matches!(
        s.begin_upload(ALICE, CHAT, true, id, len + 1, NOW),
        Err(BlobError::LengthMismatch { .. })
    ));
}

#[test]
fn expired_references_delete_the_blob_and_give_the_quota_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = store(dir.path());
    let b = sealed(5000);
    let id = b.tree.root();
    upload(&mut s, &b, usize::MAX);
    let ttl = s.limits().ttl_ms;
    // A forward a day later keeps the blob for that conversation's own TTL.
    s.attach(id, (CHAT, true), (OTHER, true), NOW + 86_400_000)
        .expect("attach");
    assert!(s.expire(NOW + ttl).expect("expire").is_empty());
    assert!(matches!(
        s.read_piece(id, CHAT, true, 0, 1, NOW + ttl),
        Err(BlobError::NotMember)
    ));
    s.read_piece(id, OTHER, true, 0, 1, NOW + ttl)
        .expect("other still reads");
    assert_eq!(s.expire(NOW + 86_400_000 + ttl).expect("expire"), vec![id]);
    assert_eq!(s.used(ALICE), 0);
    assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 0);
    // And it stays gone after a restart.
    drop(s);
    assert!(store(dir.path()).state(id).is_none());
}

#[test]
fn a_damaged_record_is_dropped_with_its_files_on_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let b = sealed(5000);
    {
        let mut s = store(dir.path());
        upload(&mut s, &b, usize::MAX);
    }
    let meta = dir
        .path()
        .join(hex::encode(b.tree.root().0))
        .with_extension("meta");
    fs::write(&meta, [1, 2, 3]).expect("damage");
    let s = store(dir.path());
    assert!(s.state(b.tree.root()).is_none());
    assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 0);
}

/// An interval's sync left to the caller: nothing is recorded until it is finished; a
/// finished one records its offset; a failed one drops what was written past the record (the
/// device resumes there), and the next piece from past it is refused as out of order.
#[test]
fn a_deferred_sync_records_its_offset_only_when_finished() {
    let b = sealed((BLOB_SYNC_INTERVAL + 2 * SEGMENT_LEN) as usize);
    let id = b.tree.root();
    let len = b.cipher.len() as u64;
    let meta = |dir: &Path| dir.join(hex::encode(id.0)).with_extension("meta");
    let piece_at = |first: u64| {
        let n = (n_groups(len) - first).min(MAX_PIECE_GROUPS);
        b.tree
            .encode_piece(&b.cipher[..], first, n)
            .expect("encode")
    };
    for fails in [false, true] {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = store(dir.path());
        let mut state = s
            .begin_upload(ALICE, CHAT, true, id, len, NOW)
            .expect("begin");
        let mut due = None;
        while due.is_none() {
            let (r, d) = s.put_piece_deferring_sync(ALICE, id, &piece_at(state.next_group()));
            state = r.expect("piece");
            due = d;
        }
        let due = due.expect("due");
        assert_eq!(state.verified, BLOB_SYNC_INTERVAL);
        let recorded = || {
            BlobRecord::read(&meta(dir.path()))
                .expect("record")
                .verified
        };
        assert_eq!(
            recorded(),
            0,
            "nothing recorded before the sync is finished"
        );
        if fails {
            let failed = s.finish_sync(&due, Err(std::io::Error::other("disk gone")));
            assert!(matches!(failed, Err(BlobError::Io(_))));
            assert_eq!(recorded(), 0);
            assert_eq!(
                s.state(id).expect("state").verified,
                0,
                "resume from the record"
            );
            let past = piece_at(state.next_group());
            assert!(matches!(
                s.put_piece(ALICE, id, &past),
                Err(BlobError::OutOfOrder { expected: 0, .. })
            ));
            continue;
        }
        due.run().expect("sync");
        s.finish_sync(&due, Ok(())).expect("finish");
        assert_eq!(recorded(), BLOB_SYNC_INTERVAL);
        // The last piece is synced and recorded before its answer.
        let (r, d) = s.put_piece_deferring_sync(ALICE, id, &piece_at(state.next_group()));
        assert!(r.expect("last").complete());
        assert!(d.is_none());
        assert_eq!(recorded(), len);
    }
}
