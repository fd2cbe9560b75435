//! The [`TransactionalProducer`]: atomic writes to many partitions, together with consumer-group offsets.
//!
//! # Protocol
//!
//! [`TransactionalProducer::connect`] calls InitProducerId with the transactional id: the broker maps the id to one
//! producer id and bumps its epoch, which fences every older instance of the application (its later requests fail
//! with `PRODUCER_FENCED`) and aborts its open transaction.
//! Transactions are numbered from 0 within the epoch, and every TxnProduce, TxnOffsetCommit and EndTxn names
//! (transactional id, producer id, epoch, transaction number), so a delayed request can never touch a later
//! transaction.
//!
//! Records are buffered per partition in record batches (marked transactional) and staged with TxnProduce when a
//! partition's buffer reaches `batch_bytes_max`, and at [`TransactionalProducer::commit`]. The broker keeps staged
//! batches out of the log (no consumer sees them) until EndTxn commits them; an abort, a timeout or a broker restart
//! before the commit decision drops them. Each staged batch carries, in its header's `base_sequence`, the number of
//! records staged before it in its partition in this transaction: the broker keys the batch by it, so resending a
//! TxnProduce after a lost answer overwrites instead of duplicating.
//!
//! # Errors
//!
//! Retriable errors (a lost connection, `CONCURRENT_TRANSACTIONS`, ...) are retried after `retry_backoff` until
//! `request_timeout`. Of the others, two need a reaction from the application:
//! - [`ClientError::is_fenced`]: another instance took over. The producer is dead; every later call fails fast.
//! - [`ClientError::is_transaction_aborted`]: the broker aborted the transaction (timeout, restart, operator). Call
//!   [`TransactionalProducer::abort`] and redo the work (read again from the last committed offsets) in a new one.
//!
//! # Example: consume, transform, produce, exactly once
//!
//! ```no_run
//! use std::time::Duration;
//! use ferry_client::{
//!     CommitMode, Consumer, ConsumerConfig, GroupConfig, ProducerRecord, TransactionalConfig, TransactionalProducer,
//! };
//!
//! # async fn example() -> Result<(), ferry_client::ClientError> {
//! let group = GroupConfig { commit_mode: CommitMode::None, ..GroupConfig::new("uppercasers") };
//! let mut consumer = Consumer::new("127.0.0.1:7070", ConsumerConfig { group: Some(group), ..Default::default() })?;
//! consumer.subscribe(["input"])?;
//! let mut producer = TransactionalProducer::connect("127.0.0.1:7070", TransactionalConfig::new("uppercaser-0")).await?;
//! loop {
//!     let records = consumer.poll(Duration::from_secs(1)).await?;
//!     let Some(group) = consumer.group_metadata() else { continue };
//!     if records.is_empty() {
//!         continue;
//!     }
//!     producer.begin()?;
//!     let mut next_offsets = Vec::new();
//!     for record in &records {
//!         let value = record.value.as_deref().unwrap_or_default().to_ascii_uppercase();
//!         producer.send(ProducerRecord::new("output", value)).await?;
//!         next_offsets.push((record.topic.to_string(), record.partition, record.offset + 1));
//!     }
//!     producer.send_offsets(&group, &next_offsets).await?;
//!     producer.commit().await?;
//! }
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use bytes::BytesMut;
use ferry_protocol::batch::{Attributes, ProducerFields, sequence_add};
use ferry_protocol::messages::{
    EndTxnRequest, InitProducerIdRequest, OffsetCommitPartition, OffsetCommitTopic, ProducePartition, ProduceTopic,
    ProduceTopicResponse, TxnOffsetCommitRequest, TxnProduceRequest,
};
use ferry_protocol::{ApiKey, BatchBuilder, NewRecord, ProtocolError, RecordBatch, Request, Response, TopicName};
use tokio::time::Instant;

use crate::backoff::{Backoff, random_u64};
use crate::connection::{BrokerLimits, Connection, ConnectionConfig};
use crate::error::ClientError;
use crate::partitioner::partition_for_key;
use crate::producer::{ProducerRecord, describe_partition_count, now_ms};

/// Longest transactional id the broker accepts, in bytes.
pub const TRANSACTIONAL_ID_BYTES_MAX: usize = 255;

