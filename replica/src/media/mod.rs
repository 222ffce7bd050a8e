//! Media: photos and videos travel apart from their message.
//!
//! [`Replica::send_media`] seals the app's file into the device's media directory (a random
//! key per blob, segment by segment: memory stays bounded), queues the upload durably, and
//! sends the message at once: PENDING, with its caption and inline thumbnail, the blob's key
//! and root sealed in its end-to-end encrypted body. The caption never waits for the upload.
//! A background worker uploads the queue on blob streams of the live connection (each
//! transfer on its own QUIC stream, so a large upload never delays a text message), resumes
//! from the offset the relay verified after a network loss or a restart, and reports
//! [`Update::MediaProgress`]. A recipient sees the message with its thumbnail and size at
//! once and fetches the blob on demand ([`Replica::download_media`], or a range of it:
//! [`Replica::fetch_media_range`]), every piece checked against the root before it is kept.
//! A forward ([`Replica::forward_media`]) references the blob the relay holds: nothing is
//! uploaded again.

mod local;
mod partial;
mod plain;
mod prefetch;
mod sources;
mod transfer;
mod worker;

pub use local::{JobKind, MediaSource, UploadJob};
pub use partial::DOWNLOAD_SYNC_INTERVAL;
pub use prefetch::{
    PrefetchPolicy, MAX_PREFETCH_QUEUE, PREFETCH_MAX_ATTEMPTS, PREFETCH_RETRY_BASE,
    PREFETCH_RETRY_MAX,
};
pub use sources::{MAX_BLOB_PEERS, PEER_BLOB_DIAL_TIMEOUT};
pub use transfer::UPLOAD_WINDOW;

use crate::{Command, Replica, ReplicaError, Update};
use partial::PartialDownload;
use plain::PlainDownload;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tidings_engine::media::wire::BlobRefusal;
use tidings_engine::media::{
    self as engine_media, plan_range, BlobDescriptor, BlobKey, BlobSealer, MediaBody,
    VerifiedPiece, MAX_MIME_LEN, MAX_THUMBNAIL_LEN, SEALED_SEGMENT_LEN, SEGMENT_TAG_LEN,
};
use tidings_engine::{BlobId, ConversationId, MessageId};
use tokio::sync::{broadcast, watch, Notify};
use transfer::BlobStream;

pub(crate) use local::MediaDir;
pub(crate) use sources::Holding;

/// Largest blob ciphertext a replica sends: the relay's default cap, that of a 100 MiB file.
/// A relay with a lower cap refuses at [`Replica::send_media`] when it is reachable.
pub const MAX_MEDIA_LEN: u64 = engine_media::cipher_len(100 * 1024 * 1024);
/// How long [`Replica::send_media`] waits for the relay's word on size and quota when
/// connected; past it (or offline) the upload is queued and a refusal arrives as
/// [`Update::MediaFailed`].
pub const PRECHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Verified pieces (each at most 1 MiB) a download holds between the task that reads the
/// stream and the writer that opens and writes them: enough that the stream keeps moving
/// while a piece is opened, few enough that memory stays bounded.
pub const PLAIN_QUEUE: usize = 4;

/// Why a media operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// Over the size a blob may have.
    #[error("media of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Ciphertext bytes.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The relay refused (over its cap or the user's quota, not a member, not held...).
    #[error("the relay refused: {0}")]
    Refused(BlobRefusal),
    /// A chunk group did not match the blob's root: nothing of it was kept or shown.
    #[error("chunk group {group} does not match the blob's hash")]
    Corrupt {
        /// The group.
        group: u64,
    },
    /// No authenticated connection to the relay now.
    #[error("not connected to the relay")]
    Offline,
    /// The connection or the stream broke.
    #[error("connection: {0}")]
    Connection(String),
    /// The relay answered out of protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The blob, a segment or a descriptor is malformed (or does not decrypt).
    #[error(transparent)]
    Engine(#[from] engine_media::MediaError),
    /// A local file failed.
    #[error("media file: {0}")]
    Io(#[from] std::io::Error),
}

/// Which way a transfer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaDirection {
    /// This device's blob to the relay.
    Upload,
    /// A blob from the relay to this device.
    Download,
}

