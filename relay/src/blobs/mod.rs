//! The relay's blob store: encrypted media, in files beside the event store.
//!
//! A blob is the ciphertext of one photo or video, named by the BLAKE3 root of that
//! ciphertext ([`tidings_engine::media`]); the relay never holds its key. Each blob is three
//! files in the store's directory, named by the root in hex:
//! - `<root>.data`: the ciphertext, written at its offsets only from chunk groups that
//!   verified against the root;
//! - `<root>.obao`: the hash tree's parent pairs (the bao outboard, pre-order), so the relay
//!   serves any range with its proof;
//! - `<root>.meta`: the [`BlobRecord`] — length, owner, how far the verified prefix reaches,
//!   the conversations that reference it — replaced atomically (write, fsync, rename) only
//!   after the data and outboard it vouches for are synced.
//!
//! Durability: verified pieces are written as they come, and synced (data and outboard,
//! then the record) each time the verified prefix crosses a multiple of
//! [`BLOB_SYNC_INTERVAL`] and when the blob is complete — before the answer that says so,
//! after which the device forgets its copy. The offsets answered in between are progress, not
//! a promise: the device keeps its copy until the blob is complete. The relay's blob stream
//! runs an interval's sync off the store's lock while it verifies and writes the next pieces
//! ([`BlobStore::put_piece_deferring_sync`]); the record moves only once that sync passed,
//! and the piece that completes a blob waits for it. When the store opens
//! again after a crash, it checks the tail of every partial blob against the root
//! ([`tidings_engine::media::verify::check_stored`]): the last sync interval the record
//! vouches for and whatever was written past it. What verifies counts as held (a relay
//! killed mid-upload resumes where its file stands, not where its last sync stood); a group
//! torn by the crash, and everything after it, does not.
//!
//! Uploads are sequential from the verified offset: a device asks where to resume
//! ([`BlobStore::begin_upload`]) and sends [`Piece`]s from there. Limits
//! ([`BlobLimits`]): a size cap per blob, a quota per user (the bytes of the blobs they
//! uploaded that are still held), and a time-to-live per conversation reference; a blob with
//! no live reference is deleted. Only a member of a conversation that references a blob may
//! read it; the caller (the relay core, which knows membership) says whether the requester
//! is one.

mod record;
pub mod serve;
#[cfg(test)]
mod tests;

pub use record::BlobRecord;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tidings_engine::media::{
    self, verify::check_stored, verify::group_bytes, verify::outboard_len, verify_piece, Piece,
    CHUNK_GROUP_LEN, MAX_PIECE_GROUPS,
};
use tidings_engine::{BlobId, ConversationId, UserId};

/// Largest blob ciphertext the relay takes by default: that of a 100 MiB file (Signal's
/// attachment cap), 104,883,200 bytes.
pub const MAX_BLOB_LEN: u64 = tidings_engine::media::cipher_len(100 * 1024 * 1024);
/// Bytes of held blobs one user may have uploaded, by default.
pub const BLOB_QUOTA_PER_USER: u64 = 1024 * 1024 * 1024;
/// How long a conversation's reference keeps a blob, by default: 30 days.
pub const BLOB_TTL_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// Blobs the store holds at most (complete or not), by default.
pub const MAX_BLOBS: usize = 1_000_000;
/// An upload's written pieces are synced (and recorded) each time its verified prefix
/// crosses a multiple of this, and at its end: a sync per 8 MiB rather than per piece. It
/// also bounds what a restart re-checks per partial blob (this much before the record's
/// offset, and at most this much written past it).
pub const BLOB_SYNC_INTERVAL: u64 = 8 * 1024 * 1024;

/// The blob store's limits; `Default` gives the constants above.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobLimits {
    /// See [`MAX_BLOB_LEN`] (ciphertext bytes).
    pub max_blob_len: u64,
    /// See [`BLOB_QUOTA_PER_USER`].
    pub quota_per_user: u64,
    /// See [`BLOB_TTL_MS`].
    pub ttl_ms: u64,
    /// See [`MAX_BLOBS`].
    pub max_blobs: usize,
}

impl Default for BlobLimits {
    fn default() -> Self {
        BlobLimits {
            max_blob_len: MAX_BLOB_LEN,
            quota_per_user: BLOB_QUOTA_PER_USER,
            ttl_ms: BLOB_TTL_MS,
            max_blobs: MAX_BLOBS,
        }
    }
}

