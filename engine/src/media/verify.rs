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
use bao_tree::io::sync::{encode_ranges_validated, DecodeResponseIter, Outboard, ReadAt};
use bao_tree::io::{BaoContentItem, DecodeError, EncodeError};
use bao_tree::iter::BaoChunk;
use bao_tree::{blake3, BaoTree, BlockSize, ChunkNum, ChunkRanges, TreeNode};
use serde::{Deserialize, Serialize};
use std::io::Read;

const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(CHUNK_GROUP_LOG);
/// BLAKE3 chunks (1 KiB) per chunk group.
const CHUNKS_PER_GROUP: u64 = 1 << CHUNK_GROUP_LOG;
/// Bytes of one parent hash pair in an outboard or a piece.
pub const PAIR_LEN: u64 = 64;

/// A run of chunk groups as it travels: bao's encoding of groups
/// `first_group..first_group + n_groups`, parents from the root included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// The first chunk group.
    pub first_group: u64,
    /// Chunk groups in the piece (1..=[`MAX_PIECE_GROUPS`]).
    pub n_groups: u64,
    /// The encoding.
    #[serde(with = "crate::event::serde_bytes_vec")]
    pub bytes: Vec<u8>,
}

/// What a piece proved: parent pairs (at their outboard offsets) and ciphertext (at its blob
/// offsets), each checked against the root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifiedPiece {
    /// `(outboard byte offset, left hash ‖ right hash)`.
    pub parents: Vec<(u64, [u8; 64])>,
    /// `(ciphertext byte offset, bytes)`, one entry per chunk group, in order.
    pub leaves: Vec<(u64, Vec<u8>)>,
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
            self.root,
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

/// Encodes a piece from any positioned reader of the outboard and of the ciphertext (the
/// relay serves from its files). The bytes are checked against the root as they are read,
/// so a damaged file is noticed here rather than by the receiver.
pub fn encode_piece(
    root: BlobId,
    cipher_len: u64,
    outboard: impl ReadAt,
    data: impl ReadAt,
    first_group: u64,
    n_groups: u64,
) -> Result<Piece, MediaError> {
    let ranges = piece_ranges(cipher_len, first_group, n_groups)?;
    let ob = PositionedOutboard {
        root: blake3::Hash::from(root.0),
        tree: BaoTree::new(cipher_len, BLOCK_SIZE),
        data: outboard,
    };
    let mut bytes = Vec::new();
    encode_ranges_validated(data, ob, &ranges, &mut bytes).map_err(|e| match e {
        EncodeError::LeafHashMismatch(c) => MediaError::Corrupt {
            group: c.0 / CHUNKS_PER_GROUP,
        },
        EncodeError::ParentHashMismatch(n) => MediaError::Corrupt {
            group: n.chunk_range().start.0 / CHUNKS_PER_GROUP,
        },
        other => MediaError::Io(other.to_string()),
    })?;
    Ok(Piece {
        first_group,
        n_groups,
        bytes,
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

/// Checks a piece against the blob's root, group by group. On the first bad group (or a
/// piece of the wrong length) it stops: what verified before stays usable in
/// [`PieceRefused::kept`].
pub fn verify_piece(
    root: BlobId,
    cipher_len: u64,
    piece: &Piece,
) -> Result<VerifiedPiece, PieceRefused> {
    let refuse = |kept: VerifiedPiece, error| PieceRefused { kept, error };
    let expected = piece_len(cipher_len, piece.first_group, piece.n_groups)
        .map_err(|e| refuse(VerifiedPiece::default(), e))?;
    if piece.bytes.len() as u64 != expected {
        let error = MediaError::PieceLength {
            len: piece.bytes.len(),
            expected,
        };
        return Err(refuse(VerifiedPiece::default(), error));
    }
    let ranges = piece_ranges(cipher_len, piece.first_group, piece.n_groups)
        .map_err(|e| refuse(VerifiedPiece::default(), e))?;
    let tree = BaoTree::new(cipher_len, BLOCK_SIZE);
    let root = blake3::Hash::from(root.0);
    let mut out = VerifiedPiece::default();
    for item in DecodeResponseIter::new(root, tree, &piece.bytes[..], &ranges) {
        match item {
            Ok(BaoContentItem::Parent(p)) => {
                if let Some(at) = tree.pre_order_offset(p.node) {
                    let mut pair = [0u8; 64];
                    pair[..32].copy_from_slice(p.pair.0.as_bytes());
                    pair[32..].copy_from_slice(p.pair.1.as_bytes());
                    out.parents.push((at * PAIR_LEN, pair));
                }
            }
            Ok(BaoContentItem::Leaf(l)) => out.leaves.push((l.offset, l.data.to_vec())),
            Err(e) => {
                let error = decode_error(e, piece.bytes.len(), expected);
                return Err(refuse(out, error));
            }
        }
    }
    Ok(out)
}

fn decode_error(e: DecodeError, len: usize, expected: u64) -> MediaError {
    match e {
        DecodeError::LeafHashMismatch(c) => MediaError::Corrupt {
            group: c.0 / CHUNKS_PER_GROUP,
        },
        DecodeError::ParentHashMismatch(n) => MediaError::Corrupt {
            group: n.chunk_range().start.0 / CHUNKS_PER_GROUP,
        },
        DecodeError::ParentNotFound(_) | DecodeError::LeafNotFound(_) => {
            MediaError::PieceLength { len, expected }
        }
        DecodeError::Io(e) => MediaError::Io(e.to_string()),
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