/// Settings of a [`TransactionalProducer`].
///
/// ```
/// use std::time::Duration;
/// use ferry_client::TransactionalConfig;
///
/// let config = TransactionalConfig { transaction_timeout: Duration::from_secs(30), ..TransactionalConfig::new("copier-0") };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionalConfig {
    /// The transactional id: 1 to 255 bytes of `[a-zA-Z0-9._-]`, the same for every instance of one application
    /// shard, so that a new instance fences the old one.
    pub transactional_id: String,
    /// The broker aborts a transaction this long after its first request. Default 60 s; at most the broker's
    /// `transactions.timeout_max_ms` (else connecting fails with `INVALID_TRANSACTION_TIMEOUT`).
    pub transaction_timeout: Duration,
    /// The connection settings.
    pub connection: ConnectionConfig,
    /// A partition's buffered records are staged (TxnProduce) once they reach this many bytes; also the largest
    /// batch (lowered to the broker's announced `batch_bytes_max`). A record larger than that fails with
    /// [`ClientError::RecordTooLarge`]. Default 1 MiB.
    pub batch_bytes_max: usize,
    /// Longest one operation (a staging, an offset commit, an end) keeps retrying retriable errors. Default 30 s.
    pub request_timeout: Duration,
    /// Delay before retrying a retriable error; doubles per attempt up to 1 s (or this, if larger), with jitter.
    /// Default 100 ms.
    pub retry_backoff: Duration,
}

impl TransactionalConfig {
    /// The defaults, with this transactional id.
    pub fn new(transactional_id: impl Into<String>) -> Self {
        TransactionalConfig {
            transactional_id: transactional_id.into(),
            transaction_timeout: Duration::from_secs(60),
            connection: ConnectionConfig::default(),
            batch_bytes_max: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(100),
        }
    }

    /// Checks every field's bounds; fails with [`ClientError::InvalidConfig`] naming the first bad field.
    ///
    /// ```
    /// # use ferry_client::TransactionalConfig;
    /// assert!(TransactionalConfig::new("bad id with spaces").validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), ClientError> {
        let invalid = |field, reason: &str| Err(ClientError::InvalidConfig { field, reason: reason.to_owned() });
        let id = self.transactional_id.as_bytes();
        if id.is_empty()
            || id.len() > TRANSACTIONAL_ID_BYTES_MAX
            || !id.iter().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
        {
            return invalid("transactional_id", "must be 1 to 255 bytes of [a-zA-Z0-9._-]");
        }
        if self.transaction_timeout < Duration::from_millis(1) {
            return invalid("transaction_timeout", "must be at least 1 ms");
        }
        let batch_min = ferry_protocol::batch::BATCH_HEADER_BYTES + 16;
        let batch_max = usize::try_from(ferry_protocol::limits::BATCH_BYTES_MAX).unwrap_or(usize::MAX);
        if !(batch_min..=batch_max).contains(&self.batch_bytes_max) {
            return invalid("batch_bytes_max", "must be in 75..=BATCH_BYTES_MAX");
        }
        if self.request_timeout.is_zero() {
            return invalid("request_timeout", "must be positive");
        }
        if self.retry_backoff.is_zero() || self.retry_backoff > Duration::from_secs(60) {
            return invalid("retry_backoff", "must be in (0, 60 s]");
        }
        self.connection.validate()
    }

    fn backoff(&self) -> Backoff {
        Backoff { initial: self.retry_backoff, max: self.retry_backoff.max(Duration::from_secs(1)) }
    }
}

/// A consumer's group identity, for [`TransactionalProducer::send_offsets`]: the broker checks the member's
/// generation when the offsets are added and again at the commit, so a member that lost its partitions in a
/// rebalance cannot commit offsets for them.
///
/// [`crate::Consumer::group_metadata`] returns it for a group consumer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupMetadata {
    /// The consumer group.
    pub group_id: String,
    /// The member id the group gave the consumer; empty for a standalone consumer.
    pub member_id: String,
    /// The member's generation; -1 for a standalone consumer.
    pub generation: i32,
}

impl GroupMetadata {
    /// A group identity without membership (member id empty, generation -1): the offsets are committed without a
    /// membership check, for a consumer that assigns its partitions itself.
    ///
    /// ```
    /// let group = ferry_client::GroupMetadata::standalone("billing");
    /// assert_eq!((group.member_id.as_str(), group.generation), ("", -1));
    /// ```
    pub fn standalone(group_id: impl Into<String>) -> Self {
        GroupMetadata { group_id: group_id.into(), member_id: String::new(), generation: -1 }
    }
}

