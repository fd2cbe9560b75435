//! The [`Consumer`]: reads manually assigned partitions with long-poll fetches, one fetch always ahead.
//!
//! # Positions
//!
//! Each assigned partition has a *position*: the offset of the next record [`Consumer::poll`] will return.
//! A newly assigned partition has none yet: the first poll looks it up per [`ConsumerConfig::offset_reset`]
//! (earliest or latest, with ListOffsets), unless [`Consumer::seek`] set one.
//! Seeking to earliest, latest or a timestamp is resolved lazily too, in one ListOffsets request per poll.
//!
//! # Fetching
//!
//! Fetches are long polls: the broker holds a fetch until `fetch_bytes_min` bytes are there or `fetch_wait_max`
//! has passed. One fetch is kept in flight ahead of the application: when `poll` returns records, the fetch for the
//! partitions with nothing buffered has already been sent, so the next records travel while these are processed.
//! Memory is bounded: a partition is fetched only when nothing of it is buffered, so at most one response per
//! partition waits in the consumer.
//!
//! # Integrity
//!
//! Every fetched batch is decoded with [`ferry_protocol::RecordBatch::decode`], which verifies its CRC-32C, and its
//! records are checked before any is returned. Records of the batches before a bad one are returned; then the poll
//! fails with [`ClientError::CorruptBatch`] carrying the bad batch's offset. It is never skipped: the position stays
//! at it, so every later poll reports it again until the application seeks past it.
//!
//! An out-of-range position (OFFSET_OUT_OF_RANGE, e.g. after retention deleted the records) is reset per
//! [`OffsetReset`]: to the earliest or latest offset, or reported as [`ClientError::OffsetOutOfRange`].
//! Retriable errors (a lost connection, a broker restarting) are retried after a backoff, and `poll` returns what it
//! has (maybe nothing) when its timeout ends; errors that are not retriable are returned.

mod group;
#[cfg(test)]
mod tests;

pub use group::{CommitMode, GroupAssignor, GroupConfig, REBALANCE_EVENTS_MAX, RebalanceEvent};

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::batch::split_batches;
use ferry_protocol::messages::{
    FetchPartition, FetchPartitionResponse, FetchRequest, FetchTopic, IsolationLevel, ListOffsetsPartition,
    ListOffsetsRequest, ListOffsetsTopic, OffsetSpec,
};
use ferry_protocol::{ApiKey, ErrorCode, Request, Response, TopicName};
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::task::AbortOnDropHandle;

use crate::backoff::Backoff;
use crate::connection::{Connection, ConnectionConfig};
use crate::error::ClientError;

/// Where to move a partition's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeekTo {
    /// The oldest offset still stored (the log start offset).
    Earliest,
    /// The end of the partition: only records appended from now on.
    Latest,
    /// This offset; an offset outside the stored range is handled per [`OffsetReset`] at the next fetch.
    Offset(u64),
    /// The first record whose timestamp is at or after this time, in milliseconds since the Unix epoch
    /// (the end of the partition if none is that recent).
    Timestamp(i64),
}

/// What to do when a partition has no position, or its position is out of the stored range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OffsetReset {
    /// Move to the oldest stored offset.
    Earliest,
    /// Move to the end of the partition (Kafka's default).
    #[default]
    Latest,
    /// Fail the poll with [`ClientError::NoPosition`] or [`ClientError::OffsetOutOfRange`].
    Error,
}

/// Which records a consumer reads, as Kafka's `isolation.level` (sent as `FetchRequest.isolation_level`).
///
/// With Ferry's staged transactions both levels read the same records: a transaction's records are held outside
/// the log until it commits, and an aborted transaction's are deleted, so the log holds only committed
/// transactional data. The setting exists for Kafka parity and future use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Isolation {
    /// Only committed transactional records (and non-transactional ones). The default.
    #[default]
    ReadCommitted,
    /// Every appended record, including those of open or aborted transactions (none, in Ferry: see above).
    ReadUncommitted,
}

impl Isolation {
    fn to_wire(self) -> i32 {
        i32::from(match self {
            Isolation::ReadCommitted => IsolationLevel::ReadCommitted,
            Isolation::ReadUncommitted => IsolationLevel::ReadUncommitted,
        })
    }
}

