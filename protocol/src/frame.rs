//! Frames: the unit every request and response travels in, decoded and encoded without I/O.
//!
//! A frame is a length prefix, a fixed 10-byte header and a protobuf body.
//! Every integer is big-endian:
//!
//! ```text
//!  0               4        6            8                12       14
//!  +---------------+--------+------------+----------------+--------+------------------------+
//!  | len: u32      | api_key| api_version| correlation_id | flags  | body: `len - 10` bytes |
//!  |               | u16    | u16        | u32            | u16    | (a prost message)      |
//!  +---------------+--------+------------+----------------+--------+------------------------+
//!                  |<----------------- len bytes (header + body) ------------------------->|
//! ```
//!
//! - `len` counts every byte after itself.
//!   It must be at least [`FRAME_HEADER_BYTES`] and at most [`FRAME_BYTES_MAX`] (or a lower limit the caller sets);
//!   both are checked on the 4 prefix bytes alone, before anything is buffered or reserved.
//! - `api_key` names the api ([`ApiKey`]); `api_version` is that api's version.
//!   The frame layer carries unknown keys and versions as they are, so a server can still answer them by
//!   correlation id; [`crate::messages::Request::decode`] rejects them.
//! - `correlation_id` is chosen by the client and echoed in the response, so requests can be pipelined.
//! - `flags` ([`FrameFlags`]): bit 0 is set on every response; bit 1 marks an error frame, whose body is an
//!   `ErrorResponse` instead of the api's response; the other bits are reserved and must be zero.
//!
//! Decoding is sans-IO: [`Frame::decode`] takes whatever bytes have arrived and returns `Ok(None)` until a
//! whole frame is there.
//! The body is a zero-copy slice of the receive buffer.
//! A decode error means framing is lost: the caller sends an error frame and closes the connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::limits::FRAME_BYTES_MAX;

#[cfg(test)]
mod tests;

/// Size of the length prefix that starts every frame; it is not counted in the length it holds.
pub const FRAME_LENGTH_PREFIX_BYTES: usize = 4;

/// Size of the fixed header after the length prefix: api key, api version, correlation id and flags.
/// A length prefix below it is a decode error.
pub const FRAME_HEADER_BYTES: u32 = 10;

/// The apis of protocol version 1, by their stable api key.
///
/// A key, once assigned, never changes meaning.
/// Reserved, not yet implemented: 27-39 consumer groups, 45-59 transactions,
/// 60-79 queue groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum ApiKey {
    /// Version negotiation and broker limits; the first request on a connection.
    ApiVersions = 0,
    /// Creates topics.
    CreateTopics = 1,
    /// Deletes topics.
    DeleteTopics = 2,
    /// Lists every topic with its partition count.
    ListTopics = 3,
    /// Describes topics: config and per-partition offsets and health.
    DescribeTopics = 4,
    /// Appends record batches.
    Produce = 5,
    /// Reads record batches.
    Fetch = 6,
    /// Looks up offsets by position or timestamp.
    ListOffsets = 7,
    /// Issues an idempotent producer's id and epoch.
    InitProducerId = 8,
    /// Describes the broker: version, uptime, config in effect, data-dir usage, partition states (operators).
    DescribeBroker = 9,
    /// Lists each partition's active idempotent producers of a topic (operators).
    DescribeProducers = 10,
    /// Joins a consumer group.
    JoinGroup = 20,
    /// Keeps a group membership alive and learns the member's assignment.
    Heartbeat = 21,
    /// Leaves a consumer group.
    LeaveGroup = 22,
    /// Commits a group's offsets.
    OffsetCommit = 23,
    /// Reads a group's committed offsets.
    OffsetFetch = 24,
    /// Lists the consumer groups.
    ListGroups = 25,
    /// Describes consumer groups: members and assignments.
    DescribeGroups = 26,
    /// Stages record batches in a transaction.
    TxnProduce = 40,
    /// Adds consumer-group offsets to a transaction.
    TxnOffsetCommit = 41,
    /// Commits or aborts a transaction.
    EndTxn = 42,
    /// Lists the open transactions.
    ListTxns = 43,
    /// Aborts a transactional id's open transaction (operators).
    AbortTxn = 44,
}

