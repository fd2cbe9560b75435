//! Topics as the broker's domain sees them: the stored [`TopicRecord`] and its per-topic [`TopicConfig`].
//!
//! These are plain domain types: the metadata store persists them in its own encoding,
//! and the admin handlers (a later issue) translate the wire's `CreatableTopic` into them.
//! A [`TopicConfig`] holds only the keys a topic overrides; the broker's `[log]` defaults fill in the rest.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{Bounds, FsyncPolicy, Limit, bounds, millis};

/// What the broker asks the metadata store to create; the store assigns the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic name (validated by the caller, e.g. with `ferry_protocol::messages::TopicName`).
    pub name: String,
    /// The number of partitions, at least 1 (checked by the caller against `server.partitions_per_topic_max`).
    pub partitions: u32,
    /// The per-topic overrides.
    pub config: TopicConfig,
}

/// A topic as stored in the metadata store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    /// The topic name, unique among existing topics.
    pub name: String,
    /// Assigned at creation from a counter that never goes back, so a topic deleted and created again under the same
    /// name gets a new id, and state keyed by id (partition directories, offsets) never leaks into the new topic.
    pub id: u64,
    /// The number of partitions, numbered `0..partitions`.
    pub partitions: u32,
    /// The per-topic overrides.
    pub config: TopicConfig,
    /// When the topic was created, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Whether the topic is in service or being deleted.
    pub state: TopicState,
}

/// The life-cycle state of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicState {
    /// In service: accepts produce and fetch requests.
    Active,
    /// Being deleted: refuses requests while its partition files are removed,
    /// so a crash in the middle of a deletion finishes it on restart instead of resurrecting the topic.
    Deleting,
}

/// Per-topic overrides of the broker's `[log]` defaults; `None` means "use the broker default".
///
/// Parsed from `KEY=VALUE` strings (`ferry topic create --config retention.ms=1000`) or from the wire's config map.
/// Keys and values follow `CreatableTopic.config` in `protocol/proto/topics.proto`,
/// with the same bounds as the broker keys they override (see [`crate::config::bounds`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicConfig {
    /// `retention.ms`: milliseconds, or -1 to keep segments forever. Overrides `log.retention_ms`.
    pub retention_age: Option<Limit<Duration>>,
    /// `retention.bytes`: bytes per partition, or -1 for no limit. Overrides `log.retention_bytes`.
    pub retention_bytes: Option<Limit<u64>>,
    /// `segment.bytes`: bytes. Overrides `log.segment_bytes`.
    pub segment_bytes: Option<u64>,
    /// `segment.ms`: milliseconds. Overrides `log.segment_ms`.
    pub segment_age: Option<Duration>,
    /// `fsync`: `always`, `interval:MS` or `never`. Overrides the broker's `fsync`.
    pub fsync: Option<FsyncPolicy>,
    /// `max.message.bytes`: bytes. Overrides `log.batch_bytes_max`; the admin handler also rejects values above the
    /// broker's `log.batch_bytes_max`, which this type does not know.
    pub batch_bytes_max: Option<u32>,
    /// `dedup.window.ms`: milliseconds, 0 (the default) turns message-id dedup off. Records carrying a
    /// `ferry.dedup.key` header whose key was appended to the partition within the window are dropped.
    pub dedup_window: Option<Duration>,
}

/// Why a topic config override was rejected (the wire maps it to `INVALID_CONFIG`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicConfigError {
    /// A `KEY=VALUE` argument has no `=`.
    #[error("expected KEY=VALUE, got {pair:?}")]
    NotAPair {
        /// The argument as given.
        pair: String,
    },
    /// The key is not a topic config key.
    #[error("unknown topic config key {key:?}; known keys: {}", TopicConfig::KEYS.join(", "))]
    UnknownKey {
        /// The key as given.
        key: String,
    },
    /// The same key was given twice.
    #[error("topic config key {key} is given more than once")]
    DuplicateKey {
        /// The repeated key.
        key: &'static str,
    },
    /// The value does not parse.
    #[error("invalid value {value:?} for topic config key {key}: expected {expected}")]
    InvalidValue {
        /// The key.
        key: &'static str,
        /// The value as given.
        value: String,
        /// What the key accepts.
        expected: &'static str,
    },
    /// The value parses but lies outside the key's bounds.
    #[error("topic config key {key} = {value} is out of range {bounds}")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// The value given, in the key's unit.
        value: u64,
        /// The accepted range (-1 is also accepted where the key allows "no limit").
        bounds: Bounds,
    },
}

const RETENTION_MS: &str = "retention.ms";
const RETENTION_BYTES: &str = "retention.bytes";
const SEGMENT_BYTES: &str = "segment.bytes";
const SEGMENT_MS: &str = "segment.ms";
const FSYNC: &str = "fsync";
const MAX_MESSAGE_BYTES: &str = "max.message.bytes";
const DEDUP_WINDOW_MS: &str = "dedup.window.ms";

impl TopicConfig {
    /// Every topic config key, in the order [`TopicConfig::to_pairs`] lists them.
    pub const KEYS: [&str; 7] =
        [RETENTION_MS, RETENTION_BYTES, SEGMENT_BYTES, SEGMENT_MS, FSYNC, MAX_MESSAGE_BYTES, DEDUP_WINDOW_MS];

    /// The message-id dedup window, if the topic deduplicates (`dedup.window.ms` set and not 0).
    pub fn dedup_window(&self) -> Option<Duration> {
        self.dedup_window.filter(|window| !window.is_zero())
    }

