//! Request and response messages: the prost types generated from `proto/*.proto`, the [`Request`] and
//! [`Response`] enums that tie them to api keys, and validated types for what handlers act on.
//!
//! The `.proto` files are the specification; every message and field is documented there (and, through
//! prost-build, on the generated types below).
//! Every protobuf `bytes` field is a [`Bytes`]: decoding a frame body hands out record batches as slices of the
//! received buffer, without copying.
//!
//! # Where validation happens
//!
//! [`Request::decode`] checks what makes a whole request meaningless, and fails with a [`ProtocolError`]
//! (the broker answers with an error frame and closes the connection):
//! the frame flags, the api key and version, the protobuf encoding, and the request-wide enums
//! (`ProduceRequest.acks`, `FetchRequest.isolation_level`, `ListOffsetsRequest.isolation_level`), because a
//! broker that does not know whether to answer a produce request cannot answer it correctly.
//!
//! Per-item checks are left to the handlers, which answer them with an error code in that item's result and
//! keep the connection open: [`TopicName::new`] (the naming rule), [`NewTopic::try_from`] (name and partition
//! count), and [`OffsetSpec::try_from`] (a lookup with no spec).
//! What needs broker state or configuration is checked by the broker: topic config keys and values,
//! topic and partition existence, offsets in range, and fetch sizes clamped to its limits.
//! Record batches are checked by [`crate::batch::RecordBatch::decode`] when the produce handler splits them.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

use crate::error::{ErrorCode, ProtocolError};
use crate::frame::{ApiKey, FrameFlags, FrameHeader, encode_message};
use crate::limits::{PARTITIONS_PER_TOPIC_MAX, TOPIC_NAME_BYTES_MAX};

#[cfg(test)]
mod tests;

/// The code prost-build generates from `proto/*.proto` (package `ferry.v1`).
mod proto {
    include!(concat!(env!("OUT_DIR"), "/ferry.v1.rs"));
}

pub use proto::*;

/// The value of an `error_code` field for `code`.
pub fn error_code_to_wire(code: ErrorCode) -> u32 {
    u32::from(code.as_u16())
}

/// The [`ErrorCode`] an `error_code` field holds, or `None` for a number this build does not know
/// (a newer broker's code): treat it as a non-retriable error.
pub fn error_code_from_wire(error_code: u32) -> Option<ErrorCode> {
    u16::try_from(error_code).ok().and_then(ErrorCode::from_u16)
}

/// The api versions this build speaks, one entry per api in api-key order: what a broker's
/// `ApiVersionsResponse.api_versions` lists.
pub fn supported_api_versions() -> Vec<ApiVersionRange> {
    ApiKey::ALL
        .into_iter()
        .map(|api| ApiVersionRange {
            api_key: u32::from(api.as_u16()),
            version_min: u32::from(api.version_min()),
            version_max: u32::from(api.version_max()),
        })
        .collect()
}

/// Decodes a frame body as `M`, naming the message in the error.
fn decode_body<M: prost::Message + Default>(message: &'static str, body: Bytes) -> Result<M, ProtocolError> {
    M::decode(body).map_err(|source| ProtocolError::BodyDecode { message, source })
}

/// Fails unless `value` is a value the prost enum `E` defines.
fn check_enum<E: TryFrom<i32>>(field: &'static str, value: i32) -> Result<(), ProtocolError> {
    match E::try_from(value) {
        Ok(_) => Ok(()),
        Err(_) => Err(ProtocolError::InvalidField { field, reason: "unknown enum value" }),
    }
}

/// Fails unless the api key names an api this build speaks at the header's version.
fn check_api_version(header: &FrameHeader) -> Result<ApiKey, ProtocolError> {
    let api = header.api()?;
    if !api.supports_version(header.api_version) {
        return Err(ProtocolError::UnsupportedVersion { api_key: header.api_key, version: header.api_version });
    }
    Ok(api)
}

