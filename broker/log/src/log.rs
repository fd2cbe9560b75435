//! [`PartitionLog`] and its file-backed implementation [`Log`]: append, sync, roll, retention, close.
//!
//! A `Log` is owned by one writer (the appender thread); readers use [`LogReader`] handles.
//! An append gathers its batches into one vectored write per segment (the batch bytes are never copied), a sync is one
//! `fdatasync` of the active segment followed by an unsynced rewrite of the checkpoint, and a roll makes the old
//! segment and its indexes durable before the new segment's files exist and are made durable in the directory.
//! Any failed fsync, and any failed write other than a full disk, stops the log for good: see [`LogError::is_fatal`].

use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ferry_protocol::RecordBatch;
use ferry_protocol::limits::BATCH_BYTES_MAX;

use crate::checkpoint::{Checkpoint, CheckpointFile, LogPoint};
use crate::config::{Clock, FsyncPolicy, LogConfig};
use crate::error::{Damage, LogError};
use crate::fs::{LogFile, OpenMode, Storage};
use crate::index::{IndexPlanner, SegmentIndex};
use crate::metrics::Recorder;
use crate::reader::{LogReader, LogStatus, ReadSlice, Shared};
use crate::recovery::{RecoveryReport, recover};
use crate::segment::{Segment, SegmentPaths};

/// The offsets assigned to one appended batch, both inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OffsetRange {
    /// Offset of the batch's first record.
    pub first: u64,
    /// Offset of the batch's last record.
    pub last: u64,
}

impl OffsetRange {
    /// The offset right after the range.
    pub fn next(&self) -> u64 {
        self.last + 1
    }
}

/// One partition's durable log. Methods may block on disk I/O: call them from the appender thread, never from an
/// async task. This is the seam replication will wrap later.
pub trait PartitionLog: Send {
    /// Appends batches, assigning offsets (rewriting each batch's base offset and checksum); returns their ranges.
    /// Not durable until [`PartitionLog::sync`] returns.
    ///
    /// On `DiskFull` the batches written to the active segment are rolled back and the log continues; batches of the
    /// same call already written to an earlier segment (only when the call is larger than `segment_bytes`) stay.
    fn append(&mut self, batches: &mut [RecordBatch]) -> Result<Vec<OffsetRange>, LogError>;
    /// Makes everything appended so far durable. An error here is fatal: no retry, no further appends.
    fn sync(&mut self) -> Result<(), LogError>;
    /// Reads whole batches starting with the one holding `from` (see [`LogReader::read`]).
    fn read(&self, from: u64, bytes_max: u32) -> Result<ReadSlice, LogError>;
    /// The base offset of the first visible batch whose largest timestamp is at least `timestamp`.
    fn read_by_timestamp(&self, timestamp: i64) -> Result<Option<u64>, LogError>;
    /// The first offset stored.
    fn start_offset(&self) -> u64;
    /// The next offset to assign.
    fn end_offset(&self) -> u64;
    /// Bytes written since the last successful sync.
    fn unsynced_bytes(&self) -> u64;
    /// The fsync policy, which decides when the visible end advances and what an acknowledgement means.
    fn fsync_policy(&self) -> FsyncPolicy;
    /// Deletes whole segments, oldest first, per the retention settings (never the active one); returns how many.
    fn apply_retention(&mut self) -> Result<usize, LogError>;
    /// Whether a roll happened since the last call (the appender then checks retention).
    fn take_rolled(&mut self) -> bool;
    /// Syncs everything and marks the checkpoint clean so the next open skips the scan. Appends fail afterwards.
    fn close(&mut self) -> Result<(), LogError>;
    /// A handle for reading from other threads.
    fn reader(&self) -> LogReader;
}

/// The active segment and what only the writer knows of it.
#[derive(Debug)]
struct Active {
    segment: Arc<Segment>,
    index_file: Arc<dyn LogFile>,
    time_file: Arc<dyn LogFile>,
    planner: IndexPlanner,
    len: u64,
    next_offset: u64,
    index_len: u64,
    time_len: u64,
    /// When the first batch went in (clock ms), for `segment_age`; `None` while empty.
    first_append_ms: Option<i64>,
}

impl Active {
    fn point(&self) -> LogPoint {
        LogPoint { segment_base: self.segment.base_offset, position: self.len, next_offset: self.next_offset }
    }
}

