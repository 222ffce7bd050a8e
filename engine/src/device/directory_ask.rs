//! Asking the relay for the certificates and revocations of the users the device's
//! conversations and gates need (the `Devices` requests), with their pages, failures and
//! deadlines.

use super::*;

impl DeviceCore {
    /// Once per session: asks for the certificates and revocations of every member of every
    /// conversation in the log, so the gates and the conversation keys use a fresh directory,
    /// and for the authors that stopped a gate.
    pub(super) fn ask_directory(&mut self, now_ms: u64) -> Result<(), DeviceError> {
        if self.directory_asked {
            return Ok(());
        }
        self.directory_asked = true;
        // Gates that stopped at an unknown author (in an earlier session, or before a
        // restart) ask again: the request that would settle them may have been lost.
        let out = self.store.recheck_gates()?;
        self.emit_outcome(out, now_ms);
        let mut users: BTreeSet<UserId> = BTreeSet::new();
        for (_, members) in self.conversation_users()? {
            users.extend(members);
        }
        let users: Vec<UserId> = users.into_iter().collect();
        for chunk in users.chunks(crate::wire::MAX_DEVICE_QUERY_USERS) {
            self.ask_devices(chunk.to_vec(), Vec::new(), None, now_ms);
        }
        Ok(())
    }

    /// Every conversation in the log with its users: the `Create` list and the members the
    /// gate knows now (who joined later).
    pub(super) fn conversation_users(
        &self,
    ) -> Result<Vec<(ConversationId, Vec<UserId>)>, DeviceError> {
        let log = self.store.log();
        let mut out = Vec::new();
        for (c, meta) in log.conversations()? {
            let mut users: Vec<UserId> = meta.members.map(|(_, m)| m).unwrap_or_default();
            users.extend(log.gate(c)?.members());
            out.push((c, users));
        }
        Ok(out)
    }

