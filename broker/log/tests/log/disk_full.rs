//! Disk full: the failed append is rolled back to the last good position and the partition continues once space
//! is freed; nothing acknowledged is damaged.

use std::path::PathBuf;
use std::sync::Arc;

use ferry_log::fs::CrashMode;
use ferry_log::{Appender, FsyncPolicy, LogConfig, LogError, PartitionLog, SimFs, Storage};

use crate::common::{clock, make_batch, open, read_all, small_config};

#[test]
fn disk_full_rolls_back_the_append_and_the_log_continues() {
    for budget in [0u64, 1, 59, 200, 700] {
        let fs = SimFs::new(budget);
        let storage: Arc<dyn Storage> = Arc::new(fs.clone());
        let dir = PathBuf::from("/data/p");
        let config =
            LogConfig { segment_bytes: 1 << 20, index_interval_bytes: 64, ..small_config(FsyncPolicy::Always) };
        let clock = clock();
        let (log, _) = open(&storage, &dir, &config, &clock);
        let appender = Appender::start(log, "full", &config).expect("start");
        let handle = appender.handle();
        let reader = appender.reader();
        let mut acked = Vec::new();
        for idx in 0..5u8 {
            acked.push(handle.blocking_append(vec![make_batch(2, 100, 1, idx)]).expect("append"));
        }
        let end = acked.last().expect("acked").ranges[0].next();
        let segment = dir.join("00000000000000000000.log");
        let len_before = fs.read_file(&segment).expect("segment").len();
        fs.fail_writes_after(Some(budget));
        let error =
            handle.blocking_append(vec![make_batch(1, 300, 1, 9), make_batch(1, 300, 1, 10)]).expect_err("no space");
        assert!(matches!(error, LogError::DiskFull { .. }), "budget {budget}: {error:?}");
        assert_eq!(fs.read_file(&segment).expect("segment").len(), len_before, "partial write rolled back");
        assert_eq!(reader.visible_end(), end);
        fs.fail_writes_after(None);
        let ack = handle.blocking_append(vec![make_batch(1, 10, 1, 11)]).expect("continues after space is freed");
        assert_eq!(ack.ranges[0].first, end, "the failed append consumed no offsets");
        appender.shutdown().expect("shutdown");
        fs.crash(CrashMode::PowerLossTorn);
        let (log, report) = open(&storage, &dir, &config, &clock);
        assert!(report.damaged.is_none() && report.clean, "{report:?}");
        let stored = read_all(&log.reader());
        assert_eq!(stored.len(), 6);
        assert_eq!(stored.last().expect("batch").base_offset(), end);
    }
}

#[test]
fn disk_full_in_the_index_write_also_rolls_back() {
    let fs = SimFs::new(3);
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let dir = PathBuf::from("/data/p");
    let config = LogConfig { segment_bytes: 1 << 20, index_interval_bytes: 64, ..small_config(FsyncPolicy::Always) };
    let (mut log, _) = open(&storage, &dir, &config, &clock());
    log.append(&mut [make_batch(1, 100, 1, 0)]).expect("append");
    let batch = make_batch(1, 100, 1, 1);
    // Exactly room for the batch, none for the index entry it adds.
    fs.fail_writes_after(Some(u64::from(batch.len_bytes())));
    let error = log.append(&mut [batch]).expect_err("index entry does not fit");
    assert!(matches!(error, LogError::DiskFull { .. }), "{error:?}");
    let index = fs.read_file(&dir.join("00000000000000000000.index")).expect("index");
    assert!(index.is_empty(), "index rolled back too");
    fs.fail_writes_after(None);
    let ranges = log.append(&mut [make_batch(1, 100, 1, 2)]).expect("continues");
    assert_eq!(ranges[0].first, 1);
    log.sync().expect("sync");
    assert_eq!(read_all(&log.reader()).len(), 2);
}
