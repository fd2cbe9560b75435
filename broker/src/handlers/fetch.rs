//! Fetch: long-poll reads of whole batches, exactly as stored.
//!
//! # Lifecycle of one fetch request
//!
//! 1. Resolve each requested partition (unknown topics and partitions get `UNKNOWN_TOPIC_OR_PARTITION`), then
//!    reserve room in the connection's response queue for the whole byte budget (plus [`RESPONSE_OVERHEAD_BYTES`]):
//!    a client that does not read its responses makes later fetches wait here, before anything is read.
//! 2. Read round: on a blocking thread (at most [`FETCH_READS_CONCURRENT_MAX`] rounds of all connections at once),
//!    read each partition from its fetch offset with [`ferry_log::LogReader::read`]: whole verified batches, never
//!    re-encoded, never past the visible end. Budget: at most `bytes_max` record bytes over the response (the
//!    request's, lowered to `server.fetch_bytes_max`; 0 means the broker's) and `partition_bytes_max` per partition,
//!    except that the first non-empty partition always returns at least one whole batch, so a consumer never
//!    stalls on a batch larger than its limits. A later partition whose first batch does not fit the remaining
//!    budget returns nothing this time. An offset outside `[start, end]` is `OFFSET_OUT_OF_RANGE`.
//!    A round in which every partition sits at its visible end reads nothing and skips the blocking thread.
//! 3. Answer if at least `bytes_min` bytes were read, the budget is used up, a partition failed, the wait
//!    (`wait_ms_max`, lowered to `server.fetch_wait_ms_max`) is over, or the connection or broker is closing.
//!    Otherwise wait until any requested partition's visible end moves past what the round saw (or the wait ends),
//!    then read again.
//!
//! Records are counted for the metrics from the batch headers (no record is decoded on the fetch path).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use ferry_log::{LogError, LogReader};
use ferry_protocol::batch::BatchHeader;
use ferry_protocol::messages::{
    FetchPartitionResponse, FetchRequest, FetchResponse, FetchTopicResponse, error_code_to_wire,
};
use ferry_protocol::{ErrorCode, TopicName};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{HandlerError, REQUEST_ITEMS_MAX, item_error};
use crate::connection::ResponseRoom;
use crate::partitions::Topic;
use crate::server::ServerState;

/// Most fetch read rounds (and ListOffsets timestamp lookups) running on blocking threads at once, over all
/// connections. More wait for a permit; this keeps file reads from taking every blocking thread.
pub const FETCH_READS_CONCURRENT_MAX: usize = 16;

/// Room reserved for a fetch response beyond its record budget: frame header, topics and partition entries.
/// A response that turns out larger (a first batch above the budget, thousands of partitions) waits for more room.
pub const RESPONSE_OVERHEAD_BYTES: u32 = 64 * 1024;

/// Record bytes a fetch reads at least when the broker's response budget (`server.response_bytes_max`) is short:
/// it then takes what is free down to this (waiting for this much if less is free), rather than waiting for its
/// whole `bytes_max` behind other connections' responses. One batch is still always returned, even if larger.
pub const FETCH_BYTES_UNDER_PRESSURE: u32 = 64 * 1024;

/// One requested partition, resolved.
struct Target {
    topic: Option<Arc<Topic>>,
    partition: u32,
    fetch_offset: u64,
    partition_bytes_max: u32,
    /// Set when the partition cannot be read at all (unknown topic or partition).
    error: Option<HandlerError>,
}

/// What one read round found for one partition.
#[derive(Debug, Clone, Default)]
struct PartitionRead {
    records: Bytes,
    n_records: u64,
    high_watermark: u64,
    log_start_offset: u64,
    /// The read failed (out of range, storage): the error code and message.
    error: Option<(u32, String)>,
}

