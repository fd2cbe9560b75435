//! Idempotent producers at the appender: duplicates answered with the original offsets and never written, refused
//! batches that change nothing, and dedup state that survives a clean restart, a process kill and a power loss, with
//! and without a snapshot.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ferry_log::producers::{ProducerSetup, ProducerSnapshot, ProducerStateConfig, SnapshotSink};
use ferry_log::{
    AppendAck, Appender, CrashMode, Durability, FsyncPolicy, LogConfig, LogError, OffsetRange, ProducerError, SimFs,
    Storage,
};
use ferry_protocol::RecordBatch;
use ferry_protocol::batch::ProducerFields;

use crate::common::{clock, make_batch, open, read_all, small_config};

/// A batch of `n` records from producer 7, epoch 0, starting at `sequence`.
fn batch(sequence: i32, n: u32) -> RecordBatch {
    let mut batch = make_batch(n, 50, 1, u8::try_from(sequence % 200).expect("small"));
    batch.set_producer(ProducerFields { producer_id: 7, producer_epoch: 0, base_sequence: sequence });
    batch
}

/// Snapshots kept in memory, as the broker keeps them in its metadata store.
#[derive(Debug, Default)]
struct MemorySink(Mutex<Option<ProducerSnapshot>>);

impl SnapshotSink for MemorySink {
    fn save(&self, snapshot: &ProducerSnapshot) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        *self.0.lock().expect("lock") = Some(snapshot.clone());
        Ok(())
    }
}

impl MemorySink {
    fn stored(&self) -> Option<ProducerSnapshot> {
        self.0.lock().expect("lock").clone()
    }
}

fn start(fs: &SimFs, config: &LogConfig, sink: &Arc<MemorySink>, use_snapshot: bool) -> Appender {
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let (log, _) = open(&storage, &PathBuf::from("/data/p"), config, &clock());
    let setup = ProducerSetup {
        config: ProducerStateConfig { producers_max: 4, ..ProducerStateConfig::default() },
        snapshot: if use_snapshot { sink.stored() } else { None },
        sink: Some(Arc::clone(sink) as Arc<dyn SnapshotSink>),
        ..ProducerSetup::default()
    };
    Appender::start_with_producers(log, "p0", config, setup).expect("start")
}

fn append(appender: &Appender, batch: RecordBatch) -> Result<AppendAck, LogError> {
    appender.handle().blocking_append(vec![batch])
}

fn range(first: u64, last: u64) -> Vec<OffsetRange> {
    vec![OffsetRange { first, last }]
}

#[test]
fn a_retry_is_acknowledged_with_the_original_offsets_and_not_written() {
    let fs = SimFs::new(1);
    let config = small_config(FsyncPolicy::Always);
    let appender = start(&fs, &config, &Arc::default(), false);
    let first = append(&appender, batch(0, 3)).expect("append");
    assert_eq!((first.ranges.clone(), first.duplicate), (range(0, 2), false));
    append(&appender, batch(3, 2)).expect("append");
    let retry = append(&appender, batch(0, 3)).expect("a retry is acknowledged");
    assert_eq!(retry.ranges, range(0, 2));
    assert!(retry.duplicate);
    assert_eq!(retry.durability, Durability::Fsynced);
    assert_eq!(read_all(&appender.reader()).len(), 2, "the retry was not written");
    appender.shutdown().expect("shutdown");
}

#[test]
fn refused_batches_change_nothing() {
    let fs = SimFs::new(2);
    let config = small_config(FsyncPolicy::Always);
    let appender = start(&fs, &config, &Arc::default(), false);
    append(&appender, batch(0, 2)).expect("append");
    let gap = append(&appender, batch(5, 1)).expect_err("a gap is refused");
    assert!(matches!(gap, LogError::Producer(ProducerError::OutOfOrder { expected: 2, received: 5 })), "{gap:?}");
    // The refused gap did not advance the sequence: the batch that follows the last written one is accepted.
    let next = append(&appender, batch(2, 1)).expect("append after a refused batch");
    assert_eq!(next.ranges, range(2, 2));
    // A batch with a producer id must travel alone.
    let pair = appender.handle().blocking_append(vec![batch(3, 1), batch(4, 1)]).expect_err("refused");
    assert!(matches!(pair, LogError::Producer(ProducerError::InvalidFields { .. })), "{pair:?}");
    assert_eq!(appender.reader().visible_end(), 3);
    appender.shutdown().expect("shutdown");
}

