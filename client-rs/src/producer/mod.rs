//! The [`Producer`]: batches records per partition and delivers them with retries, up to a delivery timeout.
//!
//! # How a record travels
//!
//! [`Producer::send`] picks the partition, reserves the record's bytes in the bounded buffer (waiting while it is
//! full) and hands the record to the producer's one background task, which owns every partition's state:
//! - **Batching**: each partition has an open batch ([`ferry_protocol::BatchBuilder`], at most `batch_bytes_max`
//!   bytes and never more than the broker announced). It is closed when full, when it is `linger` old and the
//!   partition may send, or on [`Producer::flush`].
//!   While `max_in_flight_per_partition` requests of a partition are in flight, its open batch keeps filling even
//!   after `linger`, so batches grow with latency.
//! - **Partitioning**: a record with an explicit partition goes there; a record with a key goes to
//!   [`crate::partition_for_key`] (Kafka's murmur2, so keys land where Kafka would put them); a record without either
//!   sticks to one partition per topic until that partition's batch is closed, then a new partition is picked at
//!   random, so key-less records form large batches without favouring one partition.
//! - **Requests**: each request carries at most one batch per partition, from every partition that may send.
//! - **Retries**: a retriable error ([`crate::ClientError::is_retriable`]: a retriable broker code, a lost
//!   connection, a timeout) puts the batch back at the front of its partition after an exponential backoff with
//!   jitter; anything else fails the batch's records at once. A record not acknowledged within `delivery_timeout`
//!   of being accepted fails with [`crate::ClientError::DeliveryTimeout`]: a record is never dropped silently.
//!
//! # Ordering and delivery guarantees
//!
//! - **Idempotent** (the default: `idempotence = true`, `acks = All`): the producer takes a producer id from the
//!   broker (`InitProducerId`) and stamps each batch with it and with the batch's sequence number in its partition.
//!   The broker writes each batch once however often it is retried (a retry is answered with the original offsets)
//!   and refuses a batch whose predecessor is missing, so with up to 5 batches in flight per partition records are
//!   appended exactly once and in `send` order. A record either resolves with its offset or fails with an error
//!   (never silently lost); a record that fails with `DeliveryTimeout` after its batch was sent has an unknown
//!   outcome (it may have been written), and only that case can turn into a duplicate if the application sends it
//!   again. See the `worker` module docs for how sequences, retries and resets work.
//! - With `idempotence = false` and `acks = All` a record's future resolves with its offset once the broker
//!   acknowledged it (durable per the topic's fsync policy), but a retry after a lost connection or a timeout may
//!   append a batch twice (at-least-once), and with more than one request in flight per partition a retried batch
//!   can land after a batch sent after it.
//! - **Message-id dedup** ([`ProducerRecord::with_dedup_key`], needs `idempotence = false`): on a topic with
//!   `dedup.window.ms`, the broker drops a record whose dedup key was appended to the partition within the window
//!   and resolves it with the original's offset and [`RecordMetadata::duplicate`]; records with a dedup key and
//!   neither key nor partition are routed by the dedup key, so a copy sent again (even by another process) meets
//!   its original.
//! - With `acks = None` (which needs `idempotence = false`) the broker sends no response: the future resolves (with
//!   no offset) once the request was written to the socket. Nothing tells the producer about a failed append
//!   (at-most-once).

mod worker;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::batch::{DEDUP_KEY_BYTES_MAX, DEDUP_KEY_HEADER};
use ferry_protocol::messages::DescribeTopicsRequest;
use ferry_protocol::{ApiKey, Request, Response, TopicName};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::connection::{Connection, ConnectionConfig};
use crate::error::ClientError;

/// Most produce requests one partition may have in flight (see [`ProducerConfig::max_in_flight_per_partition`]).
pub const MAX_IN_FLIGHT_PER_PARTITION_MAX: u32 = 5;

/// Bytes charged to the buffer for each record on top of its key, value and headers: the record's own framing and
/// the producer's bookkeeping for it (its reply channel), so that many tiny records are bounded too.
const RECORD_OVERHEAD_BYTES: usize = 64;

