//! Transactions in the metadata store: each transactional id's durable state (`txn_log`) and the record batches
//! staged by open transactions (`txn_staged`).
//!
//! `txn_log`, key: transactional id (raw UTF-8). Value: producer id, epoch, timeout, the next transaction number, the
//! last ended transaction and its outcome, the open transaction's number and start (written, synced, when a
//! transaction begins) and, between a commit's decision and the end of its apply, the decision: per partition, the
//! producer sequence its batches start at.
//!
//! `txn_staged`, key: `u64` producer id, `u32` epoch, `u64` transaction, `u64` topic id, `u32` partition, `u32` the
//! batch's staging sequence (the records the producer staged before it in that partition and transaction). Value:
//! the record batch as received. A resent batch lands on the same key, so staging is idempotent.
//!
//! Durability (see `crate::transactions` for why each step is safe):
//! - the begin marker, the commit decision (with the transaction's consumer offsets, in the same `WriteBatch`) and a
//!   new epoch are synced writes;
//! - staged batches are written without a sync of their own: RocksDB's write-ahead log is one ordered file, so the
//!   synced decision write that follows makes them durable too; a crash before the decision aborts the transaction
//!   on restart anyway (its begin marker is durable);
//! - the end of a transaction (commit applied, or abort) is not synced: if a crash loses it, the restart finds the
//!   begin marker (abort again) or the decision (apply again, a no-op for what was applied).

use bytes::Bytes;
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use super::values::{self, VALUE_VERSION};
use super::{
    CF_CONSUMER_OFFSETS, CF_TXN_LOG, CF_TXN_STAGED, CorruptReason, EngineError, GroupOffset, MetaError, MetaStore,
    corrupt, offset_key,
};

/// A transactional id's durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTxn {
    /// The producer id the transactional id maps to.
    pub producer_id: i64,
    /// The current epoch (bumped by every InitProducerId).
    pub epoch: i32,
    /// The transaction timeout in milliseconds.
    pub timeout_ms: u64,
    /// The number of the next transaction to begin in this epoch (the open one's number + 1 while one is open).
    pub next: u64,
    /// The last transaction of this epoch that ended, and whether it committed.
    pub last: Option<(u64, bool)>,
    /// The open transaction: its number and when it began (ms since the Unix epoch).
    pub open: Option<(u64, u64)>,
    /// The commit decision of the open transaction, once taken.
    pub decision: Option<Vec<DecidedPartition>>,
}

/// One partition of a commit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecidedPartition {
    /// The topic id.
    pub topic_id: u64,
    /// The partition.
    pub partition: u32,
    /// The producer sequence of the first record appended to the partition by this commit.
    pub start_sequence: i32,
}

/// One staged batch: topic id, partition, staging sequence and the batch bytes.
pub type StagedBatch = (u64, u32, u32, Bytes);

#[derive(Clone, PartialEq, prost::Message)]
struct TxnValue {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(int64, tag = "2")]
    producer_id: i64,
    #[prost(int32, tag = "3")]
    epoch: i32,
    #[prost(uint64, tag = "4")]
    timeout_ms: u64,
    #[prost(uint64, tag = "5")]
    next: u64,
    #[prost(bool, tag = "6")]
    has_last: bool,
    #[prost(uint64, tag = "7")]
    last: u64,
    #[prost(bool, tag = "8")]
    last_committed: bool,
    #[prost(bool, tag = "9")]
    has_open: bool,
    #[prost(uint64, tag = "10")]
    open: u64,
    #[prost(uint64, tag = "11")]
    open_started_ms: u64,
    #[prost(bool, tag = "12")]
    decided: bool,
    #[prost(message, repeated, tag = "13")]
    decision: Vec<DecidedValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DecidedValue {
    #[prost(uint64, tag = "1")]
    topic_id: u64,
    #[prost(uint32, tag = "2")]
    partition: u32,
    #[prost(int32, tag = "3")]
    start_sequence: i32,
}

