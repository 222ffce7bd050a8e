//! The store's conversation keys: which epoch a message is sent under, new epochs after
//! membership changes, opening the keys sealed to this device, answering key requests, and
//! reading bodies (see [`crate::e2ee`] for the formats).
//!
//! Epoch keys are kept in the log sealed under the device's storage key, so the data
//! directory holds no plaintext: bodies stay encrypted in the log and in the documents and
//! are decrypted when read.

mod history_keys;
mod recipients;
mod requests;

use super::{Store, StoreError};
use crate::conversation::{Change, MessageView};
use crate::crypto::{EpochKey, StorageKey};
use crate::e2ee::{self, EpochOrigin, SealedBody};
use crate::event::{Event, EventKind, MediaRef, SealedKey, MAX_SEALED_KEYS};
use crate::ids::{ConversationId, DeviceId, EventId, ServerSeq};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

/// A message body as the app shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Decrypted.
    Text(Vec<u8>),
    /// Sent without encryption (a store configured so, for measurements).
    Clear(Vec<u8>),
    /// The key of `epoch` has not reached this device yet; it was asked for.
    WaitingForKey(EventId),
    /// The body does not decrypt with the key its epoch names: damaged or moved from another
    /// event.
    Unreadable(String),
    /// A message with media, decrypted: its caption and the descriptors of its blobs (key,
    /// root, sizes, mime type, thumbnail), to fetch on demand.
    Media(crate::media::MediaBody),
}

/// An epoch-key share that opened for this device but was not taken in: the key it carries
/// is not the one the epoch's opening event committed to, or the epoch has no commitment to
/// check it against. The body stays waiting for its key and the key is asked for again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedKeyShare {
    /// Its conversation.
    pub conversation: ConversationId,
    /// The epoch the share is for.
    pub epoch: EventId,
    /// The `EpochKeys` event that carried the share.
    pub event: EventId,
    /// Its author device.
    pub author: DeviceId,
    /// Why.
    pub reason: KeyShareRefusal,
}

/// Why an epoch-key share was refused (see [`RefusedKeyShare`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyShareRefusal {
    /// The key opened, but it is not the key the opening event committed to: a wrong key
    /// handed out by a member, or an opener that sealed different keys to different devices.
    #[error("the key does not match the epoch's commitment")]
    Mismatch,
    /// The epoch's opening event carries no commitment (written before commitments existed).
    #[error("the epoch's opening event carries no key commitment")]
    Uncommitted,
    /// The re-share names an epoch whose opening event this device does not hold in this
    /// conversation.
    #[error("the epoch's opening event is unknown here")]
    UnknownOpening,
}

/// One epoch key with what decides whether new messages may still use it.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Epoch {
    key: [u8; 32],
    /// The device that started the epoch, when known.
    creator: Option<DeviceId>,
    /// Devices any share of the epoch named, as far as this device saw: who may hold the key.
    /// An epoch named to a device outside the membership is no longer sent under.
    named: BTreeSet<DeviceId>,
    /// For an epoch this device started: the membership change it was started after.
    based_on: Option<ServerSeq>,
    /// Devices this device vouches hold the committed key: itself, the devices it sealed the
    /// key to, and those whose share it sealed again byte for byte
    /// ([`e2ee::share_matches`]). A sender shares the epoch with every member device missing
    /// here; a share it cannot check (a wrong or garbled one, or one to a device whose
    /// certificate it lacks) counts in `named` only, never here.
    holders: BTreeSet<DeviceId>,
}

/// An epoch record as stores wrote it before `holders` existed: every named device was taken
/// for a holder. Read back with `holders = named`, as it was used then.
#[derive(Deserialize)]
struct EpochV1 {
    key: [u8; 32],
    creator: Option<DeviceId>,
    named: BTreeSet<DeviceId>,
    based_on: Option<ServerSeq>,
}

