//! A failed fsync produces no acknowledgement: not for the group it covered, not for anything after it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_log::fs::CrashMode;
use ferry_log::{Appender, Durability, FsyncPolicy, Log, LogConfig, LogError, LogStatus, PartitionLog, SimFs, Storage};

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
    assert_eq!(reader.visible_end(), acked_end, "nothing unsynced became visible");
    let log = check_stopped_then_power_loss(&fs, appender, CrashMode::PowerLossTorn, &config);
    // Everything acknowledged is there.
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

/// After a failed fsync: the partition refuses appends, reports the failure (status, metric, close) and fsyncs
/// nothing more, not even at close. Then a power loss (`mode`) and a reopen that finds no damage; returns the log.
fn check_stopped_then_power_loss(fs: &SimFs, appender: Appender, mode: CrashMode, config: &LogConfig) -> Log {
    let later = appender.handle().blocking_append(vec![make_batch(1, 10, 1, 0xB0)]).expect_err("stopped");
    assert!(is_sync_failure(&later), "{later:?}");
    let reader = appender.reader();
    assert!(matches!(reader.status(), LogStatus::Failed(_)));
    assert_eq!(reader.stats().fsync_errors(), 1);
    let syncs = fs.stats().file_syncs;
    assert!(matches!(appender.shutdown(), Err(LogError::Failed { .. })), "close reports the failure");
    assert_eq!(fs.stats().file_syncs, syncs, "no fsync is retried, not even by close");
    fs.crash(mode);
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let (log, report) = open(&storage, &PathBuf::from("/data/p"), config, &clock());
    assert!(report.damaged.is_none(), "{report:?}");
    log
}

/// What one sweep case saw.
struct SweepCase {
    acked: usize,
    refused: usize,
}

/// One sweep case: requests of one 60-byte batch in groups of `group_size` (submitted together, then awaited) until
/// the `k`-th fsync from the appender's start fails. Checks that the results are acknowledgements followed only by
/// failures (none after the failed fsync), that nothing is fsynced after it, and, with `always`, that everything
/// acknowledged survives a power loss byte for byte.
fn check_sync_failure_sweep(fsync: FsyncPolicy, k: u64, group_size: usize) -> SweepCase {
    let fs = SimFs::new(k * 10 + group_size as u64);
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let dir = PathBuf::from("/data/p");
    let config = small_config(fsync);
    let clock = clock();
    let (log, _) = open(&storage, &dir, &config, &clock);
    let appender = Appender::start(log, "test", &config).expect("start");
    let handle = appender.handle();
    fs.fail_sync_after(k);
    let mut results = Vec::new();
    let mut expected = Vec::new();
    while results.iter().all(Result::is_ok) {
        assert!(results.len() < 5_000, "fsync {k} never failed");
        let batches: Vec<_> = (0..group_size).map(|idx| make_batch(1, 60, 1, (results.len() + idx) as u8)).collect();
        let pending: Vec<_> =
            batches.iter().map(|b| handle.blocking_submit(vec![b.clone()]).expect("submit")).collect();
        for (batch, pending) in batches.into_iter().zip(pending) {
            let result = pending.blocking_wait();
            if let Ok(ack) = &result {
                let mut stored = batch;
                stored.rebase(ack.ranges[0].first).expect("small offsets");
                expected.push(stored.into_bytes());
            }
            results.push(result);
        }
    }
    let acked = results.iter().take_while(|r| r.is_ok()).count();
    for (idx, result) in results.iter().enumerate().skip(acked) {
        let error = result.as_ref().expect_err("no acknowledgement after a failed fsync");
        assert!(is_sync_failure(error), "request {idx}: {error:?}");
    }
    for result in results.iter().take(acked) {
        let durability = result.as_ref().expect("acknowledged").durability;
        assert_eq!(durability == Durability::Fsynced, fsync == FsyncPolicy::Always);
    }
    let log = check_stopped_then_power_loss(&fs, appender, CrashMode::PowerLoss, &config);
    let stored = read_all(&log.reader());
    if fsync == FsyncPolicy::Always {
        assert!(stored.len() >= expected.len(), "acknowledged batches survive: {} < {}", stored.len(), expected.len());
    }
    for (stored, expected) in stored.iter().zip(&expected) {
        assert_eq!(stored.as_bytes(), expected, "surviving batches are the acknowledged ones, in order");
    }
    SweepCase { acked, refused: results.len() - acked }
}

#[test]
fn sweep_of_failing_fsyncs_never_acknowledges_after_the_failure() {
    use std::io::Write as _;
    // `interval` of an hour syncs only at rolls (4 KiB segments); of 1 ms, also from the appender's timer.
    let policies = [
        (FsyncPolicy::Always, 40),
        (FsyncPolicy::Interval(Duration::from_secs(3600)), 30),
        (FsyncPolicy::Interval(Duration::from_millis(1)), 30),
    ];
    let (mut cases, mut acked, mut refused) = (0, 0, 0);
    for (fsync, n_syncs) in policies {
        for k in 1..=n_syncs {
            for group_size in 1..=5 {
                let case = check_sync_failure_sweep(fsync, k, group_size);
                (cases, acked, refused) = (cases + 1, acked + case.acked, refused + case.refused);
            }
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "fsync failure sweep: {cases} cases, {acked} requests acknowledged before the failed fsync, \
         {refused} refused from it on, 0 acknowledged after it"
    );
    assert_eq!(cases, 500);
}
