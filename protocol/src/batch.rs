//! The record batch: the unit a producer sends, the log stores and a consumer receives.
//!
//! One format serves the wire and the disk, so a batch travels as bytes from producer to segment file to consumer.
//! The broker never re-encodes records: on append it assigns the base offset, which rewrites the header and
//! recomputes the checksum ([`RecordBatch::rebase`]), and on fetch it returns the stored bytes.
//! The one exception is message-id dedup: when a batch of a dedup-enabled topic holds records whose
//! [`DEDUP_KEY_HEADER`] was seen within the topic's window, the broker rebuilds the batch from the records it keeps.
//!
//! # Layout (version 1; all integers big-endian)
//!
//! ```text
//! offset size field
//!      0    8 base_offset        u64  offset of the first record; assigned by the broker on append
//!      8    4 batch_length       u32  bytes in the whole batch, this header included
//!     12    1 magic              u8   format version, 1
//!     13    4 crc                u32  CRC-32C of bytes 17..batch_length, continued over bytes 0..13
//!     17    2 attributes         u16  bits 0-2 compression (0 = none, the only one so far),
//!                                     bit 3 timestamp type (0 = create time, 1 = log-append time),
//!                                     bit 4 transactional, bit 5 control; other bits are zero
//!     19    4 last_offset_delta  u32  offset of the last record minus base_offset
//!     23    8 first_timestamp    i64  timestamp of the first record, ms since the Unix epoch
//!     31    8 max_timestamp      i64  largest record timestamp in the batch, ms since the Unix epoch
//!     39    8 producer_id        i64  -1 when the producer is not idempotent
//!     47    4 producer_epoch     i32  -1 when the producer is not idempotent
//!     51    4 base_sequence      i32  sequence number of the first record, -1 when not idempotent
//!     55    4 record_count       u32  1..=BATCH_RECORDS_MAX
//!     59      records            record_count records, back to back
//! ```
//!
//! Unlike Kafka's, the checksum covers the base offset and the length too, so a flipped bit anywhere in a stored batch is detected.
//! It covers every byte except its own four, in this order: the bytes after the checksum field, then the bytes before it
//! ([`batch_checksum`]). Putting the base offset last lets the broker assign offsets at O(header) cost.
//!
//! Each record (`uvarint` is unsigned LEB128; `svarint` is zigzag-encoded LEB128):
//!
//! ```text
//! length           uvarint  bytes of the record after this field
//! attributes       u8       reserved, 0
//! timestamp_delta  svarint  record timestamp minus first_timestamp
//! offset_delta     uvarint  record offset minus base_offset; strictly increasing within the batch
//! key_length       svarint  -1 for a null key
//! key              bytes
//! value_length     svarint  -1 for a null value
//! value            bytes
//! header_count     uvarint  0..=RECORD_HEADERS_MAX
//! headers          header_count times: key_length uvarint, key bytes (at most RECORD_HEADER_KEY_BYTES_MAX),
//!                  value_length svarint (-1 for null), value bytes
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::limits::{BATCH_BYTES_MAX, BATCH_RECORDS_MAX, RECORD_HEADER_KEY_BYTES_MAX, RECORD_HEADERS_MAX};

/// The batch format version this build writes and reads.
pub const BATCH_MAGIC: u8 = 1;
/// Size of the fixed batch header.
pub const BATCH_HEADER_BYTES: usize = 59;
/// Bytes of a batch needed to learn its length (base offset and length fields).
pub const BATCH_LENGTH_PREFIX_BYTES: usize = 12;
/// `producer_id` of a batch from a producer that is not idempotent.
pub const NO_PRODUCER_ID: i64 = -1;
/// `producer_epoch` of a batch from a producer that is not idempotent.
pub const NO_PRODUCER_EPOCH: i32 = -1;
/// `base_sequence` of a batch from a producer that is not idempotent.
pub const NO_SEQUENCE: i32 = -1;
/// Name of the record header that carries a record's dedup key (message-id dedup): on a topic with
/// `dedup.window.ms` > 0, a record whose key was already appended to the partition within the window is dropped
/// and reported with the original's offset. Records without it are never deduplicated.
pub const DEDUP_KEY_HEADER: &str = "ferry.dedup.key";
/// Longest dedup key, in bytes; an empty or longer key makes the batch invalid on a dedup-enabled topic.
pub const DEDUP_KEY_BYTES_MAX: usize = 256;
/// The largest sequence number: the record after it has sequence 0.
pub const SEQUENCE_MAX: i32 = i32::MAX;

