//! Fuzz entry points, shared by the cargo-fuzz targets in `protocol/fuzz/` and by the corpus test
//! (`tests/fuzz_corpus.rs`), so stable `cargo test` replays every corpus input through the same code.
//!
//! Each function takes arbitrary bytes, must never panic on them, and asserts the round-trip invariants the
//! decoders promise: a decoded frame re-encodes to the bytes it came from, and a decoded message re-encodes
//! to one that decodes equal.
//! A panic here is a bug in the decoders (or in these invariants), never in the input.
//!
//! Targets: [`decode_frame`] (a stream of frames), [`decode_request`] and [`decode_response`] (one message body of an
//! api the first byte selects, so the fuzzer spends its time inside the bodies), and [`decode_batch`].

use bytes::{Bytes, BytesMut};

use crate::batch::{BatchIter, RecordBatch, split_batches};
use crate::frame::{ApiKey, FRAME_LENGTH_PREFIX_BYTES, Frame, FrameHeader};
use crate::limits::{PARTITIONS_PER_TOPIC_MAX, TOPIC_NAME_BYTES_MAX};
use crate::messages::{
    DeleteTopicsRequest, DescribeTopicsRequest, NewTopic, OffsetCommitRequest, OffsetSpec, ProduceRequest, Request,
    Response, TopicName, TxnOffsetCommitRequest, TxnProduceRequest, error_code_from_wire, error_code_to_wire,
    list_offsets_partition,
};

/// Decodes frames from `data` until it runs out or an error, then decodes each frame as a request and as a
/// response, checking that everything decoded re-encodes faithfully.
pub fn decode_frame(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        let len_before = buf.len();
        let wire_len = Frame::peek_len(&buf, crate::limits::FRAME_BYTES_MAX);
        match Frame::decode(&mut buf) {
            Ok(Some(frame)) => {
                let consumed = len_before - buf.len();
                assert_eq!(wire_len.ok().flatten(), Some(consumed));
                let wire_start = data.len() - len_before;
                check_frame(&frame, &data[wire_start..wire_start + consumed]);
            }
            Ok(None) => {
                assert_eq!(buf.len(), len_before, "a partial frame must not be consumed");
                match wire_len {
                    Ok(None) => assert!(buf.len() < FRAME_LENGTH_PREFIX_BYTES),
                    Ok(Some(wire_len)) => assert!(buf.len() < wire_len),
                    Err(_) => panic!("decode waits for bytes where peek_len fails"),
                }
                return;
            }
            Err(_) => {
                assert_eq!(buf.len(), len_before, "a rejected frame must not be consumed");
                assert!(wire_len.is_err());
                return;
            }
        }
    }
}

/// Checks one decoded frame: it re-encodes to `wire`, and its body round-trips as a request and a response.
fn check_frame(frame: &Frame, wire: &[u8]) {
    let mut encoded = BytesMut::new();
    frame.encode(&mut encoded).expect("a frame that decoded within the limit encodes within it");
    assert_eq!(&encoded[..], wire, "frame re-encodes to its bytes");

    if let Ok(request) = Request::decode(&frame.header, frame.body.clone()) {
        check_request(&frame.header, &request);
    }
    if let Ok(response) = Response::decode(&frame.header, frame.body.clone()) {
        check_response(&frame.header, &response);
    }
}

/// Checks that a request decoded from a frame with `header` re-encodes to a frame with the same header whose body
/// decodes equal: decode(encode(x)) == x.
fn check_request(header: &FrameHeader, request: &Request) {
    let mut encoded = BytesMut::new();
    request.encode(header.correlation_id, &mut encoded).expect("a decoded request re-encodes");
    let reframed = Frame::decode(&mut encoded)
        .expect("an encoded request is a valid frame")
        .expect("an encoded request is a whole frame");
    assert!(encoded.is_empty(), "a request encodes as exactly one frame");
    assert_eq!(&reframed.header, header);
    let redecoded = Request::decode(&reframed.header, reframed.body).expect("an encoded request decodes");
    assert_eq!(&redecoded, request);
}

/// Checks that a response decoded from a frame with `header` re-encodes to a frame with the same header whose body
/// decodes equal.
fn check_response(header: &FrameHeader, response: &Response) {
    let mut encoded = BytesMut::new();
    response.encode(header, &mut encoded).expect("a decoded response re-encodes");
    let reframed = Frame::decode(&mut encoded)
        .expect("an encoded response is a valid frame")
        .expect("an encoded response is a whole frame");
    assert!(encoded.is_empty(), "a response encodes as exactly one frame");
    assert_eq!(&reframed.header, header);
    let redecoded = Response::decode(&reframed.header, reframed.body).expect("an encoded response decodes");
    assert_eq!(&redecoded, response);
}