/// Settings of a [`Consumer`].
///
/// ```
/// use std::time::Duration;
/// use ferry_client::{ConsumerConfig, OffsetReset};
///
/// let config = ConsumerConfig { offset_reset: OffsetReset::Earliest, ..ConsumerConfig::default() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Longest the broker holds a fetch waiting for `fetch_bytes_min` bytes (lowered to the broker's limit).
    /// Default 500 ms (Kafka's).
    pub fetch_wait_max: Duration,
    /// The broker answers a fetch as soon as this many record bytes are available. Default 1.
    pub fetch_bytes_min: u32,
    /// Most record bytes in one fetch response, over all partitions (lowered to the broker's limit).
    /// Default 4 MiB.
    pub fetch_bytes_max: u32,
    /// Most record bytes per partition in one fetch response. Default 1 MiB (Kafka's).
    pub partition_fetch_bytes_max: u32,
    /// Most records one [`Consumer::poll`] returns. Default 500 (Kafka's).
    pub poll_records_max: usize,
    /// Where a partition without a valid position goes. Default [`OffsetReset::Latest`].
    pub offset_reset: OffsetReset,
    /// Delay before retrying after a retriable fetch error; doubles per failure, up to 1 s. Default 100 ms.
    pub retry_backoff: Duration,
    /// Which records to read (see [`Isolation`]: with Ferry both levels read the same records).
    /// Default [`Isolation::ReadCommitted`].
    pub isolation: Isolation,
    /// The connection settings.
    pub connection: ConnectionConfig,
    /// Group consumption: `None` (the default) for manual assignment with [`Consumer::assign`]; with a group, the
    /// consumer [`Consumer::subscribe`]s to topics and the broker assigns it partitions (see [`GroupConfig`] and
    /// [`CommitMode`] for the delivery guarantees).
    pub group: Option<GroupConfig>,
}

impl Default for ConsumerConfig {
    fn default() -> ConsumerConfig {
        ConsumerConfig {
            fetch_wait_max: Duration::from_millis(500),
            fetch_bytes_min: 1,
            fetch_bytes_max: 4 * 1024 * 1024,
            partition_fetch_bytes_max: 1024 * 1024,
            poll_records_max: 500,
            offset_reset: OffsetReset::Latest,
            retry_backoff: Duration::from_millis(100),
            isolation: Isolation::ReadCommitted,
            connection: ConnectionConfig::default(),
            group: None,
        }
    }
}

impl ConsumerConfig {
    /// Checks every field's bounds; fails with [`ClientError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ClientError> {
        let invalid = |field, reason: &str| Err(ClientError::InvalidConfig { field, reason: reason.to_owned() });
        if self.fetch_wait_max > Duration::from_secs(3600) {
            return invalid("fetch_wait_max", "must be at most one hour");
        }
        if self.fetch_bytes_max == 0 {
            return invalid("fetch_bytes_max", "must be positive");
        }
        if self.partition_fetch_bytes_max == 0 {
            return invalid("partition_fetch_bytes_max", "must be positive");
        }
        if self.poll_records_max == 0 {
            return invalid("poll_records_max", "must be positive");
        }
        if self.retry_backoff.is_zero() || self.retry_backoff > Duration::from_secs(60) {
            return invalid("retry_backoff", "must be in (0, 60 s]");
        }
        if let Some(group) = &self.group {
            group.validate()?;
        }
        self.connection.validate()
    }
}

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: u32,
    /// The record's offset in its partition.
    pub offset: u64,
    /// The record's timestamp, in milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// The key; `None` when null.
    pub key: Option<Bytes>,
    /// The value; `None` when null.
    pub value: Option<Bytes>,
    /// The headers, in order; a `None` value is null.
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

#[derive(Debug)]
struct PartitionState {
    topic: Arc<str>,
    /// The next offset to fetch: just after the last record buffered or returned. `None` until known.
    fetch_offset: Option<u64>,
    /// A lookup to resolve (with ListOffsets) before fetching.
    pending_seek: Option<SeekTo>,
    /// Records fetched and not yet returned, in offset order.
    buffered: VecDeque<ConsumerRecord>,
    /// Bumped by every seek, so a fetch sent before it cannot move the position afterwards.
    epoch: u64,
}

