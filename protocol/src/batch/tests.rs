use super::*;
use proptest::prelude::*;

type OwnedRecord = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(Vec<u8>, Option<Vec<u8>>)>);

/// Builds a batch from owned records; the one place the tests turn records into a batch.
fn build(records: &[OwnedRecord], producer: ProducerFields) -> RecordBatch {
    let mut builder = BatchBuilder::new().producer(producer);
    for (timestamp, key, value, headers) in records {
        let headers: Vec<(&[u8], Option<&[u8]>)> = headers.iter().map(|(k, v)| (k.as_slice(), v.as_deref())).collect();
        let record =
            NewRecord { timestamp: *timestamp, key: key.as_deref(), value: value.as_deref(), headers: &headers };
        let before = builder.len_bytes();
        let predicted = builder.encoded_len(&record);
        builder.push(record).unwrap();
        assert_eq!(builder.len_bytes() - before, predicted, "encoded_len predicts the bytes push adds");
    }
    builder.build().unwrap()
}

/// Decodes a batch and checks its records equal `records`.
fn check_round_trip(records: &[OwnedRecord], batch: &RecordBatch) {
    let decoded = RecordBatch::decode(batch.as_bytes().clone()).unwrap();
    assert_eq!(decoded.header(), batch.header());
    let read: Vec<Record> = decoded.records().collect::<Result<_, _>>().unwrap();
    assert_eq!(read.len(), records.len());
    for (idx, (record, (timestamp, key, value, headers))) in read.iter().zip(records).enumerate() {
        assert_eq!(record.offset, decoded.base_offset() + idx as u64);
        assert_eq!(record.timestamp, *timestamp);
        assert_eq!(record.key.as_deref(), key.as_deref());
        assert_eq!(record.value.as_deref(), value.as_deref());
        let read_headers: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            record.headers.iter().map(|(k, v)| (k.to_vec(), v.map(|v| v.to_vec()))).collect();
        assert_eq!(&read_headers, headers);
    }
    assert_eq!(decoded.header().max_timestamp, records.iter().map(|r| r.0).max().unwrap());
}

fn sample_records() -> Vec<OwnedRecord> {
    vec![
        (1_700_000_000_000, Some(b"k".to_vec()), Some(b"v".to_vec()), vec![(b"h".to_vec(), Some(b"x".to_vec()))]),
        (1_700_000_000_005, None, Some(vec![7u8; 300]), vec![]),
        (1_699_999_999_000, Some(vec![]), None, vec![(b"".to_vec(), None), (b"trace".to_vec(), Some(vec![]))]),
    ]
}

/// The byte layout is a wire and disk contract: this test fails if any field moves.
#[test]
fn golden_layout_of_a_one_record_batch() {
    let records =
        vec![(1_700_000_000_000, Some(b"k".to_vec()), Some(b"v".to_vec()), vec![(b"h".to_vec(), Some(b"x".to_vec()))])];
    let mut batch = build(&records, ProducerFields { producer_id: 7, producer_epoch: 2, base_sequence: 5 });
    batch.rebase(42).unwrap();
    #[rustfmt::skip]
    let mut expected: Vec<u8> = vec![
        0, 0, 0, 0, 0, 0, 0, 42,            // base_offset
        0, 0, 0, 72,                        // batch_length
        1,                                  // magic
        0, 0, 0, 0,                         // crc, filled below
        0, 0,                               // attributes
        0, 0, 0, 0,                         // last_offset_delta
        0, 0, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // first_timestamp 1_700_000_000_000
        0, 0, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // max_timestamp
        0, 0, 0, 0, 0, 0, 0, 7,             // producer_id
        0, 0, 0, 2,                         // producer_epoch
        0, 0, 0, 5,                         // base_sequence
        0, 0, 0, 1,                         // record_count
        12,                                 // record length
        0,                                  // record attributes
        0,                                  // timestamp_delta
        0,                                  // offset_delta
        2, b'k',                            // key (zigzag length 1)
        2, b'v',                            // value
        1,                                  // header_count
        1, b'h',                            // header key (plain length 1)
        2, b'x',                            // header value (zigzag length 1)
    ];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&expected[17..]), &expected[..13]);
    assert_eq!(crc, 0x4d9c_c567, "the checksum of the golden batch is pinned");
    expected[13..17].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(batch.as_bytes().as_ref(), expected.as_slice());
    check_round_trip(&records, &batch);
}