/// The correlation id of the headers the body targets decode under (any value does: the body never sees it).
const CORRELATION_ID: u32 = 7;

/// The api a body-target input's first byte selects: every api in [`ApiKey::ALL`] order, then wrapping around.
/// [`decode_response`] has one more choice, the error frame, at `ApiKey::ALL.len()`.
pub fn selector_api(selector: u8, n_choices: usize) -> Option<ApiKey> {
    ApiKey::ALL.get(usize::from(selector) % n_choices).copied()
}

/// Decodes `data[1..]` as the body of a request of the api `data[0]` selects ([`selector_api`]), through
/// [`Request::decode`] under that api's request header, exactly as the broker's connection does once it has read a
/// frame; then runs the per-item validation the handlers run on it (topic names, new topics, offset specs, the record
/// batches of produce requests).
/// A request that decodes must round-trip, and the validated types must keep what they validated.
pub fn decode_request(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    let api = selector_api(selector, ApiKey::ALL.len()).expect("the selector is taken modulo the number of apis");
    let header = FrameHeader::request(api, api.version_max(), CORRELATION_ID);
    let Ok(request) = Request::decode(&header, Bytes::copy_from_slice(body)) else { return };
    assert_eq!(request.api_key(), api);
    check_request(&header, &request);
    check_request_items(&request);
}

/// Runs the protocol-side validation the broker's handlers apply to a decoded request's items.
fn check_request_items(request: &Request) {
    match request {
        Request::CreateTopics(request) => {
            for topic in &request.topics {
                if let Ok(new_topic) = NewTopic::try_from(topic.clone()) {
                    assert_eq!(new_topic.name.as_str(), topic.name);
                    assert!((1..=PARTITIONS_PER_TOPIC_MAX).contains(&new_topic.partition_count));
                    assert_eq!(new_topic.config, topic.config);
                }
            }
        }
        Request::DeleteTopics(DeleteTopicsRequest { names })
        | Request::DescribeTopics(DescribeTopicsRequest { names }) => {
            names.iter().for_each(|name| check_topic_name(name));
        }
        Request::Produce(ProduceRequest { topics, .. }) | Request::TxnProduce(TxnProduceRequest { topics, .. }) => {
            for topic in topics {
                check_topic_name(&topic.name);
                for partition in &topic.partitions {
                    check_batches(split_batches(partition.records.clone()));
                }
            }
        }
        Request::Fetch(request) => request.topics.iter().for_each(|topic| check_topic_name(&topic.name)),
        Request::DescribeProducers(request) => check_topic_name(&request.topic),
        Request::ListOffsets(request) => {
            for topic in &request.topics {
                check_topic_name(&topic.name);
                for lookup in &topic.partitions {
                    match OffsetSpec::try_from(lookup) {
                        Ok(spec) => assert_eq!(Some(list_offsets_partition::Spec::from(spec)), lookup.spec),
                        Err(_) => assert!(lookup.spec.is_none()),
                    }
                }
            }
        }
        Request::OffsetCommit(OffsetCommitRequest { topics, .. })
        | Request::TxnOffsetCommit(TxnOffsetCommitRequest { topics, .. }) => {
            topics.iter().for_each(|topic| check_topic_name(&topic.name));
        }
        Request::ApiVersions(_)
        | Request::ListTopics(_)
        | Request::InitProducerId(_)
        | Request::DescribeBroker(_)
        | Request::JoinGroup(_)
        | Request::Heartbeat(_)
        | Request::LeaveGroup(_)
        | Request::OffsetFetch(_)
        | Request::ListGroups(_)
        | Request::DescribeGroups(_)
        | Request::EndTxn(_)
        | Request::ListTxns(_)
        | Request::AbortTxn(_) => {}
    }
}

/// A topic name that validates is the name it came from, within the naming rule's bounds.
fn check_topic_name(name: &str) {
    if let Ok(topic) = TopicName::new(name.to_owned()) {
        assert_eq!(topic.as_str(), name);
        assert!(!name.is_empty());
        assert!(u32::try_from(name.len()).is_ok_and(|len| len <= TOPIC_NAME_BYTES_MAX));
    }
}

