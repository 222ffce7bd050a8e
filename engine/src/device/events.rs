//! What a device core tells its shell: where the connection stands ([`ConnectionState`]) and
//! what the app should know about ([`DeviceEvent`]), drained with
//! [`super::DeviceCore::poll_event`].

use super::*;

/// Where the device's connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// No connection (network down, relay unreachable, or waiting to reconnect).
    Offline,
    /// Connected, proving the device's key.
    Authenticating,
    /// Authenticated; flushing the outbox and catching up.
    Syncing,
    /// Caught up; new events arrive as pushes.
    Online,
}

/// What the app should know about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceEvent {
    /// Visible changes to conversations.
    Changes(Vec<Change>),
    /// The connection moved.
    Connection(ConnectionState),
    /// Catch-up progress of a conversation.
    SyncProgress {
        /// Conversation.
        conversation: ConversationId,
        /// Highest sequence held without gaps.
        received: ServerSeq,
        /// Highest sequence the relay announced.
        target: ServerSeq,
    },
    /// The relay's retention dropped `from..=to` of the conversation before this device got
    /// it (every member device had confirmed it, or it outlived the relay's time-to-live):
    /// of that range, only what the relay kept (membership changes, epoch openings) arrives.
    /// The device goes on from what is left; reported once per answer.
    HistoryGap {
        /// Conversation.
        conversation: ConversationId,
        /// First sequence gone.
        from: ServerSeq,
        /// Last sequence gone.
        to: ServerSeq,
    },
    /// History from another device of this user over a peer link ([`crate::history`]):
    /// events and epoch keys taken so far in the session; `done` once the peer sent all.
    HistoryProgress {
        /// The peer device.
        peer: DeviceId,
        /// Events received.
        events: u64,
        /// Epoch keys taken (epochs readable now).
        keys: u64,
        /// The peer sent everything.
        done: bool,
    },
    /// A break in an author's chain of events (see [`ChainIssue`]): events were withheld,
    /// dropped or reordered on the way, or an author signed two events for one place. Forks,
    /// broken links, equivocations and head mismatches are given again by every
    /// [`DeviceCore::new`] over the same log.
    Chain(ChainIssue),
    /// An event the relay sequenced that this device's own checks refused (a non-member's,
    /// a removed member's, a revoked or uncertified device's): kept out of the conversation.
    Ignored(RefusedEvent),
    /// A device certificate or revocation the relay served that this device's directory
    /// refused (a changed agreement key, a revocation signed by another user, ...).
    Directory(crate::directory::DirectoryRefusal),
    /// An epoch-key share that opened on this device but is not the key the epoch committed
    /// to (a wrong key from a member, or a split by the epoch's opener): not kept; the key is
    /// asked for again.
    KeyShareRefused(crate::store::RefusedKeyShare),
    /// A member's removal this device holds, verified, that its gate cannot place yet (the
    /// relay withholds a sequence before it, or an author's certificate is not in): no new
    /// epoch key goes to that user's devices meanwhile. Reported once per removal and process.
    RemovalAhead(crate::store::RemovalEvidence),
    /// The user's invitations or blocks changed: an invitation arrived (or was listed on
    /// catch-up), or this or another device of the user accepted, declined, blocked or
    /// unblocked.
    User(UserChange),
    /// The relay answered [`DeviceCore::deposit_link`]: the bundle waits in `slot` until the
    /// relay time `expires_ms` (Unix ms), or the relay refused it.
    LinkDeposit {
        /// The slot.
        slot: crate::link::LinkSlot,
        /// When the relay drops the bundle, or why it did not take it.
        outcome: Result<u64, RequestRefused>,
    },
    /// The relay answered [`DeviceCore::revoke`]: the revocation is durable (this device's
    /// directory holds it too), or the relay refused it.
    Revocation {
        /// The revoked device.
        device: DeviceId,
        /// Done, or why not.
        outcome: Result<(), RequestRefused>,
    },
    /// FAILED messages of one conversation that have been FAILED for at least
    /// [`DeviceConfig::failed_report_after_ms`]: the app may retry them or drop them
    /// ([`DeviceCore::discard_failed`]). Reported once per failure and process (again after a
    /// restart, so that a report the app never acted on is not lost).
    FailedExpired {
        /// Conversation.
        conversation: ConversationId,
        /// The messages, in send order.
        messages: Vec<crate::log::FailedMessage>,
    },
    /// The relay's `Welcome` said how long it keeps a silent connection
    /// ([`Welcome::idle_timeout_ms`]): a device on battery need not keep it alive more often.
    RelayIdle {
        /// The relay's idle timeout, in ms.
        idle_timeout_ms: u64,
    },
    /// The relay refused an event or a request.
    Refused {
        /// The event, when an event was refused.
        event: Option<EventId>,
        /// Why.
        code: ErrorCode,
        /// Why, for people.
        reason: String,
    },
}

impl DeviceCore {
    /// Waits for a relay page's fold running beside the core (see `Store::set_fold_runner`)
    /// and queues its changes: the shell calls it when no frame is waiting, so the app sees a
    /// page's messages without waiting for the next page. A failed fold dropped its
    /// documents (they reload from the log), which the error says.
    pub fn settle_folds(&mut self) -> Result<(), DeviceError> {
        let settled = self.store.settle_folds();
        self.emit(Vec::new());
        Ok(settled?)
    }

    /// Queues `changes` for the app, behind those of a page's fold that ran beside the core
    /// and was taken back since (`Store::take_late_changes`): those folds came first.
    pub(super) fn emit(&mut self, changes: Vec<Change>) {
        let late = self.store.take_late_changes();
        if !late.is_empty() {
            self.events.push_back(DeviceEvent::Changes(late));
        }
        if !changes.is_empty() {
            self.events.push_back(DeviceEvent::Changes(changes));
        }
    }
}