impl From<EpochV1> for Epoch {
    fn from(e: EpochV1) -> Epoch {
        Epoch {
            key: e.key,
            creator: e.creator,
            holders: e.named.clone(),
            named: e.named,
            based_on: e.based_on,
        }
    }
}

impl std::fmt::Debug for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epoch")
            .field("creator", &self.creator)
            .field("named", &self.named.len())
            .field("holders", &self.holders.len())
            .finish_non_exhaustive()
    }
}

impl Epoch {
    pub(super) fn key(&self) -> EpochKey {
        EpochKey::from_bytes(self.key)
    }
}

/// Conversation → epoch → key, loaded from the log on first use.
pub(super) type EpochCache = HashMap<ConversationId, HashMap<EventId, Epoch>>;

/// An epoch record read back: the current layout, or the one before `holders`.
fn decode_epoch(bytes: &[u8]) -> Option<Epoch> {
    postcard::from_bytes::<Epoch>(bytes)
        .ok()
        .or_else(|| postcard::from_bytes::<EpochV1>(bytes).ok().map(Epoch::from))
}

/// A stored epoch record opened with the storage key; `None` (logged) when it does not open.
pub(super) fn open_epoch(
    storage: &StorageKey,
    conversation: ConversationId,
    epoch: EventId,
    sealed: &[u8],
) -> Option<Epoch> {
    let context = record_context(conversation, epoch);
    let opened = storage
        .open_record(&context, sealed)
        .ok()
        .and_then(|b| decode_epoch(&b));
    if opened.is_none() {
        tracing::warn!(%conversation, %epoch, "stored epoch key does not open");
    }
    opened
}

/// A message's body, with `key_of` finding the key of the epoch it names: the one rule for
/// reading a body, used by [`Store::body`] and by [`super::MessageReader`].
pub(super) fn body_of(
    message: &MessageView,
    key_of: impl FnOnce(EventId) -> Result<Option<EpochKey>, StoreError>,
) -> Result<Body, StoreError> {
    match SealedBody::parse(&message.record.body) {
        Err(e) => Ok(Body::Unreadable(e.to_string())),
        Ok(SealedBody::Plain(b)) => Ok(Body::Clear(b.to_vec())),
        Ok(SealedBody::Sealed { epoch, ciphertext }) => {
            let Some(key) = key_of(epoch)? else {
                return Ok(Body::WaitingForKey(epoch));
            };
            let aad = e2ee::record_aad(message.conversation, message.id, &message.record);
            Ok(match crate::crypto::decrypt_body(&key, &aad, ciphertext) {
                Ok(text) => Body::Text(text),
                Err(e) => Body::Unreadable(e.to_string()),
            })
        }
        Ok(SealedBody::PlainMedia(b)) => Ok(media_body(b)),
        Ok(SealedBody::SealedMedia { epoch, ciphertext }) => {
            let Some(key) = key_of(epoch)? else {
                return Ok(Body::WaitingForKey(epoch));
            };
            let aad = e2ee::record_aad(message.conversation, message.id, &message.record);
            Ok(
                match crate::crypto::decrypt_body(&key, &e2ee::media_aad(aad), ciphertext) {
                    Ok(plain) => media_body(&plain),
                    Err(e) => Body::Unreadable(e.to_string()),
                },
            )
        }
    }
}

fn media_body(plaintext: &[u8]) -> Body {
    match crate::media::MediaBody::decode(plaintext) {
        Ok(m) => Body::Media(m),
        Err(e) => Body::Unreadable(e.to_string()),
    }
}

fn record_context(conversation: ConversationId, epoch: EventId) -> Vec<u8> {
    let mut c = b"tidings/epoch-record/v1\0".to_vec();
    c.extend_from_slice(&conversation.0);
    c.extend_from_slice(&epoch.0);
    c
}

