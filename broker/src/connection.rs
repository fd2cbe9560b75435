//! One client connection: a reader that decodes and dispatches requests, and a writer that sends responses.
//!
//! # Reading
//!
//! The reader reads into one buffer and decodes frames with [`FrameCodec`] (limit `server.frame_bytes_max`,
//! checked on the length prefix before anything is reserved). Each request runs as its own task on the broker's
//! tracker, so requests are pipelined: responses go out as they complete, in any order (clients match correlation
//! ids). Produce requests submit to the appenders in arrival order (see [`ProduceTurn`]), so two produce requests
//! for one partition are appended in the order the client sent them.
//!
//! Limits, each closing or pausing the connection rather than growing memory:
//! - In flight: at most `server.in_flight_requests_max` requests are being handled; at the bound the reader stops
//!   reading until one completes (TCP then pushes back on the client).
//! - Request-read timeout: once the first byte of a frame has arrived, the whole frame must arrive within
//!   `server.request_read_timeout_ms` (while the reader is reading), or the connection is closed: a client that
//!   trickles bytes cannot hold a connection and its buffer forever.
//! - Idle timeout: with no request in flight and nothing received for `server.idle_timeout_ms`, the connection
//!   is closed.
//! - Request budget: a frame is charged to the broker-wide budget (`server.request_bytes_max`, see
//!   [`crate::server::RequestBudget`]) as soon as its length prefix has arrived, before its body is read, until its
//!   request completes; when the budget is spent the reader waits (that wait does not count against the
//!   request-read timeout). So twenty clients sending frames near the limit cannot make the broker buffer them all.
//! - The read buffer holds at most one frame plus [`READ_START_BYTES`]: the reader reads only while no whole frame
//!   is buffered. It is allocated only once bytes are ready to be read, sized to the frame being read, and let go
//!   between frames, so an idle connection holds no read buffer and a trickling one a small one.
//!
//! A frame that does not decode (a length over the limit or under the header size, an unknown api key or version,
//! a malformed body, reserved flags) is answered with an error frame carrying [`ProtocolError::error_code`] and
//! the request's correlation id (0 if the header never arrived), then the connection is closed. The one exception
//! is ApiVersions at an unknown version, answered with a version-0 ApiVersions response (`UNSUPPORTED_VERSION`)
//! so that any client can negotiate. A request that decodes but fails validation gets its api's response with an
//! error code and the connection stays open.
//!
//! # Writing
//!
//! Responses are encoded by their request task and queued to the writer. The queue is bounded in bytes
//! ([`RESPONSE_QUEUE_BYTES_MAX`]): a task waits for room before queueing, holding its in-flight slot, so a client
//! that stops reading its responses soon stops the reader too. A fetch takes room for its whole byte budget
//! *before* it reads, so the fetch responses one connection holds (queued, or read and waiting) never exceed the
//! queue: a consumer that does not read its responses cannot make the broker read the log into memory for it.
//! Every response, and every fetch before it reads, also takes room in the broker-wide response budget
//! (`server.response_bytes_max`, see [`ResponseRoom`]); when that is short a fetch takes what is free, down to
//! [`crate::handlers::fetch::FETCH_BYTES_UNDER_PRESSURE`] of records, and reads less, so consumers that stop
//! reading cannot make the broker hold more than the budget whatever their number.
//! The writer coalesces small responses into one write.
//! A write that makes no progress for `server.write_timeout_ms` closes the connection.
//!
//! # Closing
//!
//! The reader stops on end of stream, a timeout, a decode error, a write failure or shutdown; the requests in
//! flight then finish (long polls answer at once), the writer sends their responses and closes. Acks=none produce
//! requests never get a response.
//!
//! Worst-case memory of one connection: [`READ_START_BYTES`] beyond its frames (read buffer) plus its frames
//! (being read or handled; all connections' frames together are bounded by `server.request_bytes_max`)
//! `+ RESPONSE_QUEUE_BYTES_MAX` (queued or reserved responses), plus a few KiB of task and queue state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_protocol::frame::{FRAME_HEADER_BYTES, FRAME_LENGTH_PREFIX_BYTES, FrameFlags, FrameHeader};
use ferry_protocol::messages::{ErrorResponse, error_code_to_wire};
use ferry_protocol::{ApiKey, ErrorCode, Frame, FrameCodec, ProtocolError, Request, Response};
use metrics::Gauge;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use crate::handlers::{self, ProduceTurn, RequestContext, request_error};
use crate::metrics::{
    CONNECTIONS_OPEN, CONNECTIONS_REJECTED_TOTAL, LABEL_API, LABEL_REASON, LABEL_RESULT, REQUEST_DURATION_SECONDS,
    REQUESTS_TOTAL,
};
use crate::server::{BudgetCharge, ServerState, linger};

