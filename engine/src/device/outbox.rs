//! The outbox side of the device: flushing queued events, submit results, the relay's
//! statements and cursors, retries and giving up.

use super::*;

/// The bytes of a `Submit` frame's body besides its envelopes, at most: its variant, request
/// id and envelope count (postcard varints).
const SUBMIT_OVERHEAD: usize = 1 + 10 + 5;
/// The bytes of an envelope in a frame besides the event's: its length (a varint).
const ENVELOPE_OVERHEAD: usize = 5;

impl DeviceCore {
    /// Submits the next due outbox entries, if connected and nothing is in flight: at most
    /// `submit_batch` of them, in a frame the relay reads. Per conversation, entries go in
    /// outbox order: one still backing off holds back the ones behind it, and so does a
    /// message waiting for a member's certificates (`held_for_devices`).
    pub(super) fn flush(&mut self, now_ms: u64) -> Result<(), DeviceError> {
        if self.state != State::Ready || self.inflight.is_some() {
            return Ok(());
        }
        self.forget_clock_steps(now_ms)?;
        self.held = self.held_for_devices(now_ms)?;
        let mut blocked: HashSet<ConversationId> = HashSet::new();
        let mut batch = Vec::new();
        let limit = self.config.submit_batch;
        for entry in self.store.outbox_entries()? {
            if batch.len() >= limit {
                break;
            }
            if entry.state != OutboxState::Queued || blocked.contains(&entry.conversation) {
                continue;
            }
            let held = entry.message.is_some() && self.held.contains(&entry.conversation);
            if held || entry.next_attempt_ms > now_ms {
                blocked.insert(entry.conversation);
                continue;
            }
            batch.push(entry.clone());
        }
        if batch.is_empty() {
            // Nothing (more) to submit now: catch up. Entries still backing off must not hold
            // back the sync, or a device whose last submission timed out would never catch up
            // on that connection.
            if !self.sync_sent {
                self.send_sync();
            }
            return Ok(());
        }
        // The Submit must fit in a frame the relay reads: the entries after the first that
        // would overflow it wait for the next one (one event always fits, see
        // `Welcome::limits`).
        let mut envelopes = Vec::with_capacity(batch.len());
        let mut bytes = SUBMIT_OVERHEAD;
        for (i, e) in batch.iter().enumerate() {
            let ev = self
                .store
                .log()
                .get(&e.event)?
                .ok_or(DeviceError::Protocol("outbox entry without its event"))?;
            bytes += ev.bytes().len() + ENVELOPE_OVERHEAD;
            if i > 0 && bytes > self.frame_limit {
                break;
            }
            envelopes.push(Envelope(ev.into_bytes()));
        }
        batch.truncate(envelopes.len());
        let request_id = self.request_id();
        self.transmit.push_back(ClientFrame::Submit {
            request_id,
            events: envelopes,
        });
        self.inflight = Some(Inflight {
            request_id,
            entries: batch,
            deadline_ms: now_ms + self.config.ack_timeout_ms,
        });
        Ok(())
    }

    /// An entry due further ahead than any backoff can ask for was scheduled by a clock that
    /// has since gone backwards (corrected by the network, or another time after a restart):
    /// it is due now, instead of waiting out the clock's step.
    pub(super) fn forget_clock_steps(&mut self, now_ms: u64) -> Result<(), DeviceError> {
        let p = &self.config.retry;
        let longest = p.max_ms + p.max_ms * u64::from(p.jitter_pct.min(100)) / 100;
        let horizon = now_ms.saturating_add(longest);
        let stale: Vec<OutboxEntry> = self
            .store
            .outbox_entries()?
            .filter(|e| e.state == OutboxState::Queued && e.next_attempt_ms > horizon)
            .cloned()
            .collect();
        for mut entry in stale {
            entry.next_attempt_ms = now_ms;
            let changes = self.store.update_outbox(&entry)?;
            self.emit(changes);
        }
        Ok(())
    }

