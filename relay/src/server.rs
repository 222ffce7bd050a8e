//! The async shell: quinn connections in, frames through the core, frames out.
//!
//! - One **core thread** owns the [`RelayCore`]. It takes inputs from a bounded queue, stages
//!   submits from every connection and, whenever the writer is free, hands everything staged
//!   to it as one group commit (acks signed first, spread over the cores). A commit holds at
//!   most `max_commit_batch` events; submits past it wait in the core and fill the next
//!   commits round-robin by connection, so a flooding device delays another by at most one
//!   commit; the core thread stops reading only when `core_queue` submits wait. Outputs are routed
//!   after each input and after each finished commit. Blocking redb calls stay off the async
//!   runtime.
//! - One **writer thread** writes one commit at a time (`Durability::Immediate`) while the core
//!   stages and signs the next, then hands it back; only then are its acks sent and its events
//!   pushed.
//! - One **driver task** per connection reads frames, has Submit signatures verified by the
//!   [`VerifyPool`] (the CPU-heavy part, off the core thread and off the runtime's workers,
//!   which must keep polling QUIC), and forwards inputs to the core in order; a writer task
//!   sends the frames the core routes to it. Before `Welcome` the driver reads only small
//!   Hello/Auth frames, within one handshake deadline, and verifies nothing. After it, every
//!   request kind goes through the connection's [`Meter`]: at most `max_inflight_requests`
//!   unanswered, and only with room in the outgoing queue (`max_outgoing_bytes`) for each
//!   one's largest answer; past that its driver stops reading and QUIC flow control pushes back
//!   on the device.
//! - Admission happens on a connection's first packet (`quinn::Incoming`), before any TLS
//!   work: the shell's [`crate::admission::Admission`] counts every connection, per address
//!   prefix and those not authenticated yet, and refuses past a limit with a stateless close;
//!   with many handshakes pending it first makes an unvalidated peer prove its address (QUIC
//!   Retry). Strangers therefore cost at most `max_pending_handshakes` handshakes' state.
//! - [`run`] takes a bound endpoint and a shutdown future; [`start`] opens everything from a
//!   [`RelayConfig`] and returns a [`RelayHandle`] that owns the tasks.

use crate::admission::{AdmissionTicket, SharedAdmission};
use crate::config::RelayConfig;
use crate::config::StorageKind;
use crate::core::{CommitJob, CoreStats, Output, RelayCore, RelayStore, SessionId, StoreError};
use crate::identity::{IdentityError, RelayIdentity};
use crate::metrics::RelayMetrics;
use crate::storage::{AnyStorage, PgStore, Storage};
use crate::verify::VerifyPool;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tidings_engine::event::DecodeError;
use tidings_engine::wire::{self, ClientFrame, ErrorCode, ServerFrame};
use tidings_engine::{DeviceId, Event};
use tidings_transport::{Fingerprint, ListenConfig, TransportError};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

mod retention;
mod shell;
use shell::{as_i64, Shell};

/// Frames a writer drains into one write.
const WRITE_COALESCE: usize = 64;

