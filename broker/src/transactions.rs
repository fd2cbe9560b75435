//! The transaction coordinator: transactional ids, their epochs, open transactions, commit and abort.
//!
//! # Design: staged records, a durable decision, an idempotent apply
//!
//! The records of an open transaction are not appended to their partitions: they are staged in the metadata store
//! (`txn_staged`, see `crate::meta` and `meta/txn.rs`). At commit the coordinator
//!
//! 1. checks that the transaction is complete (each partition's staged batches form one unbroken run of staging
//!    sequences from 0: no TxnProduce went missing) and that the consumer-group member whose offsets it carries still
//!    owns those partitions in its generation;
//! 2. asks each partition's appender for the producer's next sequence there, and writes the **decision** (those
//!    start sequences) and the transaction's consumer offsets in one synced `WriteBatch`: from here on the commit
//!    happens, whatever fails;
//! 3. **applies** it: appends each partition's staged batches contiguously, stamped with the producer id, epoch and
//!    consecutive sequences, through the partition's appender (group commit, the topic's fsync policy);
//! 4. ends the transaction (state updated, staged batches deleted) and answers with the offsets.
//!
//! A crash after step 2 is finished on restart by applying the decision again before the broker serves anyone: the
//! partitions' dedup tables (rebuilt from the log) say how far each partition got, so batches already appended are
//! skipped and the apply is idempotent. A crash before step 2 aborts the transaction on restart: its begin marker
//! (written, synced, when it began) is there and no decision is. Staged batches are written without a sync of their
//! own; the synced decision write makes every earlier write of RocksDB's ordered write-ahead log durable with it.
//!
//! So consumers never see records of open or aborted transactions (the log holds only committed records), offsets
//! stay dense, an open transaction never holds back other producers' records (no last stable offset), and
//! `read_committed` and `read_uncommitted` read the same records. The cost: transactional records are written twice
//! (staging, then the log) and get their offsets only at commit (returned in the EndTxn answer).
//!
//! # Fencing and stale requests
//!
//! Every request names (transactional id, producer id, epoch, transaction number). `InitProducerId` with the
//! transactional id bumps the epoch (fencing the previous instance: `PRODUCER_FENCED` for its requests), finishes a
//! decided commit of the previous instance and aborts its open transaction. Transaction numbers count from 0 within
//! an epoch; a request for any transaction but the open one (or, with none open, a number not used yet: the producer
//! skips numbers of transactions that ended before reaching the broker, and an abort of such a number uses it up)
//! changes nothing and gets
//! `INVALID_TXN_STATE`, or `TRANSACTION_ABORTED` for a transaction that was aborted. So a delayed TxnProduce or EndTxn
//! of transaction N can never add to, commit or abort transaction N+1 (the Bufstream anomaly), and a retried EndTxn
//! of an ended transaction gets the outcome it had.
//!
//! # Concurrency and bounds
//!
//! Each transactional id has an async mutex held for the whole of each of its requests (including a commit's apply),
//! so one id's requests run one at a time, in any order across ids. The timeout sweeper skips ids that are busy. The
//! number of ids (`transactions.ids_max`), open transactions (`open_max`), staged bytes and partitions per
//! transaction (`bytes_max`, `partitions_max`) are bounded; staged records are on disk, and the memory per open
//! transaction is a few dozen bytes per staged batch.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_log::{Durability, LogError, PendingAck};
use ferry_protocol::RecordBatch;
use ferry_protocol::batch::{ProducerFields, SEQUENCE_MAX, sequence_add};
use tokio_util::sync::CancellationToken;

use crate::config::{TransactionsConfig, millis};
use crate::groups::{Coordinator as Groups, GroupError, TopicPartition, valid_id};
use crate::meta::{CommittedOffset, DecidedPartition, GroupOffset, MetaError, MetaStore, StagedBatch, StoredTxn};
use crate::metrics::{
    LABEL_REASON, TRANSACTION_OLDEST_AGE_SECONDS, TRANSACTIONS_ABORTED_TOTAL, TRANSACTIONS_COMMITTED_TOTAL,
    TRANSACTIONS_OPEN,
};
use crate::partitions::{Partitions, Topic};
use crate::producers::{IssueError, ProducerIds};

/// Why a transaction was aborted; the `reason` label of [`TRANSACTIONS_ABORTED_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// The producer asked (EndTxn with commit = false).
    Requested,
    /// It was open longer than its timeout.
    Timeout,
    /// The broker stopped while it was open.
    Restart,
    /// An operator aborted it (`ferry txn abort`).
    Operator,
    /// A newer instance of the transactional id called InitProducerId.
    Fenced,
    /// It exceeded `transactions.bytes_max` or `transactions.partitions_max`.
    TooLarge,
    /// The consumer-group member whose offsets it carried lost its partitions or generation.
    GroupChanged,
    /// Staged batches were missing at the commit (a TxnProduce was lost).
    Incomplete,
    /// A topic it wrote to was deleted.
    TopicDeleted,
}