    pub(super) fn on_submit_result(
        &mut self,
        request_id: u64,
        outcomes: Vec<SubmitOutcome>,
        items: VerifiedItems,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        let placed = self.placed(items.records);
        let Some(inflight) = self.inflight.take_if(|f| f.request_id == request_id) else {
            // The answer to a submission already given up on: its statements still count,
            // and the relay is answering, so what waits may go.
            self.apply_statements(placed.statements, now_ms)?;
            return self.flush(now_ms);
        };
        if outcomes.len() != inflight.entries.len() {
            return Err(DeviceError::Protocol("submit result of the wrong length"));
        }
        for (entry, outcome) in inflight.entries.into_iter().zip(outcomes) {
            match outcome {
                SubmitOutcome::Accepted { seq } => {
                    // Sequenced only if a signed statement says so, at the place announced.
                    let signed = placed
                        .places
                        .get(&entry.event)
                        .is_some_and(|(c, p, _)| *c == entry.conversation && p.seq == seq);
                    if !signed {
                        tracing::warn!(event = %entry.event, seq, "acceptance without a matching statement");
                        self.attempt_failed(entry, now_ms)?;
                    }
                }
                SubmitOutcome::Rejected { code, reason } if retryable(code) => {
                    tracing::debug!(event = %entry.event, ?code, %reason, "submission deferred");
                    self.attempt_failed(entry, now_ms)?;
                }
                SubmitOutcome::Rejected { code, reason } => {
                    self.events.push_back(DeviceEvent::Refused {
                        event: Some(entry.event),
                        code,
                        reason,
                    });
                    self.give_up(entry, now_ms)?;
                }
            }
        }
        self.apply_statements(placed.statements, now_ms)?;
        self.flush(now_ms)
    }

    /// Stores the relay's statements of a submit answer: the device's own events they place
    /// leave the outbox and take their places; others' events they place wait for their page
    /// or push.
    pub(super) fn apply_statements(
        &mut self,
        statements: Vec<Event>,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        if statements.is_empty() {
            return Ok(());
        }
        let out = self.store.apply(&statements)?;
        self.emit_outcome(out, now_ms);
        self.advance_cursors_over(&statements, now_ms)?;
        self.ask_for_new_members(&statements, now_ms)
    }

    /// Once the relay accepted this device's `Create` or `AddMember` (the relay serves
    /// certificates of current and former co-members only), asks for the new members' device
    /// certificates: the answer shares this device's epoch with their devices.
    pub(super) fn ask_for_new_members(
        &mut self,
        statements: &[Event],
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        let me = self.store.key().device();
        let mut users = BTreeSet::new();
        for placement in statements.iter().flat_map(Event::placements) {
            let Some(event) = self.store.log().get(&placement.event)? else {
                continue;
            };
            if event.header().author != me {
                continue;
            }
            users.extend(event.kind().users_brought_in().iter().copied());
        }
        users.remove(&self.store.key().user());
        // What the relay said about them before (as about strangers) no longer counts: only
        // the answer to this ask, or a later one, lets messages go to them
        // (`held_for_devices`).
        let from = self.next_request;
        for u in &users {
            self.heard_of.remove(u);
            self.gave_up_on.remove(u);
            self.counts_from.insert(*u, from);
        }
        let users: Vec<UserId> = users.into_iter().collect();
        for chunk in users.chunks(crate::wire::MAX_DEVICE_QUERY_USERS) {
            self.ask_devices(chunk.to_vec(), Vec::new(), None, now_ms);
        }
        Ok(())
    }

    /// Keeps the statements the pinned relay signed and indexes what they place; anything
    /// else is logged and dropped.
    pub(super) fn placed(
        &self,
        records: Vec<Result<Event, crate::event::DecodeError>>,
    ) -> RelayPlaces {
        let out = RelayPlaces::of(self.relay, records);
        for refused in &out.refused {
            match refused {
                Ok(id) => {
                    tracing::warn!(event = %id, "a record that is not the pinned relay's statement; skipped");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a relay statement that does not verify; skipped");
                }
            }
        }
        out
    }

    /// The device's own acked events count for its cursors too: the relay does not send them
    /// back. Without this, the first event of others after one of its own looked like a gap:
    /// a pull round trip, and a Delivered receipt that stopped short of the new message.
    pub(super) fn advance_cursors_over(
        &mut self,
        statements: &[Event],
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        let convs: BTreeSet<ConversationId> = statements.iter().map(|a| a.conversation()).collect();
        for conversation in convs {
            self.advance_cursor(conversation, now_ms)?;
        }
        Ok(())
    }

