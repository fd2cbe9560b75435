//! Message-id dedup at the appender: records whose dedup key was appended within the window are dropped and reported
//! with the original offset; kept records stay in order with dense offsets; the window expires; keys the index missed
//! before a crash are re-indexed from the log; a failing index keeps its entries in memory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_log::dedup::{
    DEDUP_PENDING_ENTRIES_MAX, DedupEntry, DedupError, DedupIndex, DedupSetup, DroppedRecord, IndexError,
};
use ferry_log::producers::ProducerSetup;
use ferry_log::{AppendAck, Appender, Clock, CrashMode, FsyncPolicy, LogError, ManualClock, SimFs, Storage};
use ferry_protocol::batch::{DEDUP_KEY_HEADER, ProducerFields};
use ferry_protocol::{BatchBuilder, NewRecord, RecordBatch};

use crate::common::{clock, open, read_all, small_config};

const WINDOW: Duration = Duration::from_secs(60);

/// An index in memory, as the broker keeps it in its metadata store; inserts can be made to fail.
#[derive(Debug, Default)]
struct MemoryIndex {
    state: Mutex<IndexState>,
    fail: AtomicBool,
}

#[derive(Debug, Default, Clone)]
struct IndexState {
    entries: HashMap<Vec<u8>, (u64, i64)>,
    covered_up_to: Option<u64>,
}

impl DedupIndex for MemoryIndex {
    fn lookup(&self, keys: &[&[u8]], not_before_ms: i64) -> Result<Vec<Option<u64>>, IndexError> {
        let state = self.state.lock().expect("lock");
        Ok(keys
            .iter()
            .map(|key| state.entries.get(*key).filter(|(_, at)| *at >= not_before_ms).map(|(offset, _)| *offset))
            .collect())
    }

    fn insert(&self, entries: &[DedupEntry], covered_up_to: u64) -> Result<(), IndexError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err("index unavailable".into());
        }
        let mut state = self.state.lock().expect("lock");
        for entry in entries {
            state.entries.insert(entry.key.to_vec(), (entry.offset, entry.append_ms));
        }
        state.covered_up_to = Some(covered_up_to);
        Ok(())
    }

    fn covered_up_to(&self) -> Result<Option<u64>, IndexError> {
        Ok(self.state.lock().expect("lock").covered_up_to)
    }
}

impl MemoryIndex {
    fn snapshot(&self) -> IndexState {
        self.state.lock().expect("lock").clone()
    }

    fn restore(&self, state: IndexState) {
        *self.state.lock().expect("lock") = state;
    }

    fn offset_of(&self, key: &str) -> Option<u64> {
        self.state.lock().expect("lock").entries.get(key.as_bytes()).map(|(offset, _)| *offset)
    }
}

/// A batch of one record per key: `Some(key)` carries it as its dedup key, `None` has none. Values are the keys.
fn keyed_batch(keys: &[Option<&str>]) -> RecordBatch {
    let mut builder = BatchBuilder::new();
    for (idx, key) in keys.iter().enumerate() {
        let value = key.map_or_else(|| format!("plain-{idx}"), str::to_owned);
        let header: Vec<(&[u8], Option<&[u8]>)> =
            key.iter().map(|key| (DEDUP_KEY_HEADER.as_bytes(), Some(key.as_bytes()))).collect();
        // The clock's start (see `common::clock`): within the window.
        let record =
            NewRecord { timestamp: 1_700_000_000_000, key: None, value: Some(value.as_bytes()), headers: &header };
        builder.push(record).expect("record fits");
    }
    builder.build().expect("batch builds")
}

fn start(fs: &SimFs, clock: &Arc<ManualClock>, index: &Arc<MemoryIndex>) -> Appender {
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let config = small_config(FsyncPolicy::Always);
    let (log, _) = open(&storage, &PathBuf::from("/data/p"), &config, clock);
    let setup = ProducerSetup {
        clock: Arc::clone(clock) as Arc<dyn Clock>,
        dedup: Some(DedupSetup { window: WINDOW, index: Arc::clone(index) as Arc<dyn DedupIndex> }),
        ..ProducerSetup::default()
    };
    Appender::start_with_producers(log, "p0", &config, setup).expect("start")
}

fn append(appender: &Appender, batches: Vec<RecordBatch>) -> Result<AppendAck, LogError> {
    appender.handle().blocking_append(batches)
}

fn dropped(pairs: &[(u32, u64)]) -> Vec<DroppedRecord> {
    pairs.iter().map(|&(record_index, original_offset)| DroppedRecord { record_index, original_offset }).collect()
}

/// Every record's value in the log, in offset order, with its offset.
fn values(appender: &Appender) -> Vec<(u64, String)> {
    read_all(&appender.reader())
        .iter()
        .flat_map(|batch| batch.records().map(|record| record.expect("valid record")).collect::<Vec<_>>())
        .map(|record| {
            let value = record.value.expect("value");
            (record.offset, String::from_utf8(value.to_vec()).expect("utf-8"))
        })
        .collect()
}

