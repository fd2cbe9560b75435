//! The metadata store: RocksDB embedded in `<data_dir>/meta/`.
//!
//! This is the only module that names `rocksdb`, and it re-exports nothing of it:
//! the rest of the broker speaks in domain types ([`TopicRecord`], [`BrokerInfo`]), and errors wrap RocksDB's
//! in the opaque [`EngineError`].
//!
//! # Threads
//!
//! Every method blocks (RocksDB reads, synced writes, flushes, compaction stalls).
//! Call them from `tokio::task::spawn_blocking` or a dedicated thread, never from an async task.
//! [`MetaStore`] is `Send + Sync`: share it in an `Arc`.
//!
//! # Durability
//!
//! Every write is synced (`WriteOptions::set_sync(true)`) before the call returns, except two kinds of
//! transaction writes whose durability comes from a later synced write (see `txn.rs`).
//! The partition log fsyncs before it acknowledges, and metadata must not be the weak link (research F21).
//! Writes that must be atomic together go in one `WriteBatch`, which RocksDB applies atomically across column
//! families. The write-ahead log is always on. Recovery replays it up to the first corrupt record
//! (`PointInTime`): with synced writes, that can only drop a write whose call never returned.
//!
//! # Column families and key encodings
//!
//! Integers in keys are big-endian, so keys sort in numeric order.
//! A string in a key is either its last component (raw UTF-8) or prefixed with its length as a big-endian `u16`,
//! so that one group's keys form a contiguous range.
//! Partitions are named by topic id (`u64`), not topic name: a topic deleted and created again gets a new id,
//! so its old offsets, producer state and leases can never apply to the new topic.
//!
//! Each column family, its key (components in order) and what its value holds:
//!
//! - `broker`, key `info`: broker id, cluster id, format version, created-at.
//! - `broker`, key `next_topic_id`: the next topic id to assign (ids start at 1).
//! - `topics`, key: topic name. Value: id, partition count, per-topic config, created-at, state.
//! - `consumer_offsets`, key: `u16` length, group, `u64` topic id, `u32` partition.
//!   Value: offset (the next one the group consumes), metadata string, commit time (ms since the epoch).
//!   Written by the group coordinator's OffsetCommit (one synced batch per request), deleted by offset expiry.
//! - `broker`, key `next_producer_id`: the next idempotent producer id to issue (ids start at 1; absent until the
//!   first is issued).
//! - `producer_ids`, key: `u64` producer id. Value: its epoch and when it was last seen (issued or wrote). Written
//!   when an id is issued and by the registry's periodic persist; deleted when the id expires.
//! - `producer_state`, key: `u64` topic id, `u32` partition.
//!   Value: the partition's dedup-state snapshot: the log offset it covers up to, and per producer id its epoch,
//!   last write time and last batches' sequences and offsets. Replaced by each new snapshot.
//! - `producer_state`, key: `u64` topic id, `u32` partition, `u8` 1. Value: the log offset below which every
//!   record's message-id dedup key is indexed. Written with each dedup insert; within the topic's key range, so
//!   deleting the topic's producer state deletes it.
//! - `txn_log`, key: transactional id. Value: producer id, epoch, timeout, the next transaction number, the last
//!   ended transaction and its outcome, the open transaction's number and start, and a commit's decision (per
//!   partition, the producer sequence its batches start at) until the commit is applied. See `txn.rs`.
//! - `txn_staged`, key: `u64` producer id, `u32` epoch, `u64` transaction, `u64` topic id, `u32` partition, `u32`
//!   staging sequence. Value: a staged record batch of an open transaction. See `txn.rs`.
//! - `queue_leases`, key: `u16` length, group, `u64` topic id, `u32` partition, `u64` offset.
//!   Value: member, attempt, lease epoch, deadline.
//! - `timers`, key: `u64` deadline (ms since the epoch), `u8` kind, kind-specific id.
//!   Value: what to do when the timer is due. Keys sort by deadline, so the due timers come first.
//! - `dedup_<bucket>`, key: `u64` topic id, `u32` partition, dedup key. Value: offset of the first copy and its
//!   append time (ms since the epoch). See `dedup.rs`.
//!
//! `broker`, `topics`, `consumer_offsets`, `producer_ids`, `producer_state`, `txn_log`, `txn_staged` and
//! `dedup_<bucket>` are written today (`producers.rs` holds the producer entries, `txn.rs` the transactions,
//! `dedup.rs` the message-id dedup entries).
//! The other entries are the planned layout for the issues that fill them (consumer groups, idempotence,
//! transactions, queue groups); those issues may refine an entry and must update this list.
//! `dedup_<bucket>` column families are created on demand, one per time bucket (`<bucket>` is the bucket's start
//! in seconds since the epoch), and dropped whole when the window passes it.
//! Opening the store opens every column family found on disk, so a restart never fails on one it did not create.
//!
//! # Value encoding
//!
//! Each value is a protobuf message (hand-written `prost` structs, private to this module) whose field 1 is the
//! encoding version, currently 1.
//! A value that does not decode, has another version, or holds an impossible field is [`MetaError::Corrupt`],
//! never a panic.
//! The store as a whole has a format version (in `broker/info`); a store written by a newer format is refused.

