//! The consumer-group coordinator: membership, generations, assignment, and the rules for committing offsets.
//!
//! The protocol is broker-side and cooperative (see `protocol/proto/groups.proto` for the wire view):
//! a member joins, then heartbeats, reporting the partitions it holds; the coordinator computes a *target*
//! assignment with the group's [`Assignor`] whenever membership or the subscribed topics change (a *rebalance*,
//! which bumps the generation), and moves each partition in two steps: it leaves the partition out of its current
//! owner's assignment, and grants it to the new owner only once the old owner has reported, in a heartbeat, that it
//! no longer holds it (or was removed). Partitions that keep their owner stay assigned throughout.
//!
//! # State
//!
//! Membership lives in memory only, in one [`Mutex`] held for short, non-blocking sections (never across
//! `.await`). After a restart every group is empty; consumers notice (UNKNOWN_MEMBER) and join again.
//! Committed offsets live in the metadata store (`consumer_offsets`) and survive restarts.
//!
//! # Commits
//!
//! [`Coordinator::begin_commit`] checks a commit under the lock (member, generation, ownership) and marks its
//! partitions as having a commit in flight; while one is, the partition is granted to no other member. The write
//! to the metadata store happens after the lock is released, on a blocking thread; dropping the returned
//! [`CommitGuard`] clears the mark. So a new owner, which reads the committed offset after its grant, always sees
//! the last offset its predecessor was allowed to commit.
//!
//! # Invariants
//!
//! - A partition is owned by at most one member of a group; a member only owns partitions of its target or
//!   partitions it has not yet released.
//! - A partition is granted only when no other member owns it and no commit for it is in flight.
//! - The generation increases by one on every rebalance and never goes back while the broker runs.
//! - Every map is bounded: `groups.groups_max` groups, `groups.members_per_group_max` members per group,
//!   [`SUBSCRIBED_TOPICS_MAX`] topics per member, [`FENCED_MEMBERS_MAX`] remembered fenced ids per group.

pub mod assignor;
pub mod lag;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

pub use self::assignor::{Assignor, MemberInput, TopicPartition};
use crate::config::GroupsConfig;
use crate::meta::MetaStore;
use crate::partitions::Partitions;

