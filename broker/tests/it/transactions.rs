//! Transactions against the real broker, in raw requests (so each rule is tested on its own, whatever the client
//! does): commit and abort visibility, offsets inside the transaction, fencing of an older instance, stale and
//! replayed requests, resent TxnProduce frames, timeouts that block no reader, the operator's list and abort, and
//! recovery after SIGKILL of the real binary (open transactions aborted; a decided commit finished, also when the
//! crash came in the middle of its apply).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use ferry_client::{ClientError, Connection, ConnectionConfig};
use ferry_protocol::batch::{Attributes, ProducerFields};
use ferry_protocol::messages::{
    AbortTxnRequest, EndTxnRequest, EndTxnResponse, InitProducerIdRequest, ListTxnsRequest, ListTxnsResponse,
    OffsetCommitPartition, OffsetCommitTopic, OffsetFetchRequest, ProducePartition, ProduceTopic, TopicPartitions,
    TxnOffsetCommitRequest, TxnProduceRequest, TxnProduceResponse, error_code_from_wire,
};
use ferry_protocol::{ApiKey, BatchBuilder, ErrorCode, NewRecord, Request, Response};

use crate::chaos::read_all;
use crate::fault_proxy::{FaultPlan, FaultProxy};
use crate::harness::{TestBroker, eventually, metric};
use crate::idempotence::{produce, stamped};
use crate::support::BrokerProcess;

/// One transactional instance, speaking raw requests.
struct Txn {
    connection: Connection,
    id: String,
    producer_id: i64,
    epoch: i32,
}

fn code(error_code: u32) -> Option<ErrorCode> {
    error_code_from_wire(error_code)
}

/// A transactional batch of `values`, stamped with the producer and the staging sequence `sequence`.
fn staged(producer_id: i64, epoch: i32, sequence: i32, values: &[&str]) -> Bytes {
    let mut builder = BatchBuilder::new()
        .producer(ProducerFields { producer_id, producer_epoch: epoch, base_sequence: sequence })
        .attributes(Attributes::default().with_transactional(true));
    for value in values {
        let record = NewRecord { timestamp: 1_700_000_000_000, key: None, value: Some(value.as_bytes()), headers: &[] };
        builder.push(record).expect("fits");
    }
    builder.build().expect("builds").into_bytes()
}

impl Txn {
    /// InitProducerId with `id` on a new connection to `addr`.
    async fn init(addr: &str, id: &str, timeout_ms: u64) -> Txn {
        let connection = Connection::new(addr, ConnectionConfig::default()).expect("connection");
        let request = InitProducerIdRequest { transactional_id: id.to_owned(), transaction_timeout_ms: timeout_ms };
        let Response::InitProducerId(response) =
            connection.request(Request::InitProducerId(request)).await.expect("answered")
        else {
            panic!("not an InitProducerId response")
        };
        assert_eq!(response.error_code, 0, "{}", response.error_message);
        Txn { connection, id: id.to_owned(), producer_id: response.producer_id, epoch: response.producer_epoch }
    }

    /// Stages `values` in `topic`/`partition` as transaction `transaction`, staging sequence `sequence`.
    async fn send(
        &self,
        transaction: u64,
        topic: &str,
        partition: u32,
        sequence: i32,
        values: &[&str],
    ) -> TxnProduceResponse {
        let records = staged(self.producer_id, self.epoch, sequence, values);
        self.send_raw(transaction, topic, partition, records).await
    }

    async fn send_raw(&self, transaction: u64, topic: &str, partition: u32, records: Bytes) -> TxnProduceResponse {
        let request = TxnProduceRequest {
            transactional_id: self.id.clone(),
            producer_id: self.producer_id,
            producer_epoch: self.epoch,
            transaction,
            topics: vec![ProduceTopic {
                name: topic.to_owned(),
                partitions: vec![ProducePartition { partition, records }],
            }],
        };
        let Response::TxnProduce(response) =
            self.connection.request(Request::TxnProduce(request)).await.expect("answered")
        else {
            panic!("not a TxnProduce response")
        };
        response
    }

