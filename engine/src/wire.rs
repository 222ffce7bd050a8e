//! The device ↔ relay wire protocol: frames and their codec (sans-IO).
//!
//! Everything here is data and pure functions: no sockets, no clock, no randomness. The relay
//! (`tidings-relay`) and the device library (`tidings-replica`) both speak it over one
//! bidirectional QUIC stream per connection (ALPN [`ALPN`]); `docs/PROTOCOL.md` documents the
//! byte layout, every frame, the error codes and the authentication transcript.
//!
//! ```text
//! frame := length (u32, big-endian) | postcard(ClientFrame or ServerFrame)   length <= MAX_FRAME_LEN
//! ```
//!
//! Event envelopes travel as opaque bytes inside frames ([`crate::Event::bytes`]); the receiver
//! decodes and verifies them itself (`Event::decode_batch`).
//!
//! # A device's session
//! 1. Open a QUIC connection with ALPN [`ALPN`], pinning the relay's certificate by its SHA-256
//!    fingerprint; open one bidirectional stream.
//! 2. Send [`ClientFrame::Hello`]; receive [`ServerFrame::Challenge`].
//! 3. Export [`TLS_BINDING_LEN`] bytes of keying material from the TLS session with label
//!    [`TLS_EXPORTER_LABEL`] and an empty context; send [`ClientFrame::Auth`] with
//!    [`sign_auth`]; receive [`ServerFrame::Welcome`].
//! 4. If `Welcome::registered` is false, send a [`DeviceRegistration`] signed by the user's key.
//! 5. Send [`ClientFrame::Sync`]: the reply lists the device's conversations with their highest
//!    sequence, and pushes start. Pull what is missing, submit, and report receipt with
//!    [`ClientFrame::Received`].

use crate::event::serde_bytes_vec as bytes_vec;
use crate::ids::{ConversationId, DeviceId, ServerSeq, UserId};
pub use crate::link::{LinkSlot, MAX_LINK_BUNDLE_LEN};
use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::{Deserialize, Serialize};
use std::fmt;

mod certificate;
mod error_code;
pub use certificate::{
    auth_transcript, sign_auth, verify_auth, DeviceRegistration, DeviceRevocation,
};
pub use error_code::ErrorCode;

