//! A session with the relay: the welcome, the ready state, the conversation list and the
//! user's changes, catch-up pulls, history gaps and what is reported once caught up.

use super::*;
use crate::history::{HistoryPolicy, DAY_MS};

impl DeviceCore {
    pub(super) fn on_welcome(&mut self, w: Welcome, now_ms: u64) -> Result<(), DeviceError> {
        if w.relay != self.relay {
            return Err(DeviceError::WrongRelay {
                expected: self.relay,
                got: w.relay,
            });
        }
        self.config.submit_batch = self
            .config
            .submit_batch
            .min(w.limits.max_submit_batch as usize)
            .clamp(1, MAX_SUBMIT_BATCH);
        self.frame_limit = usize::try_from(w.limits.max_frame_len)
            .unwrap_or(MAX_FRAME_LEN)
            .min(MAX_FRAME_LEN);
        self.config.pull_limit = self.config.pull_limit.min(w.limits.max_page_items).max(1);
        let relay_window = usize::try_from(w.limits.max_inflight_requests).unwrap_or(usize::MAX);
        self.pull_budget = self.config.max_pulls_in_flight.min(relay_window / 2).max(1);
        if w.idle_timeout_ms > 0 {
            self.events.push_back(DeviceEvent::RelayIdle {
                idle_timeout_ms: u64::from(w.idle_timeout_ms),
            });
        }
        if w.registered {
            return self.on_ready(now_ms);
        }
        let Some(registration) = self.config.registration.clone() else {
            return Err(DeviceError::Closed {
                code: ErrorCode::NOT_REGISTERED,
                message: "device is not registered and has no registration to present".into(),
            });
        };
        let request_id = self.request_id();
        self.transmit.push_back(ClientFrame::RegisterDevice {
            request_id,
            registration,
        });
        self.state = State::AwaitRegistered;
        Ok(())
    }

    pub(super) fn on_ready(&mut self, now_ms: u64) -> Result<(), DeviceError> {
        self.state = State::Ready;
        self.reconnect_attempts = 0;
        self.events
            .push_back(DeviceEvent::Connection(ConnectionState::Syncing));
        while let Some(a) = self.user_actions.pop_front() {
            self.send_user_action(a);
        }
        while let Some(d) = self.device_requests.pop_front() {
            self.send_device_request(d);
        }
        // Flush first, then catch up: what the user wrote offline goes out before anything
        // else; `flush` sends the Sync once nothing more is due.
        self.flush(now_ms)
    }

    pub(super) fn send_sync(&mut self) {
        self.sync_sent = true;
        self.send_sync_page(None);
    }

    /// Asks for one page of the conversation list: the first (`None`), or the one after a
    /// conversation id. A device asks until an answer names no next page.
    pub(super) fn send_sync_page(&mut self, after: Option<ConversationId>) {
        let request_id = self.request_id();
        let request = match after {
            None => Request::Sync,
            Some(_) => Request::SyncPage,
        };
        self.requests.insert(request_id, request);
        self.transmit
            .push_back(ClientFrame::Sync { request_id, after });
    }

    /// The invitations and blocks the first Sync page lists: the relay's word replaces what
    /// this device held; invitations new to it are reported.
    pub(super) fn listed(&mut self, invitations: Vec<Invitation>, blocked: Vec<UserId>) {
        let fresh: Vec<Invitation> = invitations
            .iter()
            .filter(|i| !self.invitations.contains_key(&i.conversation))
            .cloned()
            .collect();
        self.invitations = invitations
            .into_iter()
            .map(|i| (i.conversation, i))
            .collect();
        self.blocked = blocked.into_iter().collect();
        for i in fresh {
            self.events
                .push_back(DeviceEvent::User(UserChange::Invited(i)));
        }
    }

