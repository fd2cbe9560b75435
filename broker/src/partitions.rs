//! The partitions registry: every topic's partition logs and their appenders, and topic creation and deletion.
//!
//! [`Partitions`] is the domain layer between the handlers and storage: handlers look topics up by name and get a
//! [`Topic`] with one [`Partition`] per partition (an [`AppendHandle`] for produce, a [`LogReader`] for fetch);
//! the registry owns the [`Appender`]s and is the only code that opens, creates or removes partition directories.
//!
//! # Directory layout
//!
//! ```text
//! <data_dir>/logs/                                    every partition log
//! <data_dir>/logs/<topic id:020>-<topic name>/        one directory per topic, e.g. 00000000000000000007-orders
//! <data_dir>/logs/<topic id:020>-<topic name>/<partition:05>/   one ferry-log directory per partition, e.g. 00003
//! ```
//!
//! The topic id comes first: the metadata store never hands out an id twice, so a topic deleted and created again
//! under the same name gets a fresh directory and can never see the old topic's records.
//! The name after it is for operators only; nothing parses it.
//!
//! # Startup
//!
//! [`Partitions::open`] reads every topic from the metadata store, finishes deletions a crash interrupted (state
//! `Deleting`), and opens the partitions of every active topic: `Log::open` (recovery) runs on blocking threads,
//! at most [`RECOVERY_PARALLELISM_MAX`] partitions at a time, then each partition's appender thread starts.
//! Each partition's [`RecoveryReport`] is logged (a torn tail at warn, damage at error) and kept for
//! [`Partitions::recovery_reports`]. A partition whose directory is missing is created empty by `Log::open`.
//!
//! # Creating and deleting topics, crash-safely
//!
//! Admin operations run one at a time (an async mutex is their queue), so limit checks and the changes they guard
//! cannot interleave.
//! Create: validate (partition count, config keys and values, the broker's topic and partition limits), write the
//! topic record (synced), then open each partition (which creates its directory, fsyncing the parents) and start its
//! appender. A crash after the record was written leaves a topic whose directories are created at the next start.
//! If opening fails, the creation is rolled back (appenders stopped, directory removed, record deleted).
//! Delete: mark the record `Deleting` (synced), stop serving the topic, shut its appenders down (queued appends
//! finish), remove its directory and fsync `logs/`, then delete the record. A crash anywhere in between leaves a
//! `Deleting` record, and the next start finishes the deletion instead of resurrecting the topic.
//!
//! # Shutdown
//!
//! [`Partitions::shutdown`] stops every appender: each drains its queue, syncs, and writes the clean checkpoint, so
//! the next start takes the clean recovery path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use ferry_log::dedup::{DedupEntry, DedupIndex, DedupSetup, IndexError};
use ferry_log::producers::{EntryBudget, ProducerSetup, ProducerSnapshot, ProducerStateConfig, SnapshotSink};
use ferry_log::{
    AppendHandle, Appender, Clock, LogConfig, LogError, LogReader, LogStatus, RealFs, RecoveryReport, Storage,
    SystemClock,
};
use metrics::{Counter, Gauge};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::meta::{DedupRecord, MetaError, MetaStore};
use crate::metrics::{
    DUPLICATES_DROPPED_TOTAL, FETCH_BYTES_TOTAL, FETCH_RECORDS_TOTAL, LABEL_PARTITION, LABEL_REASON, LABEL_TOPIC,
    LOG_END_OFFSET, LOG_SIZE_BYTES, PRODUCE_BYTES_TOTAL, PRODUCE_RECORDS_TOTAL,
};
use crate::topic::{TopicConfig, TopicConfigError, TopicRecord, TopicSpec, TopicState};

/// Name of the directory, in the data directory, that holds every partition log.
pub const LOGS_DIR: &str = "logs";

/// Most partitions recovered (or shut down) at once, on blocking threads.
/// Recovery is disk-bound: a few in parallel hide latency, many would only thrash the disk.
pub const RECOVERY_PARALLELISM_MAX: usize = 4;

