//! The read path: by offset within and across segments, size limits, by timestamp, the visible end per policy,
//! retention by size and age, and out-of-range offsets.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_log::{FsyncPolicy, Log, LogConfig, LogError, ManualClock, PartitionLog, SimFs, Storage};
use ferry_protocol::RecordBatch;
use ferry_protocol::batch::split_batches;

use crate::common::{clock, make_batch, open, read_all, small_config};

struct Fixture {
    fs: SimFs,
    log: Log,
    clock: Arc<ManualClock>,
    stored: Vec<RecordBatch>,
}

/// A log of `n` batches (1 to 3 records, 100 to 600 value bytes) in 4 KiB segments, each appended by its own call.
fn fixture(config: LogConfig, n: usize) -> Fixture {
    let fs = SimFs::new(7);
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let clock = clock();
    let (mut log, _) = open(&storage, &PathBuf::from("/data/p"), &config, &clock);
    let mut stored = Vec::new();
    for idx in 0..n {
        let timestamp = 10_000 + 100 * idx as i64 - if idx % 5 == 4 { 450 } else { 0 };
        let mut batch = [make_batch(1 + (idx % 3) as u32, 100 + (idx * 53) % 500, timestamp, idx as u8)];
        log.append(&mut batch).expect("append");
        let [batch] = batch;
        stored.push(batch);
    }
    log.sync().expect("sync");
    Fixture { fs, log, clock, stored }
}

fn segment_count(fs: &SimFs) -> usize {
    use ferry_log::Storage;
    fs.list(&PathBuf::from("/data/p")).expect("list").iter().filter(|n| n.ends_with(".log")).count()
}

#[test]
fn reads_by_offset_return_the_batch_holding_it_within_and_across_segments() {
    let fixture = fixture(small_config(FsyncPolicy::Always), 60);
    assert!(segment_count(&fixture.fs) >= 5, "several segments");
    let reader = fixture.log.reader();
    assert_eq!(read_all(&reader), fixture.stored, "reading from the start yields every batch in order");
    for (idx, batch) in fixture.stored.iter().enumerate() {
        for offset in batch.base_offset()..=batch.last_offset() {
            let one = reader.read(offset, 1).expect("read");
            assert_eq!(one.batch_count, 1);
            assert_eq!(&one.bytes, batch.as_bytes(), "offset {offset} is in batch {idx}");
            assert_eq!((one.first_offset, one.next_offset), (batch.base_offset(), batch.last_offset() + 1));
            let many = reader.read(offset, 1500).expect("read");
            let batches: Vec<_> = split_batches(many.bytes.clone()).map(|b| b.expect("valid")).collect();
            assert_eq!(batches[..], fixture.stored[idx..idx + batches.len()], "consecutive batches");
            assert!(batches.len() == 1 || many.bytes.len() <= 1500, "bytes_max respected beyond the first batch");
        }
    }
}

#[test]
fn a_read_returns_one_whole_batch_even_when_larger_than_bytes_max() {
    let fixture = fixture(small_config(FsyncPolicy::Always), 10);
    let reader = fixture.log.reader();
    for bytes_max in [0, 1, 58, 59] {
        let slice = reader.read(3, bytes_max).expect("read");
        assert_eq!(slice.batch_count, 1);
        assert!(slice.bytes.len() > bytes_max as usize);
    }
    let big = make_batch(2, 6000, 1, 9); // Larger than a 4 KiB segment: it goes alone in a fresh one.
    let mut log = fixture.log;
    let ranges = log.append(&mut [big.clone()]).expect("append");
    log.sync().expect("sync");
    let slice = reader.read(ranges[0].first + 1, 100).expect("read");
    assert_eq!(slice.batch_count, 1);
    assert_eq!(slice.bytes.len(), big.len_bytes() as usize);
}

#[test]
fn read_by_timestamp_finds_the_first_batch_reaching_it() {
    let fixture = fixture(small_config(FsyncPolicy::Always), 60);
    let reader = fixture.log.reader();
    let last_ts = fixture.stored.iter().map(|b| b.header().max_timestamp).max().expect("batches");
    for timestamp in (9_000..last_ts + 200).step_by(37).chain([i64::MIN, 10_000, last_ts, last_ts + 1]) {
        let expected = fixture.stored.iter().find(|b| b.header().max_timestamp >= timestamp).map(|b| b.base_offset());
        assert_eq!(reader.read_by_timestamp(timestamp).expect("lookup"), expected, "timestamp {timestamp}");
    }
}

#[test]
fn visible_end_follows_the_fsync_policy() {
    for policy in [FsyncPolicy::Always, FsyncPolicy::Never, FsyncPolicy::Interval(Duration::from_secs(3600))] {
        let mut fixture = fixture(LogConfig { segment_bytes: 1 << 20, ..small_config(policy) }, 3);
        let reader = fixture.log.reader();
        let synced_end = reader.visible_end();
        assert_eq!(synced_end, fixture.log.end_offset());
        let ranges = fixture.log.append(&mut [make_batch(2, 10, 1, 1)]).expect("append");
        let end = ranges[0].next();
        if policy == FsyncPolicy::Always {
            assert_eq!(reader.visible_end(), synced_end, "{policy}: unsynced data is invisible");
            assert_eq!(reader.read(synced_end, 1 << 20).expect("at end").batch_count, 0);
            assert!(matches!(reader.read(synced_end + 1, 100), Err(LogError::OffsetOutOfRange { .. })));
            assert_eq!(fixture.log.unsynced_bytes(), u64::from(make_batch(2, 10, 1, 1).len_bytes()));
            assert_eq!(reader.stats().unsynced_bytes(), fixture.log.unsynced_bytes());
            fixture.log.sync().expect("sync");
        }
        assert_eq!(reader.visible_end(), end, "{policy}");
        assert_eq!(reader.read(synced_end, 1 << 20).expect("read").batch_count, 1);
    }
}

