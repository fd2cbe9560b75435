//! Broker configuration: built-in defaults, overridden by a TOML file, overridden by command-line flags.
//!
//! [`Config::load`] merges the three sources in that order of precedence (flags > `--config FILE` > defaults).
//! [`Config::validate`] then checks every bound once, at startup, and names the offending key,
//! so the rest of the broker can rely on the values without re-checking them.
//! Unknown keys in the file are an error, so a typo is never silently ignored.
//!
//! `ops/broker.toml` is the commented default config file: it lists every key with its unit, default, bounds and
//! effect, and a test asserts that it parses to exactly [`Config::default`], so the two cannot drift.
//!
//! Keys carry their unit in their name (`segment_bytes`, `idle_timeout_ms`); in code, durations are [`Duration`]s.
//! Top-level keys are the ones with a command-line flag of the same name (`data_dir` is `--data-dir`).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ferry_log::config::{FSYNC_INTERVAL_MAX, INDEX_INTERVAL_BYTES_MAX, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};
use ferry_protocol::limits::{BATCH_BYTES_MAX, FRAME_BYTES_MAX, FRAME_OVERHEAD_BYTES_MAX, PARTITIONS_PER_TOPIC_MAX};
use serde::{Deserialize, Deserializer};

/// An inclusive range that a numeric config value must fall in, shared by the broker config and topic overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The smallest accepted value.
    pub min: u64,
    /// The largest accepted value.
    pub max: u64,
}

impl Bounds {
    /// Whether `value` lies within the bounds.
    pub fn contains(self, value: u64) -> bool {
        self.min <= value && value <= self.max
    }
}

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

/// The bounds of every numeric key, named after the key.
///
/// Topic overrides (`retention.ms`, ...) use the same bounds as the broker defaults they override.
pub mod bounds {
    use super::{
        BATCH_BYTES_MAX, Bounds, FRAME_BYTES_MAX, FRAME_OVERHEAD_BYTES_MAX, FSYNC_INTERVAL_MAX,
        INDEX_INTERVAL_BYTES_MAX, PARTITIONS_PER_TOPIC_MAX, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
    };

    /// Longest configurable duration, in milliseconds (100 years).
    /// It keeps deadline arithmetic (`Instant + Duration`) far from overflow; use -1 where "forever" is meant.
    pub const DURATION_MS_MAX: u64 = 100 * 365 * 24 * 3600 * 1000;

