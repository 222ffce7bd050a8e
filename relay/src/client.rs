//! A minimal device-side client for tests, tools and load generators: it speaks the device
//! protocol frame by frame, so a test can send what an honest device never would (forged
//! events, raw bytes, requests out of order) and see exactly what the relay answers. Apps use
//! `tidings-replica`, whose protocol decisions are `DeviceCore`'s.
//!
//! The QUIC plumbing is `tidings-transport`'s (the pinned certificate, the endpoint, the framed
//! stream) and which frame answers which request is the wire module's
//! ([`ServerFrame::answers`]); what remains here is the handshake (Hello → Challenge, the TLS
//! keying-material export bound into the signed transcript, Auth → Welcome) and one method per
//! request.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tidings_engine::device::RelayPlaces;
use tidings_engine::wire::{
    self, ClientFrame, DeviceRegistration, DeviceRevocation, Envelope, ErrorCode, ServerFrame,
    SubmitOutcome, Welcome,
};
use tidings_engine::{ConversationId, DeviceKey, Event, ServerSeq, UserId};
use tidings_transport::{
    DialConfig, Fingerprint, FrameError, FrameReader, FrameWriter, TransportError,
};
use tokio::sync::mpsc;

/// The server name a client dials (the certificate is pinned, so the name is not checked
/// against a CA; it must be one of the certificate's names).
pub const SERVER_NAME: &str = "tidings-relay";
/// Frames buffered from the reader task before it stops reading.
pub const CLIENT_QUEUE: usize = 4096;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The QUIC endpoint or its configuration failed.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// Socket failure.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Connecting failed.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A frame could not be read or written.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// A frame failed to encode or decode.
    #[error("wire: {0}")]
    Wire(#[from] wire::WireError),
    /// The relay sent an Error frame.
    #[error("relay error {code}: {message}")]
    Relay {
        /// The code.
        code: ErrorCode,
        /// The message.
        message: String,
    },
    /// The relay refused a request.
    #[error("refused {code}: {message}")]
    Refused {
        /// The code.
        code: ErrorCode,
        /// The message.
        message: String,
    },
    /// The stream ended.
    #[error("the relay closed the stream")]
    Closed,
    /// An unexpected frame.
    #[error("unexpected frame: {0}")]
    Unexpected(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

/// A quinn client config that pins the relay certificate and speaks ALPN `tidings/1`, with a
/// keepalive every 5 s.
pub fn client_config(pin: Fingerprint) -> Result<quinn::ClientConfig, ClientError> {
    Ok(DialConfig::new(pin)
        .keepalive(Duration::from_secs(5))
        .build()?)
}

/// A client endpoint on an ephemeral loopback-or-any port that several clients can share.
/// Its UDP buffers are asked for [`CLIENT_UDP_BUFFER_BYTES`] (see
/// [`tidings_transport::udp_socket`]).
pub fn client_endpoint(bind: SocketAddr) -> Result<quinn::Endpoint, ClientError> {
    let (socket, granted) = tidings_transport::udp_socket(bind, CLIENT_UDP_BUFFER_BYTES)?;
    if granted < CLIENT_UDP_BUFFER_BYTES {
        tracing::debug!(granted, "smaller UDP buffers than asked for");
    }
    Ok(tidings_transport::endpoint(socket, None)?)
}

/// UDP buffer a client endpoint asks for: a device's endpoint carries one connection, a test's
/// or a load tool's carries hundreds.
pub const CLIENT_UDP_BUFFER_BYTES: usize = 1 << 20;

/// An authenticated session with a relay.
#[derive(Debug)]
pub struct RelayClient {
    conn: quinn::Connection,
    send: FrameWriter,
    frames: mpsc::Receiver<Result<ServerFrame, ClientError>>,
    stash: VecDeque<ServerFrame>,
    next_request: u64,
    welcome: Welcome,
}

impl RelayClient {
    /// Connects, pins the certificate and authenticates as `key`.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        pin: Fingerprint,
        key: &DeviceKey,
    ) -> Result<RelayClient, ClientError> {
        let conn = endpoint
            .connect_with(client_config(pin)?, addr, SERVER_NAME)?
            .await?;
        let (send, recv) = conn.open_bi().await?;
        let (tx, frames) = mpsc::channel(CLIENT_QUEUE);
        tokio::spawn(read_frames(FrameReader::new(recv, wire::MAX_FRAME_LEN), tx));
        let mut c = RelayClient {
            conn,
            send: FrameWriter::new(send),
            frames,
            stash: VecDeque::new(),
            next_request: 1,
            welcome: Welcome {
                relay: key.device(),
                registered: false,
                limits: crate::Limits::default().wire(),
                idle_timeout_ms: 0,
            },
        };
        c.send(&ClientFrame::Hello {
            protocol_version: wire::PROTOCOL_VERSION,
            device: key.device(),
            user: key.user(),
        })
        .await?;
        let nonce = match c.next_frame().await? {
            ServerFrame::Challenge { nonce } => nonce,
            f => return Err(ClientError::Unexpected(format!("{f:?}"))),
        };
        let mut binding = [0u8; wire::TLS_BINDING_LEN];
        c.conn
            .export_keying_material(&mut binding, wire::TLS_EXPORTER_LABEL, b"")
            .map_err(|_| ClientError::Unexpected("keying material export failed".into()))?;
        let signature = wire::sign_auth(key.signing_key(), &key.user(), &nonce, &binding);
        c.send(&ClientFrame::Auth { signature }).await?;
        match c.next_frame().await? {
            ServerFrame::Welcome(w) => c.welcome = w,
            f => return Err(ClientError::Unexpected(format!("{f:?}"))),
        }
        Ok(c)
    }

    /// What the relay said in Welcome.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The QUIC connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        Ok(self.send.write_frame(frame).await?)
    }

    /// Sends raw bytes on the stream (for tests of malformed input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        Ok(self.send.write_raw(bytes).await?)
    }

    /// The next frame from the relay, stashed ones first. An Error frame becomes an error.
    pub async fn next_frame(&mut self) -> Result<ServerFrame, ClientError> {
        if let Some(f) = self.stash.pop_front() {
            return Ok(f);
        }
        match self.frames.recv().await {
            Some(Ok(ServerFrame::Error { code, message })) => {
                Err(ClientError::Relay { code, message })
            }
            Some(r) => r,
            None => Err(ClientError::Closed),
        }
    }

    /// The next frame, waiting at most `timeout`.
    pub async fn next_frame_within(
        &mut self,
        timeout: Duration,
    ) -> Result<ServerFrame, ClientError> {
        tokio::time::timeout(timeout, self.next_frame())
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    /// Waits for the reply to `request_id`, stashing other frames (pushes) for later.
    async fn reply(&mut self, request_id: u64) -> Result<ServerFrame, ClientError> {
        let mut others = Vec::new();
        let result = loop {
            let f = match self.frames.recv().await {
                Some(Ok(ServerFrame::Error { code, message })) => {
                    break Err(ClientError::Relay { code, message })
                }
                Some(Ok(f)) => f,
                Some(Err(e)) => break Err(e),
                None => break Err(ClientError::Closed),
            };
            match f {
                ServerFrame::Refused {
                    request_id: r,
                    code,
                    message,
                } if r == request_id => break Err(ClientError::Refused { code, message }),
                f if f.answers() == Some(request_id) => break Ok(f),
                f => others.push(f),
            }
        };
        self.stash.extend(others);
        result
    }

    /// Registers this device (with its X25519 key `agreement`) to the user whose identity
    /// key is `user_key`.
    pub async fn register(
        &mut self,
        user_key: &ed25519_dalek::SigningKey,
        device: tidings_engine::DeviceId,
        agreement: [u8; 32],
        issued_ms: u64,
    ) -> Result<(), ClientError> {
        let request_id = self.request_id();
        let registration = DeviceRegistration::sign(user_key, device, agreement, issued_ms);
        self.send(&ClientFrame::RegisterDevice {
            request_id,
            registration,
        })
        .await?;
        self.reply(request_id).await.map(|_| ())
    }

    /// Sends a user-signed revocation and waits until the relay stored it.
    pub async fn revoke(&mut self, revocation: DeviceRevocation) -> Result<(), ClientError> {
        let request_id = self.request_id();
        self.send(&ClientFrame::Revoke {
            request_id,
            revocation,
        })
        .await?;
        self.reply(request_id).await.map(|_| ())
    }

    /// The device certificates and revocations the relay holds for `users` (only users who
    /// share a conversation with this device's user, and that user itself). Unverified: the
    /// caller checks every signature (`DeviceRegistration::verify`, `DeviceRevocation::verify`).
    /// Follows the answer's pages to the end.
    pub async fn devices(
        &mut self,
        mut users: Vec<UserId>,
    ) -> Result<(Vec<DeviceRegistration>, Vec<DeviceRevocation>), ClientError> {
        let mut regs = Vec::new();
        let mut revs = Vec::new();
        let mut after = None;
        loop {
            let request_id = self.request_id();
            self.send(&ClientFrame::Devices {
                request_id,
                users: users.clone(),
                after,
            })
            .await?;
            match self.reply(request_id).await? {
                ServerFrame::Devices {
                    registrations,
                    revocations,
                    complete,
                    resume_after,
                    ..
                } => {
                    regs.extend(registrations);
                    revs.extend(revocations);
                    let complete = complete as usize;
                    let progress = complete > 0 || (resume_after.is_some() && resume_after > after);
                    if complete >= users.len() {
                        return Ok((regs, revs));
                    }
                    if !progress {
                        return Err(ClientError::Unexpected(
                            "a Devices page without progress".into(),
                        ));
                    }
                    users.drain(..complete);
                    after = resume_after;
                }
                f => return Err(ClientError::Unexpected(format!("{f:?}"))),
            }
        }
    }

    /// Lists the device's accepted conversations (every page) and turns pushes on.
    pub async fn sync(&mut self) -> Result<Vec<wire::ConversationInfo>, ClientError> {
        Ok(self.sync_state().await?.0)
    }

    /// Every page of the Sync answer: the accepted conversations, the pending invitations
    /// and the blocked users.
    pub async fn sync_state(
        &mut self,
    ) -> Result<
        (
            Vec<wire::ConversationInfo>,
            Vec<wire::Invitation>,
            Vec<UserId>,
        ),
        ClientError,
    > {
        let mut all = Vec::new();
        let mut state = None;
        let mut after = None;
        loop {
            let request_id = self.request_id();
            self.send(&ClientFrame::Sync { request_id, after }).await?;
            match self.reply(request_id).await? {
                ServerFrame::Conversations {
                    conversations,
                    next,
                    invitations,
                    blocked,
                    ..
                } => {
                    all.extend(conversations);
                    state.get_or_insert((invitations, blocked));
                    match next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
                f => return Err(ClientError::Unexpected(format!("{f:?}"))),
            }
        }
        let (invitations, blocked) = state.unwrap_or_default();
        Ok((all, invitations, blocked))
    }

    /// Sends a user request (Accept, Decline, Block, Unblock) and waits for its durable
    /// answer.
    pub async fn user_request(
        &mut self,
        make: impl FnOnce(u64) -> ClientFrame,
    ) -> Result<wire::UserChange, ClientError> {
        let request_id = self.request_id();
        self.send(&make(request_id)).await?;
        match self.reply(request_id).await? {
            ServerFrame::UserState { change, .. } => Ok(change),
            f => Err(ClientError::Unexpected(format!("{f:?}"))),
        }
    }

    /// Accepts an invitation.
    pub async fn accept(
        &mut self,
        conversation: ConversationId,
    ) -> Result<wire::UserChange, ClientError> {
        self.user_request(|request_id| ClientFrame::Accept {
            request_id,
            conversation,
        })
        .await
    }

    /// Blocks a user.
    pub async fn block(&mut self, user: UserId) -> Result<wire::UserChange, ClientError> {
        self.user_request(|request_id| ClientFrame::Block { request_id, user })
            .await
    }

    /// Sends a Submit without waiting; returns its request id.
    pub async fn submit_nowait(&mut self, events: &[Event]) -> Result<u64, ClientError> {
        let request_id = self.request_id();
        let events = events
            .iter()
            .map(|e| Envelope(e.bytes().to_vec()))
            .collect();
        self.send(&ClientFrame::Submit { request_id, events })
            .await?;
        Ok(request_id)
    }

    /// Submits events and waits for their outcomes.
    pub async fn submit(&mut self, events: &[Event]) -> Result<Vec<SubmitOutcome>, ClientError> {
        let request_id = self.submit_nowait(events).await?;
        match self.reply(request_id).await? {
            ServerFrame::SubmitResult { outcomes, .. } => Ok(outcomes),
            f => Err(ClientError::Unexpected(format!("{f:?}"))),
        }
    }

    /// One page of a conversation after `after_seq`.
    pub async fn pull(
        &mut self,
        conversation: ConversationId,
        after_seq: ServerSeq,
        limit: u32,
    ) -> Result<(Vec<Placed>, bool), ClientError> {
        let request_id = self.request_id();
        self.send(&ClientFrame::Pull {
            request_id,
            conversation,
            after_seq,
            limit,
            history_since_ms: None,
        })
        .await?;
        match self.reply(request_id).await? {
            ServerFrame::Page {
                events,
                records,
                more,
                ..
            } => Ok((self.place(&events, &records)?, more)),
            f => Err(ClientError::Unexpected(format!("{f:?}"))),
        }
    }

    /// Every event of a conversation after `after_seq`, page by page.
    pub async fn pull_all(
        &mut self,
        conversation: ConversationId,
        mut after_seq: ServerSeq,
    ) -> Result<Vec<Placed>, ClientError> {
        let mut all = Vec::new();
        loop {
            let (items, more) = self.pull(conversation, after_seq, u32::MAX).await?;
            if let Some(last) = items.last() {
                after_seq = last.seq;
            }
            all.extend(items);
            if !more {
                return Ok(all);
            }
        }
    }

    /// Reports that everything up to `up_to` in `conversation` is stored on the device.
    pub async fn received(
        &mut self,
        conversation: ConversationId,
        up_to: ServerSeq,
    ) -> Result<(), ClientError> {
        self.send(&ClientFrame::Received {
            conversation,
            up_to,
        })
        .await
    }

    /// The events of the next Push frame, placed, waiting at most `timeout`.
    pub async fn next_push(&mut self, timeout: Duration) -> Result<Vec<Placed>, ClientError> {
        loop {
            match self.next_frame_within(timeout).await? {
                ServerFrame::Push { events, records } => return self.place(&events, &records),
                ServerFrame::PullMode => {
                    return Err(ClientError::Unexpected("switched to pull mode".into()))
                }
                _ => continue,
            }
        }
    }

    /// Verifies a frame's events and the relay's statements, and places each event (in the
    /// frame's order); an event no statement of this relay places is an error.
    pub fn place(
        &self,
        events: &[Envelope],
        records: &[Envelope],
    ) -> Result<Vec<Placed>, ClientError> {
        let bad = |e: tidings_engine::event::DecodeError| ClientError::Unexpected(e.to_string());
        let records = records.iter().map(|r| Event::decode(&r.0));
        let placed = RelayPlaces::of(self.welcome.relay, records);
        match placed.refused.into_iter().next() {
            Some(Ok(_)) => {
                return Err(ClientError::Unexpected(
                    "a record that is not the relay's".into(),
                ))
            }
            Some(Err(e)) => return Err(bad(e)),
            None => {}
        }
        let places = placed.places;
        events
            .iter()
            .map(|e| {
                let event = Event::decode(&e.0).map_err(bad)?;
                let Some((_, p, statement)) = places.get(&event.id()) else {
                    return Err(ClientError::Unexpected(format!(
                        "event {} without a statement",
                        event.id()
                    )));
                };
                Ok(Placed {
                    seq: p.seq,
                    server_ts_ms: p.server_ts_ms,
                    statement: *statement,
                    event,
                })
            })
            .collect()
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }
}

/// An event of a page or a push with the place a verified relay statement gives it.
#[derive(Debug, Clone)]
pub struct Placed {
    /// The event, its signature checked.
    pub event: Event,
    /// Its server sequence.
    pub seq: ServerSeq,
    /// The relay's stamp.
    pub server_ts_ms: u64,
    /// The id of the statement that placed it.
    pub statement: tidings_engine::EventId,
}

async fn read_frames(mut recv: FrameReader, tx: mpsc::Sender<Result<ServerFrame, ClientError>>) {
    loop {
        let result = match recv.read_frame::<ServerFrame>().await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => return,
            // A read error is the connection's end: `next_frame` then reports `Closed` (or
            // the relay's close), as before the transport crate.
            Err(FrameError::Wire(e)) => Err(ClientError::Wire(e)),
            Err(_) => return,
        };
        let stop = result.is_err();
        if tx.send(result).await.is_err() || stop {
            return;
        }
    }
}