/// Why the relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The identity could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::core::StoreError),
    /// TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The QUIC endpoint could not be configured or started.
    #[error("QUIC endpoint: {0}")]
    Transport(#[from] TransportError),
    /// Binding a socket or another IO failure.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The core thread stopped unexpectedly.
    #[error("the relay core stopped")]
    CoreGone,
    /// `storage = "postgres"` without a `postgres` connection string.
    #[error("storage = \"postgres\" needs a `postgres` connection string in the config")]
    NoPostgres,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A running relay, owning its tasks: dropping it stops the relay abruptly (staged but
/// uncommitted events are lost, as in a crash; everything acknowledged is on disk).
/// [`RelayHandle::shutdown`] stops it gracefully.
#[derive(Debug)]
pub struct RelayHandle {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    relay_id: DeviceId,
    fingerprint: Fingerprint,
    metrics: RelayMetrics,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), RelayError>>>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    core: CoreThread,
}

impl RelayHandle {
    /// The QUIC address devices connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics HTTP address, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The relay's DeviceId (signs ServerAck events).
    pub fn relay_id(&self) -> DeviceId {
        self.relay_id
    }

    /// The certificate fingerprint devices pin (lowercase hex SHA-256 of the DER certificate).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The relay's metrics.
    pub fn metrics(&self) -> &RelayMetrics {
        &self.metrics
    }

    /// Stops accepting, commits what is staged, answers it, closes every connection with
    /// `SHUTTING_DOWN` and waits for the store to close.
    pub async fn shutdown(mut self) -> Result<(), RelayError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let result = match self.task.take() {
            Some(t) => t.await.unwrap_or(Err(RelayError::CoreGone)),
            None => Ok(()),
        };
        if let Some(t) = self.metrics_task.take() {
            t.abort();
        }
        let core = std::mem::take(&mut self.core);
        tokio::task::spawn_blocking(move || core.join())
            .await
            .map_err(|_| RelayError::CoreGone)?;
        result
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(t) = self.metrics_task.take() {
            t.abort();
        }
        self.core.crash();
        std::mem::take(&mut self.core).join();
    }
}

