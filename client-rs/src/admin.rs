//! The [`Admin`] client: topics, consumer groups, open transactions, and introspection of the broker and its
//! idempotent producers.
//!
//! Admin operations are not retried: creating a topic whose response was lost may have succeeded, and a retry
//! would then fail with `TOPIC_ALREADY_EXISTS`. Errors say whether a retry can help
//! ([`ClientError::is_retriable`]); the connection itself reconnects on the next call.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_protocol::messages::{
    AbortTxnRequest, CreatableTopic, CreateTopicsRequest, DeleteTopicsRequest, DescribeBrokerRequest,
    DescribeGroupsRequest, DescribeProducersRequest, DescribeTopicsRequest, ListGroupsRequest, ListTopicsRequest,
    ListTxnsRequest, OffsetFetchRequest, TopicPartitions,
};
use ferry_protocol::{ApiKey, ErrorCode, Request, Response};

use crate::connection::{Connection, ConnectionConfig};
use crate::error::ClientError;

/// A topic as listed by [`Admin::list_topics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicListing {
    /// The topic name.
    pub name: String,
    /// The number of partitions, numbered from 0.
    pub partition_count: u32,
}

/// A topic's configuration and partitions, as described by [`Admin::describe_topic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// The topic name.
    pub name: String,
    /// The config overrides set at creation; absent keys use the broker's defaults.
    pub config: BTreeMap<String, String>,
    /// Every partition, in partition order.
    pub partitions: Vec<PartitionInfo>,
}

/// One partition's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The partition number.
    pub partition: u32,
    /// The oldest offset still stored.
    pub start_offset: u64,
    /// The offset the next appended record will get; `end_offset - start_offset` records are stored.
    pub end_offset: u64,
    /// Whether the partition holds corrupt data below its acknowledged end and refuses writes.
    pub damaged: bool,
    /// Why the partition is unhealthy (e.g. `PARTITION_DAMAGED`), with the broker's detail; `None` when healthy.
    pub error: Option<(ErrorCode, String)>,
    /// Bytes of segment data on disk (0 from a broker that does not report it).
    pub size_bytes: u64,
    /// Segment files on disk (0 from a broker that does not report it).
    pub segment_count: u32,
    /// The fsync policy in effect: `always`, `interval:MS` or `never` (empty from a broker that does not report it).
    pub fsync: String,
}

/// The broker itself, as described by [`Admin::describe_broker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// The broker's version.
    pub version: String,
    /// Time since the broker began serving clients.
    pub uptime: Duration,
    /// The configuration in effect: TOML keys (sections dotted) to values; durations in ms, -1 for no limit.
    pub config: BTreeMap<String, String>,
    /// The data directory, as configured.
    pub data_dir: String,
    /// Bytes of every file under the data directory.
    pub data_dir_bytes: u64,
    /// Topics on the broker.
    pub topics: u32,
    /// Partitions accepting writes.
    pub partitions_healthy: u32,
    /// Partitions holding corrupt data below their acknowledged end.
    pub partitions_damaged: u32,
    /// Partitions stopped by a fatal error until the broker restarts.
    pub partitions_failed: u32,
    /// Client connections open (the admin client's included).
    pub connections_open: u32,
}

/// The idempotent producers of one partition, as described by [`Admin::describe_producers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProducersInfo {
    /// The partition number.
    pub partition: u32,
    /// Why the partition's producers could not be read, with the broker's detail; `None` on success.
    pub error: Option<(ErrorCode, String)>,
    /// The producers, by producer id; at most the broker's limit (1000).
    pub producers: Vec<ProducerInfo>,
    /// How many producer ids the partition tracks (more than `producers.len()` when `truncated`).
    pub producer_count: u32,
    /// Whether the broker listed fewer producers than it tracks.
    pub truncated: bool,
}

