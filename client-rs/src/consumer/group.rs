//! Group membership of a [`Consumer`]: joining, heartbeats, following rebalances, committing offsets.
//!
//! Everything here runs inside [`Consumer::poll`] (and [`Consumer::commit`], [`Consumer::close`]): there is no
//! background thread. `poll` heartbeats whenever one is due, so an application must call it at least once per
//! session timeout, or the broker removes the member and moves its partitions (then the consumer finds out at
//! its next poll, drops the partitions without committing, reports [`RebalanceEvent::Lost`] and joins again).
//!
//! # Following a rebalance
//!
//! The broker assigns partitions (see `protocol/proto/groups.proto`). When a heartbeat's assignment leaves out a
//! partition the consumer holds, the consumer, in this order: commits what the application processed of it (commit
//! mode [`CommitMode::After`]), drops its buffered records, reports [`RebalanceEvent::Revoked`], and heartbeats at
//! once so the broker can hand it on. A partition newly assigned starts at the group's committed offset (or per
//! [`crate::OffsetReset`] if none) and is reported as [`RebalanceEvent::Assigned`]. Partitions that keep their owner
//! are never interrupted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::messages::{
    HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, OffsetCommitPartition, OffsetCommitRequest,
    OffsetCommitTopic, OffsetFetchRequest, TopicPartitions,
};
use ferry_protocol::{ApiKey, ErrorCode, Request, Response, TopicName};
use tokio::time::Instant;

use super::{Consumer, PartitionKey, PartitionState, SeekTo, reset_target};
use crate::connection::Connection;
use crate::error::ClientError;

/// Most rebalance events kept for [`Consumer::take_events`]; older ones are dropped first.
pub const REBALANCE_EVENTS_MAX: usize = 256;

/// When a group consumer commits offsets, and so which delivery guarantee the application gets.
///
/// A committed offset is where the group resumes a partition after a crash or a rebalance.
///
/// - [`CommitMode::Before`] (**at-most-once**): [`Consumer::poll`] commits the offsets of the records it is about
///   to return *before* returning them. If the commit fails, the records are not returned (the partition is
///   fetched again from its old position). A crash or a rebalance never makes a record be delivered twice; the
///   records a crashed consumer had received but not processed are lost (the group resumes after them).
/// - [`CommitMode::After`] (**at-least-once**): a record counts as processed once the application calls
///   [`Consumer::poll`] again (or [`Consumer::commit`]) after receiving it. Processed records are committed
///   automatically every `auto_commit_interval` (at the start of a poll), when their partition is revoked, at
///   [`Consumer::close`], and explicitly with [`Consumer::commit`] / [`Consumer::commit_async`]. Calling `commit` or
///   `close` declares every record returned so far processed; to leave some out, [`Consumer::seek`] back to the
///   first unprocessed record first (as `ferry consume` does with `--max-messages`). A crash never loses
///   a record; the records delivered after the crashed consumer's last successful commit are delivered again to
///   the next owner (duplicates). A clean rebalance delivers nothing twice.
/// - [`CommitMode::None`]: nothing is committed unless the application calls [`Consumer::commit`]; what it gets
///   depends on when it calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommitMode {
    /// Commit before handing records to the application: at-most-once.
    Before,
    /// Commit after the application has processed records: at-least-once. The default.
    #[default]
    After,
    /// Only explicit commits.
    None,
}

/// How the broker divides a group's partitions (every member of a group must use the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupAssignor {
    /// Contiguous ranges of each topic's partitions.
    Range,
    /// Balanced over all partitions, moving as few as possible on each rebalance. The default.
    #[default]
    CooperativeSticky,
}

impl GroupAssignor {
    fn name(self) -> &'static str {
        match self {
            GroupAssignor::Range => "range",
            GroupAssignor::CooperativeSticky => "cooperative-sticky",
        }
    }
}

