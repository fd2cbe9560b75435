//! Metrics: the name of every metric the broker exports, their descriptions, and the Prometheus `/metrics` endpoint
//! (which also answers `/health` and `/ready`, see [`crate::health`]).
//!
//! Names follow Prometheus conventions: the `ferry_` prefix, base units (`_seconds`, `_bytes`) and `_total` for
//! counters. Label values are bounded: topic, partition, group, api, reason and result, never a producer or
//! connection id, so the number of series stays proportional to the number of partitions and groups.
//! Code records with the `metrics` macros and these constants (`metrics::counter!(REQUESTS_TOTAL, ...)`).
//! The partition log (`ferry-log`) names and describes its own metrics (`ferry_log_*`: fsync latency and errors,
//! recovery truncations, checksum failures, ...) in `ferry_log::metrics`; [`describe`] includes them.
//!
//! The recorder is process-wide and installed once ([`install_recorder`]), which also calls [`describe`].
//! Each [`crate::Broker`] serves it on its own listener ([`serve`]): a minimal HTTP/1.1 responder rather than the
//! exporter's built-in listener, because the built-in one cannot report the port it bound when asked for port 0,
//! and binds one recorder per listener, while tests start several brokers in one process.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::Readiness;

/// Label: the request kind (`produce`, `fetch`, ...).
pub const LABEL_API: &str = "api";
/// Label: a request's outcome, `ok` or the error code's name.
pub const LABEL_RESULT: &str = "result";
/// Label: why something was rejected or dropped.
pub const LABEL_REASON: &str = "reason";
/// Label: the topic name.
pub const LABEL_TOPIC: &str = "topic";
/// Label: the partition number.
pub const LABEL_PARTITION: &str = "partition";
/// Label: the consumer or queue group name.
pub const LABEL_GROUP: &str = "group";
/// Label: the broker version (on [`BUILD_INFO`] only).
pub const LABEL_VERSION: &str = "version";

