//! Consumer groups end to end: members sharing partitions, a member killed without leaving, delivery guarantees of
//! the commit modes, stale members fenced, cooperative rebalancing, static membership, offsets across a SIGKILL.
//!
//! Consumers are polled round-robin from one task, so each test decides the interleaving; "killing" a consumer is
//! dropping it without `close`, so it neither commits nor leaves, and only its session timeout removes it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use std::cell::RefCell;

use ferry_client::{
    Admin, CommitMode, Connection, ConnectionConfig, Consumer, ConsumerConfig, ConsumerRecord, GroupConfig,
    OffsetReset, Producer, ProducerConfig, ProducerRecord, RebalanceEvent,
};
use ferry_protocol::messages::{
    HeartbeatRequest, JoinGroupRequest, OffsetCommitPartition, OffsetCommitRequest, OffsetCommitTopic,
    OffsetFetchRequest, TopicPartitions,
};
use ferry_protocol::{ErrorCode, Request, Response};
use tokio::time::Instant;

use crate::harness::TestBroker;

/// The session timeout of the test consumers: short, so a killed member is detected quickly.
const SESSION: Duration = Duration::from_millis(1000);
/// Generous bound for anything a test waits for.
const DEADLINE: Duration = Duration::from_secs(60);

async fn start_broker() -> TestBroker {
    TestBroker::start_with(|config| config.groups.session_timeout_min = Duration::from_millis(100)).await
}

/// Produces `per_partition` records to each partition of `topic`, value `P:I` for the I-th record of partition P.
async fn produce(addr: &str, topic: &str, partitions: u32, per_partition: u32, from: u32) {
    let producer = Producer::new(addr, ProducerConfig::default()).expect("producer");
    let mut deliveries = Vec::new();
    for idx in from..from + per_partition {
        for partition in 0..partitions {
            let mut record = ProducerRecord::new(topic, format!("{partition}:{idx}"));
            record.partition = Some(partition);
            deliveries.push(producer.send(record).await.expect("send"));
        }
    }
    for delivery in deliveries {
        delivery.await.expect("delivered");
    }
    producer.close().await.expect("close");
}

fn group_config(group: &str, mode: CommitMode) -> ConsumerConfig {
    ConsumerConfig {
        fetch_wait_max: Duration::from_millis(50),
        poll_records_max: 10,
        offset_reset: OffsetReset::Earliest,
        group: Some(GroupConfig {
            session_timeout: SESSION,
            commit_mode: mode,
            auto_commit_interval: Some(Duration::from_millis(100)),
            ..GroupConfig::new(group)
        }),
        ..ConsumerConfig::default()
    }
}

fn member(addr: &str, group: &str, mode: CommitMode, topic: &str) -> Consumer {
    let mut consumer = Consumer::new(addr, group_config(group, mode)).expect("consumer");
    consumer.subscribe([topic]).expect("subscribe");
    consumer
}

type Key = (u32, u64);

fn key(record: &ConsumerRecord) -> Key {
    (record.partition, record.offset)
}

/// Polls each consumer in turn (a short poll each), handing what it returns to `process`, until `done` holds.
async fn poll_until(
    consumers: &mut [Consumer],
    what: &str,
    process: impl Fn(usize, Vec<ConsumerRecord>),
    mut done: impl FnMut(&[Consumer]) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    while !done(consumers) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        for (idx, consumer) in consumers.iter_mut().enumerate() {
            let records = consumer.poll(Duration::from_millis(20)).await.expect("poll");
            process(idx, records);
        }
    }
}

fn assigned_partitions(consumer: &Consumer) -> BTreeSet<u32> {
    consumer.assignment().into_iter().map(|(_, partition)| partition).collect()
}

