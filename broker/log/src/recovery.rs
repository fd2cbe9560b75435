//! Opening a partition directory: find the segments, verify what may be torn, truncate torn tails, detect damage.
//!
//! # Rules, in order
//!
//! 1. Remove temporary files (`*.tmp`) and index files whose segment (`.log`) is missing, then sync the directory.
//! 2. Read the checkpoint; an invalid one is treated as absent.
//! 3. Clean path: the checkpoint says `clean` and the last segment is exactly as long as its durable position. No
//!    segment is scanned: each segment's index files are validated structurally and the batches after the last index
//!    entry are verified (this finds the segment's next offset and largest timestamp); an index that fails is rebuilt
//!    by scanning its segment. If the last segment's next offset differs from the checkpoint's, the unclean path runs.
//! 4. Unclean path: segments before the recovery point (fsynced whole at their roll) are loaded as on the clean path;
//!    every segment from the recovery point on (all of them without a checkpoint) is scanned: every batch's length,
//!    magic, header and CRC-32C are verified and its base offset must be the expected next offset (the segment's base
//!    for its first batch). Their indexes are rebuilt as they are scanned, and their data is fsynced.
//! 5. At the first invalid batch, at segment S and position P: if a later segment exists (S was fsynced whole before
//!    it was created) or (S, P) lies below the checkpoint's durable end, the partition is DAMAGED: nothing is truncated
//!    or deleted, reads below P work, appends fail. Otherwise it is a torn tail: S is truncated at P and fsynced, the
//!    bytes are counted (metric and report) and a warning is logged.
//! 6. Also damaged: a segment whose base is not the previous segment's next offset (a gap or an overlap), and a log
//!    that ends below the checkpoint's durable end (a segment is missing or was cut short).
//! 7. I/O errors are errors: recovery never "tolerates" a failed read by truncating.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::{Checkpoint, CheckpointFile, LogPoint};
use crate::error::{Damage, LogError};
use crate::fs::{LogFile, OpenMode, Storage, read_up_to};
use crate::index::{IndexPlanner, OffsetEntry, TimeEntry, decode_offset_index, decode_time_index};
use crate::metrics::Recorder;
use crate::segment::{INDEX_SUFFIX, LOG_SUFFIX, ScanItem, Scanner, SegmentPaths, TEMP_SUFFIX, TIME_INDEX_SUFFIX};

/// What opening a partition found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Whether the clean path was taken (no segment scanned).
    pub clean: bool,
    /// Whether a valid checkpoint was found.
    pub checkpoint_found: bool,
    /// Segments found.
    pub segments: usize,
    /// Bytes of segment data verified batch by batch.
    pub scanned_bytes: u64,
    /// Batches verified.
    pub scanned_batches: u64,
    /// Bytes cut off torn tails.
    pub truncated_bytes: u64,
    /// Index files rebuilt (an offset index and its time index count once).
    pub rebuilt_indexes: u32,
    /// Damage found, if any: the partition then serves reads below it and refuses appends.
    pub damaged: Option<Damage>,
    /// The first offset stored.
    pub start_offset: u64,
    /// The next offset to assign.
    pub end_offset: u64,
    /// How long recovery took.
    pub duration: Duration,
}

/// A segment as recovery leaves it.
#[derive(Debug)]
pub(crate) struct LoadedSegment {
    pub base_offset: u64,
    pub paths: SegmentPaths,
    pub file: Arc<dyn LogFile>,
    /// Valid bytes: the file length, or the position of the damage in a damaged segment.
    pub len: u64,
    pub next_offset: u64,
    pub max_timestamp: Option<i64>,
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
}

/// Everything [`recover`] hands to the log.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub segments: Vec<LoadedSegment>,
    pub checkpoint_file: CheckpointFile,
    pub checkpoint: Option<Checkpoint>,
    pub report: RecoveryReport,
}

/// A segment's content as a scan or an index check found it.
struct SegmentLoad {
    len: u64,
    next_offset: u64,
    max_timestamp: Option<i64>,
    offsets: Vec<OffsetEntry>,
    times: Vec<TimeEntry>,
    /// Position and description of the first invalid batch.
    invalid: Option<(u64, String)>,
}