/// Bytes the reader asks the socket for when it does not know the current frame's length yet, or the frame needs
/// less: the read buffer of a connection that is idle between frames is empty (no allocation), one trickling a
/// frame holds at most this beyond what it sent, and a buffer holds at most this beyond one frame.
pub const READ_START_BYTES: usize = 4 * 1024;

/// Bytes of encoded responses queued for one connection's writer; a response waits for room (a response larger
/// than the whole queue waits for the queue to be empty). Two maximal frames, so a large fetch response can be
/// written while the next one is queued.
pub const RESPONSE_QUEUE_BYTES_MAX: usize = 2 * ferry_protocol::limits::FRAME_BYTES_MAX as usize;

/// The writer gathers queued responses smaller than this into one buffer (one `write` for many small acks);
/// larger responses are written as they are.
pub const WRITE_COALESCE_BYTES: usize = 256 * 1024;

/// One encoded frame for the writer, holding its share of the response queue and of the broker's response budget
/// until it is written.
#[derive(Debug)]
struct Outbound {
    bytes: Bytes,
    /// Close the connection once this frame is written (error frames after a decode error).
    close_after: bool,
    _room: ResponseRoom,
}

/// Room for one response: its share of its connection's queue and of the broker-wide response budget
/// (`server.response_bytes_max`). A fetch reserves it before it reads.
#[derive(Debug)]
pub(crate) struct ResponseRoom {
    queue: OwnedSemaphorePermit,
    broker: BudgetCharge,
}

impl ResponseRoom {
    /// Waits for `bytes` of room in the connection's queue `queue_room`, then in the broker's budget; `None` if the
    /// connection's writer has stopped.
    async fn reserve(state: &ServerState, queue_room: &Arc<Semaphore>, bytes: usize) -> Option<ResponseRoom> {
        ResponseRoom::reserve_between(state, queue_room, bytes, bytes).await
    }

    /// Like [`ResponseRoom::reserve`], taking as much of `bytes_max` of the broker's budget as is free at once but at
    /// least `bytes_min` (see [`crate::server::ByteBudget::charge_between`]); the queue room is shrunk to match.
    pub(crate) async fn reserve_between(
        state: &ServerState,
        queue_room: &Arc<Semaphore>,
        bytes_min: usize,
        bytes_max: usize,
    ) -> Option<ResponseRoom> {
        let bytes_max = bytes_max.clamp(1, RESPONSE_QUEUE_BYTES_MAX);
        let permits = u32::try_from(bytes_max).expect("RESPONSE_QUEUE_BYTES_MAX fits in u32");
        let queue = Arc::clone(queue_room).acquire_many_owned(permits).await.ok()?;
        let broker = state.response_budget.charge_between(bytes_min, bytes_max).await;
        let mut room = ResponseRoom { queue, broker };
        room.shrink_to(room.broker.bytes());
        Some(room)
    }

    /// Bytes of queue room held.
    pub(crate) fn bytes(&self) -> usize {
        self.queue.num_permits()
    }

    /// Gives back all but `bytes` of the room.
    fn shrink_to(&mut self, bytes: usize) {
        drop(self.queue.split(self.queue.num_permits().saturating_sub(bytes)));
        self.broker.shrink_to(bytes);
    }
}

/// The sending side of the writer's byte-bounded queue; cloned into every request task. `room` holds one permit
/// per byte of room; the writer closes it when it stops, which fails every wait for room.
#[derive(Debug, Clone)]
struct ResponseQueue {
    sender: mpsc::Sender<Outbound>,
    room: Arc<Semaphore>,
    state: Arc<ServerState>,
}

/// The writer is gone (the connection is closing); the response is dropped.
#[derive(Debug)]
struct QueueClosed;