impl PartitionState {
    fn new(topic: Arc<str>, reset: OffsetReset) -> PartitionState {
        PartitionState {
            topic,
            fetch_offset: None,
            pending_seek: reset_target(reset),
            buffered: VecDeque::new(),
            epoch: 0,
        }
    }

    fn position(&self) -> Option<u64> {
        match self.buffered.front() {
            Some(record) => Some(record.offset),
            None if self.pending_seek.is_some() => None,
            None => self.fetch_offset,
        }
    }

    fn seek(&mut self, to: SeekTo) {
        self.epoch += 1;
        self.buffered.clear();
        match to {
            SeekTo::Offset(offset) => {
                self.fetch_offset = Some(offset);
                self.pending_seek = None;
            }
            other => self.pending_seek = Some(other),
        }
    }
}

fn reset_target(reset: OffsetReset) -> Option<SeekTo> {
    match reset {
        OffsetReset::Earliest => Some(SeekTo::Earliest),
        OffsetReset::Latest => Some(SeekTo::Latest),
        OffsetReset::Error => None,
    }
}

type PartitionKey = (TopicName, u32);

/// What a fetch asked for, so its response is applied only where no seek happened since.
#[derive(Debug)]
struct FetchPlan {
    partitions: Vec<(PartitionKey, u64, u64)>,
}

type FetchResult = (FetchPlan, Result<Response, ClientError>);

/// Reads records from manually assigned partitions.
///
/// Must be created inside a Tokio runtime (its prefetch runs as a task, aborted when the consumer is dropped).
///
/// ```no_run
/// use std::time::Duration;
/// use ferry_client::{Consumer, ConsumerConfig, SeekTo};
///
/// # async fn example() -> Result<(), ferry_client::ClientError> {
/// let mut consumer = Consumer::new("127.0.0.1:7070", ConsumerConfig::default())?;
/// consumer.assign("orders", 0..8)?;
/// consumer.seek_all(SeekTo::Earliest);
/// loop {
///     for record in consumer.poll(Duration::from_secs(1)).await? {
///         println!("{}:{} {:?}", record.partition, record.offset, record.value);
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Consumer {
    connection: Connection,
    config: ConsumerConfig,
    partitions: BTreeMap<PartitionKey, PartitionState>,
    /// The fetch in flight, if any; aborted when the consumer is dropped.
    fetch: Option<AbortOnDropHandle<FetchResult>>,
    /// Retriable failures in a row, for the backoff.
    failures: u32,
    /// No fetch or lookup is sent before this instant (backoff after a retriable error).
    retry_at: Option<Instant>,
    /// Round-robin start for handing out buffered records fairly across partitions.
    next_partition_idx: usize,
    /// The group membership, when [`ConsumerConfig::group`] is set.
    group: Option<group::Membership>,
}