/// Gauge, always 1, labelled with the broker version.
pub const BUILD_INFO: &str = "ferry_build_info";
/// Counter of requests handled, by `api` and `result`.
pub const REQUESTS_TOTAL: &str = "ferry_requests_total";
/// Histogram of request handling time, by `api`, in seconds.
pub const REQUEST_DURATION_SECONDS: &str = "ferry_request_duration_seconds";
/// Counter of record-batch bytes appended, by `topic`.
pub const PRODUCE_BYTES_TOTAL: &str = "ferry_produce_bytes_total";
/// Counter of records appended, by `topic`.
pub const PRODUCE_RECORDS_TOTAL: &str = "ferry_produce_records_total";
/// Counter of record-batch bytes sent to consumers, by `topic`.
pub const FETCH_BYTES_TOTAL: &str = "ferry_fetch_bytes_total";
/// Counter of records sent to consumers, by `topic`.
pub const FETCH_RECORDS_TOTAL: &str = "ferry_fetch_records_total";
/// Gauge of open client connections.
pub const CONNECTIONS_OPEN: &str = "ferry_connections_open";
/// Gauge: bytes of request frames charged to the broker-wide budget (`server.request_bytes_max`): being read or
/// handled.
pub const REQUEST_BYTES: &str = "ferry_request_bytes";
/// Counter: times a connection waited for the request budget before reading a frame's body.
pub const REQUEST_BUDGET_WAITS_TOTAL: &str = "ferry_request_budget_waits_total";
/// Gauge: bytes of responses queued or reserved (fetches reserve before reading), charged to the broker-wide budget
/// (`server.response_bytes_max`).
pub const RESPONSE_BYTES: &str = "ferry_response_bytes";
/// Counter: times a response or a fetch waited for the broker-wide response budget.
pub const RESPONSE_BUDGET_WAITS_TOTAL: &str = "ferry_response_budget_waits_total";
/// Counter of connections refused or closed by a limit, by `reason`: `limit` (over `server.connections_max`),
/// `idle_timeout`, `request_read_timeout`, `write_timeout`.
pub const CONNECTIONS_REJECTED_TOTAL: &str = "ferry_connections_rejected_total";
/// Gauge of each partition's log end offset (the visible end: the next offset consumers will see),
/// by `topic` and `partition`; refreshed after each acknowledged append.
pub const LOG_END_OFFSET: &str = "ferry_log_end_offset";
/// Gauge of each partition's segment data on disk, in bytes, by `topic` and `partition`;
/// refreshed after each acknowledged append.
pub const LOG_SIZE_BYTES: &str = "ferry_log_size_bytes";
/// Gauge of producer ids alive in the broker's registry (issued and not expired); refreshed on each
/// InitProducerId and every 10 s.
pub const PRODUCER_IDS_ACTIVE: &str = "ferry_producer_ids_active";
/// Counter of duplicate batches or records dropped, by `topic` and `reason`: `sequence` (an idempotent producer's retry of a
/// batch already written, answered with the original offsets), `dedup_key` (message-id dedup).
pub const DUPLICATES_DROPPED_TOTAL: &str = "ferry_duplicates_dropped_total";
/// Counter of idempotent batches refused for their producer state, by `topic` and `reason`: the error code's name
/// (`OUT_OF_ORDER_SEQUENCE`, `PRODUCER_FENCED`, `UNKNOWN_PRODUCER_ID`, `PRODUCER_ID_LIMIT`, `INVALID_PRODUCER_EPOCH`).
pub const PRODUCER_REJECTIONS_TOTAL: &str = "ferry_producer_rejections_total";
/// Gauge of open transactions.
pub const TRANSACTIONS_OPEN: &str = "ferry_transactions_open";
/// Gauge of the age of the oldest open transaction, in seconds.
pub const TRANSACTION_OLDEST_AGE_SECONDS: &str = "ferry_transaction_oldest_age_seconds";
/// Counter of transactions committed (decided and applied to every partition).
pub const TRANSACTIONS_COMMITTED_TOTAL: &str = "ferry_transactions_committed_total";
/// Counter of transactions aborted, by `reason`: `requested` (the producer aborted), `timeout`, `restart` (open when
/// the broker stopped), `operator` (`ferry txn abort`), `fenced` (a newer instance took over), `too_large`,
/// `group_changed` (the consumer group rebalanced before the commit), `incomplete` (staged batches missing at the
/// commit), `topic_deleted`.
pub const TRANSACTIONS_ABORTED_TOTAL: &str = "ferry_transactions_aborted_total";
/// Gauge of each group's committed offset, by `group`, `topic` and `partition`.
pub const GROUP_COMMITTED_OFFSET: &str = "ferry_group_committed_offset";
/// Gauge of each group's lag in records, by `group`, `topic` and `partition`.
pub const GROUP_LAG_RECORDS: &str = "ferry_group_lag_records";
/// Gauge of each group's lag in seconds (age of the oldest unconsumed record), by `group`, `topic` and `partition`.
pub const GROUP_LAG_SECONDS: &str = "ferry_group_lag_seconds";
/// Counter of queue-group redeliveries (after a nack or an expired lease), by `group`.
pub const QUEUE_REDELIVERIES_TOTAL: &str = "ferry_queue_redeliveries_total";
/// Counter of queue-group leases that expired, by `group`.
pub const QUEUE_LEASE_EXPIRIES_TOTAL: &str = "ferry_queue_lease_expiries_total";
/// Counter of acks, nacks and renewals rejected with `LEASE_LOST`, by `group`.
pub const QUEUE_STALE_ACKS_TOTAL: &str = "ferry_queue_stale_acks_total";
/// Counter of records moved to a dead-letter topic, by `group`.
pub const QUEUE_DEAD_LETTERS_TOTAL: &str = "ferry_queue_dead_letters_total";

/// Histogram buckets for every `_seconds` histogram, the partition log's fsync latency included:
/// 100 µs (a fast fsync) to 30 s (the default longest fetch wait).
pub const DURATION_BUCKETS_SECONDS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0];

