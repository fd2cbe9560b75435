//! The Ferry client library and the `ferry` command-line tool.
//!
//! Three clients share one connection layer:
//! - [`Producer`] batches records per partition and delivers them with retries, up to a delivery timeout.
//! - [`Consumer`] reads assigned partitions with long-poll fetches and prefetching, verifying every batch's checksum;
//!   with a [`GroupConfig`] it joins a consumer group, follows rebalances and commits offsets per its [`CommitMode`].
//! - [`TransactionalProducer`] writes records to many partitions atomically, together with consumer-group offsets
//!   (exactly-once consume-transform-produce).
//! - [`Admin`] creates, deletes, lists and describes topics, lists and describes consumer groups, and lists and
//!   aborts open transactions.
//!
//! ```no_run
//! use std::time::Duration;
//! use ferry_client::{Admin, Consumer, ConsumerConfig, ConnectionConfig, Producer, ProducerConfig, ProducerRecord, SeekTo};
//!
//! # async fn example() -> Result<(), ferry_client::ClientError> {
//! let admin = Admin::new("127.0.0.1:7070", ConnectionConfig::default())?;
//! admin.create_topic("orders", 8, Default::default()).await?;
//!
//! let producer = Producer::new("127.0.0.1:7070", ProducerConfig::default())?;
//! let delivery = producer.send(ProducerRecord::new("orders", "order 17 paid").with_key("customer-42")).await?;
//! let metadata = delivery.await?;
//!
//! let mut consumer = Consumer::new("127.0.0.1:7070", ConsumerConfig::default())?;
//! consumer.assign("orders", [metadata.partition])?;
//! consumer.seek("orders", metadata.partition, SeekTo::Earliest)?;
//! for record in consumer.poll(Duration::from_secs(1)).await? {
//!     println!("{}:{} {:?}", record.partition, record.offset, record.value);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Modules, in reading order:
//! - [`error`]: [`ClientError`], with the broker's [`ferry_protocol::ErrorCode`] and whether a retry can help.
//! - [`connection`]: [`Connection`]: one TCP connection, version negotiation, pipelined requests, reconnection.
//! - [`partitioner`]: Kafka's murmur2 key hash, so keys land on the partitions Kafka would pick.
//! - [`producer`]: [`Producer`] and its background task (batching, linger, retries, delivery timeout, backpressure).
//! - [`consumer`]: [`Consumer`] (manual assignment, seek, poll; group membership, rebalances, commits).
//! - [`transaction`]: [`TransactionalProducer`] (transactions: staging, commit, abort, fencing).
//! - [`admin`]: [`Admin`] (topics, groups, transactions).
//! - `cli` (feature `cli`, on by default): the `ferry` command line, as a library so tests can drive it.
//!
//! The crate depends on `ferry-protocol` and never on the broker.

pub mod admin;
mod backoff;
#[cfg(feature = "cli")]
pub mod cli;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod partitioner;
pub mod producer;
pub mod transaction;

pub use admin::{
    Admin, BrokerInfo, GroupInfo, GroupListing, GroupMemberInfo, GroupPartitionInfo, PartitionInfo,
    PartitionProducersInfo, ProducerInfo, TopicInfo, TopicListing, TransactionInfo,
};
pub use connection::{BrokerLimits, Connection, ConnectionConfig};
pub use consumer::{
    CommitMode, Consumer, ConsumerConfig, ConsumerRecord, GroupAssignor, GroupConfig, Isolation, OffsetReset,
    RebalanceEvent, SeekTo,
};
pub use error::ClientError;
pub use partitioner::{murmur2, partition_for_key};
pub use producer::{Acks, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata};
pub use transaction::{CommittedPartition, GroupMetadata, TransactionalConfig, TransactionalProducer};