/// Why a registry operation failed. The handlers map it to a wire code (`handlers::error_code`).
#[derive(Debug, thiserror::Error)]
pub enum PartitionsError {
    /// A topic of that name exists already (possibly still being deleted).
    #[error("topic {name} already exists")]
    TopicExists {
        /// The topic name.
        name: String,
    },
    /// No active topic has that name.
    #[error("unknown topic {name}")]
    UnknownTopic {
        /// The topic name.
        name: String,
    },
    /// The partition count is above the broker's `server.partitions_per_topic_max`.
    #[error("partition count {count} outside 1..={max}")]
    InvalidPartitionCount {
        /// The requested count.
        count: u32,
        /// The broker's limit.
        max: u32,
    },
    /// A config override is unknown, malformed or out of range.
    #[error("invalid topic config")]
    InvalidConfig(#[from] TopicConfigError),
    /// `max.message.bytes` is above the broker's `log.batch_bytes_max`.
    #[error("max.message.bytes = {value} is above the broker's log.batch_bytes_max = {max}")]
    BatchBytesAboveBroker {
        /// The requested override.
        value: u32,
        /// The broker's limit.
        max: u32,
    },
    /// The overrides combine with the broker defaults into a partition-log config the log rejects.
    #[error("topic config rejected by the partition log")]
    InvalidLogConfig(#[source] LogError),
    /// The broker holds `server.topics_max` topics.
    #[error("the broker holds its maximum of {max} topics")]
    TopicsLimit {
        /// The configured limit.
        max: u32,
    },
    /// Creating the topic would take the broker over `server.partitions_max` partitions.
    #[error("{requested} more partitions would exceed the broker's maximum of {max} (it has {current})")]
    PartitionsLimit {
        /// Partitions the broker has.
        current: u64,
        /// Partitions the new topic asks for.
        requested: u32,
        /// The configured limit.
        max: u32,
    },
    /// The broker is shutting down and takes no admin operations.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// The metadata store failed.
    #[error("metadata store error")]
    Meta(#[source] MetaError),
    /// The partition logs hold what the metadata store never issued or does not know: a topic directory with an id
    /// it never assigned or with records, or a producer id at or above its next one. The store lost writes it had
    /// acknowledged (damaged, restored from an older copy, or replaced by an empty one). Serving would hide records
    /// and issue ids again, so the broker refuses to start and touches nothing.
    #[error(
        "the metadata store is behind the partition logs: {dir}: {why}; the metadata store lost writes (damaged, \
         or restored from an older copy); refusing to start"
    )]
    MetaBehindLogs {
        /// The topic or partition directory.
        dir: PathBuf,
        /// What in it the store does not know.
        why: String,
    },
    /// A partition log could not be opened, started or shut down.
    #[error("partition log {topic}/{partition}")]
    Log {
        /// The topic name.
        topic: String,
        /// The partition number.
        partition: u32,
        /// What the log reported.
        #[source]
        source: LogError,
    },
    /// A directory operation on the logs directory failed.
    #[error("{op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS reported.
        #[source]
        source: std::io::Error,
    },
}

impl From<MetaError> for PartitionsError {
    fn from(error: MetaError) -> PartitionsError {
        match error {
            MetaError::TopicExists { name } => PartitionsError::TopicExists { name },
            MetaError::UnknownTopic { name } => PartitionsError::UnknownTopic { name },
            other => PartitionsError::Meta(other),
        }
    }
}

/// What opening one partition found, as logged at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRecovery {
    /// The topic name.
    pub topic: String,
    /// The partition number.
    pub partition: u32,
    /// What recovery found and did.
    pub report: RecoveryReport,
}

/// One partition of an active topic: where produce handlers submit and fetch handlers read.
#[derive(Debug)]
pub struct Partition {
    /// The partition number.
    pub id: u32,
    append: AppendHandle,
    reader: LogReader,
    /// Taken out (and shut down) by topic deletion and broker shutdown.
    appender: Mutex<Option<Appender>>,
    end_offset_gauge: Gauge,
    size_gauge: Gauge,
}

impl Partition {
    /// A handle to submit appends to this partition's appender (back-pressure: its queue is bounded).
    pub fn append_handle(&self) -> &AppendHandle {
        &self.append
    }

    /// A reader of this partition's log. Its reads block: call them from a blocking thread.
    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// Refreshes the end-offset and size gauges; called after each acknowledged append. Cheap (no I/O).
    pub fn refresh_gauges(&self) {
        // Gauges are floats: offsets and sizes above 2^53 lose precision, far beyond any real partition.
        #[allow(clippy::cast_precision_loss)]
        {
            self.end_offset_gauge.set(self.reader.visible_end() as f64);
            self.size_gauge.set(self.reader.size_bytes() as f64);
        }
    }

