//! A download under way, kept across failures and restarts.
//!
//! `<root>.part` holds the prefix of the blob's ciphertext fetched so far, every group of it
//! verified against the root when it arrived; `<root>.got` = `0x01 ‖ u64 LE` says how much of
//! that prefix is synced, replaced by write-fsync-rename after the `.part` is synced (each
//! time the prefix crosses a multiple of [`DOWNLOAD_SYNC_INTERVAL`], and at the end). A
//! download that starts again (after a network loss, an error, a restart of the app) keeps
//! the recorded prefix, cuts what is past it, and asks the relay only for the rest. What the
//! record vouches for is checked once more at the end: every segment's AEAD tag when the blob
//! is decrypted; a prefix damaged on disk fails there and is dropped whole.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tidings_engine::media::{VerifiedPiece, CHUNK_GROUP_LEN};

/// The fetched prefix is synced and recorded each time it crosses a multiple of this: an
/// interrupted download fetches at most this much again (plus the piece in flight).
pub const DOWNLOAD_SYNC_INTERVAL: u64 = 8 * 1024 * 1024;

/// Version byte of a `.got` record.
const GOT_V1: u8 = 1;

/// The partial ciphertext of one blob being downloaded.
#[derive(Debug)]
pub(crate) struct PartialDownload {
    file: File,
    got: PathBuf,
    /// Ciphertext bytes of the blob.
    len: u64,
    /// Verified bytes written from the start.
    held: u64,
    /// Of those, the synced and recorded ones.
    synced: u64,
}

impl PartialDownload {
    /// Opens the download of a blob of `len` ciphertext bytes into `part`, keeping the
    /// prefix its record vouches for (a record that does not fit the file is ignored: start
    /// from zero).
    pub(crate) fn open(part: &Path, len: u64) -> std::io::Result<PartialDownload> {
        let got = part.with_extension("got");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(part)?;
        let on_disk = file.metadata()?.len();
        let aligned = |n: u64| n.is_multiple_of(CHUNK_GROUP_LEN) || n == len;
        let held = read_got(&got)
            .filter(|&n| n <= len && n <= on_disk && aligned(n))
            .unwrap_or(0);
        file.set_len(held)?;
        Ok(PartialDownload {
            file,
            got,
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
        let crossed = self.held / DOWNLOAD_SYNC_INTERVAL > self.synced / DOWNLOAD_SYNC_INTERVAL;
        if self.held > self.synced && (crossed || self.held == self.len) {
            self.sync()?;
        }
        Ok(())
    }

    /// Syncs the prefix and records it.
    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        let tmp = self.got.with_extension("got-tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&[GOT_V1])?;
        f.write_all(&self.held.to_le_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &self.got)?;
        self.synced = self.held;
        Ok(())
    }
}

/// Removes a download's files (after it was decrypted, or found damaged).
pub(crate) fn remove(part: &Path) -> std::io::Result<()> {
    for path in [part.to_path_buf(), part.with_extension("got")] {
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The recorded prefix, if the record is there and well formed.
fn read_got(path: &Path) -> Option<u64> {
    if fs::metadata(path).ok()?.len() != 9 {
        return None;
    }
    let bytes = fs::read(path).ok()?;
    match bytes.split_first() {
        Some((&GOT_V1, rest)) => Some(u64::from_le_bytes(rest.try_into().ok()?)),
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
            let mut d = PartialDownload::open(&part, len).expect("open");
            assert_eq!(d.next_group(), 0);
            let piece = VerifiedPiece {
                parents: Vec::new(),
                leaves: vec![(0, vec![7u8; len as usize].into())],
            };
            d.append(&piece).expect("append");
            drop(d);
            let again = PartialDownload::open(&part, len).expect("reopen");
            assert_eq!(again.held(), len);
            assert_eq!(again.next_group(), n_groups(len), "len {len}");
            remove(&part).expect("remove");
        }
    }
}
