//! End-to-end tests through the real client library and CLI against an in-process broker over TCP.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use ferry_client::cli::Cli;
use ferry_client::{
    Connection, ConnectionConfig, Consumer, ConsumerConfig, ConsumerRecord, Producer, ProducerConfig, ProducerRecord,
    SeekTo,
};
use ferry_protocol::messages::{FetchPartition, FetchRequest, FetchTopic};
use ferry_protocol::{Request, Response};
use tokio::time::Instant;

use crate::harness::{TestBroker, metric};

/// What a test sent to one record: its key, value and `idx` header.
type Sent = (Bytes, Bytes, Bytes);

fn record_content(record: &ConsumerRecord) -> Sent {
    let idx = record
        .headers
        .iter()
        .find(|(key, _)| key.as_ref() == b"idx")
        .and_then(|(_, value)| value.clone())
        .expect("every record carries an idx header");
    (record.key.clone().expect("keyed"), record.value.clone().expect("a value"), idx)
}

/// Reads `expected` records from every partition of `topic` from the start, with a deadline.
async fn consume_all(addr: &str, topic: &str, partitions: u32, expected: usize) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(addr, ConsumerConfig::default()).expect("consumer");
    consumer.assign(topic, 0..partitions).expect("assign");
    consumer.seek_all(SeekTo::Earliest);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut records = Vec::with_capacity(expected);
    while records.len() < expected {
        assert!(Instant::now() < deadline, "only {} of {expected} records arrived in time", records.len());
        records.extend(consumer.poll(Duration::from_secs(1)).await.expect("poll"));
    }
    consumer.close().await;
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_100k_records_across_8_partitions_in_order_per_partition() {
    const N_RECORDS: usize = 100_000;
    const PARTITIONS: u32 = 8;
    let broker = TestBroker::start().await;
    broker.create_topic("orders", PARTITIONS, &[]).await;

    let producer = Producer::new(broker.addr.clone(), ProducerConfig::default()).expect("producer");
    let mut deliveries = Vec::with_capacity(N_RECORDS);
    let mut sent: Vec<Sent> = Vec::with_capacity(N_RECORDS);
    for record_idx in 0..N_RECORDS {
        let key = Bytes::from(format!("customer-{}", record_idx % 997));
        let value = Bytes::from(format!("order {record_idx} paid"));
        let idx = Bytes::from(record_idx.to_string());
        let record = ProducerRecord::new("orders", value.clone()).with_key(key.clone()).with_header("idx", idx.clone());
        deliveries.push(producer.send(record).await.expect("accepted"));
        sent.push((key, value, idx));
    }
    // Per partition, the order of sends is the order of offsets (one request in flight per partition).
    let mut expected: BTreeMap<u32, Vec<(u64, Sent)>> = BTreeMap::new();
    for (delivery, content) in deliveries.into_iter().zip(sent) {
        let metadata = delivery.await.expect("delivered");
        let offset = metadata.offset.expect("acks=all returns an offset");
        expected.entry(metadata.partition).or_default().push((offset, content));
    }
    producer.close().await.expect("close producer");
    assert_eq!(expected.len(), PARTITIONS as usize, "keys spread over every partition");
    for (partition, records) in &expected {
        let offsets: Vec<u64> = records.iter().map(|(offset, _)| *offset).collect();
        let dense: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(offsets, dense, "partition {partition}: offsets are dense from 0, in send order");
    }

    let records = consume_all(&broker.addr, "orders", PARTITIONS, N_RECORDS).await;
    assert_eq!(records.len(), N_RECORDS, "no duplicates");
    let mut received: BTreeMap<u32, Vec<(u64, Sent)>> = BTreeMap::new();
    for record in &records {
        received.entry(record.partition).or_default().push((record.offset, record_content(record)));
    }
    for (partition, expected_records) in &expected {
        let got = received.get(partition).expect("the partition was consumed");
        assert_eq!(got.len(), expected_records.len(), "partition {partition} count");
        assert!(got == expected_records, "partition {partition}: every record, in order, with its content");
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_as_soon_as_data_arrives() {
    const WAIT: Duration = Duration::from_secs(20);
    let broker = TestBroker::start().await;
    broker.create_topic("events", 2, &[]).await;

    let connection = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    let fetch = Request::Fetch(FetchRequest {
        wait_ms_max: u32::try_from(WAIT.as_millis()).expect("fits"),
        bytes_min: 1,
        bytes_max: 0,
        isolation_level: 0,
        topics: vec![FetchTopic {
            name: "events".to_owned(),
            partitions: vec![
                FetchPartition { partition: 0, fetch_offset: 0, partition_bytes_max: 0 },
                FetchPartition { partition: 1, fetch_offset: 0, partition_bytes_max: 0 },
            ],
        }],
    });
    let started = Instant::now();
    let poll = tokio::spawn({
        let connection = connection.clone();
        async move { connection.request(fetch).await }
    });
    // With nothing to read, the fetch is held by the broker.
    let still_waiting = tokio::time::timeout(Duration::from_millis(300), async {
        while !poll.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(still_waiting.is_err(), "an empty fetch with bytes_min=1 must wait");

    let producer = Producer::new(broker.addr.clone(), ProducerConfig::default()).expect("producer");
    let delivery = producer.send(ProducerRecord::new("events", "hello").with_partition(1)).await.expect("accepted");
    delivery.await.expect("delivered");
    let produced_after = started.elapsed();

    let response = tokio::time::timeout(WAIT, poll).await.expect("answered within the wait").expect("task");
    let elapsed = started.elapsed();
    let Response::Fetch(response) = response.expect("fetch") else { panic!("not a fetch response") };
    let partition = &response.topics[0].partitions[1];
    assert_eq!(partition.error_code, 0, "{}", partition.error_message);
    assert!(!partition.records.is_empty(), "the record is returned");
    assert_eq!(partition.high_watermark, 1);
    // Measured against the wait: the answer followed the append, not the 20 s timer.
    assert!(elapsed < WAIT / 4, "the long poll took {elapsed:?} (produced after {produced_after:?}), wait is {WAIT:?}");
    producer.close().await.expect("close");
    connection.close().await;
    broker.stop().await;
}

/// A partition still holding buffered records must not wait behind a long poll on partitions with nothing new:
/// the fetch started meanwhile (for the empty partition only) must not hold the broker's wait, or the busy
/// partition's next fetch could only start when that wait ran out (a 20 s stall here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_partition_is_not_held_up_by_a_long_poll_on_an_idle_one() {
    const RECORDS: usize = 3_000;
    let broker = TestBroker::start().await;
    broker.create_topic("busy", 2, &[]).await;
    let producer = Producer::new(broker.addr.clone(), ProducerConfig::default()).expect("producer");
    let mut deliveries = Vec::with_capacity(RECORDS);
    for idx in 0..RECORDS {
        let record = ProducerRecord::new("busy", vec![b'x'; 100]).with_key(idx.to_string()).with_partition(0);
        deliveries.push(producer.send(record).await.expect("accepted"));
    }
    for delivery in deliveries {
        delivery.await.expect("delivered");
    }
    producer.close().await.expect("close");

    let config = ConsumerConfig {
        fetch_wait_max: Duration::from_secs(20),
        // Several fetches for partition 0, and polls that leave records buffered after each of them.
        partition_fetch_bytes_max: 16 * 1024,
        poll_records_max: 50,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(broker.addr.clone(), config).expect("consumer");
    consumer.assign("busy", [0, 1]).expect("assign");
    consumer.seek("busy", 0, SeekTo::Earliest).expect("seek");
    consumer.seek("busy", 1, SeekTo::Earliest).expect("seek");
    let mut read = 0;
    let mut polls = 0;
    while read < RECORDS {
        let records = consumer.poll(Duration::from_secs(5)).await.expect("poll");
        polls += 1;
        assert!(!records.is_empty(), "poll {polls} came back empty after {read} of {RECORDS} records");
        assert!(records.iter().all(|record| record.partition == 0));
        read += records.len();
    }
    assert_eq!(read, RECORDS);
    consumer.close().await;
    broker.stop().await;
}

/// Runs the `ferry` command line in-process against `addr`; returns stdout.
pub(crate) async fn ferry(addr: &str, args: &[&str], stdin: &[u8]) -> String {
    let cli = Cli::try_parse_from(["ferry", "--broker", addr].iter().chain(args)).expect("valid command line");
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let result =
        tokio::time::timeout(Duration::from_secs(120), ferry_client::cli::run(cli, stdin, &mut stdout, &mut stderr))
            .await
            .expect("the command finishes in time");
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    if let Err(error) = result {
        panic!("ferry {args:?} failed: {error}; stderr: {stderr}");
    }
    String::from_utf8(stdout).expect("utf-8 output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_creates_a_topic_produces_10k_lines_and_consumes_the_same_lines() {
    let broker = TestBroker::start().await;
    ferry(&broker.addr, &["topic", "create", "lines", "--partitions", "3", "--config", "retention.ms=-1"], b"").await;
    let listed = ferry(&broker.addr, &["topic", "list"], b"").await;
    assert!(listed.contains("lines"), "{listed}");

    let lines: Vec<String> = (0..10_000).map(|idx| format!("line {idx} of the file")).collect();
    let input = lines.join("\n") + "\n";
    ferry(&broker.addr, &["produce", "lines"], input.as_bytes()).await;
    let output = ferry(&broker.addr, &["consume", "lines", "--from-beginning", "--max-messages", "10000"], b"").await;
    let mut got: Vec<&str> = output.lines().collect();
    assert_eq!(got.len(), 10_000, "exactly the lines produced");
    got.sort_unstable();
    let mut expected: Vec<&str> = lines.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(got, expected, "the same lines come back");

    let described = ferry(&broker.addr, &["topic", "describe", "lines"], b"").await;
    assert!(described.contains("retention.ms"), "{described}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_traffic_show_the_request_traffic_connection_and_partition_families() {
    const N_RECORDS: u64 = 500;
    let broker = TestBroker::start().await;
    // A topic name no other test uses: the recorder is shared by every broker in this process.
    let topic = "metrics-probe";
    broker.create_topic(topic, 2, &[]).await;
    let producer = Producer::new(broker.addr.clone(), ProducerConfig::default()).expect("producer");
    let mut deliveries = Vec::new();
    for idx in 0..N_RECORDS {
        let record =
            ProducerRecord::new(topic, format!("value {idx}")).with_partition(u32::try_from(idx % 2).expect("0 or 1"));
        deliveries.push(producer.send(record).await.expect("accepted"));
    }
    for delivery in deliveries {
        delivery.await.expect("delivered");
    }
    producer.close().await.expect("close");
    let records = consume_all(&broker.addr, topic, 2, usize::try_from(N_RECORDS).expect("fits")).await;
    assert_eq!(records.len() as u64, N_RECORDS);

    let text = broker.scrape().await;
    let topic_label = format!("{{topic=\"{topic}\"}}");
    let value = |series: &str| metric(&text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"));
    assert_eq!(value(&format!("ferry_produce_records_total{topic_label}")), N_RECORDS as f64);
    assert_eq!(value(&format!("ferry_fetch_records_total{topic_label}")), N_RECORDS as f64, "each record fetched once");
    let produce_bytes = value(&format!("ferry_produce_bytes_total{topic_label}"));
    assert!(produce_bytes > (N_RECORDS * 9) as f64, "at least the values' bytes: {produce_bytes}");
    assert_eq!(value(&format!("ferry_fetch_bytes_total{topic_label}")), produce_bytes, "every stored byte read once");
    assert!(value("ferry_requests_total{api=\"produce\",result=\"ok\"}") >= 1.0);
    assert!(value("ferry_requests_total{api=\"fetch\",result=\"ok\"}") >= 1.0);
    assert!(value("ferry_requests_total{api=\"api_versions\",result=\"ok\"}") >= 2.0);
    assert!(text.contains("ferry_request_duration_seconds_bucket{api=\"produce\",le="), "latency histogram:\n{text}");
    assert!(text.contains("# TYPE ferry_connections_open gauge"), "{text}");
    let end_offsets = value(&format!("ferry_log_end_offset{{topic=\"{topic}\",partition=\"0\"}}"))
        + value(&format!("ferry_log_end_offset{{topic=\"{topic}\",partition=\"1\"}}"));
    assert_eq!(end_offsets, N_RECORDS as f64, "end offsets add up to the records appended");
    let size = value(&format!("ferry_log_size_bytes{{topic=\"{topic}\",partition=\"0\"}}"))
        + value(&format!("ferry_log_size_bytes{{topic=\"{topic}\",partition=\"1\"}}"));
    assert_eq!(size, produce_bytes, "the partitions hold exactly the bytes appended");
    assert!(
        value(&format!("ferry_log_fsync_duration_seconds_count{{topic=\"{topic}\",partition=\"0\"}}")) >= 1.0,
        "fsync latency is recorded per partition"
    );
    assert!(text.contains("# TYPE ferry_log_fsync_errors_total counter"), "{text}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_restart_takes_the_clean_path_and_the_topic_keeps_its_data() {
    let mut broker = TestBroker::start().await;
    broker.create_topic("durable", 2, &[("segment.bytes", "4096")]).await;
    let producer = Producer::new(broker.addr.clone(), ProducerConfig::default()).expect("producer");
    let value = |idx: u32| format!("record {idx:04} {}", "x".repeat(100));
    // Three rounds, so each partition gets several batches (each larger than a segment: one segment each).
    for round in 0..3u32 {
        let mut deliveries = Vec::new();
        for idx in round * 100..(round + 1) * 100 {
            let record = ProducerRecord::new("durable", value(idx)).with_partition(idx % 2);
            deliveries.push(producer.send(record).await.expect("accepted"));
        }
        for delivery in deliveries {
            delivery.await.expect("delivered");
        }
    }
    producer.close().await.expect("close");

    broker.restart().await;
    let reports = broker.broker().recovery_reports();
    assert_eq!(reports.len(), 2, "both partitions were opened: {reports:?}");
    for recovery in reports {
        assert_eq!(recovery.topic, "durable");
        assert!(recovery.report.clean, "a clean shutdown means a clean start: {recovery:?}");
        assert_eq!(recovery.report.truncated_bytes, 0, "{recovery:?}");
        assert_eq!(recovery.report.end_offset, 150);
        assert!(recovery.report.segments > 1, "small segments rolled: {recovery:?}");
    }
    let info = broker.admin().describe_topic("durable").await.expect("the topic survived");
    assert_eq!(info.config.get("segment.bytes").map(String::as_str), Some("4096"));
    let ends: Vec<u64> = info.partitions.iter().map(|partition| partition.end_offset).collect();
    assert_eq!(ends, vec![150, 150]);
    let records = consume_all(&broker.addr, "durable", 2, 300).await;
    let mut values: Vec<String> = records
        .iter()
        .map(|record| String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    values.sort_unstable();
    let expected: Vec<String> = (0..300).map(value).collect();
    assert_eq!(values, expected);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topic_recreated_under_its_name_starts_empty() {
    let broker = TestBroker::start().await;
    broker.create_topic("reborn", 1, &[]).await;
    let producer = Producer::new(broker.addr.clone(), ProducerConfig::default()).expect("producer");
    producer.send(ProducerRecord::new("reborn", "old")).await.expect("accepted").await.expect("delivered");
    producer.close().await.expect("close");
    let admin = broker.admin();
    admin.delete_topic("reborn").await.expect("delete");
    let error = admin.describe_topic("reborn").await.expect_err("deleted");
    assert_eq!(error.error_code(), Some(ferry_protocol::ErrorCode::UnknownTopicOrPartition), "{error}");
    let logs: Vec<_> = std::fs::read_dir(broker.data_dir.path().join("logs")).expect("logs dir").collect();
    assert!(logs.is_empty(), "the topic's directory is gone: {logs:?}");
    admin.create_topic("reborn", 1, BTreeMap::new()).await.expect("create again");
    let info = admin.describe_topic("reborn").await.expect("describe");
    assert_eq!((info.partitions[0].start_offset, info.partitions[0].end_offset), (0, 0), "no old records");
    admin.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_interrupted_by_a_restart_is_finished_at_the_next_start() {
    let mut broker = TestBroker::start().await;
    broker.create_topic("doomed", 2, &[]).await;
    broker.create_topic("kept", 1, &[]).await;
    // What a crash right after the deletion's first step leaves: the record marked `Deleting`, files still there.
    let meta = std::sync::Arc::clone(broker.broker().meta());
    tokio::task::spawn_blocking(move || meta.set_topic_state("doomed", ferry_broker::topic::TopicState::Deleting))
        .await
        .expect("task")
        .expect("mark deleting");
    let logs_dir = broker.data_dir.path().join("logs");
    let dir_names = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&logs_dir)
            .expect("logs dir")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort_unstable();
        names
    };
    assert_eq!(dir_names().len(), 2, "{:?}", dir_names());

    broker.restart().await;
    let topics: Vec<String> =
        broker.admin().list_topics().await.expect("list").into_iter().map(|topic| topic.name).collect();
    assert_eq!(topics, vec!["kept".to_owned()], "the deletion was finished, not undone");
    let names = dir_names();
    assert_eq!(names.len(), 1, "only the kept topic's directory remains: {names:?}");
    assert!(names[0].ends_with("-kept"), "{names:?}");
    let meta = std::sync::Arc::clone(broker.broker().meta());
    let record = tokio::task::spawn_blocking(move || meta.topic("doomed")).await.expect("task").expect("read");
    assert_eq!(record, None, "the record is gone");
    broker.stop().await;
}
