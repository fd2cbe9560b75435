//! The appender's lifecycle: acknowledgements per policy, interval syncs when idle, clean shutdown, and panics that
//! are reported instead of swallowed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_log::{
    Appender, Durability, FsyncPolicy, LogConfig, LogError, LogReader, OffsetRange, PartitionLog, ReadSlice, SimFs,
    Storage,
};
use ferry_protocol::RecordBatch;

use crate::common::{clock, make_batch, open, read_all, small_config};

fn start(fs: &SimFs, config: &LogConfig) -> Appender {
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let (log, _) = open(&storage, &PathBuf::from("/data/p"), config, &clock());
    Appender::start(log, "p0", config).expect("start")
}

#[test]
fn async_appends_are_acknowledged_with_the_policy_durability() {
    for (policy, durability) in [(FsyncPolicy::Always, Durability::Fsynced), (FsyncPolicy::Never, Durability::Written)]
    {
        let fs = SimFs::new(1);
        let config = small_config(policy);
        let appender = start(&fs, &config);
        let handle = appender.handle();
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let acks = runtime.block_on(async {
            let mut acks = Vec::new();
            for idx in 0..20u8 {
                acks.push(handle.append(vec![make_batch(2, 300, 1, idx), make_batch(1, 10, 1, idx)]).await);
            }
            acks
        });
        let mut next = 0;
        for ack in acks {
            let ack = ack.expect("ack");
            assert_eq!(ack.durability, durability);
            assert_eq!(
                ack.ranges,
                vec![OffsetRange { first: next, last: next + 1 }, OffsetRange { first: next + 2, last: next + 2 }]
            );
            next += 3;
        }
        let reader = appender.reader();
        appender.shutdown().expect("clean shutdown");
        assert_eq!(read_all(&reader).len(), 40);
        let error = handle.blocking_append(vec![make_batch(1, 1, 1, 0)]).expect_err("closed");
        assert!(matches!(error, LogError::Closed), "{error:?}");
        // The shutdown was clean: the next open takes the clean path.
        let storage: Arc<dyn Storage> = Arc::new(fs.clone());
        let (_, report) = open(&storage, &PathBuf::from("/data/p"), &config, &clock());
        assert!(report.clean, "{report:?}");
    }
}

#[test]
fn interval_policy_syncs_an_idle_partition() {
    let fs = SimFs::new(2);
    let config = small_config(FsyncPolicy::Interval(Duration::from_millis(5)));
    let appender = start(&fs, &config);
    fs.hold_syncs(true);
    let ack = appender.handle().blocking_append(vec![make_batch(1, 10, 1, 0)]).expect("ack");
    assert_eq!(ack.durability, Durability::Written, "acknowledged before any fsync");
    assert_eq!(appender.reader().visible_end(), 1, "visible after the write");
    // Nothing else is sent: the fsync comes from the interval deadline alone.
    fs.wait_for_held_sync();
    fs.hold_syncs(false);
    appender.shutdown().expect("shutdown");
    assert!(fs.synced_len(&PathBuf::from("/data/p/00000000000000000000.log")).expect("segment") > 0);
}

/// A log whose append panics, to check the panic reaches the broker.
struct PanickingLog {
    reader: LogReader,
}

impl PartitionLog for PanickingLog {
    fn append(&mut self, _: &mut [RecordBatch]) -> Result<Vec<OffsetRange>, LogError> {
        panic!("simulated bug in the appender");
    }
    fn sync(&mut self) -> Result<(), LogError> {
        Ok(())
    }
    fn read(&self, from: u64, bytes_max: u32) -> Result<ReadSlice, LogError> {
        self.reader.read(from, bytes_max)
    }
    fn read_by_timestamp(&self, timestamp: i64) -> Result<Option<u64>, LogError> {
        self.reader.read_by_timestamp(timestamp)
    }
    fn start_offset(&self) -> u64 {
        0
    }
    fn end_offset(&self) -> u64 {
        0
    }
    fn unsynced_bytes(&self) -> u64 {
        0
    }
    fn fsync_policy(&self) -> FsyncPolicy {
        FsyncPolicy::Always
    }
    fn apply_retention(&mut self) -> Result<usize, LogError> {
        Ok(0)
    }
    fn take_rolled(&mut self) -> bool {
        false
    }
    fn close(&mut self) -> Result<(), LogError> {
        Ok(())
    }
    fn reader(&self) -> LogReader {
        self.reader.clone()
    }
}

#[test]
fn a_panic_in_the_appender_fails_requests_and_is_re_raised_at_shutdown() {
    let fs = SimFs::new(3);
    let config = small_config(FsyncPolicy::Always);
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let (log, _) = open(&storage, &PathBuf::from("/data/p"), &config, &clock());
    let appender = Appender::start(PanickingLog { reader: log.reader() }, "panics", &config).expect("start");
    let handle = appender.handle();
    let error = handle.blocking_append(vec![make_batch(1, 1, 1, 0)]).expect_err("no reply from a dead thread");
    assert!(matches!(error, LogError::AppenderGone), "{error:?}");
    // The reply is dropped while the thread unwinds; the thread is done an instant later.
    while !appender.is_finished() {
        std::thread::yield_now();
    }
    let later = handle.blocking_append(vec![make_batch(1, 1, 1, 0)]).expect_err("channel closed");
    assert!(matches!(later, LogError::AppenderGone), "{later:?}");
    let shutdown = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| appender.shutdown()));
    assert!(shutdown.is_err(), "shutdown re-raises the appender's panic");
}

/// A long poll waits on `wait_for_end_beyond`: it must not return before the end moves, and must return once an
/// append makes the offset readable (under `always`, after the fsync that covers it).
#[test]
fn waiting_for_the_visible_end_wakes_on_the_append_that_passes_it() {
    let fs = SimFs::new(7);
    let config = small_config(FsyncPolicy::Always);
    let appender = start(&fs, &config);
    let handle = appender.handle();
    let reader = appender.reader();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    runtime.block_on(async {
        // Nothing appended yet: the wait does not end by itself.
        let early = tokio::time::timeout(Duration::from_millis(20), reader.wait_for_end_beyond(0)).await;
        assert!(early.is_err(), "the visible end is 0, so the wait must still be pending");

        let waiter = reader.clone();
        let wait = tokio::spawn(async move { waiter.wait_for_end_beyond(2).await });
        handle.append(vec![make_batch(2, 10, 1, 1)]).await.expect("ack");
        assert!(!wait.is_finished(), "offsets 0..=1 do not pass offset 2");
        handle.append(vec![make_batch(2, 10, 1, 2)]).await.expect("ack");
        tokio::time::timeout(Duration::from_secs(10), wait).await.expect("woken by the append").expect("task");
        assert_eq!(reader.visible_end(), 4);
        // Already beyond: returns at once.
        reader.wait_for_end_beyond(3).await;
        assert!(reader.size_bytes() > 0, "two batches are stored");
    });
    appender.shutdown().expect("clean shutdown");
}
