//! The `segment_recovery` target: arbitrary bytes become a partition directory on a [`SimFs`] (segments, their index
//! files, a checkpoint, leftovers), and [`Log::open`] recovers it.
//!
//! Recovery must never panic or hang on any content, and what it opens must be consistent:
//! - every offset from the start to the visible end reads back as whole batches that verify (CRC-32C) with dense,
//!   increasing offsets, except in data recovery trusts without scanning (segments behind a clean checkpoint or the
//!   recovery point), where the reader refuses what does not verify;
//! - a damaged log reports its damage as its status and refuses appends; a healthy one appends at the recovered end;
//! - recovery is durable and idempotent: a power loss right after it, then a second recovery, finds the same log;
//! - what a healthy log holds survives an append, a clean close and a reopen, with the appended batch after it.
//!
//! # Input layout
//!
//! A sequence of at most [`FILES_MAX`] file records (later ones are ignored); the last record for a name wins:
//!
//! ```text
//! offset size field
//!      0    1 kind     u8, its low 7 bits modulo 5: 0 segment `.log`, 1 `.index`, 2 `.timeindex`, 3 `checkpoint`,
//!                     4 a leftover `.tmp`; with the top bit set, a segment gets the checksum of each of its batches
//!                     rewritten to verify, so the fuzzer reaches what recovery does with well-formed batches whose
//!                     headers it mutated
//!      1    8 base     u64, big-endian: the base offset in the file name (0 for the checkpoint, ignored on input)
//!      9    2 len      u16, big-endian: bytes of content that follow (fewer when the input ends first)
//!     11  len content
//! ```

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::batch::split_batches;
use ferry_protocol::{BatchBuilder, NewRecord, RecordBatch};

use crate::checkpoint::CHECKPOINT_FILE;
use crate::config::SEGMENT_BYTES_MIN;
use crate::segment::{INDEX_SUFFIX, LOG_SUFFIX, TEMP_SUFFIX, TIME_INDEX_SUFFIX, file_name, parse_file_name};
use crate::{
    Clock, CrashMode, FsyncPolicy, Log, LogConfig, LogError, LogReader, LogStatus, ManualClock, OpenMode, PartitionLog,
    RecoveryReport, SimFs, Storage,
};

/// The partition directory the input is written to.
pub const PARTITION_DIR: &str = "/data/orders-0";
/// Most file records one input describes.
pub const FILES_MAX: usize = 8;
/// The bit of a kind byte that asks for the checksums of a segment's batches to be rewritten.
pub const FIX_CHECKSUMS_BIT: u8 = 0x80;
/// Size of a file record's header: kind, base, length.
const FILE_HEADER_BYTES: usize = 1 + 8 + 2;
/// The clock of every open, in ms since the Unix epoch.
pub const CLOCK_START_MS: i64 = 1_700_000_000_000;
/// Most bytes one read asks for while walking the log.
const READ_BYTES_MAX: u32 = 64 * 1024;

/// What a file of a partition directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A segment's data: `<base>.log`.
    Segment,
    /// A segment's offset index: `<base>.index`.
    Index,
    /// A segment's time index: `<base>.timeindex`.
    TimeIndex,
    /// The partition's `checkpoint`.
    Checkpoint,
    /// A leftover temporary file, `<base>.tmp`, which recovery removes.
    Temp,
}

impl FileKind {
    /// Every kind, in the order of its number in the input.
    const ALL: [FileKind; 5] =
        [FileKind::Segment, FileKind::Index, FileKind::TimeIndex, FileKind::Checkpoint, FileKind::Temp];

    /// The kind's number in the input.
    fn as_u8(self) -> u8 {
        match self {
            FileKind::Segment => 0,
            FileKind::Index => 1,
            FileKind::TimeIndex => 2,
            FileKind::Checkpoint => 3,
            FileKind::Temp => 4,
        }
    }

    /// The name of this kind's file for the segment at `base`.
    fn file_name(self, base: u64) -> String {
        match self {
            FileKind::Segment => file_name(base, LOG_SUFFIX),
            FileKind::Index => file_name(base, INDEX_SUFFIX),
            FileKind::TimeIndex => file_name(base, TIME_INDEX_SUFFIX),
            FileKind::Checkpoint => CHECKPOINT_FILE.to_owned(),
            FileKind::Temp => file_name(base, TEMP_SUFFIX),
        }
    }

    /// The kind and base of a file named `name`, if it is one of the kinds.
    fn parse(name: &str) -> Option<(FileKind, u64)> {
        if name == CHECKPOINT_FILE {
            return Some((FileKind::Checkpoint, 0));
        }
        FileKind::ALL.into_iter().find_map(|kind| {
            let suffix = match kind {
                FileKind::Segment => LOG_SUFFIX,
                FileKind::Index => INDEX_SUFFIX,
                FileKind::TimeIndex => TIME_INDEX_SUFFIX,
                FileKind::Temp => TEMP_SUFFIX,
                FileKind::Checkpoint => return None,
            };
            parse_file_name(name, suffix).map(|base| (kind, base))
        })
    }
}

