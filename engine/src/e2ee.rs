//! End-to-end encryption of message bodies with per-conversation epoch keys.
//!
//! A conversation's content key changes with every membership change: a new *epoch*. Its key
//! is 32 random bytes, sent in an `EpochKeys` event sealed to each member device's X25519 key
//! ([`crate::crypto::seal`]); the epoch is named by the id of the event that started it. A
//! message body travels as a [`SealedBody`]: the epoch it uses, then the XChaCha20-Poly1305
//! ciphertext of the plaintext with the message's identity bound as associated data
//! ([`body_aad`]), so a body copied into another event (another conversation, author, message
//! id or position) fails to decrypt.
//!
//! Body encoding (the `body` of a `Send`): `0x00 ‖ plaintext` for a body sent without
//! encryption (only when a store is configured so, for measurements), or
//! `0x01 ‖ epoch id (32) ‖ nonce (24) ‖ ciphertext ‖ tag (16)`. A message that carries media
//! uses `0x02` (sealed) or `0x03` (clear) with the same layout, and its plaintext is a
//! [`crate::media::MediaBody`] (caption and blob descriptors: keys, roots, sizes, mime types,
//! thumbnails); a sealed one adds [`MEDIA_AAD_SUFFIX`] to its associated data, so a text body
//! relabelled as media (or the reverse) does not decrypt.
//!
//! What this gives and does not give is in `docs/SECURITY.md`.

use crate::conversation::MessageRecord;
use crate::crypto::{self, AgreementPublic, AgreementSecret, CryptoError, EpochKey};
use crate::event::{MediaRef, SealedKey};
use crate::ids::{ConversationId, DeviceId, EventId, MessageId};

/// Version byte of a body sent in the clear.
pub const BODY_PLAIN: u8 = 0;
/// Version byte of an encrypted body.
pub const BODY_SEALED_V1: u8 = 1;
/// Version byte of an encrypted body whose plaintext is a [`crate::media::MediaBody`].
pub const BODY_SEALED_MEDIA_V1: u8 = 2;
/// Version byte of a [`crate::media::MediaBody`] sent in the clear (measurements only).
pub const BODY_PLAIN_MEDIA: u8 = 3;
/// What a media body's associated data adds to [`body_aad`].
pub const MEDIA_AAD_SUFFIX: &[u8] = b"tidings/media-body/v1\0";
/// Bytes an encrypted body adds to its plaintext.
pub const SEALED_BODY_OVERHEAD: usize = 1 + 32 + crypto::BODY_OVERHEAD;
/// Largest message plaintext a store sends: the body limit of an event less what encryption
/// adds, so a plaintext within it always fits once sealed. Bodies sent in the clear (a store
/// configured so for measurements) keep the same limit, so one number holds for the app.
pub const MAX_PLAINTEXT_LEN: usize = crate::event::MAX_BODY_LEN - SEALED_BODY_OVERHEAD;

const AAD_DOMAIN: &[u8] = b"tidings/body/v1\0";
const EPOCH_DOMAIN: &[u8] = b"tidings/epoch/v1\0";
const COMMIT_DOMAIN: &[u8] = b"tidings/epoch-commit/v1\0";
const SHARE_EPHEMERAL_CONTEXT: &str = "tidings epoch share ephemeral v1";

/// The public commitment to an epoch key that the epoch's opening event carries: keyed
/// BLAKE3 under the key of `domain ‖ conversation ‖ author ‖ counter`. The epoch id cannot be
/// bound (it is the hash of the event that carries the commitment), so the opening event's
/// place is: author device and counter, fixed by its signature, name one event of the
/// conversation. Every device compares the key it opens with this value, so a member cannot
/// hand out another key for the epoch, and an opener cannot seal different keys to different
/// devices, without the devices noticing. It reveals nothing of the key (a keyed hash of a
/// public message under a 256-bit random key).
pub fn epoch_commitment(
    conversation: ConversationId,
    author: DeviceId,
    counter: u64,
    key: &EpochKey,
) -> [u8; 32] {
    let mut msg = Vec::with_capacity(COMMIT_DOMAIN.len() + 16 + 32 + 8);
    msg.extend_from_slice(COMMIT_DOMAIN);
    msg.extend_from_slice(&conversation.0);
    msg.extend_from_slice(&author.0);
    msg.extend_from_slice(&counter.to_be_bytes());
    *blake3::keyed_hash(key.as_bytes(), &msg).as_bytes()
}

