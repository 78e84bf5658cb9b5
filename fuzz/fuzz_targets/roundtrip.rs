//! An arbitrary frame encodes and decodes back unchanged; see
//! `tensorwire::fuzz::roundtrip`.
#![no_main]

libfuzzer_sys::fuzz_target!(|frame: tensorwire::wire::Frame| tensorwire::fuzz::roundtrip(frame));
