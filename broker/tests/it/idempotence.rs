//! Idempotent producers against the real broker: the protocol rules with hand-built batches (duplicates answered
//! with the original offsets, gaps, unknown ids, epochs, the one-batch rule), dedup across a clean restart and a
//! SIGKILL of the real binary, the metrics, and the client's idempotent producer end to end.

use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_client::{Connection, ConnectionConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord};
use ferry_protocol::batch::ProducerFields;
use ferry_protocol::messages::{
    InitProducerIdRequest, ProducePartition, ProducePartitionResponse, ProduceRequest, ProduceTopic,
};
use ferry_protocol::{BatchBuilder, ErrorCode, NewRecord, Request, Response};

use crate::harness::{TestBroker, metric};

/// A batch of `values` stamped by producer `id`, `epoch`, from `sequence`.
pub fn stamped(id: i64, epoch: i32, sequence: i32, values: &[&str]) -> Bytes {
    let mut builder = BatchBuilder::new().producer(ProducerFields {
        producer_id: id,
        producer_epoch: epoch,
        base_sequence: sequence,
    });
    for value in values {
        let record = NewRecord { timestamp: 1_700_000_000_000, key: None, value: Some(value.as_bytes()), headers: &[] };
        builder.push(record).expect("fits");
    }
    builder.build().expect("builds").into_bytes()
}

pub async fn init(connection: &Connection) -> (i64, i32) {
    let response =
        connection.request(Request::InitProducerId(InitProducerIdRequest::default())).await.expect("answered");
    let Response::InitProducerId(response) = response else { panic!("not an InitProducerId response: {response:?}") };
    assert_eq!(response.error_code, 0, "{}", response.error_message);
    assert_eq!(response.batches_retained, 5);
    assert_eq!(response.producer_id_expiration_ms, 24 * 3600 * 1000);
    (response.producer_id, response.producer_epoch)
}

/// Sends `records` (one or more batches back to back) to partition 0 of `topic`; returns the partition's result.
pub async fn produce(connection: &Connection, topic: &str, records: Bytes) -> ProducePartitionResponse {
    let request = Request::Produce(ProduceRequest {
        acks: 0,
        timeout_ms: 0,
        topics: vec![ProduceTopic {
            name: topic.to_owned(),
            partitions: vec![ProducePartition { partition: 0, records }],
        }],
    });
    let Response::Produce(mut response) = connection.request(request).await.expect("answered") else {
        panic!("not a Produce response")
    };
    response.topics.remove(0).partitions.remove(0)
}

