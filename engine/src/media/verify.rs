//! The hash tree over a blob's ciphertext and the pieces that carry it.
//!
//! The tree is BLAKE3's own (bao), with chunk groups of [`CHUNK_GROUP_LEN`] bytes as leaves;
//! its root is the blob id. The *outboard* holds the tree's parent hash pairs in pre-order,
//! 64 bytes each, apart from the data (`BaoTree::outboard_size` bytes: 4 KiB per MiB of
//! ciphertext). A [`Piece`] is bao's encoding of a run of chunk groups: the parent pairs on
//! the way from the root, in pre-order, interleaved with the groups' bytes. A receiver that
//! knows the root and the ciphertext length checks a piece group by group
//! ([`verify_piece`]) and keeps what verified before the first bad group.

use super::{n_groups, MediaError, CHUNK_GROUP_LEN, CHUNK_GROUP_LOG, MAX_PIECE_GROUPS};
use crate::ids::BlobId;
use bao_tree::io::outboard::PreOrderMemOutboard;
use bao_tree::io::sync::{encode_ranges_validated, Outboard, ReadAt};
use bao_tree::io::EncodeError;
use bao_tree::iter::BaoChunk;
use bao_tree::{blake3, BaoTree, BlockSize, ChunkNum, ChunkRanges, TreeNode};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::io::Read;

const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(CHUNK_GROUP_LOG);
/// BLAKE3 chunks (1 KiB) per chunk group.
const CHUNKS_PER_GROUP: u64 = 1 << CHUNK_GROUP_LOG;
/// Bytes of one parent hash pair in an outboard or a piece.
pub const PAIR_LEN: u64 = 64;

/// A run of chunk groups as it travels: bao's encoding of groups
/// `first_group..first_group + n_groups`, parents from the root included. The bytes are
/// shared, not copied, between the frame they arrived in and the groups they verify into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// The first chunk group.
    pub first_group: u64,
    /// Chunk groups in the piece (1..=[`MAX_PIECE_GROUPS`]).
    pub n_groups: u64,
    /// The encoding.
    #[serde(with = "serde_shared_bytes")]
    pub bytes: Bytes,
}

/// What a piece proved: parent pairs (at their outboard offsets) and ciphertext (at its blob
/// offsets), each checked against the root. The ciphertext is a view of the piece's bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifiedPiece {
    /// `(outboard byte offset, left hash ‖ right hash)`.
    pub parents: Vec<(u64, [u8; 64])>,
    /// `(ciphertext byte offset, bytes)`, one entry per chunk group, in order.
    pub leaves: Vec<(u64, Bytes)>,
}

impl VerifiedPiece {
    /// The ciphertext offset just past the last verified group (`None` when none verified).
    pub fn end(&self) -> Option<u64> {
        self.leaves.last().map(|(at, b)| at + b.len() as u64)
    }
}

/// A piece that failed part-way: what verified before the failure, and why it stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error} ({} groups verified before it)", kept.leaves.len())]
pub struct PieceRefused {
    /// The groups (and parents) that verified before the first bad one.
    pub kept: VerifiedPiece,
    /// Why the rest was refused.
    pub error: MediaError,
}

/// The hash tree of a blob's ciphertext: root and outboard.
#[derive(Clone, PartialEq, Eq)]
pub struct BlobTree {
    root: BlobId,
    cipher_len: u64,
    outboard: Vec<u8>,
}

impl std::fmt::Debug for BlobTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobTree")
            .field("root", &self.root)
            .field("cipher_len", &self.cipher_len)
            .finish_non_exhaustive()
    }
}

