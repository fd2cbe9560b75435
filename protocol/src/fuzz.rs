//! Fuzz entry points, shared by the cargo-fuzz targets in `protocol/fuzz/` and by the corpus test
//! (`tests/fuzz_corpus.rs`), so stable `cargo test` replays every corpus input through the same code.
//!
//! Each function takes arbitrary bytes, must never panic on them, and asserts the round-trip invariants the
//! decoders promise: a decoded frame re-encodes to the bytes it came from, and a decoded message re-encodes
//! to one that decodes equal.
//! A panic here is a bug in the decoders (or in these invariants), never in the input.

use bytes::{Bytes, BytesMut};

use crate::batch::{BatchIter, RecordBatch, split_batches};
use crate::frame::{FRAME_LENGTH_PREFIX_BYTES, Frame};
use crate::messages::{Request, Response};

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
        let mut encoded = BytesMut::new();
        request.encode(frame.header.correlation_id, &mut encoded).expect("a decoded request re-encodes");
        let reframed = Frame::decode(&mut encoded)
            .expect("an encoded request is a valid frame")
            .expect("an encoded request is a whole frame");
        assert_eq!(reframed.header, frame.header);
        let redecoded = Request::decode(&reframed.header, reframed.body).expect("an encoded request decodes");
        assert_eq!(redecoded, request);
    }

    if let Ok(response) = Response::decode(&frame.header, frame.body.clone()) {
        let mut encoded = BytesMut::new();
        response.encode(&frame.header, &mut encoded).expect("a decoded response re-encodes");
        let reframed = Frame::decode(&mut encoded)
            .expect("an encoded response is a valid frame")
            .expect("an encoded response is a whole frame");
        let redecoded = Response::decode(&reframed.header, reframed.body).expect("an encoded response decodes");
        assert_eq!(redecoded, response);
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
        let crc = crate::batch::batch_checksum(&patched);
        patched[BATCH_CRC_AT..BATCH_CRC_END].copy_from_slice(&crc.to_be_bytes());
        check_batch(RecordBatch::decode(patched.freeze()));
    }
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