/// Concurrent scrapes served per broker; a scrape beyond it is closed at once.
pub const SCRAPES_CONCURRENT_MAX: usize = 8;
/// Time a scrape connection has to send its request and receive the response; a slower one is closed.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest HTTP request head accepted; a larger one is answered 431 and closed.
pub const SCRAPE_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How often histogram samples are folded into their buckets, which bounds their memory between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Describes every metric (help text and unit) to the current recorder, the partition log's included.
/// Called once, by [`install_recorder`].
pub fn describe() {
    ferry_log::metrics::describe();
    describe_gauge!(BUILD_INFO, Unit::Count, "Always 1; the version label names the running broker version.");
    describe_counter!(REQUESTS_TOTAL, Unit::Count, "Requests handled, by api and result (ok or the error code).");
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from a request's arrival to its response, by api."
    );
    describe_counter!(PRODUCE_BYTES_TOTAL, Unit::Bytes, "Record-batch bytes appended to the log, by topic.");
    describe_counter!(PRODUCE_RECORDS_TOTAL, Unit::Count, "Records appended to the log, by topic.");
    describe_counter!(FETCH_BYTES_TOTAL, Unit::Bytes, "Record-batch bytes sent to consumers, by topic.");
    describe_counter!(FETCH_RECORDS_TOTAL, Unit::Count, "Records sent to consumers, by topic.");
    describe_gauge!(CONNECTIONS_OPEN, Unit::Count, "Client connections currently open.");
    describe_gauge!(
        REQUEST_BYTES,
        Unit::Bytes,
        "Bytes of request frames being read or handled (server.request_bytes_max)."
    );
    describe_counter!(
        REQUEST_BUDGET_WAITS_TOTAL,
        Unit::Count,
        "Times a connection waited for the broker-wide request budget before reading a frame."
    );
    describe_gauge!(RESPONSE_BYTES, Unit::Bytes, "Bytes of responses queued or reserved (server.response_bytes_max).");
    describe_counter!(
        RESPONSE_BUDGET_WAITS_TOTAL,
        Unit::Count,
        "Times a response or a fetch waited for the broker-wide response budget."
    );
    describe_counter!(CONNECTIONS_REJECTED_TOTAL, Unit::Count, "Connections refused or closed by a limit, by reason.");
    describe_gauge!(
        LOG_END_OFFSET,
        Unit::Count,
        "Log end offset (the next offset consumers will see), by topic and partition."
    );
    describe_gauge!(LOG_SIZE_BYTES, Unit::Bytes, "Bytes of segment data on disk, by topic and partition.");
    describe_gauge!(PRODUCER_IDS_ACTIVE, Unit::Count, "Producer ids with live idempotence state.");
    describe_counter!(DUPLICATES_DROPPED_TOTAL, Unit::Count, "Duplicate batches or records dropped, by reason.");
    describe_counter!(
        PRODUCER_REJECTIONS_TOTAL,
        Unit::Count,
        "Produce requests rejected for their producer state, by reason (out_of_order_sequence, fenced)."
    );
    describe_gauge!(TRANSACTIONS_OPEN, Unit::Count, "Transactions currently open.");
    describe_gauge!(TRANSACTION_OLDEST_AGE_SECONDS, Unit::Seconds, "Age of the oldest open transaction.");
    describe_counter!(TRANSACTIONS_COMMITTED_TOTAL, Unit::Count, "Transactions committed.");
    describe_counter!(TRANSACTIONS_ABORTED_TOTAL, Unit::Count, "Transactions aborted, by reason (timeout, ...).");
    describe_gauge!(GROUP_COMMITTED_OFFSET, Unit::Count, "Committed offset, by group, topic and partition.");
    describe_gauge!(GROUP_LAG_RECORDS, Unit::Count, "Records between the committed offset and the log end, by group.");
    describe_gauge!(GROUP_LAG_SECONDS, Unit::Seconds, "Age of the oldest record not yet committed, by group.");
    describe_counter!(QUEUE_REDELIVERIES_TOTAL, Unit::Count, "Queue-group records delivered again, by group.");
    describe_counter!(
        QUEUE_LEASE_EXPIRIES_TOTAL,
        Unit::Count,
        "Queue-group leases that expired unacknowledged, by group."
    );
    describe_counter!(
        QUEUE_STALE_ACKS_TOTAL,
        Unit::Count,
        "Acks, nacks and renewals rejected with LEASE_LOST, by group."
    );
    describe_counter!(QUEUE_DEAD_LETTERS_TOTAL, Unit::Count, "Records moved to a dead-letter topic, by group.");
}

