use std::error::Error as _;

use bytes::{Bytes, BytesMut};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

use super::*;
use crate::frame::{FRAME_LENGTH_PREFIX_BYTES, Frame};

/// Encodes a request as a frame, decodes the frame and the body, and checks that nothing changed.
fn check_request_round_trip(request: &Request) {
    let correlation_id = 42;
    let mut wire = BytesMut::new();
    request.encode(correlation_id, &mut wire).expect("test requests fit a frame");
    let frame = Frame::decode(&mut wire).expect("an encoded request is a valid frame").expect("and a whole one");
    assert!(wire.is_empty(), "exactly one frame was written");
    assert_eq!(frame.header, request.header(correlation_id));
    assert_eq!(frame.header.flags, FrameFlags::REQUEST);
    let decoded = Request::decode(&frame.header, frame.body).expect("an encoded request decodes");
    assert_eq!(&decoded, request);
}

/// Encodes a response answering a request, decodes it, and checks that nothing changed.
fn check_response_round_trip(response: &Response) {
    let api = response.api_key().unwrap_or(ApiKey::Produce);
    let request_header = FrameHeader::request(api, 0, 7);
    let mut wire = BytesMut::new();
    response.encode(&request_header, &mut wire).expect("test responses fit a frame");
    let frame = Frame::decode(&mut wire).expect("an encoded response is a valid frame").expect("and a whole one");
    assert!(wire.is_empty(), "exactly one frame was written");
    assert_eq!(frame.header.correlation_id, request_header.correlation_id);
    assert_eq!(frame.header.api_key, request_header.api_key);
    assert!(frame.header.flags.is_response());
    assert_eq!(frame.header.flags.is_error(), matches!(response, Response::Error(_)));
    let decoded = Response::decode(&frame.header, frame.body).expect("an encoded response decodes");
    assert_eq!(&decoded, response);
}

/// Decodes a hand-built request frame's body, for the error cases.
fn check_request_decode(header: FrameHeader, body: &[u8]) -> Result<Request, ProtocolError> {
    Request::decode(&header, Bytes::copy_from_slice(body))
}

fn produce_request() -> ProduceRequest {
    ProduceRequest {
        acks: Acks::None as i32,
        timeout_ms: 1000,
        topics: vec![ProduceTopic {
            name: "t".to_owned(),
            partitions: vec![ProducePartition { partition: 0, records: Bytes::from_static(b"ab") }],
        }],
    }
}

#[test]
fn golden_produce_request_frame_layout() {
    let wire: &[u8] = &[
        0x00, 0x00, 0x00, 0x1a, // len = 10 + 16
        0x00, 0x05, 0x00, 0x00, // api_key = Produce, api_version = 0
        0x00, 0x00, 0x00, 0x07, // correlation_id = 7
        0x00, 0x00, // flags = request
        0x08, 0x01, // 1: acks = ACKS_NONE
        0x10, 0xe8, 0x07, // 2: timeout_ms = 1000
        0x1a, 0x09, // 3: topics[0], 9 bytes
        0x0a, 0x01, b't', // 1: name = "t"
        0x12, 0x04, // 2: partitions[0], 4 bytes; partition 0 is the default, so it is not sent
        0x12, 0x02, b'a', b'b', // 2: records = "ab"
    ];
    let request = Request::Produce(produce_request());
    let mut encoded = BytesMut::new();
    request.encode(7, &mut encoded).expect("fits");
    assert_eq!(&encoded[..], wire);
    let mut buf = BytesMut::from(wire);
    let frame = Frame::decode(&mut buf).expect("valid").expect("whole");
    assert_eq!(Request::decode(&frame.header, frame.body).expect("valid body"), request);
}

#[test]
fn golden_error_response_body_layout() {
    let body: &[u8] = &[0x08, 0x11, 0x12, 0x04, b'f', b'u', b'l', b'l'];
    let response =
        ErrorResponse { error_code: error_code_to_wire(ErrorCode::ConnectionLimit), error_message: "full".to_owned() };
    assert_eq!(prost::Message::encode_to_vec(&response), body);
    let header = FrameHeader::request(ApiKey::ApiVersions, 0, 0).error_response();
    assert_eq!(Response::decode(&header, Bytes::from_static(body)).expect("valid"), Response::Error(response));
}

#[test]
fn produce_records_are_not_copied_on_decode() {
    let mut wire = BytesMut::new();
    Request::Produce(produce_request()).encode(1, &mut wire).expect("fits");
    let frame = Frame::decode(&mut wire).expect("valid").expect("whole");
    let body_range = frame.body.as_ptr_range();
    let Request::Produce(request) = Request::decode(&frame.header, frame.body.clone()).expect("valid") else {
        panic!("decoded as another api");
    };
    let records = &request.topics[0].partitions[0].records;
    assert_eq!(&records[..], b"ab");
    assert!(body_range.contains(&records.as_ptr()));
}

