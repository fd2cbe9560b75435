//! The fault proxy's self-tests: each fault really happens (the counters say so) and has its effect on a plain
//! producer (acks=all, idempotence off: duplicates and reordering), and the idempotent producer (the default) comes
//! through every one of them with each record exactly once and in order.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_client::{ConnectionConfig, Producer, ProducerConfig, ProducerRecord};
use ferry_protocol::limits::FRAME_BYTES_MAX;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Fault, FaultCounts, FaultPlan, FaultProxy, Mode};
use crate::chaos::checker::{Expect, Report, check};
use crate::chaos::history::{History, Outcome, Send};
use crate::chaos::read_all;
use crate::harness::{TestBroker, eventually, expect_closed};

const TOPIC: &str = "proxied";

/// A producer through the proxy that notices a lost response within seconds and retries soon.
///
/// The request timeout is how long a dropped request or response costs; it is not shorter because a loaded machine
/// (CI shares two cores) must not time out an unharmed request, which would retry it and change the counts.
fn producer_config(max_in_flight_per_partition: u32, idempotence: bool) -> ProducerConfig {
    ProducerConfig {
        idempotence,
        delivery_timeout: Duration::from_secs(60),
        retry_backoff_initial: Duration::from_millis(20),
        retry_backoff_max: Duration::from_millis(200),
        max_in_flight_per_partition,
        connection: ConnectionConfig {
            request_timeout: Duration::from_secs(3),
            reconnect_backoff_initial: Duration::from_millis(10),
            reconnect_backoff_max: Duration::from_millis(100),
            ..ConnectionConfig::default()
        },
        ..ProducerConfig::default()
    }
}

/// A broker with `partitions` partitions of [`TOPIC`] and a proxy in front of it.
async fn broker_and_proxy(partitions: u32, plan: FaultPlan) -> (TestBroker, FaultProxy) {
    let broker = TestBroker::start().await;
    broker.create_topic(TOPIC, partitions, &[]).await;
    let upstream: SocketAddr = broker.addr.parse().expect("the broker's address");
    let proxy = FaultProxy::start(upstream, plan).await;
    (broker, proxy)
}

/// What a run did: the proxy's counts, the history and the checker's report on it.
struct Run {
    counts: FaultCounts,
    history: History,
    report: Report,
}

/// Sends `n_records` values (`p0-{seq}`, to partition `seq % partitions`) through `proxy`, all at once, waits for
/// every outcome, then reads the topic straight from the broker and checks the history. With
/// `await_duplicate_answers` (a plan whose only fault duplicates a request), it first waits until the proxy has
/// swallowed the second answer of every duplicated request.
async fn send_and_check(
    broker: &TestBroker,
    proxy: &FaultProxy,
    partitions: u32,
    n_records: u64,
    config: ProducerConfig,
    await_duplicate_answers: bool,
) -> Run {
    let producer = Producer::new(proxy.addr().to_string(), config).expect("producer");
    let mut deliveries = Vec::new();
    let mut history = History::default();
    for seq in 0..n_records {
        let partition = u32::try_from(seq % u64::from(partitions)).expect("below the partition count");
        let value = format!("p0-{seq}");
        let record = ProducerRecord::new(TOPIC, value.clone()).with_partition(partition);
        deliveries.push(producer.send(record).await.expect("accepted"));
        history.sends.push(Send { producer: 0, seq, partition, value, outcome: Outcome::Pending });
    }
    for (send, delivery) in history.sends.iter_mut().zip(deliveries) {
        send.outcome = match delivery.await {
            Ok(metadata) => Outcome::Ok { offset: metadata.offset.expect("acks=all returns an offset") },
            Err(_) => Outcome::Unknown,
        };
    }
    // A duplicated request's second answer comes after the client already has the first: wait for it, so the broker
    // has appended both copies before the topic is read and the proxy has counted the answer it swallowed (closing
    // the producer first raced with both on a loaded machine). Not under random plans: another fault may take the
    // second answer away.
    if await_duplicate_answers {
        eventually("the second answer of every duplicated request", || async {
            let counts = proxy.counts();
            counts.duplicate_responses_swallowed == counts.requests_duplicated
        })
        .await;
    }
    producer.close().await.expect("close");
    history.reads = read_all(&broker.addr, TOPIC, partitions, Duration::from_secs(30)).await;
    let report = check(&history);
    Run { counts: proxy.counts(), history, report }
}

