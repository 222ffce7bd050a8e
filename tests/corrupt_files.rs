//! Damaged files on disk: the device's `device.redb`, the relay's `relay.redb` and automerge
//! snapshots. A damaged file gives a clear error, or (a snapshot) a rebuild from the log; never
//! a panic, and never different data presented as good.

// The fixtures of the fuzz checks (real files built through the public API).
#[allow(dead_code)]
#[path = "fuzz/src/lib.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use tidings::engine::{
    ConversationId, DeviceKey, EventLog, MessageView, OutboxEntry, Store, StoreConfig, UserId,
};
use tidings::relay::core::{RelayCore, RelayStore};
use tidings::relay::Limits;

/// Everything a device reads back from its log, through the public API.
#[derive(Debug, PartialEq)]
struct DeviceView {
    events: Vec<(u64, tidings::engine::EventId)>,
    outbox: Vec<OutboxEntry>,
    latest: Vec<MessageView>,
    messages: Vec<MessageView>,
    cursor: u64,
}

fn relay_key() -> DeviceKey {
    let k = DeviceKey::from_seed([9; 32], UserId([0; 32]));
    DeviceKey::from_seed([9; 32], UserId(k.device().0))
}

fn alice() -> DeviceKey {
    DeviceKey::from_seed([1; 32], UserId([0xa1; 32]))
}

fn device_view(path: &Path) -> Result<DeviceView, Box<dyn std::error::Error>> {
    let log = EventLog::open(path)?;
    let events = log
        .conversation_events(checks::CONV, 0)?
        .into_iter()
        .map(|(p, e)| (p, e.id()))
        .collect();
    let outbox = log.outbox()?;
    let latest = log.latest_messages(checks::CONV, 100)?;
    let cursor = log.cursor(b"pull/c0")?;
    let mut store = Store::new(
        log,
        alice(),
        StoreConfig::new(relay_key().device()),
        [5; 32],
    );
    let messages = store.conversation(checks::CONV)?.messages();
    Ok(DeviceView {
        events,
        outbox,
        latest,
        messages,
        cursor,
    })
}

/// How a damaged file was taken.
#[derive(Debug, Default)]
struct Outcomes {
    errors: usize,
    same: usize,
    /// Read as the state before the last commit (see `damaged_device_log...`).
    earlier: usize,
    different: Vec<usize>,
    panics: Vec<usize>,
}

/// Flips one byte at `n` places spread over the file (one per 4 KiB page and a few in the
/// header) and opens each damaged copy with `open`.
fn flip_each<T: PartialEq + std::fmt::Debug>(
    base: &[u8],
    path: &Path,
    good: &T,
    earlier: impl Fn(&T) -> bool,
    open: impl Fn(&Path) -> Result<T, Box<dyn std::error::Error>>,
) -> Outcomes {
    let mut places: Vec<usize> = (0..base.len()).step_by(4096).map(|p| p + 97).collect();
    places.extend([0, 9, 16, 32, 64, 65, 130, 200, 300, 511]);
    places.retain(|p| *p < base.len());
    let mut out = Outcomes::default();
    for at in places {
        let mut bytes = base.to_vec();
        bytes[at] ^= 0x5a;
        std::fs::write(path, &bytes).expect("write");
        match catch_unwind(AssertUnwindSafe(|| open(path))) {
            Err(_) => out.panics.push(at),
            Ok(Err(_)) => out.errors += 1,
            Ok(Ok(v)) if &v == good => out.same += 1,
            Ok(Ok(v)) if earlier(&v) => out.earlier += 1,
            Ok(Ok(_)) => out.different.push(at),
        }
    }
    out
}