mod dedup;
mod producers;
mod txn;
mod values;

pub use dedup::{DEDUP_BUCKET_SECS, DEDUP_BUCKETS_MAX, DEDUP_WINDOW_MS_MAX, DedupRecord};
pub use producers::StoredProducerId;
pub use txn::{DecidedPartition, StagedBatch, StoredTxn};

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use rocksdb::{
    ColumnFamilyDescriptor, DBCompressionType, DBRecoveryMode, DBWithThreadMode, FlushOptions, IteratorMode,
    MultiThreaded, Options, WriteBatch, WriteOptions,
};

use crate::topic::{TopicRecord, TopicSpec, TopicState};

/// The store's on-disk format version; a store with a higher one was written by a newer broker and is refused.
pub const FORMAT_VERSION: u32 = 1;

/// Column family of broker-wide records: identity, format version, id counters.
pub const CF_BROKER: &str = "broker";
/// Column family of topic records, keyed by topic name.
pub const CF_TOPICS: &str = "topics";
/// Column family of committed consumer-group offsets (consumer-group issue).
pub const CF_CONSUMER_OFFSETS: &str = "consumer_offsets";
/// Column family of idempotent-producer state snapshots, one per partition.
pub const CF_PRODUCER_STATE: &str = "producer_state";
/// Column family of issued idempotent producer ids.
pub const CF_PRODUCER_IDS: &str = "producer_ids";
/// Column family of transaction states and commit decisions (transactions issue).
pub const CF_TXN_LOG: &str = "txn_log";
/// Column family of record batches staged by open transactions (transactions issue).
pub const CF_TXN_STAGED: &str = "txn_staged";
/// Column family of queue-group delivery leases (queue-groups issue).
pub const CF_QUEUE_LEASES: &str = "queue_leases";
/// Column family of timers, ordered by deadline.
pub const CF_TIMERS: &str = "timers";
/// Prefix of the time-bucketed message-id dedup column families, `dedup_<bucket>`.
pub const CF_DEDUP_PREFIX: &str = "dedup_";

/// Every column family created on open if missing.
pub const COLUMN_FAMILIES: [&str; 9] = [
    CF_BROKER,
    CF_TOPICS,
    CF_CONSUMER_OFFSETS,
    CF_PRODUCER_STATE,
    CF_PRODUCER_IDS,
    CF_TXN_LOG,
    CF_TXN_STAGED,
    CF_QUEUE_LEASES,
    CF_TIMERS,
];

/// RocksDB's own column family, which always exists; the store keeps nothing in it.
const CF_DEFAULT: &str = "default";

const KEY_INFO: &[u8] = b"info";
const KEY_NEXT_TOPIC_ID: &[u8] = b"next_topic_id";
const TOPIC_ID_FIRST: u64 = 1;