    /// `log.segment_bytes` / `segment.bytes`: the partition log's limits, 4 KiB to 2 GiB
    /// (so every batch position within a segment fits the index's `u32`).
    pub const SEGMENT_BYTES: Bounds = Bounds { min: SEGMENT_BYTES_MIN, max: SEGMENT_BYTES_MAX };
    /// `log.segment_ms` / `segment.ms`, in milliseconds.
    pub const SEGMENT_MS: Bounds = Bounds { min: 1, max: DURATION_MS_MAX };
    /// `log.retention_ms` / `retention.ms`, in milliseconds, when not -1 (forever).
    pub const RETENTION_MS: Bounds = Bounds { min: 1, max: DURATION_MS_MAX };
    /// `log.retention_bytes` / `retention.bytes`, when not -1 (no limit).
    /// 0 keeps only the active segment.
    pub const RETENTION_BYTES: Bounds = Bounds { min: 0, max: i64::MAX as u64 };
    /// `log.index_interval_bytes`: 1 (an index entry for every batch) to the partition log's limit, 1 MiB.
    pub const INDEX_INTERVAL_BYTES: Bounds = Bounds { min: 1, max: INDEX_INTERVAL_BYTES_MAX as u64 };
    /// `dedup.window.ms`: how long a topic remembers dedup keys, in milliseconds; 0 turns message-id dedup off.
    /// At most one day, so the dedup column families the window spans stay few.
    pub const DEDUP_WINDOW_MS: Bounds = Bounds { min: 0, max: 86_400_000 };
    /// `log.batch_bytes_max` / `max.message.bytes`: 1 KiB to the wire format's `BATCH_BYTES_MAX`.
    pub const BATCH_BYTES: Bounds = Bounds { min: 1024, max: BATCH_BYTES_MAX as u64 };
    /// `fsync = "interval:MS"`, in milliseconds: the partition log's limits, 1 ms to 1 hour.
    pub const FSYNC_INTERVAL_MS: Bounds = Bounds { min: 1, max: FSYNC_INTERVAL_MAX.as_millis() as u64 };
    /// `server.connections_max`.
    pub const CONNECTIONS: Bounds = Bounds { min: 1, max: 1_000_000 };
    /// `server.in_flight_requests_max`.
    pub const IN_FLIGHT_REQUESTS: Bounds = Bounds { min: 1, max: 1024 };
    /// `server.idle_timeout_ms`: 1 second to 1 day.
    pub const IDLE_TIMEOUT_MS: Bounds = Bounds { min: 1000, max: 24 * 3600 * 1000 };
    /// `server.request_read_timeout_ms`: 100 ms to 10 minutes.
    pub const REQUEST_READ_TIMEOUT_MS: Bounds = Bounds { min: 100, max: 600_000 };
    /// `server.fetch_wait_ms_max`: 0 (no long polling) to 10 minutes.
    pub const FETCH_WAIT_MS: Bounds = Bounds { min: 0, max: 600_000 };
    /// `server.frame_bytes_max`: room for the frame overhead plus the smallest `batch_bytes_max`,
    /// up to the wire format's `FRAME_BYTES_MAX`.
    pub const FRAME_BYTES: Bounds =
        Bounds { min: FRAME_OVERHEAD_BYTES_MAX as u64 + BATCH_BYTES.min, max: FRAME_BYTES_MAX as u64 };
    /// `server.partitions_per_topic_max`.
    pub const PARTITIONS_PER_TOPIC: Bounds = Bounds { min: 1, max: PARTITIONS_PER_TOPIC_MAX as u64 };
    /// `server.request_timeout_ms`: 100 ms to 10 minutes.
    pub const REQUEST_TIMEOUT_MS: Bounds = Bounds { min: 100, max: 600_000 };
    /// `server.write_timeout_ms`: 100 ms to 10 minutes.
    pub const WRITE_TIMEOUT_MS: Bounds = Bounds { min: 100, max: 600_000 };
    /// `server.request_bytes_max`: 12 MiB (three quarters hold a frame of the largest `server.frame_bytes_max`; checked
    /// against the configured one too) to 64 GiB.
    pub const REQUEST_BYTES: Bounds = Bounds { min: 12 << 20, max: 64 << 30 };
    /// `server.response_bytes_max`: at least one response of the largest frame (8 MiB), at most 64 GiB.
    pub const RESPONSE_BYTES: Bounds = Bounds { min: FRAME_BYTES_MAX as u64, max: 64 << 30 };
    /// `server.fetch_bytes_max`: 1 KiB to the wire format's `BATCH_BYTES_MAX`, so that a response with a
    /// maximal batch and the frame overhead still fits in a frame.
    pub const FETCH_BYTES: Bounds = Bounds { min: 1024, max: BATCH_BYTES_MAX as u64 };
    /// `server.topics_max`.
    pub const TOPICS: Bounds = Bounds { min: 1, max: 1_000_000 };
    /// `server.partitions_max`: every partition has an appender thread and open files, so the bound is modest.
    pub const PARTITIONS: Bounds = Bounds { min: 1, max: 100_000 };
    /// `producers.ids_max`: active idempotent producer ids.
    pub const PRODUCER_IDS: Bounds = Bounds { min: 1, max: 10_000_000 };
    /// `producers.entries_max`: (producer id, partition) pairs with dedup state, over the whole broker.
    pub const PRODUCER_ENTRIES: Bounds = Bounds { min: 1, max: 100_000_000 };
    /// `producers.id_expiration_ms`: 1 second (for tests) to 30 days.
    pub const PRODUCER_ID_EXPIRATION_MS: Bounds = Bounds { min: 1000, max: 30 * 24 * 3600 * 1000 };
    /// `producers.snapshot_interval_ms`: 100 ms to 1 hour.
    pub const PRODUCER_SNAPSHOT_INTERVAL_MS: Bounds = Bounds { min: 100, max: 3600 * 1000 };
    /// `producers.snapshot_bytes`: 1 MiB to 16 GiB.
    pub const PRODUCER_SNAPSHOT_BYTES: Bounds = Bounds { min: 1 << 20, max: 16 << 30 };
    /// `groups.groups_max`.
    pub const GROUPS: Bounds = Bounds { min: 1, max: 1_000_000 };
    /// `groups.members_per_group_max`.
    pub const MEMBERS_PER_GROUP: Bounds = Bounds { min: 1, max: 100_000 };
    /// `groups.session_timeout_ms_min` and `groups.session_timeout_ms_max`: 100 ms to 1 hour.
    pub const SESSION_TIMEOUT_MS: Bounds = Bounds { min: 100, max: 3_600_000 };
    /// `groups.offsets_retention_ms`: 1 second to 100 years.
    pub const OFFSETS_RETENTION_MS: Bounds = Bounds { min: 1000, max: DURATION_MS_MAX };
    /// `groups.offsets_retention_check_interval_ms`: 1 second to 1 day.
    pub const OFFSETS_RETENTION_CHECK_INTERVAL_MS: Bounds = Bounds { min: 1000, max: 24 * 3600 * 1000 };
    /// `transactions.timeout_max_ms` and `transactions.timeout_default_ms`: 100 ms to 1 day.
    pub const TRANSACTION_TIMEOUT_MS: Bounds = Bounds { min: 100, max: 24 * 3600 * 1000 };
    /// `transactions.ids_max`: transactional ids the broker keeps.
    pub const TRANSACTIONAL_IDS: Bounds = Bounds { min: 1, max: 1_000_000 };
    /// `transactions.open_max`: transactions open at once.
    pub const OPEN_TRANSACTIONS: Bounds = Bounds { min: 1, max: 100_000 };
    /// `transactions.bytes_max`: staged bytes per transaction, 1 MiB to 16 GiB.
    pub const TRANSACTION_BYTES: Bounds = Bounds { min: 1 << 20, max: 16 << 30 };
    /// `transactions.partitions_max`: partitions per transaction.
    pub const TRANSACTION_PARTITIONS: Bounds = Bounds { min: 1, max: 100_000 };
    /// `transactions.timeout_check_interval_ms`: 10 ms to 1 minute.
    pub const TRANSACTION_CHECK_INTERVAL_MS: Bounds = Bounds { min: 10, max: 60_000 };
}

/// A limit that can be switched off, such as retention by age or by size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit<T> {
    /// No limit: written as -1 in config files and topic overrides (as in Kafka).
    Unlimited,
    /// The limit.
    AtMost(T),
}

impl<T> Limit<T> {
    /// The limit, or `None` for no limit (the partition log's `LogConfig` spells limits that way).
    pub fn at_most(self) -> Option<T> {
        match self {
            Limit::Unlimited => None,
            Limit::AtMost(value) => Some(value),
        }
    }

