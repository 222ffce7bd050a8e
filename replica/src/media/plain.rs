//! A download decrypted as it arrives: the plaintext is written once, beside its destination.
//!
//! `download_media` used to keep the verified ciphertext in the media directory, sync it,
//! then decrypt it into the destination: every byte written twice. Here each verified piece
//! is cut into STREAM segments as it comes; a segment is opened (its AEAD tag checked) as
//! soon as all its ciphertext is there, and its plaintext appended to `<dest>.tidings-part`.
//! When the last segment is written the file is synced and renamed to `dest`.
//!
//! # How a resume knows which plaintext is good
//! `<dest>.tidings-got` = `0x01 ‖ blob root (32 B) ‖ plaintext length (u64 LE) ‖ synced
//! plaintext bytes (u64 LE)` is replaced (write, fsync, rename) only after the plaintext file
//! was synced up to that length, each time the plaintext crosses a multiple of
//! [`DOWNLOAD_SYNC_INTERVAL`]. Only whole segments are ever written, and every one of them
//! was opened under the blob's key from ciphertext verified against the root, so the synced
//! prefix is exactly the first `synced / SEGMENT_LEN` segments of this blob. The record names
//! the blob (its root binds the key too: another key gives another ciphertext) and its
//! length, so a file left by another download to the same path is never taken for this one.
//! A resume truncates the file to the recorded length and fetches from the chunk group that
//! holds the next segment's first ciphertext byte, dropping the bytes of that group before
//! the segment (a segment is 65,552 ciphertext bytes, a group 16,384: they do not align).
//! Anything past the record (written, not synced when the download stopped) is cut.

use super::partial::DOWNLOAD_SYNC_INTERVAL;
use super::MediaError;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use tidings_engine::media::{
    BlobDescriptor, BlobSealer, VerifiedPiece, CHUNK_GROUP_LEN, SEALED_SEGMENT_LEN, SEGMENT_LEN,
    SEGMENT_TAG_LEN,
};
use tidings_engine::BlobId;

/// Version byte of a `.tidings-got` record.
const PLAIN_GOT_V1: u8 = 1;
/// Bytes of a `.tidings-got` record.
const PLAIN_GOT_LEN: usize = 1 + 32 + 8 + 8;

/// A download being decrypted into `<dest>.tidings-part`.
pub(crate) struct PlainDownload {
    file: File,
    tmp: PathBuf,
    got: PathBuf,
    dest: PathBuf,
    blob: BlobId,
    plain_len: u64,
    sealer: BlobSealer,
    /// The next segment to open.
    segment: u64,
    /// Its ciphertext received so far.
    carry: Vec<u8>,
    /// Plaintext bytes synced and recorded.
    synced: u64,
}

