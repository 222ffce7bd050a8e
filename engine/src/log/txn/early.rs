//! Early events: events of other devices that a peer handed over before the relay placed them
//! (two phones on one Wi-Fi with no internet).
//!
//! Such an event has no place in the server order yet, so the gate cannot judge it there. It
//! is judged now instead, by the same rules ([`Gate::judge`]) against the membership where the
//! conversation's gate stands and the directory as it is, as if the relay placed it next: an
//! event the relay path would refuse (a non-member, an uncertified or revoked author, a broken
//! rule) stays held and unseen. An admitted one joins the conversation's fold at once and
//! shows where pending messages show (after the sequenced ones, by lamport clock and message
//! id), and is listed here.
//!
//! When the relay's statement places it, the statement moves it to its server place (as it
//! moves an own pending message) and the gate judges it again at that place: the final word.
//! Admitted, it leaves this table. Refused (its author was removed or revoked in between, in
//! the relay's order), it is retracted: out of the fold order and the message indexes, and the
//! conversation's documents are rebuilt from the log without it.
//!
//! Only messages and epoch keys go early. Membership changes move the gate and receipts name
//! server sequences: they wait for the relay.

use super::*;
use crate::gate::AuthorLookup;
use redb::ReadableTableMetadata;
use redb::TableDefinition;

/// event id → (conversation, fold position): events of others admitted before the relay
/// placed them, until the gate judges them at their place.
pub(in crate::log) const EARLY: TableDefinition<Id32, (Conv, u64)> = TableDefinition::new("early");

/// What [`LogTxn::append_early`] did with one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EarlyAppend {
    /// Stored and admitted to its conversation's fold at this position, before its place.
    Admitted {
        /// Fold position in the conversation.
        position: u64,
    },
    /// Stored, not shown: it waits for its place in the relay's order (a kind that does not
    /// go early, an event the relay already placed, a conversation this device has not seen
    /// created), or the gate's rules refuse it now (the reason). Either way the gate judges
    /// it at its place when the relay's statement comes.
    Held(Option<Refusal>),
    /// Already stored (and shown if it could be): nothing was written.
    Duplicate,
}

/// Whether an event of this kind may be shown before the relay places it.
pub fn goes_early(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Send { .. } | EventKind::EpochKeys { .. })
}

impl LogTxn<'_> {
    /// Appends one verified event of another device that a peer handed over without a relay
    /// statement, and shows it at once if the gate's rules admit it now (see the module doc).
    /// `now_ms` stands for the server time a revocation is compared with. Own events are
    /// appended as [`LogTxn::append`] does; relay statements must not come this way.
    pub fn append_early(
        &mut self,
        event: &Event,
        directory: &DeviceDirectory,
        me: DeviceId,
        now_ms: u64,
    ) -> Result<EarlyAppend, LogError> {
        let id = event.id();
        if event.header().author == me || event.kind().is_sequencing() {
            return Ok(match self.append(event)? {
                Appended::New { position } => EarlyAppend::Admitted { position },
                Appended::Held => EarlyAppend::Held(None),
                Appended::Duplicate => EarlyAppend::Duplicate,
            });
        }
        let appended = self.append_held(event)?;
        // A duplicate still held may be admitted now (its author's certificate came since).
        let held = self.is_held(&id.0)?;
        if !held {
            return Ok(match appended {
                Appended::Duplicate => EarlyAppend::Duplicate,
                _ => EarlyAppend::Held(None),
            });
        }
        if !goes_early(event.kind()) || self.acks.get(&id.0)?.is_some() {
            return Ok(EarlyAppend::Held(None));
        }
        let conversation = event.conversation();
        let mut gate: Gate = match self.gates.get(&conversation.0)? {
            Some(g) => postcard::from_bytes(g.value()).map_err(|e| corrupt("gates", e))?,
            None => return Ok(EarlyAppend::Held(None)),
        };
        // As if the relay placed it next, now; judged on a copy: only its place moves the gate.
        let next = gate.through.saturating_add(1);
        let asking = |_: &UserId| AuthorLookup::Asking;
        match gate.judge(event, next, now_ms, directory, me, &asking) {
            Verdict::Admit {
                membership_changed: false,
            } => {}
            Verdict::Admit { .. } | Verdict::Wait(_) => return Ok(EarlyAppend::Held(None)),
            Verdict::Refuse(r) => return Ok(EarlyAppend::Held(Some(r))),
        }
        self.unhold(&id.0)?;
        let position = self.admit(event)?;
        self.early.insert(&id.0, (&conversation.0, position))?;
        Ok(EarlyAppend::Admitted { position })
    }

    /// The membership changed where the gate stands: every event of `conversation` shown
    /// before its place is judged again as if the relay placed it next, now. One the rules
    /// refuse there (its author's user removed first in the relay's order) is retracted, as
    /// at a refusing place, and held again: the relay will not place it after the removal
    /// unless the user comes back, and then the gate judges it at that place. Without this,
    /// a device that took it early showed it for good while the others never did (the
    /// simulator with peer links found it: the relay refused the author's resubmissions).
    pub(super) fn rejudge_early(
        &mut self,
        conversation: ConversationId,
        gate: &Gate,
        directory: &DeviceDirectory,
        me: DeviceId,
        lookup: &dyn Fn(&UserId) -> AuthorLookup,
    ) -> Result<Vec<EventId>, LogError> {
        let mut shown = Vec::new();
        for row in self.early.iter()? {
            let (id, v) = row?;
            if *v.value().0 == conversation.0 {
                shown.push(*id.value());
            }
        }
        let mut retracted = Vec::new();
        for id in shown {
            // Placed already, past the gate: judged at its place when the gate gets there.
            if self.acks.get(&id)?.is_some() {
                continue;
            }
            let Some(bytes) = self.events.get(&id)?.map(|g| g.value().1.to_vec()) else {
                continue;
            };
            let event = Event::decode_trusted(&bytes).map_err(|e| corrupt("events", e))?;
            let next = gate.through.saturating_add(1);
            // Membership decides here; a revocation is judged at the event's place.
            let verdict = gate.clone().judge(&event, next, 0, directory, me, lookup);
            if let Verdict::Refuse(_) = verdict {
                if self.settle_early(&event, false)? {
                    self.held.insert(&id, ())?;
                    retracted.push(event.id());
                }
            }
        }
        Ok(retracted)
    }

    /// The gate reached an event at its place: an early one leaves the early table, and when
    /// the gate refused it there, the fold order and the message indexes. True when it was
    /// retracted (the conversation's documents must be rebuilt without it).
    pub(super) fn settle_early(&mut self, event: &Event, admitted: bool) -> Result<bool, LogError> {
        let id = event.id();
        let Some((c, position)) = self.early.remove(&id.0)?.map(|g| {
            let (c, p) = g.value();
            (*c, p)
        }) else {
            return Ok(false);
        };
        if admitted {
            return Ok(false);
        }
        self.conv_log.remove((&c, position))?;
        let conversation = ConversationId(c);
        if let EventKind::Send { message, .. } = event.kind() {
            self.unsequenced.remove((&c, &message.0))?;
            let indexed = self.msg_by_id.get((&c, &message.0))?.map(|g| *g.value());
            if indexed == Some(id.0) {
                self.msg_by_id.remove((&c, &message.0))?;
            }
        }
        self.fold_next.remove(&conversation);
        self.drop_snapshot(conversation)?;
        Ok(true)
    }
}

impl EventLog {
    /// Events of others this log shows before the relay placed them (see
    /// [`LogTxn::append_early`]).
    pub fn n_early(&self) -> Result<u64, LogError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(EARLY)?.len()?)
    }
}