/// Why the blob store refused a request. Every variant is an expected condition a device
/// gets back typed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The blob is over the size cap.
    #[error("blob of {len} bytes is over the cap of {max}")]
    TooLarge {
        /// Its ciphertext length.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// The upload would take the user over their quota.
    #[error("quota exceeded: {used} bytes held + {len} > {quota}")]
    OverQuota {
        /// Bytes the user already holds.
        used: u64,
        /// The new blob's length.
        len: u64,
        /// The quota.
        quota: u64,
    },
    /// The store holds as many blobs as it may.
    #[error("the blob store is full ({max} blobs)")]
    StoreFull {
        /// The limit.
        max: usize,
    },
    /// The requester is not a member of the conversation, or the conversation does not
    /// reference the blob.
    #[error("not a member of a conversation that references this blob")]
    NotMember,
    /// No such blob (never uploaded, or expired).
    #[error("no such blob")]
    NotFound,
    /// The blob is known under another length than the one given.
    #[error("blob length {given} does not match the stored {stored}")]
    LengthMismatch {
        /// Length given.
        given: u64,
        /// Length stored.
        stored: u64,
    },
    /// The blob is not complete yet (a read past the verified prefix, a reference to a
    /// blob still uploading).
    #[error("blob incomplete: {verified} of {len} bytes held")]
    Incomplete {
        /// Bytes verified.
        verified: u64,
        /// Its length.
        len: u64,
    },
    /// A piece that does not start where the upload stands.
    #[error("piece starts at group {first}, the upload stands at group {expected}")]
    OutOfOrder {
        /// The piece's first group.
        first: u64,
        /// Where the upload stands.
        expected: u64,
    },
    /// Only the uploader continues an upload.
    #[error("the upload belongs to another user")]
    NotUploader,
    /// A piece or a range failed verification; what verified before it was kept.
    #[error("refused: {0}")]
    Media(#[from] media::MediaError),
    /// The filesystem failed.
    #[error("blob store i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Where an upload stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadState {
    /// Ciphertext bytes verified and held: resume from here.
    pub verified: u64,
    /// The blob's ciphertext length.
    pub len: u64,
}

impl UploadState {
    /// Whether the whole blob is held.
    pub fn complete(&self) -> bool {
        self.verified == self.len
    }

    /// The chunk group to resume from.
    pub fn next_group(&self) -> u64 {
        self.verified / media::CHUNK_GROUP_LEN
    }
}

/// An interval's sync an upload came due for (see [`BlobStore::put_piece_deferring_sync`]):
/// the blob's files as written up to `end`.
#[derive(Debug)]
pub struct DueSync {
    blob: BlobId,
    end: u64,
    data: File,
    obao: File,
    data_ino: u64,
}

impl DueSync {
    /// Syncs the data and outboard (everything written before this call, `end` included).
    /// Blocking: run it off the runtime's workers.
    pub fn run(&self) -> std::io::Result<()> {
        self.data.sync_data()?;
        self.obao.sync_data()
    }
}

/// The blob store (see the module doc).
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    limits: BlobLimits,
    blobs: HashMap<BlobId, BlobRecord>,
    used: HashMap<UserId, u64>,
}

