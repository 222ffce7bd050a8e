//! Submits: the admission checks of each event (membership, chain, consent, rates) and its
//! place in its conversation's sequence, staged for the next commit.

use super::sequencing::Statement;
use super::session::Phase;
use super::staged::{PendingSubmit, Slot, StagedEvent};
use super::store::{ChainInfo, ConversationRecord};
use super::waiting::WaitingSubmit;
use super::{ChainSlot, Conv, RelayCore, SessionId};
use crate::storage::Storage;
use tidings_engine::event::DecodeError;
use tidings_engine::wire::{ErrorCode, SubmitOutcome};
use tidings_engine::{
    ConversationId, Event, EventId, EventKind, Membership, MembershipError, UserId,
};

/// The rejection for an event the membership rules refuse.
pub(super) fn membership_rejection(e: &MembershipError) -> SubmitOutcome {
    let code = match e {
        MembershipError::NotMember(_) => ErrorCode::NOT_MEMBER,
        MembershipError::AlreadyCreated => ErrorCode::CONVERSATION_EXISTS,
        MembershipError::CreatorNotListed => ErrorCode::BAD_MEMBERS,
        MembershipError::RelayOnly => ErrorCode::FORBIDDEN_KIND,
        _ => ErrorCode::FORBIDDEN,
    };
    rejected(code, e.to_string())
}

pub(super) fn rejected(code: ErrorCode, reason: impl Into<String>) -> SubmitOutcome {
    SubmitOutcome::Rejected {
        code,
        reason: reason.into(),
    }
}

/// The server stamp of the next event of a conversation whose last stamp is `last_ms`: the
/// clock, but never below the last stamp while that is at most `max_lead_ms` ahead of the clock
/// (small steps back keep stamps non-decreasing). A last stamp further ahead came from a clock
/// that was wrong (jumped forward, then corrected): following it would stamp every later event
/// that far ahead forever, so the stamp follows the clock again. Order is the sequence, which
/// stays strictly increasing whatever the clock does.
pub(super) fn server_ts(now_ms: u64, last_ms: u64, max_lead_ms: u64) -> u64 {
    if last_ms > now_ms && last_ms - now_ms <= max_lead_ms {
        last_ms
    } else {
        now_ms
    }
}

impl<S: Storage> RelayCore<S> {
    /// A Submit whose envelopes were decoded and verified by the caller (with
    /// [`verify_batch`](super::verify_batch), e.g. on another thread), one result per envelope in batch order.
    /// Staged at once while the commit has room, else it waits its turn (see
    /// [`RelayCore::is_backlogged`]).
    pub fn handle_submit_verified(
        &mut self,
        session: SessionId,
        request_id: u64,
        results: Vec<Result<Event, DecodeError>>,
        now_ms: u64,
    ) {
        if !matches!(
            self.sessions.get(&session).map(|s| &s.phase),
            Some(Phase::Ready { .. })
        ) {
            return self.close(session, ErrorCode::UNEXPECTED_FRAME, "Submit before Auth");
        }
        if results.len() > self.limits.max_submit_batch {
            return self.batch_too_large(session, request_id, results.len());
        }
        self.waiting.push(
            session,
            WaitingSubmit {
                request_id,
                results,
                now_ms,
            },
        );
        self.admit_waiting();
    }

    /// Checks a submit's events and stages those accepted for the next commit (answered
    /// now if none needs a commit).
    pub(super) fn stage_submit(
        &mut self,
        session: SessionId,
        request_id: u64,
        results: Vec<Result<Event, DecodeError>>,
        now_ms: u64,
    ) {
        let Some((_, user)) = self.registered(session) else {
            let msg = "device is not registered to its user";
            return self.refuse(session, request_id, ErrorCode::NOT_REGISTERED, msg);
        };
        let evs: Vec<&Event> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let known = match self.store.chain(&evs) {
            Ok(k) => k,
            Err(e) => return self.refuse(session, request_id, ErrorCode::INTERNAL, &e.to_string()),
        };
        let mut known = known.into_iter();
        let mut slots = Vec::with_capacity(results.len());
        let mut n_rejected = 0;
        for r in results {
            let slot = match r {
                Err(e) => Slot::Done(rejected(ErrorCode::BAD_EVENT, e.to_string())),
                Ok(ev) => {
                    let chain = known.next().unwrap_or_default();
                    self.submit_one(session, user, ev, chain, now_ms)
                }
            };
            if matches!(slot, Slot::Done(SubmitOutcome::Rejected { .. })) {
                n_rejected += 1;
            }
            slots.push(slot);
        }
        self.metrics.rejected(n_rejected);
        let any_staged = slots.iter().any(|s| matches!(s, Slot::Staged(_)));
        let any_inflight = slots.iter().any(|s| matches!(s, Slot::Inflight(..)));
        if any_inflight && !any_staged {
            self.inflight_waiters.push(PendingSubmit {
                session,
                request_id,
                slots,
            });
        } else if !any_staged {
            self.answer(
                PendingSubmit {
                    session,
                    request_id,
                    slots,
                },
                None,
            );
        } else {
            self.staged.submits.push(PendingSubmit {
                session,
                request_id,
                slots,
            });
        }
    }

