//! DeleteTopics: each named topic is deleted on its own (see [`crate::partitions`] for the crash-safe steps).

use ferry_protocol::ErrorCode;
use ferry_protocol::TopicName;
use ferry_protocol::messages::{DeleteTopicResult, DeleteTopicsRequest, DeleteTopicsResponse, error_code_to_wire};

use super::{HandlerError, REQUEST_ITEMS_MAX, item_error};
use crate::server::ServerState;

/// Answers a DeleteTopics request.
pub(crate) async fn handle(state: &ServerState, request: DeleteTopicsRequest) -> DeleteTopicsResponse {
    if request.names.len() > REQUEST_ITEMS_MAX {
        return DeleteTopicsResponse { error_code: error_code_to_wire(ErrorCode::InvalidRequest), topics: Vec::new() };
    }
    let mut results = Vec::with_capacity(request.names.len());
    for name in request.names {
        let (error_code, error_message) = match delete_one(state, &name).await {
            Ok(()) => (0, String::new()),
            Err(error) => item_error(&error),
        };
        results.push(DeleteTopicResult { name, error_code, error_message });
    }
    DeleteTopicsResponse { error_code: 0, topics: results }
}

async fn delete_one(state: &ServerState, name: &str) -> Result<(), HandlerError> {
    let name = TopicName::new(name.to_owned())?;
    state.partitions.delete_topic(name.as_str()).await?;
    Ok(())
}
