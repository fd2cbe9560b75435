//! Corruption suite on real files: build a log of several segments, stop it, mutate the files, reopen, and check the
//! documented outcome (see `ferry_log::recovery`) precisely.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ferry_log::{FsyncPolicy, Log, LogConfig, LogError, LogStatus, PartitionLog, RealFs, RecoveryReport, Storage};
use ferry_protocol::RecordBatch;
use ferry_protocol::batch::split_batches;

use crate::common::{clock, make_batch, open, read_all, small_config};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// `close()`: clean checkpoint.
    Clean,
    /// Everything synced, then dropped without close.
    UncleanSynced,
    /// Everything but the last batch synced, then dropped: the last batch is beyond the checkpoint's durable end.
    UncleanUnsyncedLast,
}

#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub bytes: Bytes,
    pub base: u64,
    pub next: u64,
    pub max_timestamp: i64,
    pub segment: u64,
    pub position: u64,
}

impl Stored {
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
}

const N_BATCHES: usize = 40;

pub(crate) fn segment_path(dir: &Path, base: u64, suffix: &str) -> PathBuf {
    dir.join(format!("{base:020}{suffix}"))
}

/// A stopped log: its directory and its batches with their places.
pub(crate) struct Built {
    pub dir: tempfile::TempDir,
    pub batches: Vec<Stored>,
}

/// Builds a log of `batches` in a fresh directory with `config`, syncing after each batch but the last with
/// [`Stop::UncleanUnsyncedLast`], and stops it as `stop` says.
pub(crate) fn build_log(stop: Stop, config: &LogConfig, batches: impl ExactSizeIterator<Item = RecordBatch>) -> Built {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage: Arc<dyn Storage> = Arc::new(RealFs);
    let (mut log, report) = open(&storage, dir.path(), config, &clock());
    assert!(report.damaged.is_none());
    let n_batches = batches.len();
    for (idx, batch) in batches.enumerate() {
        log.append(&mut [batch]).expect("append");
        if stop != Stop::UncleanUnsyncedLast || idx + 1 < n_batches {
            log.sync().expect("sync");
        }
    }
    if stop == Stop::Clean {
        log.close().expect("close");
    }
    drop(log);
    let batches = layout(dir.path());
    assert_eq!(batches.len(), n_batches);
    Built { dir, batches }
}

/// Builds a log of about five 4 KiB segments in a fresh directory.
fn build(stop: Stop) -> Built {
    let batches = (0..N_BATCHES).map(|idx| {
        // Timestamps mostly increase, with a dip every 7th batch, so the time index is exercised.
        let timestamp = if idx % 7 == 6 { 500 } else { 1_000 + 10 * idx as i64 };
        make_batch(1 + (idx % 3) as u32, 100 + (idx * 37) % 300, timestamp, idx as u8)
    });
    let Built { dir, batches } = build_log(stop, &small_config(FsyncPolicy::Always), batches);
    let segments = batches.last().expect("batches").segment;
    assert!(batches.iter().filter(|b| b.position == 0).count() >= 4, "several segments, last at {segments}");
    Built { dir, batches }
}

/// Reads every segment file directly to find each batch's segment and position.
fn layout(dir: &Path) -> Vec<Stored> {
    let mut segments: Vec<u64> = fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    segments.sort_unstable();
    let mut stored = Vec::new();
    for segment in segments {
        let content = Bytes::from(fs::read(segment_path(dir, segment, ".log")).expect("read segment"));
        let mut position = 0;
        for batch in split_batches(content) {
            let batch = batch.expect("pristine log verifies");
            stored.push(Stored {
                bytes: batch.as_bytes().clone(),
                base: batch.base_offset(),
                next: batch.last_offset() + 1,
                max_timestamp: batch.header().max_timestamp,
                segment,
                position,
            });
            position += u64::from(batch.len_bytes());
        }
    }
    stored
}

/// Copies a built log into a fresh directory, so each case mutates its own copy.
pub(crate) fn copy_of(built: &Built) -> tempfile::TempDir {
    let copy = tempfile::tempdir().expect("tempdir");
    for entry in fs::read_dir(built.dir.path()).expect("list") {
        let entry = entry.expect("entry");
        fs::copy(entry.path(), copy.path().join(entry.file_name())).expect("copy");
    }
    copy
}