#[test]
fn a_retried_record_is_dropped_and_reported_with_its_original_offset() {
    let (fs, clock, index) = (SimFs::new(11), clock(), Arc::new(MemoryIndex::default()));
    let appender = start(&fs, &clock, &index);
    let first = append(&appender, vec![keyed_batch(&[Some("a"), Some("b")])]).expect("append");
    assert!(first.dedup_dropped.is_empty());
    assert_eq!(index.offset_of("b"), Some(1), "indexed before the reply");
    let retry = append(&appender, vec![keyed_batch(&[Some("a"), Some("b")])]).expect("retry acknowledged");
    assert_eq!(retry.dedup_dropped, dropped(&[(0, 0), (1, 1)]));
    assert!(retry.ranges.is_empty(), "nothing written");
    assert_eq!(appender.reader().visible_end(), 2);
    appender.shutdown().expect("shutdown");
}

#[test]
fn a_batch_with_some_duplicate_keys_keeps_the_others_in_order_with_dense_offsets() {
    let (fs, clock, index) = (SimFs::new(12), clock(), Arc::new(MemoryIndex::default()));
    let appender = start(&fs, &clock, &index);
    append(&appender, vec![keyed_batch(&[Some("a"), Some("b")])]).expect("append");
    let ack = append(
        &appender,
        vec![
            keyed_batch(&[Some("c"), Some("a"), None, Some("d")]),
            keyed_batch(&[Some("b")]),
            keyed_batch(&[Some("e")]),
        ],
    )
    .expect("append");
    assert_eq!(ack.dedup_dropped, dropped(&[(1, 0), (4, 1)]));
    assert_eq!(ack.ranges.first().map(|range| range.first), Some(2));
    assert_eq!(ack.ranges.last().map(|range| range.last), Some(5));
    let expected: Vec<(u64, String)> = [(0, "a"), (1, "b"), (2, "c"), (3, "plain-2"), (4, "d"), (5, "e")]
        .into_iter()
        .map(|(offset, value)| (offset, value.to_owned()))
        .collect();
    assert_eq!(values(&appender), expected);
    appender.shutdown().expect("shutdown");
}

#[test]
fn records_with_the_same_key_in_one_request_and_one_group_are_written_once() {
    let (fs, clock, index) = (SimFs::new(13), clock(), Arc::new(MemoryIndex::default()));
    let appender = start(&fs, &clock, &index);
    let ack = append(&appender, vec![keyed_batch(&[Some("x"), Some("x"), Some("y")])]).expect("append");
    assert_eq!(ack.dedup_dropped, dropped(&[(1, 0)]));
    // Queued together, so the appender likely takes them in one group; either way the second is a duplicate.
    let handle = appender.handle();
    let pending: Vec<_> =
        (0..3).map(|_| handle.blocking_submit(vec![keyed_batch(&[Some("z")])]).expect("submit")).collect();
    let acks: Vec<AppendAck> = pending.into_iter().map(|ack| ack.blocking_wait().expect("ack")).collect();
    assert!(acks[0].dedup_dropped.is_empty());
    assert_eq!(acks[1].dedup_dropped, dropped(&[(0, 2)]));
    assert_eq!(acks[2].dedup_dropped, dropped(&[(0, 2)]));
    assert_eq!(appender.reader().visible_end(), 3);
    appender.shutdown().expect("shutdown");
}

#[test]
fn a_key_is_accepted_again_once_the_window_passed() {
    let (fs, clock, index) = (SimFs::new(14), clock(), Arc::new(MemoryIndex::default()));
    let appender = start(&fs, &clock, &index);
    append(&appender, vec![keyed_batch(&[Some("a")])]).expect("append");
    clock.advance(WINDOW - Duration::from_millis(1));
    let retry = append(&appender, vec![keyed_batch(&[Some("a")])]).expect("append");
    assert_eq!(retry.dedup_dropped, dropped(&[(0, 0)]), "still within the window");
    clock.advance(Duration::from_millis(2));
    let late = append(&appender, vec![keyed_batch(&[Some("a")])]).expect("append");
    assert!(late.dedup_dropped.is_empty(), "the window passed");
    assert_eq!(late.ranges.first().map(|range| range.first), Some(1));
    appender.shutdown().expect("shutdown");
}

#[test]
fn keys_the_index_missed_before_a_crash_are_reindexed_from_the_log() {
    for mode in [CrashMode::ProcessKill, CrashMode::PowerLoss] {
        let (fs, clock, index) = (SimFs::new(15), clock(), Arc::new(MemoryIndex::default()));
        let appender = start(&fs, &clock, &index);
        for idx in 0..30 {
            let key = format!("k{idx}");
            append(&appender, vec![keyed_batch(&[Some(&key)])]).expect("append");
        }
        let before_last = index.snapshot();
        append(&appender, vec![keyed_batch(&[Some("last")])]).expect("append");
        // The crash took the index's last insert (the log's fsync came first, so the record survives).
        fs.crash(mode);
        drop(appender);
        index.restore(before_last);
        assert_eq!(index.offset_of("last"), None);
        let appender = start(&fs, &clock, &index);
        let report = appender.dedup_replay_report().expect("dedup on");
        assert_eq!((report.replayed_from, report.keys_indexed), (30, 1), "{mode:?}");
        let retry = append(&appender, vec![keyed_batch(&[Some("k3"), Some("last"), Some("new")])]).expect("append");
        assert_eq!(retry.dedup_dropped, dropped(&[(0, 3), (1, 30)]), "{mode:?}");
        assert_eq!(appender.reader().visible_end(), 32);
        appender.shutdown().expect("shutdown");
    }
}