impl AbortReason {
    /// The metric label value.
    pub fn name(self) -> &'static str {
        match self {
            AbortReason::Requested => "requested",
            AbortReason::Timeout => "timeout",
            AbortReason::Restart => "restart",
            AbortReason::Operator => "operator",
            AbortReason::Fenced => "fenced",
            AbortReason::TooLarge => "too_large",
            AbortReason::GroupChanged => "group_changed",
            AbortReason::Incomplete => "incomplete",
            AbortReason::TopicDeleted => "topic_deleted",
        }
    }
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a transactional request was refused. Unless said otherwise, nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// The transactional id is not 1-255 bytes of `[a-zA-Z0-9._-]`.
    #[error("invalid transactional id (1-255 bytes of [a-zA-Z0-9._-])")]
    InvalidId,
    /// The requested timeout is 0 or above `transactions.timeout_max_ms`.
    #[error("transaction timeout {requested_ms} ms is outside 1..={max_ms} ms (transactions.timeout_max_ms)")]
    InvalidTimeout {
        /// The requested timeout.
        requested_ms: u64,
        /// The maximum.
        max_ms: u64,
    },
    /// The broker knows no such transactional id (InitProducerId first).
    #[error("unknown transactional id (call InitProducerId first)")]
    UnknownId,
    /// A newer instance (epoch) of the transactional id exists, or the producer id is not the id's.
    #[error("producer fenced: the transactional id is at producer id {producer_id} epoch {epoch}")]
    Fenced {
        /// The id's producer id.
        producer_id: i64,
        /// The id's current epoch.
        epoch: i32,
    },
    /// The epoch is newer than any issued.
    #[error("producer epoch {received} is newer than the current epoch {current}")]
    InvalidEpoch {
        /// The current epoch.
        current: i32,
        /// The request's epoch.
        received: i32,
    },
    /// The request names a transaction that is not the open one.
    #[error("invalid transaction state: {0}")]
    InvalidState(String),
    /// The transaction was aborted.
    #[error("transaction {transaction} was aborted ({reason})")]
    Aborted {
        /// The transaction number.
        transaction: u64,
        /// Why.
        reason: AbortReason,
    },
    /// The transaction would exceed a limit; it was aborted.
    #[error("transaction too large: {0}; it was aborted")]
    TooLarge(String),
    /// The transaction is being committed (its decision is taken).
    #[error("transaction {transaction} is being committed")]
    Committing {
        /// The transaction number.
        transaction: u64,
    },
    /// Too many transactional ids or open transactions.
    #[error("the broker has its maximum of {max} {what} ({setting})")]
    TooMany {
        /// What is at its limit.
        what: &'static str,
        /// The limit.
        max: u32,
        /// The setting that raises it.
        setting: &'static str,
    },
    /// A batch or offset names a topic or partition that does not exist.
    #[error("unknown topic or partition {topic}/{partition}")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// The consumer-group coordinator refused the offsets.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// No producer id could be issued.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A partition log failed while a decided commit was applied; the commit is finished by a retry of EndTxn, the
    /// next InitProducerId, or the next start.
    #[error("applying the commit failed (it is finished by a retry or on restart): {0}")]
    Apply(#[source] LogError),
    /// A staged batch no longer decodes (metadata-store corruption); the decided commit cannot be applied.
    #[error("staged batch of transaction {transaction} is corrupt: {reason}")]
    CorruptStaged {
        /// The transaction number.
        transaction: u64,
        /// What is wrong.
        reason: String,
    },
}

/// One partition's batches for [`Transactions::stage`]: its topic, partition and decoded batches.
#[derive(Debug)]
pub struct StageRequest {
    /// The topic.
    pub topic: Arc<Topic>,
    /// The partition.
    pub partition: u32,
    /// The batches, checksum-verified, each with its staging sequence in `base_sequence`.
    pub batches: Vec<RecordBatch>,
}

/// Offsets for [`Transactions::add_offsets`]: (topic, partition) with the topic id and the offset.
pub type TxnOffset = (TopicPartition, u64, CommittedOffset);

/// The offsets a commit appended to one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedPartition {
    /// The topic name.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The first offset appended.
    pub base_offset: u64,
    /// The last offset appended.
    pub last_offset: u64,
    /// What the acknowledgement guarantees.
    pub durability: Durability,
}

/// An open transaction, as `ferry txn list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnView {
    /// The transactional id.
    pub transactional_id: String,
    /// Its producer id.
    pub producer_id: i64,
    /// Its epoch.
    pub epoch: i32,
    /// The transaction number.
    pub transaction: u64,
    /// `open` or `committing`.
    pub state: &'static str,
    /// When it began.
    pub started: Instant,
    /// Its timeout.
    pub timeout: Duration,
    /// The partitions it staged records for.
    pub partitions: Vec<TopicPartition>,
    /// Staged batches.
    pub staged_batches: u64,
    /// Staged bytes.
    pub staged_bytes: u64,
    /// The group whose offsets it commits, if any.
    pub group: Option<String>,
}

/// What a partition of an open transaction staged: per staging sequence, the batch's record count and bytes.
#[derive(Debug)]
struct StagedPartition {
    topic: Arc<Topic>,
    batches: BTreeMap<u32, (u32, u32)>,
}

#[derive(Debug)]
struct GroupOffsets {
    group: String,
    member_id: String,
    generation: i32,
    offsets: BTreeMap<TopicPartition, (u64, CommittedOffset)>,
}

#[derive(Debug)]
struct OpenTxn {
    number: u64,
    started: Instant,
    deadline: Instant,
    /// By (topic id, partition).
    partitions: BTreeMap<(u64, u32), StagedPartition>,
    bytes: u64,
    batches: u64,
    offsets: Option<GroupOffsets>,
    /// The commit decision is durable: the transaction can only be finished, never aborted.
    decided: bool,
}

#[derive(Debug)]
struct Entry {
    id: String,
    stored: StoredTxn,
    open: Option<OpenTxn>,
    /// Why the last aborted transaction was aborted (for the error of its producer's next request).
    last_abort: Option<AbortReason>,
}

