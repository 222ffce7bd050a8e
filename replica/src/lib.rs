//! # tidings-replica
//!
//! The device library app developers embed. Tap send, and the message is on disk and on screen
//! at once; it leaves when the network comes back; ticks follow as the relay and the other
//! devices confirm it.
//!
//! ```no_run
//! # async fn demo(pin: &str, conversation: tidings_replica::ConversationId)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use futures_util::StreamExt;
//! use tidings_replica::{keystore::Keys, Replica};
//! let keys = Keys::load("data/alice", None)?; // made once by `Keys::create`
//! let replica = Replica::builder("data/alice")
//!     .relay(["127.0.0.1:4433".parse()?], pin.parse()?) // the relay's `pin:` line
//!     .keys(keys)
//!     .open()
//!     .await?;
//! let mut updates = replica.updates();
//! let message = replica.send(conversation, b"Just took off".to_vec()).await?; // PENDING, durable
//! while let Some(update) = updates.next().await {
//!     println!("{update:?}"); // StatusChanged … Sent, Delivered, Read
//! }
//! replica.close().await?;
//! # let _ = message; Ok(()) }
//! ```
//!
//! # Layout
//! - [`Replica`]: the handle. App actions, and reads that need the conversation's document,
//!   are answered by the driver task; [`Replica::page`], [`Replica::message`] and
//!   [`Replica::conversations`] read the index tables directly, beside it.
//! - `driver`: the one task that owns the device's [`tidings_engine::DeviceCore`] and its QUIC
//!   connection, and moves frames, time and commands into the core.
//! - [`peers`]: peer links ([`Replica::peer_link`]): reconciling with other devices directly,
//!   without the relay, at addresses the app passes in or a [`peers::Discovery`] finds.
//! - [`link`]: linking a new device of the user with a one-time code
//!   ([`Replica::link_device`] on the existing device, [`link::join`] on the new one).
//! - [`ReplicaBuilder`] (`builder`): the relay ([`RelayPin`]), keys ([`keystore::Keys`]),
//!   [`Profile`], [`Connectivity`] and [`Clock`], with documented defaults.
//! - `connectivity`: the operating system's network signal ([`Connectivity::Os`]).
//! - `media`: photos and videos apart from their messages: [`Replica::send_media`], the
//!   persistent upload queue and its worker, downloads on demand.
//! - [`ConnectionStatus`] (`status`): the connection's state and why it last failed.
//!
//! Architecture invariant: no protocol decision is made here. The core decides what to send,
//! when to retry and what to pull; this crate only carries bytes and time.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod builder;
mod connectivity;
mod driver;
pub mod keystore;
pub mod link;
mod media;
pub mod peers;
mod retention;
mod status;
mod updates;

pub use builder::{Clock, Connectivity, PinError, Profile, RelayPin, ReplicaBuilder, SystemClock};
pub use media::{
    JobKind, MediaDirection, MediaError, MediaSource, PrefetchPolicy, UploadJob,
    DOWNLOAD_SYNC_INTERVAL, MAX_BLOB_PEERS, MAX_MEDIA_LEN, MAX_PREFETCH_QUEUE,
    PEER_BLOB_DIAL_TIMEOUT, PRECHECK_TIMEOUT, PREFETCH_MAX_ATTEMPTS, PREFETCH_RETRY_BASE,
    PREFETCH_RETRY_MAX, UPLOAD_WINDOW,
};
pub use status::{ConnectionProblem, ConnectionStatus};
pub use tidings_engine::media::{BlobDescriptor, MediaBody};
pub use tidings_transport::{Fingerprint, FingerprintError};
pub use updates::{Update, Updates};

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;
use tidings_engine::conversation::RecipientView;
pub use tidings_engine::history::HistoryPolicy;
use tidings_engine::log::ConversationMeta;
pub use tidings_engine::log::{PageCursor, MAX_PAGE_LEN};
use tidings_engine::store::MessageReader;
pub use tidings_engine::store::{Body, Rendered};
use tidings_engine::wire::ErrorCode;
pub use tidings_engine::wire::Invitation;
pub use tidings_engine::{
    Change, ConnectionState, ConversationId, DeviceConfig, DeviceId, DeviceKey, EventId,
    FailedMessage, MediaRef, MessageId, MessageView, OutboxEntry, RetryPolicy, ServerSeq, Status,
    UserId,
};
pub use tidings_engine::{ErasureReason, RetentionPolicy};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Commands queued to the driver at most; `send` waits when the driver is this far behind.
pub const COMMAND_QUEUE: usize = 1024;
/// Updates buffered per subscriber before the slowest one is told it lagged.
pub const UPDATE_BUFFER: usize = 16 * 1024;

