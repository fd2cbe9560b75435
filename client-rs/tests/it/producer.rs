use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ferry_client::{Acks, ClientError, ConnectionConfig, Producer, ProducerConfig, ProducerRecord, partition_for_key};
use ferry_protocol::{ApiKey, ErrorCode, Request};
use tokio::time::Instant;

use crate::support::{Action, Peer, failed_response};

/// How long a test waits to show that something does not happen (real time: see `main.rs`).
const ABSENCE: Duration = Duration::from_millis(200);

fn config() -> ProducerConfig {
    ProducerConfig { linger: Duration::ZERO, ..ProducerConfig::default() }
}

/// The batches of a produce request, as (topic, partition, record values).
fn produced(request: &Request) -> Vec<(String, u32, Vec<Bytes>)> {
    let Request::Produce(produce) = request else { panic!("not a produce request: {request:?}") };
    let mut out = Vec::new();
    for topic in &produce.topics {
        for partition in &topic.partitions {
            let mut values = Vec::new();
            for batch in ferry_protocol::batch::split_batches(partition.records.clone()) {
                for record in batch.expect("valid batch").records() {
                    values.push(record.expect("valid record").value.expect("non-null"));
                }
            }
            out.push((topic.name.clone(), partition.partition, values));
        }
    }
    out
}

#[tokio::test]
async fn sends_within_the_linger_become_one_request() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    let linger = Duration::from_millis(300);
    let config = ProducerConfig { linger, ..ProducerConfig::default() };
    let producer = Producer::new(&peer.addr, config).expect("valid config");
    // Learn the topic's metadata first, so the ten sends below take microseconds.
    producer.send(ProducerRecord::new("orders", "warm-up")).await.expect("accepted").await.expect("acked");
    let started = Instant::now();
    let mut deliveries = Vec::new();
    for record_idx in 0..10 {
        deliveries
            .push(producer.send(ProducerRecord::new("orders", format!("v{record_idx}"))).await.expect("accepted"));
    }
    for (record_idx, delivery) in deliveries.into_iter().enumerate() {
        let metadata = delivery.await.expect("acknowledged");
        assert_eq!(metadata.partition, 0);
        assert_eq!(metadata.offset, Some(u64::try_from(record_idx + 1).expect("small")));
    }
    assert!(started.elapsed() >= linger, "the batch waited for the linger: {:?}", started.elapsed());
    let requests = peer.requests(ApiKey::Produce);
    assert_eq!(requests.len(), 2, "the warm-up, then ten sends within the linger make one request");
    let batches = produced(&requests[1]);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].2.len(), 10);
    assert_eq!(batches[0].2[3], Bytes::from("v3"));
    producer.close().await.expect("closed");
}

#[tokio::test]
async fn keyed_records_land_on_the_murmur2_partition() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 8);
    let producer = Producer::new(&peer.addr, config()).expect("valid config");
    let mut deliveries = Vec::new();
    for key_idx in 0..64 {
        let key = format!("customer-{key_idx}");
        let record = ProducerRecord::new("orders", format!("value-{key_idx}")).with_key(key.clone());
        deliveries.push((key, producer.send(record).await.expect("accepted")));
    }
    let mut partitions_used = std::collections::HashSet::new();
    for (key, delivery) in deliveries {
        let metadata = delivery.await.expect("acknowledged");
        assert_eq!(metadata.partition, partition_for_key(key.as_bytes(), 8), "{key}");
        partitions_used.insert(metadata.partition);
        let stored = peer.records("orders", metadata.partition);
        let offset = metadata.offset.expect("acks=all gives offsets");
        let (_, stored_key, _) = stored.iter().find(|(stored_offset, _, _)| *stored_offset == offset).expect("stored");
        assert_eq!(stored_key.as_deref(), Some(key.as_bytes()));
    }
    assert!(partitions_used.len() >= 6, "64 keys spread over the 8 partitions: {partitions_used:?}");
    producer.close().await.expect("closed");
}