impl PlainDownload {
    /// Opens (or resumes) the download of `media` into `dest`.
    pub(crate) fn open(dest: &Path, media: &BlobDescriptor) -> Result<PlainDownload, MediaError> {
        let tmp = beside(dest, "tidings-part");
        let got = beside(dest, "tidings-got");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&tmp)?;
        let on_disk = file.metadata()?.len();
        let whole = |n: u64| n.is_multiple_of(SEGMENT_LEN) || n == media.len;
        let synced = read_got(&got, media.blob, media.len)
            .filter(|&n| n <= media.len && n <= on_disk && whole(n))
            .unwrap_or(0);
        file.set_len(synced)?;
        let mut file = file;
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(synced))?;
        let sealer = BlobSealer::new(&media.key, media.len)?;
        Ok(PlainDownload {
            file,
            tmp,
            got,
            dest: dest.to_path_buf(),
            blob: media.blob,
            plain_len: media.len,
            segment: synced / SEGMENT_LEN,
            carry: Vec::with_capacity(SEALED_SEGMENT_LEN as usize),
            synced,
            sealer,
        })
    }

    /// Whether every segment is written.
    pub(crate) fn is_whole(&self) -> bool {
        self.segment >= self.sealer.n_segments()
    }

    /// The ciphertext offset of the next byte wanted.
    fn cipher_at(&self) -> u64 {
        self.segment * SEALED_SEGMENT_LEN + self.carry.len() as u64
    }

    /// The chunk group to fetch first: the one that holds the next byte wanted.
    pub(crate) fn next_group(&self) -> u64 {
        self.cipher_at() / CHUNK_GROUP_LEN
    }

    /// Takes a verified piece (its groups from [`PlainDownload::next_group`] on): opens and
    /// writes every segment it completes, syncing and recording the prefix when it crosses
    /// the interval. A segment that does not open under the key (a descriptor whose key does
    /// not fit its blob) is an error: nothing of it is written.
    pub(crate) fn take(&mut self, piece: &VerifiedPiece) -> Result<(), MediaError> {
        for (at, bytes) in &piece.leaves {
            let want = self.cipher_at();
            let end = at + bytes.len() as u64;
            if end <= want {
                continue;
            }
            if *at > want {
                return Err(MediaError::Protocol(format!(
                    "piece at {at}, the download stands at {want}"
                )));
            }
            // `want - at` is within the leaf: at <= want < end.
            let mut rest = &bytes[(want - at) as usize..];
            while !rest.is_empty() && !self.is_whole() {
                let seg_len = (self.sealer.segment_len(self.segment)? + SEGMENT_TAG_LEN) as usize;
                let n = (seg_len - self.carry.len()).min(rest.len());
                self.carry.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                if self.carry.len() == seg_len {
                    self.write_segment()?;
                }
            }
        }
        Ok(())
    }

    fn write_segment(&mut self) -> Result<(), MediaError> {
        // Opened where it was gathered: no second buffer, no copy of its ciphertext.
        self.sealer
            .open_segment_in_place(self.segment, &mut self.carry)?;
        self.file.write_all(&self.carry)?;
        self.carry.clear();
        self.segment += 1;
        let written = (self.segment * SEGMENT_LEN).min(self.plain_len);
        let crossed = written / DOWNLOAD_SYNC_INTERVAL > self.synced / DOWNLOAD_SYNC_INTERVAL;
        if crossed && !self.is_whole() {
            self.file.sync_data()?;
            self.record(written)?;
        }
        Ok(())
    }

    /// Records `synced` plaintext bytes as good (the file is synced that far already).
    fn record(&mut self, synced: u64) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(PLAIN_GOT_LEN);
        bytes.push(PLAIN_GOT_V1);
        bytes.extend_from_slice(&self.blob.0);
        bytes.extend_from_slice(&self.plain_len.to_le_bytes());
        bytes.extend_from_slice(&synced.to_le_bytes());
        let tmp = beside(&self.got, "tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.got)?;
        self.synced = synced;
        Ok(())
    }

    /// Syncs the whole plaintext and renames it to its destination; the record goes.
    pub(crate) fn finish(self) -> Result<(), MediaError> {
        if !self.is_whole() {
            return Err(MediaError::Protocol("download finished short".into()));
        }
        self.file.sync_all()?;
        fs::rename(&self.tmp, &self.dest)?;
        remove_quietly(&self.got)?;
        Ok(())
    }

    /// Drops the download's files (its blob does not open: nothing of it is worth keeping).
    pub(crate) fn discard(self) -> std::io::Result<()> {
        remove_quietly(&self.tmp)?;
        remove_quietly(&self.got)
    }
}

/// `path` with `.suffix` appended to its file name (`photo.jpg` → `photo.jpg.tidings-part`:
/// two destinations that differ only in extension do not share a partial file).
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

