//! The network server: the accept loop, the connection limit, and the state every connection shares.
//!
//! [`run`] accepts TCP connections until its shutdown token is cancelled. Each accepted connection takes a permit
//! of the connection semaphore (`server.connections_max`) and is served by one task on the broker's
//! [`TaskTracker`] (see [`crate::connection`]). A connection over the limit gets one error frame,
//! `CONNECTION_LIMIT` with correlation id 0, and is closed; it is counted in
//! `ferry_connections_rejected_total{reason="limit"}`.
//!
//! Shutdown: cancelling the token stops the accept loop at once; each connection stops reading, finishes the
//! requests it has in flight (long polls answer early), writes their responses and closes. The broker waits for the
//! tracker (with a deadline) before it shuts the appenders down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferry_protocol::frame::FrameHeader;
use ferry_protocol::messages::{ErrorResponse, error_code_to_wire};
use ferry_protocol::{ErrorCode, Response};
use metrics::{Counter, Gauge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::groups::Coordinator;
use crate::meta::MetaStore;
use crate::metrics::{
    CONNECTIONS_REJECTED_TOTAL, LABEL_REASON, REQUEST_BUDGET_WAITS_TOTAL, REQUEST_BYTES, RESPONSE_BUDGET_WAITS_TOTAL,
    RESPONSE_BYTES,
};
use crate::partitions::Partitions;
use crate::producers::ProducerIds;
use crate::transactions::Transactions;

/// Connections over the limit being answered and closed at once; beyond it, extra connections are dropped without
/// an error frame (a flood of them must not turn into a flood of tasks).
pub const REJECTIONS_CONCURRENT_MAX: usize = 64;

/// How long a connection that is being closed after an error frame keeps reading (and discarding) what the client
/// still sends, so the close is a FIN after the client read the error, not a reset that could destroy it.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Most bytes discarded while lingering before a close; a client sending more is cut off (reset) at once.
pub const CLOSE_LINGER_BYTES_MAX: usize = 1024 * 1024;

/// Pause after a failed `accept` (e.g. out of file descriptors) before the next attempt, instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// What every connection and handler shares: configuration, the partitions registry, and the broker's limits.
#[derive(Debug)]
pub struct ServerState {
    pub(crate) config: Arc<Config>,
    pub(crate) partitions: Arc<Partitions>,
    /// Permits for blocking read work (fetch rounds, timestamp lookups); see
    /// [`crate::handlers::fetch::FETCH_READS_CONCURRENT_MAX`].
    pub(crate) reads: Arc<Semaphore>,
    /// The broker's shutdown token: long polls end early and new requests stop once it is cancelled.
    pub(crate) shutdown: CancellationToken,
    /// Tracks every connection and request task, so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    /// The registry of idempotent producer ids.
    pub(crate) producer_ids: Arc<ProducerIds>,
    /// The metadata store (committed offsets). Its calls block: use `spawn_blocking`.
    pub(crate) meta: Arc<MetaStore>,
    /// The consumer-group coordinator.
    pub(crate) groups: Arc<Coordinator>,
    /// The transaction coordinator.
    pub(crate) transactions: Arc<Transactions>,
    /// The broker-wide budget of request bytes (`server.request_bytes_max`).
    pub(crate) request_budget: RequestBudget,
    /// The broker-wide budget of response bytes queued or reserved (`server.response_bytes_max`).
    pub(crate) response_budget: ByteBudget,
    /// One permit per open client connection, `server.connections_max` in all.
    pub(crate) connections: Arc<Semaphore>,
    /// When the server state was made: just before the broker began serving clients (for its uptime).
    pub(crate) started: std::time::Instant,
}

impl ServerState {
    /// The state for a server on `partitions` and `producer_ids`, stopped by `shutdown`, its tasks on `tasks`.
    #[allow(clippy::too_many_arguments, reason = "one argument per shared component; a builder would add nothing")]
    pub fn new(
        config: Arc<Config>,
        partitions: Arc<Partitions>,
        producer_ids: Arc<ProducerIds>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        meta: Arc<MetaStore>,
        groups: Arc<Coordinator>,
        transactions: Arc<Transactions>,
    ) -> ServerState {
        ServerState {
            request_budget: RequestBudget::new(config.server.request_bytes_max),
            response_budget: ByteBudget::new(
                config.server.response_bytes_max,
                RESPONSE_BYTES,
                RESPONSE_BUDGET_WAITS_TOTAL,
            ),
            partitions,
            reads: Arc::new(Semaphore::new(crate::handlers::fetch::FETCH_READS_CONCURRENT_MAX)),
            connections: Arc::new(Semaphore::new(connections_max(&config))),
            started: std::time::Instant::now(),
            shutdown,
            tasks,
            producer_ids,
            meta,
            groups,
            transactions,
            config,
        }
    }

    /// Client connections open now.
    pub(crate) fn connections_open(&self) -> usize {
        connections_max(&self.config).saturating_sub(self.connections.available_permits())
    }
}

fn connections_max(config: &Config) -> usize {
    usize::try_from(config.server.connections_max).unwrap_or(usize::MAX)
}

/// A broker-wide budget of bytes, one permit per byte, with a gauge of the bytes charged and a counter of waits:
/// `server.request_bytes_max` for request frames being read or handled (Kafka's `queued.max.request.bytes`), and
/// `server.response_bytes_max` for responses queued or reserved (fetches reserve before they read). Whoever needs
/// room waits for it, so these bytes do not grow with the number of connections.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    permits: Arc<Semaphore>,
    bytes_max: usize,
    in_use: Gauge,
    waits: Counter,
}