    /// Applies `f` to the limit, if there is one.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Limit<U> {
        match self {
            Limit::Unlimited => Limit::Unlimited,
            Limit::AtMost(value) => Limit::AtMost(f(value)),
        }
    }
}

/// When the partition log fsyncs appended batches, and so what an acknowledgement promises:
/// `always`, `interval:<ms>` or `never` (the `--fsync` flag, the `fsync` key and the `fsync` topic override).
/// Defined by the partition log, which enforces it; re-exported so the config has one type for it.
pub use ferry_log::FsyncPolicy;

/// How the broker writes its own diagnostic log lines to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Command-line flags of `ferry-broker`; each overrides the config-file key of the same name.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(name = "ferry-broker", version, about = "The Ferry message broker")]
pub struct Args {
    /// TOML config file; see ops/broker.toml for every key. Flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory holding the partition logs and the metadata store [default: ./ferry-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address for client connections, IP:PORT [default: 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address of the Prometheus /metrics endpoint, IP:PORT [default: 127.0.0.1:7071].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// When to fsync appended batches: always | interval:MS | never [default: always].
    #[arg(long, value_name = "POLICY")]
    pub fsync: Option<FsyncPolicy>,
    /// Format of the broker's own log lines on stderr [default: text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// The broker's configuration, validated once at startup by [`Config::validate`].
///
/// Each field documents its TOML key, unit, default, bounds and effect; `ops/broker.toml` says the same to operators.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `data_dir` (`--data-dir`), default `./ferry-data`: holds the partition logs, the metadata store (`meta/`)
    /// and the `LOCK` file that keeps a second broker out. Created if missing; must not be empty.
    /// A relative path is relative to the working directory, not to the config file.
    pub data_dir: PathBuf,
    /// `listen` (`--listen`), default `127.0.0.1:7070`: IP:PORT for client connections; port 0 picks a free port.
    pub listen: SocketAddr,
    /// `metrics_listen` (`--metrics-listen`), default `127.0.0.1:7071`: IP:PORT of the Prometheus `/metrics` endpoint;
    /// port 0 picks a free port (logged as `metrics listening on ADDR`). Must differ from `listen`.
    pub metrics_listen: SocketAddr,
    /// `fsync` (`--fsync`), default `always`: when appended batches reach the disk, and so what an acknowledgement
    /// promises; topics may override it. `interval:MS` takes MS in [`bounds::FSYNC_INTERVAL_MS`].
    #[serde(deserialize_with = "deserialize_from_str")]
    pub fsync: FsyncPolicy,
    /// `log_format` (`--log-format`), default `text`: `text` or `json` lines on stderr.
    /// The level filter comes from `RUST_LOG` (default `info`).
    pub log_format: LogFormat,
    /// `[log]`: defaults of the partition logs (not the broker's diagnostic log: see `log_format`).
    pub log: LogDefaults,
    /// `[server]`: connection and request limits.
    pub server: ServerConfig,
    /// `[producers]`: idempotent producers' ids and dedup state.
    pub producers: ProducersConfig,
    /// `[groups]`: consumer-group limits, session timeouts and offset retention.
    pub groups: GroupsConfig,
    /// `[transactions]`: transaction timeouts and limits.
    pub transactions: TransactionsConfig,
}

/// The `[transactions]` section: the transaction coordinator's timeouts and limits (see `crate::transactions`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransactionsConfig {
    /// `transactions.timeout_default_ms`, milliseconds, default 60 s, bounds [`bounds::TRANSACTION_TIMEOUT_MS`] and at
    /// most `timeout_max_ms`: the timeout of a transactional producer that asks for none.
    #[serde(rename = "timeout_default_ms", deserialize_with = "deserialize_millis")]
    pub timeout_default: Duration,
    /// `transactions.timeout_max_ms`, milliseconds, default 15 minutes, bounds [`bounds::TRANSACTION_TIMEOUT_MS`]:
    /// the longest timeout a producer may ask for (longer gets `INVALID_TRANSACTION_TIMEOUT`). An open transaction
    /// older than its timeout is aborted by the broker.
    #[serde(rename = "timeout_max_ms", deserialize_with = "deserialize_millis")]
    pub timeout_max: Duration,
    /// `transactions.timeout_check_interval_ms`, milliseconds, default 1000, bounds
    /// [`bounds::TRANSACTION_CHECK_INTERVAL_MS`]: how often timed-out transactions are looked for (a transaction is
    /// aborted at most this long after its timeout).
    #[serde(rename = "timeout_check_interval_ms", deserialize_with = "deserialize_millis")]
    pub timeout_check_interval: Duration,
    /// `transactions.ids_max`, default 10000, bounds [`bounds::TRANSACTIONAL_IDS`]: the most transactional ids the
    /// broker keeps (each holds a producer id); `InitProducerId` with a new one beyond it gets `TOO_MANY_TRANSACTIONS`.
    pub ids_max: u32,
    /// `transactions.open_max`, default 1000, bounds [`bounds::OPEN_TRANSACTIONS`]: the most transactions open at
    /// once; beginning one more gets `TOO_MANY_TRANSACTIONS` (retriable).
    pub open_max: u32,
    /// `transactions.bytes_max`, default 256 MiB, bounds [`bounds::TRANSACTION_BYTES`]: the most record-batch bytes
    /// one transaction may stage; the request that would exceed it gets `TRANSACTION_TOO_LARGE` and aborts the
    /// transaction. Staged batches live in the metadata store (on disk), not in memory.
    pub bytes_max: u64,
    /// `transactions.partitions_max`, default 1000, bounds [`bounds::TRANSACTION_PARTITIONS`]: the most partitions
    /// one transaction may write to (beyond it: `TRANSACTION_TOO_LARGE`, and the transaction is aborted).
    pub partitions_max: u32,
}