    pub(super) fn submit_one(
        &mut self,
        session: SessionId,
        user: UserId,
        ev: Event,
        chain: ChainInfo,
        now_ms: u64,
    ) -> Slot {
        let conv = ev.conversation();
        let id = ev.id();
        let author = ev.header().author;
        let author_user = ev.header().user;
        if ev.kind().is_sequencing() {
            return Slot::Done(rejected(
                ErrorCode::FORBIDDEN_KIND,
                "devices may not submit the relay's statements",
            ));
        }
        self.ensure_conv(&conv);
        let created_here = matches!(ev.kind(), EventKind::Create { .. });
        if let EventKind::Create { members } = ev.kind() {
            if !members.contains(&author_user) || !members.contains(&user) {
                return Slot::Done(rejected(
                    ErrorCode::BAD_MEMBERS,
                    "a Create event must list its author's user and the submitter's user",
                ));
            }
        }
        // Resubmission of an accepted event (by its user, or a member): the same place and
        // statement, nothing stored twice, whatever happened since (removal, revocation).
        if author_user == user || self.is_member(&user, &conv) {
            if let Some((_, seq, record)) = chain.stored {
                return Slot::Stored(seq, Statement::from(record));
            }
            if let Some(&idx) = self.staged.by_id.get(&id) {
                return Slot::Staged(idx);
            }
            if let Some((seq, st)) = self.inflight.as_ref().and_then(|i| i.placed.get(&id)) {
                return Slot::Inflight(*seq, st.clone());
            }
        }
        if !self.convs.contains_key(&conv) {
            if !created_here {
                return Slot::Done(rejected(
                    ErrorCode::UNKNOWN_CONVERSATION,
                    "no Create event for this conversation",
                ));
            }
        } else if created_here {
            return Slot::Done(rejected(
                ErrorCode::CONVERSATION_EXISTS,
                "another Create event made this conversation",
            ));
        }
        if self.revoked.contains_key(&author) {
            return Slot::Done(rejected(
                ErrorCode::REVOKED,
                "the author device was revoked by its user",
            ));
        }
        if self.devices.get(&author) != Some(&author_user) {
            return Slot::Done(rejected(
                ErrorCode::NOT_REGISTERED,
                "the author device is not registered to the event's user",
            ));
        }
        let membership = if let EventKind::Create { members } = ev.kind() {
            match Membership::create(author_user, members) {
                Ok(m) => Some(m),
                Err(e) => return Slot::Done(membership_rejection(&e)),
            }
        } else {
            if !self.is_member(&user, &conv) {
                return Slot::Done(rejected(
                    ErrorCode::NOT_MEMBER,
                    "the submitting user is not a member of the conversation",
                ));
            }
            let head = self.convs.get(&conv).map(|c| &c.head.membership);
            if let Some(Err(e)) = head.map(|m| m.check(author_user, ev.kind())) {
                return Slot::Done(membership_rejection(&e));
            }
            None
        };
        if let Some(outcome) = self.check_chain(&ev, &chain) {
            return Slot::Done(outcome);
        }
        let live = |user: &UserId, c: &ConversationId, inviter: &UserId| {
            self.is_member(user, c) && self.is_member(inviter, c)
        };
        let invitations = match self.consent.rows_for(author_user, conv, ev.kind(), live) {
            Ok(rows) => rows,
            Err((code, reason)) => return Slot::Done(rejected(code, reason)),
        };
        let Some(Phase::Ready { device, .. }) = self.sessions.get(&session).map(|s| s.phase) else {
            return Slot::Done(rejected(ErrorCode::INTERNAL, "session vanished"));
        };
        if let Err(who) = self.rates.take(device, user, now_ms, &self.limits) {
            return Slot::Done(rejected(
                ErrorCode::RATE_LIMITED,
                format!("over the {who}'s rate"),
            ));
        }
        if let Some(membership) = membership {
            self.convs.insert(
                conv,
                Conv {
                    committed: None,
                    pushed: 0,
                    head: ConversationRecord {
                        membership,
                        max_seq: 0,
                        last_ack: EventId([0; 32]),
                        last_ts_ms: 0,
                    },
                },
            );
            self.staged.membership_changed.insert(conv);
        } else if Membership::changes_membership(ev.kind()) {
            // Checked above against the same head: this applies.
            if let Some(c) = self.convs.get_mut(&conv) {
                if let Err(e) = c.head.membership.apply(author_user, ev.kind()) {
                    return Slot::Done(membership_rejection(&e));
                }
                if let EventKind::RemoveMember { user } = ev.kind() {
                    self.staged.former.push((conv, *user));
                }
            }
            self.staged.membership_changed.insert(conv);
        }
        // Counted at once, so that the caps hold within a batch too.
        for row in invitations {
            self.consent
                .set(row.user, row.conversation, row.decision, row.inviter);
            self.staged.invitations.push(row);
        }
        match self.sequence(session, ev, now_ms) {
            Ok(idx) => Slot::Staged(idx),
            Err(e) => Slot::Done(rejected(ErrorCode::INTERNAL, e.to_string())),
        }
    }

