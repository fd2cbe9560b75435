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
//! Failure: a failed fsync or write stops the partition. Every request of the group gets `LogError::Failed`, even those
//! written before the failure (their data was never fsynced), and so does every later request; nothing is retried.
//! A panic in the thread drops the receiver and every pending reply: waiting callers get [`LogError::AppenderGone`],
//! [`Appender::is_finished`] turns true (the broker watches it and exits), and [`Appender::shutdown`] re-raises the
//! panic. In release builds `panic = "abort"` takes the process down at once; restart recovers from disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ferry_protocol::RecordBatch;
use tokio::sync::{mpsc, oneshot};

use crate::config::{FsyncPolicy, LogConfig};
use crate::error::LogError;
use crate::log::{OffsetRange, PartitionLog};
use crate::reader::LogReader;

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
}

type Reply = oneshot::Sender<Result<AppendAck, LogError>>;

enum Command {
    Append { batches: Vec<RecordBatch>, reply: Reply },
    Shutdown,
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
        let (reply, receiver) = oneshot::channel();
        self.sender.send(Command::Append { batches, reply }).await.map_err(|_| self.closed_error())?;
        Ok(PendingAck { reply: receiver })
    }

    /// Queues an append, blocking the thread while the queue is full. Must not be called from async code.
    pub fn blocking_submit(&self, batches: Vec<RecordBatch>) -> Result<PendingAck, LogError> {
        let (reply, receiver) = oneshot::channel();
        self.sender.blocking_send(Command::Append { batches, reply }).map_err(|_| self.closed_error())?;
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
}

/// Settings the appender thread needs.
#[derive(Debug, Clone, Copy)]
struct GroupConfig {
    fsync: FsyncPolicy,
    group_bytes_max: u64,
    retention_check_interval: Duration,
}

impl Appender {
    /// Starts the appender thread (named `appender-<name>`) that owns `log`.
    ///
    /// `config` gives the queue bound, the group size limit, the fsync policy (it must be the log's) and the
    /// retention check interval.
    pub fn start<L: PartitionLog + 'static>(log: L, name: &str, config: &LogConfig) -> Result<Appender, LogError> {
        config.validate()?;
        if log.fsync_policy() != config.fsync {
            return Err(LogError::InvalidConfig { field: "fsync", reason: "differs from the log's fsync policy" });
        }
        let (sender, receiver) = mpsc::channel(config.append_queue_depth);
        let reader = log.reader();
        let group_config = GroupConfig {
            fsync: config.fsync,
            group_bytes_max: config.group_bytes_max,
            retention_check_interval: config.retention_check_interval,
        };
        let thread_name = format!("appender-{name}");
        let thread = thread::Builder::new()
            .name(thread_name.clone())
            .stack_size(APPENDER_STACK_BYTES)
            .spawn(move || AppenderLoop::new(log, receiver, group_config).run())
            .map_err(|e| LogError::io("spawn thread", thread_name, e))?;
        let handle = AppendHandle { sender, shutting_down: Arc::new(AtomicBool::new(false)) };
        Ok(Appender { handle, reader, thread: Some(thread) })
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

struct AppenderLoop<L> {
    log: L,
    receiver: mpsc::Receiver<Command>,
    config: GroupConfig,
    waker: Waker,
    last_sync: Instant,
    last_retention: Instant,
}

impl<L: PartitionLog> AppenderLoop<L> {
    fn new(log: L, receiver: mpsc::Receiver<Command>, config: GroupConfig) -> Self {
        let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
        let now = Instant::now();
        AppenderLoop { log, receiver, config, waker, last_sync: now, last_retention: now }
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

    fn run(mut self) -> Result<(), LogError> {
        loop {
            let first = match self.receive(Some(self.next_deadline())) {
                Received::Command(Command::Shutdown) | Received::Closed => break,
                Received::Command(Command::Append { batches, reply }) => (batches, reply),
                Received::Timeout => {
                    self.timers();
                    continue;
                }
            };
            let mut group_bytes: u64 = first.0.iter().map(|b| u64::from(b.len_bytes())).sum();
            let mut group = vec![first];
            let mut shutdown = false;
            while group_bytes < self.config.group_bytes_max {
                match self.receiver.try_recv() {
                    Ok(Command::Append { batches, reply }) => {
                        group_bytes += batches.iter().map(|b| u64::from(b.len_bytes())).sum::<u64>();
                        group.push((batches, reply));
                    }
                    Ok(Command::Shutdown) => {
                        shutdown = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group);
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
        self.log.close()
    }

    /// Appends every request of the group, syncs once (policy `always`), then replies to each.
    fn commit_group(&mut self, group: Vec<(Vec<RecordBatch>, Reply)>) {
        let mut appended: Vec<(Reply, Vec<OffsetRange>)> = Vec::with_capacity(group.len());
        let mut fatal: Option<Arc<LogError>> = None;
        for (mut batches, reply) in group {
            if let Some(cause) = &fatal {
                let _ = reply.send(Err(LogError::Failed { cause: Arc::clone(cause) }));
                continue;
            }
            match self.log.append(&mut batches) {
                Ok(ranges) => appended.push((reply, ranges)),
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
        let durability =
            if self.config.fsync == FsyncPolicy::Always { Durability::Fsynced } else { Durability::Written };
        for (reply, ranges) in appended {
            let result = match &fatal {
                // Written but never fsynced: no acknowledgement, whatever the policy promised.
                Some(cause) => Err(LogError::Failed { cause: Arc::clone(cause) }),
                None => Ok(AppendAck { ranges, durability }),
            };
            let _ = reply.send(result);
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
            let _ = self.log.sync();
            self.last_sync = now;
        }
        if self.log.take_rolled() || now >= self.last_retention + self.config.retention_check_interval {
            if let Err(error) = self.log.apply_retention() {
                tracing::warn!(%error, "retention failed; will retry at the next check");
            }
            self.last_retention = now;
        }
    }
}
