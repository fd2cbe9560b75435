use std::time::Duration;

use bytes::Bytes;
use ferry_client::{ClientError, Consumer, ConsumerConfig, OffsetReset, SeekTo};
use ferry_protocol::{ApiKey, Request};
use tokio::time::Instant;

use crate::support::{Peer, append_values};

fn values(records: &[ferry_client::ConsumerRecord]) -> Vec<Bytes> {
    records.iter().filter_map(|record| record.value.clone()).collect()
}

#[tokio::test]
async fn poll_reads_from_the_beginning_and_tracks_positions() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 2);
    append_values(&peer, "orders", 0, &["a", "b", "c"]);
    append_values(&peer, "orders", 1, &["x"]);
    let mut consumer = Consumer::new(&peer.addr, ConsumerConfig::default()).expect("valid config");
    consumer.assign("orders", [0, 1]).expect("valid topic");
    consumer.seek_all(SeekTo::Earliest);
    let mut records = Vec::new();
    while records.len() < 4 {
        records.extend(consumer.poll(Duration::from_secs(5)).await.expect("poll"));
    }
    let mut partition_0: Vec<(u64, Bytes)> =
        records.iter().filter(|r| r.partition == 0).map(|r| (r.offset, r.value.clone().expect("value"))).collect();
    partition_0.sort();
    assert_eq!(partition_0, vec![(0, Bytes::from("a")), (1, Bytes::from("b")), (2, Bytes::from("c"))]);
    assert_eq!(consumer.position("orders", 0), Some(3));
    assert_eq!(consumer.position("orders", 1), Some(1));
    assert!(records.iter().all(|record| &*record.topic == "orders"));
}

#[tokio::test]
async fn a_corrupted_batch_fails_the_poll_every_time_and_is_never_skipped() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    append_values(&peer, "orders", 0, &["a", "b"]);
    peer.state().model.append_corrupted("orders", 0, &["c"]);
    append_values(&peer, "orders", 0, &["d"]);
    let mut consumer = Consumer::new(&peer.addr, ConsumerConfig::default()).expect("valid config");
    consumer.assign("orders", [0]).expect("valid topic");
    consumer.seek("orders", 0, SeekTo::Offset(0)).expect("assigned");
    let records = consumer.poll(Duration::from_secs(5)).await.expect("the records before the damage");
    assert_eq!(values(&records), vec![Bytes::from("a"), Bytes::from("b")]);
    for _ in 0..2 {
        match consumer.poll(Duration::from_secs(5)).await {
            Err(ClientError::CorruptBatch { topic, partition: 0, offset: 2, source }) => {
                assert_eq!(topic, "orders");
                assert!(matches!(*source, ferry_protocol::ProtocolError::ChecksumMismatch { .. }), "{source:?}");
            }
            other => panic!("expected the corrupt batch at offset 2, got {other:?}"),
        }
        assert_eq!(consumer.position("orders", 0), Some(2));
    }
    // The application may decide to skip it, explicitly.
    consumer.seek("orders", 0, SeekTo::Offset(3)).expect("assigned");
    assert_eq!(values(&consumer.poll(Duration::from_secs(5)).await.expect("after the damage")), vec![Bytes::from("d")]);
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_data_arrives() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    let config = ConsumerConfig { fetch_wait_max: Duration::from_secs(10), ..ConsumerConfig::default() };
    let mut consumer = Consumer::new(&peer.addr, config).expect("valid config");
    consumer.assign("orders", [0]).expect("valid topic");
    consumer.seek("orders", 0, SeekTo::Offset(0)).expect("assigned");
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        let records = consumer.poll(Duration::from_secs(60)).await;
        (consumer, records)
    });
    peer.wait_until(|state| state.log.iter().any(|logged| logged.request.api_key() == ApiKey::Fetch)).await;
    append_values(&peer, "orders", 0, &["late"]);
    let (_consumer, records) = poll.await.expect("task");
    assert_eq!(values(&records.expect("poll")), vec![Bytes::from("late")]);
    assert!(started.elapsed() < Duration::from_secs(10), "answered before the wait ended: {:?}", started.elapsed());
    let Request::Fetch(fetch) = &peer.requests(ApiKey::Fetch)[0] else { panic!("not a fetch") };
    assert_eq!(fetch.wait_ms_max, 10_000);
    assert_eq!(fetch.bytes_min, 1);
}