/// Most commands the producer's task drains in one round before it looks at timers and sends again.
const COMMANDS_PER_ROUND_MAX: usize = 1024;

/// When the broker acknowledges a produce request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Acks {
    /// The broker answers once the batch is appended and durable per the topic's fsync policy (at-least-once).
    #[default]
    All,
    /// The broker does not answer at all; a record counts as sent once written to the socket (at-most-once).
    None,
}

/// Settings of a [`Producer`].
///
/// ```
/// use std::time::Duration;
/// use ferry_client::{Acks, ProducerConfig};
///
/// let config = ProducerConfig { linger: Duration::from_millis(20), acks: Acks::All, ..ProducerConfig::default() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    /// When the broker acknowledges. Default [`Acks::All`].
    pub acks: Acks,
    /// How long a batch waits for more records after its first one before it may be sent. Default 5 ms (Kafka's).
    /// A batch also leaves when full or on [`Producer::flush`].
    pub linger: Duration,
    /// Largest batch, in bytes with its header; lowered to the broker's announced `batch_bytes_max`.
    /// A record that does not fit in an empty batch fails with [`ClientError::RecordTooLarge`]. Default 1 MiB.
    pub batch_bytes_max: u32,
    /// Most bytes of records accepted but not yet completed (each record counts its key, value and headers plus
    /// 64 bytes). [`Producer::send`] waits while the buffer is full. Default 32 MiB.
    pub buffer_bytes_max: usize,
    /// Longest a record may take from being accepted to being acknowledged, retries included; then its future
    /// fails with [`ClientError::DeliveryTimeout`]. Also bounds the wait for a topic's metadata in `send`.
    /// Default 120 s (Kafka's).
    pub delivery_timeout: Duration,
    /// Delay before the first retry of a batch; it doubles per attempt, with 20% jitter. Default 100 ms.
    pub retry_backoff_initial: Duration,
    /// Largest delay between retries of a batch. Default 1 s.
    pub retry_backoff_max: Duration,
    /// Most produce requests in flight per partition, 1 to 5 (the broker remembers the last 5 batches of each
    /// idempotent producer per partition). Default 5. With idempotence records stay in order whatever the value;
    /// without it, above 1 a retry can reorder batches.
    pub max_in_flight_per_partition: u32,
    /// Whether the producer is idempotent: every batch written exactly once and in order despite retries (see the
    /// module docs). Default `true`; needs `acks = All`.
    pub idempotence: bool,
    /// The connection settings (request timeout, reconnection backoff).
    pub connection: ConnectionConfig,
}

impl Default for ProducerConfig {
    fn default() -> ProducerConfig {
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes_max: 1024 * 1024,
            buffer_bytes_max: 32 * 1024 * 1024,
            delivery_timeout: Duration::from_secs(120),
            retry_backoff_initial: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            max_in_flight_per_partition: MAX_IN_FLIGHT_PER_PARTITION_MAX,
            idempotence: true,
            connection: ConnectionConfig::default(),
        }
    }
}

impl ProducerConfig {
    /// Checks every field's bounds; fails with [`ClientError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ClientError> {
        let invalid = |field, reason: &str| Err(ClientError::InvalidConfig { field, reason: reason.to_owned() });
        let batch_min = u32::try_from(ferry_protocol::batch::BATCH_HEADER_BYTES).unwrap_or(u32::MAX) + 16;
        if !(batch_min..=ferry_protocol::limits::BATCH_BYTES_MAX).contains(&self.batch_bytes_max) {
            return invalid("batch_bytes_max", "must be in 75..=BATCH_BYTES_MAX");
        }
        if self.buffer_bytes_max < usize::try_from(self.batch_bytes_max).unwrap_or(usize::MAX) {
            return invalid("buffer_bytes_max", "must be at least batch_bytes_max");
        }
        if self.buffer_bytes_max > Semaphore::MAX_PERMITS {
            return invalid("buffer_bytes_max", "is too large");
        }
        if self.delivery_timeout.is_zero() {
            return invalid("delivery_timeout", "must be positive");
        }
        if self.retry_backoff_initial.is_zero() || self.retry_backoff_initial > self.retry_backoff_max {
            return invalid("retry_backoff_initial", "must be positive and at most retry_backoff_max");
        }
        if !(1..=MAX_IN_FLIGHT_PER_PARTITION_MAX).contains(&self.max_in_flight_per_partition) {
            return invalid("max_in_flight_per_partition", "must be in 1..=5");
        }
        if self.idempotence && self.acks == Acks::None {
            return invalid("idempotence", "needs acks = All (set idempotence = false for acks = None)");
        }
        self.connection.validate()
    }

    fn retry_backoff(&self) -> Backoff {
        Backoff { initial: self.retry_backoff_initial, max: self.retry_backoff_max }
    }
}

