//! Decode errors ([`ProtocolError`]) and the stable wire error table ([`ErrorCode`]).
//!
//! `ProtocolError` is what this crate returns when bytes do not form a valid frame, message or batch.
//! `ErrorCode` is what a broker puts in a response: a number that never changes meaning,
//! with a flag that tells clients whether retrying the same request can succeed.

/// Why bytes could not be decoded (or a value could not be encoded) as a frame, message or record batch.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The length prefix announces a frame above the accepted limit; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds limit of {max}")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// The length prefix announces a frame shorter than the fixed frame header.
    #[error("frame of {len} bytes is shorter than the {min}-byte frame header")]
    FrameTooShort {
        /// The announced length.
        len: u32,
        /// The size of the fixed frame header.
        min: u32,
    },
    /// The frame header sets flag bits this version does not define.
    #[error("frame sets reserved flag bits {flags:#06x}")]
    ReservedFlags {
        /// The offending flag bits.
        flags: u16,
    },
    /// The frame names an API this build does not know.
    #[error("unknown api key {api_key}")]
    UnknownApiKey {
        /// The api key from the frame header.
        api_key: u16,
    },
    /// The frame asks for a version of an API this build does not speak.
    #[error("api {api_key} does not support version {version}")]
    UnsupportedVersion {
        /// The api key from the frame header.
        api_key: u16,
        /// The requested version.
        version: u16,
    },
    /// The frame body is not a valid protobuf message of the expected type.
    #[error("malformed {message} body")]
    BodyDecode {
        /// The message type that was expected.
        message: &'static str,
        /// What prost reported.
        #[source]
        source: prost::DecodeError,
    },
    /// A decoded message carries a value outside its documented range.
    #[error("invalid field {field}: {reason}")]
    InvalidField {
        /// The field, as `Message.field`.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A topic name breaks the naming rule (1 to `TOPIC_NAME_BYTES_MAX` bytes of `[a-zA-Z0-9._-]`, not `.` or `..`).
    /// A handler answers it with `INVALID_TOPIC` for that topic; the connection stays open.
    #[error("invalid topic name: {reason}")]
    InvalidTopicName {
        /// What is wrong with the name (the name itself is left out: it came from the wire and may be huge).
        reason: &'static str,
    },
    /// A partition count is outside `1..=max`.
    /// A handler answers it with `INVALID_PARTITIONS` for that topic; the connection stays open.
    #[error("partition count {count} outside 1..={max}")]
    InvalidPartitionCount {
        /// The requested count.
        count: u32,
        /// The largest accepted count.
        max: u32,
    },
    /// A value to encode would not fit in one frame.
    #[error("encoded frame of {len} bytes exceeds limit of {max}")]
    EncodeTooLarge {
        /// The encoded length.
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// The buffer ends before the batch it holds: the batch is truncated.
    #[error("batch truncated: needs {needed} bytes, {available} available")]
    BatchTruncated {
        /// Bytes the batch needs (its header, or the length its header announces).
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// The batch header announces a length outside `[BATCH_HEADER_BYTES, max]`.
    #[error("batch length {len} outside the valid range {min}..={max}")]
    BatchLengthInvalid {
        /// The announced length.
        len: u32,
        /// The smallest valid batch (its header).
        min: u32,
        /// The largest accepted batch.
        max: u32,
    },
    /// The batch's format version is not one this build reads.
    #[error("unsupported batch magic {magic}")]
    UnsupportedMagic {
        /// The magic byte found.
        magic: u8,
    },
    /// The stored CRC-32C does not match the bytes: the batch was corrupted.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// The checksum in the batch header.
        stored: u32,
        /// The checksum of the bytes as they are.
        computed: u32,
    },
    /// The batch passed its checksum but its header fields contradict each other or the limits.
    #[error("invalid batch header: {reason}")]
    InvalidBatchHeader {
        /// What is wrong.
        reason: &'static str,
    },
    /// The records inside a batch are malformed.
    #[error("corrupt record {record_idx}: {reason}")]
    CorruptRecord {
        /// The index of the record within its batch.
        record_idx: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// An I/O error from the transport under a codec.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
}

impl ProtocolError {
    /// The code a broker answers with when a request fails to decode or validate with this error.
    ///
    /// The one mapping from decode errors to the wire: handlers use it for their per-item validation too.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ProtocolError::UnknownApiKey { .. } | ProtocolError::UnsupportedVersion { .. } => {
                ErrorCode::UnsupportedVersion
            }
            ProtocolError::InvalidTopicName { .. } => ErrorCode::InvalidTopic,
            ProtocolError::InvalidPartitionCount { .. } => ErrorCode::InvalidPartitions,
            ProtocolError::BatchLengthInvalid { len, max, .. } if len > max => ErrorCode::RecordBatchTooLarge,
            ProtocolError::BatchTruncated { .. }
            | ProtocolError::BatchLengthInvalid { .. }
            | ProtocolError::UnsupportedMagic { .. }
            | ProtocolError::ChecksumMismatch { .. }
            | ProtocolError::InvalidBatchHeader { .. }
            | ProtocolError::CorruptRecord { .. } => ErrorCode::CorruptMessage,
            ProtocolError::FrameTooLarge { .. }
            | ProtocolError::FrameTooShort { .. }
            | ProtocolError::ReservedFlags { .. }
            | ProtocolError::BodyDecode { .. }
            | ProtocolError::InvalidField { .. }
            | ProtocolError::EncodeTooLarge { .. }
            | ProtocolError::Io(_) => ErrorCode::InvalidRequest,
        }
    }
}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, $retriable:literal, $wire:literal; )*) => {
        /// The stable table of error codes carried in responses.
        ///
        /// A code's number and meaning never change, and a retired code is never reused.
        /// Ranges: 0-99 general and storage, 100-199 idempotent producers, 200-299 consumer groups,
        /// 300-399 transactions, 400-499 queue groups (per-message acks).
        /// `is_retriable` says whether the same request may succeed if sent again (after a backoff);
        /// clients retry those up to their delivery timeout and surface the others at once.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $name = $value, )*
        }

        impl ErrorCode {
            /// Every defined code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// The code for a number read from the wire; `None` for a number this build does not know.
            pub fn from_u16(value: u16) -> Option<ErrorCode> {
                match value {
                    $( $value => Some(ErrorCode::$name), )*
                    _ => None,
                }
            }

            /// Whether sending the same request again, after a backoff, may succeed.
            pub fn is_retriable(self) -> bool {
                match self {
                    $( ErrorCode::$name => $retriable, )*
                }
            }

            /// The code's stable upper-case name, as documented and used in metric labels.
            pub fn name(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => $wire, )*
                }
            }
        }
    };
}