/// Where a committed transaction's records of one partition were appended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommittedPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The offset of the partition's first record of the transaction.
    pub base_offset: u64,
    /// The offset of its last record.
    pub last_offset: u64,
}

type PartitionKey = (TopicName, u32);

/// One partition's records in the current transaction that are not staged yet.
#[derive(Debug, Default)]
struct PartitionBuffer {
    /// The batch being filled.
    open: Option<BatchBuilder>,
    /// Full batches waiting to be staged, in order.
    closed: VecDeque<RecordBatch>,
    /// Records of this transaction in this partition in batches closed so far: the next batch's `base_sequence`.
    next_sequence: i32,
}

impl PartitionBuffer {
    /// Moves the open batch, if it holds records, to the closed ones.
    fn close_open(&mut self) -> Result<(), ClientError> {
        let Some(builder) = self.open.take() else { return Ok(()) };
        if builder.is_empty() {
            return Ok(());
        }
        let batch = builder.build().map_err(ClientError::protocol)?;
        self.next_sequence = sequence_add(self.next_sequence, batch.record_count());
        self.closed.push_back(batch);
        Ok(())
    }
}

/// Where the producer is in its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No transaction open: [`TransactionalProducer::begin`] opens the next one.
    Idle,
    /// A transaction is open. `sent`: a TxnProduce or TxnOffsetCommit of it was sent (the broker may know it).
    Open { sent: bool },
}

/// A producer whose records become visible atomically, all or none, together with consumer offsets.
///
/// One transaction at a time: [`begin`](Self::begin), [`send`](Self::send) records and
/// [`send_offsets`](Self::send_offsets), then [`commit`](Self::commit) or [`abort`](Self::abort).
/// Methods take `&mut self`: one task drives the producer. See the module docs for the protocol and error handling.
///
/// ```no_run
/// use ferry_client::{ProducerRecord, TransactionalConfig, TransactionalProducer};
///
/// # async fn example() -> Result<(), ferry_client::ClientError> {
/// let mut producer = TransactionalProducer::connect("127.0.0.1:7070", TransactionalConfig::new("billing-0")).await?;
/// producer.begin()?;
/// producer.send(ProducerRecord::new("invoices", "invoice 7").with_key("customer-42")).await?;
/// producer.send(ProducerRecord::new("ledger", "debit 7").with_key("customer-42")).await?;
/// let committed = producer.commit().await?;
/// producer.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TransactionalProducer {
    config: TransactionalConfig,
    connection: Connection,
    producer_id: i64,
    epoch: i32,
    transaction: u64,
    state: State,
    /// Set once the broker answered PRODUCER_FENCED: every later call returns it.
    fenced: Option<ClientError>,
    partition_counts: HashMap<TopicName, u32>,
    /// The partition each topic's key-less records stick to until its batch fills.
    sticky: HashMap<TopicName, u32>,
    buffers: BTreeMap<PartitionKey, PartitionBuffer>,
}

