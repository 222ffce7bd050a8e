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
    fn wire_frames(data in input(600)) {
        checks::check_wire_frames(&data);
    }

    #[test]
    fn event_envelope(data in input(600)) {
        checks::check_event_envelope(&data);
    }

    #[test]
    fn stored_records(data in input(200)) {
        checks::check_stored_records(&data);
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
#[test]
fn fuzz_crashes_stay_fixed() {
    // tests/fuzz/artifacts/event_log_file/crash-c20c878c7c76948d73e78a8f4bb1e1a4616fe36e
    checks::check_event_log_file(&[0x00, 0x00, 0x00, 0x05, 0x00]);
    let (bytes, _) = checks::patch(checks::event_log_file(), &[0x00, 0x00, 0x05, 0x00]);
    let err = tidings::engine::EventLog::with_backend(checks::MemFile::from_bytes(&bytes))
        .expect_err("the damaged log is refused");
    assert!(
        matches!(err, tidings::engine::LogError::Damaged(_)),
        "{err}"
    );
    // tests/fuzz/artifacts/relay_store_file/crash-915af4ec1b6f05b26432cf0d3e9b5c9cc9553e7e
    checks::check_relay_store_file(&[0x00, 0x00, 0x70, 0xb7, 0x00]);
}
