//! One conversation's range-based set reconciliation: the events the two sides hold above
//! the lower of their two version vectors, compared with the negentropy protocol (the
//! `negentropy` crate) so that only the differences cross the link.
//!
//! Items are (author counter, event id): both sides read the same pair for an event, since the
//! counter is in the signed header and the id is the blake3 hash of it. Negentropy orders them
//! by counter then id, splits the range into buckets, and compares 16-byte fingerprints of the
//! buckets, recursing only into those that differ; a bucket small enough goes as an id list.
//! The side with the lower device id initiates, and learns both differences: what it holds
//! that the other lacks (it sends them), and what the other holds that it lacks (it asks for
//! them with [`super::PeerFrame::Want`]).

use super::PeerError;
use crate::ids::{ConversationId, EventId};
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use std::fmt;

/// Most items (events above the floor) one side puts in one session's reconciliations, over
/// every conversation: 40 bytes each in memory (about 40 MiB at most). Beyond it the
/// reconciliation is approximate: the two sides may cut their sets at different places, so
/// some events near the cut are sent although held, or wait for a later session; nothing is
/// admitted that the gate would refuse either way.
pub const MAX_RECONCILE_ITEMS: usize = 1 << 20;
/// The size negentropy keeps each of its messages under (`frame_size_limit`): a range that
/// does not fit goes as a fingerprint, reconciled in the next round.
pub const RECONCILE_FRAME_LIMIT: usize = 256 * 1024;
/// Longest [`super::PeerFrame::Reconcile`] message either side accepts: the frame limit with
/// room for the last range negentropy writes past it.
pub const MAX_RECONCILE_MESSAGE_LEN: usize = RECONCILE_FRAME_LIMIT + 64 * 1024;
/// Most reconciliation messages one side takes per conversation per session. Negentropy needs
/// about log16(n) rounds plus one per frame of id lists: 1,048,576 items whose ids all differ
/// fill 128 frames of 256 KiB.
pub const MAX_RECONCILE_ROUNDS: usize = 256;

/// One side of one conversation's reconciliation.
pub(super) struct Reconciler {
    conversation: ConversationId,
    negentropy: Negentropy<'static, NegentropyStorageVector>,
    /// Messages taken from the peer.
    rounds: usize,
    /// Items this side put in (what it can be asked for at most).
    n_items: usize,
    /// Responder: ids asked for so far.
    n_wanted: usize,
    /// Initiator: ids it holds that the peer lacks, and ids it lacks, so far.
    have: Vec<Id>,
    need: Vec<Id>,
}

/// What the initiator does after a message.
pub(super) enum Step {
    /// Send this message.
    Next(Vec<u8>),
    /// Reconciled: send `have`, ask for `need`.
    Finished {
        have: Vec<EventId>,
        need: Vec<EventId>,
    },
}

impl fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconciler")
            .field("conversation", &self.conversation)
            .field("initiator", &self.negentropy.is_initiator())
            .field("rounds", &self.rounds)
            .field("n_items", &self.n_items)
            .field("n_have", &self.have.len())
            .field("n_need", &self.need.len())
            .finish()
    }
}

impl Reconciler {
    /// A reconciler over `items` ((counter, id)). The initiator also returns its first message.
    pub(super) fn new(
        conversation: ConversationId,
        items: Vec<(u64, EventId)>,
        initiator: bool,
    ) -> Result<(Reconciler, Option<Vec<u8>>), PeerError> {
        let err = |source| PeerError::Reconcile {
            conversation,
            source,
        };
        let n_items = items.len();
        let mut storage = NegentropyStorageVector::with_capacity(n_items);
        for (counter, id) in items {
            storage
                .insert(counter, Id::from_byte_array(id.0))
                .map_err(err)?;
        }
        storage.seal().map_err(err)?;
        let mut negentropy =
            Negentropy::owned(storage, RECONCILE_FRAME_LIMIT as u64).map_err(err)?;
        let first = if initiator {
            Some(negentropy.initiate().map_err(err)?)
        } else {
            None
        };
        Ok((
            Reconciler {
                conversation,
                negentropy,
                rounds: 0,
                n_items,
                n_wanted: 0,
                have: Vec::new(),
                need: Vec::new(),
            },
            first,
        ))
    }

    pub(super) fn is_initiator(&self) -> bool {
        self.negentropy.is_initiator()
    }

    /// Responder: counts `n` more ids the initiator asks for. It cannot need more events than
    /// this side put in (an honest initiator asks only for those, each once).
    pub(super) fn count_wanted(&mut self, n: usize) -> Result<(), PeerError> {
        self.n_wanted = self.n_wanted.saturating_add(n);
        if self.n_wanted > self.n_items {
            return Err(PeerError::Limit {
                what: "wanted events",
                max: self.n_items,
            });
        }
        Ok(())
    }

