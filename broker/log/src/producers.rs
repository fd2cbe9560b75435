//! Producer state: one partition's dedup table for idempotent producers.
//!
//! Every batch of an idempotent producer carries its producer id, epoch and base sequence (the sequence of its first
//! record; sequences count records per (producer id, partition) from 0 and wrap from `SEQUENCE_MAX` to 0). The table
//! keeps, per producer id, its epoch, the sequence ranges and offsets of its last [`BATCHES_RETAINED`] batches, and when
//! it last wrote. Before a batch is appended, [`ProducerTable::check`] decides:
//!
//! | the batch                                                          | verdict                                     |
//! |--------------------------------------------------------------------|---------------------------------------------|
//! | producer id unknown to the partition, base sequence 0              | append (the producer's first write here)    |
//! | producer id unknown to the partition, any other sequence           | [`ProducerError::OutOfOrder`], expected 0   |
//! | epoch older than the entry's                                       | [`ProducerError::Fenced`]                   |
//! | epoch newer than the entry's, base sequence 0                      | append (a new epoch restarts the sequence)  |
//! | epoch newer than the entry's, any other sequence                   | [`ProducerError::OutOfOrder`], expected 0   |
//! | same first and last sequence as a retained batch                   | [`SequenceCheck::Duplicate`] with its offsets |
//! | base sequence = last retained batch's last sequence + 1 (wrapping) | append                                      |
//! | anything else                                                      | [`ProducerError::OutOfOrder`]               |
//!
//! The state changes only in [`ProducerTable::record`], called after the batch was appended (a rejected or failed
//! batch never advances the sequence: the nisshi and Redpanda bugs where a rejected batch made the next one look like a
//! duplicate). A producer id the partition does not know must start at sequence 0, so that its second batch cannot
//! overtake its first; a producer whose entry expired (after `expiration` without a write to this partition, far
//! longer than any retry may take, so no retry of a written batch can meet an expired entry) gets
//! `OUT_OF_ORDER_SEQUENCE` for its next batch and starts over with a new producer id.
//!
//! The table is bounded: at most `producers_max` entries, and every table of a broker draws its entries from one
//! shared [`EntryBudget`] (a new producer id over either limit gets [`ProducerError::TooManyProducers`]; a live
//! producer's entry is never evicted to make room). Each entry holds at most [`BATCHES_RETAINED`] batches, so the
//! memory of all tables together is at most the budget times [`ENTRY_BYTES_MAX`]. Entries expire after `expiration`
//! without a write ([`ProducerTable::expire`]).
//!
//! Durability: the log is the source of truth. Every batch header holds what [`ProducerTable::record`] needs, so the
//! table is rebuilt by replaying the headers of the log from a [`ProducerSnapshot`] (taken by the appender after a
//! sync, so its offset never passes the durable end) to the end of the log.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferry_protocol::batch::{BatchHeader, NO_PRODUCER_ID, sequence_add, split_batches};

use crate::config::{Clock, SystemClock};
use crate::error::LogError;
use crate::log::PartitionLog;

/// How many batches per producer id and partition the table remembers: the most batches a producer may have in
/// flight per partition and still have every retry recognised (Kafka's `NUM_BATCHES_TO_RETAIN`; Redpanda's fix for
/// duplicates after retries, redpanda#3039, was to retain as many).
pub const BATCHES_RETAINED: usize = 5;

/// An upper bound of the memory one table entry takes: the map slot (key, entry, control byte, load-factor slack)
/// plus the heap block of its [`BATCHES_RETAINED`] batches. Used to state the memory bound (ARCHITECTURE.md).
pub const ENTRY_BYTES_MAX: usize = 256;

/// What the table remembers of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    /// Sequence of the batch's first record.
    pub first_sequence: i32,
    /// Sequence of the batch's last record.
    pub last_sequence: i32,
    /// Offset of the batch's first record.
    pub first_offset: u64,
    /// Offset of the batch's last record.
    pub last_offset: u64,
}