/// The core thread's handle: crash it, join it.
#[derive(Debug, Default)]
struct CoreThread {
    crash: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CoreThread {
    fn crash(&mut self) {
        if let Some(tx) = self.crash.take() {
            let _ = tx.send(());
        }
    }

    fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens the data directory, the store and the identity, binds the QUIC endpoint (and the
/// metrics endpoint) and starts serving. Must be called inside a tokio runtime.
pub async fn start(config: RelayConfig) -> Result<RelayHandle, RelayError> {
    let identity = RelayIdentity::load_or_create(&config.data_dir)?;
    let db_path = config.data_dir.join("relay.redb");
    let store = match config.storage {
        StorageKind::Redb => AnyStorage::Redb(RelayStore::open_path(&db_path, config.durable)?),
        StorageKind::Postgres => {
            let url = config.postgres.as_deref().ok_or(RelayError::NoPostgres)?;
            // Blocking: the connections are opened and the schema checked before serving.
            let url = url.to_string();
            let durable = config.durable;
            let store = tokio::task::spawn_blocking(move || PgStore::connect_with(&url, durable))
                .await
                .map_err(|_| RelayError::CoreGone)??;
            AnyStorage::Postgres(store)
        }
    };
    let metrics = RelayMetrics::default();
    let mut core = RelayCore::with_metrics(
        store,
        identity.key().clone(),
        config.limits.clone(),
        metrics.clone(),
    )?;
    core.set_idle_timeout_ms(config.idle_timeout_secs.max(1).saturating_mul(1000));
    core.set_retention(config.retention.clone());
    let endpoint = server_endpoint(
        &identity,
        config.listen,
        config.idle_timeout_secs,
        config.udp_buffer_bytes,
    )?;
    let addr = endpoint.local_addr().map_err(|source| RelayError::Io {
        what: "reading the QUIC address",
        source,
    })?;
    let (core_thread, core_tx) = spawn_core(core)?;
    let (metrics_addr, metrics_task) = match config.metrics_listen {
        Some(a) => {
            let listener =
                tokio::net::TcpListener::bind(a)
                    .await
                    .map_err(|source| RelayError::Io {
                        what: "binding the metrics address",
                        source,
                    })?;
            let local = listener.local_addr().map_err(|source| RelayError::Io {
                what: "reading the metrics address",
                source,
            })?;
            let task = tokio::spawn(serve_metrics(
                listener,
                metrics.clone(),
                core_tx.clone(),
                db_path,
            ));
            (Some(local), Some(task))
        }
        None => (None, None),
    };
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let limits = config.limits.clone().clamped();
    let blobs = crate::blobs::BlobStore::open(config.data_dir.join("blobs"), config.blobs.clone())
        .map_err(|e| RelayError::Io {
            what: "opening the blob store",
            source: std::io::Error::other(e.to_string()),
        })?;
    let shell = Shell::new(core_tx, limits, metrics.clone())?
        .with_blobs(crate::blobs::serve::BlobService::new(blobs));
    let task = tokio::spawn(shell.serve(
        endpoint,
        async move {
            let _ = shutdown_rx.await;
        },
        grace,
    ));
    info!(%addr, relay = %identity.relay_id(), fingerprint = %identity.fingerprint(), "relay listening");
    Ok(RelayHandle {
        addr,
        metrics_addr,
        relay_id: identity.relay_id(),
        fingerprint: identity.fingerprint(),
        metrics,
        shutdown: Some(shutdown_tx),
        task: Some(task),
        metrics_task,
        core: core_thread,
    })
}

/// Serves `endpoint` with `core` until `shutdown` completes, then shuts down gracefully (final
/// commit, `SHUTTING_DOWN` to every device). For callers that bind their own endpoint (see
/// [`server_endpoint`]); [`start`] does everything from a config.
pub async fn run<S: Storage>(
    endpoint: quinn::Endpoint,
    core: RelayCore<S>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    let limits = core.limits().clone();
    let metrics = core.metrics().clone();
    let (thread, core_tx) = spawn_core(core)?;
    let shell = Shell::new(core_tx, limits, metrics)?;
    let result = shell
        .serve(
            endpoint,
            shutdown,
            Duration::from_secs(crate::limits::SHUTDOWN_GRACE_SECS),
        )
        .await;
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|_| RelayError::CoreGone)?;
    result
}

/// A QUIC server endpoint with the relay's certificate and ALPN, bound to `addr`.
pub fn server_endpoint(
    identity: &RelayIdentity,
    addr: SocketAddr,
    idle_timeout_secs: u64,
    udp_buffer_bytes: usize,
) -> Result<quinn::Endpoint, RelayError> {
    let server = ListenConfig::new(identity.cert().clone(), identity.cert_key())
        // The message stream and the blob streams (crate::blobs::serve).
        .max_bidi_streams(1 + crate::blobs::serve::MAX_BLOB_STREAMS)
        .idle_timeout(Duration::from_secs(idle_timeout_secs.max(1)))
        .build()?;
    let io = |what| move |source| RelayError::Io { what, source };
    let (socket, granted) = tidings_transport::udp_socket(addr, udp_buffer_bytes)
        .map_err(io("binding the QUIC address"))?;
    if granted < udp_buffer_bytes {
        warn!(
            asked = udp_buffer_bytes,
            granted,
            "the kernel granted smaller UDP buffers than asked for: bursts of packets will be \
             dropped sooner; raise net.core.rmem_max and net.core.wmem_max"
        );
    }
    Ok(tidings_transport::endpoint(socket, Some(server))?)
}

/// What a connection writer is told to do.
#[derive(Debug)]
enum Outbound {
    /// A frame and its encoded length (charged to the connection's [`Meter`]).
    Frame(ServerFrame, usize),
    Close(ErrorCode, String),
}

/// Inputs of the core thread.
enum CoreInput {
    Connect {
        peer: std::net::IpAddr,
        binding: [u8; wire::TLS_BINDING_LEN],
        out: mpsc::Sender<Outbound>,
        conn: quinn::Connection,
        meter: Arc<Meter>,
        reply: oneshot::Sender<SessionId>,
    },
    Frame(SessionId, ClientFrame),
    /// A handshake frame; the reply says whether the session is now authenticated.
    Handshake(SessionId, ClientFrame, oneshot::Sender<bool>),
    Submit(SessionId, u64, Vec<Result<Event, DecodeError>>),
    Disconnect(SessionId),
    Stats(oneshot::Sender<CoreStats>),
    Shutdown(oneshot::Sender<()>),
    /// A blob stream asks who the session is and whether they are a member.
    BlobAccess(
        SessionId,
        tidings_engine::ConversationId,
        oneshot::Sender<Option<crate::core::BlobAccess>>,
    ),
}

struct Route {
    out: mpsc::Sender<Outbound>,
    conn: quinn::Connection,
    meter: Arc<Meter>,
}

/// One connection's metering, shared by its reader, the core thread and its writer: every
/// request (a frame with [`ClientFrame::request_id`]) is admitted here before it is read on,
/// and released when its answer ([`ServerFrame::answers`]) is handed to QUIC; every frame for
/// the connection is charged its encoded bytes while it waits for the writer.
///
/// A request is admitted only while fewer than `max_requests` are unanswered AND the queue has
/// room for the largest possible answer of each of them (`reserve` bytes apiece): so answers
/// never overflow the queue, and a device that does not read its answers is slowed (its stream
/// is not read, QUIC flow control pushes back). Bytes that would take the queue past
/// `max_bytes` (pushes to a device that stopped reading) close the connection.
#[derive(Debug)]
struct Meter {
    max_requests: usize,
    max_bytes: usize,
    reserve: usize,
    inflight: AtomicUsize,
    queued: AtomicUsize,
    room: Notify,
}

impl Meter {
    fn new(limits: &crate::limits::Limits) -> Meter {
        Meter {
            max_requests: limits.max_inflight_requests,
            max_bytes: limits.max_outgoing_bytes,
            reserve: wire::FRAME_HEADER_LEN + wire::MAX_FRAME_LEN,
            inflight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            room: Notify::new(),
        }
    }

    fn has_room(&self) -> bool {
        let n = self.inflight.load(Ordering::Acquire);
        let queued = self.queued.load(Ordering::Acquire);
        n < self.max_requests
            && queued.saturating_add((n + 1).saturating_mul(self.reserve)) <= self.max_bytes
    }

    /// Waits until one more request fits, and counts it (one reader per connection).
    async fn admit(&self) {
        loop {
            let freed = self.room.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.has_room() {
                self.inflight.fetch_add(1, Ordering::AcqRel);
                return;
            }
            freed.await;
        }
    }

    /// Charges `len` bytes to the queue; false if they do not fit.
    fn try_queue(&self, len: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                q.checked_add(len).filter(|&n| n <= self.max_bytes)
            })
            .is_ok()
    }

