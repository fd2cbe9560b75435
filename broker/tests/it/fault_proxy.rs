//! A frame-aware TCP proxy that injects network faults between clients and a broker (the kernel here has no netem).
//!
//! [`FaultProxy::start`] listens on `127.0.0.1:0` and opens one broker connection per client connection.
//! It splits both byte streams into frames by their length prefix and reads each frame's header (api key,
//! correlation id, the response bit), so it can act on one request and on *its* response:
//!
//! | [`Fault`] | what happens | what the client sees |
//! | --- | --- | --- |
//! | `DropRequest` | the request is never forwarded | a request timeout, then a retry |
//! | `DropResponse` | forwarded and applied; its response is dropped | a request timeout, then a retry (a duplicate without idempotence) |
//! | `DuplicateRequest` | the broker gets the frame twice; the second response is swallowed | one answer per correlation id |
//! | `DelayRequest` | held until the next request on the connection overtakes it (or `delay_max` passes) | answers by correlation id, possibly out of order |
//! | `DelayResponse` | its response is held until a newer response overtakes it (or `delay_max` passes) | answers out of order |
//! | `ResetBeforeForward` | both connections are reset (RST), the request never reaches the broker | a lost connection, then a retry |
//! | `ResetAfterForward` | forwarded; when its response arrives, both connections are reset instead | a lost connection after the broker applied it |
//!
//! Faults are chosen per *eligible* request (by default produce requests, see [`FaultPlan::api`]): scripted ones
//! by position ("the 3rd produce request") and random ones with seeded probabilities.
//! [`Mode`] pauses all forwarding (back-pressure, nothing lost) or blackholes it (frames read and discarded,
//! sockets kept open).
//! [`FaultProxy::counts`] says what the proxy really did, so tests can assert the faults happened.
//!
//! Memory is bounded: one frame (at most [`FRAME_BYTES_MAX`] plus a read chunk) per direction is buffered, plus
//! at most one held frame per direction; a length prefix above the limit (or below the header) closes the
//! connection, and the bookkeeping of faults awaiting a response is capped at [`PENDING_FAULTS_MAX`] per
//! connection (beyond it, no new such fault is injected on that connection).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_protocol::limits::FRAME_BYTES_MAX;
use ferry_protocol::{ApiKey, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chaos::rng::Rng;

#[cfg(test)]
mod tests;

/// Most faults awaiting a response (dropped, duplicated, delayed or reset responses) per connection; past it, the
/// proxy forwards such requests unharmed and counts them in [`FaultCounts::faults_skipped`].
pub const PENDING_FAULTS_MAX: usize = 1024;

/// The bytes read from a socket at a time (a frame larger than that is read in several steps).
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What to do to one eligible request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Never forward the request.
    DropRequest,
    /// Forward the request, drop its response.
    DropResponse,
    /// Forward the request twice; forward one response and swallow the other.
    DuplicateRequest,
    /// Hold the request until the next request of the connection has been forwarded (or `delay_max` passed).
    DelayRequest,
    /// Forward the request; hold its response until a newer response has been forwarded (or `delay_max` passed).
    DelayResponse,
    /// Reset both connections without forwarding the request.
    ResetBeforeForward,
    /// Forward the request; when its response arrives, reset both connections instead of forwarding it.
    ResetAfterForward,
}

impl Fault {
    /// Every fault, in declaration order.
    pub const ALL: [Fault; 7] = [
        Fault::DropRequest,
        Fault::DropResponse,
        Fault::DuplicateRequest,
        Fault::DelayRequest,
        Fault::DelayResponse,
        Fault::ResetBeforeForward,
        Fault::ResetAfterForward,
    ];
}

/// Which faults the proxy injects; replace it at any time with [`FaultProxy::set_plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// The seed of the random choices.
    pub seed: u64,
    /// The requests faults apply to: those of this api, or every request when `None`. Default: produce.
    pub api: Option<ApiKey>,
    /// Faults by position among eligible requests, counted from 1 across all connections since the plan was set.
    /// A scripted fault replaces the random choice for its request.
    pub scripted: BTreeMap<u64, Fault>,
    /// Each fault's probability per eligible request (at most one fault per request; the sum should be <= 1).
    pub random: Vec<(Fault, f64)>,
    /// Longest a delayed frame waits for a newer one to overtake it; then it is forwarded anyway. Default 2 s.
    pub delay_max: Duration,
}