    async fn send_ok(&self, transaction: u64, topic: &str, partition: u32, sequence: i32, values: &[&str]) {
        let response = self.send(transaction, topic, partition, sequence, values).await;
        assert_eq!(response.error_code, 0, "{}", response.error_message);
        let item = &response.topics[0].partitions[0];
        assert_eq!(item.error_code, 0, "{}", item.error_message);
    }

    async fn end(&self, transaction: u64, commit: bool) -> EndTxnResponse {
        self.try_end(transaction, commit).await.expect("answered")
    }

    /// Ends the transaction; `Err` when the broker did not answer (it died, as a failpoint makes it).
    async fn try_end(&self, transaction: u64, commit: bool) -> Result<EndTxnResponse, ClientError> {
        let request = EndTxnRequest {
            transactional_id: self.id.clone(),
            producer_id: self.producer_id,
            producer_epoch: self.epoch,
            transaction,
            commit,
        };
        let Response::EndTxn(response) = self.connection.request(Request::EndTxn(request)).await? else {
            panic!("not an EndTxn response")
        };
        Ok(response)
    }

    async fn offsets(&self, transaction: u64, group: &str, topic: &str, partition: u32, offset: u64) -> (u32, String) {
        let request = TxnOffsetCommitRequest {
            transactional_id: self.id.clone(),
            producer_id: self.producer_id,
            producer_epoch: self.epoch,
            transaction,
            group_id: group.to_owned(),
            member_id: String::new(),
            generation: -1,
            topics: vec![OffsetCommitTopic {
                name: topic.to_owned(),
                partitions: vec![OffsetCommitPartition { partition, offset, metadata: String::new() }],
            }],
        };
        let Response::TxnOffsetCommit(response) =
            self.connection.request(Request::TxnOffsetCommit(request)).await.expect("answered")
        else {
            panic!("not a TxnOffsetCommit response")
        };
        (response.error_code, response.error_message)
    }
}

async fn list_txns(addr: &str) -> ListTxnsResponse {
    let connection = Connection::new(addr, ConnectionConfig::default()).expect("connection");
    let Response::ListTxns(response) =
        connection.request(Request::ListTxns(ListTxnsRequest {})).await.expect("answered")
    else {
        panic!("not a ListTxns response")
    };
    response
}

/// The values of every record in `topic` (partitions `0..partitions`), per partition in offset order.
async fn values(addr: &str, topic: &str, partitions: u32) -> Vec<Vec<String>> {
    let mut by_partition = vec![Vec::new(); partitions as usize];
    for read in read_all(addr, topic, partitions, Duration::from_secs(30)).await {
        by_partition[read.partition as usize].push(read.value);
    }
    by_partition
}