fn remove_quietly(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The synced plaintext length a record vouches for, if it is well formed and names this
/// blob and length.
fn read_got(path: &Path, blob: BlobId, plain_len: u64) -> Option<u64> {
    if fs::metadata(path).ok()?.len() != PLAIN_GOT_LEN as u64 {
        return None;
    }
    let bytes = fs::read(path).ok()?;
    let (&version, rest) = bytes.split_first()?;
    let (root, rest) = rest.split_at_checked(32)?;
    let (len, synced) = rest.split_at_checked(8)?;
    let named = version == PLAIN_GOT_V1
        && root == blob.0
        && u64::from_le_bytes(len.try_into().ok()?) == plain_len;
    let synced = u64::from_le_bytes(synced.try_into().ok()?);
    named.then_some(synced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_engine::media::{cipher_len, seal_blob, BlobKey, BlobTree};

    /// Feeds a blob's verified pieces to a download, dropping it after `stop_after` pieces;
    /// then resumes and finishes; the plaintext is the blob's.
    fn check(plain_len: usize, stop_after: usize) -> u64 {
        let dir = tempfile::tempdir().expect("dir");
        let plain: Vec<u8> = (0..plain_len).map(|i| (i * 7 % 251) as u8).collect();
        let key = BlobKey::from_bytes([3; 32]);
        let cipher = seal_blob(&key, &plain).expect("seal");
        let len = cipher_len(plain_len as u64);
        let tree = BlobTree::hash(&cipher[..], len).expect("hash");
        let media = BlobDescriptor {
            blob: tree.root(),
            key,
            len: plain_len as u64,
            mime: String::new(),
            thumbnail: Vec::new(),
        };
        let dest = dir.path().join("out.bin");
        let groups = tidings_engine::media::n_groups(len);
        let run = |d: &mut PlainDownload, limit: usize| {
            let mut next = d.next_group();
            for _ in 0..limit {
                if next >= groups {
                    break;
                }
                let n = (groups - next).min(7);
                let piece = tree.encode_piece(&cipher[..], next, n).expect("piece");
                let v = tidings_engine::media::verify_piece(media.blob, len, &piece).expect("ok");
                d.take(&v).expect("take");
                next += n;
            }
        };
        let mut d = PlainDownload::open(&dest, &media).expect("open");
        run(&mut d, stop_after);
        let stopped_at = d.synced;
        drop(d);
        let mut d = PlainDownload::open(&dest, &media).expect("reopen");
        assert_eq!(d.synced, stopped_at);
        assert_eq!(d.segment * SEGMENT_LEN, stopped_at);
        run(&mut d, usize::MAX);
        d.finish().expect("finish");
        assert_eq!(fs::read(&dest).expect("read"), plain, "len {plain_len}");
        assert!(!beside(&dest, "tidings-part").exists());
        assert!(!beside(&dest, "tidings-got").exists());
        stopped_at
    }

    #[test]
    fn a_download_decrypts_as_it_goes_and_resumes_from_its_synced_segments() {
        for len in [0, 1, 65_535, 65_536, 65_537, 300_000] {
            check(len, usize::MAX);
        }
        // Past the first sync (8 MiB of plaintext): resumes there, not at zero.
        let big = (DOWNLOAD_SYNC_INTERVAL + 3 * SEGMENT_LEN + 5) as usize;
        let resumed_at = check(big, 5 * 1024 * 1024 / (7 * 16 * 1024) + 100);
        assert_eq!(resumed_at, DOWNLOAD_SYNC_INTERVAL);
    }

    /// A record of another blob (or another length) at the same path is not taken.
    #[test]
    fn a_record_names_its_blob() {
        let dir = tempfile::tempdir().expect("dir");
        let got = dir.path().join("x.tidings-got");
        let mut bytes = vec![PLAIN_GOT_V1];
        bytes.extend_from_slice(&[9; 32]);
        bytes.extend_from_slice(&100u64.to_le_bytes());
        bytes.extend_from_slice(&64u64.to_le_bytes());
        fs::write(&got, &bytes).expect("write");
        assert_eq!(read_got(&got, BlobId([9; 32]), 100), Some(64));
        assert_eq!(read_got(&got, BlobId([8; 32]), 100), None);
        assert_eq!(read_got(&got, BlobId([9; 32]), 101), None);
    }
}
