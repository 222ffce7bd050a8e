//! Blob pieces, ranges and blob stream frames (`engine/src/media`): what a relay or a device
//! decodes from the other side of a blob stream.

use super::{patch, Reader};
use std::sync::OnceLock;
use tidings_engine::media::wire::{decode_reply, decode_request, BlobReply, BlobRequest};
use tidings_engine::media::{
    cipher_len, n_groups, plan_range, verify_piece, BlobTree, Bytes, Piece, CHUNK_GROUP_LEN,
    MAX_PIECE_GROUPS, SEGMENT_LEN,
};
use tidings_engine::wire::decode_body;
use tidings_engine::BlobId;

/// The oracle blob: 40 groups and a short last one (the hash does not care that it is not
/// real ciphertext).
fn blob() -> &'static (Vec<u8>, BlobTree) {
    static BLOB: OnceLock<(Vec<u8>, BlobTree)> = OnceLock::new();
    BLOB.get_or_init(|| {
        let bytes: Vec<u8> = (0..40 * CHUNK_GROUP_LEN as usize + 777)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let tree = BlobTree::hash(&bytes[..], bytes.len() as u64).expect("hash");
        (bytes, tree)
    })
}

/// Mode 0: the bytes as a blob stream frame body, both directions: no panic, what decodes
/// re-encodes to the same value, and the sharing decoders decode the same. Mode 1: a real piece of the oracle blob, damaged by
/// the rest of the input: a piece whose bytes changed is refused, and whatever verifies (all
/// of it, or the part before the first bad group) is exactly the blob's bytes at their
/// offsets. Mode 2: any piece header and bytes against any root and length: no panic.
/// Mode 3: a range plan covers its range with whole segments inside the blob.
pub fn check_blob_pieces(data: &[u8]) {
    let mut r = Reader::new(data);
    match r.u8() % 4 {
        0 => {
            let body = r.rest();
            // The decoders that share a piece's bytes agree with the plain ones.
            let shared = Bytes::copy_from_slice(body);
            assert_eq!(
                decode_request(shared.clone()).ok(),
                decode_body::<BlobRequest>(body).ok()
            );
            assert_eq!(
                decode_reply(shared).ok(),
                decode_body::<BlobReply>(body).ok()
            );
            if let Ok(f) = decode_body::<BlobRequest>(body) {
                let again = postcard::to_stdvec(&f).expect("encode");
                assert_eq!(decode_body::<BlobRequest>(&again).expect("decode"), f);
            }
            if let Ok(f) = decode_body::<BlobReply>(body) {
                let again = postcard::to_stdvec(&f).expect("encode");
                assert_eq!(decode_body::<BlobReply>(&again).expect("decode"), f);
            }
        }
        1 => {
            let (bytes, tree) = blob();
            let len = bytes.len() as u64;
            let groups = n_groups(len);
            let first = r.u64() % groups;
            let n = 1 + r.u64() % (groups - first).min(MAX_PIECE_GROUPS);
            let piece = tree.encode_piece(&bytes[..], first, n).expect("encode");
            let (damaged, changed) = patch(&piece.bytes, r.rest());
            let piece = Piece {
                bytes: damaged.into(),
                ..piece
            };
            let kept = match verify_piece(tree.root(), len, &piece) {
                Ok(v) => {
                    assert!(!changed, "a damaged piece verified");
                    assert_eq!(v.leaves.len() as u64, n);
                    v
                }
                Err(refused) => {
                    assert!(changed, "a good piece was refused: {}", refused.error);
                    refused.kept
                }
            };
            for (at, leaf) in kept.leaves {
                assert_eq!(&bytes[at as usize..at as usize + leaf.len()], &leaf[..]);
            }
        }
        2 => {
            let root = BlobId(r.array());
            let len = r.u64() % (1 << 40);
            let piece = Piece {
                first_group: r.u64(),
                n_groups: r.u64(),
                bytes: r.rest().to_vec().into(),
            };
            let _ = verify_piece(root, len, &piece);
        }
        _ => {
            let len = r.u64() % (1 << 36);
            let (a, b) = (r.u64(), r.u64());
            match plan_range(len, a..b) {
                Ok(plan) => {
                    assert!(a < b && b <= len);
                    assert!(plan.segments.start * SEGMENT_LEN <= a);
                    assert!(plan.segments.end * SEGMENT_LEN >= b);
                    assert!(plan.cipher.end <= cipher_len(len));
                    assert!(plan.groups.end <= n_groups(cipher_len(len)));
                }
                Err(_) => assert!(a >= b || b > len),
            }
        }
    }
}
