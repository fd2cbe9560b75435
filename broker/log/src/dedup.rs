//! Message-id dedup: records that carry a dedup key ([`DEDUP_KEY_HEADER`]) on a partition with a dedup window.
//!
//! A producer that cannot keep state (no producer id, no sequence) sets a dedup key on each record. The appender
//! thread checks every key in the same step that assigns offsets, so the check is serialized with appends: a key
//! already appended to the partition within the window (found in the [`DedupIndex`], in an earlier request of the
//! same group, or among the entries not yet indexed) makes the record a duplicate. A duplicate is not written and is
//! reported with its original's offset ([`DroppedRecord`]); the batch is rebuilt from the records it keeps (the only
//! place records are re-encoded, and only when a duplicate occurs), or dropped whole.
//!
//! Only batches without a producer id are deduplicated by key: dropping records from an idempotent producer's batch
//! would break its sequence accounting, so such a batch carrying dedup keys is refused ([`DedupError::IdempotentBatch`]).
//!
//! Durability: the log is the truth. After a group's sync, before replying, the appender inserts the group's
//! (key, offset) entries into the index with the log end they cover ([`DedupIndex::insert`], one call). If that fails,
//! the entries wait in memory (at most [`DEDUP_PENDING_ENTRIES_MAX`]; beyond it, dedup-enabled appends are refused)
//! and are retried at the next group or timer tick. At start, `replay` indexes every key of the log from the
//! index's [`DedupIndex::covered_up_to`] (or, without one, from the first record within the window) to the end, so a
//! crash between the log's fsync and the index write loses nothing.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::batch::{DEDUP_KEY_BYTES_MAX, DEDUP_KEY_HEADER, split_batches};
use ferry_protocol::{BatchBuilder, NewRecord, ProtocolError, RecordBatch};

use crate::error::LogError;
use crate::log::PartitionLog;

/// Most dedup entries the appender keeps in memory while the index cannot take them (the last group's entries may
/// overshoot it once). Reaching it refuses the partition's dedup-enabled appends ([`DedupError::IndexUnavailable`])
/// until an insert succeeds.
pub const DEDUP_PENDING_ENTRIES_MAX: usize = 100_000;

/// The most offsets the index's `covered_up_to` may lag behind the log end while appends carry no dedup keys; past
/// it the appender stores the new end (an insert without entries), so a restart replays at most about this much.
const COVERED_LAG_OFFSETS_MAX: u64 = 100_000;

/// Replay at start inserts at most this many entries per [`DedupIndex::insert`] call.
const REPLAY_INSERT_ENTRIES_MAX: usize = 10_000;

/// Replay reads at most this many bytes at a time.
const REPLAY_READ_BYTES: u32 = 4 * 1024 * 1024;

/// The error type of a [`DedupIndex`].
pub type IndexError = Box<dyn std::error::Error + Send + Sync>;

/// One indexed record: its dedup key, its offset, and when it was appended (ms since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupEntry {
    /// The record's dedup key.
    pub key: Bytes,
    /// The record's offset.
    pub offset: u64,
    /// When it was appended (or, for entries replayed at start, when the replay ran), ms since the Unix epoch.
    pub append_ms: i64,
}

/// A partition's durable index of dedup keys (the broker keeps it in its metadata store). Its methods block; the
/// appender thread calls them.
pub trait DedupIndex: Send + Sync + fmt::Debug {
    /// The offset of each key appended at or after `not_before_ms`, in `keys` order (`None`: not within the window).
    fn lookup(&self, keys: &[&[u8]], not_before_ms: i64) -> Result<Vec<Option<u64>>, IndexError>;
    /// Stores `entries` and, atomically with them, that every record below `covered_up_to` is indexed.
    fn insert(&self, entries: &[DedupEntry], covered_up_to: u64) -> Result<(), IndexError>;
    /// The log offset below which every record is indexed, if the index ever stored one.
    fn covered_up_to(&self) -> Result<Option<u64>, IndexError>;
}

/// How a partition deduplicates by key: part of [`crate::producers::ProducerSetup`].
#[derive(Debug, Clone)]
pub struct DedupSetup {
    /// How long a key is remembered (the topic's `dedup.window.ms`); must not be zero.
    pub window: Duration,
    /// Where keys are indexed.
    pub index: Arc<dyn DedupIndex>,
}

