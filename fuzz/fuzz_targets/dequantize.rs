//! Arbitrary bytes and metadata into every dequantizer must not panic; see
//! `tensorwire::fuzz::dequantize`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tensorwire::fuzz::dequantize(data));
