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