/// The protocol version this build speaks, sent in [`ClientFrame::Hello`]. 2: paged `Sync`
/// and `Devices`, invitations and blocks (issue #12). 3: events travel with the relay's
/// batch-signed `Sequenced` statements instead of one signed `ServerAck` each (issue #13). 4:
/// device links (`LinkDeposit`, `LinkTake`) and `Welcome::idle_timeout_ms` (issue 18). 5:
/// `Pull::history_since_ms` (a new device's history bounded by time, issue 14).
pub const PROTOCOL_VERSION: u16 = 5;
/// The QUIC/TLS application protocol name.
pub const ALPN: &[u8] = b"tidings/1";
/// Bytes in the length prefix of a frame.
pub const FRAME_HEADER_LEN: usize = 4;
/// Largest frame body (the bytes after the length prefix) either side accepts by default;
/// a relay may configure a lower limit and announces it in [`Welcome`].
pub const MAX_FRAME_LEN: usize = 2 * 1024 * 1024;
/// Most envelopes in one [`ClientFrame::Submit`].
pub const MAX_SUBMIT_BATCH: usize = 512;
/// Most `(event, ack)` pairs in one [`ServerFrame::Page`] or [`ServerFrame::Push`].
pub const MAX_PAGE_ITEMS: usize = 1024;
/// Most conversations listed in one [`ServerFrame::Conversations`] (one page of the Sync
/// answer; a device asks for the next page with [`ClientFrame::Sync`]'s `after`).
pub const MAX_LISTED_CONVERSATIONS: usize = 16 * 1024;
/// Most pending invitations the relay keeps for one user: a Create or AddMember that would
/// invite a user past it is refused with [`ErrorCode::INVITATIONS_FULL`]. Also the most
/// listed in one [`ServerFrame::Conversations`].
pub const MAX_PENDING_INVITATIONS: usize = 1024;
/// Most pending invitations one inviting user may hold for one invited user: a single
/// stranger cannot fill [`MAX_PENDING_INVITATIONS`].
pub const MAX_INVITATIONS_PER_INVITER: usize = 32;
/// Most users one user may block ([`ClientFrame::Block`] past it is refused with
/// [`ErrorCode::BLOCK_LIST_FULL`]); also the most listed in one
/// [`ServerFrame::Conversations`].
pub const MAX_BLOCKED_USERS: usize = 1024;
/// Longest human-readable reason or message string in a frame.
pub const MAX_REASON_LEN: usize = 1024;
/// Bytes of TLS keying material bound into the authentication transcript.
pub const TLS_BINDING_LEN: usize = 32;
/// Label for the TLS keying-material exporter (RFC 5705 / RFC 8446 §7.5); context is empty.
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-tidings-auth-v1";
/// Domain separation prefix of the authentication transcript.
pub const AUTH_DOMAIN: &[u8] = b"tidings/auth/v1\0";
/// Domain separation prefix of a device registration statement (a device certificate).
pub const REGISTER_DOMAIN: &[u8] = b"tidings/register-device/v2\0";
/// Domain separation prefix of a device revocation statement.
pub const REVOKE_DOMAIN: &[u8] = b"tidings/revoke-device/v1\0";
/// Most users named in one [`ClientFrame::Devices`].
pub const MAX_DEVICE_QUERY_USERS: usize = 1024;
/// Most registrations, and most revocations, in one [`ServerFrame::Devices`] page (a relay
/// also keeps a page within its frame length, see [`MAX_DEVICE_STATEMENTS_LEN`]).
pub const MAX_LISTED_DEVICES: usize = 4096;
/// Most encoded bytes one device takes in a [`ServerFrame::Devices`] page: its certificate
/// (at most 170 bytes) and its revocation (at most 138). A relay puts at most
/// `(max_frame_len - 4096) / MAX_DEVICE_STATEMENTS_LEN` devices in a page.
pub const MAX_DEVICE_STATEMENTS_LEN: usize = 320;
/// Bytes of the relay's challenge nonce.
pub const NONCE_LEN: usize = 32;

/// A 64-byte ed25519 signature as it travels in frames.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignatureBytes(pub [u8; 64]);

impl fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignatureBytes({})", hex::encode(&self.0[..4]))
    }
}

impl From<Signature> for SignatureBytes {
    fn from(s: Signature) -> Self {
        SignatureBytes(s.to_bytes())
    }
}

impl SignatureBytes {
    /// Checks the signature over `msg` under `key` (the one rule of [`crate::signature`]).
    pub fn verify(&self, key: &[u8; 32], msg: &[u8]) -> bool {
        crate::signature::verify_bytes(key, msg, &self.0)
    }
}

impl Serialize for SignatureBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Two 32-byte arrays: serde has no impl for [u8; 64], and this keeps the encoding
        // a fixed 64 bytes with no length prefix.
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        a.copy_from_slice(&self.0[..32]);
        b.copy_from_slice(&self.0[32..]);
        (a, b).serialize(s)
    }
}

impl<'de> Deserialize<'de> for SignatureBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (a, b) = <([u8; 32], [u8; 32])>::deserialize(d)?;
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&a);
        out[32..].copy_from_slice(&b);
        Ok(SignatureBytes(out))
    }
}

/// One envelope of a submit batch, as bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope(#[serde(with = "bytes_vec")] pub Vec<u8>);

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Envelope({} B)", self.0.len())
    }
}

