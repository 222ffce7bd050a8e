//! See `tidings_fuzz::wire::check_wire_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tidings_fuzz::wire::check_wire_frames(data));