    /// The writer handed `bytes` to QUIC, `answers` of them answers.
    fn written(&self, bytes: usize, answers: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(bytes))
            });
        let _ = self
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(answers))
            });
        self.room.notify_one();
    }
}

fn spawn_core<S: Storage>(
    core: RelayCore<S>,
) -> Result<(CoreThread, mpsc::Sender<CoreInput>), RelayError> {
    let (tx, rx) = mpsc::channel(core.limits().core_queue);
    let (crash_tx, crash_rx) = oneshot::channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|source| RelayError::Io {
            what: "starting the core runtime",
            source,
        })?;
    let thread = std::thread::Builder::new()
        .name("tidings-relay-core".into())
        .spawn(move || rt.block_on(core_loop(core, rx, crash_rx)))
        .map_err(|source| RelayError::Io {
            what: "spawning the core thread",
            source,
        })?;
    Ok((
        CoreThread {
            crash: Some(crash_tx),
            thread: Some(thread),
        },
        tx,
    ))
}

struct CoreDriver<S: Storage> {
    core: RelayCore<S>,
    routes: HashMap<SessionId, Route>,
}

impl<S: Storage> CoreDriver<S> {
    /// Handles one input; returns the shutdown reply when the input asks to stop.
    fn handle(&mut self, input: CoreInput) -> Option<oneshot::Sender<()>> {
        let now = now_ms();
        match input {
            CoreInput::Connect {
                peer,
                binding,
                out,
                conn,
                meter,
                reply,
            } => {
                let nonce: [u8; wire::NONCE_LEN] = rand::random();
                let s = self.core.handle_admitted(peer, binding, nonce);
                self.routes.insert(s, Route { out, conn, meter });
                let _ = reply.send(s);
            }
            CoreInput::Frame(s, f) => self.core.handle_frame(s, f, now),
            CoreInput::Handshake(s, f, reply) => {
                self.core.handle_frame(s, f, now);
                let _ = reply.send(self.core.is_authenticated(s));
            }
            CoreInput::Submit(s, id, results) => {
                self.core.handle_submit_verified(s, id, results, now)
            }
            CoreInput::Disconnect(s) => {
                self.core.handle_disconnect(s);
                self.routes.remove(&s);
            }
            CoreInput::Stats(reply) => {
                let _ = reply.send(self.core.stats());
            }
            CoreInput::Shutdown(reply) => return Some(reply),
            CoreInput::BlobAccess(s, conversation, reply) => {
                let _ = reply.send(self.core.blob_access(s, conversation));
            }
        }
        self.route();
        None
    }

