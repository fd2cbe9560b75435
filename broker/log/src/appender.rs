//! Group commit: one thread per partition owns the [`PartitionLog`], takes append requests from a bounded queue,
//! writes every request that is already waiting, fsyncs once for all of them, then answers each.
//!
//! Async produce handlers call [`AppendHandle::append`]: it waits for room in the bounded tokio channel (back-pressure)
//! and then for the oneshot reply, never blocking the runtime. The appender thread is a plain `std::thread` that waits
//! on the channel by polling it with a waker that unparks the thread (`park_timeout` gives the deadline an idle
//! partition needs for interval syncs and retention checks), so this crate runs no async runtime.
//!
//! Per group, with policy `always`: append every request (each request's batches are one vectored write), then one
//! `sync`, then reply `Durability::Fsynced` to every request whose batches were appended. With `interval` and `never`
//! the replies (`Durability::Written`) follow the write; `interval` syncs when the interval has passed, also when idle.
//!
//! Idempotent producers: a request whose one batch carries a producer id is first checked against the partition's
//! dedup table ([`crate::producers::ProducerTable`]), in the same thread and order that assigns offsets: a new batch is
//! appended and recorded at once (so a later request of the same group sees it), a retry of a batch already written is
//! answered with the original offsets (`duplicate`) after the same sync as the group's appends, and a refused batch is
//! answered with [`LogError::Producer`] and changes nothing. The table is rebuilt at start from the last snapshot and
//! the log after it, and snapshotted after syncs (see [`Appender::start_with_producers`]).
//!
//! Message-id dedup (a partition started with [`crate::dedup::DedupSetup`]): each request's records are checked
//! against the partition's dedup keys in the same step; duplicates are dropped and reported in
//! [`AppendAck::dedup_dropped`], and the group's new keys are indexed after its sync, before the replies (see
//! [`crate::dedup`]).
//!
//! Failure: a failed fsync or write stops the partition. Every request of the group gets `LogError::Failed`, even those
//! written before the failure (their data was never fsynced), and so does every later request; nothing is retried.
//! A panic in the thread drops the receiver and every pending reply: waiting callers get [`LogError::AppenderGone`],
//! [`Appender::is_finished`] turns true (the broker watches it and exits), and [`Appender::shutdown`] re-raises the
//! panic. In release builds `panic = "abort"` takes the process down at once; restart recovers from disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ferry_protocol::RecordBatch;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Clock, FsyncPolicy, LogConfig};
use crate::dedup::{DedupReplayReport, DedupState, DroppedRecord};
use crate::error::LogError;
use crate::log::{OffsetRange, PartitionLog};
use crate::producers::{
    ProducerEntry, ProducerError, ProducerListing, ProducerSetup, ProducerStateConfig, ProducerTable, RebuildReport,
    SequenceCheck, SnapshotSink, rebuild,
};
use crate::reader::{LogReader, LogStatus};

/// Stack of an appender thread: it runs no deep recursion, only the log's bookkeeping.
const APPENDER_STACK_BYTES: usize = 512 * 1024;

/// What an acknowledgement guarantees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The batches were fsynced before the reply: they survive a power loss.
    Fsynced,
    /// The batches were written (in the page cache): they survive a process crash, not a power loss.
    Written,
}

/// The reply to a successful append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendAck {
    /// The offsets assigned to each batch, in request order.
    pub ranges: Vec<OffsetRange>,
    /// What the acknowledgement guarantees.
    pub durability: Durability,
    /// The request was an idempotent producer's retry of a batch already written: nothing was written, and `ranges`
    /// holds the original batch's offsets (acknowledged with the same durability guarantee as a new append).
    pub duplicate: bool,
    /// Records dropped by message-id dedup, in request order. `ranges` then covers the batches that kept records
    /// (a batch whose records were all dropped has no range); the kept records have consecutive offsets.
    pub dedup_dropped: Vec<DroppedRecord>,
}

type Reply = oneshot::Sender<Result<AppendAck, LogError>>;

enum Command {
    Append {
        batches: Vec<RecordBatch>,
        reply: Reply,
        deadline: Option<Instant>,
    },
    /// A read of the dedup table, answered after every append queued before it.
    Query(TableQuery),
    Shutdown,
}

