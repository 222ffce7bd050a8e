//! Removals a device holds evidence of before its gate placed them.
//!
//! A relay that wants a removed member to keep reading withholds a sequence before the
//! `RemoveMember` and pushes the removal itself (or the events after it): the gate cannot pass
//! the gap, so the removal is not in the membership, and a device that opened a new epoch then
//! would seal it to the removed member. Yet the device holds the removal, signed by its author
//! device, and can judge it as the gate will: under the membership the gate reached, with the
//! same rules ([`crate::gate::Gate::judge`]) applied to the membership changes it holds past the
//! gate, in server order, and then to this device's own changes the relay has not sequenced
//! yet. A removal those rules admit is evidence: no epoch key goes to the removed user's
//! devices until the gate places the removal (then it is the membership) or refuses it (then
//! the evidence is gone and the user gets keys again on the next send or request).
//!
//! Evidence only takes keys away, never gives them: an addition the device holds past the
//! gate cancels an earlier removal of the same user there, and seals nothing until the gate
//! admits it.

use super::{Store, StoreError};
use crate::event::{Event, EventKind};
use crate::gate::{AuthorLookup, Verdict};
use crate::ids::{ConversationId, EventId, ServerSeq, UserId};
use crate::membership::Membership;
use std::collections::BTreeMap;

/// Most sequences past a conversation's gate that are looked at for removals. Past the gate
/// the log normally holds nothing (the gate passes every contiguous sequence); this bounds
/// the work of a send while a relay withholds a sequence in a busy conversation. A removal
/// further than this past the gate is not seen until the gate comes closer.
pub const MAX_EVIDENCE_SCAN: usize = 4_096;

/// A member's removal this device holds, verified, that its gate has not placed yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovalEvidence {
    /// Its conversation.
    pub conversation: ConversationId,
    /// The removed user.
    pub user: UserId,
    /// The `RemoveMember` event.
    pub event: EventId,
    /// Its server sequence: past the gate, behind a sequence the log lacks (or an author the
    /// directory does not know yet). `None` for this device's own removal that the relay has
    /// not sequenced yet.
    pub seq: Option<ServerSeq>,
}

impl Store {
    /// Members of `conversation` whose removal this device holds but its gate has not placed
    /// (see the module docs): new epoch keys are not sealed to their devices, and their key
    /// requests are not answered.
    pub fn removals_ahead(
        &mut self,
        conversation: ConversationId,
    ) -> Result<Vec<RemovalEvidence>, StoreError> {
        let gate = self.log.gate(conversation)?;
        let ahead = self
            .log
            .sequenced_after(conversation, gate.through, MAX_EVIDENCE_SCAN)?;
        let own = self.own_unsequenced_changes(conversation)?;
        if ahead.is_empty() && own.is_empty() {
            return Ok(Vec::new());
        }
        let me = self.key.device();
        let directory = self.directory()?;
        let mut judged = gate;
        let mut removed: BTreeMap<UserId, (EventId, Option<ServerSeq>)> = BTreeMap::new();
        let held = ahead.into_iter().map(|(seq, ts, e)| (Some(seq), ts, e));
        let mine = own.into_iter().map(|e| (None, 0, e));
        for (seq, ts, event) in held.chain(mine) {
            if !changes_members(event.kind()) {
                continue;
            }
            // An author whose certificate is not in yet proves nothing: skipped, like the
            // gate would wait for it.
            let at = seq.unwrap_or(judged.through);
            let verdict = judged.judge(&event, at, ts, directory, me, &|_| AuthorLookup::Asking);
            if !matches!(verdict, Verdict::Admit { .. }) {
                continue;
            }
            match event.kind() {
                EventKind::RemoveMember { user } => {
                    removed.insert(*user, (event.id(), seq));
                }
                EventKind::AddMember { user, .. } => {
                    removed.remove(user);
                }
                _ => {}
            }
        }
        Ok(removed
            .into_iter()
            .map(|(user, (event, seq))| RemovalEvidence {
                conversation,
                user,
                event,
                seq,
            })
            .collect())
    }

    /// This device's membership events (`Create` included) of `conversation` still in the
    /// outbox, in the order they were written.
    fn own_unsequenced_changes(
        &mut self,
        conversation: ConversationId,
    ) -> Result<Vec<Event>, StoreError> {
        let ids: Vec<EventId> = self
            .outbox_controls(conversation)?
            .map(|e| e.event)
            .collect();
        let mut out = Vec::new();
        for id in ids {
            if let Some(ev) = self.log.get(&id)? {
                if changes_members(ev.kind()) {
                    out.push(ev);
                }
            }
        }
        Ok(out)
    }
}

fn changes_members(kind: &EventKind) -> bool {
    Membership::changes_membership(kind) || matches!(kind, EventKind::Create { .. })
}
