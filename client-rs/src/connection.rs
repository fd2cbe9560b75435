//! The shared connection layer: one TCP connection to the broker, pipelined requests, reconnection.
//!
//! A [`Connection`] owns at most one live TCP connection (with `TCP_NODELAY`) at a time.
//! Opening it sends ApiVersions first, checks that the broker speaks every api version this client uses, and
//! learns the broker's limits ([`BrokerLimits`]).
//! Two tracked tasks then serve it: the writer encodes queued requests into one buffer (coalescing whatever is
//! queued) and writes them; the reader decodes frames with [`FrameCodec`] and hands each response to the caller
//! waiting on its correlation id (a map of oneshot senders), so requests are pipelined and responses may arrive in
//! any order.
//!
//! Limits: at most `in_flight_requests_max` requests are in flight (the lower of the configured and the announced
//! value; more callers wait for a slot), the writer's queue holds at most that many requests, and every request has
//! a timeout. A request that times out closes the connection, because its response may still arrive and nothing
//! else tells a dead peer from a slow one.
//!
//! When the connection breaks, every pending request fails with the retriable [`ClientError::ConnectionLost`]
//! (its outcome is unknown), and the next request reconnects; failed connection attempts back off exponentially.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use ferry_protocol::limits::{BATCH_BYTES_MAX, BATCH_RECORDS_MAX, FRAME_BYTES_MAX, PARTITIONS_PER_TOPIC_MAX};
use ferry_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use ferry_protocol::{ApiKey, FrameCodec, Request, Response};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, timeout_at};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::error::ClientError;

#[cfg(test)]
mod tests;

/// The client's name in ApiVersions, for the broker's logs.
const CLIENT_SOFTWARE_NAME: &str = "ferry-client-rs";

/// The writer stops gathering queued requests into one write once its buffer holds this many bytes.
const WRITE_COALESCE_BYTES: usize = 1024 * 1024;

/// Most requests one connection may have in flight; [`ConnectionConfig::in_flight_requests_max`] must not exceed it.
pub const IN_FLIGHT_REQUESTS_MAX: u32 = 1024;

/// Settings of the connection layer, shared by [`crate::Producer`], [`crate::Consumer`] and [`crate::Admin`].
///
/// ```
/// use std::time::Duration;
/// use ferry_client::ConnectionConfig;
///
/// let config = ConnectionConfig { request_timeout: Duration::from_secs(10), ..ConnectionConfig::default() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Longest a TCP connect plus the version negotiation may take. Default 10 s.
    pub connect_timeout: Duration,
    /// Longest to wait for a response (including waiting for a free in-flight slot). On expiry the request fails
    /// with the retriable [`ClientError::RequestTimeout`] and the connection is closed. Default 30 s (Kafka's).
    /// Fetches add their long-poll wait to it.
    pub request_timeout: Duration,
    /// Most requests in flight on the connection; lowered to the broker's announced limit. Callers beyond it wait.
    /// Default 100, at most [`IN_FLIGHT_REQUESTS_MAX`].
    pub in_flight_requests_max: u32,
    /// Delay before the first reconnection attempt after a failed one; it doubles per failure. Default 50 ms.
    pub reconnect_backoff_initial: Duration,
    /// Largest delay between reconnection attempts. Default 1 s.
    pub reconnect_backoff_max: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> ConnectionConfig {
        ConnectionConfig {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            in_flight_requests_max: 100,
            reconnect_backoff_initial: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(1),
        }
    }
}

impl ConnectionConfig {
    /// Checks every field's bounds; fails with [`ClientError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ClientError> {
        let invalid = |field, reason: &str| Err(ClientError::InvalidConfig { field, reason: reason.to_owned() });
        if self.connect_timeout.is_zero() {
            return invalid("connect_timeout", "must be positive");
        }
        if self.request_timeout.is_zero() {
            return invalid("request_timeout", "must be positive");
        }
        if !(1..=IN_FLIGHT_REQUESTS_MAX).contains(&self.in_flight_requests_max) {
            return invalid("in_flight_requests_max", "must be in 1..=1024");
        }
        if self.reconnect_backoff_initial.is_zero() || self.reconnect_backoff_initial > self.reconnect_backoff_max {
            return invalid("reconnect_backoff_initial", "must be positive and at most reconnect_backoff_max");
        }
        Ok(())
    }
}