impl Default for FaultPlan {
    fn default() -> FaultPlan {
        FaultPlan {
            seed: 0,
            api: Some(ApiKey::Produce),
            scripted: BTreeMap::new(),
            random: Vec::new(),
            delay_max: Duration::from_secs(2),
        }
    }
}

impl FaultPlan {
    /// No fault: the proxy forwards everything.
    pub fn none() -> FaultPlan {
        FaultPlan::default()
    }

    /// `fault` on the `nth` eligible request (from 1).
    pub fn nth(nth: u64, fault: Fault) -> FaultPlan {
        FaultPlan::none().and_nth(nth, fault)
    }

    /// This plan with `fault` on the `nth` eligible request (from 1) too.
    pub fn and_nth(mut self, nth: u64, fault: Fault) -> FaultPlan {
        assert!(nth > 0, "requests are counted from 1");
        self.scripted.insert(nth, fault);
        self
    }

    /// Every [`Fault`] at random with the same `probability` each per eligible request, seeded.
    pub fn uniform(seed: u64, probability: f64) -> FaultPlan {
        FaultPlan::random(seed, &Fault::ALL.map(|fault| (fault, probability)))
    }

    /// Random faults with these probabilities per eligible request, seeded.
    pub fn random(seed: u64, probabilities: &[(Fault, f64)]) -> FaultPlan {
        FaultPlan { seed, random: probabilities.to_vec(), ..FaultPlan::none() }
    }

    fn applies_to(&self, api_key: u16) -> bool {
        self.api.is_none_or(|api| api.as_u16() == api_key)
    }
}

/// How the proxy forwards, whatever the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward frames, applying the plan.
    Forward,
    /// Read nothing more from either side until the mode changes (nothing is lost; TCP pushes back).
    Pause,
    /// Read frames from both sides and discard them; the sockets stay open (a network black hole).
    Blackhole,
}

/// What the proxy did so far; every count is cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Client connections accepted (and connected to the broker).
    pub connections: u64,
    /// Client connections closed because the broker could not be reached.
    pub upstream_unreachable: u64,
    /// Eligible requests seen (the ones the plan counts).
    pub eligible_requests: u64,
    /// Request frames forwarded to the broker (a duplicate counts twice).
    pub requests_forwarded: u64,
    /// Response frames forwarded to the client.
    pub responses_forwarded: u64,
    /// Requests dropped (`DropRequest`).
    pub requests_dropped: u64,
    /// Responses dropped (`DropResponse`).
    pub responses_dropped: u64,
    /// Requests sent twice (`DuplicateRequest`).
    pub requests_duplicated: u64,
    /// Second responses to duplicated requests, swallowed.
    pub duplicate_responses_swallowed: u64,
    /// Frames held back (`DelayRequest`, `DelayResponse`).
    pub frames_delayed: u64,
    /// Held frames forwarded after a newer frame overtook them (the reorderings that really happened).
    pub frames_overtaken: u64,
    /// Connections reset before the request was forwarded.
    pub resets_before_forward: u64,
    /// Connections reset after the broker answered the request.
    pub resets_after_forward: u64,
    /// Frames discarded in [`Mode::Blackhole`].
    pub frames_blackholed: u64,
    /// Connections closed for a length prefix out of bounds.
    pub bad_length_closed: u64,
    /// Faults not injected because [`PENDING_FAULTS_MAX`] was reached or a frame was already held.
    pub faults_skipped: u64,
}

impl FaultCounts {
    /// Every injected fault, summed.
    pub fn faults(&self) -> u64 {
        self.requests_dropped
            + self.responses_dropped
            + self.requests_duplicated
            + self.frames_delayed
            + self.resets_before_forward
            + self.resets_after_forward
            + self.frames_blackholed
    }
}

/// The counters behind [`FaultCounts`], one atomic each.
#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    upstream_unreachable: AtomicU64,
    eligible_requests: AtomicU64,
    requests_forwarded: AtomicU64,
    responses_forwarded: AtomicU64,
    requests_dropped: AtomicU64,
    responses_dropped: AtomicU64,
    requests_duplicated: AtomicU64,
    duplicate_responses_swallowed: AtomicU64,
    frames_delayed: AtomicU64,
    frames_overtaken: AtomicU64,
    resets_before_forward: AtomicU64,
    resets_after_forward: AtomicU64,
    frames_blackholed: AtomicU64,
    bad_length_closed: AtomicU64,
    faults_skipped: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> FaultCounts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        FaultCounts {
            connections: get(&self.connections),
            upstream_unreachable: get(&self.upstream_unreachable),
            eligible_requests: get(&self.eligible_requests),
            requests_forwarded: get(&self.requests_forwarded),
            responses_forwarded: get(&self.responses_forwarded),
            requests_dropped: get(&self.requests_dropped),
            responses_dropped: get(&self.responses_dropped),
            requests_duplicated: get(&self.requests_duplicated),
            duplicate_responses_swallowed: get(&self.duplicate_responses_swallowed),
            frames_delayed: get(&self.frames_delayed),
            frames_overtaken: get(&self.frames_overtaken),
            resets_before_forward: get(&self.resets_before_forward),
            resets_after_forward: get(&self.resets_after_forward),
            frames_blackholed: get(&self.frames_blackholed),
            bad_length_closed: get(&self.bad_length_closed),
            faults_skipped: get(&self.faults_skipped),
        }
    }
}