impl ResponseQueue {
    /// Queues a frame, waiting for room; `reserved` is room the request took before it built the response
    /// (fetches), used if it is enough (the excess is released), else released before waiting for room.
    async fn send(&self, bytes: Bytes, close_after: bool, reserved: Option<ResponseRoom>) -> Result<(), QueueClosed> {
        let share = bytes.len().clamp(1, RESPONSE_QUEUE_BYTES_MAX);
        let room = match reserved {
            Some(mut reserved) if reserved.bytes() >= share => {
                reserved.shrink_to(share);
                reserved
            }
            // Not enough: let go of it first, so that waiting for room never holds room.
            other => {
                drop(other);
                ResponseRoom::reserve(&self.state, &self.room, share).await.ok_or(QueueClosed)?
            }
        };
        self.sender.send(Outbound { bytes, close_after, _room: room }).await.map_err(|_| QueueClosed)
    }
}

/// Why the reader stopped; those caused by a limit are counted in `ferry_connections_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    PeerClosed,
    ReadError,
    IdleTimeout,
    RequestReadTimeout,
    DecodeError,
    Closing,
}

impl Stop {
    fn limit_reason(self) -> Option<&'static str> {
        match self {
            Stop::IdleTimeout => Some("idle_timeout"),
            Stop::RequestReadTimeout => Some("request_read_timeout"),
            Stop::PeerClosed | Stop::ReadError | Stop::DecodeError | Stop::Closing => None,
        }
    }
}

/// Keeps `ferry_connections_open` right however the connection ends.
struct OpenConnection(Gauge);

impl OpenConnection {
    fn new() -> OpenConnection {
        let gauge = metrics::gauge!(CONNECTIONS_OPEN);
        gauge.increment(1.0);
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Serves one connection until it closes. `_permit` is its share of `server.connections_max`.
pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, state: Arc<ServerState>, _permit: OwnedSemaphorePermit) {
    let _open = OpenConnection::new();
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    tracing::debug!(%peer, "connection accepted");
    let (read_half, write_half) = stream.into_split();
    let cancel = state.shutdown.child_token();
    let in_flight_max = usize::try_from(state.config.server.in_flight_requests_max).unwrap_or(usize::MAX);
    // One response per request in flight, plus an error frame.
    let (sender, receiver) = mpsc::channel(in_flight_max.saturating_add(1));
    let room = Arc::new(Semaphore::new(RESPONSE_QUEUE_BYTES_MAX));
    let queue = ResponseQueue { sender, room: Arc::clone(&room), state: Arc::clone(&state) };
    let reader = Reader {
        read_half,
        state: Arc::clone(&state),
        queue,
        cancel: cancel.clone(),
        in_flight: Arc::new(Semaphore::new(in_flight_max)),
        in_flight_max,
        produce_chain: None,
        peer,
    };
    let writer = Writer { write_half, receiver, room, cancel: cancel.clone(), state: Arc::clone(&state), peer };
    let ((), ()) = tokio::join!(reader.run(), writer.run());
    tracing::debug!(%peer, "connection closed");
}

struct Reader {
    read_half: OwnedReadHalf,
    state: Arc<ServerState>,
    queue: ResponseQueue,
    /// This connection's token (a child of the broker's): cancelled when the connection must stop.
    cancel: CancellationToken,
    in_flight: Arc<Semaphore>,
    in_flight_max: usize,
    /// The receiver the next produce request waits on for its turn to submit.
    produce_chain: Option<oneshot::Receiver<()>>,
    peer: SocketAddr,
}

impl Reader {
    async fn run(mut self) {
        let stop = self.read_loop().await;
        if let Some(reason) = stop.limit_reason() {
            metrics::counter!(CONNECTIONS_REJECTED_TOTAL, LABEL_REASON => reason).increment(1);
            tracing::info!(peer = %self.peer, reason, "closing connection");
        }
        // Requests in flight answer at once (long polls), and the writer ends when the last one has answered.
        self.cancel.cancel();
        if stop == Stop::DecodeError {
            linger(&mut self.read_half).await;
        }
    }