#[test]
fn unknown_fields_are_ignored_for_forward_compatibility() {
    let mut body = prost::Message::encode_to_vec(&produce_request());
    // Field 111, varint 1: a field a newer client might send.
    body.extend_from_slice(&[0xf8, 0x06, 0x01]);
    let header = FrameHeader::request(ApiKey::Produce, 0, 1);
    assert_eq!(check_request_decode(header, &body).expect("valid"), Request::Produce(produce_request()));
}

#[test]
fn request_decode_rejects_what_cannot_be_answered_normally() {
    let produce = FrameHeader::request(ApiKey::Produce, 0, 1);
    let valid_body = prost::Message::encode_to_vec(&produce_request());

    for api_key in [11, 27, 79, u16::MAX] {
        let header = FrameHeader { api_key, ..produce };
        assert!(matches!(
            check_request_decode(header, &valid_body),
            Err(ProtocolError::UnknownApiKey { api_key: got }) if got == api_key
        ));
    }
    let header = FrameHeader { api_version: 1, ..produce };
    assert!(matches!(
        check_request_decode(header, &valid_body),
        Err(ProtocolError::UnsupportedVersion { api_key: 5, version: 1 })
    ));
    let header = FrameHeader { flags: FrameFlags::from_bits(0x8000), ..produce };
    assert!(matches!(check_request_decode(header, &valid_body), Err(ProtocolError::ReservedFlags { flags: 0x8000 })));
    for flags in [FrameFlags::RESPONSE, FrameFlags::ERROR_RESPONSE] {
        let header = FrameHeader { flags, ..produce };
        assert!(matches!(
            check_request_decode(header, &valid_body),
            Err(ProtocolError::InvalidField { field: "FrameHeader.flags", .. })
        ));
    }
    // A length-delimited field whose length runs past the end of the body.
    match check_request_decode(produce, &[0x1a, 0x7f]) {
        Err(error @ ProtocolError::BodyDecode { message: "ProduceRequest", .. }) => {
            assert!(error.source().is_some(), "keeps prost's error as the source");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn request_decode_rejects_unknown_request_wide_enum_values() {
    let produce = ProduceRequest { acks: 7, ..produce_request() };
    let fetch = FetchRequest { isolation_level: 2, ..FetchRequest::default() };
    let list_offsets = ListOffsetsRequest { isolation_level: -1, ..ListOffsetsRequest::default() };
    for (request, field) in [
        (Request::Produce(produce), "ProduceRequest.acks"),
        (Request::Fetch(fetch), "FetchRequest.isolation_level"),
        (Request::ListOffsets(list_offsets), "ListOffsetsRequest.isolation_level"),
    ] {
        let mut wire = BytesMut::new();
        request.encode(1, &mut wire).expect("fits");
        let frame = Frame::decode(&mut wire).expect("valid").expect("whole");
        match Request::decode(&frame.header, frame.body) {
            Err(ProtocolError::InvalidField { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn response_decode_checks_the_flags() {
    let request = FrameHeader::request(ApiKey::ListTopics, 0, 3);
    let body = Bytes::new();
    assert!(matches!(
        Response::decode(&request, body.clone()),
        Err(ProtocolError::InvalidField { field: "FrameHeader.flags", .. })
    ));
    let reserved = FrameHeader { flags: FrameFlags::from_bits(FrameFlags::RESPONSE_BIT | 0x0100), ..request };
    assert!(matches!(Response::decode(&reserved, body.clone()), Err(ProtocolError::ReservedFlags { flags: 0x0100 })));
    assert_eq!(
        Response::decode(&request.response(), body.clone()).expect("empty body is a default message"),
        Response::ListTopics(ListTopicsResponse::default())
    );
    // An error frame decodes as ErrorResponse whatever its api key, even one this build does not know.
    let unknown_api = FrameHeader { api_key: 999, ..request.error_response() };
    assert_eq!(
        Response::decode(&unknown_api, body).expect("error frames need no known api"),
        Response::Error(ErrorResponse::default())
    );
}

#[test]
fn error_frames_echo_the_request_header() {
    let request = FrameHeader { api_key: 999, api_version: 3, correlation_id: 77, flags: FrameFlags::REQUEST };
    let response = Response::Error(ErrorResponse {
        error_code: error_code_to_wire(ErrorCode::UnsupportedVersion),
        error_message: String::new(),
    });
    assert_eq!(response.header(&request), request.error_response());
    assert_eq!(response.error_code(), u32::from(ErrorCode::UnsupportedVersion.as_u16()));
    assert_eq!(response.api_key(), None);
}

#[test]
fn error_codes_convert_to_and_from_the_wire() {
    for &code in ErrorCode::ALL {
        assert_eq!(error_code_from_wire(error_code_to_wire(code)), Some(code));
    }
    assert_eq!(error_code_from_wire(u32::from(u16::MAX)), None);
    assert_eq!(error_code_from_wire(u32::MAX), None);
    assert_eq!(error_code_from_wire(65_536), None);
}

#[test]
fn supported_api_versions_list_every_api_in_key_order() {
    let versions = supported_api_versions();
    assert_eq!(versions.len(), ApiKey::ALL.len());
    for (range, api) in versions.iter().zip(ApiKey::ALL) {
        assert_eq!(range.api_key, u32::from(api.as_u16()));
        assert!(range.version_min <= range.version_max);
    }
}

/// The api-key table in `proto/api.proto` documents the same keys as [`ApiKey`].
#[test]
fn proto_api_key_table_matches_api_key() {
    let proto = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/api.proto"))
        .expect("api.proto is readable");
    let documented: Vec<(u16, String)> = proto
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("//  ")?.split_whitespace();
            let key = words.next()?.parse().ok()?;
            Some((key, words.next()?.to_owned()))
        })
        .collect();
    let expected: Vec<(u16, String)> = ApiKey::ALL.into_iter().map(|api| (api.as_u16(), format!("{api:?}"))).collect();
    assert_eq!(documented, expected);
}

fn check_topic_name(name: &str, valid: bool) {
    match TopicName::new(name.to_owned()) {
        Ok(topic) => {
            assert!(valid, "{name:?} was accepted");
            assert_eq!(topic.as_str(), name);
        }
        Err(ProtocolError::InvalidTopicName { .. }) => assert!(!valid, "{name:?} was rejected"),
        Err(other) => panic!("{name:?}: {other:?}"),
    }
}

#[test]
fn topic_names_follow_the_naming_rule() {
    let longest = "a".repeat(249);
    let too_long = "a".repeat(250);
    for name in ["a", "orders", "Orders.v2_eu-west", "...", "_", "-", "0", &longest] {
        check_topic_name(name, true);
    }
    for name in ["", ".", "..", "a b", "a/b", "a\\b", "a\0", "é", "topic!", "a:b", &too_long] {
        check_topic_name(name, false);
    }
}

#[test]
fn new_topic_checks_name_and_partition_count() {
    let topic = |name: &str, partition_count| CreatableTopic {
        name: name.to_owned(),
        partition_count,
        config: BTreeMap::from([("retention.ms".to_owned(), "1000".to_owned())]),
    };
    for count in [1, 2, PARTITIONS_PER_TOPIC_MAX] {
        let new_topic = NewTopic::try_from(topic("t", count)).expect("valid");
        assert_eq!(new_topic.partition_count, count);
        assert_eq!(new_topic.name.as_str(), "t");
        assert_eq!(new_topic.config["retention.ms"], "1000");
    }
    for count in [0, PARTITIONS_PER_TOPIC_MAX + 1, u32::MAX] {
        assert!(matches!(
            NewTopic::try_from(topic("t", count)),
            Err(ProtocolError::InvalidPartitionCount { count: got, max: PARTITIONS_PER_TOPIC_MAX }) if got == count
        ));
    }
    assert!(matches!(NewTopic::try_from(topic("a b", 1)), Err(ProtocolError::InvalidTopicName { .. })));
}

#[test]
fn offset_specs_convert_both_ways() {
    for spec in [
        OffsetSpec::Earliest,
        OffsetSpec::Latest,
        OffsetSpec::Timestamp(0),
        OffsetSpec::Timestamp(-5),
        OffsetSpec::Timestamp(i64::MAX),
    ] {
        let lookup = ListOffsetsPartition { partition: 3, spec: Some(spec.into()) };
        assert_eq!(OffsetSpec::try_from(&lookup).expect("set"), spec);
    }
    let unset = ListOffsetsPartition { partition: 3, spec: None };
    assert!(matches!(
        OffsetSpec::try_from(&unset),
        Err(ProtocolError::InvalidField { field: "ListOffsetsPartition.spec", .. })
    ));
}

#[test]
fn a_request_frame_header_fits_the_documented_size() {
    let mut wire = BytesMut::new();
    Request::ListTopics(ListTopicsRequest {}).encode(1, &mut wire).expect("fits");
    // An empty message has an empty body: the frame is the prefix and the header alone.
    assert_eq!(wire.len(), FRAME_LENGTH_PREFIX_BYTES + 10);
}

// Strategies for every message, so each api's request and response round-trips through a frame.

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9._-]{0,12}", ".{0,4}"]
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn arb_config() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(arb_string(), arb_string(), 0..3)
}

/// Valid values of a request-wide enum, which `Request::decode` checks.
fn arb_enum_value() -> impl Strategy<Value = i32> {
    0..=1
}

prop_compose! {
    fn arb_api_versions_request()(client_software_name in arb_string(), client_software_version in arb_string())
        -> ApiVersionsRequest {
        ApiVersionsRequest { client_software_name, client_software_version }
    }
}

prop_compose! {
    fn arb_api_version_range()(api_key in any::<u32>(), version_min in any::<u32>(), version_max in any::<u32>())
        -> ApiVersionRange {
        ApiVersionRange { api_key, version_min, version_max }
    }
}

prop_compose! {
    fn arb_broker_limits()(limits in any::<[u32; 7]>()) -> BrokerLimits {
        BrokerLimits {
            frame_bytes_max: limits[0],
            batch_bytes_max: limits[1],
            batch_records_max: limits[2],
            fetch_bytes_max: limits[3],
            fetch_wait_ms_max: limits[4],
            in_flight_requests_max: limits[5],
            partitions_per_topic_max: limits[6],
        }
    }
}

prop_compose! {
    fn arb_api_versions_response()(
        error_code in any::<u32>(),
        api_versions in vec(arb_api_version_range(), 0..4),
        limits in proptest::option::of(arb_broker_limits()),
        broker_software_version in arb_string(),
    ) -> ApiVersionsResponse {
        ApiVersionsResponse { error_code, api_versions, limits, broker_software_version }
    }
}

prop_compose! {
    fn arb_create_topics_request()(
        topics in vec((arb_string(), any::<u32>(), arb_config()), 0..3),
    ) -> CreateTopicsRequest {
        CreateTopicsRequest {
            topics: topics
                .into_iter()
                .map(|(name, partition_count, config)| CreatableTopic { name, partition_count, config })
                .collect(),
        }
    }
}

prop_compose! {
    fn arb_topic_result()(name in arb_string(), error_code in any::<u32>(), error_message in arb_string())
        -> (String, u32, String) {
        (name, error_code, error_message)
    }
}

prop_compose! {
    fn arb_create_topics_response()(error_code in any::<u32>(), topics in vec(arb_topic_result(), 0..3))
        -> CreateTopicsResponse {
        CreateTopicsResponse {
            error_code,
            topics: topics
                .into_iter()
                .map(|(name, error_code, error_message)| CreateTopicResult { name, error_code, error_message })
                .collect(),
        }
    }
}

prop_compose! {
    fn arb_delete_topics_request()(names in vec(arb_string(), 0..3)) -> DeleteTopicsRequest {
        DeleteTopicsRequest { names }
    }
}

prop_compose! {
    fn arb_delete_topics_response()(error_code in any::<u32>(), topics in vec(arb_topic_result(), 0..3))
        -> DeleteTopicsResponse {
        DeleteTopicsResponse {
            error_code,
            topics: topics
                .into_iter()
                .map(|(name, error_code, error_message)| DeleteTopicResult { name, error_code, error_message })
                .collect(),
        }
    }
}

prop_compose! {
    fn arb_list_topics_response()(error_code in any::<u32>(), topics in vec((arb_string(), any::<u32>()), 0..3))
        -> ListTopicsResponse {
        ListTopicsResponse {
            error_code,
            topics: topics
                .into_iter()
                .map(|(name, partition_count)| ListedTopic { name, partition_count })
                .collect(),
        }
    }
}

prop_compose! {
    fn arb_describe_broker_response()(
        (error_code, version, uptime_ms, config, data_dir, data_dir_bytes) in
            (any::<u32>(), arb_string(), any::<u64>(), arb_config(), arb_string(), any::<u64>()),
        (topics, partitions_healthy, partitions_damaged, partitions_failed, connections_open) in
            (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()),
    ) -> DescribeBrokerResponse {
        DescribeBrokerResponse {
            error_code,
            version,
            uptime_ms,
            config,
            data_dir,
            data_dir_bytes,
            topics,
            partitions_healthy,
            partitions_damaged,
            partitions_failed,
            connections_open,
        }
    }
}

prop_compose! {
    fn arb_producer_description()(
        producer_id in any::<i64>(),
        epoch in any::<i32>(),
        last_sequence in any::<i32>(),
        last_write_ms in any::<i64>(),
        last_offset in any::<u64>(),
    ) -> ProducerDescription {
        ProducerDescription { producer_id, epoch, last_sequence, last_write_ms, last_offset }
    }
}

prop_compose! {
    fn arb_partition_producers()(
        (partition, error_code, error_message) in (any::<u32>(), any::<u32>(), arb_string()),
        producers in vec(arb_producer_description(), 0..3),
        producer_count in any::<u32>(),
        truncated in any::<bool>(),
    ) -> PartitionProducers {
        PartitionProducers { partition, error_code, error_message, producers, producer_count, truncated }
    }
}

prop_compose! {
    fn arb_describe_producers_response()(
        error_code in any::<u32>(),
        error_message in arb_string(),
        partitions in vec(arb_partition_producers(), 0..3),
    ) -> DescribeProducersResponse {
        DescribeProducersResponse { error_code, error_message, partitions }
    }
}

prop_compose! {
    fn arb_describe_topics_request()(names in vec(arb_string(), 0..3)) -> DescribeTopicsRequest {
        DescribeTopicsRequest { names }
    }
}

prop_compose! {
    fn arb_partition_description()(
        partition in any::<u32>(),
        start_offset in any::<u64>(),
        end_offset in any::<u64>(),
        damaged in any::<bool>(),
        error_code in any::<u32>(),
        error_message in arb_string(),
    ) -> PartitionDescription {
        PartitionDescription {
            partition,
            start_offset,
            end_offset,
            damaged,
            error_code,
            error_message,
            size_bytes: start_offset ^ end_offset,
            segment_count: partition,
            fsync: "always".to_owned(),
        }
    }
}

prop_compose! {
    fn arb_topic_description()(
        (name, error_code, error_message) in arb_topic_result(),
        config in arb_config(),
        partitions in vec(arb_partition_description(), 0..3),
    ) -> TopicDescription {
        TopicDescription { name, error_code, error_message, config, partitions }
    }
}

prop_compose! {
    fn arb_describe_topics_response()(error_code in any::<u32>(), topics in vec(arb_topic_description(), 0..3))
        -> DescribeTopicsResponse {
        DescribeTopicsResponse { error_code, topics }
    }
}

prop_compose! {
    fn arb_produce_request()(
        acks in arb_enum_value(),
        timeout_ms in any::<u32>(),
        topics in vec((arb_string(), vec((any::<u32>(), arb_bytes()), 0..3)), 0..3),
    ) -> ProduceRequest {
        ProduceRequest {
            acks,
            timeout_ms,
            topics: topics
                .into_iter()
                .map(|(name, partitions)| ProduceTopic {
                    name,
                    partitions: partitions
                        .into_iter()
                        .map(|(partition, records)| ProducePartition { partition, records })
                        .collect(),
                })
                .collect(),
        }
    }
}

prop_compose! {
    fn arb_produce_partition_response()(
        partition in any::<u32>(),
        error_code in any::<u32>(),
        error_message in arb_string(),
        base_offset in any::<u64>(),
        last_offset in any::<u64>(),
        log_append_time_ms in any::<i64>(),
        // Responses keep unknown enum values as they are, so any value must round-trip.
        durability in any::<i32>(),
        duplicate in any::<bool>(),
        dedup_dropped in vec((any::<u32>(), any::<u64>()), 0..3),
        dedup_window_ms in any::<u64>(),
    ) -> ProducePartitionResponse {
        ProducePartitionResponse {
            partition,
            error_code,
            error_message,
            base_offset,
            last_offset,
            log_append_time_ms,
            durability,
            duplicate,
            dedup_dropped: dedup_dropped
                .into_iter()
                .map(|(record_index, original_offset)| DroppedRecord { record_index, original_offset })
                .collect(),
            dedup_window_ms,
        }
    }
}

prop_compose! {
    fn arb_produce_response()(
        error_code in any::<u32>(),
        topics in vec((arb_string(), vec(arb_produce_partition_response(), 0..3)), 0..3),
    ) -> ProduceResponse {
        ProduceResponse {
            error_code,
            topics: topics
                .into_iter()
                .map(|(name, partitions)| ProduceTopicResponse { name, partitions })
                .collect(),
        }
    }
}

prop_compose! {
    fn arb_fetch_request()(
        wait_ms_max in any::<u32>(),
        bytes_min in any::<u32>(),
        bytes_max in any::<u32>(),
        isolation_level in arb_enum_value(),
        topics in vec((arb_string(), vec(any::<(u32, u64, u32)>(), 0..3)), 0..3),
    ) -> FetchRequest {
        FetchRequest {
            wait_ms_max,
            bytes_min,
            bytes_max,
            isolation_level,
            topics: topics
                .into_iter()
                .map(|(name, partitions)| FetchTopic {
                    name,
                    partitions: partitions
                        .into_iter()
                        .map(|(partition, fetch_offset, partition_bytes_max)| FetchPartition {
                            partition,
                            fetch_offset,
                            partition_bytes_max,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

prop_compose! {
    fn arb_fetch_partition_response()(
        partition in any::<u32>(),
        error_code in any::<u32>(),
        error_message in arb_string(),
        high_watermark in any::<u64>(),
        log_start_offset in any::<u64>(),
        records in arb_bytes(),
    ) -> FetchPartitionResponse {
        FetchPartitionResponse { partition, error_code, error_message, high_watermark, log_start_offset, records }
    }
}

prop_compose! {
    fn arb_fetch_response()(
        error_code in any::<u32>(),
        topics in vec((arb_string(), vec(arb_fetch_partition_response(), 0..3)), 0..3),
    ) -> FetchResponse {
        FetchResponse {
            error_code,
            topics: topics
                .into_iter()
                .map(|(name, partitions)| FetchTopicResponse { name, partitions })
                .collect(),
        }
    }
}

fn arb_offset_spec() -> impl Strategy<Value = Option<list_offsets_partition::Spec>> {
    proptest::option::of(prop_oneof![
        Just(OffsetSpec::Earliest),
        Just(OffsetSpec::Latest),
        any::<i64>().prop_map(OffsetSpec::Timestamp),
    ])
    .prop_map(|spec| spec.map(list_offsets_partition::Spec::from))
}

prop_compose! {
    fn arb_list_offsets_request()(
        isolation_level in arb_enum_value(),
        topics in vec((arb_string(), vec((any::<u32>(), arb_offset_spec()), 0..3)), 0..3),
    ) -> ListOffsetsRequest {
        ListOffsetsRequest {
            isolation_level,
            topics: topics
                .into_iter()
                .map(|(name, partitions)| ListOffsetsTopic {
                    name,
                    partitions: partitions
                        .into_iter()
                        .map(|(partition, spec)| ListOffsetsPartition { partition, spec })
                        .collect(),
                })
                .collect(),
        }
    }
}

prop_compose! {
    fn arb_list_offsets_partition_response()(
        partition in any::<u32>(),
        error_code in any::<u32>(),
        error_message in arb_string(),
        offset in any::<u64>(),
        timestamp_ms in any::<i64>(),
    ) -> ListOffsetsPartitionResponse {
        ListOffsetsPartitionResponse { partition, error_code, error_message, offset, timestamp_ms }
    }
}

prop_compose! {
    fn arb_list_offsets_response()(
        error_code in any::<u32>(),
        topics in vec((arb_string(), vec(arb_list_offsets_partition_response(), 0..3)), 0..3),
    ) -> ListOffsetsResponse {
        ListOffsetsResponse {
            error_code,
            topics: topics
                .into_iter()
                .map(|(name, partitions)| ListOffsetsTopicResponse { name, partitions })
                .collect(),
        }
    }
}

prop_compose! {
    fn arb_error_response()(error_code in any::<u32>(), error_message in arb_string()) -> ErrorResponse {
        ErrorResponse { error_code, error_message }
    }
}

proptest! {
    #[test]
    fn api_versions_round_trip(request in arb_api_versions_request(), response in arb_api_versions_response()) {
        check_request_round_trip(&request.into());
        check_response_round_trip(&response.into());
    }

    #[test]
    fn create_topics_round_trip(request in arb_create_topics_request(), response in arb_create_topics_response()) {
        check_request_round_trip(&request.into());
        check_response_round_trip(&response.into());
    }

    #[test]
    fn delete_topics_round_trip(request in arb_delete_topics_request(), response in arb_delete_topics_response()) {
        check_request_round_trip(&request.into());
        check_response_round_trip(&response.into());
    }

    #[test]
    fn list_topics_round_trip(response in arb_list_topics_response()) {
        check_request_round_trip(&ListTopicsRequest {}.into());
        check_response_round_trip(&response.into());
    }

    #[test]
    fn describe_topics_round_trip(
        request in arb_describe_topics_request(),
        response in arb_describe_topics_response(),
    ) {
        check_request_round_trip(&request.into());
        check_response_round_trip(&response.into());
    }

    #[test]
    fn describe_broker_round_trip(response in arb_describe_broker_response()) {
        check_request_round_trip(&DescribeBrokerRequest {}.into());
        check_response_round_trip(&response.into());
    }

    #[test]
    fn describe_producers_round_trip(topic in arb_string(), response in arb_describe_producers_response()) {
        check_request_round_trip(&DescribeProducersRequest { topic }.into());
        check_response_round_trip(&response.into());
    }

    #[test]
    fn produce_round_trip(request in arb_produce_request(), response in arb_produce_response()) {
        check_request_round_trip(&request.into());
        check_response_round_trip(&response.into());
    }

    #[test]
    fn fetch_round_trip(request in arb_fetch_request(), response in arb_fetch_response()) {
        check_request_round_trip(&request.into());
        check_response_round_trip(&response.into());
    }

    #[test]
    fn list_offsets_round_trip(request in arb_list_offsets_request(), response in arb_list_offsets_response()) {
        check_request_round_trip(&request.into());
        check_response_round_trip(&response.into());
    }

    #[test]
    fn error_response_round_trips(response in arb_error_response()) {
        check_response_round_trip(&response.into());
    }

    #[test]
    fn arbitrary_bodies_decode_or_fail_cleanly(
        api_key in 0u16..30,
        flags in 0u16..4,
        body in vec(any::<u8>(), 0..128),
    ) {
        let header = FrameHeader { api_key, api_version: 0, correlation_id: 1, flags: FrameFlags::from_bits(flags) };
        let _ = Request::decode(&header, Bytes::from(body.clone()));
        let _ = Response::decode(&header, Bytes::from(body));
    }
}

fn arb_topic_partitions() -> impl Strategy<Value = Vec<TopicPartitions>> {
    vec((arb_string(), vec(any::<u32>(), 0..4)), 0..3).prop_map(|topics| {
        topics.into_iter().map(|(topic, partitions)| TopicPartitions { topic, partitions }).collect()
    })
}

prop_compose! {
    fn arb_join_group()(
        ids in [arb_string(), arb_string(), arb_string(), arb_string(), arb_string()],
        topics in vec(arb_string(), 0..3),
        numbers in any::<(u32, i32, u32, u32)>(),
        assignment in arb_topic_partitions(),
    ) -> (JoinGroupRequest, JoinGroupResponse) {
        let [group_id, member_id, instance_id, assignor, client_id] = ids;
        let request = JoinGroupRequest {
            group_id,
            member_id: member_id.clone(),
            instance_id,
            topics,
            session_timeout_ms: numbers.0,
            assignor: assignor.clone(),
            client_id,
        };
        let response = JoinGroupResponse {
            error_code: numbers.2,
            error_message: assignor,
            member_id,
            generation: numbers.1,
            assignment,
            heartbeat_interval_ms: numbers.3,
        };
        (request, response)
    }
}

prop_compose! {
    fn arb_heartbeat()(
        ids in [arb_string(), arb_string(), arb_string()],
        numbers in any::<(i32, u32, u32)>(),
        owned in arb_topic_partitions(),
        assignment in arb_topic_partitions(),
    ) -> (HeartbeatRequest, HeartbeatResponse) {
        let [group_id, member_id, error_message] = ids;
        let request = HeartbeatRequest { group_id, member_id, generation: numbers.0, owned };
        let response = HeartbeatResponse {
            error_code: numbers.1,
            error_message,
            generation: numbers.0,
            assignment,
            heartbeat_interval_ms: numbers.2,
        };
        (request, response)
    }
}

prop_compose! {
    fn arb_offset_commit()(
        ids in [arb_string(), arb_string(), arb_string()],
        generation in any::<i32>(),
        topics in vec((arb_string(), vec((any::<u32>(), any::<u64>(), arb_string(), any::<u32>()), 0..3)), 0..3),
    ) -> (OffsetCommitRequest, OffsetCommitResponse) {
        let [group_id, member_id, error_message] = ids;
        let request = OffsetCommitRequest {
            group_id,
            member_id,
            generation,
            topics: topics
                .iter()
                .map(|(name, partitions)| OffsetCommitTopic {
                    name: name.clone(),
                    partitions: partitions
                        .iter()
                        .map(|(partition, offset, metadata, _)| OffsetCommitPartition {
                            partition: *partition,
                            offset: *offset,
                            metadata: metadata.clone(),
                        })
                        .collect(),
                })
                .collect(),
        };
        let response = OffsetCommitResponse {
            error_code: 0,
            error_message: error_message.clone(),
            topics: topics
                .into_iter()
                .map(|(name, partitions)| OffsetCommitTopicResponse {
                    name,
                    partitions: partitions
                        .into_iter()
                        .map(|(partition, _, _, error_code)| OffsetCommitPartitionResponse {
                            partition,
                            error_code,
                            error_message: error_message.clone(),
                        })
                        .collect(),
                })
                .collect(),
        };
        (request, response)
    }
}

prop_compose! {
    fn arb_offset_fetch()(
        group_id in arb_string(),
        requested in arb_topic_partitions(),
        topics in vec((arb_string(), vec((any::<(u32, u32, bool, u64, i64)>(), arb_string()), 0..3)), 0..3),
    ) -> (OffsetFetchRequest, OffsetFetchResponse) {
        let response = OffsetFetchResponse {
            error_code: 0,
            error_message: String::new(),
            topics: topics
                .into_iter()
                .map(|(name, partitions)| OffsetFetchTopic {
                    name,
                    partitions: partitions
                        .into_iter()
                        .map(|((partition, error_code, committed, offset, commit_timestamp_ms), metadata)| {
                            OffsetFetchPartition {
                                partition,
                                error_code,
                                committed,
                                offset,
                                metadata,
                                commit_timestamp_ms,
                                lag_ms: commit_timestamp_ms / 2,
                            }
                        })
                        .collect(),
                })
                .collect(),
        };
        (OffsetFetchRequest { group_id, include_lag: requested.is_empty(), topics: requested }, response)
    }
}

prop_compose! {
    fn arb_describe_groups()(
        group_ids in vec(arb_string(), 0..3),
        numbers in any::<(u32, i32)>(),
        member in [arb_string(), arb_string(), arb_string()],
        assignment in arb_topic_partitions(),
        target in arb_topic_partitions(),
    ) -> (DescribeGroupsRequest, DescribeGroupsResponse, ListGroupsResponse) {
        let [member_id, instance_id, client_id] = member;
        let groups = group_ids
            .iter()
            .map(|group_id| GroupDescription {
                group_id: group_id.clone(),
                error_code: numbers.0,
                state: "stable".to_owned(),
                generation: numbers.1,
                assignor: "range".to_owned(),
                members: vec![GroupMemberDescription {
                    member_id: member_id.clone(),
                    instance_id: instance_id.clone(),
                    client_id: client_id.clone(),
                    assignment: assignment.clone(),
                    target: target.clone(),
                }],
            })
            .collect();
        let listing = ListGroupsResponse {
            error_code: numbers.0,
            groups: group_ids
                .iter()
                .map(|group_id| GroupListing { group_id: group_id.clone(), state: "empty".to_owned(), member_count: numbers.0 })
                .collect(),
        };
        (DescribeGroupsRequest { group_ids }, DescribeGroupsResponse { error_code: 0, groups }, listing)
    }
}

proptest! {
    #[test]
    fn join_group_round_trip((request, response) in arb_join_group()) {
        check_request_round_trip(&request.into());
        check_response_round_trip(&response.into());
    }

    #[test]
    fn heartbeat_round_trip((request, response) in arb_heartbeat()) {
        check_request_round_trip(&request.into());
        check_response_round_trip(&response.into());
    }

    #[test]
    fn leave_group_round_trip(ids in [arb_string(), arb_string()], error_code in any::<u32>()) {
        let [group_id, member_id] = ids;
        check_request_round_trip(&LeaveGroupRequest { group_id, member_id: member_id.clone() }.into());
        check_response_round_trip(&LeaveGroupResponse { error_code, error_message: member_id }.into());
    }

    #[test]
    fn offset_commit_round_trip((request, response) in arb_offset_commit()) {
        check_request_round_trip(&request.into());
        check_response_round_trip(&response.into());
    }

    #[test]
    fn offset_fetch_round_trip((request, response) in arb_offset_fetch()) {
        check_request_round_trip(&request.into());
        check_response_round_trip(&response.into());
    }

    #[test]
    fn groups_listing_and_description_round_trip((request, response, listing) in arb_describe_groups()) {
        check_request_round_trip(&request.into());
        check_response_round_trip(&response.into());
        check_request_round_trip(&ListGroupsRequest {}.into());
        check_response_round_trip(&listing.into());
    }
}

#[test]
fn golden_offset_commit_request_frame_layout() {
    let wire: &[u8] = &[
        0x00, 0x00, 0x00, 0x24, // len = 10 + 26
        0x00, 0x17, 0x00, 0x00, // api_key = OffsetCommit (23), api_version = 0
        0x00, 0x00, 0x00, 0x09, // correlation_id = 9
        0x00, 0x00, // flags = request
        0x0a, 0x01, b'g', // 1: group_id = "g"
        0x12, 0x02, b'm', b'1', // 2: member_id = "m1"
        0x18, 0x03, // 3: generation = 3
        0x22, 0x0f, // 4: topics[0], 15 bytes
        0x0a, 0x01, b't', // 1: name = "t"
        0x12, 0x0a, // 2: partitions[0], 10 bytes
        0x08, 0x02, // 1: partition = 2
        0x10, 0x2a, // 2: offset = 42
        0x1a, 0x04, b'm', b'e', b't', b'a', // 3: metadata = "meta"
    ];
    let request = Request::OffsetCommit(OffsetCommitRequest {
        group_id: "g".to_owned(),
        member_id: "m1".to_owned(),
        generation: 3,
        topics: vec![OffsetCommitTopic {
            name: "t".to_owned(),
            partitions: vec![OffsetCommitPartition { partition: 2, offset: 42, metadata: "meta".to_owned() }],
        }],
    });
    let mut encoded = BytesMut::new();
    request.encode(9, &mut encoded).expect("fits");
    assert_eq!(&encoded[..], wire);
    let mut buf = BytesMut::from(wire);
    let frame = Frame::decode(&mut buf).expect("valid").expect("whole");
    assert_eq!(Request::decode(&frame.header, frame.body).expect("valid body"), request);
}

#[test]
fn golden_simple_commit_generation_is_a_negative_varint() {
    // generation -1 (a commit without membership) is a 10-byte varint, as protobuf encodes every negative int32.
    let request = OffsetCommitRequest { generation: -1, ..OffsetCommitRequest::default() };
    assert_eq!(
        prost::Message::encode_to_vec(&request),
        [0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
    );
}
