//! Blobs a device serves to its peers: who may fetch which chunk groups.
//!
//! A device that holds a blob (its own, sealed and not yet uploaded, or a verified
//! ciphertext it fetched) answers a peer's [`BlobRequest::Fetch`](crate::media::wire::BlobRequest)
//! by the relay's rule: the peer's user must be a member, by the memberships this device's
//! gate admitted, of the conversation named in the request, and that conversation must
//! reference the blob as far as this device knows. The peer link has already proven the
//! peer's device key and placed it in the verified directory.

use super::{shared_conversations, PeerError};
use crate::device::DeviceCore;
use crate::ids::{ConversationId, DeviceId};
use crate::media::verify::group_bytes;
use crate::media::wire::BlobRefusal;
use crate::media::{n_groups, MAX_PIECE_GROUPS};
use std::collections::BTreeSet;
use std::ops::Range;

/// What this device holds of a blob it may serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldBlob {
    /// The blob's ciphertext length.
    pub cipher_len: u64,
    /// Ciphertext bytes held from the start, every group of them verified against the root
    /// (and every parent hash on their way kept), `cipher_len` when whole.
    pub verified: u64,
    /// The conversations this device knows reference the blob (the upload jobs that name
    /// it, the conversation it was fetched for).
    pub referenced_in: BTreeSet<ConversationId>,
}

/// Judges a peer's fetch of groups `first_group..first_group + n_groups` of a blob named
/// for `conversation`, given what this device holds of it: the groups to serve, or why not.
pub fn judge_blob_fetch(
    core: &mut DeviceCore,
    peer: DeviceId,
    conversation: ConversationId,
    groups: (u64, u64),
    held: Option<&HeldBlob>,
) -> Result<Result<Range<u64>, BlobRefusal>, PeerError> {
    let shared = shared_conversations(core, peer)?.contains(&conversation);
    Ok(judge(shared, conversation, groups, held))
}

/// The rule, apart from where membership comes from.
fn judge(
    member: bool,
    conversation: ConversationId,
    (first, n): (u64, u64),
    held: Option<&HeldBlob>,
) -> Result<Range<u64>, BlobRefusal> {
    // Membership first: a non-member learns nothing, not even whether this device holds it.
    if !member {
        return Err(BlobRefusal::NotMember);
    }
    let held = held.ok_or(BlobRefusal::NotFound)?;
    if !held.referenced_in.contains(&conversation) {
        return Err(BlobRefusal::NotMember);
    }
    let end = first
        .checked_add(n)
        .filter(|&e| e <= n_groups(held.cipher_len));
    let Some(end) = end.filter(|_| n > 0 && n <= MAX_PIECE_GROUPS) else {
        return Err(BlobRefusal::Other(format!(
            "groups {first}+{n} are not inside the blob"
        )));
    };
    if group_bytes(held.cipher_len, first, n).end > held.verified {
        return Err(BlobRefusal::Incomplete {
            verified: held.verified,
            len: held.cipher_len,
        });
    }
    Ok(first..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::CHUNK_GROUP_LEN;

    #[test]
    fn a_peer_gets_only_what_it_may_and_what_is_held() {
        let c = ConversationId([1; 16]);
        let other = ConversationId([2; 16]);
        let held = HeldBlob {
            cipher_len: 10 * CHUNK_GROUP_LEN + 5,
            verified: 4 * CHUNK_GROUP_LEN,
            referenced_in: [c].into(),
        };
        let whole = HeldBlob {
            verified: held.cipher_len,
            ..held.clone()
        };
        assert_eq!(judge(true, c, (0, 4), Some(&held)), Ok(0..4));
        assert_eq!(
            judge(false, c, (0, 4), Some(&held)),
            Err(BlobRefusal::NotMember)
        );
        assert_eq!(judge(false, c, (0, 4), None), Err(BlobRefusal::NotMember));
        assert_eq!(judge(true, c, (0, 4), None), Err(BlobRefusal::NotFound));
        assert_eq!(
            judge(true, other, (0, 4), Some(&held)),
            Err(BlobRefusal::NotMember)
        );
        assert!(matches!(
            judge(true, c, (3, 2), Some(&held)),
            Err(BlobRefusal::Incomplete { .. })
        ));
        assert_eq!(judge(true, c, (3, 8), Some(&whole)), Ok(3..11));
        for bad in [(3, 9), (0, 0), (0, MAX_PIECE_GROUPS + 1), (u64::MAX, 2)] {
            assert!(
                matches!(
                    judge(true, c, bad, Some(&whole)),
                    Err(BlobRefusal::Other(_))
                ),
                "{bad:?}"
            );
        }
    }
}