fn reopen(dir: &Path) -> (Log, RecoveryReport) {
    let storage: Arc<dyn Storage> = Arc::new(RealFs);
    open(&storage, dir, &small_config(FsyncPolicy::Always), &clock())
}

fn flip_bit(path: &Path, position: u64, bit: u8) {
    let mut content = fs::read(path).expect("read");
    content[position as usize] ^= 1 << bit;
    fs::write(path, content).expect("write");
}

fn expected_bytes(batches: &[Stored]) -> Vec<Bytes> {
    batches.iter().map(|b| b.bytes.clone()).collect()
}

fn visible_bytes(log: &Log) -> Vec<Bytes> {
    read_all(&log.reader()).iter().map(|b| b.as_bytes().clone()).collect()
}

/// The outcome for a torn tail: truncated to the last valid batch before `first_lost`, `truncated` bytes counted.
fn check_truncated(built: &Built, dir: &Path, first_lost: usize, truncated: u64) {
    let (mut log, report) = reopen(dir);
    assert!(report.damaged.is_none(), "{report:?}");
    assert_eq!(report.truncated_bytes, truncated, "{report:?}");
    let kept = &built.batches[..first_lost];
    let end = kept.last().map_or(0, |b| b.next);
    assert_eq!(log.end_offset(), end);
    assert_eq!(visible_bytes(&log), expected_bytes(kept), "previous batches intact");
    let ranges = log.append(&mut [make_batch(1, 10, 5_000, 0xEE)]).expect("appends continue");
    assert_eq!(ranges[0].first, end, "the next append takes the first free offset");
}

/// The outcome for damage: nothing truncated or rewritten, reads below the damage work, appends refused.
fn check_damaged(built: &Built, dir: &Path, damaged_idx: usize) {
    let segment_before = fs::read(segment_path(dir, built.batches[damaged_idx].segment, ".log")).expect("read");
    let (mut log, report) = reopen(dir);
    let damage = report.damaged.clone().unwrap_or_else(|| panic!("damage detected: {report:?}"));
    let at = &built.batches[damaged_idx];
    assert_eq!((damage.segment_base, damage.position, damage.offset), (at.segment, at.position, at.base), "{damage}");
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(log.end_offset(), at.base);
    assert_eq!(visible_bytes(&log), expected_bytes(&built.batches[..damaged_idx]), "reads below the damage work");
    assert!(matches!(log.reader().status(), LogStatus::Damaged(_)));
    match log.append(&mut [make_batch(1, 10, 5_000, 0xEE)]) {
        Err(LogError::Damaged { damage: refused }) => assert_eq!(refused, damage),
        other => panic!("append on a damaged log: {other:?}"),
    }
    assert!(log.sync().is_ok() && log.apply_retention().expect("no-op") == 0);
    log.close().expect("close of a damaged log is a no-op");
    drop(log);
    let segment_after = fs::read(segment_path(dir, at.segment, ".log")).expect("read");
    assert_eq!(segment_before, segment_after, "the evidence is kept byte for byte");
    let (_, again) = reopen(dir);
    assert_eq!(again.damaged, Some(damage), "damage is reported again on the next open");
}

#[test]
fn clean_stop_reopens_without_scanning() {
    let built = build(Stop::Clean);
    let (log, report) = reopen(built.dir.path());
    assert!(report.clean && report.checkpoint_found, "{report:?}");
    assert_eq!((report.scanned_batches, report.rebuilt_indexes, report.truncated_bytes), (0, 0, 0));
    assert_eq!(visible_bytes(&log), expected_bytes(&built.batches));
}

#[test]
fn tail_truncated_at_every_byte_of_an_unsynced_last_batch_is_cut_back() {
    let built = build(Stop::UncleanUnsyncedLast);
    let last = built.batches.last().expect("last").clone();
    for cut in last.position..last.position + last.len() {
        let dir = copy_of(&built);
        let file =
            fs::OpenOptions::new().write(true).open(segment_path(dir.path(), last.segment, ".log")).expect("open");
        file.set_len(cut).expect("truncate");
        check_truncated(&built, dir.path(), N_BATCHES - 1, cut - last.position);
    }
}