#[tokio::test]
async fn keyless_records_stick_to_one_partition_until_their_batch_is_sent() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 8);
    // A long linger: each round's batch is sent by the flush, so the rounds do not depend on timing.
    let config = ProducerConfig { linger: Duration::from_secs(3600), ..ProducerConfig::default() };
    let producer = Producer::new(&peer.addr, config).expect("valid config");
    for _round in 0..3 {
        let mut deliveries = Vec::new();
        for record_idx in 0..20 {
            deliveries
                .push(producer.send(ProducerRecord::new("orders", format!("v{record_idx}"))).await.expect("accepted"));
        }
        producer.flush().await.expect("flushed");
        let mut partitions = std::collections::HashSet::new();
        for delivery in deliveries {
            partitions.insert(delivery.await.expect("acknowledged").partition);
        }
        assert_eq!(partitions.len(), 1, "one linger's key-less records share a partition");
    }
    assert_eq!(peer.count(ApiKey::Produce), 3);
    producer.close().await.expect("closed");
}

#[tokio::test]
async fn a_retriable_error_is_retried_with_backoff_until_it_succeeds() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = attempts.clone();
    peer.set_hook(move |request, _| match request {
        Request::Produce(_) if seen.fetch_add(1, Ordering::SeqCst) < 2 => {
            Action::Respond(failed_response(ErrorCode::StorageError))
        }
        _ => Action::Model,
    });
    let producer = Producer::new(&peer.addr, config()).expect("valid config");
    let started = Instant::now();
    let delivery = producer.send(ProducerRecord::new("orders", "paid")).await.expect("accepted");
    let metadata = delivery.await.expect("acknowledged after two retries");
    assert_eq!(metadata.offset, Some(0));
    assert_eq!(peer.count(ApiKey::Produce), 3);
    assert_eq!(peer.records("orders", 0).len(), 1, "stored once");
    // Two backoffs of about 100 ms and 200 ms (each within 20% jitter).
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(240) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    producer.close().await.expect("closed");
}

#[tokio::test]
async fn an_error_that_is_not_retriable_fails_the_record_at_once() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    peer.set_hook(|request, _| match request {
        Request::Produce(_) => Action::Respond(failed_response(ErrorCode::MessageTooLarge)),
        _ => Action::Model,
    });
    let producer = Producer::new(&peer.addr, config()).expect("valid config");
    let delivery = producer.send(ProducerRecord::new("orders", "paid")).await.expect("accepted");
    let error = delivery.await.expect_err("not retriable");
    match &error {
        ClientError::Broker { code: ErrorCode::MessageTooLarge, message } => assert_eq!(message, "scripted"),
        other => panic!("unexpected {other:?}"),
    }
    producer.flush().await.expect("flushed");
    assert_eq!(peer.count(ApiKey::Produce), 1, "never retried");
    producer.close().await.expect("closed");
}

#[tokio::test]
async fn the_producer_reconnects_after_the_connection_is_lost_and_its_futures_complete() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    let closes = Arc::new(AtomicUsize::new(0));
    let seen = closes.clone();
    peer.set_hook(move |request, _| match request {
        Request::Produce(_) if seen.fetch_add(1, Ordering::SeqCst) == 0 => Action::Close,
        _ => Action::Model,
    });
    let producer = Producer::new(&peer.addr, config()).expect("valid config");
    let mut deliveries = Vec::new();
    for record_idx in 0..5 {
        deliveries
            .push(producer.send(ProducerRecord::new("orders", format!("v{record_idx}"))).await.expect("accepted"));
    }
    let mut offsets = Vec::new();
    for delivery in deliveries {
        offsets.push(delivery.await.expect("delivered after reconnecting").offset.expect("acks=all"));
    }
    assert_eq!(offsets, vec![0, 1, 2, 3, 4], "order kept across the retry");
    assert_eq!(peer.state().n_connections, 2);
    let values: Vec<Bytes> = peer.records("orders", 0).into_iter().filter_map(|(_, _, value)| value).collect();
    assert_eq!(values, (0..5).map(|idx| Bytes::from(format!("v{idx}"))).collect::<Vec<_>>());
    producer.close().await.expect("closed");
}