impl AsRef<[u8]> for Envelope {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The outcome for one submitted envelope, in the order of the batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubmitOutcome {
    /// Durably sequenced at `seq`; the frame's `records` hold the relay's signed statement
    /// that places it there.
    Accepted {
        /// The event's server sequence.
        seq: ServerSeq,
    },
    /// Not accepted; nothing was stored.
    Rejected {
        /// Why, as a code.
        code: ErrorCode,
        /// Why, for people.
        reason: String,
    },
}

/// A conversation the device's user is a member of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationInfo {
    /// The conversation.
    pub conversation: ConversationId,
    /// Its highest durably sequenced event.
    pub max_seq: ServerSeq,
    /// The highest sequence this device reported as received ([`ClientFrame::Received`]).
    pub cursor: ServerSeq,
}

/// A conversation another user put this device's user in (by its Create or an AddMember),
/// which the user has neither accepted nor declined: its events are not pushed or listed as a
/// conversation until the user accepts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    /// The conversation.
    pub conversation: ConversationId,
    /// The user whose event (Create or AddMember) listed the invited user.
    pub inviter: UserId,
}

/// A change of a user's own state at the relay: what it accepted, declined or blocked, and
/// invitations it received. Answers [`ClientFrame::Accept`] and its siblings
/// ([`ServerFrame::UserState`]) and is pushed to the user's other online devices
/// ([`ServerFrame::UserChanged`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum UserChange {
    /// A new pending invitation.
    Invited(Invitation),
    /// The user accepted the conversation: it is listed and pushed from now on; pull what is
    /// missing from the device's cursor.
    Accepted(ConversationInfo),
    /// The user declined the invitation: never listed or pushed (unless accepted later).
    Declined(ConversationId),
    /// The user blocked this user: its Creates and AddMembers listing the blocking user are
    /// refused ([`ErrorCode::BLOCKED`]), and its pending invitations were declined.
    Blocked(UserId),
    /// The user no longer blocks this user.
    Unblocked(UserId),
}

/// The relay's limits as it announces them in [`Welcome`]; a device stays within them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireLimits {
    /// Largest frame body the relay reads.
    pub max_frame_len: u32,
    /// Most envelopes per Submit.
    pub max_submit_batch: u32,
    /// Most items per Page.
    pub max_page_items: u32,
    /// Most requests (frames that get a reply) a device may have unanswered at once; the
    /// relay stops reading the stream beyond that.
    pub max_inflight_requests: u32,
    /// Pushed events a device may leave unacknowledged (by [`ClientFrame::Received`]) before
    /// the relay switches it to pull mode.
    pub push_window: u32,
}

/// The relay's answer to a successful authentication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The relay's DeviceId: the key that signs `Sequenced` statements (also its UserId).
    pub relay: DeviceId,
    /// Whether the device is registered to the user it named in Hello.
    pub registered: bool,
    /// The relay's limits.
    pub limits: WireLimits,
    /// How long the relay keeps a connection that carries nothing (its QUIC idle timeout):
    /// a device must send something (a keepalive) within it, and need not more often. A device
    /// on battery uses it to sleep as long as the relay lets it.
    pub idle_timeout_ms: u32,
}

