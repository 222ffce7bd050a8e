//! The driver task: owns the device core and its connection, and only moves things around.
//!
//! Store calls (redb commits with fsync, about 0.2 ms) run on this task: one per user action,
//! and keeping them here keeps every state change in one place, in order. Sends queued behind
//! each other share one commit (group commit, see `Driver::send_queued`).

use crate::{
    Command, ConnectionProblem, ConnectionStatus, ConversationSnapshot, ReadSlot, ReplicaConfig,
    ReplicaError, Update, UserAction,
};
use quinn::{Connection, Endpoint};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tidings_engine::device::PreparedFrame;
use tidings_engine::link::LinkSlot;
use tidings_engine::store::{Outgoing, Rendered, MAX_SEND_BATCH};
use tidings_engine::wire::{
    ErrorCode, ServerFrame, MAX_FRAME_LEN, TLS_BINDING_LEN, TLS_EXPORTER_LABEL,
};
use tidings_engine::{
    ConnectionState, ConversationId, DeviceCore, DeviceEvent, DeviceKey, EventLog, LogError,
    MessageId, Store, StoreConfig,
};
mod render;
use render::Renderer;

use tidings_transport::{DialConfig, FrameReader, FrameWriter, TransportError};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Frames read ahead of the driver per connection; beyond that, QUIC flow control pushes back.
const READ_AHEAD_FRAMES: usize = 256;
/// How long `close` waits for the connection to say goodbye.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

struct Live {
    connection: Connection,
    send: FrameWriter,
    frames: mpsc::Receiver<Result<PreparedFrame, String>>,
    reader: JoinHandle<()>,
}

type Dialed = Result<(Connection, FrameWriter, FrameReader, [u8; TLS_BINDING_LEN]), String>;

/// Why the relay closed on the device, for the app.
fn problem_of(e: &tidings_engine::DeviceError) -> ConnectionProblem {
    use tidings_engine::DeviceError;
    match e {
        DeviceError::Closed { code, .. } if *code == ErrorCode::NOT_REGISTERED => {
            ConnectionProblem::NotRegistered
        }
        DeviceError::Closed { code, .. } if *code == ErrorCode::REVOKED => {
            ConnectionProblem::Revoked
        }
        DeviceError::Closed { code, message } => ConnectionProblem::Refused {
            code: *code,
            message: message.clone(),
        },
        DeviceError::WrongRelay { expected, got } => ConnectionProblem::WrongRelay {
            expected: *expected,
            got: *got,
        },
        other => ConnectionProblem::Other(other.to_string()),
    }
}

/// A `Send` command taken off the queue: the message and who waits for its answer.
type QueuedSend = (Outgoing, crate::Reply<MessageId>);

struct Driver {
    core: DeviceCore,
    config: ReplicaConfig,
    endpoint: Endpoint,
    commands: mpsc::Receiver<Command>,
    /// Publishes updates, in order, rendering the messages they carry on its own thread.
    render: Renderer,
    reads: ReadSlot,
    live: Option<Live>,
    dialing: Option<JoinHandle<Dialed>>,
    /// A command taken off the queue while gathering a send batch, handled next.
    held: Option<Command>,
    /// Why the connection last failed, until the relay takes the device.
    problem: Option<ConnectionProblem>,
    /// Set by the pinned verifier when a certificate fails the pin.
    pin_mismatch: Arc<AtomicBool>,
    /// Which of the relay's addresses the next dial tries.
    next_addr: usize,
    /// Callers waiting for the relay's answer to a link deposit, by slot.
    link_replies: HashMap<LinkSlot, Vec<crate::Reply<u64>>>,
    /// Callers waiting for the relay's answer to a revocation, by device.
    revoke_replies: HashMap<tidings_engine::DeviceId, Vec<crate::Reply<()>>>,
    /// The authenticated connection, for the media worker's blob streams (`None` when
    /// there is none).
    media_link: tokio::sync::watch::Sender<Option<Connection>>,
}

