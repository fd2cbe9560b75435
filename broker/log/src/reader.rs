//! [`LogReader`]: reads by offset and by timestamp from any thread, without waiting for the writer.
//!
//! Readers see a snapshot of the segment list (an `Arc` swapped by the writer at roll and retention; the lock is held
//! only to clone or swap the `Arc`) and an atomic visible end (the high watermark): the offset up to which data may be
//! read. The writer publishes a new segment before it moves the visible end into it, and readers load the visible end
//! before the snapshot, so every visible offset is in the snapshot they hold. A segment deleted by retention stays
//! readable through the handle a snapshot holds. Every batch returned is verified (length, CRC-32C, and the offset
//! the reader expected there), so a reader never returns bytes of a batch other than the one asked for.
//!
//! Long polls: [`LogReader::wait_for_end_beyond`] waits (async, without a runtime of its own: a
//! `tokio::sync::Notify` the writer signals whenever the visible end moves) until the visible end passes an offset,
//! so a fetch wakes as soon as its data is readable instead of polling.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use ferry_protocol::RecordBatch;
use ferry_protocol::batch::{BATCH_HEADER_BYTES, BatchHeader};
use tokio::sync::Notify;

use crate::error::{Damage, LogError};
use crate::fs::read_up_to;
use crate::metrics::{LogStats, Recorder};
use crate::segment::Segment;

/// Whole batches read from the log, exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadSlice {
    /// The batches, back to back (split them with `ferry_protocol::batch::split_batches`). Empty at the visible end.
    pub bytes: Bytes,
    /// Base offset of the first batch: at or below the offset asked for (a batch is never split).
    pub first_offset: u64,
    /// The offset after the last batch returned: where the next read continues.
    pub next_offset: u64,
    /// Number of batches in `bytes`.
    pub batch_count: u32,
    /// The visible end when the read started.
    pub visible_end: u64,
}

/// What state a partition log is in, as readers see it.
#[derive(Debug, Clone)]
pub enum LogStatus {
    /// Accepting appends.
    Open,
    /// Recovery found damage: reads below it are served, appends refused.
    Damaged(Damage),
    /// A fatal error stopped the partition; reopen it from disk.
    Failed(Arc<LogError>),
    /// Closed cleanly.
    Closed,
}

/// State shared by the writer and every reader of one log.
#[derive(Debug)]
pub(crate) struct Shared {
    segments: RwLock<Arc<Vec<Arc<Segment>>>>,
    visible_end: AtomicU64,
    /// Signalled (to every waiter) each time the visible end moves forward.
    end_advanced: Notify,
    status: Mutex<LogStatus>,
    pub recorder: Recorder,
}

impl Shared {
    pub fn new(segments: Vec<Arc<Segment>>, visible_end: u64, status: LogStatus, recorder: Recorder) -> Shared {
        Shared {
            segments: RwLock::new(Arc::new(segments)),
            visible_end: AtomicU64::new(visible_end),
            end_advanced: Notify::new(),
            status: Mutex::new(status),
            recorder,
        }
    }

