//! The exactly-once copier, after Kafka's `transactions_test.py`: transactional copiers consume a topic, transform
//! each record and produce it to another topic, committing the input offsets inside each transaction, while the
//! copiers are killed and restarted and the real broker process is SIGKILLed and restarted. At the end the output
//! holds every input record exactly once, and a read-committed consumer reading the output during the whole run
//! never saw a record twice.
//!
//! A copier "kill" aborts its task: its connections drop mid-request and its transaction is left open, as with a
//! SIGKILLed process; the restarted copier (same transactional id) fences it. `FERRY_SLOW_TESTS=1` runs 300k records.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_client::{
    Admin, ClientError, CommitMode, ConnectionConfig, Consumer, ConsumerConfig, GroupConfig, Isolation, OffsetReset,
    Producer, ProducerConfig, ProducerRecord, SeekTo, TransactionalConfig, TransactionalProducer,
};

use crate::chaos::driver::ChaosBroker;
use crate::chaos::read_all;

const INPUT: &str = "copier-input";
const OUTPUT: &str = "copier-output";
const GROUP: &str = "copiers";

fn n_records() -> usize {
    if std::env::var_os("FERRY_SLOW_TESTS").is_some() { 300_000 } else { 30_000 }
}

/// Runs one copier until `stop`; any error other than an abort or a rebalance restarts it with new clients (as a
/// supervisor restarts a crashed process).
async fn copier(addr: String, id: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Err(error) = copy_until_error(&addr, &id, &stop).await {
            eprintln!("copier {id}: {error}; restarting");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn copy_until_error(addr: &str, id: &str, stop: &AtomicBool) -> Result<(), ClientError> {
    let group = GroupConfig {
        commit_mode: CommitMode::None,
        session_timeout: Duration::from_secs(2),
        ..GroupConfig::new(GROUP)
    };
    let config = ConsumerConfig { group: Some(group), offset_reset: OffsetReset::Earliest, ..Default::default() };
    let mut consumer = Consumer::new(addr, config)?;
    consumer.subscribe([INPUT])?;
    let transactional =
        TransactionalConfig { transaction_timeout: Duration::from_secs(5), ..TransactionalConfig::new(id) };
    let mut producer = TransactionalProducer::connect(addr, transactional).await?;
    while !stop.load(Ordering::Relaxed) {
        let records = consumer.poll(Duration::from_millis(200)).await?;
        let Some(group) = consumer.group_metadata() else { continue };
        if records.is_empty() {
            continue;
        }
        let copied: Result<(), ClientError> = async {
            producer.begin()?;
            let mut next_offsets = BTreeMap::new();
            for record in &records {
                let value = record.value.as_deref().unwrap_or_default().to_ascii_uppercase();
                producer.send(ProducerRecord::new(OUTPUT, value)).await?;
                next_offsets.insert((record.topic.to_string(), record.partition), record.offset + 1);
            }
            let offsets: Vec<(String, u32, u64)> =
                next_offsets.into_iter().map(|((topic, partition), offset)| (topic, partition, offset)).collect();
            producer.send_offsets(&group, &offsets).await?;
            producer.commit().await?;
            Ok(())
        }
        .await;
        match copied {
            Ok(()) => {}
            Err(error) if error.is_transaction_aborted() || error.is_group_changed() => {
                producer.abort().await?;
                consumer.rewind(&records);
            }
            Err(error) => return Err(error),
        }
    }
    producer.close().await;
    consumer.close().await;
    Ok(())
}

/// Reads the output with read-committed isolation for the whole run, surviving broker restarts; returns every value
/// read, in read order per partition.
async fn watch(addr: String, partitions: u32, stop: Arc<AtomicBool>) -> BTreeMap<u32, Vec<String>> {
    let mut seen: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let config = ConsumerConfig { isolation: Isolation::ReadCommitted, ..Default::default() };
        let Ok(mut consumer) = Consumer::new(addr.as_str(), config) else { continue };
        consumer.assign(OUTPUT, 0..partitions).expect("assign");
        for partition in 0..partitions {
            let next = seen.get(&partition).map_or(0, |values| values.len() as u64);
            consumer.seek(OUTPUT, partition, SeekTo::Offset(next)).expect("seek");
        }
        while !stop.load(Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(200)).await {
                Ok(records) => {
                    for record in records {
                        let values = seen.entry(record.partition).or_default();
                        assert_eq!(record.offset, values.len() as u64, "offsets are dense and read in order");
                        values.push(String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned());
                    }
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
            }
        }
    }
    seen
}

async fn output_len(addr: &str) -> Option<u64> {
    let admin = Admin::new(addr, ConnectionConfig::default()).ok()?;
    let info = admin.describe_topic(OUTPUT).await.ok();
    admin.close().await;
    Some(info?.partitions.iter().map(|partition| partition.end_offset - partition.start_offset).sum())
}

async fn run(input_partitions: u32, output_partitions: u32, copiers: usize) {
    let n = n_records();
    let mut broker = ChaosBroker::start();
    let addr = broker.addr().to_string();
    let admin = Admin::new(addr.as_str(), ConnectionConfig::default()).expect("admin");
    admin.create_topic(INPUT, input_partitions, Default::default()).await.expect("input topic");
    admin.create_topic(OUTPUT, output_partitions, Default::default()).await.expect("output topic");
    admin.close().await;
    let producer = Producer::new(addr.clone(), ProducerConfig::default()).expect("producer");
    let mut deliveries = Vec::with_capacity(n);
    for idx in 0..n {
        let record = ProducerRecord::new(INPUT, format!("v{idx:07}")).with_partition(idx as u32 % input_partitions);
        deliveries.push(producer.send(record).await.expect("accepted"));
    }
    for delivery in deliveries {
        delivery.await.expect("input delivered");
    }
    producer.close().await.expect("close producer");

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch(addr.clone(), output_partitions, Arc::clone(&stop)));
    let spawn_copier = |idx: usize| {
        let copier_stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(copier(addr.clone(), format!("copier-{idx}"), Arc::clone(&copier_stop)));
        (task, copier_stop)
    };
    let mut running: Vec<_> = (0..copiers).map(spawn_copier).collect();
    let (mut copier_kills, mut broker_kills) = (0, 0);
    // Eight rounds, each once the output holds another ninth of the input (so every kill lands mid-copy): copiers
    // killed in rounds 0, 3, 6; the broker SIGKILLed in rounds 1, 2, 4, 5, 7.
    let mut mid_copy = 0;
    for round in 0..8 {
        let mark = (n * (round + 1) / 9) as u64;
        let deadline = Instant::now() + Duration::from_secs(120);
        let copied = loop {
            match output_len(&addr).await {
                Some(copied) if copied >= mark => break copied,
                _ => assert!(Instant::now() < deadline, "the copiers reached {mark} records in time"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if copied < n as u64 {
            mid_copy += 1;
        }
        if round % 3 == 0 {
            let idx = round % copiers;
            running[idx].0.abort();
            running[idx] = spawn_copier(idx);
            copier_kills += 1;
        } else {
            tokio::task::block_in_place(|| {
                broker.kill();
                broker.restart();
            });
            broker_kills += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(if n > 100_000 { 900 } else { 240 });
    while output_len(&addr).await != Some(n as u64) {
        assert!(Instant::now() < deadline, "the copiers copied {:?} of {n} records in time", output_len(&addr).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let copy_time = started.elapsed();
    assert!(mid_copy >= 6, "at least 6 of the 8 kills came while records were still being copied ({mid_copy})");
    stop.store(true, Ordering::Relaxed);
    for (task, copier_stop) in running {
        copier_stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    let watched = watcher.await.expect("the watcher finished");

    // Exactly once in the output, and only transformed input.
    let reads = read_all(&addr, OUTPUT, output_partitions, Duration::from_secs(60)).await;
    let mut copies: HashMap<&str, usize> = HashMap::with_capacity(n);
    for read in &reads {
        *copies.entry(read.value.as_str()).or_default() += 1;
    }
    let duplicated = copies.values().filter(|&&count| count > 1).count();
    assert_eq!(duplicated, 0, "values copied more than once");
    for idx in 0..n {
        assert_eq!(copies.get(format!("V{idx:07}").as_str()), Some(&1), "input {idx} copied exactly once");
    }
    assert_eq!(reads.len(), n, "nothing but the copies");
    // The concurrent read-committed reader saw no duplicate either, and only what is in the log.
    let mut watched_copies: HashMap<&str, usize> = HashMap::new();
    for value in watched.values().flatten() {
        *watched_copies.entry(value.as_str()).or_default() += 1;
    }
    assert!(watched_copies.values().all(|&count| count == 1), "the watcher saw a record twice");
    assert!(watched_copies.keys().all(|value| copies.contains_key(value)), "the watcher saw a record not in the log");
    if input_partitions == 1 && output_partitions == 1 {
        let expected: Vec<String> = (0..n).map(|idx| format!("V{idx:07}")).collect();
        let values: Vec<&str> = reads.iter().map(|read| read.value.as_str()).collect();
        assert_eq!(values, expected, "one partition in, one out: the output keeps the input's order");
    }
    eprintln!(
        "copier run: {n} records, {input_partitions} -> {output_partitions} partitions, {copiers} copiers, \
         {copier_kills} copier kills, {broker_kills} broker SIGKILLs ({mid_copy} of them mid-copy), copied in {:.1} s, watcher read {} records",
        copy_time.as_secs_f64(),
        watched_copies.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copiers_copy_every_record_exactly_once_through_copier_kills_and_broker_sigkills() {
    run(2, 3, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_partition_copiers_keep_the_input_order() {
    run(1, 1, 3).await;
}