/// What the media side of a replica shares between its handles and its upload worker.
#[derive(Debug)]
pub(crate) struct MediaShared {
    pub(crate) dir: MediaDir,
    /// The driver's authenticated connection, when there is one.
    pub(crate) link: watch::Receiver<Option<quinn::Connection>>,
    /// Wakes the worker when a job is queued.
    pub(crate) wake: Notify,
    pub(crate) updates: broadcast::WeakSender<Update>,
    /// One lock per blob being fetched: a tap and a prefetch of one blob never write its
    /// partial download at once.
    fetching: Mutex<HashMap<BlobId, Arc<tokio::sync::Mutex<()>>>>,
    /// The prefetch policy ([`Replica::set_prefetch`]).
    pub(crate) prefetch: watch::Sender<PrefetchPolicy>,
    /// The network costs money now ([`Replica::set_metered`]).
    pub(crate) metered: watch::Sender<bool>,
    /// The prefetcher runs.
    pub(crate) prefetching: AtomicBool,
    /// The runtime the replica was opened in: the prefetcher is started on it from a call
    /// that may come from any thread.
    pub(crate) runtime: tokio::runtime::Handle,
    prefetch_queue: Mutex<prefetch::PrefetchQueue>,
    /// Peers a download may ask before the relay.
    pub(crate) peers: sources::PeerSources,
}

impl MediaShared {
    pub(crate) fn new(
        data_dir: &Path,
        link: watch::Receiver<Option<quinn::Connection>>,
        updates: broadcast::WeakSender<Update>,
    ) -> Result<Arc<MediaShared>, ReplicaError> {
        let dir = MediaDir::open(data_dir).map_err(|source| ReplicaError::Io {
            path: data_dir.join("media"),
            source,
        })?;
        let shared = Arc::new(MediaShared {
            dir,
            link,
            wake: Notify::new(),
            updates,
            fetching: Mutex::new(HashMap::new()),
            prefetch: watch::Sender::new(PrefetchPolicy::OFF),
            metered: watch::Sender::new(false),
            prefetching: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
            prefetch_queue: Mutex::new(prefetch::PrefetchQueue::default()),
            peers: sources::PeerSources::default(),
        });
        tokio::spawn(worker::run(shared.clone()));
        Ok(shared)
    }

    fn connection(&self) -> Result<quinn::Connection, MediaError> {
        self.link.borrow().clone().ok_or(MediaError::Offline)
    }

