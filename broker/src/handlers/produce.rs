//! Produce: validate every partition's batches, submit them to the partitions' appenders in the order the
//! connection received the requests, wait for the acknowledgements, answer with offsets and durability.
//!
//! # Lifecycle of one produce request
//!
//! 1. Validate each partition's payload on its own (a bad partition does not fail the others):
//!    the topic is active and has the partition; the payload splits into whole batches, each checksum-verified
//!    ([`split_batches`]), at most the broker's `log.batch_bytes_max` (`RECORD_BATCH_TOO_LARGE`) and the topic's
//!    `max.message.bytes` (`MESSAGE_TOO_LARGE`), with well-formed records ([`RecordBatch::validate_records`],
//!    `CORRUPT_MESSAGE`). Batches marked transactional (they go through TxnProduce, see
//!    `transactions`) or control are refused with `INVALID_REQUEST`. A batch with a producer id (an idempotent producer's) must be its partition's only
//!    batch, and its id and epoch must pass the registry ([`crate::producers::ProducerIds::admit`]:
//!    `UNKNOWN_PRODUCER_ID`, `PRODUCER_FENCED`, `INVALID_PRODUCER_EPOCH`); its sequence is checked later, by the
//!    partition's appender thread, against the dedup table in the same step that assigns offsets
//!    (`ferry_log::producers`: a retry is answered with the original offsets and `duplicate = true`, a gap with
//!    `OUT_OF_ORDER_SEQUENCE`). On a topic with `dedup.window.ms`, the appender also drops records whose
//!    `ferry.dedup.key` it has seen within the window (`ferry_log::dedup`), refusing an idempotent batch that carries
//!    dedup keys with `INVALID_REQUEST`.
//! 2. Wait for this request's turn ([`ProduceTurn`]): requests of one connection submit in arrival order, so two
//!    produce requests for the same partition are appended (and acknowledged) in the order they were sent, while
//!    their validation still runs in parallel.
//! 3. Submit each valid partition's batches to its appender ([`ferry_log::AppendHandle::submit`]: waits while the
//!    partition's queue is full, which is the partition's back-pressure), then pass the turn on.
//!    An append the appender takes only after the request's deadline writes nothing (`REQUEST_TIMED_OUT`): a produce
//!    request is never applied after its timeout, which idempotent producers rely on when they reset.
//! 4. Wait for each acknowledgement, all within the request's timeout (`timeout_ms`, or `server.request_timeout_ms`,
//!    which also caps it); an acknowledgement that does not come in time is `REQUEST_TIMED_OUT` (outcome unknown).
//! 5. Answer with the first and last offsets, the append time and the durability achieved (plus the records dropped
//!    by message-id dedup, with their original offsets, and the topic's dedup window); with acks=none nothing
//!    is sent, not even errors (they are logged at debug level).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_log::{AppendAck, Durability as LogDurability, PendingAck};
use ferry_protocol::batch::{NO_PRODUCER_ID, split_batches};
use ferry_protocol::messages::error_code_from_wire;
use ferry_protocol::messages::{
    Acks, DroppedRecord, Durability, ProducePartitionResponse, ProduceRequest, ProduceResponse, ProduceTopicResponse,
    error_code_to_wire,
};
use ferry_protocol::{ErrorCode, RecordBatch, TopicName};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout_at};

use super::{HandlerError, REQUEST_ITEMS_MAX, item_error, log_error, now_ms};
use crate::metrics::{LABEL_REASON, LABEL_TOPIC, PRODUCER_REJECTIONS_TOTAL};
use crate::partitions::Topic;
use crate::server::ServerState;

/// A produce request's place in its connection's submission order: wait for the previous request to have
/// submitted, submit, then let the next one go.
///
/// The connection creates one per produce request, chained in arrival order. A request that ends early (a
/// request-wide error, a panic) drops its `done` sender, which lets the next one go too.
#[derive(Debug)]
pub(crate) struct ProduceTurn {
    previous: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

impl ProduceTurn {
    /// A turn that waits for nobody and hands over to nobody.
    pub(crate) fn first() -> ProduceTurn {
        ProduceTurn { previous: None, done: None }
    }

