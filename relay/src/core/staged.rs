//! What waits for a group commit (staged) or for the commit being written (in flight).

use super::sequencing::Statement;
use super::store::InvitationRecord;
use super::{ChainSlot, SessionId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tidings_engine::wire::{DeviceRegistration, DeviceRevocation, SubmitOutcome};
use tidings_engine::{ConversationId, DeviceId, Event, EventId, ServerSeq, UserId};

#[derive(Debug, Default)]
pub(super) struct Staged {
    pub(super) events: Vec<StagedEvent>,
    pub(super) by_id: HashMap<EventId, usize>,
    pub(super) submits: Vec<PendingSubmit>,
    pub(super) registrations: Vec<PendingRegistration>,
    pub(super) revocations: Vec<PendingRevocation>,
    /// Invitation rows of the staged Creates and AddMembers (already in `consent`).
    pub(super) invitations: Vec<InvitationRecord>,
    /// Accept, Decline, Block and Unblock requests (applied to `consent` once durable).
    pub(super) user_requests: Vec<PendingUserRequest>,
    pub(super) cursors: BTreeMap<(DeviceId, ConversationId), ServerSeq>,
    pub(super) touched: BTreeSet<ConversationId>,
    /// Conversations created or whose membership changed in this batch.
    pub(super) membership_changed: BTreeSet<ConversationId>,
    /// Users removed from a conversation in this batch.
    pub(super) former: Vec<(ConversationId, UserId)>,
    /// Staged events by their place in their author's chain.
    pub(super) chain: HashMap<ChainSlot, usize>,
    /// The statements signed when the commit starts: (conversation, first seq, envelope).
    pub(super) statements: Vec<(ConversationId, ServerSeq, Statement)>,
    pub(super) since_ms: Option<u64>,
}

impl Staged {
    pub(super) fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.registrations.is_empty()
            && self.revocations.is_empty()
            && self.cursors.is_empty()
            && self.invitations.is_empty()
            && self.user_requests.is_empty()
    }
}

/// What a user asked to change about itself.
#[derive(Debug, Clone, Copy)]
pub(super) enum UserRequest {
    Accept(ConversationId),
    Decline(ConversationId),
    Block(UserId),
    Unblock(UserId),
}

/// A user request waiting for the commit that makes it durable.
#[derive(Debug)]
pub(super) struct PendingUserRequest {
    pub(super) session: SessionId,
    pub(super) request_id: u64,
    pub(super) user: UserId,
    pub(super) request: UserRequest,
    /// Invitation rows it writes (the decision; for a block, the blocked user's pending
    /// invitations declined).
    pub(super) rows: Vec<InvitationRecord>,
    /// Block rows it writes.
    pub(super) blocks: Vec<(UserId, UserId, bool)>,
}

#[derive(Debug)]
pub(super) struct StagedEvent {
    pub(super) event: Event,
    /// The statement placing it, signed when the commit starts (`None` until then).
    pub(super) statement: Option<Statement>,
    pub(super) seq: ServerSeq,
    pub(super) ts_ms: u64,
    pub(super) origin: SessionId,
}

#[derive(Debug)]
pub(super) struct PendingSubmit {
    pub(super) session: SessionId,
    pub(super) request_id: u64,
    pub(super) slots: Vec<Slot>,
}

#[derive(Debug)]
pub(super) enum Slot {
    Done(SubmitOutcome),
    Staged(usize),
    /// A duplicate of an event in the commit being written: its place and statement, valid
    /// once that commit is durable.
    Inflight(ServerSeq, Statement),
    /// A duplicate of a stored event: its place and the record placing it.
    Stored(ServerSeq, Statement),
}

/// What the core remembers of the commit being written.
#[derive(Debug, Default)]
pub(super) struct Inflight {
    pub(super) placed: HashMap<EventId, (ServerSeq, Statement)>,
    pub(super) registrations: Vec<(DeviceId, UserId)>,
    /// The certificates being written.
    pub(super) certs: Vec<DeviceRegistration>,
    pub(super) revocations: Vec<DeviceId>,
    /// The conversations whose events or records are being written.
    pub(super) convs: BTreeSet<ConversationId>,
    /// The events being written, by chain place: (id, prev).
    pub(super) chain: HashMap<ChainSlot, (EventId, Option<EventId>)>,
}

#[derive(Debug)]
pub(super) struct PendingRegistration {
    pub(super) session: SessionId,
    pub(super) request_id: u64,
    pub(super) user: UserId,
    pub(super) device: DeviceId,
    pub(super) cert: DeviceRegistration,
}

#[derive(Debug)]
pub(super) struct PendingRevocation {
    pub(super) session: SessionId,
    pub(super) request_id: u64,
    pub(super) revocation: DeviceRevocation,
}

impl Staged {
    /// Takes the events of `conv` out (after a commit of it lost a race with another relay
    /// node): their submitters' slots become `refused`, the other events keep their places
    /// (sequences are per conversation), and everything else staged stays. Returns the
    /// statements of the events taken out (in-flight duplicates pointing at them are lost
    /// too) and how many were taken.
    pub(super) fn take_out(
        &mut self,
        conv: &ConversationId,
        refused: &SubmitOutcome,
    ) -> (Vec<Statement>, usize) {
        let mut new_index = Vec::with_capacity(self.events.len());
        let mut kept = Vec::with_capacity(self.events.len());
        let mut statements = Vec::new();
        let mut n_out = 0;
        for e in std::mem::take(&mut self.events) {
            if e.event.conversation() == *conv {
                new_index.push(None);
                statements.extend(e.statement.clone());
                n_out += 1;
            } else {
                new_index.push(Some(kept.len()));
                kept.push(e);
            }
        }
        self.events = kept;
        for p in &mut self.submits {
            for slot in &mut p.slots {
                let Slot::Staged(i) = slot else { continue };
                *slot = match new_index.get(*i).copied().flatten() {
                    Some(n) => Slot::Staged(n),
                    None => Slot::Done(refused.clone()),
                };
            }
        }
        let remap = |i: &mut usize| new_index.get(*i).copied().flatten().map(|n| *i = n);
        self.by_id.retain(|_, i| remap(i).is_some());
        self.chain.retain(|_, i| remap(i).is_some());
        self.statements.retain(|(c, _, _)| c != conv);
        self.invitations.retain(|i| i.conversation != *conv);
        self.touched.remove(conv);
        self.membership_changed.remove(conv);
        self.former.retain(|(c, _)| c != conv);
        (statements, n_out)
    }

    /// Makes the slots of submits in flight whose events were taken out (their statement is
    /// one of `statements`) `refused`.
    pub(super) fn lose_inflight(
        submits: &mut [PendingSubmit],
        statements: &[Statement],
        refused: &SubmitOutcome,
    ) {
        for p in submits {
            for slot in &mut p.slots {
                if let Slot::Inflight(_, st) = slot {
                    if statements.iter().any(|s| std::sync::Arc::ptr_eq(s, st)) {
                        *slot = Slot::Done(refused.clone());
                    }
                }
            }
        }
    }
}
