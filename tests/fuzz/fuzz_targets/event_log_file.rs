//! See `tidings_fuzz::check_event_log_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: tidings_fuzz::let_redb_panics_unwind(),
    |data: &[u8]| tidings_fuzz::check_event_log_file(data)
);