impl BlobTree {
    /// Hashes `cipher_len` bytes of ciphertext read from `ciphertext`, holding only the
    /// outboard in memory.
    pub fn hash(ciphertext: impl Read, cipher_len: u64) -> Result<BlobTree, MediaError> {
        let tree = BaoTree::new(cipher_len, BLOCK_SIZE);
        let size = usize::try_from(tree.outboard_size())
            .map_err(|_| MediaError::Io("outboard too large".into()))?;
        let mut ob = PreOrderMemOutboard {
            root: blake3::Hash::from([0; 32]),
            tree,
            data: vec![0u8; size],
        };
        let root = bao_tree::io::sync::outboard(ciphertext, tree, &mut ob)
            .map_err(|e| MediaError::Io(e.to_string()))?;
        Ok(BlobTree {
            root: BlobId(*root.as_bytes()),
            cipher_len,
            outboard: ob.data,
        })
    }

    /// The blob id.
    pub fn root(&self) -> BlobId {
        self.root
    }

    /// Ciphertext length.
    pub fn cipher_len(&self) -> u64 {
        self.cipher_len
    }

    /// The outboard bytes (parent pairs in pre-order).
    pub fn outboard(&self) -> &[u8] {
        &self.outboard
    }

    /// Encodes groups `first_group..first_group + n_groups` of `data` (the ciphertext).
    pub fn encode_piece(
        &self,
        data: impl ReadAt,
        first_group: u64,
        n_groups: u64,
    ) -> Result<Piece, MediaError> {
        encode_piece(
            self.cipher_len,
            &self.outboard[..],
            data,
            first_group,
            n_groups,
        )
    }
}

/// Bytes of the outboard of a ciphertext of `cipher_len` bytes.
pub fn outboard_len(cipher_len: u64) -> u64 {
    BaoTree::new(cipher_len, BLOCK_SIZE).outboard_size()
}

/// Encodes a piece from any positioned reader of the outboard and of the ciphertext (a
/// device's own files, the relay's store), reading the groups straight into the piece. The
/// bytes are not hashed here: the receiver verifies every group against the root
/// ([`verify_piece`]), so one hash per transfer is enough; [`check_stored`] is the sender's
/// own check when it has reason to doubt its files.
pub fn encode_piece(
    cipher_len: u64,
    outboard: impl ReadAt,
    data: impl ReadAt,
    first_group: u64,
    n_groups: u64,
) -> Result<Piece, MediaError> {
    let ranges = piece_ranges(cipher_len, first_group, n_groups)?;
    let len = piece_len(cipher_len, first_group, n_groups)?;
    let len = usize::try_from(len).map_err(|_| MediaError::Io("piece too large".into()))?;
    let tree = BaoTree::new(cipher_len, BLOCK_SIZE);
    let mut bytes = BytesMut::zeroed(len);
    let mut at = 0usize;
    let io = |e: std::io::Error| MediaError::Io(e.to_string());
    for chunk in tree.ranges_pre_order_chunks_iter_ref(&ranges, 0) {
        match chunk {
            BaoChunk::Parent { node, .. } => {
                let offset = tree
                    .pre_order_offset(node)
                    .ok_or_else(|| MediaError::Io("parent outside the outboard".into()))?;
                let end = at + PAIR_LEN as usize;
                outboard
                    .read_exact_at(offset * PAIR_LEN, &mut bytes[at..end])
                    .map_err(io)?;
                at = end;
            }
            BaoChunk::Leaf {
                start_chunk, size, ..
            } => {
                data.read_exact_at(start_chunk.to_bytes(), &mut bytes[at..at + size])
                    .map_err(io)?;
                at += size;
            }
        }
    }
    Ok(Piece {
        first_group,
        n_groups,
        bytes: bytes.freeze(),
    })
}