/// Builds a Prometheus recorder with the broker's histogram buckets, not installed anywhere.
/// [`install_recorder`] installs one globally; tests render one locally.
pub fn build_recorder() -> PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &DURATION_BUCKETS_SECONDS)
        .expect("DURATION_BUCKETS_SECONDS is not empty")
        .build_recorder()
}

/// Another recorder was installed before the broker's.
#[derive(Debug, thiserror::Error)]
#[error("another metrics recorder is already installed in this process")]
pub struct InstallError;

static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the broker's recorder as the process-wide one, describes every metric and sets [`BUILD_INFO`],
/// and returns a handle that renders the exposition. Later calls return the same handle, so several brokers in
/// one process (tests) share one recorder.
pub fn install_recorder() -> Result<PrometheusHandle, InstallError> {
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let recorder = build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| InstallError)?;
    describe();
    metrics::gauge!(BUILD_INFO, LABEL_VERSION => env!("CARGO_PKG_VERSION")).set(1.0);
    *installed = Some(handle.clone());
    Ok(handle)
}

/// Serves, on `listener` until `shutdown` is cancelled, the Prometheus text exposition of `handle` at `GET /metrics`,
/// liveness at `GET /health` (always 200 `ok`) and readiness at `GET /ready` (200 `ready`, or 503 with the
/// one-line [`crate::health::NotReady`] reason); other paths get 404. Then waits for the requests in progress (each
/// bounded by [`SCRAPE_TIMEOUT`]).
/// Also runs the recorder's upkeep every [`UPKEEP_INTERVAL`].
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) {
    let scrapes = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(SCRAPES_CONCURRENT_MAX));
    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = upkeep.tick() => handle.run_upkeep(),
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Accept errors (e.g. out of file descriptors) are transient; back off instead of spinning.
                        tracing::warn!(%error, "metrics endpoint cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    tracing::debug!(%peer, "too many concurrent scrapes; closing");
                    continue;
                };
                let handle = handle.clone();
                let readiness = Arc::clone(&readiness);
                scrapes.spawn(async move {
                    match tokio::time::timeout(SCRAPE_TIMEOUT, respond(stream, &handle, &readiness)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "metrics scrape failed"),
                        Err(_) => tracing::debug!(%peer, "metrics scrape timed out"),
                    }
                    drop(permit);
                });
            }
        }
    }
    scrapes.close();
    scrapes.wait().await;
}

/// Reads one HTTP request head and answers it, then closes the connection.
async fn respond(mut stream: TcpStream, handle: &PrometheusHandle, readiness: &Readiness) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head.windows(4).position(|window| window == b"\r\n\r\n") {
            head.truncate(end);
            break;
        }
        if head.len() >= SCRAPE_REQUEST_BYTES_MAX {
            return write_response(&mut stream, "431 Request Header Fields Too Large", "request head too large\n")
                .await;
        }
        let n_read = stream.read(&mut chunk).await?;
        if n_read == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n_read]);
    }
    let request_line = head.split(|&byte| byte == b'\r').next().unwrap_or_default();
    let mut parts = request_line.split(|&byte| byte == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|&byte| byte == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => write_response(&mut stream, "200 OK", &handle.render()).await,
        (b"GET", b"/health") => write_response(&mut stream, "200 OK", "ok\n").await,
        (b"GET", b"/ready") => match readiness.check() {
            Ok(()) => write_response(&mut stream, "200 OK", "ready\n").await,
            Err(not_ready) => {
                write_response(&mut stream, "503 Service Unavailable", &format!("not ready: {not_ready}\n")).await
            }
        },
        (b"GET", _) => {
            write_response(&mut stream, "404 Not Found", "not found; try /metrics, /health or /ready\n").await
        }
        _ => write_response(&mut stream, "405 Method Not Allowed", "only GET is supported\n").await,
    }
}

async fn write_response(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests;