/// Part of a partition's dedup table, as [`ProducerTable::listing`] returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerListing {
    /// Entries by producer id, lowest first; at most the limit asked for.
    pub entries: Vec<(i64, ProducerEntry)>,
    /// How many producer ids the table tracks (more than `entries.len()` when the listing was cut at the limit).
    pub total: usize,
}

/// One producer id's state in a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    /// The newest epoch seen.
    pub epoch: i32,
    /// The last batches written in that epoch, oldest first; never empty, at most [`BATCHES_RETAINED`].
    pub batches: VecDeque<BatchMeta>,
    /// When the producer last wrote to the partition, in ms since the Unix epoch (the broker's clock).
    pub last_write_ms: i64,
}

impl ProducerEntry {
    /// The sequence the next batch must start with.
    pub fn next_sequence(&self) -> i32 {
        self.batches.back().map_or(0, |batch| sequence_add(batch.last_sequence, 1))
    }
}

/// What to do with a batch that passed the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// A new batch: append it, then [`ProducerTable::record`] it.
    Append,
    /// A retry of a batch already written: write nothing, answer with these offsets (first, last).
    Duplicate {
        /// Offset of the original batch's first record.
        first_offset: u64,
        /// Offset of the original batch's last record.
        last_offset: u64,
    },
}

/// Why a batch of an idempotent producer was refused. Nothing was written and the state did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    /// The base sequence does not follow the producer's last batch: an earlier batch is missing.
    #[error("out of order sequence: expected {expected}, received {received}")]
    OutOfOrder {
        /// The sequence the next batch must start with.
        expected: i32,
        /// The batch's base sequence.
        received: i32,
    },
    /// A newer epoch of the producer id wrote to the partition: this producer is a zombie.
    #[error("producer fenced: epoch {received} is older than the current epoch {current}")]
    Fenced {
        /// The producer id's current epoch.
        current: i32,
        /// The batch's epoch.
        received: i32,
    },
    /// The partition, or the broker as a whole, already holds its maximum of producer entries; a new producer is
    /// refused rather than evicting a live one.
    #[error("{scope} tracks its maximum of {max} producer entries ({setting})")]
    TooManyProducers {
        /// `"the partition"` or `"the broker"`.
        scope: &'static str,
        /// The limit.
        max: usize,
        /// The setting that raises it.
        setting: &'static str,
    },
    /// The batch's producer fields are not valid (a negative epoch or sequence with a producer id).
    #[error("invalid producer fields: {reason}")]
    InvalidFields {
        /// What is wrong.
        reason: &'static str,
    },
}

/// The state of every producer id in a partition at a point of its log: what replaying the log below `offset` gives
/// (minus expired entries). Stored by the broker so that a restart replays only the log after `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProducerSnapshot {
    /// The log end offset when the snapshot was taken: it covers every batch below.
    pub offset: u64,
    /// Every producer id's entry, in producer id order.
    pub entries: Vec<(i64, ProducerEntry)>,
}

/// The number of producer entries every dedup table of a broker may hold together: the bound on their memory.
///
/// Shared by all partitions (an `Arc`); a table takes one unit per entry it creates and gives it back when the entry
/// expires or the table is dropped. Partitions inserting at the same instant may overshoot by one entry each.
#[derive(Debug)]
pub struct EntryBudget {
    used: AtomicUsize,
    max: usize,
}

impl EntryBudget {
    /// A budget of `max` entries.
    pub fn new(max: usize) -> Arc<EntryBudget> {
        Arc::new(EntryBudget { used: AtomicUsize::new(0), max })
    }