/// Checks groups `first_group..first_group + n_groups` of a stored blob (ciphertext and
/// outboard) against its root, reading them from positioned readers: `Ok` when every group
/// and every parent on their way verifies, [`MediaError::Corrupt`] naming the first that
/// does not. A relay re-checks the unsynced tail of a partial upload this way after a crash.
pub fn check_stored(
    root: BlobId,
    cipher_len: u64,
    outboard: impl ReadAt,
    data: impl ReadAt,
    first_group: u64,
    n_groups: u64,
) -> Result<(), MediaError> {
    let ranges = piece_ranges(cipher_len, first_group, n_groups)?;
    let ob = PositionedOutboard {
        root: blake3::Hash::from(root.0),
        tree: BaoTree::new(cipher_len, BLOCK_SIZE),
        data: outboard,
    };
    encode_ranges_validated(data, ob, &ranges, std::io::sink()).map_err(|e| match e {
        EncodeError::LeafHashMismatch(c) => MediaError::Corrupt {
            group: c.0 / CHUNKS_PER_GROUP,
        },
        EncodeError::ParentHashMismatch(n) => MediaError::Corrupt {
            group: n.chunk_range().start.0 / CHUNKS_PER_GROUP,
        },
        other => MediaError::Io(other.to_string()),
    })
}

/// Bytes a piece of these groups holds (parents and data): what a receiver expects before it
/// reads any of it.
pub fn piece_len(cipher_len: u64, first_group: u64, n_groups: u64) -> Result<u64, MediaError> {
    let ranges = piece_ranges(cipher_len, first_group, n_groups)?;
    let tree = BaoTree::new(cipher_len, BLOCK_SIZE);
    Ok(tree
        .ranges_pre_order_chunks_iter_ref(&ranges, 0)
        .map(|c| match c {
            BaoChunk::Parent { .. } => PAIR_LEN,
            BaoChunk::Leaf { size, .. } => size as u64,
        })
        .sum())
}

/// Checks a piece against the blob's root, group by group, hashing each group once and
/// copying nothing: the verified groups are views of the piece's bytes. On the first bad
/// group (or a piece of the wrong length) it stops: what verified before stays usable in
/// [`PieceRefused::kept`].
pub fn verify_piece(
    root: BlobId,
    cipher_len: u64,
    piece: &Piece,
) -> Result<VerifiedPiece, PieceRefused> {
    let mut out = VerifiedPiece::default();
    match verify_into(root, cipher_len, piece, &mut out) {
        Ok(()) => Ok(out),
        Err(error) => Err(PieceRefused { kept: out, error }),
    }
}

fn verify_into(
    root: BlobId,
    cipher_len: u64,
    piece: &Piece,
    out: &mut VerifiedPiece,
) -> Result<(), MediaError> {
    let expected = piece_len(cipher_len, piece.first_group, piece.n_groups)?;
    let bytes = &piece.bytes;
    if bytes.len() as u64 != expected {
        return Err(MediaError::PieceLength {
            len: bytes.len(),
            expected,
        });
    }
    let ranges = piece_ranges(cipher_len, piece.first_group, piece.n_groups)?;
    let tree = BaoTree::new(cipher_len, BLOCK_SIZE);
    // The hashes still to be matched, the next one on top: the walk is bao's pre-order.
    let mut stack = vec![blake3::Hash::from(root.0)];
    let mut at = 0usize;
    let short = MediaError::PieceLength {
        len: bytes.len(),
        expected,
    };
    for chunk in tree.ranges_pre_order_chunks_iter_ref(&ranges, 0) {
        match chunk {
            BaoChunk::Parent {
                node,
                is_root,
                left,
                right,
                ..
            } => {
                let corrupt = MediaError::Corrupt {
                    group: node.chunk_range().start.0 / CHUNKS_PER_GROUP,
                };
                let mut pair = [0u8; 64];
                pair.copy_from_slice(bytes.get(at..at + 64).ok_or(short.clone())?);
                at += 64;
                let mut l = [0u8; 32];
                let mut r = [0u8; 32];
                l.copy_from_slice(&pair[..32]);
                r.copy_from_slice(&pair[32..]);
                let want = stack.pop().ok_or(corrupt.clone())?;
                if parent_cv(&l, &r, is_root) != want {
                    return Err(corrupt);
                }
                if right {
                    stack.push(blake3::Hash::from(r));
                }
                if left {
                    stack.push(blake3::Hash::from(l));
                }
                if let Some(offset) = tree.pre_order_offset(node) {
                    out.parents.push((offset * PAIR_LEN, pair));
                }
            }
            BaoChunk::Leaf {
                start_chunk,
                size,
                is_root,
                ..
            } => {
                let corrupt = MediaError::Corrupt {
                    group: start_chunk.0 / CHUNKS_PER_GROUP,
                };
                if at + size > bytes.len() {
                    return Err(short);
                }
                let data = bytes.slice(at..at + size);
                at += size;
                let want = stack.pop().ok_or(corrupt.clone())?;
                if hash_subtree(start_chunk, &data, is_root) != want {
                    return Err(corrupt);
                }
                out.leaves.push((start_chunk.to_bytes(), data));
            }
        }
    }
    Ok(())
}