/// The plan with its random state and the count of eligible requests since it was set.
#[derive(Debug)]
struct PlanState {
    plan: FaultPlan,
    rng: Rng,
    n_eligible: u64,
}

impl PlanState {
    fn new(plan: FaultPlan) -> PlanState {
        PlanState { rng: Rng::new(plan.seed), plan, n_eligible: 0 }
    }

    /// The fault for a request with `api_key`, if any (counting it when eligible).
    fn decide(&mut self, api_key: u16, counters: &Counters) -> Option<Fault> {
        if !self.plan.applies_to(api_key) {
            return None;
        }
        self.n_eligible += 1;
        bump(&counters.eligible_requests);
        if let Some(fault) = self.plan.scripted.get(&self.n_eligible) {
            return Some(*fault);
        }
        if self.plan.random.is_empty() {
            return None;
        }
        let draw = self.rng.unit();
        let mut cumulative = 0.0;
        for &(fault, probability) in &self.plan.random {
            cumulative += probability;
            if draw < cumulative {
                return Some(fault);
            }
        }
        None
    }
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    plan: Mutex<PlanState>,
    mode: watch::Sender<Mode>,
    counters: Counters,
}

/// A running fault proxy; stopped (and every proxied connection closed) by [`FaultProxy::stop`] or on drop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:0` in front of the broker at `upstream`, injecting the faults of `plan`.
    /// Each client connection gets its own broker connection, opened when the client connects.
    pub async fn start(upstream: SocketAddr, plan: FaultPlan) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (mode, _) = watch::channel(Mode::Forward);
        let shared =
            Arc::new(Shared { upstream, plan: Mutex::new(PlanState::new(plan)), mode, counters: Counters::default() });
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(accept_loop(listener, Arc::clone(&shared), shutdown.clone(), tracker.clone()));
        FaultProxy { addr, shared, shutdown, tracker }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the plan; request positions count from 1 again.
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.shared.plan.lock().expect("plan lock") = PlanState::new(plan);
    }

    /// Switches between forwarding, pausing and blackholing, for every connection at once.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// What the proxy did so far.
    pub fn counts(&self) -> FaultCounts {
        self.shared.counters.snapshot()
    }

    /// Stops accepting, closes every proxied connection and waits for its tasks.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let Ok((client, _)) = accepted else { continue };
        let shared = Arc::clone(&shared);
        let connection_shutdown = shutdown.child_token();
        let tracker_for_connection = tracker.clone();
        tracker.spawn(async move {
            let connect = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(shared.upstream)).await;
            let Ok(Ok(broker)) = connect else {
                bump(&shared.counters.upstream_unreachable);
                return;
            };
            bump(&shared.counters.connections);
            let _ = client.set_nodelay(true);
            let _ = broker.set_nodelay(true);
            let connection =
                Arc::new(ConnectionState { pending: Mutex::new(HashMap::new()), reset: connection_shutdown });
            let (client_read, client_write) = client.into_split();
            let (broker_read, broker_write) = broker.into_split();
            let requests =
                pump(Direction::Request, client_read, broker_write, Arc::clone(&shared), Arc::clone(&connection));
            tracker_for_connection.spawn(requests);
            pump(Direction::Response, broker_read, client_write, shared, connection).await;
        });
    }
}

/// What a response is awaited for, by the fault its request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Drop it.
    Drop,
    /// Forward the first of two responses, swallow the second.
    Duplicate {
        /// Whether the first was forwarded.
        forwarded: bool,
    },
    /// Hold it until a newer response overtakes it.
    Delay,
    /// Reset both connections instead of forwarding it.
    Reset,
}