struct Recovery<'a> {
    storage: &'a dyn Storage,
    index_interval_bytes: u32,
    recorder: &'a Recorder,
    report: RecoveryReport,
    /// Whether a file was created (a rebuilt index that was missing), so the directory needs a sync.
    created_files: bool,
}

/// Opens the partition in `dir` (which must exist) and applies the rules of this module.
pub(crate) fn recover(
    storage: &dyn Storage,
    dir: &Path,
    index_interval_bytes: u32,
    recorder: &Recorder,
) -> Result<Recovered, LogError> {
    let started = Instant::now();
    let bases = clean_directory(storage, dir)?;
    let (checkpoint_file, checkpoint) = CheckpointFile::open(storage, dir)?;
    let checkpoint = match checkpoint {
        Ok(checkpoint) => Some(checkpoint),
        Err("missing") => None,
        Err(reason) => {
            tracing::warn!(dir = %dir.display(), reason, "invalid checkpoint ignored; scanning the whole log");
            None
        }
    };
    let mut recovery = Recovery {
        storage,
        index_interval_bytes,
        recorder,
        report: RecoveryReport {
            clean: false,
            checkpoint_found: checkpoint.is_some(),
            segments: bases.len(),
            scanned_bytes: 0,
            scanned_batches: 0,
            truncated_bytes: 0,
            rebuilt_indexes: 0,
            damaged: None,
            start_offset: 0,
            end_offset: 0,
            duration: Duration::ZERO,
        },
        created_files: false,
    };
    let mut segments = Vec::with_capacity(bases.len());
    for base in &bases {
        let paths = SegmentPaths::new(dir, *base);
        let file = storage.open(&paths.log, OpenMode::Existing).map_err(|e| LogError::io("open", &paths.log, e))?;
        let len = file.len().map_err(|e| LogError::io("stat", &paths.log, e))?;
        segments.push((*base, paths, file, len));
    }
    let clean = match (&checkpoint, segments.last()) {
        (Some(cp), Some((base, _, _, len))) => {
            cp.clean && *base == cp.durable.segment_base && *len == cp.durable.position
        }
        _ => false,
    };
    let mut loaded = if clean { recovery.load_all(&segments, None, checkpoint)? } else { None };
    if loaded.is_some() {
        recovery.report.clean = true;
    } else {
        // Without a checkpoint everything is scanned; with one, from the last segment at or below its recovery point.
        let scan_from = checkpoint.map_or(0, |cp| {
            segments.iter().map(|(base, ..)| *base).filter(|base| *base <= cp.recovery_point).max().unwrap_or(0)
        });
        loaded = recovery.load_all(&segments, Some(scan_from), checkpoint)?;
    }
    let loaded = loaded.expect("the unclean path always yields a result");
    if recovery.created_files {
        storage.sync_dir(dir).map_err(|source| LogError::SyncFailed { path: dir.to_path_buf(), source })?;
    }
    let mut report = recovery.report;
    report.start_offset = loaded.first().map_or(0, |s| s.base_offset);
    report.end_offset = match (&report.damaged, loaded.last()) {
        (Some(damage), _) => damage.offset,
        (None, Some(last)) => last.next_offset,
        (None, None) => 0,
    };
    report.duration = started.elapsed();
    if let Some(damage) = &report.damaged {
        tracing::error!(dir = %dir.display(), %damage, "partition damaged: appends refused, reads served below the damage");
    }
    tracing::info!(dir = %dir.display(), ?report, "partition recovered");
    Ok(Recovered { segments: loaded, checkpoint_file, checkpoint, report })
}

