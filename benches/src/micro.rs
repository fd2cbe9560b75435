//! What the criterion micro-benchmarks share: the batches they use and where their partition logs live.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_log::{Log, LogConfig, RealFs, SystemClock};
use ferry_protocol::batch::{BatchBuilder, NewRecord, RecordBatch};

/// Timestamp of every record the micro-benchmarks build: fixed, so a batch is the same bytes in every run.
pub const RECORD_TIMESTAMP_MS: i64 = 1_700_000_000_000;

/// Environment variable naming the directory benchmark logs go in (default `/var/tmp`).
pub const DATA_DIR_ENV: &str = "FERRY_BENCH_DIR";

/// A batch of `n_records` records, each with an 8-byte key (its index) and a value of `value_bytes` bytes.
pub fn batch(n_records: usize, value_bytes: usize) -> RecordBatch {
    let value = vec![0x5a; value_bytes];
    let mut builder = BatchBuilder::new();
    for record_idx in 0..n_records {
        let key = (record_idx as u64).to_be_bytes();
        builder
            .push(NewRecord { timestamp: RECORD_TIMESTAMP_MS, key: Some(&key), value: Some(&value), headers: &[] })
            .expect("the benchmark batch fits the limits");
    }
    builder.build().expect("the benchmark batch is not empty")
}

/// A fresh temporary directory under `$FERRY_BENCH_DIR`, or `/var/tmp`: a disk, not a tmpfs, so that an `fdatasync`
/// costs what it costs a broker. Removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    let parent = std::env::var_os(DATA_DIR_ENV).map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    tempfile::Builder::new()
        .prefix("ferry-micro-")
        .tempdir_in(&parent)
        .unwrap_or_else(|error| panic!("cannot create a directory in {}: {error}", parent.display()))
}

/// The log settings of the micro-benchmarks: the defaults with the given fsync policy and no retention by age (the
/// records' fixed timestamps are years old).
pub fn log_config(fsync: ferry_log::FsyncPolicy) -> LogConfig {
    LogConfig { fsync, retention_age: None, ..LogConfig::default() }
}

/// Opens a new partition log in `dir` on the real file system.
pub fn open_log(dir: &Path, config: LogConfig) -> Log {
    let (log, _report) =
        Log::open(Arc::new(RealFs), dir, config, Arc::new(SystemClock)).expect("a new partition log opens");
    log
}

/// A pseudo-random number generator (xorshift64) for picking producers and offsets: cheap next to what the
/// benchmarks time, and the same sequence in every run.
#[derive(Debug, Clone)]
pub struct Xorshift(u64);

impl Default for Xorshift {
    fn default() -> Self {
        Xorshift(0x9e37_79b9_7f4a_7c15)
    }
}

impl Xorshift {
    /// The next number below `n` (which must not be 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