    /// The (id, prev) of the event at a chain place, staged, in flight or stored.
    pub(super) fn chain_at(&self, slot: &ChainSlot) -> Option<(EventId, Option<EventId>)> {
        if let Some(e) = self
            .staged
            .chain
            .get(slot)
            .and_then(|&i| self.staged.events.get(i))
        {
            return Some((e.event.id(), e.event.header().prev));
        }
        self.inflight
            .as_ref()
            .and_then(|i| i.chain.get(slot).copied())
    }

    /// Refuses an event that forks or breaks its author's chain (see docs/PROTOCOL.md).
    pub(super) fn check_chain(&self, ev: &Event, stored: &ChainInfo) -> Option<SubmitOutcome> {
        let h = ev.header();
        let id = ev.id();
        if h.counter == 0 || (h.counter == 1 && h.prev.is_some()) {
            return Some(rejected(
                ErrorCode::BROKEN_CHAIN,
                "counters start at 1, with no prev",
            ));
        }
        let here = (h.conversation, h.author, h.counter);
        // Past the dedup window the relay cannot tell an old resubmission from a new event:
        // it refuses rather than sequence one event twice.
        if stored.expired && self.chain_at(&here).is_none() {
            return Some(rejected(
                ErrorCode::EXPIRED,
                "the event is older than the relay's dedup window",
            ));
        }
        let fork = stored.fork.is_some() || self.chain_at(&here).is_some_and(|(o, _)| o != id);
        if fork {
            return Some(rejected(
                ErrorCode::CHAIN_FORK,
                format!(
                    "another event of this device has counter {} in the conversation",
                    h.counter
                ),
            ));
        }
        let pred = self
            .chain_at(&(h.conversation, h.author, h.counter - 1))
            .map(|(p, _)| p)
            .or(stored.pred);
        if let Some(p) = pred {
            if h.prev != Some(p) {
                return Some(rejected(
                    ErrorCode::BROKEN_CHAIN,
                    "prev is not the device's event at counter - 1",
                ));
            }
        }
        let succ = h.counter.checked_add(1).and_then(|n| {
            self.chain_at(&(h.conversation, h.author, n))
                .map(|(_, p)| p)
                .or(stored.succ_prev)
        });
        if let Some(sp) = succ {
            if sp != Some(id) {
                return Some(rejected(
                    ErrorCode::BROKEN_CHAIN,
                    "the device's event at counter + 1 names another prev",
                ));
            }
        }
        None
    }

    /// Gives `ev` the next sequence of its conversation (staged; the ack is signed when the
    /// commit starts, see [`RelayCore::sign_acks`]).
    pub(super) fn sequence(
        &mut self,
        origin: SessionId,
        ev: Event,
        now_ms: u64,
    ) -> Result<usize, DecodeError> {
        let conv_id = ev.conversation();
        let Some(conv) = self.convs.get_mut(&conv_id) else {
            return Err(DecodeError::Malformed("conversation vanished"));
        };
        let head = &mut conv.head;
        let seq = head.max_seq + 1;
        let ts_ms = server_ts(now_ms, head.last_ts_ms, self.limits.max_ts_lead_ms);
        head.max_seq = seq;
        head.last_ts_ms = ts_ms;
        let idx = self.staged.events.len();
        self.staged.by_id.insert(ev.id(), idx);
        let h = ev.header();
        self.staged
            .chain
            .insert((h.conversation, h.author, h.counter), idx);
        self.staged.touched.insert(conv_id);
        self.staged.since_ms.get_or_insert(now_ms);
        self.staged.events.push(StagedEvent {
            event: ev,
            statement: None,
            seq,
            ts_ms,
            origin,
        });
        Ok(idx)
    }
}
