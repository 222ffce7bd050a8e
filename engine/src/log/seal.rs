//! The clean-close seal: a small file beside the log that lets the next open skip the full
//! integrity check when nothing has touched the log since this process closed it.
//!
//! `EventLog::open` checks every page of the file (`Database::check_integrity`) because redb
//! verifies checksums only when it recovers from a crash, and a page damaged after a clean
//! close would otherwise be read as it is. That check is O(file size): ~150 ms for a
//! 100k-message log, paid on every app start. When the last handle on a file-backed log
//! closes, redb marks the file cleanly closed and the log writes `<log file>.closed` with the
//! file's size, inode, modification and change times. The next open takes the seal away
//! (so a crash while open leaves none) and skips the check only if the file's metadata is
//! still exactly what was sealed. Any write to the file since (another program, a copy, a
//! restore, a partial write) moves its change time, which no program can set back, and the
//! full check runs. What the seal cannot see is damage beneath the file system (a bad
//! sector under an unchanged inode): docs/RELIABILITY.md says so.
//!
//! File times come from a coarse clock (a few milliseconds per tick), so a write in the same
//! tick as the close would leave the times unchanged. The rule of "racy git" settles it: a
//! seal vouches only for a file whose change time is strictly older than the seal itself,
//! and the close rewrites the seal until the file system shows it a tick later than the
//! log (a few milliseconds at most, paid once per close). A write to the log at or after the
//! seal's tick gives the log a change time at least the seal's, and the full check runs.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Written first in a seal, so that a stray file of that name is never taken for one.
const SEAL_MAGIC: [u8; 8] = *b"tdgseal1";

/// What a seal records about the log file it vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    magic: [u8; 8],
    len: u64,
    device: u64,
    inode: u64,
    modified_ns: i128,
    changed_ns: i128,
}

/// The seal's path for the log at `log`: the log's file name with `.closed` added.
pub(crate) fn seal_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".closed");
    PathBuf::from(name)
}

/// How many times a close rewrites its seal, a millisecond apart, waiting for the file
/// system's clock to tick past the log's change time.
const SEAL_ATTEMPTS: u32 = 50;

#[cfg(unix)]
fn ns(secs: i64, nanos: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nanos)
}

/// The modification time of the seal file itself.
#[cfg(unix)]
fn sealed_at(seal: &Path) -> Option<i128> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(seal).ok()?;
    Some(ns(m.mtime(), m.mtime_nsec()))
}

#[cfg(not(unix))]
fn sealed_at(_seal: &Path) -> Option<i128> {
    None
}

#[cfg(unix)]
fn stamp_of(log: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(log).ok()?;
    Some(Stamp {
        magic: SEAL_MAGIC,
        len: m.len(),
        device: m.dev(),
        inode: m.ino(),
        modified_ns: ns(m.mtime(), m.mtime_nsec()),
        changed_ns: ns(m.ctime(), m.ctime_nsec()),
    })
}

/// Without a change time that programs cannot set, no seal is trusted: every open checks.
#[cfg(not(unix))]
fn stamp_of(_log: &Path) -> Option<Stamp> {
    None
}

/// Takes the seal of the log at `log` away and says whether it vouches for the file as it is
/// now. Call it before the log is opened: opening writes to the file.
pub(crate) fn take(log: &Path) -> bool {
    let path = seal_path(log);
    let Ok(bytes) = std::fs::read(&path) else {
        return false;
    };
    let at = sealed_at(&path);
    // Removed whatever it says: a seal is good for one open. If the removal fails, the seal
    // is stale anyway after this open's first commit (the file's times move).
    let _ = std::fs::remove_file(&path);
    let Ok(sealed) = postcard::from_bytes::<Stamp>(&bytes) else {
        return false;
    };
    sealed.magic == SEAL_MAGIC
        && stamp_of(log) == Some(sealed)
        && at.is_some_and(|at| sealed.changed_ns < at)
}

/// The log's database handle: redb's `Database` and, for a file, the seal its close writes.
/// Shared (`Arc`) by the `EventLog` and every `LogReader`; when the last of them lets go, the
/// database closes first (fields drop in declaration order) and then the seal is written,
/// whichever handle was last.
#[derive(Debug)]
pub(crate) struct LogDb {
    db: redb::Database,
    _seal: SealOnClose,
}

impl LogDb {
    /// `log`: the log file to seal when this handle closes (none for other backends).
    pub(crate) fn new(db: redb::Database, log: Option<PathBuf>) -> LogDb {
        LogDb {
            db,
            _seal: SealOnClose(log),
        }
    }
}

impl std::ops::Deref for LogDb {
    type Target = redb::Database;
    fn deref(&self) -> &redb::Database {
        &self.db
    }
}

impl std::ops::DerefMut for LogDb {
    fn deref_mut(&mut self) -> &mut redb::Database {
        &mut self.db
    }
}

/// Seals its log file when dropped, which is after the database beside it has closed.
#[derive(Debug)]
struct SealOnClose(Option<PathBuf>);

impl Drop for SealOnClose {
    fn drop(&mut self) {
        if let Some(log) = &self.0 {
            write_seal(log);
        }
    }
}

fn write_seal(log: &Path) {
    let Some(stamp) = stamp_of(log) else {
        return;
    };
    let Ok(bytes) = postcard::to_allocvec(&stamp) else {
        return;
    };
    let path = seal_path(log);
    // Not synced: a seal lost to a power cut costs one full check, nothing else.
    for _ in 0..SEAL_ATTEMPTS {
        if let Err(e) = std::fs::write(&path, &bytes) {
            tracing::debug!(error = %e, log = %log.display(), "could not seal the closed log");
            return;
        }
        if sealed_at(&path).is_some_and(|at| stamp.changed_ns < at) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // The clock never moved past the log's change time: a seal that cannot vouch.
    let _ = std::fs::remove_file(&path);
}