/// The sequence `n` records after `sequence`, wrapping from [`SEQUENCE_MAX`] back to 0.
///
/// Sequences count records per (producer id, partition) from 0; `sequence` must be 0 or more.
///
/// ```
/// use ferry_protocol::batch::{SEQUENCE_MAX, sequence_add};
/// assert_eq!(sequence_add(5, 3), 8);
/// assert_eq!(sequence_add(SEQUENCE_MAX, 1), 0);
/// assert_eq!(sequence_add(SEQUENCE_MAX - 1, 4), 2);
/// ```
pub fn sequence_add(sequence: i32, n: u32) -> i32 {
    let modulus = i64::from(SEQUENCE_MAX) + 1;
    let sum = (i64::from(sequence) + i64::from(n)).rem_euclid(modulus);
    // The remainder is in 0..=SEQUENCE_MAX.
    i32::try_from(sum).unwrap_or(0)
}

const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const MAGIC_AT: usize = 12;
const CRC_AT: usize = 13;
const ATTRIBUTES_AT: usize = 17;
const LAST_OFFSET_DELTA_AT: usize = 19;
const FIRST_TIMESTAMP_AT: usize = 23;
const MAX_TIMESTAMP_AT: usize = 31;
const PRODUCER_ID_AT: usize = 39;
const PRODUCER_EPOCH_AT: usize = 47;
const BASE_SEQUENCE_AT: usize = 51;
const RECORD_COUNT_AT: usize = 55;
const CRC_END: usize = CRC_AT + 4;
// Each field starts where the previous one ends.
const _: () = assert!(BATCH_LENGTH_AT == BASE_OFFSET_AT + 8);
const _: () = assert!(MAGIC_AT == BATCH_LENGTH_AT + 4);
const _: () = assert!(CRC_AT == MAGIC_AT + 1);
const _: () = assert!(ATTRIBUTES_AT == CRC_AT + 4);
const _: () = assert!(LAST_OFFSET_DELTA_AT == ATTRIBUTES_AT + 2);
const _: () = assert!(FIRST_TIMESTAMP_AT == LAST_OFFSET_DELTA_AT + 4);
const _: () = assert!(MAX_TIMESTAMP_AT == FIRST_TIMESTAMP_AT + 8);
const _: () = assert!(PRODUCER_ID_AT == MAX_TIMESTAMP_AT + 8);
const _: () = assert!(PRODUCER_EPOCH_AT == PRODUCER_ID_AT + 8);
const _: () = assert!(BASE_SEQUENCE_AT == PRODUCER_EPOCH_AT + 4);
const _: () = assert!(RECORD_COUNT_AT == BASE_SEQUENCE_AT + 4);
const _: () = assert!(RECORD_COUNT_AT + 4 == BATCH_HEADER_BYTES);
const _: () = assert!(BATCH_LENGTH_PREFIX_BYTES == MAGIC_AT);
const _: () = assert!(BATCH_HEADER_BYTES as u32 <= BATCH_BYTES_MAX);

/// Flags in a batch header's `attributes` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Attributes(u16);

impl Attributes {
    const COMPRESSION_MASK: u16 = 0b111;
    const LOG_APPEND_TIME: u16 = 1 << 3;
    const TRANSACTIONAL: u16 = 1 << 4;
    const CONTROL: u16 = 1 << 5;
    const DEFINED: u16 = Self::COMPRESSION_MASK | Self::LOG_APPEND_TIME | Self::TRANSACTIONAL | Self::CONTROL;

    /// The raw bits.
    pub fn bits(self) -> u16 {
        self.0
    }
    /// Whether timestamps were set by the broker at append rather than by the producer.
    pub fn log_append_time(self) -> bool {
        self.0 & Self::LOG_APPEND_TIME != 0
    }
    /// Whether the batch was written inside a transaction.
    pub fn transactional(self) -> bool {
        self.0 & Self::TRANSACTIONAL != 0
    }
    /// Whether the batch carries control records rather than user data.
    pub fn control(self) -> bool {
        self.0 & Self::CONTROL != 0
    }
    /// Returns these attributes with the transactional flag set or cleared.
    pub fn with_transactional(self, on: bool) -> Self {
        Self::set(self, Self::TRANSACTIONAL, on)
    }
    /// Returns these attributes with the control flag set or cleared.
    pub fn with_control(self, on: bool) -> Self {
        Self::set(self, Self::CONTROL, on)
    }
    fn set(self, bit: u16, on: bool) -> Self {
        if on { Self(self.0 | bit) } else { Self(self.0 & !bit) }
    }
    fn validate(bits: u16) -> Result<Self, ProtocolError> {
        if bits & !Self::DEFINED != 0 {
            return Err(ProtocolError::InvalidBatchHeader { reason: "reserved attribute bits are set" });
        }
        if bits & Self::COMPRESSION_MASK != 0 {
            return Err(ProtocolError::InvalidBatchHeader { reason: "unsupported compression codec" });
        }
        Ok(Self(bits))
    }
}