/// BLAKE3's chaining value of a run of chunks starting at `start` (bao's leaf hash).
fn hash_subtree(start: ChunkNum, data: &[u8], is_root: bool) -> blake3::Hash {
    use blake3::hazmat::HasherExt;
    if is_root {
        blake3::hash(data)
    } else {
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(start.to_bytes());
        hasher.update(data);
        blake3::Hash::from(hasher.finalize_non_root())
    }
}

/// BLAKE3's chaining value of a parent from its two children.
fn parent_cv(left: &[u8; 32], right: &[u8; 32], is_root: bool) -> blake3::Hash {
    use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, Mode};
    if is_root {
        merge_subtrees_root(left, right, Mode::Hash)
    } else {
        blake3::Hash::from(merge_subtrees_non_root(left, right, Mode::Hash))
    }
}

/// The chunk ranges of groups `first..first + n`, checked against the blob's size.
fn piece_ranges(cipher_len: u64, first: u64, n: u64) -> Result<ChunkRanges, MediaError> {
    let groups = n_groups(cipher_len);
    let bad = || MediaError::BadPiece {
        first,
        n_groups: n,
        groups,
    };
    let end = first.checked_add(n).ok_or_else(bad)?;
    if n == 0 || n > MAX_PIECE_GROUPS || end > groups {
        return Err(bad());
    }
    let start = ChunkNum(first * CHUNKS_PER_GROUP);
    // The last group may be short: its range runs to the end of the blob.
    Ok(if end == groups {
        ChunkRanges::from(start..)
    } else {
        ChunkRanges::from(start..ChunkNum(end * CHUNKS_PER_GROUP))
    })
}

/// An outboard read through positioned reads (a file, a slice).
struct PositionedOutboard<D> {
    root: blake3::Hash,
    tree: BaoTree,
    data: D,
}

impl<D: ReadAt> Outboard for PositionedOutboard<D> {
    fn root(&self) -> blake3::Hash {
        self.root
    }

    fn tree(&self) -> BaoTree {
        self.tree
    }

    fn load(&self, node: TreeNode) -> std::io::Result<Option<(blake3::Hash, blake3::Hash)>> {
        let Some(at) = self.tree.pre_order_offset(node) else {
            return Ok(None);
        };
        let mut pair = [0u8; 64];
        self.data.read_exact_at(at * PAIR_LEN, &mut pair)?;
        let mut l = [0u8; 32];
        let mut r = [0u8; 32];
        l.copy_from_slice(&pair[..32]);
        r.copy_from_slice(&pair[32..]);
        Ok(Some((blake3::Hash::from(l), blake3::Hash::from(r))))
    }
}

/// The ciphertext byte range of groups `first..first + n` of a blob.
pub fn group_bytes(cipher_len: u64, first: u64, n: u64) -> std::ops::Range<u64> {
    let at = |g: u64| g.saturating_mul(CHUNK_GROUP_LEN).min(cipher_len);
    at(first)..at(first.saturating_add(n))
}

/// A piece's bytes as postcard bytes (a length, then the bytes), shared on decode.
mod serde_shared_bytes {
    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        crate::event::serde_bytes_vec::deserialize(d).map(Bytes::from)
    }
}
