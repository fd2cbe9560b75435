//! Corruption of the metadata store (RocksDB, `DATA_DIR/meta/`) under the real binary: seeded bit flips, zeroed
//! 4 KiB pages and truncations of its files (tables, manifest, write-ahead log, `CURRENT`, options), after a clean
//! stop and after a SIGKILL. Each case ends in one of the two documented outcomes, never a panic and never a
//! silent loss:
//!
//! - **refused**: the broker exits with status 1 and one line, `ferry-broker: error: ...`, naming the metadata
//!   store; every file is kept for inspection;
//! - **served**: the damage is in a part RocksDB verified as not needed (an info log, a stale options file, bytes
//!   past the synced end of the log): the broker starts and serves every topic and every acknowledged record.
//!
//! 60 cases by default, 600 with `FERRY_SLOW_TESTS=1`; `FERRY_CHAOS_SEED` replays a run.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_client::{Admin, ConnectionConfig, Producer, ProducerConfig, ProducerRecord};

use crate::chaos::read_all;
use crate::chaos::rng::{Rng, seed_from_env, slow_tests};
use crate::harness::{client_address, listening_address};
use crate::support::BrokerProcess;

const TOPICS: [&str; 3] = ["orders", "payments", "audit"];
const PARTITIONS: u32 = 2;
const VALUES_PER_TOPIC: usize = 300;

/// A damaged metadata store's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Refused,
    Served,
}

/// How a case damages a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mutation {
    FlipBit,
    ZeroPage,
    Truncate,
}

/// Builds a data directory with three topics of acknowledged records, producer ids and a consumer group's offsets,
/// stopped with `signal`. Returns the values written, per topic.
async fn build(data_dir: &Path, signal: libc::c_int) -> BTreeMap<&'static str, Vec<String>> {
    let mut broker = tokio::task::block_in_place(|| BrokerProcess::start_on(data_dir));
    let addr = tokio::task::block_in_place(|| client_address(&mut broker)).to_string();
    let admin = Admin::new(addr.clone(), ConnectionConfig::default()).expect("admin");
    let mut written = BTreeMap::new();
    for topic in TOPICS {
        admin.create_topic(topic, PARTITIONS, Default::default()).await.expect("create a topic");
        let producer = Producer::new(addr.clone(), ProducerConfig::default()).expect("producer");
        let mut deliveries = Vec::new();
        let values: Vec<String> = (0..VALUES_PER_TOPIC).map(|idx| format!("{topic}-{idx:05}")).collect();
        for value in &values {
            deliveries.push(producer.send(ProducerRecord::new(topic, value.clone())).await.expect("send"));
        }
        for delivery in deliveries {
            delivery.await.expect("acknowledged");
        }
        producer.close().await.expect("close");
        written.insert(topic, values);
    }
    admin.close().await;
    tokio::task::block_in_place(|| {
        broker.signal(signal);
        broker.wait_for_exit();
    });
    written
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// The metadata store's files worth damaging (not the `LOCK` file, which holds no data), sorted.
fn meta_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join("meta"))
        .expect("the metadata store's directory")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.file_name().is_some_and(|name| name != "LOCK") && path.is_file())
        .filter(|path| std::fs::metadata(path).is_ok_and(|meta| meta.len() > 0))
        .collect();
    files.sort();
    files
}

/// Damages `path` with `mutation` at a seeded place; returns a description.
fn damage(path: &Path, mutation: Mutation, rng: &mut Rng) -> String {
    let mut bytes = std::fs::read(path).expect("read the file");
    let len = bytes.len() as u64;
    let at = rng.below(len);
    let name = path.file_name().expect("a name").to_string_lossy().into_owned();
    match mutation {
        Mutation::FlipBit => {
            let bit = rng.below(8);
            bytes[at as usize] ^= 1 << bit;
            std::fs::write(path, &bytes).expect("write the file");
            format!("{name}: bit {bit} of byte {at} of {len} flipped")
        }
        Mutation::ZeroPage => {
            let start = (at / 4096 * 4096) as usize;
            let end = (start + 4096).min(bytes.len());
            bytes[start..end].fill(0);
            std::fs::write(path, &bytes).expect("write the file");
            format!("{name}: bytes {start}..{end} of {len} zeroed")
        }
        Mutation::Truncate => {
            std::fs::OpenOptions::new().write(true).open(path).and_then(|file| file.set_len(at)).expect("truncate");
            format!("{name}: truncated from {len} to {at} bytes")
        }
    }
}

