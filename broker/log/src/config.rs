//! [`LogConfig`] and [`FsyncPolicy`]: the knobs of one partition log, validated once at open.
//!
//! Every field says its unit, default, bounds and effect; `validate` enforces the bounds so the rest of the crate
//! can rely on them (positions fit in `u32`, a segment holds at least one batch header, queues are bounded).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::LogError;

/// Smallest accepted `segment_bytes`: 4 KiB.
pub const SEGMENT_BYTES_MIN: u64 = 4 * 1024;
/// Largest accepted `segment_bytes`: 2 GiB, so every batch position within a segment fits the index's `u32`.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 31;
/// Largest accepted `index_interval_bytes`: 1 MiB.
pub const INDEX_INTERVAL_BYTES_MAX: u32 = 1 << 20;
/// Largest accepted `append_queue_depth`.
pub const APPEND_QUEUE_DEPTH_MAX: usize = 1 << 16;
/// Largest accepted fsync interval: one hour.
pub const FSYNC_INTERVAL_MAX: Duration = Duration::from_secs(3600);

const DAY: Duration = Duration::from_secs(24 * 3600);

/// When appended data is fsynced, and so what an acknowledgement means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Group commit: every acknowledgement follows the fsync that covers it. The visible end (what consumers may
    /// read) also advances only after the fsync, so a consumer never sees data a power loss could take back.
    Always,
    /// Acknowledge after the write; fsync when the interval has passed since the last one (also when idle).
    /// A power loss may lose what was acknowledged within the last interval.
    Interval(Duration),
    /// Acknowledge after the write; fsync only at segment roll and clean close. A power loss may lose
    /// everything since the last roll; a process crash loses nothing (the page cache survives it).
    Never,
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Interval(interval) => write!(f, "interval:{}", interval.as_millis()),
            FsyncPolicy::Never => f.write_str("never"),
        }
    }
}

/// Why a string is not an fsync policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fsync policy {input:?}: expected \"always\", \"interval:<ms>\" (1..=3600000) or \"never\"")]
pub struct ParseFsyncPolicyError {
    /// The rejected text.
    pub input: String,
}

impl FromStr for FsyncPolicy {
    type Err = ParseFsyncPolicyError;

    /// Parses the config and command-line syntax: `always`, `interval:<ms>` or `never`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = || ParseFsyncPolicyError { input: input.to_owned() };
        match input {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => {
                let ms = input.strip_prefix("interval:").ok_or_else(error)?;
                let ms: u64 = ms.parse().map_err(|_| error())?;
                let interval = Duration::from_millis(ms);
                if ms == 0 || interval > FSYNC_INTERVAL_MAX {
                    return Err(error());
                }
                Ok(FsyncPolicy::Interval(interval))
            }
        }
    }
}

/// Configuration of one partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Size at which the active segment rolls, in bytes. Default 1 GiB; bounds `SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX`.
    /// An append whose batches do not fit in what is left starts a new segment; a single batch larger than this
    /// still goes in a fresh segment alone. Smaller segments make retention finer and recovery scans shorter.
    pub segment_bytes: u64,
    /// Age at which the active segment rolls even if not full, measured from its first append in this process.
    /// Default 7 days; at least 1 ms. Lets retention by age delete data of slow partitions.
    pub segment_age: Duration,
    /// Retention by size, in bytes: the oldest segments are deleted while the log stays at least this large without
    /// them. Default `None` (no size limit). The active segment is never deleted.
    pub retention_bytes: Option<u64>,
    /// Retention by age: a segment is deleted once its newest record timestamp is older than this.
    /// Default 7 days; `None` keeps data forever. The active segment is never deleted.
    pub retention_age: Option<Duration>,
    /// How often the appender checks retention when no roll triggers it. Default 5 minutes; at least 1 ms.
    pub retention_check_interval: Duration,
    /// Bytes of log between two sparse index entries. Default 4096; bounds `1..=INDEX_INTERVAL_BYTES_MAX`.
    /// Smaller means faster lookups and larger indexes (8 bytes per entry, kept in memory).
    pub index_interval_bytes: u32,
    /// When data is fsynced and what an acknowledgement means. Default [`FsyncPolicy::Always`].
    pub fsync: FsyncPolicy,
    /// Bound of the appender's request queue. Default 1024; bounds `1..=APPEND_QUEUE_DEPTH_MAX`.
    /// When it is full, `append` waits (async) for room: this is the partition's back-pressure.
    pub append_queue_depth: usize,
    /// Most bytes of batches one group commit gathers before it writes and syncs. Default 16 MiB; at least 1.
    /// The first request of a group is always taken, whatever its size.
    pub group_bytes_max: u64,
    /// Labels added to every metric this log records (for example `[("partition", "orders-3")]`).
    /// Default none. The caller keeps the set of values bounded.
    pub metric_labels: Vec<(String, String)>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_age: 7 * DAY,
            retention_bytes: None,
            retention_age: Some(7 * DAY),
            retention_check_interval: Duration::from_secs(300),
            index_interval_bytes: 4096,
            fsync: FsyncPolicy::Always,
            append_queue_depth: 1024,
            group_bytes_max: 16 << 20,
            metric_labels: Vec::new(),
        }
    }
}

impl LogConfig {
    /// Checks every bound documented on the fields.
    pub fn validate(&self) -> Result<(), LogError> {
        let invalid = |field, reason| Err(LogError::InvalidConfig { field, reason });
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return invalid("segment_bytes", "outside 4 KiB..=2 GiB");
        }
        if self.segment_age.is_zero() {
            return invalid("segment_age", "must be at least 1 ms");
        }
        if self.retention_check_interval.is_zero() {
            return invalid("retention_check_interval", "must be at least 1 ms");
        }
        if !(1..=INDEX_INTERVAL_BYTES_MAX).contains(&self.index_interval_bytes) {
            return invalid("index_interval_bytes", "outside 1..=1 MiB");
        }
        if !(1..=APPEND_QUEUE_DEPTH_MAX).contains(&self.append_queue_depth) {
            return invalid("append_queue_depth", "outside 1..=65536");
        }
        if self.group_bytes_max == 0 {
            return invalid("group_bytes_max", "must be at least 1");
        }
        if let FsyncPolicy::Interval(interval) = self.fsync
            && (interval.is_zero() || interval > FSYNC_INTERVAL_MAX)
        {
            return invalid("fsync", "interval outside 1 ms..=1 h");
        }
        Ok(())
    }
}

/// Wall-clock time in ms since the Unix epoch, as the log sees it: segment age and retention by age use it.
///
/// A trait so tests can move time by hand ([`ManualClock`]) instead of sleeping.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in ms since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: std::sync::atomic::AtomicI64,
}

impl ManualClock {
    /// A clock showing `now_ms`.
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock { now_ms: std::sync::atomic::AtomicI64::new(now_ms) }
    }

    /// Sets the time.
    pub fn set(&self, now_ms: i64) {
        self.now_ms.store(now_ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by_ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now_ms.fetch_add(by_ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests;
