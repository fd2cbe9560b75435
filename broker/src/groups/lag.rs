//! Consumer-group offset and lag metrics: `ferry_group_committed_offset`, `ferry_group_lag_records` and
//! `ferry_group_lag_seconds`, each by `group`, `topic` and `partition`.
//!
//! The committed-offset gauge is set by every successful commit. Lag is refreshed every [`LAG_REFRESH_INTERVAL`] on
//! a blocking thread: records from the committed offset to the log's visible end, and the age of the record at the
//! committed offset (the next one the group will consume), 0 when the group is caught up.
//! Label values are bounded: at most [`GROUP_METRIC_SERIES_MAX`] (group, topic, partition) series are exported;
//! commits beyond it are not exported (logged once). Series exist from a group's first commit since the broker
//! started.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use ferry_protocol::batch::split_batches;

use crate::metrics::{
    GROUP_COMMITTED_OFFSET, GROUP_LAG_RECORDS, GROUP_LAG_SECONDS, LABEL_GROUP, LABEL_PARTITION, LABEL_TOPIC,
};
use crate::partitions::Partitions;

/// Most (group, topic, partition) series exported by each group metric.
pub const GROUP_METRIC_SERIES_MAX: usize = 10_000;
/// How often lag is recomputed.
pub const LAG_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Bytes read to find the timestamp of the next unconsumed record (at least one whole batch is always read).
const LAG_READ_BYTES: u32 = 4096;

type SeriesKey = (String, String, u32);

/// The committed offsets behind the group metrics, bounded by [`GROUP_METRIC_SERIES_MAX`].
#[derive(Debug, Default)]
pub struct GroupMetrics {
    committed: Mutex<BTreeMap<SeriesKey, u64>>,
    overflow_logged: AtomicBool,
}

impl GroupMetrics {
    /// Records a committed offset and sets its gauge.
    pub fn committed(&self, group: &str, topic: &str, partition: u32, offset: u64) {
        let key = (group.to_owned(), topic.to_owned(), partition);
        {
            let mut committed = self.committed.lock().unwrap_or_else(PoisonError::into_inner);
            if !committed.contains_key(&key) && committed.len() >= GROUP_METRIC_SERIES_MAX {
                if !self.overflow_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(max = GROUP_METRIC_SERIES_MAX, "too many group metric series; not exporting more");
                }
                return;
            }
            committed.insert(key, offset);
        }
        #[allow(clippy::cast_precision_loss)] // Offsets above 2^53 lose precision as floats, far beyond real logs.
        metrics::gauge!(GROUP_COMMITTED_OFFSET, LABEL_GROUP => group.to_owned(), LABEL_TOPIC => topic.to_owned(),
            LABEL_PARTITION => partition.to_string())
        .set(offset as f64);
    }

    /// Recomputes every lag gauge. Blocks (reads the logs): call it from a blocking thread.
    pub fn refresh_lag(&self, partitions: &Partitions, now_ms: i64) {
        let snapshot: Vec<(SeriesKey, u64)> = self
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(key, offset)| (key.clone(), *offset))
            .collect();
        for ((group, topic, partition), offset) in snapshot {
            let Some(found) = partitions.topic(&topic) else { continue };
            let Some(log) = found.partition(partition) else { continue };
            let reader = log.reader();
            let end = reader.visible_end();
            let lag_records = end.saturating_sub(offset);
            let lag_seconds = if lag_records == 0 { 0.0 } else { next_record_age(reader, offset, now_ms) };
            let labels =
                [(LABEL_GROUP, group.clone()), (LABEL_TOPIC, topic.clone()), (LABEL_PARTITION, partition.to_string())];
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(GROUP_LAG_RECORDS, &labels).set(lag_records as f64);
            metrics::gauge!(GROUP_LAG_SECONDS, &labels).set(lag_seconds);
        }
    }
}

/// Seconds since the timestamp of the record at `offset` (or the first one after it); 0 if it cannot be read.
fn next_record_age(reader: &ferry_log::LogReader, offset: u64, now_ms: i64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let seconds = (next_record_age_ms(reader, offset, now_ms) as f64) / 1000.0;
    seconds
}

/// A group's lag in time at committed offset `offset`: milliseconds since the timestamp of the record at `offset` (or
/// the first one after it); 0 when there is none (caught up) or it cannot be read. Blocks (reads the log): call it
/// from a blocking thread. What `ferry_group_lag_seconds` reports, and OffsetFetch's `lag_ms`.
pub fn next_record_age_ms(reader: &ferry_log::LogReader, offset: u64, now_ms: i64) -> i64 {
    if reader.visible_end() <= offset {
        return 0;
    }
    let Ok(slice) = reader.read(offset.max(reader.start_offset()), LAG_READ_BYTES) else { return 0 };
    for batch in split_batches(slice.bytes).flatten() {
        for record in batch.records().flatten() {
            if record.offset >= offset {
                return now_ms.saturating_sub(record.timestamp).max(0);
            }
        }
    }
    0
}
