//! See `tidings_fuzz::check_conversation_doc`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tidings_fuzz::check_conversation_doc(data));