    /// A durable change of the user's state, from this device's request or another's.
    pub(super) fn on_user_change(
        &mut self,
        change: UserChange,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        match &change {
            UserChange::Invited(i) => {
                self.invitations.insert(i.conversation, i.clone());
            }
            UserChange::Accepted(info) => {
                if let Some(invitation) = self.invitations.remove(&info.conversation) {
                    self.ask_for_inviter(invitation.inviter, now_ms)?;
                }
                self.catch_up_on(info)?;
            }
            UserChange::Declined(c) => {
                self.invitations.remove(c);
            }
            UserChange::Blocked(u) => {
                self.blocked.insert(*u);
                self.invitations.retain(|_, i| i.inviter != *u);
            }
            UserChange::Unblocked(u) => {
                self.blocked.remove(u);
            }
        }
        self.events.push_back(DeviceEvent::User(change));
        Ok(())
    }

    /// Asks for the certificates of the user whose invitation was just accepted, unless the
    /// device holds some or a request for them is in flight: the conversation's first page
    /// (its `Create`, by that user) then finds the gate open, instead of being held until an
    /// answer that a request sent only then brings a round trip later, and read back.
    fn ask_for_inviter(&mut self, inviter: UserId, now_ms: u64) -> Result<(), DeviceError> {
        if self.state != State::Ready
            || self.asking.contains(&inviter)
            || inviter == self.store.key().user()
            || !self.store.directory()?.all_devices_of(&inviter).is_empty()
        {
            return Ok(());
        }
        self.ask_devices(vec![inviter], Vec::new(), None, now_ms);
        Ok(())
    }

    /// Starts catching up on a conversation the relay lists: pulls what is missing after
    /// the stored cursor.
    pub(super) fn catch_up_on(
        &mut self,
        info: &ConversationInfo,
    ) -> Result<ServerSeq, DeviceError> {
        let target = self.targets.entry(info.conversation).or_insert(0);
        *target = (*target).max(info.max_seq);
        let cursor = self.store.log().cursor(&cursor_key(&info.conversation))?;
        if info.max_seq > cursor {
            self.pull(info.conversation, cursor);
        }
        Ok(cursor)
    }

    /// Pulls `conversation` after `after_seq`, and keeps up to `pull_window` pages in
    /// flight while the relay announced more than is asked for: each next pull starts where the
    /// one before ends (`pull_limit` further), so the pages come back to back. A pull after a
    /// sequence that pulls in flight already cover asks for nothing new. Within this session's
    /// budget over all conversations: past it, the conversation waits for its turn (see
    /// [`MAX_PULLS_IN_FLIGHT`]). Only in a ready session (a peer's events can move things
    /// while there is none): the next session's sync step pulls what is missing then.
    pub(super) fn pull(&mut self, conversation: ConversationId, after_seq: ServerSeq) {
        if self.state != State::Ready {
            return;
        }
        let p = self.pulling.entry(conversation).or_default();
        if p.in_flight == 0 {
            p.asked_to = after_seq;
            p.owed = true;
        } else {
            p.asked_to = p.asked_to.max(after_seq);
        }
        self.take_turn(conversation);
        self.dispatch_pulls();
        self.forget_idle_pulls(conversation);
    }

    /// Queues `conversation` for a pull if it wants one and is not queued yet.
    fn take_turn(&mut self, conversation: ConversationId) {
        if !self.wants_pull(conversation) {
            return;
        }
        if let Some(p) = self.pulling.get_mut(&conversation).filter(|p| !p.in_turn) {
            p.in_turn = true;
            self.pull_turns.push_back(conversation);
        }
    }

    /// Whether `conversation` has room in its window and something to ask for.
    fn wants_pull(&self, conversation: ConversationId) -> bool {
        let Some(p) = self.pulling.get(&conversation) else {
            return false;
        };
        let target = self.targets.get(&conversation).copied().unwrap_or(0);
        p.in_flight < self.config.pull_window.max(1) && (p.owed || p.asked_to < target)
    }

    /// Sends pulls while the budget allows, one per conversation in turn.
    fn dispatch_pulls(&mut self) {
        while self.pulls_in_flight < self.pull_budget {
            let Some(conversation) = self.pull_turns.pop_front() else {
                return;
            };
            if let Some(p) = self.pulling.get_mut(&conversation) {
                p.in_turn = false;
            }
            if !self.wants_pull(conversation) {
                self.forget_idle_pulls(conversation);
                continue;
            }
            let mut p = self.pulling.get(&conversation).copied().unwrap_or_default();
            let after = p.asked_to;
            self.send_pull(conversation, after, &mut p);
            p.owed = false;
            self.pulling.insert(conversation, p);
            self.take_turn(conversation);
        }
    }