    async fn read_loop(&mut self) -> Stop {
        let server = &self.state.config.server;
        let (idle_timeout, read_timeout) = (server.idle_timeout, server.request_read_timeout);
        let mut codec = FrameCodec::with_max_frame_bytes(server.frame_bytes_max);
        let mut buf = BytesMut::new();
        let mut last_activity = Instant::now();
        // When the first byte of the frame now partly in `buf` arrived (or when reading resumed).
        let mut partial_since: Option<Instant> = None;
        // The current frame's charge to the broker's request budget, taken once its length is known.
        let mut charge: Option<BudgetCharge> = None;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    partial_since = None;
                    let charge = match charge.take() {
                        Some(charge) => charge,
                        // The frame arrived whole in one read.
                        None => {
                            let frame_wire_len =
                                FRAME_LENGTH_PREFIX_BYTES + FRAME_HEADER_BYTES as usize + frame.body.len();
                            tokio::select! {
                                biased;
                                () = self.cancel.cancelled() => return Stop::Closing,
                                charge = self.state.request_budget.charge(frame_wire_len) => charge,
                            }
                        }
                    };
                    let permit = tokio::select! {
                        biased;
                        () = self.cancel.cancelled() => return Stop::Closing,
                        permit = Arc::clone(&self.in_flight).acquire_owned() => {
                            permit.expect("the in-flight semaphore is never closed")
                        }
                    };
                    last_activity = Instant::now();
                    if self.dispatch(frame, permit, charge).await.is_err() {
                        return Stop::DecodeError;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(error) => {
                    self.reject_frame(error, None, &buf).await;
                    return Stop::DecodeError;
                }
            }
            if charge.is_none()
                && let Ok(Some(frame_wire_len)) = Frame::peek_len(&buf, codec.max_frame_bytes())
            {
                // Charge the whole frame before reading its body; time spent waiting for the budget is not the
                // client's, so it does not count against the request-read timeout.
                let waiting_since = Instant::now();
                charge = Some(tokio::select! {
                    biased;
                    () = self.cancel.cancelled() => return Stop::Closing,
                    charge = self.state.request_budget.charge(frame_wire_len) => charge,
                });
                if let Some(since) = partial_since.as_mut() {
                    *since += waiting_since.elapsed();
                }
            }
            let now = Instant::now();
            if buf.is_empty() {
                partial_since = None;
            } else if partial_since.is_none() {
                partial_since = Some(now);
            }
            let (deadline, timeout_stop) = match partial_since {
                Some(since) => (since + read_timeout, Stop::RequestReadTimeout),
                None => (last_activity + idle_timeout, Stop::IdleTimeout),
            };
            if buf.is_empty() {
                // Between frames, hold no buffer: the decoded frames keep what they use, and an idle connection
                // costs no read buffer at all.
                buf = BytesMut::new();
            }
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Stop::Closing,
                ready = self.read_half.readable() => {
                    if let Err(error) = ready {
                        tracing::debug!(peer = %self.peer, %error, "read failed");
                        return Stop::ReadError;
                    }
                    buf.reserve(read_reserve_bytes(&buf, codec.max_frame_bytes()));
                    match self.read_half.try_read_buf(&mut buf) {
                        Ok(0) => {
                            if !buf.is_empty() {
                                tracing::debug!(peer = %self.peer, bytes = buf.len(), "peer closed mid-frame");
                            }
                            return Stop::PeerClosed;
                        }
                        Ok(_) => last_activity = Instant::now(),
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(error) => {
                            tracing::debug!(peer = %self.peer, %error, "read failed");
                            return Stop::ReadError;
                        }
                    }
                },
                () = sleep_until(deadline) => {
                    let idle = self.in_flight.available_permits() == self.in_flight_max;
                    if timeout_stop == Stop::IdleTimeout && !idle {
                        // Requests are in flight: the connection is busy, not idle.
                        last_activity = Instant::now();
                        continue;
                    }
                    return timeout_stop;
                }
            }
        }
    }

    /// Decodes and starts one request. `Err` means it did not decode: the error frame is queued, close.
    async fn dispatch(&mut self, frame: Frame, permit: OwnedSemaphorePermit, charge: BudgetCharge) -> Result<(), ()> {
        let started = Instant::now();
        let header = frame.header;
        if header.api_key == ApiKey::ApiVersions.as_u16()
            && !ApiKey::ApiVersions.supports_version(header.api_version)
            && header.flags == FrameFlags::REQUEST
        {
            let response = Response::from(handlers::api_versions::unsupported_version(&self.state));
            let reply_header = FrameHeader { api_version: 0, ..header };
            let bytes = encode_response(&reply_header, &response);
            record_request(ApiKey::ApiVersions.name(), ErrorCode::UnsupportedVersion, started);
            let _ = self.queue.send(bytes, false, None).await;
            drop(permit);
            return Ok(());
        }
        let request = match Request::decode(&header, frame.body) {
            Ok(request) => request,
            Err(error) => {
                self.reject_frame(error, Some(header), &[]).await;
                return Err(());
            }
        };
        let turn = if request.api_key() == ApiKey::Produce {
            let (turn, next) = ProduceTurn::chained(self.produce_chain.take());
            self.produce_chain = Some(next);
            Some(turn)
        } else {
            None
        };
        let state = Arc::clone(&self.state);
        let queue = self.queue.clone();
        let context = RequestContext { cancel: self.cancel.clone(), turn, response_room: Arc::clone(&self.queue.room) };
        self.state.tasks.spawn(async move {
            let api = request.api_key();
            let outcome = handlers::handle(&state, request, context).await;
            // The request is done with its frame.
            drop(charge);
            if let Some(response) = outcome.response {
                let bytes = encode_response(&header, &response);
                record_request(api.name(), outcome.result, started);
                // A closed queue means the connection is closing: the response has nowhere to go.
                let _ = queue.send(bytes, false, outcome.reserved).await;
            } else {
                record_request(api.name(), outcome.result, started);
            }
            drop(permit);
        });
        Ok(())
    }

    /// Queues the error frame for a request that did not decode. `header` is the frame's header if it was read;
    /// otherwise the correlation id comes from the buffered bytes when they hold it, else it is 0.
    async fn reject_frame(&self, error: ProtocolError, header: Option<FrameHeader>, buffered: &[u8]) {
        let code = error.error_code();
        let header = header.or_else(|| header_from_bytes(buffered)).unwrap_or(FrameHeader {
            api_key: 0,
            api_version: 0,
            correlation_id: 0,
            flags: FrameFlags::REQUEST,
        });
        let api_name = ApiKey::try_from(header.api_key).map_or("unknown", ApiKey::name);
        tracing::info!(peer = %self.peer, error = %crate::partitions::error_chain(&error), code = %code,
            "request does not decode; sending an error frame and closing");
        record_request(api_name, code, Instant::now());
        let response = Response::Error(ErrorResponse {
            error_code: error_code_to_wire(code),
            error_message: handlers::error_message(&error),
        });
        let bytes = encode_response(&header, &response);
        let _ = self.queue.send(bytes, true, None).await;
    }
}