error_codes! {
    /// Success.
    None = 0, false, "NONE";
    /// The broker failed in a way it could not classify; see its log. Never used for a condition a client could act on.
    Unknown = 1, false, "UNKNOWN";
    /// The request could not be decoded or is malformed; the connection is closed after this error.
    InvalidRequest = 2, false, "INVALID_REQUEST";
    /// The broker does not support this api or api version.
    UnsupportedVersion = 3, false, "UNSUPPORTED_VERSION";
    /// A record batch failed its checksum or structure check; a resend of intact bytes may succeed.
    CorruptMessage = 4, true, "CORRUPT_MESSAGE";
    /// The topic or partition does not exist (it may be being created).
    UnknownTopicOrPartition = 5, true, "UNKNOWN_TOPIC_OR_PARTITION";
    /// A topic with this name exists already.
    TopicAlreadyExists = 6, false, "TOPIC_ALREADY_EXISTS";
    /// The topic name is not valid (1-249 bytes of `[a-zA-Z0-9._-]`).
    InvalidTopic = 7, false, "INVALID_TOPIC";
    /// The partition count is outside the accepted range.
    InvalidPartitions = 8, false, "INVALID_PARTITIONS";
    /// A topic config key is unknown or its value out of range.
    InvalidConfig = 9, false, "INVALID_CONFIG";
    /// A record batch exceeds the batch size limit.
    RecordBatchTooLarge = 10, false, "RECORD_BATCH_TOO_LARGE";
    /// A record exceeds the topic's message size limit.
    MessageTooLarge = 11, false, "MESSAGE_TOO_LARGE";
    /// The requested offset is outside the partition's `[start, end]` range.
    OffsetOutOfRange = 12, false, "OFFSET_OUT_OF_RANGE";
    /// The request did not complete within its timeout; its outcome is unknown.
    RequestTimedOut = 13, true, "REQUEST_TIMED_OUT";
    /// The partition's storage failed (a failed fsync or write); it accepts no writes until the broker restarts and recovers it.
    StorageError = 14, true, "STORAGE_ERROR";
    /// The data directory is out of space; nothing was written. Writes resume when space is freed.
    DiskFull = 15, true, "DISK_FULL";
    /// The partition holds corrupt data below its acknowledged end and refuses writes until an operator acts; reads below the damage work.
    PartitionDamaged = 16, false, "PARTITION_DAMAGED";
    /// The broker is at its connection limit; the connection is closed after this error.
    ConnectionLimit = 17, true, "CONNECTION_LIMIT";
    /// The broker is shutting down; retry against it after it restarts.
    BrokerShuttingDown = 18, true, "BROKER_SHUTTING_DOWN";
    /// A timestamp is outside the accepted range.
    InvalidTimestamp = 19, false, "INVALID_TIMESTAMP";
    /// The connection has too many requests in flight.
    TooManyRequests = 20, true, "TOO_MANY_REQUESTS";
    /// The broker is at a configured resource limit (most topics, most partitions in total); nothing was created.
    /// An operator raises the limit or deletes topics.
    ResourceLimitReached = 21, false, "RESOURCE_LIMIT_REACHED";
    /// The batch's sequence does not follow the last batch the producer wrote to the partition: an earlier batch is
    /// missing (still in flight, or failed). Nothing was written; send the missing batches first, then this one.
    OutOfOrderSequence = 100, true, "OUT_OF_ORDER_SEQUENCE";
    /// A newer epoch of this producer id exists: this producer instance is a zombie and must stop. Nothing was written.
    ProducerFenced = 101, false, "PRODUCER_FENCED";
    /// The broker holds no state for this producer id: never issued, or expired after its expiration time without a
    /// write. Nothing was written since it expired; the producer gets a new id and resends with sequences from 0.
    UnknownProducerId = 102, false, "UNKNOWN_PRODUCER_ID";
    /// The broker has its configured maximum of active producer ids; none was issued. Retry after some expire.
    ProducerIdLimit = 103, true, "PRODUCER_ID_LIMIT";
    /// The batch's producer epoch is newer than any the broker issued for the producer id. Nothing was written.
    InvalidProducerEpoch = 104, false, "INVALID_PRODUCER_EPOCH";
    /// A group id or static instance id is not 1-255 bytes of `[a-zA-Z0-9._-]`.
    GroupIdInvalid = 200, false, "GROUP_ID_INVALID";
    /// The member is not in the group: it never joined, left, or missed its session timeout. It must join again
    /// (with an empty member id) and must not commit for the partitions it held.
    UnknownMember = 201, false, "UNKNOWN_MEMBER";
    /// The request carries an older generation than the group's: a rebalance happened since the member last heard.
    /// A heartbeat tells it the current generation and assignment.
    StaleGeneration = 202, false, "STALE_GENERATION";
    /// The member does not own the partition it commits for (it was never assigned it, or gave it up).
    NotAssigned = 203, false, "NOT_ASSIGNED";
    /// The partition is assigned to the member but its previous owner has not released it yet; retry after the
    /// next heartbeat.
    RebalanceInProgress = 204, true, "REBALANCE_IN_PROGRESS";
    /// The group has the broker's most members per group (`groups.members_per_group_max`).
    GroupFull = 205, false, "GROUP_FULL";
    /// The requested session timeout is outside the broker's bounds (`groups.session_timeout_ms_min..=max`).
    InvalidSessionTimeout = 206, false, "INVALID_SESSION_TIMEOUT";
    /// A newer instance with the same static instance id joined and took over this member's place; this one must
    /// stop consuming.
    FencedInstanceId = 207, false, "FENCED_INSTANCE_ID";
    /// The metadata string of an offset commit exceeds 4096 bytes.
    OffsetMetadataTooLarge = 208, false, "OFFSET_METADATA_TOO_LARGE";
    /// The member asks for another assignor than the group uses, or for one the broker does not know.
    InconsistentAssignor = 209, false, "INCONSISTENT_ASSIGNOR";
    /// A transactional id is not 1-255 bytes of `[a-zA-Z0-9._-]`.
    TransactionalIdInvalid = 300, false, "TRANSACTIONAL_ID_INVALID";
    /// The request names a transaction that is not the producer's open one (an older, already ended transaction, or a
    /// number that skips ahead), or the producer id does not belong to the transactional id. Nothing changed.
    InvalidTxnState = 301, false, "INVALID_TXN_STATE";
    /// The transaction was aborted before it could commit (its timeout passed, the broker restarted before the
    /// commit decision, an operator aborted it, or a newer instance took over): nothing of it is or will be visible.
    /// The producer aborts on its side and runs the work again in a new transaction.
    TransactionAborted = 302, false, "TRANSACTION_ABORTED";
    /// The requested transaction timeout is 0 or above the broker's `transactions.timeout_max_ms`.
    InvalidTransactionTimeout = 303, false, "INVALID_TRANSACTION_TIMEOUT";
    /// The transaction would exceed the broker's limit of staged bytes or partitions per transaction; it is aborted.
    TransactionTooLarge = 304, false, "TRANSACTION_TOO_LARGE";
    /// The transaction is being committed (its decision is written and its records are being appended); retry.
    ConcurrentTransactions = 305, true, "CONCURRENT_TRANSACTIONS";
    /// The broker knows no such transactional id.
    TransactionalIdNotFound = 306, false, "TRANSACTIONAL_ID_NOT_FOUND";
    /// The broker has its maximum of transactional ids (`transactions.ids_max`) or open transactions
    /// (`transactions.open_max`); retry later.
    TooManyTransactions = 307, true, "TOO_MANY_TRANSACTIONS";
}