/// Handles a fetch request (see the module docs). `cancel` ends a long poll early (connection or broker closing).
/// Returns the response and the room reserved for it in `response_room` (`None` if the connection is closing).
pub(crate) async fn handle(
    state: &ServerState,
    request: FetchRequest,
    cancel: &CancellationToken,
    response_room: &Arc<Semaphore>,
) -> (FetchResponse, Option<ResponseRoom>) {
    let n_partitions: usize = request.topics.iter().map(|topic| topic.partitions.len()).sum();
    if n_partitions > REQUEST_ITEMS_MAX {
        let response = FetchResponse { error_code: error_code_to_wire(ErrorCode::InvalidRequest), topics: Vec::new() };
        return (response, None);
    }
    let server = &state.config.server;
    let wait = Duration::from_millis(u64::from(request.wait_ms_max)).min(server.fetch_wait_max);
    let deadline = Instant::now() + wait;
    let bytes_max = match request.bytes_max {
        0 => server.fetch_bytes_max,
        bytes_max => bytes_max.min(server.fetch_bytes_max),
    };
    let bytes_min = u64::from(request.bytes_min);
    let share = usize::try_from(bytes_max.saturating_add(RESPONSE_OVERHEAD_BYTES)).unwrap_or(usize::MAX);
    let share_min = usize::try_from(FETCH_BYTES_UNDER_PRESSURE + RESPONSE_OVERHEAD_BYTES).expect("small");
    let reserved = tokio::select! {
        reserved = ResponseRoom::reserve_between(state, response_room, share_min, share) => reserved,
        () = cancel.cancelled() => None,
    };
    let Some(reserved) = reserved else {
        // The connection is closing: there is nobody to answer.
        return (
            FetchResponse { error_code: error_code_to_wire(ErrorCode::BrokerShuttingDown), topics: Vec::new() },
            None,
        );
    };

    // Under pressure on the broker's response budget the fetch got less room than asked: it reads less.
    let bytes_max = bytes_max.min(
        u32::try_from(reserved.bytes().saturating_sub(RESPONSE_OVERHEAD_BYTES as usize)).unwrap_or(u32::MAX).max(1),
    );
    let mut shape: Vec<(String, usize)> = Vec::with_capacity(request.topics.len());
    let mut targets: Vec<Target> = Vec::with_capacity(n_partitions);
    for fetch_topic in request.topics {
        let topic = TopicName::new(fetch_topic.name.clone())
            .map_err(HandlerError::from)
            .and_then(|name| state.partitions.topic(name.as_str()).ok_or(HandlerError::UnknownTopic));
        shape.push((fetch_topic.name, fetch_topic.partitions.len()));
        for partition in fetch_topic.partitions {
            let (topic, error) = match &topic {
                Ok(topic) if topic.partition(partition.partition).is_some() => (Some(Arc::clone(topic)), None),
                Ok(topic) => (
                    None,
                    Some(HandlerError::UnknownPartition {
                        partition: partition.partition,
                        count: topic.record.partitions,
                    }),
                ),
                Err(HandlerError::Protocol(error)) => (None, Some(HandlerError::Protocol(copy_name_error(error)))),
                Err(_) => (None, Some(HandlerError::UnknownTopic)),
            };
            targets.push(Target {
                topic,
                partition: partition.partition,
                fetch_offset: partition.fetch_offset,
                partition_bytes_max: partition.partition_bytes_max,
                error,
            });
        }
    }

    let reads = loop {
        let round = read_round(state, &targets, bytes_max).await;
        let total: u64 = round.reads.iter().map(|read| u64::try_from(read.records.len()).unwrap_or(u64::MAX)).sum();
        let failed = round.reads.iter().any(|read| read.error.is_some());
        let closing = cancel.is_cancelled() || state.shutdown.is_cancelled();
        if total >= bytes_min || round.budget_used_up || failed || closing || Instant::now() >= deadline {
            break round.reads;
        }
        // Wake when any partition's visible end moves past what this round saw.
        let mut waits: Vec<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = Vec::new();
        for (target, read) in targets.iter().zip(&round.reads) {
            if let Some(topic) = &target.topic
                && let Some(partition) = topic.partition(target.partition)
            {
                waits.push(Box::pin(partition.reader().wait_for_end_beyond(read.high_watermark)));
            }
        }
        let any_advanced = std::future::poll_fn(|context| {
            for wait in &mut waits {
                if wait.as_mut().poll(context).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        });
        tokio::select! {
            () = any_advanced => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = cancel.cancelled() => {}
            () = state.shutdown.cancelled() => {}
        }
    };

    let mut reads = reads.into_iter();
    let mut targets = targets.into_iter();
    let topics = shape
        .into_iter()
        .map(|(name, n_partitions)| {
            let partitions = (0..n_partitions)
                .map(|_| {
                    let target = targets.next().expect("one target per requested partition");
                    let read = reads.next().expect("one read per target");
                    if let Some(topic) = &target.topic
                        && read.error.is_none()
                    {
                        topic.metrics.fetch_bytes.increment(u64::try_from(read.records.len()).unwrap_or(u64::MAX));
                        topic.metrics.fetch_records.increment(read.n_records);
                    }
                    let (error_code, error_message) = read.error.unwrap_or_default();
                    FetchPartitionResponse {
                        partition: target.partition,
                        error_code,
                        error_message,
                        high_watermark: read.high_watermark,
                        log_start_offset: read.log_start_offset,
                        records: read.records,
                    }
                })
                .collect();
            FetchTopicResponse { name, partitions }
        })
        .collect();
    (FetchResponse { error_code: 0, topics }, Some(reserved))
}

/// A topic-name error, copied for each partition of the topic.
fn copy_name_error(error: &ferry_protocol::ProtocolError) -> ferry_protocol::ProtocolError {
    match error {
        ferry_protocol::ProtocolError::InvalidTopicName { reason } => {
            ferry_protocol::ProtocolError::InvalidTopicName { reason }
        }
        _ => ferry_protocol::ProtocolError::InvalidTopicName { reason: "invalid" },
    }
}

struct Round {
    reads: Vec<PartitionRead>,
    budget_used_up: bool,
}

/// One read of every target (see the module docs, step 2).
async fn read_round(state: &ServerState, targets: &[Target], bytes_max: u32) -> Round {
    let mut plan: Vec<Option<(LogReader, u64, u32)>> = Vec::with_capacity(targets.len());
    let mut errors: Vec<Option<(u32, String)>> = Vec::with_capacity(targets.len());
    let mut anything_to_read = false;
    for target in targets {
        match (&target.topic, &target.error) {
            (Some(topic), None) => {
                let reader = topic.partition(target.partition).expect("resolved targets exist").reader().clone();
                // At the visible end there is nothing to read; anywhere else there is data or an error to report.
                anything_to_read |= target.fetch_offset != reader.visible_end();
                plan.push(Some((reader, target.fetch_offset, target.partition_bytes_max)));
                errors.push(None);
            }
            (_, error) => {
                plan.push(None);
                errors.push(Some(item_error(error.as_ref().unwrap_or(&HandlerError::UnknownTopic))));
            }
        }
    }
    if !anything_to_read {
        let reads = plan
            .iter()
            .zip(errors)
            .map(|(planned, error)| match planned {
                Some((reader, _, _)) => PartitionRead {
                    high_watermark: reader.visible_end(),
                    log_start_offset: reader.start_offset(),
                    ..PartitionRead::default()
                },
                None => PartitionRead { error, ..PartitionRead::default() },
            })
            .collect();
        return Round { reads, budget_used_up: false };
    }
    let permit = Arc::clone(&state.reads).acquire_owned().await.expect("the read semaphore is never closed");
    tokio::task::spawn_blocking(move || {
        let round = read_blocking(&plan, errors, bytes_max);
        drop(permit);
        round
    })
    .await
    .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
}

/// Reads every planned partition in order within the byte budget. Blocks on file reads.
fn read_blocking(plan: &[Option<(LogReader, u64, u32)>], errors: Vec<Option<(u32, String)>>, bytes_max: u32) -> Round {
    let mut remaining = u64::from(bytes_max);
    let mut have_any = false;
    let mut budget_used_up = false;
    let mut reads = Vec::with_capacity(plan.len());
    for (planned, error) in plan.iter().zip(errors) {
        let Some((reader, fetch_offset, partition_bytes_max)) = planned else {
            reads.push(PartitionRead { error, ..PartitionRead::default() });
            continue;
        };
        let log_start_offset = reader.start_offset();
        let visible_end = reader.visible_end();
        let empty = PartitionRead { high_watermark: visible_end, log_start_offset, ..PartitionRead::default() };
        if have_any && remaining == 0 {
            budget_used_up = true;
            reads.push(empty);
            continue;
        }
        let partition_max =
            if *partition_bytes_max == 0 { u64::from(u32::MAX) } else { u64::from(*partition_bytes_max) };
        let want = u32::try_from(partition_max.min(remaining)).unwrap_or(u32::MAX);
        match reader.read(*fetch_offset, want) {
            Ok(slice) => {
                let len = u64::try_from(slice.bytes.len()).unwrap_or(u64::MAX);
                if have_any && len > remaining {
                    // Its first batch does not fit what is left; it comes first in a later fetch.
                    budget_used_up = true;
                    reads.push(PartitionRead { high_watermark: slice.visible_end, ..empty });
                    continue;
                }
                remaining = remaining.saturating_sub(len);
                have_any |= len > 0;
                reads.push(PartitionRead {
                    n_records: count_records(&slice.bytes),
                    records: slice.bytes,
                    high_watermark: slice.visible_end,
                    log_start_offset,
                    error: None,
                });
            }
            Err(error) => {
                let (start, end) = match &error {
                    LogError::OffsetOutOfRange { start, end, .. } => (*start, *end),
                    _ => (log_start_offset, visible_end),
                };
                reads.push(PartitionRead {
                    high_watermark: end,
                    log_start_offset: start,
                    error: Some(item_error(&HandlerError::Log(error))),
                    ..PartitionRead::default()
                });
            }
        }
    }
    Round { reads, budget_used_up }
}

/// Records in back-to-back batches, from their headers (already verified by the read).
fn count_records(bytes: &Bytes) -> u64 {
    let mut position = 0usize;
    let mut n_records = 0u64;
    while let Some(rest) = bytes.get(position..)
        && !rest.is_empty()
    {
        let Ok(header) = BatchHeader::parse(rest) else { break };
        n_records += u64::from(header.record_count);
        position = position.saturating_add(usize::try_from(header.batch_length).unwrap_or(usize::MAX));
    }
    n_records
}
