//! The protocol's error codes: a plain number on the wire, with the known ones named.

use serde::{Deserialize, Serialize};
use std::fmt;

#[cfg(doc)]
use super::{
    ClientFrame, ServerFrame, SubmitOutcome, MAX_BLOCKED_USERS, MAX_INVITATIONS_PER_INVITER,
    MAX_PENDING_INVITATIONS,
};

/// A protocol error code, carried by [`ServerFrame::Error`], [`ServerFrame::Refused`] and
/// [`SubmitOutcome::Rejected`]. A plain number so that a device can read codes newer than
/// itself; the known ones are the associated constants.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The hello named a protocol version the relay does not speak.
    pub const UNSUPPORTED_VERSION: ErrorCode = ErrorCode(1);
    /// A frame's length prefix is over the limit.
    pub const FRAME_TOO_LARGE: ErrorCode = ErrorCode(2);
    /// A frame body is not a valid encoding.
    pub const MALFORMED_FRAME: ErrorCode = ErrorCode(3);
    /// A frame that is not allowed in the session's current state (e.g. Submit before Auth).
    pub const UNEXPECTED_FRAME: ErrorCode = ErrorCode(4);
    /// The authentication signature does not verify.
    pub const AUTH_FAILED: ErrorCode = ErrorCode(5);
    /// The event's author (or this device) is not registered to the user it claims.
    pub const NOT_REGISTERED: ErrorCode = ErrorCode(6);
    /// The user is not a member of the conversation.
    pub const NOT_MEMBER: ErrorCode = ErrorCode(7);
    /// The envelope does not decode or its signature does not verify.
    pub const BAD_EVENT: ErrorCode = ErrorCode(8);
    /// Devices may not submit this kind (`Sequenced`, `ServerAck`).
    pub const FORBIDDEN_KIND: ErrorCode = ErrorCode(9);
    /// No Create event was accepted for the conversation.
    pub const UNKNOWN_CONVERSATION: ErrorCode = ErrorCode(10);
    /// A different Create event already made this conversation.
    pub const CONVERSATION_EXISTS: ErrorCode = ErrorCode(11);
    /// The device is over its events-per-second budget; retry later.
    pub const RATE_LIMITED: ErrorCode = ErrorCode(12);
    /// A batch or page request is over its limit.
    pub const BATCH_TOO_LARGE: ErrorCode = ErrorCode(13);
    /// Too many connections (in total or from this address).
    pub const TOO_MANY_CONNECTIONS: ErrorCode = ErrorCode(14);
    /// The relay failed to store; retry later.
    pub const INTERNAL: ErrorCode = ErrorCode(15);
    /// The relay is shutting down; reconnect later.
    pub const SHUTTING_DOWN: ErrorCode = ErrorCode(16);
    /// The registration statement does not verify.
    pub const BAD_REGISTRATION: ErrorCode = ErrorCode(17);
    /// The device is already registered to another user.
    pub const DEVICE_TAKEN: ErrorCode = ErrorCode(18);
    /// Another connection authenticated as the same device; this one is closed.
    pub const REPLACED: ErrorCode = ErrorCode(19);
    /// The Create event does not list its author's user as a member.
    pub const BAD_MEMBERS: ErrorCode = ErrorCode(20);
    /// The device stopped reading: its queue overflowed.
    pub const SLOW_CONSUMER: ErrorCode = ErrorCode(21);
    /// The device (or the event's author device) was revoked by its user.
    pub const REVOKED: ErrorCode = ErrorCode(22);
    /// The revocation statement does not verify, or its user is not the device's user.
    pub const BAD_REVOCATION: ErrorCode = ErrorCode(23);
    /// The membership rules refuse the event (e.g. a non-admin adds a member, or somebody
    /// removes the creator); the message is the rule broken.
    pub const FORBIDDEN: ErrorCode = ErrorCode(24);
    /// Another event with the same (conversation, author, counter) is stored.
    pub const CHAIN_FORK: ErrorCode = ErrorCode(25);
    /// The event's `prev` does not match the author's stored event at `counter - 1`, or the
    /// stored event at `counter + 1` names another `prev`.
    pub const BROKEN_CHAIN: ErrorCode = ErrorCode(26);
    /// A user the event invites (lists in a Create, or adds) has blocked the event's user.
    pub const BLOCKED: ErrorCode = ErrorCode(40);
    /// A user the event invites holds [`MAX_PENDING_INVITATIONS`] pending invitations, or
    /// [`MAX_INVITATIONS_PER_INVITER`] from the event's user.
    pub const INVITATIONS_FULL: ErrorCode = ErrorCode(41);
    /// The user already blocks [`MAX_BLOCKED_USERS`] users.
    pub const BLOCK_LIST_FULL: ErrorCode = ErrorCode(42);
    /// The user has the most device ids it may have
    /// ([`crate::directory::MAX_DEVICES_PER_USER`], revoked ones included).
    pub const TOO_MANY_DEVICES: ErrorCode = ErrorCode(27);
    /// A certificate of a registered device with another agreement (X25519) key: a device
    /// keeps its key for its lifetime.
    pub const AGREEMENT_KEY_CHANGED: ErrorCode = ErrorCode(28);
    /// [`ClientFrame::LinkTake`]: no bundle waits in the slot (a wrong code, an expired
    /// bundle, or one taken already).
    pub const LINK_NOT_FOUND: ErrorCode = ErrorCode(43);
    /// [`ClientFrame::LinkDeposit`]: the relay holds as many link bundles as it keeps, in
    /// total or for the user (they expire within the relay's link TTL).
    pub const LINK_FULL: ErrorCode = ErrorCode(44);
    /// A submitted event is not stored and sits at or below a place of its author's chain
    /// whose dedup record the relay's retention dropped: it may be a resubmission older than
    /// the dedup window, which the relay can no longer place, so it is not sequenced (twice).
    pub const EXPIRED: ErrorCode = ErrorCode(45);

    /// A short name for the known codes, `"unknown"` otherwise.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "unsupported-version",
            2 => "frame-too-large",
            3 => "malformed-frame",
            4 => "unexpected-frame",
            5 => "auth-failed",
            6 => "not-registered",
            7 => "not-member",
            8 => "bad-event",
            9 => "forbidden-kind",
            10 => "unknown-conversation",
            11 => "conversation-exists",
            12 => "rate-limited",
            13 => "batch-too-large",
            14 => "too-many-connections",
            15 => "internal",
            16 => "shutting-down",
            17 => "bad-registration",
            18 => "device-taken",
            19 => "replaced",
            20 => "bad-members",
            21 => "slow-consumer",
            22 => "revoked",
            23 => "bad-revocation",
            24 => "forbidden",
            25 => "chain-fork",
            26 => "broken-chain",
            40 => "blocked",
            41 => "invitations-full",
            42 => "block-list-full",
            43 => "link-not-found",
            44 => "link-full",
            45 => "expired",
            27 => "too-many-devices",
            28 => "agreement-key-changed",
            _ => "unknown",
        }
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorCode({} {})", self.0, self.name())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}
