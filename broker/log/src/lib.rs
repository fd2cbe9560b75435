//! Ferry's durable partition log: segment files, sparse indexes, group commit and crash recovery on plain files.
//!
//! It is the base that must never lose an acknowledged message. A partition is a directory of segments
//! (`<base offset>.log` with `.index` and `.timeindex`) and a `checkpoint`. Batches are stored exactly as the
//! protocol defines them (`ferry_protocol::batch`), after the log assigns their offsets. One appender thread per
//! partition owns the writer and commits in groups: one `fdatasync` covers every request waiting at the time.
//! Recovery verifies every batch that may be torn, truncates torn tails, and refuses writes (keeping every byte)
//! when it finds damage below what was durable, so offsets are never silently reused.
//!
//! Modules, in reading order:
//! - [`error`]: [`LogError`] and [`Damage`]; which errors are fatal.
//! - [`config`]: [`LogConfig`], [`FsyncPolicy`], and the [`Clock`] used for segment age and retention.
//! - [`fs`]: the file interface ([`Storage`], [`LogFile`]), the real file system ([`RealFs`]) and the simulated one
//!   ([`SimFs`]) that crashes, tears writes and fails fsyncs for tests.
//! - [`segment`]: segment file names, the state readers share, and the batch scanner.
//! - [`index`]: the sparse offset and time indexes (hints, rebuilt from the log when wrong).
//! - [`checkpoint`]: the checkpoint record: a lower bound of the durable end, and the clean-shutdown marker.
//! - [`recovery`]: opening a partition: the exact rules for torn tails, damage and index rebuilds; [`RecoveryReport`].
//! - [`reader`]: [`LogReader`]: reads by offset and timestamp from any thread, never waiting for the writer.
//! - [`log`]: [`PartitionLog`] and [`Log`]: append (one vectored write), sync, roll, retention, close.
//! - [`producers`]: [`ProducerTable`]: the dedup table of idempotent producers, and its [`ProducerSnapshot`].
//! - [`dedup`]: message-id dedup: the [`dedup::DedupIndex`] trait, the check, and the replay at start.
//! - [`appender`]: [`Appender`]: the group-commit thread and the [`AppendHandle`] async handlers use.
//! - [`metrics`]: metric names and [`metrics::describe`].
//!
//! A typical broker opens a [`Log`], starts an [`Appender`] on it, hands [`AppendHandle`]s to produce handlers and
//! [`LogReader`]s to fetch handlers, watches [`Appender::is_finished`], and calls [`Appender::shutdown`] at exit.

pub mod appender;
pub mod checkpoint;
pub mod config;
pub mod dedup;
pub mod error;
pub mod fs;
#[doc(hidden)]
pub mod fuzz;
pub mod index;
pub mod log;
pub mod metrics;
pub mod producers;
pub mod reader;
pub mod recovery;
pub mod segment;

pub use appender::{AppendAck, AppendHandle, Appender, Durability, PendingAck};
pub use config::{Clock, FsyncPolicy, LogConfig, ManualClock, SystemClock};
pub use error::{Damage, LogError};
pub use fs::{CrashMode, LogFile, OpenMode, RealFs, SimFs, Storage};
pub use log::{Log, OffsetRange, PartitionLog};
pub use producers::{ProducerError, ProducerSnapshot, ProducerTable, SequenceCheck};
pub use reader::{LogReader, LogStatus, ReadSlice};
pub use recovery::RecoveryReport;