pub(crate) async fn start(
    dir: &Path,
    key: DeviceKey,
    config: ReplicaConfig,
    commands: mpsc::Receiver<Command>,
    updates: broadcast::Sender<Update>,
    media_link: tokio::sync::watch::Sender<Option<Connection>>,
) -> Result<ReadSlot, ReplicaError> {
    std::fs::create_dir_all(dir).map_err(|source| ReplicaError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join("device.redb");
    let log = EventLog::open_with_cache(&path, config.log_cache_bytes).map_err(|e| match e {
        LogError::AlreadyOpen(_) => ReplicaError::AlreadyOpen { path: path.clone() },
        LogError::Storage(redb::Error::Io(source)) => ReplicaError::Io {
            path: path.clone(),
            source,
        },
        e => tidings_engine::StoreError::from(e).into(),
    })?;
    // The engine draws no randomness of its own: fresh OS entropy at every open.
    let entropy = {
        use rand::TryRngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| ReplicaError::Random(e.to_string()))?;
        bytes
    };
    let mut store = Store::new(log, key, StoreConfig::new(config.relay_key), entropy);
    if let Some(k) = config.storage_key.clone() {
        store.set_storage_key(k);
    }
    // A relay page's automerge fold runs on the blocking pool while the core goes on with the
    // page's cursors, receipts and fsync (the core waits for it before any other use of the
    // documents).
    let pool = tokio::runtime::Handle::current();
    store.set_fold_runner(Box::new(move |job| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        pool.spawn_blocking(move || {
            let _ = tx.send(job.run());
        });
        Box::new(move || rx.recv().ok())
    }));
    let reader = store.reader();
    let reads: ReadSlot = Arc::new(RwLock::new(Some(reader.clone())));
    let core = DeviceCore::new(
        store,
        config.relay_key,
        config.device.clone(),
        rand::random(),
    );
    let pin_mismatch = Arc::new(AtomicBool::new(false));
    let client = dial_config(
        &config,
        config.keepalive,
        config.idle_timeout,
        &pin_mismatch,
    )
    .map_err(|e| ReplicaError::Network(e.to_string()))?;
    let endpoint = tidings_transport::client_endpoint(config.relay_addr, client)
        .map_err(|e| ReplicaError::Network(e.to_string()))?;
    let render =
        Renderer::start(reader, updates, config.device.read_receipts).map_err(|source| {
            ReplicaError::Io {
                path: dir.to_path_buf(),
                source,
            }
        })?;
    let driver = Driver {
        core,
        config,
        endpoint,
        commands,
        render,
        reads: Arc::clone(&reads),
        live: None,
        dialing: None,
        held: None,
        problem: None,
        pin_mismatch,
        next_addr: 0,
        link_replies: HashMap::new(),
        revoke_replies: HashMap::new(),
        media_link,
    };
    tokio::spawn(driver.run());
    Ok(reads)
}