/// Frames of at most this many bytes (length prefix included) are charged to the part of the request budget kept
/// for small frames.
pub const REQUEST_SMALL_FRAME_BYTES: usize = 64 * 1024;

/// The broker-wide budget of request bytes (`server.request_bytes_max`), in two parts so that small requests (acks,
/// fetches, metadata: frames up to [`REQUEST_SMALL_FRAME_BYTES`]) never queue behind large ones: a quarter is kept
/// for small frames, the rest is for larger ones. A client trickling frames near the size limit can so delay other
/// large frames (until `request_read_timeout_ms` cuts it), never the small requests of well-behaved clients.
#[derive(Debug)]
pub(crate) struct RequestBudget {
    small: ByteBudget,
    large: ByteBudget,
}

impl RequestBudget {
    fn new(bytes_max: u64) -> RequestBudget {
        let small = bytes_max / 4;
        RequestBudget {
            small: ByteBudget::new(small, REQUEST_BYTES, REQUEST_BUDGET_WAITS_TOTAL),
            large: ByteBudget::new(bytes_max - small, REQUEST_BYTES, REQUEST_BUDGET_WAITS_TOTAL),
        }
    }

    /// Charges a frame of `frame_wire_len` bytes to its part of the budget, waiting for room.
    pub(crate) async fn charge(&self, frame_wire_len: usize) -> BudgetCharge {
        if frame_wire_len <= REQUEST_SMALL_FRAME_BYTES {
            self.small.charge(frame_wire_len).await
        } else {
            self.large.charge(frame_wire_len).await
        }
    }
}

/// Bytes charged to a [`ByteBudget`]; released on drop.
#[derive(Debug)]
pub(crate) struct BudgetCharge {
    permit: OwnedSemaphorePermit,
    in_use: Gauge,
}

impl ByteBudget {
    /// A budget of `bytes_max` bytes reporting to the gauge `in_use` and the counter `waits`.
    fn new(bytes_max: u64, in_use: &'static str, waits: &'static str) -> ByteBudget {
        // Config bounds keep it at most 64 GiB, far below the semaphore's limit on 64-bit targets.
        let bytes_max = usize::try_from(bytes_max).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        ByteBudget {
            permits: Arc::new(Semaphore::new(bytes_max)),
            bytes_max,
            in_use: metrics::gauge!(in_use),
            waits: metrics::counter!(waits),
        }
    }

    /// Charges `bytes` (at most the whole budget), waiting for room.
    pub(crate) async fn charge(&self, bytes: usize) -> BudgetCharge {
        self.charge_between(bytes, bytes).await
    }

