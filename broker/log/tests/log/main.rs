//! Integration tests of the partition log: one binary, one module per feature.

mod appender;
mod common;
mod corruption;
mod corruption_sweep;
mod dedup;
mod disk_full;
mod fsync_failure;
mod fuzz_corpus;
mod group_commit;
mod idempotence;
mod model;
mod power_loss;
mod read;