#[test]
fn round_trip_of_nulls_empties_and_negative_timestamp_deltas() {
    let records = sample_records();
    let batch = build(&records, ProducerFields::NONE);
    check_round_trip(&records, &batch);
    batch.validate_records().unwrap();
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let batch = build(&sample_records(), ProducerFields::NONE);
    let bytes = batch.as_bytes();
    for len in 0..bytes.len() {
        let prefix = bytes.slice(..len);
        assert!(
            matches!(RecordBatch::decode(prefix.clone()), Err(ProtocolError::BatchTruncated { .. })),
            "prefix of {len} bytes"
        );
        let mut split = split_batches(prefix);
        if len == 0 {
            assert!(split.next().is_none());
        } else {
            assert!(matches!(split.next(), Some(Err(ProtocolError::BatchTruncated { .. }))), "prefix of {len} bytes");
            assert!(split.next().is_none(), "the iterator ends after an error");
        }
    }
}

#[test]
fn every_single_bit_flip_is_detected() {
    let mut batch = build(&sample_records(), ProducerFields { producer_id: 1, producer_epoch: 0, base_sequence: 0 });
    batch.rebase(1234).unwrap();
    let bytes = batch.as_bytes().to_vec();
    for bit_idx in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit_idx / 8] ^= 1 << (bit_idx % 8);
        let result = RecordBatch::decode(Bytes::from(flipped));
        assert!(result.is_err(), "flip of bit {bit_idx} went undetected");
    }
}

#[test]
fn rebase_rewrites_in_place_when_unique_and_copies_when_shared() {
    let mut batch = build(&sample_records(), ProducerFields::NONE);
    let address = batch.as_bytes().as_ptr();
    batch.rebase(u64::from(u32::MAX) + 7).unwrap();
    assert_eq!(batch.as_bytes().as_ptr(), address, "a uniquely owned batch is rebased in place");
    assert_eq!(RecordBatch::decode(batch.as_bytes().clone()).unwrap().base_offset(), u64::from(u32::MAX) + 7);

    let shared = batch.as_bytes().clone();
    batch.rebase(9).unwrap();
    assert_eq!(
        RecordBatch::decode(shared).unwrap().base_offset(),
        u64::from(u32::MAX) + 7,
        "the other owner is untouched"
    );
    let rebased = RecordBatch::decode(batch.as_bytes().clone()).unwrap();
    assert_eq!(rebased.base_offset(), 9);
    assert_eq!(rebased.records().last().unwrap().unwrap().offset, 9 + 2);
}

#[test]
fn set_producer_stamps_the_header_and_keeps_the_checksum_valid() {
    let mut batch = build(&sample_records(), ProducerFields::NONE);
    assert_eq!(batch.header().last_sequence(), NO_SEQUENCE);
    let producer = ProducerFields { producer_id: 42, producer_epoch: 3, base_sequence: SEQUENCE_MAX - 1 };
    batch.set_producer(producer);
    batch.rebase(100).unwrap();
    let decoded = RecordBatch::decode(batch.as_bytes().clone()).unwrap();
    assert_eq!(decoded.header().producer(), producer);
    // Three records from SEQUENCE_MAX - 1: the last one wraps to 0.
    assert_eq!(decoded.header().last_sequence(), 0);
    check_round_trip(&sample_records(), &decoded);
}

proptest! {
    #[test]
    fn sequence_add_wraps_within_zero_to_max(sequence in 0..=SEQUENCE_MAX, n in any::<u32>()) {
        let sum = sequence_add(sequence, n);
        prop_assert!(sum >= 0);
        let expected = (i64::from(sequence) + i64::from(n)) % (i64::from(SEQUENCE_MAX) + 1);
        prop_assert_eq!(i64::from(sum), expected);
    }
}

