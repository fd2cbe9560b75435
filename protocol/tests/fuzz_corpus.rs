//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz entry points, so stable
//! `cargo test` exercises them on every run, and keeps the seed inputs in that corpus up to date.
//!
//! The seeds are generated here from the real encoders.
//! After a format change, regenerate them with `FERRY_WRITE_FUZZ_SEEDS=1 cargo test -p ferry-protocol --test
//! fuzz_corpus` and commit the files.

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use ferry_protocol::batch::{Attributes, BatchBuilder, NewRecord, ProducerFields, RecordBatch};
use ferry_protocol::frame::{ApiKey, Frame, FrameFlags, FrameHeader};
use ferry_protocol::limits::FRAME_BYTES_MAX;
use ferry_protocol::messages::*;
use ferry_protocol::{ErrorCode, fuzz};

const WRITE_SEEDS_VAR: &str = "FERRY_WRITE_FUZZ_SEEDS";

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

/// Runs every input in a target's corpus through its entry point; any panic fails the test.
fn check_corpus(target: &str, run: fn(&[u8])) {
    let mut n_inputs = 0;
    for entry in std::fs::read_dir(corpus_dir(target)).expect("the corpus directory exists") {
        let path = entry.expect("corpus entry is readable").path();
        let input = std::fs::read(&path).expect("corpus file is readable");
        run(&input);
        n_inputs += 1;
    }
    assert!(n_inputs >= 10, "{target} corpus has only {n_inputs} inputs");
}

/// Checks that every seed is committed with its current bytes, or writes it when `FERRY_WRITE_FUZZ_SEEDS` is set.
fn check_seeds(target: &str, seeds: Vec<(&str, Vec<u8>)>) {
    let write = std::env::var_os(WRITE_SEEDS_VAR).is_some();
    for (name, bytes) in seeds {
        let path = corpus_dir(target).join(format!("seed-{name}"));
        if write {
            std::fs::write(&path, &bytes).expect("corpus directory is writable");
        } else {
            let committed = std::fs::read(&path).unwrap_or_default();
            assert!(committed == bytes, "{} is stale: regenerate with {WRITE_SEEDS_VAR}=1", path.display());
        }
    }
}

#[test]
fn decode_frame_corpus_runs_clean() {
    check_corpus("decode_frame", fuzz::decode_frame);
}

#[test]
fn decode_batch_corpus_runs_clean() {
    check_corpus("decode_batch", fuzz::decode_batch);
}

#[test]
fn decode_request_corpus_runs_clean() {
    check_corpus("decode_request", fuzz::decode_request);
}

#[test]
fn decode_response_corpus_runs_clean() {
    check_corpus("decode_response", fuzz::decode_response);
}

#[test]
fn decode_frame_seeds_are_committed() {
    check_seeds("decode_frame", frame_seeds());
}

#[test]
fn decode_batch_seeds_are_committed() {
    check_seeds("decode_batch", batch_seeds());
}

#[test]
fn decode_request_seeds_are_committed() {
    check_seeds("decode_request", request_seeds());
}

#[test]
fn decode_response_seeds_are_committed() {
    check_seeds("decode_response", response_seeds());
}

#[test]
fn the_seeds_hold_a_request_and_a_response_of_every_api() {
    let requests: Vec<ApiKey> = sample_requests().iter().map(|(_, request)| request.api_key()).collect();
    let responses: Vec<Option<ApiKey>> = sample_responses().iter().map(|(_, response)| response.api_key()).collect();
    assert_eq!(requests, ApiKey::ALL);
    let mut expected: Vec<Option<ApiKey>> = ApiKey::ALL.into_iter().map(Some).collect();
    expected.push(None);
    assert_eq!(responses, expected);
}

