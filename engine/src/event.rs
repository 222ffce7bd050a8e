//! Events: what a device (or the relay) did, signed and named by its hash.
//!
//! The envelope layout is documented byte by byte in `docs/FORMAT.md`:
//!
//! ```text
//! envelope := version (1 byte, = 1) | event id (32) | signature (64) | body
//! body     := postcard(EventHeader) | postcard(kind tag: u16) | postcard(kind payload as bytes)
//! event id := blake3(version | body)          signature := ed25519(author key, event id)
//! ```
//!
//! The kind travels as a tag plus an opaque payload so that a relay or an older device can
//! verify, store and forward a kind it does not know yet (`EventKind::Unknown`).

use crate::ids::{BlobId, ConversationId, DeviceId, EventId, MessageId, ServerSeq, UserId};
use crate::signature;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The only envelope version this build writes and reads.
pub const EVENT_VERSION: u8 = 1;
/// Largest envelope accepted, checked before anything is allocated.
pub const MAX_EVENT_LEN: usize = 64 * 1024;
/// Largest message body (bytes, opaque: plaintext now, ciphertext once encryption lands).
pub const MAX_BODY_LEN: usize = 48 * 1024;
/// Most media references one message may carry.
pub const MAX_MEDIA_REFS: usize = 16;
/// Most members listed in one `Create` event.
pub const MAX_MEMBERS: usize = 1024;
/// Most sealed keys in one `EpochKeys` event (a 256-member group with two devices each; keeps
/// the event under [`MAX_EVENT_LEN`]). An epoch with more recipient devices is shared over
/// several events: the opening one, then re-shares naming the epoch.
pub const MAX_SEALED_KEYS: usize = 512;
/// Largest sealed key (an X25519 public key, a 32-byte key and a 16-byte tag, with room).
pub const MAX_SEALED_KEY_LEN: usize = 128;
/// Most events one `Sequenced` statement places (about 16 KiB of entries: one relay signature
/// covers up to this many events of one conversation).
pub const MAX_SEQUENCED_ENTRIES: usize = 256;
/// Fixed bytes in front of the body: version, id, signature.
pub const ENVELOPE_PREFIX_LEN: usize = 1 + 32 + 64;

/// Who did what, where, and when, as the author saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventHeader {
    /// The conversation the event belongs to.
    pub conversation: ConversationId,
    /// The signing device (its ed25519 public key).
    pub author: DeviceId,
    /// The user the device acts for (checked by the relay; certified per device later).
    pub user: UserId,
    /// Per (device, conversation) counter, 1 for the device's first event in the conversation.
    pub counter: u64,
    /// Id of the same device's previous event in this conversation (`None` when `counter == 1`).
    pub prev: Option<EventId>,
    /// Lamport clock: greater than every event the author had seen in this conversation.
    pub lamport: u64,
    /// The author's wall clock in milliseconds since the Unix epoch (informational only).
    pub wall_ms: u64,
}

/// Domain of [`EventHeader::message_id`].
const MESSAGE_ID_DOMAIN: &str = "tidings 2026-12 message id from conversation, author, counter";

impl EventHeader {
    /// The id a `Send` with this header must carry: derived from the conversation, the
    /// authoring device and its counter, so that a message belongs to its author. Another
    /// device cannot sign a `Send` of the same id (its author differs), and the author cannot
    /// sign two (its counter is a chain position: a second event there is a fork, refused).
    pub fn message_id(&self) -> MessageId {
        let mut h = blake3::Hasher::new_derive_key(MESSAGE_ID_DOMAIN);
        h.update(&self.conversation.0);
        h.update(&self.author.0);
        h.update(&self.counter.to_le_bytes());
        let mut id = [0u8; MessageId::LEN];
        id.copy_from_slice(&h.finalize().as_bytes()[..MessageId::LEN]);
        MessageId(id)
    }

    /// `kind` as an event with this header must carry it: a `Send`'s message id replaced by
    /// [`EventHeader::message_id`]; other kinds unchanged. For code that builds events by hand
    /// (tools, tests); the store derives the id itself.
    pub fn bind(&self, kind: EventKind) -> EventKind {
        match kind {
            EventKind::Send { body, media, .. } => EventKind::Send {
                message: self.message_id(),
                body,
                media,
            },
            other => other,
        }
    }
}

