//! # tidings-replica
//!
//! The device library app developers embed. Tap send, and the message is on disk and on screen
//! at once; it leaves when the network comes back; ticks follow as the relay and the other
//! devices confirm it.
//!
//! ```no_run
//! # async fn demo(dir: &std::path::Path, key: tidings_engine::DeviceKey, config: tidings_replica::ReplicaConfig,
//! #               conversation: tidings_engine::ConversationId) -> Result<(), tidings_replica::ReplicaError> {
//! let replica = tidings_replica::Replica::open(dir, key, config).await?;
//! let mut updates = replica.subscribe();
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
//! - [`pin`]: the QUIC client configuration pinned to the relay's certificate.
//!
//! Architecture invariant: no protocol decision is made here. The core decides what to send,
//! when to retry and what to pull; this crate only carries bytes and time.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod driver;
pub mod keystore;
pub mod pin;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;
use tidings_engine::conversation::RecipientView;
use tidings_engine::log::ConversationMeta;
pub use tidings_engine::log::{PageCursor, MAX_PAGE_LEN};
use tidings_engine::store::MessageReader;
pub use tidings_engine::store::{Body, Rendered};
use tidings_engine::wire::ErrorCode;
pub use tidings_engine::wire::Invitation;
pub use tidings_engine::{
    Change, ConnectionState, ConversationId, DeviceConfig, DeviceId, DeviceKey, EventId, MediaRef,
    MessageId, MessageView, OutboxEntry, RetryPolicy, ServerSeq, Status, UserId,
};
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
    /// The relay's key (it signs the acks this device trusts).
    pub relay_key: DeviceId,
    /// SHA-256 of the relay's certificate (DER), as `tidings-relay` prints it.
    pub relay_cert_sha256: [u8; 32],
    /// Name sent in the TLS handshake (the pin decides trust, not the name).
    pub server_name: String,
    /// Keepalive interval: a dead path is noticed within `idle_timeout`.
    pub keepalive: Duration,
    /// Connection idle timeout.
    pub idle_timeout: Duration,
    /// Outbox, retry, reconnect and catch-up settings.
    pub device: DeviceConfig,
    /// The key that seals what the store keeps at rest (epoch keys); by default derived
    /// from the device key. Pass [`keystore::DeviceSecrets::storage_key`] when the device's
    /// secrets come from the key store.
    pub storage_key: Option<tidings_engine::crypto::StorageKey>,
}

impl ReplicaConfig {
    /// Defaults for a relay at `relay_addr` with the given key and certificate fingerprint:
    /// keepalive every 1 s, a dead path noticed within 5 s.
    pub fn new(relay_addr: SocketAddr, relay_key: DeviceId, relay_cert_sha256: [u8; 32]) -> Self {
        ReplicaConfig {
            relay_addr,
            relay_key,
            relay_cert_sha256,
            server_name: "tidings-relay".into(),
            keepalive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            device: DeviceConfig::default(),
            storage_key: None,
        }
    }
}

/// Why a replica call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] tidings_engine::StoreError),
    /// The device core refused.
    #[error(transparent)]
    Device(#[from] tidings_engine::DeviceError),
    /// The replica was closed.
    #[error("the replica is closed")]
    Closed,
    /// The QUIC endpoint could not be set up.
    #[error("network setup failed: {0}")]
    Network(String),
    /// A body over the limit ([`tidings_engine::e2ee::MAX_PLAINTEXT_LEN`]).
    #[error("message body of {len} bytes is over the limit of {max}")]
    BodyTooLarge {
        /// Size.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The OS random number generator failed (the store is seeded from it at every open).
    #[error("the OS random number generator failed: {0}")]
    Random(String),
}

/// What a UI renders, pushed as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Update {
    /// A message appeared (sent here, or received).
    MessageAdded {
        /// Conversation.
        conversation: ConversationId,
        /// Message.
        message: MessageId,
        /// Its status.
        status: Status,
        /// The message as it is shown, read from the index after the fold: its view and its
        /// body (decrypted, or waiting for its key, or unreadable), so a UI renders it without
        /// reading the conversation again. `None` when nobody subscribed at the time, or the
        /// message was no longer listed when it was read (re-read the page then).
        rendered: Option<Box<Rendered>>,
    },
    /// A message's ticks moved.
    StatusChanged {
        /// Conversation.
        conversation: ConversationId,
        /// Message.
        message: MessageId,
        /// Before.
        from: Status,
        /// After.
        to: Status,
        /// The message as it is shown now (see [`Update::MessageAdded`]).
        rendered: Option<Box<Rendered>>,
    },
    /// Something else about a conversation changed (receipts, unread count, members).
    ConversationChanged {
        /// Conversation.
        conversation: ConversationId,
    },
    /// The connection moved.
    Connection(ConnectionState),
    /// Catch-up progress.
    SyncProgress {
        /// Conversation.
        conversation: ConversationId,
        /// Highest sequence held without gaps.
        received: ServerSeq,
        /// Highest sequence the relay announced.
        target: ServerSeq,
    },
    /// The relay refused something.
    Refused {
        /// The event, if an event was refused.
        event: Option<EventId>,
        /// Why.
        code: ErrorCode,
        /// Why, for people.
        reason: String,
    },
    /// A break in an author's chain of events: events withheld, dropped or reordered on the
    /// way (by the relay, say), or an author that signed two events for one place.
    Chain(tidings_engine::ChainIssue),
    /// An event the relay sequenced that this device refused on its own checks (a
    /// non-member's, a removed member's, a revoked or uncertified device's): not shown.
    Ignored(tidings_engine::store::RefusedEvent),
    /// A device certificate or revocation the relay served that this device refused (a
    /// changed agreement key, a revocation signed by another user than the device's): the
    /// directory keeps what it had.
    Directory(tidings_engine::directory::DirectoryRefusal),
    /// An epoch-key share that opened here but is not the key its epoch committed to (a wrong
    /// key from a member, or an opener that gave devices different keys): not kept; the key is
    /// asked for again.
    KeyShareRefused(tidings_engine::store::RefusedKeyShare),
    /// A member's removal this device holds, verified, that it cannot place in the
    /// conversation yet (the relay withholds a sequence before it): no new epoch key goes to
    /// that user's devices meanwhile.
    RemovalAhead(tidings_engine::store::RemovalEvidence),
    /// Another user put this user in a conversation (created it listing this user, or added
    /// it): nothing of it reaches this device until the user accepts ([`Replica::accept`]).
    Invited(Invitation),
    /// The user accepted the conversation, on this device or another: it catches up now.
    Accepted {
        /// Conversation.
        conversation: ConversationId,
    },
    /// The user declined the invitation, on this device or another.
    Declined {
        /// Conversation.
        conversation: ConversationId,
    },
    /// The user blocked `user`, on this device or another: its invitations are gone and new
    /// ones are refused.
    Blocked {
        /// The blocked user.
        user: UserId,
    },
    /// The user unblocked `user`.
    Unblocked {
        /// The user.
        user: UserId,
    },
    /// This subscriber fell behind and missed `missed` updates: re-read what is on screen.
    Lagged {
        /// Updates dropped for this subscriber.
        missed: u64,
    },
}