/// Frames a device sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ClientFrame {
    /// First frame of a connection.
    Hello {
        /// Must be [`PROTOCOL_VERSION`].
        protocol_version: u16,
        /// The device (its ed25519 public key).
        device: DeviceId,
        /// The user the device acts for.
        user: UserId,
    },
    /// Answer to [`ServerFrame::Challenge`]: [`sign_auth`] over the transcript.
    Auth {
        /// The signature.
        signature: SignatureBytes,
    },
    /// Adds a device to a user (answered by `Registered` or `Refused`).
    RegisterDevice {
        /// Echoed in the reply.
        request_id: u64,
        /// The statement.
        registration: DeviceRegistration,
    },
    /// Events to sequence (answered by `SubmitResult`, one outcome per envelope, in order).
    Submit {
        /// Echoed in the reply.
        request_id: u64,
        /// The envelopes, at most [`MAX_SUBMIT_BATCH`].
        events: Vec<Envelope>,
    },
    /// Reads a conversation after a sequence (answered by `Page` or `Refused`).
    Pull {
        /// Echoed in the reply.
        request_id: u64,
        /// The conversation.
        conversation: ConversationId,
        /// Return events with a sequence strictly greater than this.
        after_seq: ServerSeq,
        /// Most items wanted (the relay caps it at its own limit).
        limit: u32,
        /// Bodies the relay placed before this time (Unix ms, relay clock) are not wanted:
        /// the relay answers the leading run of such events with a `HistoryGap` that carries
        /// only the kinds it would keep under retention (the `Create`, membership changes,
        /// epoch openings), as if retention had dropped the rest. `None`: everything. A
        /// device whose history policy is `LastDays` asks so on its first catch-up of a
        /// conversation.
        history_since_ms: Option<u64>,
    },
    /// Lists the device's accepted conversations, one page at a time (answered by
    /// `Conversations`), and turns on pushes.
    Sync {
        /// Echoed in the reply.
        request_id: u64,
        /// `None` for the first page; then the `next` of the previous answer: the page lists
        /// conversations whose ids sort after it.
        after: Option<ConversationId>,
    },
    /// The device durably holds every event of `conversation` up to `up_to` (no reply).
    Received {
        /// The conversation.
        conversation: ConversationId,
        /// Cumulative: everything up to and including this sequence.
        up_to: ServerSeq,
    },
    /// Revokes a device of a user (answered by `Revoked` or `Refused`). Any authenticated
    /// device may send it: the user's signature is what counts.
    Revoke {
        /// Echoed in the reply.
        request_id: u64,
        /// The statement.
        revocation: DeviceRevocation,
    },
    /// Asks for the device certificates and revocations of `users` (answered by one
    /// `Devices` page). The relay answers only for the asking device's own user and users who
    /// share (or shared) a conversation with it; other users are answered with nothing.
    /// Statements come user by user in the order asked, each user's devices in id order; a
    /// page that does not reach the end says where to go on (see [`ServerFrame::Devices`]).
    Devices {
        /// Echoed in the reply.
        request_id: u64,
        /// At most [`MAX_DEVICE_QUERY_USERS`].
        users: Vec<UserId>,
        /// The first user's devices start after this one (a continuation); `None` from the
        /// start.
        after: Option<DeviceId>,
    },
    /// Accepts an invitation (or takes back a decline) for every device of the user
    /// (answered by `UserState` after it is durable, or `Refused`).
    Accept {
        /// Echoed in the reply.
        request_id: u64,
        /// A conversation the user is a member of.
        conversation: ConversationId,
    },
    /// Declines an invitation (answered by `UserState` after it is durable, or `Refused`).
    Decline {
        /// Echoed in the reply.
        request_id: u64,
        /// A conversation the user is a member of.
        conversation: ConversationId,
    },
    /// Blocks a user (answered by `UserState` after it is durable, or `Refused`).
    Block {
        /// Echoed in the reply.
        request_id: u64,
        /// The user to block.
        user: UserId,
    },
    /// Unblocks a user (answered by `UserState` after it is durable).
    Unblock {
        /// Echoed in the reply.
        request_id: u64,
        /// The user to unblock.
        user: UserId,
    },
    /// Keeps a sealed link bundle for a new device of this user in `slot`, for the relay's
    /// link TTL or until taken (answered by `LinkDeposited` or `Refused`). Registered devices
    /// only. See [`crate::link`].
    LinkDeposit {
        /// Echoed in the reply.
        request_id: u64,
        /// Where the bundle waits ([`crate::link::LinkSecret::slot`]).
        slot: LinkSlot,
        /// The sealed bundle, at most [`MAX_LINK_BUNDLE_LEN`] bytes.
        #[serde(with = "bytes_vec")]
        sealed: Vec<u8>,
    },
    /// Takes the bundle in `slot`, once. A handshake frame: the first and only frame of a
    /// connection from a device that has no identity yet (answered by `LinkBundle`, or by
    /// `Error` with [`ErrorCode::LINK_NOT_FOUND`] or [`ErrorCode::RATE_LIMITED`]).
    LinkTake {
        /// The slot.
        slot: LinkSlot,
    },
}

