//! What the device does with each frame from the relay, by connection state.

use super::*;

impl DeviceCore {
    pub(super) fn handle_prepared_inner(
        &mut self,
        prepared: PreparedFrame,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        let PreparedFrame { frame, items } = prepared;
        match (self.state, frame) {
            (_, ServerFrame::Error { code, message }) => Err(DeviceError::Closed { code, message }),
            (State::AwaitChallenge, ServerFrame::Challenge { nonce }) => {
                let key = self.store.key();
                let signature =
                    sign_auth(key.signing_key(), &key.user(), &nonce, &self.tls_binding);
                self.transmit.push_back(ClientFrame::Auth { signature });
                self.state = State::AwaitWelcome;
                Ok(())
            }
            (State::AwaitWelcome, ServerFrame::Welcome(w)) => self.on_welcome(w, now_ms),
            (State::AwaitRegistered, ServerFrame::Registered { .. }) => self.on_ready(now_ms),
            (State::AwaitRegistered, ServerFrame::Refused { code, message, .. }) => {
                Err(DeviceError::Closed { code, message })
            }
            (
                State::Ready,
                ServerFrame::SubmitResult {
                    request_id,
                    outcomes,
                    ..
                },
            ) => self.on_submit_result(request_id, outcomes, items, now_ms),
            (
                State::Ready,
                ServerFrame::Conversations {
                    request_id,
                    conversations,
                    next,
                    invitations,
                    blocked,
                },
            ) => {
                let first = match self.requests.remove(&request_id) {
                    Some(Request::Sync) => true,
                    Some(Request::SyncPage) => false,
                    _ => return Err(DeviceError::Protocol("Conversations answer to no Sync")),
                };
                if first {
                    self.listed(invitations, blocked);
                }
                if let Some(after) = next {
                    self.send_sync_page(Some(after));
                }
                self.ask_directory(now_ms)?;
                for info in conversations {
                    self.targets.insert(info.conversation, info.max_seq);
                    self.synced.insert(info.conversation, info.max_seq);
                    let cursor = self.store.log().cursor(&cursor_key(&info.conversation))?;
                    if info.cursor < cursor {
                        self.transmit.push_back(ClientFrame::Received {
                            conversation: info.conversation,
                            up_to: cursor,
                        });
                    }
                    if info.max_seq > cursor {
                        self.settle_history_since(info.conversation, cursor, now_ms)?;
                        self.pull(info.conversation, cursor);
                    }
                    // A receipt a crash kept from being written goes out now.
                    self.deliver_up_to(info.conversation, cursor, now_ms)?;
                }
                self.report_if_caught_up()?;
                self.flush(now_ms)
            }
            (
                State::Ready,
                ServerFrame::Page {
                    request_id,
                    conversation,
                    more,
                    ..
                },
            ) => {
                // The pull it answers is no longer in flight, whatever the page holds (a page
                // naming another conversation than its pull is taken as a push would be).
                let after = match self.requests.remove(&request_id) {
                    Some(Request::Pull(c, after)) => {
                        self.pull_answered(c);
                        (c == conversation).then_some(after)
                    }
                    _ => None,
                };
                let n = items.events.len() as u64;
                self.on_items(items, now_ms)?;
                if more {
                    let limit = u64::from(self.config.pull_limit.max(1));
                    if let Some(after) = after.filter(|_| n < limit) {
                        // A page cut short (by bytes): what lies between its end and the
                        // next pull's start is asked for again.
                        self.pull_from(conversation, after.saturating_add(n.max(1)));
                    }
                    let cursor = self.store.log().cursor(&cursor_key(&conversation))?;
                    self.pull(conversation, cursor);
                }
                self.report_if_caught_up()?;
                Ok(())
            }
            (
                State::Ready,
                ServerFrame::HistoryGap {
                    request_id,
                    conversation,
                    from,
                    to,
                    more,
                    ..
                },
            ) => {
                match self.requests.remove(&request_id) {
                    Some(Request::Pull(c, _)) if c == conversation => {}
                    _ => return Err(DeviceError::Protocol("HistoryGap answer to no Pull")),
                }
                self.pull_answered(conversation);
                // What the relay kept inside the range (the `Create`, membership changes,
                // epoch openings) is stored first: the gate then walks over the gap through
                // it, rather than stepping over a place whose event it has not seen yet. So
                // are the statements of the range that place an event this log holds (taken
                // early from a peer): its place, which no page will bring.
                let items = self.gap_items(items)?;
                self.on_items(items, now_ms)?;
                self.on_history_gap(conversation, from, to, now_ms)?;
                let cursor = self.advance_cursor(conversation, now_ms)?;
                // Only an answer that moved the cursor is followed by another pull: a range
                // the device could not take (malformed, or past what the relay announced)
                // ends here rather than in a loop.
                let behind = self.targets.get(&conversation).is_some_and(|t| *t > cursor);
                if cursor >= from && (more || behind) {
                    self.pull(conversation, cursor);
                }
                self.report_if_caught_up()?;
                Ok(())
            }
            (State::Ready, ServerFrame::Push { .. }) => self.on_items(items, now_ms),
            (State::Ready, ServerFrame::UserState { request_id, change }) => {
                match self.requests.remove(&request_id) {
                    Some(Request::User(_)) => {}
                    _ => return Err(DeviceError::Protocol("UserState answer to no request")),
                }
                self.on_user_change(change, now_ms)?;
                self.report_if_caught_up()?;
                self.flush(now_ms)
            }
            (State::Ready, ServerFrame::UserChanged { change }) => {
                self.on_user_change(change, now_ms)?;
                self.flush(now_ms)
            }
            (
                State::Ready,
                ServerFrame::Devices {
                    request_id,
                    registrations,
                    revocations,
                    complete,
                    resume_after,
                },
            ) => {
                self.on_devices_page(
                    request_id,
                    &registrations,
                    &revocations,
                    complete as usize,
                    resume_after,
                    now_ms,
                )?;
                self.share_history_with(&registrations, now_ms)?;
                // Newly learned member devices get the epochs this device started.
                let learned: BTreeSet<UserId> = registrations.iter().map(|r| r.user).collect();
                if !learned.is_empty() {
                    for (c, members) in self.conversation_users()? {
                        if members.iter().any(|u| learned.contains(u)) {
                            let changes = self.store.share_current_epoch(c, now_ms)?;
                            self.emit(changes);
                        }
                    }
                }
                self.report_if_caught_up()?;
                Ok(())
            }
            (
                State::Ready,
                ServerFrame::LinkDeposited {
                    request_id,
                    slot,
                    expires_ms,
                },
            ) => self.on_link_deposited(request_id, slot, expires_ms),
            (
                State::Ready,
                ServerFrame::Revoked {
                    request_id, device, ..
                },
            ) => self.on_revoked(request_id, device, now_ms),
            (State::Ready, ServerFrame::PullMode) => {
                self.send_sync();
                Ok(())
            }
            (
                State::Ready,
                ServerFrame::Refused {
                    request_id,
                    code,
                    message,
                },
            ) => {
                match self.requests.remove(&request_id) {
                    Some(Request::Pull(c, _)) => {
                        self.pull_answered(c);
                        // Not served, so not caught up: receipts past what the log holds say
                        // nothing about withholding there (a member removed since the Sync).
                        self.synced.remove(&c);
                    }
                    Some(Request::Devices(ask)) => {
                        self.gave_up_on.extend(ask.users.iter().copied());
                        let units = if retryable(code) { 1 } else { ASK_UNITS };
                        self.failed_ask(&ask.settles, now_ms, units)?
                    }
                    Some(Request::Device(d)) => {
                        self.device_request_refused(d, code, message);
                        return self.report_if_caught_up();
                    }
                    _ => {}
                }
                self.events.push_back(DeviceEvent::Refused {
                    event: None,
                    code,
                    reason: message,
                });
                self.report_if_caught_up()?;
                Ok(())
            }
            _ => Err(DeviceError::Protocol("unexpected frame")),
        }
    }
}
