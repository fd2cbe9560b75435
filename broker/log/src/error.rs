//! [`LogError`]: everything the partition log can report, and which of it is fatal.
//!
//! The variants are structured so callers can act on them: `DiskFull` is retriable once space is freed,
//! `Damaged` needs an operator, `SyncFailed` and `Failed` mean the partition stopped and must be reopened from disk.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use ferry_protocol::ProtocolError;

use crate::producers::ProducerError;

/// Where recovery found data it cannot trust below the durable end, or a hole in the offsets.
///
/// A damaged partition keeps every file as it was found (the evidence), serves reads below `offset`,
/// and refuses appends, so offsets that were acknowledged once are never assigned again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Base offset of the segment holding the damage.
    pub segment_base: u64,
    /// Byte position of the first invalid batch within that segment.
    pub position: u64,
    /// The offset the log expected at that position: reads are served below it.
    pub offset: u64,
    /// What was found there, for the operator.
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "segment {:020} position {} (offset {}): {}",
            self.segment_base, self.position, self.offset, self.reason
        )
    }
}

/// Errors of the partition log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed. Fatal when it happened while writing (the partition stops).
    #[error("{op} {path}")]
    Io {
        /// The operation, such as "read" or "create".
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// The device is full (ENOSPC or EDQUOT). The failed append was rolled back; the partition continues
    /// and later appends succeed once space is freed.
    #[error("disk full writing {path}")]
    DiskFull {
        /// The file being written.
        path: PathBuf,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// An fsync failed. Fatal: after a failed fsync the page cache may have dropped the data while a later fsync
    /// reports success (fsyncgate), so the partition stops and nothing written since the last good sync is acknowledged.
    #[error("fsync of {path} failed; partition stopped")]
    SyncFailed {
        /// The file or directory being synced.
        path: PathBuf,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// The partition stopped after a fatal error and accepts nothing until it is reopened from disk.
    #[error("partition stopped after a fatal error")]
    Failed {
        /// The error that stopped it.
        #[source]
        cause: Arc<LogError>,
    },
    /// Recovery found damage below the durable end; appends are refused until an operator acts.
    #[error("partition damaged at {damage}")]
    Damaged {
        /// Where and what.
        damage: Damage,
    },
    /// A read asked for an offset outside `start..=end`.
    #[error("offset {requested} out of range {start}..={end}")]
    OffsetOutOfRange {
        /// The requested offset.
        requested: u64,
        /// The log start offset (first offset still stored).
        start: u64,
        /// The visible end (the next offset to be readable).
        end: u64,
    },
    /// A batch is larger than the batch format allows.
    #[error("batch of {len} bytes exceeds the limit of {max}")]
    BatchTooLarge {
        /// The batch length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Stored bytes failed verification at read time (checksum, length or offset): they are never served.
    #[error("corrupt data in {path} at position {position}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the batch within the segment.
        position: u64,
        /// What the decoder found.
        #[source]
        source: ProtocolError,
    },
    /// The stored data contradicts what the log expects at that place (an offset where another was expected).
    #[error("inconsistent data in {path} at position {position}: {reason}")]
    Inconsistent {
        /// The segment file.
        path: PathBuf,
        /// Byte position within the segment.
        position: u64,
        /// What did not match.
        reason: &'static str,
    },
    /// Offsets would overflow `u64` (a log cannot hold more).
    #[error("offset space exhausted")]
    OffsetOverflow,
    /// A configuration value is outside its bounds.
    #[error("invalid log config {field}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The log was closed (clean shutdown) and accepts no more appends.
    #[error("partition log closed")]
    Closed,
    /// The appender thread is gone (it exited or panicked) before answering.
    #[error("partition appender is gone")]
    AppenderGone,
    /// The append's deadline passed before the appender took it; nothing was written.
    #[error("the append's deadline passed before it was applied; nothing was written")]
    DeadlinePassed,
    /// An idempotent producer's batch was refused by the partition's dedup table; nothing was written.
    #[error(transparent)]
    Producer(#[from] ProducerError),
    /// Message-id dedup refused the request; nothing was written.
    #[error(transparent)]
    Dedup(#[from] crate::dedup::DedupError),
    /// The dedup index failed while the appender started (reading what it covers, or indexing the log's tail).
    #[error("dedup index failed")]
    DedupIndex {
        /// The index's error.
        #[source]
        source: crate::dedup::IndexError,
    },
}

impl LogError {
    /// Whether this error stops the partition (every later append fails until it is reopened from disk).
    pub fn is_fatal(&self) -> bool {
        matches!(self, LogError::SyncFailed { .. } | LogError::Failed { .. } | LogError::Io { .. })
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> LogError {
        LogError::Io { op, path: path.into(), source }
    }

    /// Classifies a failed write: a full device is `DiskFull`, anything else an I/O error.
    pub(crate) fn write(path: impl Into<PathBuf>, source: io::Error) -> LogError {
        if is_disk_full(&source) {
            LogError::DiskFull { path: path.into(), source }
        } else {
            LogError::Io { op: "write", path: path.into(), source }
        }
    }
}

/// Whether an I/O error means the device or the quota is full.
pub(crate) fn is_disk_full(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::StorageFull
        || error.kind() == io::ErrorKind::QuotaExceeded
        || matches!(error.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
}