/// A record to send: a topic, an optional key, partition and timestamp, a value and headers.
///
/// ```
/// use ferry_client::ProducerRecord;
///
/// let record = ProducerRecord::new("orders", "order 17 paid").with_key("customer-42").with_header("source", "web");
/// assert_eq!(record.key.as_deref(), Some(&b"customer-42"[..]));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    /// The topic; validated by [`Producer::send`].
    pub topic: String,
    /// The partition; `None` lets the producer choose (by key hash, or sticky when there is no key).
    pub partition: Option<u32>,
    /// The key; `None` is a null key.
    pub key: Option<Bytes>,
    /// The value; `None` is a null value (a tombstone).
    pub value: Option<Bytes>,
    /// Headers, in order; a `None` value is null.
    pub headers: Vec<(Bytes, Option<Bytes>)>,
    /// The timestamp in milliseconds since the Unix epoch; `None` uses the time of [`Producer::send`].
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value and nothing else.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            partition: None,
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    /// Sets the key, which picks the partition unless one is set.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> ProducerRecord {
        self.key = Some(key.into());
        self
    }

    /// Sends the record to this partition.
    pub fn with_partition(mut self, partition: u32) -> ProducerRecord {
        self.partition = Some(partition);
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> ProducerRecord {
        self.headers.push((key.into(), Some(value.into())));
        self
    }

    /// Sets the record's dedup key (the `ferry.dedup.key` header, 1 to 256 bytes): on a topic with
    /// `dedup.window.ms` > 0, the broker drops the record if a record with the same key was appended to the
    /// partition within the window, and reports it [`RecordMetadata::duplicate`] with the original's offset.
    ///
    /// Without a key or partition, the record is routed by its dedup key, so a resent copy meets its original;
    /// with an explicit partition, dedup applies within that partition. Only producers with `idempotence = false`
    /// may send dedup keys ([`Producer::send`] refuses them otherwise): the broker cannot drop single records from an
    /// idempotent producer's batch without breaking its sequence numbers.
    ///
    /// ```
    /// use ferry_client::ProducerRecord;
    ///
    /// let record = ProducerRecord::new("payments", "paid").with_dedup_key("payment-8812");
    /// assert_eq!(record.dedup_key(), Some(&b"payment-8812"[..]));
    /// ```
    /// Setting it again replaces the key.
    pub fn with_dedup_key(mut self, key: impl Into<Bytes>) -> ProducerRecord {
        self.headers.retain(|(name, _)| name.as_ref() != DEDUP_KEY_HEADER.as_bytes());
        self.with_header(DEDUP_KEY_HEADER, key)
    }

    /// The record's dedup key, if it has one.
    pub fn dedup_key(&self) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(name, _)| name.as_ref() == DEDUP_KEY_HEADER.as_bytes())
            .map(|(_, value)| value.as_deref().unwrap_or_default())
    }

    /// Sets the timestamp, in milliseconds since the Unix epoch.
    pub fn with_timestamp(mut self, timestamp_ms: i64) -> ProducerRecord {
        self.timestamp = Some(timestamp_ms);
        self
    }

    /// An upper bound of the record's encoded size plus its bookkeeping: what it costs in the buffer.
    fn buffer_bytes(&self) -> usize {
        let field = |bytes: &Option<Bytes>| bytes.as_ref().map_or(0, Bytes::len);
        let headers: usize = self.headers.iter().map(|(key, value)| key.len() + field(value) + 20).sum();
        RECORD_OVERHEAD_BYTES + field(&self.key) + field(&self.value) + headers
    }
}

