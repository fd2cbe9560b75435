//! [`ClientError`]: every way a client operation can fail, with whether retrying can help.
//!
//! The error is `Clone` because one failure (a lost connection, a rejected batch) completes many futures at once:
//! every record of a batch gets its own copy. Sources that are not `Clone` (I/O and decode errors) are shared
//! behind an `Arc`.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::{ApiKey, ErrorCode, ProtocolError};

/// Why a client operation failed.
///
/// [`ClientError::is_retriable`] says whether the same operation may succeed if tried again after a backoff;
/// the producer does that by itself up to its delivery timeout, so a producer error it returns is final.
///
/// ```
/// use ferry_client::ClientError;
/// use ferry_protocol::ErrorCode;
///
/// let error = ClientError::Broker { code: ErrorCode::StorageError, message: "fsync failed".into() };
/// assert!(error.is_retriable());
/// assert_eq!(error.error_code(), Some(ErrorCode::StorageError));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The broker answered with an error code from the stable table (see [`ErrorCode`]).
    #[error("broker error {code}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Broker {
        /// The code; [`ErrorCode::is_retriable`] says whether a retry may succeed.
        code: ErrorCode,
        /// The broker's human-readable detail; may be empty.
        message: String,
    },
    /// The broker answered with an error code this build does not know (a newer broker); treated as not retriable.
    #[error("broker error with unknown code {code}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    UnknownErrorCode {
        /// The number on the wire.
        code: u32,
        /// The broker's human-readable detail; may be empty.
        message: String,
    },
    /// No TCP connection could be opened to the broker (refused, unreachable, name not resolved).
    #[error("cannot connect to {addr}")]
    Connect {
        /// The address as configured.
        addr: String,
        /// What the operating system reported.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The connection (TCP connect plus version negotiation) did not complete within the connect timeout.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The address as configured.
        addr: String,
        /// The connect timeout in force.
        timeout: Duration,
    },
    /// The connection broke while the request was queued or in flight.
    /// The outcome is unknown: a produce request may or may not have been appended.
    #[error("connection to {addr} lost; the outcome of the request is unknown")]
    ConnectionLost {
        /// The address as configured.
        addr: String,
    },
    /// No response arrived within the request timeout; the connection is closed, and the outcome is unknown.
    #[error("request timed out after {timeout:?}; its outcome is unknown")]
    RequestTimeout {
        /// The timeout that expired.
        timeout: Duration,
    },
    /// A record was not acknowledged within the producer's delivery timeout (retries included).
    /// It may or may not have been appended, but the producer gives up on it: it is reported, never dropped silently.
    #[error("record not acknowledged within the delivery timeout of {timeout:?}")]
    DeliveryTimeout {
        /// The delivery timeout in force.
        timeout: Duration,
        /// The last retriable error seen before giving up, if any.
        #[source]
        last_error: Option<Box<ClientError>>,
    },
    /// Bytes from the broker could not be decoded, or a request could not be encoded.
    #[error("protocol error")]
    Protocol(#[source] Arc<ProtocolError>),
    /// A fetched record batch failed its checksum or structure check. The consumer does not skip it:
    /// its position stays before the batch, so the next poll reports the same error.
    #[error("corrupt record batch in {topic} partition {partition} at offset {offset}")]
    CorruptBatch {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The fetch position at which the corrupt batch was returned.
        offset: u64,
        /// What failed: the checksum, the length, a record.
        #[source]
        source: Arc<ProtocolError>,
    },
    /// The consumer's position is outside the partition's stored range and the reset policy is
    /// [`crate::OffsetReset::Error`].
    #[error("offset {offset} is out of range for {topic} partition {partition}")]
    OffsetOutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The position that was out of range.
        offset: u64,
    },
    /// A consumer partition has no position: it was assigned with the reset policy `Error` and never seeked.
    #[error("{topic} partition {partition} has no position; seek before polling")]
    NoPosition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// An operation named a partition that is not assigned to this consumer.
    #[error("{topic} partition {partition} is not assigned to this consumer")]
    NotAssigned {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// A record is larger than the largest batch, or than the whole buffer, so it can never be sent.
    #[error("record of {size} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// The record's size (an upper bound of its encoded size).
        size: usize,
        /// The limit it exceeds.
        max: usize,
    },
    /// A record named a partition the topic does not have.
    #[error("topic {topic} has {partition_count} partitions; partition {partition} does not exist")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The requested partition.
        partition: u32,
        /// The topic's partition count.
        partition_count: u32,
    },
    /// The broker does not speak the version of an api this client needs.
    #[error("the broker does not support api {api} at version {version}")]
    UnsupportedApi {
        /// The api.
        api: ApiKey,
        /// The version this client speaks.
        version: u16,
    },
    /// The broker answered with a response of another api, or left out a requested item.
    #[error("unexpected response to a {api} request: {reason}")]
    UnexpectedResponse {
        /// The api of the request.
        api: ApiKey,
        /// What was wrong.
        reason: &'static str,
    },
    /// A configuration value is out of range; nothing was started.
    #[error("invalid configuration: {field} {reason}")]
    InvalidConfig {
        /// The field, as named in the config struct.
        field: &'static str,
        /// Why the value is invalid.
        reason: String,
    },
    /// A topic name breaks the naming rule (see [`ferry_protocol::TopicName`]).
    #[error("invalid topic name {name:?}")]
    InvalidTopic {
        /// The name as given (truncated to 300 bytes).
        name: String,
        /// Which rule it breaks.
        #[source]
        source: Arc<ProtocolError>,
    },
    /// A [`crate::TransactionalProducer`] method was called in the wrong state: `send` with no transaction open,
    /// `begin` while one is open. Nothing was sent.
    #[error("invalid transaction state: {reason}")]
    TransactionState {
        /// What was wrong.
        reason: &'static str,
    },
    /// The client was closed (or dropped) before the operation completed.
    #[error("the client is closed")]
    Closed,
}