/// Where the relay is and how to trust it, and the device's protocol settings.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// The relay's UDP address.
    pub relay_addr: SocketAddr,
    /// More addresses of the same relay, dialed in turn after `relay_addr` when a dial fails.
    pub fallback_addrs: Vec<SocketAddr>,
    /// The relay's key (it signs the acks this device trusts).
    pub relay_key: DeviceId,
    /// SHA-256 of the relay's certificate (DER), as `tidings-relay` prints it.
    pub relay_cert_sha256: Fingerprint,
    /// Name sent in the TLS handshake (the pin decides trust, not the name).
    pub server_name: String,
    /// Keepalive interval: a dead path is noticed within `idle_timeout`.
    pub keepalive: Duration,
    /// Connection idle timeout.
    pub idle_timeout: Duration,
    /// The profile `keepalive` and `idle_timeout` came from: once a relay says how long it keeps
    /// a silent connection, the next connections use [`Profile::timing_for_relay`].
    pub profile: Profile,
    /// Outbox, retry, reconnect and catch-up settings.
    pub device: DeviceConfig,
    /// The key that seals what the store keeps at rest (epoch keys); by default derived
    /// from the device key. Pass [`keystore::DeviceSecrets::storage_key`] when the device's
    /// secrets come from the key store.
    pub storage_key: Option<tidings_engine::crypto::StorageKey>,
    /// Where network changes come from. [`Connectivity::App`] here (the app, or the test,
    /// calls [`Replica::network_changed`]); the builder's default is [`Connectivity::Os`].
    pub connectivity: Connectivity,
    /// The clock the device stamps events and runs timers by.
    pub clock: Arc<dyn Clock>,
    /// Bytes of the log's page cache (default [`tidings_engine::log::LOG_CACHE_BYTES`]): the
    /// most of the device's memory that grows with what it reads and writes.
    pub log_cache_bytes: usize,
}

impl ReplicaConfig {
    /// Defaults for a relay at `relay_addr` with the given key and certificate fingerprint:
    /// [`Profile::Desktop`] (keepalive every 1 s, a dead path noticed within 5 s), the system
    /// clock, connectivity from the app. [`Replica::builder`] is the common path.
    pub fn new(
        relay_addr: SocketAddr,
        relay_key: DeviceId,
        relay_cert_sha256: impl Into<Fingerprint>,
    ) -> Self {
        ReplicaConfig {
            relay_addr,
            fallback_addrs: Vec::new(),
            relay_key,
            relay_cert_sha256: relay_cert_sha256.into(),
            server_name: "tidings-relay".into(),
            keepalive: Profile::Desktop.keepalive(),
            idle_timeout: Profile::Desktop.idle_timeout(),
            profile: Profile::Desktop,
            device: DeviceConfig::default(),
            storage_key: None,
            connectivity: Connectivity::App,
            clock: Arc::new(SystemClock),
            log_cache_bytes: tidings_engine::log::LOG_CACHE_BYTES,
        }
    }
}

/// The longest message body [`Replica::send`] takes, in bytes: the plaintext limit, after the
/// end-to-end encryption's overhead is taken from the wire limit of a body.
pub const MAX_BODY_LEN: usize = tidings_engine::e2ee::MAX_PLAINTEXT_LEN;