#[tokio::test(start_paused = true)]
async fn a_record_never_acknowledged_fails_with_delivery_timeout_on_time() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    peer.set_hook(|request, _| match request {
        Request::Produce(_) => Action::Ignore,
        _ => Action::Model,
    });
    let config = ProducerConfig { delivery_timeout: Duration::from_secs(10), ..config() };
    let producer = Producer::new(&peer.addr, config).expect("valid config");
    let started = Instant::now();
    let delivery = producer.send(ProducerRecord::new("orders", "paid")).await.expect("accepted");
    let error = delivery.await.expect_err("never acknowledged");
    let elapsed = started.elapsed();
    match &error {
        ClientError::DeliveryTimeout { timeout, last_error } => {
            assert_eq!(*timeout, Duration::from_secs(10));
            // Normally the produce request's timeout; a retriable connection error is as good.
            assert!(last_error.as_deref().is_some_and(ClientError::is_retriable), "{last_error:?}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(error.to_string().contains("delivery timeout of 10s"), "{error}");
    assert!(elapsed >= Duration::from_secs(10) && elapsed < Duration::from_millis(10_500), "{elapsed:?}");
    producer.close().await.expect("closed");
}

#[tokio::test]
async fn one_request_per_partition_is_in_flight_and_the_next_batch_keeps_filling() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    peer.set_hook(|request, _| match request {
        Request::Produce(_) => Action::Forward,
        _ => Action::Model,
    });
    let config = ProducerConfig { max_in_flight_per_partition: 1, ..config() };
    let producer = Producer::new(&peer.addr, config).expect("valid config");
    let first = producer.send(ProducerRecord::new("orders", "a")).await.expect("accepted");
    let request_a = peer.next_forwarded().await;
    let second = producer.send(ProducerRecord::new("orders", "b")).await.expect("accepted");
    let third = producer.send(ProducerRecord::new("orders", "c")).await.expect("accepted");
    assert!(peer.try_next_forwarded(ABSENCE).await.is_none(), "a second request while one is in flight");
    peer.answer(&request_a).await;
    let request_bc = peer.next_forwarded().await;
    assert_eq!(produced(&request_bc.request)[0].2, vec![Bytes::from("b"), Bytes::from("c")], "one batch of both");
    peer.answer(&request_bc).await;
    assert_eq!(first.await.expect("acked").offset, Some(0));
    assert_eq!(second.await.expect("acked").offset, Some(1));
    assert_eq!(third.await.expect("acked").offset, Some(2));
    producer.close().await.expect("closed");
}

#[tokio::test]
async fn up_to_max_in_flight_requests_per_partition_are_sent() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    peer.set_hook(|request, _| match request {
        Request::Produce(_) => Action::Forward,
        _ => Action::Model,
    });
    let config = ProducerConfig { max_in_flight_per_partition: 2, ..config() };
    let producer = Producer::new(&peer.addr, config).expect("valid config");
    let mut deliveries = Vec::new();
    deliveries.push(producer.send(ProducerRecord::new("orders", "a")).await.expect("accepted"));
    let request_a = peer.next_forwarded().await;
    deliveries.push(producer.send(ProducerRecord::new("orders", "b")).await.expect("accepted"));
    let request_b = peer.next_forwarded().await;
    deliveries.push(producer.send(ProducerRecord::new("orders", "c")).await.expect("accepted"));
    assert!(peer.try_next_forwarded(ABSENCE).await.is_none(), "a third request in flight");
    peer.answer(&request_a).await;
    let request_c = peer.next_forwarded().await;
    peer.answer(&request_b).await;
    peer.answer(&request_c).await;
    for (record_idx, delivery) in deliveries.into_iter().enumerate() {
        assert_eq!(delivery.await.expect("acked").offset, Some(u64::try_from(record_idx).expect("small")));
    }
    producer.close().await.expect("closed");
}

