//! A failed fsync produces no acknowledgement: not for the group it covered, not for anything after it.

use std::path::PathBuf;
use std::sync::Arc;

use ferry_log::fs::CrashMode;
use ferry_log::{Appender, Durability, FsyncPolicy, LogError, LogStatus, PartitionLog, SimFs, Storage};

use crate::common::{clock, make_batch, open, read_all, small_config};

fn is_sync_failure(error: &LogError) -> bool {
    matches!(error, LogError::Failed { cause } if matches!(**cause, LogError::SyncFailed { .. }))
}

/// Runs the scenario with the failing fsync being the `k`-th of the group syncs after `n_before` acknowledged appends.
fn check_failed_sync_group(seed: u64, n_before: usize, group_size: usize) {
    let fs = SimFs::new(seed);
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let dir = PathBuf::from("/data/p");
    let config = ferry_log::LogConfig { segment_bytes: 1 << 20, ..small_config(FsyncPolicy::Always) };
    let clock = clock();
    let (log, _) = open(&storage, &dir, &config, &clock);
    let appender = Appender::start(log, "test", &config).expect("start");
    let handle = appender.handle();
    let reader = appender.reader();
    for idx in 0..n_before {
        let ack = handle.blocking_append(vec![make_batch(1, 50, 1, idx as u8)]).expect("healthy append");
        assert_eq!(ack.durability, Durability::Fsynced);
        assert_eq!(ack.ranges[0].first, idx as u64);
    }
    // Line up a group behind a held fsync, then make the group's own fsync fail.
    fs.hold_syncs(true);
    let first = handle.blocking_submit(vec![make_batch(1, 50, 1, 0xA0)]).expect("submit");
    fs.wait_for_held_sync();
    let group: Vec<_> = (0..group_size)
        .map(|idx| handle.blocking_submit(vec![make_batch(2, 80, 1, idx as u8)]).expect("submit"))
        .collect();
    fs.fail_sync_after(2); // The held sync is the 1st; the group's is the 2nd.
    fs.hold_syncs(false);
    let first_ack = first.blocking_wait().expect("the held group's fsync succeeded");
    let acked_end = first_ack.ranges[0].next();
    assert_eq!(acked_end, n_before as u64 + 1);
    for pending in group {
        let error = pending.blocking_wait().expect_err("no acknowledgement after a failed fsync");
        assert!(is_sync_failure(&error), "{error:?}");
    }
    let later = handle.blocking_append(vec![make_batch(1, 10, 1, 0xB0)]).expect_err("the partition stopped");
    assert!(is_sync_failure(&later), "{later:?}");
    assert!(matches!(reader.status(), LogStatus::Failed(_)));
    assert_eq!(reader.stats().fsync_errors(), 1);
    assert_eq!(reader.visible_end(), acked_end, "nothing unsynced became visible");
    let syncs_after_failure = fs.stats().file_syncs;
    assert!(matches!(appender.shutdown(), Err(LogError::Failed { .. })), "close reports the failure");
    assert_eq!(fs.stats().file_syncs, syncs_after_failure, "never retried");
    // Power loss and restart: everything acknowledged is there.
    fs.crash(CrashMode::PowerLossTorn);
    let (log, report) = open(&storage, &dir, &config, &clock);
    assert!(report.damaged.is_none(), "{report:?}");
    assert!(log.end_offset() >= acked_end, "acknowledged data survives: {} < {acked_end}", log.end_offset());
    let stored = read_all(&log.reader());
    assert!(stored.iter().map(|b| b.last_offset() + 1).max().unwrap_or(0) >= acked_end);
}

#[test]
fn failed_fsync_fails_its_group_and_everything_after() {
    for seed in 0..20 {
        check_failed_sync_group(seed, (seed % 4) as usize, 1 + (seed % 5) as usize);
    }
}

#[test]
fn failed_fsync_at_roll_stops_the_log_without_retrying() {
    let fs = SimFs::new(9);
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let dir = PathBuf::from("/data/p");
    let config = small_config(FsyncPolicy::Never);
    let (mut log, _) = open(&storage, &dir, &config, &clock());
    log.append(&mut [make_batch(1, 3000, 1, 1)]).expect("fits the first segment");
    fs.fail_sync_after(1);
    let error = log.append(&mut [make_batch(1, 3000, 1, 2)]).expect_err("the roll's fsync fails");
    assert!(is_sync_failure(&error), "{error:?}");
    let syncs = fs.stats().file_syncs;
    assert!(is_sync_failure(&log.sync().expect_err("stopped")));
    assert!(is_sync_failure(&log.append(&mut [make_batch(1, 1, 1, 3)]).expect_err("stopped")));
    assert_eq!(fs.stats().file_syncs, syncs, "no fsync is retried");
    assert_eq!(log.reader().stats().fsync_errors(), 1);
}
