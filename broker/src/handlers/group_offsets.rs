//! OffsetCommit and OffsetFetch: the coordinator checks who may commit (under its lock, in memory), and the metadata
//! store keeps the offsets (synced writes, on a blocking thread, after the lock is released).

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_protocol::ErrorCode;
use ferry_protocol::messages::{
    OffsetCommitPartitionResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetCommitTopicResponse,
    OffsetFetchPartition, OffsetFetchRequest, OffsetFetchResponse, OffsetFetchTopic, error_code_to_wire,
};

use super::{HandlerError, REQUEST_ITEMS_MAX, item_error};
use crate::groups::{GroupError, TopicPartition, valid_id};
use crate::meta::{CommittedOffset, GroupOffset};
use crate::server::ServerState;

/// One requested commit, resolved against the registry: the topic id, or why not.
type Resolved = Result<u64, HandlerError>;

/// Answers OffsetCommit. Each accepted offset is durable (synced) before the response.
pub(crate) async fn commit(state: &ServerState, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let n_partitions: usize = request.topics.iter().map(|topic| topic.partitions.len()).sum();
    if n_partitions > REQUEST_ITEMS_MAX {
        return top_level(ErrorCode::InvalidRequest, String::new());
    }
    let mut items: Vec<(TopicPartition, CommittedOffset, Resolved)> = Vec::with_capacity(n_partitions);
    let commit_time_ms = epoch_ms();
    for topic in &request.topics {
        let found = state.partitions.topic(&topic.name);
        for partition in &topic.partitions {
            let resolved = match &found {
                None => Err(HandlerError::UnknownTopic),
                Some(found) if partition.partition >= found.record.partitions => Err(HandlerError::UnknownPartition {
                    partition: partition.partition,
                    count: found.record.partitions,
                }),
                Some(found) => Ok(found.record.id),
            };
            let committed =
                CommittedOffset { offset: partition.offset, metadata: partition.metadata.clone(), commit_time_ms };
            items.push(((topic.name.clone(), partition.partition), committed, resolved));
        }
    }
    let checked: Vec<(TopicPartition, usize)> = items
        .iter()
        .filter(|(_, _, resolved)| resolved.is_ok())
        .map(|(tp, committed, _)| (tp.clone(), committed.metadata.len()))
        .collect();
    let (verdicts, guard) =
        match state.groups.begin_commit(&request.group_id, &request.member_id, request.generation, &checked) {
            Ok(checked) => checked,
            Err(error) => {
                let (error_code, error_message) = item_error(&HandlerError::Group(error));
                return OffsetCommitResponse { error_code, error_message, topics: Vec::new() };
            }
        };
    let mut verdicts = verdicts.into_iter();
    // Per item: `None` once accepted (pending the write), or why it was refused.
    let mut outcomes: Vec<Option<HandlerError>> = Vec::with_capacity(items.len());
    let mut writes: Vec<GroupOffset> = Vec::new();
    for ((_, partition), committed, resolved) in items {
        match resolved {
            Err(error) => outcomes.push(Some(error)),
            Ok(topic_id) => match verdicts.next() {
                Some(Ok(())) => {
                    writes.push((topic_id, partition, committed));
                    outcomes.push(None);
                }
                Some(Err(error)) => outcomes.push(Some(HandlerError::Group(error))),
                // One verdict per checked item: unreachable, and refused rather than written unchecked.
                None => outcomes
                    .push(Some(HandlerError::Group(GroupError::NotAssigned { topic: String::new(), partition }))),
            },
        }
    }
    let written = if writes.is_empty() {
        Ok(())
    } else {
        let meta = Arc::clone(&state.meta);
        let group = request.group_id.clone();
        tokio::task::spawn_blocking(move || meta.commit_offsets(&group, &writes))
            .await
            .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
    };
    // The offsets are durable (or failed): the partitions may now be granted to another member.
    drop(guard);
    let write_error = written.err().map(|error| item_error(&HandlerError::Meta(error)));
    let mut outcomes = outcomes.into_iter();
    let mut topics: Vec<OffsetCommitTopicResponse> = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            let (error_code, error_message) = match (outcomes.next(), &write_error) {
                (Some(None), None) => {
                    state.groups.metrics().committed(
                        &request.group_id,
                        &topic.name,
                        partition.partition,
                        partition.offset,
                    );
                    (0, String::new())
                }
                (Some(None), Some(write_error)) => write_error.clone(),
                (Some(Some(error)), _) => item_error(&error),
                (None, _) => (error_code_to_wire(ErrorCode::Unknown), String::new()),
            };
            partitions.push(OffsetCommitPartitionResponse {
                partition: partition.partition,
                error_code,
                error_message,
            });
        }
        topics.push(OffsetCommitTopicResponse { name: topic.name.clone(), partitions });
    }
    OffsetCommitResponse { error_code: 0, error_message: String::new(), topics }
}

