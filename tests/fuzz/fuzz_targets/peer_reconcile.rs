//! See `tidings_fuzz::reconcile::check_peer_reconcile`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tidings_fuzz::reconcile::check_peer_reconcile(data));
