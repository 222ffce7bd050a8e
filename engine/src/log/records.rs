//! What the log hands out and keeps per conversation: metadata, outbox entries, append
//! outcomes, gate runs and chain issues.

use super::*;

/// Per-conversation facts kept up to date on every append.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationMeta {
    /// Members and the `Create` event that named them (lowest event id wins); after the gate
    /// admitted a membership change, the members it left. Earlier memberships are in
    /// [`EventLog::membership_history`].
    pub members: Option<(EventId, Vec<UserId>)>,
    /// Highest lamport clock seen.
    pub max_lamport: u64,
    /// Highest server seq seen (of any event).
    pub max_seq: ServerSeq,
    /// Events stored.
    pub n_events: u64,
}

pub(super) fn read_history(
    table: &impl ReadableTable<(&'static [u8; 16], u64), &'static [u8]>,
    conversation: &ConversationId,
) -> Result<MembershipHistory, LogError> {
    let c = &conversation.0;
    let mut out = MembershipHistory::new();
    for row in table.range((c, 0u64)..=(c, u64::MAX))? {
        let (k, v) = row?;
        let members = postcard::from_bytes(v.value()).map_err(|e| corrupt("memberships", e))?;
        out.insert(k.value().1, members);
    }
    Ok(out)
}

/// Whether the outbox still tries an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboxState {
    /// Waiting for its next attempt.
    Queued,
    /// The retry policy ran out: shown FAILED until `retry`.
    Failed,
}

/// An event waiting to reach the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Position in the outbox (global send order).
    pub position: u64,
    /// The event.
    pub event: EventId,
    /// Its conversation.
    pub conversation: ConversationId,
    /// The message it sends, for `Send` events.
    pub message: Option<MessageId>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Earliest time of the next attempt (ms since the Unix epoch); for a FAILED entry, when
    /// it failed (the time of its last attempt's timeout).
    pub next_attempt_ms: u64,
    /// Queued or failed.
    pub state: OutboxState,
}

impl OutboxEntry {
    /// The entry as a FAILED message, if it is one.
    pub fn as_failed(&self) -> Option<FailedMessage> {
        match (self.state, self.message) {
            (OutboxState::Failed, Some(message)) => Some(FailedMessage {
                message,
                event: self.event,
                conversation: self.conversation,
                failed_since_ms: self.next_attempt_ms,
                attempts: self.attempts,
            }),
            _ => None,
        }
    }
}

/// An own message whose retries ran out: it stays FAILED in the outbox, and in every view,
/// until the app retries it or discards it. Nothing drops it on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedMessage {
    /// The message.
    pub message: MessageId,
    /// Its `Send` event.
    pub event: EventId,
    /// Its conversation.
    pub conversation: ConversationId,
    /// When it turned FAILED (ms since the Unix epoch).
    pub failed_since_ms: u64,
    /// Attempts made before it did.
    pub attempts: u32,
}

/// What appending one event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Stored, and admitted to its conversation's fold at this position.
    New {
        /// Fold position in the conversation.
        position: u64,
    },
    /// Stored, waiting for the conversation's [`Gate`] (see [`LogTxn::advance_gate`]); or a
    /// relay statement contradicting places the log holds, stored as evidence and never
    /// folded (see [`LogTxn::append`]).
    Held,
    /// Already stored: nothing was written.
    Duplicate,
}

/// What one run of a conversation's [`Gate`] did.
#[derive(Debug, Default)]
pub struct GateRun {
    /// Events admitted by this run, with their fold positions, in server order. Own events
    /// the gate passed are not listed: they were folded when they were written.
    pub admitted: Vec<(u64, Event)>,
    /// Events refused, with why.
    pub refused: Vec<(Event, Refusal)>,
    /// The user whose certificates the gate waits for, if it stopped for that.
    pub waiting: Option<UserId>,
    /// The gate after the run.
    pub gate: Gate,
    /// Each membership change admitted in this run (none: the membership did not change): its
    /// sequence and the members after it.
    pub changes: Vec<(ServerSeq, Vec<UserId>)>,
    /// Events shown before the relay placed them that the gate refused at their place
    /// (see [`LogTxn::append_early`]): out of the fold order, the conversation's snapshots
    /// dropped.
    pub retracted: Vec<EventId>,
}