/// A read of the partition's dedup table.
enum TableQuery {
    /// One producer id's entry.
    Producer { producer_id: i64, reply: oneshot::Sender<Option<ProducerEntry>> },
    /// The entries of the lowest producer ids, at most `limit`.
    Listing { limit: usize, reply: oneshot::Sender<ProducerListing> },
}

/// An append that was queued; wait for its acknowledgement.
#[derive(Debug)]
pub struct PendingAck {
    reply: oneshot::Receiver<Result<AppendAck, LogError>>,
}

impl PendingAck {
    /// Waits for the acknowledgement (async).
    pub async fn wait(self) -> Result<AppendAck, LogError> {
        self.reply.await.map_err(|_| LogError::AppenderGone)?
    }

    /// Waits for the acknowledgement, blocking the thread. Must not be called from async code.
    pub fn blocking_wait(self) -> Result<AppendAck, LogError> {
        self.reply.blocking_recv().map_err(|_| LogError::AppenderGone)?
    }
}

/// A cloneable handle for submitting appends to one partition's appender.
///
/// Requests submitted through one handle, one after the other, get increasing offsets in submission order.
#[derive(Debug, Clone)]
pub struct AppendHandle {
    sender: mpsc::Sender<Command>,
    shutting_down: Arc<AtomicBool>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Append { batches, .. } => write!(f, "Append({} batches)", batches.len()),
            Command::Query(TableQuery::Producer { producer_id, .. }) => write!(f, "Producer({producer_id})"),
            Command::Query(TableQuery::Listing { limit, .. }) => write!(f, "Producers(limit {limit})"),
            Command::Shutdown => f.write_str("Shutdown"),
        }
    }
}

impl AppendHandle {
    fn closed_error(&self) -> LogError {
        if self.shutting_down.load(Ordering::Acquire) { LogError::Closed } else { LogError::AppenderGone }
    }

    /// Queues an append, waiting (async) while the queue is full.
    pub async fn submit(&self, batches: Vec<RecordBatch>) -> Result<PendingAck, LogError> {
        self.submit_until(batches, None).await
    }

    /// Queues an append that must not be applied after `deadline`: if the appender takes it later, it writes nothing
    /// and answers [`LogError::DeadlinePassed`]. So a request its sender has given up on (and may resend under
    /// another identity) can never be written afterwards.
    pub async fn submit_until(
        &self,
        batches: Vec<RecordBatch>,
        deadline: Option<Instant>,
    ) -> Result<PendingAck, LogError> {
        let (reply, receiver) = oneshot::channel();
        self.sender.send(Command::Append { batches, reply, deadline }).await.map_err(|_| self.closed_error())?;
        Ok(PendingAck { reply: receiver })
    }

    /// Queues an append, blocking the thread while the queue is full. Must not be called from async code.
    pub fn blocking_submit(&self, batches: Vec<RecordBatch>) -> Result<PendingAck, LogError> {
        let (reply, receiver) = oneshot::channel();
        self.sender
            .blocking_send(Command::Append { batches, reply, deadline: None })
            .map_err(|_| self.closed_error())?;
        Ok(PendingAck { reply: receiver })
    }

    /// Appends and waits for the acknowledgement (async): offsets assigned, durability per the fsync policy.
    pub async fn append(&self, batches: Vec<RecordBatch>) -> Result<AppendAck, LogError> {
        self.submit(batches).await?.wait().await
    }

    /// Appends and waits for the acknowledgement, blocking the thread. Must not be called from async code.
    pub fn blocking_append(&self, batches: Vec<RecordBatch>) -> Result<AppendAck, LogError> {
        self.blocking_submit(batches)?.blocking_wait()
    }

    /// The partition's dedup-table entry for `producer_id` (its epoch, last batches and next sequence), as it stands
    /// after every append queued before this call. The transaction coordinator asks it to number the batches it
    /// appends at commit, and to find where an interrupted commit stopped.
    pub async fn producer_entry(&self, producer_id: i64) -> Result<Option<ProducerEntry>, LogError> {
        let (reply, receiver) = oneshot::channel();
        let query = TableQuery::Producer { producer_id, reply };
        self.sender.send(Command::Query(query)).await.map_err(|_| self.closed_error())?;
        receiver.await.map_err(|_| LogError::AppenderGone)
    }