/// Where an acknowledged record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordMetadata {
    /// The partition the record went to.
    pub partition: u32,
    /// The record's offset; `None` exactly when the producer uses [`Acks::None`] (the broker does not answer).
    /// For a `duplicate`, the offset of the original record.
    pub offset: Option<u64>,
    /// The record was dropped by message-id dedup: a record with the same dedup key
    /// ([`ProducerRecord::with_dedup_key`]) was appended to the partition within the topic's `dedup.window.ms`, and
    /// `offset` is that record's. Nothing was written for this one.
    pub duplicate: bool,
}

/// Resolves once the record is acknowledged (or, with [`Acks::None`], written), or failed for good.
///
/// Returned by [`Producer::send`]. Dropping it does not cancel the delivery.
///
/// ```no_run
/// # async fn example(producer: ferry_client::Producer) -> Result<(), ferry_client::ClientError> {
/// let delivery = producer.send(ferry_client::ProducerRecord::new("orders", "paid")).await?;
/// let metadata = delivery.await?;
/// println!("partition {} offset {:?}", metadata.partition, metadata.offset);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a delivery future tells whether the record was acknowledged"]
pub struct DeliveryFuture {
    receiver: oneshot::Receiver<Result<RecordMetadata, ClientError>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.receiver).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            // The producer's task ended without completing the record: the producer was closed or dropped.
            Poll::Ready(Err(_)) => Poll::Ready(Err(ClientError::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A record accepted by [`Producer::send`], on its way to the producer's task.
#[derive(Debug)]
struct Accepted {
    topic: TopicName,
    partition_count: u32,
    record: ProducerRecord,
    timestamp: i64,
    deadline: Instant,
    /// The record's share of the buffer, released when the record completes.
    permit: tokio::sync::OwnedSemaphorePermit,
    reply: oneshot::Sender<Result<RecordMetadata, ClientError>>,
}

/// What `send` and `flush` ask of the producer's task.
#[derive(Debug)]
enum Command {
    Send(Box<Accepted>),
    Flush(oneshot::Sender<()>),
}

/// Sends records to a Ferry broker in batches, with retries; cheap to clone (clones share one producer).
///
/// Must be created inside a Tokio runtime: it starts one background task. Call [`Producer::flush`] or
/// [`Producer::close`] before dropping the last clone: dropping it stops the task, and records still pending
/// then fail with [`ClientError::Closed`].
///
/// ```no_run
/// use ferry_client::{Producer, ProducerConfig, ProducerRecord};
///
/// # async fn example() -> Result<(), ferry_client::ClientError> {
/// let producer = Producer::new("127.0.0.1:7070", ProducerConfig::default())?;
/// let mut deliveries = Vec::new();
/// for order_idx in 0..100 {
///     let record = ProducerRecord::new("orders", format!("order {order_idx}")).with_key("customer-42");
///     deliveries.push(producer.send(record).await?);
/// }
/// for delivery in deliveries {
///     let metadata = delivery.await?;
///     println!("stored at {}:{:?}", metadata.partition, metadata.offset);
/// }
/// producer.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: ProducerConfig,
    connection: Connection,
    commands: mpsc::Sender<Command>,
    buffer: Arc<Semaphore>,
    /// Partition counts by topic, learned with DescribeTopics (a short lock, never held across `.await`).
    partition_counts: Mutex<HashMap<TopicName, u32>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Producer {
    /// A producer for the broker at `addr` (`host:port`).
    ///
    /// Does not connect: the first `send` does (and retries until the delivery timeout while the broker is down).
    /// Fails on an invalid `config`, or outside a Tokio runtime.
    ///
    /// ```
    /// # use ferry_client::{Producer, ProducerConfig};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let producer = Producer::new("127.0.0.1:7070", ProducerConfig::default()).unwrap();
    /// assert_eq!(producer.config().max_in_flight_per_partition, 5);
    /// # }
    /// ```
    pub fn new(addr: impl Into<String>, config: ProducerConfig) -> Result<Producer, ClientError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::InvalidConfig {
            field: "runtime",
            reason: "a producer must be created inside a Tokio runtime".to_owned(),
        })?;
        let connection = Connection::new(addr, config.connection.clone())?;
        let (commands, command_receiver) = mpsc::channel(COMMANDS_PER_ROUND_MAX);
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let worker = worker::Worker::new(config.clone(), connection.clone(), command_receiver, shutdown.clone());
        let _guard = runtime.enter();
        tracker.spawn(worker.run());
        tracker.close();
        let buffer = Arc::new(Semaphore::new(config.buffer_bytes_max));
        Ok(Producer {
            shared: Arc::new(Shared {
                config,
                connection,
                commands,
                buffer,
                partition_counts: Mutex::new(HashMap::new()),
                shutdown,
                tracker,
            }),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &ProducerConfig {
        &self.shared.config
    }

    /// Accepts a record for delivery and returns the future of its acknowledgement.
    ///
    /// Waits while the buffer is full (backpressure) and, the first time a topic is used, for its partition count.
    /// Fails at once, without sending, for an invalid topic name, a partition the topic does not have, a record
    /// larger than the buffer, or a closed producer; fails with [`ClientError::DeliveryTimeout`] if the topic's
    /// metadata cannot be had within the delivery timeout (the topic does not exist, the broker is down).
    /// Everything that happens after acceptance is reported through the returned [`DeliveryFuture`].
    ///
    /// ```no_run
    /// # async fn example(producer: ferry_client::Producer) -> Result<(), ferry_client::ClientError> {
    /// use ferry_client::ProducerRecord;
    /// let delivery = producer.send(ProducerRecord::new("orders", "paid").with_key("customer-42")).await?;
    /// let metadata = delivery.await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        let shared = &self.shared;
        if shared.shutdown.is_cancelled() {
            return Err(ClientError::Closed);
        }
        let topic = ClientError::topic_name(&record.topic)?;
        if let Some(dedup_key) = record.dedup_key() {
            if shared.config.idempotence {
                return Err(ClientError::InvalidConfig {
                    field: "idempotence",
                    reason: "must be false to send records with a dedup key (the broker cannot drop single records \
                             from an idempotent producer's batch)"
                        .to_owned(),
                });
            }
            if !(1..=DEDUP_KEY_BYTES_MAX).contains(&dedup_key.len()) {
                return Err(ClientError::InvalidConfig {
                    field: "dedup_key",
                    reason: format!("must have 1 to {DEDUP_KEY_BYTES_MAX} bytes, not {}", dedup_key.len()),
                });
            }
        }
        let buffer_bytes = record.buffer_bytes();
        if buffer_bytes > shared.config.buffer_bytes_max {
            return Err(ClientError::RecordTooLarge { size: buffer_bytes, max: shared.config.buffer_bytes_max });
        }
        let permits = u32::try_from(buffer_bytes)
            .map_err(|_| ClientError::RecordTooLarge { size: buffer_bytes, max: shared.config.buffer_bytes_max })?;
        let metadata_deadline = Instant::now() + shared.config.delivery_timeout;
        let partition_count = self.partition_count(&topic, metadata_deadline).await?;
        if let Some(partition) = record.partition
            && partition >= partition_count
        {
            return Err(ClientError::UnknownPartition { topic: topic.into_string(), partition, partition_count });
        }
        let permit = tokio::select! {
            permit = shared.buffer.clone().acquire_many_owned(permits) => permit.map_err(|_| ClientError::Closed)?,
            () = shared.shutdown.cancelled() => return Err(ClientError::Closed),
        };
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let (reply, receiver) = oneshot::channel();
        let accepted = Accepted {
            topic,
            partition_count,
            record,
            timestamp,
            deadline: Instant::now() + shared.config.delivery_timeout,
            permit,
            reply,
        };
        shared.commands.send(Command::Send(Box::new(accepted))).await.map_err(|_| ClientError::Closed)?;
        Ok(DeliveryFuture { receiver })
    }

    /// Sends every record accepted so far without waiting for linger, and waits until each has completed
    /// (acknowledged or failed: failures are reported through their own futures).
    ///
    /// ```no_run
    /// # async fn example(producer: ferry_client::Producer) -> Result<(), ferry_client::ClientError> {
    /// producer.flush().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (reply, done) = oneshot::channel();
        self.shared.commands.send(Command::Flush(reply)).await.map_err(|_| ClientError::Closed)?;
        done.await.map_err(|_| ClientError::Closed)
    }

    /// Flushes, then stops the producer's task and closes its connection. Later sends fail with
    /// [`ClientError::Closed`].
    ///
    /// ```no_run
    /// # async fn example(producer: ferry_client::Producer) -> Result<(), ferry_client::ClientError> {
    /// producer.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn close(&self) -> Result<(), ClientError> {
        let flushed = self.flush().await;
        self.shared.shutdown.cancel();
        self.shared.tracker.wait().await;
        self.shared.connection.close().await;
        match flushed {
            // Closing twice is fine: the second flush finds the task gone.
            Err(ClientError::Closed) => Ok(()),
            other => other,
        }
    }

    /// The topic's partition count, from the cache or asked with DescribeTopics, retrying retriable errors
    /// (such as a topic being created) until `deadline`.
    async fn partition_count(&self, topic: &TopicName, deadline: Instant) -> Result<u32, ClientError> {
        if let Some(&count) = self.lock_partition_counts().get(topic) {
            return Ok(count);
        }
        let mut attempt = 0;
        loop {
            let error = match describe_partition_count(&self.shared.connection, topic).await {
                Ok(count) => {
                    self.lock_partition_counts().insert(topic.clone(), count);
                    return Ok(count);
                }
                Err(error) if error.is_retriable() => error,
                Err(error) => return Err(error),
            };
            attempt += 1;
            let retry_at = Instant::now() + self.shared.config.retry_backoff().delay(attempt);
            if retry_at >= deadline {
                return Err(ClientError::DeliveryTimeout {
                    timeout: self.shared.config.delivery_timeout,
                    last_error: Some(Box::new(error)),
                });
            }
            tracing::debug!(topic = %topic, %error, attempt, "retrying the topic's metadata");
            tokio::select! {
                () = tokio::time::sleep_until(retry_at) => {}
                () = self.shared.shutdown.cancelled() => return Err(ClientError::Closed),
            }
        }
    }

    fn lock_partition_counts(&self) -> std::sync::MutexGuard<'_, HashMap<TopicName, u32>> {
        self.shared.partition_counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Asks the broker for one topic's partition count.
pub(crate) async fn describe_partition_count(connection: &Connection, topic: &TopicName) -> Result<u32, ClientError> {
    let request = Request::DescribeTopics(DescribeTopicsRequest { names: vec![topic.as_str().to_owned()] });
    let unexpected = |reason| ClientError::UnexpectedResponse { api: ApiKey::DescribeTopics, reason };
    let Response::DescribeTopics(response) = connection.request(request).await? else {
        return Err(unexpected("not a DescribeTopics response"));
    };
    ClientError::check_wire(response.error_code, "")?;
    let description = response.topics.into_iter().next().ok_or_else(|| unexpected("the topic is missing"))?;
    ClientError::check_wire(description.error_code, &description.error_message)?;
    let count = u32::try_from(description.partitions.len()).map_err(|_| unexpected("too many partitions"))?;
    if count == 0 {
        return Err(unexpected("the topic has no partitions"));
    }
    Ok(count)
}

/// The current time in milliseconds since the Unix epoch (0 if the clock is before 1970).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
}