/// Decodes `data[1..]` as the body of a response of the api `data[0]` selects ([`selector_api`], with one more choice:
/// an error frame), through [`Response::decode`] as the client's connection does (a broken or hostile broker), then
/// reads it as the client does: the error codes, and the record batches of a fetch response.
/// A response that decodes must round-trip.
pub fn decode_response(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    let header = match selector_api(selector, ApiKey::ALL.len() + 1) {
        Some(api) => FrameHeader::request(api, api.version_max(), CORRELATION_ID).response(),
        None => FrameHeader::request(ApiKey::ApiVersions, 0, CORRELATION_ID).error_response(),
    };
    let Ok(response) = Response::decode(&header, Bytes::copy_from_slice(body)) else { return };
    assert_eq!(response.api_key().map(ApiKey::as_u16), (!header.flags.is_error()).then_some(header.api_key));
    check_response(&header, &response);
    check_error_code(response.error_code());
    if let Response::Fetch(fetch) = &response {
        for partition in fetch.topics.iter().flat_map(|topic| &topic.partitions) {
            check_error_code(partition.error_code);
            check_batches(split_batches(partition.records.clone()));
        }
    }
}

/// A wire error code this build knows maps back to the same number.
fn check_error_code(error_code: u32) {
    if let Some(code) = error_code_from_wire(error_code) {
        assert_eq!(error_code_to_wire(code), error_code);
    }
}

/// Offsets of the batch length and checksum fields (see the layout in [`crate::batch`]).
const BATCH_LENGTH_AT: usize = 8;
/// Offset of the checksum field.
const BATCH_CRC_AT: usize = 13;
/// End of the checksum field.
const BATCH_CRC_END: usize = 17;

/// Decodes `data` as one record batch and as a run of batches, iterating every record and header; then does it
/// again with the length and checksum fields patched to match, so the fuzzer reaches the record parser behind
/// the checksum.
pub fn decode_batch(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    check_batch(RecordBatch::decode(bytes.clone()));
    check_batches(split_batches(bytes));

    if data.len() >= BATCH_CRC_END {
        let Ok(batch_length) = u32::try_from(data.len()) else {
            return;
        };
        let mut patched = BytesMut::from(data);
        patched[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&batch_length.to_be_bytes());
        fix_checksum(&mut patched);
        check_batch(RecordBatch::decode(patched.freeze()));
    }
}

/// Rewrites the checksum field of one whole batch (at least up to the checksum field) so it verifies.
fn fix_checksum(batch: &mut [u8]) {
    let crc = crate::batch::batch_checksum(batch);
    batch[BATCH_CRC_AT..BATCH_CRC_END].copy_from_slice(&crc.to_be_bytes());
}

/// Rewrites the checksum of each whole batch at the front of a run of batches so it verifies, stopping at the first
/// invalid length or a batch cut short; returns how many it rewrote.
/// Lets a fuzzer mutate the header fields behind the checksum (offsets, counts, lengths) of stored batches.
pub fn fix_checksums(batches: &mut [u8]) -> usize {
    let mut position = 0;
    let mut n_fixed = 0;
    while let Some(rest) = batches.get_mut(position..) {
        let Ok(Some(len)) = crate::batch::peek_batch_length(rest) else { break };
        let Some(batch) = usize::try_from(len).ok().and_then(|len| rest.get_mut(..len)) else { break };
        fix_checksum(batch);
        position += batch.len();
        n_fixed += 1;
    }
    n_fixed
}

/// Iterates a run of batches to its end.
fn check_batches(batches: BatchIter) {
    for batch in batches {
        check_batch(batch);
    }
}

/// Reads every record and header of a decoded batch, and checks that a rebase keeps the batch valid.
fn check_batch(batch: Result<RecordBatch, crate::error::ProtocolError>) {
    let Ok(mut batch) = batch else {
        return;
    };
    let records = read_records(&batch);
    let Some(new_base_offset) = batch.base_offset().checked_add(1) else {
        return;
    };
    if batch.rebase(new_base_offset).is_ok() {
        let rebased = RecordBatch::decode(batch.as_bytes().clone()).expect("a rebased batch passes its own checksum");
        assert_eq!(rebased.base_offset(), new_base_offset);
        let rebased_records = read_records(&rebased);
        assert_eq!(rebased_records.len(), records.len());
        for (rebased, original) in rebased_records.iter().zip(&records) {
            match (rebased, original) {
                (Ok(rebased), Ok(original)) => {
                    assert_eq!(Some(rebased.offset), original.offset.checked_add(1));
                    assert_eq!(rebased.key, original.key);
                    assert_eq!(rebased.value, original.value);
                    assert_eq!(rebased.headers, original.headers);
                }
                (Err(_), Err(_)) => {}
                _ => panic!("rebasing changed whether a record decodes"),
            }
        }
    }
}

/// Collects every record of a batch (up to the first error), reading every header of each.
fn read_records(batch: &RecordBatch) -> Vec<Result<crate::batch::Record, crate::error::ProtocolError>> {
    let mut records = Vec::new();
    for record in batch.records() {
        if let Ok(record) = &record {
            let n_headers = record.headers.iter().count();
            assert_eq!(n_headers, record.headers.len(), "every counted header decodes");
        }
        records.push(record);
    }
    records
}
