//! Peer links: this device reconciles with other devices directly, without the relay (two
//! phones on one Wi-Fi with no internet). The protocol is the engine's
//! ([`tidings_engine::peer`]); the link is `tidings-transport`'s ([`PeerConfig`]: mutual TLS,
//! each side proving its device key). This module only moves frames between a QUIC stream and
//! the driver, which owns the device core.
//!
//! Where peers are comes from the app ([`ExplicitPeers`]: an address from a QR code or typed
//! in), from the LAN ([`mdns::MdnsDiscovery`], advertised with [`PeerLink::advertise`]) or from
//! any other [`Discovery`].

mod blobs;
mod keep;
pub mod mdns;
pub use keep::{KeepSynced, PeerSyncStats, KEEP_SYNCED_EVERY};

use crate::{Command, Replica, ReplicaError};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidings_engine::media::wire::BlobRefusal;
use tidings_engine::peer::{admitted_peers, judge_blob_fetch, HeldBlob, PeerFrame, PeerSession};
use tidings_engine::wire::MAX_FRAME_LEN;
use tidings_engine::{ConversationId, DeviceCore, DeviceId};
use tidings_transport::{
    client_endpoint, endpoint, is_blob_link, peer_device, udp_socket, FrameReader, FrameWriter,
    PeerAllowList, PeerConfig, PeerIdentity, PEER_SERVER_NAME,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Longest wait for the next frame of a peer session before the link is dropped.
pub const PEER_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the listener refreshes the devices it admits (certificates and memberships
/// change as events arrive).
pub const PEER_ADMIT_REFRESH: Duration = Duration::from_secs(5);
/// Most peer sessions the listener runs at once; more connections wait for one to end.
pub const MAX_PEER_SESSIONS: usize = 16;
/// Frames read ahead of the session per link.
const PEER_READ_AHEAD: usize = 64;
/// Answers (one batch of frames per frame handled) queued for the writer per link.
const PEER_WRITE_BATCHES: usize = 1024;
/// UDP buffer a peer endpoint asks for.
const PEER_UDP_BUFFER_BYTES: usize = 1 << 20;

/// A peer device and where to reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    /// The device (its key is what the link checks).
    pub device: DeviceId,
    /// Its peer listener.
    pub addr: SocketAddr,
}

/// Where peers are. Implementations: [`ExplicitPeers`] (addresses the app passes in),
/// [`mdns::MdnsDiscovery`] (the LAN); a mobile platform's nearby-devices API can supply others.
/// What a discovery returns is only where to dial: the peer link still checks the device key.
pub trait Discovery: Send + Sync + fmt::Debug {
    /// The peers known now.
    fn peers(&self) -> Vec<PeerAddr>;
}

/// Peers the app names (a QR code, a manual entry).
#[derive(Debug, Default)]
pub struct ExplicitPeers {
    peers: Mutex<Vec<PeerAddr>>,
}

impl ExplicitPeers {
    /// Adds (or moves) a peer.
    pub fn add(&self, peer: PeerAddr) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.retain(|p| p.device != peer.device);
        peers.push(peer);
    }
}

impl Discovery for ExplicitPeers {
    fn peers(&self) -> Vec<PeerAddr> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What one session with a peer brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerReport {
    /// The peer device.
    pub peer: DeviceId,
    /// Events it sent (duplicates of what this device held included).
    pub received: u64,
}

/// Peer requests to the driver.
#[derive(Debug)]
pub(crate) enum PeerCommand {
    Identity(crate::Reply<PeerIdentity>),
    Admitted(crate::Reply<Vec<DeviceId>>),
    Start(DeviceId, crate::Reply<(PeerSession, Vec<PeerFrame>)>),
    Frame(
        Box<PeerSession>,
        PeerFrame,
        crate::Reply<(PeerSession, Vec<PeerFrame>)>,
    ),
    /// A peer's fetch of groups `(first, n)` of a blob named for a conversation, and what
    /// this device holds of it: the groups to serve, or the refusal.
    BlobFetch(
        DeviceId,
        ConversationId,
        (u64, u64),
        Option<HeldBlob>,
        crate::Reply<Result<std::ops::Range<u64>, BlobRefusal>>,
    ),
}

/// The driver's side: runs a peer command on the core.
pub(crate) fn handle(core: &mut DeviceCore, cmd: PeerCommand, now_ms: u64) {
    match cmd {
        PeerCommand::Identity(r) => {
            let identity = PeerIdentity::new(core.store().key())
                .map_err(|e| ReplicaError::Network(e.to_string()));
            let _ = r.send(identity);
        }
        PeerCommand::Admitted(r) => {
            let admitted = admitted_peers(core)
                .map(|s| s.into_iter().collect())
                .map_err(ReplicaError::from);
            let _ = r.send(admitted);
        }
        PeerCommand::Start(peer, r) => {
            let started = PeerSession::new(core, peer).map(|mut s| {
                let out = drain(&mut s);
                (s, out)
            });
            let _ = r.send(started.map_err(ReplicaError::from));
        }
        PeerCommand::BlobFetch(peer, conversation, groups, held, r) => {
            let judged = judge_blob_fetch(core, peer, conversation, groups, held.as_ref());
            let _ = r.send(judged.map_err(ReplicaError::from));
        }
        PeerCommand::Frame(mut session, frame, r) => {
            let handled = session.handle_frame(core, frame, now_ms).map(|()| {
                let out = drain(&mut session);
                (*session, out)
            });
            let _ = r.send(handled.map_err(ReplicaError::from));
        }
    }
}

fn drain(session: &mut PeerSession) -> Vec<PeerFrame> {
    std::iter::from_fn(|| session.poll_transmit()).collect()
}

/// This device's peer endpoint: it listens for peers and dials them. Dropping it stops the
/// listener.
#[derive(Debug)]
pub struct PeerLink {
    endpoint: quinn::Endpoint,
    config: PeerConfig,
    allow: Arc<PeerAllowList>,
    replica: Replica,
    listener: JoinHandle<()>,
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        self.replica.media.peers.set_config(None);
        self.listener.abort();
        self.endpoint.close(0u32.into(), b"peer link closed");
    }
}