/// One file of a partition directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFile {
    /// What the file is.
    pub kind: FileKind,
    /// The base offset in its name (0 for the checkpoint).
    pub base: u64,
    /// Its bytes.
    pub content: Vec<u8>,
}

/// Encodes files as one input (see the module docs); panics on content longer than `u16::MAX` bytes (seeds only).
pub fn encode_partition(files: &[PartitionFile]) -> Vec<u8> {
    let mut input = Vec::new();
    for file in files {
        let len = u16::try_from(file.content.len()).expect("seed files are at most 64 KiB");
        input.push(file.kind.as_u8());
        input.extend_from_slice(&file.base.to_be_bytes());
        input.extend_from_slice(&len.to_be_bytes());
        input.extend_from_slice(&file.content);
    }
    input
}

/// Decodes an input into files (see the module docs); never fails: a short header ends the input.
pub fn decode_partition(mut input: &[u8]) -> Vec<PartitionFile> {
    let mut files = Vec::new();
    while files.len() < FILES_MAX {
        let Some((header, rest)) = input.split_first_chunk::<FILE_HEADER_BYTES>() else { break };
        let kind = FileKind::ALL[usize::from(header[0] & !FIX_CHECKSUMS_BIT) % FileKind::ALL.len()];
        let mut base = [0u8; 8];
        base.copy_from_slice(&header[1..9]);
        let base = if kind == FileKind::Checkpoint { 0 } else { u64::from_be_bytes(base) };
        let len = usize::from(u16::from_be_bytes([header[9], header[10]])).min(rest.len());
        let (content, rest) = rest.split_at(len);
        let mut content = content.to_vec();
        if kind == FileKind::Segment && header[0] & FIX_CHECKSUMS_BIT != 0 {
            ferry_protocol::fuzz::fix_checksums(&mut content);
        }
        files.push(PartitionFile { kind, base, content });
        input = rest;
    }
    files
}

/// Writes `files` into [`PARTITION_DIR`] on `storage`, durably, as if they had been there before a restart.
pub fn write_partition(storage: &SimFs, files: &[PartitionFile]) {
    let dir = Path::new(PARTITION_DIR);
    storage.create_dir_all(dir).expect("SimFs creates directories");
    let by_name: BTreeMap<String, &[u8]> =
        files.iter().map(|file| (file.kind.file_name(file.base), file.content.as_slice())).collect();
    for (name, content) in by_name {
        let file = storage.open(&dir.join(name), OpenMode::CreateNew).expect("each name is created once");
        file.append(&[IoSlice::new(content)]).expect("SimFs without a write budget accepts every write");
        file.sync_data().expect("SimFs without injected failures syncs");
    }
    storage.sync_dir(dir).expect("SimFs syncs directories");
}

/// The files of [`PARTITION_DIR`] on `storage` (as written, synced or not), sorted by name; for building seeds.
pub fn read_partition(storage: &SimFs) -> Vec<PartitionFile> {
    let dir = Path::new(PARTITION_DIR);
    let mut names = storage.list(dir).expect("the partition directory exists");
    names.sort_unstable();
    names
        .into_iter()
        .filter_map(|name| {
            let (kind, base) = FileKind::parse(&name)?;
            let content = storage.read_file(&dir.join(&name))?;
            Some(PartitionFile { kind, base, content })
        })
        .collect()
}

/// The log configuration of every open: the smallest segments, a dense index (so small inputs hold index entries), and
/// a short segment age so seed generators can roll by advancing a [`ManualClock`].
pub fn recovery_config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES_MIN,
        segment_age: Duration::from_secs(1),
        retention_age: None,
        index_interval_bytes: 256,
        fsync: FsyncPolicy::Always,
        ..LogConfig::default()
    }
}

/// Opens the log in [`PARTITION_DIR`] with [`recovery_config`].
pub fn open_partition(storage: &SimFs, clock: Arc<dyn Clock>) -> (Log, RecoveryReport) {
    let storage: Arc<dyn Storage> = Arc::new(storage.clone());
    Log::open(storage, PARTITION_DIR, recovery_config(), clock).expect("a partition on a fault-free disk opens")
}

/// A one-record batch, appended after recovery.
fn new_batch() -> RecordBatch {
    let mut builder = BatchBuilder::new();
    let record = NewRecord { timestamp: CLOCK_START_MS, key: None, value: Some(b"after recovery"), headers: &[] };
    builder.push(record).expect("one small record fits a batch");
    builder.build().expect("a one-record batch builds")
}