/// How much room to make in the read buffer `buf` for the next read: the rest of the current frame when its
/// length is known (it was charged to the request budget; at least [`READ_START_BYTES`], so small pipelined frames
/// arrive together), else [`READ_START_BYTES`]. A connection trickling a small frame so holds a small buffer.
fn read_reserve_bytes(buf: &[u8], frame_bytes_max: u32) -> usize {
    match Frame::peek_len(buf, frame_bytes_max) {
        Ok(Some(frame_wire_len)) => frame_wire_len.saturating_sub(buf.len()).max(READ_START_BYTES),
        Ok(None) | Err(_) => READ_START_BYTES,
    }
}

/// The header of a frame whose length prefix is bad but whose header bytes arrived, for the error frame.
fn header_from_bytes(buffered: &[u8]) -> Option<FrameHeader> {
    let start = FRAME_LENGTH_PREFIX_BYTES;
    let end = start + usize::try_from(FRAME_HEADER_BYTES).unwrap_or(usize::MAX);
    let bytes = buffered.get(start..end)?;
    Some(FrameHeader {
        api_key: u16::from_be_bytes([bytes[0], bytes[1]]),
        api_version: u16::from_be_bytes([bytes[2], bytes[3]]),
        correlation_id: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        flags: FrameFlags::REQUEST,
    })
}

