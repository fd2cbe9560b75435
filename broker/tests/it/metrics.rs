//! The `/metrics` exposition after a scripted workload: parsed whole with a Prometheus text-format parser, every
//! family described, and the value of each family the workload touches checked (not just its presence).
//!
//! Metrics are process-wide and tests run in parallel, so the checks use this test's own topic and group labels
//! for exact values, and lower bounds for the broker-wide families.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_client::{
    CommitMode, Connection, ConnectionConfig, Consumer, ConsumerConfig, GroupConfig, OffsetReset, Producer,
    ProducerConfig, ProducerRecord,
};
use ferry_protocol::ErrorCode;
use prometheus_parse::{Scrape, Value};

use crate::harness::{TestBroker, eventually};
use crate::idempotence::{code, init, produce, stamped};

const TOPIC: &str = "metrics-workload";

/// Label pairs a sample must carry.
type Labels<'a> = Vec<(&'a str, &'a str)>;
const GROUP: &str = "metrics-group";

/// The value of the sample of `name` whose labels include all of `labels`; histograms give their count.
fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .filter(|sample| labels.iter().all(|(key, value)| sample.labels.get(key) == Some(*value)))
        .map(|sample| match &sample.value {
            Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value) => *value,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |bucket| bucket.count),
            Value::Summary(_) => f64::NAN,
        })
        .reduce(|a, b| a + b)
}

async fn scrape(broker: &TestBroker) -> Scrape {
    let text = broker.scrape().await;
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("the exposition parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_workload_every_family_is_described_and_holds_the_expected_value() {
    let broker = TestBroker::start().await;
    broker.create_topic(TOPIC, 2, &[]).await;

    // 100 records through the idempotent producer, 50 per partition.
    let producer = Producer::new(broker.addr.clone(), ProducerConfig::default()).expect("producer");
    let mut deliveries = Vec::new();
    for idx in 0..100u32 {
        let record = ProducerRecord::new(TOPIC, format!("value {idx}")).with_partition(idx % 2);
        deliveries.push(producer.send(record).await.expect("accepted"));
    }
    for delivery in deliveries {
        delivery.await.expect("acknowledged");
    }
    producer.close().await.expect("closed");

    // A retried batch (dropped as a duplicate) and a gap (refused), by hand.
    let connection = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    let (id, epoch) = init(&connection).await;
    let topic_produce = |records| produce(&connection, TOPIC, records);
    assert_eq!(topic_produce(stamped(id, epoch, 0, &["a", "b"])).await.error_code, 0);
    assert!(topic_produce(stamped(id, epoch, 0, &["a", "b"])).await.duplicate);
    assert_eq!(code(&topic_produce(stamped(id, epoch, 9, &["x"])).await), Some(ErrorCode::OutOfOrderSequence));
    drop(connection);

    // A group reads everything and commits.
    let config = ConsumerConfig {
        fetch_wait_max: Duration::from_millis(50),
        offset_reset: OffsetReset::Earliest,
        group: Some(GroupConfig { commit_mode: CommitMode::After, ..GroupConfig::new(GROUP) }),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(broker.addr.clone(), config).expect("consumer");
    consumer.subscribe([TOPIC]).expect("subscribe");
    let mut n_read = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while n_read < 102 {
        assert!(tokio::time::Instant::now() < deadline, "read {n_read} of 102 records");
        n_read += consumer.poll(Duration::from_millis(200)).await.expect("poll").len();
    }
    consumer.commit().await.expect("commit");

    let topic = ("topic", TOPIC);
    let group = ("group", GROUP);
    // Lag is refreshed in the background: wait for the group's lag to reach 0 on both partitions.
    eventually("the group's lag to be published as 0", || async {
        let scrape = scrape(&broker).await;
        (0..2).all(|partition| {
            let partition = partition.to_string();
            sample(&scrape, "ferry_group_lag_records", &[group, topic, ("partition", &partition)]) == Some(0.0)
        })
    })
    .await;
    let scrape = scrape(&broker).await;

    // Every family that has samples is described (HELP) and typed.
    let families: std::collections::BTreeSet<&str> = scrape
        .samples
        .iter()
        .map(|sample| {
            let name = sample.metric.as_str();
            ["_bucket", "_sum", "_count"].iter().find_map(|suffix| name.strip_suffix(suffix)).unwrap_or(name)
        })
        .collect();
    for family in &families {
        let described =
            scrape.docs.contains_key(*family) || scrape.docs.keys().any(|doc| family.starts_with(doc.as_str()));
        assert!(described, "{family} has no HELP line");
    }

    // Exact values for this test's labels.
    let exact: BTreeMap<&str, (f64, Labels)> = BTreeMap::from([
        ("ferry_produce_records_total", (102.0, vec![topic])),
        ("ferry_duplicates_dropped_total", (1.0, vec![topic, ("reason", "sequence")])),
        ("ferry_producer_rejections_total", (1.0, vec![topic, ("reason", "OUT_OF_ORDER_SEQUENCE")])),
        ("ferry_log_end_offset", (102.0, vec![topic])),
        ("ferry_group_committed_offset", (102.0, vec![group, topic])),
        ("ferry_group_lag_seconds", (0.0, vec![group, topic])),
    ]);
    for (name, (expected, labels)) in &exact {
        assert_eq!(sample(&scrape, name, labels), Some(*expected), "{name} {labels:?}");
    }
    let at_least = |name: &str, labels: &[(&str, &str)], min: f64| {
        let value = sample(&scrape, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} is missing"));
        assert!(value >= min, "{name} {labels:?} = {value}, expected at least {min}");
    };
    at_least("ferry_fetch_records_total", &[topic], 102.0);
    at_least("ferry_produce_bytes_total", &[topic], 102.0 * 7.0);
    at_least("ferry_log_size_bytes", &[topic], 102.0 * 7.0);
    at_least("ferry_requests_total", &[("api", "produce"), ("result", "ok")], 1.0);
    at_least("ferry_requests_total", &[("api", "init_producer_id"), ("result", "ok")], 2.0);
    at_least("ferry_request_duration_seconds", &[("api", "produce")], 1.0);
    at_least("ferry_log_fsync_duration_seconds", &[], 1.0);
    at_least("ferry_log_appended_batches_total", &[], 2.0);
    at_least("ferry_producer_ids_active", &[], 1.0);
    at_least("ferry_build_info", &[], 1.0);
    assert_eq!(sample(&scrape, "ferry_log_damaged_partitions", &[]).unwrap_or(0.0), 0.0);
    consumer.close().await;
    broker.stop().await;
}