impl Default for TransactionsConfig {
    fn default() -> TransactionsConfig {
        TransactionsConfig {
            timeout_default: Duration::from_secs(60),
            timeout_max: Duration::from_secs(15 * 60),
            timeout_check_interval: Duration::from_secs(1),
            ids_max: 10_000,
            open_max: 1000,
            bytes_max: 256 * 1024 * 1024,
            partitions_max: 1000,
        }
    }
}

/// The `[producers]` section: idempotent producer ids and the per-partition dedup state (see `crate::producers`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducersConfig {
    /// `producers.ids_max`, default 100000, bounds [`bounds::PRODUCER_IDS`]: the most producer ids alive at once
    /// (issued and not expired). `InitProducerId` over it gets `PRODUCER_ID_LIMIT`; a live producer is never evicted
    /// to make room. It is also each partition's limit on the producer ids it tracks.
    pub ids_max: u32,
    /// `producers.entries_max`, default 1000000, bounds [`bounds::PRODUCER_ENTRIES`]: the most (producer id,
    /// partition) pairs with dedup state over the whole broker, which bounds the dedup tables' memory (about 256 bytes
    /// each, see `ferry_log::producers::ENTRY_BYTES_MAX`). A producer's first batch to a partition over it gets
    /// `PRODUCER_ID_LIMIT`; live state is never evicted.
    pub entries_max: u32,
    /// `producers.id_expiration_ms`, milliseconds, default 1 day, bounds [`bounds::PRODUCER_ID_EXPIRATION_MS`]:
    /// a producer id that writes nothing for this long is forgotten (its next batch gets `UNKNOWN_PRODUCER_ID`).
    /// Must be far longer than any producer's delivery timeout, which clients check.
    #[serde(rename = "id_expiration_ms", deserialize_with = "deserialize_millis")]
    pub id_expiration: Duration,
    /// `producers.snapshot_interval_ms`, milliseconds, default 60 s, bounds
    /// [`bounds::PRODUCER_SNAPSHOT_INTERVAL_MS`]: the longest a partition's dedup state goes without a snapshot to
    /// the metadata store while producers write to it.
    #[serde(rename = "snapshot_interval_ms", deserialize_with = "deserialize_millis")]
    pub snapshot_interval: Duration,
    /// `producers.snapshot_bytes`, default 64 MiB, bounds [`bounds::PRODUCER_SNAPSHOT_BYTES`]: a partition snapshots
    /// its dedup state after this many bytes were appended; a restart replays at most about this much of each log.
    pub snapshot_bytes: u64,
}