/// The limits a broker announced in its ApiVersions response, with the protocol's limits filling fields it left
/// at zero. Clients size batches, frames and fetches to stay within them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerLimits {
    /// Largest frame the broker accepts, in bytes after the length prefix.
    pub frame_bytes_max: u32,
    /// Largest record batch, header included.
    pub batch_bytes_max: u32,
    /// Most records in one batch.
    pub batch_records_max: u32,
    /// Most record bytes in one fetch response.
    pub fetch_bytes_max: u32,
    /// Longest a fetch may wait for data.
    pub fetch_wait_max: Duration,
    /// Most requests one connection may have in flight.
    pub in_flight_requests_max: u32,
    /// Most partitions one topic may have.
    pub partitions_per_topic_max: u32,
}

impl BrokerLimits {
    /// The protocol's own limits: what a broker that announces nothing is assumed to enforce.
    pub const PROTOCOL: BrokerLimits = BrokerLimits {
        frame_bytes_max: FRAME_BYTES_MAX,
        batch_bytes_max: BATCH_BYTES_MAX,
        batch_records_max: BATCH_RECORDS_MAX,
        fetch_bytes_max: BATCH_BYTES_MAX,
        fetch_wait_max: Duration::from_secs(30),
        in_flight_requests_max: IN_FLIGHT_REQUESTS_MAX,
        partitions_per_topic_max: PARTITIONS_PER_TOPIC_MAX,
    };

    fn from_wire(limits: Option<&ferry_protocol::messages::BrokerLimits>) -> BrokerLimits {
        let Some(limits) = limits else {
            return BrokerLimits::PROTOCOL;
        };
        let or = |value: u32, default: u32| if value == 0 { default } else { value };
        let protocol = BrokerLimits::PROTOCOL;
        BrokerLimits {
            frame_bytes_max: or(limits.frame_bytes_max, protocol.frame_bytes_max).min(FRAME_BYTES_MAX),
            batch_bytes_max: or(limits.batch_bytes_max, protocol.batch_bytes_max).min(BATCH_BYTES_MAX),
            batch_records_max: or(limits.batch_records_max, protocol.batch_records_max).min(BATCH_RECORDS_MAX),
            fetch_bytes_max: or(limits.fetch_bytes_max, protocol.fetch_bytes_max),
            fetch_wait_max: if limits.fetch_wait_ms_max == 0 {
                protocol.fetch_wait_max
            } else {
                Duration::from_millis(u64::from(limits.fetch_wait_ms_max))
            },
            in_flight_requests_max: or(limits.in_flight_requests_max, protocol.in_flight_requests_max),
            partitions_per_topic_max: or(limits.partitions_per_topic_max, protocol.partitions_per_topic_max),
        }
    }
}

/// A connection to one broker that reconnects on demand; cheap to clone (clones share the connection).
///
/// [`crate::Producer`], [`crate::Consumer`] and [`crate::Admin`] are built on it; use it directly to send raw
/// protocol requests. Creating it does not connect: the first request does.
///
/// ```no_run
/// use ferry_client::{Connection, ConnectionConfig};
/// use ferry_protocol::messages::ListTopicsRequest;
/// use ferry_protocol::{Request, Response};
///
/// # async fn example() -> Result<(), ferry_client::ClientError> {
/// let connection = Connection::new("127.0.0.1:7070", ConnectionConfig::default())?;
/// let response = connection.request(Request::ListTopics(ListTopicsRequest {})).await?;
/// if let Response::ListTopics(topics) = response {
///     println!("{} topics", topics.topics.len());
/// }
/// connection.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: String,
    config: ConnectionConfig,
    /// The live connection, if any; an async lock so only one caller connects at a time while the others wait.
    slot: tokio::sync::Mutex<Slot>,
    /// The limits of the last successful handshake, readable without waiting (see [`Connection::limits_if_known`]).
    last_limits: Mutex<Option<BrokerLimits>>,
    next_correlation_id: AtomicU32,
    /// Cancelled by [`Connection::close`] and on drop; every live connection's token is its child.
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Debug, Default)]
struct Slot {
    live: Option<Arc<Live>>,
    /// Connection attempts that failed in a row.
    failures: u32,
    /// No new attempt before this instant (backoff after a failure).
    retry_at: Option<Instant>,
}