/// Every sample body decodes under the api its selector picks, so the body targets start from valid messages.
#[test]
fn every_sample_body_decodes_under_its_selector() {
    for (name, input) in request_seeds().into_iter().take(ApiKey::ALL.len()) {
        let api = fuzz::selector_api(input[0], ApiKey::ALL.len()).expect("a selector picks an api");
        let header = FrameHeader::request(api, 0, 1);
        assert!(Request::decode(&header, Bytes::copy_from_slice(&input[1..])).is_ok(), "{name}");
    }
    for (name, input) in response_seeds().into_iter().take(ApiKey::ALL.len() + 1) {
        let header = match fuzz::selector_api(input[0], ApiKey::ALL.len() + 1) {
            Some(api) => FrameHeader::request(api, 0, 1).response(),
            None => FrameHeader::request(ApiKey::ApiVersions, 0, 1).error_response(),
        };
        assert!(Response::decode(&header, Bytes::copy_from_slice(&input[1..])).is_ok(), "{name}");
    }
}

fn batch(records: &[NewRecord<'_>]) -> RecordBatch {
    let mut builder = BatchBuilder::new();
    for record in records {
        builder.push(*record).expect("seed records fit a batch");
    }
    builder.build().expect("seed batches are valid")
}

fn small_batch() -> RecordBatch {
    batch(&[NewRecord { timestamp: 1_700_000_000_000, key: Some(b"k"), value: Some(b"v"), headers: &[] }])
}

fn request_frame(request: impl Into<Request>, correlation_id: u32) -> Vec<u8> {
    let mut wire = BytesMut::new();
    request.into().encode(correlation_id, &mut wire).expect("seed requests fit a frame");
    wire.to_vec()
}

fn response_frame(response: impl Into<Response>, api: ApiKey) -> Vec<u8> {
    let mut wire = BytesMut::new();
    let request = FrameHeader::request(api, 0, 9);
    response.into().encode(&request, &mut wire).expect("seed responses fit a frame");
    wire.to_vec()
}

fn raw_frame(header: FrameHeader, body: &[u8]) -> Vec<u8> {
    let mut wire = BytesMut::new();
    Frame { header, body: Bytes::copy_from_slice(body) }.encode(&mut wire).expect("seed frames fit");
    wire.to_vec()
}

fn produce_request() -> ProduceRequest {
    ProduceRequest {
        acks: Acks::All as i32,
        timeout_ms: 30_000,
        topics: vec![ProduceTopic {
            name: "orders".to_owned(),
            partitions: vec![ProducePartition { partition: 0, records: small_batch().into_bytes() }],
        }],
    }
}

fn api_versions_request() -> ApiVersionsRequest {
    ApiVersionsRequest {
        client_software_name: "ferry-client-rs".to_owned(),
        client_software_version: "0.1.0".to_owned(),
    }
}

fn assignment() -> Vec<TopicPartitions> {
    vec![TopicPartitions { topic: "orders".to_owned(), partitions: vec![0, 2] }]
}

/// A valid request of every api, named for its seed file.
fn sample_requests() -> Vec<(&'static str, Request)> {
    let lookup = |partition, spec: OffsetSpec| ListOffsetsPartition { partition, spec: Some(spec.into()) };
    let produce = produce_request();
    vec![
        ("api-versions-request", api_versions_request().into()),
        (
            "create-topics-request",
            CreateTopicsRequest {
                topics: vec![CreatableTopic {
                    name: "orders".to_owned(),
                    partition_count: 3,
                    config: [("retention.ms", "86400000"), ("fsync", "interval:100")]
                        .into_iter()
                        .map(|(key, value)| (key.to_owned(), value.to_owned()))
                        .collect(),
                }],
            }
            .into(),
        ),
        ("delete-topics-request", DeleteTopicsRequest { names: vec!["orders".to_owned()] }.into()),
        ("list-topics-request", ListTopicsRequest {}.into()),
        ("describe-topics-request", DescribeTopicsRequest { names: vec!["orders".to_owned()] }.into()),
        ("produce-request", produce.clone().into()),
        (
            "fetch-request",
            FetchRequest {
                wait_ms_max: 500,
                bytes_min: 1,
                bytes_max: 1 << 20,
                isolation_level: IsolationLevel::ReadCommitted as i32,
                topics: vec![FetchTopic {
                    name: "orders".to_owned(),
                    partitions: vec![FetchPartition { partition: 0, fetch_offset: 42, partition_bytes_max: 0 }],
                }],
            }
            .into(),
        ),
        (
            "list-offsets-request",
            ListOffsetsRequest {
                isolation_level: 0,
                topics: vec![ListOffsetsTopic {
                    name: "orders".to_owned(),
                    partitions: vec![
                        lookup(0, OffsetSpec::Earliest),
                        lookup(1, OffsetSpec::Latest),
                        lookup(2, OffsetSpec::Timestamp(1_700_000_000_000)),
                        ListOffsetsPartition { partition: 3, spec: None },
                    ],
                }],
            }
            .into(),
        ),
        (
            "init-producer-id-request",
            InitProducerIdRequest { transactional_id: "copier-0".to_owned(), transaction_timeout_ms: 60_000 }.into(),
        ),
        ("describe-broker-request", DescribeBrokerRequest {}.into()),
        ("describe-producers-request", DescribeProducersRequest { topic: "orders".to_owned() }.into()),
        (
            "join-group-request",
            JoinGroupRequest {
                group_id: "billing".to_owned(),
                instance_id: "host-1".to_owned(),
                topics: vec!["orders".to_owned()],
                session_timeout_ms: 10_000,
                assignor: "cooperative-sticky".to_owned(),
                client_id: "ferry-client-rs".to_owned(),
                ..JoinGroupRequest::default()
            }
            .into(),
        ),
        (
            "heartbeat-request",
            HeartbeatRequest {
                group_id: "billing".to_owned(),
                member_id: "m-1".to_owned(),
                generation: 3,
                owned: assignment(),
            }
            .into(),
        ),
        (
            "leave-group-request",
            LeaveGroupRequest { group_id: "billing".to_owned(), member_id: "m-1".to_owned() }.into(),
        ),
        (
            "offset-commit-request",
            OffsetCommitRequest {
                group_id: "billing".to_owned(),
                member_id: "m-1".to_owned(),
                generation: 3,
                topics: vec![OffsetCommitTopic {
                    name: "orders".to_owned(),
                    partitions: vec![OffsetCommitPartition { partition: 1, offset: 42, metadata: "m".to_owned() }],
                }],
            }
            .into(),
        ),
        (
            "offset-fetch-request",
            OffsetFetchRequest { group_id: "billing".to_owned(), topics: assignment(), include_lag: true }.into(),
        ),
        ("list-groups-request", ListGroupsRequest {}.into()),
        ("describe-groups-request", DescribeGroupsRequest { group_ids: vec!["billing".to_owned()] }.into()),
        (
            "txn-produce-request",
            TxnProduceRequest {
                transactional_id: "copier-0".to_owned(),
                producer_id: 7,
                producer_epoch: 3,
                transaction: 12,
                topics: produce.topics,
            }
            .into(),
        ),
        (
            "txn-offset-commit-request",
            TxnOffsetCommitRequest {
                transactional_id: "copier-0".to_owned(),
                producer_id: 7,
                producer_epoch: 3,
                transaction: 12,
                group_id: "copiers".to_owned(),
                member_id: "m-1".to_owned(),
                generation: 4,
                topics: vec![OffsetCommitTopic {
                    name: "input".to_owned(),
                    partitions: vec![OffsetCommitPartition { partition: 1, offset: 750, metadata: String::new() }],
                }],
            }
            .into(),
        ),
        (
            "end-txn-request",
            EndTxnRequest {
                transactional_id: "copier-0".to_owned(),
                producer_id: 7,
                producer_epoch: 3,
                transaction: 12,
                commit: true,
            }
            .into(),
        ),
        ("list-txns-request", ListTxnsRequest {}.into()),
        ("abort-txn-request", AbortTxnRequest { transactional_id: "copier-0".to_owned() }.into()),
    ]
}

fn produce_topic_response() -> ProduceTopicResponse {
    ProduceTopicResponse {
        name: "orders".to_owned(),
        partitions: vec![ProducePartitionResponse {
            partition: 0,
            error_code: 0,
            error_message: String::new(),
            base_offset: 42,
            last_offset: 42,
            log_append_time_ms: 1_700_000_000_000,
            durability: Durability::Fsynced as i32,
            duplicate: false,
            dedup_dropped: Vec::new(),
            dedup_window_ms: 0,
        }],
    }
}

/// A valid response of every api, plus an error frame's body, named for its seed file.
fn sample_responses() -> Vec<(&'static str, Response)> {
    let error_message = |message: &str| message.to_owned();
    vec![
        (
            "api-versions-response",
            ApiVersionsResponse {
                error_code: 0,
                api_versions: supported_api_versions(),
                limits: Some(BrokerLimits {
                    frame_bytes_max: FRAME_BYTES_MAX,
                    batch_bytes_max: ferry_protocol::limits::BATCH_BYTES_MAX,
                    batch_records_max: ferry_protocol::limits::BATCH_RECORDS_MAX,
                    fetch_bytes_max: 1 << 20,
                    fetch_wait_ms_max: 30_000,
                    in_flight_requests_max: 32,
                    partitions_per_topic_max: ferry_protocol::limits::PARTITIONS_PER_TOPIC_MAX,
                }),
                broker_software_version: "0.1.0".to_owned(),
            }
            .into(),
        ),
        (
            "create-topics-response",
            CreateTopicsResponse {
                error_code: 0,
                topics: vec![CreateTopicResult {
                    name: "orders".to_owned(),
                    error_code: error_code_to_wire(ErrorCode::TopicAlreadyExists),
                    error_message: "topic exists".to_owned(),
                }],
            }
            .into(),
        ),
        (
            "delete-topics-response",
            DeleteTopicsResponse {
                error_code: 0,
                topics: vec![DeleteTopicResult {
                    name: "orders".to_owned(),
                    error_code: 0,
                    error_message: String::new(),
                }],
            }
            .into(),
        ),
        (
            "list-topics-response",
            ListTopicsResponse {
                error_code: 0,
                topics: vec![ListedTopic { name: "orders".to_owned(), partition_count: 3 }],
            }
            .into(),
        ),
        (
            "describe-topics-response",
            DescribeTopicsResponse {
                error_code: 0,
                topics: vec![TopicDescription {
                    name: "orders".to_owned(),
                    error_code: 0,
                    error_message: String::new(),
                    config: [("segment.bytes".to_owned(), "1073741824".to_owned())].into_iter().collect(),
                    partitions: vec![PartitionDescription {
                        partition: 0,
                        start_offset: 10,
                        end_offset: 42,
                        damaged: true,
                        error_code: error_code_to_wire(ErrorCode::PartitionDamaged),
                        error_message: "bad checksum in 00000000000000000000.log".to_owned(),
                        size_bytes: 4096,
                        segment_count: 2,
                        fsync: "interval:100".to_owned(),
                    }],
                }],
            }
            .into(),
        ),
        ("produce-response", ProduceResponse { error_code: 0, topics: vec![produce_topic_response()] }.into()),
        (
            "fetch-response",
            FetchResponse {
                error_code: 0,
                topics: vec![FetchTopicResponse {
                    name: "orders".to_owned(),
                    partitions: vec![FetchPartitionResponse {
                        partition: 0,
                        error_code: 0,
                        error_message: String::new(),
                        high_watermark: 43,
                        log_start_offset: 0,
                        records: small_batch().into_bytes(),
                    }],
                }],
            }
            .into(),
        ),
        (
            "list-offsets-response",
            ListOffsetsResponse {
                error_code: 0,
                topics: vec![ListOffsetsTopicResponse {
                    name: "orders".to_owned(),
                    partitions: vec![ListOffsetsPartitionResponse {
                        partition: 0,
                        error_code: 0,
                        error_message: String::new(),
                        offset: 42,
                        timestamp_ms: -1,
                    }],
                }],
            }
            .into(),
        ),
        (
            "init-producer-id-response",
            InitProducerIdResponse {
                producer_id: 7,
                producer_epoch: 3,
                producer_id_expiration_ms: 604_800_000,
                batches_retained: 5,
                transaction_timeout_ms: 60_000,
                ..InitProducerIdResponse::default()
            }
            .into(),
        ),
        (
            "describe-broker-response",
            DescribeBrokerResponse {
                error_code: 0,
                version: "0.1.0".to_owned(),
                uptime_ms: 3_600_000,
                config: [("fsync".to_owned(), "always".to_owned())].into_iter().collect(),
                data_dir: "/var/lib/ferry".to_owned(),
                data_dir_bytes: 1 << 30,
                topics: 2,
                partitions_healthy: 5,
                partitions_damaged: 1,
                partitions_failed: 0,
                connections_open: 3,
            }
            .into(),
        ),
        (
            "describe-producers-response",
            DescribeProducersResponse {
                error_code: 0,
                error_message: String::new(),
                partitions: vec![PartitionProducers {
                    partition: 0,
                    error_code: 0,
                    error_message: String::new(),
                    producers: vec![ProducerDescription {
                        producer_id: 7,
                        epoch: 3,
                        last_sequence: 2,
                        last_write_ms: 1_764_900_000_000,
                        last_offset: 41,
                    }],
                    producer_count: 2,
                    truncated: true,
                }],
            }
            .into(),
        ),
        (
            "join-group-response",
            JoinGroupResponse {
                member_id: "m-1".to_owned(),
                generation: 3,
                assignment: assignment(),
                heartbeat_interval_ms: 3333,
                ..JoinGroupResponse::default()
            }
            .into(),
        ),
        (
            "heartbeat-response",
            HeartbeatResponse {
                generation: 3,
                assignment: assignment(),
                heartbeat_interval_ms: 3333,
                ..HeartbeatResponse::default()
            }
            .into(),
        ),
        (
            "leave-group-response",
            LeaveGroupResponse {
                error_code: error_code_to_wire(ErrorCode::UnknownMember),
                error_message: error_message("unknown member m-1"),
            }
            .into(),
        ),
        (
            "offset-commit-response",
            OffsetCommitResponse {
                topics: vec![OffsetCommitTopicResponse {
                    name: "orders".to_owned(),
                    partitions: vec![OffsetCommitPartitionResponse { partition: 1, ..Default::default() }],
                }],
                ..OffsetCommitResponse::default()
            }
            .into(),
        ),
        (
            "offset-fetch-response",
            OffsetFetchResponse {
                topics: vec![OffsetFetchTopic {
                    name: "orders".to_owned(),
                    partitions: vec![OffsetFetchPartition {
                        partition: 1,
                        committed: true,
                        offset: 42,
                        commit_timestamp_ms: 1_700_000_000_000,
                        lag_ms: 1_500,
                        ..OffsetFetchPartition::default()
                    }],
                }],
                ..OffsetFetchResponse::default()
            }
            .into(),
        ),
        (
            "list-groups-response",
            ListGroupsResponse {
                error_code: 0,
                groups: vec![GroupListing {
                    group_id: "billing".to_owned(),
                    state: "stable".to_owned(),
                    member_count: 2,
                }],
            }
            .into(),
        ),
        (
            "describe-groups-response",
            DescribeGroupsResponse {
                error_code: 0,
                groups: vec![GroupDescription {
                    group_id: "billing".to_owned(),
                    state: "stable".to_owned(),
                    generation: 3,
                    assignor: "cooperative-sticky".to_owned(),
                    members: vec![GroupMemberDescription {
                        member_id: "m-1".to_owned(),
                        instance_id: "host-1".to_owned(),
                        client_id: "ferry-client-rs".to_owned(),
                        assignment: assignment(),
                        target: assignment(),
                    }],
                    ..GroupDescription::default()
                }],
            }
            .into(),
        ),
        (
            "txn-produce-response",
            TxnProduceResponse { topics: vec![produce_topic_response()], ..TxnProduceResponse::default() }.into(),
        ),
        (
            "txn-offset-commit-response",
            TxnOffsetCommitResponse {
                error_code: error_code_to_wire(ErrorCode::ProducerFenced),
                error_message: error_message("epoch 2 is fenced by epoch 3"),
            }
            .into(),
        ),
        (
            "end-txn-response",
            EndTxnResponse { topics: vec![produce_topic_response()], ..EndTxnResponse::default() }.into(),
        ),
        (
            "list-txns-response",
            ListTxnsResponse {
                error_code: 0,
                transactions: vec![TxnDescription {
                    transactional_id: "copier-0".to_owned(),
                    producer_id: 7,
                    producer_epoch: 3,
                    transaction: 12,
                    state: "open".to_owned(),
                    age_ms: 1_500,
                    timeout_ms: 60_000,
                    partitions: assignment(),
                    staged_batches: 4,
                    staged_bytes: 4096,
                    group_id: "copiers".to_owned(),
                }],
            }
            .into(),
        ),
        ("abort-txn-response", AbortTxnResponse { aborted: true, ..AbortTxnResponse::default() }.into()),
        (
            "error-frame",
            ErrorResponse {
                error_code: error_code_to_wire(ErrorCode::ConnectionLimit),
                error_message: "connection limit reached".to_owned(),
            }
            .into(),
        ),
    ]
}

/// The body of an encoded request or response frame.
fn body_of(mut wire: BytesMut) -> Bytes {
    Frame::decode(&mut wire).expect("seed frames are valid").expect("seed frames are whole").body
}

/// Valid requests and responses of every api, plus the framing edge cases.
fn frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let produce = produce_request();
    let produce_header = FrameHeader::request(ApiKey::Produce, 0, 1);
    let produce_body = prost::Message::encode_to_vec(&produce);
    let produce_wire = request_frame(produce.clone(), 1);

    let mut pipelined = request_frame(api_versions_request(), 0);
    pipelined.extend_from_slice(&produce_wire);
    pipelined.extend_from_slice(&request_frame(ListTopicsRequest {}, 2));

    let header_only = |len: u32| {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&produce_wire[4..14]);
        bytes
    };

    let mut seeds = Vec::new();
    for (correlation_id, (name, request)) in (0..).zip(sample_requests()) {
        seeds.push((name, request_frame(request, correlation_id)));
    }
    for (name, response) in sample_responses() {
        let api = response.api_key().unwrap_or(ApiKey::ApiVersions);
        seeds.push((name, response_frame(response, api)));
    }
    seeds.extend([
        ("pipelined-requests", pipelined),
        ("empty-body", raw_frame(FrameHeader::request(ApiKey::ListTopics, 0, 5), &[])),
        ("truncated-frame", produce_wire[..produce_wire.len() / 2].to_vec()),
        ("length-too-large", header_only(u32::MAX)),
        ("length-at-limit", header_only(FRAME_BYTES_MAX)),
        ("length-too-short", header_only(9)),
        (
            "reserved-flags",
            raw_frame(FrameHeader { flags: FrameFlags::from_bits(0x0100), ..produce_header }, &produce_body),
        ),
        ("request-with-response-bit", raw_frame(produce_header.response(), &produce_body)),
        ("unknown-api-key", raw_frame(FrameHeader { api_key: 8, ..produce_header }, &produce_body)),
        ("unsupported-version", raw_frame(FrameHeader { api_version: 1, ..produce_header }, &produce_body)),
        ("malformed-body", raw_frame(produce_header, &produce_body[..produce_body.len() - 1])),
        ("unknown-acks", request_frame(ProduceRequest { acks: 7, ..produce }, 1)),
        ("empty-input", Vec::new()),
    ]);
    seeds
}

