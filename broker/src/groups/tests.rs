use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;

#[derive(Debug)]
struct FixedTopics(BTreeMap<String, u32>);

impl TopicSource for FixedTopics {
    fn partition_count(&self, topic: &str) -> Option<u32> {
        self.0.get(topic).copied()
    }
}

const SESSION: Duration = Duration::from_secs(10);

fn coordinator(partitions: u32) -> Arc<Coordinator> {
    let topics = FixedTopics(BTreeMap::from([("t".to_owned(), partitions)]));
    Arc::new(Coordinator::new(GroupsConfig { members_per_group_max: 4, ..GroupsConfig::default() }, Arc::new(topics)))
}

fn join(coordinator: &Coordinator, instance_id: &str, now: Instant) -> Result<MemberView, GroupError> {
    coordinator.join(
        JoinRequest {
            group: "g".to_owned(),
            member_id: String::new(),
            instance_id: instance_id.to_owned(),
            topics: vec!["t".to_owned()],
            session_timeout: SESSION,
            assignor: String::new(),
            client_id: "test".to_owned(),
        },
        now,
    )
}

/// Heartbeats as a cooperative member does: report what it holds, keeping only what it was assigned.
fn beat(coordinator: &Coordinator, view: &mut MemberView, now: Instant) {
    let owned = view.assignment.clone();
    *view = coordinator.heartbeat("g", &view.member_id, &owned, now).expect("heartbeat");
}

fn partitions(view: &MemberView) -> BTreeSet<u32> {
    view.assignment.iter().map(|(_, partition)| *partition).collect()
}

#[test]
fn members_converge_to_a_disjoint_complete_assignment_in_two_steps() {
    let coordinator = coordinator(12);
    let now = Instant::now();
    let mut a = join(&coordinator, "", now).expect("join a");
    assert_eq!(a.generation, 1);
    assert_eq!(partitions(&a).len(), 12, "a lone member gets everything at once");
    let mut b = join(&coordinator, "", now).expect("join b");
    assert_eq!(b.generation, 2);
    assert!(partitions(&b).is_empty(), "nothing is granted before its owner releases it");
    beat(&coordinator, &mut a, now);
    assert_eq!(partitions(&a).len(), 6, "a keeps half and gives up the rest");
    assert_eq!(coordinator.describe("g").expect("describe").state, GroupState::Reconciling);
    beat(&coordinator, &mut a, now);
    beat(&coordinator, &mut b, now);
    assert_eq!(partitions(&b).len(), 6);
    assert!(partitions(&a).is_disjoint(&partitions(&b)));
    assert_eq!(coordinator.describe("g").expect("describe").state, GroupState::Stable);
}