/// Longest group id and static instance id, in bytes.
pub const GROUP_ID_BYTES_MAX: usize = 255;
/// Longest metadata string of one committed offset, in bytes.
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// Most topics one member may subscribe to.
pub const SUBSCRIBED_TOPICS_MAX: usize = 1000;
/// Longest client id kept for a member, in bytes (a longer one is cut).
pub const CLIENT_ID_BYTES_MAX: usize = 255;
/// Fenced member ids remembered per group, so a replaced static member hears FENCED_INSTANCE_ID instead of
/// UNKNOWN_MEMBER; the oldest is forgotten first.
pub const FENCED_MEMBERS_MAX: usize = 64;
/// Shortest heartbeat interval handed to members.
pub const HEARTBEAT_INTERVAL_MIN: Duration = Duration::from_millis(10);
/// How often, at most, a heartbeat checks whether a group's subscribed topics were created, deleted or resized
/// (which rebalances the group); bounds the registry lookups heartbeats cost.
pub const TOPOLOGY_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often the coordinator looks for members past their session timeout; a member is removed at most this long
/// after its deadline.
pub const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Why a group operation was refused. Mapped to wire codes by `handlers::error_code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The group id or instance id breaks the naming rule.
    #[error("{what} must be 1-255 bytes of ASCII letters, digits, '.', '_' and '-'")]
    InvalidId {
        /// `group id` or `instance id`.
        what: &'static str,
    },
    /// The member is not in the group.
    #[error("member {member_id} is not in group {group}")]
    UnknownMember {
        /// The group.
        group: String,
        /// The member id sent.
        member_id: String,
    },
    /// A newer instance with the same static instance id replaced this member.
    #[error("member {member_id} was replaced by a newer instance with the same instance id")]
    FencedInstance {
        /// The member id sent.
        member_id: String,
    },
    /// The request carries an older generation than the group's.
    #[error("generation {sent} is stale: the group is at generation {current}")]
    StaleGeneration {
        /// The generation sent.
        sent: i32,
        /// The group's generation.
        current: i32,
    },
    /// The member does not own the partition.
    #[error("the member does not own {topic} partition {partition}")]
    NotAssigned {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// The partition is assigned to the member but not yet released by its previous owner.
    #[error("{topic} partition {partition} is not yet released by its previous owner")]
    RebalanceInProgress {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// A commit without membership while the group has members.
    #[error("group {group} has active members: commits need a member id and generation")]
    GroupNotEmpty {
        /// The group.
        group: String,
    },
    /// The group has `groups.members_per_group_max` members.
    #[error("group has the most members allowed ({max})")]
    GroupFull {
        /// The limit.
        max: u32,
    },
    /// The broker has `groups.groups_max` groups.
    #[error("the broker has the most groups allowed ({max})")]
    GroupsLimit {
        /// The limit.
        max: u32,
    },
    /// The session timeout is outside the configured bounds.
    #[error("session timeout {requested_ms} ms outside {min_ms}..={max_ms} ms")]
    InvalidSessionTimeout {
        /// The requested timeout.
        requested_ms: u64,
        /// The smallest accepted.
        min_ms: u64,
        /// The largest accepted.
        max_ms: u64,
    },
    /// The member asks for an unknown assignor or another one than the group's.
    #[error("assignor {requested:?} is unknown or differs from the group's {current}")]
    InconsistentAssignor {
        /// The assignor asked for (cut to 64 bytes).
        requested: String,
        /// The group's assignor.
        current: &'static str,
    },
    /// A commit's metadata string is too long.
    #[error("offset metadata of {len} bytes exceeds {OFFSET_METADATA_BYTES_MAX}")]
    MetadataTooLarge {
        /// Its length.
        len: usize,
    },
    /// A member subscribes to more than [`SUBSCRIBED_TOPICS_MAX`] topics.
    #[error("more than {SUBSCRIBED_TOPICS_MAX} subscribed topics")]
    TooManyTopics,
}

/// Whether a group id or instance id follows the naming rule (the topic rule with 255 bytes).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= GROUP_ID_BYTES_MAX
        && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
}

fn check_group_id(group: &str) -> Result<(), GroupError> {
    if valid_id(group) { Ok(()) } else { Err(GroupError::InvalidId { what: "group id" }) }
}

/// A JoinGroup, validated by the handler's caller only for types; the coordinator checks the rest.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The group id.
    pub group: String,
    /// Empty for a new member.
    pub member_id: String,
    /// Empty for a dynamic member.
    pub instance_id: String,
    /// The subscribed topics.
    pub topics: Vec<String>,
    /// The requested session timeout.
    pub session_timeout: Duration,
    /// The requested assignor name.
    pub assignor: String,
    /// The client's name.
    pub client_id: String,
}

/// What a member learns from JoinGroup and Heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// The member id.
    pub member_id: String,
    /// The group's generation.
    pub generation: i32,
    /// What the member may read now.
    pub assignment: BTreeSet<TopicPartition>,
    /// How often to heartbeat.
    pub heartbeat_interval: Duration,
}

/// The state of a group as reported by ListGroups and DescribeGroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members.
    Empty,
    /// Some partition is not yet where the target assignment puts it.
    Reconciling,
    /// Every member holds exactly its target.
    Stable,
}

impl GroupState {
    /// The name used on the wire.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
            GroupState::Reconciling => "reconciling",
            GroupState::Stable => "stable",
        }
    }
}

/// One member, as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// The member id.
    pub member_id: String,
    /// The static instance id, empty for a dynamic member.
    pub instance_id: String,
    /// The client id.
    pub client_id: String,
    /// What it may read now.
    pub assignment: BTreeSet<TopicPartition>,
    /// Its target.
    pub target: BTreeSet<TopicPartition>,
}

/// A group, as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// The state.
    pub state: GroupState,
    /// The generation (0 if unknown since the broker started).
    pub generation: i32,
    /// The assignor in use, if the group has members.
    pub assignor: Option<Assignor>,
    /// The members, by member id.
    pub members: Vec<MemberDescription>,
}

/// Where the coordinator learns which topics exist and how many partitions they have.
pub trait TopicSource: Send + Sync + std::fmt::Debug {
    /// The partition count of an active topic, or `None` if it does not exist.
    fn partition_count(&self, topic: &str) -> Option<u32>;
}

#[derive(Debug)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    topics: BTreeSet<String>,
    session_timeout: Duration,
    deadline: Instant,
    owned: BTreeSet<TopicPartition>,
    target: BTreeSet<TopicPartition>,
}

impl Member {
    /// The key assignors sort members by: the instance id keeps a static member's place across restarts.
    fn sort_key(&self, member_id: &str) -> String {
        match &self.instance_id {
            Some(instance_id) => format!("i:{instance_id}"),
            None => format!("m:{member_id}"),
        }
    }

    fn assignment(&self) -> BTreeSet<TopicPartition> {
        self.owned.intersection(&self.target).cloned().collect()
    }
}

#[derive(Debug, Default)]
struct Group {
    generation: i32,
    assignor: Option<Assignor>,
    members: BTreeMap<String, Member>,
    /// Static instance id to member id.
    instances: BTreeMap<String, String>,
    /// Recently fenced member ids (bounded by [`FENCED_MEMBERS_MAX`]).
    fenced: VecDeque<String>,
    /// The topics and partition counts the current targets were computed for.
    topology: BTreeMap<String, u32>,
    /// When `topology` was last compared with the registry.
    topology_checked: Option<Instant>,
    /// Partitions with a commit being written.
    commits_in_flight: BTreeMap<TopicPartition, u32>,
    /// When the group last became empty (or when the broker started, for groups known only by their offsets).
    empty_since: Option<Instant>,
}

impl Group {
    fn state(&self) -> GroupState {
        if self.members.is_empty() {
            GroupState::Empty
        } else if self.members.values().all(|member| member.owned == member.target) {
            GroupState::Stable
        } else {
            GroupState::Reconciling
        }
    }

    fn subscribed_topology(&self, topics: &dyn TopicSource) -> BTreeMap<String, u32> {
        let subscribed: BTreeSet<&String> = self.members.values().flat_map(|member| member.topics.iter()).collect();
        subscribed
            .into_iter()
            .filter_map(|topic| topics.partition_count(topic).map(|count| (topic.clone(), count)))
            .collect()
    }

    /// Computes new targets and bumps the generation.
    fn rebalance(&mut self, topics: &dyn TopicSource) {
        self.generation = self.generation.saturating_add(1);
        self.topology = self.subscribed_topology(topics);
        let assignor = self.assignor.unwrap_or(Assignor::CooperativeSticky);
        let inputs: BTreeMap<String, MemberInput> = self
            .members
            .iter()
            .map(|(member_id, member)| {
                let input = MemberInput { topics: member.topics.clone(), previous: member.target.clone() };
                (member.sort_key(member_id), input)
            })
            .collect();
        let mut targets = assignor.assign(&self.topology, &inputs);
        for (member_id, member) in &mut self.members {
            member.target = targets.remove(&member.sort_key(member_id)).unwrap_or_default();
            // Partitions of topics that no longer exist are gone: nothing to release.
            member.owned.retain(|tp| self.topology.get(&tp.0).is_some_and(|&count| tp.1 < count));
        }
        tracing::info!(generation = self.generation, members = self.members.len(), "group rebalanced");
    }

    /// Grants `member_id` every partition of its target that nobody else owns and no commit is writing.
    fn grant(&mut self, member_id: &str) {
        let Some(member) = self.members.get(member_id) else { return };
        let free: Vec<TopicPartition> = member
            .target
            .iter()
            .filter(|tp| !member.owned.contains(*tp))
            .filter(|tp| !self.commits_in_flight.contains_key(*tp))
            .filter(|tp| {
                self.members.iter().all(|(other_id, other)| other_id == member_id || !other.owned.contains(*tp))
            })
            .cloned()
            .collect();
        if let Some(member) = self.members.get_mut(member_id) {
            member.owned.extend(free);
        }
    }

    fn view(&self, member_id: &str, member: &Member) -> MemberView {
        MemberView {
            member_id: member_id.to_owned(),
            generation: self.generation,
            assignment: member.assignment(),
            heartbeat_interval: (member.session_timeout / 3).max(HEARTBEAT_INTERVAL_MIN),
        }
    }

    fn remove_member(&mut self, member_id: &str, now: Instant) -> bool {
        let Some(member) = self.members.remove(member_id) else { return false };
        if let Some(instance_id) = &member.instance_id {
            self.instances.remove(instance_id);
        }
        if self.members.is_empty() {
            self.empty_since = Some(now);
            self.assignor = None;
        }
        true
    }

    fn member_error(&self, group: &str, member_id: &str) -> GroupError {
        if self.fenced.iter().any(|fenced| fenced == member_id) {
            GroupError::FencedInstance { member_id: member_id.to_owned() }
        } else {
            GroupError::UnknownMember { group: group.to_owned(), member_id: member_id.to_owned() }
        }
    }
}

/// The group coordinator. Cheap to share in an `Arc`; every method takes the lock briefly and never blocks on I/O.
#[derive(Debug)]
pub struct Coordinator {
    config: GroupsConfig,
    topics: Arc<dyn TopicSource>,
    groups: Mutex<BTreeMap<String, Group>>,
    /// Distinguishes member ids of this broker run from those of earlier runs.
    run_id: u64,
    next_member: AtomicU64,
    started: Instant,
    metrics: Arc<lag::GroupMetrics>,
}

impl Coordinator {
    /// A coordinator with no groups, learning topics from `topics`.
    pub fn new(config: GroupsConfig, topics: Arc<dyn TopicSource>) -> Coordinator {
        let run_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX));
        Coordinator {
            config,
            topics,
            groups: Mutex::new(BTreeMap::new()),
            run_id,
            next_member: AtomicU64::new(1),
            started: Instant::now(),
            metrics: Arc::new(lag::GroupMetrics::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Group>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn new_member_id(&self) -> String {
        let n = self.next_member.fetch_add(1, Ordering::Relaxed);
        format!("{:x}-{n}", self.run_id)
    }

    /// Joins (or rejoins) a group. A static member replacing its earlier instance takes over its member state
    /// without a rebalance; any other new member triggers one.
    pub fn join(&self, request: JoinRequest, now: Instant) -> Result<MemberView, GroupError> {
        check_group_id(&request.group)?;
        let instance_id = (!request.instance_id.is_empty()).then_some(request.instance_id);
        if instance_id.as_deref().is_some_and(|id| !valid_id(id)) {
            return Err(GroupError::InvalidId { what: "instance id" });
        }
        if request.topics.len() > SUBSCRIBED_TOPICS_MAX {
            return Err(GroupError::TooManyTopics);
        }
        let bounds = (self.config.session_timeout_min, self.config.session_timeout_max);
        if request.session_timeout < bounds.0 || request.session_timeout > bounds.1 {
            return Err(GroupError::InvalidSessionTimeout {
                requested_ms: crate::config::millis(request.session_timeout),
                min_ms: crate::config::millis(bounds.0),
                max_ms: crate::config::millis(bounds.1),
            });
        }
        let Some(assignor) = Assignor::from_name(&request.assignor) else {
            return Err(GroupError::InconsistentAssignor {
                requested: request.assignor.chars().take(64).collect(),
                current: "cooperative-sticky",
            });
        };
        let topics: BTreeSet<String> = request.topics.into_iter().collect();
        let mut client_id = request.client_id;
        if client_id.len() > CLIENT_ID_BYTES_MAX {
            let mut cut = CLIENT_ID_BYTES_MAX;
            while !client_id.is_char_boundary(cut) {
                cut -= 1;
            }
            client_id.truncate(cut);
        }

        let mut groups = self.lock();
        if !groups.contains_key(&request.group) && groups.len() >= self.config.groups_max as usize {
            return Err(GroupError::GroupsLimit { max: self.config.groups_max });
        }
        let group = groups.entry(request.group.clone()).or_default();
        if let Some(current) = group.assignor.filter(|current| !group.members.is_empty() && *current != assignor) {
            return Err(GroupError::InconsistentAssignor {
                requested: assignor.name().to_owned(),
                current: current.name(),
            });
        }
        let deadline = now + request.session_timeout;

        // A known member rejoining (e.g. after a lost response): update it in place.
        if !request.member_id.is_empty() {
            let Some(member) = group.members.get_mut(&request.member_id) else {
                return Err(group.member_error(&request.group, &request.member_id));
            };
            member.deadline = deadline;
            member.session_timeout = request.session_timeout;
            member.client_id = client_id;
            let changed = member.topics != topics;
            member.topics = topics;
            if changed {
                group.rebalance(self.topics.as_ref());
            }
            group.grant(&request.member_id);
            let member = &group.members[&request.member_id];
            return Ok(group.view(&request.member_id, member));
        }

        let member_id = self.new_member_id();
        // A static member taking the place of its previous instance: same target, same owned, no rebalance.
        if let Some(instance_id) = &instance_id
            && let Some(old_id) = group.instances.get(instance_id).cloned()
            && let Some(mut member) = group.members.remove(&old_id)
        {
            group.fenced.push_back(old_id);
            if group.fenced.len() > FENCED_MEMBERS_MAX {
                group.fenced.pop_front();
            }
            let changed = member.topics != topics;
            member.deadline = deadline;
            member.session_timeout = request.session_timeout;
            member.client_id = client_id;
            member.topics = topics;
            group.members.insert(member_id.clone(), member);
            group.instances.insert(instance_id.clone(), member_id.clone());
            if changed {
                group.rebalance(self.topics.as_ref());
            }
            group.grant(&member_id);
            let member = &group.members[&member_id];
            return Ok(group.view(&member_id, member));
        }

        if group.members.len() >= self.config.members_per_group_max as usize {
            return Err(GroupError::GroupFull { max: self.config.members_per_group_max });
        }
        if group.members.is_empty() {
            group.assignor = Some(assignor);
            group.empty_since = None;
        }
        let member = Member {
            instance_id: instance_id.clone(),
            client_id,
            topics,
            session_timeout: request.session_timeout,
            deadline,
            owned: BTreeSet::new(),
            target: BTreeSet::new(),
        };
        group.members.insert(member_id.clone(), member);
        if let Some(instance_id) = instance_id {
            group.instances.insert(instance_id, member_id.clone());
        }
        group.rebalance(self.topics.as_ref());
        group.grant(&member_id);
        let member = &group.members[&member_id];
        Ok(group.view(&member_id, member))
    }

    /// Records a heartbeat: extends the session, releases what the member no longer reports in `owned`, rebalances
    /// if the subscribed topics changed, and grants what is free. The member's `generation` is informational: a
    /// member on an older one simply learns the current one.
    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        owned: &BTreeSet<TopicPartition>,
        now: Instant,
    ) -> Result<MemberView, GroupError> {
        check_group_id(group_id)?;
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return Err(GroupError::UnknownMember { group: group_id.to_owned(), member_id: member_id.to_owned() });
        };
        let Some(member) = group.members.get_mut(member_id) else {
            return Err(group.member_error(group_id, member_id));
        };
        member.deadline = now + member.session_timeout;
        member.owned.retain(|tp| owned.contains(tp));
        if group
            .topology_checked
            .is_none_or(|checked| now.saturating_duration_since(checked) >= TOPOLOGY_CHECK_INTERVAL)
        {
            group.topology_checked = Some(now);
            if group.subscribed_topology(self.topics.as_ref()) != group.topology {
                group.rebalance(self.topics.as_ref());
            }
        }
        group.grant(member_id);
        let member = &group.members[member_id];
        Ok(group.view(member_id, member))
    }

    /// Removes a member at once (a rebalance follows).
    pub fn leave(&self, group_id: &str, member_id: &str, now: Instant) -> Result<(), GroupError> {
        check_group_id(group_id)?;
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return Err(GroupError::UnknownMember { group: group_id.to_owned(), member_id: member_id.to_owned() });
        };
        if !group.remove_member(member_id, now) {
            return Err(group.member_error(group_id, member_id));
        }
        tracing::info!(group = group_id, member_id, "member left");
        group.rebalance(self.topics.as_ref());
        Ok(())
    }

    /// Removes every member past its session deadline; returns how many were removed.
    pub fn expire_members(&self, now: Instant) -> usize {
        let mut groups = self.lock();
        let mut n_expired = 0;
        for (group_id, group) in groups.iter_mut() {
            let expired: Vec<String> =
                group.members.iter().filter(|(_, member)| member.deadline <= now).map(|(id, _)| id.clone()).collect();
            if expired.is_empty() {
                continue;
            }
            for member_id in &expired {
                tracing::info!(group = %group_id, %member_id, "member missed its session timeout; removing it");
                group.remove_member(member_id, now);
            }
            n_expired += expired.len();
            group.rebalance(self.topics.as_ref());
        }
        n_expired
    }

    /// Checks a commit and marks its accepted partitions as having a commit in flight until the guard is dropped.
    ///
    /// The outer error refuses the whole commit (unknown member, stale generation, a commit without membership
    /// while the group has members); otherwise each partition gets its own verdict, in order.
    /// `generation` -1 with an empty member id is a commit without membership.
    pub fn begin_commit(
        self: &Arc<Self>,
        group_id: &str,
        member_id: &str,
        generation: i32,
        partitions: &[(TopicPartition, usize)],
    ) -> Result<(Vec<Result<(), GroupError>>, CommitGuard), GroupError> {
        check_group_id(group_id)?;
        let mut groups = self.lock();
        let simple = member_id.is_empty() && generation == -1;
        if !groups.contains_key(group_id) {
            if !simple {
                return Err(GroupError::UnknownMember { group: group_id.to_owned(), member_id: member_id.to_owned() });
            }
            if groups.len() >= self.config.groups_max as usize {
                return Err(GroupError::GroupsLimit { max: self.config.groups_max });
            }
        }
        let group = groups
            .entry(group_id.to_owned())
            .or_insert_with(|| Group { empty_since: Some(Instant::now()), ..Group::default() });
        let member = if simple {
            if !group.members.is_empty() {
                return Err(GroupError::GroupNotEmpty { group: group_id.to_owned() });
            }
            None
        } else {
            let Some(member) = group.members.get(member_id) else {
                return Err(group.member_error(group_id, member_id));
            };
            if generation != group.generation {
                return Err(GroupError::StaleGeneration { sent: generation, current: group.generation });
            }
            Some(member)
        };
        let verdicts: Vec<Result<(), GroupError>> = partitions
            .iter()
            .map(|(tp, metadata_len)| {
                if *metadata_len > OFFSET_METADATA_BYTES_MAX {
                    return Err(GroupError::MetadataTooLarge { len: *metadata_len });
                }
                match member {
                    None => Ok(()),
                    Some(member) if member.owned.contains(tp) => Ok(()),
                    Some(member) if member.target.contains(tp) => {
                        Err(GroupError::RebalanceInProgress { topic: tp.0.clone(), partition: tp.1 })
                    }
                    Some(_) => Err(GroupError::NotAssigned { topic: tp.0.clone(), partition: tp.1 }),
                }
            })
            .collect();
        let marked: Vec<TopicPartition> = partitions
            .iter()
            .zip(&verdicts)
            .filter(|(_, verdict)| verdict.is_ok())
            .map(|((tp, _), _)| tp.clone())
            .collect();
        for tp in &marked {
            *group.commits_in_flight.entry(tp.clone()).or_default() += 1;
        }
        let guard = CommitGuard { coordinator: Arc::clone(self), group: group_id.to_owned(), partitions: marked };
        Ok((verdicts, guard))
    }

    fn end_commit(&self, group_id: &str, partitions: &[TopicPartition]) {
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else { return };
        for tp in partitions {
            if let Some(count) = group.commits_in_flight.get_mut(tp) {
                *count -= 1;
                if *count == 0 {
                    group.commits_in_flight.remove(tp);
                }
            }
        }
    }

    /// Every group known in memory, with its state and member count, by id.
    pub fn list(&self) -> Vec<(String, GroupState, usize)> {
        self.lock().iter().map(|(id, group)| (id.clone(), group.state(), group.members.len())).collect()
    }

    /// One group; an unknown group is described as empty, generation 0.
    pub fn describe(&self, group_id: &str) -> Result<GroupDescription, GroupError> {
        check_group_id(group_id)?;
        let groups = self.lock();
        let Some(group) = groups.get(group_id) else {
            return Ok(GroupDescription {
                state: GroupState::Empty,
                generation: 0,
                assignor: None,
                members: Vec::new(),
            });
        };
        let members = group
            .members
            .iter()
            .map(|(member_id, member)| MemberDescription {
                member_id: member_id.clone(),
                instance_id: member.instance_id.clone().unwrap_or_default(),
                client_id: member.client_id.clone(),
                assignment: member.assignment(),
                target: member.target.clone(),
            })
            .collect();
        Ok(GroupDescription {
            state: group.state(),
            generation: group.generation,
            assignor: group.assignor.filter(|_| !group.members.is_empty()),
            members,
        })
    }

    /// For offset expiry: whether the group has no members, and since when (the broker's start for a group it has
    /// not seen since).
    pub fn empty_since(&self, group_id: &str) -> Option<Instant> {
        match self.lock().get(group_id) {
            None => Some(self.started),
            Some(group) if group.members.is_empty() => Some(group.empty_since.unwrap_or(self.started)),
            Some(_) => None,
        }
    }

    /// Forgets every group that has no members, no commit in flight and is not in `with_offsets` (the groups that
    /// still have committed offsets, whose time of becoming empty offset expiry needs), so groups that came and
    /// went do not hold memory, or a place under `groups.groups_max`, forever.
    pub fn forget_empty_groups(&self, with_offsets: &BTreeSet<String>) {
        self.lock().retain(|group_id, group| {
            !group.members.is_empty() || !group.commits_in_flight.is_empty() || with_offsets.contains(group_id)
        });
    }

    /// The group offset and lag metrics.
    pub fn metrics(&self) -> &Arc<lag::GroupMetrics> {
        &self.metrics
    }

    /// The configuration in force.
    pub fn config(&self) -> &GroupsConfig {
        &self.config
    }
}

/// Clears a commit's in-flight marks when dropped (after the write, or if the request is abandoned).
#[derive(Debug)]
pub struct CommitGuard {
    coordinator: Arc<Coordinator>,
    group: String,
    partitions: Vec<TopicPartition>,
}

impl Drop for CommitGuard {
    fn drop(&mut self) {
        self.coordinator.end_commit(&self.group, &self.partitions);
    }
}

impl TopicSource for Partitions {
    fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topic(topic).map(|found| found.record.partitions)
    }
}

/// The coordinator's background work until `shutdown`: removes members past their session timeout (every
/// [`EXPIRY_CHECK_INTERVAL`]), refreshes the lag metrics (every [`lag::LAG_REFRESH_INTERVAL`], on a blocking thread)
/// and expires committed offsets (every `groups.offsets_retention_check_interval`, on a blocking thread).
pub async fn run_background(
    coordinator: Arc<Coordinator>,
    meta: Arc<MetaStore>,
    partitions: Arc<Partitions>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let metrics = Arc::clone(coordinator.metrics());
    let mut expiry = tokio::time::interval(EXPIRY_CHECK_INTERVAL);
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lag = tokio::time::interval(lag::LAG_REFRESH_INTERVAL);
    lag.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retention = tokio::time::interval(coordinator.config.offsets_retention_check_interval);
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = expiry.tick() => {
                coordinator.expire_members(Instant::now());
            }
            _ = lag.tick() => {
                let (metrics, partitions) = (Arc::clone(&metrics), Arc::clone(&partitions));
                let now_ms = i64::try_from(crate::handlers::epoch_ms()).unwrap_or(i64::MAX);
                let refreshed = tokio::task::spawn_blocking(move || metrics.refresh_lag(&partitions, now_ms)).await;
                if let Err(error) = refreshed {
                    std::panic::resume_unwind(error.into_panic());
                }
            }
            _ = retention.tick() => {
                let expired = expire_offsets(&coordinator, &meta, &partitions).await;
                match expired {
                    Ok(0) => {}
                    Ok(n_expired) => tracing::info!(n_expired, "expired committed offsets"),
                    Err(error) => tracing::warn!(error = %crate::partitions::error_chain(&error), "cannot expire committed offsets"),
                }
            }
        }
    }
}

/// Deletes the committed offsets that are past `groups.offsets_retention_ms` (see [`GroupsConfig`]).
pub async fn expire_offsets(
    coordinator: &Arc<Coordinator>,
    meta: &Arc<MetaStore>,
    partitions: &Partitions,
) -> Result<usize, crate::meta::MetaError> {
    let active: BTreeSet<u64> = partitions.topics().iter().map(|topic| topic.record.id).collect();
    let retention_ms = crate::config::millis(coordinator.config.offsets_retention);
    let (coordinator, meta) = (Arc::clone(coordinator), Arc::clone(meta));
    tokio::task::spawn_blocking(move || {
        let now = Instant::now();
        let now_ms = crate::handlers::epoch_ms();
        let mut with_offsets: BTreeSet<String> = BTreeSet::new();
        let n_expired = meta.expire_offsets(|group, topic_id, _, committed| {
            let since_commit_ms = now_ms.saturating_sub(committed.commit_time_ms);
            let expired = if active.contains(&topic_id) {
                // Empty groups: retention runs from the later of the group becoming empty and the commit.
                coordinator.empty_since(group).is_some_and(|since| {
                    let since_empty_ms = crate::config::millis(now.saturating_duration_since(since));
                    since_commit_ms.min(since_empty_ms) >= retention_ms
                })
            } else {
                since_commit_ms >= retention_ms
            };
            if !expired && !with_offsets.contains(group) {
                with_offsets.insert(group.to_owned());
            }
            expired
        })?;
        coordinator.forget_empty_groups(&with_offsets);
        Ok(n_expired)
    })
    .await
    .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
}
