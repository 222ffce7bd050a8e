//! A download under way, kept across failures and restarts.
//!
//! `<root>.part` holds the prefix of the blob's ciphertext fetched so far, every group of it
//! verified against the root when it arrived; `<root>.pobao` the parent hash pairs that came
//! with it, at their outboard offsets (every parent on the way to a group of the prefix: a
//! device serves the prefix to its peers from these two files); `<root>.got` says how much of
//! that prefix is synced, replaced by write-fsync-rename after the `.part` and the `.pobao`
//! are synced (each time the prefix crosses a multiple of [`DOWNLOAD_SYNC_INTERVAL`], and at
//! the end). The record is `0x02 ‖ held u64 LE ‖ blob length u64 LE ‖ conversation (16 B)`:
//! the prefix, the blob's ciphertext length and the conversation it was fetched for (the one
//! that references it, for peers). A record of
//! version 1 (`0x01 ‖ u64 LE`, before the parents were kept) still resumes, but such a
//! download is not served to peers. A
//! download that starts again (after a network loss, an error, a restart of the app) keeps
//! the recorded prefix, cuts what is past it, and asks the relay only for the rest. What the
//! record vouches for is checked once more at the end: every segment's AEAD tag when the blob
//! is decrypted; a prefix damaged on disk fails there and is dropped whole.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tidings_engine::media::{VerifiedPiece, CHUNK_GROUP_LEN};
use tidings_engine::ConversationId;

/// The fetched prefix is synced and recorded each time it crosses a multiple of this: an
/// interrupted download fetches at most this much again (plus the piece in flight).
pub const DOWNLOAD_SYNC_INTERVAL: u64 = 8 * 1024 * 1024;

/// Version byte of a `.got` record without a conversation (no parents kept).
const GOT_V1: u8 = 1;
/// Version byte of a `.got` record with the conversation (parents kept in `.pobao`).
const GOT_V2: u8 = 2;

/// What a `.got` record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// Verified ciphertext bytes synced from the start.
    pub(crate) held: u64,
    /// The blob's length and the conversation it was fetched for, when its parents were
    /// kept (version 2).
    pub(crate) served: Option<(u64, ConversationId)>,
}

/// The partial ciphertext of one blob being downloaded.
#[derive(Debug)]
pub(crate) struct PartialDownload {
    file: File,
    outboard: File,
    got: PathBuf,
    /// The conversation recorded (`None` for a version 1 record: parents not kept).
    conversation: Option<ConversationId>,
    /// Ciphertext bytes of the blob.
    len: u64,
    /// Verified bytes written from the start.
    held: u64,
    /// Of those, the synced and recorded ones.
    synced: u64,
}

