//! The transactional producer against the scripted peer: the requests it sends and their ids and numbers, staging
//! keys, retries, fencing and aborted transactions. (The broker's side is tested in the broker's tests.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferry_client::{
    ClientError, Consumer, ConsumerConfig, GroupMetadata, Isolation, ProducerRecord, SeekTo, TransactionalConfig,
    TransactionalProducer,
};
use ferry_protocol::batch::split_batches;
use ferry_protocol::messages::{EndTxnResponse, TxnProduceResponse, error_code_to_wire};
use ferry_protocol::{ApiKey, ErrorCode, Request, Response};

use crate::support::{Action, Peer};

fn config() -> TransactionalConfig {
    TransactionalConfig {
        retry_backoff: Duration::from_millis(10),
        request_timeout: Duration::from_secs(5),
        ..TransactionalConfig::new("copier-0")
    }
}

async fn connect(peer: &Peer) -> TransactionalProducer {
    TransactionalProducer::connect(&peer.addr, config()).await.expect("connected")
}

fn end_txn_error(error: ErrorCode) -> Action {
    Action::Respond(Response::EndTxn(EndTxnResponse {
        error_code: error_code_to_wire(error),
        error_message: "scripted".to_owned(),
        ..EndTxnResponse::default()
    }))
}

/// (api, transactional id, producer id, epoch, transaction) of every transactional request, in order.
fn txn_requests(peer: &Peer) -> Vec<(ApiKey, String, i64, i32, u64)> {
    let state = peer.state();
    state
        .log
        .iter()
        .filter_map(|logged| match &logged.request {
            Request::TxnProduce(r) => {
                Some((ApiKey::TxnProduce, r.transactional_id.clone(), r.producer_id, r.producer_epoch, r.transaction))
            }
            Request::TxnOffsetCommit(r) => Some((
                ApiKey::TxnOffsetCommit,
                r.transactional_id.clone(),
                r.producer_id,
                r.producer_epoch,
                r.transaction,
            )),
            Request::EndTxn(r) => {
                Some((ApiKey::EndTxn, r.transactional_id.clone(), r.producer_id, r.producer_epoch, r.transaction))
            }
            _ => None,
        })
        .collect()
}

/// Every EndTxn as (transaction, commit).
fn ends(peer: &Peer) -> Vec<(u64, bool)> {
    peer.requests(ApiKey::EndTxn)
        .into_iter()
        .filter_map(|request| match request {
            Request::EndTxn(end) => Some((end.transaction, end.commit)),
            _ => None,
        })
        .collect()
}