/// The partition log on a [`Storage`]: a directory of segments plus a checkpoint.
#[derive(Debug)]
pub struct Log {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    config: LogConfig,
    clock: Arc<dyn Clock>,
    shared: Arc<Shared>,
    /// `None` when damaged (no writer state is kept, nothing may be written).
    active: Option<Active>,
    checkpoint: CheckpointFile,
    recovery_point: u64,
    /// The last point made durable by a sync or roll.
    durable: LogPoint,
    damage: Option<Damage>,
    failed: Option<Arc<LogError>>,
    closed: bool,
    rolled: bool,
}

fn sync_failed(path: &Path, source: std::io::Error) -> LogError {
    LogError::SyncFailed { path: path.to_path_buf(), source }
}

impl Log {
    /// Opens (creating if needed) the partition log in `dir`, recovering it per [`crate::recovery`].
    ///
    /// A damaged log opens too, read-only: the report's `damaged` says where, and appends fail with
    /// [`LogError::Damaged`]. Errors are configuration or I/O errors.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: impl Into<PathBuf>,
        config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(Log, RecoveryReport), LogError> {
        config.validate()?;
        let dir = dir.into();
        storage.create_dir_all(&dir).map_err(|e| LogError::io("create directory", &dir, e))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            storage.sync_dir(parent).map_err(|source| sync_failed(parent, source))?;
        }
        let recorder = Recorder::new(&config.metric_labels);
        let recovered = recover(storage.as_ref(), &dir, config.index_interval_bytes, &recorder)?;
        let report = recovered.report.clone();
        let recovery_point = recovered.checkpoint.map_or(0, |cp| cp.recovery_point);
        let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(recovered.segments.len() + 1);
        let mut last_planner = None;
        for loaded in recovered.segments {
            let planner =
                IndexPlanner::resume(config.index_interval_bytes, &loaded.offsets, &loaded.times, loaded.max_timestamp);
            let index = SegmentIndex::new(loaded.offsets, loaded.times);
            segments.push(Arc::new(Segment::new(
                loaded.base_offset,
                loaded.paths,
                loaded.file,
                loaded.len,
                loaded.next_offset,
                loaded.max_timestamp,
                index,
            )));
            last_planner = Some(planner);
        }
        if let Some(damage) = report.damaged.clone() {
            recorder.metrics.damaged_partitions.increment(1.0);
            let shared = Arc::new(Shared::new(segments, damage.offset, LogStatus::Damaged(damage.clone()), recorder));
            let durable =
                LogPoint { segment_base: damage.segment_base, position: damage.position, next_offset: damage.offset };
            let log = Log {
                storage,
                dir,
                config,
                clock,
                shared,
                active: None,
                checkpoint: recovered.checkpoint_file,
                recovery_point,
                durable,
                damage: Some(damage),
                failed: None,
                closed: false,
                rolled: false,
            };
            return Ok((log, report));
        }
        let shared = Arc::new(Shared::new(Vec::new(), report.end_offset, LogStatus::Open, recorder));
        let mut log = Log {
            storage,
            dir,
            config,
            clock,
            shared,
            active: None,
            checkpoint: recovered.checkpoint_file,
            recovery_point,
            durable: LogPoint { segment_base: 0, position: 0, next_offset: 0 },
            damage: None,
            failed: None,
            closed: false,
            rolled: false,
        };
        let active = match (segments.last(), last_planner) {
            (Some(segment), Some(planner)) => log.reopen_active(Arc::clone(segment), planner)?,
            _ => {
                let active = log.create_segment(report.end_offset)?;
                segments.push(Arc::clone(&active.segment));
                active
            }
        };
        let point = active.point();
        log.active = Some(active);
        log.shared.publish(segments);
        log.recovery_point = point.segment_base;
        log.durable = point;
        // Before any write: the next crash must not take this open for a clean one, and the point is durable
        // (recovery fsynced every segment it scanned).
        log.checkpoint.write(Checkpoint { clean: false, recovery_point: point.segment_base, durable: point }, true)?;
        Ok((log, report))
    }

    /// Opens the index files of the last recovered segment for appending.
    fn reopen_active(&mut self, segment: Arc<Segment>, planner: IndexPlanner) -> Result<Active, LogError> {
        let paths = &segment.paths;
        let mut created = false;
        let mut open_index = |path: &PathBuf| -> Result<(Arc<dyn LogFile>, u64), LogError> {
            let file = match self.storage.open(path, OpenMode::Existing) {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    created = true;
                    self.storage.open(path, OpenMode::CreateNew).map_err(|e| LogError::io("create", path, e))?
                }
                Err(error) => return Err(LogError::io("open", path, error)),
            };
            let len = file.len().map_err(|e| LogError::io("stat", path, e))?;
            Ok((file, len))
        };
        let (index_file, index_len) = open_index(&paths.index)?;
        let (time_file, time_len) = open_index(&paths.time_index)?;
        if created {
            self.storage.sync_dir(&self.dir).map_err(|source| sync_failed(&self.dir, source))?;
        }
        let len = segment.written_len();
        let next_offset = segment.next_offset();
        let first_append_ms = (len > 0).then(|| self.clock.now_ms());
        Ok(Active { segment, index_file, time_file, planner, len, next_offset, index_len, time_len, first_append_ms })
    }

    /// Creates an empty segment's three files and makes them durable in the directory.
    fn create_segment(&mut self, base_offset: u64) -> Result<Active, LogError> {
        let paths = SegmentPaths::new(&self.dir, base_offset);
        let create =
            |path: &PathBuf| self.storage.open(path, OpenMode::CreateNew).map_err(|e| LogError::io("create", path, e));
        let file = create(&paths.log)?;
        let index_file = create(&paths.index)?;
        let time_file = create(&paths.time_index)?;
        self.storage.sync_dir(&self.dir).map_err(|source| sync_failed(&self.dir, source))?;
        let segment = Arc::new(Segment::new(base_offset, paths, file, 0, base_offset, None, SegmentIndex::default()));
        Ok(Active {
            segment,
            index_file,
            time_file,
            planner: IndexPlanner::new(self.config.index_interval_bytes),
            len: 0,
            next_offset: base_offset,
            index_len: 0,
            time_len: 0,
            first_append_ms: None,
        })
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The damage recovery found, if any.
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// Records a fatal error: the log accepts nothing more. Returns the error to report.
    fn fail(&mut self, error: LogError) -> LogError {
        if matches!(error, LogError::SyncFailed { .. }) {
            self.shared.recorder.fsync_failed();
        }
        tracing::error!(dir = %self.dir.display(), error = %error, source = ?std::error::Error::source(&error),
            "partition log stopped by a fatal error");
        let cause = Arc::new(error);
        self.failed = Some(Arc::clone(&cause));
        self.shared.set_status(LogStatus::Failed(Arc::clone(&cause)));
        LogError::Failed { cause }
    }

    fn check_writable(&self) -> Result<(), LogError> {
        if let Some(cause) = &self.failed {
            return Err(LogError::Failed { cause: Arc::clone(cause) });
        }
        if let Some(damage) = &self.damage {
            return Err(LogError::Damaged { damage: damage.clone() });
        }
        if self.closed {
            return Err(LogError::Closed);
        }
        Ok(())
    }

    fn active(&mut self) -> &mut Active {
        self.active.as_mut().expect("a writable log has an active segment")
    }

    /// Whether `n_bytes` more bytes, whose last offset is `delta` past the active segment's next offset, would overflow
    /// the active segment (its size, or the `u32` relative offsets of its index).
    fn exceeds(&self, n_bytes: u64, delta: u64) -> bool {
        let active = self.active.as_ref().expect("a writable log has an active segment");
        let full = active.len.saturating_add(n_bytes) > self.config.segment_bytes;
        let last_relative = (active.next_offset - active.segment.base_offset).saturating_add(delta);
        full || last_relative > u64::from(u32::MAX)
    }

    /// Whether the active segment is older than `segment_age` (counted from its first append in this process).
    fn is_old(&self, now_ms: i64) -> bool {
        let active = self.active.as_ref().expect("a writable log has an active segment");
        let age_ms = i64::try_from(self.config.segment_age.as_millis()).unwrap_or(i64::MAX);
        active.first_append_ms.is_some_and(|first| now_ms.saturating_sub(first) >= age_ms)
    }

    /// Seals the active segment (durable with its indexes) and starts a new one at the next offset.
    fn roll(&mut self) -> Result<(), LogError> {
        match self.roll_inner() {
            Ok(()) => Ok(()),
            Err(error) => Err(self.fail(error)),
        }
    }

    fn roll_inner(&mut self) -> Result<(), LogError> {
        self.sync_active()?;
        let active = self.active.as_ref().expect("a writable log has an active segment");
        for (file, path) in
            [(&active.index_file, &active.segment.paths.index), (&active.time_file, &active.segment.paths.time_index)]
        {
            file.sync_data().map_err(|source| sync_failed(path, source))?;
        }
        let new_base = active.next_offset;
        let new_active = self.create_segment(new_base)?;
        let point = new_active.point();
        self.checkpoint.write(Checkpoint { clean: false, recovery_point: new_base, durable: point }, true)?;
        self.recovery_point = new_base;
        self.durable = point;
        let mut segments: Vec<Arc<Segment>> = self.shared.snapshot().as_ref().clone();
        segments.push(Arc::clone(&new_active.segment));
        self.shared.publish(segments);
        self.active = Some(new_active);
        self.rolled = true;
        Ok(())
    }

    /// fsyncs the active segment's data if anything is unsynced and records the new durable point.
    fn sync_active(&mut self) -> Result<(), LogError> {
        let active = self.active.as_ref().expect("a writable log has an active segment");
        let point = active.point();
        if point == self.durable {
            return Ok(());
        }
        let started = Instant::now();
        active.segment.file.sync_data().map_err(|source| sync_failed(&active.segment.paths.log, source))?;
        self.shared.recorder.fsync_ok(started.elapsed());
        self.shared.recorder.unsynced_clear();
        self.durable = point;
        if self.config.fsync == FsyncPolicy::Always {
            self.shared.advance_visible_end(point.next_offset);
        }
        Ok(())
    }

    /// Writes one run of batches that fits the active segment: one vectored write, then the index entries.
    fn write_run(&mut self, batches: &mut [RecordBatch], ranges: &mut Vec<OffsetRange>) -> Result<(), LogError> {
        let policy = self.config.fsync;
        let now_ms = self.clock.now_ms();
        let active = self.active();
        let base = active.segment.base_offset;
        let mut planner = active.planner.clone();
        let mut next_offset = active.next_offset;
        let mut position = active.len;
        let mut offset_entries = Vec::new();
        let mut time_entries = Vec::new();
        let mut run_ranges = Vec::with_capacity(batches.len());
        for batch in batches.iter_mut() {
            batch.rebase(next_offset).map_err(|_| LogError::OffsetOverflow)?;
            let header = *batch.header();
            // Our own bookkeeping: offsets are contiguous and the segment's relative offsets fit (checked by must_roll).
            assert_eq!(header.base_offset, next_offset, "rebase assigned a different offset");
            let relative_offset = u32::try_from(header.base_offset - base).expect("must_roll keeps offsets in u32");
            let (offset_entry, time_entry) = planner.on_batch(relative_offset, position, header.max_timestamp);
            offset_entries.extend(offset_entry);
            time_entries.extend(time_entry);
            run_ranges.push(OffsetRange { first: header.base_offset, last: header.last_offset() });
            next_offset = header.next_offset();
            position += u64::from(header.batch_length);
        }
        let slices: Vec<IoSlice<'_>> = batches.iter().map(|batch| IoSlice::new(batch.as_bytes())).collect();
        let before = (active.len, active.index_len, active.time_len);
        let mut result = active.segment.file.append(&slices).map_err(|e| LogError::write(&active.segment.paths.log, e));
        let offset_bytes: Vec<u8> = offset_entries.iter().flat_map(|e| e.encode()).collect();
        let time_bytes: Vec<u8> = time_entries.iter().flat_map(|e| e.encode()).collect();
        if result.is_ok() && !offset_bytes.is_empty() {
            result = active
                .index_file
                .append(&[IoSlice::new(&offset_bytes)])
                .map_err(|e| LogError::write(&active.segment.paths.index, e));
        }
        if result.is_ok() && !time_bytes.is_empty() {
            result = active
                .time_file
                .append(&[IoSlice::new(&time_bytes)])
                .map_err(|e| LogError::write(&active.segment.paths.time_index, e));
        }
        if let Err(error) = result {
            return Err(self.roll_back_write(before, error));
        }
        let n_bytes = position - active.len;
        active.len = position;
        active.next_offset = next_offset;
        active.index_len += u64::try_from(offset_bytes.len()).unwrap_or(u64::MAX);
        active.time_len += u64::try_from(time_bytes.len()).unwrap_or(u64::MAX);
        active.planner = planner;
        if active.first_append_ms.is_none() {
            active.first_append_ms = Some(now_ms);
        }
        let active = self.active();
        for entry in &offset_entries {
            active.segment.index.push(Some(*entry), None);
        }
        for entry in &time_entries {
            active.segment.index.push(None, Some(*entry));
        }
        active.segment.set_written(active.len, active.next_offset, active.planner.max_timestamp());
        let n_batches = u64::try_from(batches.len()).unwrap_or(u64::MAX);
        self.shared.recorder.appended(n_bytes, n_batches);
        self.shared.recorder.unsynced_add(n_bytes);
        if policy != FsyncPolicy::Always {
            self.shared.advance_visible_end(next_offset);
        }
        ranges.extend(run_ranges);
        Ok(())
    }

    /// Undoes a failed write by truncating the three files back. A full disk leaves the log usable;
    /// anything else (or a failed truncate) stops it.
    fn roll_back_write(&mut self, before: (u64, u64, u64), error: LogError) -> LogError {
        let active = self.active();
        let (len, index_len, time_len) = before;
        let truncations = [
            (&active.segment.file, len, &active.segment.paths.log),
            (&active.index_file, index_len, &active.segment.paths.index),
            (&active.time_file, time_len, &active.segment.paths.time_index),
        ];
        let mut failed_truncate = None;
        for (file, len, path) in truncations {
            if let Err(source) = file.truncate(len) {
                failed_truncate = Some(LogError::io("truncate", path.clone(), source));
                break;
            }
        }
        if let Some(truncate_error) = failed_truncate {
            tracing::error!(dir = %self.dir.display(), %error, "could not roll back a failed write");
            return self.fail(truncate_error);
        }
        if matches!(error, LogError::DiskFull { .. }) {
            tracing::warn!(dir = %self.dir.display(), %error, "append failed: disk full; rolled back, log continues");
            error
        } else {
            self.fail(error)
        }
    }
}