/// Group settings of a [`Consumer`] (set [`crate::ConsumerConfig::group`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// The group id: 1-255 bytes of `[a-zA-Z0-9._-]`.
    pub group_id: String,
    /// A static instance id (same rules): a consumer restarted with the same one within the session timeout gets its
    /// partitions back without a rebalance. A static member does not leave the group on [`Consumer::close`].
    pub instance_id: Option<String>,
    /// Without a heartbeat for this long, the broker removes the member. Default 10 s.
    pub session_timeout: Duration,
    /// The assignor. Default [`GroupAssignor::CooperativeSticky`].
    pub assignor: GroupAssignor,
    /// When offsets are committed. Default [`CommitMode::After`].
    pub commit_mode: CommitMode,
    /// With [`CommitMode::After`], how often processed records are committed automatically; `None` commits only on
    /// revocation, close and explicit calls. Default 5 s.
    pub auto_commit_interval: Option<Duration>,
}

impl GroupConfig {
    /// The defaults for `group_id`.
    ///
    /// ```
    /// use ferry_client::{CommitMode, GroupConfig};
    /// let config = GroupConfig { commit_mode: CommitMode::Before, ..GroupConfig::new("billing") };
    /// assert_eq!(config.group_id, "billing");
    /// ```
    pub fn new(group_id: impl Into<String>) -> GroupConfig {
        GroupConfig {
            group_id: group_id.into(),
            instance_id: None,
            session_timeout: Duration::from_secs(10),
            assignor: GroupAssignor::CooperativeSticky,
            commit_mode: CommitMode::After,
            auto_commit_interval: Some(Duration::from_secs(5)),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        let invalid = |field, reason: &str| Err(ClientError::InvalidConfig { field, reason: reason.to_owned() });
        let valid_id = |id: &str| {
            !id.is_empty()
                && id.len() <= 255
                && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
        };
        if !valid_id(&self.group_id) {
            return invalid("group.group_id", "must be 1-255 bytes of ASCII letters, digits, '.', '_' and '-'");
        }
        if self.instance_id.as_deref().is_some_and(|id| !valid_id(id)) {
            return invalid("group.instance_id", "must be 1-255 bytes of ASCII letters, digits, '.', '_' and '-'");
        }
        if self.session_timeout < Duration::from_millis(100) || self.session_timeout > Duration::from_secs(3600) {
            return invalid("group.session_timeout", "must be in [100 ms, 1 hour]");
        }
        if self.auto_commit_interval.is_some_and(|interval| interval.is_zero()) {
            return invalid("group.auto_commit_interval", "must be positive");
        }
        Ok(())
    }
}

/// A change of a group consumer's partitions, for [`Consumer::take_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// These partitions were assigned; reading starts at the group's committed offsets.
    Assigned(Vec<(String, u32)>),
    /// These partitions were taken away in a rebalance, after their processed records were committed
    /// ([`CommitMode::After`]).
    Revoked(Vec<(String, u32)>),
    /// The membership was lost (session timeout, broker restart): these partitions were dropped without committing,
    /// and another member may already own them.
    Lost(Vec<(String, u32)>),
}

/// The membership state of a group consumer.
#[derive(Debug)]
pub(super) struct Membership {
    pub config: GroupConfig,
    pub topics: Vec<String>,
    /// Empty while not a member.
    member_id: String,
    generation: i32,
    heartbeat_interval: Duration,
    next_heartbeat: Instant,
    /// The last successful heartbeat or join; after a session timeout without one, the partitions are dropped.
    last_contact: Instant,
    /// The next offset after the records returned to the application, per partition (what a commit commits).
    pub returned: BTreeMap<PartitionKey, u64>,
    /// What was last committed, so unchanged offsets are not committed again.
    committed: BTreeMap<PartitionKey, u64>,
    last_commit: Instant,
    events: VecDeque<RebalanceEvent>,
}

impl Membership {
    pub(super) fn new(config: GroupConfig) -> Membership {
        let now = Instant::now();
        Membership {
            config,
            topics: Vec::new(),
            member_id: String::new(),
            generation: -1,
            heartbeat_interval: Duration::from_secs(1),
            next_heartbeat: now,
            last_contact: now,
            returned: BTreeMap::new(),
            committed: BTreeMap::new(),
            last_commit: now,
            events: VecDeque::new(),
        }
    }

