//! The idempotent producer against the scripted peer: stamps, retries that keep their stamp, fencing, and the reset
//! after an unknown producer id. (The broker's side, dedup included, is tested in the broker's tests.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferry_client::{ConnectionConfig, Producer, ProducerConfig, ProducerRecord};
use ferry_protocol::batch::{ProducerFields, split_batches};
use ferry_protocol::{ApiKey, ErrorCode, Request};

use crate::support::{Action, Peer, failed_response};

fn config() -> ProducerConfig {
    ProducerConfig {
        linger: Duration::ZERO,
        // The reset after an unknown producer id waits twice the request timeout: keep it short.
        connection: ConnectionConfig { request_timeout: Duration::from_millis(300), ..ConnectionConfig::default() },
        ..ProducerConfig::default()
    }
}

/// (partition, producer fields, record count) of every batch of every produce request the peer saw, in order.
fn stamps(peer: &Peer) -> Vec<(u32, ProducerFields, u32)> {
    let mut out = Vec::new();
    for request in peer.requests(ApiKey::Produce) {
        let Request::Produce(produce) = request else { continue };
        for topic in produce.topics {
            for partition in topic.partitions {
                for batch in split_batches(partition.records) {
                    let batch = batch.expect("valid batch");
                    out.push((partition.partition, batch.header().producer(), batch.record_count()));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn batches_carry_the_producer_id_and_consecutive_sequences_per_partition() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 2);
    let producer = Producer::new(&peer.addr, config()).expect("valid config");
    for round in 0..3 {
        let mut deliveries = Vec::new();
        for partition in 0..2 {
            for record in 0..=round {
                let value = format!("{round}-{partition}-{record}");
                deliveries.push(producer.send(ProducerRecord::new("orders", value).with_partition(partition)).await);
            }
        }
        producer.flush().await.expect("flushed");
        for delivery in deliveries {
            delivery.expect("accepted").await.expect("acknowledged");
        }
    }
    assert_eq!(peer.count(ApiKey::InitProducerId), 1, "one producer id for the producer's life");
    for partition in 0..2 {
        let mut expected_sequence = 0;
        for (_, fields, count) in stamps(&peer).into_iter().filter(|(p, ..)| *p == partition) {
            assert_eq!((fields.producer_id, fields.producer_epoch), (1, 0));
            assert_eq!(fields.base_sequence, expected_sequence, "partition {partition}");
            expected_sequence += i32::try_from(count).expect("small");
        }
        assert_eq!(expected_sequence, 6, "1 + 2 + 3 records");
    }
    producer.close().await.expect("closed");
}

#[tokio::test]
async fn a_retry_after_an_unknown_outcome_keeps_its_stamp() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    let produces = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&produces);
    // The first attempt is lost with its connection: it may or may not have been written.
    peer.set_hook(move |request, _| match request {
        Request::Produce(_) if seen.fetch_add(1, Ordering::SeqCst) == 0 => Action::Close,
        _ => Action::Model,
    });
    let producer = Producer::new(&peer.addr, config()).expect("valid config");
    let delivery = producer.send(ProducerRecord::new("orders", "paid")).await.expect("accepted");
    assert_eq!(delivery.await.expect("acknowledged after the retry").offset, Some(0));
    let stamps = stamps(&peer);
    assert_eq!(stamps.len(), 2, "the first attempt and its retry");
    assert_eq!(stamps[0], stamps[1], "the retry carries the same producer id, epoch and sequence");
    producer.close().await.expect("closed");
}

#[tokio::test]
async fn a_fenced_producer_fails_its_records_and_every_later_one() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    peer.set_hook(|request, _| match request {
        Request::Produce(_) => Action::Respond(failed_response(ErrorCode::ProducerFenced)),
        _ => Action::Model,
    });
    let producer = Producer::new(&peer.addr, config()).expect("valid config");
    let delivery = producer.send(ProducerRecord::new("orders", "a")).await.expect("accepted");
    let error = delivery.await.expect_err("fenced");
    assert_eq!(error.error_code(), Some(ErrorCode::ProducerFenced), "{error:?}");
    let later = producer.send(ProducerRecord::new("orders", "b")).await.expect("accepted");
    assert_eq!(later.await.expect_err("still fenced").error_code(), Some(ErrorCode::ProducerFenced));
    assert_eq!(peer.count(ApiKey::Produce), 1, "nothing is sent after the fence");
    producer.close().await.expect("closed");
}