/// The decoded fixed header of a record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Bytes in the whole batch, header included.
    pub batch_length: u32,
    /// Format version.
    pub magic: u8,
    /// The stored CRC-32C.
    pub crc: u32,
    /// Flags.
    pub attributes: Attributes,
    /// Offset of the last record minus `base_offset`.
    pub last_offset_delta: u32,
    /// Timestamp of the first record, ms since the Unix epoch.
    pub first_timestamp: i64,
    /// Largest record timestamp, ms since the Unix epoch.
    pub max_timestamp: i64,
    /// Producer id, or [`NO_PRODUCER_ID`].
    pub producer_id: i64,
    /// Producer epoch, or [`NO_PRODUCER_EPOCH`].
    pub producer_epoch: i32,
    /// Sequence number of the first record, or [`NO_SEQUENCE`].
    pub base_sequence: i32,
    /// Number of records.
    pub record_count: u32,
}

impl BatchHeader {
    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> u64 {
        // Cannot overflow: `validate` rejects headers where it would.
        self.base_offset + u64::from(self.last_offset_delta)
    }

    /// Offset right after the batch: where the next batch starts.
    pub fn next_offset(&self) -> u64 {
        self.last_offset() + 1
    }

    /// The producer fields: producer id, epoch and base sequence.
    pub fn producer(&self) -> ProducerFields {
        ProducerFields {
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
        }
    }

    /// Sequence number of the last record ([`sequence_add`] of the base sequence and the record count less one),
    /// or [`NO_SEQUENCE`] for a batch without a producer.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return NO_SEQUENCE;
        }
        sequence_add(self.base_sequence, self.record_count.saturating_sub(1))
    }

    /// Reads the fixed header without checking the checksum.
    ///
    /// `buf` must hold at least [`BATCH_HEADER_BYTES`] bytes; fields are checked for internal consistency
    /// (length range, magic, reserved bits, counts) but not against the records.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, ProtocolError> {
        let Some(mut h) = buf.get(..BATCH_HEADER_BYTES) else {
            return Err(ProtocolError::BatchTruncated {
                needed: BATCH_HEADER_BYTES as u64,
                available: buf.len() as u64,
            });
        };
        let header = BatchHeader {
            base_offset: h.get_u64(),
            batch_length: h.get_u32(),
            magic: h.get_u8(),
            crc: h.get_u32(),
            attributes: Attributes(h.get_u16()),
            last_offset_delta: h.get_u32(),
            first_timestamp: h.get_i64(),
            max_timestamp: h.get_i64(),
            producer_id: h.get_i64(),
            producer_epoch: h.get_i32(),
            base_sequence: h.get_i32(),
            record_count: h.get_u32(),
        };
        header.validate()?;
        Ok(header)
    }

    fn validate(&self) -> Result<(), ProtocolError> {
        check_length(self.batch_length)?;
        if self.magic != BATCH_MAGIC {
            return Err(ProtocolError::UnsupportedMagic { magic: self.magic });
        }
        Attributes::validate(self.attributes.0)?;
        let invalid = |reason| Err(ProtocolError::InvalidBatchHeader { reason });
        if self.record_count == 0 || self.record_count > BATCH_RECORDS_MAX {
            return invalid("record count outside 1..=BATCH_RECORDS_MAX");
        }
        if u64::from(self.last_offset_delta) + 1 < u64::from(self.record_count) {
            return invalid("last offset delta smaller than the record count allows");
        }
        if self.base_offset.checked_add(u64::from(self.last_offset_delta)).and_then(|o| o.checked_add(1)).is_none() {
            return invalid("last offset overflows");
        }
        if self.max_timestamp < self.first_timestamp {
            return invalid("max timestamp below first timestamp");
        }
        let idempotent = self.producer_id != NO_PRODUCER_ID;
        if idempotent && (self.producer_id < 0 || self.producer_epoch < 0 || self.base_sequence < 0) {
            return invalid("negative producer id, epoch or sequence");
        }
        if !idempotent && (self.producer_epoch != NO_PRODUCER_EPOCH || self.base_sequence != NO_SEQUENCE) {
            return invalid("producer epoch or sequence without a producer id");
        }
        Ok(())
    }

    fn write(&self, out: &mut [u8; BATCH_HEADER_BYTES]) {
        let mut w = &mut out[..];
        w.put_u64(self.base_offset);
        w.put_u32(self.batch_length);
        w.put_u8(self.magic);
        w.put_u32(self.crc);
        w.put_u16(self.attributes.0);
        w.put_u32(self.last_offset_delta);
        w.put_i64(self.first_timestamp);
        w.put_i64(self.max_timestamp);
        w.put_i64(self.producer_id);
        w.put_i32(self.producer_epoch);
        w.put_i32(self.base_sequence);
        w.put_u32(self.record_count);
        debug_assert!(w.is_empty());
    }
}

