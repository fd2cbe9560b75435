//! Segment files: naming, the state readers share, and the sequential batch scanner recovery uses.
//!
//! A segment is three files named by the base offset of its first batch, zero-padded to 20 digits so names sort like
//! offsets: `00000000000000000000.log` (batches back to back, exactly as received after rebase), `.index` and
//! `.timeindex` (see [`crate::index`]). Only the last (active) segment is appended to; the others are immutable.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use bytes::Bytes;
use ferry_protocol::RecordBatch;
use ferry_protocol::batch::{BATCH_LENGTH_PREFIX_BYTES, peek_batch_length};

use crate::error::LogError;
use crate::fs::{LogFile, read_up_to};
use crate::index::SegmentIndex;

/// Extension of segment data files.
pub const LOG_SUFFIX: &str = ".log";
/// Extension of offset-index files.
pub const INDEX_SUFFIX: &str = ".index";
/// Extension of time-index files.
pub const TIME_INDEX_SUFFIX: &str = ".timeindex";
/// Extension of temporary files; recovery removes any it finds.
pub const TEMP_SUFFIX: &str = ".tmp";
/// Digits of the base offset in a segment file name: enough for any `u64`.
const NAME_DIGITS: usize = 20;
/// How much a scan reads at once.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// The file name of a segment's file with `suffix`, such as `00000000000000000042.log`.
pub fn file_name(base_offset: u64, suffix: &str) -> String {
    format!("{base_offset:0NAME_DIGITS$}{suffix}")
}

/// The base offset a segment file name encodes, if `name` is `<20 digits><suffix>`.
pub fn parse_file_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Paths of one segment's three files.
#[derive(Debug, Clone)]
pub(crate) struct SegmentPaths {
    pub log: PathBuf,
    pub index: PathBuf,
    pub time_index: PathBuf,
}

impl SegmentPaths {
    pub fn new(dir: &Path, base_offset: u64) -> SegmentPaths {
        SegmentPaths {
            log: dir.join(file_name(base_offset, LOG_SUFFIX)),
            index: dir.join(file_name(base_offset, INDEX_SUFFIX)),
            time_index: dir.join(file_name(base_offset, TIME_INDEX_SUFFIX)),
        }
    }
}

/// What readers know of a segment. The writer updates the atomics of the active one after each write.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: u64,
    pub paths: SegmentPaths,
    pub file: Arc<dyn LogFile>,
    /// Bytes written (not necessarily synced or visible): readers never read past it.
    written_len: AtomicU64,
    /// The offset after the last written batch.
    next_offset: AtomicU64,
    /// Largest record timestamp in the segment, `i64::MIN` when empty.
    max_timestamp: AtomicI64,
    pub index: SegmentIndex,
}

impl Segment {
    pub fn new(
        base_offset: u64,
        paths: SegmentPaths,
        file: Arc<dyn LogFile>,
        written_len: u64,
        next_offset: u64,
        max_timestamp: Option<i64>,
        index: SegmentIndex,
    ) -> Segment {
        Segment {
            base_offset,
            paths,
            file,
            written_len: AtomicU64::new(written_len),
            next_offset: AtomicU64::new(next_offset),
            max_timestamp: AtomicI64::new(max_timestamp.unwrap_or(i64::MIN)),
            index,
        }
    }

    pub fn written_len(&self) -> u64 {
        self.written_len.load(Ordering::Acquire)
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    pub fn max_timestamp(&self) -> Option<i64> {
        let value = self.max_timestamp.load(Ordering::Acquire);
        (value != i64::MIN).then_some(value)
    }

    /// Publishes a completed write (or a rollback) to readers.
    pub fn set_written(&self, len: u64, next_offset: u64, max_timestamp: Option<i64>) {
        self.max_timestamp.store(max_timestamp.unwrap_or(i64::MIN), Ordering::Release);
        self.next_offset.store(next_offset, Ordering::Release);
        self.written_len.store(len, Ordering::Release);
    }
}

/// What the scanner found at its position.
#[derive(Debug)]
pub(crate) enum ScanItem {
    /// A complete batch whose length, magic, header and checksum are valid.
    Batch(RecordBatch),
    /// The clean end of the file.
    End,
    /// Bytes that are not a valid batch: torn, truncated or corrupt. Scanning stops here.
    Invalid(String),
}

/// Reads a segment file sequentially, batch by batch, verifying each one; reads in chunks of 1 MiB (or one batch).
pub(crate) struct Scanner<'a> {
    file: &'a dyn LogFile,
    path: &'a Path,
    len: u64,
    position: u64,
    buf: Bytes,
    buf_start: u64,
}

impl<'a> Scanner<'a> {
    /// A scanner over the first `len` bytes of `file`, starting at `position`.
    pub fn new(file: &'a dyn LogFile, path: &'a Path, len: u64, position: u64) -> Scanner<'a> {
        Scanner { file, path, len, position, buf: Bytes::new(), buf_start: position }
    }

    /// The position of the next batch (or of the invalid bytes, after `Invalid`).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Makes `buf` hold `[position, position + n)`; the caller checked that the file is long enough.
    fn fill(&mut self, n: usize) -> Result<(), LogError> {
        let buf_end = self.buf_start + u64::try_from(self.buf.len()).unwrap_or(u64::MAX);
        let n_u64 = u64::try_from(n).unwrap_or(u64::MAX);
        if self.position >= self.buf_start && self.position.saturating_add(n_u64) <= buf_end {
            return Ok(());
        }
        let want = n.max(SCAN_CHUNK_BYTES);
        let remaining = usize::try_from(self.len - self.position).unwrap_or(usize::MAX);
        self.buf = read_up_to(self.file, self.position, want.min(remaining))
            .map_err(|e| LogError::io("read", self.path, e))?;
        self.buf_start = self.position;
        if self.buf.len() < n {
            // The file shrank under us: only possible if something else truncates it.
            return Err(LogError::io(
                "read",
                self.path,
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "segment shorter than its length"),
            ));
        }
        Ok(())
    }

    fn slice(&self, n: usize) -> Bytes {
        let start = usize::try_from(self.position - self.buf_start).unwrap_or(usize::MAX);
        self.buf.slice(start..start + n)
    }

    /// The next item; I/O errors are errors, never "invalid data".
    pub fn next_item(&mut self) -> Result<ScanItem, LogError> {
        if self.position >= self.len {
            return Ok(ScanItem::End);
        }
        let available = self.len - self.position;
        if available < BATCH_LENGTH_PREFIX_BYTES as u64 {
            return Ok(ScanItem::Invalid(format!("{available} trailing bytes, shorter than a batch header")));
        }
        self.fill(BATCH_LENGTH_PREFIX_BYTES)?;
        let batch_len = match peek_batch_length(&self.slice(BATCH_LENGTH_PREFIX_BYTES)) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(ScanItem::Invalid("batch header unreadable".to_owned())),
            Err(error) => return Ok(ScanItem::Invalid(error.to_string())),
        };
        if u64::from(batch_len) > available {
            return Ok(ScanItem::Invalid(format!("batch of {batch_len} bytes truncated to {available}")));
        }
        let batch_len = usize::try_from(batch_len).unwrap_or(usize::MAX);
        self.fill(batch_len)?;
        match RecordBatch::decode(self.slice(batch_len)) {
            Ok(batch) => {
                self.position += u64::from(batch.len_bytes());
                Ok(ScanItem::Batch(batch))
            }
            Err(error) => Ok(ScanItem::Invalid(error.to_string())),
        }
    }
}
