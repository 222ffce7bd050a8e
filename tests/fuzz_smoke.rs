//! The fuzz targets' checks (tests/fuzz/src/lib.rs) under proptest: a few hundred inputs each
//! on every `cargo test`, so that a broken invariant shows up without a fuzzing run. The long
//! runs and their figures are in docs/RELIABILITY.md ("Fuzzing").

// `let_redb_panics_unwind` is for the fuzzer processes only.
#[allow(dead_code)]
#[path = "fuzz/src/lib.rs"]
mod checks;

use proptest::prelude::*;

/// Inputs whose first byte takes every value, so every mode of a check is reached.
fn input(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..max_len),
    )
        .prop_map(|(mode, rest)| {
            let mut v = vec![mode];
            v.extend(rest);
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn blob_pieces(data in input(600)) {
        checks::blobs::check_blob_pieces(&data);
    }

    #[test]
    fn wire_frames(data in input(600)) {
        checks::wire::check_wire_frames(&data);
    }

    #[test]
    fn event_envelope(data in input(600)) {
        checks::events::check_event_envelope(&data);
    }

    #[test]
    fn stored_records(data in input(200)) {
        checks::check_stored_records(&data);
    }

    #[test]
    fn peer_reconcile(data in input(600)) {
        checks::reconcile::check_peer_reconcile(&data);
    }

    #[test]
    fn conversation_doc(data in input(200)) {
        checks::check_conversation_doc(&data);
    }
}

proptest! {
    // Each case opens a database and reads all of it.
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn event_log_file(data in input(64)) {
        checks::check_event_log_file(&data);
    }

    #[test]
    fn relay_store_file(data in input(64)) {
        checks::check_relay_store_file(&data);
    }
}

/// The fixtures the file and document checks damage are what they claim to be.
#[test]
fn fixtures_load_undamaged() {
    use tidings::engine::{ConversationDoc, EventLog};
    let log = EventLog::with_backend(checks::MemFile::from_bytes(checks::event_log_file()))
        .expect("the fixture log opens");
    let events = log.conversation_events(checks::CONV, 0).expect("events");
    assert_eq!(events.len(), checks::fixture_events().len());
    assert!(log.snapshot(checks::CONV).expect("snapshot").is_some());
    assert_eq!(log.outbox().expect("outbox").len(), 1);
    let doc = ConversationDoc::load(
        checks::CONV,
        checks::doc_bytes(),
        automerge::ActorId::from([5u8; 16]),
    )
    .expect("the fixture document loads");
    assert_eq!(doc.state().messages().len(), 13);
    // Every check accepts its undamaged input.
    checks::check_event_log_file(&[0]);
    checks::check_relay_store_file(&[0]);
    checks::check_conversation_doc(&[1]);
}

/// Crashes the fuzzers found, kept as regression tests: each input damaged a real file so that
/// redb panicked while opening it (`unreachable!` reading its allocator state), before any
/// checksum check could run. Opening now gives `LogError::Damaged` / `StoreError::Corrupt`.
///
/// The recorded inputs patch fixed offsets, and the fixture files change whenever the formats
/// do, so they alone would stop reaching redb's panic without anyone noticing. So the test also
/// damages the first byte of every page of today's fixtures, notes which damage made redb
/// panic (a panic hook that records it on this thread), and checks that there is such damage
/// and that each one is refused with the typed error.
#[test]
fn fuzz_crashes_stay_fixed() {
    // tests/fuzz/artifacts/event_log_file/crash-c20c878c7c76948d73e78a8f4bb1e1a4616fe36e
    checks::check_event_log_file(&[0x00, 0x00, 0x00, 0x05, 0x00]);
    // tests/fuzz/artifacts/relay_store_file/crash-915af4ec1b6f05b26432cf0d3e9b5c9cc9553e7e
    checks::check_relay_store_file(&[0x00, 0x00, 0x70, 0xb7, 0x00]);

    redb_panics_are_refused("fixture log", checks::event_log_file(), |bytes| {
        match tidings::engine::EventLog::with_backend(checks::MemFile::from_bytes(bytes)) {
            Err(tidings::engine::LogError::Damaged(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
            Ok(_) => Err("opened".to_owned()),
        }
    });
    redb_panics_are_refused("fixture relay store", checks::relay_store_file(), |bytes| {
        let file = checks::MemFile::from_bytes(bytes);
        match tidings_relay::core::RelayStore::open_backend(file, false) {
            Err(tidings_relay::core::StoreError::Corrupt(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
            Ok(_) => Err("opened".to_owned()),
        }
    });
}

thread_local! {
    static REDB_PANICKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Inverts the first byte of each 4 KiB page of `file` and opens it with `open`: for every
/// damage that made redb panic, `open` must report the typed error (`Ok`), and at least one
/// damage must make redb panic, or the guard is not exercised.
fn redb_panics_are_refused(what: &str, file: &[u8], open: impl Fn(&[u8]) -> Result<(), String>) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.location().is_some_and(|l| l.file().contains("/redb-")) {
                REDB_PANICKED.with(|p| p.set(true));
            } else {
                previous(info);
            }
        }));
    });
    let mut pages = Vec::new();
    for at in (0..file.len()).step_by(4096) {
        let mut bytes = file.to_vec();
        bytes[at] ^= 0xff;
        REDB_PANICKED.with(|p| p.set(false));
        let result = open(&bytes);
        if REDB_PANICKED.with(|p| p.get()) {
            if let Err(got) = result {
                panic!("page at {at}: redb panicked and the open gave {got}, not the typed error");
            }
            pages.push(at);
        }
    }
    assert!(
        !pages.is_empty(),
        "no damaged page of the {what} makes redb panic: the guard is not exercised"
    );
}