/// (partition, base_sequence, record count, transactional, producer id) of every staged batch, in order.
fn staged_batches(peer: &Peer) -> Vec<(u32, i32, u32, bool, i64)> {
    let mut out = Vec::new();
    for request in peer.requests(ApiKey::TxnProduce) {
        let Request::TxnProduce(produce) = request else { continue };
        for topic in produce.topics {
            for partition in topic.partitions {
                for batch in split_batches(partition.records) {
                    let batch = batch.expect("valid batch");
                    let header = batch.header();
                    out.push((
                        partition.partition,
                        header.base_sequence,
                        batch.record_count(),
                        header.attributes.transactional(),
                        header.producer_id,
                    ));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn commit_stages_records_then_ends_the_transaction_with_the_producer_ids() {
    let peer = Peer::start().await;
    peer.create_topic("output", 2);
    let mut producer = connect(&peer).await;
    let Request::InitProducerId(init) = &peer.requests(ApiKey::InitProducerId)[0] else { panic!("init") };
    assert_eq!((init.transactional_id.as_str(), init.transaction_timeout_ms), ("copier-0", 60_000));
    let (producer_id, epoch) = (producer.producer_id(), producer.epoch());
    assert_eq!(producer.transaction(), 0);

    producer.begin().expect("begun");
    for value in ["a", "b", "c"] {
        producer.send(ProducerRecord::new("output", value).with_partition(1)).await.expect("buffered");
    }
    producer.send(ProducerRecord::new("output", "d").with_partition(0)).await.expect("buffered");
    assert_eq!(peer.count(ApiKey::TxnProduce), 0, "records stay buffered until the commit");
    let group = GroupMetadata::standalone("copiers");
    producer.send_offsets(&group, &[("input".to_owned(), 0, 42)]).await.expect("offsets added");
    let mut committed = producer.commit().await.expect("committed");
    committed.sort_by_key(|partition| partition.partition);

    let expected = |api| (api, "copier-0".to_owned(), producer_id, epoch, 0);
    assert_eq!(
        txn_requests(&peer),
        vec![expected(ApiKey::TxnOffsetCommit), expected(ApiKey::TxnProduce), expected(ApiKey::EndTxn)]
    );
    assert_eq!(ends(&peer), vec![(0, true)]);
    let Request::TxnOffsetCommit(offsets) = &peer.requests(ApiKey::TxnOffsetCommit)[0] else { panic!("offsets") };
    assert_eq!((offsets.group_id.as_str(), offsets.member_id.as_str(), offsets.generation), ("copiers", "", -1));
    assert_eq!((offsets.topics[0].partitions[0].partition, offsets.topics[0].partitions[0].offset), (0, 42));
    assert_eq!(peer.count(ApiKey::TxnProduce), 1, "every buffered partition goes in one request");
    assert_eq!(committed.len(), 2);
    assert_eq!((committed[0].partition, committed[0].base_offset, committed[0].last_offset), (0, 0, 0));
    assert_eq!((committed[1].partition, committed[1].base_offset, committed[1].last_offset), (1, 0, 2));
    assert_eq!(peer.records("output", 1).len(), 3);
    assert_eq!(producer.transaction(), 1);
    producer.close().await;
}

#[tokio::test]
async fn the_transaction_number_advances_after_commit_and_abort() {
    let peer = Peer::start().await;
    peer.create_topic("output", 1);
    let mut producer = connect(&peer).await;
    for round in 0..2u64 {
        producer.begin().expect("begun");
        producer.send(ProducerRecord::new("output", "x")).await.expect("buffered");
        producer.commit().await.expect("committed");
        assert_eq!(producer.transaction(), round + 1);
    }
    // An abort of a transaction the broker never heard of sends nothing.
    producer.begin().expect("begun");
    producer.send(ProducerRecord::new("output", "dropped")).await.expect("buffered");
    producer.abort().await.expect("aborted");
    assert_eq!(producer.transaction(), 3);
    // An abort after offsets reached the broker ends the transaction there.
    producer.begin().expect("begun");
    producer.send_offsets(&GroupMetadata::standalone("g"), &[("input".to_owned(), 0, 1)]).await.expect("added");
    producer.abort().await.expect("aborted");
    assert_eq!(producer.transaction(), 4);
    assert_eq!(ends(&peer), vec![(0, true), (1, true), (3, false)]);
    assert_eq!(peer.records("output", 0).len(), 2, "the aborted record never reached the log");
}

#[tokio::test]
async fn an_empty_transaction_sends_no_request() {
    let peer = Peer::start().await;
    let mut producer = connect(&peer).await;
    producer.begin().expect("begun");
    assert!(producer.commit().await.expect("nothing to commit").is_empty());
    assert_eq!(producer.transaction(), 1);
    producer.begin().expect("begun");
    producer.abort().await.expect("nothing to abort");
    assert_eq!(producer.transaction(), 2);
    assert!(txn_requests(&peer).is_empty());
}

#[tokio::test]
async fn begin_send_and_commit_refuse_the_wrong_state() {
    let peer = Peer::start().await;
    peer.create_topic("output", 1);
    let mut producer = connect(&peer).await;
    let error = producer.send(ProducerRecord::new("output", "x")).await.expect_err("no transaction");
    assert!(matches!(error, ClientError::TransactionState { .. }), "{error:?}");
    assert!(matches!(producer.commit().await, Err(ClientError::TransactionState { .. })));
    producer.begin().expect("begun");
    assert!(matches!(producer.begin(), Err(ClientError::TransactionState { .. })));
    let error = producer.send(ProducerRecord::new("output", "x").with_partition(7)).await.expect_err("no such");
    assert!(matches!(error, ClientError::UnknownPartition { partition_count: 1, .. }), "{error:?}");
    assert!(txn_requests(&peer).is_empty());
}

#[tokio::test]
async fn a_fenced_producer_fails_every_later_call_without_a_request() {
    let peer = Peer::start().await;
    peer.create_topic("output", 1);
    peer.set_hook(|request, _| match request {
        Request::TxnProduce(_) => Action::Respond(Response::TxnProduce(TxnProduceResponse {
            error_code: error_code_to_wire(ErrorCode::ProducerFenced),
            error_message: "a newer instance".to_owned(),
            ..TxnProduceResponse::default()
        })),
        _ => Action::Model,
    });
    let mut producer = connect(&peer).await;
    producer.begin().expect("begun");
    producer.send(ProducerRecord::new("output", "x")).await.expect("buffered");
    let error = producer.commit().await.expect_err("fenced");
    assert!(error.is_fenced(), "{error:?}");
    assert!(!error.is_retriable() && !error.is_transaction_aborted());
    let n_requests = peer.state().log.len();

    assert!(producer.send(ProducerRecord::new("output", "y")).await.expect_err("fenced").is_fenced());
    let group = GroupMetadata::standalone("g");
    assert!(producer.send_offsets(&group, &[("input".to_owned(), 0, 1)]).await.expect_err("fenced").is_fenced());
    assert!(producer.commit().await.expect_err("fenced").is_fenced());
    assert!(producer.abort().await.expect_err("fenced").is_fenced());
    assert!(producer.begin().expect_err("fenced").is_fenced());
    assert_eq!(peer.state().log.len(), n_requests, "no request after the fence");
    assert_eq!(peer.count(ApiKey::EndTxn), 0);
}

#[tokio::test]
async fn a_retriable_error_on_end_txn_is_retried_until_it_succeeds() {
    let peer = Peer::start().await;
    peer.create_topic("output", 1);
    let n_ends = Arc::new(AtomicUsize::new(0));
    let seen = n_ends.clone();
    peer.set_hook(move |request, _| match request {
        Request::EndTxn(_) if seen.fetch_add(1, Ordering::SeqCst) < 2 => {
            end_txn_error(ErrorCode::ConcurrentTransactions)
        }
        _ => Action::Model,
    });
    let mut producer = connect(&peer).await;
    producer.begin().expect("begun");
    producer.send(ProducerRecord::new("output", "x")).await.expect("buffered");
    let committed = producer.commit().await.expect("committed after retries");
    assert_eq!(committed.len(), 1);
    assert_eq!(ends(&peer), vec![(0, true), (0, true), (0, true)], "the same EndTxn, resent");
    assert_eq!(producer.transaction(), 1);
}

#[tokio::test]
async fn a_lost_txn_produce_is_resent_with_the_same_batches() {
    let peer = Peer::start().await;
    peer.create_topic("output", 1);
    let n_produces = Arc::new(AtomicUsize::new(0));
    let seen = n_produces.clone();
    peer.set_hook(move |request, _| match request {
        Request::TxnProduce(_) if seen.fetch_add(1, Ordering::SeqCst) == 0 => Action::Close,
        _ => Action::Model,
    });
    let mut producer = connect(&peer).await;
    producer.begin().expect("begun");
    producer.send(ProducerRecord::new("output", "x")).await.expect("buffered");
    producer.commit().await.expect("committed after the resend");
    let produces = peer.requests(ApiKey::TxnProduce);
    assert_eq!(produces.len(), 2);
    let (Request::TxnProduce(first), Request::TxnProduce(second)) = (&produces[0], &produces[1]) else {
        panic!("txn produce")
    };
    assert_eq!(first, second, "a resend carries the same batches, with the same staging keys");
}

#[tokio::test]
async fn transaction_aborted_on_commit_keeps_the_transaction_open_until_abort() {
    let peer = Peer::start().await;
    peer.create_topic("output", 1);
    peer.set_hook(|request, _| match request {
        Request::EndTxn(end) if end.commit => end_txn_error(ErrorCode::TransactionAborted),
        _ => Action::Model,
    });
    let mut producer = connect(&peer).await;
    producer.begin().expect("begun");
    producer.send(ProducerRecord::new("output", "x")).await.expect("buffered");
    let error = producer.commit().await.expect_err("aborted by the broker");
    assert!(error.is_transaction_aborted() && !error.is_fenced(), "{error:?}");
    assert_eq!(producer.transaction(), 0, "still open");
    assert!(matches!(producer.begin(), Err(ClientError::TransactionState { .. })));
    producer.abort().await.expect("aborted");
    assert_eq!(producer.transaction(), 1);
    assert_eq!(ends(&peer), vec![(0, true), (0, false)]);
    producer.begin().expect("a new transaction");
}

#[tokio::test]
async fn staged_batches_are_keyed_by_cumulative_record_counts_per_partition() {
    let peer = Peer::start().await;
    peer.create_topic("output", 2);
    // Small batches: about 4 records of 40 bytes each, so each partition fills several.
    let config = TransactionalConfig { batch_bytes_max: 250, ..config() };
    let mut producer = TransactionalProducer::connect(&peer.addr, config).await.expect("connected");
    let value = "v".repeat(40);
    for round in 0..2 {
        producer.begin().expect("begun");
        for _ in 0..10 {
            for partition in 0..2 {
                producer
                    .send(ProducerRecord::new("output", value.clone()).with_partition(partition))
                    .await
                    .expect("ok");
            }
        }
        producer.commit().await.expect("committed");
        let staged = staged_batches(&peer);
        for partition in 0..2 {
            let batches: Vec<_> = staged.iter().filter(|batch| batch.0 == partition).collect();
            // Each transaction starts again at 0: this round's batches begin at the last key 0.
            let start = batches.iter().rposition(|batch| batch.1 == 0).expect("a first batch");
            let this_round = &batches[start..];
            let mut expected_sequence = 0;
            for batch in this_round {
                assert_eq!(batch.1, expected_sequence, "round {round} partition {partition}: {batches:?}");
                assert!(batch.3, "transactional attribute");
                assert_eq!(batch.4, producer.producer_id());
                expected_sequence += i32::try_from(batch.2).expect("small");
            }
            assert_eq!(expected_sequence, 10, "every record staged once");
            assert!(this_round.len() > 1, "several batches per partition");
        }
        assert_eq!(peer.records("output", 0).len(), 10 * (round + 1));
    }
}

#[tokio::test]
async fn key_less_records_stick_to_one_partition_and_keys_hash() {
    let peer = Peer::start().await;
    peer.create_topic("output", 8);
    let mut producer = connect(&peer).await;
    producer.begin().expect("begun");
    for _ in 0..5 {
        producer.send(ProducerRecord::new("output", "x")).await.expect("buffered");
    }
    producer.send(ProducerRecord::new("output", "k").with_key("customer-42")).await.expect("buffered");
    producer.commit().await.expect("committed");
    let stored: Vec<usize> = (0..8).map(|partition| peer.records("output", partition).len()).collect();
    let keyed = ferry_client::partition_for_key(b"customer-42", 8) as usize;
    assert_eq!(stored.iter().sum::<usize>(), 6);
    assert!(stored[keyed] >= 1, "{stored:?}");
    assert!(stored.iter().any(|&n| n >= 5), "key-less records stick together: {stored:?}");
    assert!(stored.iter().filter(|&&n| n > 0).count() <= 2, "{stored:?}");
}

#[tokio::test]
async fn the_consumer_sends_its_isolation_level_and_has_no_group_metadata_without_a_group() {
    let peer = Peer::start().await;
    peer.create_topic("input", 1);
    crate::support::append_values(&peer, "input", 0, &["a"]);
    let config = ConsumerConfig { isolation: Isolation::ReadUncommitted, ..ConsumerConfig::default() };
    let mut consumer = Consumer::new(&peer.addr, config).expect("valid config");
    assert_eq!(consumer.group_metadata(), None);
    consumer.assign("input", [0]).expect("assigned");
    consumer.seek("input", 0, SeekTo::Earliest).expect("assigned");
    let records = consumer.poll(Duration::from_secs(5)).await.expect("polled");
    assert_eq!(records.len(), 1);
    let Request::Fetch(fetch) = &peer.requests(ApiKey::Fetch)[0] else { panic!("fetch") };
    assert_eq!(fetch.isolation_level, i32::from(ferry_protocol::messages::IsolationLevel::ReadUncommitted));
    consumer.close().await;
}