/// The postcard variant index of [`ClientFrame::LinkTake`] (its first byte on the wire):
/// [`decode_handshake`] decodes it before authentication, like `Hello` (0) and `Auth` (1).
pub const LINK_TAKE_VARIANT: u8 = 14;

/// Frames the relay sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ServerFrame {
    /// Answer to Hello: sign this nonce (see [`auth_transcript`]).
    Challenge {
        /// Fresh random bytes.
        nonce: [u8; NONCE_LEN],
    },
    /// Authentication succeeded.
    Welcome(Welcome),
    /// A fatal error: the relay closes the connection after this frame.
    Error {
        /// Why, as a code.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
    /// A request was refused; the session goes on.
    Refused {
        /// The request's id.
        request_id: u64,
        /// Why, as a code.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
    /// A registration was stored.
    Registered {
        /// The request's id.
        request_id: u64,
        /// The user.
        user: UserId,
        /// The device now registered to it.
        device: DeviceId,
    },
    /// One outcome per submitted envelope, in the order of the batch.
    SubmitResult {
        /// The request's id.
        request_id: u64,
        /// The outcomes.
        outcomes: Vec<SubmitOutcome>,
        /// The relay's signed `Sequenced` statements placing the accepted events.
        records: Vec<Envelope>,
    },
    /// Events of one conversation in sequence order.
    Page {
        /// The request's id.
        request_id: u64,
        /// The conversation.
        conversation: ConversationId,
        /// Event envelopes in sequence order after the requested one (consecutive, except
        /// where retention dropped events: see `HistoryGap`).
        events: Vec<Envelope>,
        /// The relay's signed statements placing them (each once, even when it places several).
        records: Vec<Envelope>,
        /// More events exist after the last one.
        more: bool,
    },
    /// One page of the device's conversations (answer to Sync).
    Conversations {
        /// The request's id.
        request_id: u64,
        /// One entry per accepted conversation of the page, in id order.
        conversations: Vec<ConversationInfo>,
        /// `Some(last id of the page)` when more follow: ask with `Sync { after: next }`.
        next: Option<ConversationId>,
        /// The user's pending invitations (first page only, at most
        /// [`MAX_PENDING_INVITATIONS`]).
        invitations: Vec<Invitation>,
        /// The users this user blocks (first page only, at most [`MAX_BLOCKED_USERS`]).
        blocked: Vec<UserId>,
    },
    /// Newly sequenced events for the device, unrequested.
    Push {
        /// Event envelopes, in sequence order within each conversation.
        events: Vec<Envelope>,
        /// The relay's signed statements placing them.
        records: Vec<Envelope>,
    },
    /// The device left too many pushes unacknowledged: pushes stop until it pulls what it is
    /// missing and sends Sync again.
    PullMode,
    /// A revocation was stored (or was already).
    Revoked {
        /// The request's id.
        request_id: u64,
        /// The user.
        user: UserId,
        /// The device revoked.
        device: DeviceId,
    },
    /// Answer to [`ClientFrame::Devices`]: one page of signed statements a device verifies
    /// itself.
    Devices {
        /// The request's id.
        request_id: u64,
        /// Certificates of the users' devices, revoked ones included.
        registrations: Vec<DeviceRegistration>,
        /// Revocations of the users' devices.
        revocations: Vec<DeviceRevocation>,
        /// How many of the asked users, from the first, are complete: every statement the
        /// relay holds about them was in this page (or, for the first, in the pages before).
        /// Equal to the number asked when the answer is whole.
        complete: u32,
        /// Set when the page stopped inside the user at index `complete`: ask again for the
        /// users from `complete` on, with this device as `after`.
        resume_after: Option<DeviceId>,
    },
    /// Answer to `Accept`, `Decline`, `Block` and `Unblock`: the change is durable.
    UserState {
        /// The request's id.
        request_id: u64,
        /// What changed (or already held).
        change: UserChange,
    },
    /// Unrequested: the device's user changed (from another of its devices), or got an
    /// invitation.
    UserChanged {
        /// What changed.
        change: UserChange,
    },
    /// Answer to [`ClientFrame::LinkDeposit`]: the bundle waits in the slot until
    /// `expires_ms` (relay clock, Unix milliseconds) or until taken.
    LinkDeposited {
        /// The request's id.
        request_id: u64,
        /// The slot.
        slot: LinkSlot,
        /// When the relay drops the bundle.
        expires_ms: u64,
    },
    /// Answer to [`ClientFrame::LinkTake`]: the bundle, now gone from the relay. The relay
    /// reads nothing more on the connection.
    LinkBundle {
        /// The sealed bundle.
        #[serde(with = "bytes_vec")]
        sealed: Vec<u8>,
    },
    /// Answer to `Pull` when the relay's retention dropped events after the requested
    /// sequence: of the sequences `from..=to`, only those of `events` are left (the relay
    /// keeps membership changes and epoch openings); the rest are gone for good. Otherwise as
    /// `Page`: `events` in sequence order (possibly past `to`), `records` placing them, `more`
    /// when more follow. `records` also carries the statements of the range the relay still
    /// holds (it keeps them for its dedup window), so that a device holding an event of the
    /// range, taken early from a peer, learns its place; `to` stops at the last sequence
    /// they place when they do not all fit. `to` stops at the last event of the page when the page is cut
    /// inside the range, so a device never takes a sequence it was not shown as gone.
    HistoryGap {
        /// The request's id.
        request_id: u64,
        /// The conversation.
        conversation: ConversationId,
        /// First sequence of the range.
        from: ServerSeq,
        /// Last sequence of the range.
        to: ServerSeq,
        /// What is left from `from` on.
        events: Vec<Envelope>,
        /// The relay's signed statements placing them.
        records: Vec<Envelope>,
        /// More events exist after the last one.
        more: bool,
    },
}

impl ClientFrame {
    /// The request id of a request: a frame the relay answers with exactly one frame (see
    /// [`ServerFrame::answers`]). `None` for the handshake frames and `Received`, which get no
    /// answer. The relay meters requests by this, so a new request kind must say it here.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            ClientFrame::Hello { .. }
            | ClientFrame::Auth { .. }
            | ClientFrame::Received { .. }
            | ClientFrame::LinkTake { .. } => None,
            ClientFrame::RegisterDevice { request_id, .. }
            | ClientFrame::Submit { request_id, .. }
            | ClientFrame::Pull { request_id, .. }
            | ClientFrame::Sync { request_id, .. }
            | ClientFrame::Revoke { request_id, .. }
            | ClientFrame::Devices { request_id, .. }
            | ClientFrame::Accept { request_id, .. }
            | ClientFrame::Decline { request_id, .. }
            | ClientFrame::Block { request_id, .. }
            | ClientFrame::Unblock { request_id, .. }
            | ClientFrame::LinkDeposit { request_id, .. } => Some(*request_id),
        }
    }

    /// Whether the frame belongs to the handshake (allowed before `Welcome`, see
    /// [`decode_handshake`]).
    pub fn is_handshake(&self) -> bool {
        matches!(
            self,
            ClientFrame::Hello { .. } | ClientFrame::Auth { .. } | ClientFrame::LinkTake { .. }
        )
    }
}