fn check_length(len: u32) -> Result<(), ProtocolError> {
    if (len as usize) < BATCH_HEADER_BYTES || len > BATCH_BYTES_MAX {
        return Err(ProtocolError::BatchLengthInvalid { len, min: BATCH_HEADER_BYTES as u32, max: BATCH_BYTES_MAX });
    }
    Ok(())
}

/// Reads the total length of the batch that starts at `buf[0]`.
///
/// Returns `Ok(None)` while fewer than [`BATCH_LENGTH_PREFIX_BYTES`] bytes are present,
/// and an error when the announced length is outside the valid range.
/// This is how a reader splits a stream of batches without trusting anything else in the header.
pub fn peek_batch_length(buf: &[u8]) -> Result<Option<u32>, ProtocolError> {
    let Some(prefix) = buf.get(BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    check_length(len)?;
    Ok(Some(len))
}

/// The checksum of a whole batch (at least [`BATCH_HEADER_BYTES`] long): CRC-32C over the bytes after the checksum
/// field, continued over the bytes before it.
///
/// The fields the broker rewrites on append (the base offset) come last, so [`RecordBatch::rebase`] extends the
/// cached CRC of the unchanged bytes by 13 bytes instead of rereading the batch.
pub fn batch_checksum(batch: &[u8]) -> u32 {
    with_head(crc32c::crc32c(&batch[CRC_END..]), batch)
}

/// Continues `crc_tail` (the CRC-32C of the bytes after the checksum field) over the bytes before the checksum field.
fn with_head(crc_tail: u32, batch: &[u8]) -> u32 {
    crc32c::crc32c_append(crc_tail, &batch[..CRC_AT])
}

/// A validated record batch over shared bytes: the header is decoded, the checksum verified.
///
/// Reading records does not copy: keys, values and headers are slices of the batch's buffer.
#[derive(Debug, Clone)]
pub struct RecordBatch {
    bytes: Bytes,
    header: BatchHeader,
    /// CRC-32C of the bytes after the checksum field: kept so a rebase costs O(header), not O(batch).
    crc_tail: u32,
}

impl PartialEq for RecordBatch {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for RecordBatch {}

impl RecordBatch {
    /// Decodes exactly one batch: `bytes` must be the whole batch and nothing more.
    ///
    /// Checks the length, magic, checksum and header fields. The records themselves are checked lazily by
    /// [`RecordBatch::records`], or eagerly by [`RecordBatch::validate_records`].
    pub fn decode(bytes: Bytes) -> Result<RecordBatch, ProtocolError> {
        let available = bytes.len() as u64;
        let Some(len) = peek_batch_length(&bytes)? else {
            return Err(ProtocolError::BatchTruncated { needed: BATCH_HEADER_BYTES as u64, available });
        };
        if available < u64::from(len) {
            return Err(ProtocolError::BatchTruncated { needed: u64::from(len), available });
        }
        if available > u64::from(len) {
            return Err(ProtocolError::InvalidBatchHeader { reason: "bytes after the end of the batch" });
        }
        if bytes[MAGIC_AT] != BATCH_MAGIC {
            return Err(ProtocolError::UnsupportedMagic { magic: bytes[MAGIC_AT] });
        }
        let stored = u32::from_be_bytes([bytes[CRC_AT], bytes[CRC_AT + 1], bytes[CRC_AT + 2], bytes[CRC_AT + 3]]);
        let crc_tail = crc32c::crc32c(&bytes[CRC_END..]);
        let computed = with_head(crc_tail, &bytes);
        if stored != computed {
            return Err(ProtocolError::ChecksumMismatch { stored, computed });
        }
        let header = BatchHeader::parse(&bytes)?;
        Ok(RecordBatch { bytes, header, crc_tail })
    }

    /// The decoded header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch exactly as stored and sent.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Consumes the batch, returning its bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Bytes in the batch, header included.
    pub fn len_bytes(&self) -> u32 {
        self.header.batch_length
    }

    /// Offset of the first record.
    pub fn base_offset(&self) -> u64 {
        self.header.base_offset
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> u64 {
        self.header.last_offset()
    }

    /// Number of records.
    pub fn record_count(&self) -> u32 {
        self.header.record_count
    }

    /// Assigns a new base offset: rewrites the header and recomputes the checksum.
    ///
    /// This is the one change the broker makes to a batch on append. The rewrite happens in place when this batch
    /// owns its buffer; when the buffer is shared (for example with other batches of the same request) the batch
    /// is copied once. Either way the checksum costs O(header): the CRC of the unchanged tail is reused.
    pub fn rebase(&mut self, base_offset: u64) -> Result<(), ProtocolError> {
        if base_offset.checked_add(u64::from(self.header.last_offset_delta)).and_then(|o| o.checked_add(1)).is_none() {
            return Err(ProtocolError::InvalidBatchHeader { reason: "last offset overflows" });
        }
        let bytes = std::mem::take(&mut self.bytes);
        let mut buf = bytes.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        buf[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
        let crc = with_head(self.crc_tail, &buf);
        buf[CRC_AT..CRC_END].copy_from_slice(&crc.to_be_bytes());
        self.header.base_offset = base_offset;
        self.header.crc = crc;
        self.bytes = buf.freeze();
        Ok(())
    }

    /// Stamps the batch with a producer's id, epoch and base sequence: rewrites the header and recomputes the checksum.
    ///
    /// An idempotent producer calls this when it first sends a batch (the sequence is only known then). The producer
    /// fields are covered by the checksum's tail, so this costs one pass over the batch; like [`RecordBatch::rebase`],
    /// it rewrites in place when the batch owns its buffer and copies once otherwise.
    pub fn set_producer(&mut self, producer: ProducerFields) {
        let bytes = std::mem::take(&mut self.bytes);
        let mut buf = bytes.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        buf[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer.producer_id.to_be_bytes());
        buf[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 4].copy_from_slice(&producer.producer_epoch.to_be_bytes());
        buf[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&producer.base_sequence.to_be_bytes());
        self.crc_tail = crc32c::crc32c(&buf[CRC_END..]);
        let crc = with_head(self.crc_tail, &buf);
        buf[CRC_AT..CRC_END].copy_from_slice(&crc.to_be_bytes());
        self.header.producer_id = producer.producer_id;
        self.header.producer_epoch = producer.producer_epoch;
        self.header.base_sequence = producer.base_sequence;
        self.header.crc = crc;
        self.bytes = buf.freeze();
    }

    /// Iterates the records, checking their structure as it goes.
    ///
    /// The iterator yields an error, then ends, at the first malformed record, and yields one if the batch
    /// holds fewer or more records than its header says.
    pub fn records(&self) -> Records<'_> {
        Records {
            batch: self,
            rest: self.bytes.slice(BATCH_HEADER_BYTES..),
            record_idx: 0,
            previous_offset_delta: None,
            failed: false,
        }
    }

    /// Checks every record, its headers and the record count against the header.
    ///
    /// The broker calls this on produce, so everything it stores can be read back by [`RecordBatch::records`].
    pub fn validate_records(&self) -> Result<(), ProtocolError> {
        for record in self.records() {
            record?;
        }
        Ok(())
    }
}

/// Splits a buffer of batches stored back to back (a produce payload, a fetch response, a segment file region).
///
/// Yields each batch, decoded and checksum-verified; ends after the last complete batch or after the first error.
/// A partial batch at the end yields [`ProtocolError::BatchTruncated`].
pub fn split_batches(bytes: Bytes) -> BatchIter {
    BatchIter { rest: bytes, failed: false }
}

/// Iterator returned by [`split_batches`].
#[derive(Debug)]
pub struct BatchIter {
    rest: Bytes,
    failed: bool,
}

impl Iterator for BatchIter {
    type Item = Result<RecordBatch, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let result = match peek_batch_length(&self.rest) {
            Ok(Some(len)) if self.rest.len() >= len as usize => RecordBatch::decode(self.rest.split_to(len as usize)),
            Ok(Some(len)) => {
                Err(ProtocolError::BatchTruncated { needed: u64::from(len), available: self.rest.len() as u64 })
            }
            Ok(None) => Err(ProtocolError::BatchTruncated {
                needed: BATCH_HEADER_BYTES as u64,
                available: self.rest.len() as u64,
            }),
            Err(error) => Err(error),
        };
        self.failed = result.is_err();
        Some(result)
    }
}

/// One record of a batch. Key, value and headers are slices of the batch's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's offset: the batch's base offset plus the record's offset delta.
    pub offset: u64,
    /// The record's timestamp, ms since the Unix epoch.
    pub timestamp: i64,
    /// The key, `None` when null.
    pub key: Option<Bytes>,
    /// The value, `None` when null.
    pub value: Option<Bytes>,
    /// The record headers.
    pub headers: RecordHeaders,
}

/// The headers of one record, decoded lazily from the batch's buffer (already checked when the record was read).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordHeaders {
    bytes: Bytes,
    count: u32,
}

