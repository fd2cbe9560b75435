//! Helpers shared by the test modules: batches, configs, opening logs, reading everything back.

use std::path::Path;
use std::sync::Arc;

use ferry_log::{Clock, FsyncPolicy, Log, LogConfig, LogReader, ManualClock, RecoveryReport, Storage};
use ferry_protocol::batch::split_batches;
use ferry_protocol::{BatchBuilder, NewRecord, RecordBatch};

/// A batch of `n_records` records of `value_bytes` bytes filled with `fill`, timestamps from `timestamp` on.
pub fn make_batch(n_records: u32, value_bytes: usize, timestamp: i64, fill: u8) -> RecordBatch {
    let mut builder = BatchBuilder::new();
    let value = vec![fill; value_bytes];
    for idx in 0..n_records {
        let record = NewRecord { timestamp: timestamp + i64::from(idx), key: None, value: Some(&value), headers: &[] };
        builder.push(record).expect("record fits");
    }
    builder.build().expect("batch builds")
}

/// Small segments (4 KiB) and a dense index so rolls and index lookups happen in small tests.
pub fn small_config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig { segment_bytes: 4096, index_interval_bytes: 256, retention_age: None, fsync, ..LogConfig::default() }
}

pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_700_000_000_000))
}

pub fn open(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    config: &LogConfig,
    clock: &Arc<ManualClock>,
) -> (Log, RecoveryReport) {
    let clock: Arc<dyn Clock> = clock.clone();
    Log::open(Arc::clone(storage), dir, config.clone(), clock).expect("log opens")
}

/// Every visible batch from the start offset on, checking that reads chain without gaps.
pub fn read_all(reader: &LogReader) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    let mut offset = reader.start_offset();
    loop {
        let slice = reader.read(offset, 64 * 1024).expect("read within range");
        if slice.batch_count == 0 {
            assert_eq!(offset, slice.visible_end, "empty read only at the visible end");
            return batches;
        }
        assert_eq!(slice.first_offset, offset, "reads chain batch to batch");
        let split: Vec<RecordBatch> = split_batches(slice.bytes.clone()).map(|b| b.expect("valid batch")).collect();
        assert_eq!(split.len(), slice.batch_count as usize);
        offset = slice.next_offset;
        batches.extend(split);
    }
}

/// A small seeded generator (splitmix64) for workloads and corruptions that must replay from their seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `range` (which must not be empty).
    pub fn below(&mut self, range: std::ops::Range<u64>) -> u64 {
        range.start + self.next_u64() % (range.end - range.start)
    }

    /// `below` for sizes and indexes.
    pub fn index(&mut self, range: std::ops::Range<usize>) -> usize {
        usize::try_from(self.below(range.start as u64..range.end as u64)).expect("fits")
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.next_u64() % denominator < numerator
    }
}

/// The seeds a seeded suite runs: just `<env>_SEED` if set (replaying one failure), else `0..<env>_SEEDS` if set, else
/// `0..slow` with `FERRY_SLOW_TESTS` set, else `0..default`.
pub fn seeds(env: &str, default: u64, slow: u64) -> std::ops::Range<u64> {
    let number =
        |name: String| std::env::var(&name).ok().map(|v| v.parse::<u64>().unwrap_or_else(|_| panic!("{name}")));
    if let Some(seed) = number(format!("{env}_SEED")) {
        return seed..seed + 1;
    }
    let count = number(format!("{env}_SEEDS")).unwrap_or(if std::env::var_os("FERRY_SLOW_TESTS").is_some() {
        slow
    } else {
        default
    });
    0..count
}

/// Runs `check(seed)` for every seed, printing the seed of the first failure (to stderr) before re-raising it.
pub fn for_each_seed(env: &str, seeds: std::ops::Range<u64>, mut check: impl FnMut(u64)) {
    for seed in seeds {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(seed))) {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "FAILED seed {seed}: replay with {env}_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
    }
}
