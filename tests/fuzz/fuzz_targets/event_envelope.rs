//! See `tidings_fuzz::events::check_event_envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tidings_fuzz::events::check_event_envelope(data));
