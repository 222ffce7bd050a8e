//! Reads: `Pull` of a conversation's sequenced events, `Sync` of the conversations a user
//! belongs to, and `Received`, which moves a device's cursor.

use super::store::is_kept_kind;
use super::{RelayCore, SessionId};
use crate::storage::Storage;
use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use tidings_engine::wire::{self, ConversationInfo, ErrorCode, ServerFrame};
use tidings_engine::{ConversationId, Event, EventId, ServerSeq, UserId};

/// The most bytes one [`ConversationInfo`] takes in a frame: the id and two varints.
pub(super) const CONVERSATION_INFO_MAX_LEN: usize = 16 + 10 + 10;
/// The most bytes one [`wire::Invitation`] takes in a frame.
pub(super) const INVITATION_MAX_LEN: usize = 16 + 32;

/// The sequence of the last event of a page, from the statements placing it (the relay wrote
/// both; `None` only if they do not decode).
fn last_seq(events: &[wire::Envelope], records: &[wire::Envelope]) -> Option<ServerSeq> {
    let last = Event::decode_trusted(&events.last()?.0).ok()?.id();
    records
        .iter()
        .filter_map(|r| Event::decode_trusted(&r.0).ok())
        .flat_map(|st| st.placements())
        .find(|p| p.event == last)
        .map(|p| p.seq)
}

/// A page with its leading run of events placed before `since_ms` left out, but for the kinds
/// retention keeps ([`is_kept_kind`]: a device needs them to judge what follows): the events
/// left, which of `records` still place one of them, and the last sequence of the run (`None`
/// when the page does not start before `since_ms`). Server times never go back along a
/// conversation's order, so the run is every event of the page placed before that time.
fn leave_out_before(
    events: Vec<wire::Envelope>,
    records: &[wire::Envelope],
    since_ms: u64,
) -> (Vec<wire::Envelope>, Vec<bool>, Option<ServerSeq>) {
    // event id → (record placing it, seq, server time)
    let places: HashMap<EventId, (usize, ServerSeq, u64)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i, Event::decode_trusted(&r.0).ok()?)))
        .flat_map(|(i, st)| {
            st.placements()
                .into_iter()
                .map(move |p| (p.event, (i, p.seq, p.server_ts_ms)))
        })
        .collect();
    let mut run_to = None;
    let mut kept = Vec::with_capacity(events.len());
    let mut used = vec![false; records.len()];
    let mut in_run = true;
    for env in events {
        let ev = Event::decode_trusted(&env.0).ok();
        let placed = ev.as_ref().and_then(|ev| places.get(&ev.id()).copied());
        if in_run {
            match (&ev, placed) {
                (Some(ev), Some((_, seq, ts))) if ts < since_ms => {
                    run_to = Some(seq);
                    if !is_kept_kind(ev.kind()) {
                        continue;
                    }
                }
                _ => in_run = false,
            }
        }
        if let Some((i, _, _)) = placed {
            used[i] = true;
        }
        kept.push(env);
    }
    (kept, used, run_to)
}

/// A retention gap answer with the device's history policy applied too: the bodies placed
/// before `since_ms` that retention kept (none but the kept kinds, below the floor; above it,
/// any) are left out, and the range grows over them. The statements stay as the gap answer
/// chose them (they place early events the device may hold).
fn unwanted_in_gap(frame: ServerFrame, since_ms: u64) -> ServerFrame {
    let ServerFrame::HistoryGap {
        request_id,
        conversation,
        from,
        to,
        events,
        records,
        more,
    } = frame
    else {
        return frame;
    };
    let (events, _, unwanted_to) = leave_out_before(events, &records, since_ms);
    ServerFrame::HistoryGap {
        request_id,
        conversation,
        from,
        to: unwanted_to.map_or(to, |u| u.max(to)),
        events,
        records,
        more,
    }
}

impl<S: Storage> RelayCore<S> {
    /// Whether `user` is a member at the head of the order (staged events included): what
    /// submissions are checked against.
    pub(super) fn is_member(&self, user: &UserId, conv: &ConversationId) -> bool {
        self.convs
            .get(conv)
            .is_some_and(|c| c.head.membership.is_member(user))
    }

