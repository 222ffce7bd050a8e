//! Events a peer handed over before the relay placed them: stored, judged by the gate's rules
//! now and shown where pending messages show (see [`crate::log::LogTxn::append_early`]).

use super::*;
use crate::log::EarlyAppend;

impl Store {
    /// Stores and shows verified events of other devices that a peer handed over without
    /// relay statements, in one durable transaction. Each one the gate's rules admit now is
    /// folded at once, after the sequenced messages; the others are kept out of sight, held
    /// for their place in the relay's order, and those the rules refuse are listed in
    /// [`ApplyOutcome::held_early`]. Relay statements do not come this way: they are refused
    /// ([`StoreError::UntrustedAck`] when not the pinned relay's) or applied as the relay path
    /// applies them.
    pub fn apply_early(
        &mut self,
        events: &[Event],
        now_ms: u64,
    ) -> Result<ApplyOutcome, StoreError> {
        let (statements, early): (Vec<Event>, Vec<Event>) = events
            .iter()
            .cloned()
            .partition(|e| e.kind().is_sequencing());
        let mut outcome = if statements.is_empty() {
            ApplyOutcome::default()
        } else {
            self.apply(&statements)?
        };
        let convs: HashSet<ConversationId> = early.iter().map(|e| e.conversation()).collect();
        self.ready_to_judge(convs.iter().copied())?;
        let me = self.key.device();
        let directory = self.loaded_directory()?;
        let (results, chain_issues) = self.log.write(|t| {
            let results = early
                .iter()
                .map(|ev| t.append_early(ev, directory, me, now_ms))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((results, t.take_chain_issues()?))
        })?;
        outcome.chain_issues.extend(chain_issues);
        let mut by_conv: HashMap<ConversationId, Vec<(u64, &Event)>> = HashMap::new();
        for (ev, appended) in early.iter().zip(results) {
            match appended {
                EarlyAppend::Admitted { position } => {
                    outcome.n_new += 1;
                    by_conv
                        .entry(ev.conversation())
                        .or_default()
                        .push((position, ev));
                }
                EarlyAppend::Held(refusal) => {
                    outcome.n_new += 1;
                    if let Some(refusal) = refusal {
                        outcome.held_early.push(RefusedEvent {
                            conversation: ev.conversation(),
                            event: ev.id(),
                            author: ev.header().author,
                            kind: ev.kind().name(),
                            refusal,
                        });
                    }
                }
                EarlyAppend::Duplicate => outcome.n_duplicate += 1,
            }
        }
        for (conv, mut evs) in by_conv {
            evs.sort_by_key(|(p, _)| *p);
            outcome.changes.extend(self.fold_new(conv, &evs)?);
            let events: Vec<&Event> = evs.iter().map(|(_, e)| *e).collect();
            outcome.changes.extend(self.after_fold(conv, &events)?);
        }
        outcome.refused_keys.extend(self.take_refused_keys());
        Ok(outcome)
    }

    /// A gate run retracted events shown before their place (refused there): the
    /// conversation's document is rebuilt from the log without them, and what that changed
    /// goes into `outcome`.
    pub(super) fn rebuild_retracted(
        &mut self,
        conversation: ConversationId,
        outcome: &mut ApplyOutcome,
    ) -> Result<(), StoreError> {
        // A document out with a page's fold comes back first: rebuilt here, it must not be
        // put back over the rebuild later.
        self.settle_folds()?;
        let before = self
            .docs
            .remove(&conversation)
            .map(|l| l.doc.state().clone());
        self.ensure_loaded(conversation)?;
        if let Some(before) = before {
            let after = self.loaded(conversation)?.doc.state();
            outcome.changes.extend(before.diff_to(after));
        }
        Ok(())
    }
}