pub fn code(result: &ProducePartitionResponse) -> Option<ErrorCode> {
    ferry_protocol::messages::error_code_from_wire(result.error_code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_applies_the_sequence_rules() {
    let broker = TestBroker::start().await;
    broker.create_topic("seq-rules", 1, &[]).await;
    let connection = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    let (id, epoch) = init(&connection).await;
    let (other_id, _) = init(&connection).await;
    assert_ne!(id, other_id, "every InitProducerId issues a new id");

    let first = produce(&connection, "seq-rules", stamped(id, epoch, 0, &["a", "b"])).await;
    assert_eq!((first.error_code, first.base_offset, first.last_offset, first.duplicate), (0, 0, 1, false));
    let retry = produce(&connection, "seq-rules", stamped(id, epoch, 0, &["a", "b"])).await;
    assert_eq!((retry.error_code, retry.base_offset, retry.last_offset, retry.duplicate), (0, 0, 1, true));
    let gap = produce(&connection, "seq-rules", stamped(id, epoch, 5, &["x"])).await;
    assert_eq!(code(&gap), Some(ErrorCode::OutOfOrderSequence), "{}", gap.error_message);
    let next = produce(&connection, "seq-rules", stamped(id, epoch, 2, &["c"])).await;
    assert_eq!((next.error_code, next.base_offset, next.duplicate), (0, 2, false), "the refused gap changed nothing");

    let unknown = produce(&connection, "seq-rules", stamped(999_999, 0, 0, &["x"])).await;
    assert_eq!(code(&unknown), Some(ErrorCode::UnknownProducerId), "{}", unknown.error_message);
    let future_epoch = produce(&connection, "seq-rules", stamped(id, epoch + 1, 0, &["x"])).await;
    assert_eq!(code(&future_epoch), Some(ErrorCode::InvalidProducerEpoch));
    let mut two = stamped(other_id, 0, 0, &["x"]).to_vec();
    two.extend_from_slice(&stamped(other_id, 0, 1, &["y"]));
    let not_alone = produce(&connection, "seq-rules", Bytes::from(two)).await;
    assert_eq!(code(&not_alone), Some(ErrorCode::InvalidRequest), "an idempotent batch travels alone");

    // Exactly a, b, c were written.
    let text = broker.scrape().await;
    assert_eq!(metric(&text, "ferry_log_end_offset{topic=\"seq-rules\",partition=\"0\"}"), Some(3.0));
    // Metrics are process-wide and tests run in parallel: the topic label keeps these series to this test.
    let series = |name: &str, reason: &str| format!("{name}{{topic=\"seq-rules\",reason=\"{reason}\"}}");
    assert_eq!(metric(&text, &series("ferry_duplicates_dropped_total", "sequence")), Some(1.0));
    assert_eq!(metric(&text, &series("ferry_producer_rejections_total", "OUT_OF_ORDER_SEQUENCE")), Some(1.0));
    assert_eq!(metric(&text, &series("ferry_producer_rejections_total", "UNKNOWN_PRODUCER_ID")), Some(1.0));
    assert_eq!(metric(&text, &series("ferry_producer_rejections_total", "INVALID_PRODUCER_EPOCH")), Some(1.0));
    drop(connection);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_refuses_new_producer_ids_over_its_limit() {
    let broker = TestBroker::start_with(|config| config.producers.ids_max = 2).await;
    let connection = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    init(&connection).await;
    init(&connection).await;
    let response =
        connection.request(Request::InitProducerId(InitProducerIdRequest::default())).await.expect("answered");
    let Response::InitProducerId(response) = response else { panic!("not an InitProducerId response") };
    assert_eq!(ferry_protocol::messages::error_code_from_wire(response.error_code), Some(ErrorCode::ProducerIdLimit));
    assert_eq!(response.producer_id, -1);
    assert!(response.error_message.contains("producers.ids_max"), "{}", response.error_message);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_recognised_after_a_clean_restart() {
    let mut broker = TestBroker::start().await;
    broker.create_topic("orders", 1, &[]).await;
    let (id, epoch) = {
        let connection = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
        let (id, epoch) = init(&connection).await;
        for sequence in 0..8 {
            let written = produce(&connection, "orders", stamped(id, epoch, sequence, &["v"])).await;
            assert_eq!(written.error_code, 0);
        }
        (id, epoch)
    };
    broker.restart().await;
    let connection = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    let retry = produce(&connection, "orders", stamped(id, epoch, 7, &["v"])).await;
    assert_eq!((retry.error_code, retry.base_offset, retry.duplicate), (0, 7, true));
    let next = produce(&connection, "orders", stamped(id, epoch, 8, &["v"])).await;
    assert_eq!((next.error_code, next.base_offset, next.duplicate), (0, 8, false));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_recognised_after_a_sigkill() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let start = || crate::harness::start_binary_on(data_dir.path());
    let (broker, address) = start();
    let connection = Connection::new(address.to_string(), ConnectionConfig::default()).expect("connection");
    ferry_client::Admin::new(address.to_string(), ConnectionConfig::default())
        .expect("admin")
        .create_topic("orders", 1, BTreeMap::new())
        .await
        .expect("created");
    let (id, epoch) = init(&connection).await;
    for sequence in 0..8 {
        assert_eq!(produce(&connection, "orders", stamped(id, epoch, sequence, &["v"])).await.error_code, 0);
    }
    tokio::task::block_in_place(|| {
        broker.signal(libc::SIGKILL);
        broker.wait_for_exit()
    });
    let (broker, address) = start();
    let connection = Connection::new(address.to_string(), ConnectionConfig::default()).expect("connection");
    for sequence in 3..8 {
        let retry = produce(&connection, "orders", stamped(id, epoch, sequence, &["v"])).await;
        assert_eq!((retry.error_code, retry.duplicate), (0, true), "sequence {sequence}: {}", retry.error_message);
        assert_eq!(retry.base_offset, u64::try_from(sequence).expect("small"));
    }
    let next = produce(&connection, "orders", stamped(id, epoch, 8, &["v"])).await;
    assert_eq!((next.error_code, next.base_offset, next.duplicate), (0, 8, false));
    tokio::task::block_in_place(|| {
        broker.signal(libc::SIGTERM);
        broker.wait_for_exit()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotent_producer_writes_each_record_once_in_order() {
    let broker = TestBroker::start().await;
    broker.create_topic("orders", 4, &[]).await;
    let producer = Producer::new(broker.addr.clone(), ProducerConfig::default()).expect("producer");
    assert!(producer.config().idempotence, "idempotence is the default");
    let mut deliveries = Vec::new();
    for idx in 0..20_000u32 {
        let record = ProducerRecord::new("orders", format!("{idx:06}")).with_partition(idx % 4);
        deliveries.push(producer.send(record).await.expect("accepted"));
    }
    for delivery in deliveries {
        delivery.await.expect("acknowledged");
    }
    producer.close().await.expect("closed");
    let mut consumer = Consumer::new(broker.addr.clone(), ConsumerConfig::default()).expect("consumer");
    consumer.assign("orders", 0..4).expect("assigned");
    consumer.seek_all(ferry_client::SeekTo::Earliest);
    let mut seen: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while seen.values().map(Vec::len).sum::<usize>() < 20_000 {
        assert!(tokio::time::Instant::now() < deadline, "read {} records", seen.values().map(Vec::len).sum::<usize>());
        for record in consumer.poll(std::time::Duration::from_secs(1)).await.expect("polled") {
            let value: u32 =
                std::str::from_utf8(record.value.as_deref().expect("value")).expect("utf-8").parse().expect("number");
            seen.entry(record.partition).or_default().push(value);
        }
    }
    for (partition, values) in seen {
        let expected: Vec<u32> = (0..20_000u32).filter(|idx| idx % 4 == partition).collect();
        assert_eq!(values, expected, "partition {partition}: every record once, in send order");
    }
    broker.stop().await;
}