/// The storage key a store uses unless told otherwise: derived from the device's X25519
/// secret, so it is exactly as protected as the device key file.
pub(super) fn derived_storage_key(key: &crate::identity::DeviceKey) -> StorageKey {
    let seed = key.agreement().to_seed();
    StorageKey::from_bytes(blake3::derive_key("tidings storage key v1", &seed[..]))
}

impl Store {
    fn random<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.rng.fill_bytes(&mut b);
        b
    }

    fn epochs_of(
        &mut self,
        conversation: ConversationId,
    ) -> Result<&mut HashMap<EventId, Epoch>, StoreError> {
        if !self.epochs.contains_key(&conversation) {
            let mut map = HashMap::new();
            for (epoch, sealed) in self.log.epoch_keys(conversation)? {
                if let Some(e) = open_epoch(&self.storage, conversation, epoch, &sealed) {
                    map.insert(epoch, e);
                }
            }
            self.epochs.insert(conversation, map);
        }
        Ok(self.epochs.entry(conversation).or_default())
    }

    fn keep_epoch(
        &mut self,
        conversation: ConversationId,
        epoch: EventId,
        e: Epoch,
    ) -> Result<(), StoreError> {
        let plain = postcard::to_stdvec(&e).unwrap_or_default();
        let nonce = self.random::<24>();
        let sealed = self
            .storage
            .seal_record(&record_context(conversation, epoch), &plain, nonce);
        self.log
            .write_lazy(|t| t.put_epoch_key(conversation, epoch, &sealed))?;
        self.epochs_of(conversation)?.insert(epoch, e);
        self.missing.remove(&(conversation, epoch));
        Ok(())
    }

    /// Shares the epoch this device would send under with member devices that do not hold
    /// it yet (newly learned certificates), when this device started that epoch. Call after
    /// the directory learned devices; nothing happens when there is nothing to share.
    pub fn share_current_epoch(
        &mut self,
        conversation: ConversationId,
        now_ms: u64,
    ) -> Result<Vec<Change>, StoreError> {
        if !self.config.encrypt {
            return Ok(Vec::new());
        }
        let me = self.key.device();
        let (best, devices, candidates, _) = self.pick_epoch(conversation)?;
        let Some(id) = best else {
            return Ok(Vec::new());
        };
        let Some(e) = candidates.iter().find(|(i, _)| *i == id).map(|(_, e)| e) else {
            return Ok(Vec::new());
        };
        if e.creator != Some(me) {
            return Ok(Vec::new());
        }
        let missing: Vec<_> = devices
            .iter()
            .filter(|(d, _)| !e.holders.contains(d))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.share_epoch(conversation, id, &missing, now_ms)?.1)
    }

    /// The best epoch to send under now, if any, with the member devices and the held epochs.
    #[allow(clippy::type_complexity)]
    fn pick_epoch(
        &mut self,
        conversation: ConversationId,
    ) -> Result<
        (
            Option<EventId>,
            Vec<(DeviceId, crate::crypto::AgreementPublic)>,
            Vec<(EventId, Epoch)>,
            ServerSeq,
        ),
        StoreError,
    > {
        let gate = self.log.gate(conversation)?;
        let additions = self.own_additions(conversation)?;
        // Users this device's own queued `AddMember`s bring in: an epoch opened behind them is
        // sealed to their known devices too, so the key leaves with the messages instead of
        // after the relay's answer to the ask made at placement (a sender gone in that round
        // trip left the messages unreadable for them).
        let joining = additions.as_ref().map(|a| &a.joining);
        let devices = self.recipient_devices(conversation, joining)?;
        let allowed: BTreeSet<DeviceId> = devices.iter().map(|(d, _)| *d).collect();
        let me = self.key.device();
        let mut best: Option<(u64, EventId)> = None;
        let candidates: Vec<(EventId, Epoch)> = self
            .epochs_of(conversation)?
            .iter()
            .map(|(id, e)| (*id, e.clone()))
            .collect();
        for (id, e) in &candidates {
            // Sealed to nobody outside the membership (a removed member, a revoked device).
            if !e.named.is_subset(&allowed) {
                continue;
            }
            // Behind a member this device adds (its `AddMember` still queued): only an epoch
            // opened behind that too. A message sealed under an earlier one would be placed
            // after the join under an epoch from before it, which the new member never gets
            // (no history for new members).
            if additions
                .as_ref()
                .is_some_and(|a| !a.opened_after.contains(id))
            {
                continue;
            }
            // Started after the last membership change: sequenced after it, or started here
            // knowing of it.
            let rank = match self.log.ack_of(id)? {
                Some((seq, _)) if seq > gate.changed_at => seq,
                Some(_) => continue,
                None if e.creator == Some(me) && e.based_on == Some(gate.changed_at) => u64::MAX,
                None => continue,
            };
            if best.is_none_or(|(r, b)| (rank, *id) > (r, b)) {
                best = Some((rank, *id));
            }
        }
        Ok((best.map(|(_, id)| id), devices, candidates, gate.changed_at))
    }

    /// The epoch new messages of this conversation use, started (or shared with member devices
    /// that lack it) first when needed.
    fn sending_epoch(
        &mut self,
        conversation: ConversationId,
        now_ms: u64,
    ) -> Result<(EventId, EpochKey, Vec<Change>), StoreError> {
        let (best, devices, candidates, changed_at) = self.pick_epoch(conversation)?;
        let mut changes = Vec::new();
        let epoch = match best {
            Some(id) => {
                let missing: Vec<_> = devices
                    .iter()
                    .filter(|(d, _)| {
                        candidates
                            .iter()
                            .any(|(i, e)| *i == id && !e.holders.contains(d))
                    })
                    .copied()
                    .collect();
                if !missing.is_empty() {
                    changes.extend(self.share_epoch(conversation, id, &missing, now_ms)?.1);
                }
                id
            }
            None => {
                let (id, c) = self.start_epoch(conversation, changed_at, &devices, now_ms)?;
                changes.extend(c);
                id
            }
        };
        let key = self
            .epochs_of(conversation)?
            .get(&epoch)
            .map(Epoch::key)
            .ok_or(StoreError::NoKey(epoch))?;
        Ok((epoch, key, changes))
    }

    pub(super) fn start_epoch(
        &mut self,
        conversation: ConversationId,
        based_on: ServerSeq,
        devices: &[(DeviceId, crate::crypto::AgreementPublic)],
        now_ms: u64,
    ) -> Result<(EventId, Vec<Change>), StoreError> {
        let key = EpochKey::from_bytes(self.random::<32>());
        let me = self.key.device();
        // The opening event carries the commitment and the first shares; the other devices
        // get theirs in re-shares right after it (no silent cut: see `MAX_SEALED_KEYS`).
        let (first, rest) = devices.split_at(devices.len().min(MAX_SEALED_KEYS));
        let (event, mut changes) = self.author_with(conversation, now_ms, |h| {
            let origin = EpochOrigin::New {
                author: h.author,
                counter: h.counter,
            };
            let keys = e2ee::seal_epoch_key_checkable(conversation, origin, &key, first);
            let commitment = e2ee::epoch_commitment(conversation, h.author, h.counter, &key);
            EventKind::EpochKeys {
                epoch: None,
                commitment: Some(commitment),
                keys,
            }
        })?;
        let sealed_to: BTreeSet<DeviceId> = match event.kind() {
            EventKind::EpochKeys { keys, .. } => keys.iter().map(|k| k.device).collect(),
            _ => BTreeSet::new(),
        };
        let epoch = Epoch {
            key: *key.as_bytes(),
            creator: Some(me),
            named: sealed_to.clone(),
            based_on: Some(based_on),
            holders: sealed_to,
        };
        self.keep_epoch(conversation, event.id(), epoch)?;
        if !rest.is_empty() {
            changes.extend(self.share_epoch(conversation, event.id(), rest, now_ms)?.1);
        }
        tracing::debug!(%conversation, epoch = %event.id(), "started a new epoch");
        Ok((event.id(), changes))
    }

    /// Shares the key of `epoch` with `devices` (`EpochKeys` events naming the epoch). Returns
    /// how many events it queued: none for a chunk of devices none of whose keys could be
    /// sealed to (a low-order X25519 key), which an empty event would only carry to the relay
    /// again on every later attempt.
    fn share_epoch(
        &mut self,
        conversation: ConversationId,
        epoch: EventId,
        devices: &[(DeviceId, crate::crypto::AgreementPublic)],
        now_ms: u64,
    ) -> Result<(usize, Vec<Change>), StoreError> {
        let Some(e) = self.epochs_of(conversation)?.get(&epoch).cloned() else {
            return Ok((0, Vec::new()));
        };
        let key = e.key();
        let mut updated = e;
        let mut changes = Vec::new();
        let mut n_events = 0;
        // One event per `MAX_SEALED_KEYS` devices; each is kept as soon as it is queued, so a
        // crash between two leaves the rest to the next send (it shares with devices missing
        // from the recipients) or to their key requests.
        for chunk in devices.chunks(MAX_SEALED_KEYS) {
            let keys = e2ee::seal_epoch_key_checkable(
                conversation,
                EpochOrigin::Shared(epoch),
                &key,
                chunk,
            );
            if keys.is_empty() {
                tracing::warn!(%conversation, %epoch, n_devices = chunk.len(),
                    "no epoch-key share could be sealed to these devices (unusable X25519 keys)");
                continue;
            }
            n_events += 1;
            updated.named.extend(keys.iter().map(|k| k.device));
            updated.holders.extend(keys.iter().map(|k| k.device));
            let (_, more) = self.author_with(conversation, now_ms, |_| EventKind::EpochKeys {
                epoch: Some(epoch),
                commitment: None,
                keys,
            })?;
            changes.extend(more);
            self.keep_epoch(conversation, epoch, updated.clone())?;
        }
        Ok((n_events, changes))
    }

    /// Encrypts and sends a message (see [`Store::send`]); `is_media`: the plaintext is an
    /// encoded [`crate::media::MediaBody`].
    pub(super) fn send_encrypted(
        &mut self,
        conversation: ConversationId,
        plaintext: &[u8],
        media: Vec<MediaRef>,
        now_ms: u64,
        is_media: bool,
    ) -> Result<(Event, Vec<Change>), StoreError> {
        if !self.config.encrypt {
            let body = if is_media {
                e2ee::plain_media_body(plaintext)
            } else {
                e2ee::plain_body(plaintext)
            };
            return self.author_with(conversation, now_ms, |h| EventKind::Send {
                message: h.message_id(),
                body,
                media,
            });
        }
        let (epoch, key, mut changes) = self.sending_epoch(conversation, now_ms)?;
        let nonce = self.random::<24>();
        let (event, more) = self.author_with(conversation, now_ms, |h| {
            let message = h.message_id();
            let aad = e2ee::body_aad(
                conversation,
                h.author,
                h.user,
                message,
                h.lamport,
                h.wall_ms,
                &media,
            );
            let body = if is_media {
                e2ee::seal_media_body(epoch, &key, &aad, plaintext, nonce)
            } else {
                e2ee::seal_body(epoch, &key, &aad, plaintext, nonce)
            };
            EventKind::Send {
                message,
                body,
                media,
            }
        })?;
        changes.extend(more);
        Ok((event, changes))
    }

    /// Looks at folded events of others for keys: opens epoch keys sealed to this device,
    /// notes epochs whose key is missing, and queues key requests for
    /// [`Store::answer_key_requests`]. Returns the visible changes (bodies that became
    /// readable).
    pub(super) fn after_fold(
        &mut self,
        conversation: ConversationId,
        events: &[&Event],
    ) -> Result<Vec<Change>, StoreError> {
        let me = self.key.device();
        let mut changes = Vec::new();
        for ev in events {
            let h = ev.header();
            match ev.kind() {
                EventKind::EpochKeys { epoch, keys, .. } => {
                    let (id, origin) = match epoch {
                        None => (
                            ev.id(),
                            EpochOrigin::New {
                                author: h.author,
                                counter: h.counter,
                            },
                        ),
                        Some(e) => (*e, EpochOrigin::Shared(*e)),
                    };
                    let known = self.epochs_of(conversation)?.get(&id).cloned();
                    if let Some(mut e) = known {
                        // Who else may hold it, and who surely does, decide whether new
                        // messages may use it and whom a sender shares it with.
                        let (n_named, n_holders) = (e.named.len(), e.holders.len());
                        e.named.extend(keys.iter().map(|k| k.device));
                        let checked = self.checked_holders(conversation, origin, &e, keys)?;
                        e.holders.extend(checked);
                        if (e.named.len(), e.holders.len()) != (n_named, n_holders) {
                            self.keep_epoch(conversation, id, e)?;
                        }
                        continue;
                    }
                    if h.author == me {
                        continue;
                    }
                    let opened =
                        e2ee::open_epoch_key(conversation, origin, keys, me, self.key.agreement());
                    let opened = match opened {
                        Some(Ok(key)) => match self.check_share(conversation, ev, id, &key)? {
                            Ok(()) => Some(Ok(key)),
                            Err(reason) => {
                                tracing::warn!(%conversation, epoch = %id, author = %h.author,
                                    %reason, "refused an epoch-key share");
                                self.refused_keys.push(RefusedKeyShare {
                                    conversation,
                                    epoch: id,
                                    event: ev.id(),
                                    author: h.author,
                                    reason,
                                });
                                // Still missing: the device asks again.
                                self.missing.insert((conversation, id));
                                None
                            }
                        },
                        other => other,
                    };
                    match opened {
                        Some(Ok(key)) => {
                            let creator = match epoch {
                                None => Some(h.author),
                                Some(e) => self.log.get(e)?.map(|ev| ev.header().author),
                            };
                            let mut e = Epoch {
                                key: *key.as_bytes(),
                                creator,
                                named: keys.iter().map(|k| k.device).collect(),
                                based_on: None,
                                holders: BTreeSet::from([me]),
                            };
                            let checked = self.checked_holders(conversation, origin, &e, keys)?;
                            e.holders.extend(checked);
                            self.keep_epoch(conversation, id, e)?;
                            changes.push(Change::KeyArrived {
                                conversation,
                                epoch: id,
                            });
                        }
                        Some(Err(err)) => {
                            tracing::warn!(%conversation, epoch = %id, author = %h.author, %err,
                                "an epoch key sealed to this device does not open");
                        }
                        None => {}
                    }
                }
                EventKind::Send { body, .. } if h.author != me => {
                    if let Ok(SealedBody::Sealed { epoch, .. }) = SealedBody::parse(body) {
                        if !self.epochs_of(conversation)?.contains_key(&epoch) {
                            self.missing.insert((conversation, epoch));
                        }
                    }
                }
                EventKind::KeyRequest { epoch } if h.author != me => {
                    self.key_requests
                        .push((conversation, *epoch, h.author, h.user));
                }
                _ => {}
            }
        }
        Ok(changes)
    }

    /// The member devices `keys` (shares sealed under `origin`) give epoch `e`'s key, as far as
    /// this device can tell: it seals each share again with the key it holds and the device's
    /// certified X25519 key and compares bytes. Devices it does not know, or already counts,
    /// are not checked (a scalar multiplication each).
    fn checked_holders(
        &mut self,
        conversation: ConversationId,
        origin: EpochOrigin,
        e: &Epoch,
        keys: &[SealedKey],
    ) -> Result<Vec<DeviceId>, StoreError> {
        if keys.iter().all(|k| e.holders.contains(&k.device)) {
            return Ok(Vec::new());
        }
        let key = e.key();
        let members: HashMap<DeviceId, crate::crypto::AgreementPublic> =
            self.member_devices(conversation)?.into_iter().collect();
        let mut out = Vec::new();
        for share in keys.iter().filter(|k| !e.holders.contains(&k.device)) {
            let Some(public) = members.get(&share.device) else {
                continue;
            };
            if e2ee::share_matches(conversation, origin, &key, share, public) {
                out.push(share.device);
            } else {
                // A wrong key, or a share sealed with a random ephemeral (older stores): the
                // device may hold the key, nothing shows it; the next send shares again.
                tracing::debug!(%conversation, device = %share.device,
                    "an epoch-key share does not check: its device is not counted as holding it");
            }
        }
        Ok(out)
    }

    /// Whether `key`, opened from the `EpochKeys` event `ev` for epoch `epoch`, is the key the
    /// epoch's opening event committed to.
    fn check_share(
        &self,
        conversation: ConversationId,
        ev: &Event,
        epoch: EventId,
        key: &EpochKey,
    ) -> Result<Result<(), KeyShareRefusal>, StoreError> {
        let opening = if ev.id() == epoch {
            Some(ev.clone())
        } else {
            self.log.get(&epoch)?
        };
        let Some(opening) = opening.filter(|o| o.conversation() == conversation) else {
            return Ok(Err(KeyShareRefusal::UnknownOpening));
        };
        let commitment = match opening.kind() {
            EventKind::EpochKeys {
                epoch: None,
                commitment: Some(c),
                ..
            } => *c,
            EventKind::EpochKeys {
                epoch: None,
                commitment: None,
                ..
            } => return Ok(Err(KeyShareRefusal::Uncommitted)),
            _ => return Ok(Err(KeyShareRefusal::UnknownOpening)),
        };
        let h = opening.header();
        let expected = e2ee::epoch_commitment(conversation, h.author, h.counter, key);
        Ok(if expected == commitment {
            Ok(())
        } else {
            Err(KeyShareRefusal::Mismatch)
        })
    }

    /// Epoch-key shares refused since the last call (see [`RefusedKeyShare`]).
    pub(super) fn take_refused_keys(&mut self) -> Vec<RefusedKeyShare> {
        std::mem::take(&mut self.refused_keys)
    }

    /// A message's body, decrypted when this device holds its epoch's key.
    pub fn body(&mut self, message: &MessageView) -> Result<Body, StoreError> {
        body_of(message, |epoch| {
            Ok(self
                .epochs_of(message.conversation)?
                .get(&epoch)
                .map(Epoch::key))
        })
    }

    /// The epoch keys this device holds for a conversation (ids only).
    pub fn epochs(&mut self, conversation: ConversationId) -> Result<Vec<EventId>, StoreError> {
        let mut v: Vec<EventId> = self.epochs_of(conversation)?.keys().copied().collect();
        v.sort();
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_record_from_before_holders_reads_back_with_its_named_devices_as_holders() {
        let named = BTreeSet::from([DeviceId([1; 32]), DeviceId([2; 32])]);
        let old = postcard::to_stdvec(&([7u8; 32], Some(DeviceId([1; 32])), &named, Some(5u64)))
            .expect("encode");
        let e = decode_epoch(&old).expect("decodes");
        assert_eq!(e.key, [7; 32]);
        assert_eq!(e.creator, Some(DeviceId([1; 32])));
        assert_eq!(e.based_on, Some(5));
        assert_eq!((&e.named, &e.holders), (&named, &named));
        // The current layout round-trips with its own holders.
        let new = Epoch {
            holders: BTreeSet::from([DeviceId([1; 32])]),
            ..e
        };
        let back = decode_epoch(&postcard::to_stdvec(&new).expect("encode")).expect("decodes");
        assert_eq!(back.holders, new.holders);
        assert_eq!(back.named, named);
    }
}