#[test]
fn commits_are_checked_for_member_generation_and_ownership() {
    let coordinator = coordinator(4);
    let now = Instant::now();
    let mut a = join(&coordinator, "", now).expect("join a");
    let tp = |partition| (("t".to_owned(), partition), 0);
    let (verdicts, _guard) = coordinator.begin_commit("g", &a.member_id, a.generation, &[tp(0)]).expect("accepted");
    assert_eq!(verdicts, vec![Ok(())]);
    drop(_guard);

    let mut b = join(&coordinator, "", now).expect("join b");
    // a's generation is now stale.
    let stale = coordinator.begin_commit("g", &a.member_id, a.generation, &[tp(0)]).expect_err("stale");
    assert!(matches!(stale, GroupError::StaleGeneration { sent: 1, current: 2 }));
    beat(&coordinator, &mut a, now);
    let a_owns: Vec<u32> = partitions(&a).into_iter().collect();
    let b_target: u32 = (0..4).find(|p| !a_owns.contains(p)).expect("b has a target");
    // a was told to give b_target up but has not confirmed yet: it may still commit it (before releasing it),
    // and b may not yet.
    let (verdicts, _) = coordinator.begin_commit("g", &a.member_id, a.generation, &[tp(b_target)]).expect("checked");
    assert_eq!(verdicts, vec![Ok(())]);
    let (verdicts, _) = coordinator.begin_commit("g", &b.member_id, b.generation, &[tp(b_target)]).expect("checked");
    assert!(matches!(verdicts[0], Err(GroupError::RebalanceInProgress { .. })));
    beat(&coordinator, &mut a, now);
    beat(&coordinator, &mut b, now);
    let (verdicts, guard) =
        coordinator.begin_commit("g", &a.member_id, a.generation, &[tp(a_owns[0]), tp(b_target)]).expect("checked");
    assert_eq!(verdicts[0], Ok(()));
    assert!(matches!(verdicts[1], Err(GroupError::NotAssigned { .. })));
    // b's partitions were all released by a's heartbeat, so b got them.
    let (verdicts, _) = coordinator.begin_commit("g", &b.member_id, b.generation, &[tp(b_target)]).expect("checked");
    assert_eq!(verdicts, vec![Ok(())]);
    drop(guard);
    // Without membership: refused while the group has members.
    assert!(matches!(coordinator.begin_commit("g", "", -1, &[tp(0)]), Err(GroupError::GroupNotEmpty { .. })));
    let unknown = coordinator.begin_commit("g", "nobody", b.generation, &[tp(0)]).expect_err("unknown");
    assert!(matches!(unknown, GroupError::UnknownMember { .. }));
    let big = ("t".to_owned(), a_owns[0]);
    let (verdicts, _) = coordinator
        .begin_commit("g", &a.member_id, a.generation, &[(big, OFFSET_METADATA_BYTES_MAX + 1)])
        .expect("checked");
    assert!(matches!(verdicts[0], Err(GroupError::MetadataTooLarge { .. })));
}

#[test]
fn a_partition_with_a_commit_in_flight_is_not_granted() {
    let coordinator = coordinator(1);
    let now = Instant::now();
    let a = join(&coordinator, "", now).expect("join a");
    let (_, guard) =
        coordinator.begin_commit("g", &a.member_id, a.generation, &[(("t".to_owned(), 0), 0)]).expect("ok");
    coordinator.leave("g", &a.member_id, now).expect("leave");
    let mut b = join(&coordinator, "", now).expect("join b");
    assert!(partitions(&b).is_empty(), "a's commit is still being written");
    drop(guard);
    beat(&coordinator, &mut b, now);
    assert_eq!(partitions(&b), BTreeSet::from([0]));
}

#[test]
fn expired_members_are_removed_and_their_partitions_move() {
    let coordinator = coordinator(4);
    let now = Instant::now();
    let mut a = join(&coordinator, "", now).expect("join a");
    let mut b = join(&coordinator, "", now).expect("join b");
    beat(&coordinator, &mut a, now);
    beat(&coordinator, &mut b, now);
    let later = now + SESSION / 2;
    beat(&coordinator, &mut a, later);
    assert_eq!(coordinator.expire_members(now + SESSION), 1, "b missed its session timeout");
    let stale = coordinator.heartbeat("g", &b.member_id, &BTreeSet::new(), now + SESSION).expect_err("b is out");
    assert!(matches!(stale, GroupError::UnknownMember { .. }));
    beat(&coordinator, &mut a, now + SESSION);
    assert_eq!(partitions(&a).len(), 4);
    assert_eq!(a.generation, 3);
}

#[test]
fn a_static_member_returning_in_time_keeps_its_assignment_without_a_rebalance() {
    let coordinator = coordinator(6);
    let now = Instant::now();
    let mut a = join(&coordinator, "alpha", now).expect("join a");
    let mut b = join(&coordinator, "beta", now).expect("join b");
    beat(&coordinator, &mut a, now);
    beat(&coordinator, &mut a, now);
    beat(&coordinator, &mut b, now);
    let before = (b.generation, partitions(&b));
    assert_eq!(before.1.len(), 3);
    // b restarts: a new process joins with the same instance id before the session timeout.
    let b2 = join(&coordinator, "beta", now + SESSION / 2).expect("rejoin");
    assert_ne!(b2.member_id, b.member_id);
    assert_eq!((b2.generation, partitions(&b2)), before, "same assignment, same generation");
    let fenced = coordinator.heartbeat("g", &b.member_id, &BTreeSet::new(), now).expect_err("old instance");
    assert!(matches!(fenced, GroupError::FencedInstance { .. }));
}