#[test]
fn offsets_outside_the_log_are_out_of_range() {
    let mut fixture = fixture(LogConfig { retention_bytes: Some(8 * 1024), ..small_config(FsyncPolicy::Always) }, 60);
    assert!(fixture.log.apply_retention().expect("retention") > 0);
    let reader = fixture.log.reader();
    let (start, end) = (reader.start_offset(), reader.visible_end());
    assert!(start > 0);
    for requested in [0, start - 1, end + 1, u64::MAX] {
        match reader.read(requested, 100) {
            Err(LogError::OffsetOutOfRange { requested: r, start: s, end: e }) => {
                assert_eq!((r, s, e), (requested, start, end))
            }
            other => panic!("offset {requested}: {other:?}"),
        }
    }
    assert!(reader.read(start, 100).is_ok() && reader.read(end, 100).is_ok());
}

#[test]
fn retention_by_size_deletes_whole_oldest_segments_and_never_the_active_one() {
    let mut fixture = fixture(LogConfig { retention_bytes: Some(10_000), ..small_config(FsyncPolicy::Always) }, 80);
    let before = segment_count(&fixture.fs);
    let removed = fixture.log.apply_retention().expect("retention");
    assert_eq!(segment_count(&fixture.fs), before - removed);
    let reader = fixture.log.reader();
    let start = reader.start_offset();
    let kept: Vec<_> = fixture.stored.iter().filter(|b| b.base_offset() >= start).cloned().collect();
    assert_eq!(kept.first().map(|b| b.base_offset()), Some(start), "start is a segment base");
    let kept_bytes: u64 = kept.iter().map(|b| u64::from(b.len_bytes())).sum();
    assert!(kept_bytes >= 10_000, "the log keeps at least retention_bytes");
    assert!(kept_bytes < 10_000 + 4096 + 1, "and deletes segments while it stays above it");
    assert_eq!(read_all(&reader), kept);
    let config_all = LogConfig { retention_bytes: Some(1), ..small_config(FsyncPolicy::Always) };
    drop(fixture.log);
    let storage: Arc<dyn Storage> = Arc::new(fixture.fs.clone());
    let (mut log, _) = open(&storage, &PathBuf::from("/data/p"), &config_all, &fixture.clock);
    log.apply_retention().expect("retention");
    assert_eq!(segment_count(&fixture.fs), 1, "the active segment stays");
    assert_eq!(log.end_offset(), fixture.stored.last().expect("batches").last_offset() + 1);
}

#[test]
fn retention_by_age_uses_the_newest_timestamp_of_each_segment() {
    let config = LogConfig { retention_age: Some(Duration::from_secs(60)), ..small_config(FsyncPolicy::Always) };
    let mut fixture = fixture(config, 40);
    // Record timestamps are about 10_000..14_000 ms; the clock is far later, so every sealed segment is old.
    fixture.clock.set(14_000 + 60_000 - 1);
    let keep_threshold = 14_000 - 1;
    let removed = fixture.log.apply_retention().expect("retention");
    let start = fixture.log.start_offset();
    let removed_batches: Vec<_> = fixture.stored.iter().filter(|b| b.base_offset() < start).collect();
    assert!(removed > 0 && !removed_batches.is_empty());
    assert!(removed_batches.iter().all(|b| b.header().max_timestamp < keep_threshold), "only old data deleted");
    fixture.clock.set(i64::MAX / 2);
    fixture.log.apply_retention().expect("retention");
    assert_eq!(segment_count(&fixture.fs), 1, "everything but the active segment is old");
}

#[test]
fn segments_roll_by_age() {
    let config = LogConfig { segment_age: Duration::from_secs(10), ..small_config(FsyncPolicy::Always) };
    let mut fixture = fixture(LogConfig { segment_bytes: 1 << 20, ..config }, 2);
    assert_eq!(segment_count(&fixture.fs), 1);
    fixture.clock.advance(Duration::from_secs(9));
    fixture.log.append(&mut [make_batch(1, 1, 1, 1)]).expect("append");
    assert_eq!(segment_count(&fixture.fs), 1, "not old yet");
    fixture.clock.advance(Duration::from_secs(1));
    let ranges = fixture.log.append(&mut [make_batch(1, 1, 1, 1)]).expect("append");
    assert_eq!(segment_count(&fixture.fs), 2, "rolled at 10 s");
    let name = format!("{:020}.log", ranges[0].first);
    assert!(fixture.fs.read_file(&PathBuf::from("/data/p").join(name)).is_some(), "named by its base offset");
}
