//! Connections: opening and closing sessions, the Hello/Auth handshake, and dispatching each
//! frame of an authenticated session to the part of the core that answers it.

use super::session::{Phase, Session};
use super::staged::UserRequest;
use super::{verify_batch, ConnectError, Output, RelayCore, SessionId};
use crate::storage::Storage;
use std::net::IpAddr;
use tidings_engine::wire::{
    self, ClientFrame, ErrorCode, ServerFrame, Welcome, NONCE_LEN, TLS_BINDING_LEN,
};
use tidings_engine::{DeviceId, UserId};

fn frame_name(f: &ClientFrame) -> &'static str {
    match f {
        ClientFrame::Hello { .. } => "Hello",
        ClientFrame::Auth { .. } => "Auth",
        ClientFrame::RegisterDevice { .. } => "RegisterDevice",
        ClientFrame::Submit { .. } => "Submit",
        ClientFrame::Pull { .. } => "Pull",
        ClientFrame::Sync { .. } => "Sync",
        ClientFrame::Received { .. } => "Received",
        ClientFrame::Revoke { .. } => "Revoke",
        ClientFrame::Devices { .. } => "Devices",
        ClientFrame::Accept { .. } => "Accept",
        ClientFrame::Decline { .. } => "Decline",
        ClientFrame::Block { .. } => "Block",
        ClientFrame::Unblock { .. } => "Unblock",
        ClientFrame::LinkDeposit { .. } => "LinkDeposit",
        ClientFrame::LinkTake { .. } => "LinkTake",
        _ => "frame",
    }
}

impl<S: Storage> RelayCore<S> {
    /// A new connection from `peer`, counted against the connection limits by the core's own
    /// [`Admission`](crate::admission::Admission). `tls_binding` is the keying material exported from its TLS session,
    /// `nonce` fresh random bytes for its challenge.
    pub fn handle_connect(
        &mut self,
        peer: IpAddr,
        tls_binding: [u8; TLS_BINDING_LEN],
        nonce: [u8; NONCE_LEN],
    ) -> Result<SessionId, ConnectError> {
        if let Err(e) = self.admission.handle_incoming(peer, true) {
            self.metrics.connection_refused();
            return Err(e);
        }
        Ok(self.open_session(peer, tls_binding, nonce, true))
    }

    /// A new connection from `peer` that an [`Admission`](crate::admission::Admission) outside the core already admitted
    /// and counts (the server's shell, which decides on the first packet, before TLS).
    pub fn handle_admitted(
        &mut self,
        peer: IpAddr,
        tls_binding: [u8; TLS_BINDING_LEN],
        nonce: [u8; NONCE_LEN],
    ) -> SessionId {
        self.open_session(peer, tls_binding, nonce, false)
    }

    pub(super) fn open_session(
        &mut self,
        peer: IpAddr,
        tls_binding: [u8; TLS_BINDING_LEN],
        nonce: [u8; NONCE_LEN],
        counted: bool,
    ) -> SessionId {
        let id = self.next_session;
        self.next_session += 1;
        self.sessions
            .insert(id, Session::new(peer, tls_binding, nonce, counted));
        id
    }

    /// The connection ended (by either side). Staged events of the session still commit; the
    /// device gets their acks by resubmitting.
    pub fn handle_disconnect(&mut self, session: SessionId) {
        self.forget(session);
    }

    pub(super) fn forget(&mut self, session: SessionId) {
        let Some(s) = self.sessions.remove(&session) else {
            return;
        };
        self.waiting.remove_session(session);
        if s.counted {
            let pending = !matches!(s.phase, Phase::Ready { .. });
            self.admission.handle_closed(s.peer, pending);
        }
        if let Phase::Ready { device, .. } = s.phase {
            if self.device_sessions.get(&device) == Some(&session) {
                self.device_sessions.remove(&device);
            }
            self.metrics.set_connected(self.device_sessions.len());
        }
        self.update_fanout_metric();
    }

    pub(super) fn close(
        &mut self,
        session: SessionId,
        code: ErrorCode,
        message: impl Into<String>,
    ) {
        if self.sessions.contains_key(&session) {
            self.forget(session);
            self.outputs.push_back(Output::Close {
                session,
                code,
                message: message.into(),
            });
        }
    }

    pub(super) fn send(&mut self, session: SessionId, frame: ServerFrame) {
        self.outputs.push_back(Output::Frame { session, frame });
    }

    pub(super) fn refuse(
        &mut self,
        session: SessionId,
        request_id: u64,
        code: ErrorCode,
        msg: &str,
    ) {
        self.send(
            session,
            ServerFrame::Refused {
                request_id,
                code,
                message: msg.to_string(),
            },
        );
    }

