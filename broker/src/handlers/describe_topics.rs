//! DescribeTopics: each topic's config overrides and, per partition, its start and end offsets, size on disk, segment
//! count, fsync policy and health.

use ferry_protocol::ErrorCode;
use ferry_protocol::TopicName;
use ferry_protocol::messages::{
    DescribeTopicsRequest, DescribeTopicsResponse, PartitionDescription, TopicDescription, error_code_to_wire,
};

use super::{HandlerError, REQUEST_ITEMS_MAX, item_error};
use crate::partitions::{Topic, partition_health};
use crate::server::ServerState;

/// Answers a DescribeTopics request. Reads only in-memory state: offsets and status of each partition's reader.
pub(crate) fn handle(state: &ServerState, request: DescribeTopicsRequest) -> DescribeTopicsResponse {
    if request.names.len() > REQUEST_ITEMS_MAX {
        return DescribeTopicsResponse {
            error_code: error_code_to_wire(ErrorCode::InvalidRequest),
            topics: Vec::new(),
        };
    }
    let topics = request
        .names
        .into_iter()
        .map(|name| match find(state, &name) {
            Ok(topic) => describe(state, &topic, name),
            Err(error) => {
                let (error_code, error_message) = item_error(&error);
                TopicDescription { name, error_code, error_message, ..TopicDescription::default() }
            }
        })
        .collect();
    DescribeTopicsResponse { error_code: 0, topics }
}

fn find(state: &ServerState, name: &str) -> Result<std::sync::Arc<Topic>, HandlerError> {
    let name = TopicName::new(name.to_owned())?;
    state.partitions.topic(name.as_str()).ok_or(HandlerError::UnknownTopic)
}

fn describe(state: &ServerState, topic: &Topic, name: String) -> TopicDescription {
    // The topic's override, else the broker's policy: what its appenders run with (`partitions::log_config`).
    let fsync = topic.record.config.fsync.unwrap_or(state.config.fsync);
    let config = topic.record.config.to_pairs().into_iter().map(|(key, value)| (key.to_owned(), value)).collect();
    let partitions = topic
        .partitions
        .iter()
        .map(|partition| {
            let reader = partition.reader();
            let (damaged, error_code, error_message) = match partition_health(reader) {
                Ok(()) => (false, 0, String::new()),
                Err(error) => {
                    let damaged = matches!(error, ferry_log::LogError::Damaged { .. });
                    let (error_code, error_message) = item_error(&HandlerError::Log(error));
                    (damaged, error_code, error_message)
                }
            };
            PartitionDescription {
                partition: partition.id,
                start_offset: reader.start_offset(),
                end_offset: reader.visible_end(),
                damaged,
                error_code,
                error_message,
                size_bytes: reader.size_bytes(),
                segment_count: u32::try_from(reader.segment_count()).unwrap_or(u32::MAX),
                fsync: fsync.to_string(),
            }
        })
        .collect();
    TopicDescription { name, error_code: 0, error_message: String::new(), config, partitions }
}
