//! Request handlers: one file per request kind, translating between the wire (prost types) and the domain.
//!
//! prost types stop here: below the handlers, the registry ([`crate::partitions`]), the partition log and the
//! metadata store speak in their own types.
//! A handler never fails as a whole: every per-item problem becomes that item's error code in the api's response,
//! and a request-wide problem the response's top-level `error_code`. The connection stays open either way.
//! [`HandlerError`] is what handlers fail items with, and [`error_code`] is the one mapping from it to the wire.
//!
//! Files:
//! - `api_versions`: version negotiation and the limits the broker enforces.
//! - `create_topics`, `delete_topics`, `list_topics`, `describe_topics`: topic administration.
//! - `produce`: validation, the idempotent producers' checks, submission to the appenders in arrival order,
//!   acknowledgements.
//! - `init_producer_id`: issues idempotent producer ids.
//! - `fetch`: long-poll reads of whole stored batches.
//! - `list_offsets`: earliest, latest and by-timestamp lookups.
//! - `groups`: consumer-group membership (join, heartbeat, leave) and visibility (list, describe).
//! - `group_offsets`: committed offsets (commit, fetch).
//! - `transactions`: TxnProduce, TxnOffsetCommit, EndTxn, ListTxns, AbortTxn (the coordinator is
//!   `crate::transactions`); `init_producer_id` hands transactional ids to it.

pub(crate) mod api_versions;
mod create_topics;
mod delete_topics;
mod describe_broker;
mod describe_producers;
mod describe_topics;
pub(crate) mod fetch;
mod group_offsets;
mod groups;
mod init_producer_id;
mod list_offsets;
mod list_topics;
pub(crate) mod produce;
mod transactions;

use std::sync::Arc;
use std::time::Duration;

use ferry_log::{LogError, ProducerError};
use ferry_protocol::messages::{
    AbortTxnResponse, ApiVersionsResponse, CreateTopicsResponse, DeleteTopicsResponse, DescribeBrokerResponse,
    DescribeGroupsResponse, DescribeProducersResponse, DescribeTopicsResponse, EndTxnResponse, FetchResponse,
    HeartbeatResponse, InitProducerIdResponse, JoinGroupResponse, LeaveGroupResponse, ListGroupsResponse,
    ListOffsetsResponse, ListTopicsResponse, ListTxnsResponse, OffsetCommitResponse, OffsetFetchResponse,
    ProduceResponse, TxnOffsetCommitResponse, TxnProduceResponse, error_code_to_wire,
};
use ferry_protocol::{ApiKey, ErrorCode, ProtocolError, Request, Response};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::connection::ResponseRoom;
use crate::groups::GroupError;
use crate::meta::MetaError;
use crate::partitions::PartitionsError;
use crate::producers::{AdmitError, IssueError};
use crate::server::ServerState;
use crate::transactions::TxnError;

pub(crate) use group_offsets::epoch_ms;
pub(crate) use produce::ProduceTurn;

/// Most partitions (or topics, for the admin apis) one request may name.
/// A request naming more gets `INVALID_REQUEST` as its top-level error and nothing is done; the bound keeps each
/// response (one entry per item) well inside a frame and the work of one request bounded.
pub const REQUEST_ITEMS_MAX: usize = 10_000;

/// Longest `error_message` a response carries, in bytes; longer texts (which may quote client input) are cut.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 512;