    /// Closes every session with `code` (e.g. [`ErrorCode::SHUTTING_DOWN`]).
    pub fn close_all(&mut self, code: ErrorCode, message: &str) {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.close(id, code, message);
        }
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// One frame from a session.
    pub fn handle_frame(&mut self, session: SessionId, frame: ClientFrame, now_ms: u64) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        match (&s.phase, frame) {
            (
                Phase::AwaitHello,
                ClientFrame::Hello {
                    protocol_version,
                    device,
                    user,
                },
            ) => self.on_hello(session, protocol_version, device, user),
            (Phase::AwaitAuth { .. }, ClientFrame::Auth { signature }) => {
                self.on_auth(session, signature)
            }
            (Phase::AwaitHello, ClientFrame::LinkTake { slot }) => {
                self.on_link_take(session, slot, now_ms)
            }
            (Phase::Ready { .. }, ClientFrame::Submit { request_id, events }) => {
                if events.len() > self.limits.max_submit_batch {
                    return self.batch_too_large(session, request_id, events.len());
                }
                let results = verify_batch(&events);
                self.handle_submit_verified(session, request_id, results, now_ms);
            }
            (Phase::Ready { .. }, frame) => self.on_request(session, frame, now_ms),
            (_, frame) => self.close(
                session,
                ErrorCode::UNEXPECTED_FRAME,
                format!("{} not allowed here", frame_name(&frame)),
            ),
        }
    }

    pub(super) fn batch_too_large(&mut self, session: SessionId, request_id: u64, n: usize) {
        let msg = format!("{n} events, limit {}", self.limits.max_submit_batch);
        self.refuse(session, request_id, ErrorCode::BATCH_TOO_LARGE, &msg);
    }

    pub(super) fn on_hello(
        &mut self,
        session: SessionId,
        version: u16,
        device: DeviceId,
        user: UserId,
    ) {
        if version != wire::PROTOCOL_VERSION {
            let msg = format!(
                "protocol version {version} not supported; this relay speaks {}",
                wire::PROTOCOL_VERSION
            );
            return self.close(session, ErrorCode::UNSUPPORTED_VERSION, msg);
        }
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        s.phase = Phase::AwaitAuth { device, user };
        let nonce = s.nonce;
        self.send(session, ServerFrame::Challenge { nonce });
    }

    pub(super) fn on_auth(&mut self, session: SessionId, signature: wire::SignatureBytes) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let Phase::AwaitAuth { device, user } = s.phase else {
            return;
        };
        if !wire::verify_auth(&signature, &device, &user, &s.nonce, &s.tls_binding) {
            return self.close(session, ErrorCode::AUTH_FAILED, "signature does not verify");
        }
        // Another node may have revoked or registered it: what storage says now.
        self.sync_changes();
        if self.revoked.contains_key(&device) {
            return self.close(
                session,
                ErrorCode::REVOKED,
                "the device was revoked by its user",
            );
        }
        let cursors = match self.store.cursors(&device) {
            Ok(c) => c,
            Err(e) => return self.close(session, ErrorCode::INTERNAL, e.to_string()),
        };
        if let Some(old) = self.device_sessions.insert(device, session) {
            self.close(old, ErrorCode::REPLACED, "the device connected again");
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.phase = Phase::Ready { device, user };
            s.cursors = cursors;
            if s.counted {
                self.admission.handle_authenticated();
            }
        }
        self.metrics.set_connected(self.device_sessions.len());
        let registered = self.devices.get(&device) == Some(&user);
        let welcome = Welcome {
            relay: self.key.device(),
            registered,
            limits: self.limits.wire(),
            idle_timeout_ms: u32::try_from(self.idle_timeout_ms).unwrap_or(u32::MAX),
        };
        self.send(session, ServerFrame::Welcome(welcome));
    }

    /// The session's device and user, if it authenticated and its device is registered to
    /// the user it claimed.
    pub(super) fn registered(&self, session: SessionId) -> Option<(DeviceId, UserId)> {
        let s = self.sessions.get(&session)?;
        let Phase::Ready { device, user } = s.phase else {
            return None;
        };
        (self.devices.get(&device) == Some(&user) && !self.revoked.contains_key(&device))
            .then_some((device, user))
    }

    pub(super) fn on_request(&mut self, session: SessionId, frame: ClientFrame, now_ms: u64) {
        match frame {
            ClientFrame::RegisterDevice {
                request_id,
                registration,
            } => self.on_register(session, request_id, registration, now_ms),
            ClientFrame::Pull {
                request_id,
                conversation,
                after_seq,
                limit,
                history_since_ms,
            } => self.on_pull(
                session,
                request_id,
                conversation,
                after_seq,
                limit,
                history_since_ms,
            ),
            ClientFrame::Sync { request_id, after } => self.on_sync(session, request_id, after),
            ClientFrame::Revoke {
                request_id,
                revocation,
            } => self.on_revoke(session, request_id, revocation, now_ms),
            ClientFrame::Devices {
                request_id,
                users,
                after,
            } => self.on_devices(session, request_id, &users, after),
            ClientFrame::Received {
                conversation,
                up_to,
            } => self.on_received(session, conversation, up_to, now_ms),
            ClientFrame::Accept {
                request_id,
                conversation,
            } => self.on_user_request(
                session,
                request_id,
                UserRequest::Accept(conversation),
                now_ms,
            ),
            ClientFrame::Decline {
                request_id,
                conversation,
            } => self.on_user_request(
                session,
                request_id,
                UserRequest::Decline(conversation),
                now_ms,
            ),
            ClientFrame::Block { request_id, user } => {
                self.on_user_request(session, request_id, UserRequest::Block(user), now_ms)
            }
            ClientFrame::Unblock { request_id, user } => {
                self.on_user_request(session, request_id, UserRequest::Unblock(user), now_ms)
            }
            ClientFrame::LinkDeposit {
                request_id,
                slot,
                sealed,
            } => self.on_link_deposit(session, request_id, slot, sealed, now_ms),
            frame => self.close(
                session,
                ErrorCode::UNEXPECTED_FRAME,
                format!("{} not allowed here", frame_name(&frame)),
            ),
        }
    }

    pub(super) fn send_live(&mut self, session: SessionId, frame: ServerFrame) {
        if self.sessions.contains_key(&session) {
            self.send(session, frame);
        }
    }
}