/// A stream of [`Update`]s.
#[derive(Debug)]
pub struct Updates {
    rx: broadcast::Receiver<Update>,
}

impl Updates {
    /// The next update; `None` once the replica is closed.
    pub async fn next(&mut self) -> Option<Update> {
        match self.rx.recv().await {
            Ok(u) => Some(u),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Update::Lagged { missed }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// One conversation as the UI shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationSnapshot {
    /// Conversation.
    pub id: ConversationId,
    /// Members, once known.
    pub members: Option<Vec<UserId>>,
    /// Messages in order with statuses.
    pub messages: Vec<MessageView>,
    /// The body of each message of `messages`, in the same order: decrypted, or waiting for
    /// its key (asked for already), or unreadable.
    pub bodies: Vec<Body>,
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
    Send(ConversationId, Vec<u8>, Vec<MediaRef>, Reply<MessageId>),
    MarkRead(ConversationId, Option<ServerSeq>, Reply<()>),
    Retry(MessageId, Reply<()>),
    NetworkChanged(bool, Reply<()>),
    Conversation(ConversationId, Reply<ConversationSnapshot>),
    Recipients(ConversationId, MessageId, Reply<Vec<RecipientView>>),
    Outbox(Reply<Vec<OutboxEntry>>),
    Connection(Reply<ConnectionState>),
    User(UserAction, Reply<()>),
    Invitations(Reply<Vec<Invitation>>),
    Blocked(Reply<Vec<UserId>>),
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
    updates: broadcast::Sender<Update>,
    reads: Weak<RwLock<Option<MessageReader>>>,
    device: DeviceId,
    user: UserId,
}

impl Replica {
    /// Opens (or creates) the device's store in `dir` and starts its driver task, which
    /// connects to the relay in the background. Must be called inside a tokio runtime.
    pub async fn open(
        dir: impl AsRef<Path>,
        key: DeviceKey,
        config: ReplicaConfig,
    ) -> Result<Replica, ReplicaError> {
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let (updates, _) = broadcast::channel(UPDATE_BUFFER);
        let device = key.device();
        let user = key.user();
        let reads = driver::start(dir.as_ref(), key, config, rx, updates.clone()).await?;
        Ok(Replica {
            commands,
            updates,
            reads: Arc::downgrade(&reads),
            device,
            user,
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

    /// Updates from now on.
    pub fn subscribe(&self) -> Updates {
        Updates {
            rx: self.updates.subscribe(),
        }
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
        let max = tidings_engine::e2ee::MAX_PLAINTEXT_LEN;
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
        self.read(move |r| r.page(conversation, before, n)).await
    }

    /// One message with its body, if it is shown in the conversation; read like
    /// [`Replica::page`].
    pub async fn message(
        &self,
        conversation: ConversationId,
        message: MessageId,
    ) -> Result<Option<Rendered>, ReplicaError> {
        self.read(move |r| r.message(conversation, message)).await
    }

    /// One conversation in full: every message in order with its status and body, members
    /// and unread count. This loads the conversation's document (its whole history), on the
    /// driver task: a screen of messages is [`Replica::page`].
    pub async fn conversation(
        &self,
        conversation: ConversationId,
    ) -> Result<ConversationSnapshot, ReplicaError> {
        self.call(|r| Command::Conversation(conversation, r)).await
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

    /// The connection state.
    pub async fn connection(&self) -> Result<ConnectionState, ReplicaError> {
        self.call(Command::Connection).await
    }

    /// Stops the driver: snapshots documents, closes the connection and releases the data
    /// directory (it can be opened again once this returns). Pending messages stay in the
    /// outbox and go out after the next `open`.
    pub async fn close(&self) -> Result<(), ReplicaError> {
        self.call(Command::Close).await
    }
}