impl ServerFrame {
    /// The request a frame answers, if it is an answer: every request
    /// ([`ClientFrame::request_id`]) gets exactly one of these, `Refused` included. `None` for
    /// frames the relay sends unasked (`Challenge`, `Welcome`, `Error`, `Push`, `PullMode`,
    /// `UserChanged`).
    pub fn answers(&self) -> Option<u64> {
        match self {
            ServerFrame::Challenge { .. }
            | ServerFrame::Welcome(_)
            | ServerFrame::Error { .. }
            | ServerFrame::Push { .. }
            | ServerFrame::PullMode
            | ServerFrame::UserChanged { .. }
            | ServerFrame::LinkBundle { .. } => None,
            ServerFrame::Refused { request_id, .. }
            | ServerFrame::Registered { request_id, .. }
            | ServerFrame::SubmitResult { request_id, .. }
            | ServerFrame::Page { request_id, .. }
            | ServerFrame::HistoryGap { request_id, .. }
            | ServerFrame::Conversations { request_id, .. }
            | ServerFrame::Revoked { request_id, .. }
            | ServerFrame::Devices { request_id, .. }
            | ServerFrame::UserState { request_id, .. }
            | ServerFrame::LinkDeposited { request_id, .. } => Some(*request_id),
        }
    }
}