/// Generates [`Request`] and [`Response`] from the table of apis, so that adding an api touches one line.
macro_rules! apis {
    ($( $api:ident => $request:ident, $response:ident; )*) => {
        /// A decoded request: one variant per api.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Request {
            $(
                #[doc = concat!("A `", stringify!($request), "`.")]
                $api($request),
            )*
        }

        /// A decoded response: one variant per api, plus the body of an error frame.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Response {
            $(
                #[doc = concat!("A `", stringify!($response), "`.")]
                $api($response),
            )*
            /// The body of an error frame: the request could not be answered with its api's response.
            Error(ErrorResponse),
        }

        impl Request {
            /// The api this request belongs to.
            pub fn api_key(&self) -> ApiKey {
                match self {
                    $( Request::$api(_) => ApiKey::$api, )*
                }
            }

            /// Decodes a request frame's body.
            ///
            /// Fails with `ReservedFlags` or `InvalidField` for flags a request may not set, `UnknownApiKey`,
            /// `UnsupportedVersion`, `BodyDecode` for a malformed body, and `InvalidField` for an unknown value
            /// of a request-wide enum.
            /// Every error means the request cannot be answered normally: the broker sends an error frame and
            /// closes the connection.
            /// Per-item fields (topic names, partition counts, offset specs) are not validated here; see the
            /// module docs.
            pub fn decode(header: &FrameHeader, body: Bytes) -> Result<Request, ProtocolError> {
                check_request_flags(header.flags)?;
                let request = match check_api_version(header)? {
                    $( ApiKey::$api => Request::$api(decode_body(stringify!($request), body)?), )*
                };
                request.check_enums()?;
                Ok(request)
            }

            /// The header this request is sent with: its api at the newest version this build speaks.
            pub fn header(&self, correlation_id: u32) -> FrameHeader {
                let api = self.api_key();
                FrameHeader::request(api, api.version_max(), correlation_id)
            }

            /// Appends this request, as a whole frame with [`Request::header`], to `dst`.
            ///
            /// Fails with `EncodeTooLarge`, leaving `dst` untouched, if the frame would exceed `FRAME_BYTES_MAX`.
            pub fn encode(&self, correlation_id: u32, dst: &mut BytesMut) -> Result<(), ProtocolError> {
                let header = self.header(correlation_id);
                match self {
                    $( Request::$api(message) => encode_message(&header, message, dst), )*
                }
            }
        }

        impl Response {
            /// The api this response belongs to; `None` for an error frame's body, which any api may receive.
            pub fn api_key(&self) -> Option<ApiKey> {
                match self {
                    $( Response::$api(_) => Some(ApiKey::$api), )*
                    Response::Error(_) => None,
                }
            }

            /// The response's top-level `error_code` (0 = NONE), e.g. for a metric's result label.
            pub fn error_code(&self) -> u32 {
                match self {
                    $( Response::$api(message) => message.error_code, )*
                    Response::Error(message) => message.error_code,
                }
            }

            /// Decodes a response frame's body: an [`ErrorResponse`] if the header marks an error frame,
            /// otherwise the response of the header's api.
            ///
            /// Fails with `ReservedFlags`, `InvalidField` (the response bit is clear), `UnknownApiKey`,
            /// `UnsupportedVersion` or `BodyDecode`.
            pub fn decode(header: &FrameHeader, body: Bytes) -> Result<Response, ProtocolError> {
                check_response_flags(header.flags)?;
                if header.flags.is_error() {
                    return Ok(Response::Error(decode_body("ErrorResponse", body)?));
                }
                Ok(match check_api_version(header)? {
                    $( ApiKey::$api => Response::$api(decode_body(stringify!($response), body)?), )*
                })
            }

            /// The header this response is sent with, answering the request with header `request`:
            /// the same correlation id and version, the response's api, and the response (or error) flags.
            /// An error frame keeps the request's api key, whatever it was.
            pub fn header(&self, request: &FrameHeader) -> FrameHeader {
                match self.api_key() {
                    Some(api) => FrameHeader { api_key: api.as_u16(), ..request.response() },
                    None => request.error_response(),
                }
            }

            /// Appends this response, as a whole frame with [`Response::header`], to `dst`.
            ///
            /// Fails with `EncodeTooLarge`, leaving `dst` untouched, if the frame would exceed `FRAME_BYTES_MAX`.
            pub fn encode(&self, request: &FrameHeader, dst: &mut BytesMut) -> Result<(), ProtocolError> {
                let header = self.header(request);
                match self {
                    $( Response::$api(message) => encode_message(&header, message, dst), )*
                    Response::Error(message) => encode_message(&header, message, dst),
                }
            }
        }

        $(
            impl From<$request> for Request {
                fn from(request: $request) -> Request {
                    Request::$api(request)
                }
            }

            impl From<$response> for Response {
                fn from(response: $response) -> Response {
                    Response::$api(response)
                }
            }
        )*
    };
}