impl PartitionLog for Log {
    fn append(&mut self, batches: &mut [RecordBatch]) -> Result<Vec<OffsetRange>, LogError> {
        self.check_writable()?;
        let mut total_bytes: u64 = 0;
        let mut total_delta: u64 = 0;
        for (idx, batch) in batches.iter().enumerate() {
            if batch.len_bytes() > BATCH_BYTES_MAX {
                return Err(LogError::BatchTooLarge {
                    len: u64::from(batch.len_bytes()),
                    max: u64::from(BATCH_BYTES_MAX),
                });
            }
            total_bytes += u64::from(batch.len_bytes());
            total_delta += u64::from(batch.header().last_offset_delta) + u64::from(idx > 0);
        }
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let now_ms = self.clock.now_ms();
        let active_len = self.active().len;
        // Keep one call in one segment when it fits in a fresh one (as Kafka does), so a call is all-or-nothing.
        let fits_fresh = total_bytes <= self.config.segment_bytes;
        if active_len > 0 && (self.is_old(now_ms) || (fits_fresh && self.exceeds(total_bytes, total_delta))) {
            self.roll()?;
        }
        let mut ranges = Vec::with_capacity(batches.len());
        let mut run_start = 0;
        while run_start < batches.len() {
            let active_len = self.active().len;
            let (mut run_bytes, mut run_delta) = (0u64, 0u64);
            let mut run_end = run_start;
            while run_end < batches.len() {
                let batch = &batches[run_end];
                let bytes = run_bytes + u64::from(batch.len_bytes());
                let delta = run_delta + u64::from(batch.header().last_offset_delta) + u64::from(run_end > run_start);
                if self.exceeds(bytes, delta) {
                    if run_end == run_start && active_len == 0 {
                        run_end += 1; // A batch larger than a segment goes alone in a fresh one.
                    }
                    break;
                }
                (run_bytes, run_delta) = (bytes, delta);
                run_end += 1;
            }
            if run_end == run_start {
                self.roll()?;
                continue;
            }
            self.write_run(&mut batches[run_start..run_end], &mut ranges)?;
            run_start = run_end;
        }
        Ok(ranges)
    }