impl ErrorCode {
    /// The numeric value sent on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_numbers_round_trip_and_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(code.as_u16()), Some(code));
            assert!(names.insert(code.name()), "duplicate name {}", code.name());
        }
        assert_eq!(ErrorCode::from_u16(u16::MAX), None);
    }

    #[test]
    fn decode_errors_map_to_the_codes_clients_act_on() {
        let cases = [
            (ProtocolError::ChecksumMismatch { stored: 1, computed: 2 }, ErrorCode::CorruptMessage),
            (ProtocolError::BatchLengthInvalid { len: u32::MAX, min: 59, max: 10 }, ErrorCode::RecordBatchTooLarge),
            (ProtocolError::BatchLengthInvalid { len: 3, min: 59, max: 10 }, ErrorCode::CorruptMessage),
            (ProtocolError::UnknownApiKey { api_key: 999 }, ErrorCode::UnsupportedVersion),
            (ProtocolError::FrameTooLarge { len: 1 << 40, max: 1 }, ErrorCode::InvalidRequest),
        ];
        for (error, code) in cases {
            assert_eq!(error.error_code(), code, "{error}");
        }
    }

    /// `proto/api.proto` documents the same table for clients in other languages.
    #[test]
    fn proto_error_table_matches_error_code() {
        let proto = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/api.proto"))
            .expect("api.proto is readable");
        let documented: Vec<(u16, String, bool)> = proto
            .lines()
            .filter_map(|line| {
                let mut words = line.strip_prefix("// error ")?.split_whitespace();
                let number = words.next()?.parse().ok()?;
                let name = words.next()?.to_owned();
                Some((number, name, words.next()? == "yes"))
            })
            .collect();
        let expected: Vec<(u16, String, bool)> =
            ErrorCode::ALL.iter().map(|c| (c.as_u16(), c.name().to_owned(), c.is_retriable())).collect();
        assert_eq!(documented, expected);
    }

    /// The numbers are a wire contract: this test fails if one is renumbered.
    #[test]
    fn error_code_numbers_are_stable() {
        let expected: &[(u16, &str, bool)] = &[
            (0, "NONE", false),
            (1, "UNKNOWN", false),
            (2, "INVALID_REQUEST", false),
            (3, "UNSUPPORTED_VERSION", false),
            (4, "CORRUPT_MESSAGE", true),
            (5, "UNKNOWN_TOPIC_OR_PARTITION", true),
            (6, "TOPIC_ALREADY_EXISTS", false),
            (7, "INVALID_TOPIC", false),
            (8, "INVALID_PARTITIONS", false),
            (9, "INVALID_CONFIG", false),
            (10, "RECORD_BATCH_TOO_LARGE", false),
            (11, "MESSAGE_TOO_LARGE", false),
            (12, "OFFSET_OUT_OF_RANGE", false),
            (13, "REQUEST_TIMED_OUT", true),
            (14, "STORAGE_ERROR", true),
            (15, "DISK_FULL", true),
            (16, "PARTITION_DAMAGED", false),
            (17, "CONNECTION_LIMIT", true),
            (18, "BROKER_SHUTTING_DOWN", true),
            (19, "INVALID_TIMESTAMP", false),
            (20, "TOO_MANY_REQUESTS", true),
            (21, "RESOURCE_LIMIT_REACHED", false),
            (100, "OUT_OF_ORDER_SEQUENCE", true),
            (101, "PRODUCER_FENCED", false),
            (102, "UNKNOWN_PRODUCER_ID", false),
            (103, "PRODUCER_ID_LIMIT", true),
            (104, "INVALID_PRODUCER_EPOCH", false),
            (200, "GROUP_ID_INVALID", false),
            (201, "UNKNOWN_MEMBER", false),
            (202, "STALE_GENERATION", false),
            (203, "NOT_ASSIGNED", false),
            (204, "REBALANCE_IN_PROGRESS", true),
            (205, "GROUP_FULL", false),
            (206, "INVALID_SESSION_TIMEOUT", false),
            (207, "FENCED_INSTANCE_ID", false),
            (208, "OFFSET_METADATA_TOO_LARGE", false),
            (209, "INCONSISTENT_ASSIGNOR", false),
            (300, "TRANSACTIONAL_ID_INVALID", false),
            (301, "INVALID_TXN_STATE", false),
            (302, "TRANSACTION_ABORTED", false),
            (303, "INVALID_TRANSACTION_TIMEOUT", false),
            (304, "TRANSACTION_TOO_LARGE", false),
            (305, "CONCURRENT_TRANSACTIONS", true),
            (306, "TRANSACTIONAL_ID_NOT_FOUND", false),
            (307, "TOO_MANY_TRANSACTIONS", true),
        ];
        assert_eq!(ErrorCode::ALL.len(), expected.len());
        for &(value, name, retriable) in expected {
            let code = ErrorCode::from_u16(value).expect("code is defined");
            assert_eq!(code.name(), name);
            assert_eq!(code.is_retriable(), retriable, "{name}");
        }
    }
}