#[test]
fn rebase_rejects_offsets_that_overflow() {
    let mut batch = build(&sample_records(), ProducerFields::NONE);
    assert!(batch.rebase(u64::MAX - 2).is_err());
    assert!(batch.rebase(u64::MAX - 3).is_ok());
}

#[test]
fn split_batches_reads_back_to_back_batches() {
    let mut first = build(&sample_records(), ProducerFields::NONE);
    first.rebase(0).unwrap();
    let mut second = build(&sample_records()[..1], ProducerFields::NONE);
    second.rebase(3).unwrap();
    let mut joined = BytesMut::new();
    joined.extend_from_slice(first.as_bytes());
    joined.extend_from_slice(second.as_bytes());
    let batches: Vec<RecordBatch> = split_batches(joined.freeze()).collect::<Result<_, _>>().unwrap();
    assert_eq!(batches, vec![first, second]);
}

/// Rewrites a header field and fixes the checksum, so the test reaches the field checks behind the checksum.
fn with_header_field(batch: &RecordBatch, at: usize, value: &[u8]) -> Bytes {
    let mut bytes = batch.as_bytes().to_vec();
    bytes[at..at + value.len()].copy_from_slice(value);
    let crc = batch_checksum(&bytes);
    bytes[CRC_AT..CRC_END].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(bytes)
}

#[test]
fn lengths_and_counts_that_overflow_are_rejected() {
    let batch = build(&sample_records(), ProducerFields::NONE);
    for len in [0u32, 1, BATCH_HEADER_BYTES as u32 - 1, BATCH_BYTES_MAX + 1, u32::MAX] {
        let bytes = with_header_field(&batch, BATCH_LENGTH_AT, &len.to_be_bytes());
        assert!(matches!(RecordBatch::decode(bytes.clone()), Err(ProtocolError::BatchLengthInvalid { .. })), "{len}");
        assert!(peek_batch_length(&bytes).is_err());
    }
    let cases: &[(usize, &[u8])] = &[
        (RECORD_COUNT_AT, &0u32.to_be_bytes()),
        (RECORD_COUNT_AT, &u32::MAX.to_be_bytes()),
        (LAST_OFFSET_DELTA_AT, &0u32.to_be_bytes()),
        (BASE_OFFSET_AT, &(u64::MAX - 1).to_be_bytes()),
        (MAX_TIMESTAMP_AT, &i64::MIN.to_be_bytes()),
        (ATTRIBUTES_AT, &0x8000u16.to_be_bytes()),
        (ATTRIBUTES_AT, &1u16.to_be_bytes()),
        (PRODUCER_EPOCH_AT, &3i32.to_be_bytes()),
        (MAGIC_AT, &[2]),
    ];
    for (at, value) in cases {
        assert!(RecordBatch::decode(with_header_field(&batch, *at, value)).is_err(), "field at {at}");
    }
    // A record count larger than the records present passes the header checks but not the record walk.
    let more = with_header_field(&batch, RECORD_COUNT_AT, &3u32.to_be_bytes());
    let more = with_header_field(&RecordBatch::decode(more).unwrap(), LAST_OFFSET_DELTA_AT, &9u32.to_be_bytes());
    assert!(RecordBatch::decode(more).unwrap().validate_records().is_err());
}

#[test]
fn varints_that_overflow_or_run_past_the_end_are_corrupt() {
    for (bytes, what) in [
        (vec![0xff; 11], "eleven continuation bytes"),
        (vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], "bit 64 set"),
        (vec![0x80], "runs past the end"),
        (vec![0x80, 0x00], "redundant trailing byte"),
    ] {
        assert!(read_uvarint(&mut Bytes::from(bytes), 0).is_err(), "{what}");
    }
    assert_eq!(
        read_uvarint(&mut Bytes::from(vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), 0).unwrap(),
        u64::MAX
    );
}