impl ApiKey {
    /// Every api this build speaks, in api-key order (the order ApiVersions lists them in).
    pub const ALL: [ApiKey; 23] = [
        ApiKey::ApiVersions,
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::ListTopics,
        ApiKey::DescribeTopics,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::InitProducerId,
        ApiKey::DescribeBroker,
        ApiKey::DescribeProducers,
        ApiKey::JoinGroup,
        ApiKey::Heartbeat,
        ApiKey::LeaveGroup,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::ListGroups,
        ApiKey::DescribeGroups,
        ApiKey::TxnProduce,
        ApiKey::TxnOffsetCommit,
        ApiKey::EndTxn,
        ApiKey::ListTxns,
        ApiKey::AbortTxn,
    ];

    /// The numeric key sent in the frame header.
    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// A stable snake_case name, for metric labels and logs (a bounded set of label values).
    pub const fn name(self) -> &'static str {
        match self {
            ApiKey::ApiVersions => "api_versions",
            ApiKey::CreateTopics => "create_topics",
            ApiKey::DeleteTopics => "delete_topics",
            ApiKey::ListTopics => "list_topics",
            ApiKey::DescribeTopics => "describe_topics",
            ApiKey::Produce => "produce",
            ApiKey::Fetch => "fetch",
            ApiKey::ListOffsets => "list_offsets",
            ApiKey::InitProducerId => "init_producer_id",
            ApiKey::DescribeBroker => "describe_broker",
            ApiKey::DescribeProducers => "describe_producers",
            ApiKey::JoinGroup => "join_group",
            ApiKey::Heartbeat => "heartbeat",
            ApiKey::LeaveGroup => "leave_group",
            ApiKey::OffsetCommit => "offset_commit",
            ApiKey::OffsetFetch => "offset_fetch",
            ApiKey::ListGroups => "list_groups",
            ApiKey::DescribeGroups => "describe_groups",
            ApiKey::TxnProduce => "txn_produce",
            ApiKey::TxnOffsetCommit => "txn_offset_commit",
            ApiKey::EndTxn => "end_txn",
            ApiKey::ListTxns => "list_txns",
            ApiKey::AbortTxn => "abort_txn",
        }
    }

    /// The oldest version of this api that this build decodes.
    pub const fn version_min(self) -> u16 {
        0
    }

    /// The newest version of this api that this build decodes, and the version it encodes requests at.
    pub const fn version_max(self) -> u16 {
        0
    }

    /// Whether this build speaks `version` of this api.
    pub const fn supports_version(self, version: u16) -> bool {
        self.version_min() <= version && version <= self.version_max()
    }
}

impl TryFrom<u16> for ApiKey {
    type Error = ProtocolError;

    /// Maps a header's api key to the api, or `UnknownApiKey` for a key this build does not speak
    /// (including the reserved ranges).
    fn try_from(api_key: u16) -> Result<ApiKey, ProtocolError> {
        ApiKey::ALL.into_iter().find(|api| api.as_u16() == api_key).ok_or(ProtocolError::UnknownApiKey { api_key })
    }
}

impl From<ApiKey> for u16 {
    fn from(api: ApiKey) -> u16 {
        api.as_u16()
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The flag bits of a frame header.
///
/// Any `u16` can be carried, so a frame with reserved bits set still decodes and can be answered;
/// [`crate::messages::Request::decode`] rejects requests that set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FrameFlags(u16);

impl FrameFlags {
    /// Bit 0: the frame is a response. Set on every response, clear on every request.
    pub const RESPONSE_BIT: u16 = 1 << 0;
    /// Bit 1: the frame is an error frame; its body is an `ErrorResponse`. Only valid with [`Self::RESPONSE_BIT`].
    pub const ERROR_BIT: u16 = 1 << 1;
    /// Every bit this version defines; the others are reserved and must be zero.
    pub const DEFINED_BITS: u16 = Self::RESPONSE_BIT | Self::ERROR_BIT;

    /// The flags of a request: no bit set.
    pub const REQUEST: FrameFlags = FrameFlags(0);
    /// The flags of a normal response.
    pub const RESPONSE: FrameFlags = FrameFlags(Self::RESPONSE_BIT);
    /// The flags of an error frame.
    pub const ERROR_RESPONSE: FrameFlags = FrameFlags(Self::RESPONSE_BIT | Self::ERROR_BIT);

    /// Wraps raw bits as read from the wire; reserved bits are kept so a reader can report them.
    pub const fn from_bits(bits: u16) -> FrameFlags {
        FrameFlags(bits)
    }

    /// The raw bits as sent on the wire.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Whether the frame is a response.
    pub const fn is_response(self) -> bool {
        self.0 & Self::RESPONSE_BIT != 0
    }

    /// Whether the frame is an error frame.
    pub const fn is_error(self) -> bool {
        self.0 & Self::ERROR_BIT != 0
    }

    /// The reserved bits that are set; zero in every valid frame of this version.
    pub const fn reserved_bits(self) -> u16 {
        self.0 & !Self::DEFINED_BITS
    }
}

/// The fixed header of a frame: everything between the length prefix and the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// The api, as a raw key: unknown keys are carried so the server can answer them (see [`FrameHeader::api`]).
    pub api_key: u16,
    /// The version of the api the body is encoded in.
    pub api_version: u16,
    /// Chosen by the client, echoed by the response, so pipelined responses can be matched to requests.
    pub correlation_id: u32,
    /// Request, response or error frame, plus reserved bits.
    pub flags: FrameFlags,
}

impl FrameHeader {
    /// The header of a request for `api` at `api_version`.
    pub const fn request(api: ApiKey, api_version: u16, correlation_id: u32) -> FrameHeader {
        FrameHeader { api_key: api.as_u16(), api_version, correlation_id, flags: FrameFlags::REQUEST }
    }