    fn take_appender(&self) -> Option<Appender> {
        self.appender.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Per-topic traffic counters, registered once when the topic is opened (the topic label is bounded by
/// `server.topics_max`).
#[derive(Debug)]
pub struct TopicMetrics {
    /// `ferry_produce_bytes_total{topic}`.
    pub produce_bytes: Counter,
    /// `ferry_produce_records_total{topic}`.
    pub produce_records: Counter,
    /// `ferry_fetch_bytes_total{topic}`.
    pub fetch_bytes: Counter,
    /// `ferry_fetch_records_total{topic}`.
    pub fetch_records: Counter,
    /// `ferry_duplicates_dropped_total{topic, reason="sequence"}`.
    pub duplicates_sequence: Counter,
    /// `ferry_duplicates_dropped_total{topic, reason="dedup_key"}`: records dropped by message-id dedup.
    pub duplicates_dedup_key: Counter,
}

impl TopicMetrics {
    fn new(topic: &str) -> TopicMetrics {
        TopicMetrics {
            produce_bytes: metrics::counter!(PRODUCE_BYTES_TOTAL, LABEL_TOPIC => topic.to_owned()),
            produce_records: metrics::counter!(PRODUCE_RECORDS_TOTAL, LABEL_TOPIC => topic.to_owned()),
            fetch_bytes: metrics::counter!(FETCH_BYTES_TOTAL, LABEL_TOPIC => topic.to_owned()),
            fetch_records: metrics::counter!(FETCH_RECORDS_TOTAL, LABEL_TOPIC => topic.to_owned()),
            duplicates_sequence: metrics::counter!(
                DUPLICATES_DROPPED_TOTAL, LABEL_TOPIC => topic.to_owned(), LABEL_REASON => "sequence"
            ),
            duplicates_dedup_key: metrics::counter!(
                DUPLICATES_DROPPED_TOTAL, LABEL_TOPIC => topic.to_owned(), LABEL_REASON => "dedup_key"
            ),
        }
    }
}

/// An active topic: its stored record, its partitions and what the produce handler checks batches against.
#[derive(Debug)]
pub struct Topic {
    /// The topic as stored in the metadata store.
    pub record: TopicRecord,
    /// Every partition, indexed by partition number.
    pub partitions: Vec<Partition>,
    /// The largest record batch this topic accepts: `max.message.bytes`, or the broker's `log.batch_bytes_max`.
    pub batch_bytes_max: u32,
    /// Traffic counters.
    pub metrics: TopicMetrics,
}

impl Topic {
    /// The topic name.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// The partition with that number, if the topic has it.
    pub fn partition(&self, partition: u32) -> Option<&Partition> {
        usize::try_from(partition).ok().and_then(|idx| self.partitions.get(idx))
    }
}

/// Every active topic and its partitions. See the module docs.
#[derive(Debug)]
pub struct Partitions {
    config: Arc<Config>,
    meta: Arc<MetaStore>,
    logs_dir: PathBuf,
    /// Active topics by name. A short lock: lookups clone the `Arc` out.
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes admin operations (create, delete, shutdown). An async mutex by design: it is held across the
    /// blocking steps of one operation so the next one waits for it, as a queue would.
    admin: tokio::sync::Mutex<()>,
    /// Set by [`Partitions::shutdown`]; admin operations are refused afterwards.
    shut_down: std::sync::atomic::AtomicBool,
    recovery_reports: Vec<PartitionRecovery>,
    /// The producer entries every partition's dedup table draws from (`producers.entries_max`).
    budget: Arc<EntryBudget>,
}

/// A partition to open: everything the blocking open needs.
#[derive(Debug, Clone)]
struct OpenJob {
    topic: String,
    topic_id: u64,
    partition: u32,
    dir: PathBuf,
    log_config: LogConfig,
    producers: ProducerStateConfig,
    budget: Arc<EntryBudget>,
    meta: Arc<MetaStore>,
    /// The topic's message-id dedup window, if it deduplicates.
    dedup_window: Option<std::time::Duration>,
}

/// A partition's message-id dedup index in the metadata store (called on the partition's appender thread).
#[derive(Debug)]
struct MetaDedupIndex {
    meta: Arc<MetaStore>,
    topic_id: u64,
    partition: u32,
}

impl DedupIndex for MetaDedupIndex {
    fn lookup(&self, keys: &[&[u8]], not_before_ms: i64) -> Result<Vec<Option<u64>>, IndexError> {
        Ok(self.meta.lookup_dedup(self.topic_id, self.partition, keys, not_before_ms)?)
    }

    fn insert(&self, entries: &[DedupEntry], covered_up_to: u64) -> Result<(), IndexError> {
        let records: Vec<DedupRecord<'_>> = entries
            .iter()
            .map(|entry| DedupRecord { key: &entry.key, offset: entry.offset, append_ms: entry.append_ms })
            .collect();
        Ok(self.meta.insert_dedup(self.topic_id, self.partition, &records, covered_up_to)?)
    }

    fn covered_up_to(&self) -> Result<Option<u64>, IndexError> {
        Ok(self.meta.dedup_covered_up_to(self.topic_id, self.partition)?)
    }
}

/// Stores a partition's producer snapshots in the metadata store (called on the partition's appender thread).
#[derive(Debug)]
struct MetaSnapshotSink {
    meta: Arc<MetaStore>,
    topic_id: u64,
    partition: u32,
}

impl SnapshotSink for MetaSnapshotSink {
    fn save(&self, snapshot: &ProducerSnapshot) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.meta.save_producer_snapshot(self.topic_id, self.partition, snapshot).map_err(Into::into)
    }
}

/// An opened partition, before it is wrapped for the registry.
#[derive(Debug)]
struct Opened {
    partition: u32,
    appender: Appender,
    report: RecoveryReport,
}

impl Partitions {
    /// Opens every topic's partitions (see the module docs). Must run inside a tokio runtime; recovery runs on
    /// blocking threads. Fails if a partition cannot be opened or a crash-interrupted deletion cannot be finished.
    pub async fn open(config: Arc<Config>, meta: Arc<MetaStore>) -> Result<Partitions, PartitionsError> {
        let logs_dir = config.data_dir.join(LOGS_DIR);
        let (records, unknown_dirs) = {
            let (meta, config, logs_dir) = (Arc::clone(&meta), Arc::clone(&config), logs_dir.clone());
            blocking(move || prepare_logs_dir(&config, &meta, &logs_dir)).await?
        };
        for dir in unknown_dirs {
            tracing::warn!(dir = %dir.display(), "directory in logs/ belongs to no known topic; left untouched");
        }
        let mut topics = BTreeMap::new();
        let mut recovery_reports = Vec::new();
        let mut jobs = Vec::new();
        let budget = EntryBudget::new(usize::try_from(config.producers.entries_max).unwrap_or(usize::MAX));
        for record in &records {
            jobs.extend(
                open_jobs(&config, &meta, &budget, &logs_dir, record).map_err(PartitionsError::InvalidLogConfig)?,
            );
        }
        let mut opened = open_partitions(jobs).await?;
        if let Err(error) = check_producer_ids_issued(&meta, &logs_dir, &records, &opened) {
            // The appenders may be writing producer snapshots to the metadata store: stop them before the store
            // closes, as after a failed open.
            close_opened(opened).await;
            return Err(error);
        }
        for record in records {
            let mut topic_opened: Vec<Opened> = opened.remove(&record.name).unwrap_or_default();
            topic_opened.sort_by_key(|opened| opened.partition);
            for opened in &topic_opened {
                recovery_reports.push(PartitionRecovery {
                    topic: record.name.clone(),
                    partition: opened.partition,
                    report: opened.report.clone(),
                });
            }
            let topic = build_topic(&config, record, topic_opened);
            topics.insert(topic.record.name.clone(), Arc::new(topic));
        }
        let n_partitions: usize = topics.values().map(|topic| topic.partitions.len()).sum();
        tracing::info!(topics = topics.len(), partitions = n_partitions, "partition logs open");
        Ok(Partitions {
            config,
            meta,
            logs_dir,
            topics: RwLock::new(topics),
            admin: tokio::sync::Mutex::new(()),
            shut_down: std::sync::atomic::AtomicBool::new(false),
            recovery_reports,
            budget,
        })
    }

    /// What recovery found for each partition opened at startup, in topic and partition order.
    pub fn recovery_reports(&self) -> &[PartitionRecovery] {
        &self.recovery_reports
    }

    /// The active topic of that name.
    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.read_topics().get(name).cloned()
    }

    /// Every active topic, ordered by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.read_topics().values().cloned().collect()
    }