/// Removes temporary and orphaned index files; returns the base offsets of the segments, in order.
fn clean_directory(storage: &dyn Storage, dir: &Path) -> Result<Vec<u64>, LogError> {
    let names = storage.list(dir).map_err(|e| LogError::io("list", dir, e))?;
    let bases: BTreeSet<u64> =
        names.iter().filter_map(|name| crate::segment::parse_file_name(name, LOG_SUFFIX)).collect();
    let mut removed = false;
    for name in &names {
        let orphan_index = [INDEX_SUFFIX, TIME_INDEX_SUFFIX]
            .iter()
            .any(|suffix| crate::segment::parse_file_name(name, suffix).is_some_and(|base| !bases.contains(&base)));
        if name.ends_with(TEMP_SUFFIX) || orphan_index {
            let path = dir.join(name);
            tracing::warn!(path = %path.display(), "removing leftover file");
            storage.remove(&path).map_err(|e| LogError::io("remove", &path, e))?;
            removed = true;
        }
    }
    if removed {
        storage.sync_dir(dir).map_err(|source| LogError::SyncFailed { path: dir.to_path_buf(), source })?;
    }
    Ok(bases.into_iter().collect())
}

fn below(point: &LogPoint, bound: &LogPoint) -> bool {
    (point.segment_base, point.position) < (bound.segment_base, bound.position)
}