    /// Entries held now, over every table.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    fn take(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// The dedup table of one partition (see the module docs). Owned by the partition's appender thread.
#[derive(Debug)]
pub struct ProducerTable {
    entries: HashMap<i64, ProducerEntry>,
    producers_max: usize,
    budget: Arc<EntryBudget>,
    /// No entry's `last_write_ms` is below this (`i64::MAX` when empty): [`ProducerTable::expire`] scans the table
    /// only once the expiry cutoff reaches it, not after every group commit (a scan of 100,000 entries costs about
    /// 150 µs, more than an 11 KiB append).
    oldest_write_ms: i64,
}

impl Drop for ProducerTable {
    fn drop(&mut self) {
        self.budget.give_back(self.entries.len());
    }
}

impl ProducerTable {
    /// An empty table that tracks at most `producers_max` producer ids, with a budget of its own.
    pub fn new(producers_max: usize) -> ProducerTable {
        ProducerTable::with_budget(producers_max, EntryBudget::new(usize::MAX))
    }

    /// An empty table that tracks at most `producers_max` producer ids, drawing its entries from `budget`.
    pub fn with_budget(producers_max: usize, budget: Arc<EntryBudget>) -> ProducerTable {
        ProducerTable { entries: HashMap::new(), producers_max, budget, oldest_write_ms: i64::MAX }
    }

    /// A table holding a snapshot's entries (kept even beyond the limits: they were live when taken).
    pub fn from_snapshot(snapshot: &ProducerSnapshot, producers_max: usize, budget: Arc<EntryBudget>) -> ProducerTable {
        let entries: HashMap<i64, ProducerEntry> = snapshot.entries.iter().cloned().collect();
        budget.take(entries.len());
        let oldest_write_ms = entries.values().map(|entry| entry.last_write_ms).min().unwrap_or(i64::MAX);
        ProducerTable { entries, producers_max, budget, oldest_write_ms }
    }

    /// Producer ids tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no producer id is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of a producer id.
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.entries.get(&producer_id)
    }

    /// Decides what to do with a batch of an idempotent producer (`header.producer_id` is not -1). Pure: the table
    /// changes only in [`ProducerTable::record`].
    pub fn check(&self, header: &BatchHeader) -> Result<SequenceCheck, ProducerError> {
        check_fields(header)?;
        let (epoch, first, last) = (header.producer_epoch, header.base_sequence, header.last_sequence());
        let Some(entry) = self.entries.get(&header.producer_id) else {
            if first != 0 {
                return Err(ProducerError::OutOfOrder { expected: 0, received: first });
            }
            if self.entries.len() >= self.producers_max {
                let (scope, max, setting) = ("the partition", self.producers_max, "producers.ids_max");
                return Err(ProducerError::TooManyProducers { scope, max, setting });
            }
            if self.budget.used() >= self.budget.max() {
                let (scope, max, setting) = ("the broker", self.budget.max(), "producers.entries_max");
                return Err(ProducerError::TooManyProducers { scope, max, setting });
            }
            return Ok(SequenceCheck::Append);
        };
        if epoch < entry.epoch {
            return Err(ProducerError::Fenced { current: entry.epoch, received: epoch });
        }
        if epoch > entry.epoch {
            return match first {
                0 => Ok(SequenceCheck::Append),
                received => Err(ProducerError::OutOfOrder { expected: 0, received }),
            };
        }
        if let Some(original) =
            entry.batches.iter().find(|batch| batch.first_sequence == first && batch.last_sequence == last)
        {
            return Ok(SequenceCheck::Duplicate {
                first_offset: original.first_offset,
                last_offset: original.last_offset,
            });
        }
        let expected = entry.next_sequence();
        if first == expected {
            Ok(SequenceCheck::Append)
        } else {
            Err(ProducerError::OutOfOrder { expected, received: first })
        }
    }