#[tokio::test]
async fn an_unknown_producer_id_takes_a_new_id_and_restarts_the_sequence_without_losing_records() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    let produces = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&produces);
    peer.set_hook(move |request, _| match request {
        // The broker forgot the first id (it expired): nothing of it was written.
        Request::Produce(_) if seen.fetch_add(1, Ordering::SeqCst) == 0 => {
            Action::Respond(failed_response(ErrorCode::UnknownProducerId))
        }
        _ => Action::Model,
    });
    let producer = Producer::new(&peer.addr, config()).expect("valid config");
    let delivery = producer.send(ProducerRecord::new("orders", "kept")).await.expect("accepted");
    assert_eq!(delivery.await.expect("written under the new id").offset, Some(0));
    assert_eq!(peer.count(ApiKey::InitProducerId), 2);
    let stamps = stamps(&peer);
    assert_eq!(stamps.len(), 2);
    assert_eq!((stamps[0].1.producer_id, stamps[1].1.producer_id), (1, 2));
    assert_eq!(stamps[1].1.base_sequence, 0, "the new id starts its sequence at 0");
    assert_eq!(peer.records("orders", 0).len(), 1, "written once");
    producer.close().await.expect("closed");
}

#[tokio::test]
async fn a_gap_behind_an_earlier_failure_is_resent_in_order() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    let produces = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&produces);
    peer.set_hook(move |request, _| match request {
        Request::Produce(_) if seen.fetch_add(1, Ordering::SeqCst) < 2 => Action::Forward,
        _ => Action::Model,
    });
    let producer = Producer::new(&peer.addr, config()).expect("valid config");
    let first = producer.send(ProducerRecord::new("orders", "first").with_partition(0)).await.expect("accepted");
    let request_first = peer.next_forwarded().await;
    let second = producer.send(ProducerRecord::new("orders", "second").with_partition(0)).await.expect("accepted");
    let request_second = peer.next_forwarded().await;
    // Both are in flight. The first fails retriably (not written); the second is refused: its predecessor is missing.
    request_first.respond(failed_response(ErrorCode::DiskFull)).await;
    request_second.respond(failed_response(ErrorCode::OutOfOrderSequence)).await;
    assert_eq!(first.await.expect("acknowledged").offset, Some(0));
    assert_eq!(second.await.expect("acknowledged").offset, Some(1));
    let values: Vec<_> = peer.records("orders", 0).into_iter().map(|(_, _, value)| value).collect();
    assert_eq!(values, vec![Some("first".into()), Some("second".into())], "in send order, once each");
    assert_eq!(peer.count(ApiKey::InitProducerId), 1, "a gap behind a retried batch needs no reset");
    let stamps = stamps(&peer);
    assert_eq!(stamps.iter().map(|(_, fields, _)| fields.base_sequence).collect::<Vec<_>>(), vec![0, 1, 0, 1]);
    producer.close().await.expect("closed");
}

/// Research F3 (Redpanda #3038/#3039): the broker remembers five batches per producer and partition. If the oldest
/// batch's answer is lost while the next four are acknowledged, a client that went on sending would push the oldest
/// out of the broker's window, and its retry would be refused instead of recognised. The producer sends nothing more
/// than four batches past its oldest unresolved one.
#[tokio::test]
async fn no_batch_is_sent_five_past_an_unresolved_one() {
    let peer = Peer::start().await;
    peer.create_topic("orders", 1);
    peer.set_hook(|request, _| match request {
        Request::Produce(_) => Action::Forward,
        _ => Action::Model,
    });
    // A request timeout far longer than the test, so the unanswered request stays in flight.
    let connection = ConnectionConfig { request_timeout: Duration::from_secs(30), ..ConnectionConfig::default() };
    let producer = Producer::new(&peer.addr, ProducerConfig { connection, ..config() }).expect("valid config");
    let mut deliveries = Vec::new();
    let mut requests = Vec::new();
    for idx in 0..5 {
        deliveries.push(producer.send(ProducerRecord::new("orders", format!("v{idx}"))).await.expect("accepted"));
        requests.push(peer.next_forwarded().await);
    }
    // The first request stays unanswered (its answer is lost, as far as the producer knows); the next four succeed.
    for request in &requests[1..] {
        peer.answer(request).await;
    }
    deliveries.push(producer.send(ProducerRecord::new("orders", "v5")).await.expect("accepted"));
    assert!(
        peer.try_next_forwarded(Duration::from_millis(300)).await.is_none(),
        "a sixth batch went out while the first was unresolved"
    );
    // Once the first is answered, the sixth goes.
    peer.answer(&requests[0]).await;
    let sixth = peer.next_forwarded().await;
    peer.answer(&sixth).await;
    for delivery in deliveries {
        delivery.await.expect("acknowledged");
    }
    producer.close().await.expect("closed");
}