/// Why one item of a request (a topic, a partition) failed. Mapped to the wire by [`error_code`].
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The item does not decode or validate (topic name, partition count, batch checksum, offset spec, ...).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// No active topic has this name.
    #[error("unknown topic")]
    UnknownTopic,
    /// The topic has no such partition.
    #[error("unknown partition {partition}: the topic has {count} partitions")]
    UnknownPartition {
        /// The requested partition.
        partition: u32,
        /// The topic's partition count.
        count: u32,
    },
    /// The topic was deleted while the request was being handled.
    #[error("the topic was deleted")]
    TopicDeleted,
    /// A topic administration step failed.
    #[error(transparent)]
    Partitions(#[from] PartitionsError),
    /// The partition log failed the read or the append.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A record batch is larger than the broker's `log.batch_bytes_max`.
    #[error("record batch of {len} bytes exceeds the broker's batch limit of {max}")]
    BatchTooLarge {
        /// The batch length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A record batch is larger than the topic's `max.message.bytes`.
    #[error("record batch of {len} bytes exceeds the topic's max.message.bytes of {max}")]
    MessageTooLarge {
        /// The batch length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A produce names a partition without any record batch.
    #[error("no record batches for the partition")]
    NoBatches,
    /// A Produce carries a batch marked transactional: those are staged with TxnProduce and appended at commit.
    #[error("a transactional batch must be sent with TxnProduce, inside a transaction")]
    TransactionalBatch,
    /// A batch is marked as a control batch: only the broker writes those.
    #[error("control batches are written by the broker only")]
    ControlBatch,
    /// A TxnProduce batch lacks the staging fields (producer id, epoch and a staging sequence as base sequence).
    #[error("a TxnProduce batch must carry the request's producer id and epoch and its staging sequence: {reason}")]
    InvalidStagedBatch {
        /// What is wrong.
        reason: &'static str,
    },
    /// The transaction coordinator refused the request.
    #[error(transparent)]
    Txn(#[from] crate::transactions::TxnError),
    /// A batch with a producer id shares its partition's payload with other batches.
    #[error("a batch with a producer id must be the only batch of its partition in a produce request")]
    IdempotentBatchNotAlone,
    /// The registry refused the batch's producer id or epoch.
    #[error(transparent)]
    Admit(#[from] AdmitError),
    /// No producer id could be issued.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The item did not complete within the request's timeout; its outcome is unknown.
    #[error("not done within {timeout:?}")]
    TimedOut {
        /// The timeout in force.
        timeout: Duration,
    },
    /// The broker is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// The same topic appears twice in one CreateTopics request.
    #[error("the topic appears more than once in the request")]
    DuplicateTopic,
    /// The group coordinator refused the operation.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// The metadata store failed (reading or writing committed offsets).
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// The one mapping from handler errors to wire error codes.
pub fn error_code(error: &HandlerError) -> ErrorCode {
    match error {
        HandlerError::Protocol(error) => error.error_code(),
        HandlerError::UnknownTopic | HandlerError::UnknownPartition { .. } | HandlerError::TopicDeleted => {
            ErrorCode::UnknownTopicOrPartition
        }
        HandlerError::Partitions(error) => partitions_error_code(error),
        HandlerError::Log(error) => log_error_code(error),
        HandlerError::BatchTooLarge { .. } => ErrorCode::RecordBatchTooLarge,
        HandlerError::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
        HandlerError::NoBatches
        | HandlerError::TransactionalBatch
        | HandlerError::ControlBatch
        | HandlerError::InvalidStagedBatch { .. }
        | HandlerError::IdempotentBatchNotAlone
        | HandlerError::DuplicateTopic => ErrorCode::InvalidRequest,
        HandlerError::Admit(AdmitError::Unknown { .. }) => ErrorCode::UnknownProducerId,
        HandlerError::Admit(AdmitError::Fenced { .. }) => ErrorCode::ProducerFenced,
        HandlerError::Admit(AdmitError::InvalidEpoch { .. }) => ErrorCode::InvalidProducerEpoch,
        HandlerError::Issue(IssueError::Limit { .. }) => ErrorCode::ProducerIdLimit,
        HandlerError::Issue(IssueError::Meta(_)) => ErrorCode::StorageError,
        HandlerError::TimedOut { .. } => ErrorCode::RequestTimedOut,
        HandlerError::ShuttingDown => ErrorCode::BrokerShuttingDown,
        HandlerError::Group(error) => group_error_code(error),
        HandlerError::Txn(error) => txn_error_code(error),
        HandlerError::Meta(MetaError::Corrupt { .. } | MetaError::UnsupportedFormat { .. }) => ErrorCode::Unknown,
        HandlerError::Meta(_) => ErrorCode::StorageError,
    }
}

fn txn_error_code(error: &TxnError) -> ErrorCode {
    match error {
        TxnError::InvalidId => ErrorCode::TransactionalIdInvalid,
        TxnError::InvalidTimeout { .. } => ErrorCode::InvalidTransactionTimeout,
        TxnError::UnknownId => ErrorCode::TransactionalIdNotFound,
        TxnError::Fenced { .. } => ErrorCode::ProducerFenced,
        TxnError::InvalidEpoch { .. } => ErrorCode::InvalidProducerEpoch,
        TxnError::InvalidState(_) => ErrorCode::InvalidTxnState,
        TxnError::Aborted { .. } => ErrorCode::TransactionAborted,
        TxnError::TooLarge(_) => ErrorCode::TransactionTooLarge,
        TxnError::Committing { .. } => ErrorCode::ConcurrentTransactions,
        TxnError::TooMany { .. } => ErrorCode::TooManyTransactions,
        TxnError::UnknownPartition { .. } => ErrorCode::UnknownTopicOrPartition,
        TxnError::Group(error) => group_error_code(error),
        TxnError::Issue(IssueError::Limit { .. }) => ErrorCode::ProducerIdLimit,
        TxnError::Issue(IssueError::Meta(_)) | TxnError::Meta(_) | TxnError::Apply(_) => ErrorCode::StorageError,
        TxnError::CorruptStaged { .. } => ErrorCode::Unknown,
    }
}

fn group_error_code(error: &GroupError) -> ErrorCode {
    match error {
        GroupError::InvalidId { .. } => ErrorCode::GroupIdInvalid,
        GroupError::UnknownMember { .. } | GroupError::GroupNotEmpty { .. } => ErrorCode::UnknownMember,
        GroupError::FencedInstance { .. } => ErrorCode::FencedInstanceId,
        GroupError::StaleGeneration { .. } => ErrorCode::StaleGeneration,
        GroupError::NotAssigned { .. } => ErrorCode::NotAssigned,
        GroupError::RebalanceInProgress { .. } => ErrorCode::RebalanceInProgress,
        GroupError::GroupFull { .. } => ErrorCode::GroupFull,
        GroupError::GroupsLimit { .. } => ErrorCode::ResourceLimitReached,
        GroupError::InvalidSessionTimeout { .. } => ErrorCode::InvalidSessionTimeout,
        GroupError::InconsistentAssignor { .. } => ErrorCode::InconsistentAssignor,
        GroupError::MetadataTooLarge { .. } => ErrorCode::OffsetMetadataTooLarge,
        GroupError::TooManyTopics => ErrorCode::InvalidRequest,
    }
}

fn partitions_error_code(error: &PartitionsError) -> ErrorCode {
    match error {
        PartitionsError::TopicExists { .. } => ErrorCode::TopicAlreadyExists,
        PartitionsError::UnknownTopic { .. } => ErrorCode::UnknownTopicOrPartition,
        PartitionsError::InvalidPartitionCount { .. } => ErrorCode::InvalidPartitions,
        PartitionsError::InvalidConfig(_)
        | PartitionsError::BatchBytesAboveBroker { .. }
        | PartitionsError::InvalidLogConfig(_) => ErrorCode::InvalidConfig,
        PartitionsError::TopicsLimit { .. } | PartitionsError::PartitionsLimit { .. } => {
            ErrorCode::ResourceLimitReached
        }
        PartitionsError::ShuttingDown => ErrorCode::BrokerShuttingDown,
        PartitionsError::Meta(MetaError::Corrupt { .. } | MetaError::UnsupportedFormat { .. }) => ErrorCode::Unknown,
        PartitionsError::Meta(_) | PartitionsError::MetaBehindLogs { .. } | PartitionsError::Io { .. } => {
            ErrorCode::StorageError
        }
        PartitionsError::Log { source, .. } => log_error_code(source),
    }
}

fn log_error_code(error: &LogError) -> ErrorCode {
    match error {
        LogError::DiskFull { .. } => ErrorCode::DiskFull,
        LogError::Damaged { .. } | LogError::Corrupt { .. } | LogError::Inconsistent { .. } => {
            ErrorCode::PartitionDamaged
        }
        LogError::Failed { .. } | LogError::SyncFailed { .. } | LogError::Io { .. } | LogError::OffsetOverflow => {
            ErrorCode::StorageError
        }
        LogError::Closed | LogError::AppenderGone => ErrorCode::BrokerShuttingDown,
        LogError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        LogError::BatchTooLarge { .. } => ErrorCode::RecordBatchTooLarge,
        LogError::InvalidConfig { .. } => ErrorCode::Unknown,
        LogError::DeadlinePassed => ErrorCode::RequestTimedOut,
        LogError::Producer(ProducerError::OutOfOrder { .. }) => ErrorCode::OutOfOrderSequence,
        LogError::Producer(ProducerError::Fenced { .. }) => ErrorCode::ProducerFenced,
        LogError::Producer(ProducerError::TooManyProducers { .. }) => ErrorCode::ProducerIdLimit,
        LogError::Producer(ProducerError::InvalidFields { .. }) => ErrorCode::InvalidRequest,
        LogError::Dedup(dedup) if dedup.is_invalid_request() => ErrorCode::InvalidRequest,
        LogError::Dedup(_) | LogError::DedupIndex { .. } => ErrorCode::StorageError,
    }
}

/// The error code and message of one failed item, for its entry in a response. Server-side failures are logged.
pub(crate) fn item_error(error: &HandlerError) -> (u32, String) {
    let code = error_code(error);
    if matches!(code, ErrorCode::Unknown | ErrorCode::StorageError | ErrorCode::PartitionDamaged) {
        tracing::warn!(error = %crate::partitions::error_chain(error), code = %code, "request item failed");
    }
    (error_code_to_wire(code), error_message(error))
}

/// The human-readable text of an error and its sources, cut to [`ERROR_MESSAGE_BYTES_MAX`].
pub(crate) fn error_message(error: &dyn std::error::Error) -> String {
    let mut text = crate::partitions::error_chain(error);
    if text.len() > ERROR_MESSAGE_BYTES_MAX {
        let mut cut = ERROR_MESSAGE_BYTES_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// What handling one request produced: the response to send (none for acks=none produce), the outcome for the
/// requests metric (the top-level code, else the first item's error, else NONE), and the response-queue room the
/// handler reserved before building the response (fetches), which the response then uses.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub response: Option<Response>,
    pub result: ErrorCode,
    pub reserved: Option<ResponseRoom>,
}

/// Per-request context from the connection.
#[derive(Debug)]
pub(crate) struct RequestContext {
    /// Cancelled when the connection is closing or the broker shutting down: long polls answer at once.
    pub cancel: CancellationToken,
    /// For produce requests: the request's place in the connection's submission order.
    pub turn: Option<ProduceTurn>,
    /// The connection's response-queue room (one permit per byte): a fetch reserves its budget here before it
    /// reads. Closed when the connection's writer has stopped.
    pub response_room: Arc<Semaphore>,
}

/// Handles one decoded request.
pub(crate) async fn handle(state: &ServerState, request: Request, context: RequestContext) -> Outcome {
    let api = request.api_key();
    let mut reserved = None;
    let response: Option<Response> = match request {
        Request::ApiVersions(request) => Some(api_versions::handle(state, &request).into()),
        Request::CreateTopics(request) => Some(create_topics::handle(state, request).await.into()),
        Request::DeleteTopics(request) => Some(delete_topics::handle(state, request).await.into()),
        Request::ListTopics(_) => Some(list_topics::handle(state).into()),
        Request::DescribeTopics(request) => Some(describe_topics::handle(state, request).into()),
        Request::Produce(request) => {
            let turn = context.turn.unwrap_or_else(ProduceTurn::first);
            produce::handle(state, request, turn).await.map(Response::from)
        }
        Request::Fetch(request) => {
            let (response, room) = fetch::handle(state, request, &context.cancel, &context.response_room).await;
            reserved = room;
            Some(response.into())
        }
        Request::ListOffsets(request) => Some(list_offsets::handle(state, request).await.into()),
        Request::InitProducerId(request) => Some(init_producer_id::handle(state, request).await.into()),
        Request::DescribeBroker(_) => Some(describe_broker::handle(state).await.into()),
        Request::DescribeProducers(request) => Some(describe_producers::handle(state, request).await.into()),
        Request::JoinGroup(request) => Some(groups::join(state, request).into()),
        Request::Heartbeat(request) => Some(groups::heartbeat(state, request).into()),
        Request::LeaveGroup(request) => Some(groups::leave(state, request).into()),
        Request::OffsetCommit(request) => Some(group_offsets::commit(state, request).await.into()),
        Request::OffsetFetch(request) => Some(group_offsets::fetch(state, request).await.into()),
        Request::ListGroups(_) => Some(groups::list(state).await.into()),
        Request::DescribeGroups(request) => Some(groups::describe(state, request).into()),
        Request::TxnProduce(request) => Some(transactions::produce(state, request).await.into()),
        Request::TxnOffsetCommit(request) => Some(transactions::offset_commit(state, request).await.into()),
        Request::EndTxn(request) => Some(transactions::end(state, request).await.into()),
        Request::ListTxns(_) => Some(transactions::list(state).into()),
        Request::AbortTxn(request) => Some(transactions::abort(state, request).await.into()),
    };
    let result = match &response {
        Some(response) => result_code(response),
        // acks=none: the handler's outcome is not sent; produce::handle logs failures.
        None => ErrorCode::None,
    };
    debug_assert!(response.as_ref().is_none_or(|response| response.api_key() == Some(api)));
    Outcome { response, result, reserved }
}

/// An empty response of `api` with `code` as its top-level error: for request-wide failures.
pub(crate) fn request_error(api: ApiKey, code: ErrorCode) -> Response {
    let error_code = error_code_to_wire(code);
    match api {
        ApiKey::ApiVersions => ApiVersionsResponse { error_code, ..Default::default() }.into(),
        ApiKey::CreateTopics => CreateTopicsResponse { error_code, ..Default::default() }.into(),
        ApiKey::DeleteTopics => DeleteTopicsResponse { error_code, ..Default::default() }.into(),
        ApiKey::ListTopics => ListTopicsResponse { error_code, ..Default::default() }.into(),
        ApiKey::DescribeTopics => DescribeTopicsResponse { error_code, ..Default::default() }.into(),
        ApiKey::Produce => ProduceResponse { error_code, ..Default::default() }.into(),
        ApiKey::Fetch => FetchResponse { error_code, ..Default::default() }.into(),
        ApiKey::ListOffsets => ListOffsetsResponse { error_code, ..Default::default() }.into(),
        ApiKey::InitProducerId => {
            InitProducerIdResponse { error_code, producer_id: -1, producer_epoch: -1, ..Default::default() }.into()
        }
        ApiKey::DescribeBroker => DescribeBrokerResponse { error_code, ..Default::default() }.into(),
        ApiKey::DescribeProducers => DescribeProducersResponse { error_code, ..Default::default() }.into(),
        ApiKey::JoinGroup => JoinGroupResponse { error_code, ..Default::default() }.into(),
        ApiKey::Heartbeat => HeartbeatResponse { error_code, ..Default::default() }.into(),
        ApiKey::LeaveGroup => LeaveGroupResponse { error_code, ..Default::default() }.into(),
        ApiKey::OffsetCommit => OffsetCommitResponse { error_code, ..Default::default() }.into(),
        ApiKey::OffsetFetch => OffsetFetchResponse { error_code, ..Default::default() }.into(),
        ApiKey::ListGroups => ListGroupsResponse { error_code, ..Default::default() }.into(),
        ApiKey::DescribeGroups => DescribeGroupsResponse { error_code, ..Default::default() }.into(),
        ApiKey::TxnProduce => TxnProduceResponse { error_code, ..Default::default() }.into(),
        ApiKey::TxnOffsetCommit => TxnOffsetCommitResponse { error_code, ..Default::default() }.into(),
        ApiKey::EndTxn => EndTxnResponse { error_code, ..Default::default() }.into(),
        ApiKey::ListTxns => ListTxnsResponse { error_code, ..Default::default() }.into(),
        ApiKey::AbortTxn => AbortTxnResponse { error_code, ..Default::default() }.into(),
    }
}

/// The outcome label of a response: its top-level code, else its first item error, else NONE.
fn result_code(response: &Response) -> ErrorCode {
    let top = response.error_code();
    let first_item = match response {
        Response::CreateTopics(response) => response.topics.iter().map(|topic| topic.error_code).find(|&c| c != 0),
        Response::DeleteTopics(response) => response.topics.iter().map(|topic| topic.error_code).find(|&c| c != 0),
        Response::DescribeTopics(response) => response.topics.iter().map(|topic| topic.error_code).find(|&c| c != 0),
        Response::Produce(response) => response
            .topics
            .iter()
            .flat_map(|topic| topic.partitions.iter().map(|partition| partition.error_code))
            .find(|&c| c != 0),
        Response::Fetch(response) => response
            .topics
            .iter()
            .flat_map(|topic| topic.partitions.iter().map(|partition| partition.error_code))
            .find(|&c| c != 0),
        Response::ListOffsets(response) => response
            .topics
            .iter()
            .flat_map(|topic| topic.partitions.iter().map(|partition| partition.error_code))
            .find(|&c| c != 0),
        Response::OffsetCommit(response) => response
            .topics
            .iter()
            .flat_map(|topic| topic.partitions.iter().map(|partition| partition.error_code))
            .find(|&c| c != 0),
        Response::OffsetFetch(response) => response
            .topics
            .iter()
            .flat_map(|topic| topic.partitions.iter().map(|partition| partition.error_code))
            .find(|&c| c != 0),
        Response::DescribeGroups(response) => response.groups.iter().map(|group| group.error_code).find(|&c| c != 0),
        Response::DescribeProducers(response) => {
            response.partitions.iter().map(|partition| partition.error_code).find(|&c| c != 0)
        }
        Response::TxnProduce(response) => response
            .topics
            .iter()
            .flat_map(|topic| topic.partitions.iter().map(|partition| partition.error_code))
            .find(|&c| c != 0),
        Response::ApiVersions(_)
        | Response::ListTopics(_)
        | Response::InitProducerId(_)
        | Response::DescribeBroker(_)
        | Response::JoinGroup(_)
        | Response::Heartbeat(_)
        | Response::LeaveGroup(_)
        | Response::ListGroups(_)
        | Response::TxnOffsetCommit(_)
        | Response::EndTxn(_)
        | Response::ListTxns(_)
        | Response::AbortTxn(_)
        | Response::Error(_) => None,
    };
    let code = if top != 0 { top } else { first_item.unwrap_or(0) };
    ferry_protocol::messages::error_code_from_wire(code).unwrap_or(ErrorCode::Unknown)
}

/// Milliseconds since the Unix epoch, by the system clock.
pub(crate) fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Classifies a partition-log error: a log closed while the broker is not shutting down belongs to a topic that
/// was deleted under the request.
pub(crate) fn log_error(state: &ServerState, error: LogError) -> HandlerError {
    match error {
        LogError::Closed if !state.shutdown.is_cancelled() => HandlerError::TopicDeleted,
        LogError::Closed => HandlerError::ShuttingDown,
        other => HandlerError::Log(other),
    }
}

#[cfg(test)]
mod tests;