/// Why bytes were not accepted as a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The length prefix is over the limit (checked before anything is allocated).
    #[error("frame too large: {len} bytes, limit {max}")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame body is not a valid encoding.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// A frame other than `Hello` or `Auth` before authentication (not decoded).
    #[error("frame variant {variant} is not allowed before authentication")]
    NotHandshake {
        /// The frame's variant index.
        variant: u32,
    },
    /// A field inside a valid frame is over its limit.
    #[error("frame field {field} out of limits: {len} > {max}")]
    FieldTooLarge {
        /// Which field.
        field: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl WireError {
    /// The error code a relay reports for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::FrameTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            WireError::Malformed(_) | WireError::FieldTooLarge { .. } => ErrorCode::MALFORMED_FRAME,
            WireError::NotHandshake { .. } => ErrorCode::UNEXPECTED_FRAME,
        }
    }
}

/// A frame type: encodable and decodable with a per-frame limit check.
pub trait Frame: Serialize + for<'de> Deserialize<'de> + Sized {
    /// Checks the counts and lengths inside a decoded frame.
    fn check_limits(&self) -> Result<(), WireError>;
}

/// Refuses a field of `len` items or bytes over `max` ([`WireError::FieldTooLarge`]).
pub(crate) fn check(field: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        Err(WireError::FieldTooLarge { field, len, max })
    } else {
        Ok(())
    }
}

impl Frame for ClientFrame {
    fn check_limits(&self) -> Result<(), WireError> {
        match self {
            ClientFrame::Submit { events, .. } => {
                check("events", events.len(), MAX_SUBMIT_BATCH)?;
                for e in events {
                    check("envelope", e.0.len(), crate::event::MAX_EVENT_LEN)?;
                }
                Ok(())
            }
            ClientFrame::Devices { users, .. } => {
                check("users", users.len(), MAX_DEVICE_QUERY_USERS)
            }
            ClientFrame::LinkDeposit { sealed, .. } => {
                check("sealed", sealed.len(), MAX_LINK_BUNDLE_LEN)
            }
            _ => Ok(()),
        }
    }
}

impl Frame for ServerFrame {
    fn check_limits(&self) -> Result<(), WireError> {
        match self {
            ServerFrame::Error { message, .. } | ServerFrame::Refused { message, .. } => {
                check("message", message.len(), MAX_REASON_LEN)
            }
            ServerFrame::SubmitResult {
                outcomes, records, ..
            } => {
                check("outcomes", outcomes.len(), MAX_SUBMIT_BATCH)?;
                check("records", records.len(), MAX_SUBMIT_BATCH)
            }
            ServerFrame::Page {
                events, records, ..
            }
            | ServerFrame::HistoryGap {
                events, records, ..
            }
            | ServerFrame::Push { events, records } => {
                check("events", events.len(), MAX_PAGE_ITEMS)?;
                check("records", records.len(), MAX_PAGE_ITEMS)
            }
            ServerFrame::Conversations {
                conversations,
                invitations,
                blocked,
                ..
            } => {
                check(
                    "conversations",
                    conversations.len(),
                    MAX_LISTED_CONVERSATIONS,
                )?;
                check("invitations", invitations.len(), MAX_PENDING_INVITATIONS)?;
                check("blocked", blocked.len(), MAX_BLOCKED_USERS)
            }
            ServerFrame::Devices {
                registrations,
                revocations,
                ..
            } => {
                check("registrations", registrations.len(), MAX_LISTED_DEVICES)?;
                check("revocations", revocations.len(), MAX_LISTED_DEVICES)
            }
            ServerFrame::LinkBundle { sealed } => {
                check("sealed", sealed.len(), MAX_LINK_BUNDLE_LEN)
            }
            _ => Ok(()),
        }
    }
}

