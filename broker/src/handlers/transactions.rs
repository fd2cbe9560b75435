//! TxnProduce, TxnOffsetCommit, EndTxn, ListTxns and AbortTxn: the wire side of the transaction coordinator
//! (`crate::transactions`, which documents the protocol; `proto/transactions.proto` is its wire specification).

use std::sync::Arc;

use ferry_protocol::TopicName;
use ferry_protocol::messages::{
    AbortTxnRequest, AbortTxnResponse, Durability, EndTxnRequest, EndTxnResponse, ListTxnsResponse,
    ProducePartitionResponse, ProduceTopicResponse, TopicPartitions, TxnDescription, TxnOffsetCommitRequest,
    TxnOffsetCommitResponse, TxnProduceRequest, TxnProduceResponse, error_code_to_wire,
};
use ferry_protocol::{ErrorCode, RecordBatch};

use super::{HandlerError, REQUEST_ITEMS_MAX, item_error};
use crate::config::millis;
use crate::meta::CommittedOffset;
use crate::server::ServerState;
use crate::transactions::{CommittedPartition, StageRequest, TxnOffset};

/// The error code and message of a request-wide failure.
fn request_failure(error: impl Into<HandlerError>) -> (u32, String) {
    item_error(&error.into())
}

/// A partition of a TxnProduce request: `None` if its batches are to be staged, or why not.
type PartitionOutcome = (u32, Option<HandlerError>);

/// Answers TxnProduce: checks every partition's batches, then stages the valid ones in the open transaction. A
/// request-wide refusal (fenced, not the open transaction, ...) stages nothing.
pub(crate) async fn produce(state: &ServerState, request: TxnProduceRequest) -> TxnProduceResponse {
    let n_partitions: usize = request.topics.iter().map(|topic| topic.partitions.len()).sum();
    if n_partitions > REQUEST_ITEMS_MAX {
        return TxnProduceResponse { error_code: error_code_to_wire(ErrorCode::InvalidRequest), ..Default::default() };
    }
    let producer = (request.producer_id, request.producer_epoch);
    let mut stage = Vec::with_capacity(n_partitions);
    let mut outcomes: Vec<(String, Vec<PartitionOutcome>)> = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let found = TopicName::new(topic.name.clone())
            .map_err(HandlerError::from)
            .and_then(|name| state.partitions.topic(name.as_str()).ok_or(HandlerError::UnknownTopic));
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let checked = match &found {
                Err(_) => Err(HandlerError::UnknownTopic),
                Ok(found) => super::produce::split_checked(state, found, partition.partition, partition.records)
                    .and_then(|batches| check_staged(producer, batches))
                    .map(|batches| StageRequest { topic: Arc::clone(found), partition: partition.partition, batches }),
            };
            match checked {
                Ok(request) => {
                    stage.push(request);
                    partitions.push((partition.partition, None));
                }
                Err(error) => partitions.push((partition.partition, Some(error))),
            }
        }
        outcomes.push((topic.name, partitions));
    }
    if !stage.is_empty()
        && let Err(error) = state
            .transactions
            .stage(&request.transactional_id, request.producer_id, request.producer_epoch, request.transaction, stage)
            .await
    {
        let (error_code, error_message) = request_failure(error);
        return TxnProduceResponse { error_code, error_message, topics: Vec::new() };
    }
    let topics = outcomes
        .into_iter()
        .map(|(name, partitions)| ProduceTopicResponse {
            name,
            partitions: partitions
                .into_iter()
                .map(|(partition, outcome)| {
                    let (error_code, error_message) = outcome.map(|error| item_error(&error)).unwrap_or_default();
                    ProducePartitionResponse { partition, error_code, error_message, ..Default::default() }
                })
                .collect(),
        })
        .collect();
    TxnProduceResponse { error_code: 0, error_message: String::new(), topics }
}