async fn committed_offset(addr: &str, group: &str, topic: &str, partition: u32) -> Option<u64> {
    let connection = Connection::new(addr, ConnectionConfig::default()).expect("connection");
    let request = OffsetFetchRequest {
        group_id: group.to_owned(),
        topics: vec![TopicPartitions { topic: topic.to_owned(), partitions: vec![partition] }],
        include_lag: false,
    };
    let Response::OffsetFetch(response) = connection.request(Request::OffsetFetch(request)).await.expect("answered")
    else {
        panic!("not an OffsetFetch response")
    };
    let found = &response.topics[0].partitions[0];
    found.committed.then_some(found.offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_appends_every_staged_batch_contiguously_and_an_abort_leaves_nothing() {
    let broker = TestBroker::start().await;
    broker.create_topic("txn-basic", 2, &[]).await;
    let plain = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    let txn = Txn::init(&broker.addr, "basic", 0).await;

    txn.send_ok(0, "txn-basic", 0, 0, &["a0", "a1"]).await;
    // Another producer's records are not held back by the open transaction.
    let other = produce(&plain, "txn-basic", stamped(-1, -1, -1, &["plain-1"])).await;
    assert_eq!((other.error_code, other.base_offset), (0, 0));
    txn.send_ok(0, "txn-basic", 0, 2, &["a2"]).await;
    txn.send_ok(0, "txn-basic", 1, 0, &["b0"]).await;
    assert_eq!(values(&broker.addr, "txn-basic", 2).await, vec![vec!["plain-1"], vec![]], "nothing staged is visible");
    let listed = list_txns(&broker.addr).await;
    assert_eq!(listed.transactions.len(), 1);
    assert_eq!(listed.transactions[0].transactional_id, "basic");
    assert_eq!(listed.transactions[0].staged_batches, 3);
    assert_eq!(listed.transactions[0].state, "open");

    let committed = txn.end(0, true).await;
    assert_eq!(committed.error_code, 0, "{}", committed.error_message);
    let offsets: Vec<(u32, u64, u64)> = committed.topics[0]
        .partitions
        .iter()
        .map(|partition| (partition.partition, partition.base_offset, partition.last_offset))
        .collect();
    assert_eq!(offsets, vec![(0, 1, 3), (1, 0, 0)], "the commit answers with the offsets it appended");
    assert_eq!(
        values(&broker.addr, "txn-basic", 2).await,
        vec![vec!["plain-1", "a0", "a1", "a2"], vec!["b0"]],
        "the transaction's records are contiguous and in staging order"
    );
    assert!(list_txns(&broker.addr).await.transactions.is_empty());

    // Transaction 1: aborted, nothing of it ever appears.
    txn.send_ok(1, "txn-basic", 0, 0, &["x0"]).await;
    txn.send_ok(1, "txn-basic", 1, 0, &["y0"]).await;
    let aborted = txn.end(1, false).await;
    assert_eq!(aborted.error_code, 0, "{}", aborted.error_message);
    // Transaction 2 starts from staging sequence 0 again and commits.
    txn.send_ok(2, "txn-basic", 1, 0, &["b1"]).await;
    assert_eq!(txn.end(2, true).await.error_code, 0);
    assert_eq!(
        values(&broker.addr, "txn-basic", 2).await,
        vec![vec!["plain-1", "a0", "a1", "a2"], vec!["b0", "b1"]],
        "the aborted transaction left nothing and offsets stay dense"
    );
    let scraped = broker.scrape().await;
    assert_eq!(metric(&scraped, "ferry_transactions_committed_total"), Some(2.0));
    assert_eq!(metric(&scraped, "ferry_transactions_aborted_total{reason=\"requested\"}"), Some(1.0));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_sent_in_a_transaction_are_committed_with_it_or_not_at_all() {
    let broker = TestBroker::start().await;
    broker.create_topic("txn-in", 1, &[]).await;
    broker.create_topic("txn-out", 1, &[]).await;
    let txn = Txn::init(&broker.addr, "offsets", 0).await;

    txn.send_ok(0, "txn-out", 0, 0, &["copied-0"]).await;
    assert_eq!(txn.offsets(0, "copiers", "txn-in", 0, 17).await.0, 0);
    assert_eq!(committed_offset(&broker.addr, "copiers", "txn-in", 0).await, None, "not before the commit");
    assert_eq!(txn.end(0, false).await.error_code, 0);
    assert_eq!(committed_offset(&broker.addr, "copiers", "txn-in", 0).await, None, "an abort commits no offset");

    txn.send_ok(1, "txn-out", 0, 0, &["copied-1"]).await;
    assert_eq!(txn.offsets(1, "copiers", "txn-in", 0, 18).await.0, 0);
    assert_eq!(txn.offsets(1, "copiers", "txn-in", 0, 19).await.0, 0, "a later offset replaces the earlier");
    assert_eq!(txn.end(1, true).await.error_code, 0);
    assert_eq!(committed_offset(&broker.addr, "copiers", "txn-in", 0).await, Some(19));
    assert_eq!(values(&broker.addr, "txn-out", 1).await, vec![vec!["copied-1"]]);

    // A transaction of offsets only commits too.
    assert_eq!(txn.offsets(2, "copiers", "txn-in", 0, 25).await.0, 0);
    assert_eq!(txn.end(2, true).await.error_code, 0);
    assert_eq!(committed_offset(&broker.addr, "copiers", "txn-in", 0).await, Some(25));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_fences_the_old_one_and_aborts_its_open_transaction() {
    let broker = TestBroker::start().await;
    broker.create_topic("txn-fence", 1, &[]).await;
    broker.create_topic("txn-fence-in", 1, &[]).await;
    let zombie = Txn::init(&broker.addr, "fence", 0).await;
    zombie.send_ok(0, "txn-fence", 0, 0, &["zombie-0"]).await;

    let current = Txn::init(&broker.addr, "fence", 0).await;
    assert_eq!(current.producer_id, zombie.producer_id, "a transactional id keeps its producer id");
    assert_eq!(current.epoch, zombie.epoch + 1, "and gets a new epoch");

    // Every later request of the old instance is refused, and none of its writes becomes visible.
    let produce = zombie.send(0, "txn-fence", 0, 1, &["zombie-1"]).await;
    assert_eq!(code(produce.error_code), Some(ErrorCode::ProducerFenced), "{}", produce.error_message);
    let offsets = zombie.offsets(0, "g", "txn-fence-in", 0, 5).await;
    assert_eq!(code(offsets.0), Some(ErrorCode::ProducerFenced), "{}", offsets.1);
    let commit = zombie.end(0, true).await;
    assert_eq!(code(commit.error_code), Some(ErrorCode::ProducerFenced), "{}", commit.error_message);
    let produce = zombie.send(1, "txn-fence", 0, 0, &["zombie-2"]).await;
    assert_eq!(code(produce.error_code), Some(ErrorCode::ProducerFenced));

    current.send_ok(0, "txn-fence", 0, 0, &["current-0"]).await;
    assert_eq!(current.end(0, true).await.error_code, 0);
    assert_eq!(values(&broker.addr, "txn-fence", 1).await, vec![vec!["current-0"]]);
    let commit = zombie.end(0, true).await;
    assert_eq!(code(commit.error_code), Some(ErrorCode::ProducerFenced));
    assert_eq!(values(&broker.addr, "txn-fence", 1).await, vec![vec!["current-0"]], "still nothing of the zombie");
    let scraped = broker.scrape().await;
    assert_eq!(metric(&scraped, "ferry_transactions_aborted_total{reason=\"fenced\"}"), Some(1.0));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_or_replayed_request_never_changes_a_newer_transaction() {
    let broker = TestBroker::start().await;
    broker.create_topic("txn-stale", 1, &[]).await;
    let txn = Txn::init(&broker.addr, "stale", 0).await;

    // A resent TxnProduce (same staging sequence) is staged once.
    txn.send_ok(0, "txn-stale", 0, 0, &["t0-a"]).await;
    txn.send_ok(0, "txn-stale", 0, 0, &["t0-a"]).await;
    txn.send_ok(0, "txn-stale", 0, 1, &["t0-b"]).await;
    assert_eq!(txn.end(0, true).await.error_code, 0);
    // A retried EndTxn of the committed transaction gets the same outcome and appends nothing.
    assert_eq!(txn.end(0, true).await.error_code, 0);
    assert_eq!(values(&broker.addr, "txn-stale", 1).await, vec![vec!["t0-a", "t0-b"]]);

    txn.send_ok(1, "txn-stale", 0, 0, &["t1-a"]).await;
    // Delayed frames of transaction 0 arrive while transaction 1 is open: refused, transaction 1 untouched.
    let late_produce = txn.send(0, "txn-stale", 0, 2, &["t0-late"]).await;
    assert_eq!(code(late_produce.error_code), Some(ErrorCode::InvalidTxnState), "{}", late_produce.error_message);
    let late_abort = txn.end(0, false).await;
    assert_eq!(code(late_abort.error_code), Some(ErrorCode::InvalidTxnState), "{}", late_abort.error_message);
    let late_commit = txn.end(0, true).await;
    assert_eq!(code(late_commit.error_code), Some(ErrorCode::InvalidTxnState));
    // A request for a later transaction while one is open is refused too.
    let ahead = txn.send(5, "txn-stale", 0, 0, &["t5"]).await;
    assert_eq!(code(ahead.error_code), Some(ErrorCode::InvalidTxnState));
    let listed = list_txns(&broker.addr).await;
    assert_eq!((listed.transactions[0].transaction, listed.transactions[0].staged_batches), (1, 1));
    assert_eq!(txn.end(1, true).await.error_code, 0);
    assert_eq!(values(&broker.addr, "txn-stale", 1).await, vec![vec!["t0-a", "t0-b", "t1-a"]]);

    // Transaction 2 aborted; a delayed commit of it fails clearly and a late TxnProduce cannot revive it.
    txn.send_ok(2, "txn-stale", 0, 0, &["t2"]).await;
    assert_eq!(txn.end(2, false).await.error_code, 0);
    let commit = txn.end(2, true).await;
    assert_eq!(code(commit.error_code), Some(ErrorCode::TransactionAborted), "{}", commit.error_message);
    let revive = txn.send(2, "txn-stale", 0, 1, &["t2-late"]).await;
    assert_eq!(code(revive.error_code), Some(ErrorCode::TransactionAborted));
    // A commit of a transaction with a missing staged batch (a lost TxnProduce) is refused and aborted.
    txn.send_ok(3, "txn-stale", 0, 0, &["t3-a"]).await;
    txn.send_ok(3, "txn-stale", 0, 2, &["t3-c"]).await;
    let incomplete = txn.end(3, true).await;
    assert_eq!(code(incomplete.error_code), Some(ErrorCode::TransactionAborted), "{}", incomplete.error_message);
    assert_eq!(values(&broker.addr, "txn-stale", 1).await, vec![vec!["t0-a", "t0-b", "t1-a"]]);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_transaction_times_out_without_blocking_readers() {
    let broker = TestBroker::start_with(|config| {
        config.transactions.timeout_check_interval = Duration::from_millis(20);
    })
    .await;
    broker.create_topic("txn-timeout", 1, &[]).await;
    let plain = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    let txn = Txn::init(&broker.addr, "abandoned", 300).await;
    txn.send_ok(0, "txn-timeout", 0, 0, &["never"]).await;
    // Meanwhile other records are written and read at once.
    for value in ["p0", "p1"] {
        assert_eq!(produce(&plain, "txn-timeout", stamped(-1, -1, -1, &[value])).await.error_code, 0);
    }
    assert_eq!(values(&broker.addr, "txn-timeout", 1).await, vec![vec!["p0", "p1"]]);
    eventually("the transaction to time out", || async { list_txns(&broker.addr).await.transactions.is_empty() }).await;
    let commit = txn.end(0, true).await;
    assert_eq!(code(commit.error_code), Some(ErrorCode::TransactionAborted), "{}", commit.error_message);
    assert!(commit.error_message.contains("timeout"), "{}", commit.error_message);
    assert_eq!(values(&broker.addr, "txn-timeout", 1).await, vec![vec!["p0", "p1"]]);
    let scraped = broker.scrape().await;
    assert_eq!(metric(&scraped, "ferry_transactions_aborted_total{reason=\"timeout\"}"), Some(1.0));
    // The producer goes on with the next transaction.
    txn.send_ok(1, "txn-timeout", 0, 0, &["next"]).await;
    assert_eq!(txn.end(1, true).await.error_code, 0);
    assert_eq!(values(&broker.addr, "txn-timeout", 1).await, vec![vec!["p0", "p1", "next"]]);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_and_abort_open_transactions() {
    let broker = TestBroker::start().await;
    broker.create_topic("txn-ops", 2, &[]).await;
    let txn = Txn::init(&broker.addr, "stuck", 0).await;
    txn.send_ok(0, "txn-ops", 1, 0, &["a", "b"]).await;
    let listed = list_txns(&broker.addr).await;
    let open = &listed.transactions[0];
    assert_eq!((open.transactional_id.as_str(), open.producer_id, open.transaction), ("stuck", txn.producer_id, 0));
    assert_eq!(open.partitions, vec![TopicPartitions { topic: "txn-ops".to_owned(), partitions: vec![1] }]);
    assert_eq!(open.timeout_ms, 60_000);
    assert!(open.staged_bytes > 0);
    let connection = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    let abort = |id: &str| Request::AbortTxn(AbortTxnRequest { transactional_id: id.to_owned() });
    let Response::AbortTxn(aborted) = connection.request(abort("stuck")).await.expect("answered") else { panic!() };
    assert_eq!((aborted.error_code, aborted.aborted), (0, true));
    let Response::AbortTxn(again) = connection.request(abort("stuck")).await.expect("answered") else { panic!() };
    assert_eq!((again.error_code, again.aborted), (0, false), "nothing left to abort");
    let Response::AbortTxn(unknown) = connection.request(abort("nobody")).await.expect("answered") else { panic!() };
    assert_eq!(code(unknown.error_code), Some(ErrorCode::TransactionalIdNotFound));
    assert!(list_txns(&broker.addr).await.transactions.is_empty());
    let commit = txn.end(0, true).await;
    assert_eq!(code(commit.error_code), Some(ErrorCode::TransactionAborted));
    assert!(commit.error_message.contains("operator"), "{}", commit.error_message);
    broker.stop().await;
}

/// Starts the real binary on `data_dir`, with `FERRY_FAILPOINT` set to `failpoint` if given.
fn start_binary(data_dir: &std::path::Path, failpoint: Option<&str>) -> (BrokerProcess, String) {
    tokio::task::block_in_place(|| {
        let mut broker = BrokerProcess::start_with_env(data_dir, failpoint.map(|value| ("FERRY_FAILPOINT", value)));
        let address = crate::harness::client_address(&mut broker);
        (broker, address.to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_an_open_transaction_is_aborted_and_a_decided_one_is_finished() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let (broker, addr) = start_binary(data_dir.path(), Some("txn_mid_apply"));
    let admin = ferry_client::Admin::new(addr.clone(), ConnectionConfig::default()).expect("admin");
    admin.create_topic("txn-crash", 3, Default::default()).await.expect("topic created");
    let open = Txn::init(&addr, "open-at-crash", 0).await;
    open.send_ok(0, "txn-crash", 0, 0, &["open-0"]).await;
    let decided = Txn::init(&addr, "decided-at-crash", 0).await;
    for partition in 0..3 {
        decided.send_ok(0, "txn-crash", partition, 0, &["d-0", "d-1"]).await;
        decided.send_ok(0, "txn-crash", partition, 2, &["d-2"]).await;
    }
    // The failpoint aborts the broker process after the first partition of the apply is durable.
    let commit = tokio::time::timeout(Duration::from_secs(30), decided.try_end(0, true)).await;
    assert!(matches!(commit, Ok(Err(_))), "the broker died during the commit instead of answering: {commit:?}");
    let (status, _) = tokio::task::block_in_place(|| broker.wait_for_exit());
    assert!(!status.success(), "the failpoint aborted the broker");

    let (broker, addr) = start_binary(data_dir.path(), None);
    let by_partition = values(&addr, "txn-crash", 3).await;
    for (partition, values) in by_partition.iter().enumerate() {
        assert_eq!(values, &vec!["d-0", "d-1", "d-2"], "partition {partition}: the decided commit, exactly once");
    }
    // The decided transaction is committed; the open one was aborted by the restart.
    let decided = Txn { connection: Connection::new(addr.clone(), ConnectionConfig::default()).unwrap(), ..decided };
    assert_eq!(decided.end(0, true).await.error_code, 0, "a retried commit of the finished transaction succeeds");
    let open = Txn { connection: Connection::new(addr.clone(), ConnectionConfig::default()).unwrap(), ..open };
    let commit = open.end(0, true).await;
    assert_eq!(code(commit.error_code), Some(ErrorCode::TransactionAborted), "{}", commit.error_message);
    assert!(list_txns(&addr).await.transactions.is_empty());
    // The producer goes on: sequences continue after the recovered apply.
    decided.send_ok(1, "txn-crash", 0, 0, &["d-3"]).await;
    assert_eq!(decided.end(1, true).await.error_code, 0);
    assert_eq!(values(&addr, "txn-crash", 3).await[0], vec!["d-0", "d-1", "d-2", "d-3"]);
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_the_decision_still_commits_everything() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let (broker, addr) = start_binary(data_dir.path(), Some("txn_after_decision"));
    let admin = ferry_client::Admin::new(addr.clone(), ConnectionConfig::default()).expect("admin");
    admin.create_topic("txn-decided", 2, Default::default()).await.expect("topic created");
    admin.create_topic("txn-decided-in", 1, Default::default()).await.expect("topic created");
    let txn = Txn::init(&addr, "decided", 0).await;
    txn.send_ok(0, "txn-decided", 0, 0, &["x"]).await;
    txn.send_ok(0, "txn-decided", 1, 0, &["y"]).await;
    assert_eq!(txn.offsets(0, "grp", "txn-decided-in", 0, 7).await.0, 0);
    let commit = tokio::time::timeout(Duration::from_secs(30), txn.try_end(0, true)).await;
    assert!(matches!(commit, Ok(Err(_))), "the broker died after the decision instead of answering: {commit:?}");
    let (status, _) = tokio::task::block_in_place(|| broker.wait_for_exit());
    assert!(!status.success(), "the failpoint aborted the broker");

    let (broker, addr) = start_binary(data_dir.path(), None);
    assert_eq!(values(&addr, "txn-decided", 2).await, vec![vec!["x"], vec!["y"]]);
    assert_eq!(committed_offset(&addr, "grp", "txn-decided-in", 0).await, Some(7));
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_of_transactions_the_broker_never_saw_are_skipped_and_an_abort_uses_one_up() {
    let broker = TestBroker::start().await;
    broker.create_topic("txn-skip", 1, &[]).await;
    let txn = Txn::init(&broker.addr, "skip", 0).await;
    // Transaction 0 ended in the client before anything reached the broker (an empty commit): 1 may begin.
    txn.send_ok(1, "txn-skip", 0, 0, &["t1"]).await;
    assert_eq!(txn.end(1, true).await.error_code, 0);
    // Transaction 2's first request was refused (say, its offsets by the group check); the client aborts it.
    assert_eq!(txn.end(2, false).await.error_code, 0);
    // The abort used number 2 up: a delayed TxnProduce of it cannot begin it afterwards.
    let late = txn.send(2, "txn-skip", 0, 0, &["t2-late"]).await;
    assert_eq!(code(late.error_code), Some(ErrorCode::TransactionAborted), "{}", late.error_message);
    txn.send_ok(3, "txn-skip", 0, 0, &["t3"]).await;
    assert_eq!(txn.end(3, true).await.error_code, 0);
    assert_eq!(values(&broker.addr, "txn-skip", 1).await, vec![vec!["t1", "t3"]]);
    broker.stop().await;
}

/// A transactional producer through the fault proxy with short timeouts, so that dropped, delayed, duplicated and
/// reset frames make it retry (and delayed frames arrive after their retries).
async fn producer_through(addr: &str, id: &str) -> ferry_client::TransactionalProducer {
    let mut config = ferry_client::TransactionalConfig::new(id);
    config.request_timeout = Duration::from_millis(800);
    config.retry_backoff = Duration::from_millis(20);
    loop {
        match ferry_client::TransactionalProducer::connect(addr, config.clone()).await {
            Ok(producer) => return producer,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_fault_proxy_old_frames_never_change_a_newer_transaction() {
    let broker = TestBroker::start().await;
    broker.create_topic("txn-faults", 2, &[]).await;
    let upstream: std::net::SocketAddr = broker.addr.parse().expect("broker address");
    let proxy = FaultProxy::start(upstream, FaultPlan::none()).await;
    let addr = proxy.addr().to_string();
    // Per transaction: Some(true) committed, Some(false) aborted, None: the producer got an error (outcome unknown).
    let mut outcomes: BTreeMap<String, Option<bool>> = BTreeMap::new();
    for (round, api) in [ApiKey::TxnProduce, ApiKey::EndTxn].into_iter().enumerate() {
        let plan = FaultPlan {
            api: Some(api),
            delay_max: Duration::from_millis(1500),
            ..FaultPlan::uniform(round as u64 + 11, 0.06)
        };
        proxy.set_plan(plan);
        let mut producer = producer_through(&addr, "faulty").await;
        for txn in 0..40 {
            let id = format!("r{round}-t{txn}");
            let result: Result<bool, ClientError> = async {
                producer.begin()?;
                for idx in 0..4u32 {
                    let record = ferry_client::ProducerRecord::new("txn-faults", format!("{id}-{idx}"));
                    producer.send(record.with_partition(idx % 2)).await?;
                }
                if txn % 4 == 3 {
                    producer.abort().await.map(|()| false)
                } else {
                    producer.commit().await.map(|_| true)
                }
            }
            .await;
            match result {
                Ok(committed) => {
                    outcomes.insert(id, Some(committed));
                }
                Err(_) => {
                    outcomes.insert(id, None);
                    // A new instance fences this one and settles its transaction.
                    producer = producer_through(&addr, "faulty").await;
                }
            }
        }
        producer.close().await;
    }
    let counts = proxy.counts();
    proxy.stop().await;
    assert!(counts.faults() >= 5, "the proxy injected faults: {counts:?}");
    assert!(counts.frames_delayed + counts.requests_duplicated > 0, "old frames arrived late or twice: {counts:?}");

    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for value in values(&broker.addr, "txn-faults", 2).await.into_iter().flatten() {
        let (id, _) = value.rsplit_once('-').expect("ID-IDX");
        *copies.entry(id.to_owned()).or_default() += 1;
    }
    for (id, outcome) in &outcomes {
        let seen = copies.get(id).copied().unwrap_or(0);
        match outcome {
            Some(true) => assert_eq!(seen, 4, "committed transaction {id}: all of it, once"),
            Some(false) => assert_eq!(seen, 0, "aborted transaction {id}: none of it"),
            None => {
                assert!(seen == 0 || seen == 4, "transaction {id} of unknown outcome: all or nothing, once ({seen})")
            }
        }
    }
    assert!(copies.keys().all(|id| outcomes.contains_key(id)), "nothing but the transactions sent");
    let committed = outcomes.values().filter(|outcome| **outcome == Some(true)).count();
    assert!(committed >= 30, "most transactions committed despite the faults: {committed} of {}", outcomes.len());
    eprintln!("fault-proxy transactions: {} sent, {committed} committed, {counts:?}", outcomes.len());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_produce_with_a_transactional_id_commits_every_txn_size_lines_and_nothing_of_a_killed_run() {
    use clap::Parser as _;
    use tokio::io::AsyncWriteExt as _;

    let broker = TestBroker::start().await;
    broker.create_topic("cli-lines", 2, &[]).await;
    let cli = |lines: &str| {
        let args = ["ferry", "--broker", &broker.addr, "produce", "cli-lines", "--transactional-id", "loader"];
        ferry_client::cli::Cli::try_parse_from(args.into_iter().chain(["--txn-size", lines])).expect("valid flags")
    };
    let visible = || async {
        let mut lines: Vec<String> = values(&broker.addr, "cli-lines", 2).await.into_iter().flatten().collect();
        lines.sort();
        lines
    };
    // A run killed after 15 lines of stdin: its first transaction (10 lines) is committed, its second never.
    let (mut stdin, stdin_reader) = tokio::io::duplex(64 * 1024);
    let input: String = (0..15).map(|idx| format!("a{idx:02}\n")).collect();
    stdin.write_all(input.as_bytes()).await.expect("stdin");
    let killed = tokio::spawn(ferry_client::cli::run(
        cli("10"),
        tokio::io::BufReader::new(stdin_reader),
        tokio::io::sink(),
        tokio::io::sink(),
    ));
    eventually("the first transaction is visible", || async { visible().await.len() == 10 }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    killed.abort();
    let _ = killed.await;
    let expected: Vec<String> = (0..10).map(|idx| format!("a{idx:02}")).collect();
    assert_eq!(visible().await, expected, "the killed run's open transaction stays invisible");

    // A new run with the same transactional id fences the killed one and commits all of its stdin (one transaction).
    let input: String = (0..5).map(|idx| format!("b{idx:02}\n")).collect();
    let mut stderr = Vec::new();
    ferry_client::cli::run(cli("100"), input.as_bytes(), tokio::io::sink(), &mut stderr).await.expect("committed");
    assert!(String::from_utf8_lossy(&stderr).contains("5 of 5 records committed"));
    let mut expected = expected;
    expected.extend((0..5).map(|idx| format!("b{idx:02}")));
    assert_eq!(visible().await, expected);
    assert!(list_txns(&broker.addr).await.transactions.is_empty(), "the killed run's transaction was aborted");
    drop(stdin);
    broker.stop().await;
}