    /// Drops the state of a conversation with nothing in flight and nothing due.
    fn forget_idle_pulls(&mut self, conversation: ConversationId) {
        if self
            .pulling
            .get(&conversation)
            .is_some_and(|p| p.in_flight == 0 && !p.in_turn)
        {
            self.pulling.remove(&conversation);
        }
    }

    /// Settles how far back this device takes `conversation`'s bodies, before its pulls: on
    /// the first catch-up of a conversation the device holds nothing of, its history policy
    /// bounds them, counted from the device's own first catch-up (when it joined: see
    /// [`JOINED_KEY`]) — `LastDays(n)`: the bodies the relay placed from n days before it;
    /// `Nothing`: those placed from it on — and its pulls say so
    /// ([`ClientFrame::Pull::history_since_ms`]): the relay answers the older part with a
    /// `HistoryGap` carrying only the kinds it keeps under retention, which the device takes
    /// as it takes a retention gap. Counting from the join, not from now, a conversation that
    /// started after the device joined (one it first hears of after a week offline, say) is
    /// always taken whole. The bound is kept in the log, so a catch-up cut short goes on under
    /// it; a conversation the device already holds events of is taken whole (the policy is for
    /// what a new device fetches, not a reason to leave holes).
    pub(super) fn settle_history_since(
        &mut self,
        conversation: ConversationId,
        cursor: ServerSeq,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        if self.history_since.contains_key(&conversation) {
            return Ok(());
        }
        let key = since_key(&conversation);
        let kept = self.store.log().cursor(&key)?;
        if kept > 0 {
            self.history_since.insert(conversation, kept);
            return Ok(());
        }
        if cursor > 0 || self.store.log().conversation_meta(conversation)?.is_some() {
            return Ok(());
        }
        let policy = self.store.history_policy();
        if policy == HistoryPolicy::All {
            return Ok(());
        }
        let joined = match self.store.log().cursor(JOINED_KEY)? {
            0 => {
                self.store
                    .log()
                    .write_lazy(|t| t.set_cursor(JOINED_KEY, now_ms))?;
                now_ms
            }
            at => at,
        };
        let since = match policy {
            HistoryPolicy::LastDays(n) => joined.saturating_sub(u64::from(n) * DAY_MS),
            HistoryPolicy::Nothing => joined,
            _ => 0,
        };
        if since == 0 {
            return Ok(());
        }
        // Lazy: the cursors a catch-up moves are durable commits, which carry this one.
        self.store.log().write_lazy(|t| t.set_cursor(&key, since))?;
        self.history_since.insert(conversation, since);
        Ok(())
    }

    /// One more pull of `conversation` after `after_seq`, outside the window: the hole a page
    /// cut short (by bytes) left before the next pull's start.
    pub(super) fn pull_from(&mut self, conversation: ConversationId, after_seq: ServerSeq) {
        if self.state != State::Ready {
            return;
        }
        let mut p = self.pulling.get(&conversation).copied().unwrap_or_default();
        self.send_pull(conversation, after_seq, &mut p);
        self.pulling.insert(conversation, p);
    }

    fn send_pull(&mut self, conversation: ConversationId, after_seq: ServerSeq, p: &mut Pulls) {
        let request_id = self.request_id();
        self.requests
            .insert(request_id, Request::Pull(conversation, after_seq));
        self.transmit.push_back(ClientFrame::Pull {
            request_id,
            conversation,
            after_seq,
            limit: self.config.pull_limit,
            history_since_ms: self.history_since.get(&conversation).copied(),
        });
        let end = after_seq.saturating_add(u64::from(self.config.pull_limit.max(1)));
        p.asked_to = p.asked_to.max(end);
        p.in_flight += 1;
        self.pulls_in_flight += 1;
    }