#[test]
fn builder_enforces_the_limits() {
    let mut builder = BatchBuilder::with_bytes_max(100);
    let big = vec![0u8; 100];
    let record = NewRecord { timestamp: 0, key: None, value: Some(&big), headers: &[] };
    assert!(matches!(builder.push(record), Err(ProtocolError::EncodeTooLarge { .. })));
    assert!(builder.is_empty(), "a failed push adds nothing");
    assert!(builder.build().is_err(), "an empty batch is not built");

    let empty: (&[u8], Option<&[u8]>) = (b"", None);
    let headers = vec![empty; RECORD_HEADERS_MAX as usize + 1];
    let mut builder = BatchBuilder::new();
    assert!(builder.push(NewRecord { timestamp: 0, key: None, value: None, headers: &headers }).is_err());
    assert!(builder.push(NewRecord { timestamp: 0, key: None, value: None, headers: &headers[1..] }).is_ok());
}

/// A batch whose records are malformed but whose checksum is valid: the record walk must return an error, never panic.
#[test]
fn many_empty_headers_beyond_the_limit_are_rejected_by_the_reader() {
    let mut builder = BatchBuilder::new();
    builder.push(NewRecord { timestamp: 0, key: None, value: None, headers: &[] }).unwrap();
    let batch = builder.build().unwrap();
    // Replace the record: header_count = 1_000_000 with no header bytes behind it.
    let mut bytes = batch.as_bytes()[..BATCH_HEADER_BYTES].to_vec();
    let mut body = BytesMut::new();
    body.put_u8(0);
    put_svarint(&mut body, 0);
    put_uvarint(&mut body, 0);
    put_svarint(&mut body, -1);
    put_svarint(&mut body, -1);
    put_uvarint(&mut body, 1_000_000);
    let mut record = BytesMut::new();
    put_uvarint(&mut record, body.len() as u64);
    record.extend_from_slice(&body);
    bytes.extend_from_slice(&record);
    let len = bytes.len() as u32;
    bytes[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&len.to_be_bytes());
    let crc = batch_checksum(&bytes);
    bytes[CRC_AT..CRC_END].copy_from_slice(&crc.to_be_bytes());
    let batch = RecordBatch::decode(Bytes::from(bytes)).unwrap();
    assert!(matches!(batch.validate_records(), Err(ProtocolError::CorruptRecord { record_idx: 0, .. })));
}

fn owned_record() -> impl Strategy<Value = OwnedRecord> {
    let bytes = || proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40));
    (
        -1_000_000i64..1_000_000,
        bytes(),
        bytes(),
        proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..8), bytes()), 0..4),
    )
        .prop_map(|(delta, key, value, headers)| (1_700_000_000_000 + delta, key, value, headers))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn decode_of_built_batch_returns_the_records(
        records in proptest::collection::vec(owned_record(), 1..20),
        base_offset in 0u64..u64::MAX / 2,
    ) {
        let mut batch = build(&records, ProducerFields { producer_id: 3, producer_epoch: 1, base_sequence: 77 });
        batch.rebase(base_offset).unwrap();
        check_round_trip(&records, &batch);
    }

    /// Arbitrary bytes behind a valid header and checksum: the record walk returns records or an error, never panics.
    #[test]
    fn record_walk_of_arbitrary_bytes_never_panics(
        body in proptest::collection::vec(any::<u8>(), 0..200),
        record_count in 1u32..5,
    ) {
        let batch = build(&sample_records(), ProducerFields::NONE);
        let mut bytes = batch.as_bytes()[..BATCH_HEADER_BYTES].to_vec();
        bytes.extend_from_slice(&body);
        let len = bytes.len() as u32;
        bytes[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&len.to_be_bytes());
        bytes[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&record_count.to_be_bytes());
        let crc = batch_checksum(&bytes);
        bytes[CRC_AT..CRC_END].copy_from_slice(&crc.to_be_bytes());
        if let Ok(batch) = RecordBatch::decode(Bytes::from(bytes)) {
            let results: Vec<_> = batch.records().collect();
            prop_assert!(results.len() <= record_count as usize + 1);
        }
    }
}
