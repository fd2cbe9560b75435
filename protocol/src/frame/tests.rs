use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::messages::{ProduceRequest, Request, Response};

/// What decoding a buffer did, with the checks every decode must pass: on `Decoded` exactly one frame's bytes
/// were consumed; otherwise nothing was, and the buffer did not grow.
#[derive(Debug)]
enum Outcome {
    Decoded(Frame),
    NeedMore,
    Failed(ProtocolError),
}

/// The one decode helper every frame test goes through.
fn check_decode(bytes: &[u8], frame_bytes_max: u32) -> Outcome {
    let mut buf = BytesMut::with_capacity(bytes.len());
    buf.put_slice(bytes);
    let capacity_before = buf.capacity();
    let peeked = Frame::peek_len(&buf, frame_bytes_max);
    let result = Frame::decode_with_max(&mut buf, frame_bytes_max);
    assert!(
        buf.capacity() <= capacity_before,
        "decode must not reserve: capacity grew from {capacity_before} to {}",
        buf.capacity()
    );
    match result {
        Ok(Some(frame)) => {
            let consumed = bytes.len() - buf.len();
            assert_eq!(consumed, frame.encoded_len(), "consumes exactly one frame");
            assert_eq!(peeked.ok().flatten(), Some(consumed));
            assert_eq!(&buf[..], &bytes[consumed..], "leaves the following bytes");
            Outcome::Decoded(frame)
        }
        Ok(None) => {
            assert_eq!(&buf[..], bytes, "a partial frame is not consumed");
            match peeked {
                Ok(Some(wire_len)) => assert!(bytes.len() < wire_len),
                Ok(None) => assert!(bytes.len() < FRAME_LENGTH_PREFIX_BYTES),
                Err(error) => panic!("peek_len failed with {error} where decode waits"),
            }
            Outcome::NeedMore
        }
        Err(error) => {
            assert_eq!(&buf[..], bytes, "a rejected frame is not consumed");
            assert!(peeked.is_err(), "peek_len and decode agree on errors");
            Outcome::Failed(error)
        }
    }
}

fn encode(frame: &Frame) -> BytesMut {
    let mut dst = BytesMut::new();
    frame.encode(&mut dst).expect("test frames fit the limit");
    assert_eq!(dst.len(), frame.encoded_len());
    dst
}

/// Checks a frame against its hand-written wire bytes, in both directions.
fn check_golden(frame: &Frame, wire: &[u8]) {
    assert_eq!(&encode(frame)[..], wire, "encode");
    match check_decode(wire, FRAME_BYTES_MAX) {
        Outcome::Decoded(decoded) => assert_eq!(&decoded, frame, "decode"),
        other => panic!("golden bytes did not decode: {other:?}"),
    }
}

fn sample_frame() -> Frame {
    Frame { header: FrameHeader::request(ApiKey::Produce, 0, 0x0102_0304), body: Bytes::from_static(&[0x08, 0x01]) }
}

#[test]
fn golden_request_frame_layout() {
    check_golden(
        &sample_frame(),
        &[
            0x00, 0x00, 0x00, 0x0c, // len = 10 header bytes + 2 body bytes
            0x00, 0x05, // api_key = Produce
            0x00, 0x00, // api_version = 0
            0x01, 0x02, 0x03, 0x04, // correlation_id
            0x00, 0x00, // flags = request
            0x08, 0x01, // body
        ],
    );
}

#[test]
fn golden_response_and_error_frame_layout() {
    let request = FrameHeader::request(ApiKey::Fetch, 0, 0xfffe_fdfc);
    check_golden(
        &Frame { header: request.response(), body: Bytes::new() },
        &[
            0x00, 0x00, 0x00, 0x0a, // len = header only
            0x00, 0x06, // api_key = Fetch
            0x00, 0x00, // api_version
            0xff, 0xfe, 0xfd, 0xfc, // correlation_id echoed
            0x00, 0x01, // flags = response
        ],
    );
    check_golden(
        &Frame { header: request.error_response(), body: Bytes::from_static(b"\x08\x11") },
        &[
            0x00, 0x00, 0x00, 0x0c, //
            0x00, 0x06, //
            0x00, 0x00, //
            0xff, 0xfe, 0xfd, 0xfc, //
            0x00, 0x03, // flags = response | error
            0x08, 0x11, // ErrorResponse { error_code: 17 }
        ],
    );
}