    /// The header of the response to the request with this header: the same api, version and correlation id.
    pub const fn response(&self) -> FrameHeader {
        FrameHeader { flags: FrameFlags::RESPONSE, ..*self }
    }

    /// The header of an error frame answering the request with this header.
    pub const fn error_response(&self) -> FrameHeader {
        FrameHeader { flags: FrameFlags::ERROR_RESPONSE, ..*self }
    }

    /// The api this header names, or `UnknownApiKey`.
    pub fn api(&self) -> Result<ApiKey, ProtocolError> {
        ApiKey::try_from(self.api_key)
    }

    /// Writes the header (without the length prefix); `dst` must have room, which callers reserve first.
    fn put(&self, dst: &mut BytesMut) {
        dst.put_u16(self.api_key);
        dst.put_u16(self.api_version);
        dst.put_u32(self.correlation_id);
        dst.put_u16(self.flags.bits());
    }

    /// Reads a header from exactly [`FRAME_HEADER_BYTES`] bytes.
    fn get(mut src: impl Buf) -> FrameHeader {
        FrameHeader {
            api_key: src.get_u16(),
            api_version: src.get_u16(),
            correlation_id: src.get_u32(),
            flags: FrameFlags::from_bits(src.get_u16()),
        }
    }
}

/// One frame: a header and an undecoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The fixed header.
    pub header: FrameHeader,
    /// The protobuf-encoded body; after [`Frame::decode`], a zero-copy slice of the receive buffer.
    pub body: Bytes,
}

impl Frame {
    /// Decodes one frame from the front of `buf`, with the protocol's limit [`FRAME_BYTES_MAX`].
    ///
    /// Returns `Ok(None)` while `buf` holds less than a whole frame, leaving `buf` untouched.
    /// On success, removes exactly that frame's bytes from `buf`.
    /// On error (a length prefix above the limit or below the header size), leaves `buf` untouched;
    /// framing is lost and the connection must be closed.
    /// Never reserves memory: the buffer grows only with bytes that actually arrived.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        Frame::decode_with_max(buf, FRAME_BYTES_MAX)
    }

    /// Like [`Frame::decode`], with a caller-chosen limit on `len`; limits above [`FRAME_BYTES_MAX`] are lowered to it.
    pub fn decode_with_max(buf: &mut BytesMut, frame_bytes_max: u32) -> Result<Option<Frame>, ProtocolError> {
        let Some(frame_wire_len) = Frame::peek_len(buf, frame_bytes_max)? else {
            return Ok(None);
        };
        if buf.len() < frame_wire_len {
            return Ok(None);
        }
        let mut frame_bytes = buf.split_to(frame_wire_len);
        frame_bytes.advance(FRAME_LENGTH_PREFIX_BYTES);
        let header_bytes = frame_bytes.split_to(usize_from(FRAME_HEADER_BYTES));
        let header = FrameHeader::get(&header_bytes[..]);
        Ok(Some(Frame { header, body: frame_bytes.freeze() }))
    }

    /// The total size on the wire (length prefix included) of the frame starting `buf`, as soon as its
    /// 4-byte length prefix has arrived; `Ok(None)` before that.
    ///
    /// A server uses it to learn early how many bytes the current frame still needs (for a per-frame read
    /// deadline or for metrics), e.g. on `Framed::read_buffer()`.
    /// Fails exactly when [`Frame::decode_with_max`] with the same limit would.
    pub fn peek_len(buf: &[u8], frame_bytes_max: u32) -> Result<Option<usize>, ProtocolError> {
        let Some(prefix) = buf.first_chunk::<FRAME_LENGTH_PREFIX_BYTES>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix);
        let max = frame_bytes_max.min(FRAME_BYTES_MAX);
        if len > max {
            return Err(ProtocolError::FrameTooLarge { len: u64::from(len), max });
        }
        if len < FRAME_HEADER_BYTES {
            return Err(ProtocolError::FrameTooShort { len, min: FRAME_HEADER_BYTES });
        }
        let wire_len = usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_add(FRAME_LENGTH_PREFIX_BYTES))
            .ok_or(ProtocolError::FrameTooLarge { len: u64::from(len), max })?;
        Ok(Some(wire_len))
    }

    /// Appends this frame to `dst` (length prefix, header, body), with the protocol's limit [`FRAME_BYTES_MAX`].
    ///
    /// Fails with `EncodeTooLarge`, leaving `dst` untouched, if the frame would exceed the limit.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        self.encode_with_max(dst, FRAME_BYTES_MAX)
    }

    /// Like [`Frame::encode`], with a caller-chosen limit; limits above [`FRAME_BYTES_MAX`] are lowered to it.
    pub fn encode_with_max(&self, dst: &mut BytesMut, frame_bytes_max: u32) -> Result<(), ProtocolError> {
        put_prefix_and_header(&self.header, self.body.len(), frame_bytes_max, dst)?;
        dst.put_slice(&self.body);
        Ok(())
    }

    /// The number of bytes [`Frame::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        FRAME_LENGTH_PREFIX_BYTES.saturating_add(usize_from(FRAME_HEADER_BYTES)).saturating_add(self.body.len())
    }
}