/// A body as it travels, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SealedBody<'a> {
    /// Sent without encryption.
    Plain(&'a [u8]),
    /// Encrypted under the key of `epoch`.
    Sealed {
        /// The epoch (the id of the `EpochKeys` event that started it).
        epoch: EventId,
        /// Nonce, ciphertext and tag.
        ciphertext: &'a [u8],
    },
    /// A media body sent without encryption.
    PlainMedia(&'a [u8]),
    /// A media body encrypted under the key of `epoch` (associated data:
    /// [`media_aad`]).
    SealedMedia {
        /// The epoch.
        epoch: EventId,
        /// Nonce, ciphertext and tag.
        ciphertext: &'a [u8],
    },
}

impl<'a> SealedBody<'a> {
    /// Reads a body's bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<SealedBody<'a>, CryptoError> {
        match bytes.split_first() {
            Some((&BODY_PLAIN, rest)) => Ok(SealedBody::Plain(rest)),
            Some((&BODY_PLAIN_MEDIA, rest)) => Ok(SealedBody::PlainMedia(rest)),
            Some((&v @ (BODY_SEALED_V1 | BODY_SEALED_MEDIA_V1), rest))
                if rest.len() >= 32 + crypto::BODY_OVERHEAD =>
            {
                let (epoch, ciphertext) = rest.split_at(32);
                let epoch = EventId(
                    epoch
                        .try_into()
                        .map_err(|_| CryptoError::Malformed("short epoch id"))?,
                );
                Ok(if v == BODY_SEALED_V1 {
                    SealedBody::Sealed { epoch, ciphertext }
                } else {
                    SealedBody::SealedMedia { epoch, ciphertext }
                })
            }
            Some((&(BODY_SEALED_V1 | BODY_SEALED_MEDIA_V1), _)) => {
                Err(CryptoError::Malformed("encrypted body too short"))
            }
            Some((&v, _)) => Err(CryptoError::UnsupportedVersion(v)),
            None => Err(CryptoError::Malformed("empty body")),
        }
    }
}

/// What a message's identity binds into its body's encryption: domain, conversation, author
/// device, user, message id, the author's lamport clock and wall clock, and the media
/// references. Everything here is signed in the event, so moving a body to any other event
/// changes the associated data.
pub fn body_aad(
    conversation: ConversationId,
    author: DeviceId,
    user: crate::ids::UserId,
    message: MessageId,
    lamport: u64,
    wall_ms: u64,
    media: &[MediaRef],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(AAD_DOMAIN.len() + 16 * 2 + 32 * 2 + 16 + 8 * 2);
    out.extend_from_slice(AAD_DOMAIN);
    out.extend_from_slice(&conversation.0);
    out.extend_from_slice(&author.0);
    out.extend_from_slice(&user.0);
    out.extend_from_slice(&message.0);
    out.extend_from_slice(&lamport.to_be_bytes());
    out.extend_from_slice(&wall_ms.to_be_bytes());
    out.extend_from_slice(&postcard::to_stdvec(media).unwrap_or_default());
    out
}

/// The associated data of a folded message (see [`body_aad`]).
pub fn record_aad(
    conversation: ConversationId,
    message: MessageId,
    record: &MessageRecord,
) -> Vec<u8> {
    body_aad(
        conversation,
        record.author,
        record.user,
        message,
        record.lamport,
        record.wall_ms,
        &record.media,
    )
}

