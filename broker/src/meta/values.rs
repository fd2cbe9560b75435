//! The stored values: hand-written protobuf messages, and their conversions to and from domain types.
//!
//! Field 1 of every message is `version` (currently [`VALUE_VERSION`]). Field numbers, once used, are never reused.
//! Adding an optional field needs no new version (older brokers skip unknown fields);
//! changing a field's meaning does, and older brokers then refuse the value as corrupt instead of misreading it.
//! Enumerations start at 1, so a zeroed or missing field is caught.

use std::time::Duration;

use prost::Message as _;

use super::{BrokerInfo, CommittedOffset, CorruptReason};
use crate::config::{FsyncPolicy, Limit, millis};
use crate::topic::{TopicConfig, TopicRecord, TopicState};

/// The encoding version written by this broker.
pub(super) const VALUE_VERSION: u32 = 1;

const STATE_ACTIVE: u32 = 1;
const STATE_DELETING: u32 = 2;

/// `broker/info`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct BrokerInfoValue {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(uint32, tag = "2")]
    pub format_version: u32,
    #[prost(uint64, tag = "3")]
    pub broker_id: u64,
    /// 16 bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub cluster_id: Vec<u8>,
    #[prost(uint64, tag = "5")]
    pub created_at_ms: u64,
}

/// `broker/next_topic_id`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct NextIdValue {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(uint64, tag = "2")]
    pub next: u64,
}

/// `topics/<name>`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct TopicValue {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(uint64, tag = "2")]
    pub id: u64,
    #[prost(uint32, tag = "3")]
    pub partitions: u32,
    #[prost(uint64, tag = "4")]
    pub created_at_ms: u64,
    /// 1 = active, 2 = deleting.
    #[prost(uint32, tag = "5")]
    pub state: u32,
    #[prost(message, optional, tag = "6")]
    pub config: Option<TopicConfigValue>,
}

/// The overrides of a topic; an absent field uses the broker default.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct TopicConfigValue {
    /// Milliseconds, or -1 for forever.
    #[prost(int64, optional, tag = "1")]
    pub retention_ms: Option<i64>,
    /// Bytes, or -1 for no limit.
    #[prost(int64, optional, tag = "2")]
    pub retention_bytes: Option<i64>,
    #[prost(uint64, optional, tag = "3")]
    pub segment_bytes: Option<u64>,
    #[prost(uint64, optional, tag = "4")]
    pub segment_ms: Option<u64>,
    /// `always`, `interval:MS` or `never`.
    #[prost(string, optional, tag = "5")]
    pub fsync: Option<String>,
    #[prost(uint32, optional, tag = "6")]
    pub batch_bytes_max: Option<u32>,
    /// Milliseconds; 0 is off.
    #[prost(uint64, optional, tag = "7")]
    pub dedup_window_ms: Option<u64>,
}

/// `consumer_offsets/<group, topic id, partition>`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct OffsetValue {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    #[prost(string, tag = "3")]
    pub metadata: String,
    #[prost(uint64, tag = "4")]
    pub commit_time_ms: u64,
}

pub(super) fn offset_to_value(committed: &CommittedOffset) -> OffsetValue {
    OffsetValue {
        version: VALUE_VERSION,
        offset: committed.offset,
        metadata: committed.metadata.clone(),
        commit_time_ms: committed.commit_time_ms,
    }
}

pub(super) fn offset_from_value(value: OffsetValue) -> CommittedOffset {
    CommittedOffset { offset: value.offset, metadata: value.metadata, commit_time_ms: value.commit_time_ms }
}

pub(super) fn encode(value: &impl prost::Message) -> Vec<u8> {
    value.encode_to_vec()
}

/// Decodes a value and checks its version, which every message keeps in field 1.
pub(super) fn decode<V: prost::Message + Default>(bytes: &[u8]) -> Result<V, CorruptReason> {
    let version = Versioned::decode(bytes).map_err(CorruptReason::Decode)?.version;
    if version != VALUE_VERSION {
        return Err(CorruptReason::UnknownVersion { version });
    }
    V::decode(bytes).map_err(CorruptReason::Decode)
}

/// Field 1 of any stored value, read before the rest so that a value of an unknown version is never misread.
#[derive(Clone, PartialEq, prost::Message)]
struct Versioned {
    #[prost(uint32, tag = "1")]
    version: u32,
}