    /// Responder: the answer to the initiator's `message`.
    pub(super) fn respond(&mut self, message: &[u8]) -> Result<Vec<u8>, PeerError> {
        self.count_round()?;
        let conversation = self.conversation;
        self.negentropy
            .reconcile(message)
            .map_err(|source| PeerError::Reconcile {
                conversation,
                source,
            })
    }

    /// Initiator: the next message after the responder's `message`, or the differences.
    pub(super) fn step(&mut self, message: &[u8]) -> Result<Step, PeerError> {
        self.count_round()?;
        let conversation = self.conversation;
        let next = self
            .negentropy
            .reconcile_with_ids(message, &mut self.have, &mut self.need)
            .map_err(|source| PeerError::Reconcile {
                conversation,
                source,
            })?;
        // The responder names ids it holds: at most what fits in its messages, bounded by the
        // rounds; it cannot make this side hold more than that.
        Ok(match next {
            Some(m) => Step::Next(m),
            None => {
                let ids = |v: &mut Vec<Id>| -> Vec<EventId> {
                    let mut out: Vec<EventId> =
                        v.drain(..).map(|i| EventId(i.to_bytes())).collect();
                    out.sort_unstable();
                    out.dedup();
                    out
                };
                Step::Finished {
                    have: ids(&mut self.have),
                    need: ids(&mut self.need),
                }
            }
        })
    }

    fn count_round(&mut self) -> Result<(), PeerError> {
        self.rounds += 1;
        if self.rounds > MAX_RECONCILE_ROUNDS {
            return Err(PeerError::Limit {
                what: "reconciliation rounds",
                max: MAX_RECONCILE_ROUNDS,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn id(n: u32) -> EventId {
        EventId(*blake3::hash(&n.to_be_bytes()).as_bytes())
    }

    /// Runs a whole reconciliation between two item sets; returns (have, need, messages).
    fn check(a: &BTreeSet<u32>, b: &BTreeSet<u32>) -> (Vec<EventId>, Vec<EventId>, usize) {
        let items = |s: &BTreeSet<u32>| s.iter().map(|n| (u64::from(n / 7), id(*n))).collect();
        let c = ConversationId([1; 16]);
        let (mut init, first) = Reconciler::new(c, items(a), true).expect("initiator");
        let (mut resp, none) = Reconciler::new(c, items(b), false).expect("responder");
        assert!(none.is_none());
        let mut message = first.expect("a first message");
        let mut n_messages = 1;
        loop {
            let answer = resp.respond(&message).expect("answer");
            n_messages += 1;
            match init.step(&answer).expect("step") {
                Step::Next(m) => {
                    message = m;
                    n_messages += 1;
                }
                Step::Finished { have, need } => return (have, need, n_messages),
            }
        }
    }

    proptest! {
        /// The initiator learns exactly what it holds that the responder lacks, and what it
        /// lacks, whatever the two sets.
        #[test]
        fn the_differences_are_exact(
            common in proptest::collection::btree_set(0u32..100_000, 0..3_000),
            only_a in proptest::collection::btree_set(100_000u32..200_000, 0..40),
            only_b in proptest::collection::btree_set(200_000u32..300_000, 0..40),
        ) {
            let a: BTreeSet<u32> = common.union(&only_a).copied().collect();
            let b: BTreeSet<u32> = common.union(&only_b).copied().collect();
            let (have, need, _) = check(&a, &b);
            let sorted = |s: &BTreeSet<u32>| {
                let mut v: Vec<EventId> = s.iter().map(|n| id(*n)).collect();
                v.sort_unstable();
                v
            };
            prop_assert_eq!(have, sorted(&only_a));
            prop_assert_eq!(need, sorted(&only_b));
        }
    }

    #[test]
    fn a_responder_refuses_what_is_not_a_negentropy_message() {
        let c = ConversationId([1; 16]);
        let (mut resp, _) = Reconciler::new(c, vec![(1, id(1))], false).expect("responder");
        // Empty; a foreign version byte; mode 7; a bound id of 33 bytes; a fingerprint cut short.
        let bad: [&[u8]; 5] = [
            &[],
            &[0x00],
            &[0x61, 0x01, 0x00, 0x07],
            &[0x61, 0x01, 0x21],
            &[0x61, 0x01, 0x00, 0x01, 0xaa],
        ];
        for bad in bad {
            assert!(
                matches!(resp.respond(bad), Err(PeerError::Reconcile { .. })),
                "{bad:?}"
            );
        }
    }
}