fn to_value(txn: &StoredTxn) -> TxnValue {
    TxnValue {
        version: VALUE_VERSION,
        producer_id: txn.producer_id,
        epoch: txn.epoch,
        timeout_ms: txn.timeout_ms,
        next: txn.next,
        has_last: txn.last.is_some(),
        last: txn.last.map_or(0, |(number, _)| number),
        last_committed: txn.last.is_some_and(|(_, committed)| committed),
        has_open: txn.open.is_some(),
        open: txn.open.map_or(0, |(number, _)| number),
        open_started_ms: txn.open.map_or(0, |(_, started)| started),
        decided: txn.decision.is_some(),
        decision: txn
            .decision
            .iter()
            .flatten()
            .map(|decided| DecidedValue {
                topic_id: decided.topic_id,
                partition: decided.partition,
                start_sequence: decided.start_sequence,
            })
            .collect(),
    }
}

fn from_value(value: TxnValue) -> Result<StoredTxn, CorruptReason> {
    if value.producer_id < 0 || value.epoch < 0 {
        return Err(CorruptReason::InvalidField { field: "producer_id" });
    }
    if value.decided && !value.has_open {
        return Err(CorruptReason::InvalidField { field: "decided" });
    }
    Ok(StoredTxn {
        producer_id: value.producer_id,
        epoch: value.epoch,
        timeout_ms: value.timeout_ms,
        next: value.next,
        last: value.has_last.then_some((value.last, value.last_committed)),
        open: value.has_open.then_some((value.open, value.open_started_ms)),
        decision: value.decided.then(|| {
            value
                .decision
                .iter()
                .map(|decided| DecidedPartition {
                    topic_id: decided.topic_id,
                    partition: decided.partition,
                    start_sequence: decided.start_sequence,
                })
                .collect()
        }),
    })
}

/// `u64` producer id, `u32` epoch, `u64` transaction: the prefix of one transaction's staged batches.
fn staged_prefix(producer_id: i64, epoch: i32, transaction: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(36);
    // Producer ids and epochs are never negative (checked when decoded and when issued).
    key.extend_from_slice(&(producer_id as u64).to_be_bytes());
    key.extend_from_slice(&(epoch as u32).to_be_bytes());
    key.extend_from_slice(&transaction.to_be_bytes());
    key
}

fn staged_key(prefix: &[u8], topic_id: u64, partition: u32, sequence: u32) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&topic_id.to_be_bytes());
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// The first key after every key that starts with `prefix` (a prefix of `0xff` bytes has none: `None`).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn unsynced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(false);
    options.disable_wal(false);
    options
}

impl MetaStore {
    /// Every transactional id's state, in id order.
    pub fn transactions(&self) -> Result<Vec<(String, StoredTxn)>, MetaError> {
        let cf = self.cf(CF_TXN_LOG);
        let mut found = Vec::new();
        for item in self.db.iterator_cf(&cf, IteratorMode::Start) {
            let (key, value) =
                item.map_err(|source| MetaError::Read { cf: CF_TXN_LOG, source: EngineError(source) })?;
            let id = std::str::from_utf8(&key)
                .map_err(|_| corrupt(CF_TXN_LOG, &key, CorruptReason::InvalidField { field: "transactional_id" }))?;
            let stored = values::decode::<TxnValue>(&value)
                .and_then(from_value)
                .map_err(|reason| corrupt(CF_TXN_LOG, &key, reason))?;
            found.push((id.to_owned(), stored));
        }
        Ok(found)
    }

