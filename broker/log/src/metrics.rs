//! Metric names (Prometheus base units) and the per-log handles that record them.
//!
//! Every metric carries the labels of [`LogConfig::metric_labels`](crate::LogConfig::metric_labels) and nothing else,
//! so the caller decides the (bounded) label set, typically a partition label. Gauges are changed by increments and
//! decrements, never set, so they stay meaningful when several logs share one label set (they add up).
//! Call [`describe`] once at startup so exporters show units and help texts.
//!
//! The same counts are kept in [`LogStats`] (plain atomics), which tests and the broker's status endpoints read
//! without a metrics recorder.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label, Unit};

/// Histogram: duration of each data fsync (segment data, at group commit, interval or roll), in seconds.
pub const FSYNC_DURATION_SECONDS: &str = "ferry_log_fsync_duration_seconds";
/// Counter: failed fsyncs. Each one stops its partition.
pub const FSYNC_ERRORS_TOTAL: &str = "ferry_log_fsync_errors_total";
/// Counter: bytes of batches appended (written; durability per the fsync policy).
pub const APPENDED_BYTES_TOTAL: &str = "ferry_log_appended_bytes_total";
/// Counter: batches appended.
pub const APPENDED_BATCHES_TOTAL: &str = "ferry_log_appended_batches_total";
/// Counter: bytes cut off torn tails by recovery.
pub const RECOVERY_TRUNCATED_BYTES_TOTAL: &str = "ferry_log_recovery_truncated_bytes_total";
/// Counter: batches that failed their checksum (or length/offset checks) at read time or in recovery.
pub const CHECKSUM_FAILURES_TOTAL: &str = "ferry_log_checksum_failures_total";
/// Counter: index entries that did not lead to the expected batch (a scan was used instead), plus indexes rebuilt
/// at open.
pub const INDEX_REBUILDS_TOTAL: &str = "ferry_log_index_rebuilds_total";
/// Gauge: partitions open in the damaged state (reads only, appends refused).
pub const DAMAGED_PARTITIONS: &str = "ferry_log_damaged_partitions";
/// Gauge: bytes acknowledged but not yet fsynced (policies `interval` and `never`).
pub const UNSYNCED_BYTES: &str = "ferry_log_unsynced_bytes";

/// Registers units and help texts of every metric above with the installed recorder.
pub fn describe() {
    metrics::describe_histogram!(FSYNC_DURATION_SECONDS, Unit::Seconds, "Duration of each segment data fsync.");
    metrics::describe_counter!(FSYNC_ERRORS_TOTAL, Unit::Count, "Failed fsyncs; each one stops its partition.");
    metrics::describe_counter!(APPENDED_BYTES_TOTAL, Unit::Bytes, "Bytes of record batches appended.");
    metrics::describe_counter!(APPENDED_BATCHES_TOTAL, Unit::Count, "Record batches appended.");
    metrics::describe_counter!(
        RECOVERY_TRUNCATED_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes of torn segment tails truncated by recovery."
    );
    metrics::describe_counter!(
        CHECKSUM_FAILURES_TOTAL,
        Unit::Count,
        "Stored batches that failed verification at read time or in recovery."
    );
    metrics::describe_counter!(
        INDEX_REBUILDS_TOTAL,
        Unit::Count,
        "Index files rebuilt at open, and index lookups that fell back to a scan."
    );
    metrics::describe_gauge!(DAMAGED_PARTITIONS, Unit::Count, "Partitions open in the damaged state.");
    metrics::describe_gauge!(UNSYNCED_BYTES, Unit::Bytes, "Bytes acknowledged but not yet fsynced.");
}

/// The metric handles of one log, registered once at open with its labels.
#[derive(Debug, Clone)]
pub(crate) struct LogMetrics {
    pub fsync_duration: Histogram,
    pub fsync_errors: Counter,
    pub appended_bytes: Counter,
    pub appended_batches: Counter,
    pub recovery_truncated_bytes: Counter,
    pub checksum_failures: Counter,
    pub index_rebuilds: Counter,
    pub damaged_partitions: Gauge,
    pub unsynced_bytes: Gauge,
}