impl PartialDownload {
    /// Opens the download of a blob of `len` ciphertext bytes into `part`, for
    /// `conversation`, keeping the prefix its record vouches for (a record that does not fit
    /// the file is ignored: start from zero).
    pub(crate) fn open(
        part: &Path,
        len: u64,
        conversation: ConversationId,
    ) -> std::io::Result<PartialDownload> {
        let got = part.with_extension("got");
        let open = |path: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
        };
        let file = open(part)?;
        let outboard = open(&part.with_extension("pobao"))?;
        let on_disk = file.metadata()?.len();
        let aligned = |n: u64| n.is_multiple_of(CHUNK_GROUP_LEN) || n == len;
        let fits = |r: &Recorded| {
            let same_len = r.served.is_none_or(|(l, _)| l == len);
            r.held <= len && r.held <= on_disk && aligned(r.held) && same_len
        };
        let (held, conversation) = match read_got(&got).filter(fits) {
            Some(r) => (r.held, r.served.map(|(_, c)| c)),
            None => (0, Some(conversation)),
        };
        file.set_len(held)?;
        Ok(PartialDownload {
            file,
            outboard,
            got,
            conversation,
            len,
            held,
            synced: held,
        })
    }

    /// Verified bytes held from the start.
    pub(crate) fn held(&self) -> u64 {
        self.held
    }

    /// The chunk group to fetch next: past the last one once the whole blob is held (a
    /// prefix short of the end always ends on a group boundary).
    pub(crate) fn next_group(&self) -> u64 {
        self.held.div_ceil(CHUNK_GROUP_LEN)
    }

    /// Appends a verified piece (it must start where the prefix ends); syncs and records the
    /// prefix when it crosses the interval or reaches the end.
    pub(crate) fn append(&mut self, piece: &VerifiedPiece) -> std::io::Result<()> {
        for (at, bytes) in &piece.leaves {
            if *at != self.held {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("piece at {at}, the download stands at {}", self.held),
                ));
            }
            self.file.write_all_at(bytes, *at)?;
            self.held += bytes.len() as u64;
        }
        for (at, pair) in &piece.parents {
            self.outboard.write_all_at(pair, *at)?;
        }
        let crossed = self.held / DOWNLOAD_SYNC_INTERVAL > self.synced / DOWNLOAD_SYNC_INTERVAL;
        if self.held > self.synced && (crossed || self.held == self.len) {
            self.sync()?;
        }
        Ok(())
    }

    /// Syncs the prefix and records it.
    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.outboard.sync_data()?;
        let tmp = self.got.with_extension("got-tmp");
        let mut f = File::create(&tmp)?;
        match self.conversation {
            Some(c) => {
                f.write_all(&[GOT_V2])?;
                f.write_all(&self.held.to_le_bytes())?;
                f.write_all(&self.len.to_le_bytes())?;
                f.write_all(&c.0)?;
            }
            None => {
                f.write_all(&[GOT_V1])?;
                f.write_all(&self.held.to_le_bytes())?;
            }
        }
        f.sync_all()?;
        fs::rename(&tmp, &self.got)?;
        self.synced = self.held;
        Ok(())
    }
}

/// The prefix a partial download's record vouches for (`None`: no download of this blob in
/// the media directory, or nothing of it recorded).
pub(crate) fn recorded(part: &Path) -> Option<Recorded> {
    read_got(&part.with_extension("got")).filter(|r| r.held > 0)
}

/// Removes a download's files (after it was decrypted, or found damaged).
pub(crate) fn remove(part: &Path) -> std::io::Result<()> {
    for path in [
        part.to_path_buf(),
        part.with_extension("got"),
        part.with_extension("pobao"),
    ] {
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The record, if it is there and well formed.
fn read_got(path: &Path) -> Option<Recorded> {
    if fs::metadata(path).ok()?.len() > 33 {
        return None;
    }
    let bytes = fs::read(path).ok()?;
    let (&version, rest) = bytes.split_first()?;
    let (held, rest) = rest.split_at_checked(8)?;
    let held = u64::from_le_bytes(held.try_into().ok()?);
    match (version, rest.len()) {
        (GOT_V1, 0) => Some(Recorded { held, served: None }),
        (GOT_V2, 24) => {
            let (len, conversation) = rest.split_at(8);
            let len = u64::from_le_bytes(len.try_into().ok()?);
            let conversation = ConversationId(conversation.try_into().ok()?);
            Some(Recorded {
                held,
                served: Some((len, conversation)),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_engine::media::n_groups;

    /// A download fetched whole but not yet decrypted (the app closed in between, or a
    /// prefetch: see `prefetch.rs`) reopens with nothing left to fetch. Before, its next group
    /// was the last one again when the blob did not end on a group boundary, and the relay's
    /// answer to that ("piece at …, the download stands at …") failed every later try.
    #[test]
    fn a_whole_download_reopens_with_nothing_left_to_fetch() {
        let dir = tempfile::tempdir().expect("dir");
        let part = dir.path().join("blob.part");
        for len in [
            1,
            CHUNK_GROUP_LEN - 1,
            CHUNK_GROUP_LEN,
            3 * CHUNK_GROUP_LEN + 5,
        ] {
            let c = ConversationId([4; 16]);
            let mut d = PartialDownload::open(&part, len, c).expect("open");
            assert_eq!(d.next_group(), 0);
            let piece = VerifiedPiece {
                parents: Vec::new(),
                leaves: vec![(0, vec![7u8; len as usize].into())],
            };
            d.append(&piece).expect("append");
            drop(d);
            let again = PartialDownload::open(&part, len, c).expect("reopen");
            assert_eq!(again.held(), len);
            assert_eq!(again.next_group(), n_groups(len), "len {len}");
            remove(&part).expect("remove");
        }
    }
}