impl ClientError {
    /// Whether the same operation may succeed if tried again after a backoff.
    ///
    /// True for retriable broker codes ([`ErrorCode::is_retriable`]), connection failures, lost connections
    /// and request timeouts; false for everything else, including [`ClientError::DeliveryTimeout`]
    /// (the producer already retried).
    ///
    /// ```
    /// # use ferry_client::ClientError;
    /// assert!(ClientError::ConnectionLost { addr: "127.0.0.1:7070".into() }.is_retriable());
    /// assert!(!ClientError::Closed.is_retriable());
    /// ```
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Broker { code, .. } => code.is_retriable(),
            ClientError::Connect { .. }
            | ClientError::ConnectTimeout { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::RequestTimeout { .. } => true,
            ClientError::UnknownErrorCode { .. }
            | ClientError::DeliveryTimeout { .. }
            | ClientError::Protocol(_)
            | ClientError::CorruptBatch { .. }
            | ClientError::OffsetOutOfRange { .. }
            | ClientError::NoPosition { .. }
            | ClientError::NotAssigned { .. }
            | ClientError::RecordTooLarge { .. }
            | ClientError::UnknownPartition { .. }
            | ClientError::UnsupportedApi { .. }
            | ClientError::UnexpectedResponse { .. }
            | ClientError::InvalidConfig { .. }
            | ClientError::InvalidTopic { .. }
            | ClientError::TransactionState { .. }
            | ClientError::Closed => false,
        }
    }

    /// The broker's error code, when the error came from the broker.
    ///
    /// ```
    /// # use ferry_client::ClientError;
    /// assert_eq!(ClientError::Closed.error_code(), None);
    /// ```
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether a newer instance of a transactional producer (same transactional id) took over: `PRODUCER_FENCED`.
    ///
    /// Fatal: the fenced [`crate::TransactionalProducer`] must stop; every later call fails with this error without
    /// contacting the broker.
    ///
    /// ```
    /// # use ferry_client::ClientError;
    /// # use ferry_protocol::ErrorCode;
    /// assert!(ClientError::Broker { code: ErrorCode::ProducerFenced, message: String::new() }.is_fenced());
    /// ```
    pub fn is_fenced(&self) -> bool {
        self.error_code() == Some(ErrorCode::ProducerFenced)
    }

    /// Whether the broker aborted (or no longer knows) the transaction: `TRANSACTION_ABORTED` or
    /// `INVALID_TXN_STATE`.
    ///
    /// Nothing of the transaction is visible: call [`crate::TransactionalProducer::abort`] and run the work again in
    /// a new transaction (a consumer seeks back to its last committed offsets first).
    ///
    /// ```
    /// # use ferry_client::ClientError;
    /// # use ferry_protocol::ErrorCode;
    /// assert!(ClientError::Broker { code: ErrorCode::TransactionAborted, message: String::new() }.is_transaction_aborted());
    /// assert!(!ClientError::Closed.is_transaction_aborted());
    /// ```
    pub fn is_transaction_aborted(&self) -> bool {
        matches!(self.error_code(), Some(ErrorCode::TransactionAborted | ErrorCode::InvalidTxnState))
    }

    /// Whether the consumer group moved on since the offsets were consumed (a rebalance): `STALE_GENERATION`,
    /// `UNKNOWN_MEMBER`, `NOT_ASSIGNED` or `REBALANCE_IN_PROGRESS` from [`crate::TransactionalProducer::send_offsets`]
    /// or from the commit of a transaction carrying offsets.
    ///
    /// The partitions may belong to another member now: call [`crate::TransactionalProducer::abort`], seek back to
    /// the last committed offsets and poll again (the poll rejoins the group), then redo the work.
    ///
    /// ```
    /// # use ferry_client::ClientError;
    /// # use ferry_protocol::ErrorCode;
    /// assert!(ClientError::Broker { code: ErrorCode::StaleGeneration, message: String::new() }.is_group_changed());
    /// assert!(!ClientError::Closed.is_group_changed());
    /// ```
    pub fn is_group_changed(&self) -> bool {
        matches!(
            self.error_code(),
            Some(
                ErrorCode::StaleGeneration
                    | ErrorCode::UnknownMember
                    | ErrorCode::NotAssigned
                    | ErrorCode::RebalanceInProgress
            )
        )
    }

    /// The error for a non-zero `error_code` field of a response, with its message.
    pub(crate) fn from_wire(error_code: u32, message: &str) -> ClientError {
        match ferry_protocol::messages::error_code_from_wire(error_code) {
            Some(code) => ClientError::Broker { code, message: message.to_owned() },
            None => ClientError::UnknownErrorCode { code: error_code, message: message.to_owned() },
        }
    }

    /// `Ok(())` for a zero (NONE) `error_code` field, the matching error otherwise.
    pub(crate) fn check_wire(error_code: u32, message: &str) -> Result<(), ClientError> {
        if error_code == 0 { Ok(()) } else { Err(ClientError::from_wire(error_code, message)) }
    }

    /// Wraps a protocol error.
    pub(crate) fn protocol(error: ProtocolError) -> ClientError {
        ClientError::Protocol(Arc::new(error))
    }

    /// Validates a topic name given by the application.
    pub(crate) fn topic_name(name: &str) -> Result<ferry_protocol::TopicName, ClientError> {
        ferry_protocol::TopicName::new(name.to_owned()).map_err(|source| ClientError::InvalidTopic {
            name: name.chars().take(300).collect(),
            source: Arc::new(source),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retriable_follows_the_error_code_table_and_connection_failures() {
        for &code in ErrorCode::ALL {
            let error = ClientError::Broker { code, message: String::new() };
            assert_eq!(error.is_retriable(), code.is_retriable(), "{code}");
        }
        assert!(ClientError::RequestTimeout { timeout: Duration::from_secs(1) }.is_retriable());
        assert!(!ClientError::UnknownErrorCode { code: 999, message: String::new() }.is_retriable());
        let delivery_timeout = ClientError::DeliveryTimeout {
            timeout: Duration::from_secs(1),
            last_error: Some(Box::new(ClientError::ConnectionLost { addr: "a".into() })),
        };
        assert!(!delivery_timeout.is_retriable());
    }

    #[test]
    fn wire_codes_map_to_known_and_unknown_variants() {
        assert!(ClientError::check_wire(0, "").is_ok());
        match ClientError::from_wire(12, "past the end") {
            ClientError::Broker { code: ErrorCode::OffsetOutOfRange, message } => assert_eq!(message, "past the end"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(ClientError::from_wire(60_000, ""), ClientError::UnknownErrorCode { code: 60_000, .. }));
    }

    #[test]
    fn messages_are_lowercase_and_carry_the_broker_detail() {
        let error = ClientError::Broker { code: ErrorCode::TopicAlreadyExists, message: "orders".into() };
        assert_eq!(error.to_string(), "broker error TOPIC_ALREADY_EXISTS: orders");
        let error = ClientError::Broker { code: ErrorCode::DiskFull, message: String::new() };
        assert_eq!(error.to_string(), "broker error DISK_FULL");
    }
}