apis! {
    ApiVersions => ApiVersionsRequest, ApiVersionsResponse;
    CreateTopics => CreateTopicsRequest, CreateTopicsResponse;
    DeleteTopics => DeleteTopicsRequest, DeleteTopicsResponse;
    ListTopics => ListTopicsRequest, ListTopicsResponse;
    DescribeTopics => DescribeTopicsRequest, DescribeTopicsResponse;
    Produce => ProduceRequest, ProduceResponse;
    Fetch => FetchRequest, FetchResponse;
    ListOffsets => ListOffsetsRequest, ListOffsetsResponse;
    InitProducerId => InitProducerIdRequest, InitProducerIdResponse;
    DescribeBroker => DescribeBrokerRequest, DescribeBrokerResponse;
    DescribeProducers => DescribeProducersRequest, DescribeProducersResponse;
    JoinGroup => JoinGroupRequest, JoinGroupResponse;
    Heartbeat => HeartbeatRequest, HeartbeatResponse;
    LeaveGroup => LeaveGroupRequest, LeaveGroupResponse;
    OffsetCommit => OffsetCommitRequest, OffsetCommitResponse;
    OffsetFetch => OffsetFetchRequest, OffsetFetchResponse;
    ListGroups => ListGroupsRequest, ListGroupsResponse;
    DescribeGroups => DescribeGroupsRequest, DescribeGroupsResponse;
    TxnProduce => TxnProduceRequest, TxnProduceResponse;
    TxnOffsetCommit => TxnOffsetCommitRequest, TxnOffsetCommitResponse;
    EndTxn => EndTxnRequest, EndTxnResponse;
    ListTxns => ListTxnsRequest, ListTxnsResponse;
    AbortTxn => AbortTxnRequest, AbortTxnResponse;
}

impl From<ErrorResponse> for Response {
    fn from(response: ErrorResponse) -> Response {
        Response::Error(response)
    }
}

impl Request {
    /// Rejects unknown values of the enums that decide how the whole request is handled.
    /// prost keeps unknown enum values as raw `i32`s, and its getters would silently map them to the default.
    fn check_enums(&self) -> Result<(), ProtocolError> {
        match self {
            Request::Produce(request) => check_enum::<Acks>("ProduceRequest.acks", request.acks),
            Request::Fetch(request) => {
                check_enum::<IsolationLevel>("FetchRequest.isolation_level", request.isolation_level)
            }
            Request::ListOffsets(request) => {
                check_enum::<IsolationLevel>("ListOffsetsRequest.isolation_level", request.isolation_level)
            }
            Request::ApiVersions(_)
            | Request::CreateTopics(_)
            | Request::DeleteTopics(_)
            | Request::ListTopics(_)
            | Request::DescribeTopics(_)
            | Request::InitProducerId(_)
            | Request::DescribeBroker(_)
            | Request::DescribeProducers(_)
            | Request::JoinGroup(_)
            | Request::Heartbeat(_)
            | Request::LeaveGroup(_)
            | Request::OffsetCommit(_)
            | Request::OffsetFetch(_)
            | Request::ListGroups(_)
            | Request::DescribeGroups(_)
            | Request::TxnProduce(_)
            | Request::TxnOffsetCommit(_)
            | Request::EndTxn(_)
            | Request::ListTxns(_)
            | Request::AbortTxn(_) => Ok(()),
        }
    }
}

/// A request sets neither the response nor the error bit, nor any reserved bit.
fn check_request_flags(flags: FrameFlags) -> Result<(), ProtocolError> {
    if flags.reserved_bits() != 0 {
        return Err(ProtocolError::ReservedFlags { flags: flags.reserved_bits() });
    }
    if flags != FrameFlags::REQUEST {
        return Err(ProtocolError::InvalidField {
            field: "FrameHeader.flags",
            reason: "a request sets the response or error bit",
        });
    }
    Ok(())
}

/// A response sets the response bit, maybe the error bit, and no reserved bit.
fn check_response_flags(flags: FrameFlags) -> Result<(), ProtocolError> {
    if flags.reserved_bits() != 0 {
        return Err(ProtocolError::ReservedFlags { flags: flags.reserved_bits() });
    }
    if !flags.is_response() {
        return Err(ProtocolError::InvalidField {
            field: "FrameHeader.flags",
            reason: "a response does not set the response bit",
        });
    }
    Ok(())
}