/// Encodes a frame with its length prefix, appending to `out`.
pub fn encode_frame<F: Frame>(frame: &F, out: &mut Vec<u8>) -> Result<(), WireError> {
    let body = postcard::to_stdvec(frame).map_err(|_| WireError::Malformed("unencodable frame"))?;
    if body.len() > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge {
            len: body.len(),
            max: MAX_FRAME_LEN,
        });
    }
    // len <= MAX_FRAME_LEN < u32::MAX, so the cast cannot truncate.
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Encodes a frame with its length prefix into a new buffer.
pub fn frame_bytes<F: Frame>(frame: &F) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    encode_frame(frame, &mut out)?;
    Ok(out)
}

/// Reads a length prefix and checks it against `max_len` (before anything is allocated).
pub fn decode_len(header: [u8; FRAME_HEADER_LEN], max_len: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max_len {
        return Err(WireError::FrameTooLarge { len, max: max_len });
    }
    Ok(len)
}

/// Decodes a frame body (the bytes after the length prefix).
pub fn decode_body<F: Frame>(body: &[u8]) -> Result<F, WireError> {
    let (frame, rest) = postcard::take_from_bytes::<F>(body).map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => WireError::Malformed("frame body cut short"),
        _ => WireError::Malformed("frame body"),
    })?;
    if !rest.is_empty() {
        return Err(WireError::Malformed("trailing bytes after frame"));
    }
    frame.check_limits()?;
    Ok(frame)
}

/// Decodes a frame body read before authentication. Only `Hello` and `Auth` are decoded;
/// any other frame is refused by its variant index alone ([`WireError::NotHandshake`]), so
/// nothing a stranger sends beyond the handshake is decoded (a `Submit`'s envelopes are not
/// even split).
pub fn decode_handshake(body: &[u8]) -> Result<ClientFrame, WireError> {
    // postcard writes an enum's variant index first, as a varint: Hello is 0, Auth is 1, both
    // one byte.
    match body.first().copied() {
        Some(0 | 1 | LINK_TAKE_VARIANT) => decode_body(body),
        Some(variant) => Err(WireError::NotHandshake {
            variant: u32::from(variant),
        }),
        None => Err(WireError::Malformed("empty frame body")),
    }
}

/// The bytes [`encode_frame`] writes for `frame` (length prefix included), counted without
/// encoding it.
pub fn encoded_len<F: Frame>(frame: &F) -> usize {
    let body = postcard::serialize_with_flavor(frame, postcard::ser_flavors::Size::default())
        // Counting cannot fail for our frame types; an impossible failure counts as the
        // largest frame, which errs on the side of the limit.
        .unwrap_or(MAX_FRAME_LEN);
    FRAME_HEADER_LEN + body
}

/// An incremental decoder for a byte stream of frames (for transports that hand out chunks).
///
/// Call order: [`FrameDecoder::push`] bytes as they arrive, then [`FrameDecoder::poll_frame`]
/// until it returns `Ok(None)`. After an error the stream is unusable: close it.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_len: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_len` (at most [`MAX_FRAME_LEN`]).
    pub fn new(max_len: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            max_len: max_len.min(MAX_FRAME_LEN),
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn poll_frame<F: Frame>(&mut self) -> Result<Option<F>, WireError> {
        let Some(header) = self.buf.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let len = decode_len(*header, self.max_len)?;
        if self.buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        let frame = decode_body(&self.buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len])?;
        self.buf.drain(..FRAME_HEADER_LEN + len);
        Ok(Some(frame))
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests;