#[test]
fn without_a_covered_offset_the_log_within_the_window_is_reindexed() {
    let (fs, clock, index) = (SimFs::new(16), clock(), Arc::new(MemoryIndex::default()));
    let appender = start(&fs, &clock, &index);
    append(&appender, vec![keyed_batch(&[Some("a"), Some("b")])]).expect("append");
    appender.shutdown().expect("shutdown");
    index.restore(IndexState::default());
    let appender = start(&fs, &clock, &index);
    // The records' timestamps lie within the window, so the time index finds them.
    assert_eq!(appender.dedup_replay_report().map(|report| report.keys_indexed), Some(2));
    let retry = append(&appender, vec![keyed_batch(&[Some("b")])]).expect("append");
    assert_eq!(retry.dedup_dropped, dropped(&[(0, 1)]));
    appender.shutdown().expect("shutdown");
}

#[test]
fn a_failed_index_insert_keeps_the_entries_in_memory_and_still_drops_retries() {
    let (fs, clock, index) = (SimFs::new(17), clock(), Arc::new(MemoryIndex::default()));
    let appender = start(&fs, &clock, &index);
    index.fail.store(true, Ordering::SeqCst);
    let first = append(&appender, vec![keyed_batch(&[Some("a")])]).expect("acknowledged: the log has it");
    assert!(first.dedup_dropped.is_empty());
    assert_eq!(index.offset_of("a"), None);
    let retry = append(&appender, vec![keyed_batch(&[Some("a")])]).expect("append");
    assert_eq!(retry.dedup_dropped, dropped(&[(0, 0)]), "found among the entries waiting in memory");
    index.fail.store(false, Ordering::SeqCst);
    append(&appender, vec![keyed_batch(&[Some("b")])]).expect("append");
    assert_eq!((index.offset_of("a"), index.offset_of("b")), (Some(0), Some(1)), "retried with the next group");
    appender.shutdown().expect("shutdown");
}

#[test]
fn invalid_keys_and_idempotent_batches_with_keys_are_refused() {
    let (fs, clock, index) = (SimFs::new(18), clock(), Arc::new(MemoryIndex::default()));
    let appender = start(&fs, &clock, &index);
    let long = "k".repeat(257);
    let error = append(&appender, vec![keyed_batch(&[Some("a"), Some(&long)])]).expect_err("too long");
    assert!(matches!(error, LogError::Dedup(DedupError::InvalidKey { record_index: 1, len: 257 })), "{error:?}");
    let mut batch = keyed_batch(&[Some("a")]);
    batch.set_producer(ProducerFields { producer_id: 7, producer_epoch: 0, base_sequence: 0 });
    let error = append(&appender, vec![batch]).expect_err("idempotent");
    assert!(matches!(error, LogError::Dedup(DedupError::IdempotentBatch)), "{error:?}");
    assert_eq!(appender.reader().visible_end(), 0, "nothing written");
    appender.shutdown().expect("shutdown");
}

#[test]
fn entries_waiting_for_the_index_are_bounded_and_flushed_when_it_recovers() {
    let (fs, clock, index) = (SimFs::new(19), clock(), Arc::new(MemoryIndex::default()));
    let appender = start(&fs, &clock, &index);
    index.fail.store(true, Ordering::SeqCst);
    let keys: Vec<String> = (0..DEDUP_PENDING_ENTRIES_MAX).map(|idx| format!("{idx}")).collect();
    let mut written = 0;
    for chunk in keys.chunks(20_000) {
        let chunk: Vec<Option<&str>> = chunk.iter().map(|key| Some(key.as_str())).collect();
        append(&appender, vec![keyed_batch(&chunk)]).expect("acknowledged: the log has it");
        written += chunk.len();
    }
    let error = append(&appender, vec![keyed_batch(&[Some("one more")])]).expect_err("over the limit");
    assert!(matches!(error, LogError::Dedup(DedupError::IndexUnavailable { .. })), "{error:?}");
    assert_eq!(appender.reader().visible_end(), u64::try_from(written).expect("small"));
    index.fail.store(false, Ordering::SeqCst);
    let ack = append(&appender, vec![keyed_batch(&[Some("one more"), Some("7")])]).expect("the index is back");
    assert_eq!(ack.dedup_dropped, dropped(&[(1, 7)]));
    assert_eq!(index.offset_of("99999"), Some(99_999), "the waiting entries were indexed");
    appender.shutdown().expect("shutdown");
}