/// A staged batch carries the request's producer id and epoch and a non-negative staging sequence.
fn check_staged(producer: (i64, i32), batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, HandlerError> {
    for batch in &batches {
        let header = batch.header();
        if (header.producer_id, header.producer_epoch) != producer {
            return Err(HandlerError::InvalidStagedBatch { reason: "producer id or epoch differs from the request's" });
        }
        if header.base_sequence < 0 {
            return Err(HandlerError::InvalidStagedBatch { reason: "negative staging sequence" });
        }
    }
    Ok(batches)
}

/// Answers TxnOffsetCommit: adds the offsets to the open transaction after the group checks.
pub(crate) async fn offset_commit(state: &ServerState, request: TxnOffsetCommitRequest) -> TxnOffsetCommitResponse {
    let n_partitions: usize = request.topics.iter().map(|topic| topic.partitions.len()).sum();
    if n_partitions > REQUEST_ITEMS_MAX {
        return TxnOffsetCommitResponse {
            error_code: error_code_to_wire(ErrorCode::InvalidRequest),
            error_message: String::new(),
        };
    }
    let commit_time_ms = super::epoch_ms();
    let mut offsets: Vec<TxnOffset> = Vec::with_capacity(n_partitions);
    for topic in &request.topics {
        let Some(found) = state.partitions.topic(&topic.name) else {
            let (error_code, error_message) = request_failure(HandlerError::UnknownTopic);
            return TxnOffsetCommitResponse { error_code, error_message };
        };
        for partition in &topic.partitions {
            if partition.partition >= found.record.partitions {
                let (error_code, error_message) = request_failure(HandlerError::UnknownPartition {
                    partition: partition.partition,
                    count: found.record.partitions,
                });
                return TxnOffsetCommitResponse { error_code, error_message };
            }
            let committed =
                CommittedOffset { offset: partition.offset, metadata: partition.metadata.clone(), commit_time_ms };
            offsets.push(((topic.name.clone(), partition.partition), found.record.id, committed));
        }
    }
    let added = state
        .transactions
        .add_offsets(
            &request.transactional_id,
            request.producer_id,
            request.producer_epoch,
            request.transaction,
            &request.group_id,
            &request.member_id,
            request.generation,
            offsets,
        )
        .await;
    match added {
        Ok(()) => TxnOffsetCommitResponse::default(),
        Err(error) => {
            let (error_code, error_message) = request_failure(error);
            TxnOffsetCommitResponse { error_code, error_message }
        }
    }
}

/// Answers EndTxn: commits (with the offsets appended) or aborts.
pub(crate) async fn end(state: &ServerState, request: EndTxnRequest) -> EndTxnResponse {
    let ended = state
        .transactions
        .end(
            &request.transactional_id,
            request.producer_id,
            request.producer_epoch,
            request.transaction,
            request.commit,
        )
        .await;
    match ended {
        Ok(committed) => EndTxnResponse { error_code: 0, error_message: String::new(), topics: by_topic(committed) },
        Err(error) => {
            let (error_code, error_message) = request_failure(error);
            EndTxnResponse { error_code, error_message, topics: Vec::new() }
        }
    }
}

/// Groups a commit's partitions by topic, in the order they come.
fn by_topic(committed: Vec<CommittedPartition>) -> Vec<ProduceTopicResponse> {
    let mut topics: Vec<ProduceTopicResponse> = Vec::new();
    for partition in committed {
        let durability = match partition.durability {
            ferry_log::Durability::Fsynced => Durability::Fsynced,
            ferry_log::Durability::Written => Durability::Written,
        };
        let response = ProducePartitionResponse {
            partition: partition.partition,
            base_offset: partition.base_offset,
            last_offset: partition.last_offset,
            durability: i32::from(durability),
            ..Default::default()
        };
        match topics.iter_mut().find(|topic| topic.name == partition.topic) {
            Some(topic) => topic.partitions.push(response),
            None => topics.push(ProduceTopicResponse { name: partition.topic, partitions: vec![response] }),
        }
    }
    topics
}

/// Answers ListTxns: the open transactions, oldest first.
pub(crate) fn list(state: &ServerState) -> ListTxnsResponse {
    let transactions = state
        .transactions
        .list()
        .into_iter()
        .map(|view| {
            let mut partitions: Vec<TopicPartitions> = Vec::new();
            for (topic, partition) in view.partitions {
                match partitions.iter_mut().find(|entry| entry.topic == topic) {
                    Some(entry) => entry.partitions.push(partition),
                    None => partitions.push(TopicPartitions { topic, partitions: vec![partition] }),
                }
            }
            TxnDescription {
                transactional_id: view.transactional_id,
                producer_id: view.producer_id,
                producer_epoch: view.epoch,
                transaction: view.transaction,
                state: view.state.to_owned(),
                age_ms: millis(view.started.elapsed()),
                timeout_ms: millis(view.timeout),
                partitions,
                staged_batches: view.staged_batches,
                staged_bytes: view.staged_bytes,
                group_id: view.group.unwrap_or_default(),
            }
        })
        .collect();
    ListTxnsResponse { error_code: 0, transactions }
}

/// Answers AbortTxn (operators).
pub(crate) async fn abort(state: &ServerState, request: AbortTxnRequest) -> AbortTxnResponse {
    match state.transactions.abort_by_operator(&request.transactional_id).await {
        Ok(aborted) => AbortTxnResponse { error_code: 0, error_message: String::new(), aborted },
        Err(error) => {
            let (error_code, error_message) = request_failure(error);
            AbortTxnResponse { error_code, error_message, aborted: false }
        }
    }
}