/// One transactional id: its state behind an async lock held for each request, and what `txn list` shows, which
/// never waits for that lock.
#[derive(Debug)]
struct Slot {
    entry: tokio::sync::Mutex<Entry>,
    view: Mutex<Option<TxnView>>,
}

/// The transaction coordinator (see the module docs). Share it in an `Arc`.
#[derive(Debug)]
pub struct Transactions {
    config: TransactionsConfig,
    meta: Arc<MetaStore>,
    partitions: Arc<Partitions>,
    groups: Arc<Groups>,
    producer_ids: Arc<ProducerIds>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    open: AtomicUsize,
}

/// Testing hook: with `FERRY_FAILPOINT=txn_after_decision` the process aborts right after a commit decision is
/// durable, and with `FERRY_FAILPOINT=txn_mid_apply` right after the first partition of an apply is durable, so
/// that crash tests can prove that a restart finishes the commit. Unset (always, in production), it does nothing.
fn failpoint(name: &str) {
    static FAILPOINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if FAILPOINT.get_or_init(|| std::env::var("FERRY_FAILPOINT").ok()).as_deref() == Some(name) {
        tracing::error!(failpoint = name, "failpoint reached: aborting the process");
        std::process::abort();
    }
}

/// Runs blocking metadata-store work on the blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
}

fn now_ms() -> u64 {
    u64::try_from(crate::handlers::now_ms()).unwrap_or(0)
}

/// Records from sequence `from` to sequence `to`, counting forward with wrap-around.
fn sequence_distance(from: i32, to: i32) -> u64 {
    let modulus = i64::from(SEQUENCE_MAX) + 1;
    u64::try_from((i64::from(to) - i64::from(from)).rem_euclid(modulus)).unwrap_or(0)
}