#[test]
fn retries_in_one_group_are_answered_after_the_sync_with_the_first_offsets() {
    let fs = SimFs::new(3);
    let config = small_config(FsyncPolicy::Always);
    let appender = start(&fs, &config, &Arc::default(), false);
    let handle = appender.handle();
    // Queued back to back, so they likely share a group; correct either way.
    let pending: Vec<_> = [batch(0, 1), batch(0, 1), batch(1, 1), batch(0, 1)]
        .into_iter()
        .map(|b| handle.blocking_submit(vec![b]).expect("submit"))
        .collect();
    let acks: Vec<AppendAck> = pending.into_iter().map(|p| p.blocking_wait().expect("ack")).collect();
    assert_eq!(
        acks.iter().map(|a| (a.ranges[0].first, a.duplicate)).collect::<Vec<_>>(),
        vec![(0, false), (0, true), (1, false), (0, true)]
    );
    assert!(acks.iter().all(|a| a.durability == Durability::Fsynced));
    appender.shutdown().expect("shutdown");
}

#[test]
fn dedup_survives_a_clean_restart_a_process_kill_and_a_power_loss() {
    for (mode, use_snapshot) in [
        (None, true),
        (None, false),
        (Some(CrashMode::ProcessKill), true),
        (Some(CrashMode::PowerLoss), true),
        (Some(CrashMode::PowerLoss), false),
    ] {
        let fs = SimFs::new(4);
        let config = small_config(FsyncPolicy::Always);
        let sink = Arc::new(MemorySink::default());
        let appender = start(&fs, &config, &sink, use_snapshot);
        // Enough batches to roll segments, so replay crosses segment files.
        let mut sequence = 0;
        for _ in 0..40 {
            append(&appender, batch(sequence, 2)).expect("append");
            sequence += 2;
        }
        match mode {
            None => appender.shutdown().expect("shutdown"),
            Some(mode) => {
                fs.crash(mode);
                drop(appender);
            }
        }
        let appender = start(&fs, &config, &sink, use_snapshot);
        let report = appender.rebuild_report();
        assert_eq!(report.producers, 1, "{mode:?} {use_snapshot}");
        if mode.is_none() && use_snapshot {
            assert!(report.from_snapshot);
            assert_eq!(report.batches_replayed, 0, "a clean close snapshots everything");
        }
        // The last five batches are recognised; the next sequence is accepted; an older one is refused.
        let retry = append(&appender, batch(sequence - 2, 2)).expect("retry");
        assert!(retry.duplicate, "{mode:?} {use_snapshot}");
        assert_eq!(retry.ranges, range(78, 79));
        let gap = append(&appender, batch(sequence + 1, 1)).expect_err("gap");
        assert!(matches!(gap, LogError::Producer(ProducerError::OutOfOrder { .. })));
        assert_eq!(append(&appender, batch(sequence, 1)).expect("next").ranges, range(80, 80));
        appender.shutdown().expect("shutdown");
    }
}

/// A broker in a crash loop never reaches its periodic snapshot: the state a start rebuilt by replay is stored at
/// once, so the next start replays only what was written after it (found by the 10M-value chaos run, whose restarts
/// slowed as the log grew).
#[test]
fn what_a_start_replays_is_snapshotted_so_the_next_start_does_not_replay_it_again() {
    let fs = SimFs::new(9);
    let config = small_config(FsyncPolicy::Always);
    let sink = Arc::new(MemorySink::default());
    let appender = start(&fs, &config, &sink, true);
    for sequence in 0..10 {
        append(&appender, batch(sequence, 1)).expect("append");
    }
    fs.crash(CrashMode::ProcessKill);
    drop(appender);
    assert!(sink.stored().is_none(), "no periodic snapshot in so short a life");
    let appender = start(&fs, &config, &sink, true);
    assert_eq!(appender.rebuild_report().batches_replayed, 10);
    append(&appender, batch(10, 1)).expect("append");
    fs.crash(CrashMode::ProcessKill);
    drop(appender);
    let appender = start(&fs, &config, &sink, true);
    let report = appender.rebuild_report();
    assert!(report.from_snapshot);
    assert_eq!(report.batches_replayed, 1, "only the batch written after the previous start");
    assert!(append(&appender, batch(10, 1)).expect("retry").duplicate);
    appender.shutdown().expect("shutdown");
}