/// A record dropped as a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DroppedRecord {
    /// The record's index in the request: counting records across its batches, from 0.
    pub record_index: u32,
    /// The offset of the record with the same key that was appended first.
    pub original_offset: u64,
}

/// Why the appender refused a request of a dedup-enabled partition. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    /// An idempotent producer's batch carries dedup keys.
    #[error(
        "a batch with a producer id must not carry {DEDUP_KEY_HEADER} headers on a topic with dedup.window.ms > 0: \
         dropping records would break the producer's sequences; use a producer without idempotence"
    )]
    IdempotentBatch,
    /// A dedup key is empty or longer than [`DEDUP_KEY_BYTES_MAX`].
    #[error("record {record_index} has a dedup key of {len} bytes; expected 1..={DEDUP_KEY_BYTES_MAX}")]
    InvalidKey {
        /// The record's index in the request.
        record_index: u32,
        /// The key's length.
        len: usize,
    },
    /// A batch's records do not decode.
    #[error("invalid records")]
    Records(#[source] ProtocolError),
    /// The index failed and [`DEDUP_PENDING_ENTRIES_MAX`] entries wait in memory.
    #[error("the dedup index is unavailable and {pending} entries wait to be indexed")]
    IndexUnavailable {
        /// Entries waiting.
        pending: usize,
    },
    /// The index failed a lookup.
    #[error("dedup index lookup failed")]
    Index(#[source] IndexError),
}

impl DedupError {
    /// Whether the request itself is invalid (as opposed to the index failing).
    pub fn is_invalid_request(&self) -> bool {
        matches!(self, DedupError::IdempotentBatch | DedupError::InvalidKey { .. } | DedupError::Records(_))
    }
}

/// The dedup key of each record of a batch, in order.
fn batch_keys(batch: &RecordBatch, first_index: u32) -> Result<Vec<Option<Bytes>>, DedupError> {
    let mut keys = Vec::with_capacity(batch.record_count() as usize);
    for (idx, record) in batch.records().enumerate() {
        let record = record.map_err(DedupError::Records)?;
        let key = record.headers.get(DEDUP_KEY_HEADER.as_bytes());
        if let Some(key) = &key
            && !(1..=DEDUP_KEY_BYTES_MAX).contains(&key.len())
        {
            let record_index = first_index.saturating_add(u32::try_from(idx).unwrap_or(u32::MAX));
            return Err(DedupError::InvalidKey { record_index, len: key.len() });
        }
        keys.push(key);
    }
    Ok(keys)
}

/// The appender's dedup state: the index, the group's entries and the entries waiting to be indexed.
#[derive(Debug)]
pub(crate) struct DedupState {
    window_ms: i64,
    index: Arc<dyn DedupIndex>,
    /// Entries of the current group (appended, not yet inserted), by key.
    group: HashMap<Bytes, (u64, i64)>,
    /// Entries whose insert failed, by key; at most [`DEDUP_PENDING_ENTRIES_MAX`].
    pending: HashMap<Bytes, (u64, i64)>,
    /// The log end the pending entries cover, if an insert failed.
    pending_covered_up_to: Option<u64>,
    /// The log end the index covers, as of the last successful insert.
    covered_up_to: u64,
}

/// What dedup decided for a request: the batches to append (rebuilt where records were dropped), the dropped
/// records, and the new entries (record offsets relative to where the request's first kept record lands).
pub(crate) struct DedupPlan {
    pub batches: Vec<RecordBatch>,
    pub dropped: Vec<DroppedRecord>,
    entries: Vec<(Bytes, u64)>,
}

impl DedupState {
    /// The state of a partition whose index covers the log up to `covered_up_to` (after [`replay`]).
    pub(crate) fn new(setup: &DedupSetup, covered_up_to: u64) -> DedupState {
        DedupState {
            window_ms: i64::try_from(setup.window.as_millis()).unwrap_or(i64::MAX),
            index: Arc::clone(&setup.index),
            group: HashMap::new(),
            pending: HashMap::new(),
            pending_covered_up_to: None,
            covered_up_to,
        }
    }

    /// Decides which records of a request to keep; `end_offset` is where the first kept record will land.
    pub(crate) fn plan(
        &self,
        batches: Vec<RecordBatch>,
        end_offset: u64,
        now_ms: i64,
    ) -> Result<DedupPlan, DedupError> {
        if self.pending.len() >= DEDUP_PENDING_ENTRIES_MAX {
            return Err(DedupError::IndexUnavailable { pending: self.pending.len() });
        }
        let not_before_ms = now_ms.saturating_sub(self.window_ms);
        let mut keys_per_batch = Vec::with_capacity(batches.len());
        let mut first_index = 0u32;
        for batch in &batches {
            let keys = batch_keys(batch, first_index)?;
            if batch.header().producer_id >= 0 && keys.iter().any(Option::is_some) {
                return Err(DedupError::IdempotentBatch);
            }
            first_index = first_index.saturating_add(batch.record_count());
            keys_per_batch.push(keys);
        }
        // Keys not found in memory are looked up in the index, all at once.
        let mut to_look_up: Vec<Bytes> = Vec::new();
        for key in keys_per_batch.iter().flatten().flatten() {
            if self.in_memory(key, not_before_ms).is_none() {
                to_look_up.push(key.clone());
            }
        }
        let found: HashMap<Bytes, u64> = if to_look_up.is_empty() {
            HashMap::new()
        } else {
            let refs: Vec<&[u8]> = to_look_up.iter().map(Bytes::as_ref).collect();
            let offsets = self.index.lookup(&refs, not_before_ms).map_err(DedupError::Index)?;
            to_look_up.into_iter().zip(offsets).filter_map(|(key, offset)| offset.map(|offset| (key, offset))).collect()
        };
        let mut request: HashMap<Bytes, u64> = HashMap::new();
        let mut dropped = Vec::new();
        let mut entries = Vec::new();
        let mut next_offset = end_offset;
        let mut record_index = 0u32;
        let mut planned = Vec::with_capacity(batches.len());
        for (batch, keys) in batches.into_iter().zip(keys_per_batch) {
            let mut keep = Vec::with_capacity(keys.len());
            for key in &keys {
                let original = key.as_ref().and_then(|key| {
                    request
                        .get(key)
                        .copied()
                        .or_else(|| self.in_memory(key, not_before_ms))
                        .or_else(|| found.get(key).copied())
                });
                match original {
                    Some(original_offset) => {
                        dropped.push(DroppedRecord { record_index, original_offset });
                        keep.push(false);
                    }
                    None => {
                        if let Some(key) = key {
                            request.insert(key.clone(), next_offset);
                            entries.push((key.clone(), next_offset));
                        }
                        next_offset += 1;
                        keep.push(true);
                    }
                }
                record_index = record_index.saturating_add(1);
            }
            if keep.iter().all(|kept| *kept) {
                planned.push(batch);
            } else if keep.iter().any(|kept| *kept) {
                planned.push(rebuild_batch(&batch, &keep).map_err(DedupError::Records)?);
            }
        }
        Ok(DedupPlan { batches: planned, dropped, entries })
    }

    fn in_memory(&self, key: &[u8], not_before_ms: i64) -> Option<u64> {
        self.group
            .get(key)
            .or_else(|| self.pending.get(key))
            .filter(|(_, append_ms)| *append_ms >= not_before_ms)
            .map(|(offset, _)| *offset)
    }

    /// Records the entries of a request that was appended.
    pub(crate) fn record(&mut self, plan_entries: Vec<(Bytes, u64)>, now_ms: i64) {
        for (key, offset) in plan_entries {
            self.group.insert(key, (offset, now_ms));
        }
    }

    /// Inserts the group's entries and any waiting ones into the index, covering the log up to `covered_up_to`.
    /// On failure the entries wait in memory (see the module docs).
    pub(crate) fn flush(&mut self, covered_up_to: u64, now_ms: i64) {
        let lagging = covered_up_to.saturating_sub(self.covered_up_to) >= COVERED_LAG_OFFSETS_MAX;
        if self.group.is_empty() && self.pending_covered_up_to.is_none() && !lagging {
            return;
        }
        let not_before_ms = now_ms.saturating_sub(self.window_ms);
        self.pending.retain(|_, (_, append_ms)| *append_ms >= not_before_ms);
        let group = std::mem::take(&mut self.group);
        self.pending.extend(group);
        let entries: Vec<DedupEntry> = self
            .pending
            .iter()
            .map(|(key, (offset, append_ms))| DedupEntry { key: key.clone(), offset: *offset, append_ms: *append_ms })
            .collect();
        match self.index.insert(&entries, covered_up_to) {
            Ok(()) => {
                self.pending.clear();
                self.pending_covered_up_to = None;
                self.covered_up_to = covered_up_to;
            }
            Err(error) => {
                tracing::warn!(%error, pending = self.pending.len(), "dedup index insert failed; entries kept in memory");
                self.pending_covered_up_to = Some(covered_up_to);
            }
        }
    }

    /// Forgets the current group's entries (its appends failed and will never be acknowledged).
    pub(crate) fn discard_group(&mut self) {
        self.group.clear();
    }

    /// Whether an insert failed and must be retried.
    pub(crate) fn retry_due(&self) -> bool {
        self.pending_covered_up_to.is_some()
    }
}

impl DedupPlan {
    /// The entries to record once the request is appended.
    pub(crate) fn take_entries(&mut self) -> Vec<(Bytes, u64)> {
        std::mem::take(&mut self.entries)
    }
}

/// The batch with only the records `keep` marks, re-encoded; header fields other than the counts are kept.
fn rebuild_batch(batch: &RecordBatch, keep: &[bool]) -> Result<RecordBatch, ProtocolError> {
    let header = batch.header();
    let mut builder = BatchBuilder::new().producer(header.producer()).attributes(header.attributes);
    for (record, kept) in batch.records().zip(keep) {
        let record = record?;
        if !*kept {
            continue;
        }
        let headers: Vec<(Bytes, Option<Bytes>)> = record.headers.iter().collect();
        let header_refs: Vec<(&[u8], Option<&[u8]>)> =
            headers.iter().map(|(key, value)| (key.as_ref(), value.as_deref())).collect();
        builder.push(NewRecord {
            timestamp: record.timestamp,
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            headers: &header_refs,
        })?;
    }
    builder.build()
}

/// What the dedup replay at start did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DedupReplayReport {
    /// The offset replay started at.
    pub replayed_from: u64,
    /// Keys indexed.
    pub keys_indexed: u64,
}