/// A reference from a message to a media blob that travels separately.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRef {
    /// Content address of the blob.
    pub blob: BlobId,
    /// Size in bytes.
    pub len: u64,
    /// MIME type, e.g. `image/jpeg`.
    pub mime: String,
}

/// A conversation key sealed to one device (see `docs/SECURITY.md` for the construction).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedKey {
    /// The recipient device.
    pub device: DeviceId,
    /// The sealed key: opened only with that device's X25519 secret.
    #[serde(with = "serde_bytes_vec")]
    pub sealed: Vec<u8>,
}

/// One event placed by a [`EventKind::Sequenced`] statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqEntry {
    /// The placed event.
    pub event: EventId,
    /// The message the event sent, when it was a `Send`.
    pub message: Option<MessageId>,
    /// The relay's clock when it sequenced the event, ms since the Unix epoch.
    pub server_ts_ms: u64,
}

/// Where the relay placed one event: read from a `Sequenced` statement or a legacy `ServerAck`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The placed event.
    pub event: EventId,
    /// The message the event sent, when it was a `Send`.
    pub message: Option<MessageId>,
    /// Its server sequence.
    pub seq: ServerSeq,
    /// The relay's clock when it sequenced the event.
    pub server_ts_ms: u64,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// A conversation is created with these member users; sequenced first by the relay.
    Create {
        /// The members, creator included.
        members: Vec<UserId>,
    },
    /// A message was sent.
    Send {
        /// Chosen by the sending device, unique in the conversation.
        message: MessageId,
        /// Opaque body bytes.
        body: Vec<u8>,
        /// Media that travels apart from the body.
        media: Vec<MediaRef>,
    },
    /// The relay accepted `event` and gave it a place in the conversation's order (one signed
    /// event per sequenced event: how relays before protocol 3 placed events; kept readable
    /// for logs written then, see [`EventKind::Sequenced`] for today's statement).
    ServerAck {
        /// The acknowledged event.
        event: EventId,
        /// The message the event sent, when it was a `Send`.
        message: Option<MessageId>,
        /// The event's server sequence.
        seq: ServerSeq,
        /// The relay's clock when it sequenced the event, ms since the Unix epoch.
        server_ts_ms: u64,
    },
    /// The relay's signed statement placing a run of events in the conversation's order: the
    /// entry at index `i` has server sequence `header.counter + i`. One statement (one
    /// signature) per conversation per group commit, up to [`MAX_SEQUENCED_ENTRIES`] entries.
    /// Its header's `prev` names the statement that placed the sequence before `counter`, so
    /// the statements form a hash chain over (seq, event id, server ts): a statement's id
    /// commits to every placement since the conversation began.
    Sequenced {
        /// The placed events, in sequence order from `header.counter`.
        entries: Vec<SeqEntry>,
    },
    /// Every message up to `up_to` reached the authoring device (cumulative).
    Delivered {
        /// Highest server sequence covered.
        up_to: ServerSeq,
        /// The id of the relay statement that placed `up_to` on the authoring device: its
        /// chain head there. A device that holds another statement at `up_to` was shown
        /// another history (`ChainIssue::HeadMismatch`). `None` in receipts written before
        /// heads were carried (tag 4).
        head: Option<EventId>,
    },
    /// Every message up to `up_to` was read on the authoring device (cumulative).
    Read {
        /// Highest server sequence covered.
        up_to: ServerSeq,
        /// As for `Delivered` (tag 5 when `None`).
        head: Option<EventId>,
    },
    /// An admin of the conversation adds `user` (see [`crate::membership`] for the rules).
    /// A new key epoch follows every membership change.
    AddMember {
        /// The user added.
        user: UserId,
        /// Whether the new member may add and remove members too.
        admin: bool,
    },
    /// An admin removes `user`, or a member leaves (`user` is the author's own user).
    RemoveMember {
        /// The user removed.
        user: UserId,
    },
    /// Conversation keys, each sealed to one member device's X25519 key.
    ///
    /// `epoch: None` starts a new epoch whose id is this event's id; `Some(e)` shares the key
    /// of the existing epoch `e` again (with a device that asked for it, with devices beyond
    /// [`MAX_SEALED_KEYS`], or on purpose to show a new member earlier history).
    ///
    /// An opening event carries `commitment`, the one public commitment to the epoch's key
    /// ([`crate::e2ee::epoch_commitment`]): every device checks the key it opens, from this
    /// event or from any re-share, against it. A re-share carries none (`None`; an event with
    /// both is refused). An opening without one was written before commitments existed
    /// (tag 8); its keys are no longer taken in.
    EpochKeys {
        /// The epoch shared again, or `None` for a new epoch named by this event.
        epoch: Option<EventId>,
        /// For an opening: the commitment to the epoch key.
        commitment: Option<[u8; 32]>,
        /// One sealed copy of the key per recipient device.
        keys: Vec<SealedKey>,
    },
    /// The author's device lacks the key of `epoch` and asks the members' devices to share it.
    KeyRequest {
        /// The epoch whose key is missing.
        epoch: EventId,
    },
    /// The conversation's retention policy from this event's place on (see
    /// [`crate::retention`]: any member may set it).
    SetRetention {
        /// The policy.
        policy: crate::retention::RetentionPolicy,
    },
    /// A kind this build does not know: kept, verified and forwarded, but not folded.
    Unknown {
        /// The kind tag.
        tag: u16,
        /// The kind's encoded payload.
        payload: Vec<u8>,
    },
}