impl RecordHeaders {
    /// The value of the first header named `name`, if any (a null value counts as empty).
    pub fn get(&self, name: &[u8]) -> Option<Bytes> {
        self.iter().find(|(key, _)| key.as_ref() == name).map(|(_, value)| value.unwrap_or_default())
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.count as usize
    }
    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Iterates `(key, value)` pairs in order; a null value is `None`.
    pub fn iter(&self) -> impl Iterator<Item = (Bytes, Option<Bytes>)> + '_ {
        let mut rest = self.bytes.clone();
        (0..self.count).map_while(move |_| read_header(&mut rest, 0).ok())
    }
}

/// Iterator returned by [`RecordBatch::records`].
#[derive(Debug)]
pub struct Records<'a> {
    batch: &'a RecordBatch,
    rest: Bytes,
    record_idx: u32,
    previous_offset_delta: Option<u32>,
    failed: bool,
}

impl Iterator for Records<'_> {
    type Item = Result<Record, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let header = &self.batch.header;
        if self.record_idx == header.record_count {
            if !self.rest.is_empty() {
                self.failed = true;
                return Some(Err(corrupt(self.record_idx, "bytes after the last record")));
            }
            if self.previous_offset_delta != Some(header.last_offset_delta) {
                self.failed = true;
                return Some(Err(corrupt(self.record_idx, "last record's offset delta differs from the header")));
            }
            return None;
        }
        let result = self.read_record();
        self.failed = result.is_err();
        self.record_idx += 1;
        Some(result)
    }
}