#[test]
fn a_snapshot_past_the_end_of_the_log_is_ignored_and_the_log_replayed() {
    let fs = SimFs::new(5);
    let config = small_config(FsyncPolicy::Always);
    let sink = Arc::new(MemorySink::default());
    let appender = start(&fs, &config, &sink, false);
    append(&appender, batch(0, 2)).expect("append");
    appender.shutdown().expect("shutdown");
    // A snapshot that claims more than the log holds (as one taken before a power loss with fsync never could).
    let mut snapshot = sink.stored().expect("stored at close");
    snapshot.offset = 1_000;
    snapshot.entries.clear();
    *sink.0.lock().expect("lock") = Some(snapshot);
    let appender = start(&fs, &config, &sink, true);
    assert!(!appender.rebuild_report().from_snapshot);
    assert_eq!(appender.rebuild_report().batches_replayed, 1);
    assert!(append(&appender, batch(0, 2)).expect("retry").duplicate);
    appender.shutdown().expect("shutdown");
}

#[test]
fn the_partition_refuses_producers_over_its_limit() {
    let fs = SimFs::new(6);
    let config = small_config(FsyncPolicy::Always);
    let appender = start(&fs, &config, &Arc::default(), false);
    for producer_id in 0..4 {
        let mut b = make_batch(1, 10, 1, 0);
        b.set_producer(ProducerFields { producer_id, producer_epoch: 0, base_sequence: 0 });
        append(&appender, b).expect("under the limit");
    }
    let mut b = make_batch(1, 10, 1, 0);
    b.set_producer(ProducerFields { producer_id: 99, producer_epoch: 0, base_sequence: 0 });
    let error = append(&appender, b).expect_err("over the limit");
    assert!(matches!(error, LogError::Producer(ProducerError::TooManyProducers { max: 4, .. })), "{error:?}");
    assert_eq!(appender.active_producers(), 4);
    appender.shutdown().expect("shutdown");
}

#[test]
fn an_append_taken_after_its_deadline_writes_nothing() {
    let fs = SimFs::new(7);
    let config = small_config(FsyncPolicy::Always);
    let appender = start(&fs, &config, &Arc::default(), false);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    let handle = appender.handle();
    let past = std::time::Instant::now() - std::time::Duration::from_millis(1);
    let late = runtime.block_on(async { handle.submit_until(vec![batch(0, 2)], Some(past)).await?.wait().await });
    assert!(matches!(late, Err(LogError::DeadlinePassed)), "{late:?}");
    assert_eq!(appender.reader().visible_end(), 0, "nothing was written");
    // The refused batch changed nothing: the same sequence is accepted as new.
    let future = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let ack = runtime.block_on(async { handle.submit_until(vec![batch(0, 2)], Some(future)).await?.wait().await });
    assert_eq!(ack.expect("in time").ranges, range(0, 1));
    appender.shutdown().expect("shutdown");
}

/// Research F8 (Redpanda #16706): a batch that failed must not let the one after it through, or the sequence has a
/// hole that a retry of the failed batch can no longer fill in order.
#[test]
fn a_batch_after_one_that_failed_to_append_is_refused_until_the_failed_one_is_retried() {
    let fs = SimFs::new(8);
    let config = small_config(FsyncPolicy::Always);
    let appender = start(&fs, &config, &Arc::default(), false);
    append(&appender, batch(0, 1)).expect("append");
    fs.fail_writes_after(Some(0));
    let handle = appender.handle();
    let first = handle.blocking_submit(vec![batch(1, 1)]).expect("queued");
    let second = handle.blocking_submit(vec![batch(2, 1)]).expect("queued");
    assert!(matches!(first.blocking_wait(), Err(LogError::DiskFull { .. })));
    let refused = second.blocking_wait().expect_err("its predecessor is missing");
    assert!(
        matches!(refused, LogError::Producer(ProducerError::OutOfOrder { expected: 1, received: 2 })),
        "{refused:?}"
    );
    fs.fail_writes_after(None);
    assert_eq!(append(&appender, batch(1, 1)).expect("retried").ranges, range(1, 1));
    assert_eq!(append(&appender, batch(2, 1)).expect("retried").ranges, range(2, 2));
    appender.shutdown().expect("shutdown");
}