/// RocksDB tuning for the metadata store: explicit and modest, since metadata is small next to the partition logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaConfig {
    /// Memtable size per column family, in bytes; a full memtable is flushed to an SST file.
    /// Small, because there are many column families and most hold little.
    pub write_buffer_bytes: usize,
    /// Memtables per column family (one filling while one flushes).
    pub write_buffers_max: i32,
    /// Total size of the write-ahead log files, in bytes, before RocksDB flushes the column families that pin the
    /// oldest one. Without it, a rarely written column family would keep every WAL file alive.
    pub wal_bytes_max: u64,
    /// Most SST files kept open; -1 means all of them.
    pub open_files_max: i32,
    /// Background flush and compaction threads.
    pub background_jobs: i32,
    /// RocksDB's own diagnostic `LOG` files kept in the store directory (it keeps 1000 by default).
    pub info_log_files_max: usize,
    /// Size at which RocksDB starts a new diagnostic `LOG` file, in bytes.
    pub info_log_file_bytes_max: usize,
}

impl Default for MetaConfig {
    fn default() -> MetaConfig {
        MetaConfig {
            write_buffer_bytes: 4 * 1024 * 1024,
            write_buffers_max: 2,
            wal_bytes_max: 64 * 1024 * 1024,
            open_files_max: 256,
            background_jobs: 2,
            info_log_files_max: 4,
            info_log_file_bytes_max: 8 * 1024 * 1024,
        }
    }
}

/// The broker's identity, generated on the first start and kept for the life of the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// This broker's id: random in `1..2^31`. Becomes the node id once partitions are replicated.
    pub broker_id: u64,
    /// The cluster id: 32 lowercase hex digits (128 random bits), reported to clients so they can tell clusters apart.
    pub cluster_id: String,
    /// The format version the store was created with.
    pub format_version: u32,
    /// When the store was created, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// A committed consumer-group offset, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset the group consumes.
    pub offset: u64,
    /// Application metadata committed with it.
    pub metadata: String,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub commit_time_ms: u64,
}

/// One committed offset with its partition, as `(topic id, partition, offset)`.
pub type GroupOffset = (u64, u32, CommittedOffset);

/// An error from the RocksDB engine, kept opaque so that no RocksDB type leaks out of this module.
#[derive(Debug)]
pub struct EngineError(rocksdb::Error);

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for EngineError {}

