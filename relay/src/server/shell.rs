//! The async shell of every QUIC connection: reads frames, verifies submits off the runtime's
//! workers, hands them to the core thread and writes what the core answers.

use super::*;
use crate::blobs::serve::BlobService;
use tidings_transport::{FrameError, FrameReader, FrameWriter};

/// How often expired blob references are dropped.
const BLOB_EXPIRY_INTERVAL: Duration = Duration::from_secs(600);

/// A task that stops when its owner drops it.
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) struct Shell {
    core_tx: mpsc::Sender<CoreInput>,
    /// Every QUIC connection of this relay, counted once (the core opens their sessions
    /// uncounted).
    admission: SharedAdmission,
    limits: crate::limits::Limits,
    metrics: RelayMetrics,
    /// Verifies submits off the runtime's workers; stops with the shell.
    verify: VerifyPool,
    /// The blob store behind every connection's blob streams, when the relay has one.
    blobs: Option<Arc<BlobService>>,
}

impl Shell {
    pub(super) fn new(
        core_tx: mpsc::Sender<CoreInput>,
        limits: crate::limits::Limits,
        metrics: RelayMetrics,
    ) -> Result<Shell, RelayError> {
        let verify = VerifyPool::spawn(limits.verify_threads).map_err(|source| RelayError::Io {
            what: "spawning the verification threads",
            source,
        })?;
        Ok(Shell {
            core_tx,
            admission: SharedAdmission::new(&limits),
            limits,
            metrics,
            verify,
            blobs: None,
        })
    }

    /// Serves blob streams from `blobs`.
    pub(super) fn with_blobs(mut self, blobs: Arc<BlobService>) -> Shell {
        self.blobs = Some(blobs);
        self
    }

    /// Accepts the connection's blob streams (after authentication) until the connection
    /// ends; the streams stop when the returned task is aborted or dropped.
    fn blob_streams(&self, session: SessionId, conn: quinn::Connection) -> Option<AbortOnDrop> {
        let svc = self.blobs.clone()?;
        let core_tx = self.core_tx.clone();
        Some(AbortOnDrop(tokio::spawn(async move {
            let mut streams = JoinSet::new();
            loop {
                tokio::select! {
                    s = conn.accept_bi() => {
                        let Ok((send, recv)) = s else { break };
                        let (svc, core_tx) = (svc.clone(), core_tx.clone());
                        streams.spawn(async move {
                            let access = |conversation| {
                                let tx = core_tx.clone();
                                async move {
                                    let (reply, rx) = oneshot::channel();
                                    let ask = CoreInput::BlobAccess(session, conversation, reply);
                                    tx.send(ask).await.ok()?;
                                    rx.await.ok().flatten()
                                }
                            };
                            if let Err(e) = svc.serve_stream(access, now_ms, send, recv).await {
                                debug!(error = %e, "blob stream ended");
                            }
                        });
                    }
                    Some(_) = streams.join_next(), if !streams.is_empty() => {}
                }
            }
        })))
    }