#[test]
fn tail_truncated_below_the_durable_end_is_damage() {
    let built = build(Stop::UncleanSynced);
    let last = built.batches.last().expect("last").clone();
    for cut in [last.position + 1, last.position + 12, last.position + last.len() - 1] {
        let dir = copy_of(&built);
        let file =
            fs::OpenOptions::new().write(true).open(segment_path(dir.path(), last.segment, ".log")).expect("open");
        file.set_len(cut).expect("truncate");
        check_damaged(&built, dir.path(), N_BATCHES - 1);
    }
}

#[test]
fn garbage_after_the_last_batch_is_truncated() {
    for stop in [Stop::Clean, Stop::UncleanSynced] {
        let built = build(stop);
        let dir = copy_of(&built);
        let last = built.batches.last().expect("last");
        let path = segment_path(dir.path(), last.segment, ".log");
        let mut content = fs::read(&path).expect("read");
        let mut state = 0x1234_5678_u32;
        content.extend((0..1000).map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        }));
        fs::write(&path, content).expect("write");
        check_truncated(&built, dir.path(), N_BATCHES, 1000);
    }
}

#[test]
fn flipped_bits_in_the_last_batch_are_damage_below_the_durable_end() {
    for stop in [Stop::Clean, Stop::UncleanSynced] {
        let built = build(stop);
        let last = built.batches.last().expect("last").clone();
        for (step, at) in (0..last.len()).step_by(41).enumerate() {
            let dir = copy_of(&built);
            flip_bit(&segment_path(dir.path(), last.segment, ".log"), last.position + at, (step % 8) as u8);
            check_damaged(&built, dir.path(), N_BATCHES - 1);
        }
    }
}

#[test]
fn flipped_bits_in_an_unsynced_last_batch_are_a_torn_tail() {
    let built = build(Stop::UncleanUnsyncedLast);
    let last = built.batches.last().expect("last").clone();
    for (step, at) in (0..last.len()).step_by(29).enumerate() {
        let dir = copy_of(&built);
        flip_bit(&segment_path(dir.path(), last.segment, ".log"), last.position + at, (step % 8) as u8);
        check_truncated(&built, dir.path(), N_BATCHES - 1, last.len());
    }
}

#[test]
fn flipped_length_and_offset_fields_are_detected() {
    let built = build(Stop::UncleanSynced);
    let idx = N_BATCHES - 2; // In the active segment, below the durable end.
    let batch = built.batches[idx].clone();
    assert_eq!(batch.segment, built.batches[N_BATCHES - 1].segment, "second to last batch is in the active segment");
    for field_byte in [0u64, 5, 7, 8, 10, 11] {
        for bit in [0u8, 3, 7] {
            let dir = copy_of(&built);
            flip_bit(&segment_path(dir.path(), batch.segment, ".log"), batch.position + field_byte, bit);
            check_damaged(&built, dir.path(), idx);
        }
    }
    // The same flips in an unsynced last batch are a torn tail.
    let built = build(Stop::UncleanUnsyncedLast);
    let last = built.batches.last().expect("last").clone();
    for field_byte in [0u64, 7, 8, 11] {
        let dir = copy_of(&built);
        flip_bit(&segment_path(dir.path(), last.segment, ".log"), last.position + field_byte, 2);
        check_truncated(&built, dir.path(), N_BATCHES - 1, last.len());
    }
}

#[test]
fn flipped_bit_in_a_middle_batch_of_the_active_segment_is_damage() {
    let built = build(Stop::UncleanSynced);
    let active = built.batches.last().expect("last").segment;
    let idx = built.batches.iter().position(|b| b.segment == active).expect("active has batches");
    let batch = built.batches[idx].clone();
    let dir = copy_of(&built);
    flip_bit(&segment_path(dir.path(), active, ".log"), batch.position + batch.len() / 2, 4);
    check_damaged(&built, dir.path(), idx);
}