/// Writes the input's files to a fresh [`SimFs`], recovers them, and checks the outcome (see the module docs).
/// Returns the report of the first recovery.
pub fn segment_recovery(input: &[u8]) -> RecoveryReport {
    let storage = SimFs::new(0);
    write_partition(&storage, &decode_partition(input));
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(CLOCK_START_MS));
    let (mut log, report) = open_partition(&storage, Arc::clone(&clock));
    let first = check_opened(&mut log, &report);
    drop(log);

    storage.crash(CrashMode::PowerLoss);
    let (mut log, again) = open_partition(&storage, Arc::clone(&clock));
    let second = check_opened(&mut log, &again);
    if first.complete && second.complete {
        assert_eq!(again.damaged.is_some(), report.damaged.is_some(), "a second recovery finds the same damage");
        assert_eq!((again.start_offset, again.end_offset), (report.start_offset, report.end_offset));
        assert_eq!(second.batches, first.batches, "a second recovery finds the same batches");
    }
    if again.damaged.is_some() {
        return report;
    }

    let mut appended = [new_batch()];
    match log.append(&mut appended) {
        Ok(ranges) => assert_eq!(ranges.first().map(|range| range.first), Some(again.end_offset)),
        Err(LogError::OffsetOverflow) => {
            assert_eq!(again.end_offset, u64::MAX, "only the last offset leaves no room for a batch");
            return report;
        }
        Err(error) => panic!("append at the recovered end {} failed: {error}", again.end_offset),
    }
    log.sync().expect("SimFs without injected failures syncs");
    log.close().expect("a healthy log closes");
    drop(log);
    let (mut log, reopened) = open_partition(&storage, clock);
    assert!(reopened.damaged.is_none(), "a cleanly closed log reopens healthy: {:?}", reopened.damaged);
    assert_eq!(reopened.end_offset, again.end_offset + 1);
    let third = check_opened(&mut log, &reopened);
    if second.complete {
        assert!(third.complete, "a log that read back whole still does after an append and a reopen");
        let (last, earlier) = third.batches.split_last().expect("the appended batch is there");
        assert_eq!(earlier, second.batches.as_slice(), "an append and a reopen keep every batch");
        assert_eq!(last.as_bytes(), appended[0].as_bytes());
    }
    report
}

/// The batches of a log read from its start, and whether the walk reached the visible end.
struct Walk {
    batches: Vec<RecordBatch>,
    complete: bool,
}

/// Checks an opened log against its report and its status, and walks it.
fn check_opened(log: &mut Log, report: &RecoveryReport) -> Walk {
    let reader = log.reader();
    assert!(report.start_offset <= report.end_offset, "{report:?}");
    assert_eq!(reader.start_offset(), report.start_offset);
    assert_eq!(reader.visible_end(), report.end_offset);
    match (&report.damaged, reader.status()) {
        (Some(damage), LogStatus::Damaged(status)) => {
            assert_eq!(&status, damage);
            assert_eq!(damage.offset, report.end_offset);
            let refused = log.append(&mut [new_batch()]);
            assert!(matches!(refused, Err(LogError::Damaged { .. })), "a damaged log refuses appends: {refused:?}");
        }
        (None, LogStatus::Open) => assert_eq!(log.end_offset(), report.end_offset),
        (damaged, status) => panic!("status {status:?} after a recovery that found damage {damaged:?}"),
    }
    let walk = walk(&reader);
    if !report.checkpoint_found {
        assert!(walk.complete, "without a checkpoint every segment was scanned, so every batch reads back");
    }
    walk
}

/// Reads the log from its start to its visible end, checking every slice and every batch in it.
fn walk(reader: &LogReader) -> Walk {
    let end = reader.visible_end();
    let mut offset = reader.start_offset();
    let mut batches = Vec::new();
    while offset < end {
        let slice = match reader.read(offset, READ_BYTES_MAX) {
            Ok(slice) => slice,
            // Only in data recovery trusted without a scan; the reader refuses to return it.
            Err(LogError::Corrupt { .. } | LogError::Inconsistent { .. }) => return Walk { batches, complete: false },
            Err(error) => panic!("read at {offset} below the visible end {end}: {error}"),
        };
        assert!(slice.batch_count > 0, "a read below the visible end returns a batch");
        assert_eq!(slice.first_offset, offset, "a read at a batch's base starts with that batch");
        let mut n_batches = 0;
        for batch in split_batches(slice.bytes.clone()) {
            let batch = batch.expect("the reader returns only batches that verify");
            assert_eq!(batch.base_offset(), offset, "offsets are dense and increasing");
            offset = batch.header().next_offset();
            let inside = reader.read(batch.last_offset(), 1).expect("a batch that read back reads back from inside");
            assert_eq!(inside.first_offset, batch.base_offset(), "a read inside a batch starts with that batch");
            n_batches += 1;
            batches.push(batch);
        }
        assert_eq!(n_batches, slice.batch_count);
        assert_eq!(offset, slice.next_offset);
        assert!(offset <= end, "no batch reaches past the visible end");
    }
    Walk { batches, complete: true }
}