#[test]
fn joins_are_bounded_and_validated() {
    let coordinator = coordinator(1);
    let now = Instant::now();
    for _ in 0..4 {
        join(&coordinator, "", now).expect("join");
    }
    assert!(matches!(join(&coordinator, "", now), Err(GroupError::GroupFull { max: 4 })));
    assert!(matches!(join(&coordinator, "bad id", now), Err(GroupError::InvalidId { what: "instance id" })));
    let mut request = JoinRequest {
        group: String::new(),
        member_id: String::new(),
        instance_id: String::new(),
        topics: Vec::new(),
        session_timeout: SESSION,
        assignor: String::new(),
        client_id: String::new(),
    };
    assert!(matches!(coordinator.join(request.clone(), now), Err(GroupError::InvalidId { what: "group id" })));
    request.group = "h".to_owned();
    request.session_timeout = Duration::from_millis(1);
    assert!(matches!(coordinator.join(request.clone(), now), Err(GroupError::InvalidSessionTimeout { .. })));
    request.session_timeout = SESSION;
    request.assignor = "roundrobin".to_owned();
    assert!(matches!(coordinator.join(request.clone(), now), Err(GroupError::InconsistentAssignor { .. })));
    request.assignor = "range".to_owned();
    coordinator.join(request.clone(), now).expect("range group");
    request.assignor = "cooperative-sticky".to_owned();
    assert!(matches!(coordinator.join(request, now), Err(GroupError::InconsistentAssignor { .. })));
    assert!(!valid_id(&"g".repeat(256)));
}

#[test]
fn empty_groups_without_offsets_are_forgotten_and_free_their_place() {
    let topics = FixedTopics(BTreeMap::from([("t".to_owned(), 1)]));
    let config = GroupsConfig { groups_max: 1, ..GroupsConfig::default() };
    let coordinator = Arc::new(Coordinator::new(config, Arc::new(topics)));
    let now = Instant::now();
    let a = join(&coordinator, "", now).expect("join");
    // A commit naming a member of a group that does not exist creates nothing.
    let unknown = coordinator.begin_commit("other", "m", 1, &[]).expect_err("unknown");
    assert!(matches!(unknown, GroupError::UnknownMember { .. }));
    assert_eq!(coordinator.list().len(), 1);
    coordinator.leave("g", &a.member_id, now).expect("leave");
    // "g" is empty but keeps its place while it has offsets.
    coordinator.forget_empty_groups(&BTreeSet::from(["g".to_owned()]));
    assert!(matches!(coordinator.begin_commit("other", "", -1, &[]), Err(GroupError::GroupsLimit { max: 1 })));
    coordinator.forget_empty_groups(&BTreeSet::new());
    assert!(coordinator.list().is_empty());
    assert!(coordinator.begin_commit("other", "", -1, &[]).is_ok());
}

#[derive(Debug, Default)]
struct ChangingTopics(std::sync::Mutex<BTreeMap<String, u32>>);

impl TopicSource for ChangingTopics {
    fn partition_count(&self, topic: &str) -> Option<u32> {
        self.0.lock().expect("not poisoned").get(topic).copied()
    }
}

#[test]
fn a_subscribed_topic_created_later_is_assigned_at_a_later_heartbeat() {
    let topics = Arc::new(ChangingTopics::default());
    let coordinator = Arc::new(Coordinator::new(GroupsConfig::default(), Arc::clone(&topics) as Arc<dyn TopicSource>));
    let now = Instant::now();
    let mut a = join(&coordinator, "", now).expect("join");
    assert!(a.assignment.is_empty(), "the topic does not exist yet");
    topics.0.lock().expect("not poisoned").insert("t".to_owned(), 2);
    beat(&coordinator, &mut a, now + TOPOLOGY_CHECK_INTERVAL);
    assert_eq!((a.generation, partitions(&a)), (2, BTreeSet::from([0, 1])));
}