/// One record through a proxy that applies `fault` to the first produce request; stops everything afterwards.
async fn one_record_with(fault: Fault, idempotence: bool) -> Run {
    let (broker, proxy) = broker_and_proxy(1, FaultPlan::nth(1, fault)).await;
    let run =
        send_and_check(&broker, &proxy, 1, 1, producer_config(1, idempotence), fault == Fault::DuplicateRequest).await;
    proxy.stop().await;
    broker.stop().await;
    run
}

/// Asserts the run lost nothing acknowledged and broke no rule of `expect`, and every send was acknowledged.
fn assert_clean(run: &Run, expect: Expect) {
    assert_eq!(run.report.violations(expect), Vec::<String>::new(), "{}; counts {:?}", run.report, run.counts);
    assert_eq!(run.report.n_acked, run.history.sends.len(), "every send acknowledged: {}", run.report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_faults_the_proxy_forwards_everything_once() {
    let (broker, proxy) = broker_and_proxy(2, FaultPlan::none()).await;
    let run = send_and_check(&broker, &proxy, 2, 200, producer_config(1, false), false).await;
    assert_clean(&run, Expect::EXACTLY_ONCE);
    assert_eq!(run.report.n_read, 200);
    assert_eq!(run.counts.faults(), 0, "{:?}", run.counts);
    assert_eq!(run.counts.connections, 1, "one producer connection: {:?}", run.counts);
    assert!(run.counts.eligible_requests >= 1, "{:?}", run.counts);
    // Every request (the handshake, metadata and produce) got its response.
    assert_eq!(run.counts.requests_forwarded, run.counts.responses_forwarded, "{:?}", run.counts);
    proxy.stop().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_response_makes_the_producer_retry_and_store_the_batch_twice() {
    let run = one_record_with(Fault::DropResponse, false).await;
    assert_eq!(run.counts.responses_dropped, 1, "{:?}", run.counts);
    assert_eq!(run.counts.eligible_requests, 2, "the produce request and its retry: {:?}", run.counts);
    // The broker applied the request whose answer was lost; the retry appended it again (at-least-once).
    assert_clean(&run, Expect::AT_LEAST_ONCE);
    assert_eq!(run.report.duplicates.len(), 1, "{}", run.report);
    assert_eq!(run.report.duplicates[0].at, vec![(0, 0), (0, 1)]);
    assert_eq!(run.history.sends[0].outcome, Outcome::Ok { offset: 1 }, "the retry's offset is acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_after_a_dropped_response_gets_the_original_offset() {
    let run = one_record_with(Fault::DropResponse, true).await;
    assert_eq!(run.counts.responses_dropped, 1, "{:?}", run.counts);
    assert_eq!(run.counts.eligible_requests, 2, "the produce request and its retry: {:?}", run.counts);
    assert_clean(&run, Expect::EXACTLY_ONCE);
    assert_eq!(run.history.sends[0].outcome, Outcome::Ok { offset: 0 }, "the original offset is acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_request_is_retried_and_stored_once() {
    let run = one_record_with(Fault::DropRequest, false).await;
    assert_eq!(run.counts.requests_dropped, 1, "{:?}", run.counts);
    assert_eq!(run.counts.eligible_requests, 2, "the produce request and its retry: {:?}", run.counts);
    assert_eq!(run.counts.connections, 2, "the request timeout closed the first connection: {:?}", run.counts);
    assert_clean(&run, Expect::EXACTLY_ONCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_request_is_stored_twice_and_answered_once() {
    let run = one_record_with(Fault::DuplicateRequest, false).await;
    assert_eq!(run.counts.requests_duplicated, 1, "{:?}", run.counts);
    assert_eq!(run.counts.duplicate_responses_swallowed, 1, "{:?}", run.counts);
    // The client saw exactly one answer: no timeout, no second connection, no retry.
    assert_eq!(run.counts.connections, 1, "{:?}", run.counts);
    assert_eq!(run.counts.eligible_requests, 1, "{:?}", run.counts);
    assert_clean(&run, Expect::AT_LEAST_ONCE);
    assert_eq!(run.report.duplicates.len(), 1, "the broker appended both copies: {}", run.report);
    assert_eq!(run.report.violations(Expect::EXACTLY_ONCE).len(), 1, "{}", run.report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_duplicated_on_the_wire_is_stored_once() {
    let run = one_record_with(Fault::DuplicateRequest, true).await;
    assert_eq!(run.counts.requests_duplicated, 1, "{:?}", run.counts);
    assert_clean(&run, Expect::EXACTLY_ONCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_before_forwarding_is_retried_and_stored_once() {
    let run = one_record_with(Fault::ResetBeforeForward, false).await;
    assert_eq!(run.counts.resets_before_forward, 1, "{:?}", run.counts);
    assert_eq!(run.counts.connections, 2, "the producer reconnected: {:?}", run.counts);
    assert_clean(&run, Expect::EXACTLY_ONCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_the_broker_applied_the_request_stores_the_batch_twice() {
    let run = one_record_with(Fault::ResetAfterForward, false).await;
    assert_eq!(run.counts.resets_after_forward, 1, "{:?}", run.counts);
    assert_eq!(run.counts.connections, 2, "the producer reconnected: {:?}", run.counts);
    assert_clean(&run, Expect::AT_LEAST_ONCE);
    assert_eq!(run.report.duplicates.len(), 1, "{}", run.report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_after_a_reset_of_an_applied_request_is_stored_once() {
    let run = one_record_with(Fault::ResetAfterForward, true).await;
    assert_eq!(run.counts.resets_after_forward, 1, "{:?}", run.counts);
    assert_clean(&run, Expect::EXACTLY_ONCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_request_is_overtaken_and_reorders_a_partition() {
    let (broker, proxy) = broker_and_proxy(1, FaultPlan::nth(1, Fault::DelayRequest)).await;
    // Two requests of one partition in flight at once, so the second can overtake the first.
    let producer = Producer::new(proxy.addr().to_string(), producer_config(2, false)).expect("producer");
    let first = producer.send(ProducerRecord::new(TOPIC, "p0-0").with_partition(0)).await.expect("accepted");
    eventually("the first produce request to be held", || async { proxy.counts().frames_delayed == 1 }).await;
    let second = producer.send(ProducerRecord::new(TOPIC, "p0-1").with_partition(0)).await.expect("accepted");
    let second = second.await.expect("acknowledged").offset.expect("an offset");
    let first = first.await.expect("acknowledged").offset.expect("an offset");
    producer.close().await.expect("close");
    let counts = proxy.counts();
    assert_eq!(counts.frames_overtaken, 1, "{counts:?}");
    assert_eq!(counts.connections, 1, "both answered by correlation id on one connection: {counts:?}");
    assert_eq!((second, first), (0, 1), "the later send was appended first");

    let history = History {
        sends: vec![
            Send { producer: 0, seq: 0, partition: 0, value: "p0-0".into(), outcome: Outcome::Ok { offset: first } },
            Send { producer: 0, seq: 1, partition: 0, value: "p0-1".into(), outcome: Outcome::Ok { offset: second } },
        ],
        reads: read_all(&broker.addr, TOPIC, 1, Duration::from_secs(30)).await,
    };
    let report = check(&history);
    assert_eq!(report.reordered.len(), 1, "{report}");
    assert_eq!(report.violations(Expect::AT_LEAST_ONCE).len(), 1, "{report}");
    proxy.stop().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_response_is_overtaken_and_both_are_matched_by_correlation_id() {
    let (broker, proxy) = broker_and_proxy(2, FaultPlan::nth(1, Fault::DelayResponse)).await;
    let producer = Producer::new(proxy.addr().to_string(), producer_config(1, false)).expect("producer");
    let first = producer.send(ProducerRecord::new(TOPIC, "p0-0").with_partition(0)).await.expect("accepted");
    eventually("the first response to be held", || async { proxy.counts().frames_delayed == 1 }).await;
    let second = producer.send(ProducerRecord::new(TOPIC, "p0-1").with_partition(1)).await.expect("accepted");
    let second = second.await.expect("acknowledged");
    assert_eq!(proxy.counts().frames_overtaken, 1, "the held response went right after the newer one");
    let first = first.await.expect("acknowledged");
    assert_eq!((first.partition, first.offset), (0, Some(0)));
    assert_eq!((second.partition, second.offset), (1, Some(0)));
    producer.close().await.expect("close");
    assert_eq!(proxy.counts().connections, 1, "no timeout, no reconnection");
    proxy.stop().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_everything_back_and_blackhole_discards_it() {
    let (broker, proxy) = broker_and_proxy(1, FaultPlan::none()).await;
    let mut config = producer_config(1, false);
    // Long enough that a paused request does not time out.
    config.connection.request_timeout = Duration::from_secs(30);
    let producer = Producer::new(proxy.addr().to_string(), config).expect("producer");
    producer.send(ProducerRecord::new(TOPIC, "p0-0").with_partition(0)).await.expect("accepted").await.expect("ack");

    proxy.set_mode(Mode::Pause);
    let forwarded = proxy.counts().requests_forwarded;
    let paused = producer.send(ProducerRecord::new(TOPIC, "p0-1").with_partition(0)).await.expect("accepted");
    let mut paused = Box::pin(paused);
    // Not a synchronisation: only a window in which a broken pause would let the record through.
    assert!(tokio::time::timeout(Duration::from_millis(300), paused.as_mut()).await.is_err(), "paused");
    assert_eq!(proxy.counts().requests_forwarded, forwarded, "nothing forwarded while paused");
    proxy.set_mode(Mode::Forward);
    assert_eq!(paused.await.expect("acknowledged after resuming").offset, Some(1));

    proxy.set_mode(Mode::Blackhole);
    let mut quick = producer_config(1, false);
    quick.connection.request_timeout = Duration::from_millis(300);
    quick.connection.connect_timeout = Duration::from_millis(300);
    let blackholed_producer = Producer::new(proxy.addr().to_string(), quick).expect("producer");
    // `send` itself waits for the topic's metadata, which the black hole swallows too.
    let delivery = tokio::spawn({
        let producer = blackholed_producer.clone();
        async move { producer.send(ProducerRecord::new(TOPIC, "p0-2").with_partition(0)).await?.await }
    });
    eventually("frames to vanish in the black hole", || async { proxy.counts().frames_blackholed >= 1 }).await;
    proxy.set_mode(Mode::Forward);
    let offset = delivery.await.expect("task").expect("acknowledged once forwarding resumed").offset;
    assert_eq!(offset, Some(2));
    blackholed_producer.close().await.expect("close");
    producer.close().await.expect("close");
    let reads = read_all(&broker.addr, TOPIC, 1, Duration::from_secs(30)).await;
    let values: Vec<&str> = reads.iter().map(|read| read.value.as_str()).collect();
    assert_eq!(values, ["p0-0", "p0-1", "p0-2"]);
    proxy.stop().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_random_faults_lose_no_acknowledged_record() {
    let seed = crate::chaos::rng::seed_from_env();
    println!("seeded_random_faults: FERRY_CHAOS_SEED={seed}");
    let plan = FaultPlan { delay_max: Duration::from_millis(200), ..FaultPlan::uniform(seed, 0.04) };
    let (broker, proxy) = broker_and_proxy(4, FaultPlan::none()).await;
    proxy.set_plan(plan);
    let mut config = producer_config(1, false);
    // Only at-least-once is asserted here, so a spurious timeout does no harm: keep each dropped message cheap.
    config.connection.request_timeout = Duration::from_millis(500);
    // Small batches, so the records make many requests.
    config.batch_bytes_max = 256;
    config.linger = Duration::ZERO;
    let run = send_and_check(&broker, &proxy, 4, 2000, config, false).await;
    println!("seeded_random_faults: {:?}; {}", run.counts, run.report);
    // One request in flight per partition: retries can duplicate, never lose or reorder.
    assert_clean(&run, Expect::AT_LEAST_ONCE);
    assert!(run.counts.faults() >= 5, "faults were injected: {:?}", run.counts);
    proxy.stop().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overtaken_idempotent_request_waits_for_its_predecessor_and_keeps_the_order() {
    let (broker, proxy) = broker_and_proxy(1, FaultPlan::nth(1, Fault::DelayRequest)).await;
    let producer = Producer::new(proxy.addr().to_string(), producer_config(2, true)).expect("producer");
    let first = producer.send(ProducerRecord::new(TOPIC, "p0-0").with_partition(0)).await.expect("accepted");
    eventually("the first produce request to be held", || async { proxy.counts().frames_delayed == 1 }).await;
    let second = producer.send(ProducerRecord::new(TOPIC, "p0-1").with_partition(0)).await.expect("accepted");
    // The second arrives first and is refused (OUT_OF_ORDER_SEQUENCE), then resent after the first.
    let first = first.await.expect("acknowledged").offset.expect("an offset");
    let second = second.await.expect("acknowledged").offset.expect("an offset");
    producer.close().await.expect("close");
    assert_eq!(proxy.counts().frames_overtaken, 1, "{:?}", proxy.counts());
    assert_eq!((first, second), (0, 1), "appended in send order");
    let history = History {
        sends: vec![
            Send { producer: 0, seq: 0, partition: 0, value: "p0-0".into(), outcome: Outcome::Ok { offset: first } },
            Send { producer: 0, seq: 1, partition: 0, value: "p0-1".into(), outcome: Outcome::Ok { offset: second } },
        ],
        reads: read_all(&broker.addr, TOPIC, 1, Duration::from_secs(30)).await,
    };
    assert_eq!(check(&history).violations(Expect::EXACTLY_ONCE), Vec::<String>::new());
    proxy.stop().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_random_faults_leave_an_idempotent_producer_exactly_once_and_in_order() {
    let seed = crate::chaos::rng::seed_from_env();
    println!("seeded_random_faults (idempotent): FERRY_CHAOS_SEED={seed}");
    let plan = FaultPlan { delay_max: Duration::from_millis(200), ..FaultPlan::uniform(seed, 0.04) };
    let (broker, proxy) = broker_and_proxy(4, FaultPlan::none()).await;
    proxy.set_plan(plan);
    // Five requests in flight per partition, so delays reorder requests and retries overtake each other.
    let mut config = producer_config(5, true);
    config.connection.request_timeout = Duration::from_millis(500);
    config.batch_bytes_max = 256;
    config.linger = Duration::ZERO;
    let run = send_and_check(&broker, &proxy, 4, 2000, config, false).await;
    println!("seeded_random_faults (idempotent): {:?}; {}", run.counts, run.report);
    assert_clean(&run, Expect::EXACTLY_ONCE);
    assert!(run.counts.faults() >= 5, "faults were injected: {:?}", run.counts);
    proxy.stop().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_prefix_above_the_frame_limit_closes_the_connection() {
    let (broker, proxy) = broker_and_proxy(1, FaultPlan::none()).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    // Only the prefix: a proxy that buffered up to the announced length would wait for 8 MiB instead of closing.
    stream.write_all(&(FRAME_BYTES_MAX + 1).to_be_bytes()).await.expect("write");
    expect_closed(&mut stream).await;
    assert_eq!(proxy.counts().bad_length_closed, 1);
    assert_eq!(proxy.counts().requests_forwarded, 0, "nothing reached the broker");
    proxy.stop().await;
    broker.stop().await;
}