impl Records<'_> {
    fn read_record(&mut self) -> Result<Record, ProtocolError> {
        let idx = self.record_idx;
        let header = &self.batch.header;
        let len = read_uvarint(&mut self.rest, idx)?;
        let len = usize::try_from(len).map_err(|_| corrupt(idx, "record length overflows"))?;
        if len > self.rest.len() {
            return Err(corrupt(idx, "record length exceeds the batch"));
        }
        let mut body = self.rest.split_to(len);
        if body.is_empty() {
            return Err(corrupt(idx, "empty record"));
        }
        if body.get_u8() != 0 {
            return Err(corrupt(idx, "reserved record attributes are set"));
        }
        let timestamp_delta = read_svarint(&mut body, idx)?;
        let offset_delta = read_uvarint(&mut body, idx)?;
        let offset_delta = u32::try_from(offset_delta).map_err(|_| corrupt(idx, "offset delta overflows"))?;
        if self.previous_offset_delta.is_some_and(|previous| offset_delta <= previous) {
            return Err(corrupt(idx, "offset deltas do not increase"));
        }
        if offset_delta > header.last_offset_delta {
            return Err(corrupt(idx, "offset delta beyond the header's last offset delta"));
        }
        self.previous_offset_delta = Some(offset_delta);
        let timestamp =
            header.first_timestamp.checked_add(timestamp_delta).ok_or_else(|| corrupt(idx, "timestamp overflows"))?;
        if timestamp > header.max_timestamp {
            return Err(corrupt(idx, "timestamp above the batch's max timestamp"));
        }
        let key = read_nullable(&mut body, idx)?;
        let value = read_nullable(&mut body, idx)?;
        let header_count = read_uvarint(&mut body, idx)?;
        if header_count > u64::from(RECORD_HEADERS_MAX) {
            return Err(corrupt(idx, "more headers than RECORD_HEADERS_MAX"));
        }
        let header_count = header_count as u32; // Checked against a u32 limit just above.
        let headers_bytes = body.clone();
        for _ in 0..header_count {
            read_header(&mut body, idx)?;
        }
        if !body.is_empty() {
            return Err(corrupt(idx, "bytes after the record's last field"));
        }
        Ok(Record {
            offset: header.base_offset + u64::from(offset_delta),
            timestamp,
            key,
            value,
            headers: RecordHeaders { bytes: headers_bytes, count: header_count },
        })
    }
}

fn corrupt(record_idx: u32, reason: &'static str) -> ProtocolError {
    ProtocolError::CorruptRecord { record_idx, reason }
}

fn read_header(buf: &mut Bytes, idx: u32) -> Result<(Bytes, Option<Bytes>), ProtocolError> {
    let key_len = read_uvarint(buf, idx)?;
    if key_len > u64::from(RECORD_HEADER_KEY_BYTES_MAX) {
        return Err(corrupt(idx, "header key longer than RECORD_HEADER_KEY_BYTES_MAX"));
    }
    let key = take(buf, key_len as usize, idx)?; // Checked against a u32 limit just above.
    let value = read_nullable(buf, idx)?;
    Ok((key, value))
}

fn take(buf: &mut Bytes, len: usize, idx: u32) -> Result<Bytes, ProtocolError> {
    if len > buf.len() {
        return Err(corrupt(idx, "field length exceeds the record"));
    }
    Ok(buf.split_to(len))
}