/// Encrypts `plaintext` under `key` of `epoch`. `nonce` must be fresh random bytes.
pub fn seal_body(
    epoch: EventId,
    key: &EpochKey,
    aad: &[u8],
    plaintext: &[u8],
    nonce: [u8; 24],
) -> Vec<u8> {
    let ct = crypto::encrypt_body(key, aad, plaintext, nonce);
    let mut out = Vec::with_capacity(1 + 32 + ct.len());
    out.push(BODY_SEALED_V1);
    out.extend_from_slice(&epoch.0);
    out.extend_from_slice(&ct);
    out
}

/// The associated data of a media body: its message's [`body_aad`] and
/// [`MEDIA_AAD_SUFFIX`].
pub fn media_aad(mut aad: Vec<u8>) -> Vec<u8> {
    aad.extend_from_slice(MEDIA_AAD_SUFFIX);
    aad
}

/// Encrypts a media body's plaintext (an encoded [`crate::media::MediaBody`]); `aad` is the
/// message's [`body_aad`] (the media suffix is added here).
pub fn seal_media_body(
    epoch: EventId,
    key: &EpochKey,
    aad: &[u8],
    plaintext: &[u8],
    nonce: [u8; 24],
) -> Vec<u8> {
    let mut out = seal_body(epoch, key, &media_aad(aad.to_vec()), plaintext, nonce);
    out[0] = BODY_SEALED_MEDIA_V1;
    out
}

/// A media body sent in the clear (measurements only).
pub fn plain_media_body(plaintext: &[u8]) -> Vec<u8> {
    let mut out = plain_body(plaintext);
    out[0] = BODY_PLAIN_MEDIA;
    out
}

/// A body sent in the clear (measurements only).
pub fn plain_body(plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + plaintext.len());
    out.push(BODY_PLAIN);
    out.extend_from_slice(plaintext);
    out
}

/// The sealing context of an epoch key: which conversation, which epoch (for a new epoch,
/// which event of which device starts it, since its id is not known before it is signed), and
/// which recipient.
fn epoch_context(
    conversation: ConversationId,
    origin: &EpochOrigin,
    recipient: &DeviceId,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(EPOCH_DOMAIN.len() + 16 + 1 + 40 + 32);
    out.extend_from_slice(EPOCH_DOMAIN);
    out.extend_from_slice(&conversation.0);
    match origin {
        EpochOrigin::New { author, counter } => {
            out.push(0);
            out.extend_from_slice(&author.0);
            out.extend_from_slice(&counter.to_be_bytes());
        }
        EpochOrigin::Shared(epoch) => {
            out.push(1);
            out.extend_from_slice(&epoch.0);
        }
    }
    out.extend_from_slice(&recipient.0);
    out
}

/// Where the key in an `EpochKeys` event comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochOrigin {
    /// A new epoch started by the event at (`author`, `counter`).
    New {
        /// The event's author device.
        author: DeviceId,
        /// The event's counter in its author's chain.
        counter: u64,
    },
    /// The key of an existing epoch, shared again.
    Shared(EventId),
}

/// Seals `key` to each recipient, with one entry of `ephemerals` (fresh random bytes) per
/// recipient; recipients beyond `ephemerals` are left out. Recipients whose X25519 key is
/// unusable (a low-order point, which a certificate should never carry) are skipped.
pub fn seal_epoch_key(
    conversation: ConversationId,
    origin: EpochOrigin,
    key: &EpochKey,
    recipients: &[(DeviceId, AgreementPublic)],
    ephemerals: &[[u8; 32]],
) -> Vec<SealedKey> {
    recipients
        .iter()
        .zip(ephemerals)
        .filter_map(|((device, public), ephemeral)| {
            let context = epoch_context(conversation, &origin, device);
            match crypto::seal(public, &context, key.as_bytes(), *ephemeral) {
                Ok(sealed) => Some(SealedKey {
                    device: *device,
                    sealed,
                }),
                Err(err) => {
                    tracing::warn!(%device, %err, "cannot seal an epoch key to this device");
                    None
                }
            }
        })
        .collect()
}