    fn sync(&mut self) -> Result<(), LogError> {
        if let Some(cause) = &self.failed {
            return Err(LogError::Failed { cause: Arc::clone(cause) });
        }
        if self.active.is_none() || self.closed {
            return Ok(()); // Damaged or closed: nothing was written.
        }
        let before = self.durable;
        if let Err(error) = self.sync_active() {
            return Err(self.fail(error));
        }
        if self.durable != before {
            let checkpoint = Checkpoint { clean: false, recovery_point: self.recovery_point, durable: self.durable };
            if let Err(error) = self.checkpoint.write(checkpoint, false) {
                return Err(self.fail(error));
            }
        }
        Ok(())
    }

    fn read(&self, from: u64, bytes_max: u32) -> Result<ReadSlice, LogError> {
        self.reader().read(from, bytes_max)
    }

    fn read_by_timestamp(&self, timestamp: i64) -> Result<Option<u64>, LogError> {
        self.reader().read_by_timestamp(timestamp)
    }

    fn start_offset(&self) -> u64 {
        self.reader().start_offset()
    }

    fn end_offset(&self) -> u64 {
        match &self.active {
            Some(active) => active.next_offset,
            None => self.durable.next_offset,
        }
    }

    fn unsynced_bytes(&self) -> u64 {
        match &self.active {
            Some(active) if active.segment.base_offset == self.durable.segment_base => {
                active.len - self.durable.position
            }
            Some(active) => active.len,
            None => 0,
        }
    }