#[tokio::test]
async fn the_next_fetch_is_in_flight_before_the_next_poll() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    append_values(&peer, "orders", 0, &["a", "b"]);
    let mut consumer = Consumer::new(&peer.addr, ConsumerConfig::default()).expect("valid config");
    consumer.assign("orders", [0]).expect("valid topic");
    consumer.seek("orders", 0, SeekTo::Offset(0)).expect("assigned");
    let records = consumer.poll(Duration::from_secs(5)).await.expect("poll");
    assert_eq!(records.len(), 2);
    // No poll in between: the prefetch was sent when the records were returned.
    peer.wait_until(|state| state.log.iter().filter(|logged| logged.request.api_key() == ApiKey::Fetch).count() == 2)
        .await;
    let Request::Fetch(prefetch) = &peer.requests(ApiKey::Fetch)[1] else { panic!("not a fetch") };
    assert_eq!(prefetch.topics[0].partitions[0].fetch_offset, 2);
}

#[tokio::test]
async fn an_out_of_range_position_resets_to_the_earliest_offset() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    append_values(&peer, "orders", 0, &["a", "b", "c"]);
    append_values(&peer, "orders", 0, &["d", "e"]);
    peer.state().model.truncate_start("orders", 0, 3);
    let config = ConsumerConfig { offset_reset: OffsetReset::Earliest, ..ConsumerConfig::default() };
    let mut consumer = Consumer::new(&peer.addr, config).expect("valid config");
    consumer.assign("orders", [0]).expect("valid topic");
    consumer.seek("orders", 0, SeekTo::Offset(0)).expect("assigned");
    let mut records = Vec::new();
    while records.len() < 2 {
        records.extend(consumer.poll(Duration::from_secs(5)).await.expect("poll"));
    }
    assert_eq!(records.iter().map(|record| record.offset).collect::<Vec<_>>(), vec![3, 4]);
}

#[tokio::test]
async fn an_out_of_range_position_is_an_error_under_the_error_policy() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    append_values(&peer, "orders", 0, &["a"]);
    let config = ConsumerConfig { offset_reset: OffsetReset::Error, ..ConsumerConfig::default() };
    let mut consumer = Consumer::new(&peer.addr, config).expect("valid config");
    consumer.assign("orders", [0]).expect("valid topic");
    let error = consumer.poll(Duration::from_secs(1)).await.expect_err("no position");
    assert!(matches!(error, ClientError::NoPosition { partition: 0, .. }), "{error:?}");
    consumer.seek("orders", 0, SeekTo::Offset(7)).expect("assigned");
    let error = consumer.poll(Duration::from_secs(1)).await.expect_err("out of range");
    assert!(matches!(error, ClientError::OffsetOutOfRange { partition: 0, offset: 7, .. }), "{error:?}");
}

#[tokio::test]
async fn seeking_to_latest_and_to_a_timestamp_uses_list_offsets() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    append_values(&peer, "orders", 0, &["a", "b"]);
    let mut consumer = Consumer::new(&peer.addr, ConsumerConfig::default()).expect("valid config");
    consumer.assign("orders", [0]).expect("valid topic");
    // The default reset is latest: nothing old is returned.
    assert!(consumer.poll(Duration::from_millis(100)).await.expect("poll").is_empty());
    assert_eq!(consumer.position("orders", 0), Some(2));
    // The model's records have timestamp 1000: a lookup at 1000 finds the first.
    consumer.seek("orders", 0, SeekTo::Timestamp(1_000)).expect("assigned");
    assert_eq!(consumer.position("orders", 0), None, "resolved at the next poll");
    let records = consumer.poll(Duration::from_secs(5)).await.expect("poll");
    assert_eq!(values(&records), vec![Bytes::from("a"), Bytes::from("b")]);
    assert!(peer.count(ApiKey::ListOffsets) >= 2);
    assert!(matches!(consumer.seek("orders", 5, SeekTo::Earliest), Err(ClientError::NotAssigned { partition: 5, .. })));
}
