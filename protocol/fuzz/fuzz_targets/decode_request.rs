//! A selector byte picks an api; the rest is decoded as that api's request body the way the broker does, validated the
//! way its handlers do, and round-tripped.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_protocol::fuzz::decode_request(data));