    /// Moves a conversation's gap-free cursor over every sequence the log now holds after it
    /// (from pages, pushes, the device's own acks and peers alike), durably, tells the relay
    /// (in a ready session; without one, the next session's sync step tells it), and sends
    /// the Delivered receipt that is due.
    pub(super) fn advance_cursor(
        &mut self,
        conversation: ConversationId,
        now_ms: u64,
    ) -> Result<ServerSeq, DeviceError> {
        let key = cursor_key(&conversation);
        let before = self.store.log().cursor(&key)?;
        let cursor = self.store.log().contiguous_seq(conversation, before)?;
        if cursor > before {
            // Inside a page's deferred scope this commit shares the page's fsync.
            self.store.write_log(|t| t.set_cursor(&key, cursor))?;
            if self.state == State::Ready {
                self.transmit.push_back(ClientFrame::Received {
                    conversation,
                    up_to: cursor,
                });
            }
        }
        self.deliver_up_to(conversation, cursor, now_ms)?;
        Ok(cursor)
    }

    /// Authors a Delivered receipt up to `cursor` when the log holds a message of another
    /// user above this device's delivered mark. Decided from what is durably stored, not from
    /// the batch that just arrived: a crash between storing messages (and the cursor) and
    /// writing the receipt would otherwise lose the receipt for good, and the sender would
    /// never see DELIVERED. Receipts of others never call for one (no receipt ping-pong).
    pub(super) fn deliver_up_to(
        &mut self,
        conversation: ConversationId,
        cursor: ServerSeq,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        let key = self.store.key();
        let (device, user) = (key.device(), key.user());
        // Only what this device's gate let through counts as delivered.
        let cursor = cursor.min(self.store.log().gate(conversation)?.through);
        let (delivered, _) = self.store.log().device_marks(conversation, device)?;
        let checked = self.checked_for_delivery.get(&conversation).copied();
        let from = delivered.max(checked.unwrap_or(0));
        if cursor <= from {
            return Ok(());
        }
        let log = self.store.log();
        if log
            .message_from_others(conversation, user, from, cursor)?
            .is_none()
        {
            self.checked_for_delivery.insert(conversation, cursor);
            return Ok(());
        }
        if let Some((_, changes)) = self.store.mark_delivered(conversation, cursor, now_ms)? {
            self.emit(changes);
        }
        Ok(())
    }

    pub(super) fn attempt_failed(
        &mut self,
        mut entry: OutboxEntry,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        entry.attempts = entry.attempts.saturating_add(1);
        // Only a message can be FAILED: the user sees it and can retry it. Receipts and
        // conversation creations have no retry button; giving up on one would lose it for
        // good (and a lost Create would make every message behind it fail), so they keep
        // trying at the policy's longest delay.
        if entry.message.is_some() && self.config.retry.exhausted(entry.attempts) {
            return self.give_up(entry, now_ms);
        }
        entry.next_attempt_ms = now_ms + self.config.retry.delay_ms(entry.attempts, &mut self.rng);
        let changes = self.store.update_outbox(&entry)?;
        self.emit(changes);
        Ok(())
    }

    pub(super) fn give_up(
        &mut self,
        mut entry: OutboxEntry,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        entry.state = OutboxState::Failed;
        // A FAILED entry is never attempted again on its own: its time says since when.
        entry.next_attempt_ms = now_ms;
        let changes = self.store.update_outbox(&entry)?;
        self.emit(changes);
        Ok(())
    }

    // ---- catching up ----
}

/// When [`DeviceCore::flush`] can next submit something from `entries` (the outbox in
/// order). Per conversation only the first queued entry counts: `flush` holds back everything
/// behind an entry still backing off, so an entry queued later may be due without being
/// sendable, and waking for it would spin until the one ahead of it is due. Nor does a
/// message of a conversation `held` for a member's certificates.
pub(super) fn next_attempt_ms<'a>(
    entries: impl Iterator<Item = &'a OutboxEntry>,
    held: &HashSet<ConversationId>,
) -> Option<u64> {
    let mut heads: HashSet<ConversationId> = HashSet::new();
    entries
        .filter(|e| e.state == OutboxState::Queued)
        .filter(|e| heads.insert(e.conversation))
        .filter(|e| e.message.is_none() || !held.contains(&e.conversation))
        .map(|e| e.next_attempt_ms)
        .min()
}

/// Whether a refusal with `code` passes: the entry is tried again.
pub(super) fn retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::RATE_LIMITED | ErrorCode::INTERNAL | ErrorCode::SHUTTING_DOWN
    )
}