    fn commit(&mut self) {
        if let Err(e) = self.core.commit() {
            warn!(error = %e, "group commit failed; staged events refused");
        }
        self.route();
    }

    /// Hands the staged batch to the writer thread (or commits it here without one).
    fn start_commit(&mut self, writer: &mut Option<Writer>) {
        let Some(w) = writer.as_mut() else {
            return self.commit();
        };
        match self.core.start_commit() {
            Ok(Some(job)) => {
                if let Some(job) = w.send(job) {
                    let result = job.write(self.core.store());
                    self.core.finish_commit(job, result);
                }
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "group commit failed; staged events refused"),
        }
        self.route();
    }

    fn route(&mut self) {
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Frame { session, frame } => {
                    let Some(r) = self.routes.get(&session) else {
                        continue;
                    };
                    let len = wire::encoded_len(&frame);
                    let queued = r.meter.try_queue(len);
                    if queued && r.out.try_send(Outbound::Frame(frame, len)).is_ok() {
                        self.core.metrics().outgoing(as_i64(len));
                    } else {
                        if queued {
                            r.meter.written(len, 0);
                        }
                        // Answers always fit (requests are admitted with room for theirs):
                        // this is pushes to a device that does not read them.
                        let code = ErrorCode::SLOW_CONSUMER;
                        r.conn.close(code.0.into(), b"slow consumer");
                        self.core.handle_disconnect(session);
                        self.routes.remove(&session);
                    }
                }
                Output::Close {
                    session,
                    code,
                    message,
                } => {
                    if let Some(r) = self.routes.remove(&session) {
                        if r.out.try_send(Outbound::Close(code, message)).is_err() {
                            r.conn.close(code.0.into(), b"closed");
                        }
                    }
                }
            }
        }
    }
}

/// The writer thread: writes commit jobs one at a time, in order, and hands them back, so
/// that the core thread stages and signs the next batch while the disk syncs this one.
struct Writer {
    jobs: Option<std::sync::mpsc::Sender<CommitJob>>,
    done: mpsc::Receiver<(CommitJob, Result<(), StoreError>)>,
    thread: Option<std::thread::JoinHandle<()>>,
    busy: bool,
}

