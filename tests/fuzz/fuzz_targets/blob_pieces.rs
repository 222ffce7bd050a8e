//! See `tidings_fuzz::blobs::check_blob_pieces`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tidings_fuzz::blobs::check_blob_pieces(data));