/// The selector byte that makes [`fuzz::decode_request`] and [`fuzz::decode_response`] pick `api`.
fn selector(api: ApiKey) -> u8 {
    let idx = ApiKey::ALL.iter().position(|known| *known == api).expect("every api is in ApiKey::ALL");
    u8::try_from(idx).expect("fewer than 256 apis")
}

/// A body-target input: the selector byte, then the body.
fn body_input(selector: u8, body: &[u8]) -> Vec<u8> {
    let mut input = vec![selector];
    input.extend_from_slice(body);
    input
}

/// The body of every sample request behind its api's selector, plus bodies that fail each check of `Request::decode`.
fn request_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds: Vec<(&'static str, Vec<u8>)> = sample_requests()
        .into_iter()
        .map(|(name, request)| {
            let mut wire = BytesMut::new();
            request.encode(0, &mut wire).expect("seed requests fit a frame");
            (name, body_input(selector(request.api_key()), &body_of(wire)))
        })
        .collect();
    let produce = prost::Message::encode_to_vec(&produce_request());
    let produce_selector = selector(ApiKey::Produce);
    let n_apis = u8::try_from(ApiKey::ALL.len()).expect("fewer than 256 apis");
    seeds.extend([
        (
            "unknown-acks",
            body_input(
                produce_selector,
                &prost::Message::encode_to_vec(&ProduceRequest { acks: 7, ..produce_request() }),
            ),
        ),
        ("truncated-produce", body_input(produce_selector, &produce[..produce.len() - 1])),
        ("produce-as-fetch", body_input(selector(ApiKey::Fetch), &produce)),
        ("selector-wraps-around", body_input(n_apis + produce_selector, &produce)),
        ("empty-body", vec![selector(ApiKey::ListTopics)]),
        ("empty-input", Vec::new()),
    ]);
    seeds
}

