//! ListOffsets: the earliest offset (log start), the latest (the visible end: the next offset consumers will see),
//! or the first record at or after a timestamp.
//!
//! Timestamp lookups read the log (the time index, then the batch it points to, whose records are decoded to find
//! the exact first record at or after the time), so the whole request runs on one blocking thread under the same
//! permit as fetch reads. Lookups without a timestamp answer from memory.

use std::sync::Arc;

use ferry_log::LogReader;
use ferry_protocol::batch::split_batches;
use ferry_protocol::messages::{
    ListOffsetsPartitionResponse, ListOffsetsRequest, ListOffsetsResponse, ListOffsetsTopicResponse, OffsetSpec,
    error_code_to_wire,
};
use ferry_protocol::{ErrorCode, TopicName};

use super::{HandlerError, REQUEST_ITEMS_MAX, item_error};
use crate::server::ServerState;

/// One lookup, resolved.
type Lookup = Result<(LogReader, OffsetSpec), HandlerError>;

/// Answers a ListOffsets request.
pub(crate) async fn handle(state: &ServerState, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let n_partitions: usize = request.topics.iter().map(|topic| topic.partitions.len()).sum();
    if n_partitions > REQUEST_ITEMS_MAX {
        return ListOffsetsResponse { error_code: error_code_to_wire(ErrorCode::InvalidRequest), topics: Vec::new() };
    }
    let mut shape: Vec<(String, Vec<u32>)> = Vec::with_capacity(request.topics.len());
    let mut lookups: Vec<Lookup> = Vec::with_capacity(n_partitions);
    for topic in request.topics {
        let resolved = TopicName::new(topic.name.clone())
            .map_err(HandlerError::from)
            .and_then(|name| state.partitions.topic(name.as_str()).ok_or(HandlerError::UnknownTopic));
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for lookup in topic.partitions {
            partitions.push(lookup.partition);
            let resolved_lookup = match &resolved {
                Err(HandlerError::Protocol(_)) => {
                    Err(HandlerError::Protocol(ferry_protocol::ProtocolError::InvalidTopicName {
                        reason: "not a valid topic name",
                    }))
                }
                Err(_) => Err(HandlerError::UnknownTopic),
                Ok(found) => match found.partition(lookup.partition) {
                    None => Err(HandlerError::UnknownPartition {
                        partition: lookup.partition,
                        count: found.record.partitions,
                    }),
                    Some(partition) => OffsetSpec::try_from(&lookup)
                        .map(|spec| (partition.reader().clone(), spec))
                        .map_err(HandlerError::from),
                },
            };
            lookups.push(resolved_lookup);
        }
        shape.push((topic.name, partitions));
    }

    let needs_reads = lookups.iter().any(|lookup| matches!(lookup, Ok((_, OffsetSpec::Timestamp(_)))));
    let results: Vec<Result<(u64, i64), HandlerError>> = if needs_reads {
        let permit = Arc::clone(&state.reads).acquire_owned().await.expect("the read semaphore is never closed");
        tokio::task::spawn_blocking(move || {
            let results = lookups.into_iter().map(look_up).collect();
            drop(permit);
            results
        })
        .await
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
    } else {
        lookups.into_iter().map(look_up).collect()
    };

    let mut results = results.into_iter();
    let topics = shape
        .into_iter()
        .map(|(name, partitions)| ListOffsetsTopicResponse {
            name,
            partitions: partitions
                .into_iter()
                .map(|partition| match results.next().expect("one result per lookup") {
                    Ok((offset, timestamp_ms)) => ListOffsetsPartitionResponse {
                        partition,
                        error_code: 0,
                        error_message: String::new(),
                        offset,
                        timestamp_ms,
                    },
                    Err(error) => {
                        let (error_code, error_message) = item_error(&error);
                        ListOffsetsPartitionResponse {
                            partition,
                            error_code,
                            error_message,
                            offset: 0,
                            timestamp_ms: -1,
                        }
                    }
                })
                .collect(),
        })
        .collect();
    ListOffsetsResponse { error_code: 0, topics }
}

/// Answers one lookup: `(offset, timestamp_ms)`. Blocks for timestamp lookups.
fn look_up(lookup: Lookup) -> Result<(u64, i64), HandlerError> {
    let (reader, spec) = lookup?;
    match spec {
        OffsetSpec::Earliest => Ok((reader.start_offset(), -1)),
        OffsetSpec::Latest => Ok((reader.visible_end(), -1)),
        OffsetSpec::Timestamp(timestamp_ms) => {
            let Some(base_offset) = reader.read_by_timestamp(timestamp_ms)? else {
                return Ok((reader.visible_end(), -1));
            };
            // The batch's largest timestamp is at or after the time; find its first record that is.
            let slice = reader.read(base_offset, 1)?;
            let Some(batch) = split_batches(slice.bytes).next() else {
                return Ok((reader.visible_end(), -1));
            };
            let batch = batch?;
            for record in batch.records() {
                let record = record?;
                if record.timestamp >= timestamp_ms {
                    return Ok((record.offset, record.timestamp));
                }
            }
            Ok((batch.base_offset(), batch.header().max_timestamp))
        }
    }
}
