//! Bad input on a live broker (raw TCP for malformed frames, the client for bad requests), the connection limit
//! and the request-read timeout: each gets its documented error, and other clients are not disturbed.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_client::{
    ClientError, Connection, ConnectionConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    SeekTo,
};
use ferry_protocol::frame::FrameHeader;
use ferry_protocol::limits::FRAME_BYTES_MAX;
use ferry_protocol::messages::{
    ApiVersionsRequest, ListTopicsRequest, ProducePartition, ProduceRequest, ProduceResponse, ProduceTopic,
    error_code_from_wire,
};
use ferry_protocol::{ApiKey, BatchBuilder, ErrorCode, Frame, NewRecord, Request, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::harness::{TestBroker, eventually, expect_closed, metric, read_frame};

/// A record batch of `n_records` records with `value_bytes`-byte values, as a producer would send it.
fn batch(n_records: u32, value_bytes: usize) -> Bytes {
    let value = vec![b'v'; value_bytes];
    let mut builder = BatchBuilder::new();
    for idx in 0..n_records {
        let record =
            NewRecord { timestamp: 1_700_000_000_000 + i64::from(idx), key: None, value: Some(&value), headers: &[] };
        builder.push(record).expect("record fits");
    }
    builder.build().expect("batch").into_bytes()
}

fn produce(topic: &str, records: Bytes) -> Request {
    Request::Produce(ProduceRequest {
        acks: 0,
        timeout_ms: 0,
        topics: vec![ProduceTopic {
            name: topic.to_owned(),
            partitions: vec![ProducePartition { partition: 0, records }],
        }],
    })
}

/// Sends a produce through `connection` and returns the single partition's error code (NONE on success).
async fn produce_code(connection: &Connection, topic: &str, records: Bytes) -> (ErrorCode, String) {
    let Response::Produce(ProduceResponse { error_code, topics }) =
        connection.request(produce(topic, records)).await.expect("a produce response")
    else {
        panic!("not a produce response")
    };
    assert_eq!(error_code, 0, "request-wide success");
    let partition = &topics[0].partitions[0];
    (error_code_from_wire(partition.error_code).expect("a known code"), partition.error_message.clone())
}

/// Produces and consumes `n_records` on `topic`, checking every value: the undisturbed neighbour.
async fn neighbour(addr: String, topic: &'static str, n_records: u32) {
    let producer = Producer::new(addr.clone(), ProducerConfig::default()).expect("producer");
    let mut deliveries = Vec::new();
    for idx in 0..n_records {
        let record = ProducerRecord::new(topic, format!("calm {idx:05}")).with_partition(0);
        deliveries.push(producer.send(record).await.expect("accepted"));
    }
    for delivery in deliveries {
        delivery.await.expect("the neighbour's records are delivered");
    }
    producer.close().await.expect("close");
    let mut consumer = Consumer::new(addr, ConsumerConfig::default()).expect("consumer");
    consumer.assign(topic, [0]).expect("assign");
    consumer.seek(topic, 0, SeekTo::Earliest).expect("seek");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut values = Vec::new();
    while values.len() < n_records as usize {
        assert!(Instant::now() < deadline, "the neighbour read {} of {n_records} records", values.len());
        for record in consumer.poll(Duration::from_millis(500)).await.expect("poll") {
            values.push(String::from_utf8(record.value.expect("value").to_vec()).expect("utf-8"));
        }
    }
    consumer.close().await;
    let expected: Vec<String> = (0..n_records).map(|idx| format!("calm {idx:05}")).collect();
    assert_eq!(values, expected, "the neighbour reads back exactly what it wrote, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_documented_error_and_other_clients_are_not_disturbed() {
    let broker = TestBroker::start_with(|config| config.log.batch_bytes_max = 64 * 1024).await;
    broker.create_topic("calm", 1, &[]).await;
    broker.create_topic("target", 1, &[]).await;
    broker.create_topic("small", 1, &[("max.message.bytes", "1024")]).await;
    let calm = tokio::spawn(neighbour(broker.addr.clone(), "calm", 3000));

    // A frame announcing more than the limit: an error frame, then the connection is closed.
    let mut stream = TcpStream::connect(&broker.addr).await.expect("connect");
    let mut raw = BytesMut::new();
    raw.extend_from_slice(&(FRAME_BYTES_MAX + 1).to_be_bytes());
    raw.extend_from_slice(&[0, 5, 0, 0, 0, 0, 0, 7, 0, 0]);
    stream.write_all(&raw).await.expect("send");
    let mut buf = BytesMut::new();
    let frame = read_frame(&mut stream, &mut buf).await.expect("an error frame");
    assert!(frame.header.flags.is_error(), "{:?}", frame.header);
    assert!([0, 7].contains(&frame.header.correlation_id), "{:?}", frame.header);
    let Response::Error(error) = Response::decode(&frame.header, frame.body).expect("decodes") else { panic!("error") };
    assert_eq!(error_code_from_wire(error.error_code), Some(ErrorCode::InvalidRequest), "{}", error.error_message);
    expect_closed(&mut stream).await;

    // A frame whose body is not a protobuf message: an error frame echoing the correlation id, then close.
    let mut stream = TcpStream::connect(&broker.addr).await.expect("connect");
    let garbage = Frame { header: FrameHeader::request(ApiKey::Produce, 0, 8), body: Bytes::from_static(&[0xff; 16]) };
    let mut raw = BytesMut::new();
    garbage.encode(&mut raw).expect("encode");
    stream.write_all(&raw).await.expect("send");
    let mut buf = BytesMut::new();
    let frame = read_frame(&mut stream, &mut buf).await.expect("an error frame");
    assert_eq!((frame.header.correlation_id, frame.header.flags.is_error()), (8, true));
    let Response::Error(error) = Response::decode(&frame.header, frame.body).expect("decodes") else { panic!("error") };
    assert_eq!(error_code_from_wire(error.error_code), Some(ErrorCode::InvalidRequest));
    expect_closed(&mut stream).await;

    // An unknown api key: UNSUPPORTED_VERSION, then close.
    let mut stream = TcpStream::connect(&broker.addr).await.expect("connect");
    let unknown = Frame {
        header: FrameHeader { api_key: 999, ..FrameHeader::request(ApiKey::ApiVersions, 0, 9) },
        body: Bytes::new(),
    };
    let mut raw = BytesMut::new();
    unknown.encode(&mut raw).expect("encode");
    stream.write_all(&raw).await.expect("send");
    let mut buf = BytesMut::new();
    let frame = read_frame(&mut stream, &mut buf).await.expect("an error frame");
    let Response::Error(error) = Response::decode(&frame.header, frame.body).expect("decodes") else { panic!("error") };
    assert_eq!(error_code_from_wire(error.error_code), Some(ErrorCode::UnsupportedVersion));
    expect_closed(&mut stream).await;

    // Requests that decode but fail validation: the error in the response, and the connection stays open.
    let connection = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    let mut corrupt = BytesMut::from(&batch(3, 10)[..]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x40;
    let (code, message) = produce_code(&connection, "target", corrupt.freeze()).await;
    assert_eq!(code, ErrorCode::CorruptMessage, "{message}");
    let (code, message) = produce_code(&connection, "no-such-topic", batch(1, 10)).await;
    assert_eq!(code, ErrorCode::UnknownTopicOrPartition, "{message}");
    let (code, message) = produce_code(&connection, "small", batch(1, 2000)).await;
    assert_eq!(code, ErrorCode::MessageTooLarge, "over the topic's max.message.bytes: {message}");
    let (code, message) = produce_code(&connection, "target", batch(1, 100 * 1024)).await;
    assert_eq!(code, ErrorCode::RecordBatchTooLarge, "over the broker's log.batch_bytes_max: {message}");
    let (code, message) = produce_code(&connection, "target", Bytes::from_static(b"not a batch")).await;
    assert_eq!(code, ErrorCode::CorruptMessage, "{message}");
    // The same connection still works, and nothing of the rejected batches was stored.
    let (code, message) = produce_code(&connection, "target", batch(2, 10)).await;
    assert_eq!(code, ErrorCode::None, "{message}");
    let info = broker.admin().describe_topic("target").await.expect("describe");
    assert_eq!(info.partitions[0].end_offset, 2, "only the valid batch was appended");
    connection.close().await;

    tokio::time::timeout(Duration::from_secs(120), calm)
        .await
        .expect("the neighbour finishes")
        .expect("neighbour task");
    // The broker is still up for new connections.
    let fresh = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    assert!(matches!(fresh.request(Request::ListTopics(ListTopicsRequest {})).await, Ok(Response::ListTopics(_))));
    fresh.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_limit_gets_connection_limit_and_is_closed() {
    let broker = TestBroker::start_with(|config| config.server.connections_max = 2).await;
    let series = "ferry_connections_rejected_total{reason=\"limit\"}";
    let before = metric(&broker.scrape().await, series).unwrap_or(0.0);

    let first = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    let second = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    first.limits().await.expect("first connection is served");
    second.limits().await.expect("second connection is served");

    // Through the client: the handshake fails with the broker's code.
    let third = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    let error = third.limits().await.expect_err("over the limit");
    assert_eq!(error.error_code(), Some(ErrorCode::ConnectionLimit), "{error}");
    assert!(matches!(error, ClientError::Broker { .. }), "{error:?}");
    third.close().await;

    // Raw: an error frame with correlation id 0, then the connection is closed.
    let mut stream = TcpStream::connect(&broker.addr).await.expect("connect");
    let mut request = BytesMut::new();
    Request::ApiVersions(ApiVersionsRequest::default()).encode(5, &mut request).expect("encode");
    stream.write_all(&request).await.expect("send");
    let mut buf = BytesMut::new();
    let frame = read_frame(&mut stream, &mut buf).await.expect("an error frame");
    assert_eq!((frame.header.correlation_id, frame.header.flags.is_error()), (0, true), "{:?}", frame.header);
    let Response::Error(error) = Response::decode(&frame.header, frame.body).expect("decodes") else { panic!("error") };
    assert_eq!(error_code_from_wire(error.error_code), Some(ErrorCode::ConnectionLimit));
    expect_closed(&mut stream).await;

    let after = metric(&broker.scrape().await, series).expect("the rejections are counted");
    assert_eq!(after - before, 2.0, "both rejected connections are counted");

    // Closing a connection frees its slot.
    first.close().await;
    eventually("a slot to free up", || async {
        let retry = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
        let served = retry.limits().await.is_ok();
        retry.close().await;
        served
    })
    .await;
    second.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_a_frame_is_cut_off_by_the_request_read_timeout() {
    const READ_TIMEOUT: Duration = Duration::from_millis(300);
    const BYTE_INTERVAL: Duration = Duration::from_millis(50);
    const FRAME_LEN: u32 = 200;
    let broker = TestBroker::start_with(|config| config.server.request_read_timeout = READ_TIMEOUT).await;
    let series = "ferry_connections_rejected_total{reason=\"request_read_timeout\"}";
    let before = metric(&broker.scrape().await, series).unwrap_or(0.0);

    let stream = TcpStream::connect(&broker.addr).await.expect("connect");
    let (mut read_half, mut write_half) = stream.into_split();
    let started = Instant::now();
    // The client's behaviour under test: one byte every 50 ms, so the frame would take 10 s to arrive.
    let trickle = tokio::spawn(async move {
        let mut frame = FRAME_LEN.to_be_bytes().to_vec();
        frame.resize(4 + FRAME_LEN as usize, 0);
        let mut n_sent = 0usize;
        for byte in frame {
            if write_half.write_all(&[byte]).await.is_err() {
                break;
            }
            n_sent += 1;
            tokio::time::sleep(BYTE_INTERVAL).await;
        }
        n_sent
    });
    let mut rest = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(8), tokio::io::AsyncReadExt::read(&mut read_half, &mut rest))
        .await
        .expect("the broker closes the connection before the frame could complete");
    let elapsed = started.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "closed without a response: {read:?}");
    assert!(elapsed >= READ_TIMEOUT, "not before the timeout: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "well before the frame could complete (10 s): {elapsed:?}");
    trickle.abort();

    let after = metric(&broker.scrape().await, series).expect("the cut-off is counted");
    assert!(after - before >= 1.0, "{before} -> {after}");
    // Well-behaved clients are still served.
    let connection = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    assert!(matches!(connection.request(Request::ListTopics(ListTopicsRequest {})).await, Ok(Response::ListTopics(_))));
    connection.close().await;
    broker.stop().await;
}

/// Encodes `request` as a frame with `correlation_id`.
fn frame(request: &Request, correlation_id: u32) -> BytesMut {
    let mut raw = BytesMut::new();
    request.encode(correlation_id, &mut raw).expect("encode");
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_at_an_unknown_version_is_answered_and_the_connection_stays_open() {
    let broker = TestBroker::start().await;
    let mut stream = TcpStream::connect(&broker.addr).await.expect("connect");
    let future_version = Frame { header: FrameHeader::request(ApiKey::ApiVersions, 7, 21), body: Bytes::new() };
    let mut raw = BytesMut::new();
    future_version.encode(&mut raw).expect("encode");
    raw.extend_from_slice(&frame(&Request::ListTopics(ListTopicsRequest {}), 22));
    stream.write_all(&raw).await.expect("send");
    let mut buf = BytesMut::new();
    let mut answered = Vec::new();
    for _ in 0..2 {
        let frame = read_frame(&mut stream, &mut buf).await.expect("a response");
        let header = frame.header;
        let response = Response::decode(&FrameHeader { api_version: 0, ..header }, frame.body).expect("decodes");
        answered.push((header.correlation_id, header.api_version, response));
    }
    answered.sort_by_key(|(correlation_id, _, _)| *correlation_id);
    let (correlation_id, api_version, Response::ApiVersions(versions)) = &answered[0] else {
        panic!("an ApiVersions response: {answered:?}")
    };
    assert_eq!((*correlation_id, *api_version), (21, 0), "a version-0 response to the unknown version");
    assert_eq!(error_code_from_wire(versions.error_code), Some(ErrorCode::UnsupportedVersion));
    assert!(!versions.api_versions.is_empty(), "the versions are filled in");
    let limits = versions.limits.expect("limits");
    assert_eq!(limits.in_flight_requests_max, 64);
    assert_eq!(limits.frame_bytes_max, FRAME_BYTES_MAX);
    assert!(matches!(answered[1], (22, _, Response::ListTopics(_))), "the connection stayed open: {answered:?}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_produce_requests_for_one_partition_are_appended_in_send_order() {
    const N_REQUESTS: u32 = 50;
    let broker = TestBroker::start().await;
    broker.create_topic("ordered", 1, &[]).await;
    let mut stream = TcpStream::connect(&broker.addr).await.expect("connect");
    let mut raw = BytesMut::new();
    for correlation_id in 1..=N_REQUESTS {
        raw.extend_from_slice(&frame(&produce("ordered", batch(3, 100)), correlation_id));
    }
    // Every request in one write: they are pipelined, many in flight at once.
    stream.write_all(&raw).await.expect("send");
    let mut buf = BytesMut::new();
    let mut base_offsets = BTreeMap::new();
    for _ in 0..N_REQUESTS {
        let frame = read_frame(&mut stream, &mut buf).await.expect("a response");
        let Response::Produce(response) = Response::decode(&frame.header, frame.body).expect("decodes") else {
            panic!("a produce response")
        };
        let partition = &response.topics[0].partitions[0];
        assert_eq!(partition.error_code, 0, "{}", partition.error_message);
        assert_eq!(partition.last_offset, partition.base_offset + 2);
        base_offsets.insert(frame.header.correlation_id, partition.base_offset);
    }
    let expected: BTreeMap<u32, u64> = (1..=N_REQUESTS).map(|id| (id, u64::from(id - 1) * 3)).collect();
    assert_eq!(base_offsets, expected, "request n (in send order) got offsets 3(n-1)..");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    const IDLE: Duration = Duration::from_millis(1000);
    let broker = TestBroker::start_with(|config| config.server.idle_timeout = IDLE).await;
    let series = "ferry_connections_rejected_total{reason=\"idle_timeout\"}";
    let before = metric(&broker.scrape().await, series).unwrap_or(0.0);
    let started = Instant::now();
    let mut stream = TcpStream::connect(&broker.addr).await.expect("connect");
    expect_closed(&mut stream).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= IDLE, "not before the idle timeout: {elapsed:?}");
    let after = metric(&broker.scrape().await, series).expect("counted");
    assert!(after - before >= 1.0, "{before} -> {after}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_by_the_write_timeout_not_buffered_without_bound() {
    const WRITE_TIMEOUT: Duration = Duration::from_millis(300);
    let broker = TestBroker::start_with(|config| config.server.write_timeout = WRITE_TIMEOUT).await;
    broker.create_topic("big", 1, &[]).await;
    // About 4 MiB in one partition, in 512 KiB batches.
    let connection = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    for _ in 0..8 {
        let (code, message) = produce_code(&connection, "big", batch(1, 512 * 1024)).await;
        assert_eq!(code, ErrorCode::None, "{message}");
    }
    connection.close().await;
    let series = "ferry_connections_rejected_total{reason=\"write_timeout\"}";
    let before = metric(&broker.scrape().await, series).unwrap_or(0.0);

    // 40 fetches of the whole partition (about 160 MiB of responses), and the client never reads.
    let mut stream = TcpStream::connect(&broker.addr).await.expect("connect");
    let fetch = Request::Fetch(ferry_protocol::messages::FetchRequest {
        wait_ms_max: 0,
        bytes_min: 0,
        bytes_max: 0,
        isolation_level: 0,
        topics: vec![ferry_protocol::messages::FetchTopic {
            name: "big".to_owned(),
            partitions: vec![ferry_protocol::messages::FetchPartition {
                partition: 0,
                fetch_offset: 0,
                partition_bytes_max: 0,
            }],
        }],
    });
    let mut raw = BytesMut::new();
    for correlation_id in 1..=40 {
        raw.extend_from_slice(&frame(&fetch, correlation_id));
    }
    stream.write_all(&raw).await.expect("send");
    eventually("the stalled connection to be closed", || async {
        metric(&broker.scrape().await, series).unwrap_or(0.0) > before
    })
    .await;
    // Draining what the kernel buffered ends in a close, long before 160 MiB arrived.
    let mut received = 0usize;
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let read =
            tokio::time::timeout(Duration::from_secs(30), tokio::io::AsyncReadExt::read(&mut stream, &mut chunk))
                .await
                .expect("the closed connection drains");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n_read) => received += n_read,
        }
    }
    assert!(received < 100 * 1024 * 1024, "the broker stopped writing: {received} bytes arrived");
    broker.stop().await;
}

/// A whole frame of exactly `FRAME_BYTES_MAX` bytes after its length prefix, whose body is not a protobuf message:
/// the broker must buffer all of it before answering `INVALID_REQUEST`.
pub fn frame_at_the_limit(correlation_id: u32) -> Bytes {
    let body = Bytes::from(vec![0u8; (FRAME_BYTES_MAX - ferry_protocol::frame::FRAME_HEADER_BYTES) as usize]);
    let mut raw = BytesMut::new();
    Frame { header: FrameHeader::request(ApiKey::Produce, 0, correlation_id), body }.encode(&mut raw).expect("encode");
    assert_eq!(raw.len(), 4 + FRAME_BYTES_MAX as usize);
    raw.freeze()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_near_the_limit_wait_for_the_request_budget_while_small_requests_do_not() {
    const READ_TIMEOUT: Duration = Duration::from_secs(2);
    // Three quarters (9 MiB) for large frames: room for one frame at the limit, not two.
    let broker = TestBroker::start_with(|config| {
        config.server.request_bytes_max = 12 << 20;
        config.server.request_read_timeout = READ_TIMEOUT;
    })
    .await;
    let series = "ferry_request_budget_waits_total";
    let waits_before = metric(&broker.scrape().await, series).unwrap_or(0.0);

    // A sends all but the last byte of a frame at the limit and stalls: it holds 8 MiB of the budget until the
    // request-read timeout cuts it.
    let whole = frame_at_the_limit(1);
    let mut stalled = TcpStream::connect(&broker.addr).await.expect("connect");
    stalled.write_all(&whole[..whole.len() - 1]).await.expect("send all but one byte");
    let stalled_closed = tokio::spawn(async move {
        expect_closed(&mut stalled).await;
        Instant::now()
    });
    // B sends a whole frame at the limit: the broker must not read its body before A's charge is released.
    let mut large = TcpStream::connect(&broker.addr).await.expect("connect");
    let large_answered = tokio::spawn(async move {
        large.write_all(&frame_at_the_limit(2)).await.expect("send");
        let mut buf = BytesMut::new();
        let frame = read_frame(&mut large, &mut buf).await.expect("an error frame");
        (Instant::now(), frame.header)
    });
    eventually("the large frame to wait for the budget", || async {
        metric(&broker.scrape().await, series).unwrap_or(0.0) > waits_before
    })
    .await;
    // Small requests use the quarter kept for them: served while both large frames are held up.
    let connection = Connection::new(broker.addr.clone(), ConnectionConfig::default()).expect("connection");
    let listed = connection.request(Request::ListTopics(ListTopicsRequest {})).await;
    assert!(matches!(listed, Ok(Response::ListTopics(_))), "{listed:?}");
    let small_answered = Instant::now();
    connection.close().await;

    let stalled_closed = stalled_closed.await.expect("stalled client task");
    let (large_answered, header) = large_answered.await.expect("large client task");
    assert!(header.flags.is_error() && header.correlation_id == 2, "{header:?}");
    assert!(small_answered < stalled_closed, "the small request did not wait for the stalled frame");
    assert!(stalled_closed <= large_answered, "the second large frame was read only after the first was released");
    broker.stop().await;
}