/// One idempotent producer's state in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerInfo {
    /// The producer id.
    pub producer_id: i64,
    /// Its newest epoch seen in the partition.
    pub epoch: i32,
    /// The sequence number of its last record written to the partition.
    pub last_sequence: i32,
    /// When it last wrote to the partition, in ms since the Unix epoch (the broker's clock).
    pub last_write_ms: i64,
    /// The offset of its last record written to the partition.
    pub last_offset: u64,
}

/// A consumer group as listed by [`Admin::list_groups`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    /// The group id.
    pub group_id: String,
    /// `empty`, `reconciling` (partitions are moving) or `stable`.
    pub state: String,
    /// How many members it has.
    pub member_count: u32,
}

/// A consumer group, as described by [`Admin::describe_group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group id.
    pub group_id: String,
    /// `empty`, `reconciling` or `stable`.
    pub state: String,
    /// The current generation (0 if the broker has not seen members since it started).
    pub generation: i32,
    /// The assignor in use; empty without members.
    pub assignor: String,
    /// The members, by member id.
    pub members: Vec<GroupMemberInfo>,
    /// Every partition the group is assigned or has an offset for: committed offset, end offset and lag.
    pub partitions: Vec<GroupPartitionInfo>,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberInfo {
    /// The member id.
    pub member_id: String,
    /// The static instance id; empty for a dynamic member.
    pub instance_id: String,
    /// The client id it joined with.
    pub client_id: String,
    /// The partitions it reads now, as `(topic, partition)`.
    pub assignment: Vec<(String, u32)>,
}

/// The progress of a group in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPartitionInfo {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The member reading it now, if any.
    pub member_id: Option<String>,
    /// The committed offset (the next one the group consumes), if any.
    pub committed: Option<u64>,
    /// The partition's end offset (the next offset to be written).
    pub end_offset: u64,
    /// Records from the committed offset to the end; `None` without a committed offset.
    pub lag: Option<u64>,
    /// Lag in time: the age of the record at the committed offset (the next one the group consumes), by the
    /// broker's clock; zero when caught up; `None` without a committed offset.
    pub lag_time: Option<Duration>,
}

/// An open transaction, as listed by [`Admin::list_transactions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionInfo {
    /// The producer's transactional id.
    pub transactional_id: String,
    /// Its producer id.
    pub producer_id: i64,
    /// Its current epoch.
    pub epoch: i32,
    /// The open transaction's number.
    pub transaction: u64,
    /// `open` (records being staged) or `committing` (decided, being appended).
    pub state: String,
    /// Time since the transaction began.
    pub age: Duration,
    /// The transaction's timeout: the broker aborts it at this age.
    pub timeout: Duration,
    /// The partitions it has staged records for, as `(topic, partition)`.
    pub partitions: Vec<(String, u32)>,
    /// Batches staged so far.
    pub staged_batches: u64,
    /// Bytes staged so far.
    pub staged_bytes: u64,
    /// The consumer group whose offsets it commits, if any.
    pub group_id: Option<String>,
}

/// Creates, deletes, lists and describes topics; lists and describes consumer groups; lists and aborts open
/// transactions; describes the broker and a topic's idempotent producers.
///
/// ```no_run
/// use ferry_client::{Admin, ConnectionConfig};
///
/// # async fn example() -> Result<(), ferry_client::ClientError> {
/// let admin = Admin::new("127.0.0.1:7070", ConnectionConfig::default())?;
/// let config = [("retention.ms".to_owned(), "86400000".to_owned())].into_iter().collect();
/// admin.create_topic("orders", 8, config).await?;
/// for topic in admin.list_topics().await? {
///     println!("{} ({} partitions)", topic.name, topic.partition_count);
/// }
/// admin.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Admin {
    connection: Connection,
}

impl Admin {
    /// An admin client for the broker at `addr` (`host:port`). Does not connect: the first call does.
    ///
    /// ```
    /// # use ferry_client::{Admin, ConnectionConfig};
    /// let admin = Admin::new("127.0.0.1:7070", ConnectionConfig::default()).unwrap();
    /// assert_eq!(admin.connection().addr(), "127.0.0.1:7070");
    /// ```
    pub fn new(addr: impl Into<String>, config: ConnectionConfig) -> Result<Admin, ClientError> {
        Ok(Admin { connection: Connection::new(addr, config)? })
    }