fn read_nullable(buf: &mut Bytes, idx: u32) -> Result<Option<Bytes>, ProtocolError> {
    match read_svarint(buf, idx)? {
        -1 => Ok(None),
        len if len < 0 => Err(corrupt(idx, "negative field length")),
        len => {
            let len = usize::try_from(len).map_err(|_| corrupt(idx, "field length overflows"))?;
            take(buf, len, idx).map(Some)
        }
    }
}

/// Largest encoding of a u64 as LEB128.
const VARINT_BYTES_MAX: usize = 10;

fn read_uvarint(buf: &mut Bytes, idx: u32) -> Result<u64, ProtocolError> {
    let mut value: u64 = 0;
    for byte_idx in 0..VARINT_BYTES_MAX {
        if buf.is_empty() {
            return Err(corrupt(idx, "varint runs past the end"));
        }
        let byte = buf.get_u8();
        let bits = u64::from(byte & 0x7f);
        if byte_idx == VARINT_BYTES_MAX - 1 && byte > 1 {
            return Err(corrupt(idx, "varint overflows 64 bits"));
        }
        value |= bits << (7 * byte_idx);
        if byte & 0x80 == 0 {
            if byte == 0 && byte_idx > 0 {
                return Err(corrupt(idx, "varint has a redundant trailing byte"));
            }
            return Ok(value);
        }
    }
    Err(corrupt(idx, "varint overflows 64 bits"))
}

fn read_svarint(buf: &mut Bytes, idx: u32) -> Result<i64, ProtocolError> {
    let raw = read_uvarint(buf, idx)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

fn put_uvarint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn put_svarint(buf: &mut BytesMut, value: i64) {
    put_uvarint(buf, ((value << 1) ^ (value >> 63)) as u64);
}

fn uvarint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn svarint_len(value: i64) -> usize {
    uvarint_len(((value << 1) ^ (value >> 63)) as u64)
}

fn nullable_len(field: Option<&[u8]>) -> usize {
    match field {
        None => 1,
        Some(bytes) => svarint_len(bytes.len() as i64) + bytes.len(),
    }
}

fn put_nullable(buf: &mut BytesMut, field: Option<&[u8]>) {
    match field {
        None => put_svarint(buf, -1),
        Some(bytes) => {
            put_svarint(buf, bytes.len() as i64);
            buf.put_slice(bytes);
        }
    }
}

/// A record to add to a [`BatchBuilder`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NewRecord<'a> {
    /// Timestamp, ms since the Unix epoch.
    pub timestamp: i64,
    /// The key, `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// The value, `None` for a null value (a tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers as `(key, value)`; a `None` value is null.
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
}

/// Producer fields of a batch header: who wrote the batch and where it sits in that producer's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerFields {
    /// Producer id, or [`NO_PRODUCER_ID`].
    pub producer_id: i64,
    /// Producer epoch, or [`NO_PRODUCER_EPOCH`].
    pub producer_epoch: i32,
    /// Sequence number of the batch's first record, or [`NO_SEQUENCE`].
    pub base_sequence: i32,
}

impl ProducerFields {
    /// The fields of a batch from a producer that is not idempotent.
    pub const NONE: ProducerFields =
        ProducerFields { producer_id: NO_PRODUCER_ID, producer_epoch: NO_PRODUCER_EPOCH, base_sequence: NO_SEQUENCE };
}