    /// The partition's dedup-table entries of the `limit` lowest producer ids and how many it tracks, as they stand
    /// after every append queued before this call (for operators: `ferry producers`).
    pub async fn producer_listing(&self, limit: usize) -> Result<ProducerListing, LogError> {
        let (reply, receiver) = oneshot::channel();
        let query = TableQuery::Listing { limit, reply };
        self.sender.send(Command::Query(query)).await.map_err(|_| self.closed_error())?;
        receiver.await.map_err(|_| LogError::AppenderGone)
    }

    /// Requests waiting in the queue (not yet taken by the appender).
    pub fn queued(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }
}

/// The appender of one partition: its thread, a handle to submit appends, and a reader.
///
/// Call [`Appender::shutdown`] to stop it. If it is dropped instead, the thread keeps serving the remaining
/// [`AppendHandle`]s and, once the last one is dropped, closes the log cleanly and exits on its own.
#[derive(Debug)]
pub struct Appender {
    handle: AppendHandle,
    reader: LogReader,
    thread: Option<JoinHandle<Result<(), LogError>>>,
    active_producers: Arc<AtomicUsize>,
    rebuilt: RebuildReport,
    dedup_replayed: Option<DedupReplayReport>,
}

/// Settings the appender thread needs.
#[derive(Debug, Clone, Copy)]
struct GroupConfig {
    fsync: FsyncPolicy,
    group_bytes_max: u64,
    retention_check_interval: Duration,
}

