//! Arbitrary bytes as a stream of idempotent producers' sends, retries, gaps, epoch bumps, zombies and expiries,
//! run against a partition's dedup table and a model of it (`ferry_log::fuzz::producer_ops`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_log::fuzz::producer_table(data));