    /// An admin client sharing an existing connection (e.g. one a test already opened).
    ///
    /// ```
    /// # use ferry_client::{Admin, Connection, ConnectionConfig};
    /// let connection = Connection::new("127.0.0.1:7070", ConnectionConfig::default()).unwrap();
    /// let admin = Admin::with_connection(connection.clone());
    /// ```
    pub fn with_connection(connection: Connection) -> Admin {
        Admin { connection }
    }

    /// Creates a topic with `partition_count` partitions and per-topic config overrides
    /// (keys as in `CreatableTopic.config` of `topics.proto`, e.g. `retention.ms`, `fsync`).
    ///
    /// Fails with the broker's code: `TOPIC_ALREADY_EXISTS`, `INVALID_TOPIC`, `INVALID_PARTITIONS`, `INVALID_CONFIG`.
    ///
    /// ```no_run
    /// # async fn example(admin: ferry_client::Admin) -> Result<(), ferry_client::ClientError> {
    /// admin.create_topic("orders", 8, Default::default()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn create_topic(
        &self,
        name: &str,
        partition_count: u32,
        config: BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        let request = Request::CreateTopics(CreateTopicsRequest {
            topics: vec![CreatableTopic { name: name.to_owned(), partition_count, config }],
        });
        let Response::CreateTopics(response) = self.connection.request(request).await? else {
            return Err(unexpected(ApiKey::CreateTopics, "not a CreateTopics response"));
        };
        ClientError::check_wire(response.error_code, "")?;
        let result = response.topics.first().ok_or_else(|| unexpected(ApiKey::CreateTopics, "no result"))?;
        ClientError::check_wire(result.error_code, &result.error_message)
    }

    /// Deletes a topic and all its records; fails with `UNKNOWN_TOPIC_OR_PARTITION` if there is no such topic.
    ///
    /// ```no_run
    /// # async fn example(admin: ferry_client::Admin) -> Result<(), ferry_client::ClientError> {
    /// admin.delete_topic("orders").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = Request::DeleteTopics(DeleteTopicsRequest { names: vec![name.to_owned()] });
        let Response::DeleteTopics(response) = self.connection.request(request).await? else {
            return Err(unexpected(ApiKey::DeleteTopics, "not a DeleteTopics response"));
        };
        ClientError::check_wire(response.error_code, "")?;
        let result = response.topics.first().ok_or_else(|| unexpected(ApiKey::DeleteTopics, "no result"))?;
        ClientError::check_wire(result.error_code, &result.error_message)
    }

    /// Every topic on the broker, sorted by name.
    ///
    /// ```no_run
    /// # async fn example(admin: ferry_client::Admin) -> Result<(), ferry_client::ClientError> {
    /// let topics = admin.list_topics().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_topics(&self) -> Result<Vec<TopicListing>, ClientError> {
        let Response::ListTopics(response) = self.connection.request(Request::ListTopics(ListTopicsRequest {})).await?
        else {
            return Err(unexpected(ApiKey::ListTopics, "not a ListTopics response"));
        };
        ClientError::check_wire(response.error_code, "")?;
        Ok(response
            .topics
            .into_iter()
            .map(|topic| TopicListing { name: topic.name, partition_count: topic.partition_count })
            .collect())
    }

    /// A topic's config and, per partition, its start and end offsets and health.
    /// Fails with `UNKNOWN_TOPIC_OR_PARTITION` if there is no such topic.
    ///
    /// ```no_run
    /// # async fn example(admin: ferry_client::Admin) -> Result<(), ferry_client::ClientError> {
    /// let topic = admin.describe_topic("orders").await?;
    /// for partition in &topic.partitions {
    ///     println!("{}: {}..{}", partition.partition, partition.start_offset, partition.end_offset);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo, ClientError> {
        let request = Request::DescribeTopics(DescribeTopicsRequest { names: vec![name.to_owned()] });
        let Response::DescribeTopics(response) = self.connection.request(request).await? else {
            return Err(unexpected(ApiKey::DescribeTopics, "not a DescribeTopics response"));
        };
        ClientError::check_wire(response.error_code, "")?;
        let topic =
            response.topics.into_iter().next().ok_or_else(|| unexpected(ApiKey::DescribeTopics, "no description"))?;
        ClientError::check_wire(topic.error_code, &topic.error_message)?;
        let partitions = topic
            .partitions
            .into_iter()
            .map(|partition| PartitionInfo {
                partition: partition.partition,
                start_offset: partition.start_offset,
                end_offset: partition.end_offset,
                damaged: partition.damaged,
                error: item_error(partition.error_code, partition.error_message),
                size_bytes: partition.size_bytes,
                segment_count: partition.segment_count,
                fsync: partition.fsync,
            })
            .collect();
        Ok(TopicInfo { name: topic.name, config: topic.config, partitions })
    }

    /// Every consumer group the broker knows (with members or committed offsets), by id.
    ///
    /// ```no_run
    /// # async fn example(admin: ferry_client::Admin) -> Result<(), ferry_client::ClientError> {
    /// for group in admin.list_groups().await? {
    ///     println!("{} {} ({} members)", group.group_id, group.state, group.member_count);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>, ClientError> {
        let Response::ListGroups(response) = self.connection.request(Request::ListGroups(ListGroupsRequest {})).await?
        else {
            return Err(unexpected(ApiKey::ListGroups, "not a ListGroups response"));
        };
        ClientError::check_wire(response.error_code, "")?;
        Ok(response
            .groups
            .into_iter()
            .map(|group| GroupListing {
                group_id: group.group_id,
                state: group.state,
                member_count: group.member_count,
            })
            .collect())
    }

    /// Describes a consumer group: its members and assignments, and per partition the committed offset, the end
    /// offset and the lag. Partitions of topics deleted since are left out.
    ///
    /// ```no_run
    /// # async fn example(admin: ferry_client::Admin) -> Result<(), ferry_client::ClientError> {
    /// let group = admin.describe_group("billing").await?;
    /// for partition in &group.partitions {
    ///     println!("{}/{} lag {:?}", partition.topic, partition.partition, partition.lag);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn describe_group(&self, group_id: &str) -> Result<GroupInfo, ClientError> {
        let request = Request::DescribeGroups(DescribeGroupsRequest { group_ids: vec![group_id.to_owned()] });
        let Response::DescribeGroups(response) = self.connection.request(request).await? else {
            return Err(unexpected(ApiKey::DescribeGroups, "not a DescribeGroups response"));
        };
        ClientError::check_wire(response.error_code, "")?;
        let group =
            response.groups.into_iter().next().ok_or_else(|| unexpected(ApiKey::DescribeGroups, "no description"))?;
        ClientError::check_wire(group.error_code, "")?;
        let request = Request::OffsetFetch(OffsetFetchRequest {
            group_id: group_id.to_owned(),
            topics: Vec::new(),
            include_lag: true,
        });
        let Response::OffsetFetch(offsets) = self.connection.request(request).await? else {
            return Err(unexpected(ApiKey::OffsetFetch, "not an OffsetFetch response"));
        };
        ClientError::check_wire(offsets.error_code, &offsets.error_message)?;

        let mut partitions: BTreeMap<(String, u32), GroupPartitionInfo> = BTreeMap::new();
        let members: Vec<GroupMemberInfo> = group
            .members
            .into_iter()
            .map(|member| GroupMemberInfo {
                assignment: flatten(&member.assignment),
                member_id: member.member_id,
                instance_id: member.instance_id,
                client_id: member.client_id,
            })
            .collect();
        for member in &members {
            for (topic, partition) in &member.assignment {
                partition_entry(&mut partitions, topic, *partition).member_id = Some(member.member_id.clone());
            }
        }
        for topic in &offsets.topics {
            for partition in &topic.partitions {
                if partition.committed {
                    let entry = partition_entry(&mut partitions, &topic.name, partition.partition);
                    entry.committed = Some(partition.offset);
                    entry.lag_time = Some(Duration::from_millis(u64::try_from(partition.lag_ms).unwrap_or(0)));
                }
            }
        }
        let topics: std::collections::BTreeSet<String> = partitions.keys().map(|(topic, _)| topic.clone()).collect();
        for topic in topics {
            let Ok(info) = self.describe_topic(&topic).await else { continue };
            for described in info.partitions {
                if let Some(found) = partitions.get_mut(&(topic.clone(), described.partition)) {
                    found.end_offset = described.end_offset;
                    found.lag = found.committed.map(|committed| described.end_offset.saturating_sub(committed));
                }
            }
        }
        Ok(GroupInfo {
            group_id: group.group_id,
            state: group.state,
            generation: group.generation,
            assignor: group.assignor,
            members,
            partitions: partitions.into_values().collect(),
        })
    }

    /// Every open transaction on the broker, oldest first.
    ///
    /// ```no_run
    /// # async fn example(admin: ferry_client::Admin) -> Result<(), ferry_client::ClientError> {
    /// for txn in admin.list_transactions().await? {
    ///     println!("{} #{} {} for {:?}", txn.transactional_id, txn.transaction, txn.state, txn.age);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_transactions(&self) -> Result<Vec<TransactionInfo>, ClientError> {
        let Response::ListTxns(response) = self.connection.request(Request::ListTxns(ListTxnsRequest {})).await? else {
            return Err(unexpected(ApiKey::ListTxns, "not a ListTxns response"));
        };
        ClientError::check_wire(response.error_code, "")?;
        Ok(response
            .transactions
            .into_iter()
            .map(|txn| TransactionInfo {
                partitions: flatten(&txn.partitions),
                transactional_id: txn.transactional_id,
                producer_id: txn.producer_id,
                epoch: txn.producer_epoch,
                transaction: txn.transaction,
                state: txn.state,
                age: Duration::from_millis(txn.age_ms),
                timeout: Duration::from_millis(txn.timeout_ms),
                staged_batches: txn.staged_batches,
                staged_bytes: txn.staged_bytes,
                group_id: Some(txn.group_id).filter(|group_id| !group_id.is_empty()),
            })
            .collect())
    }

    /// Aborts a transactional id's open transaction (the producer's next request in it gets `TRANSACTION_ABORTED`).
    /// Returns whether a transaction was open and aborted.
    ///
    /// Fails with `TRANSACTIONAL_ID_NOT_FOUND`, or `CONCURRENT_TRANSACTIONS` when the transaction is committing
    /// (its commit decision cannot be undone).
    ///
    /// ```no_run
    /// # async fn example(admin: ferry_client::Admin) -> Result<(), ferry_client::ClientError> {
    /// let aborted = admin.abort_transaction("copier-0").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn abort_transaction(&self, transactional_id: &str) -> Result<bool, ClientError> {
        let request = Request::AbortTxn(AbortTxnRequest { transactional_id: transactional_id.to_owned() });
        let Response::AbortTxn(response) = self.connection.request(request).await? else {
            return Err(unexpected(ApiKey::AbortTxn, "not an AbortTxn response"));
        };
        ClientError::check_wire(response.error_code, &response.error_message)?;
        Ok(response.aborted)
    }

    /// Describes the broker: version, uptime, configuration in effect, data-directory usage, partition states and
    /// open connections.
    ///
    /// ```no_run
    /// # async fn example(admin: ferry_client::Admin) -> Result<(), ferry_client::ClientError> {
    /// let broker = admin.describe_broker().await?;
    /// println!("{} up {:?}, {} damaged partitions", broker.version, broker.uptime, broker.partitions_damaged);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn describe_broker(&self) -> Result<BrokerInfo, ClientError> {
        let request = Request::DescribeBroker(DescribeBrokerRequest {});
        let Response::DescribeBroker(response) = self.connection.request(request).await? else {
            return Err(unexpected(ApiKey::DescribeBroker, "not a DescribeBroker response"));
        };
        ClientError::check_wire(response.error_code, "")?;
        Ok(BrokerInfo {
            version: response.version,
            uptime: Duration::from_millis(response.uptime_ms),
            config: response.config,
            data_dir: response.data_dir,
            data_dir_bytes: response.data_dir_bytes,
            topics: response.topics,
            partitions_healthy: response.partitions_healthy,
            partitions_damaged: response.partitions_damaged,
            partitions_failed: response.partitions_failed,
            connections_open: response.connections_open,
        })
    }

    /// Describes a topic's active idempotent producers, per partition: producer id, epoch, last sequence, last
    /// write time and offset. Each partition lists at most the broker's limit (the lowest producer ids) and says
    /// when it cut the list.
    ///
    /// ```no_run
    /// # async fn example(admin: ferry_client::Admin) -> Result<(), ferry_client::ClientError> {
    /// for partition in admin.describe_producers("orders").await? {
    ///     for producer in &partition.producers {
    ///         println!("{}: {} seq {}", partition.partition, producer.producer_id, producer.last_sequence);
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn describe_producers(&self, topic: &str) -> Result<Vec<PartitionProducersInfo>, ClientError> {
        let request = Request::DescribeProducers(DescribeProducersRequest { topic: topic.to_owned() });
        let Response::DescribeProducers(response) = self.connection.request(request).await? else {
            return Err(unexpected(ApiKey::DescribeProducers, "not a DescribeProducers response"));
        };
        ClientError::check_wire(response.error_code, &response.error_message)?;
        Ok(response
            .partitions
            .into_iter()
            .map(|partition| PartitionProducersInfo {
                partition: partition.partition,
                error: item_error(partition.error_code, partition.error_message),
                producers: partition
                    .producers
                    .into_iter()
                    .map(|producer| ProducerInfo {
                        producer_id: producer.producer_id,
                        epoch: producer.epoch,
                        last_sequence: producer.last_sequence,
                        last_write_ms: producer.last_write_ms,
                        last_offset: producer.last_offset,
                    })
                    .collect(),
                producer_count: partition.producer_count,
                truncated: partition.truncated,
            })
            .collect())
    }

    /// The connection this client uses, e.g. to send raw requests.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.connection.close().await;
    }
}

fn partition_entry<'a>(
    partitions: &'a mut BTreeMap<(String, u32), GroupPartitionInfo>,
    topic: &str,
    partition: u32,
) -> &'a mut GroupPartitionInfo {
    partitions.entry((topic.to_owned(), partition)).or_insert_with(|| GroupPartitionInfo {
        topic: topic.to_owned(),
        partition,
        member_id: None,
        committed: None,
        end_offset: 0,
        lag: None,
        lag_time: None,
    })
}

/// A per-item error code and message as `Some((code, message))`, or `None` for NONE.
fn item_error(error_code: u32, error_message: String) -> Option<(ErrorCode, String)> {
    match ClientError::check_wire(error_code, "") {
        Ok(()) => None,
        Err(ClientError::Broker { code, .. }) => Some((code, error_message)),
        Err(_) => Some((ErrorCode::Unknown, error_message)),
    }
}

fn flatten(topics: &[TopicPartitions]) -> Vec<(String, u32)> {
    topics.iter().flat_map(|topic| topic.partitions.iter().map(|&partition| (topic.topic.clone(), partition))).collect()
}

fn unexpected(api: ApiKey, reason: &'static str) -> ClientError {
    ClientError::UnexpectedResponse { api, reason }
}