/// State shared by the two directions of one proxied connection.
#[derive(Debug)]
struct ConnectionState {
    /// Faults awaiting their response, by correlation id (at most [`PENDING_FAULTS_MAX`]).
    pending: Mutex<HashMap<u32, Pending>>,
    /// Cancelled to reset both sides.
    reset: CancellationToken,
}

impl ConnectionState {
    /// Registers a fault for the response to `correlation_id`; false (nothing registered) when full or taken.
    fn expect_response(&self, correlation_id: u32, pending: Pending) -> bool {
        let mut map = self.pending.lock().expect("pending lock");
        if map.len() >= PENDING_FAULTS_MAX || map.contains_key(&correlation_id) {
            return false;
        }
        map.insert(correlation_id, pending);
        true
    }

    /// What to do with the response to `correlation_id` (`None`: forward it), updating the bookkeeping.
    fn take_response(&self, correlation_id: u32) -> Option<Pending> {
        let mut map = self.pending.lock().expect("pending lock");
        let pending = *map.get(&correlation_id)?;
        match pending {
            Pending::Duplicate { forwarded: false } => {
                map.insert(correlation_id, Pending::Duplicate { forwarded: true });
            }
            _ => {
                map.remove(&correlation_id);
            }
        }
        Some(pending)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to broker.
    Request,
    /// Broker to client.
    Response,
}

/// A whole frame as it travels (length prefix included) and the header fields the proxy acts on.
#[derive(Debug, Clone)]
struct RawFrame {
    bytes: Bytes,
    api_key: u16,
    correlation_id: u32,
}

impl RawFrame {
    /// Splits the first whole frame off `buf`; `Ok(None)` until one has arrived, `Err` for a bad length prefix.
    fn split_off(buf: &mut BytesMut) -> Result<Option<RawFrame>, ferry_protocol::ProtocolError> {
        let Some(wire_len) = Frame::peek_len(buf, FRAME_BYTES_MAX)? else { return Ok(None) };
        if buf.len() < wire_len {
            return Ok(None);
        }
        let bytes = buf.split_to(wire_len).freeze();
        let api_key = u16::from_be_bytes([bytes[4], bytes[5]]);
        let correlation_id = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        Ok(Some(RawFrame { bytes, api_key, correlation_id }))
    }
}

/// Why a direction stopped.
enum End {
    /// Reset: both sockets get an RST.
    Reset,
    /// The reader closed (or the proxy stops): the other side gets a FIN.
    Closed,
}

/// Forwards frames in one direction until end of stream, a reset or the proxy's shutdown; then closes both
/// connections on a reset, or passes the end of stream on.
async fn pump(
    direction: Direction,
    mut reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    shared: Arc<Shared>,
    connection: Arc<ConnectionState>,
) {
    let end = pump_frames(direction, &mut reader, &mut writer, &shared, &connection).await;
    match end {
        End::Reset => {
            connection.reset.cancel();
            // Zero linger turns the close into an RST, for the socket this direction reads from; the other direction
            // does the same for its own, so both peers see a reset.
            let _ = reader.as_ref().set_zero_linger();
        }
        End::Closed => {
            let _ = writer.shutdown().await;
        }
    }
}

async fn pump_frames(
    direction: Direction,
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    shared: &Shared,
    connection: &ConnectionState,
) -> End {
    let counters = &shared.counters;
    let reset = &connection.reset;
    let mut mode = shared.mode.subscribe();
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    // A delayed frame and when it goes anyway.
    let mut held: Option<(RawFrame, Instant)> = None;
    loop {
        // Pause: read nothing until the mode changes.
        while *mode.borrow_and_update() == Mode::Pause {
            tokio::select! {
                changed = mode.changed() => if changed.is_err() { return End::Closed },
                () = reset.cancelled() => return End::Reset,
            }
        }
        let frame = match RawFrame::split_off(&mut buf) {
            Err(_) => {
                bump(&counters.bad_length_closed);
                return End::Reset;
            }
            Ok(Some(frame)) => frame,
            Ok(None) => {
                let held_deadline = held.as_ref().map(|(_, deadline)| *deadline);
                buf.reserve(READ_CHUNK_BYTES);
                tokio::select! {
                    read = reader.read_buf(&mut buf) => match read {
                        Ok(0) | Err(_) => {
                            if let Some((frame, _)) = held.take() {
                                let _ = write(writer, &frame, reset).await;
                            }
                            return if reset.is_cancelled() { End::Reset } else { End::Closed };
                        }
                        Ok(_) => continue,
                    },
                    () = sleep_until_or_forever(held_deadline) => {
                        let (frame, _) = held.take().expect("a deadline means a held frame");
                        if write(writer, &frame, reset).await.is_err() { return End::Reset }
                        count_forwarded(direction, counters);
                        continue;
                    }
                    _ = mode.changed() => continue,
                    () = reset.cancelled() => return End::Reset,
                }
            }
        };
        if *mode.borrow() == Mode::Blackhole {
            bump(&counters.frames_blackholed);
            continue;
        }
        let action = match direction {
            Direction::Request => request_action(&frame, shared, connection),
            Direction::Response => response_action(&frame, counters, connection),
        };
        match action {
            Action::Forward | Action::ForwardTwice => {
                let copies = if action == Action::ForwardTwice { 2 } else { 1 };
                for _ in 0..copies {
                    if write(writer, &frame, reset).await.is_err() {
                        return End::Reset;
                    }
                    count_forwarded(direction, counters);
                }
                if let Some((overtaken, _)) = held.take() {
                    if write(writer, &overtaken, reset).await.is_err() {
                        return End::Reset;
                    }
                    count_forwarded(direction, counters);
                    bump(&counters.frames_overtaken);
                }
            }
            Action::Hold => {
                if held.is_some() {
                    // One held frame per direction at most: this one goes now, the held one keeps waiting.
                    bump(&counters.faults_skipped);
                    if write(writer, &frame, reset).await.is_err() {
                        return End::Reset;
                    }
                    count_forwarded(direction, counters);
                } else {
                    bump(&counters.frames_delayed);
                    let delay_max = shared.plan.lock().expect("plan lock").plan.delay_max;
                    held = Some((frame, Instant::now() + delay_max));
                }
            }
            Action::Discard => {}
            Action::Reset => return End::Reset,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Forward,
    ForwardTwice,
    Hold,
    Discard,
    Reset,
}

/// Decides a request's fate and registers what its response needs.
fn request_action(frame: &RawFrame, shared: &Shared, connection: &ConnectionState) -> Action {
    let counters = &shared.counters;
    let fault = shared.plan.lock().expect("plan lock").decide(frame.api_key, counters);
    let Some(fault) = fault else { return Action::Forward };
    let awaiting = |pending| {
        let registered = connection.expect_response(frame.correlation_id, pending);
        if !registered {
            bump(&counters.faults_skipped);
        }
        registered
    };
    match fault {
        Fault::DropRequest => {
            bump(&counters.requests_dropped);
            Action::Discard
        }
        Fault::DropResponse => {
            awaiting(Pending::Drop);
            Action::Forward
        }
        Fault::DuplicateRequest => {
            if awaiting(Pending::Duplicate { forwarded: false }) {
                bump(&counters.requests_duplicated);
                Action::ForwardTwice
            } else {
                Action::Forward
            }
        }
        Fault::DelayRequest => Action::Hold,
        Fault::DelayResponse => {
            awaiting(Pending::Delay);
            Action::Forward
        }
        Fault::ResetBeforeForward => {
            bump(&counters.resets_before_forward);
            Action::Reset
        }
        Fault::ResetAfterForward => {
            awaiting(Pending::Reset);
            Action::Forward
        }
    }
}

/// Decides a response's fate from the fault its request got.
fn response_action(frame: &RawFrame, counters: &Counters, connection: &ConnectionState) -> Action {
    match connection.take_response(frame.correlation_id) {
        None | Some(Pending::Duplicate { forwarded: false }) => Action::Forward,
        Some(Pending::Duplicate { forwarded: true }) => {
            bump(&counters.duplicate_responses_swallowed);
            Action::Discard
        }
        Some(Pending::Drop) => {
            bump(&counters.responses_dropped);
            Action::Discard
        }
        Some(Pending::Delay) => Action::Hold,
        Some(Pending::Reset) => {
            bump(&counters.resets_after_forward);
            Action::Reset
        }
    }
}

fn count_forwarded(direction: Direction, counters: &Counters) {
    match direction {
        Direction::Request => bump(&counters.requests_forwarded),
        Direction::Response => bump(&counters.responses_forwarded),
    }
}

/// Writes a whole frame, unless the connection is reset first.
async fn write(writer: &mut OwnedWriteHalf, frame: &RawFrame, reset: &CancellationToken) -> Result<(), ()> {
    tokio::select! {
        written = writer.write_all(&frame.bytes) => written.map_err(|_| ()),
        () = reset.cancelled() => Err(()),
    }
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
