//! Arbitrary bytes as a partition directory (segments, index files, a checkpoint) on a simulated disk, recovered by
//! `Log::open` and checked: reads verify, status matches the damage found, appends work at the recovered end.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_log::fuzz::segment_recovery(data);
});
