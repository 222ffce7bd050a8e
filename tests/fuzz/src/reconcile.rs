//! The peer protocol's set reconciliation (`tidings_engine::peer`, `PeerFrame::Reconcile`):
//! negentropy messages from a peer are untrusted bytes handed to the `negentropy` crate, set up
//! as the engine sets it up (`RECONCILE_FRAME_LIMIT`).

use super::Reader;
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use tidings_engine::peer::{MAX_RECONCILE_MESSAGE_LEN, RECONCILE_FRAME_LIMIT};

/// Items from the input (up to 2,040, with counters and ids from it), then the rest of the
/// input as a message, to a responder and to an initiator. Each gives an answer or a typed
/// error, never a panic, and what a side answers stays within the wire limit a peer checks
/// (`MAX_RECONCILE_MESSAGE_LEN`): an honest side never sends what the other must refuse. Then
/// the same two sets reconcile honestly, the message damaged at input-chosen places on the way.
pub fn check_peer_reconcile(data: &[u8]) {
    let mut r = Reader::new(data);
    let n = usize::from(r.u8()) * 8;
    let spread = u64::from(r.u8()) + 1;
    let items: Vec<(u64, [u8; 32])> = (0..n as u64)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
            id[8] = r.u8();
            (i / spread, id)
        })
        .collect();
    let storage = |skip: u8| {
        let mut s = NegentropyStorageVector::with_capacity(items.len());
        for (k, (counter, id)) in items.iter().enumerate() {
            // Each side leaves out a few items, so the sets differ.
            if skip != 0 && k % 97 == usize::from(skip % 97) {
                continue;
            }
            s.insert(*counter, Id::from_byte_array(*id)).unwrap();
        }
        s.seal().unwrap();
        s
    };
    let limit = RECONCILE_FRAME_LIMIT as u64;
    let (skip_a, skip_b) = (r.u8(), r.u8());
    let message = r.rest().to_vec();

    let mut responder = Negentropy::owned(storage(skip_b), limit).unwrap();
    if let Ok(out) = responder.reconcile(&message) {
        assert!(out.len() <= MAX_RECONCILE_MESSAGE_LEN, "{}", out.len());
    }
    let mut initiator = Negentropy::owned(storage(skip_a), limit).unwrap();
    let first = initiator.initiate().unwrap();
    assert!(first.len() <= MAX_RECONCILE_MESSAGE_LEN);
    let (mut have, mut need) = (Vec::new(), Vec::new());
    if let Ok(Some(out)) = initiator.reconcile_with_ids(&message, &mut have, &mut need) {
        assert!(out.len() <= MAX_RECONCILE_MESSAGE_LEN, "{}", out.len());
    }

    // Honest rounds, with the input's bytes xored into each answer at its first places.
    let mut initiator = Negentropy::owned(storage(skip_a), limit).unwrap();
    let mut responder = Negentropy::owned(storage(skip_b), limit).unwrap();
    let mut query = initiator.initiate().unwrap();
    for _ in 0..64 {
        let Ok(mut answer) = responder.reconcile(&query) else {
            return;
        };
        assert!(answer.len() <= MAX_RECONCILE_MESSAGE_LEN);
        for (b, d) in answer.iter_mut().skip(1).zip(&message) {
            *b ^= d;
        }
        match initiator.reconcile_with_ids(&answer, &mut have, &mut need) {
            Ok(Some(next)) => {
                assert!(next.len() <= MAX_RECONCILE_MESSAGE_LEN);
                query = next;
            }
            Ok(None) | Err(_) => return,
        }
    }
}