    /// Holds `blob`'s fetch lock until the guard drops (waiting for another holder).
    pub(crate) async fn lock_blob(&self, blob: BlobId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
            // Locks nobody holds or waits for go: the map stays as small as what is fetched.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(blob).or_default().clone()
        };
        lock.lock_owned().await
    }

    pub(crate) fn lock_prefetch(&self) -> MutexGuard<'_, prefetch::PrefetchQueue> {
        self.prefetch_queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Fetches what this device does not hold yet of `media`'s ciphertext into its partial
    /// download (resuming the synced prefix), every piece checked against the root, with
    /// [`Update::MediaProgress`]; returns the partial download's path. The caller holds the
    /// blob's lock ([`MediaShared::lock_blob`]).
    pub(crate) async fn fetch_cipher(
        self: &Arc<Self>,
        conversation: ConversationId,
        media: &BlobDescriptor,
    ) -> Result<PathBuf, ReplicaError> {
        let len = media.cipher_len();
        let scratch = self.dir.scratch(&hex::encode(media.blob.0));
        let mut part =
            PartialDownload::open(&scratch, len, conversation).map_err(MediaError::from)?;
        let groups = part.next_group()..engine_media::n_groups(len);
        self.fetch_groups(conversation, media.blob, len, groups, |v| {
            let appended = part.append(&v).map_err(MediaError::from);
            if appended.is_ok() {
                self.progress(media.blob, MediaDirection::Download, part.held(), len);
            }
            std::future::ready(appended)
        })
        .await?;
        Ok(scratch)
    }

    /// Downloads `media` into `dest`, decrypting each segment as soon as its verified
    /// ciphertext is there: the plaintext is written once (see `plain.rs`, which also says
    /// how a resume knows its good prefix). `held` is the blob's lock
    /// ([`MediaShared::lock_blob`]).
    ///
    /// The task that reads the stream only verifies: each verified piece goes through a
    /// channel of [`PLAIN_QUEUE`] pieces to a blocking writer that opens its segments and
    /// writes them, so the next pieces arrive while one is opened and written. The writer
    /// holds the blob's lock until it has stopped: a download dropped part-way is never
    /// resumed over a writer still at work on the same file. Dropped, it stops after the piece
    /// in hand (the queued ones are not written) and reports no progress after the drop.
    pub(crate) async fn fetch_plain(
        self: &Arc<Self>,
        conversation: ConversationId,
        media: &BlobDescriptor,
        dest: &Path,
        held: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<(), ReplicaError> {
        let len = media.cipher_len();
        let download = PlainDownload::open(dest, media)?;
        let groups = download.next_group()..engine_media::n_groups(len);
        let (tx, rx) = tokio::sync::mpsc::channel::<VerifiedPiece>(PLAIN_QUEUE);
        let shared = self.clone();
        let blob = media.blob;
        let dropped = DropFlag::default();
        let flag = dropped.0.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let written = write_plain(&shared, (blob, len), download, rx, &flag);
            drop(held);
            written
        });
        let fetched = self
            .fetch_groups(conversation, media.blob, len, groups, |v| {
                let tx = tx.clone();
                // A closed channel: the writer stopped on an error, which it reports below.
                async move {
                    tx.send(v)
                        .await
                        .map_err(|_| MediaError::Protocol("the download's writer stopped".into()))
                }
            })
            .await;
        drop(tx);
        let (download, written) = writer.await.map_err(|_| ReplicaError::Closed)?;
        drop(dropped);
        if let Err(e) = written {
            if matches!(
                e,
                MediaError::Engine(engine_media::MediaError::Decrypt { .. })
            ) {
                // Verified bytes that do not open: the descriptor's key is not this blob's.
                download.discard().map_err(MediaError::from)?;
            }
            return Err(e.into());
        }
        fetched?;
        tokio::task::spawn_blocking(move || download.finish())
            .await
            .map_err(|_| ReplicaError::Closed)??;
        Ok(())
    }

    pub(crate) fn progress(&self, blob: BlobId, direction: MediaDirection, done: u64, total: u64) {
        if let Some(tx) = self.updates.upgrade() {
            let _ = tx.send(Update::MediaProgress {
                blob,
                direction,
                done,
                total,
            });
        }
    }
}

/// The writer of a plaintext download (on a blocking thread): takes the verified pieces in
/// order until the channel closes or one fails; gives the download back with how it ended.
fn write_plain(
    shared: &MediaShared,
    (blob, len): (BlobId, u64),
    mut download: PlainDownload,
    mut pieces: tokio::sync::mpsc::Receiver<VerifiedPiece>,
    dropped: &Mutex<bool>,
) -> (PlainDownload, Result<(), MediaError>) {
    let is_dropped = || *dropped.lock().unwrap_or_else(|e| e.into_inner());
    while let Some(v) = pieces.blocking_recv() {
        if is_dropped() {
            break;
        }
        let end = v.end();
        if let Err(e) = download.take(&v) {
            return (download, Err(e));
        }
        // Under the flag's lock: once the drop has set it, no progress goes out.
        let dropped = dropped.lock().unwrap_or_else(|e| e.into_inner());
        if *dropped {
            break;
        }
        if let Some(end) = end {
            shared.progress(blob, MediaDirection::Download, end, len);
        }
    }
    (download, Ok(()))
}