    /// Records a batch that was appended (its header carries its assigned offsets), written at `now_ms`.
    /// Headers without a producer id are ignored, so replaying a log can pass every batch.
    pub fn record(&mut self, header: &BatchHeader, now_ms: i64) {
        if header.producer_id == NO_PRODUCER_ID || check_fields(header).is_err() {
            return;
        }
        let batch = BatchMeta {
            first_sequence: header.base_sequence,
            last_sequence: header.last_sequence(),
            first_offset: header.base_offset,
            last_offset: header.last_offset(),
        };
        let budget = &self.budget;
        let oldest_write_ms = &mut self.oldest_write_ms;
        let entry = self.entries.entry(header.producer_id).or_insert_with(|| {
            budget.take(1);
            *oldest_write_ms = (*oldest_write_ms).min(now_ms);
            ProducerEntry {
                epoch: header.producer_epoch,
                batches: VecDeque::with_capacity(BATCHES_RETAINED),
                last_write_ms: now_ms,
            }
        });
        if header.producer_epoch > entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_RETAINED {
            entry.batches.pop_front();
        }
        entry.batches.push_back(batch);
        entry.last_write_ms = entry.last_write_ms.max(now_ms);
    }

    /// Drops the entries of producers that have not written since `now_ms - expiration_ms`; returns how many.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let cutoff = now_ms.saturating_sub(expiration_ms);
        if self.oldest_write_ms > cutoff {
            return 0;
        }
        let before = self.entries.len();
        self.entries.retain(|_, entry| entry.last_write_ms > cutoff);
        self.oldest_write_ms = self.entries.values().map(|entry| entry.last_write_ms).min().unwrap_or(i64::MAX);
        let expired = before - self.entries.len();
        self.budget.give_back(expired);
        expired
    }

    /// The entries of the `limit` lowest producer ids, in id order, and how many the table holds (for operators:
    /// `ferry producers`). Clones at most `limit` entries.
    pub fn listing(&self, limit: usize) -> ProducerListing {
        let mut ids: Vec<i64> = self.entries.keys().copied().collect();
        ids.sort_unstable();
        ids.truncate(limit);
        let entries = ids.into_iter().filter_map(|id| Some((id, self.entries.get(&id)?.clone()))).collect();
        ProducerListing { entries, total: self.entries.len() }
    }

    /// The table as a snapshot at log offset `offset`.
    pub fn snapshot(&self, offset: u64) -> ProducerSnapshot {
        let mut entries: Vec<(i64, ProducerEntry)> =
            self.entries.iter().map(|(id, entry)| (*id, entry.clone())).collect();
        entries.sort_unstable_by_key(|(id, _)| *id);
        ProducerSnapshot { offset, entries }
    }
}

/// Limits and timers of a partition's producer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStateConfig {
    /// Most producer ids one partition tracks; a new one over it is refused ([`ProducerError::TooManyProducers`]).
    pub producers_max: usize,
    /// How long a producer id's entry lives without a write. Must be far longer than any producer's delivery timeout:
    /// a retry that arrives after its entry expired is no longer recognised.
    pub expiration: Duration,
    /// Longest time between two snapshots while producers write.
    pub snapshot_interval: Duration,
    /// Bytes appended after which a snapshot is taken at the next sync: the most of the log a restart replays.
    pub snapshot_bytes: u64,
}

