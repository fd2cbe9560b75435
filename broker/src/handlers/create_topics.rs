//! CreateTopics: each topic is validated and created on its own; results come back in request order.
//!
//! Per topic: a repeated name gets `INVALID_REQUEST`, the name and partition count are checked by
//! [`NewTopic::try_from`] (`INVALID_TOPIC`, `INVALID_PARTITIONS`), the config by [`TopicConfig::from_map`]
//! (`INVALID_CONFIG`), then the registry checks the broker's limits and creates it (see [`crate::partitions`]).

use std::collections::HashSet;

use ferry_protocol::ErrorCode;
use ferry_protocol::messages::{
    CreatableTopic, CreateTopicResult, CreateTopicsRequest, CreateTopicsResponse, NewTopic, error_code_to_wire,
};

use super::{HandlerError, REQUEST_ITEMS_MAX, item_error};
use crate::partitions::PartitionsError;
use crate::server::ServerState;
use crate::topic::TopicConfig;

/// Answers a CreateTopics request.
pub(crate) async fn handle(state: &ServerState, request: CreateTopicsRequest) -> CreateTopicsResponse {
    if request.topics.len() > REQUEST_ITEMS_MAX {
        return CreateTopicsResponse { error_code: error_code_to_wire(ErrorCode::InvalidRequest), topics: Vec::new() };
    }
    let mut seen = HashSet::new();
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.clone();
        let (error_code, error_message) = match create_one(state, topic, &mut seen).await {
            Ok(()) => (0, String::new()),
            Err(error) => item_error(&error),
        };
        results.push(CreateTopicResult { name, error_code, error_message });
    }
    CreateTopicsResponse { error_code: 0, topics: results }
}

async fn create_one(
    state: &ServerState,
    topic: CreatableTopic,
    seen: &mut HashSet<String>,
) -> Result<(), HandlerError> {
    if !seen.insert(topic.name.clone()) {
        return Err(HandlerError::DuplicateTopic);
    }
    let new_topic = NewTopic::try_from(topic)?;
    let config = TopicConfig::from_map(&new_topic.config).map_err(PartitionsError::InvalidConfig)?;
    state.partitions.create_topic(new_topic.name.into_string(), new_topic.partition_count, config).await?;
    Ok(())
}