    /// Parses `KEY=VALUE` arguments, as given to `ferry topic create --config`; a key may appear once.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<TopicConfig, TopicConfigError> {
        let mut config = TopicConfig::default();
        for pair in pairs {
            let (key, value) =
                pair.split_once('=').ok_or_else(|| TopicConfigError::NotAPair { pair: pair.to_owned() })?;
            config.set(key.trim(), value.trim())?;
        }
        Ok(config)
    }

    /// Parses the wire's config map (`CreatableTopic.config`).
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<TopicConfig, TopicConfigError> {
        let mut config = TopicConfig::default();
        for (key, value) in map {
            config.set(key, value)?;
        }
        Ok(config)
    }

    /// Sets one override; fails on an unknown key, a bad value, or a key that is already set.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), TopicConfigError> {
        match key {
            RETENTION_MS => {
                let age = parse_limit(RETENTION_MS, value, bounds::RETENTION_MS)?.map(Duration::from_millis);
                set_once(&mut self.retention_age, RETENTION_MS, age)
            }
            RETENTION_BYTES => {
                let limit = parse_limit(RETENTION_BYTES, value, bounds::RETENTION_BYTES)?;
                set_once(&mut self.retention_bytes, RETENTION_BYTES, limit)
            }
            SEGMENT_BYTES => {
                let bytes = parse_bounded(SEGMENT_BYTES, value, bounds::SEGMENT_BYTES)?;
                set_once(&mut self.segment_bytes, SEGMENT_BYTES, bytes)
            }
            SEGMENT_MS => {
                let millis = parse_bounded(SEGMENT_MS, value, bounds::SEGMENT_MS)?;
                set_once(&mut self.segment_age, SEGMENT_MS, Duration::from_millis(millis))
            }
            FSYNC => {
                let policy = value.parse().map_err(|_| TopicConfigError::InvalidValue {
                    key: FSYNC,
                    value: value.to_owned(),
                    expected: "always, interval:MS or never",
                })?;
                set_once(&mut self.fsync, FSYNC, policy)
            }
            MAX_MESSAGE_BYTES => {
                let bytes = parse_bounded(MAX_MESSAGE_BYTES, value, bounds::BATCH_BYTES)?;
                let bytes = u32::try_from(bytes).expect("bounds::BATCH_BYTES lies within u32");
                set_once(&mut self.batch_bytes_max, MAX_MESSAGE_BYTES, bytes)
            }
            DEDUP_WINDOW_MS => {
                let millis = parse_bounded(DEDUP_WINDOW_MS, value, bounds::DEDUP_WINDOW_MS)?;
                set_once(&mut self.dedup_window, DEDUP_WINDOW_MS, Duration::from_millis(millis))
            }
            _ => Err(TopicConfigError::UnknownKey { key: key.to_owned() }),
        }
    }

    /// The overrides that are set, as canonical `(key, value)` pairs that [`TopicConfig::set`] parses back,
    /// e.g. for `ferry topic describe`.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(age) = self.retention_age {
            pairs.push((RETENTION_MS, limit_text(age.map(millis))));
        }
        if let Some(bytes) = self.retention_bytes {
            pairs.push((RETENTION_BYTES, limit_text(bytes)));
        }
        if let Some(bytes) = self.segment_bytes {
            pairs.push((SEGMENT_BYTES, bytes.to_string()));
        }
        if let Some(age) = self.segment_age {
            pairs.push((SEGMENT_MS, millis(age).to_string()));
        }
        if let Some(policy) = self.fsync {
            pairs.push((FSYNC, policy.to_string()));
        }
        if let Some(bytes) = self.batch_bytes_max {
            pairs.push((MAX_MESSAGE_BYTES, bytes.to_string()));
        }
        if let Some(window) = self.dedup_window {
            pairs.push((DEDUP_WINDOW_MS, millis(window).to_string()));
        }
        pairs
    }
}

fn limit_text(limit: Limit<u64>) -> String {
    match limit {
        Limit::Unlimited => "-1".to_owned(),
        Limit::AtMost(value) => value.to_string(),
    }
}

fn set_once<T>(slot: &mut Option<T>, key: &'static str, value: T) -> Result<(), TopicConfigError> {
    if slot.is_some() {
        return Err(TopicConfigError::DuplicateKey { key });
    }
    *slot = Some(value);
    Ok(())
}

fn parse_bounded(key: &'static str, value: &str, bounds: Bounds) -> Result<u64, TopicConfigError> {
    let number: u64 = value.parse().map_err(|_| TopicConfigError::InvalidValue {
        key,
        value: value.to_owned(),
        expected: "a non-negative integer",
    })?;
    if !bounds.contains(number) {
        return Err(TopicConfigError::OutOfRange { key, value: number, bounds });
    }
    Ok(number)
}

fn parse_limit(key: &'static str, value: &str, bounds: Bounds) -> Result<Limit<u64>, TopicConfigError> {
    if value == "-1" {
        return Ok(Limit::Unlimited);
    }
    let number: u64 = value.parse().map_err(|_| TopicConfigError::InvalidValue {
        key,
        value: value.to_owned(),
        expected: "-1 (no limit) or a non-negative integer",
    })?;
    if !bounds.contains(number) {
        return Err(TopicConfigError::OutOfRange { key, value: number, bounds });
    }
    Ok(Limit::AtMost(number))
}

#[cfg(test)]
mod tests;
