//! See `tidings_fuzz::check_stored_records`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tidings_fuzz::check_stored_records(data));