/// The body of every sample response behind its api's selector (the error frame's is `ApiKey::ALL.len()`).
fn response_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let n_apis = u8::try_from(ApiKey::ALL.len()).expect("fewer than 256 apis");
    let mut seeds: Vec<(&'static str, Vec<u8>)> = sample_responses()
        .into_iter()
        .map(|(name, response)| {
            let selector = response.api_key().map_or(n_apis, selector);
            let mut wire = BytesMut::new();
            let request = FrameHeader::request(response.api_key().unwrap_or(ApiKey::ApiVersions), 0, 9);
            response.encode(&request, &mut wire).expect("seed responses fit a frame");
            (name, body_input(selector, &body_of(wire)))
        })
        .collect();
    seeds.push(("empty-input", Vec::new()));
    seeds
}

/// Valid batches of several shapes, plus damaged ones.
fn batch_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let headers: &[(&[u8], Option<&[u8]>)] = &[(b"trace-id", Some(b"abc123")), (b"null-value", None), (b"", Some(b""))];
    let timestamp = 1_700_000_000_000;
    let one = small_batch().into_bytes().to_vec();
    let many: Vec<NewRecord<'_>> = (0..10)
        .map(|record_idx| NewRecord {
            timestamp: timestamp + record_idx,
            key: None,
            value: Some(b"value of a record"),
            headers: &[],
        })
        .collect();
    let mut idempotent = BatchBuilder::new()
        .producer(ProducerFields { producer_id: 7, producer_epoch: 2, base_sequence: 100 })
        .attributes(Attributes::default().with_transactional(true));
    idempotent.push(NewRecord { timestamp, key: Some(b"k"), value: Some(b"v"), headers }).expect("fits");
    let mut rebased = small_batch();
    rebased.rebase(u64::MAX - 1).expect("a one-record batch fits below u64::MAX");

    let mut two_batches = one.clone();
    two_batches.extend_from_slice(&batch(&many).into_bytes());
    let mut corrupt_payload = one.clone();
    *corrupt_payload.last_mut().expect("batches are not empty") ^= 0x01;
    let mut bad_magic = one.clone();
    bad_magic[12] = 2;

    vec![
        ("one-record", one.clone()),
        (
            "null-key-and-value",
            batch(&[NewRecord { timestamp, key: None, value: None, headers: &[] }]).into_bytes().to_vec(),
        ),
        (
            "empty-key-and-value",
            batch(&[NewRecord { timestamp, key: Some(b""), value: Some(b""), headers: &[] }]).into_bytes().to_vec(),
        ),
        (
            "record-headers",
            batch(&[NewRecord { timestamp, key: Some(b"k"), value: Some(b"v"), headers }]).into_bytes().to_vec(),
        ),
        ("ten-records", batch(&many).into_bytes().to_vec()),
        (
            "timestamps-out-of-order",
            batch(&[
                NewRecord { timestamp, key: None, value: Some(b"a"), headers: &[] },
                NewRecord { timestamp: timestamp - 5_000, key: None, value: Some(b"b"), headers: &[] },
                NewRecord { timestamp: timestamp + 5_000, key: None, value: Some(b"c"), headers: &[] },
            ])
            .into_bytes()
            .to_vec(),
        ),
        ("idempotent-transactional", idempotent.build().expect("valid").into_bytes().to_vec()),
        ("rebased-near-max-offset", rebased.into_bytes().to_vec()),
        ("two-batches", two_batches),
        ("truncated", one[..one.len() - 1].to_vec()),
        ("header-only", one[..59].to_vec()),
        ("length-prefix-only", one[..12].to_vec()),
        ("corrupt-payload", corrupt_payload),
        ("bad-magic", bad_magic),
        ("empty-input", Vec::new()),
    ]
}
