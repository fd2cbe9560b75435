use std::sync::Arc;

use ferry_log::{Damage, LogError};
use ferry_protocol::{ErrorCode, ProtocolError};

use super::*;

fn check(error: HandlerError, code: ErrorCode) {
    assert_eq!(error_code(&error), code, "{error:?}");
}

#[test]
fn handler_errors_map_to_the_documented_codes() {
    check(
        HandlerError::Protocol(ProtocolError::ChecksumMismatch { stored: 1, computed: 2 }),
        ErrorCode::CorruptMessage,
    );
    check(HandlerError::Protocol(ProtocolError::InvalidTopicName { reason: "empty" }), ErrorCode::InvalidTopic);
    check(HandlerError::UnknownTopic, ErrorCode::UnknownTopicOrPartition);
    check(HandlerError::UnknownPartition { partition: 9, count: 1 }, ErrorCode::UnknownTopicOrPartition);
    check(HandlerError::TopicDeleted, ErrorCode::UnknownTopicOrPartition);
    check(HandlerError::BatchTooLarge { len: 2, max: 1 }, ErrorCode::RecordBatchTooLarge);
    check(HandlerError::MessageTooLarge { len: 2, max: 1 }, ErrorCode::MessageTooLarge);
    check(HandlerError::TransactionalBatch, ErrorCode::InvalidRequest);
    check(HandlerError::ControlBatch, ErrorCode::InvalidRequest);
    check(HandlerError::IdempotentBatchNotAlone, ErrorCode::InvalidRequest);
    check(HandlerError::TimedOut { timeout: std::time::Duration::from_secs(1) }, ErrorCode::RequestTimedOut);
    check(HandlerError::ShuttingDown, ErrorCode::BrokerShuttingDown);
    check(HandlerError::Partitions(PartitionsError::TopicExists { name: "a".into() }), ErrorCode::TopicAlreadyExists);
    check(HandlerError::Partitions(PartitionsError::TopicsLimit { max: 1 }), ErrorCode::ResourceLimitReached);
    check(
        HandlerError::Partitions(PartitionsError::InvalidPartitionCount { count: 9, max: 1 }),
        ErrorCode::InvalidPartitions,
    );
}

#[test]
fn transaction_errors_map_to_the_documented_codes() {
    use crate::transactions::{AbortReason, TxnError};
    let txn = |error| HandlerError::Txn(error);
    check(txn(TxnError::InvalidId), ErrorCode::TransactionalIdInvalid);
    check(txn(TxnError::InvalidTimeout { requested_ms: 9, max_ms: 1 }), ErrorCode::InvalidTransactionTimeout);
    check(txn(TxnError::UnknownId), ErrorCode::TransactionalIdNotFound);
    check(txn(TxnError::Fenced { producer_id: 1, epoch: 2 }), ErrorCode::ProducerFenced);
    check(txn(TxnError::InvalidEpoch { current: 1, received: 2 }), ErrorCode::InvalidProducerEpoch);
    check(txn(TxnError::InvalidState("x".into())), ErrorCode::InvalidTxnState);
    check(txn(TxnError::Aborted { transaction: 3, reason: AbortReason::Timeout }), ErrorCode::TransactionAborted);
    check(txn(TxnError::TooLarge("x".into())), ErrorCode::TransactionTooLarge);
    check(txn(TxnError::Committing { transaction: 3 }), ErrorCode::ConcurrentTransactions);
    check(txn(TxnError::TooMany { what: "x", max: 1, setting: "y" }), ErrorCode::TooManyTransactions);
    check(txn(TxnError::Apply(LogError::Closed)), ErrorCode::StorageError);
}

#[test]
fn log_errors_map_to_storage_codes() {
    let io = || std::io::Error::other("boom");
    check(HandlerError::Log(LogError::DiskFull { path: "/x".into(), source: io() }), ErrorCode::DiskFull);
    let damage = Damage { segment_base: 0, position: 0, offset: 0, reason: "bad".into() };
    check(HandlerError::Log(LogError::Damaged { damage }), ErrorCode::PartitionDamaged);
    let cause = Arc::new(LogError::SyncFailed { path: "/x".into(), source: io() });
    check(HandlerError::Log(LogError::Failed { cause }), ErrorCode::StorageError);
    check(HandlerError::Log(LogError::SyncFailed { path: "/x".into(), source: io() }), ErrorCode::StorageError);
    check(HandlerError::Log(LogError::Closed), ErrorCode::BrokerShuttingDown);
    check(
        HandlerError::Log(LogError::OffsetOutOfRange { requested: 9, start: 0, end: 1 }),
        ErrorCode::OffsetOutOfRange,
    );
}

#[test]
fn error_messages_are_cut_at_a_character_boundary() {
    let error = HandlerError::Partitions(PartitionsError::InvalidConfig(crate::topic::TopicConfigError::UnknownKey {
        key: "é".repeat(ERROR_MESSAGE_BYTES_MAX),
    }));
    let message = error_message(&error);
    assert!(message.len() <= ERROR_MESSAGE_BYTES_MAX, "{}", message.len());
    assert!(message.len() > ERROR_MESSAGE_BYTES_MAX - 4, "cut close to the limit: {}", message.len());
}