/// Set when a download's future is dropped (or ends): its writer stops at the next piece.
#[derive(Default)]
struct DropFlag(Arc<Mutex<bool>>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

impl Replica {
    /// Sends a photo, a video or any file: sealed locally under a fresh key (segment by
    /// segment, never whole in memory), its upload queued durably, and the message sent at
    /// once — PENDING, with `caption` and the inline `thumbnail` (at most 8 KiB, made by the
    /// app) — before any byte of the blob leaves. When the relay is reachable it is asked
    /// first (within [`PRECHECK_TIMEOUT`]) whether the blob fits its cap and the user's
    /// quota: a refusal returns here and nothing is sent (the app may send the caption alone).
    pub async fn send_media(
        &self,
        conversation: ConversationId,
        source: MediaSource,
        caption: Vec<u8>,
        mime: &str,
        thumbnail: Vec<u8>,
    ) -> Result<MessageId, ReplicaError> {
        let plain_len = match &source {
            MediaSource::Bytes(b) => b.len() as u64,
            MediaSource::File(p) => std::fs::metadata(p)
                .map_err(|source| ReplicaError::Io {
                    path: p.clone(),
                    source,
                })?
                .len(),
        };
        let cipher_len = engine_media::cipher_len(plain_len);
        if cipher_len > MAX_MEDIA_LEN {
            return Err(MediaError::TooLarge {
                len: cipher_len,
                max: MAX_MEDIA_LEN,
            }
            .into());
        }
        if thumbnail.len() > MAX_THUMBNAIL_LEN || mime.len() > MAX_MIME_LEN {
            let why = "thumbnail over 8 KiB or mime type too long";
            return Err(MediaError::Engine(engine_media::MediaError::Malformed(why)).into());
        }
        let key = BlobKey::from_bytes(random_key()?);
        let shared = self.media.clone();
        let sealing_key = key.clone();
        let tree =
            tokio::task::spawn_blocking(move || shared.dir.seal(&source, &sealing_key, plain_len))
                .await
                .map_err(|_| ReplicaError::Closed)??;
        let blob = tree.root();
        self.precheck(conversation, blob, cipher_len).await?;
        let job = UploadJob {
            conversation,
            blob,
            cipher_len,
            kind: JobKind::Upload,
        };
        self.queue(job)?;
        let body = MediaBody {
            caption,
            media: vec![BlobDescriptor {
                blob,
                key,
                len: plain_len,
                mime: mime.to_string(),
                thumbnail,
            }],
        };
        self.call(|r| Command::SendMedia(conversation, body, r))
            .await
    }

    /// Forwards media received (or sent) in `from` to `to`: the message carries the same
    /// descriptor, and the relay is asked to reference the blob it holds for `to` as well —
    /// no byte of the blob is uploaded again.
    pub async fn forward_media(
        &self,
        from: ConversationId,
        to: ConversationId,
        media: BlobDescriptor,
        caption: Vec<u8>,
    ) -> Result<MessageId, ReplicaError> {
        let job = UploadJob {
            conversation: to,
            blob: media.blob,
            cipher_len: media.cipher_len(),
            kind: JobKind::Attach { from },
        };
        self.queue(job)?;
        let body = MediaBody {
            caption,
            media: vec![media],
        };
        self.call(|r| Command::SendMedia(to, body, r)).await
    }

    /// The uploads (and forwards) still queued on this device.
    pub fn queued_uploads(&self) -> Result<Vec<UploadJob>, ReplicaError> {
        Ok(self.media.dir.jobs().map_err(MediaError::from)?)
    }

    /// Downloads a blob the message of `conversation` references into `dest`, with
    /// [`Update::MediaProgress`]: every piece is checked against the root before it is
    /// kept, and `dest` appears (renamed into place) only once the whole blob verified and
    /// decrypted — corrupted media is never shown. A download that failed or was dropped
    /// part-way (a network loss, the app restarted) resumes from the prefix it synced (at
    /// most [`DOWNLOAD_SYNC_INTERVAL`] behind what it had fetched): only the rest is fetched.
    /// A blob prefetched already ([`Replica::set_prefetch`]) is decrypted here without the
    /// network. A blob whose upload has not finished is refused with
    /// [`BlobRefusal::Incomplete`] (try again later).
    pub async fn download_media(
        &self,
        conversation: ConversationId,
        media: &BlobDescriptor,
        dest: &Path,
    ) -> Result<(), ReplicaError> {
        let held = self.media.lock_blob(media.blob).await;
        let scratch = self.media.dir.scratch(&hex::encode(media.blob.0));
        if partial::recorded(&scratch).is_none() {
            return self
                .media
                .fetch_plain(conversation, media, dest, held)
                .await;
        }
        // Prefetched (whole or in part): kept as ciphertext on purpose, decrypted here.
        let scratch = self.media.fetch_cipher(conversation, media).await?;
        let (key, plain_len, dest_owned) = (media.key.clone(), media.len, dest.to_path_buf());
        let opened = tokio::task::spawn_blocking(move || {
            let r = open_file(&scratch, &key, plain_len, &dest_owned);
            // Decrypted, or damaged on disk since it was verified: either way the partial
            // download has served; a retry starts from zero.
            partial::remove(&scratch)?;
            r
        });
        opened.await.map_err(|_| ReplicaError::Closed)??;
        Ok(())
    }

    /// Fetches and decrypts plaintext bytes `range` of a blob (a video played from a point
    /// before the whole file is there): only the chunk groups that hold the range's segments
    /// travel, each checked against the root.
    pub async fn fetch_media_range(
        &self,
        conversation: ConversationId,
        media: &BlobDescriptor,
        range: Range<u64>,
    ) -> Result<Vec<u8>, ReplicaError> {
        let plan = plan_range(media.len, range.clone()).map_err(MediaError::from)?;
        let len = media.cipher_len();
        let mut cipher = Vec::new();
        let mut base = None;
        self.media
            .fetch_groups(conversation, media.blob, len, plan.groups.clone(), |v| {
                for (at, bytes) in v.leaves {
                    base.get_or_insert(at);
                    cipher.extend_from_slice(&bytes);
                }
                std::future::ready(Ok(()))
            })
            .await?;
        let base = base.unwrap_or(0);
        let sealer = BlobSealer::new(&media.key, media.len).map_err(MediaError::from)?;
        let mut plain = Vec::new();
        for index in plan.segments.clone() {
            let start = (index * SEALED_SEGMENT_LEN - base) as usize;
            let seg_len =
                (sealer.segment_len(index).map_err(MediaError::from)? + SEGMENT_TAG_LEN) as usize;
            let bytes = cipher
                .get(start..start + seg_len)
                .ok_or_else(|| MediaError::Protocol("range short of its segments".into()))?;
            plain.extend(
                sealer
                    .open_segment(index, bytes)
                    .map_err(MediaError::from)?,
            );
        }
        let from = (range.start - plan.segments.start * engine_media::SEGMENT_LEN) as usize;
        let to = from + (range.end - range.start) as usize;
        Ok(plain[from..to].to_vec())
    }

    /// Asks the relay, when connected, whether it takes the blob; a refusal of size or quota
    /// is the caller's answer. Offline or slow: the worker asks later.
    async fn precheck(
        &self,
        conversation: ConversationId,
        blob: BlobId,
        len: u64,
    ) -> Result<(), ReplicaError> {
        let Ok(conn) = self.media.connection() else {
            return Ok(());
        };
        let ask = async {
            let mut stream = BlobStream::open(&conn).await?;
            let r = stream.begin(conversation, blob, len).await;
            stream.finish();
            r
        };
        match tokio::time::timeout(PRECHECK_TIMEOUT, ask).await {
            Ok(Err(e @ MediaError::Refused(_))) => {
                let _ = std::fs::remove_file(self.media.dir.cipher_path(blob));
                let _ = std::fs::remove_file(self.media.dir.outboard_path(blob));
                Err(e.into())
            }
            _ => Ok(()),
        }
    }

    fn queue(&self, job: UploadJob) -> Result<(), ReplicaError> {
        self.media.dir.push(&job).map_err(MediaError::from)?;
        self.media.wake.notify_one();
        Ok(())
    }
}

/// Decrypts a verified ciphertext file segment by segment into `dest` (through a temporary
/// file renamed into place).
fn open_file(cipher: &Path, key: &BlobKey, plain_len: u64, dest: &Path) -> Result<(), MediaError> {
    use std::io::Read;
    let sealer = BlobSealer::new(key, plain_len)?;
    let mut input = std::io::BufReader::new(File::open(cipher)?);
    let tmp = dest.with_extension("tidings-part");
    let mut out = std::io::BufWriter::new(File::create(&tmp)?);
    let mut buf = vec![0u8; SEALED_SEGMENT_LEN as usize];
    for index in 0..sealer.n_segments() {
        let len = (sealer.segment_len(index)? + SEGMENT_TAG_LEN) as usize;
        input.read_exact(&mut buf[..len])?;
        out.write_all(&sealer.open_segment(index, &buf[..len])?)?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

fn random_key() -> Result<[u8; 32], ReplicaError> {
    use rand::TryRngCore;
    let mut key = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .map_err(|e| ReplicaError::Random(e.to_string()))?;
    Ok(key)
}