impl Consumer {
    /// A consumer for the broker at `addr` (`host:port`), with nothing assigned.
    ///
    /// Does not connect: the first poll does. Fails on an invalid `config`.
    ///
    /// ```
    /// # use ferry_client::{Consumer, ConsumerConfig};
    /// let consumer = Consumer::new("127.0.0.1:7070", ConsumerConfig::default()).unwrap();
    /// assert!(consumer.assignment().is_empty());
    /// ```
    pub fn new(addr: impl Into<String>, config: ConsumerConfig) -> Result<Consumer, ClientError> {
        config.validate()?;
        let connection = Connection::new(addr, config.connection.clone())?;
        Ok(Consumer {
            group: config.group.clone().map(group::Membership::new),
            connection,
            config,
            partitions: BTreeMap::new(),
            fetch: None,
            failures: 0,
            retry_at: None,
            next_partition_idx: 0,
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// Sets which partitions of `topic` this consumer reads, replacing its earlier assignment for that topic
    /// (other topics keep theirs). Partitions already assigned keep their position; new ones start per
    /// [`ConsumerConfig::offset_reset`] unless seeked.
    ///
    /// Fails only on an invalid topic name; partitions the topic does not have fail the poll with
    /// `UNKNOWN_TOPIC_OR_PARTITION` (retried, as the topic may be being created).
    ///
    /// ```no_run
    /// # fn example(consumer: &mut ferry_client::Consumer) -> Result<(), ferry_client::ClientError> {
    /// consumer.assign("orders", [0, 1, 2])?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn assign(&mut self, topic: &str, partitions: impl IntoIterator<Item = u32>) -> Result<(), ClientError> {
        if self.group.is_some() {
            return Err(ClientError::InvalidConfig {
                field: "group",
                reason: "a group consumer gets its partitions from the broker: use subscribe".to_owned(),
            });
        }
        let topic = ClientError::topic_name(topic)?;
        let wanted: std::collections::BTreeSet<u32> = partitions.into_iter().collect();
        self.partitions.retain(|(assigned_topic, partition), _| assigned_topic != &topic || wanted.contains(partition));
        let topic_arc: Arc<str> = Arc::from(topic.as_str());
        for partition in wanted {
            self.partitions
                .entry((topic.clone(), partition))
                .or_insert_with(|| PartitionState::new(topic_arc.clone(), self.config.offset_reset));
        }
        // A fetch in flight may be for partitions no longer assigned; its response is filtered by assignment.
        Ok(())
    }

    /// Every assigned partition, as `(topic, partition)`, sorted.
    ///
    /// ```
    /// # use ferry_client::{Consumer, ConsumerConfig};
    /// let mut consumer = Consumer::new("127.0.0.1:7070", ConsumerConfig::default()).unwrap();
    /// consumer.assign("orders", [1, 0]).unwrap();
    /// assert_eq!(consumer.assignment(), vec![("orders".to_owned(), 0), ("orders".to_owned(), 1)]);
    /// ```
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.partitions.keys().map(|(topic, partition)| (topic.as_str().to_owned(), *partition)).collect()
    }

    /// Moves one partition's position. Earliest, latest and timestamps are looked up at the next poll.
    ///
    /// Records already fetched for the partition are dropped, and a fetch in flight will not move it.
    /// In a group, the next commit of the partition commits this position ([`Consumer::commit`]).
    ///
    /// ```no_run
    /// # fn example(consumer: &mut ferry_client::Consumer) -> Result<(), ferry_client::ClientError> {
    /// use ferry_client::SeekTo;
    /// consumer.seek("orders", 0, SeekTo::Offset(1000))?;
    /// consumer.seek("orders", 1, SeekTo::Timestamp(1_700_000_000_000))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn seek(&mut self, topic: &str, partition: u32, to: SeekTo) -> Result<(), ClientError> {
        let topic_name = ClientError::topic_name(topic)?;
        let key = (topic_name, partition);
        let state = self
            .partitions
            .get_mut(&key)
            .ok_or_else(|| ClientError::NotAssigned { topic: topic.to_owned(), partition })?;
        state.seek(to);
        // For a group consumer, a commit covers what comes before the position the application chose.
        if let Some(group) = self.group.as_mut() {
            match to {
                SeekTo::Offset(offset) => group.returned.insert(key, offset),
                _ => group.returned.remove(&key),
            };
        }
        Ok(())
    }

    /// Moves every assigned partition's position, as [`Consumer::seek`] does for one.
    ///
    /// ```
    /// # use ferry_client::{Consumer, ConsumerConfig, SeekTo};
    /// let mut consumer = Consumer::new("127.0.0.1:7070", ConsumerConfig::default()).unwrap();
    /// consumer.assign("orders", 0..4).unwrap();
    /// consumer.seek_all(SeekTo::Offset(10));
    /// assert_eq!(consumer.position("orders", 3), Some(10));
    /// ```
    pub fn seek_all(&mut self, to: SeekTo) {
        for state in self.partitions.values_mut() {
            state.seek(to);
        }
    }

    /// Moves each partition of `records` back to the first of them, so that the next polls return them again: after
    /// a transaction that carried their offsets was aborted, this is where its last committed offset left off.
    /// Partitions no longer assigned (lost in a rebalance meanwhile) are skipped: their new owner starts from the
    /// committed offset.
    pub fn rewind(&mut self, records: &[ConsumerRecord]) {
        let mut first: BTreeMap<(&str, u32), u64> = BTreeMap::new();
        for record in records {
            first.entry((&*record.topic, record.partition)).or_insert(record.offset);
        }
        for ((topic, partition), offset) in first {
            let _ = self.seek(topic, partition, SeekTo::Offset(offset));
        }
    }

