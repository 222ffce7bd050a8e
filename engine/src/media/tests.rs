use super::verify::{check_stored, group_bytes, piece_len};
use super::*;
use proptest::prelude::*;

fn key(b: u8) -> BlobKey {
    BlobKey::from_bytes([b; 32])
}

/// Plaintext with a recognisable pattern, so a leak of it is easy to search for.
fn pattern(len: usize) -> Vec<u8> {
    b"TIDINGS-PLAINTEXT-"
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Seals, hashes, moves every piece through [`verify_piece`] into a fresh buffer, opens it.
fn check(len: usize) {
    let plain = pattern(len);
    let k = key(7);
    let sealed = seal_blob(&k, &plain).expect("seal");
    assert_eq!(sealed.len() as u64, cipher_len(len as u64));
    assert!(!contains(&sealed, b"TIDINGS-PLAINTEXT") || len < 17);
    let tree = BlobTree::hash(&sealed[..], sealed.len() as u64).expect("hash");
    let root = tree.root();
    let groups = n_groups(sealed.len() as u64);
    let mut received = vec![0u8; sealed.len()];
    let mut first = 0;
    while first < groups {
        let n = (groups - first).min(MAX_PIECE_GROUPS);
        let piece = tree.encode_piece(&sealed[..], first, n).expect("encode");
        let v = verify_piece(root, sealed.len() as u64, &piece).expect("verifies");
        assert_eq!(v.leaves.len() as u64, n);
        for (at, bytes) in v.leaves {
            received[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
        }
        first += n;
    }
    assert_eq!(open_blob(&k, len as u64, &received).expect("open"), plain);
}

#[test]
fn round_trip_at_the_edges_of_a_segment() {
    for len in [0, 1, SEGMENT_LEN as usize, SEGMENT_LEN as usize + 1] {
        check(len);
    }
}

#[test]
fn round_trip_a_few_mib() {
    check(3 * 1024 * 1024 + 7);
}

#[test]
fn a_ciphertext_holds_no_plaintext() {
    let plain = pattern(200_000);
    let sealed = seal_blob(&key(1), &plain).expect("seal");
    assert!(contains(&plain, b"TIDINGS-PLAINTEXT"));
    assert!(!contains(&sealed, b"TIDINGS-PLAINTEXT"));
    assert!(!contains(&sealed, b"PLAINTEXT"));
}

#[test]
fn any_segment_opens_alone_and_only_in_its_place() {
    let plain = pattern(3 * SEGMENT_LEN as usize + 100);
    let k = key(3);
    let sealed = seal_blob(&k, &plain).expect("seal");
    let s = BlobSealer::new(&k, plain.len() as u64).expect("sealer");
    let seg = |i: u64| {
        let start = (i * SEALED_SEGMENT_LEN) as usize;
        let end =
            (start + (s.segment_len(i).expect("len") + SEGMENT_TAG_LEN) as usize).min(sealed.len());
        &sealed[start..end]
    };
    // The third segment alone.
    let third = s.open_segment(2, seg(2)).expect("opens alone");
    assert_eq!(
        third,
        &plain[2 * SEGMENT_LEN as usize..3 * SEGMENT_LEN as usize]
    );
    // At another place, under another key, or in a blob of another length: refused.
    assert_eq!(
        s.open_segment(1, seg(2)),
        Err(MediaError::Decrypt { index: 1 })
    );
    let other = BlobSealer::new(&key(4), plain.len() as u64).expect("sealer");
    assert!(other.open_segment(2, seg(2)).is_err());
    let longer = BlobSealer::new(&k, plain.len() as u64 + SEGMENT_LEN).expect("sealer");
    assert!(longer.open_segment(2, seg(2)).is_err());
    // A blob cut after a full segment: its new "last" segment is not marked last.
    let cut = &sealed[..3 * SEALED_SEGMENT_LEN as usize];
    assert!(open_blob(&k, 3 * SEGMENT_LEN, cut).is_err());
}

/// Opening in place gives what opening into a fresh buffer gives, and refuses what it refuses.
#[test]
fn a_segment_opens_in_place_as_it_opens_into_a_new_buffer() {
    let plain = pattern(2 * SEGMENT_LEN as usize + 7);
    let k = key(5);
    let sealed = seal_blob(&k, &plain).expect("seal");
    let s = BlobSealer::new(&k, plain.len() as u64).expect("sealer");
    for i in 0..s.n_segments() {
        let start = (i * SEALED_SEGMENT_LEN) as usize;
        let len = (s.segment_len(i).expect("len") + SEGMENT_TAG_LEN) as usize;
        let mut buf = sealed[start..start + len].to_vec();
        s.open_segment_in_place(i, &mut buf).expect("opens");
        assert_eq!(
            buf,
            s.open_segment(i, &sealed[start..start + len])
                .expect("open")
        );
        // One flipped bit, a wrong place, a wrong length: refused.
        let mut bad = sealed[start..start + len].to_vec();
        bad[len / 2] ^= 1;
        assert_eq!(
            s.open_segment_in_place(i, &mut bad),
            Err(MediaError::Decrypt { index: i })
        );
        let mut moved = sealed[start..start + len].to_vec();
        assert!(s.open_segment_in_place(i + 1, &mut moved).is_err());
        let mut short = sealed[start..start + len - 1].to_vec();
        assert!(s.open_segment_in_place(i, &mut short).is_err());
    }
}

#[test]
fn a_range_read_fetches_only_its_groups_and_opens_its_segments() {
    let plain = pattern(5 * SEGMENT_LEN as usize + 333);
    let k = key(5);
    let sealed = seal_blob(&k, &plain).expect("seal");
    let tree = BlobTree::hash(&sealed[..], sealed.len() as u64).expect("hash");
    let want = 2 * SEGMENT_LEN + 10..3 * SEGMENT_LEN + 20;
    let plan = plan_range(plain.len() as u64, want.clone()).expect("plan");
    assert_eq!(plan.segments, 2..4);
    let n = plan.groups.end - plan.groups.start;
    assert!(n <= MAX_PIECE_GROUPS);
    let piece = tree
        .encode_piece(&sealed[..], plan.groups.start, n)
        .expect("encode");
    let v = verify_piece(tree.root(), sealed.len() as u64, &piece).expect("verifies");
    let base = v.leaves[0].0;
    let bytes: Vec<u8> = v.leaves.into_iter().flat_map(|(_, b)| b).collect();
    let s = BlobSealer::new(&k, plain.len() as u64).expect("sealer");
    let mut out = Vec::new();
    for i in plan.segments.clone() {
        let start = (i * SEALED_SEGMENT_LEN - base) as usize;
        let len = (s.segment_len(i).expect("len") + SEGMENT_TAG_LEN) as usize;
        out.extend(s.open_segment(i, &bytes[start..start + len]).expect("open"));
    }
    let from = (want.start - plan.segments.start * SEGMENT_LEN) as usize;
    let to = from + (want.end - want.start) as usize;
    assert_eq!(
        &out[from..to],
        &plain[want.start as usize..want.end as usize]
    );
}

#[test]
fn a_corrupted_group_is_refused_and_the_groups_before_it_are_kept() {
    let sealed = seal_blob(&key(9), &pattern(40 * CHUNK_GROUP_LEN as usize)).expect("seal");
    let len = sealed.len() as u64;
    let tree = BlobTree::hash(&sealed[..], len).expect("hash");
    for bad_group in [0u64, 1, 17, n_groups(len) - 1] {
        let mut damaged = sealed.clone();
        let at = group_bytes(len, bad_group, 1).start as usize + 5;
        damaged[at] ^= 1;
        // A check of the stored bytes against the tree notices (a relay after a crash).
        let groups = n_groups(len);
        assert_eq!(
            check_stored(tree.root(), len, tree.outboard(), &damaged[..], 0, groups),
            Err(MediaError::Corrupt { group: bad_group })
        );
        assert_eq!(
            check_stored(tree.root(), len, tree.outboard(), &sealed[..], 0, groups),
            Ok(())
        );
        // A peer that sends the damaged bytes anyway: flip the same byte in a good piece.
        let mut piece = tree
            .encode_piece(&sealed[..], 0, n_groups(len))
            .expect("ok");
        let needle = &sealed[at..at + 32];
        let flipped = piece
            .bytes
            .windows(32)
            .position(|w| w == needle)
            .expect("the group's bytes are in the piece");
        let mut bytes = piece.bytes.to_vec();
        bytes[flipped] ^= 1;
        piece.bytes = bytes.into();
        let refused = verify_piece(tree.root(), len, &piece).expect_err("refused");
        assert_eq!(refused.error, MediaError::Corrupt { group: bad_group });
        assert_eq!(refused.kept.leaves.len() as u64, bad_group);
        assert_eq!(
            refused.kept.end().unwrap_or(0),
            group_bytes(len, bad_group, 1).start
        );
    }
}

#[test]
fn pieces_out_of_bounds_or_of_the_wrong_length_are_refused() {
    let sealed = seal_blob(&key(2), &pattern(100_000)).expect("seal");
    let len = sealed.len() as u64;
    let tree = BlobTree::hash(&sealed[..], len).expect("hash");
    let groups = n_groups(len);
    for (first, n) in [(0, 0), (groups, 1), (0, groups + 1), (u64::MAX, 2)] {
        assert!(matches!(
            tree.encode_piece(&sealed[..], first, n),
            Err(MediaError::BadPiece { .. })
        ));
    }
    let mut piece = tree.encode_piece(&sealed[..], 1, 2).expect("encode");
    assert_eq!(piece.bytes.len() as u64, piece_len(len, 1, 2).expect("len"));
    let mut longer = piece.bytes.to_vec();
    longer.push(0);
    let good_bytes = std::mem::replace(&mut piece.bytes, longer.into());
    assert!(matches!(
        verify_piece(tree.root(), len, &piece).map_err(|r| r.error),
        Err(MediaError::PieceLength { .. })
    ));
    piece.bytes = good_bytes.slice(..good_bytes.len() - 1);
    assert!(verify_piece(tree.root(), len, &piece).is_err());
    // The right bytes under another root.
    let good = tree.encode_piece(&sealed[..], 1, 2).expect("encode");
    assert!(verify_piece(crate::ids::BlobId([0; 32]), len, &good).is_err());
}

#[test]
fn a_media_body_round_trips_and_keeps_its_limits() {
    let body = MediaBody {
        caption: b"look".to_vec(),
        media: vec![BlobDescriptor {
            blob: crate::ids::BlobId([4; 32]),
            key: key(8),
            len: 12345,
            mime: "image/jpeg".into(),
            thumbnail: vec![1; MAX_THUMBNAIL_LEN],
        }],
    };
    let bytes = body.encode().expect("encode");
    assert_eq!(MediaBody::decode(&bytes).expect("decode"), body);
    let mut big = body.clone();
    big.media[0].thumbnail.push(0);
    assert!(big.encode().is_err());
    assert!(MediaBody::decode(&[]).is_err());
    assert!(MediaBody::decode(&[9, 0]).is_err());
    assert!(format!("{:?}", body.media[0].key) == "BlobKey(..)");
}

#[test]
fn cipher_lengths_are_what_the_segments_add() {
    assert_eq!(cipher_len(0), SEGMENT_TAG_LEN);
    assert_eq!(cipher_len(1), 1 + SEGMENT_TAG_LEN);
    assert_eq!(cipher_len(SEGMENT_LEN), SEALED_SEGMENT_LEN);
    assert_eq!(
        cipher_len(SEGMENT_LEN + 1),
        SEALED_SEGMENT_LEN + 1 + SEGMENT_TAG_LEN
    );
    assert!(plan_range(10, 5..5).is_err());
    assert!(plan_range(10, 5..11).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The piece decoder takes any bytes for any groups without panicking.
    #[test]
    fn the_piece_decoder_takes_any_bytes(
        cipher_len in 1u64..200_000,
        first in 0u64..20,
        n in 0u64..70,
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        root in any::<[u8; 32]>(),
    ) {
        let piece = Piece { first_group: first, n_groups: n, bytes: bytes.into() };
        let _ = verify_piece(crate::ids::BlobId(root), cipher_len, &piece);
    }

    /// A planned range covers the asked bytes with whole segments inside the blob.
    #[test]
    fn a_range_plan_covers_its_range(len in 1u64..5_000_000, a in 0u64..5_000_000, b in 1u64..5_000_000) {
        let (start, end) = (a % len, (a % len) + 1 + b % (len - a % len).max(1));
        let end = end.min(len);
        let plan = plan_range(len, start..end).expect("plan");
        prop_assert!(plan.segments.start * SEGMENT_LEN <= start);
        prop_assert!(plan.segments.end * SEGMENT_LEN >= end);
        prop_assert!(plan.cipher.end <= cipher_len(len));
        prop_assert!(plan.groups.start * CHUNK_GROUP_LEN <= plan.cipher.start);
        prop_assert!(plan.groups.end * CHUNK_GROUP_LEN >= plan.cipher.end);
        prop_assert!(plan.groups.end <= n_groups(cipher_len(len)));
    }
}