    /// Whether `user` is a member after the last durable event: what reads are checked
    /// against.
    pub(super) fn is_committed_member(&self, user: &UserId, conv: &ConversationId) -> bool {
        self.convs
            .get(conv)
            .and_then(|c| c.committed.as_ref())
            .is_some_and(|r| r.membership.is_member(user))
    }

    pub(super) fn committed_seq(&self, conv: &ConversationId) -> Option<ServerSeq> {
        self.convs
            .get(conv)
            .and_then(|c| c.committed.as_ref())
            .map(|r| r.max_seq)
    }

    pub(super) fn on_pull(
        &mut self,
        session: SessionId,
        request_id: u64,
        conv: ConversationId,
        after_seq: ServerSeq,
        limit: u32,
        history_since_ms: Option<u64>,
    ) {
        let Some((_, user)) = self.registered(session) else {
            let msg = "device is not registered to its user";
            return self.refuse(session, request_id, ErrorCode::NOT_REGISTERED, msg);
        };
        // Another node may have removed the user: what storage says now.
        self.sync_changes();
        self.ensure_conv(&conv);
        if !self.is_committed_member(&user, &conv) {
            let msg = "unknown conversation or not a member";
            return self.refuse(session, request_id, ErrorCode::NOT_MEMBER, msg);
        }
        let limit = (limit as usize).clamp(1, self.limits.max_page_items);
        let budget = self.limits.max_frame_len.saturating_sub(4096);
        let floor = match self.store.retained_floor(&conv) {
            Ok(floor) => floor,
            Err(e) => return self.refuse(session, request_id, ErrorCode::INTERNAL, &e.to_string()),
        };
        if after_seq < floor {
            // Retention: the range up to the floor is gone but for the kept kinds.
            return match self.gap_answer(request_id, conv, after_seq, floor, limit, budget) {
                Ok(frame) => {
                    let frame = match history_since_ms {
                        Some(since) => unwanted_in_gap(frame, since),
                        None => frame,
                    };
                    self.send(session, frame)
                }
                Err(e) => self.refuse(session, request_id, ErrorCode::INTERNAL, &e.to_string()),
            };
        }
        let frame = match self.store.page(&conv, after_seq, limit, budget) {
            Ok((events, records, more)) => {
                // The device's history policy: bodies placed before its time are not wanted.
                let (events, used, unwanted_to) = match history_since_ms {
                    Some(since) => leave_out_before(events, &records, since),
                    None => (events, Vec::new(), None),
                };
                match unwanted_to {
                    Some(to) => ServerFrame::HistoryGap {
                        request_id,
                        conversation: conv,
                        from: after_seq + 1,
                        to,
                        events,
                        // Only the statements placing what the frame carries.
                        records: records
                            .into_iter()
                            .zip(used)
                            .filter_map(|(r, used)| used.then_some(r))
                            .collect(),
                        more,
                    },
                    None => ServerFrame::Page {
                        request_id,
                        conversation: conv,
                        events,
                        records,
                        more,
                    },
                }
            }
            Err(e) => return self.refuse(session, request_id, ErrorCode::INTERNAL, &e.to_string()),
        };
        self.send(session, frame);
    }