/// One open TCP connection and its two tasks.
#[derive(Debug)]
struct Live {
    outgoing: mpsc::Sender<Outgoing>,
    pending: Arc<Pending>,
    in_flight: Arc<Semaphore>,
    limits: BrokerLimits,
    /// The apis the broker speaks at the version this client sends.
    supported: Vec<ApiKey>,
    /// Cancelled when the connection must close (either task ended, a request timed out, shutdown).
    closed: CancellationToken,
}

/// A request queued for the writer task.
#[derive(Debug)]
struct Outgoing {
    correlation_id: u32,
    request: Request,
    /// For requests without a response (acks=none): told once the bytes were handed to the socket.
    written: Option<oneshot::Sender<Result<(), ClientError>>>,
}

type ResponseSender = oneshot::Sender<Result<Response, ClientError>>;

/// The callers waiting for responses, by correlation id.
#[derive(Debug)]
struct Pending {
    state: Mutex<PendingState>,
}

#[derive(Debug, Default)]
struct PendingState {
    /// Set once the connection is gone: why. New waiters are refused with it.
    closed: Option<ClientError>,
    waiters: HashMap<u32, ResponseSender>,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, PendingState> {
        // A panic while holding this short lock cannot leave the map inconsistent: keep going with it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn insert(&self, correlation_id: u32, sender: ResponseSender) -> Result<(), ClientError> {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(reason.clone());
        }
        state.waiters.insert(correlation_id, sender);
        Ok(())
    }

    fn remove(&self, correlation_id: u32) -> Option<ResponseSender> {
        self.lock().waiters.remove(&correlation_id)
    }

    fn complete(&self, correlation_id: u32, result: Result<Response, ClientError>) -> bool {
        match self.remove(correlation_id) {
            Some(sender) => {
                // The caller may have given up (timeout, cancellation); nothing to do then.
                let _ = sender.send(result);
                true
            }
            None => false,
        }
    }

    /// Fails every waiter with `reason` and refuses new ones.
    fn close(&self, reason: ClientError) {
        let waiters = {
            let mut state = self.lock();
            if state.closed.is_none() {
                state.closed = Some(reason.clone());
            }
            std::mem::take(&mut state.waiters)
        };
        for (_, sender) in waiters {
            let _ = sender.send(Err(reason.clone()));
        }
    }
}

/// Removes a waiter whose caller stopped waiting (timeout or a dropped future), so the map holds only live callers.
struct PendingGuard<'a> {
    pending: &'a Pending,
    correlation_id: u32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.remove(self.correlation_id);
    }
}