/// Why a stored value was judged corrupt.
#[derive(Debug, thiserror::Error)]
pub enum CorruptReason {
    /// The bytes are not a valid protobuf message.
    #[error("undecodable value")]
    Decode(#[source] prost::DecodeError),
    /// The value has a version this broker does not know (0 means the field is missing, e.g. an empty value).
    #[error("unknown value version {version}")]
    UnknownVersion {
        /// The version found.
        version: u32,
    },
    /// A field holds a value that cannot have been written.
    #[error("invalid field {field}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
    },
    /// The key does not have the column family's key encoding.
    #[error("invalid key")]
    InvalidKey,
    /// A record that must exist is missing.
    #[error("missing value")]
    Missing,
}

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// RocksDB could not open the store.
    #[error("cannot open metadata store at {path}")]
    Open {
        /// The store directory.
        path: PathBuf,
        /// The engine's error.
        #[source]
        source: EngineError,
    },
    /// Reading the store's manifest did not finish within [`MANIFEST_READ_TIMEOUT`]: RocksDB can loop on some
    /// damaged manifest records, so a start fails with this error instead of hanging.
    #[error(
        "cannot open metadata store at {path}: reading its MANIFEST did not finish within {timeout:?}; \
         the MANIFEST file is probably damaged"
    )]
    ManifestTimeout {
        /// The store directory.
        path: PathBuf,
        /// The time allowed.
        timeout: std::time::Duration,
    },
    /// The store directory could not be inspected.
    #[error("cannot inspect metadata store directory {path}")]
    Io {
        /// The store directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The store was written by a newer broker whose format this one does not know.
    #[error("metadata store format version {found} is newer than the supported version {supported}")]
    UnsupportedFormat {
        /// The version on disk.
        found: u32,
        /// The newest version this broker reads.
        supported: u32,
    },
    /// A read failed.
    #[error("cannot read from column family {cf}")]
    Read {
        /// The column family read.
        cf: &'static str,
        /// The engine's error.
        #[source]
        source: EngineError,
    },
    /// A synced write failed; it may or may not have been applied.
    #[error("cannot write to the metadata store")]
    Write(#[source] EngineError),
    /// Flushing memtables to disk failed.
    #[error("cannot flush the metadata store")]
    Flush(#[source] EngineError),
    /// A stored key or value does not decode.
    #[error("corrupt metadata in column family {cf} at key {}", .key.escape_ascii())]
    Corrupt {
        /// The column family holding the value.
        cf: String,
        /// The key of the value.
        key: Vec<u8>,
        /// What is wrong with it.
        #[source]
        reason: CorruptReason,
    },
    /// `create_topic` found a topic of the same name.
    #[error("topic {name} already exists")]
    TopicExists {
        /// The topic name.
        name: String,
    },
    /// The topic does not exist.
    #[error("unknown topic {name}")]
    UnknownTopic {
        /// The topic name.
        name: String,
    },
    /// A new dedup bucket would exceed the limit of dedup column families (the periodic drop is behind).
    #[error("{max} dedup column families exist already")]
    TooManyDedupBuckets {
        /// The limit.
        max: usize,
    },
    /// A dedup column family was dropped while an insert needed it (its bucket had expired).
    #[error("dedup column family {name} is gone")]
    DedupBucketGone {
        /// The column family.
        name: String,
    },
}

type Db = DBWithThreadMode<MultiThreaded>;

/// The metadata store. See the module docs for its column families, encodings and threading rules.
pub struct MetaStore {
    db: Db,
    path: PathBuf,
    broker_info: BrokerInfo,
    /// Every column family opened, `default` included.
    /// Kept current as `dedup_<bucket>` column families are created and dropped; the lock also serializes those.
    cf_names: Mutex<BTreeSet<String>>,
    /// The tuning new column families are created with.
    config: MetaConfig,
    /// The next topic id; the lock also serializes the read-check-write of topic creation and deletion.
    next_topic_id: Mutex<u64>,
    /// The next producer id to issue.
    next_producer_id: Mutex<u64>,
    /// Serializes offset commits with offset expiry's read-then-delete, so expiry never deletes a fresh commit.
    offsets: Mutex<()>,
}

impl fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetaStore").field("path", &self.path).field("broker_info", &self.broker_info).finish()
    }
}