/// Starts the broker on a damaged copy and judges the outcome; panics (with the case) on anything undocumented.
async fn judge(data_dir: &Path, written: &BTreeMap<&'static str, Vec<String>>, case: &str) -> Outcome {
    let mut broker = tokio::task::block_in_place(|| BrokerProcess::start_on(data_dir));
    let started = tokio::task::block_in_place(|| broker.wait_until_started_or_exit());
    if !started {
        let (status, log) = tokio::task::block_in_place(|| broker.wait_for_exit());
        assert!(!log.iter().any(|line| line.contains("panic")), "{case}: a panic: {log:#?}");
        assert_eq!(status.code(), Some(1), "{case}: exit status 1; log: {log:#?}");
        let error = log.iter().find(|line| line.starts_with("ferry-broker: error: "));
        assert!(
            error.is_some_and(|line| line.contains("metadata store")),
            "{case}: one error line naming the metadata store; log: {log:#?}"
        );
        return Outcome::Refused;
    }
    let addr = listening_address(&broker.log).to_string();
    let admin = Admin::new(addr.clone(), ConnectionConfig::default()).expect("admin");
    let mut listed: Vec<String> = admin.list_topics().await.expect("list topics").into_iter().map(|t| t.name).collect();
    listed.sort();
    let mut expected: Vec<String> = written.keys().map(|topic| (*topic).to_owned()).collect();
    expected.sort();
    assert_eq!(listed, expected, "{case}: every topic served");
    admin.close().await;
    // New writes after the damage: a new producer (a new producer id, which must not collide with one the logs
    // hold, or its records would be dropped as duplicates) writes to every topic.
    let producer = Producer::new(addr.clone(), ProducerConfig::default()).expect("producer");
    let mut deliveries = Vec::new();
    for topic in written.keys() {
        for idx in 0..10 {
            let record = ProducerRecord::new(*topic, format!("{topic}-after-{idx:02}"));
            deliveries.push(producer.send(record).await.expect("send"));
        }
    }
    for delivery in deliveries {
        let metadata = delivery.await.unwrap_or_else(|error| panic!("{case}: a write after the damage: {error}"));
        assert!(!metadata.duplicate, "{case}: a new record taken for a duplicate at {:?}", metadata.offset);
    }
    producer.close().await.expect("close");
    for (topic, values) in written {
        let mut read: Vec<String> =
            read_all(&addr, topic, PARTITIONS, Duration::from_secs(30)).await.into_iter().map(|r| r.value).collect();
        read.sort();
        let mut expected = values.clone();
        expected.extend((0..10).map(|idx| format!("{topic}-after-{idx:02}")));
        expected.sort();
        assert_eq!(read, expected, "{case}: every acknowledged record of {topic}, once");
    }
    let (_, log) = tokio::task::block_in_place(|| {
        broker.signal(libc::SIGTERM);
        broker.wait_for_exit()
    });
    assert!(!log.iter().any(|line| line.contains("panic")), "{case}: a panic: {log:#?}");
    Outcome::Served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_metadata_store_is_refused_with_a_clear_error_or_served_whole_never_a_panic() {
    let seed = seed_from_env();
    let mut rng = Rng::new(seed);
    let cases = if slow_tests() { 600 } else { 60 };
    let _ = writeln!(std::io::stderr(), "metadata store corruption: FERRY_CHAOS_SEED={seed}, {cases} cases");
    let mut outcomes: BTreeMap<(String, Mutation, Outcome), usize> = BTreeMap::new();
    for (stop, signal) in [("clean stop", libc::SIGTERM), ("SIGKILL", libc::SIGKILL)] {
        let base = tempfile::tempdir().expect("tempdir");
        let written = build(base.path(), signal).await;
        let files = meta_files(base.path());
        assert!(files.len() >= 4, "the metadata store has files to damage: {files:?}");
        for case_idx in 0..cases / 2 {
            let copy = tempfile::tempdir().expect("tempdir");
            copy_dir(base.path(), copy.path());
            let file = &files[rng.below(files.len() as u64) as usize];
            let file = copy.path().join("meta").join(file.file_name().expect("a name"));
            let mutation = [Mutation::FlipBit, Mutation::ZeroPage, Mutation::Truncate][rng.below(3) as usize];
            let what = damage(&file, mutation, &mut rng);
            let case = format!("seed {seed}, {stop}, case {case_idx}: {what}");
            if std::env::var_os("FERRY_VERBOSE").is_some() {
                let _ = writeln!(std::io::stderr(), "{case}");
            }
            let outcome = judge(copy.path(), &written, &case).await;
            // Group file kinds: `000012.log` → `log`, `MANIFEST-000005` → `MANIFEST`.
            let name = file.file_name().expect("a name").to_string_lossy().into_owned();
            let kind = name.rsplit_once('.').map_or_else(
                || name.split('-').next().unwrap_or_default().to_owned(),
                |(_, extension)| extension.to_owned(),
            );
            *outcomes.entry((kind, mutation, outcome)).or_default() += 1;
        }
    }
    let _ = writeln!(std::io::stderr(), "metadata store corruption (FERRY_CHAOS_SEED={seed}), {cases} cases:");
    for ((kind, mutation, outcome), count) in &outcomes {
        let _ = writeln!(std::io::stderr(), "  {kind:>10} {mutation:?}: {outcome:?} x{count}");
    }
    assert_eq!(outcomes.values().sum::<usize>(), cases);
}

/// The case RocksDB cannot see: a store that lost a suffix of its history (here all of it: an operator restored an
/// empty or older `meta/`). The partition logs still hold the topics' records, so the broker refuses to start
/// instead of serving an empty broker and later reusing the topics' ids; an empty leftover of a rolled-back topic
/// creation (an id the store assigned, no records) is only a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_store_behind_the_partition_logs_is_refused_not_served_empty() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    build(data_dir.path(), libc::SIGTERM).await;
    let logs = data_dir.path().join("logs");
    let mut topic_dirs: Vec<_> =
        std::fs::read_dir(&logs).expect("logs/").map(|entry| entry.expect("entry").file_name()).collect();
    topic_dirs.sort();
    assert_eq!(topic_dirs.len(), TOPICS.len());
    // An empty leftover with an assigned id is tolerated.
    let leftover = logs.join("00000000000000000002-rolled-back");
    std::fs::create_dir_all(leftover.join("00000")).expect("create a leftover");
    std::fs::write(leftover.join("00000/00000000000000000000.log"), b"").expect("an empty segment");
    let mut broker = tokio::task::block_in_place(|| BrokerProcess::start_on(data_dir.path()));
    assert!(tokio::task::block_in_place(|| broker.wait_until_started_or_exit()), "{:#?}", broker.log);
    let (_, log) = tokio::task::block_in_place(|| {
        broker.signal(libc::SIGTERM);
        broker.wait_for_exit()
    });
    assert!(log.iter().any(|line| line.contains("belongs to no known topic")), "{log:#?}");

    std::fs::remove_dir_all(data_dir.path().join("meta")).expect("lose the metadata store");
    let broker = tokio::task::block_in_place(|| BrokerProcess::start_on(data_dir.path()));
    let (status, log) = tokio::task::block_in_place(|| broker.wait_for_exit());
    assert_eq!(status.code(), Some(1), "{log:#?}");
    let error = log.iter().find(|line| line.starts_with("ferry-broker: error: ")).expect("an error line");
    assert!(error.contains("the metadata store is behind the partition logs"), "{error}");
    assert!(
        topic_dirs.iter().any(|dir| error.contains(&format!("logs/{}", dir.to_string_lossy()))),
        "names a topic directory: {error}"
    );
    // Nothing was touched: the logs are all there.
    assert_eq!(std::fs::read_dir(&logs).expect("logs/").count(), TOPICS.len() + 1);
}