    pub(super) async fn serve(
        self,
        endpoint: quinn::Endpoint,
        shutdown: impl Future<Output = ()> + Send + 'static,
        grace: Duration,
    ) -> Result<(), RelayError> {
        let mut conns = JoinSet::new();
        let _expiry = self.blobs.clone().map(|svc| {
            AbortOnDrop(tokio::spawn(async move {
                let mut tick = tokio::time::interval(BLOB_EXPIRY_INTERVAL);
                loop {
                    tick.tick().await;
                    if let Err(e) = svc.expire(now_ms()).await {
                        warn!(error = %e, "blob expiry failed");
                    }
                }
            }))
        });
        let shell = Arc::new(self);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let Some((incoming, ticket)) = shell.admit(incoming) else { continue };
                    let shell = shell.clone();
                    conns.spawn(async move {
                        if let Err(e) = shell.connection(incoming, ticket).await {
                            debug!(error = %e, "connection ended");
                        }
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        info!("relay shutting down");
        endpoint.set_server_config(None);
        let (tx, rx) = oneshot::channel();
        let core_alive = shell.core_tx.send(CoreInput::Shutdown(tx)).await.is_ok();
        let committed = core_alive && rx.await.is_ok();
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            conns.abort_all();
        }
        endpoint.close(ErrorCode::SHUTTING_DOWN.0.into(), b"shutting down");
        let _ = tokio::time::timeout(grace, endpoint.wait_idle()).await;
        if committed {
            Ok(())
        } else {
            Err(RelayError::CoreGone)
        }
    }

    /// Decides on a connection's first packet, before any TLS work: admitted (with its
    /// ticket), asked to prove its address (a Retry packet, no state kept), or refused with a
    /// stateless close.
    pub(super) fn admit(
        &self,
        incoming: quinn::Incoming,
    ) -> Option<(quinn::Incoming, AdmissionTicket)> {
        let peer = incoming.remote_address().ip();
        let validated = incoming.remote_address_validated();
        match self.admission.incoming(peer, validated) {
            Ok(Some(ticket)) => return Some((incoming, ticket)),
            Ok(None) if incoming.may_retry() => {
                self.metrics.address_validation();
                if let Err(e) = incoming.retry() {
                    e.into_incoming().refuse();
                }
                return None;
            }
            Ok(None) => debug!(%peer, "an unvalidated connection that cannot be retried"),
            Err(e) => debug!(%peer, error = %e, "connection refused on its first packet"),
        }
        self.metrics.connection_refused();
        self.metrics.refuse_before_handshake();
        incoming.refuse();
        None
    }

    pub(super) async fn connection(
        &self,
        incoming: quinn::Incoming,
        mut ticket: AdmissionTicket,
    ) -> Result<(), ConnError> {
        // One deadline for everything before Welcome: the QUIC handshake, the stream, Hello
        // and Auth. Keep-alives do not move it.
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.limits.handshake_timeout_ms);
        let Ok(conn) = tokio::time::timeout_at(deadline, incoming.accept()?).await else {
            // The QUIC handshake itself did not finish: dropped, so closed.
            self.metrics.handshake_timeout();
            return Ok(());
        };
        let conn = conn?;
        let Ok(stream) = tokio::time::timeout_at(deadline, conn.accept_bi()).await else {
            self.metrics.handshake_timeout();
            let code = ErrorCode::AUTH_FAILED;
            conn.close(
                code.0.into(),
                b"no authentication before the handshake deadline",
            );
            return Ok(());
        };
        let (send, recv) = stream?;
        let mut binding = [0u8; wire::TLS_BINDING_LEN];
        conn.export_keying_material(&mut binding, wire::TLS_EXPORTER_LABEL, b"")
            .map_err(|_| ConnError::Protocol("keying material export failed"))?;
        let capacity = self.limits.max_inflight_requests + self.limits.push_window + 16;
        let (out_tx, out_rx) = mpsc::channel(capacity);
        let meter = Arc::new(Meter::new(&self.limits));
        let (reply_tx, reply_rx) = oneshot::channel();
        self.core_tx
            .send(CoreInput::Connect {
                peer: conn.remote_address().ip(),
                binding,
                out: out_tx.clone(),
                conn: conn.clone(),
                meter: meter.clone(),
                reply: reply_tx,
            })
            .await
            .map_err(|_| ConnError::CoreGone)?;
        let session = reply_rx.await.map_err(|_| ConnError::CoreGone)?;
        let writer = tokio::spawn(write_loop(
            FrameWriter::new(send),
            conn.clone(),
            out_rx,
            meter.clone(),
            self.metrics.clone(),
        ));
        // Nothing beyond the handshake's small frames is read before Welcome.
        let mut recv = FrameReader::new(recv, self.limits.max_handshake_frame_len);
        let result =
            match tokio::time::timeout_at(deadline, self.handshake(session, &mut recv, &out_tx))
                .await
            {
                Ok(Ok(true)) => {
                    ticket.authenticated();
                    let _blobs = self.blob_streams(session, conn.clone());
                    self.read_loop(session, recv, &out_tx, &meter).await
                }
                Ok(Ok(false)) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    self.metrics.handshake_timeout();
                    let msg = "no authentication before the handshake deadline".to_string();
                    let _ = out_tx.try_send(Outbound::Close(ErrorCode::AUTH_FAILED, msg));
                    Ok(())
                }
            };
        let _ = self.core_tx.send(CoreInput::Disconnect(session)).await;
        drop(out_tx);
        // The writer ends once the core dropped its route and the queue is drained.
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
        conn.close(0u32.into(), b"");
        // What the writer did not hand to QUIC leaves the gauges with the connection.
        let queued = meter.queued.swap(0, Ordering::AcqRel);
        self.metrics.outgoing(-as_i64(queued));
        let unanswered = meter.inflight.swap(0, Ordering::AcqRel);
        self.metrics.requests_answered(unanswered);
        result
    }

    /// Reads Hello and Auth (small frames, nothing else decoded) and hands them to the core;
    /// true once the core authenticated the session, false if it refused the Auth.
    pub(super) async fn handshake(
        &self,
        session: SessionId,
        recv: &mut FrameReader,
        out: &mpsc::Sender<Outbound>,
    ) -> Result<bool, ConnError> {
        loop {
            let Some(body) = self.read_body(recv, out).await? else {
                return Ok(false);
            };
            let frame = match wire::decode_handshake(&body) {
                Ok(f) => f,
                Err(e) => return Err(self.refuse_frame(e, out).await),
            };
            let is_auth = matches!(frame, ClientFrame::Auth { .. });
            let (tx, rx) = oneshot::channel();
            self.core_tx
                .send(CoreInput::Handshake(session, frame, tx))
                .await
                .map_err(|_| ConnError::CoreGone)?;
            if rx.await.map_err(|_| ConnError::CoreGone)? {
                return Ok(true);
            }
            if is_auth {
                return Ok(false);
            }
        }
    }

    /// Reads one frame body (within the reader's size limit); `None` at the end of the
    /// stream, also inside a frame: there is nobody left to tell.
    pub(super) async fn read_body(
        &self,
        recv: &mut FrameReader,
        out: &mpsc::Sender<Outbound>,
    ) -> Result<Option<Vec<u8>>, ConnError> {
        match recv.read_body().await {
            Ok(body) => Ok(body),
            Err(FrameError::Truncated { .. }) => Ok(None),
            Err(FrameError::Wire(e)) => Err(self.refuse_frame(e, out).await),
            Err(FrameError::Read(e)) => Err(e.into()),
            Err(e) => Err(ConnError::Frame(e)),
        }
    }

    /// Closes only this connection for a bad frame; the relay goes on serving everyone else.
    pub(super) async fn refuse_frame(
        &self,
        e: wire::WireError,
        out: &mpsc::Sender<Outbound>,
    ) -> ConnError {
        let _ = out.send(Outbound::Close(e.code(), e.to_string())).await;
        ConnError::Wire(e)
    }

    pub(super) async fn read_loop(
        &self,
        session: SessionId,
        mut recv: FrameReader,
        out: &mpsc::Sender<Outbound>,
        meter: &Meter,
    ) -> Result<(), ConnError> {
        recv.set_max_len(self.limits.max_frame_len);
        let mut keys = crate::verify::KeyCache::default();
        loop {
            let Some(body) = self.read_body(&mut recv, out).await? else {
                return Ok(());
            };
            let frame = match wire::decode_body::<ClientFrame>(&body) {
                Ok(f) => f,
                Err(e) => return Err(self.refuse_frame(e, out).await),
            };
            if frame.request_id().is_some() {
                // Released by the writer when it hands the answer to QUIC.
                meter.admit().await;
                self.metrics.request_read();
            }
            let input = match frame {
                ClientFrame::Submit { request_id, events }
                    if events.len() <= self.limits.max_submit_batch =>
                {
                    self.metrics.verified(events.len());
                    let (results, cache) = self
                        .verify
                        .verify(events, std::mem::take(&mut keys))
                        .await
                        .ok_or(ConnError::VerifierGone)?;
                    keys = cache;
                    CoreInput::Submit(session, request_id, results)
                }
                f => CoreInput::Frame(session, f),
            };
            self.core_tx
                .send(input)
                .await
                .map_err(|_| ConnError::CoreGone)?;
        }
    }
}