    pub fn snapshot(&self) -> Arc<Vec<Arc<Segment>>> {
        Arc::clone(&self.segments.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn publish(&self, segments: Vec<Arc<Segment>>) {
        *self.segments.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(segments);
    }

    pub fn visible_end(&self) -> u64 {
        self.visible_end.load(Ordering::Acquire)
    }

    /// Moves the visible end forward (never back) and wakes the readers waiting for it.
    pub fn advance_visible_end(&self, end: u64) {
        let previous = self.visible_end.fetch_max(end, Ordering::AcqRel);
        if end > previous {
            self.end_advanced.notify_waiters();
        }
    }

    pub fn status(&self) -> LogStatus {
        self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn set_status(&self, status: LogStatus) {
        *self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }
}

/// A cheap, cloneable handle for reading one partition log from any thread (fetch handlers).
///
/// Its methods block on file reads: call them from a blocking context (`spawn_blocking` or a dedicated thread).
#[derive(Debug, Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogReader {
    pub(crate) fn new(shared: Arc<Shared>) -> LogReader {
        LogReader { shared }
    }

    /// The first offset stored.
    pub fn start_offset(&self) -> u64 {
        let end = self.shared.visible_end();
        self.shared.snapshot().first().map_or(end, |segment| segment.base_offset)
    }

    /// The visible end (high watermark): offsets below it may be read.
    pub fn visible_end(&self) -> u64 {
        self.shared.visible_end()
    }

    /// The log's state.
    pub fn status(&self) -> LogStatus {
        self.shared.status()
    }

    /// Waits until the visible end is beyond `offset` (returns at once if it already is).
    ///
    /// This is what a long-poll fetch awaits: the writer wakes every waiter each time it moves the visible end, so the
    /// wait ends as soon as a record at `offset` becomes readable. It never ends on its own for a log that stopped
    /// growing (closed, damaged, failed): callers bound it with their own deadline. Cancel-safe (drop it any time).
    pub async fn wait_for_end_beyond(&self, offset: u64) {
        loop {
            let notified = self.shared.end_advanced.notified();
            tokio::pin!(notified);
            // Registered before the check, so an advance between the check and the await still wakes this waiter.
            notified.as_mut().enable();
            if self.shared.visible_end() > offset {
                return;
            }
            notified.await;
        }
    }

    /// Bytes of segment data written to this log's segments still on disk (retention removes whole segments).
    /// Cheap: one sum over the segment list, no I/O. For the partition-size gauge.
    pub fn size_bytes(&self) -> u64 {
        self.shared.snapshot().iter().map(|segment| segment.written_len()).sum()
    }

    /// Segments on disk (the active one included). Cheap: no I/O.
    pub fn segment_count(&self) -> usize {
        self.shared.snapshot().len()
    }

    /// The log's counters.
    pub fn stats(&self) -> &LogStats {
        &self.shared.recorder.stats
    }

    /// Reads whole batches starting with the one that holds offset `from`: at least one batch (even if larger than
    /// `bytes_max`), then more while the total stays within `bytes_max`, never past the visible end, and never across
    /// a segment boundary (`next_offset` says where to continue). Reading at the visible end returns no bytes.
    pub fn read(&self, from: u64, bytes_max: u32) -> Result<ReadSlice, LogError> {
        let end = self.shared.visible_end();
        let segments = self.shared.snapshot();
        let start = segments.first().map_or(end, |segment| segment.base_offset);
        if from < start || from > end {
            return Err(LogError::OffsetOutOfRange { requested: from, start, end });
        }
        let empty =
            ReadSlice { bytes: Bytes::new(), first_offset: from, next_offset: from, batch_count: 0, visible_end: end };
        if from == end {
            return Ok(empty);
        }
        let n_at_or_below = segments.partition_point(|segment| segment.base_offset <= from);
        let segment = &segments[n_at_or_below.checked_sub(1).expect("from >= start, the first segment's base")];
        let (position, first_len) = self.locate(segment, from)?;
        let limit = segment.written_len();
        let want = u64::from(bytes_max.max(first_len)).min(limit.saturating_sub(position));
        let want = usize::try_from(want).unwrap_or(usize::MAX);
        let bytes = read_up_to(segment.file.as_ref(), position, want)
            .map_err(|e| LogError::io("read", &segment.paths.log, e))?;
        let mut cursor = 0usize;
        let mut slice = empty;
        let mut expected: Option<u64> = None;
        while cursor < bytes.len() {
            let rest = bytes.slice(cursor..);
            let header = match BatchHeader::parse(&rest) {
                Ok(header) => header,
                Err(_) if rest.len() < BATCH_HEADER_BYTES => break,
                Err(source) => return self.fail_or_partial(slice, &bytes, segment, position, cursor, source.into()),
            };
            let len = usize::try_from(header.batch_length).unwrap_or(usize::MAX);
            if header.base_offset >= end || len > rest.len() {
                break;
            }
            if cursor > 0 && cursor + len > usize::try_from(bytes_max).unwrap_or(usize::MAX) {
                break;
            }
            let offset_ok = match expected {
                None => header.base_offset <= from && from <= header.last_offset(),
                Some(next) => header.base_offset == next,
            };
            if !offset_ok {
                let error = ReadError::Inconsistent("batch offset differs from the offset expected there");
                return self.fail_or_partial(slice, &bytes, segment, position, cursor, error);
            }
            if let Err(source) = RecordBatch::decode(rest.slice(..len)) {
                return self.fail_or_partial(slice, &bytes, segment, position, cursor, source.into());
            }
            if expected.is_none() {
                slice.first_offset = header.base_offset;
            }
            expected = Some(header.next_offset());
            slice.next_offset = header.next_offset();
            slice.batch_count += 1;
            cursor += len;
        }
        if slice.batch_count == 0 {
            let error = ReadError::Inconsistent("no complete batch where the index and visible end promise one");
            return self.fail_or_partial(slice, &bytes, segment, position, 0, error);
        }
        slice.bytes = bytes.slice(..cursor);
        Ok(slice)
    }

    /// The position and length of the batch holding `offset` within its segment: the index lookup, and the header
    /// reads that check it, a [`LogReader::read`] starts with. Not part of the crate's API: the `fetch`
    /// micro-benchmark (crate `ferry-bench`) times the lookup apart from the read with it.
    #[doc(hidden)]
    pub fn locate_offset(&self, offset: u64) -> Result<(u64, u32), LogError> {
        let end = self.shared.visible_end();
        let segments = self.shared.snapshot();
        let start = segments.first().map_or(end, |segment| segment.base_offset);
        if offset < start || offset >= end {
            return Err(LogError::OffsetOutOfRange { requested: offset, start, end });
        }
        let n_at_or_below = segments.partition_point(|segment| segment.base_offset <= offset);
        let segment = &segments[n_at_or_below.checked_sub(1).expect("offset >= start, the first segment's base")];
        self.locate(segment, offset)
    }

    /// Returns what was read before bad bytes, or the error if nothing was; counts the failure.
    fn fail_or_partial(
        &self,
        mut slice: ReadSlice,
        bytes: &Bytes,
        segment: &Segment,
        start: u64,
        cursor: usize,
        error: ReadError,
    ) -> Result<ReadSlice, LogError> {
        self.shared.recorder.checksum_failure();
        let position = start + u64::try_from(cursor).unwrap_or(u64::MAX);
        tracing::error!(path = %segment.paths.log.display(), position, ?error, "stored batch failed verification");
        if slice.batch_count > 0 {
            slice.bytes = bytes.slice(..cursor);
            return Ok(slice);
        }
        Err(match error {
            ReadError::Decode(source) => LogError::Corrupt { path: segment.paths.log.clone(), position, source },
            ReadError::Inconsistent(reason) => {
                LogError::Inconsistent { path: segment.paths.log.clone(), position, reason }
            }
        })
    }

    /// Reads and parses the header of the batch at `position` (no checksum: the caller verifies what it returns).
    fn header_at(&self, segment: &Segment, position: u64) -> Result<Option<BatchHeader>, LogError> {
        let bytes = read_up_to(segment.file.as_ref(), position, BATCH_HEADER_BYTES)
            .map_err(|e| LogError::io("read", &segment.paths.log, e))?;
        Ok(BatchHeader::parse(&bytes).ok())
    }

    /// Finds the position and length of the batch holding `offset` in `segment`: from the nearest index entry below,
    /// checked against the batch found there, then header by header.
    fn locate(&self, segment: &Segment, offset: u64) -> Result<(u64, u32), LogError> {
        let entry = segment.index.floor_offset(offset - segment.base_offset);
        let (mut position, mut expected) = entry.map_or((0, segment.base_offset), |entry| {
            (u64::from(entry.position), segment.base_offset + u64::from(entry.relative_offset))
        });
        if entry.is_some() {
            let header = self.header_at(segment, position)?;
            if header.is_none_or(|h| h.base_offset != expected) {
                self.shared.recorder.index_fallback();
                tracing::warn!(path = %segment.paths.index.display(), position, expected, "index entry is wrong; scanning");
                (position, expected) = (0, segment.base_offset);
            }
        }
        let limit = segment.written_len();
        while position < limit {
            let Some(header) = self.header_at(segment, position)? else {
                return Err(LogError::Inconsistent {
                    path: segment.paths.log.clone(),
                    position,
                    reason: "invalid batch header while looking for an offset",
                });
            };
            if header.base_offset != expected {
                return Err(LogError::Inconsistent {
                    path: segment.paths.log.clone(),
                    position,
                    reason: "batch offset differs from the offset expected there",
                });
            }
            if header.last_offset() >= offset {
                return Ok((position, header.batch_length));
            }
            position += u64::from(header.batch_length);
            expected = header.next_offset();
        }
        Err(LogError::Inconsistent {
            path: segment.paths.log.clone(),
            position,
            reason: "offset not found in the segment that should hold it",
        })
    }

    /// The base offset of the first visible batch whose largest timestamp is at least `timestamp`, or `None` when
    /// every visible batch is older.
    pub fn read_by_timestamp(&self, timestamp: i64) -> Result<Option<u64>, LogError> {
        let end = self.shared.visible_end();
        let segments = self.shared.snapshot();
        for segment in segments.iter() {
            if segment.base_offset >= end {
                break;
            }
            // Every non-empty segment is searched, from its index's hint on: its largest timestamp comes from its time
            // index (not checksummed), and a wrong one must not skip a segment holding the answer.
            if segment.max_timestamp().is_none() {
                continue;
            }
            let mut start_offset = segment
                .index
                .floor_time(timestamp)
                .map_or(segment.base_offset, |e| segment.base_offset + u64::from(e.relative_offset));
            if start_offset >= segment.next_offset() {
                start_offset = segment.base_offset; // A wrong entry: scan the whole segment instead.
            }
            let (mut position, _) = self.locate(segment, start_offset)?;
            let limit = segment.written_len();
            while position < limit {
                let Some(header) = self.header_at(segment, position)? else {
                    return Err(LogError::Inconsistent {
                        path: segment.paths.log.clone(),
                        position,
                        reason: "invalid batch header while searching by timestamp",
                    });
                };
                if header.base_offset >= end {
                    return Ok(None);
                }
                if header.max_timestamp >= timestamp {
                    return Ok(Some(header.base_offset));
                }
                position += u64::from(header.batch_length);
            }
        }
        Ok(None)
    }
}

#[derive(Debug)]
enum ReadError {
    Decode(ferry_protocol::ProtocolError),
    Inconsistent(&'static str),
}

impl From<ferry_protocol::ProtocolError> for ReadError {
    fn from(source: ferry_protocol::ProtocolError) -> Self {
        ReadError::Decode(source)
    }
}