/// Why a replica call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The conversation is not known on this device: never created here, or its invitation
    /// not accepted yet.
    #[error("conversation {0} is not known on this device")]
    UnknownConversation(ConversationId),
    /// Another replica (in this process or another) has the data directory open.
    #[error("the data directory {} is already open", path.display())]
    AlreadyOpen {
        /// The database file.
        path: std::path::PathBuf,
    },
    /// A file or directory of the replica could not be used.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] tidings_engine::StoreError),
    /// The device core refused.
    #[error(transparent)]
    Device(#[from] tidings_engine::DeviceError),
    /// The replica was closed.
    #[error("the replica is closed")]
    Closed,
    /// A peer session failed or the peer was refused.
    #[error(transparent)]
    Peer(#[from] tidings_engine::peer::PeerError),
    /// The QUIC endpoint could not be set up.
    #[error("network setup failed: {0}")]
    Network(String),
    /// A body over [`MAX_BODY_LEN`].
    #[error("message body too large: {len} bytes, the limit is {max}")]
    BodyTooLarge {
        /// The body's length in bytes.
        len: usize,
        /// [`MAX_BODY_LEN`].
        max: usize,
    },
    /// The OS random number generator failed (the store is seeded from it at every open).
    #[error("the OS random number generator failed: {0}")]
    Random(String),
    /// [`ReplicaBuilder::open`] without a setting it needs.
    #[error("the replica builder needs {0}")]
    Missing(&'static str),
    /// [`Replica::wait_for`]: the message turned FAILED (the outbox gave up; [`Replica::retry`]
    /// tries again).
    #[error("message {0} failed to send")]
    MessageFailed(MessageId),
    /// The relay refused a request: a link deposit ([`Replica::link_device`]) or a revocation
    /// ([`Replica::revoke_device`]).
    #[error("the relay refused: {reason} ({code})")]
    Refused {
        /// The relay's code.
        code: ErrorCode,
        /// The relay's words.
        reason: String,
    },
    /// Making a link bundle failed (too large, say).
    #[error(transparent)]
    Link(#[from] link::LinkJoinError),
    /// A media operation failed ([`Replica::send_media`], [`Replica::download_media`]...).
    #[error(transparent)]
    Media(#[from] MediaError),
}

/// One device of a user, as this device's directory holds it ([`Replica::device_list`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceEntry {
    /// The device.
    pub id: DeviceId,
    /// Whether its user revoked it.
    pub revoked: bool,
}

/// One conversation as the UI shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationSnapshot {
    /// Conversation.
    pub id: ConversationId,
    /// Members, once known.
    pub members: Option<Vec<UserId>>,
    /// Messages in view order, each with its status and its body (decrypted, or waiting for
    /// its key, asked for already, or unreadable).
    pub messages: Vec<Rendered>,
    /// Messages from others not read on any device of this user.
    pub unread: usize,
}

/// One line of the conversation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationSummary {
    /// Conversation.
    pub id: ConversationId,
    /// Members, once known.
    pub members: Option<Vec<UserId>>,
    /// The last message in view order.
    pub last: Option<MessageView>,
    /// Unread messages.
    pub unread: usize,
}

/// The conversation list, from the index tables.
fn summaries(
    reader: &MessageReader,
    user: UserId,
) -> Result<Vec<ConversationSummary>, tidings_engine::StoreError> {
    let log = reader.log();
    let mut out = Vec::new();
    for (id, meta) in log.conversations()? {
        let last = log.page(id, None, 1)?.pop();
        let unread = log.unread_count(id, user)?;
        out.push(ConversationSummary::new(id, meta, last, unread));
    }
    Ok(out)
}

impl ConversationSummary {
    fn new(
        id: ConversationId,
        meta: ConversationMeta,
        last: Option<MessageView>,
        unread: usize,
    ) -> Self {
        ConversationSummary {
            id,
            members: meta.members.map(|(_, m)| m),
            last,
            unread,
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, ReplicaError>>;

#[derive(Debug)]
enum Command {
    Create(ConversationId, Vec<UserId>, Reply<()>),
    AddMember(ConversationId, UserId, bool, Reply<()>),
    RemoveMember(ConversationId, UserId, Reply<()>),
    SetRetention(ConversationId, RetentionPolicy, Reply<()>),
    Send(ConversationId, Vec<u8>, Vec<MediaRef>, Reply<MessageId>),
    SendMedia(ConversationId, MediaBody, Reply<MessageId>),
    MarkRead(ConversationId, Option<ServerSeq>, Reply<()>),
    Retry(MessageId, Reply<()>),
    FailedMessages(Duration, Reply<Vec<FailedMessage>>),
    DiscardFailed(Vec<MessageId>, Reply<Vec<FailedMessage>>),
    NetworkChanged(bool, Reply<()>),
    Conversation(ConversationId, Reply<ConversationSnapshot>),
    Recipients(ConversationId, MessageId, Reply<Vec<RecipientView>>),
    Outbox(Reply<Vec<OutboxEntry>>),
    Connection(Reply<ConnectionStatus>),
    User(UserAction, Reply<()>),
    Invitations(Reply<Vec<Invitation>>),
    Blocked(Reply<Vec<UserId>>),
    Devices(UserId, Reply<Vec<DeviceId>>),
    DeviceList(UserId, Reply<Vec<DeviceEntry>>),
    LinkDevice(tidings_engine::link::LinkSlot, Vec<u8>, Reply<u64>),
    Revoke(tidings_engine::wire::DeviceRevocation, Reply<()>),
    Peer(peers::PeerCommand),
    Close(Reply<()>),
}

/// The user's say in an invitation or about another user.
#[derive(Clone, Copy, Debug)]
enum UserAction {
    Accept(ConversationId),
    Decline(ConversationId),
    Block(UserId),
    Unblock(UserId),
}

/// The reader of the index tables, owned by the driver. Handles hold it weakly: the reader
/// (and the database file it keeps open) goes with the driver, whether the driver closes or
/// its runtime drops it, however many handles the app keeps. `close` also empties it after
/// the reads under way ended, so the file is released when `close` returns.
pub(crate) type ReadSlot = Arc<RwLock<Option<MessageReader>>>;

/// A device's handle. Cheap to clone; every clone talks to the same driver task.
#[derive(Clone, Debug)]
pub struct Replica {
    commands: mpsc::Sender<Command>,
    /// Weak: the driver holds the only sender, so every stream ends when it stops.
    updates: broadcast::WeakSender<Update>,
    reads: Weak<RwLock<Option<MessageReader>>>,
    device: DeviceId,
    user: UserId,
    /// [`ReplicaBuilder::read_receipts`]: off, others' READ shows as DELIVERED.
    read_receipts: bool,
    /// The media directory, the upload queue's worker and the driver's connection.
    media: Arc<media::MediaShared>,
}

/// By WhatsApp's rule, a user who sends no read receipts sees none: READ shows as DELIVERED.
pub(crate) fn as_shown(mut r: Rendered, read_receipts: bool) -> Rendered {
    r.view.status = status_shown(r.view.status, read_receipts);
    r
}

/// [`as_shown`] for a bare status.
pub(crate) fn status_shown(s: Status, read_receipts: bool) -> Status {
    if !read_receipts && s == Status::Read {
        Status::Delivered
    } else {
        s
    }
}

impl Replica {
    /// Starts opening the device's store in `dir` (created if needed): give it the relay and
    /// the keys, then [`ReplicaBuilder::open`].
    pub fn builder(dir: impl Into<std::path::PathBuf>) -> ReplicaBuilder {
        ReplicaBuilder::new(dir.into())
    }

    /// Opens (or creates) the device's store in `dir` with every setting spelled out, and
    /// starts its driver task, which connects to the relay in the background. Must be called
    /// inside a tokio runtime. [`Replica::builder`] is the common path.
    pub async fn open(
        dir: impl AsRef<Path>,
        key: DeviceKey,
        config: ReplicaConfig,
    ) -> Result<Replica, ReplicaError> {
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let (updates, _) = broadcast::channel(UPDATE_BUFFER);
        let device = key.device();
        let user = key.user();
        let weak = updates.downgrade();
        let os_signal = config.connectivity == Connectivity::Os;
        let read_receipts = config.device.read_receipts;
        let (link_tx, link_rx) = tokio::sync::watch::channel(None);
        let reads = driver::start(dir.as_ref(), key, config, rx, updates, link_tx).await?;
        let media = media::MediaShared::new(dir.as_ref(), link_rx, weak.clone())?;
        if os_signal {
            connectivity::watch(commands.downgrade());
        }
        Ok(Replica {
            commands,
            updates: weak,
            reads: Arc::downgrade(&reads),
            device,
            user,
            read_receipts,
            media,
        })
    }

    /// This device.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// This device's user.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// Updates from now on, as a [`futures_core::Stream`]. It ends when the replica closes (at
    /// once if it is closed already).
    pub fn updates(&self) -> Updates {
        let rx = match self.updates.upgrade() {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        };
        Updates::new(rx)
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ReplicaError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| ReplicaError::Closed)?;
        rx.await.map_err(|_| ReplicaError::Closed)?
    }

    /// Creates a conversation with `members` (this user is added).
    pub async fn create_conversation(
        &self,
        conversation: ConversationId,
        members: Vec<UserId>,
    ) -> Result<(), ReplicaError> {
        self.call(|r| Command::Create(conversation, members, r))
            .await
    }

    /// Adds `user` to a conversation (this user must be an admin of it). The next message
    /// starts a new key epoch that includes the new member's devices (and only messages from
    /// then on are readable to them).
    pub async fn add_member(
        &self,
        conversation: ConversationId,
        user: UserId,
        admin: bool,
    ) -> Result<(), ReplicaError> {
        self.call(|r| Command::AddMember(conversation, user, admin, r))
            .await
    }

    /// Removes `user` from a conversation (an admin's act, or leaving it with this user's
    /// id). The next message starts a new key epoch without the removed user's devices.
    pub async fn remove_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<(), ReplicaError> {
        self.call(|r| Command::RemoveMember(conversation, user, r))
            .await
    }

    /// Sends a message. The body is encrypted end to end under the conversation's key before
    /// anything is stored. Returns once it is durably in the local log and outbox and shows
    /// as PENDING, whether or not the relay is reachable. Sends queued at once (from several
    /// tasks, or clones of this handle) share one durable commit: each returns when the
    /// commit holding its message is on disk.
    pub async fn send(
        &self,
        conversation: ConversationId,
        body: Vec<u8>,
    ) -> Result<MessageId, ReplicaError> {
        self.send_with_media(conversation, body, Vec::new()).await
    }

    /// Sends a message that references media blobs.
    pub async fn send_with_media(
        &self,
        conversation: ConversationId,
        body: Vec<u8>,
        media: Vec<MediaRef>,
    ) -> Result<MessageId, ReplicaError> {
        let max = MAX_BODY_LEN;
        if body.len() > max {
            return Err(ReplicaError::BodyTooLarge {
                len: body.len(),
                max,
            });
        }
        self.call(|r| Command::Send(conversation, body, media, r))
            .await
    }

    /// Marks the conversation read on this device up to `up_to` (default: everything it holds),
    /// never past a message that has not arrived yet (a receipt is a watermark). Every device of
    /// this user then shows it read.
    pub async fn mark_read(
        &self,
        conversation: ConversationId,
        up_to: Option<ServerSeq>,
    ) -> Result<(), ReplicaError> {
        self.call(|r| Command::MarkRead(conversation, up_to, r))
            .await
    }

    /// Tries a FAILED message again.
    pub async fn retry(&self, message: MessageId) -> Result<(), ReplicaError> {
        self.call(|r| Command::Retry(message, r)).await
    }

    /// The messages that have been FAILED for at least `older_than` (all of them for zero), in
    /// send order. They stay FAILED until retried or discarded: nothing drops them on its own.
    pub async fn failed_messages(
        &self,
        older_than: Duration,
    ) -> Result<Vec<FailedMessage>, ReplicaError> {
        self.call(|r| Command::FailedMessages(older_than, r)).await
    }

    /// Drops FAILED messages for good (outbox, indexes, documents; one durable commit) and
    /// returns them. Every id must name a FAILED message, or nothing is dropped
    /// ([`tidings_engine::StoreError::NotInOutbox`], [`tidings_engine::StoreError::NotFailed`]).
    pub async fn discard_failed(
        &self,
        messages: Vec<MessageId>,
    ) -> Result<Vec<FailedMessage>, ReplicaError> {
        self.call(|r| Command::DiscardFailed(messages, r)).await
    }

    /// The operating system's connectivity signal. `true` retries at once.
    pub async fn network_changed(&self, online: bool) -> Result<(), ReplicaError> {
        self.call(|r| Command::NetworkChanged(online, r)).await
    }

    /// Runs `f` on the index reader on a blocking thread, beside the driver: the read sees
    /// the last commit and waits for neither the driver's work nor its command queue.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&MessageReader) -> Result<T, tidings_engine::StoreError> + Send + 'static,
    ) -> Result<T, ReplicaError> {
        let slot = self.reads.clone();
        let run = move || {
            let slot = slot.upgrade().ok_or(ReplicaError::Closed)?;
            let guard = slot.read().unwrap_or_else(|e| e.into_inner());
            let reader = guard.as_ref().ok_or(ReplicaError::Closed)?;
            f(reader).map_err(ReplicaError::from)
        };
        tokio::task::spawn_blocking(run)
            .await
            .map_err(|_| ReplicaError::Closed)?
    }

    /// Up to `n` messages (at most [`MAX_PAGE_LEN`]) of a conversation just before `before`
    /// in view order, the latest ones for `None`, with their bodies: what a screen shows.
    /// Pass [`PageCursor::of`] the first message's view to scroll back. Read from the index
    /// tables (no document load), decrypting only what it returns, without waiting for the
    /// driver.
    pub async fn page(
        &self,
        conversation: ConversationId,
        before: Option<PageCursor>,
        n: usize,
    ) -> Result<Vec<Rendered>, ReplicaError> {
        let receipts = self.read_receipts;
        let page = self.read(move |r| r.page(conversation, before, n)).await?;
        Ok(page.into_iter().map(|r| as_shown(r, receipts)).collect())
    }

    /// One message with its body, if it is shown in the conversation; read like
    /// [`Replica::page`].
    pub async fn message(
        &self,
        conversation: ConversationId,
        message: MessageId,
    ) -> Result<Option<Rendered>, ReplicaError> {
        let receipts = self.read_receipts;
        let shown = self.read(move |r| r.message(conversation, message)).await?;
        Ok(shown.map(|r| as_shown(r, receipts)))
    }

    /// One conversation in full: every message in order with its status and body, members
    /// and unread count. This loads the conversation's document (its whole history), on the
    /// driver task: a screen of messages is [`Replica::page`].
    pub async fn conversation(
        &self,
        conversation: ConversationId,
    ) -> Result<ConversationSnapshot, ReplicaError> {
        let mut snapshot = self
            .call(|r| Command::Conversation(conversation, r))
            .await?;
        for m in &mut snapshot.messages {
            m.view.status = status_shown(m.view.status, self.read_receipts);
        }
        Ok(snapshot)
    }

    /// Per-recipient detail of a message.
    pub async fn recipients(
        &self,
        conversation: ConversationId,
        message: MessageId,
    ) -> Result<Vec<RecipientView>, ReplicaError> {
        self.call(|r| Command::Recipients(conversation, message, r))
            .await
    }

    /// The conversation list with last messages and unread counts, read from the index
    /// tables like [`Replica::page`].
    pub async fn conversations(&self) -> Result<Vec<ConversationSummary>, ReplicaError> {
        let user = self.user;
        self.read(move |r| summaries(r, user)).await
    }

    /// What waits to reach the relay, in order.
    pub async fn outbox(&self) -> Result<Vec<OutboxEntry>, ReplicaError> {
        self.call(Command::Outbox).await
    }

    /// Accepts an invitation (see [`Update::Invited`]) for every device of this user: the
    /// conversation is listed and pushed from then on. Sent when connected; confirmed by
    /// [`Update::Accepted`] once the relay stored it.
    pub async fn accept(&self, conversation: ConversationId) -> Result<(), ReplicaError> {
        self.call(|r| Command::User(UserAction::Accept(conversation), r))
            .await
    }

    /// Declines an invitation; confirmed by [`Update::Declined`].
    pub async fn decline(&self, conversation: ConversationId) -> Result<(), ReplicaError> {
        self.call(|r| Command::User(UserAction::Decline(conversation), r))
            .await
    }

    /// Blocks a user: its Creates and AddMembers listing this user are refused and its
    /// pending invitations declined; confirmed by [`Update::Blocked`].
    pub async fn block(&self, user: UserId) -> Result<(), ReplicaError> {
        self.call(|r| Command::User(UserAction::Block(user), r))
            .await
    }

    /// Unblocks a user; confirmed by [`Update::Unblocked`].
    pub async fn unblock(&self, user: UserId) -> Result<(), ReplicaError> {
        self.call(|r| Command::User(UserAction::Unblock(user), r))
            .await
    }

    /// Pending invitations, as the relay last told this device (empty before the first
    /// catch-up of this process).
    pub async fn invitations(&self) -> Result<Vec<Invitation>, ReplicaError> {
        self.call(Command::Invitations).await
    }

    /// Users this user blocks, as the relay last told this device.
    pub async fn blocked(&self) -> Result<Vec<UserId>, ReplicaError> {
        self.call(Command::Blocked).await
    }

    /// The devices of `user` this device holds certificates of (not revoked), in id order:
    /// what it has learned from the relay's directory, and itself when `user` is its own.
    pub async fn devices(&self, user: UserId) -> Result<Vec<DeviceId>, ReplicaError> {
        self.call(|r| Command::Devices(user, r)).await
    }

    /// Every device of `user` this device holds a certificate of, revoked ones included, in
    /// id order (and itself when `user` is its own).
    pub async fn device_list(&self, user: UserId) -> Result<Vec<DeviceEntry>, ReplicaError> {
        self.call(|r| Command::DeviceList(user, r)).await
    }

    /// Leaves `bundle` at the relay, sealed under a fresh one-time code, for a new device of
    /// this user ([`link::join`] takes it there): returns the code to show. Waits for the
    /// relay's answer (offline, until connected: bound it with a timeout). The relay keeps the
    /// bundle for its link TTL (ten minutes by default) or until taken once.
    pub async fn link_device(
        &self,
        bundle: &link::LinkBundle,
    ) -> Result<link::LinkInvite, ReplicaError> {
        use rand::TryRngCore;
        let mut secret = zeroize::Zeroizing::new([0u8; tidings_engine::link::LINK_SECRET_LEN]);
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng
            .try_fill_bytes(&mut secret[..])
            .and_then(|()| rand::rngs::OsRng.try_fill_bytes(&mut nonce))
            .map_err(|e| ReplicaError::Random(e.to_string()))?;
        let secret = tidings_engine::link::LinkSecret::from_bytes(*secret);
        let plain = bundle.encode()?;
        let sealed = secret
            .seal(&plain, nonce)
            .map_err(|e| ReplicaError::Link(e.into()))?;
        let slot = secret.slot();
        let expires_ms = self.call(|r| Command::LinkDevice(slot, sealed, r)).await?;
        Ok(link::LinkInvite {
            code: secret.code(),
            expires_ms,
        })
    }

    /// Revokes a device of this user with a revocation signed by the user's key
    /// ([`keystore::Keys::revocation`]). Returns once the relay stored it: the device is
    /// refused from then on, and this device no longer seals conversation keys to it (other
    /// devices stop when they next read the user's devices). Waits for the relay's answer
    /// (offline, until connected: bound it with a timeout).
    pub async fn revoke_device(
        &self,
        revocation: tidings_engine::wire::DeviceRevocation,
    ) -> Result<(), ReplicaError> {
        self.call(|r| Command::Revoke(revocation, r)).await
    }

    /// The connection state, and what went wrong with it if something did.
    pub async fn connection(&self) -> Result<ConnectionStatus, ReplicaError> {
        self.call(Command::Connection).await
    }

    /// Waits until `message` of `conversation` shows at least `status` (in the order
    /// PENDING < SENT < DELIVERED < READ) and returns it as shown. Fails with
    /// [`ReplicaError::MessageFailed`] if it turns FAILED first (unless FAILED is what was
    /// asked for), or [`ReplicaError::Closed`]. A message not shown yet (not arrived) is waited for.
    /// With read receipts off ([`ReplicaBuilder::read_receipts`]) READ is never shown: waiting
    /// for it waits until the replica closes.
    ///
    /// ```no_run
    /// # async fn demo(replica: tidings_replica::Replica, c: tidings_replica::ConversationId)
    /// # -> Result<(), tidings_replica::ReplicaError> {
    /// use tidings_replica::Status;
    /// let id = replica.send(c, b"hi".to_vec()).await?;
    /// let shown = replica.wait_for(c, id, Status::Read).await?;
    /// assert_eq!(shown.view.status, Status::Read);
    /// # Ok(()) }
    /// ```
    pub async fn wait_for(
        &self,
        conversation: ConversationId,
        message: MessageId,
        status: Status,
    ) -> Result<Rendered, ReplicaError> {
        use futures_util::StreamExt;
        let reached = |r: &Rendered| {
            if status == Status::Failed {
                r.view.status == Status::Failed
            } else {
                r.view.status != Status::Failed && r.view.status.rank() >= status.rank()
            }
        };
        // Subscribed before the first read, so no change falls between the two.
        let mut updates = self.updates();
        loop {
            if let Some(shown) = self.message(conversation, message).await? {
                if reached(&shown) {
                    return Ok(shown);
                }
                if shown.view.status == Status::Failed {
                    return Err(ReplicaError::MessageFailed(message));
                }
            }
            // Anything about the message (or a lag) is a reason to read it again.
            loop {
                match updates.next().await {
                    None => return Err(ReplicaError::Closed),
                    Some(Update::MessageAdded { message: m, .. })
                    | Some(Update::StatusChanged { message: m, .. })
                        if m == message =>
                    {
                        break
                    }
                    Some(Update::ConversationChanged { conversation: c }) if c == conversation => {
                        break
                    }
                    Some(Update::Lagged { .. }) => break,
                    Some(_) => {}
                }
            }
        }
    }

    /// Stops the driver: snapshots documents, closes the connection and releases the data
    /// directory (it can be opened again once this returns). Pending messages stay in the
    /// outbox and go out after the next `open`.
    pub async fn close(&self) -> Result<(), ReplicaError> {
        self.call(Command::Close).await
    }
}

/// docs/GUIDE.md, compiled: each of its examples is a doctest of this crate.
#[doc = include_str!("../../docs/GUIDE.md")]
#[cfg(doctest)]
pub struct GuideDoctests;