/// Indexes every dedup key of the log that the index may have missed: from its `covered_up_to` (or the first record
/// within the window, without one) to the end of the log. Replayed entries count as appended now, so a window never
/// ends early.
pub(crate) fn replay(log: &dyn PartitionLog, setup: &DedupSetup, now_ms: i64) -> Result<DedupReplayReport, LogError> {
    let index_failed = |source: IndexError| LogError::DedupIndex { source };
    let (start, end) = (log.start_offset(), log.end_offset());
    let window_ms = i64::try_from(setup.window.as_millis()).unwrap_or(i64::MAX);
    let from = match setup.index.covered_up_to().map_err(index_failed)? {
        Some(covered) if covered > end => {
            // Only possible when the log lost unsynced writes (fsync `never` or `interval`): keys above the end may
            // name records that are gone.
            tracing::warn!(covered, end, "the dedup index covers more than the recovered log");
            end
        }
        Some(covered) => covered.max(start),
        None => log.read_by_timestamp(now_ms.saturating_sub(window_ms))?.unwrap_or(end).max(start),
    };
    let mut report = DedupReplayReport { replayed_from: from, keys_indexed: 0 };
    let mut entries: Vec<DedupEntry> = Vec::new();
    let mut position = from;
    while position < end {
        let slice = log.read(position, REPLAY_READ_BYTES)?;
        if slice.next_offset <= position {
            break;
        }
        for batch in split_batches(slice.bytes) {
            let batch = batch.map_err(|source| LogError::Corrupt { path: "replay".into(), position, source })?;
            for record in batch.records() {
                let record = record.map_err(|source| LogError::Corrupt { path: "replay".into(), position, source })?;
                if record.offset < from {
                    continue;
                }
                if let Some(key) = record.headers.get(DEDUP_KEY_HEADER.as_bytes()) {
                    entries.push(DedupEntry { key, offset: record.offset, append_ms: now_ms });
                }
            }
        }
        position = slice.next_offset;
        if entries.len() >= REPLAY_INSERT_ENTRIES_MAX {
            report.keys_indexed += entries.len() as u64;
            setup.index.insert(&entries, position).map_err(index_failed)?;
            entries.clear();
        }
    }
    report.keys_indexed += entries.len() as u64;
    setup.index.insert(&entries, end.max(from)).map_err(index_failed)?;
    Ok(report)
}