mod payload;
pub(crate) use payload::serde_bytes_vec;
use payload::{
    tag, AckPayload, AddMemberPayload, EpochKeysPayload, EpochKeysPayloadRef, EpochOpenPayload,
    EpochOpenPayloadRef, SendPayload, SendPayloadRef,
};

/// Why bytes were not accepted as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the fixed prefix, or a body cut short.
    #[error("event truncated: {len} bytes")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// More bytes than [`MAX_EVENT_LEN`].
    #[error("event too large: {len} bytes, limit {max}")]
    TooLarge {
        /// Bytes received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A version byte this build does not read.
    #[error("unknown event version {0}")]
    UnknownVersion(u8),
    /// The body is not a valid encoding.
    #[error("malformed event body: {0}")]
    Malformed(&'static str),
    /// Valid postcard, but not the canonical encoding of what it decodes to.
    #[error("event body is not in canonical form")]
    NonCanonical,
    /// A field is outside its limits.
    #[error("event field {field} out of limits: {len} > {max}")]
    FieldTooLarge {
        /// Which field.
        field: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The id in the envelope is not the hash of the body.
    #[error("event id mismatch: envelope says {claimed}, body hashes to {actual}")]
    IdMismatch {
        /// Id found in the envelope.
        claimed: EventId,
        /// Id computed from the body.
        actual: EventId,
    },
    /// The author field is not a usable ed25519 public key.
    #[error("author {0} is not a valid ed25519 key")]
    BadKey(DeviceId),
    /// The signature does not verify under the author's key.
    #[error("bad signature on event {0}")]
    BadSignature(EventId),
    /// A `Send` whose message id is not the one bound to its author and counter
    /// ([`EventHeader::message_id`]): an attempt to take over another device's message.
    #[error("event {event} sends message {message}, which is not bound to its author")]
    UnboundMessage {
        /// The event.
        event: EventId,
        /// The message id it claims.
        message: MessageId,
    },
}

/// A signed, verified event with its envelope bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    id: EventId,
    header: EventHeader,
    kind: EventKind,
    bytes: Vec<u8>,
}

impl EventKind {
    fn to_tagged(&self) -> (u16, Vec<u8>) {
        match self {
            EventKind::Create { members } => (tag::CREATE, enc(members)),
            EventKind::Send {
                message,
                body,
                media,
            } => (
                tag::SEND,
                enc(&SendPayloadRef {
                    message: *message,
                    body,
                    media,
                }),
            ),
            EventKind::ServerAck {
                event,
                message,
                seq,
                server_ts_ms,
            } => (
                tag::SERVER_ACK,
                enc(&AckPayload {
                    event: *event,
                    message: *message,
                    seq: *seq,
                    server_ts_ms: *server_ts_ms,
                }),
            ),
            EventKind::Sequenced { entries } => (tag::SEQUENCED, enc(entries)),
            EventKind::Delivered { up_to, head: None } => (tag::DELIVERED, enc(up_to)),
            EventKind::Read { up_to, head: None } => (tag::READ, enc(up_to)),
            EventKind::Delivered {
                up_to,
                head: Some(head),
            } => (tag::DELIVERED_AT, enc(&(*up_to, *head))),
            EventKind::Read {
                up_to,
                head: Some(head),
            } => (tag::READ_AT, enc(&(*up_to, *head))),
            EventKind::AddMember { user, admin } => (
                tag::ADD_MEMBER,
                enc(&AddMemberPayload {
                    user: *user,
                    admin: *admin,
                }),
            ),
            EventKind::RemoveMember { user } => (tag::REMOVE_MEMBER, enc(user)),
            EventKind::EpochKeys {
                epoch: None,
                commitment: Some(commitment),
                keys,
            } => (
                tag::EPOCH_OPEN,
                enc(&EpochOpenPayloadRef {
                    commitment: *commitment,
                    keys,
                }),
            ),
            // A re-share; or an uncommitted opening (only as written before tag 10). A
            // re-share with a commitment never gets here: `check_limits` refuses it.
            EventKind::EpochKeys { epoch, keys, .. } => (
                tag::EPOCH_KEYS,
                enc(&EpochKeysPayloadRef {
                    epoch: *epoch,
                    keys,
                }),
            ),
            EventKind::KeyRequest { epoch } => (tag::KEY_REQUEST, enc(epoch)),
            EventKind::SetRetention { policy } => (tag::SET_RETENTION, enc(policy)),
            EventKind::Unknown { tag, payload } => (*tag, payload.clone()),
        }
    }

    fn from_tagged(tag: u16, payload: &[u8]) -> Result<EventKind, DecodeError> {
        fn exact<'a, T: Deserialize<'a>>(p: &'a [u8]) -> Result<T, DecodeError> {
            let (v, rest) = postcard::take_from_bytes::<T>(p)
                .map_err(|_| DecodeError::Malformed("kind payload"))?;
            if !rest.is_empty() {
                return Err(DecodeError::Malformed("trailing bytes in kind payload"));
            }
            Ok(v)
        }
        let kind = match tag {
            tag::CREATE => EventKind::Create {
                members: exact(payload)?,
            },
            tag::SEND => {
                let p: SendPayload = exact(payload)?;
                EventKind::Send {
                    message: p.message,
                    body: p.body,
                    media: p.media,
                }
            }
            tag::SERVER_ACK => {
                let p: AckPayload = exact(payload)?;
                EventKind::ServerAck {
                    event: p.event,
                    message: p.message,
                    seq: p.seq,
                    server_ts_ms: p.server_ts_ms,
                }
            }
            tag::SEQUENCED => EventKind::Sequenced {
                entries: exact(payload)?,
            },
            tag::DELIVERED => EventKind::Delivered {
                up_to: exact(payload)?,
                head: None,
            },
            tag::READ => EventKind::Read {
                up_to: exact(payload)?,
                head: None,
            },
            tag::DELIVERED_AT => {
                let (up_to, head): (ServerSeq, EventId) = exact(payload)?;
                EventKind::Delivered {
                    up_to,
                    head: Some(head),
                }
            }
            tag::READ_AT => {
                let (up_to, head): (ServerSeq, EventId) = exact(payload)?;
                EventKind::Read {
                    up_to,
                    head: Some(head),
                }
            }
            tag::ADD_MEMBER => {
                let p: AddMemberPayload = exact(payload)?;
                EventKind::AddMember {
                    user: p.user,
                    admin: p.admin,
                }
            }
            tag::REMOVE_MEMBER => EventKind::RemoveMember {
                user: exact(payload)?,
            },
            tag::EPOCH_KEYS => {
                let p: EpochKeysPayload = exact(payload)?;
                EventKind::EpochKeys {
                    epoch: p.epoch,
                    commitment: None,
                    keys: p.keys,
                }
            }
            tag::EPOCH_OPEN => {
                let p: EpochOpenPayload = exact(payload)?;
                EventKind::EpochKeys {
                    epoch: None,
                    commitment: Some(p.commitment),
                    keys: p.keys,
                }
            }
            tag::KEY_REQUEST => EventKind::KeyRequest {
                epoch: exact(payload)?,
            },
            tag::SET_RETENTION => EventKind::SetRetention {
                policy: exact(payload)?,
            },
            tag => EventKind::Unknown {
                tag,
                payload: payload.to_vec(),
            },
        };
        kind.check_limits()?;
        Ok(kind)
    }

    fn check_limits(&self) -> Result<(), DecodeError> {
        let check = |field, len, max| {
            if len > max {
                Err(DecodeError::FieldTooLarge { field, len, max })
            } else {
                Ok(())
            }
        };
        match self {
            EventKind::Create { members } => check("members", members.len(), MAX_MEMBERS),
            EventKind::Sequenced { entries } if entries.is_empty() => Err(DecodeError::Malformed(
                "a sequencing statement places no event",
            )),
            EventKind::Sequenced { entries } => {
                check("entries", entries.len(), MAX_SEQUENCED_ENTRIES)
            }
            EventKind::Send { body, media, .. } => {
                check("body", body.len(), MAX_BODY_LEN)?;
                check("media", media.len(), MAX_MEDIA_REFS)
            }
            EventKind::EpochKeys {
                epoch: Some(_),
                commitment: Some(_),
                ..
            } => Err(DecodeError::Malformed(
                "a key re-share carries a commitment",
            )),
            EventKind::EpochKeys { keys, .. } => {
                check("keys", keys.len(), MAX_SEALED_KEYS)?;
                keys.iter()
                    .try_for_each(|k| check("sealed key", k.sealed.len(), MAX_SEALED_KEY_LEN))
            }
            EventKind::SetRetention { policy } => policy
                .check()
                .map_err(|_| DecodeError::Malformed("retention policy out of limits")),
            _ => Ok(()),
        }
    }

    /// Whether this is the relay's kind: it places events (`Sequenced`, or a legacy
    /// `ServerAck`) and only the pinned relay key may sign it.
    pub fn is_sequencing(&self) -> bool {
        matches!(
            self,
            EventKind::Sequenced { .. } | EventKind::ServerAck { .. }
        )
    }

    /// The users this event brings into its conversation: a `Create`'s members, an
    /// `AddMember`'s user; none for other kinds.
    pub fn users_brought_in(&self) -> &[UserId] {
        match self {
            EventKind::Create { members } => members,
            EventKind::AddMember { user, .. } => std::slice::from_ref(user),
            _ => &[],
        }
    }

    /// A short name for logs and traces.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Create { .. } => "create",
            EventKind::Send { .. } => "send",
            EventKind::ServerAck { .. } => "server-ack",
            EventKind::Sequenced { .. } => "sequenced",
            EventKind::Delivered { .. } => "delivered",
            EventKind::Read { .. } => "read",
            EventKind::AddMember { .. } => "add-member",
            EventKind::RemoveMember { .. } => "remove-member",
            EventKind::EpochKeys { .. } => "epoch-keys",
            EventKind::KeyRequest { .. } => "key-request",
            EventKind::SetRetention { .. } => "set-retention",
            EventKind::Unknown { .. } => "unknown",
        }
    }
}