/// The X25519 ephemeral secret a store seals a share of `key` to `recipient` with: derived
/// from the key and the sealing context instead of drawn at random. A device that holds the
/// key can then seal the same share again and compare bytes ([`share_matches`]), and so learn
/// whether a share it cannot open carries the key: it cannot open shares sealed to others.
/// Only holders of the key can derive the ephemeral, and one ephemeral only ever seals that
/// one key to that one recipient in that one context, so no key is reused for two plaintexts.
pub fn share_ephemeral(
    conversation: ConversationId,
    origin: EpochOrigin,
    key: &EpochKey,
    recipient: &DeviceId,
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(SHARE_EPHEMERAL_CONTEXT);
    h.update(key.as_bytes());
    h.update(&epoch_context(conversation, &origin, recipient));
    *h.finalize().as_bytes()
}

/// Seals `key` to each recipient with ephemerals from [`share_ephemeral`]: shares every
/// holder of the key can check.
pub fn seal_epoch_key_checkable(
    conversation: ConversationId,
    origin: EpochOrigin,
    key: &EpochKey,
    recipients: &[(DeviceId, AgreementPublic)],
) -> Vec<SealedKey> {
    let ephemerals: Vec<[u8; 32]> = recipients
        .iter()
        .map(|(d, _)| share_ephemeral(conversation, origin, key, d))
        .collect();
    seal_epoch_key(conversation, origin, key, recipients, &ephemerals)
}

/// Whether `share` is `key` sealed to `public` (the recipient's certified X25519 key) as
/// [`seal_epoch_key_checkable`] seals it. False for a wrong key, a garbled share, another
/// recipient key, and for a share sealed with another ephemeral (a random one, as stores
/// before checkable shares drew): such a share may hold the key, but nothing shows it.
pub fn share_matches(
    conversation: ConversationId,
    origin: EpochOrigin,
    key: &EpochKey,
    share: &SealedKey,
    public: &AgreementPublic,
) -> bool {
    let context = epoch_context(conversation, &origin, &share.device);
    let ephemeral = share_ephemeral(conversation, origin, key, &share.device);
    crypto::seal(public, &context, key.as_bytes(), ephemeral).is_ok_and(|s| s == share.sealed)
}

