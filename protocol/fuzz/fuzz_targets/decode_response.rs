//! A selector byte picks an api (or the error frame); the rest is decoded as that api's response body the way the
//! client does, read the way the client reads it, and round-tripped.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_protocol::fuzz::decode_response(data));
