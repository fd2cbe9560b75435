//! Starting and stopping a broker: [`Broker::open`] and [`Broker::shutdown`].
//!
//! Startup order: validate the config, install the metrics recorder, lock the data directory, serve `/metrics`,
//! `/health` and `/ready` (503 until the end of startup), open the metadata store, bind the client listener, open
//! every partition (recovery), then start the network server (logged as `listening on ADDR`) and report ready. Each step that fails stops startup with a [`StartupError`] naming what
//! failed, and everything opened so far is closed again (by drop).
//!
//! Shutdown order ([`Broker::shutdown`]): cancel the token (the server stops accepting; each connection stops
//! reading, finishes its requests in flight and closes), wait for every task (up to [`SHUTDOWN_TASKS_DEADLINE`]),
//! shut every appender down (drain, sync, clean checkpoint), close the metadata store, release the lock.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::data_dir::{self, DataDirLock};
use crate::groups::{self, Coordinator, TopicSource};
use crate::health::Readiness;
use crate::meta::{MetaConfig, MetaError, MetaStore};
use crate::metrics;
use crate::partitions::{PartitionRecovery, Partitions, PartitionsError};
use crate::producers::ProducerIds;
use crate::server::{self, ServerState};
use crate::transactions::Transactions;

/// How often the registry of producer ids persists last-seen times and sweeps expired ids.
pub const PRODUCER_IDS_PERSIST_INTERVAL: Duration = Duration::from_secs(10);

/// How often expired message-id dedup buckets (`dedup_<bucket>` column families) are dropped.
pub const DEDUP_BUCKET_DROP_INTERVAL: Duration = Duration::from_secs(60);