    /// Stores a transactional id's state, synced (a new epoch, a begin marker).
    pub fn put_transaction(&self, id: &str, txn: &StoredTxn) -> Result<(), MetaError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(&self.cf(CF_TXN_LOG), id.as_bytes(), values::encode(&to_value(txn)));
        self.write(batch)
    }

    /// Stages record batches of an open transaction, in one write without a sync of its own (see the module docs).
    pub fn stage_batches(
        &self,
        producer_id: i64,
        epoch: i32,
        transaction: u64,
        batches: &[StagedBatch],
    ) -> Result<(), MetaError> {
        let prefix = staged_prefix(producer_id, epoch, transaction);
        let cf = self.cf(CF_TXN_STAGED);
        let mut batch = WriteBatch::default();
        for (topic_id, partition, sequence, bytes) in batches {
            batch.put_cf(&cf, staged_key(&prefix, *topic_id, *partition, *sequence), bytes);
        }
        self.db.write_opt(batch, &unsynced()).map_err(|source| MetaError::Write(EngineError(source)))
    }

    /// One partition's staged batches of a transaction, in staging-sequence order.
    pub fn staged_batches(
        &self,
        producer_id: i64,
        epoch: i32,
        transaction: u64,
        topic_id: u64,
        partition: u32,
    ) -> Result<Vec<Bytes>, MetaError> {
        let mut prefix = staged_prefix(producer_id, epoch, transaction);
        prefix.extend_from_slice(&topic_id.to_be_bytes());
        prefix.extend_from_slice(&partition.to_be_bytes());
        let cf = self.cf(CF_TXN_STAGED);
        let mut found = Vec::new();
        for item in self.db.iterator_cf(&cf, IteratorMode::From(&prefix, Direction::Forward)) {
            let (key, value) =
                item.map_err(|source| MetaError::Read { cf: CF_TXN_STAGED, source: EngineError(source) })?;
            if !key.starts_with(&prefix) {
                break;
            }
            found.push(Bytes::from(value.into_vec()));
        }
        Ok(found)
    }

    /// Writes a commit decision: the transactional id's state (with `decision` set) and the transaction's consumer
    /// offsets, in one synced batch. The staged batches written before it are durable once it returns.
    pub fn decide_transaction(
        &self,
        id: &str,
        txn: &StoredTxn,
        offsets: Option<(&str, &[GroupOffset])>,
    ) -> Result<(), MetaError> {
        debug_assert!(txn.decision.is_some());
        let _serialized = self.offsets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut batch = WriteBatch::default();
        batch.put_cf(&self.cf(CF_TXN_LOG), id.as_bytes(), values::encode(&to_value(txn)));
        if let Some((group, offsets)) = offsets {
            let cf = self.cf(CF_CONSUMER_OFFSETS);
            for (topic_id, partition, committed) in offsets {
                batch.put_cf(
                    &cf,
                    offset_key(group, *topic_id, *partition),
                    values::encode(&values::offset_to_value(committed)),
                );
            }
        }
        self.write(batch)
    }

    /// Ends a transaction (its commit applied, or aborted): stores the id's new state and deletes the transaction's
    /// staged batches, in one batch without a sync of its own (see the module docs).
    pub fn end_transaction(
        &self,
        id: &str,
        txn: &StoredTxn,
        producer_id: i64,
        epoch: i32,
        transaction: u64,
    ) -> Result<(), MetaError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(&self.cf(CF_TXN_LOG), id.as_bytes(), values::encode(&to_value(txn)));
        let prefix = staged_prefix(producer_id, epoch, transaction);
        if let Some(end) = prefix_end(&prefix) {
            batch.delete_range_cf(&self.cf(CF_TXN_STAGED), &prefix, &end);
        }
        self.db.write_opt(batch, &unsynced()).map_err(|source| MetaError::Write(EngineError(source)))
    }

    /// Deletes every staged batch: at start, after the decided transactions were applied, whatever is left belongs
    /// to transactions that were aborted.
    pub fn clear_staged(&self) -> Result<(), MetaError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(&self.cf(CF_TXN_STAGED), [0u8; 1].as_slice(), [0xffu8; 40].as_slice());
        self.write(batch)
    }
}