impl Transactions {
    /// Loads every transactional id, finishes decided commits and aborts transactions that were open when the broker
    /// stopped; call it after the partitions are open and before serving. Staged batches left over are deleted.
    pub async fn open(
        config: TransactionsConfig,
        meta: Arc<MetaStore>,
        partitions: Arc<Partitions>,
        groups: Arc<Groups>,
        producer_ids: Arc<ProducerIds>,
    ) -> Result<Transactions, TxnError> {
        let stored = {
            let meta = Arc::clone(&meta);
            blocking(move || meta.transactions()).await?
        };
        let coordinator = Transactions {
            config,
            meta,
            partitions,
            groups,
            producer_ids,
            slots: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
        };
        let (mut committed, mut aborted, mut unfinished) = (0usize, 0usize, 0usize);
        for (id, stored) in stored {
            let mut entry = Entry { id: id.clone(), stored, open: None, last_abort: None };
            if entry.stored.decision.is_some() {
                match coordinator.apply(&entry.id, &entry.stored).await {
                    Ok(_) => {
                        coordinator.finish_commit(&mut entry).await;
                        committed += 1;
                    }
                    Err(error) => {
                        tracing::error!(transactional_id = %id, %error,
                            "a decided commit could not be finished at start; it is retried on the next request");
                        let (number, _) = entry.stored.open.unwrap_or_default();
                        entry.open = Some(OpenTxn::decided(number, coordinator.timeout(&entry.stored)));
                        coordinator.open.fetch_add(1, Ordering::Relaxed);
                        unfinished += 1;
                    }
                }
            } else if let Some((number, _)) = entry.stored.open {
                entry.open = Some(OpenTxn::new(number, coordinator.timeout(&entry.stored)));
                coordinator.open.fetch_add(1, Ordering::Relaxed);
                coordinator.abort(&mut entry, AbortReason::Restart).await;
                aborted += 1;
            }
            let slot = Arc::new(Slot { view: Mutex::new(None), entry: tokio::sync::Mutex::new(entry) });
            coordinator.publish(&slot, &*slot.entry.lock().await);
            coordinator.lock_slots().insert(id, slot);
        }
        if unfinished == 0 {
            let meta = Arc::clone(&coordinator.meta);
            blocking(move || meta.clear_staged()).await?;
        }
        tracing::info!(
            transactional_ids = coordinator.lock_slots().len(),
            committed,
            aborted,
            unfinished,
            "transaction coordinator recovered"
        );
        coordinator.refresh_gauges();
        Ok(coordinator)
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn timeout(&self, stored: &StoredTxn) -> Duration {
        match stored.timeout_ms {
            0 => self.config.timeout_default,
            ms => Duration::from_millis(ms),
        }
    }

    fn slot(&self, id: &str) -> Result<Arc<Slot>, TxnError> {
        if !valid_id(id) {
            return Err(TxnError::InvalidId);
        }
        self.lock_slots().get(id).cloned().ok_or(TxnError::UnknownId)
    }

    /// InitProducerId with a transactional id: maps it to its producer id (issuing one the first time), finishes a
    /// decided commit and aborts an open transaction of the previous instance, and bumps the epoch, which fences that
    /// instance. Returns the producer id, the new epoch and the timeout in effect.
    pub async fn init(&self, id: &str, timeout_ms: u64) -> Result<(i64, i32, Duration), TxnError> {
        if !valid_id(id) {
            return Err(TxnError::InvalidId);
        }
        let max_ms = millis(self.config.timeout_max);
        if timeout_ms > max_ms {
            return Err(TxnError::InvalidTimeout { requested_ms: timeout_ms, max_ms });
        }
        let timeout = if timeout_ms == 0 { self.config.timeout_default } else { Duration::from_millis(timeout_ms) };
        let slot = {
            let mut slots = self.lock_slots();
            match slots.get(id) {
                Some(slot) => Arc::clone(slot),
                None => {
                    if slots.len() >= self.config.ids_max as usize {
                        return Err(TxnError::TooMany {
                            what: "transactional ids",
                            max: self.config.ids_max,
                            setting: "transactions.ids_max",
                        });
                    }
                    // A placeholder without a producer id: the first init below issues one.
                    let stored = StoredTxn {
                        producer_id: -1,
                        epoch: -1,
                        timeout_ms: 0,
                        next: 0,
                        last: None,
                        open: None,
                        decision: None,
                    };
                    let entry = Entry { id: id.to_owned(), stored, open: None, last_abort: None };
                    let slot = Arc::new(Slot { entry: tokio::sync::Mutex::new(entry), view: Mutex::new(None) });
                    slots.insert(id.to_owned(), Arc::clone(&slot));
                    slot
                }
            }
        };
        let mut entry = slot.entry.lock().await;
        let result = self.init_locked(&mut entry, timeout).await;
        if entry.stored.producer_id < 0 {
            // The first init failed: forget the placeholder.
            drop(entry);
            self.lock_slots().remove(id);
            return result;
        }
        self.publish(&slot, &entry);
        result
    }

    async fn init_locked(&self, entry: &mut Entry, timeout: Duration) -> Result<(i64, i32, Duration), TxnError> {
        if entry.stored.producer_id < 0 {
            let producer_ids = Arc::clone(&self.producer_ids);
            let issued = blocking(move || producer_ids.issue(crate::handlers::now_ms())).await?;
            entry.stored.producer_id = issued.producer_id;
        }
        if entry.open.as_ref().is_some_and(|open| open.decided) {
            // The previous instance's commit is decided: finish it before the new instance starts.
            self.apply(&entry.id, &entry.stored).await?;
            self.finish_commit(entry).await;
        }
        if entry.open.is_some() {
            self.abort(entry, AbortReason::Fenced).await;
        }
        let mut stored = entry.stored.clone();
        stored.epoch = stored.epoch.checked_add(1).ok_or_else(|| {
            TxnError::InvalidState("the producer epoch is exhausted: use a new transactional id".to_owned())
        })?;
        stored.timeout_ms = millis(timeout);
        stored.next = 0;
        stored.last = None;
        stored.open = None;
        stored.decision = None;
        let meta = Arc::clone(&self.meta);
        let id = entry.id.clone();
        let to_store = stored.clone();
        blocking(move || meta.put_transaction(&id, &to_store)).await?;
        entry.stored = stored;
        entry.last_abort = None;
        tracing::info!(transactional_id = %entry.id, producer_id = entry.stored.producer_id,
            epoch = entry.stored.epoch, "transactional producer initialized; older instances are fenced");
        Ok((entry.stored.producer_id, entry.stored.epoch, timeout))
    }

    /// Checks the request's producer id and epoch against the transactional id's.
    fn check_producer(entry: &Entry, producer_id: i64, epoch: i32) -> Result<(), TxnError> {
        let stored = &entry.stored;
        if producer_id != stored.producer_id || epoch < stored.epoch {
            return Err(TxnError::Fenced { producer_id: stored.producer_id, epoch: stored.epoch });
        }
        if epoch > stored.epoch {
            return Err(TxnError::InvalidEpoch { current: stored.epoch, received: epoch });
        }
        Ok(())
    }

    /// The error for a request naming `number` when it is not the open transaction (or the next one).
    fn not_open(entry: &Entry, number: u64) -> TxnError {
        if let Some(open) = &entry.open {
            return TxnError::InvalidState(format!(
                "transaction {} is open; the request names transaction {number}",
                open.number
            ));
        }
        match entry.stored.last {
            Some((last, false)) if last == number => {
                TxnError::Aborted { transaction: number, reason: entry.last_abort.unwrap_or(AbortReason::Restart) }
            }
            Some((last, true)) if last == number => {
                TxnError::InvalidState(format!("transaction {number} is already committed"))
            }
            _ if number < entry.stored.next => TxnError::InvalidState(format!("transaction {number} already ended")),
            _ => TxnError::InvalidState(format!(
                "transaction {number} skips ahead: the next transaction is {}",
                entry.stored.next
            )),
        }
    }

    /// Makes transaction `number` the open one: it already is, or it is the next one and begins now (a synced
    /// begin marker, so that a restart aborts it rather than forgetting it).
    async fn ensure_open(&self, entry: &mut Entry, number: u64) -> Result<(), TxnError> {
        match &entry.open {
            Some(open) if open.number == number => {
                if open.decided {
                    return Err(TxnError::Committing { transaction: number });
                }
                return Ok(());
            }
            Some(_) => return Err(Self::not_open(entry, number)),
            // Numbers only grow within an epoch; the producer skips those of transactions the broker never heard of
            // (nothing was sent before they ended), so any number from the next one on may begin.
            None if number < entry.stored.next => return Err(Self::not_open(entry, number)),
            None => {}
        }
        if self.open.load(Ordering::Relaxed) >= self.config.open_max as usize {
            return Err(TxnError::TooMany {
                what: "open transactions",
                max: self.config.open_max,
                setting: "transactions.open_max",
            });
        }
        let mut stored = entry.stored.clone();
        stored.open = Some((number, now_ms()));
        stored.next = number + 1;
        let meta = Arc::clone(&self.meta);
        let id = entry.id.clone();
        let to_store = stored.clone();
        blocking(move || meta.put_transaction(&id, &to_store)).await?;
        entry.open = Some(OpenTxn::new(number, self.timeout(&stored)));
        entry.stored = stored;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// TxnProduce: stages batches in the open transaction (beginning it if `number` is the next one).
    pub async fn stage(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i32,
        number: u64,
        requests: Vec<StageRequest>,
    ) -> Result<(), TxnError> {
        let slot = self.slot(id)?;
        let mut entry = slot.entry.lock().await;
        let result = self.stage_locked(&mut entry, producer_id, epoch, number, requests).await;
        self.publish(&slot, &entry);
        result
    }

    async fn stage_locked(
        &self,
        entry: &mut Entry,
        producer_id: i64,
        epoch: i32,
        number: u64,
        requests: Vec<StageRequest>,
    ) -> Result<(), TxnError> {
        Self::check_producer(entry, producer_id, epoch)?;
        self.ensure_open(entry, number).await?;
        let open = entry.open.as_ref().expect("ensure_open leaves the transaction open");
        // The limits, counting a resent batch (same staging sequence) once.
        let (mut bytes, mut n_partitions) = (open.bytes, open.partitions.len());
        let mut staged: Vec<StagedBatch> = Vec::new();
        for request in &requests {
            let key = (request.topic.record.id, request.partition);
            let known = open.partitions.get(&key);
            if known.is_none() {
                n_partitions += 1;
            }
            for batch in &request.batches {
                let sequence = u32::try_from(batch.header().base_sequence).unwrap_or(0);
                if let Some((_, old_bytes)) = known.and_then(|known| known.batches.get(&sequence)) {
                    bytes -= u64::from(*old_bytes);
                }
                bytes += u64::from(batch.len_bytes());
                staged.push((key.0, key.1, sequence, batch.as_bytes().clone()));
            }
        }
        if bytes > self.config.bytes_max || n_partitions > self.config.partitions_max as usize {
            let what = if bytes > self.config.bytes_max {
                format!("{bytes} staged bytes exceed transactions.bytes_max ({})", self.config.bytes_max)
            } else {
                format!("{n_partitions} partitions exceed transactions.partitions_max ({})", self.config.partitions_max)
            };
            self.abort(entry, AbortReason::TooLarge).await;
            return Err(TxnError::TooLarge(what));
        }
        let meta = Arc::clone(&self.meta);
        let stored = entry.stored.clone();
        blocking(move || meta.stage_batches(stored.producer_id, stored.epoch, number, &staged)).await?;
        let open = entry.open.as_mut().expect("ensure_open leaves the transaction open");
        for request in requests {
            let key = (request.topic.record.id, request.partition);
            let partition = open
                .partitions
                .entry(key)
                .or_insert_with(|| StagedPartition { topic: Arc::clone(&request.topic), batches: BTreeMap::new() });
            for batch in &request.batches {
                let sequence = u32::try_from(batch.header().base_sequence).unwrap_or(0);
                if partition.batches.insert(sequence, (batch.record_count(), batch.len_bytes())).is_none() {
                    open.batches += 1;
                }
            }
        }
        open.bytes = bytes;
        Ok(())
    }

    /// TxnOffsetCommit: adds consumer-group offsets to the open transaction (beginning it if `number` is the next
    /// one), after checking the member's generation and assignment. Later offsets for a partition replace earlier.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_offsets(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i32,
        number: u64,
        group: &str,
        member_id: &str,
        generation: i32,
        offsets: Vec<TxnOffset>,
    ) -> Result<(), TxnError> {
        let slot = self.slot(id)?;
        let mut entry = slot.entry.lock().await;
        Self::check_producer(&entry, producer_id, epoch)?;
        if let Some(open) = entry.open.as_ref().filter(|open| open.number == number)
            && let Some(existing) = &open.offsets
            && (existing.group != group || existing.member_id != member_id || existing.generation != generation)
        {
            return Err(TxnError::InvalidState(format!(
                "the transaction already carries offsets of group {} (member {}, generation {}); one group \
                 membership per transaction",
                existing.group, existing.member_id, existing.generation
            )));
        }
        self.check_group(group, member_id, generation, offsets.iter().map(|(tp, _, _)| tp.clone()).collect())?;
        self.ensure_open(&mut entry, number).await?;
        let open = entry.open.as_mut().expect("ensure_open leaves the transaction open");
        let pending = open.offsets.get_or_insert_with(|| GroupOffsets {
            group: group.to_owned(),
            member_id: member_id.to_owned(),
            generation,
            offsets: BTreeMap::new(),
        });
        for (tp, topic_id, committed) in offsets {
            pending.offsets.insert(tp, (topic_id, committed));
        }
        self.publish(&slot, &entry);
        Ok(())
    }

    /// Checks with the group coordinator that the member owns every partition in its generation.
    fn check_group(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
        partitions: Vec<TopicPartition>,
    ) -> Result<crate::groups::CommitGuard, GroupError> {
        let checked: Vec<(TopicPartition, usize)> = partitions.into_iter().map(|tp| (tp, 0)).collect();
        let (verdicts, guard) = self.groups.begin_commit(group, member_id, generation, &checked)?;
        if let Some(refused) = verdicts.into_iter().find_map(Result::err) {
            return Err(refused);
        }
        Ok(guard)
    }

    /// EndTxn: commits or aborts transaction `number`. A commit answers with the offsets appended per partition.
    pub async fn end(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i32,
        number: u64,
        commit: bool,
    ) -> Result<Vec<CommittedPartition>, TxnError> {
        let slot = self.slot(id)?;
        let mut entry = slot.entry.lock().await;
        let result = self.end_locked(&mut entry, producer_id, epoch, number, commit).await;
        self.publish(&slot, &entry);
        result
    }

    async fn end_locked(
        &self,
        entry: &mut Entry,
        producer_id: i64,
        epoch: i32,
        number: u64,
        commit: bool,
    ) -> Result<Vec<CommittedPartition>, TxnError> {
        Self::check_producer(entry, producer_id, epoch)?;
        match &entry.open {
            Some(open) if open.number == number => {
                if commit {
                    self.commit(entry).await
                } else if open.decided {
                    Err(TxnError::Committing { transaction: number })
                } else {
                    self.abort(entry, AbortReason::Requested).await;
                    Ok(Vec::new())
                }
            }
            Some(_) => Err(Self::not_open(entry, number)),
            None => match entry.stored.last {
                // A retry of an EndTxn that was applied: the same outcome (without the offsets).
                Some((last, committed)) if last == number && committed == commit => Ok(Vec::new()),
                // An abort of a transaction that never began here (nothing reached the broker, or the request that
                // would have begun it was refused): its number is used up, so a delayed request of it is refused.
                _ if !commit && number >= entry.stored.next => {
                    let mut stored = entry.stored.clone();
                    stored.last = Some((number, false));
                    stored.next = number + 1;
                    let meta = Arc::clone(&self.meta);
                    let id = entry.id.clone();
                    let to_store = stored.clone();
                    blocking(move || meta.put_transaction(&id, &to_store)).await?;
                    entry.stored = stored;
                    entry.last_abort = Some(AbortReason::Requested);
                    Ok(Vec::new())
                }
                // A commit of a transaction the broker holds nothing for: it cannot tell an empty transaction from
                // one whose staging a restart dropped, so it refuses rather than commit part of one.
                _ if number >= entry.stored.next => {
                    Err(TxnError::Aborted { transaction: number, reason: AbortReason::Restart })
                }
                _ => Err(Self::not_open(entry, number)),
            },
        }
    }

    async fn commit(&self, entry: &mut Entry) -> Result<Vec<CommittedPartition>, TxnError> {
        let open = entry.open.as_ref().expect("commit is called for the open transaction");
        let number = open.number;
        if !open.decided {
            if let Some(reason) = self.commit_blocker(open) {
                self.abort(entry, reason).await;
                return Err(TxnError::Aborted { transaction: number, reason });
            }
            let open = entry.open.as_ref().expect("still open");
            // Held until the offsets are written, so the partitions cannot move to another member meanwhile.
            let guard = match &open.offsets {
                Some(offsets) => {
                    match self.check_group(
                        &offsets.group,
                        &offsets.member_id,
                        offsets.generation,
                        offsets.offsets.keys().cloned().collect(),
                    ) {
                        Ok(guard) => Some(guard),
                        Err(error) => {
                            tracing::info!(transactional_id = %entry.id, transaction = number, %error,
                                "transaction aborted: its consumer group changed before the commit");
                            self.abort(entry, AbortReason::GroupChanged).await;
                            return Err(TxnError::Aborted { transaction: number, reason: AbortReason::GroupChanged });
                        }
                    }
                }
                None => None,
            };
            let mut decision = Vec::with_capacity(open.partitions.len());
            for (&(topic_id, partition), staged) in &open.partitions {
                let Some(found) = staged.topic.partition(partition) else {
                    return Err(TxnError::UnknownPartition { topic: staged.topic.name().to_owned(), partition });
                };
                let start_sequence = match found.append_handle().producer_entry(entry.stored.producer_id).await {
                    Ok(Some(found)) if found.epoch == entry.stored.epoch => found.next_sequence(),
                    Ok(_) => 0,
                    Err(error) => return Err(TxnError::Apply(error)),
                };
                decision.push(DecidedPartition { topic_id, partition, start_sequence });
            }
            let mut stored = entry.stored.clone();
            stored.decision = Some(decision);
            let offsets: Option<(String, Vec<GroupOffset>)> = open.offsets.as_ref().map(|offsets| {
                let list = offsets
                    .offsets
                    .iter()
                    .map(|((_, partition), (topic_id, committed))| (*topic_id, *partition, committed.clone()))
                    .collect();
                (offsets.group.clone(), list)
            });
            let meta = Arc::clone(&self.meta);
            let id = entry.id.clone();
            let to_store = stored.clone();
            let offsets_to_store = offsets.clone();
            blocking(move || {
                meta.decide_transaction(
                    &id,
                    &to_store,
                    offsets_to_store.as_ref().map(|(group, list)| (group.as_str(), list.as_slice())),
                )
            })
            .await?;
            failpoint("txn_after_decision");
            drop(guard);
            entry.stored = stored;
            let open = entry.open.as_mut().expect("still open");
            open.decided = true;
            if let Some(pending) = &open.offsets {
                for ((topic, partition), (_, committed)) in &pending.offsets {
                    self.groups.metrics().committed(&pending.group, topic, *partition, committed.offset);
                }
            }
        }
        let committed = self.apply(&entry.id, &entry.stored).await?;
        self.finish_commit(entry).await;
        Ok(committed)
    }

    /// Why the open transaction cannot commit: staged batches missing, or a topic deleted.
    fn commit_blocker(&self, open: &OpenTxn) -> Option<AbortReason> {
        for (&(topic_id, _), staged) in &open.partitions {
            let alive = self.partitions.topic(staged.topic.name()).is_some_and(|topic| topic.record.id == topic_id);
            if !alive {
                return Some(AbortReason::TopicDeleted);
            }
            let mut expected: u64 = 0;
            for (&sequence, &(records, _)) in &staged.batches {
                if u64::from(sequence) != expected {
                    return Some(AbortReason::Incomplete);
                }
                expected += u64::from(records);
            }
        }
        None
    }

    /// Appends a decided transaction's staged batches to its partitions, skipping those a previous apply appended.
    async fn apply(&self, id: &str, stored: &StoredTxn) -> Result<Vec<CommittedPartition>, TxnError> {
        let decision = stored.decision.clone().unwrap_or_default();
        let (number, _) = stored.open.unwrap_or_default();
        let topics: HashMap<u64, Arc<Topic>> =
            self.partitions.topics().into_iter().map(|topic| (topic.record.id, topic)).collect();
        // Per partition: its topic, number, the appends' acknowledgements and the bytes appended.
        let mut pending: Vec<(Arc<Topic>, u32, Vec<PendingAck>, u64)> = Vec::with_capacity(decision.len());
        for decided in decision {
            let Some(topic) = topics.get(&decided.topic_id) else {
                tracing::warn!(transactional_id = %id, transaction = number, topic_id = decided.topic_id,
                    "a topic of a decided commit was deleted; its records are dropped");
                continue;
            };
            let Some(partition) = topic.partition(decided.partition) else { continue };
            let handle = partition.append_handle();
            let applied = match handle.producer_entry(stored.producer_id).await.map_err(TxnError::Apply)? {
                Some(found) if found.epoch == stored.epoch => {
                    sequence_distance(decided.start_sequence, found.next_sequence())
                }
                _ => 0,
            };
            let meta = Arc::clone(&self.meta);
            let (producer_id, epoch, topic_id, partition_number) =
                (stored.producer_id, stored.epoch, decided.topic_id, decided.partition);
            let batches: Vec<Bytes> =
                blocking(move || meta.staged_batches(producer_id, epoch, number, topic_id, partition_number)).await?;
            let mut sequence = decided.start_sequence;
            let mut before: u64 = 0;
            let mut acks = Vec::new();
            let mut n_bytes: u64 = 0;
            for bytes in batches {
                let mut batch = RecordBatch::decode(bytes)
                    .map_err(|error| TxnError::CorruptStaged { transaction: number, reason: error.to_string() })?;
                let records = batch.record_count();
                if before + u64::from(records) <= applied {
                    // Appended by an apply that a crash interrupted.
                    before += u64::from(records);
                    sequence = sequence_add(sequence, records);
                    continue;
                }
                batch.set_producer(ProducerFields {
                    producer_id: stored.producer_id,
                    producer_epoch: stored.epoch,
                    base_sequence: sequence,
                });
                n_bytes += u64::from(batch.len_bytes());
                acks.push(handle.submit(vec![batch]).await.map_err(TxnError::Apply)?);
                before += u64::from(records);
                sequence = sequence_add(sequence, records);
            }
            pending.push((Arc::clone(topic), decided.partition, acks, n_bytes));
        }
        let mut committed = Vec::with_capacity(pending.len());
        for (topic, partition, acks, n_bytes) in pending {
            let mut range: Option<(u64, u64, Durability)> = None;
            let mut n_records = 0u64;
            for pending in acks {
                let ack = pending.wait().await.map_err(TxnError::Apply)?;
                for appended in &ack.ranges {
                    n_records += appended.last - appended.first + 1;
                    let (first, _, _) = range.unwrap_or((appended.first, appended.last, ack.durability));
                    range = Some((first, appended.last, ack.durability));
                }
            }
            failpoint("txn_mid_apply");
            topic.metrics.produce_records.increment(n_records);
            topic.metrics.produce_bytes.increment(n_bytes);
            if let Some(found) = topic.partition(partition) {
                found.refresh_gauges();
            }
            if let Some((base_offset, last_offset, durability)) = range {
                committed.push(CommittedPartition {
                    topic: topic.name().to_owned(),
                    partition,
                    base_offset,
                    last_offset,
                    durability,
                });
            }
        }
        Ok(committed)
    }

    /// Ends an applied commit: state and staged batches, metrics.
    async fn finish_commit(&self, entry: &mut Entry) {
        let (number, _) = entry.stored.open.unwrap_or_default();
        let mut stored = entry.stored.clone();
        stored.open = None;
        stored.decision = None;
        stored.last = Some((number, true));
        self.end_stored(entry, stored, number).await;
        if entry.open.take().is_some() {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
        metrics::counter!(TRANSACTIONS_COMMITTED_TOTAL).increment(1);
        tracing::debug!(transactional_id = %entry.id, transaction = number, "transaction committed");
    }

    /// Aborts the open, undecided transaction: its staged batches are deleted and nothing of it becomes visible.
    async fn abort(&self, entry: &mut Entry, reason: AbortReason) {
        let Some(open) = entry.open.take() else { return };
        debug_assert!(!open.decided, "a decided transaction is never aborted");
        self.open.fetch_sub(1, Ordering::Relaxed);
        let mut stored = entry.stored.clone();
        stored.open = None;
        stored.decision = None;
        stored.last = Some((open.number, false));
        self.end_stored(entry, stored, open.number).await;
        entry.last_abort = Some(reason);
        metrics::counter!(TRANSACTIONS_ABORTED_TOTAL, LABEL_REASON => reason.name()).increment(1);
        let level_info = !matches!(reason, AbortReason::Requested);
        if level_info {
            tracing::info!(transactional_id = %entry.id, transaction = open.number, %reason,
                staged_batches = open.batches, "transaction aborted");
        } else {
            tracing::debug!(transactional_id = %entry.id, transaction = open.number, "transaction aborted");
        }
    }

    /// Stores the state of an ended transaction and deletes its staged batches (not synced: see `meta/txn.rs`).
    async fn end_stored(&self, entry: &mut Entry, stored: StoredTxn, number: u64) {
        let meta = Arc::clone(&self.meta);
        let id = entry.id.clone();
        let to_store = stored.clone();
        let written =
            blocking(move || meta.end_transaction(&id, &to_store, to_store.producer_id, to_store.epoch, number)).await;
        if let Err(error) = written {
            // The begin marker (or the decision) stays: the next start aborts (or applies) the transaction again.
            tracing::warn!(transactional_id = %entry.id, transaction = number, %error,
                "could not record the end of a transaction; the next start finishes it again");
        }
        entry.stored = stored;
    }

    /// AbortTxn (operators): aborts the id's open transaction. `Ok(false)` if none was open.
    pub async fn abort_by_operator(&self, id: &str) -> Result<bool, TxnError> {
        let slot = self.slot(id)?;
        let mut entry = slot.entry.lock().await;
        let result = match &entry.open {
            None => Ok(false),
            Some(open) if open.decided => Err(TxnError::Committing { transaction: open.number }),
            Some(_) => {
                self.abort(&mut entry, AbortReason::Operator).await;
                Ok(true)
            }
        };
        self.publish(&slot, &entry);
        result
    }

    /// The open transactions, oldest first.
    pub fn list(&self) -> Vec<TxnView> {
        let slots: Vec<Arc<Slot>> = self.lock_slots().values().cloned().collect();
        let mut views: Vec<TxnView> =
            slots.iter().filter_map(|slot| slot.view.lock().unwrap_or_else(PoisonError::into_inner).clone()).collect();
        views.sort_by_key(|view| view.started);
        views
    }

    fn publish(&self, slot: &Slot, entry: &Entry) {
        let view = entry.open.as_ref().map(|open| TxnView {
            transactional_id: entry.id.clone(),
            producer_id: entry.stored.producer_id,
            epoch: entry.stored.epoch,
            transaction: open.number,
            state: if open.decided { "committing" } else { "open" },
            started: open.started,
            timeout: open.deadline.saturating_duration_since(open.started),
            partitions: open
                .partitions
                .iter()
                .map(|(&(_, partition), staged)| (staged.topic.name().to_owned(), partition))
                .collect(),
            staged_batches: open.batches,
            staged_bytes: open.bytes,
            group: open.offsets.as_ref().map(|offsets| offsets.group.clone()),
        });
        *slot.view.lock().unwrap_or_else(PoisonError::into_inner) = view;
    }

    fn refresh_gauges(&self) {
        metrics::gauge!(TRANSACTIONS_OPEN).set(self.open.load(Ordering::Relaxed) as f64);
        let oldest = self.list().first().map_or(0.0, |view| view.started.elapsed().as_secs_f64());
        metrics::gauge!(TRANSACTION_OLDEST_AGE_SECONDS).set(oldest);
    }

    /// Aborts every open, undecided transaction past its timeout; ids busy with a request are checked next time.
    pub fn expire(&self, now: Instant) -> Vec<(Arc<str>, u64)> {
        let slots: Vec<Arc<Slot>> = self.lock_slots().values().cloned().collect();
        let mut due = Vec::new();
        for slot in slots {
            let Ok(entry) = slot.entry.try_lock() else { continue };
            if let Some(open) = &entry.open
                && !open.decided
                && now >= open.deadline
            {
                due.push((Arc::from(entry.id.as_str()), open.number));
            }
        }
        due
    }

    async fn abort_expired(&self, id: &str, number: u64) {
        let Ok(slot) = self.slot(id) else { return };
        let mut entry = slot.entry.lock().await;
        if let Some(open) = &entry.open
            && open.number == number
            && !open.decided
            && Instant::now() >= open.deadline
        {
            self.abort(&mut entry, AbortReason::Timeout).await;
            self.publish(&slot, &entry);
        }
    }

    /// The coordinator's background work until `shutdown`: aborts timed-out transactions and refreshes the gauges,
    /// every `transactions.timeout_check_interval_ms`.
    pub async fn run_background(self: Arc<Self>, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.config.timeout_check_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            for (id, number) in self.expire(Instant::now()) {
                self.abort_expired(&id, number).await;
            }
            self.refresh_gauges();
        }
    }
}

impl OpenTxn {
    fn new(number: u64, timeout: Duration) -> OpenTxn {
        let started = Instant::now();
        OpenTxn {
            number,
            started,
            deadline: started + timeout,
            partitions: BTreeMap::new(),
            bytes: 0,
            batches: 0,
            offsets: None,
            decided: false,
        }
    }

    fn decided(number: u64, timeout: Duration) -> OpenTxn {
        OpenTxn { decided: true, ..OpenTxn::new(number, timeout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_distance_counts_forward_across_the_wrap() {
        assert_eq!(sequence_distance(0, 0), 0);
        assert_eq!(sequence_distance(5, 12), 7);
        assert_eq!(sequence_distance(SEQUENCE_MAX - 1, 1), 3);
    }

    #[test]
    fn abort_reasons_have_stable_label_values() {
        let names: Vec<&str> = [
            AbortReason::Requested,
            AbortReason::Timeout,
            AbortReason::Restart,
            AbortReason::Operator,
            AbortReason::Fenced,
            AbortReason::TooLarge,
            AbortReason::GroupChanged,
            AbortReason::Incomplete,
            AbortReason::TopicDeleted,
        ]
        .into_iter()
        .map(AbortReason::name)
        .collect();
        assert_eq!(
            names,
            [
                "requested",
                "timeout",
                "restart",
                "operator",
                "fenced",
                "too_large",
                "group_changed",
                "incomplete",
                "topic_deleted"
            ]
        );
    }
}
