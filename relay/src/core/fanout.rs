//! Fan-out: pushing committed events to the online member devices, within their push window.

use super::consent::Consent;
use super::sequencing::{self, Outgoing};
use super::session::Session;
use super::staged::StagedEvent;
use super::{Output, RelayCore, SessionId};
use crate::metrics::RelayMetrics;
use crate::storage::Storage;
use std::collections::{BTreeMap, HashMap, VecDeque};
use tidings_engine::wire::ServerFrame;
use tidings_engine::{ConversationId, DeviceId, EventKind, Membership, ServerSeq, UserId};

/// The parts of the core one fan-out pass works with.
struct FanOut<'a> {
    per_session: BTreeMap<SessionId, Vec<Outgoing>>,
    window: usize,
    user_devices: &'a HashMap<UserId, Vec<DeviceId>>,
    device_sessions: &'a HashMap<DeviceId, SessionId>,
    consent: &'a Consent,
    sessions: &'a mut BTreeMap<SessionId, Session>,
    outputs: &'a mut VecDeque<Output>,
    metrics: &'a RelayMetrics,
}

impl FanOut<'_> {
    /// Queues `item` for the online, push-enabled devices of those of `users` who accepted
    /// the conversation (an invitation's events wait for the user's acceptance).
    fn push<'u>(
        &mut self,
        users: impl Iterator<Item = &'u UserId>,
        conv: ConversationId,
        (seq, origin): (ServerSeq, SessionId),
        item: &Outgoing,
    ) {
        for user in users {
            if !self.consent.is_accepted(user, &conv) {
                continue;
            }
            let Some(devs) = self.user_devices.get(user) else {
                continue;
            };
            for d in devs {
                let Some(&sid) = self.device_sessions.get(d) else {
                    continue;
                };
                if sid == origin {
                    continue;
                }
                let Some(s) = self.sessions.get_mut(&sid) else {
                    continue;
                };
                if !s.push_on || s.pull_mode {
                    continue;
                }
                if s.unacked() >= self.window {
                    s.enter_pull_mode();
                    self.per_session.remove(&sid);
                    self.metrics.pull_mode_switch();
                    self.outputs.push_back(Output::Frame {
                        session: sid,
                        frame: ServerFrame::PullMode,
                    });
                    continue;
                }
                s.pushed(conv, seq);
                self.per_session.entry(sid).or_default().push(item.clone());
            }
        }
    }
}

impl<S: Storage> RelayCore<S> {
    /// Pushes each new event to every online, push-enabled device of every member at the
    /// event's place in the order (for a membership change: the members before it and an
    /// added user), except the connection that submitted it (it has the ack). A device past
    /// its push window is switched to pull mode instead of being buffered for.
    ///
    /// `replay` holds, for each conversation whose membership the events change, the
    /// membership before them; the others use their committed record.
    pub(super) fn fan_out(
        &mut self,
        events: &[StagedEvent],
        mut replay: HashMap<ConversationId, Option<Membership>>,
    ) {
        let mut ctx = FanOut {
            per_session: BTreeMap::new(),
            window: self.limits.push_window,
            user_devices: &self.user_devices,
            device_sessions: &self.device_sessions,
            consent: &self.consent,
            sessions: &mut self.sessions,
            outputs: &mut self.outputs,
            metrics: &self.metrics,
        };
        for e in events {
            let conv = e.event.conversation();
            let Some(statement) = e.statement.clone() else {
                continue;
            };
            let item = Outgoing {
                event: e.event.bytes().to_vec(),
                statement,
            };
            let at = (e.seq, e.origin);
            match replay.get_mut(&conv) {
                Some(state) => {
                    let author = e.event.header().user;
                    let mut extra = None;
                    match e.event.kind() {
                        EventKind::Create { members } => {
                            *state = Membership::create(author, members).ok();
                        }
                        kind => {
                            if let EventKind::AddMember { user, .. } = kind {
                                extra = Some(*user);
                            }
                            // Recipients: the members before the change...
                            if let Some(m) = state.as_ref() {
                                ctx.push(m.members().chain(extra.iter()), conv, at, &item);
                            }
                            if let Some(m) = state.as_mut() {
                                // Accepted by the same rules when it was sequenced.
                                let _ = m.apply(author, kind);
                            }
                            continue;
                        }
                    }
                    if let Some(m) = state.as_ref() {
                        ctx.push(m.members(), conv, at, &item);
                    }
                }
                None => {
                    let Some(rec) = self.convs.get(&conv).and_then(|c| c.committed.as_ref()) else {
                        continue;
                    };
                    ctx.push(rec.membership.members(), conv, at, &item);
                }
            }
        }
        let per_session = std::mem::take(&mut ctx.per_session);
        self.send_pushes(per_session);
    }

    /// Pushes events another relay node appended (read from storage, `items` in sequence
    /// order) to the online, push-enabled devices of the conversation's members who accepted
    /// it, as of its committed record.
    pub(super) fn fan_out_stored(
        &mut self,
        conv: ConversationId,
        items: Vec<(ServerSeq, Outgoing)>,
    ) {
        let Some(rec) = self.convs.get(&conv).and_then(|c| c.committed.as_ref()) else {
            return;
        };
        let mut ctx = FanOut {
            per_session: BTreeMap::new(),
            window: self.limits.push_window,
            user_devices: &self.user_devices,
            device_sessions: &self.device_sessions,
            consent: &self.consent,
            sessions: &mut self.sessions,
            outputs: &mut self.outputs,
            metrics: &self.metrics,
        };
        for (seq, item) in &items {
            // No session of this node submitted it.
            ctx.push(rec.membership.members(), conv, (*seq, 0), item);
        }
        let per_session = std::mem::take(&mut ctx.per_session);
        self.send_pushes(per_session);
        self.update_fanout_metric();
    }

    fn send_pushes(&mut self, per_session: BTreeMap<SessionId, Vec<Outgoing>>) {
        let budget = self.frame_budget();
        let max_items = self.limits.max_page_items;
        for (sid, items) in per_session {
            let still_pushing = self
                .sessions
                .get(&sid)
                .is_some_and(|s| s.push_on && !s.pull_mode);
            if !still_pushing {
                continue;
            }
            for (events, records) in sequencing::push_frames(items, max_items, budget) {
                self.send(sid, ServerFrame::Push { events, records });
            }
        }
    }

    pub(super) fn update_fanout_metric(&self) {
        let depth: usize = self.sessions.values().map(|s| s.unacked()).sum();
        self.metrics.set_fanout_depth(depth);
    }
}