pub(super) async fn write_loop(
    mut send: FrameWriter,
    conn: quinn::Connection,
    mut rx: mpsc::Receiver<Outbound>,
    meter: Arc<Meter>,
    metrics: RelayMetrics,
) {
    while let Some(first) = rx.recv().await {
        let mut answers = 0;
        let mut charged = 0;
        let mut close = None;
        let mut next = Some(first);
        let mut n = 0;
        while let Some(o) = next.take() {
            match o {
                Outbound::Frame(f, len) => {
                    answers += usize::from(f.answers().is_some());
                    charged += len;
                    if let Err(e) = send.queue(&f) {
                        warn!(error = %e, "dropping an unencodable frame");
                    }
                }
                Outbound::Close(code, message) => {
                    close = Some((code, message));
                    break;
                }
            }
            n += 1;
            if n < WRITE_COALESCE {
                next = rx.try_recv().ok();
            }
        }
        if send.flush().await.is_err() {
            return;
        }
        meter.written(charged, answers);
        metrics.outgoing(-as_i64(charged));
        metrics.requests_answered(answers);
        if let Some((code, message)) = close {
            write_close(&mut send, &conn, code, &message).await;
            return;
        }
    }
}

pub(super) fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Sends the Error frame, gives it a moment to arrive, and closes the connection with the
/// code (so a device learns why even if the frame is lost).
pub(super) async fn write_close(
    send: &mut FrameWriter,
    conn: &quinn::Connection,
    code: ErrorCode,
    message: &str,
) {
    let mut message = message.to_string();
    message.truncate(wire::MAX_REASON_LEN);
    let frame = ServerFrame::Error {
        code,
        message: message.clone(),
    };
    if send.write_frame(&frame).await.is_ok() && send.get_mut().finish().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), send.get_mut().stopped()).await;
    }
    conn.close(code.0.into(), message.as_bytes());
}

/// Why a connection ended early (logged at debug level).
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("frame: {0}")]
    Wire(wire::WireError),
    #[error("framing: {0}")]
    Frame(FrameError),
    #[error("protocol: {0}")]
    Protocol(&'static str),
    #[error("the core stopped")]
    CoreGone,
    #[error("the verification threads stopped")]
    VerifierGone,
}