    /// Creates a topic (see the module docs for the order of steps and how a failure is rolled back).
    pub async fn create_topic(
        &self,
        name: String,
        partition_count: u32,
        topic_config: TopicConfig,
    ) -> Result<Arc<Topic>, PartitionsError> {
        let max = self.config.server.partitions_per_topic_max;
        if !(1..=max).contains(&partition_count) {
            return Err(PartitionsError::InvalidPartitionCount { count: partition_count, max });
        }
        if let Some(value) = topic_config.batch_bytes_max
            && value > self.config.log.batch_bytes_max
        {
            return Err(PartitionsError::BatchBytesAboveBroker { value, max: self.config.log.batch_bytes_max });
        }
        let spec = TopicSpec { name, partitions: partition_count, config: topic_config };
        // Checked before anything is written: the overrides must make a valid log config.
        log_config(&self.config, &spec.config, &spec.name, 0).validate().map_err(PartitionsError::InvalidLogConfig)?;

        let _admin = self.admin.lock().await;
        self.check_running()?;
        if self.read_topics().contains_key(&spec.name) {
            return Err(PartitionsError::TopicExists { name: spec.name });
        }
        self.check_limits(partition_count)?;
        let record = {
            let (meta, spec) = (Arc::clone(&self.meta), spec.clone());
            blocking(move || meta.create_topic(&spec, now_ms()).map_err(PartitionsError::from)).await?
        };
        let jobs = open_jobs(&self.config, &self.meta, &self.budget, &self.logs_dir, &record)
            .map_err(PartitionsError::InvalidLogConfig)?;
        let topic_dir = topic_dir(&self.logs_dir, &record);
        let opened = {
            let (logs_dir, topic_dir) = (self.logs_dir.clone(), topic_dir.clone());
            blocking(move || create_dir_synced(&logs_dir, &topic_dir)).await
        };
        let opened = match opened {
            Ok(()) => open_partitions(jobs).await,
            Err(error) => Err(error),
        };
        let mut opened = match opened {
            Ok(opened) => opened,
            Err(error) => {
                tracing::error!(topic = %record.name, error = %error_chain(&error), "cannot open the new topic's partitions; rolling back");
                self.roll_back_create(record).await;
                return Err(error);
            }
        };
        let mut topic_opened = opened.remove(&record.name).unwrap_or_default();
        topic_opened.sort_by_key(|opened| opened.partition);
        let topic = Arc::new(build_topic(&self.config, record, topic_opened));
        self.write_topics().insert(topic.record.name.clone(), Arc::clone(&topic));
        tracing::info!(topic = %topic.name(), id = topic.record.id, partitions = topic.partitions.len(), "topic created");
        Ok(topic)
    }

