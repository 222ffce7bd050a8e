//! See `tidings_fuzz::check_relay_store_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tidings_fuzz::check_relay_store_file(data));