pub(super) fn broker_info_from_value(value: BrokerInfoValue) -> Result<BrokerInfo, CorruptReason> {
    let cluster_id: [u8; 16] =
        value.cluster_id.try_into().map_err(|_| CorruptReason::InvalidField { field: "cluster_id" })?;
    if value.broker_id == 0 {
        return Err(CorruptReason::InvalidField { field: "broker_id" });
    }
    if value.format_version == 0 {
        return Err(CorruptReason::InvalidField { field: "format_version" });
    }
    Ok(BrokerInfo {
        broker_id: value.broker_id,
        cluster_id: format!("{:032x}", u128::from_be_bytes(cluster_id)),
        format_version: value.format_version,
        created_at_ms: value.created_at_ms,
    })
}

pub(super) fn next_id_to_value(next: u64) -> NextIdValue {
    NextIdValue { version: VALUE_VERSION, next }
}

pub(super) fn next_id_from_value(value: NextIdValue) -> Result<u64, CorruptReason> {
    if value.next == 0 {
        return Err(CorruptReason::InvalidField { field: "next" });
    }
    Ok(value.next)
}

pub(super) fn topic_to_value(record: &TopicRecord) -> TopicValue {
    let config = &record.config;
    TopicValue {
        version: VALUE_VERSION,
        id: record.id,
        partitions: record.partitions,
        created_at_ms: record.created_at_ms,
        state: match record.state {
            TopicState::Active => STATE_ACTIVE,
            TopicState::Deleting => STATE_DELETING,
        },
        config: Some(TopicConfigValue {
            retention_ms: config.retention_age.map(|age| limit_to_value(age.map(millis))),
            retention_bytes: config.retention_bytes.map(limit_to_value),
            segment_bytes: config.segment_bytes,
            segment_ms: config.segment_age.map(millis),
            fsync: config.fsync.map(|policy| policy.to_string()),
            batch_bytes_max: config.batch_bytes_max,
            dedup_window_ms: config.dedup_window.map(millis),
        }),
    }
}

pub(super) fn topic_from_value(name: String, value: TopicValue) -> Result<TopicRecord, CorruptReason> {
    let state = match value.state {
        STATE_ACTIVE => TopicState::Active,
        STATE_DELETING => TopicState::Deleting,
        _ => return Err(CorruptReason::InvalidField { field: "state" }),
    };
    if value.id == 0 {
        return Err(CorruptReason::InvalidField { field: "id" });
    }
    if value.partitions == 0 {
        return Err(CorruptReason::InvalidField { field: "partitions" });
    }
    let stored = value.config.unwrap_or_default();
    let fsync = match stored.fsync {
        Some(text) => Some(text.parse::<FsyncPolicy>().map_err(|_| CorruptReason::InvalidField { field: "fsync" })?),
        None => None,
    };
    let config = TopicConfig {
        retention_age: stored
            .retention_ms
            .map(|value| limit_from_value(value, "retention_ms"))
            .transpose()?
            .map(|limit| limit.map(Duration::from_millis)),
        retention_bytes: stored.retention_bytes.map(|bytes| limit_from_value(bytes, "retention_bytes")).transpose()?,
        segment_bytes: stored.segment_bytes,
        segment_age: stored.segment_ms.map(Duration::from_millis),
        fsync,
        batch_bytes_max: stored.batch_bytes_max,
        dedup_window: stored.dedup_window_ms.map(Duration::from_millis),
    };
    Ok(TopicRecord {
        name,
        id: value.id,
        partitions: value.partitions,
        config,
        created_at_ms: value.created_at_ms,
        state,
    })
}

fn limit_to_value(limit: Limit<u64>) -> i64 {
    match limit {
        Limit::Unlimited => -1,
        // Bounds checks keep limits far below i64::MAX; saturate rather than wrap if one slipped through.
        Limit::AtMost(value) => i64::try_from(value).unwrap_or(i64::MAX),
    }
}

fn limit_from_value(value: i64, field: &'static str) -> Result<Limit<u64>, CorruptReason> {
    match u64::try_from(value) {
        Ok(value) => Ok(Limit::AtMost(value)),
        Err(_) if value == -1 => Ok(Limit::Unlimited),
        Err(_) => Err(CorruptReason::InvalidField { field }),
    }
}