impl Driver {
    async fn run(mut self) {
        loop {
            self.pump().await;
            if let Some(cmd) = self.held.take() {
                match cmd {
                    Command::Close(reply) => return self.close(reply).await,
                    cmd => self.command(cmd).await,
                }
                continue;
            }
            let now = self.now();
            if self.live.is_none() && self.dialing.is_none() && self.core.poll_connect(now) {
                self.pin_mismatch.store(false, Ordering::Relaxed);
                self.dialing = Some(tokio::spawn(dial(
                    self.endpoint.clone(),
                    self.dial_addr(),
                    self.config.server_name.clone(),
                )));
            }
            let wake = match (self.core.poll_timeout(), self.live.is_none(), &self.dialing) {
                (Some(_), true, Some(_)) => None,
                (t, _, _) => t,
            };
            let sleep = wake.map(|t| Instant::now() + Duration::from_millis(t.saturating_sub(now)));
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Close(reply)) => return self.close(reply).await,
                    Some(cmd) => self.command(cmd).await,
                    None => {
                        let _ = self.shutdown().await;
                        self.render.finish().await;
                        return;
                    }
                },
                frame = next_frame(&mut self.live) => {
                    let now = self.now();
                    match frame {
                        Some(Ok(f)) => {
                            if let Err(e) = self.core.handle_prepared(f, now) {
                                tracing::warn!(error = %e, "dropping the relay connection");
                                self.problem = Some(problem_of(&e));
                                self.disconnect(now);
                            }
                            // A page's fold runs beside the next page; with none waiting, it
                            // is taken back now so its messages show.
                            if self.live.as_ref().is_none_or(|l| l.frames.is_empty()) {
                                if let Err(e) = self.core.settle_folds() {
                                    tracing::warn!(error = %e, "a page's fold failed; its documents reload from the log");
                                }
                            }
                        }
                        Some(Err(e)) => {
                            tracing::info!(error = %e, "relay connection lost");
                            self.disconnect(now);
                        }
                        None => self.disconnect(now),
                    }
                }
                dialed = join(&mut self.dialing) => {
                    self.dialing = None;
                    let now = self.now();
                    match dialed {
                        Ok((connection, send, recv, binding)) => {
                            let (tx, frames) = mpsc::channel(READ_AHEAD_FRAMES);
                            let reader = tokio::spawn(read_frames(recv, tx));
                            self.live = Some(Live { connection, send, frames, reader });
                            self.core.handle_connected(binding, now);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "relay unreachable");
                            self.problem = Some(if self.pin_mismatch.load(Ordering::Relaxed) {
                                ConnectionProblem::PinMismatch
                            } else {
                                ConnectionProblem::Unreachable(e)
                            });
                            self.next_addr = self.next_addr.wrapping_add(1);
                            self.core.handle_connect_failed(now);
                            // The core reports no state change for a failed dial; the app
                            // hears why.
                            let status = ConnectionStatus::new(self.core.connection(), self.problem.clone());
                            self.render.update(Update::Connection(status)).await;
                        }
                    }
                }
                _ = sleep_until(sleep) => {
                    if let Err(e) = self.core.handle_timeout(self.now()) {
                        tracing::warn!(error = %e, "timeout handling failed");
                    }
                }
            }
        }
    }

    /// Writes what the core wants sent and publishes what it wants shown.
    async fn pump(&mut self) {
        let mut written = Ok(());
        while let Some(frame) = self.core.poll_transmit() {
            // Without a connection the core's frames have nowhere to go: it sends again what
            // matters after the next handshake.
            if let Some(live) = self.live.as_mut() {
                if let Err(e) = live.send.queue(&frame) {
                    tracing::error!(error = %e, "a frame of ours does not encode; dropped");
                }
            }
        }
        if let Some(live) = self.live.as_mut() {
            written = live.send.flush().await;
        }
        if let Err(e) = written {
            tracing::info!(error = %e, "write to relay failed");
            let now = self.now();
            self.disconnect(now);
        }
        while let Some(event) = self.core.poll_event() {
            let event = match event {
                DeviceEvent::LinkDeposit { slot, outcome } => {
                    for r in self.link_replies.remove(&slot).unwrap_or_default() {
                        let _ = r.send(outcome.clone().map_err(refused));
                    }
                    continue;
                }
                DeviceEvent::RelayIdle { idle_timeout_ms } => {
                    self.take_relay_idle(Duration::from_millis(idle_timeout_ms));
                    continue;
                }
                DeviceEvent::Revocation { device, outcome } => {
                    for r in self.revoke_replies.remove(&device).unwrap_or_default() {
                        let _ = r.send(outcome.clone().map_err(refused));
                    }
                    continue;
                }
                other => other,
            };
            if let DeviceEvent::Connection(state) = event {
                if matches!(state, ConnectionState::Syncing | ConnectionState::Online) {
                    self.problem = None;
                }
                let link = match state {
                    ConnectionState::Syncing | ConnectionState::Online => {
                        self.live.as_ref().map(|l| l.connection.clone())
                    }
                    _ => None,
                };
                self.media_link.send_replace(link);
                let status = ConnectionStatus::new(state, self.problem.clone());
                self.render.update(Update::Connection(status)).await;
                continue;
            }
            self.render.event(event).await;
        }
    }

    /// The relay told its idle timeout: connections from the next one on use the profile's
    /// timing for it (a live connection keeps the transport settings it was dialed with).
    fn take_relay_idle(&mut self, relay_idle: Duration) {
        let (keepalive, idle) = self.config.profile.timing_for_relay(relay_idle);
        if (keepalive, idle) == (self.config.keepalive, self.config.idle_timeout) {
            return;
        }
        match dial_config(&self.config, keepalive, idle, &self.pin_mismatch) {
            Ok(client) => {
                tracing::info!(
                    ?keepalive,
                    ?idle,
                    "keepalive set from the relay's idle timeout"
                );
                self.endpoint.set_default_client_config(client);
                self.config.keepalive = keepalive;
                self.config.idle_timeout = idle;
            }
            Err(e) => tracing::warn!(error = %e, "keeping the profile's keepalive"),
        }
    }

    fn now(&self) -> u64 {
        self.config.clock.now_ms()
    }

    /// The relay address for the next dial: `relay_addr`, then each fallback in turn after a
    /// failed dial.
    fn dial_addr(&self) -> SocketAddr {
        let n = 1 + self.config.fallback_addrs.len();
        match self.next_addr % n {
            0 => self.config.relay_addr,
            i => self.config.fallback_addrs[i - 1],
        }
    }

    fn disconnect(&mut self, now: u64) {
        if let Some(live) = self.live.take() {
            live.connection.close(0u32.into(), b"reconnecting");
            live.reader.abort();
        }
        if let Err(e) = self.core.handle_disconnected(now) {
            tracing::warn!(error = %e, "disconnect handling failed");
        }
    }

    async fn close(mut self, reply: crate::Reply<()>) {
        let result = self.shutdown().await;
        // Updates made before the close are published, and the render thread's reader
        // released, before the caller hears back.
        self.render.finish().await;
        // Handles lose their reader once the reads under way ended; then the last handle on
        // the database is the store's.
        let reads = Arc::clone(&self.reads);
        let _ = tokio::task::spawn_blocking(move || {
            *reads.write().unwrap_or_else(|e| e.into_inner()) = None;
        })
        .await;
        // The store (and its database file) is released before the caller hears back, so
        // the directory can be opened again at once.
        drop(self);
        let _ = reply.send(result);
    }

    async fn shutdown(&mut self) -> Result<(), ReplicaError> {
        let result = self.core.store_mut().snapshot_all();
        if let Some(d) = self.dialing.take() {
            d.abort();
        }
        if let Some(live) = self.live.take() {
            live.connection.close(0u32.into(), b"closing");
            live.reader.abort();
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, self.endpoint.wait_idle()).await;
        result.map_err(ReplicaError::from)
    }

    async fn command(&mut self, cmd: Command) {
        let now = self.now();
        let core = &mut self.core;
        match cmd {
            Command::Create(c, members, r) => {
                let _ = r.send(
                    core.create_conversation(c, members, now)
                        .map_err(Into::into),
                );
            }
            Command::AddMember(c, user, admin, r) => {
                let _ = r.send(core.add_member(c, user, admin, now).map_err(Into::into));
            }
            Command::RemoveMember(c, user, r) => {
                let _ = r.send(core.remove_member(c, user, now).map_err(Into::into));
            }
            Command::SetRetention(c, policy, r) => {
                let _ = r.send(core.set_retention(c, policy, now).map_err(Into::into));
            }
            Command::Send(conversation, body, media, r) => {
                let first = Outgoing {
                    conversation,
                    body,
                    media,
                };
                self.send_queued((first, r), now);
            }
            Command::SendMedia(c, body, r) => {
                let _ = r.send(core.send_media(c, &body, now).map_err(Into::into));
            }
            Command::MarkRead(c, up_to, r) => {
                let _ = r.send(core.mark_read(c, up_to, now).map_err(Into::into));
            }
            Command::Retry(m, r) => {
                let _ = r.send(core.retry(m, now).map_err(Into::into));
            }
            Command::FailedMessages(age, r) => {
                let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                let _ = r.send(core.failed_messages(now, age_ms).map_err(Into::into));
            }
            Command::DiscardFailed(ids, r) => {
                let _ = r.send(core.discard_failed(&ids).map_err(Into::into));
            }
            Command::NetworkChanged(online, r) => {
                let res = core.network_changed(online, now).map_err(Into::into);
                if !online {
                    // A dial under way would otherwise connect after the app said offline.
                    if let Some(d) = self.dialing.take() {
                        d.abort();
                    }
                    self.disconnect(now);
                }
                let _ = r.send(res);
            }
            Command::Conversation(c, r) => {
                let _ = r.send(snapshot(core, c));
            }
            Command::Recipients(c, m, r) => {
                let res = core
                    .store_mut()
                    .conversation(c)
                    .map(|conv| conv.recipients(&m))
                    .map_err(Into::into);
                let _ = r.send(res);
            }
            Command::Outbox(r) => {
                let _ = r.send(core.store_mut().outbox().map_err(Into::into));
            }
            Command::Connection(r) => {
                let status = ConnectionStatus::new(core.connection(), self.problem.clone());
                let _ = r.send(Ok(status));
            }
            Command::User(action, r) => {
                match action {
                    UserAction::Accept(c) => core.accept(c),
                    UserAction::Decline(c) => core.decline(c),
                    UserAction::Block(u) => core.block(u),
                    UserAction::Unblock(u) => core.unblock(u),
                }
                let _ = r.send(Ok(()));
            }
            Command::Invitations(r) => {
                let _ = r.send(Ok(core.invitations()));
            }
            Command::Blocked(r) => {
                let _ = r.send(Ok(core.blocked()));
            }
            Command::Devices(user, r) => {
                let me = core.store().key().device();
                let own = core.store().key().user() == user;
                let res = core.store_mut().directory().map(|d| {
                    let mut ids: BTreeSet<_> =
                        d.devices_of(&user).into_iter().map(|(id, _)| id).collect();
                    if own {
                        ids.insert(me);
                    }
                    ids.into_iter().filter(|id| !d.is_revoked(id)).collect()
                });
                let _ = r.send(res.map_err(Into::into));
            }
            Command::DeviceList(user, r) => {
                let me = core.store().key().device();
                let own = core.store().key().user() == user;
                let res = core.store_mut().directory().map(|d| {
                    let mut all: std::collections::BTreeMap<_, _> =
                        d.all_devices_of(&user).into_iter().collect();
                    if own {
                        all.entry(me).or_insert(false);
                    }
                    all.into_iter()
                        .map(|(id, revoked)| crate::DeviceEntry { id, revoked })
                        .collect()
                });
                let _ = r.send(res.map_err(Into::into));
            }
            Command::LinkDevice(slot, sealed, r) => match core.deposit_link(slot, sealed) {
                Ok(()) => self.link_replies.entry(slot).or_default().push(r),
                Err(e) => {
                    let _ = r.send(Err(e.into()));
                }
            },
            Command::Peer(cmd) => crate::peers::handle(core, cmd, now),
            Command::Revoke(revocation, r) => {
                let device = revocation.device;
                match core.revoke(revocation) {
                    Ok(()) => self.revoke_replies.entry(device).or_default().push(r),
                    Err(e) => {
                        let _ = r.send(Err(e.into()));
                    }
                }
            }
            Command::Close(_) => {}
        }
    }
}

