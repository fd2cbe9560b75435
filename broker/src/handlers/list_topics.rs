//! ListTopics: every active topic with its partition count, sorted by name.

use ferry_protocol::messages::{ListTopicsResponse, ListedTopic};

use crate::server::ServerState;

/// Answers a ListTopics request. Topics being deleted are not listed.
pub(crate) fn handle(state: &ServerState) -> ListTopicsResponse {
    let topics = state
        .partitions
        .topics()
        .iter()
        .map(|topic| ListedTopic { name: topic.name().to_owned(), partition_count: topic.record.partitions })
        .collect();
    ListTopicsResponse { error_code: 0, topics }
}