impl Connection {
    /// A connection to the broker at `addr` (`host:port`, resolved at every connection attempt).
    ///
    /// Does not connect: the first request does, so a broker that is down now may be up by then.
    /// Fails only on an invalid `config`.
    ///
    /// ```
    /// # use ferry_client::{Connection, ConnectionConfig};
    /// let connection = Connection::new("127.0.0.1:7070", ConnectionConfig::default()).unwrap();
    /// assert_eq!(connection.addr(), "127.0.0.1:7070");
    /// ```
    pub fn new(addr: impl Into<String>, config: ConnectionConfig) -> Result<Connection, ClientError> {
        config.validate()?;
        Ok(Connection {
            inner: Arc::new(Inner {
                addr: addr.into(),
                config,
                slot: tokio::sync::Mutex::new(Slot::default()),
                last_limits: Mutex::new(None),
                // 0 is what the broker uses in error frames sent before any request; never use it.
                next_correlation_id: AtomicU32::new(1),
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        })
    }

    /// The broker address this connection dials.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The settings in force.
    pub fn config(&self) -> &ConnectionConfig {
        &self.inner.config
    }

    /// Sends `request` and waits for its response, within the configured request timeout.
    ///
    /// Connects first if needed. A [`Response::Error`] (an error frame) is returned as [`ClientError::Broker`];
    /// per-item error codes inside a response are left to the caller.
    ///
    /// ```no_run
    /// # use ferry_client::{Connection, ConnectionConfig};
    /// # use ferry_protocol::{Request, messages::ListTopicsRequest};
    /// # async fn example(connection: Connection) -> Result<(), ferry_client::ClientError> {
    /// let response = connection.request(Request::ListTopics(ListTopicsRequest {})).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        self.request_with_timeout(request, self.inner.config.request_timeout).await
    }

    /// Like [`Connection::request`], with a caller-chosen timeout (the producer bounds it by a delivery deadline,
    /// the consumer adds its long-poll wait).
    pub(crate) async fn request_with_timeout(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let deadline = Instant::now() + timeout;
        let api = request.api_key();
        let (live, permit) = self.live_with_slot(api, deadline, timeout).await?;
        let correlation_id = self.next_correlation_id();
        let (sender, receiver) = oneshot::channel();
        live.pending.insert(correlation_id, sender)?;
        let _guard = PendingGuard { pending: &live.pending, correlation_id };
        let outgoing = Outgoing { correlation_id, request, written: None };
        match timeout_at(deadline, live.outgoing.send(outgoing)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(self.lost()),
            Err(_) => return Err(self.timed_out(&live, timeout)),
        }
        let result = match timeout_at(deadline, receiver).await {
            Ok(Ok(result)) => result,
            // The reader dropped the sender without an answer: the connection is gone.
            Ok(Err(_)) => Err(self.lost()),
            Err(_) => Err(self.timed_out(&live, timeout)),
        };
        drop(permit);
        match result? {
            Response::Error(error) => Err(ClientError::from_wire(error.error_code, &error.error_message)),
            response => Ok(response),
        }
    }

    /// Sends a request that gets no response (a produce with acks=none): completes once its bytes were written to
    /// the socket, which says nothing about whether the broker appended them (at-most-once).
    pub(crate) async fn send_without_response(&self, request: Request, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        let (live, _permit) = self.live_with_slot(request.api_key(), deadline, timeout).await?;
        let correlation_id = self.next_correlation_id();
        let (sender, receiver) = oneshot::channel();
        let outgoing = Outgoing { correlation_id, request, written: Some(sender) };
        match timeout_at(deadline, live.outgoing.send(outgoing)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(self.lost()),
            Err(_) => return Err(self.timed_out(&live, timeout)),
        }
        match timeout_at(deadline, receiver).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.lost()),
            Err(_) => Err(self.timed_out(&live, timeout)),
        }
    }

    /// The broker's limits, connecting first if needed.
    ///
    /// ```no_run
    /// # async fn example(connection: ferry_client::Connection) -> Result<(), ferry_client::ClientError> {
    /// let limits = connection.limits().await?;
    /// println!("batches up to {} bytes", limits.batch_bytes_max);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn limits(&self) -> Result<BrokerLimits, ClientError> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        let live = timeout_at(deadline, self.live())
            .await
            .map_err(|_| ClientError::RequestTimeout { timeout: self.inner.config.request_timeout })??;
        Ok(live.limits)
    }

    /// The limits of the last successful handshake, without connecting; `None` before the first connection.
    ///
    /// ```
    /// # use ferry_client::{Connection, ConnectionConfig};
    /// let connection = Connection::new("127.0.0.1:7070", ConnectionConfig::default()).unwrap();
    /// assert_eq!(connection.limits_if_known(), None);
    /// ```
    pub fn limits_if_known(&self) -> Option<BrokerLimits> {
        *self.inner.last_limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the connection and waits for its tasks to stop. Requests in flight fail with
    /// [`ClientError::ConnectionLost`]; later requests fail with [`ClientError::Closed`].
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    /// Whether [`Connection::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    fn next_correlation_id(&self) -> u32 {
        loop {
            let id = self.inner.next_correlation_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    fn lost(&self) -> ClientError {
        if self.inner.shutdown.is_cancelled() {
            return ClientError::Closed;
        }
        ClientError::ConnectionLost { addr: self.inner.addr.clone() }
    }

    fn timed_out(&self, live: &Live, timeout: Duration) -> ClientError {
        tracing::warn!(addr = %self.inner.addr, ?timeout, "request timed out; closing the connection");
        live.closed.cancel();
        ClientError::RequestTimeout { timeout }
    }

    /// The live connection and an in-flight slot on it, within `deadline`.
    async fn live_with_slot(
        &self,
        api: ApiKey,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(Arc<Live>, tokio::sync::OwnedSemaphorePermit), ClientError> {
        let live = timeout_at(deadline, self.live()).await.map_err(|_| ClientError::RequestTimeout { timeout })??;
        if !live.supported.contains(&api) {
            return Err(ClientError::UnsupportedApi { api, version: api.version_max() });
        }
        let permit = match timeout_at(deadline, live.in_flight.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(self.lost()),
            Err(_) => return Err(self.timed_out(&live, timeout)),
        };
        Ok((live, permit))
    }

    /// The live connection, connecting (after the backoff of earlier failures) if there is none.
    async fn live(&self) -> Result<Arc<Live>, ClientError> {
        let mut slot = self.inner.slot.lock().await;
        if let Some(live) = &slot.live
            && !live.closed.is_cancelled()
        {
            return Ok(live.clone());
        }
        slot.live = None;
        if self.inner.shutdown.is_cancelled() {
            return Err(ClientError::Closed);
        }
        if let Some(retry_at) = slot.retry_at {
            tokio::select! {
                () = tokio::time::sleep_until(retry_at) => {}
                () = self.inner.shutdown.cancelled() => return Err(ClientError::Closed),
            }
        }
        match self.connect().await {
            Ok(live) => {
                slot.failures = 0;
                slot.retry_at = None;
                slot.live = Some(live.clone());
                Ok(live)
            }
            Err(error) => {
                slot.failures = slot.failures.saturating_add(1);
                let backoff = Backoff {
                    initial: self.inner.config.reconnect_backoff_initial,
                    max: self.inner.config.reconnect_backoff_max,
                };
                slot.retry_at = Some(Instant::now() + backoff.delay(slot.failures));
                tracing::debug!(addr = %self.inner.addr, failures = slot.failures, %error, "connection attempt failed");
                Err(error)
            }
        }
    }

    /// Opens a TCP connection, negotiates versions and starts the reader and writer tasks.
    async fn connect(&self) -> Result<Arc<Live>, ClientError> {
        let addr = &self.inner.addr;
        let connect_timeout = self.inner.config.connect_timeout;
        let deadline = Instant::now() + connect_timeout;
        let timed_out = || ClientError::ConnectTimeout { addr: addr.clone(), timeout: connect_timeout };
        let connect_error = |source| ClientError::Connect { addr: addr.clone(), source: Arc::new(source) };
        let stream = timeout_at(deadline, TcpStream::connect(addr.as_str()))
            .await
            .map_err(|_| timed_out())?
            .map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        let (read_half, mut write_half) = stream.into_split();
        let mut reader = FramedRead::new(read_half, FrameCodec::new());
        let handshake = timeout_at(deadline, handshake(self, &mut reader, &mut write_half)).await;
        let response = handshake.map_err(|_| timed_out())??;
        let limits = BrokerLimits::from_wire(response.limits.as_ref());
        let supported = supported_apis(&response);
        *self.inner.last_limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(limits);
        let in_flight_max = self.inner.config.in_flight_requests_max.min(limits.in_flight_requests_max).max(1);
        let in_flight_max = usize::try_from(in_flight_max).expect("at most IN_FLIGHT_REQUESTS_MAX fits in usize");
        let (outgoing, outgoing_receiver) = mpsc::channel(in_flight_max);
        let pending = Arc::new(Pending { state: Mutex::new(PendingState::default()) });
        let closed = self.inner.shutdown.child_token();
        let writer = Writer {
            write_half,
            outgoing: outgoing_receiver,
            pending: pending.clone(),
            closed: closed.clone(),
            frame_bytes_max: limits.frame_bytes_max,
            addr: addr.clone(),
        };
        self.inner.tracker.spawn(writer.run());
        self.inner.tracker.spawn(read_loop(reader, pending.clone(), closed.clone(), addr.clone()));
        tracing::debug!(addr = %addr, ?limits, "connected");
        Ok(Arc::new(Live {
            outgoing,
            pending,
            in_flight: Arc::new(Semaphore::new(in_flight_max)),
            limits,
            supported,
            closed,
        }))
    }
}

/// Sends ApiVersions and reads its response: the first exchange on every connection.
async fn handshake(
    connection: &Connection,
    reader: &mut FramedRead<OwnedReadHalf, FrameCodec>,
    write_half: &mut OwnedWriteHalf,
) -> Result<ApiVersionsResponse, ClientError> {
    let addr = &connection.inner.addr;
    let lost = || ClientError::ConnectionLost { addr: addr.clone() };
    let correlation_id = connection.next_correlation_id();
    let request = Request::ApiVersions(ApiVersionsRequest {
        client_software_name: CLIENT_SOFTWARE_NAME.to_owned(),
        client_software_version: env!("CARGO_PKG_VERSION").to_owned(),
    });
    let mut buf = BytesMut::new();
    request.encode(correlation_id, &mut buf).map_err(ClientError::protocol)?;
    write_half.write_all(&buf).await.map_err(|_| lost())?;
    let frame = match reader.next().await {
        Some(Ok(frame)) => frame,
        // A reset (e.g. a broker that is shutting down dropping its listener's backlog) is a lost connection,
        // retriable like any other, not a protocol violation.
        Some(Err(ferry_protocol::ProtocolError::Io(_))) => return Err(lost()),
        Some(Err(error)) => return Err(ClientError::protocol(error)),
        None => return Err(lost()),
    };
    let response = Response::decode(&frame.header, frame.body).map_err(ClientError::protocol)?;
    match response {
        // An error frame before any answer, e.g. CONNECTION_LIMIT (correlation id 0).
        Response::Error(error) => Err(ClientError::from_wire(error.error_code, &error.error_message)),
        Response::ApiVersions(response) if frame.header.correlation_id == correlation_id => {
            ClientError::check_wire(response.error_code, "")?;
            Ok(response)
        }
        _ => Err(ClientError::UnexpectedResponse {
            api: ApiKey::ApiVersions,
            reason: "the first response does not answer ApiVersions",
        }),
    }
}

/// The apis the broker speaks at the version this client sends (the newest this build knows).
fn supported_apis(response: &ApiVersionsResponse) -> Vec<ApiKey> {
    ApiKey::ALL
        .into_iter()
        .filter(|api| {
            let version = u32::from(api.version_max());
            response.api_versions.iter().any(|range| {
                range.api_key == u32::from(api.as_u16()) && range.version_min <= version && version <= range.version_max
            })
        })
        .collect()
}

/// The writer task: encodes queued requests and writes them, coalescing what is queued into one write.
struct Writer {
    write_half: OwnedWriteHalf,
    outgoing: mpsc::Receiver<Outgoing>,
    pending: Arc<Pending>,
    closed: CancellationToken,
    frame_bytes_max: u32,
    addr: String,
}

impl Writer {
    async fn run(mut self) {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut written = Vec::new();
        loop {
            let first = tokio::select! {
                biased;
                () = self.closed.cancelled() => break,
                outgoing = self.outgoing.recv() => match outgoing {
                    Some(outgoing) => outgoing,
                    // Every sender is gone: the connection was dropped.
                    None => break,
                },
            };
            self.encode(first, &mut buf, &mut written);
            while buf.len() < WRITE_COALESCE_BYTES {
                match self.outgoing.try_recv() {
                    Ok(outgoing) => self.encode(outgoing, &mut buf, &mut written),
                    Err(_) => break,
                }
            }
            if buf.is_empty() {
                continue;
            }
            let result = tokio::select! {
                biased;
                () = self.closed.cancelled() => break,
                result = self.write_half.write_all(&buf) => result,
            };
            buf.clear();
            if let Err(error) = result {
                tracing::warn!(addr = %self.addr, %error, "write to the broker failed");
                break;
            }
            for sender in written.drain(..) {
                let _ = sender.send(Ok(()));
            }
        }
        // Unwritten acks=none requests learn of the loss when their senders drop; waiters for responses here.
        self.closed.cancel();
        self.pending.close(ClientError::ConnectionLost { addr: self.addr.clone() });
    }

    /// Appends one request's frame to `buf`, or fails that request alone if it cannot be encoded within the limit.
    fn encode(
        &self,
        outgoing: Outgoing,
        buf: &mut BytesMut,
        written: &mut Vec<oneshot::Sender<Result<(), ClientError>>>,
    ) {
        let start = buf.len();
        let result = outgoing.request.encode(outgoing.correlation_id, buf).and_then(|()| {
            let len = buf.len() - start - ferry_protocol::frame::FRAME_LENGTH_PREFIX_BYTES;
            let len = u64::try_from(len).unwrap_or(u64::MAX);
            if len > u64::from(self.frame_bytes_max) {
                buf.truncate(start);
                return Err(ferry_protocol::ProtocolError::EncodeTooLarge { len, max: self.frame_bytes_max });
            }
            Ok(())
        });
        match (result, outgoing.written) {
            (Ok(()), Some(sender)) => written.push(sender),
            (Ok(()), None) => {}
            (Err(error), Some(sender)) => {
                let _ = sender.send(Err(ClientError::protocol(error)));
            }
            (Err(error), None) => {
                self.pending.complete(outgoing.correlation_id, Err(ClientError::protocol(error)));
            }
        }
    }
}

/// The reader task: decodes response frames and hands each to the caller waiting on its correlation id.
async fn read_loop(
    mut reader: FramedRead<OwnedReadHalf, FrameCodec>,
    pending: Arc<Pending>,
    closed: CancellationToken,
    addr: String,
) {
    let lost = ClientError::ConnectionLost { addr: addr.clone() };
    let reason = loop {
        let frame = tokio::select! {
            biased;
            () = closed.cancelled() => break lost,
            frame = reader.next() => frame,
        };
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                // Framing is lost: nothing after this can be trusted.
                tracing::warn!(addr = %addr, %error, "undecodable frame from the broker; closing the connection");
                break lost;
            }
            None => {
                tracing::debug!(addr = %addr, "the broker closed the connection");
                break lost;
            }
        };
        let correlation_id = frame.header.correlation_id;
        let result = Response::decode(&frame.header, frame.body).map_err(ClientError::protocol);
        if let Ok(Response::Error(error)) = &result
            && correlation_id == 0
        {
            // An error about the connection itself (e.g. CONNECTION_LIMIT): every pending request gets it.
            break ClientError::from_wire(error.error_code, &error.error_message);
        }
        if !pending.complete(correlation_id, result) {
            tracing::debug!(addr = %addr, correlation_id, "response to a request nobody waits for");
        }
    };
    closed.cancel();
    pending.close(reason);
}