    /// Deletes a topic and all its records (see the module docs for the crash-safe order of steps).
    pub async fn delete_topic(&self, name: &str) -> Result<(), PartitionsError> {
        let _admin = self.admin.lock().await;
        self.check_running()?;
        let Some(topic) = self.topic(name) else {
            // A deletion that failed half-way left a `Deleting` record: finish it now.
            let meta = Arc::clone(&self.meta);
            let owned_name = name.to_owned();
            let stored = blocking(move || meta.topic(&owned_name).map_err(PartitionsError::from)).await?;
            return match stored {
                Some(record) if record.state == TopicState::Deleting => self.finish_deletion(record).await,
                _ => Err(PartitionsError::UnknownTopic { name: name.to_owned() }),
            };
        };
        let record = {
            let (meta, name) = (Arc::clone(&self.meta), name.to_owned());
            blocking(move || meta.set_topic_state(&name, TopicState::Deleting).map_err(PartitionsError::from)).await?
        };
        self.write_topics().remove(name);
        let appenders: Vec<(u32, Appender)> =
            topic.partitions.iter().filter_map(|partition| Some((partition.id, partition.take_appender()?))).collect();
        // A failed shutdown (a partition that had stopped on a fatal error) does not stop the deletion:
        // its files are removed anyway.
        for error in shutdown_appenders(name, appenders).await {
            tracing::warn!(topic = name, error = %error_chain(&error), "partition of a deleted topic did not close cleanly");
        }
        self.finish_deletion(record).await?;
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Stops every appender (each drains its queue, syncs and writes its clean checkpoint), at most
    /// [`RECOVERY_PARALLELISM_MAX`] at a time, and refuses admin operations from then on. Errors are logged:
    /// a partition that cannot close cleanly is recovered from disk at the next start.
    pub async fn shutdown(&self) {
        let _admin = self.admin.lock().await;
        self.shut_down.store(true, std::sync::atomic::Ordering::Release);
        let topics: Vec<Arc<Topic>> = self.topics();
        let mut n_closed = 0usize;
        for topic in topics {
            let appenders: Vec<(u32, Appender)> = topic
                .partitions
                .iter()
                .filter_map(|partition| Some((partition.id, partition.take_appender()?)))
                .collect();
            n_closed += appenders.len();
            for error in shutdown_appenders(topic.name(), appenders).await {
                tracing::error!(topic = topic.name(), error = %error_chain(&error), "partition did not close cleanly");
            }
        }
        tracing::info!(partitions = n_closed, "partition logs closed");
    }

    fn check_running(&self) -> Result<(), PartitionsError> {
        if self.shut_down.load(std::sync::atomic::Ordering::Acquire) {
            return Err(PartitionsError::ShuttingDown);
        }
        Ok(())
    }

    fn check_limits(&self, partition_count: u32) -> Result<(), PartitionsError> {
        let topics = self.read_topics();
        let topics_max = self.config.server.topics_max;
        if u64::try_from(topics.len()).unwrap_or(u64::MAX) >= u64::from(topics_max) {
            return Err(PartitionsError::TopicsLimit { max: topics_max });
        }
        let current: u64 = topics.values().map(|topic| u64::from(topic.record.partitions)).sum();
        let partitions_max = self.config.server.partitions_max;
        if current + u64::from(partition_count) > u64::from(partitions_max) {
            return Err(PartitionsError::PartitionsLimit { current, requested: partition_count, max: partitions_max });
        }
        Ok(())
    }

    /// Undoes a creation whose partitions could not be opened: the record goes, and so does whatever was created.
    async fn roll_back_create(&self, record: TopicRecord) {
        let name = record.name.clone();
        let (meta, state_name) = (Arc::clone(&self.meta), name.clone());
        let marked = blocking(move || {
            meta.set_topic_state(&state_name, TopicState::Deleting).map(drop).map_err(PartitionsError::from)
        })
        .await;
        let result = match marked {
            Ok(()) => self.finish_deletion(record).await,
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            tracing::error!(topic = %name, error = %error_chain(&error), "rolling back a failed creation failed; the next start retries");
        }
    }

    /// Removes a `Deleting` topic's directory (fsyncing `logs/`) and then its record.
    async fn finish_deletion(&self, record: TopicRecord) -> Result<(), PartitionsError> {
        let (meta, logs_dir) = (Arc::clone(&self.meta), self.logs_dir.clone());
        blocking(move || finish_deletion_blocking(&meta, &logs_dir, &record)).await
    }

    fn read_topics(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Topic>>> {
        self.topics.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_topics(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Topic>>> {
        self.topics.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The directory of a topic: `<logs>/<id:020>-<name>`.
pub fn topic_dir(logs_dir: &Path, record: &TopicRecord) -> PathBuf {
    logs_dir.join(format!("{:020}-{}", record.id, record.name))
}

/// Checks that the metadata store issued every producer id the partition logs hold: a store that lost writes (a
/// restored older copy, a write-ahead log cut at a record boundary) would issue those ids again, and the new
/// producer's records would be taken for the old one's duplicates and dropped.
fn check_producer_ids_issued(
    meta: &MetaStore,
    logs_dir: &Path,
    records: &[TopicRecord],
    opened: &BTreeMap<String, Vec<Opened>>,
) -> Result<(), PartitionsError> {
    let next_id = meta.next_producer_id();
    for record in records {
        for partition in opened.get(&record.name).into_iter().flatten() {
            let max_id = partition.appender.rebuild_report().max_producer_id;
            if let Some(id) = max_id.filter(|id| u64::try_from(*id).is_ok_and(|id| id >= next_id)) {
                let why = format!("producer id {id} wrote to it, but the store's next producer id is {next_id}");
                let dir = partition_dir(logs_dir, record, partition.partition);
                return Err(PartitionsError::MetaBehindLogs { dir, why });
            }
        }
    }
    Ok(())
}

/// The topic id in a topic directory's name (`<id:020>-<name>`), if it has that shape.
fn topic_id_of_dir(dir: &Path) -> Option<u64> {
    let name = dir.file_name()?.to_str()?;
    let (id, _) = name.split_once('-')?;
    if id.len() != 20 { None } else { id.parse().ok() }
}

/// The first segment file (`*.log`) with bytes in a topic directory's partition directories, if any.
fn first_nonempty_segment(topic_dir: &Path) -> Result<Option<PathBuf>, PartitionsError> {
    let list = |dir: &Path| std::fs::read_dir(dir).map_err(|source| io_error("list", dir, source));
    if !topic_dir.is_dir() {
        return Ok(None);
    }
    for partition in list(topic_dir)? {
        let partition = partition.map_err(|source| io_error("list", topic_dir, source))?.path();
        if !partition.is_dir() {
            continue;
        }
        for file in list(&partition)? {
            let file = file.map_err(|source| io_error("list", &partition, source))?.path();
            let len = std::fs::metadata(&file).map_err(|source| io_error("stat", &file, source))?.len();
            if file.extension().is_some_and(|extension| extension == "log") && len > 0 {
                return Ok(Some(file));
            }
        }
    }
    Ok(None)
}

/// The directory of one partition: `<topic dir>/<partition:05>`.
pub fn partition_dir(logs_dir: &Path, record: &TopicRecord, partition: u32) -> PathBuf {
    topic_dir(logs_dir, record).join(format!("{partition:05}"))
}

/// The partition-log config of one partition: the broker's `[log]` defaults and `fsync`, overridden by the topic,
/// with the topic and partition as metric labels.
pub fn log_config(config: &Config, overrides: &TopicConfig, topic: &str, partition: u32) -> LogConfig {
    let defaults = &config.log;
    LogConfig {
        segment_bytes: overrides.segment_bytes.unwrap_or(defaults.segment_bytes),
        segment_age: overrides.segment_age.unwrap_or(defaults.segment_age),
        retention_bytes: overrides.retention_bytes.unwrap_or(defaults.retention_bytes).at_most(),
        retention_age: overrides.retention_age.unwrap_or(defaults.retention_age).at_most(),
        index_interval_bytes: defaults.index_interval_bytes,
        fsync: overrides.fsync.unwrap_or(config.fsync),
        metric_labels: vec![
            (LABEL_TOPIC.to_owned(), topic.to_owned()),
            (LABEL_PARTITION.to_owned(), partition.to_string()),
        ],
        ..LogConfig::default()
    }
}

fn open_jobs(
    config: &Config,
    meta: &Arc<MetaStore>,
    budget: &Arc<EntryBudget>,
    logs_dir: &Path,
    record: &TopicRecord,
) -> Result<Vec<OpenJob>, LogError> {
    let producers = ProducerStateConfig {
        producers_max: usize::try_from(config.producers.ids_max).unwrap_or(usize::MAX),
        expiration: config.producers.id_expiration,
        snapshot_interval: config.producers.snapshot_interval,
        snapshot_bytes: config.producers.snapshot_bytes,
    };
    (0..record.partitions)
        .map(|partition| {
            let log_config = log_config(config, &record.config, &record.name, partition);
            log_config.validate()?;
            Ok(OpenJob {
                topic: record.name.clone(),
                topic_id: record.id,
                partition,
                dir: partition_dir(logs_dir, record, partition),
                log_config,
                producers,
                budget: Arc::clone(budget),
                meta: Arc::clone(meta),
                dedup_window: record.config.dedup_window(),
            })
        })
        .collect()
}

fn build_topic(config: &Config, record: TopicRecord, opened: Vec<Opened>) -> Topic {
    assert_eq!(
        opened.len(),
        usize::try_from(record.partitions).unwrap_or(usize::MAX),
        "every partition of the topic was opened"
    );
    let partitions = opened
        .into_iter()
        .enumerate()
        .map(|(idx, opened)| {
            assert_eq!(usize::try_from(opened.partition).ok(), Some(idx), "partitions are opened in order");
            let (topic_label, partition_label) = (record.name.clone(), opened.partition.to_string());
            let partition = Partition {
                id: opened.partition,
                append: opened.appender.handle(),
                reader: opened.appender.reader(),
                appender: Mutex::new(Some(opened.appender)),
                end_offset_gauge: metrics::gauge!(
                    LOG_END_OFFSET, LABEL_TOPIC => topic_label.clone(), LABEL_PARTITION => partition_label.clone()
                ),
                size_gauge: metrics::gauge!(LOG_SIZE_BYTES, LABEL_TOPIC => topic_label, LABEL_PARTITION => partition_label),
            };
            partition.refresh_gauges();
            partition
        })
        .collect();
    Topic {
        batch_bytes_max: record.config.batch_bytes_max.unwrap_or(config.log.batch_bytes_max),
        metrics: TopicMetrics::new(&record.name),
        partitions,
        record,
    }
}

/// Opens partitions on blocking threads, at most [`RECOVERY_PARALLELISM_MAX`] at a time, grouped by topic.
/// On failure, every partition opened so far is shut down again and the first error is returned.
async fn open_partitions(jobs: Vec<OpenJob>) -> Result<BTreeMap<String, Vec<Opened>>, PartitionsError> {
    let permits = Arc::new(Semaphore::new(RECOVERY_PARALLELISM_MAX));
    let mut tasks = JoinSet::new();
    for job in jobs {
        let permit = Arc::clone(&permits).acquire_owned().await.expect("the semaphore is never closed");
        tasks.spawn_blocking(move || {
            let result = open_partition(&job);
            drop(permit);
            (job, result)
        });
    }
    let mut opened: BTreeMap<String, Vec<Opened>> = BTreeMap::new();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let (job, result) = joined.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
        match result {
            Ok(partition) => opened.entry(job.topic).or_default().push(partition),
            Err(source) => {
                first_error.get_or_insert(PartitionsError::Log { topic: job.topic, partition: job.partition, source });
            }
        }
    }
    let Some(error) = first_error else { return Ok(opened) };
    close_opened(opened).await;
    Err(error)
}

/// Shuts down the appenders of partitions opened at start when the start fails after all.
async fn close_opened(opened: BTreeMap<String, Vec<Opened>>) {
    for (topic, partitions) in opened {
        let appenders = partitions.into_iter().map(|opened| (opened.partition, opened.appender)).collect();
        for close_error in shutdown_appenders(&topic, appenders).await {
            tracing::warn!(topic, error = %error_chain(&close_error), "partition did not close cleanly");
        }
    }
}

/// Opens (recovers) one partition log and starts its appender. Blocks.
fn open_partition(job: &OpenJob) -> Result<Opened, LogError> {
    let storage: Arc<dyn Storage> = crate::failpoints::partition_storage();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (log, report) = ferry_log::Log::open(storage, &job.dir, job.log_config.clone(), Arc::clone(&clock))?;
    log_report(&job.topic, job.partition, &report);
    let snapshot = match job.meta.producer_snapshot(job.topic_id, job.partition) {
        Ok(snapshot) => snapshot,
        Err(error) => {
            // The log is the source of truth: without a usable snapshot the whole log is replayed.
            tracing::warn!(topic = %job.topic, partition = job.partition, error = %error_chain(&error),
                "producer snapshot unreadable; rebuilding the dedup state from the whole log");
            None
        }
    };
    let sink = MetaSnapshotSink { meta: Arc::clone(&job.meta), topic_id: job.topic_id, partition: job.partition };
    let setup = ProducerSetup {
        config: job.producers,
        snapshot,
        sink: Some(Arc::new(sink)),
        clock,
        budget: Arc::clone(&job.budget),
        dedup: job.dedup_window.map(|window| DedupSetup {
            window,
            index: Arc::new(MetaDedupIndex {
                meta: Arc::clone(&job.meta),
                topic_id: job.topic_id,
                partition: job.partition,
            }) as Arc<dyn DedupIndex>,
        }),
    };
    let appender =
        Appender::start_with_producers(log, &format!("{}-{}", job.topic, job.partition), &job.log_config, setup)?;
    Ok(Opened { partition: job.partition, appender, report })
}

fn log_report(topic: &str, partition: u32, report: &RecoveryReport) {
    if let Some(damage) = &report.damaged {
        tracing::error!(
            topic,
            partition,
            %damage,
            end_offset = report.end_offset,
            "partition DAMAGED: corrupt data below the durable end; reads below the damage are served, writes refused"
        );
        return;
    }
    if report.truncated_bytes > 0 {
        tracing::warn!(
            topic,
            partition,
            truncated_bytes = report.truncated_bytes,
            end_offset = report.end_offset,
            "partition recovered: torn tail truncated"
        );
    }
    tracing::info!(
        topic,
        partition,
        clean = report.clean,
        segments = report.segments,
        scanned_bytes = report.scanned_bytes,
        truncated_bytes = report.truncated_bytes,
        rebuilt_indexes = report.rebuilt_indexes,
        start_offset = report.start_offset,
        end_offset = report.end_offset,
        duration_ms = u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX),
        "partition recovered"
    );
}

/// Shuts appenders down on blocking threads, at most [`RECOVERY_PARALLELISM_MAX`] at a time; returns the errors.
async fn shutdown_appenders(topic: &str, appenders: Vec<(u32, Appender)>) -> Vec<PartitionsError> {
    let permits = Arc::new(Semaphore::new(RECOVERY_PARALLELISM_MAX));
    let mut tasks = JoinSet::new();
    for (partition, appender) in appenders {
        let permit = Arc::clone(&permits).acquire_owned().await.expect("the semaphore is never closed");
        tasks.spawn_blocking(move || {
            let result = appender.shutdown();
            drop(permit);
            (partition, result)
        });
    }
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (partition, result) = joined.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
        if let Err(source) = result {
            errors.push(PartitionsError::Log { topic: topic.to_owned(), partition, source });
        }
    }
    errors
}

/// Creates `logs/` (and syncs the data directory), finishes interrupted deletions, and returns the active topics
/// and the directories in `logs/` that belong to no known topic. Blocks.
fn prepare_logs_dir(
    config: &Config,
    meta: &MetaStore,
    logs_dir: &Path,
) -> Result<(Vec<TopicRecord>, Vec<PathBuf>), PartitionsError> {
    if !logs_dir.try_exists().map_err(|source| io_error("stat", logs_dir, source))? {
        std::fs::create_dir_all(logs_dir).map_err(|source| io_error("create directory", logs_dir, source))?;
        sync_dir(&config.data_dir)?;
    }
    let mut active = Vec::new();
    let mut known_dirs = std::collections::BTreeSet::new();
    for record in meta.topics()? {
        known_dirs.insert(topic_dir(logs_dir, &record));
        match record.state {
            TopicState::Active => active.push(record),
            TopicState::Deleting => {
                tracing::info!(topic = %record.name, "finishing the deletion a restart interrupted");
                finish_deletion_blocking(meta, logs_dir, &record)?;
            }
        }
    }
    let mut unknown = Vec::new();
    let next_id = meta.next_topic_id();
    let entries = std::fs::read_dir(logs_dir).map_err(|source| io_error("list", logs_dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| io_error("list", logs_dir, source))?;
        let path = entry.path();
        if known_dirs.contains(&path) {
            continue;
        }
        // A topic's directory is created after its record and removed before it, so the only leftover the broker
        // makes is a directory of empty segments whose creation was rolled back, with an id the store assigned.
        if let Some(id) = topic_id_of_dir(&path).filter(|id| *id >= next_id) {
            let why = format!("a topic directory the store does not know, with topic id {id} (next: {next_id})");
            return Err(PartitionsError::MetaBehindLogs { dir: path, why });
        }
        if let Some(segment) = first_nonempty_segment(&path)? {
            let why = format!("a topic directory the store does not know, with records in {}", segment.display());
            return Err(PartitionsError::MetaBehindLogs { dir: path, why });
        }
        unknown.push(path);
    }
    Ok((active, unknown))
}

fn finish_deletion_blocking(meta: &MetaStore, logs_dir: &Path, record: &TopicRecord) -> Result<(), PartitionsError> {
    let dir = topic_dir(logs_dir, record);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(io_error("remove directory", &dir, source)),
    }
    sync_dir(logs_dir)?;
    meta.delete_producer_snapshots(record.id)?;
    meta.delete_topic(&record.name)?;
    Ok(())
}

/// Creates a topic directory in `logs/` and makes the entry durable.
fn create_dir_synced(logs_dir: &Path, dir: &Path) -> Result<(), PartitionsError> {
    std::fs::create_dir_all(dir).map_err(|source| io_error("create directory", dir, source))?;
    sync_dir(logs_dir)
}

fn sync_dir(dir: &Path) -> Result<(), PartitionsError> {
    RealFs.sync_dir(dir).map_err(|source| io_error("sync directory", dir, source))
}

fn io_error(op: &'static str, path: &Path, source: std::io::Error) -> PartitionsError {
    PartitionsError::Io { op, path: path.to_owned(), source }
}

/// Runs blocking work on tokio's blocking pool, re-raising its panic.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
}

/// An error and its sources on one line, for logs.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn now_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// Whether a partition accepts writes, as DescribeTopics reports it.
pub fn partition_health(reader: &LogReader) -> Result<(), LogError> {
    match reader.status() {
        LogStatus::Open | LogStatus::Closed => Ok(()),
        LogStatus::Damaged(damage) => Err(LogError::Damaged { damage }),
        LogStatus::Failed(cause) => Err(LogError::Failed { cause }),
    }
}
