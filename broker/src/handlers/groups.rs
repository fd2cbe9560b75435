//! JoinGroup, Heartbeat, LeaveGroup, ListGroups and DescribeGroups: translation between the wire and the group
//! coordinator ([`crate::groups::Coordinator`]), which does the work in memory under a short lock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ferry_protocol::ErrorCode;
use ferry_protocol::messages::{
    DescribeGroupsRequest, DescribeGroupsResponse, GroupDescription, GroupListing, GroupMemberDescription,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    ListGroupsResponse, TopicPartitions, error_code_to_wire,
};
use tokio::time::Instant;

use super::{HandlerError, REQUEST_ITEMS_MAX, item_error};
use crate::groups::{JoinRequest, MemberView, SUBSCRIBED_TOPICS_MAX, TopicPartition};
use crate::server::ServerState;

/// Answers JoinGroup.
pub(crate) fn join(state: &ServerState, request: JoinGroupRequest) -> JoinGroupResponse {
    let join = JoinRequest {
        group: request.group_id,
        member_id: request.member_id,
        instance_id: request.instance_id,
        topics: request.topics,
        session_timeout: Duration::from_millis(request.session_timeout_ms.into()),
        assignor: request.assignor,
        client_id: request.client_id,
    };
    match state.groups.join(join, Instant::now()) {
        Ok(view) => {
            let (generation, assignment, heartbeat_interval_ms) = view_parts(&view);
            JoinGroupResponse {
                member_id: view.member_id,
                generation,
                assignment,
                heartbeat_interval_ms,
                ..JoinGroupResponse::default()
            }
        }
        Err(error) => {
            let (error_code, error_message) = item_error(&HandlerError::Group(error));
            JoinGroupResponse { error_code, error_message, ..JoinGroupResponse::default() }
        }
    }
}

/// Answers Heartbeat.
pub(crate) fn heartbeat(state: &ServerState, request: HeartbeatRequest) -> HeartbeatResponse {
    let n_owned: usize = request.owned.iter().map(|topic| topic.partitions.len()).sum();
    if n_owned > REQUEST_ITEMS_MAX || request.owned.len() > SUBSCRIBED_TOPICS_MAX {
        return HeartbeatResponse {
            error_code: error_code_to_wire(ErrorCode::InvalidRequest),
            ..HeartbeatResponse::default()
        };
    }
    let owned = from_wire(&request.owned);
    match state.groups.heartbeat(&request.group_id, &request.member_id, &owned, Instant::now()) {
        Ok(view) => {
            let (generation, assignment, heartbeat_interval_ms) = view_parts(&view);
            HeartbeatResponse { generation, assignment, heartbeat_interval_ms, ..HeartbeatResponse::default() }
        }
        Err(error) => {
            let (error_code, error_message) = item_error(&HandlerError::Group(error));
            HeartbeatResponse { error_code, error_message, ..HeartbeatResponse::default() }
        }
    }
}

/// Answers LeaveGroup.
pub(crate) fn leave(state: &ServerState, request: LeaveGroupRequest) -> LeaveGroupResponse {
    match state.groups.leave(&request.group_id, &request.member_id, Instant::now()) {
        Ok(()) => LeaveGroupResponse::default(),
        Err(error) => {
            let (error_code, error_message) = item_error(&HandlerError::Group(error));
            LeaveGroupResponse { error_code, error_message }
        }
    }
}

/// Answers ListGroups: the groups with members (in memory) and those with committed offsets (in the metadata store).
pub(crate) async fn list(state: &ServerState) -> ListGroupsResponse {
    let mut groups: BTreeMap<String, GroupListing> = BTreeMap::new();
    let meta = std::sync::Arc::clone(&state.meta);
    let max = state.config.groups.groups_max as usize;
    let stored = tokio::task::spawn_blocking(move || meta.offset_groups(max))
        .await
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
    match stored {
        Ok(stored) => {
            for group_id in stored {
                groups.insert(group_id.clone(), GroupListing { group_id, state: "empty".to_owned(), member_count: 0 });
            }
        }
        Err(error) => {
            let (error_code, _) = item_error(&HandlerError::Meta(error));
            return ListGroupsResponse { error_code, groups: Vec::new() };
        }
    }
    for (group_id, group_state, member_count) in state.groups.list() {
        let member_count = u32::try_from(member_count).unwrap_or(u32::MAX);
        groups.insert(group_id.clone(), GroupListing { group_id, state: group_state.name().to_owned(), member_count });
    }
    ListGroupsResponse { error_code: 0, groups: groups.into_values().collect() }
}

/// Answers DescribeGroups.
pub(crate) fn describe(state: &ServerState, request: DescribeGroupsRequest) -> DescribeGroupsResponse {
    if request.group_ids.len() > REQUEST_ITEMS_MAX {
        return DescribeGroupsResponse {
            error_code: error_code_to_wire(ErrorCode::InvalidRequest),
            groups: Vec::new(),
        };
    }
    let groups = request
        .group_ids
        .into_iter()
        .map(|group_id| match state.groups.describe(&group_id) {
            Ok(description) => GroupDescription {
                group_id,
                error_code: 0,
                state: description.state.name().to_owned(),
                generation: description.generation,
                assignor: description.assignor.map(|assignor| assignor.name().to_owned()).unwrap_or_default(),
                members: description
                    .members
                    .into_iter()
                    .map(|member| GroupMemberDescription {
                        member_id: member.member_id,
                        instance_id: member.instance_id,
                        client_id: member.client_id,
                        assignment: to_wire(&member.assignment),
                        target: to_wire(&member.target),
                    })
                    .collect(),
            },
            Err(error) => {
                let (error_code, _) = item_error(&HandlerError::Group(error));
                GroupDescription { group_id, error_code, ..GroupDescription::default() }
            }
        })
        .collect();
    DescribeGroupsResponse { error_code: 0, groups }
}

fn view_parts(view: &MemberView) -> (i32, Vec<TopicPartitions>, u32) {
    let interval_ms = u32::try_from(view.heartbeat_interval.as_millis()).unwrap_or(u32::MAX);
    (view.generation, to_wire(&view.assignment), interval_ms)
}

/// Partitions grouped by topic, as the wire lists them.
pub(crate) fn to_wire(partitions: &BTreeSet<TopicPartition>) -> Vec<TopicPartitions> {
    let mut topics: Vec<TopicPartitions> = Vec::new();
    for (topic, partition) in partitions {
        match topics.last_mut() {
            Some(last) if &last.topic == topic => last.partitions.push(*partition),
            _ => topics.push(TopicPartitions { topic: topic.clone(), partitions: vec![*partition] }),
        }
    }
    topics
}

/// The set of partitions a wire list names.
pub(crate) fn from_wire(topics: &[TopicPartitions]) -> BTreeSet<TopicPartition> {
    topics.iter().flat_map(|topic| topic.partitions.iter().map(|&partition| (topic.topic.clone(), partition))).collect()
}
