//! Message-id dedup against the real broker: records resent with the same dedup keys are dropped and reported with
//! the original offsets (through the client and in raw frames, with the window in the ack), dedup survives a SIGKILL
//! of the real binary, idempotent producers are refused clearly, the dropped records are counted, and the CLI sends
//! dedup keys.

use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_client::{ClientError, Connection, ConnectionConfig, Producer, ProducerConfig, ProducerRecord};
use ferry_protocol::batch::{DEDUP_KEY_HEADER, ProducerFields};
use ferry_protocol::messages::{DroppedRecord, InitProducerIdRequest};
use ferry_protocol::{BatchBuilder, ErrorCode, NewRecord, Request, Response};

use crate::end_to_end::ferry;
use crate::harness::{TestBroker, metric};
use crate::idempotence::produce;

const WINDOW_MS: &str = "600000";

/// A batch with one record per key, each carrying the key as its dedup key and as its value.
fn keyed(keys: &[&str]) -> BatchBuilder {
    let mut builder = BatchBuilder::new();
    for key in keys {
        let headers: [(&[u8], Option<&[u8]>); 1] = [(DEDUP_KEY_HEADER.as_bytes(), Some(key.as_bytes()))];
        let record =
            NewRecord { timestamp: 1_700_000_000_000, key: None, value: Some(key.as_bytes()), headers: &headers };
        builder.push(record).expect("fits");
    }
    builder
}

fn keyed_bytes(keys: &[&str]) -> Bytes {
    keyed(keys).build().expect("builds").into_bytes()
}

fn dropped(pairs: &[(u32, u64)]) -> Vec<DroppedRecord> {
    pairs.iter().map(|&(record_index, original_offset)| DroppedRecord { record_index, original_offset }).collect()
}