#[test]
fn damaged_device_log_gives_an_error_or_the_same_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("device.redb");
    for (name, base) in [
        ("clean", checks::event_log_file()),
        ("after a crash", checks::event_log_file_unclean()),
    ] {
        std::fs::write(&path, base).expect("write");
        let good = device_view(&path).expect("the undamaged log reads");
        assert_eq!(good.events.len(), checks::fixture_events().len());
        // That clean close sealed the file: each damaged copy below is written over a sealed
        // file, and the seal must not let an open skip the page check.
        assert!(EventLog::seal_path(&path).exists(), "{name}: no seal");
        // A file left by a crash is recovered by redb from the newest commit whose checksums
        // hold: damage to the last commit looks like a commit torn by the crash, and the file
        // reads as before it (here: without the last commit's outbox entry and cursor), which
        // is what a crash during that commit leaves. A cleanly closed file has no such case.
        let unclean = name != "clean";
        let before_last_commit = |v: &DeviceView| {
            unclean
                && v.events == good.events
                && v.messages == good.messages
                && v.outbox.is_empty()
                && v.cursor == 0
        };
        let out = flip_each(base, &path, &good, before_last_commit, device_view);
        eprintln!("device log ({name}): {out:?}");
        assert!(out.panics.is_empty(), "{name}: panics at {:?}", out.panics);
        assert!(
            out.different.is_empty(),
            "{name}: damage read back as good data at {:?}",
            out.different
        );
    }
    // Not a database at all, or cut short: refused, never reset.
    std::fs::write(&path, b"hello, this is not a redb file").expect("write");
    assert!(EventLog::open(&path).is_err());
    std::fs::write(&path, &checks::event_log_file()[..5000]).expect("write");
    assert!(EventLog::open(&path).is_err());
}

/// Everything the relay reads back from its store.
#[derive(Debug, PartialEq)]
struct RelayView {
    conversations: Vec<(ConversationId, tidings::relay::core::ConversationRecord)>,
    devices: Vec<(tidings::engine::DeviceId, UserId)>,
    events: Vec<tidings::engine::wire::Envelope>,
    records: Vec<tidings::engine::wire::Envelope>,
    n_events: u64,
}

fn relay_view(path: &Path) -> Result<RelayView, Box<dyn std::error::Error>> {
    let store = RelayStore::open_path(path, true)?;
    let conversations = store.conversations()?;
    let devices = store.devices()?;
    let (events, records, _) = store.page(&checks::CONV, 0, 10_000, usize::MAX)?;
    let n_events = store.n_events()?;
    RelayCore::new(store, relay_key(), Limits::default())?;
    Ok(RelayView {
        conversations,
        devices,
        events,
        records,
        n_events,
    })
}

#[test]
fn damaged_relay_store_gives_an_error_or_the_same_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("relay.redb");
    let base = checks::relay_store_file();
    std::fs::write(&path, base).expect("write");
    let good = relay_view(&path).expect("the undamaged store reads");
    assert!(good.n_events > 0);
    let out = flip_each(base, &path, &good, |_| false, relay_view);
    eprintln!("relay store: {out:?}");
    assert!(out.panics.is_empty(), "panics at {:?}", out.panics);
    assert!(
        out.different.is_empty(),
        "damage read back as good data at {:?}",
        out.different
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_refuses_to_start_on_a_file_that_is_not_its_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("relay.redb"), b"not a database").expect("write");
    let config = tidings::relay::RelayConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..tidings::relay::RelayConfig::dev(dir.path())
    };
    let started = tidings::relay::start(config).await;
    assert!(started.is_err(), "started on garbage");
}

/// A damaged snapshot is dropped and the document rebuilt from the log: the view is the same
/// whatever byte of the snapshot is damaged.
#[test]
fn damaged_snapshot_is_rebuilt_from_the_log() {
    let log =
        EventLog::with_backend(checks::MemFile::from_bytes(checks::event_log_file())).expect("log");
    let mut store = Store::new(
        log,
        alice(),
        StoreConfig::new(relay_key().device()),
        [5; 32],
    );
    let good = store.conversation(checks::CONV).expect("conv").messages();
    let (pos, snap) = store
        .log()
        .snapshot(checks::CONV)
        .expect("snapshot")
        .expect("present");
    let mut rebuilt = 0;
    for at in 0..snap.len() {
        for flip in [0x01u8, 0xff] {
            let mut bad = snap.clone();
            bad[at] ^= flip;
            store
                .log()
                .write(|t| t.put_snapshot(checks::CONV, pos, &bad))
                .expect("write");
            store.unload_all();
            let view = store.conversation(checks::CONV).expect("conv").messages();
            assert_eq!(view, good, "snapshot byte {at} ^ {flip:#x}");
            if store
                .log()
                .snapshot(checks::CONV)
                .expect("snapshot")
                .is_none()
            {
                rebuilt += 1;
            }
        }
    }
    eprintln!(
        "{rebuilt} of {} damaged snapshots rebuilt from the log",
        snap.len() * 2
    );
    assert!(rebuilt > 0);
}