impl Writer {
    fn spawn<S: Storage>(store: S) -> std::io::Result<Writer> {
        let (jobs, job_rx) = std::sync::mpsc::channel::<CommitJob>();
        // One job is out at a time, so one slot is enough.
        let (done_tx, done) = mpsc::channel(1);
        let thread = std::thread::Builder::new()
            .name("tidings-relay-writer".into())
            .spawn(move || {
                while let Ok(job) = job_rx.recv() {
                    let result = job.write(&store);
                    if done_tx.blocking_send((job, result)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Writer {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            busy: false,
        })
    }

    /// Hands a job to the thread; gives it back if the thread is gone.
    fn send(&mut self, job: CommitJob) -> Option<CommitJob> {
        match &self.jobs {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    return Some(e.0);
                }
            }
            None => return Some(job),
        }
        self.busy = true;
        None
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The thread finishes the job it holds (a commit is all or nothing), then stops.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn core_loop<S: Storage>(
    core: RelayCore<S>,
    mut rx: mpsc::Receiver<CoreInput>,
    mut crash: oneshot::Receiver<()>,
) {
    let mut d = CoreDriver {
        core,
        routes: HashMap::new(),
    };
    let mut writer = match Writer::spawn(d.core.store().clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, "no writer thread; committing on the core thread");
            None
        }
    };
    let mut retention = retention::RetentionPass::new(d.core.retention(), now_ms());
    loop {
        retention.poll(&d.core, now_ms());
        let busy = writer.as_ref().is_some_and(|w| w.busy);
        if !busy && d.core.wants_commit(now_ms()) {
            d.start_commit(&mut writer);
            continue;
        }
        // Over a shared store the core reads other nodes' changes on a tick.
        d.core.handle_tick(now_ms());
        d.route();
        let commit_at = (!busy).then(|| d.core.commit_deadline()).flatten();
        let wait = [commit_at, d.core.next_tick_ms(), retention.next_ms()]
            .into_iter()
            .flatten()
            .min()
            .map(|t| Duration::from_millis(t.saturating_sub(now_ms())));
        let input = tokio::select! {
            biased;
            _ = &mut crash => return,
            done = async {
                match writer.as_mut() {
                    Some(w) => w.done.recv().await,
                    None => None,
                }
            }, if busy => {
                if let (Some(w), Some((job, result))) = (writer.as_mut(), done) {
                    w.busy = false;
                    if let Err(e) = &result {
                        warn!(error = %e, "group commit failed; its events are refused");
                    }
                    d.core.finish_commit(job, result);
                    d.route();
                }
                continue;
            }
            // The core takes every submit (they wait their turn in it, round-robin by
            // connection) up to its backlog bound; past it, reading stops.
            i = rx.recv(), if !d.core.is_backlogged() => i,
            _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => continue,
        };
        let Some(input) = input else {
            // Every sender is gone: the shell stopped without a shutdown. Like a crash.
            return;
        };
        if let Some(reply) = d.handle(input) {
            return finish(d, writer, reply).await;
        }
        // Drain what is already waiting, so that one commit covers it all and every
        // connection's submits are in the core when the next batch is taken.
        while !d.core.is_backlogged() {
            match rx.try_recv() {
                Ok(i) => {
                    if let Some(reply) = d.handle(i) {
                        return finish(d, writer, reply).await;
                    }
                }
                Err(_) => break,
            }
        }
        if crash_requested(&mut crash) {
            return;
        }
    }
}

fn crash_requested(crash: &mut oneshot::Receiver<()>) -> bool {
    !matches!(crash.try_recv(), Err(oneshot::error::TryRecvError::Empty))
}

/// Graceful end: the commit being written completes, what is staged is committed, every
/// device is told, then the store closes.
async fn finish<S: Storage>(
    mut d: CoreDriver<S>,
    mut writer: Option<Writer>,
    reply: oneshot::Sender<()>,
) {
    if let Some(w) = writer.as_mut().filter(|w| w.busy) {
        if let Some((job, result)) = w.done.recv().await {
            w.busy = false;
            d.core.finish_commit(job, result);
        }
    }
    drop(writer);
    // Submits waiting past a full batch are committed too, batch by batch (each commit
    // consumes waiting submits, so this ends).
    d.commit();
    while d.core.has_staged() {
        d.commit();
    }
    d.core
        .close_all(ErrorCode::SHUTTING_DOWN, "the relay is shutting down");
    d.route();
    drop(d);
    let _ = reply.send(());
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: RelayMetrics,
    core_tx: mpsc::Sender<CoreInput>,
    db_path: PathBuf,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let core_tx = core_tx.clone();
        let db_path = db_path.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                if head.len() > crate::limits::MAX_METRICS_REQUEST {
                    return;
                }
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => head.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            let ok = head.starts_with(b"GET /metrics ") || head.starts_with(b"GET / ");
            let (status, body) = if ok {
                let (tx, rx) = oneshot::channel();
                if core_tx.send(CoreInput::Stats(tx)).await.is_ok() {
                    if let Ok(stats) = rx.await {
                        let backlog: Vec<(String, u64)> = stats
                            .device_backlog
                            .iter()
                            .map(|(d, n)| (d.to_string(), *n))
                            .collect();
                        metrics.set_backlogs(&backlog);
                    }
                }
                let size = std::fs::metadata(&db_path).map(|m| m.len()).unwrap_or(0);
                metrics.set_store_size(size);
                ("200 OK", metrics.render())
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