fn not_idempotent() -> ProducerConfig {
    ProducerConfig { idempotence: false, ..ProducerConfig::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_resent_with_their_dedup_keys_are_reported_duplicate_with_the_original_offsets() {
    let broker = TestBroker::start().await;
    broker.create_topic("dedup-client", 3, &[("dedup.window.ms", WINDOW_MS)]).await;
    let producer = Producer::new(broker.addr.clone(), not_idempotent()).expect("producer");
    let send_all = |keys: Vec<String>| {
        let producer = producer.clone();
        async move {
            let mut deliveries = Vec::new();
            for key in keys {
                let record = ProducerRecord::new("dedup-client", key.clone()).with_dedup_key(key);
                deliveries.push(producer.send(record).await.expect("accepted"));
            }
            let mut metadata = Vec::new();
            for delivery in deliveries {
                metadata.push(delivery.await.expect("acknowledged"));
            }
            metadata
        }
    };
    let keys: Vec<String> = (0..30).map(|idx| format!("order-{idx}")).collect();
    let first = send_all(keys.clone()).await;
    assert!(first.iter().all(|metadata| !metadata.duplicate));
    let partitions: std::collections::BTreeSet<u32> = first.iter().map(|metadata| metadata.partition).collect();
    assert!(partitions.len() > 1, "routed by dedup key over the partitions: {partitions:?}");
    let ends = |text: &str| -> f64 {
        (0..3)
            .map(|partition| {
                let series = format!("ferry_log_end_offset{{topic=\"dedup-client\",partition=\"{partition}\"}}");
                metric(text, &series).unwrap_or(0.0)
            })
            .sum()
    };
    assert_eq!(ends(&broker.scrape().await), 30.0);

    let second = send_all(keys.clone()).await;
    for (original, copy) in first.iter().zip(&second) {
        assert!(copy.duplicate, "{copy:?}");
        assert_eq!((copy.partition, copy.offset), (original.partition, original.offset));
    }
    // A mix: the old keys are dropped, the new ones written.
    let mixed = send_all(vec!["order-3".to_owned(), "order-30".to_owned()]).await;
    assert_eq!(mixed.iter().map(|metadata| metadata.duplicate).collect::<Vec<_>>(), vec![true, false]);
    producer.close().await.expect("closed");

    let text = broker.scrape().await;
    assert_eq!(ends(&text), 31.0, "the copies were not written");
    let series = "ferry_duplicates_dropped_total{topic=\"dedup-client\",reason=\"dedup_key\"}";
    assert_eq!(metric(&text, series), Some(31.0));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ack_lists_the_dropped_records_and_the_window() {
    let broker = TestBroker::start().await;
    broker.create_topic("dedup-raw", 1, &[("dedup.window.ms", WINDOW_MS)]).await;
    broker.create_topic("no-dedup", 1, &[]).await;
    let connection = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    let first = produce(&connection, "dedup-raw", keyed_bytes(&["a", "b"])).await;
    assert_eq!((first.error_code, first.base_offset, first.last_offset), (0, 0, 1), "{}", first.error_message);
    assert_eq!(first.dedup_window_ms, 600_000);
    assert!(first.dedup_dropped.is_empty());
    // Two batches in one payload: record indexes count across them.
    let mut payload = keyed_bytes(&["b", "c"]).to_vec();
    payload.extend_from_slice(&keyed_bytes(&["a", "d", "c"]));
    let second = produce(&connection, "dedup-raw", Bytes::from(payload)).await;
    assert_eq!(second.error_code, 0, "{}", second.error_message);
    assert_eq!(second.dedup_dropped, dropped(&[(0, 1), (2, 0), (4, 2)]));
    assert_eq!((second.base_offset, second.last_offset), (2, 3), "c and d, dense");
    let all = produce(&connection, "dedup-raw", keyed_bytes(&["a", "d"])).await;
    assert_eq!(all.dedup_dropped, dropped(&[(0, 0), (1, 3)]));
    // A topic without a window keeps every copy and says so.
    let plain = produce(&connection, "no-dedup", keyed_bytes(&["a"])).await;
    let again = produce(&connection, "no-dedup", keyed_bytes(&["a"])).await;
    assert_eq!((plain.base_offset, again.base_offset, again.dedup_window_ms), (0, 1, 0));
    assert!(again.dedup_dropped.is_empty());
    let text = broker.scrape().await;
    assert_eq!(metric(&text, "ferry_log_end_offset{topic=\"dedup-raw\",partition=\"0\"}"), Some(4.0));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producers_get_a_clear_error_for_dedup_keys() {
    let broker = TestBroker::start().await;
    broker.create_topic("dedup-idem", 1, &[("dedup.window.ms", WINDOW_MS)]).await;
    let producer = Producer::new(broker.addr.clone(), ProducerConfig::default()).expect("producer");
    let error =
        producer.send(ProducerRecord::new("dedup-idem", "v").with_dedup_key("k")).await.expect_err("refused at send");
    assert!(matches!(&error, ClientError::InvalidConfig { field: "idempotence", .. }), "{error:?}");
    assert!(error.to_string().contains("idempotence"), "{error}");
    producer.close().await.expect("closed");

    // The broker refuses a hand-built idempotent batch carrying dedup keys, and writes nothing.
    let connection = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    let response =
        connection.request(Request::InitProducerId(InitProducerIdRequest::default())).await.expect("answered");
    let Response::InitProducerId(init) = response else { panic!("not an InitProducerId response") };
    let batch = keyed(&["k"])
        .producer(ProducerFields {
            producer_id: init.producer_id,
            producer_epoch: init.producer_epoch,
            base_sequence: 0,
        })
        .build()
        .expect("builds");
    let refused = produce(&connection, "dedup-idem", batch.into_bytes()).await;
    assert_eq!(ferry_protocol::messages::error_code_from_wire(refused.error_code), Some(ErrorCode::InvalidRequest));
    assert!(refused.error_message.contains("idempotence"), "{}", refused.error_message);
    let text = broker.scrape().await;
    assert_eq!(metric(&text, "ferry_log_end_offset{topic=\"dedup-idem\",partition=\"0\"}"), Some(0.0));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_record_is_still_dropped_after_a_sigkill() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let start = || crate::harness::start_binary_on(data_dir.path());
    let (broker, address) = start();
    let config = BTreeMap::from([("dedup.window.ms".to_owned(), WINDOW_MS.to_owned())]);
    ferry_client::Admin::new(address.to_string(), ConnectionConfig::default())
        .expect("admin")
        .create_topic("payments", 1, config)
        .await
        .expect("created");
    let connection = Connection::new(address.to_string(), ConnectionConfig::default()).expect("connection");
    let written = produce(&connection, "payments", keyed_bytes(&["p1", "p2", "p3"])).await;
    assert_eq!((written.error_code, written.last_offset), (0, 2), "{}", written.error_message);
    tokio::task::block_in_place(|| {
        broker.signal(libc::SIGKILL);
        broker.wait_for_exit()
    });
    let (broker, address) = start();
    let connection = Connection::new(address.to_string(), ConnectionConfig::default()).expect("connection");
    let retry = produce(&connection, "payments", keyed_bytes(&["p3", "p4"])).await;
    assert_eq!(retry.error_code, 0, "{}", retry.error_message);
    assert_eq!(retry.dedup_dropped, dropped(&[(0, 2)]));
    assert_eq!((retry.base_offset, retry.last_offset), (3, 3));
    tokio::task::block_in_place(|| {
        broker.signal(libc::SIGTERM);
        broker.wait_for_exit()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_dedup_keys_and_a_resent_file_writes_nothing_new() {
    let broker = TestBroker::start().await;
    let create = ["topic", "create", "dedup-cli", "--partitions", "2", "--config", "dedup.window.ms=600000"];
    ferry(&broker.addr, &create, b"").await;
    let input = b"id-1:first\nid-2:second\nid-3:third\n";
    let produce = ["produce", "dedup-cli", "--dedup-key-separator", ":"];
    ferry(&broker.addr, &produce, input).await;
    ferry(&broker.addr, &produce, input).await;
    ferry(&broker.addr, &produce, b"id-2:second again\nid-4:fourth\n").await;
    let output = ferry(&broker.addr, &["consume", "dedup-cli", "--from-beginning", "--max-messages", "4"], b"").await;
    let mut got: Vec<&str> = output.lines().collect();
    got.sort_unstable();
    assert_eq!(got, vec!["first", "fourth", "second", "third"]);
    let text = broker.scrape().await;
    let series = "ferry_duplicates_dropped_total{topic=\"dedup-cli\",reason=\"dedup_key\"}";
    assert_eq!(metric(&text, series), Some(4.0));
    broker.stop().await;
}