    /// The offset of the next record [`Consumer::poll`] will return from the partition; `None` while it is not
    /// known yet (a lookup is pending) or the partition is not assigned.
    ///
    /// ```
    /// # use ferry_client::{Consumer, ConsumerConfig, SeekTo};
    /// let mut consumer = Consumer::new("127.0.0.1:7070", ConsumerConfig::default()).unwrap();
    /// consumer.assign("orders", [0]).unwrap();
    /// assert_eq!(consumer.position("orders", 0), None, "looked up at the first poll");
    /// consumer.seek("orders", 0, SeekTo::Offset(42)).unwrap();
    /// assert_eq!(consumer.position("orders", 0), Some(42));
    /// ```
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        let topic = TopicName::new(topic.to_owned()).ok()?;
        self.partitions.get(&(topic, partition)).and_then(PartitionState::position)
    }

    /// Returns the next records, at most `poll_records_max`, waiting up to `timeout` for some to arrive.
    ///
    /// Returns as soon as records are there; returns an empty vector when `timeout` passes with nothing new
    /// (the fetch in flight stays in flight for the next poll). Retriable errors are retried inside the timeout.
    /// Fails with [`ClientError::CorruptBatch`] for a batch that fails its checksum, with
    /// [`ClientError::OffsetOutOfRange`] or [`ClientError::NoPosition`] under [`OffsetReset::Error`], and with any
    /// error that is not retriable.
    ///
    /// ```no_run
    /// # async fn example(consumer: &mut ferry_client::Consumer) -> Result<(), ferry_client::ClientError> {
    /// use std::time::Duration;
    /// let records = consumer.poll(Duration::from_millis(500)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.maintain_group().await?;
            if self.has_buffered() {
                let records = self.take_buffered();
                if self.group.as_ref().is_some_and(|group| group.config.commit_mode == CommitMode::Before)
                    && let Err(error) = self.commit_before_returning(&records).await
                {
                    // At-most-once: records whose offsets could not be committed are not handed out; they are fetched
                    // again from the same position (if the partition is still ours).
                    self.unread(&records);
                    if !error.is_retriable() && !is_group_churn(&error) {
                        return Err(error);
                    }
                    self.back_off(&error);
                    if Instant::now() >= deadline {
                        return Ok(Vec::new());
                    }
                    continue;
                }
                self.note_returned(&records);
                self.start_fetch();
                return Ok(records);
            }
            if self.partitions.values().any(|state| state.pending_seek.is_some()) {
                match timeout_at(deadline, self.resolve_seeks()).await {
                    Err(_) => return Ok(Vec::new()),
                    Ok(Ok(())) => self.failures = 0,
                    Ok(Err(error)) if error.is_retriable() => self.back_off(&error),
                    Ok(Err(error)) => return Err(error),
                }
            }
            if let Some((topic, partition)) = self.partition_without_position() {
                return Err(ClientError::NoPosition { topic, partition });
            }
            self.start_fetch();
            // A group consumer wakes up for its heartbeats too.
            let wake = self.group.as_ref().map_or(deadline, |group| group.next_heartbeat().min(deadline));
            let Some(fetch) = self.fetch.as_mut() else {
                // Nothing to fetch (nothing assigned, or every lookup is backing off): wait.
                let wake = self.retry_at.map_or(wake, |retry_at| retry_at.min(wake));
                sleep_until(wake).await;
                if Instant::now() >= deadline {
                    return Ok(Vec::new());
                }
                continue;
            };
            let joined = match timeout_at(wake, fetch).await {
                Err(_) if Instant::now() >= deadline => return Ok(Vec::new()),
                Err(_) => continue,
                Ok(joined) => joined,
            };
            self.fetch = None;
            match joined {
                Ok((plan, result)) => self.apply_fetch(plan, result)?,
                // The fetch task panicked or was aborted; treat it like a lost request.
                Err(_) => self.back_off(&ClientError::ConnectionLost { addr: self.connection.addr().to_owned() }),
            }
            if Instant::now() >= deadline && !self.has_buffered() {
                return Ok(Vec::new());
            }
        }
    }

    /// Puts the position of each partition of `records` back to its first record (they were not delivered).
    fn unread(&mut self, records: &[ConsumerRecord]) {
        let mut first: BTreeMap<(Arc<str>, u32), u64> = BTreeMap::new();
        for record in records {
            first.entry((record.topic.clone(), record.partition)).or_insert(record.offset);
        }
        for ((topic, partition), offset) in first {
            let Ok(topic) = TopicName::new(topic.to_string()) else { continue };
            if let Some(state) = self.partitions.get_mut(&(topic, partition)) {
                state.seek(SeekTo::Offset(offset));
            }
        }
    }

    /// Records, for commits, the position after the last record of each partition handed to the application.
    fn note_returned(&mut self, records: &[ConsumerRecord]) {
        let Some(group) = self.group.as_mut() else { return };
        let mut last: BTreeMap<(Arc<str>, u32), u64> = BTreeMap::new();
        for record in records {
            last.insert((record.topic.clone(), record.partition), record.offset + 1);
        }
        for ((topic, partition), next) in last {
            let Ok(topic) = TopicName::new(topic.to_string()) else { continue };
            group.returned.insert((topic, partition), next);
        }
    }

    /// Stops the fetch in flight and closes the connection.
    ///
    /// ```no_run
    /// # async fn example(consumer: ferry_client::Consumer) {
    /// consumer.close().await;
    /// # }
    /// ```
    pub async fn close(mut self) {
        self.fetch = None;
        self.leave_group().await;
        self.connection.close().await;
    }

    fn has_buffered(&self) -> bool {
        self.partitions.values().any(|state| !state.buffered.is_empty())
    }

    fn partition_without_position(&self) -> Option<(String, u32)> {
        self.partitions
            .iter()
            .find(|(_, state)| state.pending_seek.is_none() && state.fetch_offset.is_none())
            .map(|((topic, partition), _)| (topic.as_str().to_owned(), *partition))
    }

    /// Takes up to `poll_records_max` buffered records, round-robin over partitions, each partition in order.
    fn take_buffered(&mut self) -> Vec<ConsumerRecord> {
        let mut records = Vec::new();
        let partition_count = self.partitions.len();
        let start = self.next_partition_idx % partition_count.max(1);
        let mut states: Vec<&mut PartitionState> = self.partitions.values_mut().collect();
        states.rotate_left(start);
        for state in states {
            let room = self.config.poll_records_max - records.len();
            if room == 0 {
                break;
            }
            let n_taken = room.min(state.buffered.len());
            records.extend(state.buffered.drain(..n_taken));
        }
        self.next_partition_idx = start + 1;
        records
    }

    fn back_off(&mut self, error: &ClientError) {
        self.failures = self.failures.saturating_add(1);
        let backoff =
            Backoff { initial: self.config.retry_backoff, max: Duration::from_secs(1).max(self.config.retry_backoff) };
        self.retry_at = Some(Instant::now() + backoff.delay(self.failures));
        tracing::debug!(%error, failures = self.failures, "consumer backing off");
    }

    /// Sends a fetch for every partition with a position and nothing buffered, unless one is in flight.
    fn start_fetch(&mut self) {
        if self.fetch.is_some() {
            return;
        }
        let mut plan = FetchPlan { partitions: Vec::new() };
        let mut topics: Vec<FetchTopic> = Vec::new();
        for (key, state) in &self.partitions {
            let (Some(fetch_offset), None, true) = (state.fetch_offset, state.pending_seek, state.buffered.is_empty())
            else {
                continue;
            };
            let partition = FetchPartition {
                partition: key.1,
                fetch_offset,
                partition_bytes_max: self.config.partition_fetch_bytes_max,
            };
            match topics.last_mut() {
                Some(topic) if topic.name == key.0.as_str() => topic.partitions.push(partition),
                _ => topics.push(FetchTopic { name: key.0.as_str().to_owned(), partitions: vec![partition] }),
            }
            plan.partitions.push((key.clone(), fetch_offset, state.epoch));
        }
        if topics.is_empty() {
            return;
        }
        let limits = self.connection.limits_if_known();
        // A fetch started while other partitions still hold buffered records must not long-poll: the application
        // drains those soon, and their next fetch could only start once this one returned, so a long poll on
        // partitions with nothing new would stall them for the whole wait (seen as 500 ms stalls in ferry-bench's
        // end-to-end run with 1 KiB records, and a 5,000 records/s tail in a catch-up read).
        let others_buffered = self.partitions.values().any(|state| !state.buffered.is_empty());
        let wait = if others_buffered {
            Duration::ZERO
        } else {
            limits.map_or(self.config.fetch_wait_max, |limits| limits.fetch_wait_max.min(self.config.fetch_wait_max))
        };
        let request = Request::Fetch(FetchRequest {
            wait_ms_max: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
            bytes_min: self.config.fetch_bytes_min,
            bytes_max: self.config.fetch_bytes_max,
            isolation_level: self.config.isolation.to_wire(),
            topics,
        });
        let connection = self.connection.clone();
        let timeout = self.config.connection.request_timeout + wait;
        let retry_at = self.retry_at.take();
        self.fetch = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            if let Some(retry_at) = retry_at {
                sleep_until(retry_at).await;
            }
            (plan, connection.request_with_timeout(request, timeout).await)
        })));
    }

    /// Applies a fetch response: buffers verified records, resets out-of-range positions, backs off on retriable
    /// errors.
    fn apply_fetch(&mut self, plan: FetchPlan, result: Result<Response, ClientError>) -> Result<(), ClientError> {
        let response = match result {
            Ok(Response::Fetch(response)) => response,
            Ok(_) => {
                return Err(ClientError::UnexpectedResponse { api: ApiKey::Fetch, reason: "not a Fetch response" });
            }
            Err(error) if error.is_retriable() => {
                self.back_off(&error);
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        if let Err(error) = ClientError::check_wire(response.error_code, "") {
            if error.is_retriable() {
                self.back_off(&error);
                return Ok(());
            }
            return Err(error);
        }
        let mut retriable = None;
        for topic in response.topics {
            let Ok(topic_name) = TopicName::new(topic.name) else { continue };
            for partition_response in topic.partitions {
                let key = (topic_name.clone(), partition_response.partition);
                let Some(&(_, fetch_offset, epoch)) = plan.partitions.iter().find(|(planned, _, _)| planned == &key)
                else {
                    continue;
                };
                let Some(state) = self.partitions.get_mut(&key) else { continue };
                if state.epoch != epoch || state.fetch_offset != Some(fetch_offset) {
                    // Seeked (or reassigned) since the fetch was sent.
                    continue;
                }
                match apply_partition(state, key.1, fetch_offset, partition_response, self.config.offset_reset) {
                    Ok(()) => {}
                    Err(error) if error.is_retriable() => retriable = Some(error),
                    Err(error) => return Err(error),
                }
            }
        }
        match retriable {
            Some(error) => self.back_off(&error),
            None => self.failures = 0,
        }
        Ok(())
    }

    /// Resolves every pending seek with one ListOffsets request.
    async fn resolve_seeks(&mut self) -> Result<(), ClientError> {
        if let Some(retry_at) = self.retry_at.take() {
            sleep_until(retry_at).await;
        }
        let mut topics: Vec<ListOffsetsTopic> = Vec::new();
        let mut asked: Vec<(PartitionKey, u64)> = Vec::new();
        for (key, state) in &self.partitions {
            let Some(to) = state.pending_seek else { continue };
            let spec = match to {
                SeekTo::Earliest => OffsetSpec::Earliest,
                SeekTo::Latest => OffsetSpec::Latest,
                SeekTo::Timestamp(timestamp_ms) => OffsetSpec::Timestamp(timestamp_ms),
                SeekTo::Offset(_) => continue,
            };
            let lookup = ListOffsetsPartition { partition: key.1, spec: Some(spec.into()) };
            match topics.last_mut() {
                Some(topic) if topic.name == key.0.as_str() => topic.partitions.push(lookup),
                _ => topics.push(ListOffsetsTopic { name: key.0.as_str().to_owned(), partitions: vec![lookup] }),
            }
            asked.push((key.clone(), state.epoch));
        }
        if topics.is_empty() {
            return Ok(());
        }
        let request =
            Request::ListOffsets(ListOffsetsRequest { isolation_level: self.config.isolation.to_wire(), topics });
        let unexpected = |reason| ClientError::UnexpectedResponse { api: ApiKey::ListOffsets, reason };
        let Response::ListOffsets(response) = self.connection.request(request).await? else {
            return Err(unexpected("not a ListOffsets response"));
        };
        ClientError::check_wire(response.error_code, "")?;
        let mut first_error = None;
        for topic in response.topics {
            let Ok(topic_name) = TopicName::new(topic.name) else { continue };
            for found in topic.partitions {
                let key = (topic_name.clone(), found.partition);
                let Some(&(_, epoch)) = asked.iter().find(|(asked_key, _)| asked_key == &key) else { continue };
                let Some(state) = self.partitions.get_mut(&key) else { continue };
                if state.epoch != epoch {
                    continue;
                }
                if let Err(error) = ClientError::check_wire(found.error_code, &found.error_message) {
                    first_error.get_or_insert(error);
                    continue;
                }
                state.fetch_offset = Some(found.offset);
                state.pending_seek = None;
            }
        }
        match first_error {
            Some(error) => Err(error),
            None if self.partitions.values().any(|state| {
                matches!(state.pending_seek, Some(SeekTo::Earliest | SeekTo::Latest | SeekTo::Timestamp(_)))
            }) =>
            {
                Err(unexpected("the response leaves out a requested partition"))
            }
            None => Ok(()),
        }
    }
}

/// Whether a commit failed because the group moved on (a heartbeat catches up), not because of a lasting fault.
fn is_group_churn(error: &ClientError) -> bool {
    matches!(
        error.error_code(),
        Some(
            ErrorCode::StaleGeneration
                | ErrorCode::NotAssigned
                | ErrorCode::UnknownMember
                | ErrorCode::RebalanceInProgress
        )
    )
}

/// Applies one partition's part of a fetch response to its state.
fn apply_partition(
    state: &mut PartitionState,
    partition: u32,
    fetch_offset: u64,
    response: FetchPartitionResponse,
    reset: OffsetReset,
) -> Result<(), ClientError> {
    match ferry_protocol::messages::error_code_from_wire(response.error_code) {
        Some(ErrorCode::None) => {}
        Some(ErrorCode::OffsetOutOfRange) => {
            return match reset_target(reset) {
                Some(target) => {
                    tracing::info!(topic = %state.topic, partition, fetch_offset, ?target, "offset out of range; resetting");
                    state.seek(target);
                    Ok(())
                }
                None => Err(ClientError::OffsetOutOfRange {
                    topic: state.topic.to_string(),
                    partition,
                    offset: fetch_offset,
                }),
            };
        }
        _ => return Err(ClientError::from_wire(response.error_code, &response.error_message)),
    }
    let corrupt = |offset, source| ClientError::CorruptBatch {
        topic: state.topic.to_string(),
        partition,
        offset,
        source: Arc::new(source),
    };
    // Records of the batches before a bad one are returned, and the position stops at the bad batch: the next fetch
    // starts there and reports it, with its offset, and so does every fetch after (it is never skipped).
    let mut records = Vec::new();
    let mut next_offset = fetch_offset;
    for batch in split_batches(response.records) {
        let decoded = batch.and_then(|batch| {
            let batch_records: Result<Vec<_>, _> = batch.records().collect();
            batch_records.map(|batch_records| (batch, batch_records))
        });
        let (batch, batch_records) = match decoded {
            Ok(decoded) => decoded,
            Err(source) if records.is_empty() && next_offset == fetch_offset => {
                return Err(corrupt(next_offset, source));
            }
            Err(source) => {
                tracing::warn!(topic = %state.topic, partition, offset = next_offset, %source, "corrupt batch after valid ones");
                break;
            }
        };
        if !batch.header().attributes.control() {
            for record in batch_records {
                if record.offset < fetch_offset {
                    continue;
                }
                records.push(ConsumerRecord {
                    topic: state.topic.clone(),
                    partition,
                    offset: record.offset,
                    timestamp: record.timestamp,
                    key: record.key,
                    value: record.value,
                    headers: record.headers.iter().collect(),
                });
            }
        }
        next_offset = next_offset.max(batch.header().next_offset());
    }
    state.buffered.extend(records);
    state.fetch_offset = Some(next_offset);
    Ok(())
}
