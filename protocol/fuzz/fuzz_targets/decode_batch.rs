//! Arbitrary bytes as one record batch and as a run of batches, every record and header read.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_protocol::fuzz::decode_batch(data));