#[tokio::test]
async fn send_waits_while_the_buffer_is_full() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    peer.set_hook(|request, _| match request {
        Request::Produce(_) => Action::Forward,
        _ => Action::Model,
    });
    // Each record costs 900 + 64 bytes: four fit in the buffer, and each fills a batch on its own.
    let config = ProducerConfig { buffer_bytes_max: 4096, batch_bytes_max: 1024, ..config() };
    let producer = Producer::new(&peer.addr, config).expect("valid config");
    let value = vec![b'x'; 900];
    let mut deliveries = Vec::new();
    for _ in 0..4 {
        deliveries.push(producer.send(ProducerRecord::new("orders", value.clone())).await.expect("room"));
    }
    let fifth = tokio::time::timeout(ABSENCE, producer.send(ProducerRecord::new("orders", value.clone())));
    assert!(fifth.await.is_err(), "the fifth send waits: the buffer is full");
    // Acknowledging the first record frees its bytes.
    let request = peer.next_forwarded().await;
    peer.answer(&request).await;
    let fifth =
        tokio::time::timeout(Duration::from_secs(5), producer.send(ProducerRecord::new("orders", value.clone())));
    let fifth = fifth.await.expect("room again").expect("accepted");
    for _ in 0..4 {
        let request = peer.next_forwarded().await;
        peer.answer(&request).await;
    }
    deliveries.push(fifth);
    for (record_idx, delivery) in deliveries.into_iter().enumerate() {
        assert_eq!(delivery.await.expect("acked").offset, Some(u64::try_from(record_idx).expect("small")));
    }
    producer.close().await.expect("closed");
}

#[tokio::test]
async fn flush_sends_without_waiting_for_the_linger() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    let config = ProducerConfig { linger: Duration::from_secs(3600), ..ProducerConfig::default() };
    let producer = Producer::new(&peer.addr, config).expect("valid config");
    let started = Instant::now();
    let delivery = producer.send(ProducerRecord::new("orders", "paid")).await.expect("accepted");
    producer.flush().await.expect("flushed");
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    assert_eq!(delivery.await.expect("acked").offset, Some(0));
    producer.close().await.expect("closed");
}

#[tokio::test]
async fn acks_none_completes_once_written_without_an_offset() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    let config = ProducerConfig { acks: Acks::None, idempotence: false, ..config() };
    let producer = Producer::new(&peer.addr, config).expect("valid config");
    let delivery = producer.send(ProducerRecord::new("orders", "fire-and-forget")).await.expect("accepted");
    let metadata = delivery.await.expect("written");
    assert_eq!(metadata.offset, None);
    assert_eq!(metadata.partition, 0);
    peer.wait_until(|state| state.model.topics["orders"][0].end_offset == 1).await;
    producer.close().await.expect("closed");
}

#[tokio::test]
async fn records_that_can_never_be_sent_fail_at_send() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 2);
    let config = ProducerConfig {
        connection: ConnectionConfig::default(),
        buffer_bytes_max: 4096,
        batch_bytes_max: 1024,
        ..config()
    };
    let producer = Producer::new(&peer.addr, config).expect("valid config");
    let error = producer.send(ProducerRecord::new("orders", "x").with_partition(2)).await.expect_err("no partition 2");
    assert!(matches!(error, ClientError::UnknownPartition { partition: 2, partition_count: 2, .. }), "{error:?}");
    let error = producer.send(ProducerRecord::new("bad name!", "x")).await.expect_err("invalid name");
    assert!(matches!(error, ClientError::InvalidTopic { .. }), "{error:?}");
    let error = producer.send(ProducerRecord::new("orders", vec![0u8; 5000])).await.expect_err("above the buffer");
    assert!(matches!(error, ClientError::RecordTooLarge { .. }), "{error:?}");
    // Fits in the buffer but not in a batch: fails through its future.
    let delivery = producer.send(ProducerRecord::new("orders", vec![0u8; 2000])).await.expect("accepted");
    assert!(matches!(delivery.await, Err(ClientError::RecordTooLarge { .. })));
    assert_eq!(peer.count(ApiKey::Produce), 0);
    producer.close().await.expect("closed");
}
