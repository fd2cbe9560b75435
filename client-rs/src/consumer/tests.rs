use super::*;
use bytes::BytesMut;
use ferry_protocol::{BatchBuilder, NewRecord};

fn batch(base_offset: u64, values: &[&str]) -> Bytes {
    let mut builder = BatchBuilder::new();
    for value in values {
        builder
            .push(NewRecord { timestamp: 1000, value: Some(value.as_bytes()), ..NewRecord::default() })
            .expect("fits");
    }
    let mut batch = builder.build().expect("non-empty");
    batch.rebase(base_offset).expect("small offsets");
    batch.into_bytes()
}

fn response(records: Bytes, error_code: u32) -> FetchPartitionResponse {
    FetchPartitionResponse { partition: 0, error_code, records, ..FetchPartitionResponse::default() }
}

fn state_at(offset: u64) -> PartitionState {
    let mut state = PartitionState::new(Arc::from("t"), OffsetReset::Error);
    state.seek(SeekTo::Offset(offset));
    state
}

fn check(
    state: &mut PartitionState,
    fetch_offset: u64,
    response: FetchPartitionResponse,
) -> Result<Vec<u64>, ClientError> {
    apply_partition(state, 0, fetch_offset, response, OffsetReset::Error)?;
    Ok(state.buffered.iter().map(|record| record.offset).collect())
}

#[test]
fn records_before_the_fetch_offset_are_skipped_and_the_position_advances() {
    let mut records = BytesMut::new();
    records.extend_from_slice(&batch(10, &["a", "b", "c"]));
    records.extend_from_slice(&batch(13, &["d"]));
    let mut state = state_at(11);
    let offsets = check(&mut state, 11, response(records.freeze(), 0)).expect("valid batches");
    assert_eq!(offsets, vec![11, 12, 13]);
    assert_eq!(state.fetch_offset, Some(14));
    assert_eq!(state.position(), Some(11));
}

#[test]
fn a_corrupt_batch_fails_and_keeps_the_position_before_it() {
    let mut records = BytesMut::new();
    records.extend_from_slice(&batch(0, &["a"]));
    let mut second = BytesMut::from(&batch(1, &["b"])[..]);
    let last = second.len() - 1;
    second[last] ^= 0x01;
    records.extend_from_slice(&second);
    let records = records.freeze();
    let mut state = state_at(0);
    let offsets = check(&mut state, 0, response(records.clone(), 0)).expect("the good batch first");
    assert_eq!(offsets, vec![0], "records before the bad batch are returned");
    assert_eq!(state.fetch_offset, Some(1), "the position stops at the bad batch");
    // The next fetch starts at the bad batch: now it is an error, every time.
    for _ in 0..2 {
        let mut state = state_at(1);
        match check(&mut state, 1, response(records.slice(records.len() - second.len()..), 0)) {
            Err(ClientError::CorruptBatch { offset: 1, source, .. }) => {
                assert!(matches!(*source, ferry_protocol::ProtocolError::ChecksumMismatch { .. }), "{source:?}");
            }
            other => panic!("expected a corrupt batch error, got {other:?}"),
        }
        assert!(state.buffered.is_empty());
        assert_eq!(state.fetch_offset, Some(1));
    }
}

#[test]
fn out_of_range_resets_per_policy() {
    let out_of_range = || response(Bytes::new(), u32::from(ErrorCode::OffsetOutOfRange.as_u16()));
    let mut state = state_at(50);
    apply_partition(&mut state, 0, 50, out_of_range(), OffsetReset::Earliest).expect("reset");
    assert_eq!(state.pending_seek, Some(SeekTo::Earliest));
    let mut state = state_at(50);
    apply_partition(&mut state, 0, 50, out_of_range(), OffsetReset::Latest).expect("reset");
    assert_eq!(state.pending_seek, Some(SeekTo::Latest));
    let mut state = state_at(50);
    let error = apply_partition(&mut state, 0, 50, out_of_range(), OffsetReset::Error).expect_err("error policy");
    assert!(matches!(error, ClientError::OffsetOutOfRange { offset: 50, partition: 0, .. }), "{error:?}");
}

#[test]
fn a_seek_drops_buffered_records_and_invalidates_fetches_in_flight() {
    let mut state = state_at(0);
    check(&mut state, 0, response(batch(0, &["a", "b"]), 0)).expect("valid");
    let epoch = state.epoch;
    state.seek(SeekTo::Latest);
    assert!(state.buffered.is_empty());
    assert_ne!(state.epoch, epoch);
    assert_eq!(state.position(), None, "a latest lookup is pending");
}