    /// The answer to a pull below the retention floor: what is left from `after_seq + 1` on,
    /// and the statements of the dropped range the relay still holds (half the frame each). A
    /// device may hold an event of the range without its place (taken early from a peer);
    /// the statement is how it learns it. The range stops where the statements that fit stop.
    fn gap_answer(
        &self,
        request_id: u64,
        conv: ConversationId,
        after_seq: ServerSeq,
        floor: ServerSeq,
        limit: usize,
        budget: usize,
    ) -> Result<ServerFrame, crate::storage::StoreError> {
        let from = after_seq + 1;
        let (events, mut records, more) = self.store.page(&conv, after_seq, limit, budget / 2)?;
        let mut to = if more {
            last_seq(&events, &records).map_or(floor, |s| s.min(floor))
        } else {
            floor
        };
        let (statements, mut all) = self.store.statements_between(&conv, from, to, budget / 2)?;
        // A frame carries at most `MAX_PAGE_ITEMS` records.
        let room = wire::MAX_PAGE_ITEMS.saturating_sub(records.len());
        let in_page: HashSet<&[u8]> = records.iter().map(|r| r.0.as_slice()).collect();
        let mut added = Vec::new();
        for st in statements {
            if in_page.contains(st.0.as_slice()) {
                continue;
            }
            if added.len() == room {
                all = false;
                break;
            }
            added.push(st);
        }
        let mut more = more;
        if !all {
            // Up to the last sequence the statements that fit place: the rest comes next.
            let covered = added
                .last()
                .and_then(|st| Event::decode_trusted(&st.0).ok())
                .and_then(|st| st.placements().last().map(|p| p.seq));
            if let Some(covered) = covered.filter(|c| *c >= from && *c < to) {
                to = covered;
                more = true;
            }
        }
        records.extend(added);
        Ok(ServerFrame::HistoryGap {
            request_id,
            conversation: conv,
            from,
            to,
            events,
            records,
            more,
        })
    }

    /// One page of the user's accepted conversations after `after`, in id order; the first
    /// page also carries the pending invitations and the blocked users. Pages are cut by
    /// count and by the frame budget, and every page but the last names the next `after`:
    /// however many conversations a user is in, a device reaches all of them.
    pub(super) fn on_sync(
        &mut self,
        session: SessionId,
        request_id: u64,
        after: Option<ConversationId>,
    ) {
        let Some((_, user)) = self.registered(session) else {
            let msg = "device is not registered to its user";
            return self.refuse(session, request_id, ErrorCode::NOT_REGISTERED, msg);
        };
        let (invitations, blocked) = if after.is_none() {
            let invitations: Vec<wire::Invitation> = self
                .consent
                .pending(&user)
                .into_iter()
                .filter(|i| self.is_committed_member(&user, &i.conversation))
                .take(wire::MAX_PENDING_INVITATIONS)
                .collect();
            let mut blocked = self.consent.blocked(&user);
            blocked.truncate(wire::MAX_BLOCKED_USERS);
            (invitations, blocked)
        } else {
            (Vec::new(), Vec::new())
        };
        let lists = invitations.len() * INVITATION_MAX_LEN + blocked.len() * 32;
        let budget = self.limits.max_frame_len.saturating_sub(4096 + lists);
        let page = (budget / CONVERSATION_INFO_MAX_LEN).clamp(1, wire::MAX_LISTED_CONVERSATIONS);
        let mut list: Vec<ConversationInfo> = Vec::new();
        let mut next = None;
        if let (Some(convs), Some(s)) = (self.user_convs.get(&user), self.sessions.get(&session)) {
            let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
            for c in convs.range((lower, Bound::Unbounded)) {
                if !self.consent.is_accepted(&user, c) {
                    continue;
                }
                let Some(rec) = self.convs.get(c).and_then(|c| c.committed.as_ref()) else {
                    continue;
                };
                if list.len() == page {
                    next = list.last().map(|i| i.conversation);
                    break;
                }
                list.push(ConversationInfo {
                    conversation: *c,
                    max_seq: rec.max_seq,
                    cursor: s.cursors.get(c).copied().unwrap_or(0),
                });
            }
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.push_on = true;
            s.pull_mode = false;
        }
        self.send(
            session,
            ServerFrame::Conversations {
                request_id,
                conversations: list,
                next,
                invitations,
                blocked,
            },
        );
    }

    pub(super) fn on_received(
        &mut self,
        session: SessionId,
        conv: ConversationId,
        up_to: u64,
        now: u64,
    ) {
        let Some((device, user)) = self.registered(session) else {
            return;
        };
        let Some(max) = self.committed_seq(&conv) else {
            return;
        };
        if !self.is_committed_member(&user, &conv) {
            return;
        }
        let up_to = up_to.min(max);
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        s.acknowledge(conv, up_to);
        let cur = s.cursors.entry(conv).or_insert(0);
        if up_to > *cur {
            *cur = up_to;
            self.staged.cursors.insert((device, conv), up_to);
            self.staged.since_ms.get_or_insert(now);
        }
        self.update_fanout_metric();
    }
}