/// Answers OffsetFetch. Offsets of deleted topics (whose id no longer exists) are left out.
pub(crate) async fn fetch(state: &ServerState, request: OffsetFetchRequest) -> OffsetFetchResponse {
    let n_partitions: usize = request.topics.iter().map(|topic| topic.partitions.len()).sum();
    if n_partitions > REQUEST_ITEMS_MAX {
        return OffsetFetchResponse { error_code: error_code_to_wire(ErrorCode::InvalidRequest), ..Default::default() };
    }
    if !valid_id(&request.group_id) {
        let (error_code, error_message) = item_error(&HandlerError::Group(GroupError::InvalidId { what: "group id" }));
        return OffsetFetchResponse { error_code, error_message, topics: Vec::new() };
    }
    let meta = Arc::clone(&state.meta);
    let group = request.group_id.clone();
    let stored = tokio::task::spawn_blocking(move || meta.group_offsets(&group))
        .await
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
    let stored = match stored {
        Ok(stored) => stored,
        Err(error) => {
            let (error_code, error_message) = item_error(&HandlerError::Meta(error));
            return OffsetFetchResponse { error_code, error_message, topics: Vec::new() };
        }
    };
    let names: BTreeMap<u64, String> =
        state.partitions.topics().iter().map(|topic| (topic.record.id, topic.record.name.clone())).collect();
    let mut committed: BTreeMap<&str, BTreeMap<u32, &CommittedOffset>> = BTreeMap::new();
    for (topic_id, partition, offset) in &stored {
        if let Some(name) = names.get(topic_id) {
            committed.entry(name.as_str()).or_default().insert(*partition, offset);
        }
    }
    let entry = |partition: u32, offset: Option<&&CommittedOffset>| match offset {
        Some(offset) => OffsetFetchPartition {
            partition,
            error_code: 0,
            committed: true,
            offset: offset.offset,
            metadata: offset.metadata.clone(),
            commit_timestamp_ms: i64::try_from(offset.commit_time_ms).unwrap_or(i64::MAX),
            lag_ms: 0,
        },
        None => OffsetFetchPartition { partition, ..OffsetFetchPartition::default() },
    };
    let topics = if request.topics.is_empty() {
        committed
            .iter()
            .map(|(name, partitions)| OffsetFetchTopic {
                name: (*name).to_owned(),
                partitions: partitions.iter().map(|(partition, offset)| entry(*partition, Some(offset))).collect(),
            })
            .collect()
    } else {
        request
            .topics
            .iter()
            .map(|topic| {
                let known = state.partitions.topic(&topic.topic);
                let partitions = topic
                    .partitions
                    .iter()
                    .map(|&partition| match &known {
                        Some(known) if partition < known.record.partitions => entry(
                            partition,
                            committed.get(topic.topic.as_str()).and_then(|found| found.get(&partition)),
                        ),
                        _ => OffsetFetchPartition {
                            partition,
                            error_code: error_code_to_wire(ErrorCode::UnknownTopicOrPartition),
                            ..OffsetFetchPartition::default()
                        },
                    })
                    .collect();
                OffsetFetchTopic { name: topic.topic.clone(), partitions }
            })
            .collect()
    };
    let topics = if request.include_lag { with_lag(state, topics).await } else { topics };
    OffsetFetchResponse { error_code: 0, error_message: String::new(), topics }
}

/// Fills in `lag_ms` of every committed partition (one log read each, on the blocking pool under the read permits).
async fn with_lag(state: &ServerState, mut topics: Vec<OffsetFetchTopic>) -> Vec<OffsetFetchTopic> {
    let partitions = Arc::clone(&state.partitions);
    let permit = Arc::clone(&state.reads).acquire_owned().await.expect("the read semaphore is never closed");
    tokio::task::spawn_blocking(move || {
        let now_ms = super::now_ms();
        for topic in &mut topics {
            let Some(found) = partitions.topic(&topic.name) else { continue };
            for partition in topic.partitions.iter_mut().filter(|partition| partition.committed) {
                if let Some(log) = found.partition(partition.partition) {
                    partition.lag_ms = crate::groups::lag::next_record_age_ms(log.reader(), partition.offset, now_ms);
                }
            }
        }
        drop(permit);
        topics
    })
    .await
    .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
}

fn top_level(code: ErrorCode, error_message: String) -> OffsetCommitResponse {
    OffsetCommitResponse { error_code: error_code_to_wire(code), error_message, topics: Vec::new() }
}

/// The wall clock in milliseconds since the Unix epoch (commit times).
pub(crate) fn epoch_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}