    /// When `poll` must wake up to heartbeat.
    pub(super) fn next_heartbeat(&self) -> Instant {
        self.next_heartbeat
    }

    fn push_event(&mut self, event: RebalanceEvent) {
        if self.events.len() == REBALANCE_EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }
}

fn keys_to_wire(keys: &BTreeSet<PartitionKey>) -> Vec<TopicPartitions> {
    let mut topics: Vec<TopicPartitions> = Vec::new();
    for (topic, partition) in keys {
        match topics.last_mut() {
            Some(last) if last.topic == topic.as_str() => last.partitions.push(*partition),
            _ => topics.push(TopicPartitions { topic: topic.as_str().to_owned(), partitions: vec![*partition] }),
        }
    }
    topics
}

fn keys_from_wire(topics: Vec<TopicPartitions>) -> BTreeSet<PartitionKey> {
    topics
        .into_iter()
        .filter_map(|topic| TopicName::new(topic.topic).ok().map(|name| (name, topic.partitions)))
        .flat_map(|(name, partitions)| partitions.into_iter().map(move |partition| (name.clone(), partition)))
        .collect()
}

fn display(keys: &BTreeSet<PartitionKey>) -> Vec<(String, u32)> {
    keys.iter().map(|(topic, partition)| (topic.as_str().to_owned(), *partition)).collect()
}

/// Builds an OffsetCommit request for `offsets`.
fn commit_request(group: &Membership, offsets: &BTreeMap<PartitionKey, u64>) -> Request {
    let mut topics: Vec<OffsetCommitTopic> = Vec::new();
    for ((topic, partition), &offset) in offsets {
        let entry = OffsetCommitPartition { partition: *partition, offset, metadata: String::new() };
        match topics.last_mut() {
            Some(last) if last.name == topic.as_str() => last.partitions.push(entry),
            _ => topics.push(OffsetCommitTopic { name: topic.as_str().to_owned(), partitions: vec![entry] }),
        }
    }
    Request::OffsetCommit(OffsetCommitRequest {
        group_id: group.config.group_id.clone(),
        member_id: group.member_id.clone(),
        generation: group.generation,
        topics,
    })
}

/// Sends a commit and checks every partition's result.
async fn send_commit(connection: &Connection, request: Request) -> Result<(), ClientError> {
    let unexpected = |reason| ClientError::UnexpectedResponse { api: ApiKey::OffsetCommit, reason };
    let Response::OffsetCommit(response) = connection.request(request).await? else {
        return Err(unexpected("not an OffsetCommit response"));
    };
    ClientError::check_wire(response.error_code, &response.error_message)?;
    for topic in response.topics {
        for partition in topic.partitions {
            ClientError::check_wire(partition.error_code, &partition.error_message)?;
        }
    }
    Ok(())
}

impl Consumer {
    /// Subscribes a group consumer to `topics` (replacing an earlier subscription); the broker assigns their
    /// partitions among the group's members. Fails unless [`crate::ConsumerConfig::group`] is set, or on an invalid
    /// topic name. Takes effect at the next poll.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use ferry_client::{Consumer, ConsumerConfig, GroupConfig};
    ///
    /// # async fn example() -> Result<(), ferry_client::ClientError> {
    /// let config = ConsumerConfig { group: Some(GroupConfig::new("billing")), ..ConsumerConfig::default() };
    /// let mut consumer = Consumer::new("127.0.0.1:7070", config)?;
    /// consumer.subscribe(["orders"])?;
    /// loop {
    ///     for record in consumer.poll(Duration::from_secs(1)).await? {
    ///         println!("{}:{} {:?}", record.partition, record.offset, record.value);
    ///     }
    /// }
    /// # }
    /// ```
    pub fn subscribe<S: AsRef<str>>(&mut self, topics: impl IntoIterator<Item = S>) -> Result<(), ClientError> {
        let topics: Vec<String> = topics
            .into_iter()
            .map(|topic| ClientError::topic_name(topic.as_ref()).map(String::from))
            .collect::<Result<_, _>>()?;
        let Some(group) = self.group.as_mut() else {
            return Err(ClientError::InvalidConfig { field: "group", reason: "subscribe needs a group".to_owned() });
        };
        group.topics = topics;
        // Rejoin with the new subscription at the next poll (a known member id keeps its place).
        group.generation = -1;
        group.next_heartbeat = Instant::now();
        Ok(())
    }

