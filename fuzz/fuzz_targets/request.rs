//! A request target and headers through the server's request parsing; see
//! `tensorwire::fuzz::request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tensorwire::fuzz::request(data));