impl Default for ProducersConfig {
    fn default() -> ProducersConfig {
        ProducersConfig {
            ids_max: 100_000,
            entries_max: 1_000_000,
            id_expiration: DAY,
            snapshot_interval: Duration::from_secs(60),
            snapshot_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The `[groups]` section: the consumer-group coordinator's limits and offset retention.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// `groups.groups_max`, default 10000, bounds [`bounds::GROUPS`]: the most groups the coordinator keeps in memory
    /// (with members, or with a commit in flight); joining or committing to a new group beyond it gets
    /// `RESOURCE_LIMIT_REACHED`.
    pub groups_max: u32,
    /// `groups.members_per_group_max`, default 1000, bounds [`bounds::MEMBERS_PER_GROUP`]:
    /// a member joining a full group gets `GROUP_FULL`.
    pub members_per_group_max: u32,
    /// `groups.session_timeout_ms_min`, milliseconds, default 1000, bounds [`bounds::SESSION_TIMEOUT_MS`]:
    /// the shortest session timeout a member may ask for (shorter gets `INVALID_SESSION_TIMEOUT`).
    #[serde(rename = "session_timeout_ms_min", deserialize_with = "deserialize_millis")]
    pub session_timeout_min: Duration,
    /// `groups.session_timeout_ms_max`, milliseconds, default 5 minutes, bounds [`bounds::SESSION_TIMEOUT_MS`]
    /// and at least `session_timeout_ms_min`: the longest session timeout a member may ask for.
    #[serde(rename = "session_timeout_ms_max", deserialize_with = "deserialize_millis")]
    pub session_timeout_max: Duration,
    /// `groups.offsets_retention_ms`, milliseconds, default 7 days, bounds [`bounds::OFFSETS_RETENTION_MS`]:
    /// committed offsets of a group without members expire this long after the later of the group becoming empty
    /// and the commit; offsets of a deleted topic expire this long after their commit.
    #[serde(rename = "offsets_retention_ms", deserialize_with = "deserialize_millis")]
    pub offsets_retention: Duration,
    /// `groups.offsets_retention_check_interval_ms`, milliseconds, default 10 minutes,
    /// bounds [`bounds::OFFSETS_RETENTION_CHECK_INTERVAL_MS`]: how often expired offsets are looked for.
    #[serde(rename = "offsets_retention_check_interval_ms", deserialize_with = "deserialize_millis")]
    pub offsets_retention_check_interval: Duration,
}

/// The `[log]` section: defaults for every partition log; the per-topic overrides of the same names win.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogDefaults {
    /// `log.segment_bytes`, bytes, default 1 GiB, bounds [`bounds::SEGMENT_BYTES`]:
    /// the active segment rolls to a new file once it reaches this size. Topic override: `segment.bytes`.
    pub segment_bytes: u64,
    /// `log.segment_ms`, milliseconds, default 7 days, bounds [`bounds::SEGMENT_MS`]:
    /// the active segment rolls once it is this old, so retention by age can delete it. Topic override: `segment.ms`.
    #[serde(rename = "segment_ms", deserialize_with = "deserialize_millis")]
    pub segment_age: Duration,
    /// `log.retention_ms`, milliseconds or -1 (forever), default 7 days, bounds [`bounds::RETENTION_MS`]:
    /// whole segments whose newest record is older than this are deleted. Topic override: `retention.ms`.
    #[serde(rename = "retention_ms", deserialize_with = "deserialize_limit_millis")]
    pub retention_age: Limit<Duration>,
    /// `log.retention_bytes`, bytes or -1 (no limit), default -1, bounds [`bounds::RETENTION_BYTES`]:
    /// the oldest segments of a partition are deleted while it is larger than this. Topic override: `retention.bytes`.
    #[serde(deserialize_with = "deserialize_limit_bytes")]
    pub retention_bytes: Limit<u64>,
    /// `log.index_interval_bytes`, bytes, default 4096, bounds [`bounds::INDEX_INTERVAL_BYTES`]:
    /// an offset-index entry is written every this many log bytes; smaller means bigger indexes and shorter scans.
    pub index_interval_bytes: u32,
    /// `log.batch_bytes_max`, bytes, default `BATCH_BYTES_MAX` (8 MiB - 64 KiB), bounds [`bounds::BATCH_BYTES`]:
    /// a larger record batch is rejected with `RECORD_BATCH_TOO_LARGE`. Topic override: `max.message.bytes`.
    pub batch_bytes_max: u32,
}

/// The `[server]` section: limits on connections and requests (enforced by the network server).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `server.connections_max`, default 10000, bounds [`bounds::CONNECTIONS`]:
    /// connections beyond it are closed at once (counted in `ferry_connections_rejected_total`).
    pub connections_max: u32,
    /// `server.in_flight_requests_max`, per connection, default 64, bounds [`bounds::IN_FLIGHT_REQUESTS`]:
    /// once a connection has this many requests unanswered, the broker stops reading from it until one completes.
    pub in_flight_requests_max: u32,
    /// `server.idle_timeout_ms`, milliseconds, default 10 minutes, bounds [`bounds::IDLE_TIMEOUT_MS`]:
    /// a connection with no request in flight and nothing received for this long is closed.
    #[serde(rename = "idle_timeout_ms", deserialize_with = "deserialize_millis")]
    pub idle_timeout: Duration,
    /// `server.request_read_timeout_ms`, milliseconds, default 30 s, bounds [`bounds::REQUEST_READ_TIMEOUT_MS`]:
    /// a frame must arrive in full within this time of its first byte, or the connection is closed.
    #[serde(rename = "request_read_timeout_ms", deserialize_with = "deserialize_millis")]
    pub request_read_timeout: Duration,
    /// `server.fetch_wait_ms_max`, milliseconds, default 30 s, bounds [`bounds::FETCH_WAIT_MS`]:
    /// the longest a fetch may wait for new records; a longer requested wait is shortened to this.
    #[serde(rename = "fetch_wait_ms_max", deserialize_with = "deserialize_millis")]
    pub fetch_wait_max: Duration,
    /// `server.frame_bytes_max`, bytes, default `FRAME_BYTES_MAX` (8 MiB), bounds [`bounds::FRAME_BYTES`] and at least
    /// `log.batch_bytes_max` plus the frame overhead (64 KiB): a larger frame is a decode error and closes the
    /// connection. Reported to clients at version negotiation.
    pub frame_bytes_max: u32,
    /// `server.request_bytes_max`, bytes, default 128 MiB, bounds [`bounds::REQUEST_BYTES`]: the broker-wide budget of
    /// request frames being read or handled (Kafka's `queued.max.request.bytes`). A frame is charged its whole
    /// length as soon as its length prefix arrives, before its body is read, until its request completes; when the
    /// budget is spent, a connection waits (reading nothing more; the wait does not count against its request-read
    /// timeout) until earlier requests complete or partial frames are cut by `request_read_timeout_ms`. A quarter is
    /// kept for frames of at most 64 KiB, so small requests never wait behind large ones. Bounds the memory of
    /// requests whatever the number of connections (`ferry_request_bytes`, `ferry_request_budget_waits_total`).
    pub request_bytes_max: u64,
    /// `server.response_bytes_max`, bytes, default 256 MiB, bounds [`bounds::RESPONSE_BYTES`]: the broker-wide budget
    /// of responses queued for clients or reserved by fetches before they read (each connection also has its own
    /// 16 MiB queue). A fetch waits for room before it reads the log, another response before it is queued; room
    /// comes back as responses are written, or when `write_timeout_ms` closes a client that stopped reading. Bounds
    /// the memory of responses whatever the number of connections (`ferry_response_bytes`,
    /// `ferry_response_budget_waits_total`).
    pub response_bytes_max: u64,
    /// `server.partitions_per_topic_max`, default `PARTITIONS_PER_TOPIC_MAX` (1024),
    /// bounds [`bounds::PARTITIONS_PER_TOPIC`]: creating a topic with more partitions gets `INVALID_PARTITIONS`.
    pub partitions_per_topic_max: u32,
    /// `server.request_timeout_ms`, milliseconds, default 30 s, bounds [`bounds::REQUEST_TIMEOUT_MS`]:
    /// the longest a produce request waits for its appends to be acknowledged (its own `timeout_ms`, if set, is
    /// lowered to this); an append not acknowledged in time is answered `REQUEST_TIMED_OUT` (outcome unknown).
    #[serde(rename = "request_timeout_ms", deserialize_with = "deserialize_millis")]
    pub request_timeout: Duration,
    /// `server.write_timeout_ms`, milliseconds, default 30 s, bounds [`bounds::WRITE_TIMEOUT_MS`]:
    /// a write to a client that makes no progress for this long (the client stopped reading) closes the connection
    /// (counted in `ferry_connections_rejected_total{reason="write_timeout"}`).
    #[serde(rename = "write_timeout_ms", deserialize_with = "deserialize_millis")]
    pub write_timeout: Duration,
    /// `server.fetch_bytes_max`, bytes, default `BATCH_BYTES_MAX` (8 MiB - 64 KiB), bounds [`bounds::FETCH_BYTES`]:
    /// the most record bytes one fetch response carries (a larger requested `bytes_max` is lowered to it), except
    /// that one whole batch is always returned. Reported to clients at version negotiation.
    pub fetch_bytes_max: u32,
    /// `server.topics_max`, default 10000, bounds [`bounds::TOPICS`]:
    /// creating a topic beyond it gets `RESOURCE_LIMIT_REACHED`.
    pub topics_max: u32,
    /// `server.partitions_max`, default 4096, bounds [`bounds::PARTITIONS`]: the most partitions over all topics
    /// (each has an appender thread, an index in memory and open files); creating a topic that would exceed it gets
    /// `RESOURCE_LIMIT_REACHED`.
    pub partitions_max: u32,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from("./ferry-data"),
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7070)),
            metrics_listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7071)),
            fsync: FsyncPolicy::Always,
            log_format: LogFormat::Text,
            log: LogDefaults::default(),
            server: ServerConfig::default(),
            producers: ProducersConfig::default(),
            transactions: TransactionsConfig::default(),
            groups: GroupsConfig::default(),
        }
    }
}