/// How long [`Broker::shutdown`] waits for the broker's tasks to finish before closing the stores anyway.
pub const SHUTDOWN_TASKS_DEADLINE: Duration = Duration::from_secs(30);

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configuration is invalid.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// The data directory does not exist and could not be created.
    #[error("cannot create data directory {path}")]
    CreateDataDir {
        /// The data directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot lock data directory with {path}")]
    LockFile {
        /// The lock file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another broker holds the data directory's lock.
    #[error("data directory {path} is locked by another broker{}", holder_text(.holder))]
    DataDirLocked {
        /// The data directory.
        path: PathBuf,
        /// The process id recorded by the holder, if readable.
        holder: Option<u32>,
    },
    /// The metadata store could not be opened.
    #[error("cannot open the metadata store")]
    Meta(#[source] MetaError),
    /// Another metrics recorder was installed in this process first.
    #[error("cannot set up metrics")]
    Metrics(#[from] metrics::InstallError),
    /// A partition log could not be opened, or a deletion interrupted by a crash could not be finished.
    #[error("cannot open the partition logs")]
    Partitions(#[source] PartitionsError),
    /// The transaction coordinator could not load its state.
    #[error("cannot recover the transactions")]
    Transactions(#[source] crate::transactions::TxnError),
    /// The server could not listen on its client address.
    #[error("cannot listen for clients on {address}")]
    Listen {
        /// The configured `listen` address.
        address: SocketAddr,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The metrics endpoint could not listen on its address.
    #[error("cannot listen for metrics on {address}")]
    MetricsListen {
        /// The configured `metrics_listen` address.
        address: SocketAddr,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Persists the producer-id registry every [`PRODUCER_IDS_PERSIST_INTERVAL`], and once more at shutdown.
async fn persist_producer_ids(producer_ids: Arc<ProducerIds>, shutdown: CancellationToken) {
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            () = tokio::time::sleep(PRODUCER_IDS_PERSIST_INTERVAL) => false,
        };
        let registry = Arc::clone(&producer_ids);
        let persisted = tokio::task::spawn_blocking(move || registry.persist(crate::handlers::now_ms())).await;
        match persisted {
            Ok(Ok(report)) if report.expired > 0 => tracing::info!(expired = report.expired, "producer ids expired"),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(error = %crate::partitions::error_chain(&error),
                "persisting producer ids failed; will retry"),
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
        ::metrics::gauge!(crate::metrics::PRODUCER_IDS_ACTIVE).set(producer_ids.active() as f64);
        if stopping {
            return;
        }
    }
}

/// Drops the dedup buckets no window reaches any more, every [`DEDUP_BUCKET_DROP_INTERVAL`] until shutdown.
async fn drop_expired_dedup_buckets(meta: Arc<MetaStore>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(DEDUP_BUCKET_DROP_INTERVAL) => {}
        }
        let store = Arc::clone(&meta);
        let dropped =
            tokio::task::spawn_blocking(move || store.drop_expired_dedup_buckets(crate::handlers::now_ms())).await;
        match dropped {
            Ok(Ok(0)) => {}
            Ok(Ok(dropped)) => tracing::info!(dropped, "expired dedup buckets dropped"),
            Ok(Err(error)) => tracing::warn!(error = %crate::partitions::error_chain(&error),
                "dropping expired dedup buckets failed; will retry"),
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
}

fn holder_text(holder: &Option<u32>) -> String {
    holder.map(|pid| format!(" (process {pid})")).unwrap_or_default()
}

/// Why the broker could not shut down cleanly. Whatever failed is recovered from disk on the next start.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    /// The metadata store could not be flushed and closed.
    #[error("cannot close the metadata store")]
    Meta(#[source] MetaError),
}

/// A running broker: its stores, its background tasks and the lock on its data directory.
///
/// Dropping it without [`Broker::shutdown`] cancels its tasks but skips the orderly close.
#[derive(Debug)]
pub struct Broker {
    config: Arc<Config>,
    meta: Arc<MetaStore>,
    partitions: Arc<Partitions>,
    address: SocketAddr,
    metrics_address: SocketAddr,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
    _cancel_on_drop: DropGuard,
    tasks: TaskTracker,
    /// Dropped last, after the stores are closed.
    lock: DataDirLock,
}

impl Broker {
    /// Starts a broker with `config` (validated here too): locks the data directory, opens the metadata store,
    /// serves `/metrics`, opens every partition and serves clients on `config.listen`.
    /// Must run inside a multi-threaded tokio runtime; blocking steps run on the blocking pool.
    pub async fn open(config: Config) -> Result<Broker, StartupError> {
        config.validate()?;
        let config = Arc::new(config);
        let metrics_handle = metrics::install_recorder()?;

        let data_dir = config.data_dir.clone();
        let lock = tokio::task::spawn_blocking(move || DataDirLock::acquire(&data_dir))
            .await
            .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))?;

        // Served before the metadata store and the partitions open, so `/health` answers during a long recovery
        // and `/ready` says why the broker is not ready yet.
        let listener = TcpListener::bind(config.metrics_listen)
            .await
            .map_err(|source| StartupError::MetricsListen { address: config.metrics_listen, source })?;
        let metrics_address = listener
            .local_addr()
            .map_err(|source| StartupError::MetricsListen { address: config.metrics_listen, source })?;
        let shutdown = CancellationToken::new();
        // Cancels the metrics endpoint if startup fails from here on.
        let cancel_on_drop = shutdown.clone().drop_guard();
        let tasks = TaskTracker::new();
        let readiness = Arc::new(Readiness::new());
        tasks.spawn(metrics::serve(listener, metrics_handle, Arc::clone(&readiness), shutdown.clone()));
        // Tests and operators find the (possibly ephemeral) port in this line.
        tracing::info!("metrics listening on {metrics_address}");

        let data_dir = config.data_dir.clone();
        let meta = tokio::task::spawn_blocking(move || {
            MetaStore::open(&data_dir::meta_dir(&data_dir), &MetaConfig::default())
        })
        .await
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
        .map_err(StartupError::Meta)?;
        let meta = Arc::new(meta);
        let info = meta.broker_info();
        tracing::info!(
            data_dir = %config.data_dir.display(),
            broker_id = info.broker_id,
            cluster_id = %info.cluster_id,
            "metadata store open"
        );
        readiness.recovering();

        // Bound before recovery so the port is taken early; connections wait in the backlog until the server runs.
        let listen_error = |source| StartupError::Listen { address: config.listen, source };
        let listener = TcpListener::bind(config.listen).await.map_err(listen_error)?;
        let address = listener.local_addr().map_err(listen_error)?;
        let producer_ids = {
            let (meta, producers) = (Arc::clone(&meta), config.producers.clone());
            tokio::task::spawn_blocking(move || {
                ProducerIds::load(meta, producers.ids_max, producers.id_expiration, crate::handlers::now_ms())
            })
            .await
            .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
            .map_err(StartupError::Meta)?
        };
        let producer_ids = Arc::new(producer_ids);
        tracing::info!(active = producer_ids.active(), "producer ids loaded");
        let partitions =
            Partitions::open(Arc::clone(&config), Arc::clone(&meta)).await.map_err(StartupError::Partitions)?;
        let partitions = Arc::new(partitions);
        tasks.spawn(persist_producer_ids(Arc::clone(&producer_ids), shutdown.clone()));
        tasks.spawn(drop_expired_dedup_buckets(Arc::clone(&meta), shutdown.clone()));
        let source: Arc<dyn TopicSource> = Arc::clone(&partitions) as Arc<dyn TopicSource>;
        let groups = Arc::new(Coordinator::new(config.groups.clone(), source));
        tasks.spawn(groups::run_background(
            Arc::clone(&groups),
            Arc::clone(&meta),
            Arc::clone(&partitions),
            shutdown.clone(),
        ));
        // Decided commits are finished and open transactions aborted before anyone is served.
        let transactions = match Transactions::open(
            config.transactions.clone(),
            Arc::clone(&meta),
            Arc::clone(&partitions),
            Arc::clone(&groups),
            Arc::clone(&producer_ids),
        )
        .await
        {
            Ok(transactions) => transactions,
            Err(error) => {
                // The appenders may be writing to the metadata store: stop them before it closes.
                partitions.shutdown().await;
                return Err(StartupError::Transactions(error));
            }
        };
        let transactions = Arc::new(transactions);
        tasks.spawn(Arc::clone(&transactions).run_background(shutdown.clone()));
        let state = Arc::new(ServerState::new(
            Arc::clone(&config),
            Arc::clone(&partitions),
            producer_ids,
            shutdown.clone(),
            tasks.clone(),
            Arc::clone(&meta),
            groups,
            transactions,
        ));
        tasks.spawn(server::run(listener, state, shutdown.clone()));
        readiness.serving(Arc::clone(&partitions));
        // Tests and operators find the (possibly ephemeral) port in this line.
        tracing::info!("listening on {address}");

        Ok(Broker {
            config,
            meta,
            partitions,
            address,
            metrics_address,
            readiness,
            _cancel_on_drop: cancel_on_drop,
            shutdown,
            tasks,
            lock,
        })
    }

    /// The validated configuration the broker runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The metadata store. Its methods block: call them from `spawn_blocking`.
    pub fn meta(&self) -> &Arc<MetaStore> {
        &self.meta
    }

    /// Whether the broker is ready, as `/ready` reports it.
    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.readiness
    }

    /// The address `/metrics` (and `/health`, `/ready`) is served on; differs from `metrics_listen` when that asked for port 0.
    pub fn metrics_address(&self) -> SocketAddr {
        self.metrics_address
    }

    /// The address clients connect to; differs from `listen` when that asked for port 0.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// What recovery found for each partition opened at startup (in topic and partition order): whether it took the
    /// clean path, what it truncated, whether it is damaged.
    pub fn recovery_reports(&self) -> &[PartitionRecovery] {
        self.partitions.recovery_reports()
    }

    /// Stops the broker in order: cancel the tasks and wait for them (up to [`SHUTDOWN_TASKS_DEADLINE`]): the
    /// server stops accepting and every connection finishes its requests in flight; then shut every appender down
    /// (each drains its queue, syncs and writes its clean checkpoint), flush and close the metadata store, and
    /// release the data directory's lock.
    pub async fn shutdown(self) -> Result<(), ShutdownError> {
        self.readiness.shutting_down();
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_TASKS_DEADLINE, self.tasks.wait()).await.is_err() {
            tracing::warn!(deadline = ?SHUTDOWN_TASKS_DEADLINE, "broker tasks did not stop in time; closing anyway");
        }
        self.partitions.shutdown().await;
        // The registry holds the metadata store too; let go of it so the store can close.
        drop(self.partitions);
        let closed = tokio::task::spawn_blocking(move || match Arc::try_unwrap(self.meta) {
            Ok(meta) => meta.close(),
            // Someone still holds the store (a test, or a task that outlived the deadline): flush what we can;
            // it closes when the last holder drops it, and RocksDB's own lock keeps others out until then.
            Err(meta) => meta.flush(),
        })
        .await
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
        drop(self.lock);
        closed.map_err(ShutdownError::Meta)
    }
}
