//! What the replica pushes to a UI: [`Update`]s, and the [`Updates`] stream of one
//! subscriber.

use super::*;

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
    /// A message's body was erased from this device (the conversation's retention policy, or
    /// this user's removal from it): drop it from the screen; it does not come back.
    MessageErased {
        /// Conversation.
        conversation: ConversationId,
        /// Message.
        message: MessageId,
        /// Why.
        reason: ErasureReason,
    },
    /// Something else about a conversation changed (receipts, unread count, members).
    ConversationChanged {
        /// Conversation.
        conversation: ConversationId,
    },
    /// The connection moved, or what went wrong with it changed.
    Connection(ConnectionStatus),
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
    /// The relay no longer holds `from..=to` of the conversation (its retention dropped it:
    /// every member device had confirmed it, or it outlived the relay's time-to-live) and
    /// this device never got it. What the relay kept of the range (membership changes, epoch
    /// openings) and everything after it arrives as usual; the messages of the range are gone.
    HistoryGap {
        /// Conversation.
        conversation: ConversationId,
        /// First sequence gone.
        from: ServerSeq,
        /// Last sequence gone.
        to: ServerSeq,
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
    /// Messages of one conversation FAILED for longer than
    /// [`ReplicaBuilder::failed_report_after`]: retry them or drop them
    /// ([`Replica::discard_failed`]). Reported once per failure (again after a restart).
    FailedExpired {
        /// Conversation.
        conversation: ConversationId,
        /// The messages, in send order.
        messages: Vec<FailedMessage>,
    },
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
    /// A blob transfer moved: `done` of `total` ciphertext bytes are held by the relay (an
    /// upload) or verified here (a download).
    MediaProgress {
        /// The blob.
        blob: tidings_engine::BlobId,
        /// Which way.
        direction: MediaDirection,
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// A received blob was prefetched ([`Replica::set_prefetch`]): its ciphertext is on this
    /// device, verified, and [`Replica::download_media`] opens it without the network.
    MediaReady {
        /// The conversation whose message references it.
        conversation: ConversationId,
        /// The blob.
        blob: tidings_engine::BlobId,
    },
    /// A queued upload (or forward) was given up: the relay refused it for good (over its
    /// cap or the quota, not a member) or its local file is gone. The message that
    /// references it stays; recipients cannot fetch the blob.
    MediaFailed {
        /// The conversation whose message references it.
        conversation: ConversationId,
        /// The blob.
        blob: tidings_engine::BlobId,
        /// Why, for people.
        reason: String,
    },
    /// History from another device of this user over a peer link (a new device receiving
    /// the user's past): events and epoch keys taken so far; `done` once the peer sent all.
    /// The device is usable meanwhile: what arrived is shown as it is folded.
    HistoryProgress {
        /// The device handing the history over.
        peer: DeviceId,
        /// Events received.
        events: u64,
        /// Epoch keys taken (conversation epochs readable now).
        keys: u64,
        /// The peer sent everything.
        done: bool,
    },
    /// This subscriber fell behind and missed `missed` updates: re-read what is on screen.
    Lagged {
        /// Updates dropped for this subscriber.
        missed: u64,
    },
}

/// The [`Update`]s of one subscriber, a [`futures_core::Stream`]: it ends when the replica
/// closes. A subscriber that falls more than [`UPDATE_BUFFER`] behind gets
/// [`Update::Lagged`] (never a silent drop) and should re-read what it shows.
pub struct Updates {
    inner: std::pin::Pin<Box<dyn futures_core::Stream<Item = Update> + Send>>,
}

impl std::fmt::Debug for Updates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updates").finish_non_exhaustive()
    }
}

impl Updates {
    pub(crate) fn new(rx: broadcast::Receiver<Update>) -> Updates {
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(u) => Some((u, rx)),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    Some((Update::Lagged { missed }, rx))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Updates {
            inner: Box::pin(stream),
        }
    }
}

impl futures_core::Stream for Updates {
    type Item = Update;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Update>> {
        self.inner.as_mut().poll_next(cx)
    }
}