#[test]
fn flipped_bit_in_a_sealed_segment_is_damage_when_scanned_and_never_served() {
    let built = build(Stop::UncleanSynced);
    // The second batch of the first segment: below the recovery point, in a segment that is not the last.
    let idx = 1;
    let batch = built.batches[idx].clone();
    assert_eq!(batch.segment, 0);
    // With a valid checkpoint the sealed segment is not scanned at open; a read verifies the batch and refuses it.
    let dir = copy_of(&built);
    flip_bit(&segment_path(dir.path(), 0, ".log"), batch.position + batch.len() - 3, 1);
    let (log, report) = reopen(dir.path());
    assert!(report.damaged.is_none() && report.scanned_batches < N_BATCHES as u64, "{report:?}");
    let reader = log.reader();
    match reader.read(batch.base, 1) {
        Err(LogError::Corrupt { position, .. }) => assert_eq!(position, batch.position),
        other => panic!("corrupt batch served: {other:?}"),
    }
    assert_eq!(reader.stats().checksum_failures(), 1);
    let before = reader.read(built.batches[0].base, 1 << 20).expect("batch before the corruption");
    assert_eq!(before.batch_count, 1, "a read stops before the corrupt batch");
    assert_eq!(before.bytes, built.batches[0].bytes);
    let after = reader.read(built.batches[idx + 1].base, 1).expect("batch after");
    assert_eq!(after.bytes, built.batches[idx + 1].bytes);
    drop(log);
    // Without a checkpoint everything is scanned: the corrupt batch in a segment that is not the last is damage.
    fs::write(dir.path().join("checkpoint"), b"garbage").expect("write");
    check_damaged(&built, dir.path(), idx);
}

fn check_index_damage(mutate: impl Fn(&Path), expect_rebuilt: bool) {
    let built = build(Stop::Clean);
    let dir = copy_of(&built);
    mutate(dir.path());
    let (log, report) = reopen(dir.path());
    assert!(report.damaged.is_none() && report.truncated_bytes == 0, "{report:?}");
    if expect_rebuilt {
        assert!(report.rebuilt_indexes >= 1, "index rebuilt: {report:?}");
    }
    let reader = log.reader();
    assert_eq!(visible_bytes(&log), expected_bytes(&built.batches), "reads are correct");
    for batch in &built.batches {
        for offset in batch.base..batch.next {
            let slice = reader.read(offset, 1).expect("read");
            assert_eq!(slice.bytes, batch.bytes, "offset {offset}");
        }
    }
    for timestamp in [0, 499, 500, 501, 1_000, 1_005, 1_100, 1_200, 1_389, 1_390, 1_391, 5_000] {
        let expected = built.batches.iter().find(|b| b.max_timestamp >= timestamp).map(|b| b.base);
        assert_eq!(reader.read_by_timestamp(timestamp).expect("by timestamp"), expected, "timestamp {timestamp}");
    }
    if !expect_rebuilt {
        assert!(
            report.rebuilt_indexes >= 1 || reader.stats().index_fallbacks() >= 1,
            "a wrong entry is caught at open or at read: {report:?}"
        );
    }
}

#[test]
fn damaged_or_missing_indexes_are_rebuilt_and_reads_stay_correct() {
    let index = |dir: &Path| segment_path(dir, 0, ".index");
    // A high bit in the first entry's position: beyond the segment.
    check_index_damage(|dir| flip_bit(&index(dir), 4, 7), true);
    // A 4 KiB page of zeros (the whole file, which is smaller).
    check_index_damage(
        |dir| {
            let len = fs::metadata(index(dir)).expect("stat").len().min(4096);
            assert!(len >= 8, "the first segment has index entries");
            let mut content = fs::read(index(dir)).expect("read");
            content[..len as usize].fill(0);
            fs::write(index(dir), content).expect("write");
        },
        true,
    );
    check_index_damage(|dir| fs::remove_file(index(dir)).expect("remove"), true);
    check_index_damage(|dir| fs::remove_file(segment_path(dir, 0, ".timeindex")).expect("remove"), true);
    check_index_damage(|dir| flip_bit(&segment_path(dir, 0, ".timeindex"), 3, 0), true);
    // A low bit of a position that may keep the index structurally valid: caught at open or by the read's check.
    check_index_damage(|dir| flip_bit(&index(dir), 7, 0), false);
}

#[test]
fn corrupt_checkpoint_is_treated_as_absent_and_everything_is_scanned() {
    for stop in [Stop::Clean, Stop::UncleanSynced] {
        let built = build(stop);
        let dir = copy_of(&built);
        flip_bit(&dir.path().join("checkpoint"), 20, 5);
        let (log, report) = reopen(dir.path());
        assert!(!report.checkpoint_found && !report.clean, "{report:?}");
        assert_eq!(report.scanned_batches, N_BATCHES as u64, "full scan");
        assert!(report.damaged.is_none() && report.truncated_bytes == 0);
        assert_eq!(visible_bytes(&log), expected_bytes(&built.batches));
    }
}