    fn fsync_policy(&self) -> FsyncPolicy {
        self.config.fsync
    }

    fn apply_retention(&mut self) -> Result<usize, LogError> {
        if self.check_writable().is_err() {
            return Ok(0); // Never delete evidence of a damaged or failed log.
        }
        let now_ms = self.clock.now_ms();
        let mut removed = 0;
        loop {
            let segments = self.shared.snapshot();
            let [oldest, rest @ ..] = segments.as_slice() else { break };
            if rest.is_empty() {
                break; // Never the active segment.
            }
            let total: u64 = segments.iter().map(|s| s.written_len()).sum();
            let by_size = self.config.retention_bytes.is_some_and(|limit| total - oldest.written_len() >= limit);
            let by_age = self.config.retention_age.is_some_and(|age| {
                let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                oldest.max_timestamp().is_some_and(|newest| newest < now_ms.saturating_sub(age_ms))
            });
            if !(by_size || by_age) {
                break;
            }
            // Readers holding the old snapshot keep reading through their handle; new readers no longer see it.
            self.shared.publish(rest.to_vec());
            for path in [&oldest.paths.log, &oldest.paths.index, &oldest.paths.time_index] {
                match self.storage.remove(path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(LogError::io("remove", path, error)),
                }
            }
            // One directory sync per segment: the durable directory always holds a contiguous suffix of segments.
            if let Err(source) = self.storage.sync_dir(&self.dir) {
                return Err(self.fail(sync_failed(&self.dir.clone(), source)));
            }
            tracing::info!(dir = %self.dir.display(), base_offset = oldest.base_offset, by_size, by_age, "segment deleted by retention");
            removed += 1;
        }
        Ok(removed)
    }