impl Replica {
    async fn peer_call<T>(
        &self,
        make: impl FnOnce(crate::Reply<T>) -> PeerCommand,
    ) -> Result<T, ReplicaError> {
        self.call(|r| Command::Peer(make(r))).await
    }

    /// Opens this device's peer endpoint on `bind` (for example `0.0.0.0:0`; its address is
    /// [`PeerLink::local_addr`], what the app shows in its QR code). It accepts devices that
    /// prove a key this device admits: certified, unrevoked devices of users who share a
    /// conversation with it.
    pub async fn peer_link(&self, bind: SocketAddr) -> Result<PeerLink, ReplicaError> {
        let identity = self.peer_call(PeerCommand::Identity).await?;
        let allow = Arc::new(PeerAllowList::default());
        allow.set(self.peer_call(PeerCommand::Admitted).await?);
        let config = PeerConfig::new(identity, allow.clone());
        let net = |e: &dyn fmt::Display| ReplicaError::Network(e.to_string());
        let server = config.listen().map_err(|e| net(&e))?;
        let (socket, _) = udp_socket(bind, PEER_UDP_BUFFER_BYTES).map_err(|e| net(&e))?;
        let endpoint = endpoint(socket, Some(server)).map_err(|e| net(&e))?;
        let listener = tokio::spawn(listen(endpoint.clone(), self.clone(), allow.clone()));
        self.media.peers.set_config(Some(config.clone()));
        Ok(PeerLink {
            endpoint,
            config,
            allow,
            replica: self.clone(),
            listener,
        })
    }
}

impl PeerLink {
    /// The address peers dial.
    pub fn local_addr(&self) -> Result<SocketAddr, ReplicaError> {
        self.endpoint
            .local_addr()
            .map_err(|e| ReplicaError::Network(e.to_string()))
    }

    /// Dials `peer` and reconciles with it: each side gets what the other holds and it
    /// misses, admitted as if it came from the relay.
    pub async fn sync(&self, peer: PeerAddr) -> Result<PeerReport, ReplicaError> {
        sync_once(&self.replica, &self.config, &self.allow, peer).await
    }

    /// [`PeerLink::sync`] with every peer `discovery` knows now, one after the other.
    pub async fn sync_all(
        &self,
        discovery: &dyn Discovery,
    ) -> Vec<(PeerAddr, Result<PeerReport, ReplicaError>)> {
        let mut out = Vec::new();
        for peer in discovery.peers() {
            out.push((peer, self.sync(peer).await));
        }
        out
    }
}

/// Dials `peer` and runs one session ([`PeerLink::sync`]).
async fn sync_once(
    replica: &Replica,
    config: &PeerConfig,
    allow: &PeerAllowList,
    peer: PeerAddr,
) -> Result<PeerReport, ReplicaError> {
    let net = |e: &dyn fmt::Display| ReplicaError::Network(e.to_string());
    allow.set(replica.peer_call(PeerCommand::Admitted).await?);
    let dial = config.dial(peer.device).map_err(|e| net(&e))?;
    let endpoint = client_endpoint(peer.addr, dial).map_err(|e| net(&e))?;
    let conn = endpoint
        .connect(peer.addr, PEER_SERVER_NAME)
        .map_err(|e| net(&e))?
        .await
        .map_err(|e| net(&e))?;
    let (send, recv) = conn.open_bi().await.map_err(|e| net(&e))?;
    let report = session(replica, peer.device, send, recv).await;
    conn.close(0u32.into(), b"synced");
    endpoint.wait_idle().await;
    if report.is_ok() {
        // It answered: a source of blobs for downloads from now on.
        replica.media.peers.note(peer);
    }
    report
}