/// A valid topic name: 1 to [`TOPIC_NAME_BYTES_MAX`] bytes of ASCII letters, digits, `.`, `_` and `-`,
/// and neither `.` nor `..` (names become directory names).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    /// Validates `name`; fails with `InvalidTopicName` (wire code `INVALID_TOPIC`).
    pub fn new(name: String) -> Result<TopicName, ProtocolError> {
        let reason = if name.is_empty() {
            "empty"
        } else if u32::try_from(name.len()).map_or(true, |len| len > TOPIC_NAME_BYTES_MAX) {
            "longer than 249 bytes"
        } else if !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-')) {
            "contains a character other than ASCII letters, digits, '.', '_' and '-'"
        } else if name == "." || name == ".." {
            "is '.' or '..'"
        } else {
            return Ok(TopicName(name));
        };
        Err(ProtocolError::InvalidTopicName { reason })
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as an owned string, e.g. to put back into a message.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl TryFrom<String> for TopicName {
    type Error = ProtocolError;

    fn try_from(name: String) -> Result<TopicName, ProtocolError> {
        TopicName::new(name)
    }
}

impl TryFrom<&str> for TopicName {
    type Error = ProtocolError;

    fn try_from(name: &str) -> Result<TopicName, ProtocolError> {
        TopicName::new(name.to_owned())
    }
}

impl std::str::FromStr for TopicName {
    type Err = ProtocolError;

    fn from_str(name: &str) -> Result<TopicName, ProtocolError> {
        TopicName::new(name.to_owned())
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for TopicName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<TopicName> for String {
    fn from(name: TopicName) -> String {
        name.0
    }
}

/// A topic to create, with its name and partition count validated; its config is checked by the broker,
/// which knows the keys' bounds and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    /// The topic name.
    pub name: TopicName,
    /// The number of partitions, in `1..=PARTITIONS_PER_TOPIC_MAX`.
    pub partition_count: u32,
    /// The config overrides, unvalidated (see `CreatableTopic.config` in `topics.proto` for the keys).
    pub config: BTreeMap<String, String>,
}

impl TryFrom<CreatableTopic> for NewTopic {
    type Error = ProtocolError;

    /// Fails with `InvalidTopicName` (wire code `INVALID_TOPIC`) or `InvalidPartitionCount`
    /// (`INVALID_PARTITIONS`).
    fn try_from(topic: CreatableTopic) -> Result<NewTopic, ProtocolError> {
        let name = TopicName::new(topic.name)?;
        if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&topic.partition_count) {
            return Err(ProtocolError::InvalidPartitionCount {
                count: topic.partition_count,
                max: PARTITIONS_PER_TOPIC_MAX,
            });
        }
        Ok(NewTopic { name, partition_count: topic.partition_count, config: topic.config })
    }
}

/// What a ListOffsets lookup asks for, validated from the `spec` oneof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The log end offset (the next offset to be written).
    Latest,
    /// The first offset whose record timestamp is at or after this time, in milliseconds since the Unix epoch.
    Timestamp(i64),
}

impl TryFrom<&ListOffsetsPartition> for OffsetSpec {
    type Error = ProtocolError;

    /// Fails with `InvalidField` (wire code `INVALID_REQUEST` for that partition) when no spec is set.
    fn try_from(lookup: &ListOffsetsPartition) -> Result<OffsetSpec, ProtocolError> {
        match lookup.spec {
            Some(list_offsets_partition::Spec::Earliest(_)) => Ok(OffsetSpec::Earliest),
            Some(list_offsets_partition::Spec::Latest(_)) => Ok(OffsetSpec::Latest),
            Some(list_offsets_partition::Spec::TimestampMs(timestamp_ms)) => Ok(OffsetSpec::Timestamp(timestamp_ms)),
            None => Err(ProtocolError::InvalidField { field: "ListOffsetsPartition.spec", reason: "no spec set" }),
        }
    }
}

impl From<OffsetSpec> for list_offsets_partition::Spec {
    fn from(spec: OffsetSpec) -> list_offsets_partition::Spec {
        match spec {
            OffsetSpec::Earliest => list_offsets_partition::Spec::Earliest(OffsetSpecEarliest {}),
            OffsetSpec::Latest => list_offsets_partition::Spec::Latest(OffsetSpecLatest {}),
            OffsetSpec::Timestamp(timestamp_ms) => list_offsets_partition::Spec::TimestampMs(timestamp_ms),
        }
    }
}