#[test]
fn encode_message_writes_the_same_bytes_as_encoding_a_frame_of_the_message() {
    let message = ProduceRequest { acks: 1, timeout_ms: 1000, topics: Vec::new() };
    let header = FrameHeader::request(ApiKey::Produce, 0, 9);
    let mut direct = BytesMut::new();
    encode_message(&header, &message, &mut direct).expect("small message fits");
    let frame = Frame { header, body: Bytes::from(prost::Message::encode_to_vec(&message)) };
    assert_eq!(direct, encode(&frame));
}

#[test]
fn every_prefix_of_a_frame_needs_more_bytes() {
    let mut wire = encode(&sample_frame());
    // A second frame after the first must not change how the first's prefixes decode.
    wire.extend_from_slice(&encode(&sample_frame()));
    let first_len = sample_frame().encoded_len();
    for prefix_len in 0..first_len {
        assert!(
            matches!(check_decode(&wire[..prefix_len], FRAME_BYTES_MAX), Outcome::NeedMore),
            "prefix of {prefix_len} bytes"
        );
    }
    for len in first_len..=wire.len() {
        assert!(matches!(check_decode(&wire[..len], FRAME_BYTES_MAX), Outcome::Decoded(_)));
    }
}

#[test]
fn every_byte_and_bit_mutation_of_the_header_decodes_or_fails_cleanly() {
    let wire = encode(&sample_frame());
    let header_end = FRAME_LENGTH_PREFIX_BYTES + usize_from(FRAME_HEADER_BYTES);
    let mut mutations: Vec<BytesMut> = Vec::new();
    for byte_idx in 0..header_end {
        for value in 0..=u8::MAX {
            let mut mutated = wire.clone();
            mutated[byte_idx] = value;
            mutations.push(mutated);
        }
        for bit in 0..8 {
            let mut mutated = wire.clone();
            mutated[byte_idx] ^= 1 << bit;
            mutations.push(mutated);
        }
    }
    for mutated in mutations {
        match check_decode(&mutated, FRAME_BYTES_MAX) {
            Outcome::Decoded(frame) => {
                // Typed errors or values, never a panic.
                let _ = Request::decode(&frame.header, frame.body.clone());
                let _ = Response::decode(&frame.header, frame.body);
            }
            Outcome::NeedMore => {}
            Outcome::Failed(ProtocolError::FrameTooLarge { .. } | ProtocolError::FrameTooShort { .. }) => {}
            Outcome::Failed(other) => panic!("unexpected error {other:?}"),
        }
    }
}

/// A buffer holding a length prefix and a full header, but no body.
fn prefix_and_header(len: u32) -> Vec<u8> {
    let mut bytes = len.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0, 5, 0, 0, 0, 0, 0, 1, 0, 0]);
    bytes
}