    /// The group's generation this consumer last learned; `None` without a group or before joining.
    pub fn generation(&self) -> Option<i32> {
        self.group.as_ref().filter(|group| !group.member_id.is_empty()).map(|group| group.generation)
    }

    /// The member id the broker gave this consumer; `None` without a group or before joining.
    pub fn member_id(&self) -> Option<&str> {
        self.group.as_ref().map(|group| group.member_id.as_str()).filter(|id| !id.is_empty())
    }

    /// The consumer's group identity for [`crate::TransactionalProducer::send_offsets`]: group id, member id and
    /// generation; `None` without a group or before joining.
    pub fn group_metadata(&self) -> Option<crate::GroupMetadata> {
        let group = self.group.as_ref().filter(|group| !group.member_id.is_empty())?;
        Some(crate::GroupMetadata {
            group_id: group.config.group_id.clone(),
            member_id: group.member_id.clone(),
            generation: group.generation,
        })
    }

    /// Takes the rebalance events since the last call (at most [`REBALANCE_EVENTS_MAX`]), oldest first.
    pub fn take_events(&mut self) -> Vec<RebalanceEvent> {
        self.group.as_mut().map(|group| group.events.drain(..).collect()).unwrap_or_default()
    }

    /// Commits, and waits for, the offsets after every record returned so far (see [`CommitMode`]).
    /// Fails without a group, or with the broker's refusal: `STALE_GENERATION` (a rebalance happened; the next poll
    /// catches up), `NOT_ASSIGNED`, `UNKNOWN_MEMBER`.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let offsets = self.uncommitted();
        self.commit_offsets(offsets).await
    }

    /// Starts committing the offsets after every record returned so far and returns at once; the returned future
    /// (which runs whether or not it is awaited) resolves with the outcome. A failed asynchronous commit is not
    /// retried; the next commit (automatic or explicit) sends the same offsets again.
    ///
    /// ```no_run
    /// # async fn example(consumer: &mut ferry_client::Consumer) -> Result<(), ferry_client::ClientError> {
    /// let committed = consumer.commit_async();
    /// // ... keep processing ...
    /// committed.await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn commit_async(&mut self) -> impl Future<Output = Result<(), ClientError>> + Send + 'static {
        let offsets = self.uncommitted();
        let prepared = match self.group.as_mut() {
            None => Err(ClientError::InvalidConfig { field: "group", reason: "commits need a group".to_owned() }),
            Some(_) if offsets.is_empty() => Ok(None),
            Some(group) => {
                // Not recorded as committed: the outcome is only known to the returned future, so the next commit
                // sends these offsets again (harmless) and covers a failure of this one.
                group.last_commit = Instant::now();
                Ok(Some(commit_request(group, &offsets)))
            }
        };
        let connection = self.connection.clone();
        let task = tokio::spawn(async move {
            match prepared? {
                None => Ok(()),
                Some(request) => send_commit(&connection, request).await,
            }
        });
        async move { task.await.unwrap_or(Err(ClientError::Closed)) }
    }

    /// The returned positions that differ from what was last committed.
    fn uncommitted(&self) -> BTreeMap<PartitionKey, u64> {
        let Some(group) = self.group.as_ref() else { return BTreeMap::new() };
        group
            .returned
            .iter()
            .filter(|(key, offset)| group.committed.get(*key) != Some(*offset) && self.partitions.contains_key(*key))
            .map(|(key, offset)| (key.clone(), *offset))
            .collect()
    }

    /// Commits `offsets` with the current generation; after STALE_GENERATION, heartbeats once and retries.
    pub(super) async fn commit_offsets(&mut self, offsets: BTreeMap<PartitionKey, u64>) -> Result<(), ClientError> {
        let Some(group) = self.group.as_ref() else {
            return Err(ClientError::InvalidConfig { field: "group", reason: "commits need a group".to_owned() });
        };
        if offsets.is_empty() {
            return Ok(());
        }
        let mut result = send_commit(&self.connection, commit_request(group, &offsets)).await;
        if result.as_ref().is_err_and(|error| error.error_code() == Some(ErrorCode::StaleGeneration)) {
            self.heartbeat().await?;
            let Some(group) = self.group.as_ref() else { return result };
            let still_owned: BTreeMap<PartitionKey, u64> =
                offsets.into_iter().filter(|(key, _)| self.partitions.contains_key(key)).collect();
            result = send_commit(&self.connection, commit_request(group, &still_owned)).await;
            if result.is_ok() {
                self.record_committed(still_owned);
            }
            return result;
        }
        if result.is_ok() {
            self.record_committed(offsets);
        }
        result
    }

    /// Commits `offsets` with the current generation, without retrying (used while applying an assignment, right
    /// after the heartbeat that brought the generation).
    async fn commit_once(&mut self, offsets: BTreeMap<PartitionKey, u64>) -> Result<(), ClientError> {
        let Some(group) = self.group.as_ref() else { return Ok(()) };
        if offsets.is_empty() {
            return Ok(());
        }
        send_commit(&self.connection, commit_request(group, &offsets)).await?;
        self.record_committed(offsets);
        Ok(())
    }

    fn record_committed(&mut self, offsets: BTreeMap<PartitionKey, u64>) {
        if let Some(group) = self.group.as_mut() {
            group.committed.extend(offsets);
            group.last_commit = Instant::now();
        }
    }

    /// Group upkeep at the start of each poll round: join if needed, heartbeat when due, apply assignment changes,
    /// auto-commit. Returns an error only for what the application must see (a fenced instance, a bad config).
    pub(super) async fn maintain_group(&mut self) -> Result<(), ClientError> {
        let Some(group) = self.group.as_ref() else { return Ok(()) };
        if group.topics.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        if !group.member_id.is_empty() && now.duration_since(group.last_contact) > group.config.session_timeout {
            // The broker has surely removed us: stop reading before another member starts.
            self.lose_partitions("no heartbeat succeeded within the session timeout");
        }
        let Some(group) = self.group.as_ref() else { return Ok(()) };
        let due = group.generation == -1 || group.member_id.is_empty() || now >= group.next_heartbeat;
        let auto_commit = group.config.commit_mode == CommitMode::After
            && group
                .config
                .auto_commit_interval
                .is_some_and(|interval| now.duration_since(group.last_commit) >= interval);
        if due {
            let outcome = if group.member_id.is_empty() || group.generation == -1 {
                self.join().await
            } else {
                self.heartbeat().await
            };
            match outcome {
                Ok(()) => {}
                Err(error) if error.error_code() == Some(ErrorCode::FencedInstanceId) => return Err(error),
                Err(error) if matches!(error, ClientError::InvalidConfig { .. }) => return Err(error),
                Err(error) if error.is_retriable() => {
                    tracing::debug!(%error, "group heartbeat failed; retrying");
                    if let Some(group) = self.group.as_mut() {
                        group.next_heartbeat =
                            Instant::now() + group.heartbeat_interval.min(Duration::from_millis(200));
                    }
                }
                Err(error) => return Err(error),
            }
        }
        if auto_commit {
            let offsets = self.uncommitted();
            if let Err(error) = self.commit_offsets(offsets).await {
                tracing::warn!(%error, "automatic offset commit failed; the next one retries");
            }
            if let Some(group) = self.group.as_mut() {
                group.last_commit = Instant::now();
            }
        }
        Ok(())
    }

    async fn join(&mut self) -> Result<(), ClientError> {
        let Some(group) = self.group.as_ref() else { return Ok(()) };
        let request = Request::JoinGroup(JoinGroupRequest {
            group_id: group.config.group_id.clone(),
            member_id: group.member_id.clone(),
            instance_id: group.config.instance_id.clone().unwrap_or_default(),
            topics: group.topics.clone(),
            session_timeout_ms: u32::try_from(group.config.session_timeout.as_millis()).unwrap_or(u32::MAX),
            assignor: group.config.assignor.name().to_owned(),
            client_id: "ferry-client-rs".to_owned(),
        });
        let Response::JoinGroup(response) = self.connection.request(request).await? else {
            return Err(ClientError::UnexpectedResponse { api: ApiKey::JoinGroup, reason: "not a JoinGroup response" });
        };
        if let Err(error) = ClientError::check_wire(response.error_code, &response.error_message) {
            if error.error_code() == Some(ErrorCode::UnknownMember) {
                // The broker forgot this member (e.g. it restarted): join again as a new member at once.
                self.lose_partitions("the broker no longer knows this member");
                if let Some(group) = self.group.as_mut() {
                    group.next_heartbeat = Instant::now();
                }
                return Ok(());
            }
            return Err(error);
        }
        if let Some(group) = self.group.as_mut() {
            group.member_id = response.member_id;
            group.generation = response.generation;
        }
        self.apply_assignment(response.heartbeat_interval_ms, keys_from_wire(response.assignment)).await;
        Ok(())
    }

    async fn heartbeat(&mut self) -> Result<(), ClientError> {
        let Some(group) = self.group.as_ref() else { return Ok(()) };
        let owned: BTreeSet<PartitionKey> = self.partitions.keys().cloned().collect();
        let request = Request::Heartbeat(HeartbeatRequest {
            group_id: group.config.group_id.clone(),
            member_id: group.member_id.clone(),
            generation: group.generation,
            owned: keys_to_wire(&owned),
        });
        let Response::Heartbeat(response) = self.connection.request(request).await? else {
            return Err(ClientError::UnexpectedResponse { api: ApiKey::Heartbeat, reason: "not a Heartbeat response" });
        };
        if let Err(error) = ClientError::check_wire(response.error_code, &response.error_message) {
            if matches!(error.error_code(), Some(ErrorCode::UnknownMember | ErrorCode::FencedInstanceId)) {
                self.lose_partitions("the broker no longer knows this member");
                if let Some(group) = self.group.as_mut() {
                    group.member_id.clear();
                    group.next_heartbeat = Instant::now();
                }
                if error.error_code() == Some(ErrorCode::UnknownMember) {
                    return Ok(());
                }
            }
            return Err(error);
        }
        if let Some(group) = self.group.as_mut() {
            group.generation = response.generation;
        }
        self.apply_assignment(response.heartbeat_interval_ms, keys_from_wire(response.assignment)).await;
        Ok(())
    }

    /// Drops every partition without committing (the membership is gone).
    fn lose_partitions(&mut self, why: &str) {
        let lost: BTreeSet<PartitionKey> = self.partitions.keys().cloned().collect();
        self.partitions.clear();
        self.fetch = None;
        if let Some(group) = self.group.as_mut() {
            group.returned.clear();
            group.committed.clear();
            group.member_id.clear();
            if !lost.is_empty() {
                tracing::warn!(why, partitions = lost.len(), "group membership lost; dropping partitions");
                group.push_event(RebalanceEvent::Lost(display(&lost)));
            }
        }
    }

    /// Moves to a new assignment: revoke (commit first), then add (at the committed offsets).
    async fn apply_assignment(&mut self, heartbeat_interval_ms: u32, assignment: BTreeSet<PartitionKey>) {
        let now = Instant::now();
        let held: BTreeSet<PartitionKey> = self.partitions.keys().cloned().collect();
        let revoked: BTreeSet<PartitionKey> = held.difference(&assignment).cloned().collect();
        let added: BTreeSet<PartitionKey> = assignment.difference(&held).cloned().collect();
        let Some(group) = self.group.as_mut() else { return };
        group.last_contact = now;
        group.heartbeat_interval = Duration::from_millis(heartbeat_interval_ms.into()).max(Duration::from_millis(10));
        group.next_heartbeat = now + group.heartbeat_interval;
        let commit_mode = group.config.commit_mode;
        if !revoked.is_empty() {
            if commit_mode == CommitMode::After {
                let offsets: BTreeMap<PartitionKey, u64> =
                    self.uncommitted().into_iter().filter(|(key, _)| revoked.contains(key)).collect();
                if let Err(error) = self.commit_once(offsets).await {
                    tracing::warn!(%error, "cannot commit revoked partitions; their last records may be delivered again");
                }
            }
            for key in &revoked {
                self.partitions.remove(key);
            }
            if let Some(group) = self.group.as_mut() {
                for key in &revoked {
                    group.returned.remove(key);
                    group.committed.remove(key);
                }
                group.push_event(RebalanceEvent::Revoked(display(&revoked)));
                // Tell the broker at once, so the partitions move without waiting a heartbeat interval.
                group.next_heartbeat = now;
            }
        }
        if !added.is_empty() {
            let committed = self.fetch_committed(&added).await;
            for key in &added {
                let mut state = PartitionState::new(Arc::from(key.0.as_str()), self.config.offset_reset);
                match committed.as_ref().ok().and_then(|found| found.get(key)) {
                    Some(&offset) => state.seek(SeekTo::Offset(offset)),
                    None => state.pending_seek = reset_target(self.config.offset_reset),
                }
                self.partitions.insert(key.clone(), state);
            }
            if let Err(error) = committed {
                tracing::warn!(%error, "cannot read committed offsets; starting per offset_reset");
            }
            if let Some(group) = self.group.as_mut() {
                group.push_event(RebalanceEvent::Assigned(display(&added)));
            }
        }
    }

    /// The committed offsets of `keys`.
    async fn fetch_committed(&self, keys: &BTreeSet<PartitionKey>) -> Result<BTreeMap<PartitionKey, u64>, ClientError> {
        let Some(group) = self.group.as_ref() else { return Ok(BTreeMap::new()) };
        let request = Request::OffsetFetch(OffsetFetchRequest {
            group_id: group.config.group_id.clone(),
            topics: keys_to_wire(keys),
            include_lag: false,
        });
        let Response::OffsetFetch(response) = self.connection.request(request).await? else {
            return Err(ClientError::UnexpectedResponse {
                api: ApiKey::OffsetFetch,
                reason: "not an OffsetFetch response",
            });
        };
        ClientError::check_wire(response.error_code, &response.error_message)?;
        let mut found = BTreeMap::new();
        for topic in response.topics {
            let Ok(name) = TopicName::new(topic.name) else { continue };
            for partition in topic.partitions {
                if partition.committed {
                    found.insert((name.clone(), partition.partition), partition.offset);
                }
            }
        }
        Ok(found)
    }

    /// With [`CommitMode::Before`]: commits the positions after `records` before they are returned.
    pub(super) async fn commit_before_returning(
        &mut self,
        records: &[super::ConsumerRecord],
    ) -> Result<(), ClientError> {
        let mut offsets: BTreeMap<PartitionKey, u64> = BTreeMap::new();
        for record in records {
            let Ok(topic) = TopicName::new(record.topic.to_string()) else { continue };
            offsets.insert((topic, record.partition), record.offset + 1);
        }
        self.commit_offsets(offsets).await
    }

    /// Leaves the group (a dynamic member), after committing processed records ([`CommitMode::After`]).
    pub(super) async fn leave_group(&mut self) {
        let Some(group) = self.group.as_ref() else { return };
        if group.member_id.is_empty() {
            return;
        }
        if group.config.commit_mode == CommitMode::After {
            let offsets = self.uncommitted();
            if let Err(error) = self.commit_offsets(offsets).await {
                tracing::warn!(%error, "cannot commit at close; the last records may be delivered again");
            }
        }
        let Some(group) = self.group.as_ref() else { return };
        if group.config.instance_id.is_some() || group.member_id.is_empty() {
            // A static member keeps its place for a restart within the session timeout.
            return;
        }
        let request = Request::LeaveGroup(LeaveGroupRequest {
            group_id: group.config.group_id.clone(),
            member_id: group.member_id.clone(),
        });
        if let Err(error) = self.connection.request(request).await {
            tracing::debug!(%error, "cannot leave the group; the session timeout will remove the member");
        }
    }
}