/// Opens this device's copy of an epoch key, if the event carries one for `me`.
pub fn open_epoch_key(
    conversation: ConversationId,
    origin: EpochOrigin,
    keys: &[SealedKey],
    me: DeviceId,
    own: &AgreementSecret,
) -> Option<Result<EpochKey, CryptoError>> {
    let mine = keys.iter().find(|k| k.device == me)?;
    let context = epoch_context(conversation, &origin, &me);
    Some(crypto::open(own, &context, &mine.sealed).and_then(|k| EpochKey::from_slice(&k)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UserId;

    #[test]
    fn a_body_decrypts_only_with_its_own_identity() {
        let key = EpochKey::from_bytes([5; 32]);
        let epoch = EventId([9; 32]);
        let conv = ConversationId([1; 16]);
        let aad = |m: u8, lamport: u64| {
            body_aad(
                conv,
                DeviceId([2; 32]),
                UserId([3; 32]),
                MessageId([m; 16]),
                lamport,
                7,
                &[],
            )
        };
        let body = seal_body(epoch, &key, &aad(1, 1), b"hello", [4; 24]);
        let SealedBody::Sealed {
            epoch: e,
            ciphertext,
        } = SealedBody::parse(&body).expect("parse")
        else {
            panic!("sealed expected");
        };
        assert_eq!(e, epoch);
        assert_eq!(
            crypto::decrypt_body(&key, &aad(1, 1), ciphertext).expect("open"),
            b"hello"
        );
        assert!(crypto::decrypt_body(&key, &aad(2, 1), ciphertext).is_err());
        assert!(crypto::decrypt_body(&key, &aad(1, 2), ciphertext).is_err());
        assert!(!body.windows(5).any(|w| w == b"hello"));
        assert_eq!(
            SealedBody::parse(&plain_body(b"x")),
            Ok(SealedBody::Plain(b"x"))
        );
        assert!(SealedBody::parse(&[1, 2, 3]).is_err());
        assert!(SealedBody::parse(&[7]).is_err());
        assert!(SealedBody::parse(&[]).is_err());
    }

    #[test]
    fn epoch_keys_open_only_for_their_recipient_and_origin() {
        let conv = ConversationId([1; 16]);
        let alice = AgreementSecret::from_seed([1; 32]);
        let bob = AgreementSecret::from_seed([2; 32]);
        let (a, b) = (DeviceId([10; 32]), DeviceId([11; 32]));
        let key = EpochKey::from_bytes([42; 32]);
        let origin = EpochOrigin::New {
            author: a,
            counter: 3,
        };
        let recipients = [(a, alice.public()), (b, bob.public())];
        let sealed = seal_epoch_key(conv, origin, &key, &recipients, &[[1; 32], [2; 32]]);
        assert_eq!(sealed.len(), 2);
        let opened = open_epoch_key(conv, origin, &sealed, b, &bob)
            .expect("mine")
            .expect("open");
        assert_eq!(opened.as_bytes(), key.as_bytes());
        // Another origin, another conversation, or the wrong secret: no key.
        let other = EpochOrigin::Shared(EventId([0; 32]));
        assert!(open_epoch_key(conv, other, &sealed, b, &bob)
            .expect("mine")
            .is_err());
        assert!(
            open_epoch_key(ConversationId([2; 16]), origin, &sealed, b, &bob)
                .expect("mine")
                .is_err()
        );
        assert!(open_epoch_key(conv, origin, &sealed, b, &alice)
            .expect("mine")
            .is_err());
        assert!(open_epoch_key(conv, origin, &sealed, DeviceId([12; 32]), &bob).is_none());
    }

    #[test]
    fn a_holder_of_the_key_can_check_shares_sealed_to_others() {
        let conv = ConversationId([1; 16]);
        let bob = AgreementSecret::from_seed([2; 32]);
        let b = DeviceId([11; 32]);
        let key = EpochKey::from_bytes([42; 32]);
        let origin = EpochOrigin::Shared(EventId([7; 32]));
        let recipients = [(b, bob.public())];
        let checkable = seal_epoch_key_checkable(conv, origin, &key, &recipients);
        let opened = open_epoch_key(conv, origin, &checkable, b, &bob)
            .expect("mine")
            .expect("open");
        assert_eq!(opened.as_bytes(), key.as_bytes());
        let check = |share: &SealedKey, key: &EpochKey, origin| {
            share_matches(conv, origin, key, share, &bob.public())
        };
        assert!(check(&checkable[0], &key, origin));
        // Another key, another origin, a random ephemeral, another recipient key: no match.
        let wrong = EpochKey::from_bytes([43; 32]);
        let poison = seal_epoch_key_checkable(conv, origin, &wrong, &recipients);
        assert!(!check(&poison[0], &key, origin));
        assert!(!check(
            &checkable[0],
            &key,
            EpochOrigin::Shared(EventId([8; 32]))
        ));
        let random = seal_epoch_key(conv, origin, &key, &recipients, &[[9; 32]]);
        assert!(!check(&random[0], &key, origin));
        let carol = AgreementSecret::from_seed([3; 32]);
        assert!(!share_matches(
            conv,
            origin,
            &key,
            &checkable[0],
            &carol.public()
        ));
    }
}