/// postcard into a `Vec` fails only if a `Serialize` impl reports an error, and ours never do.
fn enc<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

#[derive(Serialize)]
struct BodyRef<'a> {
    header: &'a EventHeader,
    tag: u16,
    #[serde(with = "serde_bytes_vec")]
    payload: &'a [u8],
}

#[derive(Deserialize)]
struct BodyOwned<'a> {
    header: EventHeader,
    tag: u16,
    #[serde(borrow)]
    payload: &'a [u8],
}

fn hash_body(body: &[u8]) -> EventId {
    let mut h = blake3::Hasher::new();
    h.update(&[EVENT_VERSION]);
    h.update(body);
    EventId(*h.finalize().as_bytes())
}

impl Event {
    /// Signs a new event with `key`. Fails only when a field is over its limit.
    pub fn sign(
        key: &SigningKey,
        header: EventHeader,
        kind: EventKind,
    ) -> Result<Event, DecodeError> {
        kind.check_limits()?;
        if matches!(kind, EventKind::Unknown { tag, .. } if tag::is_known(tag)) {
            return Err(DecodeError::Malformed("an unknown kind with a known tag"));
        }
        let (tag, payload) = kind.to_tagged();
        let body = postcard::to_stdvec(&BodyRef {
            header: &header,
            tag,
            payload: &payload,
        })
        .map_err(|_| DecodeError::Malformed("unencodable header"))?;
        let len = ENVELOPE_PREFIX_LEN + body.len();
        if len > MAX_EVENT_LEN {
            return Err(DecodeError::TooLarge {
                len,
                max: MAX_EVENT_LEN,
            });
        }
        let id = hash_body(&body);
        let signature = key.sign(&id.0);
        let mut bytes = Vec::with_capacity(len);
        bytes.push(EVENT_VERSION);
        bytes.extend_from_slice(&id.0);
        bytes.extend_from_slice(&signature.to_bytes());
        bytes.extend_from_slice(&body);
        Ok(Event {
            id,
            header,
            kind,
            bytes,
        })
    }