fn refused(r: tidings_engine::device::RequestRefused) -> ReplicaError {
    ReplicaError::Refused {
        code: r.code,
        reason: r.reason,
    }
}

impl Driver {
    /// Sends `first` and every send queued right behind it (up to [`MAX_SEND_BATCH`]) with
    /// one durable commit (group commit): while a commit's fsync runs, callers queue up, and
    /// the next commit takes them all. Each caller hears back only after the commit that
    /// holds its message is on disk. A queued command of another kind ends the batch and is
    /// handled right after it, so commands keep their order.
    fn send_queued(&mut self, first: QueuedSend, now: u64) {
        let mut batch = vec![first];
        while batch.len() < MAX_SEND_BATCH {
            match self.commands.try_recv() {
                Ok(Command::Send(conversation, body, media, r)) => batch.push((
                    Outgoing {
                        conversation,
                        body,
                        media,
                    },
                    r,
                )),
                Ok(other) => {
                    self.held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        // A conversation this device does not know is the caller's mistake, answered at the
        // call rather than as a message that turns FAILED later.
        let mut known = std::collections::BTreeMap::new();
        let mut sendable = Vec::with_capacity(batch.len());
        for (out, r) in batch {
            let is_known = match known.get(&out.conversation) {
                Some(k) => Ok(*k),
                None => knows(&self.core, out.conversation),
            };
            match is_known {
                Ok(true) => {
                    known.insert(out.conversation, true);
                    sendable.push((out, r));
                }
                Ok(false) => {
                    known.insert(out.conversation, false);
                    let _ = r.send(Err(ReplicaError::UnknownConversation(out.conversation)));
                }
                Err(e) => {
                    let _ = r.send(Err(tidings_engine::StoreError::from(e).into()));
                }
            }
        }
        if sendable.is_empty() {
            return;
        }
        let (outgoing, replies): (Vec<Outgoing>, Vec<_>) = sendable.into_iter().unzip();
        let results = self.core.send_all(outgoing, now);
        for (r, result) in replies.into_iter().zip(results) {
            let _ = r.send(result.map_err(Into::into));
        }
    }
}

/// Whether this device knows `conversation`: created here, or accepted and caught up to its
/// `Create`.
fn knows(core: &DeviceCore, conversation: ConversationId) -> Result<bool, LogError> {
    Ok(core
        .store()
        .log()
        .conversation_meta(conversation)?
        .is_some_and(|m| m.members.is_some()))
}

fn snapshot(
    core: &mut DeviceCore,
    id: tidings_engine::ConversationId,
) -> Result<ConversationSnapshot, ReplicaError> {
    if !knows(core, id).map_err(tidings_engine::StoreError::from)? {
        return Err(ReplicaError::UnknownConversation(id));
    }
    let user = core.store().key().user();
    let conv = core.store_mut().conversation(id)?;
    let members = conv.members().map(<[_]>::to_vec);
    let views = conv.messages();
    let unread = conv.unread_count(user);
    let messages = views
        .into_iter()
        .map(|view| {
            let body = core.store_mut().body(&view)?;
            Ok(Rendered { view, body })
        })
        .collect::<Result<Vec<_>, tidings_engine::StoreError>>()?;
    Ok(ConversationSnapshot {
        id,
        members,
        messages,
        unread,
    })
}

async fn dial(endpoint: Endpoint, addr: SocketAddr, name: String) -> Dialed {
    let connecting = endpoint.connect(addr, &name).map_err(|e| e.to_string())?;
    let connection = connecting.await.map_err(|e| e.to_string())?;
    let mut binding = [0u8; TLS_BINDING_LEN];
    connection
        .export_keying_material(&mut binding, TLS_EXPORTER_LABEL, b"")
        .map_err(|_| "TLS exporter unavailable".to_string())?;
    let (send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    Ok((
        connection,
        FrameWriter::new(send),
        FrameReader::new(recv, MAX_FRAME_LEN),
        binding,
    ))
}

/// The client configuration for `config`'s relay with this timing; `mismatch` tells a pin
/// mismatch from an unreachable relay.
fn dial_config(
    config: &ReplicaConfig,
    keepalive: Duration,
    idle_timeout: Duration,
    mismatch: &Arc<AtomicBool>,
) -> Result<quinn::ClientConfig, TransportError> {
    DialConfig::new(config.relay_cert_sha256)
        .keepalive(keepalive)
        .idle_timeout(idle_timeout)
        .report_mismatch(Arc::clone(mismatch))
        .build()
}

/// Reads frames and checks their events' signatures here, off the driver, so that verifying
/// one page overlaps with folding the previous one.
async fn read_frames(mut recv: FrameReader, tx: mpsc::Sender<Result<PreparedFrame, String>>) {
    loop {
        let frame = match recv.read_frame::<ServerFrame>().await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                let _ = tx.send(Err("relay closed the stream".into())).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string())).await;
                return;
            }
        };
        let prepared = match frame {
            f @ (ServerFrame::Page { .. }
            | ServerFrame::HistoryGap { .. }
            | ServerFrame::Push { .. }) => {
                match tokio::task::spawn_blocking(move || DeviceCore::prepare(f)).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string())).await;
                        return;
                    }
                }
            }
            f => DeviceCore::prepare(f),
        };
        if tx.send(Ok(prepared)).await.is_err() {
            return;
        }
    }
}

async fn next_frame(live: &mut Option<Live>) -> Option<Result<PreparedFrame, String>> {
    match live.as_mut() {
        Some(l) => l.frames.recv().await,
        None => std::future::pending().await,
    }
}

async fn join(dialing: &mut Option<JoinHandle<Dialed>>) -> Dialed {
    match dialing.as_mut() {
        Some(h) => h.await.map_err(|e| e.to_string())?,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
