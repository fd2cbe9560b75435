use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use tokio_util::codec::{Decoder, Encoder, FramedRead};

use super::*;
use crate::frame::{ApiKey, FrameHeader};

fn frame(correlation_id: u32, body_len: usize) -> Frame {
    Frame { header: FrameHeader::request(ApiKey::Fetch, 0, correlation_id), body: Bytes::from(vec![0xab; body_len]) }
}

fn wire(frames: &[Frame]) -> Vec<u8> {
    let mut codec = FrameCodec::new();
    let mut dst = BytesMut::new();
    for frame in frames {
        codec.encode(frame, &mut dst).expect("test frames fit");
    }
    dst.to_vec()
}

/// Reads every item `FramedRead` yields from `bytes`; a byte slice is always ready, so no runtime is needed.
fn check_framed_read(bytes: &[u8], codec: FrameCodec) -> Vec<Result<Frame, ProtocolError>> {
    let mut framed = FramedRead::new(bytes, codec);
    let mut items = Vec::new();
    loop {
        let item = framed.next().now_or_never().expect("a byte slice never blocks");
        match item {
            Some(item) => items.push(item),
            None => return items,
        }
    }
}

#[test]
fn framed_read_yields_every_frame_in_order() {
    // The 20 KiB frame spans several of FramedRead's reads, so partial frames are exercised too.
    let frames = vec![frame(1, 0), frame(2, 20 * 1024), frame(3, 5)];
    let items = check_framed_read(&wire(&frames), FrameCodec::new());
    let decoded: Vec<Frame> = items.into_iter().map(|item| item.expect("valid frames decode")).collect();
    assert_eq!(decoded, frames);
}

#[test]
fn framed_read_reports_a_truncated_stream() {
    let mut bytes = wire(&[frame(1, 3), frame(2, 3)]);
    bytes.pop();
    let items = check_framed_read(&bytes, FrameCodec::new());
    assert_eq!(items.len(), 2);
    assert_eq!(*items[0].as_ref().expect("first frame is whole"), frame(1, 3));
    assert!(matches!(items[1], Err(ProtocolError::Io(_))));
}

#[test]
fn framed_read_rejects_a_frame_above_the_codec_limit() {
    let codec = FrameCodec::with_max_frame_bytes(64);
    let items = check_framed_read(&wire(&[frame(1, 54), frame(2, 55)]), codec);
    assert_eq!(items.len(), 2);
    assert!(items[0].is_ok());
    assert!(matches!(items[1], Err(ProtocolError::FrameTooLarge { len: 65, max: 64 })));
}

#[test]
fn the_limit_is_clamped_to_the_protocol_range() {
    assert_eq!(FrameCodec::default().max_frame_bytes(), FRAME_BYTES_MAX);
    assert_eq!(FrameCodec::with_max_frame_bytes(u32::MAX).max_frame_bytes(), FRAME_BYTES_MAX);
    assert_eq!(FrameCodec::with_max_frame_bytes(0).max_frame_bytes(), FRAME_HEADER_BYTES);
    assert_eq!(FrameCodec::with_max_frame_bytes(4096).max_frame_bytes(), 4096);
}

#[test]
fn the_encoder_enforces_the_codec_limit() {
    let mut codec = FrameCodec::with_max_frame_bytes(64);
    let mut dst = BytesMut::new();
    codec.encode(frame(1, 54), &mut dst).expect("exactly the limit fits");
    let len_after_first = dst.len();
    assert!(matches!(codec.encode(frame(2, 55), &mut dst), Err(ProtocolError::EncodeTooLarge { len: 65, max: 64 })));
    assert_eq!(dst.len(), len_after_first);
    let decoded = codec.decode(&mut dst).expect("valid").expect("whole frame");
    assert_eq!(decoded, frame(1, 54));
}