impl Recovery<'_> {
    /// Loads every segment. `scan_from: None` is the clean path: it returns `None` when the result contradicts the
    /// checkpoint, so the caller falls back to scanning.
    fn load_all(
        &mut self,
        segments: &[(u64, SegmentPaths, Arc<dyn LogFile>, u64)],
        scan_from: Option<u64>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Option<Vec<LoadedSegment>>, LogError> {
        let durable_end = checkpoint.map(|cp| cp.durable);
        let mut loaded: Vec<LoadedSegment> = Vec::with_capacity(segments.len());
        let n_segments = segments.len();
        for (idx, (base, paths, file, len)) in segments.iter().enumerate() {
            if let Some(previous) = loaded.last()
                && previous.next_offset != *base
            {
                let reason =
                    format!("segment starts at offset {base} but the previous one ends at {}", previous.next_offset);
                self.damage(*base, 0, previous.next_offset, reason);
                return Ok(Some(loaded));
            }
            let full_scan = scan_from.is_some_and(|from| *base >= from);
            let load = if full_scan {
                self.scan_segment(*base, paths, file.as_ref(), *len)?
            } else {
                self.load_with_index(*base, paths, file.as_ref(), *len)?
            };
            let mut segment = LoadedSegment {
                base_offset: *base,
                paths: paths.clone(),
                file: Arc::clone(file),
                len: load.len,
                next_offset: load.next_offset,
                max_timestamp: load.max_timestamp,
                offsets: load.offsets,
                times: load.times,
            };
            if let Some((position, reason)) = load.invalid {
                if scan_from.is_none() {
                    // Clean path: let the scan decide, with the full rules.
                    return Ok(None);
                }
                let point = LogPoint { segment_base: *base, position, next_offset: load.next_offset };
                let is_last = idx + 1 == n_segments;
                if !is_last || durable_end.is_some_and(|durable| below(&point, &durable)) {
                    self.recorder.checksum_failure();
                    self.damage(*base, position, load.next_offset, reason);
                    segment.len = position;
                    loaded.push(segment);
                    return Ok(Some(loaded));
                }
                let truncated = *len - position;
                tracing::warn!(
                    path = %paths.log.display(), position, truncated_bytes = truncated, reason,
                    "truncating torn tail"
                );
                file.truncate(position).map_err(|e| LogError::io("truncate", &paths.log, e))?;
                file.sync_data().map_err(|source| LogError::SyncFailed { path: paths.log.clone(), source })?;
                self.report.truncated_bytes += truncated;
                self.recorder.metrics.recovery_truncated_bytes.increment(truncated);
                segment.len = position;
            }
            loaded.push(segment);
        }
        if let (Some(durable), Some(last)) = (durable_end, loaded.last()) {
            let end = LogPoint { segment_base: last.base_offset, position: last.len, next_offset: last.next_offset };
            if scan_from.is_none() && end != durable {
                return Ok(None);
            }
            if below(&end, &durable) || end.next_offset < durable.next_offset {
                let reason = format!(
                    "log ends at segment {} position {} (offset {}), below the durable end at segment {} position {} \
                     (offset {})",
                    end.segment_base,
                    end.position,
                    end.next_offset,
                    durable.segment_base,
                    durable.position,
                    durable.next_offset
                );
                self.damage(end.segment_base, end.position, end.next_offset, reason);
            }
        } else if let Some(durable) = durable_end
            && durable.next_offset > 0
        {
            let reason = format!("no segment left, but offsets up to {} were durable", durable.next_offset);
            self.damage(durable.segment_base, 0, 0, reason);
        }
        Ok(Some(loaded))
    }

    fn damage(&mut self, segment_base: u64, position: u64, offset: u64, reason: String) {
        self.report.damaged = Some(Damage { segment_base, position, offset, reason });
    }

    /// Verifies every batch of a segment, rebuilding its index files; stops at the first invalid batch.
    fn scan_segment(
        &mut self,
        base: u64,
        paths: &SegmentPaths,
        file: &dyn LogFile,
        len: u64,
    ) -> Result<SegmentLoad, LogError> {
        let mut scanner = Scanner::new(file, &paths.log, len, 0);
        let mut planner = IndexPlanner::new(self.index_interval_bytes);
        let mut load = SegmentLoad {
            len,
            next_offset: base,
            max_timestamp: None,
            offsets: Vec::new(),
            times: Vec::new(),
            invalid: None,
        };
        loop {
            let position = scanner.position();
            match scanner.next_item()? {
                ScanItem::End => break,
                ScanItem::Invalid(reason) => {
                    load.invalid = Some((position, reason));
                    break;
                }
                ScanItem::Batch(batch) => {
                    let header = batch.header();
                    if header.base_offset != load.next_offset {
                        let reason = format!(
                            "batch has base offset {} where {} was expected",
                            header.base_offset, load.next_offset
                        );
                        load.invalid = Some((position, reason));
                        break;
                    }
                    let Ok(relative_offset) = u32::try_from(header.base_offset - base) else {
                        load.invalid = Some((position, "batch offset too far from the segment base".to_owned()));
                        break;
                    };
                    let (offset_entry, time_entry) = planner.on_batch(relative_offset, position, header.max_timestamp);
                    load.offsets.extend(offset_entry);
                    load.times.extend(time_entry);
                    load.next_offset = header.next_offset();
                    self.report.scanned_batches += 1;
                    self.report.scanned_bytes += u64::from(batch.len_bytes());
                }
            }
        }
        load.max_timestamp = planner.max_timestamp();
        self.write_indexes(paths, &load.offsets, &load.times)?;
        // What recovery accepts becomes the durable end: make sure it is on disk (it may only be in the page cache).
        file.sync_data().map_err(|source| LogError::SyncFailed { path: paths.log.clone(), source })?;
        Ok(load)
    }

    /// Loads a segment trusting its index files after checking them, verifying only the batches after the last entry.
    /// Falls back to a full scan if an index is missing, invalid, or contradicted by the data.
    fn load_with_index(
        &mut self,
        base: u64,
        paths: &SegmentPaths,
        file: &dyn LogFile,
        len: u64,
    ) -> Result<SegmentLoad, LogError> {
        match self.check_indexes(base, paths, file, len)? {
            Ok(load) => Ok(load),
            Err(reason) => {
                tracing::warn!(path = %paths.index.display(), reason, "rebuilding index");
                self.report.rebuilt_indexes += 1;
                self.recorder.metrics.index_rebuilds.increment(1);
                self.scan_segment(base, paths, file, len)
            }
        }
    }

    fn read_index_file(&self, path: &Path) -> Result<Option<bytes::Bytes>, LogError> {
        let file = match self.storage.open(path, OpenMode::Existing) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(LogError::io("open", path, error)),
        };
        let len = file.len().map_err(|e| LogError::io("stat", path, e))?;
        let len =
            usize::try_from(len).map_err(|_| LogError::io("read", path, std::io::Error::other("index too large")))?;
        let bytes = read_up_to(file.as_ref(), 0, len).map_err(|e| LogError::io("read", path, e))?;
        Ok(Some(bytes))
    }

    /// `Ok(Err(reason))` when the indexes cannot be trusted.
    fn check_indexes(
        &mut self,
        base: u64,
        paths: &SegmentPaths,
        file: &dyn LogFile,
        len: u64,
    ) -> Result<Result<SegmentLoad, &'static str>, LogError> {
        let Some(offset_bytes) = self.read_index_file(&paths.index)? else { return Ok(Err("offset index missing")) };
        let Some(time_bytes) = self.read_index_file(&paths.time_index)? else { return Ok(Err("time index missing")) };
        let offsets = match decode_offset_index(&offset_bytes, len) {
            Ok(offsets) => offsets,
            Err(reason) => return Ok(Err(reason)),
        };
        let times = match decode_time_index(&time_bytes, &offsets) {
            Ok(times) => times,
            Err(reason) => return Ok(Err(reason)),
        };
        if !offsets.is_empty() && times.is_empty() {
            // The first offset entry always gets a time entry: the running maximum starts above "none".
            return Ok(Err("time index is missing entries"));
        }
        // Verify the batches after the last entry: they give the segment's end and largest timestamp.
        let (start_position, mut next_offset) =
            offsets.last().map_or((0, base), |e| (u64::from(e.position), base + u64::from(e.relative_offset)));
        let mut planner =
            IndexPlanner::resume(self.index_interval_bytes, &offsets, &times, times.last().map(|t| t.max_timestamp));
        let mut scanner = Scanner::new(file, &paths.log, len, start_position);
        loop {
            let position = scanner.position();
            match scanner.next_item()? {
                ScanItem::End => break,
                ScanItem::Invalid(_) => return Ok(Err("batches after the last index entry do not verify")),
                ScanItem::Batch(batch) => {
                    let header = batch.header();
                    if header.base_offset != next_offset {
                        return Ok(Err("index entry does not point at the batch it names"));
                    }
                    let Ok(relative_offset) = u32::try_from(header.base_offset - base) else {
                        return Ok(Err("batch offset too far from the segment base"));
                    };
                    let (offset_entry, time_entry) = planner.on_batch(relative_offset, position, header.max_timestamp);
                    if position != start_position && (offset_entry.is_some() || time_entry.is_some()) {
                        return Ok(Err("index is missing entries"));
                    }
                    next_offset = header.next_offset();
                }
            }
        }
        Ok(Ok(SegmentLoad { len, next_offset, max_timestamp: planner.max_timestamp(), offsets, times, invalid: None }))
    }

    /// Rewrites a segment's index files with `offsets` and `times`, and fsyncs them (rebuilds are rare).
    fn write_indexes(
        &mut self,
        paths: &SegmentPaths,
        offsets: &[OffsetEntry],
        times: &[TimeEntry],
    ) -> Result<(), LogError> {
        let offset_bytes: Vec<u8> = offsets.iter().flat_map(|e| e.encode()).collect();
        let time_bytes: Vec<u8> = times.iter().flat_map(|e| e.encode()).collect();
        for (path, bytes) in [(&paths.index, offset_bytes), (&paths.time_index, time_bytes)] {
            self.write_whole(path, &bytes)?;
        }
        Ok(())
    }

    fn write_whole(&mut self, path: &PathBuf, bytes: &[u8]) -> Result<(), LogError> {
        let file = match self.storage.open(path, OpenMode::Existing) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                self.created_files = true;
                self.storage.open(path, OpenMode::CreateNew).map_err(|e| LogError::io("create", path, e))?
            }
            Err(error) => return Err(LogError::io("open", path, error)),
        };
        file.truncate(0).map_err(|e| LogError::io("truncate", path, e))?;
        file.append(&[std::io::IoSlice::new(bytes)]).map_err(|e| LogError::write(path, e))?;
        file.sync_data().map_err(|source| LogError::SyncFailed { path: path.clone(), source })?;
        Ok(())
    }
}