impl LogMetrics {
    pub fn new(labels: &[(String, String)]) -> LogMetrics {
        let labels: Vec<Label> = labels.iter().map(|(key, value)| Label::new(key.clone(), value.clone())).collect();
        LogMetrics {
            fsync_duration: metrics::histogram!(FSYNC_DURATION_SECONDS, labels.clone()),
            fsync_errors: metrics::counter!(FSYNC_ERRORS_TOTAL, labels.clone()),
            appended_bytes: metrics::counter!(APPENDED_BYTES_TOTAL, labels.clone()),
            appended_batches: metrics::counter!(APPENDED_BATCHES_TOTAL, labels.clone()),
            recovery_truncated_bytes: metrics::counter!(RECOVERY_TRUNCATED_BYTES_TOTAL, labels.clone()),
            checksum_failures: metrics::counter!(CHECKSUM_FAILURES_TOTAL, labels.clone()),
            index_rebuilds: metrics::counter!(INDEX_REBUILDS_TOTAL, labels.clone()),
            damaged_partitions: metrics::gauge!(DAMAGED_PARTITIONS, labels.clone()),
            unsynced_bytes: metrics::gauge!(UNSYNCED_BYTES, labels),
        }
    }
}

/// Counters of one log, readable without a metrics recorder (tests, status pages).
#[derive(Debug, Default)]
pub struct LogStats {
    fsyncs: AtomicU64,
    fsync_errors: AtomicU64,
    checksum_failures: AtomicU64,
    index_fallbacks: AtomicU64,
    unsynced_bytes: AtomicU64,
}

impl LogStats {
    /// Successful segment data fsyncs since open.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }
    /// Failed fsyncs since open (0 or 1: the first one stops the partition).
    pub fn fsync_errors(&self) -> u64 {
        self.fsync_errors.load(Ordering::Relaxed)
    }
    /// Batches that failed verification at read time since open.
    pub fn checksum_failures(&self) -> u64 {
        self.checksum_failures.load(Ordering::Relaxed)
    }
    /// Index lookups that did not lead to the expected batch and fell back to a scan, since open.
    pub fn index_fallbacks(&self) -> u64 {
        self.index_fallbacks.load(Ordering::Relaxed)
    }
    /// Bytes written but not yet fsynced.
    pub fn unsynced_bytes(&self) -> u64 {
        self.unsynced_bytes.load(Ordering::Relaxed)
    }
}

/// Records into both the metric handles and the stats.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    pub metrics: LogMetrics,
    pub stats: std::sync::Arc<LogStats>,
}

impl Recorder {
    pub fn new(labels: &[(String, String)]) -> Recorder {
        Recorder { metrics: LogMetrics::new(labels), stats: std::sync::Arc::new(LogStats::default()) }
    }

    pub fn fsync_ok(&self, took: Duration) {
        self.metrics.fsync_duration.record(took.as_secs_f64());
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
    }

    pub fn fsync_failed(&self) {
        self.metrics.fsync_errors.increment(1);
        self.stats.fsync_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn appended(&self, n_bytes: u64, n_batches: u64) {
        self.metrics.appended_bytes.increment(n_bytes);
        self.metrics.appended_batches.increment(n_batches);
    }

    pub fn checksum_failure(&self) {
        self.metrics.checksum_failures.increment(1);
        self.stats.checksum_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn index_fallback(&self) {
        self.metrics.index_rebuilds.increment(1);
        self.stats.index_fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn unsynced_add(&self, n_bytes: u64) {
        #[allow(clippy::cast_precision_loss)] // A gauge is a float; byte counts this large are approximate anyway.
        self.metrics.unsynced_bytes.increment(n_bytes as f64);
        self.stats.unsynced_bytes.fetch_add(n_bytes, Ordering::Relaxed);
    }

    /// Marks everything unsynced as synced.
    pub fn unsynced_clear(&self) {
        let n_bytes = self.stats.unsynced_bytes.swap(0, Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        self.metrics.unsynced_bytes.decrement(n_bytes as f64);
    }
}
