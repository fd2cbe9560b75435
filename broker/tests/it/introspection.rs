//! Operator introspection against a real broker: `/health` and `/ready` over HTTP, DescribeBroker and
//! DescribeProducers through the client library and the `ferry` CLI (`broker info`, `producers`, `topic describe`
//! with sizes and damage, `group describe` with lag in seconds), and a damaged partition as each of them reports it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_broker::Broker;
use ferry_client::{Producer, ProducerConfig, ProducerRecord};
use serde_json::Value;

use crate::end_to_end::ferry;
use crate::harness::{TestBroker, config_for, http};

/// Sends `values` to partition 0 of `topic`, one batch each (each send is acknowledged before the next).
async fn produce_batches(addr: &str, topic: &str, values: &[&str]) -> i64 {
    let producer = Producer::new(addr, ProducerConfig::default()).expect("producer");
    for value in values {
        let record = ProducerRecord::new(topic, (*value).to_owned()).with_partition(0);
        producer.send(record).await.expect("accepted").await.expect("acknowledged");
    }
    producer.close().await.expect("closed");
    let admin = ferry_client::Admin::new(addr.to_owned(), ferry_client::ConnectionConfig::default()).expect("admin");
    let partitions = admin.describe_producers(topic).await.expect("described");
    admin.close().await;
    partitions[0].producers.last().expect("a producer").producer_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_answer_once_the_broker_serves_and_other_paths_are_not_found() {
    let broker = TestBroker::start().await;
    assert_eq!(http(broker.metrics, "/health").await, ("HTTP/1.1 200 OK".to_owned(), "ok\n".to_owned()));
    assert_eq!(http(broker.metrics, "/ready").await, ("HTTP/1.1 200 OK".to_owned(), "ready\n".to_owned()));
    let (status, _) = http(broker.metrics, "/nope").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(broker.broker().readiness().check().is_ok());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_broker_reports_version_config_usage_and_partition_states() {
    let broker = TestBroker::start().await;
    broker.create_topic("info", 3, &[]).await;
    let admin = broker.admin();
    let before = admin.describe_broker().await.expect("described");
    produce_batches(&broker.addr, "info", &["x".repeat(10_000).as_str()]).await;
    let info = admin.describe_broker().await.expect("described");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.data_dir, broker.data_dir.path().display().to_string());
    assert!(
        info.data_dir_bytes >= before.data_dir_bytes + 10_000,
        "{} then {}",
        before.data_dir_bytes,
        info.data_dir_bytes
    );
    assert_eq!((info.topics, info.partitions_healthy, info.partitions_damaged, info.partitions_failed), (1, 3, 0, 0));
    assert!(info.connections_open >= 1, "this admin connection at least");
    assert_eq!(info.config.get("fsync").map(String::as_str), Some("always"));
    assert!(info.config.contains_key("log.segment_bytes"), "{:?}", info.config);
    admin.close().await;

    let text = ferry(&broker.addr, &["broker", "info"], b"").await;
    assert!(text.starts_with(&format!("version: {}\n", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains("partitions: 3 healthy, 0 damaged, 0 failed\n"), "{text}");
    assert!(text.contains("\tfsync\talways\n"), "{text}");
    let json: Value = serde_json::from_str(&ferry(&broker.addr, &["--json", "broker", "info"], b"").await)
        .expect("one JSON document");
    assert_eq!(json["partitions"]["healthy"], 3);
    assert_eq!(json["config"]["fsync"], "always");
    assert!(json["data_dir_bytes"].as_u64().is_some_and(|bytes| bytes >= 10_000), "{json}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_producers_lists_each_idempotent_producers_last_sequence() {
    let broker = TestBroker::start().await;
    broker.create_topic("dedup-state", 2, &[]).await;
    let producer_id = produce_batches(&broker.addr, "dedup-state", &["a", "b", "c"]).await;
    let before_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();

    let admin = broker.admin();
    let partitions = admin.describe_producers("dedup-state").await.expect("described");
    assert_eq!(partitions.len(), 2);
    let producers = &partitions[0].producers;
    assert_eq!(producers.len(), 1, "{partitions:?}");
    assert_eq!((producers[0].producer_id, producers[0].epoch, producers[0].last_sequence), (producer_id, 0, 2));
    assert_eq!(producers[0].last_offset, 2);
    let last_write_ms = u128::try_from(producers[0].last_write_ms).expect("after 1970");
    assert!(last_write_ms <= before_ms && before_ms - last_write_ms < 60_000, "{last_write_ms} vs {before_ms}");
    assert_eq!((partitions[0].producer_count, partitions[0].truncated), (1, false));
    assert!(partitions[1].producers.is_empty() && partitions[1].producer_count == 0);
    let error = admin.describe_producers("no-such-topic").await.expect_err("unknown topic");
    assert_eq!(error.error_code(), Some(ferry_protocol::ErrorCode::UnknownTopicOrPartition));
    admin.close().await;

    let text = ferry(&broker.addr, &["producers", "dedup-state"], b"").await;
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("PARTITION\tPRODUCER_ID\tEPOCH\tLAST_SEQUENCE\tLAST_OFFSET\tLAST_WRITE_MS"));
    assert!(lines.next().is_some_and(|line| line.starts_with(&format!("0\t{producer_id}\t0\t2\t2\t"))), "{text}");
    assert_eq!(lines.next(), None, "{text}");
    let json: Value = serde_json::from_str(&ferry(&broker.addr, &["producers", "dedup-state", "--json"], b"").await)
        .expect("one JSON document");
    assert_eq!(json[0]["producers"][0]["producer_id"], producer_id);
    assert_eq!(json[0]["producers"][0]["last_sequence"], 2);
    assert_eq!(json[1]["producers"].as_array().map(Vec::len), Some(0));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_describe_shows_size_segments_fsync_and_grows_with_produce() {
    let broker = TestBroker::start().await;
    broker.create_topic("sized", 2, &[("fsync", "interval:100")]).await;
    let admin = broker.admin();
    let empty = admin.describe_topic("sized").await.expect("described");
    assert_eq!((empty.partitions[0].size_bytes, empty.partitions[0].segment_count), (0, 1));
    assert_eq!(empty.partitions[0].fsync, "interval:100");
    produce_batches(&broker.addr, "sized", &["one", "two"]).await;
    let grown = admin.describe_topic("sized").await.expect("described");
    assert!(grown.partitions[0].size_bytes > 0, "{grown:?}");
    assert_eq!((grown.partitions[0].start_offset, grown.partitions[0].end_offset), (0, 2));
    assert_eq!(grown.partitions[1].size_bytes, 0);
    admin.close().await;

    let text = ferry(&broker.addr, &["topic", "describe", "sized"], b"").await;
    let size = grown.partitions[0].size_bytes;
    assert!(
        text.contains(&format!(
            "\tpartition: 0\tstart: 0\tend: 2\tdamaged: false\tsize: {size}\tsegments: 1\tfsync: interval:100\n"
        )),
        "{text}"
    );
    let json: Value = serde_json::from_str(&ferry(&broker.addr, &["--json", "topic", "describe", "sized"], b"").await)
        .expect("one JSON document");
    assert_eq!(json["partitions"][0]["size_bytes"], size);
    assert_eq!(json["partitions"][0]["damaged"], false);
    assert_eq!(json["config"]["fsync"], "interval:100");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_describe_shows_lag_in_records_and_seconds() {
    let broker = TestBroker::start().await;
    broker.create_topic("lagging", 1, &[]).await;
    let lines: String = (0..10).map(|line| format!("line {line}\n")).collect();
    ferry(&broker.addr, &["produce", "lagging", "--partition", "0"], lines.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let consume = ["consume", "lagging", "--group", "slow", "--from-beginning", "--max-messages", "4"];
    assert_eq!(ferry(&broker.addr, &consume, b"").await.lines().count(), 4);

    let group = broker.admin().describe_group("slow").await.expect("described");
    let partition = &group.partitions[0];
    assert_eq!((partition.committed, partition.end_offset, partition.lag), (Some(4), 10, Some(6)));
    let lag_time = partition.lag_time.expect("a committed offset has a lag in time");
    assert!(lag_time >= Duration::from_secs(1) && lag_time < Duration::from_secs(120), "{lag_time:?}");

    let text = ferry(&broker.addr, &["group", "describe", "slow"], b"").await;
    assert!(text.contains("\tTOPIC\tPARTITION\tMEMBER\tCOMMITTED\tEND\tLAG\tLAG_SECONDS\n"), "{text}");
    assert!(text.contains("\tlagging\t0\t-\t4\t10\t6\t"), "{text}");
    let json: Value = serde_json::from_str(&ferry(&broker.addr, &["--json", "group", "describe", "slow"], b"").await)
        .expect("one JSON document");
    assert_eq!(json["partitions"][0]["lag_records"], 6);
    assert!(json["partitions"][0]["lag_seconds"].as_f64().is_some_and(|seconds| seconds >= 1.0), "{json}");
    let txns: Value =
        serde_json::from_str(&ferry(&broker.addr, &["--json", "txn", "list"], b"").await).expect("one JSON document");
    assert_eq!(txns, Value::Array(Vec::new()));
    broker.stop().await;
}

/// The segment files of partition 0 of the only topic under `data_dir`.
fn segment_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![data_dir.join(ferry_broker::partitions::LOGS_DIR)];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|extension| extension == "log") {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_partition_makes_ready_503_and_shows_in_describe_and_broker_info() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let config = config_for(data_dir.path());
    let broker = Broker::open(config.clone()).await.expect("starts");
    let addr = broker.address().to_string();
    let admin = ferry_client::Admin::new(addr.clone(), ferry_client::ConnectionConfig::default()).expect("admin");
    admin.create_topic("fragile", 1, std::collections::BTreeMap::new()).await.expect("created");
    admin.close().await;
    produce_batches(&addr, "fragile", &["first", "second", "third"]).await;
    broker.shutdown().await.expect("clean shutdown");

    // Flip a byte inside the first batch's records: below the durable end, so recovery marks the partition damaged.
    let segments = segment_files(data_dir.path());
    assert_eq!(segments.len(), 1, "{segments:?}");
    let mut bytes = std::fs::read(&segments[0]).expect("read segment");
    // The batch header is 59 bytes (protocol/src/batch.rs), then the records: byte 60 is in the first record.
    let first_batch_len = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
    assert!(first_batch_len > 61 && bytes.len() > 3 * 61, "three batches of one record: {first_batch_len}");
    bytes[60] ^= 0x40;
    std::fs::write(&segments[0], &bytes).expect("write segment");

    let broker = Broker::open(config).await.expect("a damaged partition does not stop the broker");
    let (status, body) = http(broker.metrics_address(), "/ready").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 503 Service Unavailable", "not ready: partition fragile/0 is damaged\n")
    );
    assert_eq!(http(broker.metrics_address(), "/health").await.0, "HTTP/1.1 200 OK", "alive all the same");

    let addr = broker.address().to_string();
    let admin = ferry_client::Admin::new(addr.clone(), ferry_client::ConnectionConfig::default()).expect("admin");
    let topic = admin.describe_topic("fragile").await.expect("described");
    assert!(topic.partitions[0].damaged, "{topic:?}");
    let info = admin.describe_broker().await.expect("described");
    assert_eq!((info.partitions_healthy, info.partitions_damaged), (0, 1));
    admin.close().await;
    let text = ferry(&addr, &["topic", "describe", "fragile"], b"").await;
    assert!(text.contains("\tpartition: 0\tstart: 0\tend: 0\tdamaged: true\t"), "{text}");
    assert!(text.contains("\terror: PARTITION_DAMAGED "), "{text}");
    broker.shutdown().await.expect("clean shutdown");
}
