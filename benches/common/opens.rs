//! Timed opens of Alice's closed store (`super::encrypted`): from the log file to what a
//! screen shows, the way an app starts. For the benches that time an open (`open`,
//! `compaction`).

use super::encrypted::{open_alice, Member};
use std::path::Path;
use std::time::{Duration, Instant};
use tidings::engine::store::Body;
use tidings::engine::{EventLog, Store};

/// Messages on the screen.
pub const SCREEN: usize = 50;

/// Alice's store on the log file at `path`.
pub fn open_store(alice: &Member, path: &Path) -> Store {
    open_alice(EventLog::open(path).expect("open"), alice)
}

/// Checks that a screen's worth of bodies all decrypted.
pub fn all_decrypted(bodies: impl IntoIterator<Item = Body>) {
    let mut n = 0;
    for b in bodies {
        assert!(matches!(b, Body::Text(_)), "{b:?}");
        n += 1;
    }
    assert_eq!(n, SCREEN);
}

/// Takes the seal of the clean close away: the next open checks every page, as after a
/// crash, or after anything wrote to the file.
pub fn unseal(path: &Path) {
    let _ = std::fs::remove_file(EventLog::seal_path(path));
}

/// Times `f` from a closed store each iteration; closing the store is not timed. The close
/// seals the file, so each open but the first skips the full page check.
pub fn timed_from_closed(
    iters: u64,
    alice: &Member,
    path: &Path,
    f: impl Fn(&mut Store),
) -> Duration {
    timed_opens(iters, alice, path, || {}, f)
}

/// Like [`timed_from_closed`], with `prepare` run on the closed file before each open,
/// untimed: [`unseal`] it, or put the file to open in place.
pub fn timed_opens(
    iters: u64,
    alice: &Member,
    path: &Path,
    mut prepare: impl FnMut(),
    f: impl Fn(&mut Store),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        prepare();
        let start = Instant::now();
        let mut store = open_store(alice, path);
        f(&mut store);
        total += start.elapsed();
        drop(store);
    }
    total
}