/// Encodes a response to the request with `header`. A response too large for a frame (it can only be one that
/// echoes huge client input) is replaced by its api's empty response with `INVALID_REQUEST`.
fn encode_response(header: &FrameHeader, response: &Response) -> Bytes {
    let mut buf = BytesMut::new();
    match response.encode(header, &mut buf) {
        Ok(()) => buf.freeze(),
        Err(error) => {
            tracing::warn!(%error, correlation_id = header.correlation_id, "response too large for a frame");
            let fallback = match response.api_key() {
                Some(api) => request_error(api, ErrorCode::InvalidRequest),
                None => Response::Error(ErrorResponse {
                    error_code: error_code_to_wire(ErrorCode::InvalidRequest),
                    error_message: String::new(),
                }),
            };
            let mut buf = BytesMut::new();
            fallback.encode(header, &mut buf).expect("an empty response fits in a frame");
            buf.freeze()
        }
    }
}

fn record_request(api: &'static str, result: ErrorCode, started: Instant) {
    let result = if result == ErrorCode::None { "ok" } else { result.name() };
    metrics::counter!(REQUESTS_TOTAL, LABEL_API => api, LABEL_RESULT => result).increment(1);
    metrics::histogram!(REQUEST_DURATION_SECONDS, LABEL_API => api).record(started.elapsed().as_secs_f64());
}

struct Writer {
    write_half: OwnedWriteHalf,
    receiver: mpsc::Receiver<Outbound>,
    room: Arc<Semaphore>,
    cancel: CancellationToken,
    state: Arc<ServerState>,
    peer: SocketAddr,
}

/// Why a write failed.
#[derive(Debug)]
enum WriteFailure {
    Stalled(Duration),
    Io(std::io::Error),
}

impl Writer {
    async fn run(mut self) {
        let write_timeout = self.state.config.server.write_timeout;
        let mut coalesced = BytesMut::new();
        let result = 'serve: loop {
            // Ends when every sender is gone: the reader stopped and every request in flight has answered.
            let Some(first) = self.receiver.recv().await else { break Ok(()) };
            let mut close = first.close_after;
            let mut batch = vec![first];
            while !close && batch.iter().map(|outbound| outbound.bytes.len()).sum::<usize>() < WRITE_COALESCE_BYTES {
                match self.receiver.try_recv() {
                    Ok(outbound) => {
                        close = outbound.close_after;
                        batch.push(outbound);
                    }
                    Err(_) => break,
                }
            }
            for outbound in &batch {
                if outbound.bytes.len() < WRITE_COALESCE_BYTES {
                    coalesced.extend_from_slice(&outbound.bytes);
                    continue;
                }
                if let Err(failure) = self.write_all(&coalesced, write_timeout).await {
                    break 'serve Err(failure);
                }
                coalesced.clear();
                if let Err(failure) = self.write_all(&outbound.bytes, write_timeout).await {
                    break 'serve Err(failure);
                }
            }
            if let Err(failure) = self.write_all(&coalesced, write_timeout).await {
                break 'serve Err(failure);
            }
            coalesced.clear();
            // Written: the batch's queue room is released here.
            drop(batch);
            if close {
                break Ok(());
            }
        };
        match result {
            Ok(()) => {
                let _ = tokio::time::timeout(write_timeout, self.write_half.shutdown()).await;
            }
            Err(WriteFailure::Stalled(timeout)) => {
                metrics::counter!(CONNECTIONS_REJECTED_TOTAL, LABEL_REASON => "write_timeout").increment(1);
                tracing::info!(peer = %self.peer, ?timeout, "client does not read its responses; closing connection");
            }
            Err(WriteFailure::Io(error)) => tracing::debug!(peer = %self.peer, %error, "write failed"),
        }
        // Stop the reader, and let request tasks waiting for queue room give up.
        self.cancel.cancel();
        self.room.close();
        self.receiver.close();
    }

    /// Writes all of `bytes`, failing if one write makes no progress within `stall`.
    async fn write_all(&mut self, mut bytes: &[u8], stall: Duration) -> Result<(), WriteFailure> {
        while !bytes.is_empty() {
            match tokio::time::timeout(stall, self.write_half.write(bytes)).await {
                Err(_) => return Err(WriteFailure::Stalled(stall)),
                Ok(Err(error)) => return Err(WriteFailure::Io(error)),
                Ok(Ok(0)) => return Err(WriteFailure::Io(std::io::ErrorKind::WriteZero.into())),
                Ok(Ok(n_written)) => bytes = &bytes[n_written..],
            }
        }
        Ok(())
    }
}