    /// The next turn in a chain: it waits for `previous` (the receiver of the last turn created, if any) and
    /// returns, with it, the receiver the turn after it waits for.
    pub(crate) fn chained(previous: Option<oneshot::Receiver<()>>) -> (ProduceTurn, oneshot::Receiver<()>) {
        let (done, next) = oneshot::channel();
        (ProduceTurn { previous, done: Some(done) }, next)
    }

    async fn wait(&mut self) {
        if let Some(previous) = self.previous.take() {
            // An error means the previous request ended without submitting: its turn is over all the same.
            let _ = previous.await;
        }
    }

    fn pass(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

/// One partition of the request, validated and ready to submit.
struct Prepared {
    topic: Arc<Topic>,
    partition: u32,
    batches: Vec<RecordBatch>,
    n_records: u64,
    n_bytes: u64,
}

/// Where one partition of the request stands.
enum Slot {
    Prepared(Prepared),
    Submitted {
        prepared: Prepared,
        pending: PendingAck,
    },
    /// The acknowledgement, the append time (ms since the epoch) and the topic's dedup window (ms, 0 when off).
    Done(Result<(AppendAck, i64, u64), HandlerError>),
}

/// Handles a produce request; returns `None` for acks=none (no response is sent).
pub(crate) async fn handle(
    state: &ServerState,
    request: ProduceRequest,
    mut turn: ProduceTurn,
) -> Option<ProduceResponse> {
    let acks_none = request.acks() == Acks::None;
    let n_partitions: usize = request.topics.iter().map(|topic| topic.partitions.len()).sum();
    if n_partitions > REQUEST_ITEMS_MAX {
        turn.wait().await;
        turn.pass();
        tracing::debug!(n_partitions, "produce request names too many partitions");
        return (!acks_none).then(|| ProduceResponse {
            error_code: error_code_to_wire(ErrorCode::InvalidRequest),
            topics: Vec::new(),
        });
    }
    let request_timeout = state.config.server.request_timeout;
    let timeout = match request.timeout_ms {
        0 => request_timeout,
        timeout_ms => Duration::from_millis(u64::from(timeout_ms)).min(request_timeout),
    };
    let deadline = Instant::now() + timeout;

    // 1. Validate, keeping the request's shape for the response.
    let mut topics: Vec<(String, Vec<(u32, Slot)>)> = Vec::with_capacity(request.topics.len());
    for produce_topic in request.topics {
        let topic = resolve_topic(state, &produce_topic.name);
        let slots = produce_topic
            .partitions
            .into_iter()
            .map(|partition| {
                let slot = match &topic {
                    Ok(topic) => match prepare(state, topic, partition.partition, partition.records) {
                        Ok(prepared) => Slot::Prepared(prepared),
                        Err(error) => Slot::Done(Err(error)),
                    },
                    Err(error) => Slot::Done(Err(clone_lookup_error(error))),
                };
                (partition.partition, slot)
            })
            .collect();
        topics.push((produce_topic.name, slots));
    }

    // 2. and 3. Submit in the connection's arrival order.
    turn.wait().await;
    for (_, slots) in &mut topics {
        for (_, slot) in slots.iter_mut() {
            let Slot::Prepared(_) = slot else { continue };
            let Slot::Prepared(mut prepared) = std::mem::replace(slot, Slot::Done(Err(HandlerError::NoBatches))) else {
                unreachable!("matched just above")
            };
            let batches = std::mem::take(&mut prepared.batches);
            let handle = prepared.topic.partitions[partition_idx(prepared.partition)].append_handle();
            // Never applied after the deadline: a producer that gave up on the request may send it again differently.
            *slot = match timeout_at(deadline, handle.submit_until(batches, Some(deadline.into_std()))).await {
                Ok(Ok(pending)) => Slot::Submitted { prepared, pending },
                Ok(Err(error)) => Slot::Done(Err(log_error(state, error))),
                Err(_) => Slot::Done(Err(HandlerError::TimedOut { timeout })),
            };
        }
    }
    turn.pass();

    // 4. Wait for the acknowledgements (they were all submitted, so waiting one by one costs nothing extra).
    for (_, slots) in &mut topics {
        for (_, slot) in slots.iter_mut() {
            let Slot::Submitted { .. } = slot else { continue };
            let Slot::Submitted { prepared, pending } =
                std::mem::replace(slot, Slot::Done(Err(HandlerError::NoBatches)))
            else {
                unreachable!("matched just above")
            };
            let result = match timeout_at(deadline, pending.wait()).await {
                Ok(Ok(ack)) => {
                    let n_dropped = u64::try_from(ack.dedup_dropped.len()).unwrap_or(u64::MAX);
                    prepared.topic.metrics.duplicates_dedup_key.increment(n_dropped);
                    if ack.duplicate {
                        prepared.topic.metrics.duplicates_sequence.increment(1);
                    } else {
                        record_append(&prepared, n_dropped);
                    }
                    let window_ms = prepared.topic.record.config.dedup_window().map_or(0, crate::config::millis);
                    Ok((ack, now_ms(), window_ms))
                }
                Ok(Err(error)) => Err(log_error(state, error)),
                Err(_) => Err(HandlerError::TimedOut { timeout }),
            };
            *slot = Slot::Done(result);
        }
    }

    // 5. Answer.
    let response = ProduceResponse {
        error_code: 0,
        topics: topics
            .into_iter()
            .map(|(name, slots)| {
                let partitions =
                    slots.into_iter().map(|(partition, slot)| partition_response(&name, partition, slot)).collect();
                ProduceTopicResponse { name, partitions }
            })
            .collect(),
    };
    if acks_none {
        for topic in &response.topics {
            for partition in topic.partitions.iter().filter(|partition| partition.error_code != 0) {
                tracing::debug!(topic = %topic.name.escape_debug(), partition = partition.partition,
                    error = %partition.error_message, "acks=none produce failed (not reported to the client)");
            }
        }
        return None;
    }
    Some(response)
}

/// Looks the topic up; the error is kept per topic and copied to each of its partitions.
fn resolve_topic(state: &ServerState, name: &str) -> Result<Arc<Topic>, HandlerError> {
    let name = TopicName::new(name.to_owned())?;
    state.partitions.topic(name.as_str()).ok_or(HandlerError::UnknownTopic)
}

/// Copies a topic-lookup error for each partition of the topic (the lookup fails in only these ways).
fn clone_lookup_error(error: &HandlerError) -> HandlerError {
    match error {
        HandlerError::Protocol(ferry_protocol::ProtocolError::InvalidTopicName { reason }) => {
            HandlerError::Protocol(ferry_protocol::ProtocolError::InvalidTopicName { reason })
        }
        _ => HandlerError::UnknownTopic,
    }
}

fn partition_idx(partition: u32) -> usize {
    usize::try_from(partition).expect("a u32 partition number fits in usize")
}

/// Splits and checks one partition's payload: the partition exists, the payload is whole, checksum-verified batches
/// within the broker's and the topic's size limits, with well-formed records. Shared with TxnProduce.
pub(crate) fn split_checked(
    state: &ServerState,
    topic: &Topic,
    partition: u32,
    records: Bytes,
) -> Result<Vec<RecordBatch>, HandlerError> {
    let count = topic.record.partitions;
    if topic.partition(partition).is_none() {
        return Err(HandlerError::UnknownPartition { partition, count });
    }
    if records.is_empty() {
        return Err(HandlerError::NoBatches);
    }
    let broker_max = state.config.log.batch_bytes_max;
    let mut batches = Vec::new();
    for batch in split_batches(records) {
        let batch = batch?;
        let len = batch.len_bytes();
        if len > broker_max {
            return Err(HandlerError::BatchTooLarge { len, max: broker_max });
        }
        if len > topic.batch_bytes_max {
            return Err(HandlerError::MessageTooLarge { len, max: topic.batch_bytes_max });
        }
        if batch.header().attributes.control() {
            return Err(HandlerError::ControlBatch);
        }
        batch.validate_records()?;
        batches.push(batch);
    }
    Ok(batches)
}

/// Validates one partition's payload (see the module docs) into batches ready to submit.
fn prepare(state: &ServerState, topic: &Arc<Topic>, partition: u32, records: Bytes) -> Result<Prepared, HandlerError> {
    let batches = split_checked(state, topic, partition, records)?;
    if batches.iter().any(|batch| batch.header().attributes.transactional()) {
        return Err(HandlerError::TransactionalBatch);
    }
    let n_records = batches.iter().map(|batch| u64::from(batch.record_count())).sum();
    let n_bytes = batches.iter().map(|batch| u64::from(batch.len_bytes())).sum();
    if let Some(idempotent) = batches.iter().find(|batch| batch.header().producer_id != NO_PRODUCER_ID) {
        if batches.len() != 1 {
            return Err(HandlerError::IdempotentBatchNotAlone);
        }
        let header = idempotent.header();
        state.producer_ids.admit(header.producer_id, header.producer_epoch, now_ms())?;
    }
    Ok(Prepared { topic: Arc::clone(topic), partition, batches, n_records, n_bytes })
}

/// Counts an append; `n_dropped` records were dropped by message-id dedup (their bytes are still counted: a rough
/// figure is enough, and re-measuring the rebuilt batches would cost more than the counter is worth).
fn record_append(prepared: &Prepared, n_dropped: u64) {
    prepared.topic.metrics.produce_bytes.increment(prepared.n_bytes);
    prepared.topic.metrics.produce_records.increment(prepared.n_records.saturating_sub(n_dropped));
    if let Some(partition) = prepared.topic.partition(prepared.partition) {
        partition.refresh_gauges();
    }
}

fn partition_response(topic: &str, partition: u32, slot: Slot) -> ProducePartitionResponse {
    let result = match slot {
        Slot::Done(result) => result,
        Slot::Prepared(_) | Slot::Submitted { .. } => unreachable!("every slot is done before the response is built"),
    };
    match result {
        Ok((ack, append_time_ms, dedup_window_ms)) => {
            let first = ack.ranges.first().map_or(0, |range| range.first);
            let last = ack.ranges.last().map_or(0, |range| range.last);
            let durability = match ack.durability {
                LogDurability::Fsynced => Durability::Fsynced,
                LogDurability::Written => Durability::Written,
            };
            ProducePartitionResponse {
                partition,
                error_code: 0,
                error_message: String::new(),
                base_offset: first,
                last_offset: last,
                log_append_time_ms: append_time_ms,
                durability: i32::from(durability),
                duplicate: ack.duplicate,
                dedup_dropped: ack
                    .dedup_dropped
                    .iter()
                    .map(|dropped| DroppedRecord {
                        record_index: dropped.record_index,
                        original_offset: dropped.original_offset,
                    })
                    .collect(),
                dedup_window_ms,
            }
        }
        Err(error) => {
            let (error_code, error_message) = item_error(&error);
            count_rejection(topic, error_code);
            ProducePartitionResponse { partition, error_code, error_message, ..ProducePartitionResponse::default() }
        }
    }
}

/// Counts an idempotent producer's batch refused for its producer state, by the error code's name.
fn count_rejection(topic: &str, error_code: u32) {
    let Some(code) = error_code_from_wire(error_code) else { return };
    if matches!(
        code,
        ErrorCode::OutOfOrderSequence
            | ErrorCode::ProducerFenced
            | ErrorCode::UnknownProducerId
            | ErrorCode::ProducerIdLimit
            | ErrorCode::InvalidProducerEpoch
    ) {
        // These codes arise only after the topic was found, so label values stay bounded by the topic limit.
        metrics::counter!(PRODUCER_REJECTIONS_TOTAL, LABEL_TOPIC => topic.to_owned(), LABEL_REASON => code.name())
            .increment(1);
    }
}
