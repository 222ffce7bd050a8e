//! A blob's `.meta` record: what the store knows of one blob, persisted beside its data.
//!
//! Layout: `BLOB_RECORD_V1 ‖ postcard(BlobRecord)`, replaced by writing `<root>.tmp`,
//! syncing it and renaming it over `<root>.meta` (then syncing the directory), so a crash
//! leaves the old record or the new one, never a torn one.

use super::UploadState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use tidings_engine::{BlobId, ConversationId, UserId};

/// Version byte of a blob record.
pub const BLOB_RECORD_V1: u8 = 1;
/// Largest record file read (a record with this many conversation references is far past
/// any real forward count; bounds the read of a damaged file).
const MAX_RECORD_LEN: u64 = 1024 * 1024;

/// What the store knows of one blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    /// The root of its ciphertext.
    pub blob: BlobId,
    /// Ciphertext bytes.
    pub len: u64,
    /// The user who uploaded it (charged for it).
    pub owner: UserId,
    /// Bytes from the start that verified against the root and are synced.
    pub verified: u64,
    /// Bytes from the start that verified and are written, maybe not synced yet: what the
    /// store serves and reports. Not persisted: after a restart it is what the record
    /// vouches for, re-checked, plus what of the file past it checks against the root.
    #[serde(skip)]
    pub(super) held: u64,
    /// Conversations that reference it, each with when its reference expires (ms).
    pub refs: BTreeMap<ConversationId, u64>,
}

impl BlobRecord {
    pub(super) fn new(
        blob: BlobId,
        len: u64,
        owner: UserId,
        conversation: ConversationId,
        expires_ms: u64,
    ) -> BlobRecord {
        BlobRecord {
            blob,
            len,
            owner,
            verified: 0,
            held: 0,
            refs: BTreeMap::from([(conversation, expires_ms)]),
        }
    }

    pub(super) fn state(&self) -> UploadState {
        UploadState {
            verified: self.held,
            len: self.len,
        }
    }

    pub(super) fn complete(&self) -> bool {
        self.held == self.len
    }

    /// References the blob from `conversation` until `expires_ms` (a later reference
    /// extends an earlier one).
    pub(super) fn refer(&mut self, conversation: ConversationId, expires_ms: u64) {
        let e = self.refs.entry(conversation).or_insert(expires_ms);
        *e = (*e).max(expires_ms);
    }

    /// Drops expired references; whether any was dropped.
    pub(super) fn drop_expired(&mut self, now_ms: u64) -> bool {
        let before = self.refs.len();
        self.refs.retain(|_, &mut exp| exp > now_ms);
        self.refs.len() != before
    }

    /// Replaces the record on disk. `sync_dir`: make the rename itself durable. Without it a
    /// crash may bring back the previous record, which is safe for a mere advance of the
    /// verified offset (the uploader sends that part again), not for a new blob, a new
    /// reference or completion (after which the uploader forgets the blob).
    pub(super) fn write(&self, dir: &Path, sync_dir: bool) -> std::io::Result<()> {
        let base = dir.join(hex::encode(self.blob.0));
        let tmp = base.with_extension("tmp");
        let mut bytes = vec![BLOB_RECORD_V1];
        postcard::to_io(self, &mut bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, base.with_extension("meta"))?;
        if sync_dir {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    pub(super) fn read(path: &Path) -> std::io::Result<BlobRecord> {
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        if fs::metadata(path)?.len() > MAX_RECORD_LEN {
            return Err(bad("record too large"));
        }
        let bytes = fs::read(path)?;
        let rec: BlobRecord = match bytes.split_first() {
            Some((&BLOB_RECORD_V1, rest)) => {
                postcard::from_bytes(rest).map_err(|_| bad("record layout"))?
            }
            _ => return Err(bad("record version")),
        };
        let named = path.file_stem().and_then(|s| s.to_str()) == Some(&hex::encode(rec.blob.0));
        if !named || rec.verified > rec.len {
            return Err(bad("record does not match its file"));
        }
        Ok(BlobRecord {
            held: rec.verified,
            ..rec
        })
    }
}
