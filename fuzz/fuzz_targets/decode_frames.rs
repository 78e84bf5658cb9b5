//! Arbitrary bytes into the frame decoder, split at points taken from the
//! input; see `tensorwire::fuzz::decode_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tensorwire::fuzz::decode_frames(data));