impl TransactionalProducer {
    /// Connects and calls InitProducerId with the transactional id: fences any older instance (and aborts its open
    /// transaction).
    ///
    /// Retries retriable errors until `request_timeout`; fails on an invalid `config` or a refusal
    /// (`TRANSACTIONAL_ID_INVALID`, `INVALID_TRANSACTION_TIMEOUT`, ...).
    pub async fn connect(
        addr: impl Into<String>,
        config: TransactionalConfig,
    ) -> Result<TransactionalProducer, ClientError> {
        config.validate()?;
        let connection = Connection::new(addr, config.connection.clone())?;
        let request = Request::InitProducerId(InitProducerIdRequest {
            transactional_id: config.transactional_id.clone(),
            transaction_timeout_ms: u64::try_from(config.transaction_timeout.as_millis()).unwrap_or(u64::MAX),
        });
        let response = with_retries(&connection, &config, request, |response| match response {
            Response::InitProducerId(response) => {
                ClientError::check_wire(response.error_code, &response.error_message)?;
                Ok(response)
            }
            _ => Err(unexpected(ApiKey::InitProducerId, "not an InitProducerId response")),
        })
        .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                connection.close().await;
                return Err(error);
            }
        };
        tracing::debug!(
            transactional_id = %config.transactional_id,
            producer_id = response.producer_id,
            epoch = response.producer_epoch,
            "transactional producer initialized"
        );
        Ok(TransactionalProducer {
            config,
            connection,
            producer_id: response.producer_id,
            epoch: response.producer_epoch,
            transaction: 0,
            state: State::Idle,
            fenced: None,
            partition_counts: HashMap::new(),
            sticky: HashMap::new(),
            buffers: BTreeMap::new(),
        })
    }

    /// The producer id the broker maps the transactional id to.
    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    /// This instance's epoch (bumped by every connect with the same transactional id).
    pub fn epoch(&self) -> i32 {
        self.epoch
    }

    /// The number of the current (or next) transaction: 0 after connecting, +1 after every commit or abort.
    pub fn transaction(&self) -> u64 {
        self.transaction
    }

    /// The settings in force.
    pub fn config(&self) -> &TransactionalConfig {
        &self.config
    }

    /// Opens a transaction (locally: the broker learns of it with its first request).
    ///
    /// Fails with [`ClientError::TransactionState`] if one is already open, and with the fenced error once fenced.
    pub fn begin(&mut self) -> Result<(), ClientError> {
        self.check_fenced()?;
        if self.state != State::Idle {
            return Err(ClientError::TransactionState { reason: "a transaction is already open" });
        }
        self.state = State::Open { sent: false };
        Ok(())
    }

    /// Adds a record to the open transaction.
    ///
    /// The record goes to its explicit partition, else by key hash ([`crate::partition_for_key`]), else to a
    /// partition picked at random that key-less records stick to until its batch fills. It is buffered; when the
    /// partition's buffer reaches `batch_bytes_max` the full batch is staged (TxnProduce) before this returns.
    ///
    /// Fails with [`ClientError::TransactionState`] when no transaction is open, for an invalid topic, a partition
    /// the topic does not have or a record too large for a batch (the transaction stays usable), or with a broker
    /// error from staging (see the module docs).
    pub async fn send(&mut self, record: ProducerRecord) -> Result<(), ClientError> {
        self.check_open()?;
        let topic = ClientError::topic_name(&record.topic)?;
        let partition_count = self.partition_count(&topic).await?;
        let partition = match (record.partition, &record.key) {
            (Some(partition), _) => {
                if partition >= partition_count {
                    return Err(ClientError::UnknownPartition {
                        topic: topic.into_string(),
                        partition,
                        partition_count,
                    });
                }
                partition
            }
            (None, Some(key)) => partition_for_key(key, partition_count),
            (None, None) => *self
                .sticky
                .entry(topic.clone())
                .or_insert_with(|| u32::try_from(random_u64() % u64::from(partition_count.max(1))).unwrap_or(0)),
        };
        let limits = self.connection.limits().await?;
        let batch_bytes_max = self.batch_bytes_max(&limits);
        let producer = ProducerFields { producer_id: self.producer_id, producer_epoch: self.epoch, base_sequence: 0 };
        let headers: Vec<(&[u8], Option<&[u8]>)> =
            record.headers.iter().map(|(key, value)| (&key[..], value.as_deref())).collect();
        let new_record = NewRecord {
            timestamp: record.timestamp.unwrap_or_else(now_ms),
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            headers: &headers,
        };
        let key = (topic, partition);
        let buffer = self.buffers.entry(key.clone()).or_default();
        let full = buffer.open.as_ref().is_some_and(|open| open.record_count() >= limits.batch_records_max);
        if full {
            buffer.close_open()?;
        }
        let next_sequence = buffer.next_sequence;
        let builder = buffer.open.get_or_insert_with(|| new_builder(batch_bytes_max, producer, next_sequence));
        let mut result = builder.push(new_record);
        if matches!(result, Err(ProtocolError::EncodeTooLarge { .. })) && !builder.is_empty() {
            // The partition's buffer reached batch_bytes_max: close the batch and stage it, then start another.
            buffer.close_open()?;
            let next_sequence = buffer.next_sequence;
            let builder = buffer.open.insert(new_builder(batch_bytes_max, producer, next_sequence));
            result = builder.push(new_record);
        }
        let staging = !self.buffers.get(&key).is_none_or(|buffer| buffer.closed.is_empty());
        if staging && self.sticky.get(&key.0) == Some(&key.1) {
            self.sticky.remove(&key.0);
        }
        // The record's own outcome first: a record that can never fit fails alone and leaves the transaction usable.
        match result {
            Ok(()) => {}
            Err(ProtocolError::EncodeTooLarge { len, max }) => {
                if let Some(buffer) = self.buffers.get_mut(&key)
                    && buffer.open.as_ref().is_some_and(BatchBuilder::is_empty)
                {
                    buffer.open = None;
                }
                return Err(ClientError::RecordTooLarge {
                    size: usize::try_from(len).unwrap_or(usize::MAX),
                    max: usize::try_from(max).unwrap_or(usize::MAX),
                });
            }
            Err(error) => return Err(ClientError::protocol(error)),
        }
        if staging {
            self.stage_closed(&limits).await?;
        }
        Ok(())
    }

    /// Adds consumer-group offsets to the open transaction (TxnOffsetCommit): `(topic, partition, next offset to
    /// consume)`. They are committed to the group with the transaction's records, or not at all; a later call in the
    /// same transaction replaces the offsets of the partitions it names.
    pub async fn send_offsets(
        &mut self,
        group: &GroupMetadata,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), ClientError> {
        self.check_open()?;
        let mut topics: Vec<OffsetCommitTopic> = Vec::new();
        for (topic, partition, offset) in offsets {
            ClientError::topic_name(topic)?;
            let entry = OffsetCommitPartition { partition: *partition, offset: *offset, metadata: String::new() };
            match topics.iter_mut().find(|existing| &existing.name == topic) {
                Some(existing) => existing.partitions.push(entry),
                None => topics.push(OffsetCommitTopic { name: topic.clone(), partitions: vec![entry] }),
            }
        }
        if topics.is_empty() {
            return Ok(());
        }
        let request = Request::TxnOffsetCommit(TxnOffsetCommitRequest {
            transactional_id: self.config.transactional_id.clone(),
            producer_id: self.producer_id,
            producer_epoch: self.epoch,
            transaction: self.transaction,
            group_id: group.group_id.clone(),
            member_id: group.member_id.clone(),
            generation: group.generation,
            topics,
        });
        self.state = State::Open { sent: true };
        let result = with_retries(&self.connection, &self.config, request, |response| match response {
            Response::TxnOffsetCommit(response) => {
                ClientError::check_wire(response.error_code, &response.error_message)
            }
            _ => Err(unexpected(ApiKey::TxnOffsetCommit, "not a TxnOffsetCommit response")),
        })
        .await;
        self.note(result)
    }

    /// Stages every buffered record (TxnProduce, waiting for every answer), then commits the transaction (EndTxn)
    /// and returns where each partition's records were appended. A transaction that sent nothing at all (no record,
    /// no offsets) sends no request and returns an empty list.
    ///
    /// On success the transaction number advances. On failure the transaction stays open: after
    /// [`ClientError::is_transaction_aborted`] call [`abort`](Self::abort) and redo the work; after a retriable error
    /// (outcome unknown) `commit` may be called again (the broker answers a repeated commit with the same outcome).
    pub async fn commit(&mut self) -> Result<Vec<CommittedPartition>, ClientError> {
        self.check_open()?;
        for buffer in self.buffers.values_mut() {
            buffer.close_open()?;
        }
        if self.buffers.values().any(|buffer| !buffer.closed.is_empty()) {
            let limits = self.connection.limits().await;
            let limits = self.note(limits)?;
            self.stage_closed(&limits).await?;
        }
        if self.state == (State::Open { sent: false }) {
            self.finish();
            return Ok(Vec::new());
        }
        let result = self.end(true).await;
        let topics = self.note(result)?;
        self.finish();
        let mut committed = Vec::new();
        for topic in topics {
            for partition in topic.partitions {
                if partition.error_code != 0 {
                    tracing::warn!(topic = %topic.name, partition = partition.partition, error_code = partition.error_code,
                        "committed transaction reports a partition error");
                    continue;
                }
                committed.push(CommittedPartition {
                    topic: topic.name.clone(),
                    partition: partition.partition,
                    base_offset: partition.base_offset,
                    last_offset: partition.last_offset,
                });
            }
        }
        Ok(committed)
    }

    /// Aborts the open transaction: drops the buffered records and, if anything was sent to the broker, ends the
    /// transaction there with EndTxn(commit = false), so nothing of it ever becomes visible. The transaction number
    /// advances.
    ///
    /// An answer of `TRANSACTION_ABORTED` (the broker aborted it already) counts as success. A retriable error that
    /// outlasts `request_timeout` leaves the transaction open, so `abort` may be called again; any other error
    /// closes it locally and is returned (the broker aborts what it holds at the transaction timeout).
    pub async fn abort(&mut self) -> Result<(), ClientError> {
        self.check_open()?;
        self.buffers.clear();
        self.sticky.clear();
        if self.state == (State::Open { sent: true }) {
            match self.end(false).await {
                Ok(_) => {}
                Err(error) if error.error_code() == Some(ferry_protocol::ErrorCode::TransactionAborted) => {}
                Err(error) => {
                    let Err(error) = self.note::<()>(Err(error)) else { unreachable!("an error stays an error") };
                    if !error.is_retriable() && !error.is_fenced() {
                        self.finish();
                    }
                    return Err(error);
                }
            }
        }
        self.finish();
        Ok(())
    }

    /// Closes the connection. An open transaction is abandoned: the buffered records are dropped and, if it reached
    /// the broker, it is aborted with one EndTxn attempt (failing that, the broker aborts it at its timeout or when a
    /// new instance connects).
    pub async fn close(self) {
        if self.fenced.is_none() && self.state == (State::Open { sent: true }) {
            let request = self.end_request(false);
            let _ = self.connection.request(request).await;
        }
        self.connection.close().await;
    }

    /// The fenced error, if the producer was fenced.
    fn check_fenced(&self) -> Result<(), ClientError> {
        match &self.fenced {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    fn check_open(&self) -> Result<(), ClientError> {
        self.check_fenced()?;
        match self.state {
            State::Open { .. } => Ok(()),
            State::Idle => Err(ClientError::TransactionState { reason: "no transaction is open; call begin first" }),
        }
    }

    /// Remembers a fenced error, so every later call fails fast with it.
    fn note<T>(&mut self, result: Result<T, ClientError>) -> Result<T, ClientError> {
        if let Err(error) = &result
            && error.is_fenced()
        {
            tracing::warn!(transactional_id = %self.config.transactional_id, %error, "transactional producer fenced");
            self.fenced = Some(error.clone());
        }
        result
    }

    /// The transaction is over (committed or aborted): the next one gets the next number.
    fn finish(&mut self) {
        self.buffers.clear();
        self.sticky.clear();
        self.state = State::Idle;
        self.transaction += 1;
    }

    fn batch_bytes_max(&self, limits: &BrokerLimits) -> u32 {
        u32::try_from(self.config.batch_bytes_max).unwrap_or(u32::MAX).min(limits.batch_bytes_max)
    }

    /// The topic's partition count, from the cache or asked with DescribeTopics (retrying retriable errors).
    async fn partition_count(&mut self, topic: &TopicName) -> Result<u32, ClientError> {
        if let Some(&count) = self.partition_counts.get(topic) {
            return Ok(count);
        }
        let deadline = Instant::now() + self.config.request_timeout;
        let mut attempt = 0;
        loop {
            match describe_partition_count(&self.connection, topic).await {
                Ok(count) => {
                    self.partition_counts.insert(topic.clone(), count);
                    return Ok(count);
                }
                Err(error) if error.is_retriable() => {
                    attempt += 1;
                    let retry_at = Instant::now() + self.config.backoff().delay(attempt);
                    if retry_at >= deadline {
                        return Err(error);
                    }
                    tokio::time::sleep_until(retry_at).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Stages every closed batch with TxnProduce requests, one at a time, each within the broker's frame limit and
    /// with each partition's batches in order. A batch leaves the buffer only once the broker staged it, so a failed
    /// staging is resent by the next call (same `base_sequence`: the broker overwrites).
    async fn stage_closed(&mut self, limits: &BrokerLimits) -> Result<(), ClientError> {
        let request_bytes_max =
            u64::from(limits.frame_bytes_max.saturating_sub(ferry_protocol::limits::FRAME_OVERHEAD_BYTES_MAX).max(1));
        loop {
            let mut request_bytes: u64 = 0;
            let mut taken: Vec<(PartitionKey, usize)> = Vec::new();
            let mut topics: Vec<ProduceTopic> = Vec::new();
            'partitions: for (key, buffer) in &self.buffers {
                let mut records = BytesMut::new();
                let mut n_batches = 0;
                for batch in &buffer.closed {
                    let len = u64::from(batch.len_bytes());
                    if request_bytes > 0 && request_bytes + len > request_bytes_max {
                        if n_batches > 0 {
                            push_partition(&mut topics, key, records);
                            taken.push((key.clone(), n_batches));
                        }
                        break 'partitions;
                    }
                    request_bytes += len;
                    records.extend_from_slice(batch.as_bytes());
                    n_batches += 1;
                }
                if n_batches > 0 {
                    push_partition(&mut topics, key, records);
                    taken.push((key.clone(), n_batches));
                }
            }
            if taken.is_empty() {
                return Ok(());
            }
            let request = Request::TxnProduce(TxnProduceRequest {
                transactional_id: self.config.transactional_id.clone(),
                producer_id: self.producer_id,
                producer_epoch: self.epoch,
                transaction: self.transaction,
                topics,
            });
            self.state = State::Open { sent: true };
            let result = with_retries(&self.connection, &self.config, request, check_txn_produce).await;
            self.note(result)?;
            for (key, n_batches) in taken {
                if let Some(buffer) = self.buffers.get_mut(&key) {
                    buffer.closed.drain(..n_batches);
                }
            }
        }
    }

    fn end_request(&self, commit: bool) -> Request {
        Request::EndTxn(EndTxnRequest {
            transactional_id: self.config.transactional_id.clone(),
            producer_id: self.producer_id,
            producer_epoch: self.epoch,
            transaction: self.transaction,
            commit,
        })
    }

    /// Sends EndTxn, retrying retriable errors; returns the offsets of a commit.
    async fn end(&self, commit: bool) -> Result<Vec<ProduceTopicResponse>, ClientError> {
        let request = self.end_request(commit);
        with_retries(&self.connection, &self.config, request, |response| match response {
            Response::EndTxn(response) => {
                ClientError::check_wire(response.error_code, &response.error_message)?;
                Ok(response.topics)
            }
            _ => Err(unexpected(ApiKey::EndTxn, "not an EndTxn response")),
        })
        .await
    }
}

fn new_builder(batch_bytes_max: u32, producer: ProducerFields, base_sequence: i32) -> BatchBuilder {
    BatchBuilder::with_bytes_max(batch_bytes_max)
        .attributes(Attributes::default().with_transactional(true))
        .producer(ProducerFields { base_sequence, ..producer })
}

fn push_partition(topics: &mut Vec<ProduceTopic>, (topic, partition): &PartitionKey, records: BytesMut) {
    let entry = ProducePartition { partition: *partition, records: records.freeze() };
    match topics.last_mut() {
        Some(last) if last.name == topic.as_str() => last.partitions.push(entry),
        _ => topics.push(ProduceTopic { name: topic.as_str().to_owned(), partitions: vec![entry] }),
    }
}

/// A TxnProduce answer: the request's error, else the first partition's error (resending the whole request is
/// safe: staged batches are overwritten, not duplicated).
fn check_txn_produce(response: Response) -> Result<(), ClientError> {
    let Response::TxnProduce(response) = response else {
        return Err(unexpected(ApiKey::TxnProduce, "not a TxnProduce response"));
    };
    ClientError::check_wire(response.error_code, &response.error_message)?;
    for topic in &response.topics {
        for partition in &topic.partitions {
            ClientError::check_wire(partition.error_code, &partition.error_message)?;
        }
    }
    Ok(())
}

/// Sends `request` and checks the answer with `check`, retrying retriable errors (of either) after a backoff until
/// `request_timeout` has passed; returns the last error then.
async fn with_retries<T>(
    connection: &Connection,
    config: &TransactionalConfig,
    request: Request,
    mut check: impl FnMut(Response) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let deadline = Instant::now() + config.request_timeout;
    let mut attempt = 0;
    loop {
        let error = match connection.request(request.clone()).await.and_then(&mut check) {
            Ok(value) => return Ok(value),
            Err(error) if error.is_retriable() => error,
            Err(error) => return Err(error),
        };
        attempt += 1;
        let retry_at = Instant::now() + config.backoff().delay(attempt);
        if retry_at >= deadline {
            return Err(error);
        }
        tracing::debug!(api = %request.api_key(), %error, attempt, "retrying a transactional request");
        tokio::time::sleep_until(retry_at).await;
    }
}

fn unexpected(api: ApiKey, reason: &'static str) -> ClientError {
    ClientError::UnexpectedResponse { api, reason }
}