/// Accepts peers until the link is dropped, at most [`MAX_PEER_SESSIONS`] at once.
async fn listen(endpoint: quinn::Endpoint, replica: Replica, allow: Arc<PeerAllowList>) {
    let sessions = Arc::new(tokio::sync::Semaphore::new(MAX_PEER_SESSIONS));
    let mut refresh = tokio::time::interval(PEER_ADMIT_REFRESH);
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => return,
            },
            _ = refresh.tick() => {
                match replica.peer_call(PeerCommand::Admitted).await {
                    Ok(admitted) => allow.set(admitted),
                    Err(ReplicaError::Closed) => return,
                    Err(e) => tracing::warn!(error = %e, "peer admission list not refreshed"),
                }
                continue;
            }
        };
        let Ok(permit) = sessions.clone().acquire_owned().await else {
            return;
        };
        let replica = replica.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let result = async {
                let conn = incoming
                    .await
                    .map_err(|e| ReplicaError::Network(e.to_string()))?;
                let peer = peer_device(&conn)
                    .ok_or_else(|| ReplicaError::Network("a peer without a device key".into()))?;
                if is_blob_link(&conn) {
                    blobs::serve_link(replica, peer, conn).await;
                    return Ok(None);
                }
                let (send, recv) = conn
                    .accept_bi()
                    .await
                    .map_err(|e| ReplicaError::Network(e.to_string()))?;
                let report = session(&replica, peer, send, recv).await;
                conn.close(0u32.into(), b"synced");
                report.map(Some)
            }
            .await;
            match result {
                Ok(None) => {}
                Ok(Some(r)) => tracing::info!(peer = %r.peer, received = r.received, "peer synced"),
                Err(e) => tracing::info!(error = %e, "peer session failed"),
            }
        });
    }
}

/// One session on an open stream: Hello out, then frames in and the core's answers out,
/// until both sides sent everything; then the stream's end both ways. Reading and writing run
/// in tasks of their own: both sides may have much to send at once, and a side that stopped
/// reading while it writes would wait for the other forever.
async fn session(
    replica: &Replica,
    peer: DeviceId,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<PeerReport, ReplicaError> {
    let (frames_tx, mut frames) = mpsc::channel(PEER_READ_AHEAD);
    let reader = AbortOnDrop(tokio::spawn(read_frames(
        FrameReader::new(recv, MAX_FRAME_LEN),
        frames_tx,
    )));
    let (out, batches) = mpsc::channel(PEER_WRITE_BATCHES);
    let mut writer = AbortOnDrop(tokio::spawn(write_frames(FrameWriter::new(send), batches)));
    let closed = || ReplicaError::Network("the peer link closed".into());
    let (mut state, first) = replica.peer_call(|r| PeerCommand::Start(peer, r)).await?;
    out.send(first).await.map_err(|_| closed())?;
    while !state.is_done() {
        let frame = tokio::time::timeout(PEER_FRAME_TIMEOUT, frames.recv())
            .await
            .map_err(|_| ReplicaError::Network("the peer went silent".into()))?
            .ok_or_else(closed)??;
        let (next, batch) = replica
            .peer_call(|r| PeerCommand::Frame(Box::new(state), frame, r))
            .await?;
        state = next;
        out.send(batch).await.map_err(|_| closed())?;
    }
    drop(out);
    // Everything written and the stream finished; then the other side's end, which it sends
    // once it has everything too (closing earlier could drop frames still in flight).
    let written = tokio::time::timeout(PEER_FRAME_TIMEOUT, writer.handle_mut())
        .await
        .map_err(|_| ReplicaError::Network("the peer stopped reading".into()))?;
    written.map_err(|_| closed())??;
    let _ = tokio::time::timeout(PEER_FRAME_TIMEOUT, frames.recv()).await;
    drop(reader);
    Ok(PeerReport {
        peer,
        received: state.n_received(),
    })
}

/// A task stopped when its handle goes.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    fn handle_mut(&mut self) -> &mut JoinHandle<T> {
        &mut self.0
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn read_frames(mut reader: FrameReader, tx: mpsc::Sender<Result<PeerFrame, ReplicaError>>) {
    loop {
        let next = match reader.read_frame::<PeerFrame>().await {
            Ok(Some(f)) => Ok(f),
            Ok(None) => return,
            Err(e) => Err(ReplicaError::Network(e.to_string())),
        };
        let stop = next.is_err();
        if tx.send(next).await.is_err() || stop {
            return;
        }
    }
}

async fn write_frames(
    mut writer: FrameWriter,
    mut batches: mpsc::Receiver<Vec<PeerFrame>>,
) -> Result<(), ReplicaError> {
    let net = |e: &dyn fmt::Display| ReplicaError::Network(e.to_string());
    while let Some(batch) = batches.recv().await {
        for f in &batch {
            writer.queue(f).map_err(|e| net(&e))?;
        }
        writer.flush().await.map_err(|e| net(&e))?;
    }
    writer.get_mut().finish().map_err(|e| net(&e))
}