impl Default for LogDefaults {
    fn default() -> LogDefaults {
        LogDefaults {
            segment_bytes: 1024 * 1024 * 1024,
            segment_age: 7 * DAY,
            retention_age: Limit::AtMost(7 * DAY),
            retention_bytes: Limit::Unlimited,
            index_interval_bytes: 4096,
            batch_bytes_max: BATCH_BYTES_MAX,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            connections_max: 10_000,
            in_flight_requests_max: 64,
            idle_timeout: Duration::from_secs(600),
            request_read_timeout: Duration::from_secs(30),
            fetch_wait_max: Duration::from_secs(30),
            frame_bytes_max: FRAME_BYTES_MAX,
            request_bytes_max: 128 << 20,
            response_bytes_max: 256 << 20,
            partitions_per_topic_max: PARTITIONS_PER_TOPIC_MAX,
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            fetch_bytes_max: BATCH_BYTES_MAX,
            topics_max: 10_000,
            partitions_max: 4096,
        }
    }
}

impl Default for GroupsConfig {
    fn default() -> GroupsConfig {
        GroupsConfig {
            groups_max: 10_000,
            members_per_group_max: 1000,
            session_timeout_min: Duration::from_secs(1),
            session_timeout_max: Duration::from_secs(300),
            offsets_retention: 7 * DAY,
            offsets_retention_check_interval: Duration::from_secs(600),
        }
    }
}

/// Why the configuration could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file given with `--config`.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("invalid config file {path}, line {line}: {message}")]
    Parse {
        /// The file given with `--config`.
        path: PathBuf,
        /// The 1-based line of the offending key or value.
        line: usize,
        /// The parser's explanation; for an unknown key it names the key and lists the known ones.
        message: String,
    },
    /// A numeric value lies outside its bounds.
    #[error("config key {key} = {value} is out of range {bounds}")]
    OutOfRange {
        /// The key, with its section (`log.segment_bytes`).
        key: &'static str,
        /// The value given, in the key's unit.
        value: u64,
        /// The accepted range.
        bounds: Bounds,
    },
    /// A value is invalid for a reason other than its range.
    #[error("config key {key} {reason}")]
    Invalid {
        /// The key, with its section.
        key: &'static str,
        /// What is wrong, as a sentence fragment following the key.
        reason: &'static str,
    },
}