/// Appends a frame whose body is `message`, encoding the message straight into `dst` (no intermediate buffer),
/// with the protocol's limit [`FRAME_BYTES_MAX`].
///
/// Fails with `EncodeTooLarge`, leaving `dst` untouched, if the frame would exceed the limit.
pub fn encode_message(
    header: &FrameHeader,
    message: &impl prost::Message,
    dst: &mut BytesMut,
) -> Result<(), ProtocolError> {
    encode_message_with_max(header, message, dst, FRAME_BYTES_MAX)
}

/// Like [`encode_message`], with a caller-chosen limit; limits above [`FRAME_BYTES_MAX`] are lowered to it.
pub fn encode_message_with_max(
    header: &FrameHeader,
    message: &impl prost::Message,
    dst: &mut BytesMut,
    frame_bytes_max: u32,
) -> Result<(), ProtocolError> {
    let body_len = message.encoded_len();
    put_prefix_and_header(header, body_len, frame_bytes_max, dst)?;
    let body_start = dst.len();
    message.encode(dst).expect("BytesMut grows on demand, so prost's remaining-capacity check cannot fail");
    // The length prefix was written from `encoded_len`; a mismatch would corrupt the stream.
    assert_eq!(dst.len() - body_start, body_len);
    Ok(())
}

/// Checks the frame size against the limit, reserves room for the whole frame and writes the length prefix and
/// header. Writes nothing on error.
fn put_prefix_and_header(
    header: &FrameHeader,
    body_len: usize,
    frame_bytes_max: u32,
    dst: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let max = frame_bytes_max.min(FRAME_BYTES_MAX);
    let len = u64::try_from(body_len)
        .ok()
        .and_then(|body_len| body_len.checked_add(u64::from(FRAME_HEADER_BYTES)))
        .unwrap_or(u64::MAX);
    let len_prefix = match u32::try_from(len) {
        Ok(len_prefix) if len_prefix <= max => len_prefix,
        _ => return Err(ProtocolError::EncodeTooLarge { len, max }),
    };
    // len <= FRAME_BYTES_MAX, so this sum cannot overflow.
    dst.reserve(FRAME_LENGTH_PREFIX_BYTES + usize_from(len_prefix));
    dst.put_u32(len_prefix);
    header.put(dst);
    Ok(())
}

/// Widens a `u32` that is at most [`FRAME_BYTES_MAX`] or a format constant; every supported target has a
/// `usize` of at least 32 bits.
fn usize_from(value: u32) -> usize {
    usize::try_from(value).expect("usize has at least 32 bits on every supported target")
}

const _: () = assert!(FRAME_HEADER_BYTES as usize == 2 + 2 + 4 + 2);
const _: () = assert!(FRAME_HEADER_BYTES < FRAME_BYTES_MAX);
