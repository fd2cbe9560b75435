//! Arbitrary bytes as a stream of frames, each decoded as a request and as a response.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_protocol::fuzz::decode_frame(data));