impl Config {
    /// The configuration in effect as `(TOML key, value)` pairs, sections dotted (`log.segment_bytes`), durations in
    /// milliseconds under their `_ms` keys and no limit as `-1`, as `ferry broker info` shows them.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        fn ms(duration: Duration) -> String {
            duration.as_millis().to_string()
        }
        fn limit(limit: Limit<u64>) -> String {
            limit.at_most().map_or_else(|| "-1".to_owned(), |value| value.to_string())
        }
        let (log, server, producers, groups, txns) =
            (&self.log, &self.server, &self.producers, &self.groups, &self.transactions);
        vec![
            ("data_dir", self.data_dir.display().to_string()),
            ("listen", self.listen.to_string()),
            ("metrics_listen", self.metrics_listen.to_string()),
            ("fsync", self.fsync.to_string()),
            (
                "log_format",
                match self.log_format {
                    LogFormat::Text => "text".to_owned(),
                    LogFormat::Json => "json".to_owned(),
                },
            ),
            ("log.segment_bytes", log.segment_bytes.to_string()),
            ("log.segment_ms", ms(log.segment_age)),
            (
                "log.retention_ms",
                limit(log.retention_age.map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX))),
            ),
            ("log.retention_bytes", limit(log.retention_bytes)),
            ("log.index_interval_bytes", log.index_interval_bytes.to_string()),
            ("log.batch_bytes_max", log.batch_bytes_max.to_string()),
            ("server.connections_max", server.connections_max.to_string()),
            ("server.in_flight_requests_max", server.in_flight_requests_max.to_string()),
            ("server.idle_timeout_ms", ms(server.idle_timeout)),
            ("server.request_read_timeout_ms", ms(server.request_read_timeout)),
            ("server.fetch_wait_ms_max", ms(server.fetch_wait_max)),
            ("server.frame_bytes_max", server.frame_bytes_max.to_string()),
            ("server.request_bytes_max", server.request_bytes_max.to_string()),
            ("server.response_bytes_max", server.response_bytes_max.to_string()),
            ("server.partitions_per_topic_max", server.partitions_per_topic_max.to_string()),
            ("server.request_timeout_ms", ms(server.request_timeout)),
            ("server.write_timeout_ms", ms(server.write_timeout)),
            ("server.fetch_bytes_max", server.fetch_bytes_max.to_string()),
            ("server.topics_max", server.topics_max.to_string()),
            ("server.partitions_max", server.partitions_max.to_string()),
            ("producers.ids_max", producers.ids_max.to_string()),
            ("producers.entries_max", producers.entries_max.to_string()),
            ("producers.id_expiration_ms", ms(producers.id_expiration)),
            ("producers.snapshot_interval_ms", ms(producers.snapshot_interval)),
            ("producers.snapshot_bytes", producers.snapshot_bytes.to_string()),
            ("groups.groups_max", groups.groups_max.to_string()),
            ("groups.members_per_group_max", groups.members_per_group_max.to_string()),
            ("groups.session_timeout_ms_min", ms(groups.session_timeout_min)),
            ("groups.session_timeout_ms_max", ms(groups.session_timeout_max)),
            ("groups.offsets_retention_ms", ms(groups.offsets_retention)),
            ("groups.offsets_retention_check_interval_ms", ms(groups.offsets_retention_check_interval)),
            ("transactions.timeout_default_ms", ms(txns.timeout_default)),
            ("transactions.timeout_max_ms", ms(txns.timeout_max)),
            ("transactions.timeout_check_interval_ms", ms(txns.timeout_check_interval)),
            ("transactions.ids_max", txns.ids_max.to_string()),
            ("transactions.open_max", txns.open_max.to_string()),
            ("transactions.bytes_max", txns.bytes_max.to_string()),
            ("transactions.partitions_max", txns.partitions_max.to_string()),
        ]
    }

    /// Builds the configuration from the built-in defaults, the file given with `--config`, and the flags,
    /// each overriding the one before. Does not validate: call [`Config::validate`] next.
    pub fn load(args: &Args) -> Result<Config, ConfigError> {
        let mut config = match &args.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(data_dir) = &args.data_dir {
            config.data_dir.clone_from(data_dir);
        }
        if let Some(listen) = args.listen {
            config.listen = listen;
        }
        if let Some(metrics_listen) = args.metrics_listen {
            config.metrics_listen = metrics_listen;
        }
        if let Some(fsync) = args.fsync {
            config.fsync = fsync;
        }
        if let Some(log_format) = args.log_format {
            config.log_format = log_format;
        }
        Ok(config)
    }

    /// Reads a TOML config file; keys it leaves out keep their defaults, and unknown keys are an error.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|error| {
            let line = error.span().map_or(1, |span| line_of(&text, span.start));
            ConfigError::Parse { path: path.to_owned(), line, message: error.message().trim_end().to_owned() }
        })
    }

    /// Checks every bound and cross-field rule, naming the first offending key.
    /// The broker calls it once at startup; everything downstream relies on it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid { key: "data_dir", reason: "is empty" });
        }
        if self.metrics_listen == self.listen && self.listen.port() != 0 {
            return Err(ConfigError::Invalid { key: "metrics_listen", reason: "is the same address as listen" });
        }
        if let FsyncPolicy::Interval(interval) = self.fsync {
            check("fsync", millis(interval), bounds::FSYNC_INTERVAL_MS)?;
        }

        let log = &self.log;
        check("log.segment_bytes", log.segment_bytes, bounds::SEGMENT_BYTES)?;
        check("log.segment_ms", millis(log.segment_age), bounds::SEGMENT_MS)?;
        if let Limit::AtMost(retention_age) = log.retention_age {
            check("log.retention_ms", millis(retention_age), bounds::RETENTION_MS)?;
        }
        if let Limit::AtMost(retention_bytes) = log.retention_bytes {
            check("log.retention_bytes", retention_bytes, bounds::RETENTION_BYTES)?;
        }
        check("log.index_interval_bytes", log.index_interval_bytes.into(), bounds::INDEX_INTERVAL_BYTES)?;
        check("log.batch_bytes_max", log.batch_bytes_max.into(), bounds::BATCH_BYTES)?;

        let server = &self.server;
        check("server.connections_max", server.connections_max.into(), bounds::CONNECTIONS)?;
        check("server.in_flight_requests_max", server.in_flight_requests_max.into(), bounds::IN_FLIGHT_REQUESTS)?;
        check("server.idle_timeout_ms", millis(server.idle_timeout), bounds::IDLE_TIMEOUT_MS)?;
        check("server.request_read_timeout_ms", millis(server.request_read_timeout), bounds::REQUEST_READ_TIMEOUT_MS)?;
        check("server.fetch_wait_ms_max", millis(server.fetch_wait_max), bounds::FETCH_WAIT_MS)?;
        check("server.frame_bytes_max", server.frame_bytes_max.into(), bounds::FRAME_BYTES)?;
        check("server.request_bytes_max", server.request_bytes_max, bounds::REQUEST_BYTES)?;
        check("server.response_bytes_max", server.response_bytes_max, bounds::RESPONSE_BYTES)?;
        check("server.partitions_per_topic_max", server.partitions_per_topic_max.into(), bounds::PARTITIONS_PER_TOPIC)?;
        check("server.request_timeout_ms", millis(server.request_timeout), bounds::REQUEST_TIMEOUT_MS)?;
        check("server.write_timeout_ms", millis(server.write_timeout), bounds::WRITE_TIMEOUT_MS)?;
        check("server.fetch_bytes_max", server.fetch_bytes_max.into(), bounds::FETCH_BYTES)?;
        check("server.topics_max", server.topics_max.into(), bounds::TOPICS)?;
        check("server.partitions_max", server.partitions_max.into(), bounds::PARTITIONS)?;
        let producers = &self.producers;
        check("producers.ids_max", producers.ids_max.into(), bounds::PRODUCER_IDS)?;
        check("producers.entries_max", producers.entries_max.into(), bounds::PRODUCER_ENTRIES)?;
        check("producers.id_expiration_ms", millis(producers.id_expiration), bounds::PRODUCER_ID_EXPIRATION_MS)?;
        check(
            "producers.snapshot_interval_ms",
            millis(producers.snapshot_interval),
            bounds::PRODUCER_SNAPSHOT_INTERVAL_MS,
        )?;
        check("producers.snapshot_bytes", producers.snapshot_bytes, bounds::PRODUCER_SNAPSHOT_BYTES)?;
        let groups = &self.groups;
        check("groups.groups_max", groups.groups_max.into(), bounds::GROUPS)?;
        check("groups.members_per_group_max", groups.members_per_group_max.into(), bounds::MEMBERS_PER_GROUP)?;
        check("groups.session_timeout_ms_min", millis(groups.session_timeout_min), bounds::SESSION_TIMEOUT_MS)?;
        check("groups.session_timeout_ms_max", millis(groups.session_timeout_max), bounds::SESSION_TIMEOUT_MS)?;
        check("groups.offsets_retention_ms", millis(groups.offsets_retention), bounds::OFFSETS_RETENTION_MS)?;
        check(
            "groups.offsets_retention_check_interval_ms",
            millis(groups.offsets_retention_check_interval),
            bounds::OFFSETS_RETENTION_CHECK_INTERVAL_MS,
        )?;
        let transactions = &self.transactions;
        check("transactions.timeout_default_ms", millis(transactions.timeout_default), bounds::TRANSACTION_TIMEOUT_MS)?;
        check("transactions.timeout_max_ms", millis(transactions.timeout_max), bounds::TRANSACTION_TIMEOUT_MS)?;
        check(
            "transactions.timeout_check_interval_ms",
            millis(transactions.timeout_check_interval),
            bounds::TRANSACTION_CHECK_INTERVAL_MS,
        )?;
        check("transactions.ids_max", transactions.ids_max.into(), bounds::TRANSACTIONAL_IDS)?;
        check("transactions.open_max", transactions.open_max.into(), bounds::OPEN_TRANSACTIONS)?;
        check("transactions.bytes_max", transactions.bytes_max, bounds::TRANSACTION_BYTES)?;
        check("transactions.partitions_max", transactions.partitions_max.into(), bounds::TRANSACTION_PARTITIONS)?;
        if transactions.timeout_default > transactions.timeout_max {
            return Err(ConfigError::Invalid {
                key: "transactions.timeout_default_ms",
                reason: "is larger than transactions.timeout_max_ms",
            });
        }
        if groups.session_timeout_max < groups.session_timeout_min {
            return Err(ConfigError::Invalid {
                key: "groups.session_timeout_ms_max",
                reason: "is smaller than groups.session_timeout_ms_min",
            });
        }
        if u64::from(log.batch_bytes_max) + u64::from(FRAME_OVERHEAD_BYTES_MAX) > u64::from(server.frame_bytes_max) {
            return Err(ConfigError::Invalid {
                key: "server.frame_bytes_max",
                reason: "is smaller than log.batch_bytes_max plus the 64 KiB frame overhead",
            });
        }
        if server.request_bytes_max - server.request_bytes_max / 4 < u64::from(server.frame_bytes_max) + 4 {
            return Err(ConfigError::Invalid {
                key: "server.request_bytes_max",
                reason: "has less than one frame of server.frame_bytes_max (plus its 4-byte length prefix) beyond the \
                         quarter kept for small frames",
            });
        }
        Ok(())
    }
}