impl Default for ProducerStateConfig {
    fn default() -> ProducerStateConfig {
        ProducerStateConfig {
            producers_max: 100_000,
            expiration: Duration::from_secs(24 * 60 * 60),
            snapshot_interval: Duration::from_secs(60),
            snapshot_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Where a partition's appender stores producer snapshots (the broker: its metadata store).
pub trait SnapshotSink: Send + Sync + fmt::Debug {
    /// Stores the snapshot durably, replacing the previous one. A failure is logged and retried at the next snapshot:
    /// the log stays the source of truth, a restart just replays more of it.
    fn save(&self, snapshot: &ProducerSnapshot) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

/// How an appender sets up its producer state.
#[derive(Debug, Clone)]
pub struct ProducerSetup {
    /// Limits and timers.
    pub config: ProducerStateConfig,
    /// The last stored snapshot, if any; replay starts at its offset.
    pub snapshot: Option<ProducerSnapshot>,
    /// Where new snapshots go; `None` takes none (a restart then replays the whole log).
    pub sink: Option<Arc<dyn SnapshotSink>>,
    /// The clock for write times and expiry.
    pub clock: Arc<dyn Clock>,
    /// The broker-wide budget of producer entries this partition's table draws from.
    pub budget: Arc<EntryBudget>,
    /// Message-id dedup, for a topic with a dedup window; `None` deduplicates nothing by key.
    pub dedup: Option<crate::dedup::DedupSetup>,
}

impl Default for ProducerSetup {
    fn default() -> ProducerSetup {
        ProducerSetup {
            config: ProducerStateConfig::default(),
            snapshot: None,
            sink: None,
            clock: Arc::new(SystemClock),
            budget: EntryBudget::new(usize::MAX),
            dedup: None,
        }
    }
}

/// What rebuilding the producer state at startup did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    /// Whether a snapshot was used (`false`: none stored, or its offset was past the recovered end of the log).
    pub from_snapshot: bool,
    /// The offset replay started at.
    pub replayed_from: u64,
    /// Batches replayed.
    pub batches_replayed: u64,
    /// Producer ids tracked afterwards.
    pub producers: usize,
    /// The highest producer id tracked afterwards: the broker checks that its metadata store issued it.
    pub max_producer_id: Option<i64>,
}

/// Replay reads at most this many bytes at a time.
const REPLAY_READ_BYTES: u32 = 4 * 1024 * 1024;

/// Rebuilds a partition's producer table: the snapshot's entries, then every batch of the log from the snapshot's
/// offset (or from the start of the log, without a usable snapshot) to its end.
///
/// A snapshot whose offset is past the end of the log (a crash took back unsynced batches it had seen, possible only
/// with fsync `never` or `interval`) is ignored: replaying the whole log is always correct. Replayed entries count as
/// written now, so they cannot expire before a client could have retried.
pub fn rebuild(log: &dyn PartitionLog, setup: &ProducerSetup) -> Result<(ProducerTable, RebuildReport), LogError> {
    let now_ms = setup.clock.now_ms();
    let (start, end) = (log.start_offset(), log.end_offset());
    let usable = setup.snapshot.as_ref().filter(|snapshot| snapshot.offset <= end);
    let (mut table, mut from) = match usable {
        Some(snapshot) => (
            ProducerTable::from_snapshot(snapshot, setup.config.producers_max, Arc::clone(&setup.budget)),
            snapshot.offset.max(start),
        ),
        None => (ProducerTable::with_budget(setup.config.producers_max, Arc::clone(&setup.budget)), start),
    };
    let replayed_from = from;
    let mut batches_replayed = 0u64;
    while from < end {
        let slice = log.read(from, REPLAY_READ_BYTES)?;
        if slice.next_offset <= from {
            break;
        }
        for batch in split_batches(slice.bytes) {
            let batch = batch.map_err(|source| LogError::Corrupt { path: "replay".into(), position: from, source })?;
            // The first batch of a read may start below `from` (a read never splits a batch): it was replayed already.
            if batch.base_offset() >= from {
                table.record(batch.header(), now_ms);
                batches_replayed += 1;
            }
        }
        from = slice.next_offset;
    }
    let report = RebuildReport {
        from_snapshot: usable.is_some(),
        replayed_from,
        batches_replayed,
        producers: table.len(),
        max_producer_id: table.entries.keys().copied().max(),
    };
    Ok((table, report))
}

fn check_fields(header: &BatchHeader) -> Result<(), ProducerError> {
    if header.producer_id < 0 {
        return Err(ProducerError::InvalidFields { reason: "negative producer id" });
    }
    if header.producer_epoch < 0 {
        return Err(ProducerError::InvalidFields { reason: "negative producer epoch" });
    }
    if header.base_sequence < 0 {
        return Err(ProducerError::InvalidFields { reason: "negative base sequence" });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