    /// Decodes and fully verifies an envelope from an untrusted source: the id, the
    /// event's own rules ([`Event::check_rules`]) and the signature under the one rule of
    /// [`crate::signature`].
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        Self::decode_with(bytes, author_key)
    }

    /// [`Event::decode`] with the author's key from `key_of` (a cache of decoded keys: the
    /// relay keeps one per connection). The checks are exactly those of `decode`.
    pub fn decode_with(
        bytes: &[u8],
        key_of: impl FnOnce(&DeviceId) -> Result<VerifyingKey, DecodeError>,
    ) -> Result<Event, DecodeError> {
        let (event, signature) = Self::decode_parts(bytes)?;
        event.check_rules()?;
        let key = key_of(&event.header.author)?;
        if !signature::verify(&key, &event.id.0, &signature) {
            return Err(DecodeError::BadSignature(event.id));
        }
        Ok(event)
    }

    /// Decodes and verifies a batch, each envelope on its own (one bad envelope does not
    /// reject the rest). The same rule as [`Event::decode`] for every envelope: see
    /// [`crate::signature`] for why there is no ed25519 batch equation here. Author keys are
    /// decoded once per batch.
    pub fn decode_batch<B: AsRef<[u8]>>(envelopes: &[B]) -> Vec<Result<Event, DecodeError>> {
        let mut keys: HashMap<DeviceId, VerifyingKey> = HashMap::new();
        envelopes
            .iter()
            .map(|env| {
                Self::decode_with(env.as_ref(), |author| {
                    if let Some(k) = keys.get(author) {
                        return Ok(*k);
                    }
                    let k = author_key(author)?;
                    keys.insert(*author, k);
                    Ok(k)
                })
            })
            .collect()
    }

    /// The rules an event must meet by itself, whoever checks it (relay or device, before
    /// any state is looked at): a `Send` carries the message id bound to its header
    /// ([`EventHeader::message_id`]), so that no other device can claim that message.
    pub fn check_rules(&self) -> Result<(), DecodeError> {
        match &self.kind {
            EventKind::Sequenced { entries }
                if self.header.counter == 0
                    || self
                        .header
                        .counter
                        .checked_add(entries.len() as u64)
                        .is_none() =>
            {
                Err(DecodeError::Malformed(
                    "a sequencing statement outside the sequence range",
                ))
            }
            EventKind::Send { message, .. } if *message != self.header.message_id() => {
                Err(DecodeError::UnboundMessage {
                    event: self.id,
                    message: *message,
                })
            }
            _ => Ok(()),
        }
    }

    /// Decodes an envelope that this process verified before (read back from its own store)
    /// without checking the signature again. The id is still recomputed.
    pub fn decode_trusted(bytes: &[u8]) -> Result<Event, DecodeError> {
        Self::decode_parts(bytes).map(|(e, _)| e)
    }

    fn decode_parts(bytes: &[u8]) -> Result<(Event, Signature), DecodeError> {
        if bytes.len() > MAX_EVENT_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_EVENT_LEN,
            });
        }
        let Some((&version, rest)) = bytes.split_first() else {
            return Err(DecodeError::Truncated { len: 0 });
        };
        if version != EVENT_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        if bytes.len() < ENVELOPE_PREFIX_LEN {
            return Err(DecodeError::Truncated { len: bytes.len() });
        }
        let (id_bytes, rest) = rest.split_at(32);
        let (sig_bytes, body) = rest.split_at(64);
        let mut claimed = [0u8; 32];
        claimed.copy_from_slice(id_bytes);
        let claimed = EventId(claimed);
        let actual = hash_body(body);
        if claimed != actual {
            return Err(DecodeError::IdMismatch { claimed, actual });
        }
        let (parsed, trailing) =
            postcard::take_from_bytes::<BodyOwned<'_>>(body).map_err(|e| match e {
                postcard::Error::DeserializeUnexpectedEnd => {
                    DecodeError::Truncated { len: bytes.len() }
                }
                _ => DecodeError::Malformed("body"),
            })?;
        if !trailing.is_empty() {
            return Err(DecodeError::Malformed("trailing bytes after body"));
        }
        let kind = EventKind::from_tagged(parsed.tag, parsed.payload)?;
        // Only the canonical encoding may carry a given meaning: re-encode and compare, so
        // that one event cannot be given two ids (postcard accepts over-long varints).
        let (tag, payload) = kind.to_tagged();
        let canonical = postcard::to_stdvec(&BodyRef {
            header: &parsed.header,
            tag,
            payload: &payload,
        })
        .map_err(|_| DecodeError::Malformed("body"))?;
        if canonical != body {
            return Err(DecodeError::NonCanonical);
        }
        let mut sig = [0u8; 64];
        sig.copy_from_slice(sig_bytes);
        Ok((
            Event {
                id: actual,
                header: parsed.header,
                kind,
                bytes: bytes.to_vec(),
            },
            Signature::from_bytes(&sig),
        ))
    }

    /// The event's id.
    pub fn id(&self) -> EventId {
        self.id
    }

    /// The header.
    pub fn header(&self) -> &EventHeader {
        &self.header
    }

    /// The kind.
    pub fn kind(&self) -> &EventKind {
        &self.kind
    }

    /// The places this event gives other events, when it is the relay's (a `Sequenced`
    /// statement: one per entry; a legacy `ServerAck`: one); empty for every other kind.
    pub fn placements(&self) -> Vec<Placement> {
        match &self.kind {
            EventKind::Sequenced { entries } => entries
                .iter()
                .zip(self.header.counter..)
                .map(|(e, seq)| Placement {
                    event: e.event,
                    message: e.message,
                    seq,
                    server_ts_ms: e.server_ts_ms,
                })
                .collect(),
            EventKind::ServerAck {
                event,
                message,
                seq,
                server_ts_ms,
            } => vec![Placement {
                event: *event,
                message: *message,
                seq: *seq,
                server_ts_ms: *server_ts_ms,
            }],
            _ => Vec::new(),
        }
    }

    /// The highest sequence this relay event places (`None` for every other kind).
    pub fn last_placed(&self) -> Option<ServerSeq> {
        match &self.kind {
            EventKind::Sequenced { entries } => Some(
                self.header
                    .counter
                    .saturating_add(entries.len() as u64)
                    .saturating_sub(1),
            ),
            EventKind::ServerAck { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// The envelope bytes, as stored and sent.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The envelope bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The message a `Send` carries.
    pub fn message(&self) -> Option<MessageId> {
        match &self.kind {
            EventKind::Send { message, .. } => Some(*message),
            _ => None,
        }
    }

    /// The conversation.
    pub fn conversation(&self) -> ConversationId {
        self.header.conversation
    }
}

/// The author's key under the one signature rule ([`crate::signature::verifying_key`]).
pub fn author_key(device: &DeviceId) -> Result<VerifyingKey, DecodeError> {
    signature::verifying_key(&device.0).ok_or(DecodeError::BadKey(*device))
}

#[cfg(test)]
mod tests;
