//! See `tidings_fuzz::check_wire_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tidings_fuzz::check_wire_frames(data));