    fn take_rolled(&mut self) -> bool {
        std::mem::take(&mut self.rolled)
    }

    fn close(&mut self) -> Result<(), LogError> {
        if let Some(cause) = &self.failed {
            return Err(LogError::Failed { cause: Arc::clone(cause) });
        }
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        if self.active.is_none() {
            return Ok(()); // Damaged: leave the checkpoint as recovery found it.
        }
        let result = (|| {
            self.sync_active()?;
            let active = self.active.as_ref().expect("checked above");
            for (file, path) in [
                (&active.index_file, &active.segment.paths.index),
                (&active.time_file, &active.segment.paths.time_index),
            ] {
                file.sync_data().map_err(|source| sync_failed(path, source))?;
            }
            let checkpoint = Checkpoint { clean: true, recovery_point: self.recovery_point, durable: self.durable };
            self.checkpoint.write(checkpoint, true)
        })();
        match result {
            Ok(()) => {
                self.shared.set_status(LogStatus::Closed);
                Ok(())
            }
            Err(error) => Err(self.fail(error)),
        }
    }

    fn reader(&self) -> LogReader {
        LogReader::new(Arc::clone(&self.shared))
    }
}

impl Drop for Log {
    /// Dropping syncs nothing (only `close` makes the log clean); it only settles the gauges.
    fn drop(&mut self) {
        if self.damage.is_some() {
            self.shared.recorder.metrics.damaged_partitions.decrement(1.0);
        }
        self.shared.recorder.unsynced_clear();
    }
}