impl Appender {
    /// Starts the appender thread (named `appender-<name>`) that owns `log`, with default producer state settings,
    /// no snapshots, and the producer state rebuilt from the whole log.
    ///
    /// `config` gives the queue bound, the group size limit, the fsync policy (it must be the log's) and the
    /// retention check interval.
    pub fn start<L: PartitionLog + 'static>(log: L, name: &str, config: &LogConfig) -> Result<Appender, LogError> {
        Appender::start_with_producers(log, name, config, ProducerSetup::default())
    }

    /// Starts the appender thread like [`Appender::start`], first rebuilding the producer state (the dedup table of
    /// idempotent producers) from `producers.snapshot` and the log after it (see [`rebuild`]); the thread stores new
    /// snapshots in `producers.sink` after syncs, at most every `snapshot_interval` or `snapshot_bytes`, and at close.
    /// With `producers.dedup`, it first indexes the dedup keys the index may have missed ([`crate::dedup`]'s replay);
    /// an index that fails then fails the start ([`LogError::DedupIndex`]).
    pub fn start_with_producers<L: PartitionLog + 'static>(
        log: L,
        name: &str,
        config: &LogConfig,
        producers: ProducerSetup,
    ) -> Result<Appender, LogError> {
        config.validate()?;
        if log.fsync_policy() != config.fsync {
            return Err(LogError::InvalidConfig { field: "fsync", reason: "differs from the log's fsync policy" });
        }
        let (sender, receiver) = mpsc::channel(config.append_queue_depth);
        let reader = log.reader();
        let (table, rebuilt) = rebuild(&log, &producers)?;
        if rebuilt.batches_replayed > 0 || rebuilt.producers > 0 {
            tracing::info!(
                partition = name,
                from_snapshot = rebuilt.from_snapshot,
                replayed_from = rebuilt.replayed_from,
                batches = rebuilt.batches_replayed,
                producers = rebuilt.producers,
                "producer state rebuilt"
            );
        }
        // Store what the replay rebuilt at once: a broker that crashes again before its next periodic snapshot
        // (a crash loop, or a partition written slowly) would otherwise replay an ever longer log at every start.
        // Everything recovery kept is durable, so the snapshot's offset is the log's end.
        if rebuilt.batches_replayed > 0
            && let Some(sink) = &producers.sink
            && let Err(error) = sink.save(&table.snapshot(log.end_offset()))
        {
            tracing::warn!(partition = name, %error, "storing the rebuilt producer state failed; the next start replays again");
        }
        let dedup_replayed = match &producers.dedup {
            Some(setup) => {
                let report = crate::dedup::replay(&log, setup, producers.clock.now_ms())?;
                if report.keys_indexed > 0 {
                    tracing::info!(
                        partition = name,
                        replayed_from = report.replayed_from,
                        keys = report.keys_indexed,
                        "dedup keys re-indexed from the log"
                    );
                }
                Some(report)
            }
            None => None,
        };
        let active_producers = Arc::new(AtomicUsize::new(table.len()));
        let group_config = GroupConfig {
            fsync: config.fsync,
            group_bytes_max: config.group_bytes_max,
            retention_check_interval: config.retention_check_interval,
        };
        let state = ProducerState {
            table,
            config: producers.config,
            sink: producers.sink,
            clock: producers.clock,
            active: Arc::clone(&active_producers),
            last_snapshot: Instant::now(),
            bytes_since_snapshot: 0,
            snapshot_due: false,
            dedup: producers.dedup.as_ref().map(|setup| DedupState::new(setup, log.end_offset())),
        };
        let thread_name = format!("appender-{name}");
        let thread = thread::Builder::new()
            .name(thread_name.clone())
            .stack_size(APPENDER_STACK_BYTES)
            .spawn(move || AppenderLoop::new(log, receiver, group_config, state).run())
            .map_err(|e| LogError::io("spawn thread", thread_name, e))?;
        let handle = AppendHandle { sender, shutting_down: Arc::new(AtomicBool::new(false)) };
        Ok(Appender { handle, reader, thread: Some(thread), active_producers, rebuilt, dedup_replayed })
    }

    /// Producer ids the partition's dedup table tracks now.
    pub fn active_producers(&self) -> usize {
        self.active_producers.load(Ordering::Relaxed)
    }

    /// A shared counter of the producer ids the partition tracks, for gauges.
    pub fn active_producers_counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.active_producers)
    }

    /// What rebuilding the producer state at start did.
    pub fn rebuild_report(&self) -> RebuildReport {
        self.rebuilt
    }

    /// What the message-id dedup replay at start did (`None`: the partition does not deduplicate by key).
    pub fn dedup_replay_report(&self) -> Option<DedupReplayReport> {
        self.dedup_replayed
    }

    /// A handle for submitting appends (clone it for each producer connection).
    pub fn handle(&self) -> AppendHandle {
        self.handle.clone()
    }

    /// A reader of the log.
    pub fn reader(&self) -> LogReader {
        self.reader.clone()
    }

    /// Whether the thread has exited. Before `shutdown`, true means it died (a panic): the broker should stop.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops taking requests, lets the appender finish what is queued before this call (appended, synced, answered),
    /// answers later requests with [`LogError::Closed`], closes the log cleanly (fsync, clean checkpoint) and joins
    /// the thread. Blocks: call it from a blocking context. Re-raises a panic of the appender thread.
    pub fn shutdown(mut self) -> Result<(), LogError> {
        self.handle.shutting_down.store(true, Ordering::Release);
        // If the thread is gone, the send fails and the join below reports why.
        let _ = self.handle.sender.blocking_send(Command::Shutdown);
        let Some(thread) = self.thread.take() else { return Ok(()) };
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Wakes the appender thread when the channel has something for it.
struct ThreadWaker(thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

enum Received {
    Command(Command),
    Timeout,
    Closed,
}

/// The producer state the appender thread owns: the dedup table and when to snapshot it.
#[derive(Debug)]
struct ProducerState {
    table: ProducerTable,
    config: ProducerStateConfig,
    sink: Option<Arc<dyn SnapshotSink>>,
    clock: Arc<dyn Clock>,
    active: Arc<AtomicUsize>,
    last_snapshot: Instant,
    bytes_since_snapshot: u64,
    /// The table changed since the last snapshot.
    snapshot_due: bool,
    /// Message-id dedup, if the partition has a window.
    dedup: Option<DedupState>,
}

impl ProducerState {
    /// Stores a snapshot at `offset` if one is due (or `force`d) and there is somewhere to store it.
    fn maybe_snapshot(&mut self, offset: u64, force: bool) {
        let Some(sink) = &self.sink else { return };
        let due = self.snapshot_due
            && (force
                || self.bytes_since_snapshot >= self.config.snapshot_bytes
                || self.last_snapshot.elapsed() >= self.config.snapshot_interval);
        if !due {
            return;
        }
        match sink.save(&self.table.snapshot(offset)) {
            Ok(()) => {
                self.snapshot_due = false;
                self.bytes_since_snapshot = 0;
            }
            Err(error) => tracing::warn!(%error, offset, "storing the producer snapshot failed; will retry"),
        }
        self.last_snapshot = Instant::now();
    }

    fn publish(&self) {
        self.active.store(self.table.len(), Ordering::Relaxed);
    }
}

struct AppenderLoop<L> {
    log: L,
    status: LogReader,
    receiver: mpsc::Receiver<Command>,
    config: GroupConfig,
    producers: ProducerState,
    waker: Waker,
    last_sync: Instant,
    last_retention: Instant,
}

/// The one batch of an idempotent producer's request, if it is one (the produce handler sends such a batch alone).
fn idempotent_batch(batches: &[RecordBatch]) -> Option<&RecordBatch> {
    match batches {
        [batch] if batch.header().producer_id >= 0 => Some(batch),
        _ => None,
    }
}

/// What the group does with one request.
enum Plan {
    Append,
    Duplicate(OffsetRange),
}

impl<L: PartitionLog> AppenderLoop<L> {
    fn new(log: L, receiver: mpsc::Receiver<Command>, config: GroupConfig, producers: ProducerState) -> Self {
        let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
        let now = Instant::now();
        let status = log.reader();
        AppenderLoop { log, status, receiver, config, producers, waker, last_sync: now, last_retention: now }
    }

    /// Checks an idempotent producer's batch against the dedup table (see [`crate::producers`]).
    fn plan(&self, batches: &[RecordBatch]) -> Result<Plan, LogError> {
        if batches.iter().skip(1).any(|batch| batch.header().producer_id >= 0) {
            return Err(ProducerError::InvalidFields { reason: "a batch with a producer id must be sent alone" }.into());
        }
        let Some(batch) = idempotent_batch(batches) else { return Ok(Plan::Append) };
        let checked = self.producers.table.check(batch.header());
        if let Err(error) = &checked {
            let header = batch.header();
            tracing::debug!(producer_id = header.producer_id, epoch = header.producer_epoch,
                base_sequence = header.base_sequence, records = header.record_count,
                entry = ?self.producers.table.get(header.producer_id), %error, "idempotent batch refused");
        }
        match checked? {
            SequenceCheck::Append => Ok(Plan::Append),
            SequenceCheck::Duplicate { first_offset, last_offset } => {
                // A duplicate is answered like an append: only while the partition could still acknowledge one.
                match self.status.status() {
                    LogStatus::Open => Ok(Plan::Duplicate(OffsetRange { first: first_offset, last: last_offset })),
                    LogStatus::Damaged(damage) => Err(LogError::Damaged { damage }),
                    LogStatus::Failed(cause) => Err(LogError::Failed { cause }),
                    LogStatus::Closed => Err(LogError::Closed),
                }
            }
        }
    }

    /// Waits for the next command until `deadline` (forever with `None`).
    fn receive(&mut self, deadline: Option<Instant>) -> Received {
        let mut context = Context::from_waker(&self.waker);
        loop {
            match self.receiver.poll_recv(&mut context) {
                Poll::Ready(Some(command)) => return Received::Command(command),
                Poll::Ready(None) => return Received::Closed,
                Poll::Pending => {}
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Received::Timeout;
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let retention = self.last_retention + self.config.retention_check_interval;
        match self.config.fsync {
            FsyncPolicy::Interval(interval) if self.log.unsynced_bytes() > 0 => {
                retention.min(self.last_sync + interval)
            }
            _ => retention,
        }
    }

    /// Answers a read of the dedup table (the asker may have gone: then nobody wants the answer).
    fn answer(&self, query: TableQuery) {
        match query {
            TableQuery::Producer { producer_id, reply } => {
                let _ = reply.send(self.producers.table.get(producer_id).cloned());
            }
            TableQuery::Listing { limit, reply } => {
                let _ = reply.send(self.producers.table.listing(limit));
            }
        }
    }

    fn run(mut self) -> Result<(), LogError> {
        loop {
            let first = match self.receive(Some(self.next_deadline())) {
                Received::Command(Command::Shutdown) | Received::Closed => break,
                Received::Command(Command::Append { batches, reply, deadline }) => (batches, reply, deadline),
                Received::Command(Command::Query(query)) => {
                    self.answer(query);
                    continue;
                }
                Received::Timeout => {
                    self.timers();
                    continue;
                }
            };
            let mut group_bytes: u64 = first.0.iter().map(|b| u64::from(b.len_bytes())).sum();
            let mut group = vec![first];
            let mut shutdown = false;
            // A query that arrives behind appends of this group is answered once they are applied.
            let mut query = None;
            while group_bytes < self.config.group_bytes_max {
                match self.receiver.try_recv() {
                    Ok(Command::Append { batches, reply, deadline }) => {
                        group_bytes += batches.iter().map(|b| u64::from(b.len_bytes())).sum::<u64>();
                        group.push((batches, reply, deadline));
                    }
                    Ok(Command::Query(received)) => {
                        query = Some(received);
                        break;
                    }
                    Ok(Command::Shutdown) => {
                        shutdown = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group);
            if let Some(query) = query {
                self.answer(query);
            }
            self.timers();
            if shutdown {
                break;
            }
        }
        self.receiver.close();
        while let Ok(command) = self.receiver.try_recv() {
            if let Command::Append { reply, .. } = command {
                let _ = reply.send(Err(LogError::Closed));
            }
        }
        self.log.close()?;
        // After the close's sync: the snapshot covers everything, so the next start replays nothing.
        self.producers.maybe_snapshot(self.log.end_offset(), true);
        Ok(())
    }

    /// Appends every request of the group, syncs once (policy `always`), then replies to each.
    fn commit_group(&mut self, group: Vec<(Vec<RecordBatch>, Reply, Option<Instant>)>) {
        let mut appended: Vec<(Reply, Vec<OffsetRange>, bool, Vec<DroppedRecord>)> = Vec::with_capacity(group.len());
        let mut fatal: Option<Arc<LogError>> = None;
        let now = Instant::now();
        let now_ms = self.producers.clock.now_ms();
        if let Some(dedup) = self.producers.dedup.as_mut()
            && dedup.retry_due()
        {
            // Entries whose insert failed belong to acknowledged records, all below the current end.
            dedup.flush(self.log.end_offset(), now_ms);
        }
        for (mut batches, reply, deadline) in group {
            if let Some(cause) = &fatal {
                let _ = reply.send(Err(LogError::Failed { cause: Arc::clone(cause) }));
                continue;
            }
            if deadline.is_some_and(|deadline| deadline <= now) {
                let _ = reply.send(Err(LogError::DeadlinePassed));
                continue;
            }
            match self.plan(&batches) {
                Ok(Plan::Append) => {}
                Ok(Plan::Duplicate(range)) => {
                    // Answered with the group: after the sync that makes the original durable, if it was in this group.
                    appended.push((reply, vec![range], true, Vec::new()));
                    continue;
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                    continue;
                }
            }
            let end_before = self.log.end_offset();
            let mut dedup_plan = None;
            if let Some(dedup) = &self.producers.dedup {
                match dedup.plan(batches, end_before, now_ms) {
                    Ok(mut plan) => {
                        batches = std::mem::take(&mut plan.batches);
                        dedup_plan = Some(plan);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                        continue;
                    }
                }
            }
            let dropped = dedup_plan.as_mut().map(|plan| std::mem::take(&mut plan.dropped)).unwrap_or_default();
            if batches.is_empty() {
                // Every record was a duplicate: nothing to write, answered after the group's sync.
                appended.push((reply, Vec::new(), false, dropped));
                continue;
            }
            match self.log.append(&mut batches) {
                Ok(ranges) => {
                    // Recorded as soon as it is written, so a later request of this group sees it; if the sync fails,
                    // the partition stops and its state is rebuilt from what is on disk.
                    if let Some(batch) = idempotent_batch(&batches) {
                        self.producers.table.record(batch.header(), self.producers.clock.now_ms());
                        self.producers.snapshot_due = true;
                    }
                    self.producers.bytes_since_snapshot +=
                        batches.iter().map(|batch| u64::from(batch.len_bytes())).sum::<u64>();
                    if let (Some(dedup), Some(mut plan)) = (self.producers.dedup.as_mut(), dedup_plan) {
                        let first = ranges.first().map_or(end_before, |range| range.first);
                        assert_eq!(first, end_before, "dedup planned offsets from the log end");
                        dedup.record(plan.take_entries(), now_ms);
                    }
                    appended.push((reply, ranges, false, dropped));
                }
                Err(error) if error.is_fatal() => {
                    let cause = match error {
                        LogError::Failed { cause } => cause,
                        other => Arc::new(other),
                    };
                    let _ = reply.send(Err(LogError::Failed { cause: Arc::clone(&cause) }));
                    fatal = Some(cause);
                }
                // Not fatal (disk full, damaged, closed, too large): this request fails, the others go on.
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            }
        }
        if appended.is_empty() {
            return;
        }
        if fatal.is_none() && self.config.fsync == FsyncPolicy::Always {
            if let Err(error) = self.log.sync() {
                fatal = Some(match error {
                    LogError::Failed { cause } => cause,
                    other => Arc::new(other),
                });
            }
            self.last_sync = Instant::now();
        }
        if let Some(dedup) = self.producers.dedup.as_mut() {
            match fatal {
                // Nothing of the group is acknowledged; the restart re-indexes whatever reached the disk.
                Some(_) => dedup.discard_group(),
                None => dedup.flush(self.log.end_offset(), now_ms),
            }
        }
        let durability =
            if self.config.fsync == FsyncPolicy::Always { Durability::Fsynced } else { Durability::Written };
        for (reply, ranges, duplicate, dedup_dropped) in appended {
            let result = match &fatal {
                // Written but never fsynced: no acknowledgement, whatever the policy promised.
                Some(cause) => Err(LogError::Failed { cause: Arc::clone(cause) }),
                None => Ok(AppendAck { ranges, durability, duplicate, dedup_dropped }),
            };
            let _ = reply.send(result);
        }
        self.producers.publish();
        if fatal.is_none() && self.config.fsync == FsyncPolicy::Always {
            self.producers.maybe_snapshot(self.log.end_offset(), false);
        }
    }

    /// Interval syncs and retention checks.
    fn timers(&mut self) {
        let now = Instant::now();
        if let FsyncPolicy::Interval(interval) = self.config.fsync
            && self.log.unsynced_bytes() > 0
            && now >= self.last_sync + interval
        {
            // A failure is recorded by the log (every later request fails); nothing to answer here.
            if self.log.sync().is_ok() {
                self.producers.maybe_snapshot(self.log.end_offset(), false);
            }
            self.last_sync = now;
        }
        if self.config.fsync == FsyncPolicy::Never {
            // Nothing is ever synced by the appender: a snapshot may run ahead of what survives a power loss, which
            // the rebuild detects (offset past the end) and answers with a full replay.
            self.producers.maybe_snapshot(self.log.end_offset(), false);
        }
        if let Some(dedup) = self.producers.dedup.as_mut()
            && dedup.retry_due()
        {
            dedup.flush(self.log.end_offset(), self.producers.clock.now_ms());
        }
        let expiration_ms = i64::try_from(self.producers.config.expiration.as_millis()).unwrap_or(i64::MAX);
        if self.producers.table.expire(self.producers.clock.now_ms(), expiration_ms) > 0 {
            self.producers.snapshot_due = true;
            self.producers.publish();
        }
        if self.log.take_rolled() || now >= self.last_retention + self.config.retention_check_interval {
            if let Err(error) = self.log.apply_retention() {
                tracing::warn!(%error, "retention failed; will retry at the next check");
            }
            self.last_retention = now;
        }
    }
}