/// The 1-based line holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    1 + before.iter().filter(|&&byte| byte == b'\n').count()
}

fn check(key: &'static str, value: u64, bounds: Bounds) -> Result<(), ConfigError> {
    if bounds.contains(value) { Ok(()) } else { Err(ConfigError::OutOfRange { key, value, bounds }) }
}

/// A duration in whole milliseconds, saturating (a saturated value fails every bounds check).
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn deserialize_from_str<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

fn deserialize_millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

/// -1 means no limit; any other negative number is an error (the bounds are checked by `validate`).
fn deserialize_limit<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Limit<u64>, D::Error> {
    let value = i64::deserialize(deserializer)?;
    match u64::try_from(value) {
        Ok(value) => Ok(Limit::AtMost(value)),
        Err(_) if value == -1 => Ok(Limit::Unlimited),
        Err(_) => {
            Err(serde::de::Error::custom(format!("expected -1 (no limit) or a non-negative number, got {value}")))
        }
    }
}

fn deserialize_limit_millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Limit<Duration>, D::Error> {
    Ok(deserialize_limit(deserializer)?.map(Duration::from_millis))
}

fn deserialize_limit_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Limit<u64>, D::Error> {
    deserialize_limit(deserializer)
}

#[cfg(test)]
mod tests;