    /// Conversations whose messages wait for the relay's word on a member's devices. When
    /// this device encrypts, a member of whom it knows no device gets no key for what it
    /// sends now; the share follows once the directory answers, but the device may be gone
    /// by then (killed, out of coverage), and the member would hold messages nobody can
    /// open until it comes back. So a conversation's messages wait:
    /// - behind this device's own `Create` or `AddMember` still queued ahead of them that
    ///   brings in a user it knows no device of: the relay says nothing about a user before
    ///   they share a conversation, and placing the event asks
    ///   ([`DeviceCore::ask_for_new_members`]);
    /// - while a member has no known device and the relay has not answered for that user
    ///   since this core started: asked here, unless an ask is in flight. The wait ends with
    ///   the answer, or when this connection gives the ask up (refused, no progress, its
    ///   deadline): one ask per connection at most.
    pub(super) fn held_for_devices(
        &mut self,
        now_ms: u64,
    ) -> Result<HashSet<ConversationId>, DeviceError> {
        let mut held = HashSet::new();
        if !self.store.encrypts() {
            return Ok(held);
        }
        // Conversations with queued messages, each with the control entries ahead of them.
        let mut with_messages: HashMap<ConversationId, Vec<EventId>> = HashMap::new();
        let mut controls: HashMap<ConversationId, Vec<EventId>> = HashMap::new();
        for e in self.store.outbox_entries()? {
            if e.state != OutboxState::Queued || with_messages.contains_key(&e.conversation) {
                continue;
            }
            if e.message.is_none() {
                controls.entry(e.conversation).or_default().push(e.event);
            } else {
                let ahead = controls.remove(&e.conversation).unwrap_or_default();
                with_messages.insert(e.conversation, ahead);
            }
        }
        if with_messages.is_empty() {
            return Ok(held);
        }
        let in_flight: HashSet<UserId> = self
            .requests
            .values()
            .filter_map(|r| match r {
                Request::Devices(a) => Some(a.users.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect();
        let mut ask = BTreeSet::new();
        for (c, ahead) in with_messages {
            if !self.store.joining_without_devices(&ahead)?.is_empty() {
                held.insert(c);
                continue;
            }
            let (heard, gave_up) = (&self.heard_of, &self.gave_up_on);
            let waiting = self
                .store
                .members_without_devices(c, |u| !heard.contains(u) && !gave_up.contains(u))?;
            if waiting.is_empty() {
                continue;
            }
            held.insert(c);
            ask.extend(waiting.into_iter().filter(|u| !in_flight.contains(u)));
        }
        let ask: Vec<UserId> = ask.into_iter().collect();
        for chunk in ask.chunks(crate::wire::MAX_DEVICE_QUERY_USERS) {
            self.ask_devices(chunk.to_vec(), Vec::new(), None, now_ms);
        }
        Ok(held)
    }

    pub(super) fn ask_devices(
        &mut self,
        users: Vec<UserId>,
        settles: Vec<UserId>,
        after: Option<DeviceId>,
        now_ms: u64,
    ) {
        let request_id = self.request_id();
        let ask = DevicesAsk {
            users: users.clone(),
            settles,
            after,
            deadline_ms: now_ms.saturating_add(self.config.ack_timeout_ms),
        };
        self.requests.insert(request_id, Request::Devices(ask));
        self.transmit.push_back(ClientFrame::Devices {
            request_id,
            users,
            after,
        });
    }

    /// One page of a `Devices` answer: its statements are taken in, the users it completes
    /// settle their gates, and the rest is asked for. A page that moves nothing forward
    /// counts as a failed ask. An answer to a request given up on (timed out) is taken in
    /// and settles nobody.
    pub(super) fn on_devices_page(
        &mut self,
        request_id: u64,
        registrations: &[DeviceRegistration],
        revocations: &[DeviceRevocation],
        complete: usize,
        resume_after: Option<DeviceId>,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        let ask = match self.requests.remove(&request_id) {
            Some(Request::Devices(ask)) => ask,
            Some(_) => return Err(DeviceError::Protocol("Devices answer to another request")),
            None => DevicesAsk {
                users: Vec::new(),
                settles: Vec::new(),
                after: None,
                deadline_ms: now_ms,
            },
        };
        let n = ask.users.len();
        let sane = complete <= n && (resume_after.is_none() || complete < n);
        let (done, rest) = ask.users.split_at(complete.min(n));
        if sane {
            let counts_from = &self.counts_from;
            let counted = done
                .iter()
                .filter(|u| counts_from.get(u).is_none_or(|from| request_id >= *from));
            self.heard_of.extend(counted);
        } else {
            self.gave_up_on.extend(ask.users.iter().copied());
        }
        let settled: Vec<UserId> = ask
            .settles
            .iter()
            .filter(|u| sane && done.contains(u))
            .copied()
            .collect();
        for u in &settled {
            self.asking.remove(u);
            self.failed_asks.remove(u);
            self.reask.remove(u);
        }
        let out = self
            .store
            .absorb_devices(registrations, revocations, &settled)?;
        self.take_gate_outcome(out, now_ms)?;
        if rest.is_empty() {
            return Ok(());
        }
        let progress =
            sane && (complete > 0 || (resume_after.is_some() && resume_after > ask.after));
        let rest_settles: Vec<UserId> = ask
            .settles
            .iter()
            .filter(|u| rest.contains(u))
            .copied()
            .collect();
        if progress {
            self.ask_devices(rest.to_vec(), rest_settles, resume_after, now_ms);
            Ok(())
        } else {
            self.gave_up_on.extend(rest.iter().copied());
            self.failed_ask(&rest_settles, now_ms, ASK_UNITS)
        }
    }

    /// Asks for `users` (waited for by a gate) failed, counting `units` quarter asks (0: not
    /// counted): ask again later, or, after [`MAX_DEVICE_ASKS`], give their events their
    /// final verdict.
    pub(super) fn failed_ask(
        &mut self,
        users: &[UserId],
        now_ms: u64,
        units: u32,
    ) -> Result<(), DeviceError> {
        let mut final_verdict = Vec::new();
        for u in users {
            self.asking.remove(u);
            let n = self.failed_asks.entry(*u).or_default();
            *n += units;
            if *n >= MAX_DEVICE_ASKS * ASK_UNITS {
                final_verdict.push(*u);
            } else {
                let wait = (DEVICE_ASK_RETRY_MS << (*n).min(16)).min(MAX_DEVICE_ASK_RETRY_MS);
                self.reask.insert(*u, now_ms.saturating_add(wait));
            }
        }
        if final_verdict.is_empty() {
            return Ok(());
        }
        for u in &final_verdict {
            self.failed_asks.remove(u);
            self.reask.remove(u);
        }
        tracing::warn!(
            n_users = final_verdict.len(),
            "no complete certificate answer; events of unknown authors refused"
        );
        let out = self.store.give_up_on(&final_verdict)?;
        self.take_gate_outcome(out, now_ms)
    }

    /// Reports what judging waiting gates again did; messages the gates let through only now
    /// get their receipts now.
    pub(super) fn take_gate_outcome(
        &mut self,
        out: crate::store::ApplyOutcome,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        let gated = out.gated.clone();
        self.emit_outcome(out, now_ms);
        for c in gated {
            let cursor = self.store.log().cursor(&cursor_key(&c))?;
            self.deliver_up_to(c, cursor, now_ms)?;
        }
        Ok(())
    }

    /// Asks failed by timeout, and asks due again.
    pub(super) fn devices_timeouts(&mut self, now_ms: u64) -> Result<(), DeviceError> {
        let expired: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| matches!(r, Request::Devices(a) if a.deadline_ms <= now_ms))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(Request::Devices(ask)) = self.requests.remove(&id) {
                // Given up: messages waiting for these users go (see `held_for_devices`).
                self.gave_up_on.extend(ask.users.iter().copied());
                self.failed_ask(&ask.settles, now_ms, 0)?;
            }
        }
        if self.state != State::Ready {
            return Ok(());
        }
        let due: Vec<UserId> = self
            .reask
            .iter()
            .filter(|(_, t)| **t <= now_ms)
            .map(|(u, _)| *u)
            .collect();
        for u in &due {
            self.reask.remove(u);
        }
        let users: Vec<UserId> = due.into_iter().filter(|u| self.asking.insert(*u)).collect();
        for chunk in users.chunks(crate::wire::MAX_DEVICE_QUERY_USERS) {
            self.ask_devices(chunk.to_vec(), chunk.to_vec(), None, now_ms);
        }
        Ok(())
    }

    /// The earliest Devices deadline or re-ask: of asks a gate waits for, or any ask while
    /// messages wait for certificates.
    pub(super) fn devices_wakeup(&self) -> Option<u64> {
        let deadlines = self.requests.values().filter_map(|r| match r {
            Request::Devices(a) if !a.settles.is_empty() || !self.held.is_empty() => {
                Some(a.deadline_ms)
            }
            _ => None,
        });
        deadlines.chain(self.reask.values().copied()).min()
    }
}