/// Builds a record batch, encoding records straight into the final buffer.
///
/// The base offset is 0 until the broker assigns one on append.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    record_count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    producer: ProducerFields,
    attributes: Attributes,
    bytes_max: u32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    /// A builder for a batch of at most [`BATCH_BYTES_MAX`] bytes.
    pub fn new() -> Self {
        Self::with_bytes_max(BATCH_BYTES_MAX)
    }

    /// A builder for a batch of at most `bytes_max` bytes (clamped to [`BATCH_BYTES_MAX`]),
    /// for example the limit a broker announced.
    pub fn with_bytes_max(bytes_max: u32) -> Self {
        let mut buf = BytesMut::with_capacity(BATCH_HEADER_BYTES + 256);
        buf.put_bytes(0, BATCH_HEADER_BYTES);
        BatchBuilder {
            buf,
            record_count: 0,
            first_timestamp: 0,
            max_timestamp: 0,
            producer: ProducerFields::NONE,
            attributes: Attributes::default(),
            bytes_max: bytes_max.min(BATCH_BYTES_MAX),
        }
    }

    /// Sets the producer fields (idempotent and transactional producers).
    pub fn producer(mut self, producer: ProducerFields) -> Self {
        self.producer = producer;
        self
    }

    /// Sets the attributes (transactional, control).
    pub fn attributes(mut self, attributes: Attributes) -> Self {
        self.attributes = attributes;
        self
    }

    /// Number of records added so far.
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Size of the batch built from the records added so far.
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes `record` would add to the batch; lets a producer decide whether it still fits.
    pub fn encoded_len(&self, record: &NewRecord<'_>) -> usize {
        let body = self.record_body_len(record);
        uvarint_len(body as u64) + body
    }

    fn record_body_len(&self, record: &NewRecord<'_>) -> usize {
        let timestamp_delta =
            if self.record_count == 0 { 0 } else { record.timestamp.wrapping_sub(self.first_timestamp) };
        let headers: usize = record
            .headers
            .iter()
            .map(|(key, value)| uvarint_len(key.len() as u64) + key.len() + nullable_len(*value))
            .sum();
        1 + svarint_len(timestamp_delta)
            + uvarint_len(u64::from(self.record_count))
            + nullable_len(record.key)
            + nullable_len(record.value)
            + uvarint_len(record.headers.len() as u64)
            + headers
    }

    /// Appends a record. On error nothing was added and the builder is still usable.
    pub fn push(&mut self, record: NewRecord<'_>) -> Result<(), ProtocolError> {
        let idx = self.record_count;
        if idx >= BATCH_RECORDS_MAX {
            return Err(ProtocolError::InvalidField {
                field: "batch.records",
                reason: "batch holds BATCH_RECORDS_MAX records",
            });
        }
        if record.headers.len() > RECORD_HEADERS_MAX as usize {
            return Err(corrupt(idx, "more headers than RECORD_HEADERS_MAX"));
        }
        if record.headers.iter().any(|(key, _)| key.len() > RECORD_HEADER_KEY_BYTES_MAX as usize) {
            return Err(corrupt(idx, "header key longer than RECORD_HEADER_KEY_BYTES_MAX"));
        }
        let timestamp_delta = if idx == 0 {
            0
        } else {
            record.timestamp.checked_sub(self.first_timestamp).ok_or(ProtocolError::InvalidField {
                field: "record.timestamp",
                reason: "too far from the batch's first timestamp",
            })?
        };
        let len_after = self.buf.len().saturating_add(self.encoded_len(&record));
        if len_after > self.bytes_max as usize {
            return Err(ProtocolError::EncodeTooLarge { len: len_after as u64, max: self.bytes_max });
        }
        let body_len = self.record_body_len(&record);
        put_uvarint(&mut self.buf, body_len as u64);
        self.buf.put_u8(0);
        put_svarint(&mut self.buf, timestamp_delta);
        put_uvarint(&mut self.buf, u64::from(idx));
        put_nullable(&mut self.buf, record.key);
        put_nullable(&mut self.buf, record.value);
        put_uvarint(&mut self.buf, record.headers.len() as u64);
        for (key, value) in record.headers {
            put_uvarint(&mut self.buf, key.len() as u64);
            self.buf.put_slice(key);
            put_nullable(&mut self.buf, *value);
        }
        if idx == 0 {
            self.first_timestamp = record.timestamp;
            self.max_timestamp = record.timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(record.timestamp);
        self.record_count += 1;
        Ok(())
    }

    /// Finishes the batch: writes the header and checksum. Fails if no record was added.
    pub fn build(mut self) -> Result<RecordBatch, ProtocolError> {
        if self.record_count == 0 {
            return Err(ProtocolError::InvalidField {
                field: "batch.records",
                reason: "a batch holds at least one record",
            });
        }
        let mut header = BatchHeader {
            base_offset: 0,
            batch_length: u32::try_from(self.buf.len()).expect("push keeps the batch under BATCH_BYTES_MAX"),
            magic: BATCH_MAGIC,
            crc: 0,
            attributes: self.attributes,
            last_offset_delta: self.record_count - 1,
            first_timestamp: self.first_timestamp,
            max_timestamp: self.max_timestamp,
            producer_id: self.producer.producer_id,
            producer_epoch: self.producer.producer_epoch,
            base_sequence: self.producer.base_sequence,
            record_count: self.record_count,
        };
        let mut head = [0u8; BATCH_HEADER_BYTES];
        header.write(&mut head);
        self.buf[..BATCH_HEADER_BYTES].copy_from_slice(&head);
        let crc_tail = crc32c::crc32c(&self.buf[CRC_END..]);
        header.crc = with_head(crc_tail, &self.buf);
        self.buf[CRC_AT..CRC_END].copy_from_slice(&header.crc.to_be_bytes());
        header.validate()?;
        Ok(RecordBatch { bytes: self.buf.freeze(), header, crc_tail })
    }
}

#[cfg(test)]
mod tests;