/// Committed offsets of `group` in `topic`, by partition.
async fn committed(addr: &str, group: &str) -> BTreeMap<u32, u64> {
    let admin = Admin::new(addr, ConnectionConfig::default()).expect("admin");
    let info = admin.describe_group(group).await.expect("describe group");
    admin.close().await;
    info.partitions
        .iter()
        .filter_map(|partition| partition.committed.map(|offset| (partition.partition, offset)))
        .collect()
}

/// Three members split 12 partitions; one takes records and is killed before processing them; the survivors take
/// over its partitions after the session timeout and finish the topic. Returns what each record was processed as:
/// (every processing, the killed member's partitions, their committed offsets when it died, what it took last).
async fn kill_one_of_three(mode: CommitMode) -> (Vec<Key>, BTreeSet<u32>, BTreeMap<u32, u64>, Vec<Key>) {
    const PARTITIONS: u32 = 12;
    const PER_PARTITION: u32 = 50;
    let broker = start_broker().await;
    let group = format!("kill-{mode:?}").to_lowercase();
    broker.create_topic("jobs", PARTITIONS, &[]).await;
    produce(&broker.addr, "jobs", PARTITIONS, PER_PARTITION, 0).await;

    let mut consumers: Vec<Consumer> = (0..3).map(|_| member(&broker.addr, &group, mode, "jobs")).collect();
    let processed: RefCell<Vec<(usize, Key)>> = RefCell::new(Vec::new());
    let process =
        |idx: usize, records: Vec<ConsumerRecord>| processed.borrow_mut().extend(records.iter().map(|r| (idx, key(r))));
    // Phase 1: the three settle on 4 partitions each, and the soon-killed member processes some records.
    poll_until(&mut consumers, "a balanced group where member 2 processed records", process, |consumers| {
        consumers.iter().all(|consumer| assigned_partitions(consumer).len() == 4)
            && processed.borrow().iter().filter(|(idx, _)| *idx == 2).count() >= 20
    })
    .await;
    let split: Vec<BTreeSet<u32>> = consumers.iter().map(assigned_partitions).collect();
    let all: BTreeSet<u32> = split.iter().flatten().copied().collect();
    assert_eq!(all, (0..PARTITIONS).collect(), "every partition is assigned, each to one member: {split:?}");

    // Member 2 takes one more batch of records and dies before processing them.
    let mut victim = consumers.pop().expect("three consumers");
    let victim_partitions = assigned_partitions(&victim);
    let mut taken = Vec::new();
    while taken.is_empty() {
        taken = victim.poll(Duration::from_millis(200)).await.expect("poll").iter().map(key).collect();
    }
    drop(victim);
    let committed_at_kill = committed(&broker.addr, &group).await;
    let killed_at = Instant::now();

    // Phase 2: the survivors take over and finish the topic.
    let total: BTreeSet<Key> = (0..PARTITIONS)
        .flat_map(|partition| (0..u64::from(PER_PARTITION)).map(move |offset| (partition, offset)))
        .collect();
    let lost_allowed: BTreeSet<Key> =
        if mode == CommitMode::Before { taken.iter().copied().collect() } else { BTreeSet::new() };
    let mut moved_after = None;
    poll_until(&mut consumers, "the survivors to finish the topic", process, |consumers| {
        let n_assigned: usize = consumers.iter().map(|consumer| assigned_partitions(consumer).len()).sum();
        if moved_after.is_none() && n_assigned == 12 {
            moved_after = Some(killed_at.elapsed());
        }
        let seen: BTreeSet<Key> =
            processed.borrow().iter().map(|(_, key)| *key).chain(lost_allowed.iter().copied()).collect();
        seen.is_superset(&total)
    })
    .await;
    let moved_after = moved_after.expect("the survivors own every partition");
    println!(
        "{mode:?}: the killed member's partitions moved {moved_after:?} after it died (session timeout {SESSION:?})"
    );
    assert!(moved_after < 10 * SESSION, "the partitions moved after the session timeout, not much later");
    for consumer in consumers {
        consumer.close().await;
    }
    broker.stop().await;
    let processed = processed.into_inner().into_iter().map(|(_, key)| key).collect();
    (processed, victim_partitions, committed_at_kill, taken)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_after_a_killed_member_costs_duplicates_only_after_its_last_commit() {
    let (processed, victim_partitions, committed_at_kill, taken) = kill_one_of_three(CommitMode::After).await;
    let mut counts: BTreeMap<Key, u32> = BTreeMap::new();
    for key in &processed {
        *counts.entry(*key).or_default() += 1;
    }
    assert_eq!(counts.len(), 12 * 50, "every record was processed at least once");
    let duplicates: Vec<Key> = counts.iter().filter(|(_, count)| **count > 1).map(|(key, _)| *key).collect();
    for (partition, offset) in &duplicates {
        assert!(victim_partitions.contains(partition), "duplicate {partition}:{offset} is not from the killed member");
        let committed = committed_at_kill.get(partition).copied().unwrap_or(0);
        assert!(*offset >= committed, "duplicate {partition}:{offset} is before the last commit {committed}");
    }
    // The records the killed member took but never processed are delivered (again) to a survivor.
    for key in &taken {
        assert!(counts.contains_key(key), "{key:?} was never processed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_before_a_killed_member_loses_only_what_it_had_taken_and_nothing_is_processed_twice() {
    let (processed, _, _, taken) = kill_one_of_three(CommitMode::Before).await;
    let mut seen = BTreeSet::new();
    for key in &processed {
        assert!(seen.insert(*key), "{key:?} was processed twice");
    }
    let taken: BTreeSet<Key> = taken.into_iter().collect();
    assert!(seen.is_disjoint(&taken), "what the killed member had taken is not delivered again");
    let missing: BTreeSet<Key> = (0..12u32)
        .flat_map(|partition| (0..50u64).map(move |offset| (partition, offset)))
        .filter(|key| !seen.contains(key))
        .collect();
    assert_eq!(missing, taken, "the only records lost are those the killed member had taken");
}

async fn raw_join(connection: &Connection, group: &str, instance_id: &str) -> (String, i32) {
    let request = Request::JoinGroup(JoinGroupRequest {
        group_id: group.to_owned(),
        instance_id: instance_id.to_owned(),
        topics: vec!["raw".to_owned()],
        session_timeout_ms: 500,
        ..JoinGroupRequest::default()
    });
    let Response::JoinGroup(response) = connection.request(request).await.expect("join") else { panic!("join") };
    assert_eq!(response.error_code, 0, "{}", response.error_message);
    (response.member_id, response.generation)
}

async fn raw_commit(
    connection: &Connection,
    group: &str,
    member_id: &str,
    generation: i32,
    partition: u32,
) -> (u32, u32) {
    let request = Request::OffsetCommit(OffsetCommitRequest {
        group_id: group.to_owned(),
        member_id: member_id.to_owned(),
        generation,
        topics: vec![OffsetCommitTopic {
            name: "raw".to_owned(),
            partitions: vec![OffsetCommitPartition { partition, offset: 7, metadata: "m".to_owned() }],
        }],
    });
    let Response::OffsetCommit(response) = connection.request(request).await.expect("commit") else { panic!("commit") };
    let item = response.topics.first().and_then(|topic| topic.partitions.first()).map_or(0, |item| item.error_code);
    (response.error_code, item)
}

fn code(code: ErrorCode) -> u32 {
    u32::from(code.as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_or_removed_member_cannot_commit() {
    let broker = start_broker().await;
    broker.create_topic("raw", 2, &[]).await;
    let connection = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    let (first, generation_1) = raw_join(&connection, "fence", "").await;
    assert_eq!(raw_commit(&connection, "fence", &first, generation_1, 0).await, (0, 0), "the owner commits");
    // Without membership, commits are refused while the group has members.
    assert_eq!(raw_commit(&connection, "fence", "", -1, 0).await.0, code(ErrorCode::UnknownMember));

    let (second, generation_2) = raw_join(&connection, "fence", "").await;
    assert_eq!(generation_2, generation_1 + 1, "a join is a rebalance");
    assert_eq!(
        raw_commit(&connection, "fence", &first, generation_1, 0).await.0,
        code(ErrorCode::StaleGeneration),
        "a commit from the previous generation is rejected"
    );
    // The second member's partition is not yet released by the first: retriable REBALANCE_IN_PROGRESS.
    let heartbeat = |member_id: &str, owned: Vec<u32>| {
        Request::Heartbeat(HeartbeatRequest {
            group_id: "fence".to_owned(),
            member_id: member_id.to_owned(),
            generation: generation_2,
            owned: vec![TopicPartitions { topic: "raw".to_owned(), partitions: owned }],
        })
    };
    let Response::Heartbeat(beat) = connection.request(heartbeat(&first, vec![0, 1])).await.expect("heartbeat") else {
        panic!("heartbeat")
    };
    let kept: Vec<u32> = beat.assignment.iter().flat_map(|topic| topic.partitions.clone()).collect();
    assert_eq!(kept.len(), 1, "the first member keeps one partition: {beat:?}");
    let moving = 1 - kept[0];
    assert_eq!(
        raw_commit(&connection, "fence", &second, generation_2, moving).await.1,
        code(ErrorCode::RebalanceInProgress)
    );
    // Once released, the first member may no longer commit it: NOT_ASSIGNED.
    connection.request(heartbeat(&first, kept.clone())).await.expect("release");
    assert_eq!(raw_commit(&connection, "fence", &first, generation_2, moving).await.1, code(ErrorCode::NotAssigned));

    // A member removed by its session timeout is unknown: its commits are rejected whatever generation it sends.
    let deadline = Instant::now() + DEADLINE;
    loop {
        connection.request(heartbeat(&second, vec![])).await.expect("keep the second member alive");
        let (top, _) = raw_commit(&connection, "fence", &first, generation_2, kept[0]).await;
        if top == code(ErrorCode::UnknownMember) {
            break;
        }
        assert!(Instant::now() < deadline, "the first member was never removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fetch = Request::OffsetFetch(OffsetFetchRequest {
        group_id: "fence".to_owned(),
        topics: Vec::new(),
        include_lag: false,
    });
    let Response::OffsetFetch(offsets) = connection.request(fetch).await.expect("fetch") else { panic!("fetch") };
    assert_eq!(offsets.topics.len(), 1);
    assert_eq!(offsets.topics[0].partitions.len(), 1, "only the first, accepted commit is stored: {offsets:?}");
    connection.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_that_do_not_move_keep_being_consumed_during_a_cooperative_rebalance() {
    const PARTITIONS: u32 = 12;
    let broker = start_broker().await;
    broker.create_topic("coop", PARTITIONS, &[]).await;
    produce(&broker.addr, "coop", PARTITIONS, 5, 0).await;
    let mut first = vec![member(&broker.addr, "coop", CommitMode::After, "coop")];
    let seen: RefCell<BTreeSet<Key>> = RefCell::new(BTreeSet::new());
    let read = |_, records: Vec<ConsumerRecord>| seen.borrow_mut().extend(records.iter().map(key));
    poll_until(&mut first, "the first member to read everything", read, |_| seen.borrow().len() == 60).await;
    let mut first = first.pop().expect("one consumer");
    first.take_events();

    // The second member joins; it gets nothing until the first releases what moves.
    let mut second = member(&broker.addr, "coop", CommitMode::After, "coop");
    assert!(second.poll(Duration::from_millis(20)).await.expect("poll").is_empty());
    assert!(second.assignment().is_empty());
    let deadline = Instant::now() + DEADLINE;
    let revoked: BTreeSet<u32> = loop {
        assert!(Instant::now() < deadline, "the first member was never asked to give partitions up");
        first.poll(Duration::from_millis(20)).await.expect("poll");
        let events = first.take_events();
        if let Some(RebalanceEvent::Revoked(partitions)) = events.first() {
            assert_eq!(events.len(), 1, "only a revocation: {events:?}");
            break partitions.iter().map(|(_, partition)| *partition).collect();
        }
    };
    let kept = assigned_partitions(&first);
    assert_eq!((kept.len(), revoked.len()), (6, 6));
    assert!(kept.is_disjoint(&revoked));

    // Mid-rebalance (the second member has not heartbeated since): the kept partitions keep flowing.
    let admin = broker.admin();
    assert_eq!(admin.describe_group("coop").await.expect("describe").state, "reconciling");
    produce(&broker.addr, "coop", PARTITIONS, 5, 5).await;
    let mut fresh: BTreeSet<u32> = BTreeSet::new();
    while fresh != kept {
        assert!(Instant::now() < deadline, "kept partitions stalled: got new records from {fresh:?} of {kept:?}");
        for record in first.poll(Duration::from_millis(20)).await.expect("poll") {
            assert!(kept.contains(&record.partition), "record from a revoked partition: {record:?}");
            if record.offset >= 5 {
                fresh.insert(record.partition);
            }
        }
    }
    assert_eq!(admin.describe_group("coop").await.expect("describe").state, "reconciling", "still mid-rebalance");
    assert!(second.assignment().is_empty());

    // The second member then gets exactly what the first gave up, and the group is stable.
    while assigned_partitions(&second) != revoked {
        assert!(Instant::now() < deadline, "the second member never got the released partitions");
        second.poll(Duration::from_millis(20)).await.expect("poll");
        first.poll(Duration::from_millis(20)).await.expect("poll");
    }
    assert_eq!(assigned_partitions(&first), kept, "the first member kept its partitions throughout");
    assert!(first.take_events().is_empty(), "no further revocation");
    assert_eq!(admin.describe_group("coop").await.expect("describe").state, "stable");
    admin.close().await;
    first.close().await;
    second.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarted_within_its_session_timeout_keeps_its_partitions_without_a_rebalance() {
    let broker = TestBroker::start().await;
    broker.create_topic("static", 6, &[]).await;
    let config = |instance: &str| {
        let mut config = group_config("static", CommitMode::After);
        if let Some(group) = config.group.as_mut() {
            group.instance_id = Some(instance.to_owned());
            // Long enough that the restart below surely happens within it.
            group.session_timeout = Duration::from_secs(30);
        }
        config
    };
    let mut consumers: Vec<Consumer> = ["alpha", "beta"]
        .iter()
        .map(|instance| {
            let mut consumer = Consumer::new(broker.addr.clone(), config(instance)).expect("consumer");
            consumer.subscribe(["static"]).expect("subscribe");
            consumer
        })
        .collect();
    poll_until(
        &mut consumers,
        "a stable split",
        |_, _| {},
        |consumers| consumers.iter().all(|consumer| assigned_partitions(consumer).len() == 3),
    )
    .await;
    consumers[0].take_events();
    let beta = consumers.pop().expect("two consumers");
    let (generation, partitions) = (beta.generation(), assigned_partitions(&beta));
    // The process dies (no leave) and a new one starts with the same instance id.
    drop(beta);
    let mut restarted = Consumer::new(broker.addr.clone(), config("beta")).expect("consumer");
    restarted.subscribe(["static"]).expect("subscribe");
    restarted.poll(Duration::from_millis(20)).await.expect("poll");
    assert_eq!(restarted.generation(), generation, "no rebalance");
    assert_eq!(assigned_partitions(&restarted), partitions, "the same partitions at once");
    let mut alpha = consumers.pop().expect("alpha");
    alpha.poll(Duration::from_millis(20)).await.expect("poll");
    assert_eq!(alpha.generation(), generation);
    assert_eq!(alpha.take_events(), Vec::new(), "alpha neither lost nor gained anything");
    alpha.close().await;
    restarted.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_time_with_three_members_is_measured() {
    const PARTITIONS: u32 = 12;
    let broker = start_broker().await;
    broker.create_topic("timed", PARTITIONS, &[]).await;
    let mut consumers: Vec<Consumer> =
        (0..2).map(|_| member(&broker.addr, "timed", CommitMode::After, "timed")).collect();
    poll_until(
        &mut consumers,
        "two members",
        |_, _| {},
        |consumers| consumers.iter().all(|consumer| assigned_partitions(consumer).len() == 6),
    )
    .await;
    let started = Instant::now();
    consumers.push(member(&broker.addr, "timed", CommitMode::After, "timed"));
    poll_until(
        &mut consumers,
        "three members",
        |_, _| {},
        |consumers| consumers.iter().all(|consumer| assigned_partitions(consumer).len() == 4),
    )
    .await;
    let joined = started.elapsed();
    let started = Instant::now();
    consumers.pop().expect("three").close().await;
    poll_until(
        &mut consumers,
        "two members again",
        |_, _| {},
        |consumers| consumers.iter().all(|consumer| assigned_partitions(consumer).len() == 6),
    )
    .await;
    let left = started.elapsed();
    println!(
        "rebalance with three members (12 partitions, session timeout {SESSION:?}, heartbeat interval {:?}): \
         join {joined:?}, leave {left:?}",
        SESSION / 3
    );
    for consumer in consumers {
        consumer.close().await;
    }
    broker.stop().await;
}

/// Starts the real `ferry-broker` on `data_dir` with a short minimum session timeout; returns it and its address.
fn start_binary(data_dir: &std::path::Path, listen: &str) -> (crate::support::BrokerProcess, String) {
    let config = data_dir.join("broker.toml");
    std::fs::write(&config, "[groups]\nsession_timeout_ms_min = 100\n").expect("write config");
    tokio::task::block_in_place(|| {
        let mut broker = crate::support::BrokerProcess::start(&[
            "--config",
            config.to_str().expect("utf-8 temp path"),
            "--data-dir",
            data_dir.join("data").to_str().expect("utf-8 temp path"),
            "--listen",
            listen,
            "--metrics-listen",
            "127.0.0.1:0",
        ]);
        let address = crate::harness::client_address(&mut broker).to_string();
        (broker, address)
    })
}

/// Creates `topic` through the client and produces `per_partition` records to each partition.
async fn create_and_fill(addr: &str, topic: &str, partitions: u32, per_partition: u32) {
    let admin = Admin::new(addr, ConnectionConfig::default()).expect("admin");
    admin.create_topic(topic, partitions, BTreeMap::new()).await.expect("create");
    admin.close().await;
    produce(addr, topic, partitions, per_partition, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_broker_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, addr) = start_binary(dir.path(), "127.0.0.1:0");
    create_and_fill(&addr, "durable", 2, 30).await;

    let mut consumers = vec![member(&addr, "durable", CommitMode::None, "durable")];
    let count = RefCell::new(0usize);
    poll_until(
        &mut consumers,
        "some records",
        |_, records| *count.borrow_mut() += records.len(),
        |_| *count.borrow() >= 20,
    )
    .await;
    let mut consumer = consumers.pop().expect("one");
    // Partitions nothing was returned from yet have no commit (and sit at 0).
    let position: BTreeMap<u32, u64> = (0..2)
        .filter_map(|partition| consumer.position("durable", partition).map(|offset| (partition, offset)))
        .filter(|(_, offset)| *offset > 0)
        .collect();
    consumer.commit_async().await.expect("asynchronous commit");
    consumer.commit().await.expect("synchronous commit");
    let before = committed(&addr, "durable").await;
    assert_eq!(before, position, "a commit stores the positions after the records returned");
    assert!(before.values().sum::<u64>() >= 20, "{before:?}");
    drop(consumer);

    tokio::task::block_in_place(|| {
        broker.signal(libc::SIGKILL);
        broker.wait_for_exit();
    });
    let (broker, addr) = start_binary(dir.path(), "127.0.0.1:0");
    assert_eq!(committed(&addr, "durable").await, before, "the committed offsets came back after the crash");
    // A new member resumes exactly there.
    let mut consumers = vec![member(&addr, "durable", CommitMode::None, "durable")];
    let first: RefCell<BTreeMap<u32, u64>> = RefCell::new(BTreeMap::new());
    let note = |_, records: Vec<ConsumerRecord>| {
        for record in records {
            first.borrow_mut().entry(record.partition).or_insert(record.offset);
        }
    };
    let expected: BTreeMap<u32, u64> = (0..2)
        .map(|partition| (partition, before.get(&partition).copied().unwrap_or(0)))
        .filter(|(_, offset)| *offset < 30)
        .collect();
    poll_until(&mut consumers, "records from every unfinished partition", note, |_| {
        first.borrow().len() == expected.len()
    })
    .await;
    assert_eq!(first.into_inner(), expected);
    tokio::task::block_in_place(|| {
        broker.signal(libc::SIGTERM);
        broker.wait_for_exit();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_consumes_as_a_group_and_describes_its_lag() {
    use crate::end_to_end::ferry;
    let broker = start_broker().await;
    broker.create_topic("cli", 2, &[]).await;
    let lines: String = (0..20).map(|line| format!("line {line}\n")).collect();
    ferry(&broker.addr, &["produce", "cli", "--partition", "0"], lines.as_bytes()).await;

    // Commit after printing: a second run of the same group continues where the first stopped.
    let consume = |n: &'static str| ["consume", "cli", "--group", "readers", "--from-beginning", "--max-messages", n];
    let first = ferry(&broker.addr, &consume("12"), b"").await;
    assert_eq!(first.lines().count(), 12);
    let described = ferry(&broker.addr, &["group", "describe", "readers"], b"").await;
    assert!(described.contains("group: readers\tstate: empty"), "{described}");
    assert!(described.contains("\tcli\t0\t-\t12\t20\t8\t"), "committed 12 of 20, lag 8: {described}");
    // Lag in records and in seconds (the age of the next unconsumed record, line 12), refreshed in the background.
    let series = |name: &str| format!("{name}{{group=\"readers\",topic=\"cli\",partition=\"0\"}}");
    let (lag_records, lag_seconds) = (series("ferry_group_lag_records"), series("ferry_group_lag_seconds"));
    crate::harness::eventually("the lag gauges while lagging", || async {
        let text = broker.scrape().await;
        crate::harness::metric(&text, &lag_records) == Some(8.0)
            && crate::harness::metric(&text, &lag_seconds).is_some_and(|seconds| seconds > 0.0)
    })
    .await;
    let second = ferry(&broker.addr, &consume("8"), b"").await;
    let all: Vec<&str> = first.lines().chain(second.lines()).collect();
    let expected: Vec<String> = (0..20).map(|line| format!("line {line}")).collect();
    assert_eq!(all, expected, "every line exactly once across the two runs");
    assert!(ferry(&broker.addr, &["group", "list"], b"").await.contains("readers\tempty\t0\n"));

    // The metrics show the new committed offset, then no lag.
    let committed = series("ferry_group_committed_offset");
    crate::harness::eventually("the committed-offset gauge", || async {
        crate::harness::metric(&broker.scrape().await, &committed) == Some(20.0)
    })
    .await;
    crate::harness::eventually("the lag gauges when caught up", || async {
        let text = broker.scrape().await;
        crate::harness::metric(&text, &lag_records) == Some(0.0)
            && crate::harness::metric(&text, &lag_seconds) == Some(0.0)
    })
    .await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_of_empty_groups_expire_and_those_of_active_groups_stay() {
    let broker = TestBroker::start_with(|config| {
        config.groups.session_timeout_min = Duration::from_millis(100);
        config.groups.offsets_retention = Duration::from_secs(1);
        config.groups.offsets_retention_check_interval = Duration::from_secs(1);
    })
    .await;
    broker.create_topic("raw", 2, &[]).await;
    let connection = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    // "old" commits without membership and stays empty; "live" has a member that keeps heartbeating.
    assert_eq!(raw_commit(&connection, "old", "", -1, 0).await, (0, 0));
    let request = Request::JoinGroup(JoinGroupRequest {
        group_id: "live".to_owned(),
        topics: vec!["raw".to_owned()],
        session_timeout_ms: 10_000,
        ..JoinGroupRequest::default()
    });
    let Response::JoinGroup(joined) = connection.request(request).await.expect("join") else { panic!("join") };
    assert_eq!(raw_commit(&connection, "live", &joined.member_id, joined.generation, 0).await, (0, 0));

    let admin = broker.admin();
    let deadline = Instant::now() + DEADLINE;
    while admin.list_groups().await.expect("list").iter().any(|group| group.group_id == "old") {
        assert!(Instant::now() < deadline, "the empty group's offsets never expired");
        let heartbeat = Request::Heartbeat(HeartbeatRequest {
            group_id: "live".to_owned(),
            member_id: joined.member_id.clone(),
            generation: joined.generation,
            owned: joined.assignment.clone(),
        });
        connection.request(heartbeat).await.expect("heartbeat");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(committed(&broker.addr, "live").await.get(&0), Some(&7), "the active group's offset stays");
    admin.close().await;
    connection.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_consumer_rejoins_after_a_broker_sigkill_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, addr) = start_binary(dir.path(), "127.0.0.1:0");
    create_and_fill(&addr, "restarted", 3, 40).await;

    let mut consumers = vec![member(&addr, "restarted", CommitMode::After, "restarted")];
    let seen: RefCell<BTreeSet<Key>> = RefCell::new(BTreeSet::new());
    let read = |_, records: Vec<ConsumerRecord>| seen.borrow_mut().extend(records.iter().map(key));
    poll_until(&mut consumers, "some records", read, |_| seen.borrow().len() >= 30).await;
    let generation = consumers[0].generation();

    tokio::task::block_in_place(|| {
        broker.signal(libc::SIGKILL);
        broker.wait_for_exit();
    });
    // Same address, so the consumer's connection finds the new broker, which knows no members.
    let (broker, addr) = start_binary(dir.path(), &addr);
    produce(&addr, "restarted", 3, 10, 40).await;
    let mut lost = false;
    let deadline = Instant::now() + DEADLINE;
    // Fetches need no membership: the consumer may read on until its next heartbeat finds it unknown.
    while !(lost && seen.borrow().len() == 150 && assigned_partitions(&consumers[0]).len() == 3) {
        assert!(Instant::now() < deadline, "read {} of 150; lost membership noticed: {lost}", seen.borrow().len());
        read(0, consumers[0].poll(Duration::from_millis(20)).await.expect("poll"));
        lost |= consumers[0].take_events().iter().any(|event| matches!(event, RebalanceEvent::Lost(_)));
    }
    assert!(consumers[0].generation() <= generation, "the restarted broker's group starts its generations again");
    let admin = Admin::new(addr.clone(), ConnectionConfig::default()).expect("admin");
    assert_eq!(admin.describe_group("restarted").await.expect("describe").members.len(), 1);
    admin.close().await;
    for consumer in consumers {
        consumer.close().await;
    }
    tokio::task::block_in_place(|| {
        broker.signal(libc::SIGTERM);
        broker.wait_for_exit();
    });
}
