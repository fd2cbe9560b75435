//! The Ferry broker: a durable message-queue broker, as a library and the `ferry-broker` binary.
//!
//! The binary parses flags, loads and validates the [`Config`], sets up logging and the tokio runtime,
//! then runs a [`Broker`] until SIGINT or SIGTERM. Tests start brokers in-process with [`Broker::open`].
//!
//! # Layout, in reading order
//!
//! - [`config`]: the configuration (defaults, TOML file, flags), validated once at startup.
//! - [`topic`]: topics as the domain sees them: [`topic::TopicRecord`] and per-topic [`topic::TopicConfig`] overrides.
//! - [`meta`]: the metadata store (RocksDB, and the only module that names it): column families, key encodings.
//! - [`metrics`]: metric names, their descriptions, and the `/metrics` endpoint (with `/health` and `/ready`).
//! - [`health`]: liveness and readiness ([`health::Readiness`]), as `/health` and `/ready` report them.
//! - `data_dir`: the data directory's layout and its exclusive lock.
//! - `failpoints`: test-only fault injection (`FERRY_FAILPOINT`), e.g. failing segment fsyncs.
//! - [`partitions`]: the partitions registry: every topic's partition logs and appenders, topic creation and
//!   deletion (crash-safe), the `logs/` directory layout.
//! - [`groups`]: the consumer-group coordinator (membership, generations, assignors, commit rules) and the group
//!   offset and lag metrics.
//! - [`transactions`]: the transaction coordinator: transactional ids and epochs (fencing), staged records, the
//!   durable commit decision and its idempotent apply, timeouts, recovery at start.
//! - [`server`]: the accept loop, the connection limit, the state connections share.
//! - `connection`: one connection: framing, pipelining, in-flight bound, timeouts, the bounded response queue.
//! - `handlers`: one file per request kind; prost types stop there; `handlers::error_code` is the one
//!   mapping from handler errors to wire codes.
//! - `broker`: [`Broker::open`] and [`Broker::shutdown`]: startup and shutdown order.
//!
//! The partition log is its own crate, `ferry-log` (in `broker/log/`), so fuzzing it never builds RocksDB.

mod broker;
pub mod config;
mod connection;
mod data_dir;
mod failpoints;
pub mod groups;
mod handlers;
pub mod health;
pub mod meta;
pub mod metrics;
pub mod partitions;
pub mod producers;
pub mod server;
pub mod topic;
pub mod transactions;

pub use broker::{Broker, SHUTDOWN_TASKS_DEADLINE, ShutdownError, StartupError};
pub use config::{Config, ConfigError};
pub use data_dir::{LOCK_FILE, META_DIR};