#[test]
fn length_prefix_limits_are_checked_before_anything_is_buffered() {
    for len in [u32::MAX, FRAME_BYTES_MAX + 1] {
        match check_decode(&prefix_and_header(len), FRAME_BYTES_MAX) {
            Outcome::Failed(ProtocolError::FrameTooLarge { len: got, max }) => {
                assert_eq!(got, u64::from(len));
                assert_eq!(max, FRAME_BYTES_MAX);
            }
            other => panic!("len {len}: {other:?}"),
        }
    }
    // Exactly the limit is a valid frame that is still arriving.
    assert!(matches!(check_decode(&prefix_and_header(FRAME_BYTES_MAX), FRAME_BYTES_MAX), Outcome::NeedMore));
    assert_eq!(
        Frame::peek_len(&prefix_and_header(FRAME_BYTES_MAX), FRAME_BYTES_MAX).expect("valid length"),
        Some(usize_from(FRAME_BYTES_MAX) + FRAME_LENGTH_PREFIX_BYTES)
    );
    for len in [0, 1, FRAME_HEADER_BYTES - 1] {
        match check_decode(&prefix_and_header(len), FRAME_BYTES_MAX) {
            Outcome::Failed(ProtocolError::FrameTooShort { len: got, min }) => {
                assert_eq!(got, len);
                assert_eq!(min, FRAME_HEADER_BYTES);
            }
            other => panic!("len {len}: {other:?}"),
        }
    }
    // The length prefix alone is enough to reject.
    assert!(matches!(
        check_decode(&u32::MAX.to_be_bytes(), FRAME_BYTES_MAX),
        Outcome::Failed(ProtocolError::FrameTooLarge { .. })
    ));
    // Exactly the header size is a frame with an empty body.
    match check_decode(&prefix_and_header(FRAME_HEADER_BYTES), FRAME_BYTES_MAX) {
        Outcome::Decoded(frame) => assert!(frame.body.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_caller_limit_lowers_the_protocol_limit_but_never_raises_it() {
    let limit = 100;
    assert!(matches!(check_decode(&prefix_and_header(limit), limit), Outcome::NeedMore));
    match check_decode(&prefix_and_header(limit + 1), limit) {
        Outcome::Failed(ProtocolError::FrameTooLarge { max, .. }) => assert_eq!(max, limit),
        other => panic!("{other:?}"),
    }
    match check_decode(&prefix_and_header(FRAME_BYTES_MAX + 1), u32::MAX) {
        Outcome::Failed(ProtocolError::FrameTooLarge { max, .. }) => {
            assert_eq!(max, FRAME_BYTES_MAX)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn encoding_a_frame_above_the_limit_fails_and_writes_nothing() {
    let body_len_max = usize_from(FRAME_BYTES_MAX - FRAME_HEADER_BYTES);
    let largest =
        Frame { header: FrameHeader::request(ApiKey::Produce, 0, 1), body: Bytes::from(vec![0; body_len_max]) };
    let wire = encode(&largest);
    assert!(matches!(check_decode(&wire, FRAME_BYTES_MAX), Outcome::Decoded(frame) if frame == largest));

    let too_large = Frame { body: Bytes::from(vec![0; body_len_max + 1]), ..largest };
    let mut dst = BytesMut::from(&b"before"[..]);
    match too_large.encode(&mut dst) {
        Err(ProtocolError::EncodeTooLarge { len, max }) => {
            assert_eq!(len, u64::from(FRAME_BYTES_MAX) + 1);
            assert_eq!(max, FRAME_BYTES_MAX);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(&dst[..], b"before");

    let message = ProduceRequest {
        acks: 1,
        timeout_ms: 0,
        topics: vec![crate::messages::ProduceTopic {
            name: "t".to_owned(),
            partitions: vec![crate::messages::ProducePartition { partition: 0, records: too_large.body.clone() }],
        }],
    };
    assert!(matches!(encode_message(&too_large.header, &message, &mut dst), Err(ProtocolError::EncodeTooLarge { .. })));
    assert!(matches!(
        encode_message_with_max(&too_large.header, &ProduceRequest::default(), &mut dst, 9),
        Err(ProtocolError::EncodeTooLarge { len: 10, max: 9 })
    ));
    assert_eq!(&dst[..], b"before");
}

#[test]
fn decoded_body_is_a_slice_of_the_receive_buffer() {
    let wire = encode(&Frame { body: Bytes::from_static(b"zero-copy body"), ..sample_frame() });
    let mut buf = wire.clone();
    let body_start = buf.as_ptr() as usize + FRAME_LENGTH_PREFIX_BYTES + 10;
    let frame = Frame::decode(&mut buf).expect("valid frame").expect("whole frame");
    assert_eq!(frame.body.as_ptr() as usize, body_start);
    assert_eq!(&frame.body[..], b"zero-copy body");
}

#[test]
fn api_keys_are_stable() {
    let expected: [(u16, &str); 23] = [
        (0, "api_versions"),
        (1, "create_topics"),
        (2, "delete_topics"),
        (3, "list_topics"),
        (4, "describe_topics"),
        (5, "produce"),
        (6, "fetch"),
        (7, "list_offsets"),
        (8, "init_producer_id"),
        (9, "describe_broker"),
        (10, "describe_producers"),
        (20, "join_group"),
        (21, "heartbeat"),
        (22, "leave_group"),
        (23, "offset_commit"),
        (24, "offset_fetch"),
        (25, "list_groups"),
        (26, "describe_groups"),
        (40, "txn_produce"),
        (41, "txn_offset_commit"),
        (42, "end_txn"),
        (43, "list_txns"),
        (44, "abort_txn"),
    ];
    assert_eq!(ApiKey::ALL.len(), expected.len());
    for (api, (key, name)) in ApiKey::ALL.into_iter().zip(expected) {
        assert_eq!(api.as_u16(), key);
        assert_eq!(api.name(), name);
        assert_eq!(ApiKey::try_from(key).expect("known key"), api);
        assert!(api.supports_version(0));
        assert!(!api.supports_version(1));
    }
    for key in 0..=u16::MAX {
        match ApiKey::try_from(key) {
            Ok(api) => assert_eq!(api.as_u16(), key),
            Err(ProtocolError::UnknownApiKey { api_key }) => {
                assert_eq!(api_key, key);
                assert!(ApiKey::ALL.iter().all(|api| api.as_u16() != key));
            }
            Err(other) => panic!("{other:?}"),
        }
    }
}

#[test]
fn flags_name_their_bits() {
    assert!(!FrameFlags::REQUEST.is_response());
    assert!(FrameFlags::RESPONSE.is_response() && !FrameFlags::RESPONSE.is_error());
    assert!(FrameFlags::ERROR_RESPONSE.is_response() && FrameFlags::ERROR_RESPONSE.is_error());
    assert_eq!(FrameFlags::ERROR_RESPONSE.reserved_bits(), 0);
    assert_eq!(FrameFlags::from_bits(0xfff7).reserved_bits(), 0xfff4);
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (any::<u16>(), any::<u16>(), any::<u32>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(
        |(api_key, api_version, correlation_id, flags, body)| Frame {
            header: FrameHeader { api_key, api_version, correlation_id, flags: FrameFlags::from_bits(flags) },
            body: Bytes::from(body),
        },
    )
}

proptest! {
    #[test]
    fn frames_round_trip(frame in arb_frame()) {
        match check_decode(&encode(&frame), FRAME_BYTES_MAX) {
            Outcome::Decoded(decoded) => prop_assert_eq!(decoded, frame),
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn pipelined_frames_decode_in_order(
        frames in proptest::collection::vec(arb_frame(), 0..8),
        split_at in any::<proptest::sample::Index>(),
    ) {
        let mut wire = BytesMut::new();
        for frame in &frames {
            frame.encode(&mut wire).expect("small frames fit");
        }
        // Deliver the bytes in two reads, split anywhere.
        let split_at = split_at.index(wire.len() + 1);
        let mut buf = BytesMut::from(&wire[..split_at]);
        let mut decoded = Vec::new();
        while let Some(frame) = Frame::decode(&mut buf).expect("valid frames") {
            decoded.push(frame);
        }
        buf.extend_from_slice(&wire[split_at..]);
        while let Some(frame) = Frame::decode(&mut buf).expect("valid frames") {
            decoded.push(frame);
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        crate::fuzz::decode_frame(&bytes);
        let _ = check_decode(&bytes, FRAME_BYTES_MAX);
    }
}