impl MetaStore {
    /// Opens the store at `path` (normally `<data_dir>/meta`), creating it and any missing column family,
    /// and opening every column family already on disk. On the first open it generates the broker's identity.
    ///
    /// Blocks (it may replay the write-ahead log): call it from `spawn_blocking` or a dedicated thread.
    pub fn open(path: &Path, config: &MetaConfig) -> Result<MetaStore, MetaError> {
        let db_options = db_options(config);
        let cf_options = cf_options(config);

        let mut cf_names: BTreeSet<String> = COLUMN_FAMILIES.iter().map(|&name| name.to_owned()).collect();
        cf_names.insert(CF_DEFAULT.to_owned());
        let exists =
            path.join("CURRENT").try_exists().map_err(|source| MetaError::Io { path: path.to_owned(), source })?;
        if exists {
            let on_disk = list_column_families(&db_options, path)?;
            for name in on_disk {
                if !cf_names.contains(&name) && !name.starts_with(CF_DEDUP_PREFIX) {
                    tracing::warn!(cf = %name, "metadata store has an unknown column family; opening it untouched");
                }
                cf_names.insert(name);
            }
        }
        let descriptors = cf_names.iter().map(|name| ColumnFamilyDescriptor::new(name.as_str(), cf_options.clone()));
        let db = Db::open_cf_descriptors(&db_options, path, descriptors)
            .map_err(|source| MetaError::Open { path: path.to_owned(), source: EngineError(source) })?;

        let broker_info = match read_value::<values::BrokerInfoValue>(&db, CF_BROKER, KEY_INFO)? {
            Some(stored) => {
                values::broker_info_from_value(stored).map_err(|reason| corrupt(CF_BROKER, KEY_INFO, reason))?
            }
            None => initialize(&db)?,
        };
        if broker_info.format_version > FORMAT_VERSION {
            return Err(MetaError::UnsupportedFormat { found: broker_info.format_version, supported: FORMAT_VERSION });
        }
        let next_topic_id = match read_value::<values::NextIdValue>(&db, CF_BROKER, KEY_NEXT_TOPIC_ID)? {
            Some(stored) => {
                values::next_id_from_value(stored).map_err(|reason| corrupt(CF_BROKER, KEY_NEXT_TOPIC_ID, reason))?
            }
            None => return Err(corrupt(CF_BROKER, KEY_NEXT_TOPIC_ID, CorruptReason::Missing)),
        };

        let next_producer_id = MetaStore::read_next_producer_id(&db)?;
        Ok(MetaStore {
            db,
            path: path.to_owned(),
            broker_info,
            cf_names: Mutex::new(cf_names),
            config: config.clone(),
            next_topic_id: Mutex::new(next_topic_id),
            next_producer_id: Mutex::new(next_producer_id),
            offsets: Mutex::new(()),
        })
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The broker's identity, read (or generated) when the store was opened.
    pub fn broker_info(&self) -> &BrokerInfo {
        &self.broker_info
    }

    /// Creates a topic, assigning it the next topic id, and returns its record.
    /// The topic record and the id counter are written in one synced batch, so an id is never handed out twice.
    /// Fails with [`MetaError::TopicExists`] if a topic of that name exists (in any state).
    pub fn create_topic(&self, spec: &TopicSpec, created_at_ms: u64) -> Result<TopicRecord, MetaError> {
        let mut next_topic_id = self.next_topic_id.lock().unwrap_or_else(PoisonError::into_inner);
        if self.topic(&spec.name)?.is_some() {
            return Err(MetaError::TopicExists { name: spec.name.clone() });
        }
        let record = TopicRecord {
            name: spec.name.clone(),
            id: *next_topic_id,
            partitions: spec.partitions,
            config: spec.config.clone(),
            created_at_ms,
            state: TopicState::Active,
        };
        let following_id = next_topic_id.checked_add(1).expect("fewer than 2^64 topics are ever created");
        let mut batch = WriteBatch::default();
        batch.put_cf(&self.cf(CF_TOPICS), spec.name.as_bytes(), values::encode(&values::topic_to_value(&record)));
        batch.put_cf(&self.cf(CF_BROKER), KEY_NEXT_TOPIC_ID, values::encode(&values::next_id_to_value(following_id)));
        self.write(batch)?;
        *next_topic_id = following_id;
        Ok(record)
    }

    /// The topic of that name, if it exists (in any state).
    pub fn topic(&self, name: &str) -> Result<Option<TopicRecord>, MetaError> {
        let Some(stored) = read_value::<values::TopicValue>(&self.db, CF_TOPICS, name.as_bytes())? else {
            return Ok(None);
        };
        let record = values::topic_from_value(name.to_owned(), stored)
            .map_err(|reason| corrupt(CF_TOPICS, name.as_bytes(), reason))?;
        Ok(Some(record))
    }

    /// The id the next topic will get: every topic this store ever created has a lower one.
    pub fn next_topic_id(&self) -> u64 {
        *self.next_topic_id.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every topic (in any state), ordered by name.
    pub fn topics(&self) -> Result<Vec<TopicRecord>, MetaError> {
        let mut topics = Vec::new();
        for entry in self.db.iterator_cf(&self.cf(CF_TOPICS), IteratorMode::Start) {
            let (key, value) =
                entry.map_err(|source| MetaError::Read { cf: CF_TOPICS, source: EngineError(source) })?;
            let name =
                String::from_utf8(key.to_vec()).map_err(|_| corrupt(CF_TOPICS, &key, CorruptReason::InvalidKey))?;
            let stored =
                values::decode::<values::TopicValue>(&value).map_err(|reason| corrupt(CF_TOPICS, &key, reason))?;
            let record = values::topic_from_value(name, stored).map_err(|reason| corrupt(CF_TOPICS, &key, reason))?;
            topics.push(record);
        }
        Ok(topics)
    }

    /// Sets a topic's state (e.g. [`TopicState::Deleting`] before its files are removed) and returns the new record.
    /// Fails with [`MetaError::UnknownTopic`] if there is no such topic.
    pub fn set_topic_state(&self, name: &str, state: TopicState) -> Result<TopicRecord, MetaError> {
        let _serialized = self.next_topic_id.lock().unwrap_or_else(PoisonError::into_inner);
        let mut record = self.topic(name)?.ok_or_else(|| MetaError::UnknownTopic { name: name.to_owned() })?;
        record.state = state;
        let mut batch = WriteBatch::default();
        batch.put_cf(&self.cf(CF_TOPICS), name.as_bytes(), values::encode(&values::topic_to_value(&record)));
        self.write(batch)?;
        Ok(record)
    }

    /// Removes a topic's record and returns it, or `None` if there was no such topic.
    /// The record goes last, after the topic's partition files, so a crash in between is finished on restart.
    pub fn delete_topic(&self, name: &str) -> Result<Option<TopicRecord>, MetaError> {
        let _serialized = self.next_topic_id.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(record) = self.topic(name)? else {
            return Ok(None);
        };
        let mut batch = WriteBatch::default();
        batch.delete_cf(&self.cf(CF_TOPICS), name.as_bytes());
        self.write(batch)?;
        Ok(Some(record))
    }

    /// Stores committed offsets of one group, `(topic id, partition, offset)`, in one synced batch.
    pub fn commit_offsets(&self, group: &str, offsets: &[GroupOffset]) -> Result<(), MetaError> {
        let _serialized = self.offsets.lock().unwrap_or_else(PoisonError::into_inner);
        let cf = self.cf(CF_CONSUMER_OFFSETS);
        let mut batch = WriteBatch::default();
        for (topic_id, partition, committed) in offsets {
            let key = offset_key(group, *topic_id, *partition);
            batch.put_cf(&cf, key, values::encode(&values::offset_to_value(committed)));
        }
        self.write(batch)
    }

    /// Every committed offset of one group, ordered by topic id and partition.
    pub fn group_offsets(&self, group: &str) -> Result<Vec<GroupOffset>, MetaError> {
        let prefix = offset_group_prefix(group);
        let mut offsets = Vec::new();
        self.scan_offsets(&prefix, |key_group, topic_id, partition, committed| {
            debug_assert_eq!(key_group, group);
            offsets.push((topic_id, partition, committed));
            true
        })?;
        Ok(offsets)
    }

    /// The ids of every group with a committed offset, ordered, at most `max` of them.
    pub fn offset_groups(&self, max: usize) -> Result<Vec<String>, MetaError> {
        let mut groups: Vec<String> = Vec::new();
        self.scan_offsets(&[], |group, _, _, _| {
            if groups.last().is_none_or(|last| last != group) {
                groups.push(group.to_owned());
            }
            groups.len() < max
        })?;
        Ok(groups)
    }

    /// Deletes every committed offset for which `expired(group, topic id, partition, offset)` says so, in one synced
    /// batch, and returns how many. Commits wait while it runs, so a commit made during the scan is never deleted.
    pub fn expire_offsets(
        &self,
        mut expired: impl FnMut(&str, u64, u32, &CommittedOffset) -> bool,
    ) -> Result<usize, MetaError> {
        let _serialized = self.offsets.lock().unwrap_or_else(PoisonError::into_inner);
        let mut doomed = Vec::new();
        self.scan_offsets(&[], |group, topic_id, partition, committed| {
            if expired(group, topic_id, partition, &committed) {
                doomed.push(offset_key(group, topic_id, partition));
            }
            true
        })?;
        if doomed.is_empty() {
            return Ok(0);
        }
        let cf = self.cf(CF_CONSUMER_OFFSETS);
        let mut batch = WriteBatch::default();
        for key in &doomed {
            batch.delete_cf(&cf, key);
        }
        self.write(batch)?;
        Ok(doomed.len())
    }

    /// Calls `visit(group, topic id, partition, offset)` for every offset whose key starts with `prefix`, in key order,
    /// until it returns false.
    fn scan_offsets(
        &self,
        prefix: &[u8],
        mut visit: impl FnMut(&str, u64, u32, CommittedOffset) -> bool,
    ) -> Result<(), MetaError> {
        let cf = self.cf(CF_CONSUMER_OFFSETS);
        let mode = IteratorMode::From(prefix, rocksdb::Direction::Forward);
        for entry in self.db.iterator_cf(&cf, mode) {
            let (key, value) =
                entry.map_err(|source| MetaError::Read { cf: CF_CONSUMER_OFFSETS, source: EngineError(source) })?;
            if !key.starts_with(prefix) {
                break;
            }
            let Some((group, topic_id, partition)) = parse_offset_key(&key) else {
                return Err(corrupt(CF_CONSUMER_OFFSETS, &key, CorruptReason::InvalidKey));
            };
            let stored = values::decode::<values::OffsetValue>(&value)
                .map_err(|reason| corrupt(CF_CONSUMER_OFFSETS, &key, reason))?;
            if !visit(group, topic_id, partition, values::offset_from_value(stored)) {
                break;
            }
        }
        Ok(())
    }

    /// Flushes every column family's memtable to SST files, so the next open has no write-ahead log to replay.
    /// Not needed for durability: every write is already synced to the write-ahead log.
    pub fn flush(&self) -> Result<(), MetaError> {
        let names: Vec<String> = self.cf_names.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect();
        let handles: Vec<_> = names.iter().filter_map(|name| self.db.cf_handle(name)).collect();
        let handle_refs: Vec<_> = handles.iter().collect();
        let mut options = FlushOptions::default();
        options.set_wait(true);
        self.db.flush_cfs_opt(&handle_refs, &options).map_err(|source| MetaError::Flush(EngineError(source)))
    }

    /// Flushes, stops background work and closes the store.
    pub fn close(self) -> Result<(), MetaError> {
        self.flush()?;
        self.db.cancel_all_background_work(true);
        drop(self.db);
        Ok(())
    }

    fn cf(&self, name: &'static str) -> std::sync::Arc<rocksdb::BoundColumnFamily<'_>> {
        self.db.cf_handle(name).expect("every column family in COLUMN_FAMILIES is created on open")
    }

    fn write(&self, batch: WriteBatch) -> Result<(), MetaError> {
        self.db.write_opt(batch, &sync_write_options()).map_err(|source| MetaError::Write(EngineError(source)))
    }
}

/// The key prefix of one group's offsets: `u16` length and the group id.
fn offset_group_prefix(group: &str) -> Vec<u8> {
    // Group ids are at most 255 bytes (checked by the coordinator); saturate rather than wrap if one slipped through.
    let len = u16::try_from(group.len()).unwrap_or(u16::MAX);
    let mut key = Vec::with_capacity(2 + group.len() + 12);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(group.as_bytes());
    key
}

fn offset_key(group: &str, topic_id: u64, partition: u32) -> Vec<u8> {
    let mut key = offset_group_prefix(group);
    key.extend_from_slice(&topic_id.to_be_bytes());
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

fn parse_offset_key(key: &[u8]) -> Option<(&str, u64, u32)> {
    let (len, rest) = key.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let group = std::str::from_utf8(rest.get(..len)?).ok()?;
    let rest = rest.get(len..)?;
    let (topic_id, rest) = rest.split_first_chunk::<8>()?;
    let partition: [u8; 4] = rest.try_into().ok()?;
    Some((group, u64::from_be_bytes(*topic_id), u32::from_be_bytes(partition)))
}

/// Writes the broker identity and the topic-id counter of a new store, in one synced batch.
/// Refuses if the store already holds topics: the identity was lost, and starting the id counter again
/// would hand out ids that are still in use.
fn initialize(db: &Db) -> Result<BrokerInfo, MetaError> {
    let topics_cf = db.cf_handle(CF_TOPICS).expect("every column family in COLUMN_FAMILIES is created on open");
    if db.iterator_cf(&topics_cf, IteratorMode::Start).next().is_some() {
        return Err(corrupt(CF_BROKER, KEY_INFO, CorruptReason::Missing));
    }
    let cluster_id = (u128::from(random_u64()) << 64) | u128::from(random_u64());
    let stored = values::BrokerInfoValue {
        version: values::VALUE_VERSION,
        format_version: FORMAT_VERSION,
        // 31 bits: readable in logs, a positive i32 for Kafka-style tools, exact in JSON (JavaScript numbers).
        broker_id: (random_u64() >> 33).max(1),
        cluster_id: cluster_id.to_be_bytes().to_vec(),
        created_at_ms: now_ms(),
    };
    let broker_info = values::broker_info_from_value(stored.clone()).expect("a freshly generated broker info is valid");
    let broker_cf = db.cf_handle(CF_BROKER).expect("every column family in COLUMN_FAMILIES is created on open");
    let mut batch = WriteBatch::default();
    batch.put_cf(&broker_cf, KEY_INFO, values::encode(&stored));
    batch.put_cf(&broker_cf, KEY_NEXT_TOPIC_ID, values::encode(&values::next_id_to_value(TOPIC_ID_FIRST)));
    db.write_opt(batch, &sync_write_options()).map_err(|source| MetaError::Write(EngineError(source)))?;
    let BrokerInfo { broker_id, cluster_id, .. } = &broker_info;
    tracing::info!(broker_id, %cluster_id, "created a new metadata store");
    Ok(broker_info)
}

fn read_value<V: prost::Message + Default>(db: &Db, cf: &'static str, key: &[u8]) -> Result<Option<V>, MetaError> {
    let handle = db.cf_handle(cf).expect("every column family in COLUMN_FAMILIES is created on open");
    let Some(bytes) =
        db.get_pinned_cf(&handle, key).map_err(|source| MetaError::Read { cf, source: EngineError(source) })?
    else {
        return Ok(None);
    };
    values::decode(&bytes).map(Some).map_err(|reason| corrupt(cf, key, reason))
}

fn corrupt(cf: &str, key: &[u8], reason: CorruptReason) -> MetaError {
    MetaError::Corrupt { cf: cf.to_owned(), key: key.to_vec(), reason }
}

/// The longest reading the manifest (to list the column families) may take at start. The manifest is small
/// ([`MANIFEST_BYTES_MAX`]); a damaged one can make RocksDB loop without end.
pub const MANIFEST_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The manifest rolls to a new file beyond this size, so reading it at start stays far inside
/// [`MANIFEST_READ_TIMEOUT`].
const MANIFEST_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Lists the store's column families from its manifest on a thread of its own, giving up after
/// [`MANIFEST_READ_TIMEOUT`] (the thread is left behind; the start fails and the process exits).
fn list_column_families(db_options: &Options, path: &Path) -> Result<Vec<String>, MetaError> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let (options, owned_path) = (db_options.clone(), path.to_owned());
    std::thread::Builder::new()
        .name("meta-manifest".to_owned())
        .spawn(move || {
            let _ = sender.send(Db::list_cf(&options, owned_path));
        })
        .map_err(|source| MetaError::Io { path: path.to_owned(), source })?;
    match receiver.recv_timeout(MANIFEST_READ_TIMEOUT) {
        Ok(listed) => listed.map_err(|source| MetaError::Open { path: path.to_owned(), source: EngineError(source) }),
        Err(_) => Err(MetaError::ManifestTimeout { path: path.to_owned(), timeout: MANIFEST_READ_TIMEOUT }),
    }
}

fn sync_write_options() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options.disable_wal(false);
    options
}

fn db_options(config: &MetaConfig) -> Options {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_paranoid_checks(true);
    options.set_max_manifest_file_size(MANIFEST_BYTES_MAX);
    options.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    options.set_max_total_wal_size(config.wal_bytes_max);
    options.set_max_open_files(config.open_files_max);
    options.set_max_background_jobs(config.background_jobs);
    options.set_keep_log_file_num(config.info_log_files_max);
    options.set_max_log_file_size(config.info_log_file_bytes_max);
    options
}

fn cf_options(config: &MetaConfig) -> Options {
    let mut options = Options::default();
    options.set_write_buffer_size(config.write_buffer_bytes);
    options.set_max_write_buffer_number(config.write_buffers_max);
    options.set_compression_type(DBCompressionType::Lz4);
    options.set_bottommost_compression_type(DBCompressionType::Zstd);
    options
}

/// A random number for identities: `RandomState` keys come from the operating system's random source.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

fn now_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
