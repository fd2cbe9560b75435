//! DescribeProducers: each partition's active idempotent producers (id, epoch, last sequence, last write time), read
//! from the partitions' dedup tables.

use ferry_protocol::TopicName;
use ferry_protocol::messages::{
    DescribeProducersRequest, DescribeProducersResponse, PartitionProducers, ProducerDescription,
};

use super::{HandlerError, item_error};
use crate::server::ServerState;

/// Most producers listed per partition (the lowest producer ids); the rest are counted in `producer_count` and the
/// partition is marked `truncated`.
pub const PRODUCERS_DESCRIBED_MAX: usize = 1000;

/// Most producers listed in one response, across its partitions, so that the response stays far below the frame
/// limit (about 40 bytes each); partitions after it is reached list none and are marked `truncated`.
pub const PRODUCERS_DESCRIBED_PER_RESPONSE_MAX: usize = 10_000;

/// Answers a DescribeProducers request: asks each partition's appender for its table, in partition order (each
/// answer reflects every append queued before the question).
pub(crate) async fn handle(state: &ServerState, request: DescribeProducersRequest) -> DescribeProducersResponse {
    let topic = match TopicName::new(request.topic)
        .map_err(HandlerError::from)
        .and_then(|name| state.partitions.topic(name.as_str()).ok_or(HandlerError::UnknownTopic))
    {
        Ok(topic) => topic,
        Err(error) => {
            let (error_code, error_message) = item_error(&error);
            return DescribeProducersResponse { error_code, error_message, partitions: Vec::new() };
        }
    };
    let mut budget = PRODUCERS_DESCRIBED_PER_RESPONSE_MAX;
    let mut partitions = Vec::with_capacity(topic.partitions.len());
    for partition in &topic.partitions {
        let limit = budget.min(PRODUCERS_DESCRIBED_MAX);
        let described = match partition.append_handle().producer_listing(limit).await {
            Ok(listing) => {
                budget -= listing.entries.len();
                let producers: Vec<ProducerDescription> = listing
                    .entries
                    .into_iter()
                    .filter_map(|(producer_id, entry)| {
                        let last = entry.batches.back()?;
                        Some(ProducerDescription {
                            producer_id,
                            epoch: entry.epoch,
                            last_sequence: last.last_sequence,
                            last_write_ms: entry.last_write_ms,
                            last_offset: last.last_offset,
                        })
                    })
                    .collect();
                PartitionProducers {
                    partition: partition.id,
                    truncated: producers.len() < listing.total,
                    producer_count: u32::try_from(listing.total).unwrap_or(u32::MAX),
                    producers,
                    ..PartitionProducers::default()
                }
            }
            Err(error) => {
                let (error_code, error_message) = item_error(&HandlerError::Log(error));
                PartitionProducers {
                    partition: partition.id,
                    error_code,
                    error_message,
                    ..PartitionProducers::default()
                }
            }
        };
        partitions.push(described);
    }
    DescribeProducersResponse { error_code: 0, error_message: String::new(), partitions }
}