/// An operator restores `meta/` from a copy taken before producers wrote (the logs are newer): the store knows
/// every topic but would issue the producers' ids again, and a new producer's records would be dropped as the
/// old one's duplicates. The producer ids in the logs give it away: the broker refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_store_older_than_the_producer_ids_in_the_logs_is_refused() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut broker = tokio::task::block_in_place(|| BrokerProcess::start_on(data_dir.path()));
    let addr = tokio::task::block_in_place(|| client_address(&mut broker)).to_string();
    let admin = Admin::new(addr.clone(), ConnectionConfig::default()).expect("admin");
    admin.create_topic(TOPICS[0], PARTITIONS, Default::default()).await.expect("create a topic");
    admin.close().await;
    tokio::task::block_in_place(|| {
        broker.signal(libc::SIGTERM);
        broker.wait_for_exit();
    });
    let older = tempfile::tempdir().expect("tempdir");
    copy_dir(&data_dir.path().join("meta"), older.path());

    let mut broker = tokio::task::block_in_place(|| BrokerProcess::start_on(data_dir.path()));
    let addr = tokio::task::block_in_place(|| client_address(&mut broker)).to_string();
    let producer = Producer::new(addr, ProducerConfig::default()).expect("producer");
    producer.send(ProducerRecord::new(TOPICS[0], "from producer id 1")).await.expect("send").await.expect("acked");
    producer.close().await.expect("close");
    tokio::task::block_in_place(|| {
        broker.signal(libc::SIGTERM);
        broker.wait_for_exit();
    });

    std::fs::remove_dir_all(data_dir.path().join("meta")).expect("remove meta/");
    copy_dir(older.path(), &data_dir.path().join("meta"));
    let broker = tokio::task::block_in_place(|| BrokerProcess::start_on(data_dir.path()));
    let (status, log) = tokio::task::block_in_place(|| broker.wait_for_exit());
    assert_eq!(status.code(), Some(1), "{log:#?}");
    let error = log.iter().find(|line| line.starts_with("ferry-broker: error: ")).expect("an error line");
    assert!(error.contains("the metadata store is behind the partition logs"), "{error}");
    assert!(error.contains("producer id 1 wrote to it, but the store's next producer id is 1"), "{error}");
}