impl BlobStore {
    /// Opens (creating) the store in `dir` and reads every blob record there. Files left by
    /// an interrupted delete or an unreadable record are removed.
    pub fn open(dir: impl Into<PathBuf>, limits: BlobLimits) -> Result<BlobStore, BlobError> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let mut store = BlobStore {
            dir,
            limits,
            blobs: HashMap::new(),
            used: HashMap::new(),
        };
        for entry in fs::read_dir(&store.dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("meta") {
                continue;
            }
            let rec = BlobRecord::read(&path).and_then(|mut rec| {
                if !rec.complete() {
                    recheck_tail(&store.dir, &mut rec)?;
                }
                Ok(rec)
            });
            match rec {
                Ok(rec) => {
                    *store.used.entry(rec.owner).or_default() += rec.len;
                    store.blobs.insert(rec.blob, rec);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable blob record: removed");
                    remove_files(&path.with_extension(""))?;
                }
            }
        }
        for entry in fs::read_dir(&store.dir)? {
            let path = entry?.path();
            let orphan = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("data" | "obao" | "tmp")
            ) && !path.with_extension("meta").exists();
            if orphan {
                fs::remove_file(&path)?;
            }
        }
        Ok(store)
    }

    /// The limits in force.
    pub fn limits(&self) -> &BlobLimits {
        &self.limits
    }

    /// Bytes of held blobs `user` uploaded.
    pub fn used(&self, user: UserId) -> u64 {
        self.used.get(&user).copied().unwrap_or(0)
    }

    /// Where the blob stands, if held.
    pub fn state(&self, blob: BlobId) -> Option<UploadState> {
        self.blobs.get(&blob).map(BlobRecord::state)
    }

    /// Starts or resumes an upload of `blob` (`len` ciphertext bytes) referenced by
    /// `conversation`, for `user`, a member of it (`is_member`, as the core knows it).
    /// A blob already held completely is only referenced: a forward uploads nothing.
    pub fn begin_upload(
        &mut self,
        user: UserId,
        conversation: ConversationId,
        is_member: bool,
        blob: BlobId,
        len: u64,
        now_ms: u64,
    ) -> Result<UploadState, BlobError> {
        if !is_member {
            return Err(BlobError::NotMember);
        }
        let expires = now_ms.saturating_add(self.limits.ttl_ms);
        if let Some(rec) = self.blobs.get_mut(&blob) {
            if rec.len != len {
                return Err(BlobError::LengthMismatch {
                    given: len,
                    stored: rec.len,
                });
            }
            if !rec.complete() && rec.owner != user {
                return Err(BlobError::NotUploader);
            }
            rec.refer(conversation, expires);
            let state = rec.state();
            rec.write(&self.dir, true)?;
            return Ok(state);
        }
        if len > self.limits.max_blob_len {
            return Err(BlobError::TooLarge {
                len,
                max: self.limits.max_blob_len,
            });
        }
        let used = self.used(user);
        if used.saturating_add(len) > self.limits.quota_per_user {
            return Err(BlobError::OverQuota {
                used,
                len,
                quota: self.limits.quota_per_user,
            });
        }
        if self.blobs.len() >= self.limits.max_blobs {
            return Err(BlobError::StoreFull {
                max: self.limits.max_blobs,
            });
        }
        let rec = BlobRecord::new(blob, len, user, conversation, expires);
        let base = self.base(blob);
        let data = create(&base.with_extension("data"))?;
        data.set_len(len)?;
        let obao = create(&base.with_extension("obao"))?;
        obao.set_len(outboard_len(len))?;
        data.sync_all()?;
        obao.sync_all()?;
        rec.write(&self.dir, true)?;
        *self.used.entry(user).or_default() += len;
        let state = rec.state();
        self.blobs.insert(blob, rec);
        Ok(state)
    }

    /// Takes a piece of an upload: verifies it against the root and writes what verified;
    /// syncs and records the new offset when it crosses a multiple of [`BLOB_SYNC_INTERVAL`]
    /// or completes the blob (see the module doc). A piece wholly before the offset (a resend after a lost
    /// answer) changes nothing; one that starts past it is refused. A piece with a bad group
    /// keeps the groups before it and is refused.
    pub fn put_piece(
        &mut self,
        user: UserId,
        blob: BlobId,
        piece: &Piece,
    ) -> Result<UploadState, BlobError> {
        let (state, due) = self.put_piece_deferring_sync(user, blob, piece);
        if let Some(due) = due {
            let synced = due.run();
            self.finish_sync(&due, synced)?;
        }
        state
    }

    /// [`BlobStore::put_piece`], except that an interval's sync (not the final one) is left
    /// to the caller: run [`DueSync::run`] off the store's lock, then hand its outcome to
    /// [`BlobStore::finish_sync`], which records the offset. The relay's stream goes on
    /// verifying and writing the next pieces meanwhile. The sync that completes a blob is
    /// still done here, before the answer that says so; the caller must have finished any
    /// sync it has running for the blob before it passes the last piece (a failed sync's
    /// error is reported once: a later one may pass over lost pages).
    pub fn put_piece_deferring_sync(
        &mut self,
        user: UserId,
        blob: BlobId,
        piece: &Piece,
    ) -> (Result<UploadState, BlobError>, Option<DueSync>) {
        let mut due = None;
        let state = self.put_piece_inner(user, blob, piece, &mut due);
        (state, due)
    }

    /// Records the offset a [`DueSync`] made durable, or, when the sync failed, forgets what
    /// was written past the last recorded offset (the device resumes from there).
    pub fn finish_sync(
        &mut self,
        due: &DueSync,
        synced: std::io::Result<()>,
    ) -> Result<(), BlobError> {
        let current = std::fs::metadata(self.base(due.blob).with_extension("data"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let Some(rec) = self.blobs.get_mut(&due.blob) else {
            return Ok(()); // deleted meanwhile
        };
        // Deleted and begun again meanwhile: these are not its files.
        if current.ok() != Some(due.data_ino) {
            return Ok(());
        }
        match synced {
            Ok(()) if due.end > rec.verified && due.end <= rec.held => {
                rec.verified = due.end;
                rec.write(&self.dir, rec.complete())?;
                Ok(())
            }
            Ok(()) => Ok(()),
            Err(e) => {
                rec.held = rec.held.min(rec.verified);
                Err(e.into())
            }
        }
    }

    fn put_piece_inner(
        &mut self,
        user: UserId,
        blob: BlobId,
        piece: &Piece,
        deferred: &mut Option<DueSync>,
    ) -> Result<UploadState, BlobError> {
        let base = self.base(blob);
        let rec = self.blobs.get_mut(&blob).ok_or(BlobError::NotFound)?;
        if rec.owner != user && !rec.complete() {
            return Err(BlobError::NotUploader);
        }
        let state = rec.state();
        let piece_end = group_bytes(rec.len, piece.first_group, piece.n_groups).end;
        if state.complete() || (piece_end <= state.verified && piece.n_groups > 0) {
            return Ok(state);
        }
        if piece.first_group != state.next_group() {
            return Err(BlobError::OutOfOrder {
                first: piece.first_group,
                expected: state.next_group(),
            });
        }
        let (verified, refused) = match verify_piece(blob, rec.len, piece) {
            Ok(v) => (v, None),
            Err(r) => (r.kept, Some(r.error)),
        };
        if let Some(end) = verified.end() {
            let data = open_rw(&base.with_extension("data"))?;
            let obao = open_rw(&base.with_extension("obao"))?;
            for (at, pair) in &verified.parents {
                obao.write_all_at(pair, *at)?;
            }
            for (at, bytes) in &verified.leaves {
                data.write_all_at(bytes, *at)?;
            }
            rec.held = end;
            let due = end / BLOB_SYNC_INTERVAL > rec.verified / BLOB_SYNC_INTERVAL;
            if rec.complete() {
                data.sync_data()?;
                obao.sync_data()?;
                rec.verified = end;
                rec.write(&self.dir, true)?;
            } else if due {
                let data_ino = std::os::unix::fs::MetadataExt::ino(&data.metadata()?);
                *deferred = Some(DueSync {
                    blob,
                    end,
                    data,
                    obao,
                    data_ino,
                });
            }
        }
        match refused {
            Some(e) => Err(BlobError::Media(e)),
            None => Ok(rec.state()),
        }
    }

    /// Adds a reference from `conversation` to a blob held completely: a forward. The
    /// requester must be a member of `conversation` and able to read the blob already
    /// (`from`, a conversation that references it, of which they are a member).
    pub fn attach(
        &mut self,
        blob: BlobId,
        from: (ConversationId, bool),
        to: (ConversationId, bool),
        now_ms: u64,
    ) -> Result<UploadState, BlobError> {
        let rec = self.readable(blob, from.0, from.1, now_ms)?;
        let state = rec.state();
        if !state.complete() {
            return Err(BlobError::Incomplete {
                verified: state.verified,
                len: state.len,
            });
        }
        if !to.1 {
            return Err(BlobError::NotMember);
        }
        let expires = now_ms.saturating_add(self.limits.ttl_ms);
        let rec = self.blobs.get_mut(&blob).ok_or(BlobError::NotFound)?;
        rec.refer(to.0, expires);
        rec.write(&self.dir, true)?;
        Ok(state)
    }

    /// Reads groups `first_group..first_group + n_groups` of a blob with their proof, for a
    /// member (`is_member`) of `conversation`, which must reference it. Only groups that
    /// verified when they arrived are served; they are not hashed again here (the downloader
    /// checks every group against the root, and refuses a group damaged on disk since).
    pub fn read_piece(
        &self,
        blob: BlobId,
        conversation: ConversationId,
        is_member: bool,
        first_group: u64,
        n_groups: u64,
        now_ms: u64,
    ) -> Result<Piece, BlobError> {
        let rec = self.readable(blob, conversation, is_member, now_ms)?;
        let left = media::n_groups(rec.len).saturating_sub(first_group);
        let n_groups = n_groups.min(MAX_PIECE_GROUPS).min(left);
        let end = group_bytes(rec.len, first_group, n_groups).end;
        if end > rec.held {
            return Err(BlobError::Incomplete {
                verified: rec.held,
                len: rec.len,
            });
        }
        let base = self.base(blob);
        let data = File::open(base.with_extension("data"))?;
        let obao = File::open(base.with_extension("obao"))?;
        Ok(media::verify::encode_piece(
            rec.len,
            &obao,
            &data,
            first_group,
            n_groups,
        )?)
    }

    /// Drops references older than their time-to-live and deletes blobs left without one,
    /// giving their bytes back to the uploader's quota. Returns the blobs deleted.
    pub fn expire(&mut self, now_ms: u64) -> Result<Vec<BlobId>, BlobError> {
        let mut gone = Vec::new();
        for rec in self.blobs.values_mut() {
            if rec.drop_expired(now_ms) {
                rec.write(&self.dir, true)?;
            }
            if rec.refs.is_empty() {
                gone.push(rec.blob);
            }
        }
        for blob in &gone {
            if let Some(rec) = self.blobs.remove(blob) {
                if let Some(u) = self.used.get_mut(&rec.owner) {
                    *u = u.saturating_sub(rec.len);
                }
                remove_files(&self.base(*blob))?;
            }
        }
        Ok(gone)
    }

    fn readable(
        &self,
        blob: BlobId,
        conversation: ConversationId,
        is_member: bool,
        now_ms: u64,
    ) -> Result<&BlobRecord, BlobError> {
        let rec = self.blobs.get(&blob).ok_or(BlobError::NotFound)?;
        let live = rec.refs.get(&conversation).is_some_and(|&exp| exp > now_ms);
        if !is_member || !live {
            return Err(BlobError::NotMember);
        }
        Ok(rec)
    }

    fn base(&self, blob: BlobId) -> PathBuf {
        self.dir.join(hex::encode(blob.0))
    }
}

/// Re-checks the tail of a partial blob after a restart (see the module doc): from one
/// [`BLOB_SYNC_INTERVAL`] before the recorded offset, group by group against the root, up to
/// the first group that does not verify. The record is rewritten when what is held differs
/// from what it says (after syncing what it newly vouches for).
fn recheck_tail(dir: &Path, rec: &mut BlobRecord) -> std::io::Result<()> {
    let base = dir.join(hex::encode(rec.blob.0));
    let data = File::open(base.with_extension("data"))?;
    let obao = File::open(base.with_extension("obao"))?;
    let groups = media::n_groups(rec.len);
    let from = rec.verified.saturating_sub(BLOB_SYNC_INTERVAL) / CHUNK_GROUP_LEN;
    let mut next = from;
    while next < groups {
        let n = (groups - next).min(MAX_PIECE_GROUPS);
        match check_stored(rec.blob, rec.len, &obao, &data, next, n) {
            Ok(()) => next += n,
            Err(media::MediaError::Corrupt { group }) => {
                next = group.clamp(next, next + n);
                break;
            }
            Err(_) => break,
        }
    }
    let held = group_bytes(rec.len, next, 0).start;
    if held != rec.verified {
        tracing::info!(
            blob = %rec.blob, recorded = rec.verified, held,
            "partial blob re-checked after a restart"
        );
        if held > rec.verified {
            open_rw(&base.with_extension("data"))?.sync_data()?;
            open_rw(&base.with_extension("obao"))?.sync_data()?;
        }
        rec.verified = held;
        rec.write(dir, true)?;
    }
    rec.held = held;
    Ok(())
}

fn create(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// Removes a blob's files, the record first: a crash part-way leaves files without a record,
/// which the next [`BlobStore::open`] removes.
fn remove_files(base: &Path) -> std::io::Result<()> {
    for ext in ["meta", "data", "obao"] {
        match fs::remove_file(base.with_extension(ext)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}