    /// Charges as much of `bytes_max` as is free at once, but at least `bytes_min` (waiting for that much if less is
    /// free); both at most the whole budget. Under pressure a fetch so reads less instead of queueing for its whole
    /// budget behind others.
    pub(crate) async fn charge_between(&self, bytes_min: usize, bytes_max: usize) -> BudgetCharge {
        let bytes_max = bytes_max.clamp(1, self.bytes_max);
        let bytes_min = bytes_min.clamp(1, bytes_max);
        let free = self.permits.available_permits().clamp(bytes_min, bytes_max);
        let permit = match Arc::clone(&self.permits).try_acquire_many_owned(u32::try_from(free).unwrap_or(u32::MAX)) {
            Ok(permit) => permit,
            Err(_) => {
                self.waits.increment(1);
                Arc::clone(&self.permits)
                    .acquire_many_owned(u32::try_from(bytes_min).unwrap_or(u32::MAX))
                    .await
                    .expect("a budget's semaphore is never closed")
            }
        };
        self.in_use.increment(permit.num_permits() as f64);
        BudgetCharge { permit, in_use: self.in_use.clone() }
    }
}

impl BudgetCharge {
    /// Bytes charged.
    pub(crate) fn bytes(&self) -> usize {
        self.permit.num_permits()
    }

    /// Gives back all but `bytes` of the charge (nothing if it holds no more).
    pub(crate) fn shrink_to(&mut self, bytes: usize) {
        if let Some(excess) = self.permit.split(self.bytes().saturating_sub(bytes.max(1))) {
            self.in_use.decrement(excess.num_permits() as f64);
        }
    }
}

impl Drop for BudgetCharge {
    fn drop(&mut self) {
        self.in_use.decrement(self.permit.num_permits() as f64);
    }
}

/// Accepts connections on `listener` until `shutdown` is cancelled; each is served by a task on `state.tasks`.
pub async fn run(listener: TcpListener, state: Arc<ServerState>, shutdown: CancellationToken) {
    let connections_max = connections_max(&state.config);
    let connections = Arc::clone(&state.connections);
    let rejections = Arc::new(Semaphore::new(REJECTIONS_CONCURRENT_MAX));
    let rejected_by_limit = metrics::counter!(CONNECTIONS_REJECTED_TOTAL, LABEL_REASON => "limit");
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
            },
        };
        match Arc::clone(&connections).try_acquire_owned() {
            Ok(permit) => {
                state.tasks.spawn(crate::connection::serve(stream, peer, Arc::clone(&state), permit));
            }
            Err(_) => {
                rejected_by_limit.increment(1);
                tracing::warn!(%peer, connections_max, "connection limit reached; rejecting a connection");
                if let Ok(permit) = Arc::clone(&rejections).try_acquire_owned() {
                    state.tasks.spawn(reject(stream, peer, connections_max, permit));
                }
            }
        }
    }
    tracing::info!("stopped accepting connections");
}

/// Answers a connection over the limit with a `CONNECTION_LIMIT` error frame (correlation id 0) and closes it.
async fn reject(mut stream: TcpStream, peer: SocketAddr, connections_max: usize, _permit: OwnedSemaphorePermit) {
    let response = Response::Error(ErrorResponse {
        error_code: error_code_to_wire(ErrorCode::ConnectionLimit),
        error_message: format!("the broker is at its limit of {connections_max} connections"),
    });
    let header = FrameHeader::request(ferry_protocol::ApiKey::ApiVersions, 0, 0);
    let mut frame = BytesMut::new();
    if let Err(error) = response.encode(&header, &mut frame) {
        tracing::error!(%error, "cannot encode the connection-limit error frame");
        return;
    }
    let _ = stream.set_nodelay(true);
    let written = tokio::time::timeout(CLOSE_LINGER, stream.write_all(&frame)).await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::debug!(%peer, "could not send the connection-limit error frame");
        return;
    }
    let _ = stream.shutdown().await;
    linger(&mut stream).await;
}

/// Reads and discards what the peer still sends, until it closes, [`CLOSE_LINGER`] passes or
/// [`CLOSE_LINGER_BYTES_MAX`] bytes were discarded. See [`CLOSE_LINGER`] for why.
pub(crate) async fn linger<R: tokio::io::AsyncRead + Unpin>(reader: &mut R) {
    let deadline = tokio::time::Instant::now() + CLOSE_LINGER;
    let mut discarded = 0usize;
    let mut scratch = vec![0u8; 16 * 1024];
    while discarded < CLOSE_LINGER_BYTES_MAX {
        match tokio::time::timeout_at(deadline, reader.read(&mut scratch)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n_read)) => discarded = discarded.saturating_add(n_read),
        }
    }
}