/// A break in one device's chain of events in a conversation (its per-conversation counter
/// and `prev` link), as this device's log sees it. Only the author can sign its events, so a
/// fork means the author's key signed two events for one place (a cloned, restored or
/// misbehaving device); a broken link or a gap means events were withheld, dropped or
/// reordered on the way (by the relay, for example).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainIssue {
    /// Two different events claim the same place in an author's chain.
    Fork {
        /// Conversation.
        conversation: ConversationId,
        /// The author device.
        author: DeviceId,
        /// The contested place.
        counter: u64,
        /// The event stored first (it keeps the place in the index).
        first: EventId,
        /// The other one.
        second: EventId,
    },
    /// An event's `prev` does not name the author's event before it (or names one where
    /// there can be none, at counter 1).
    BrokenLink {
        /// Conversation.
        conversation: ConversationId,
        /// The author device.
        author: DeviceId,
        /// The event's place.
        counter: u64,
        /// What the event names as its predecessor.
        prev: Option<EventId>,
        /// The event the log holds at `counter - 1`, if any.
        found: Option<EventId>,
    },
    /// An author's events are missing below one the log holds.
    Gap {
        /// Conversation.
        conversation: ConversationId,
        /// The author device.
        author: DeviceId,
        /// The missing places (at most [`MAX_GAP_REPORT`] of them).
        missing: Vec<u64>,
    },
    /// The relay's signed statements give one server sequence to two different events: it
    /// showed this device (or this device and another) two histories.
    Equivocation {
        /// Conversation.
        conversation: ConversationId,
        /// The contested sequence.
        seq: ServerSeq,
        /// The event placed there first (it keeps the place).
        first: EventId,
        /// The other one.
        second: EventId,
    },
    /// A member device's receipt names, as the relay statement placing `seq` on that device,
    /// another statement than the one this log holds there: the relay showed the two devices
    /// different histories up to `seq` (equivocation).
    HeadMismatch {
        /// Conversation.
        conversation: ConversationId,
        /// The sequence the receipt covers up to.
        seq: ServerSeq,
        /// The statement this log holds there.
        ours: EventId,
        /// The one the receipt names.
        theirs: EventId,
        /// The device that signed the receipt.
        device: DeviceId,
    },
    /// A member's receipt (signed by its device) covers sequences this log does not hold,
    /// after catch-up: the relay withheld them (the tail of an author's chain, or an event no
    /// later event of its author reveals, such as a `RemoveMember`).
    Withheld {
        /// Conversation.
        conversation: ConversationId,
        /// The highest sequence a receipt covers.
        receipt_up_to: ServerSeq,
        /// The missing sequences (at most [`MAX_GAP_REPORT`] of them).
        missing: Vec<ServerSeq>,
    },
}

/// The id of the relay statement in `table` that places `seq` in `conversation`, if the log
/// holds one.
pub(super) fn covering_statement(
    table: &impl ReadableTable<(&'static [u8; 16], u64), StatementValue>,
    conversation: &ConversationId,
    seq: ServerSeq,
) -> Result<Option<EventId>, LogError> {
    let c = &conversation.0;
    let Some(row) = table.range((c, seq)..=(c, u64::MAX))?.next() else {
        return Ok(None);
    };
    let (_, v) = row?;
    let (id, first) = v.value();
    Ok((first <= seq).then_some(EventId(*id)))
}

/// Most missing places one [`ChainIssue::Gap`] lists.
pub const MAX_GAP_REPORT: usize = 64;