    /// A pull of `conversation` was answered (or refused): one fewer in flight, and the next
    /// conversation's turn.
    pub(super) fn pull_answered(&mut self, conversation: ConversationId) {
        if let Some(p) = self.pulling.get_mut(&conversation) {
            p.in_flight = p.in_flight.saturating_sub(1);
            self.pulls_in_flight = self.pulls_in_flight.saturating_sub(1);
        }
        self.forget_idle_pulls(conversation);
        self.dispatch_pulls();
    }

    /// Records a range the relay no longer holds (see [`DeviceEvent::HistoryGap`]). The
    /// range is the relay's word, as everything it serves is; it is cut at the highest
    /// sequence the relay announced, so an answer cannot make the device step over sequences
    /// that do not exist yet.
    pub(super) fn on_history_gap(
        &mut self,
        conversation: ConversationId,
        from: ServerSeq,
        to: ServerSeq,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        let to = match self.targets.get(&conversation) {
            Some(&target) => to.min(target),
            None => to,
        };
        if from == 0 || to < from {
            return Ok(());
        }
        // Pulls in flight together into one pruned range are each answered with the part
        // after their own start: a range inside one already recorded is not news.
        let known = self.store.log().history_gaps(conversation)?;
        if known.iter().any(|(f, t)| *f <= from && to <= *t) {
            return Ok(());
        }
        tracing::info!(%conversation, from, to, "the relay no longer holds a range of history");
        self.gap_conversations.insert(conversation);
        let out = self.store.record_history_gap(conversation, from, to)?;
        self.emit_outcome(out, now_ms);
        self.events.push_back(DeviceEvent::HistoryGap {
            conversation,
            from,
            to,
        });
        Ok(())
    }

    pub(super) fn request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    pub(super) fn report_if_caught_up(&mut self) -> Result<(), DeviceError> {
        if self.state == State::Ready && self.caught_up() {
            self.events
                .push_back(DeviceEvent::Connection(ConnectionState::Online));
            if !self.gaps_checked {
                self.gaps_checked = true;
                self.report_gaps()?;
            }
        }
        Ok(())
    }

    /// Once caught up, every author's chain the log holds should be complete up to its
    /// highest event: what is missing below was withheld or dropped (or the author has not
    /// managed to send it yet: a message that went FAILED there, or that the relay refused).
    /// Reported once per missing place.
    pub(super) fn report_gaps(&mut self) -> Result<(), DeviceError> {
        let mut convs: Vec<ConversationId> = self.targets.keys().copied().collect();
        convs.sort();
        for conversation in convs {
            // Where the relay said it dropped history, authors' chains have holes by design.
            let dropped = self.gap_conversations.contains(&conversation)
                || !self.store.log().history_gaps(conversation)?.is_empty();
            let issues = if dropped {
                Vec::new()
            } else {
                self.store.log().chain_gaps(conversation)?
            };
            for issue in issues {
                let ChainIssue::Gap {
                    author, missing, ..
                } = &issue
                else {
                    continue;
                };
                let fresh: Vec<u64> = missing
                    .iter()
                    .copied()
                    .filter(|n| self.reported_gaps.insert((conversation, *author, *n)))
                    .collect();
                if !fresh.is_empty() {
                    tracing::warn!(%conversation, %author, missing = ?fresh, "gap in an author's chain");
                    self.events.push_back(DeviceEvent::Chain(ChainIssue::Gap {
                        conversation,
                        author: *author,
                        missing: fresh,
                    }));
                }
            }
            let Some(&listed_seq) = self.synced.get(&conversation) else {
                continue;
            };
            if let Some(ChainIssue::Withheld {
                receipt_up_to,
                missing,
                ..
            }) = self.store.log().receipt_gap(conversation, listed_seq)?
            {
                let fresh: Vec<ServerSeq> = missing
                    .into_iter()
                    .filter(|n| self.reported_withheld.insert((conversation, *n)))
                    .collect();
                if !fresh.is_empty() {
                    tracing::warn!(%conversation, receipt_up_to, missing = ?fresh, "sequences a receipt covers were withheld");
                    self.events
                        .push_back(DeviceEvent::Chain(ChainIssue::Withheld {
                            conversation,
                            receipt_up_to,
                            missing: fresh,
                        }));
                }
            }
        }
        Ok(())
    }
}
