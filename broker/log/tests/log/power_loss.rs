//! Power loss at every I/O step (issue 7, T2).
//!
//! Per seed, a small seeded workload runs on [`SimFs`] twice: once to count its I/O steps, then again with a crash
//! point at a seeded step `k` of that count (so every step of append, roll, index write, checkpoint write, producer
//! snapshot, clean restart and transaction apply gets hit), followed by a power loss (torn or not). The partition is
//! then reopened and checked against what the workload was told:
//! - the log is a prefix of the batches written, byte for byte at their offsets (dense offsets, no hole followed by
//!   surviving data), with no damage reported and a checkpoint whose durable end is at most the recovered end;
//! - `always`: every acknowledged batch (all acknowledged as fsynced) is there;
//! - `interval:100`: a batch lost was acknowledged at most 100 ms (clock time) before the crash;
//! - the producer table rebuilt from the snapshot and the log agrees with the log: a snapshot ahead of the log is never
//!   used, the retry of any surviving batch is a duplicate with its original offsets, a lost batch is appended again,
//!   each producer's next sequence is accepted;
//! - an interrupted transaction apply, re-applied as the coordinator does it (from the producer's next sequence), is a
//!   no-op for what landed and completes what did not, each batch exactly once;
//! - the partition accepts appends afterwards.
//!
//! The `always` workload runs through the real [`Appender`] with a snapshot sink on the same simulated disk; the
//! `interval` one drives a [`Log`] directly and plays the appender's interval timer on a [`ManualClock`], so that the
//! 100 ms are clock time and the run is reproducible.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{IoSlice, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_log::checkpoint::{CHECKPOINT_FILE, Checkpoint};
use ferry_log::fs::{CrashMode, OpenMode, SimOp};
use ferry_log::producers::{ProducerEntry, ProducerSetup, ProducerSnapshot, ProducerStateConfig, SnapshotSink};
use ferry_log::{
    AppendAck, Appender, Clock, Durability, FsyncPolicy, Log, LogConfig, LogError, ManualClock, OffsetRange,
    PartitionLog, SimFs, Storage,
};
use ferry_protocol::RecordBatch;
use ferry_protocol::batch::ProducerFields;

use crate::common::{Rng, clock, for_each_seed, make_batch, read_all, seeds, small_config};

const PARTITION_DIR: &str = "/data/p";
const META_DIR: &str = "/data/meta";
/// The idempotent producers of the workload, and the transactional one whose commits are applied.
const PRODUCERS: [i64; 2] = [11, 12];
const TXN_PRODUCER: i64 = 100;
const INTERVAL: Duration = Duration::from_millis(100);

/// Producer snapshots stored like the broker's metadata store stores them (a synced RocksDB put: all or nothing,
/// durable when it returns), but on the simulated disk, so a crash can hit it and only what was made durable survives.
/// The file holds the index of the snapshot in `saved`, which stands for the value bytes.
#[derive(Debug)]
struct SimSink {
    fs: SimFs,
    saved: Mutex<Vec<ProducerSnapshot>>,
}

impl SimSink {
    fn path() -> PathBuf {
        Path::new(META_DIR).join("producers")
    }

    /// The snapshot a restart reads: the last one made durable.
    fn load(&self) -> Option<ProducerSnapshot> {
        let bytes = self.fs.read_file(&SimSink::path())?;
        let idx = u64::from_be_bytes(bytes.try_into().expect("an 8-byte index"));
        Some(self.saved.lock().expect("lock")[usize::try_from(idx).expect("fits")].clone())
    }
}

impl SnapshotSink for SimSink {
    fn save(&self, snapshot: &ProducerSnapshot) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let idx = {
            let mut saved = self.saved.lock().expect("lock");
            saved.push(snapshot.clone());
            u64::try_from(saved.len() - 1).expect("fits")
        };
        let temp = Path::new(META_DIR).join("producers.tmp");
        let file = self.fs.open(&temp, OpenMode::CreateOrOpen)?;
        file.truncate(0)?;
        file.append(&[IoSlice::new(&idx.to_be_bytes())])?;
        file.sync_data()?;
        self.fs.rename(&temp, &SimSink::path())?;
        self.fs.sync_dir(Path::new(META_DIR))?;
        Ok(())
    }
}

/// Polls a future to completion on this thread (the appender's handle is async; this crate runs no runtime).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

/// One step of a workload.
#[derive(Debug, Clone)]
enum Action {
    /// One request of plain batches, as (records, value bytes).
    Plain(Vec<(u32, usize)>),
    /// The next batch of an idempotent producer.
    Idempotent { producer: usize, records: u32, value_bytes: usize },
    /// The retry of an idempotent producer's last batch.
    Retry { producer: usize },
    /// Applying a committed transaction's batches to this partition.
    Transaction(Vec<(u32, usize)>),
    /// A clean shutdown and a restart.
    Restart,
}

fn batch_spec(rng: &mut Rng) -> (u32, usize) {
    let records = u32::try_from(rng.below(1..4)).expect("small");
    let value_bytes = if rng.chance(1, 3) { rng.index(300..1300) } else { rng.index(0..200) };
    (records, value_bytes)
}

/// 6 to 13 actions; values up to 1.3 KB against 4 KiB segments and a 256-byte index interval, so that rolls and index
/// entries are frequent.
fn workload(rng: &mut Rng, with_producers: bool) -> Vec<(Action, Duration)> {
    let n_actions = rng.index(6..14);
    (0..n_actions)
        .map(|_| {
            let pick = match (with_producers, rng.chance(1, 6)) {
                (true, _) => rng.below(0..10),
                (false, restart) => 9 * u64::from(restart),
            };
            let action = match pick {
                0..=1 => Action::Plain((0..rng.below(1..4)).map(|_| batch_spec(rng)).collect()),
                2..=4 => {
                    let (records, value_bytes) = batch_spec(rng);
                    Action::Idempotent { producer: rng.index(0..PRODUCERS.len()), records, value_bytes }
                }
                5 => Action::Retry { producer: rng.index(0..PRODUCERS.len()) },
                6..=7 => Action::Transaction((0..rng.below(1..4)).map(|_| batch_spec(rng)).collect()),
                _ => Action::Restart,
            };
            // Mostly quick succession, sometimes a pause longer than the sync interval.
            let pause = if rng.chance(1, 5) { rng.below(100..400) } else { rng.below(0..40) };
            (action, Duration::from_millis(pause))
        })
        .collect()
}

/// A batch the workload tried to write, at the offset it must have if it is in the log.
#[derive(Debug, Clone)]
struct Attempt {
    first: u64,
    next: u64,
    /// The bytes the log must hold for it (the batch rebased to `first`).
    bytes: Bytes,
    /// The batch as sent, to send again.
    batch: RecordBatch,
    /// When it was acknowledged (clock ms), if it was.
    acked_ms: Option<i64>,
}

/// A transaction whose commit was decided: it must end up applied whatever crashes.
#[derive(Debug, Clone)]
struct Decided {
    start_sequence: i32,
    batches: Vec<RecordBatch>,
    applied: bool,
}

/// What the workload wrote and was told.
#[derive(Debug, Default)]
struct Model {
    attempts: Vec<Attempt>,
    transaction: Option<Decided>,
}

impl Model {
    fn end(&self) -> u64 {
        self.attempts.last().map_or(0, |a| a.next)
    }

    /// Records a batch about to be written; returns its index.
    fn attempt(&mut self, batch: &RecordBatch) -> usize {
        let first = self.end();
        let mut stored = batch.clone();
        stored.rebase(first).expect("small offsets");
        let next = stored.header().next_offset();
        self.attempts.push(Attempt { first, next, bytes: stored.into_bytes(), batch: batch.clone(), acked_ms: None });
        self.attempts.len() - 1
    }

    /// Checks an acknowledgement of the attempts from `from` on and marks them acknowledged at `now_ms`.
    fn acked(&mut self, from: usize, ranges: &[OffsetRange], now_ms: i64) {
        let attempts = &mut self.attempts[from..];
        assert_eq!(ranges.len(), attempts.len(), "one range per batch");
        for (attempt, range) in attempts.iter_mut().zip(ranges) {
            assert_eq!((range.first, range.next()), (attempt.first, attempt.next), "offsets assigned densely");
            attempt.acked_ms = Some(now_ms);
        }
    }
}

fn stamped(producer_id: i64, base_sequence: i32, (records, value_bytes): (u32, usize), fill: u8) -> RecordBatch {
    let mut batch = make_batch(records, value_bytes, 1_000, fill);
    batch.set_producer(ProducerFields { producer_id, producer_epoch: 0, base_sequence });
    batch
}

fn sequence_after(batch: &RecordBatch) -> i32 {
    batch.header().last_sequence() + 1
}

/// Where in the workload a crash point landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Append,
    Roll,
    Index,
    Checkpoint,
    Snapshot,
    Apply,
    Restart,
}

fn classify(op: SimOp, path: &Path, action: Option<&Action>) -> Phase {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if path.starts_with(META_DIR) {
        Phase::Snapshot
    } else if matches!(action, Some(Action::Transaction(_))) {
        Phase::Apply
    } else if matches!(action, None | Some(Action::Restart)) {
        Phase::Restart
    } else if name == CHECKPOINT_FILE {
        Phase::Checkpoint
    } else if op == SimOp::Create || op == SimOp::SyncDir || (op == SimOp::Sync && !name.ends_with(".log")) {
        Phase::Roll
    } else if name.ends_with("index") {
        Phase::Index
    } else {
        Phase::Append
    }
}

/// Figures of a suite run, printed to stderr.
#[derive(Debug, Default)]
struct Figures {
    seeds: u64,
    phases: BTreeMap<Phase, u64>,
    torn: u64,
    steps: u64,
    acked: u64,
    lost_unacked: u64,
    lost_acked: u64,
    max_lost_age_ms: i64,
    reapplied: u64,
    snapshot_used: u64,
    snapshot_ahead_ignored: u64,
}

impl Figures {
    fn print(&self, name: &str, elapsed: Duration) {
        let _ = writeln!(
            std::io::stderr(),
            "{name}: {} seeds in {:.1} s, {} I/O steps in the dry runs, crash points per phase {:?}, {} torn; \
             {} batches acknowledged, {} acknowledged lost (max age {} ms), {} unacknowledged lost; \
             {} transaction applies completed after the crash, producer snapshot used {} times, \
             ignored {} times for being ahead of the log",
            self.seeds,
            elapsed.as_secs_f64(),
            self.steps,
            self.phases,
            self.torn,
            self.acked,
            self.lost_acked,
            self.max_lost_age_ms,
            self.lost_unacked,
            self.reapplied,
            self.snapshot_used,
            self.snapshot_ahead_ignored,
        );
    }
}

/// The simulated partition: its disk, clock and configuration.
struct Partition {
    fs: SimFs,
    storage: Arc<dyn Storage>,
    config: LogConfig,
    clock: Arc<ManualClock>,
    sink: Arc<SimSink>,
}

impl Partition {
    fn new(seed: u64, fsync: FsyncPolicy) -> Partition {
        let fs = SimFs::new(seed);
        fs.create_dir_all(Path::new(META_DIR)).expect("a fresh disk");
        let sink = Arc::new(SimSink { fs: fs.clone(), saved: Mutex::new(Vec::new()) });
        let storage: Arc<dyn Storage> = Arc::new(fs.clone());
        Partition { fs, storage, config: small_config(fsync), clock: clock(), sink }
    }

    fn dir() -> PathBuf {
        PathBuf::from(PARTITION_DIR)
    }

    fn open_log(&self) -> Result<(Log, ferry_log::RecoveryReport), LogError> {
        Log::open(Arc::clone(&self.storage), Partition::dir(), self.config.clone(), self.clock.clone())
    }

    fn start(&self) -> Result<Appender, LogError> {
        self.start_on(self.open_log()?.0)
    }

    /// Starts the appender with the producer state rebuilt from the stored snapshot and `log`.
    fn start_on(&self, log: Log) -> Result<Appender, LogError> {
        let setup = ProducerSetup {
            // A snapshot after every sync that follows a producer's batch; never by time (reproducible runs).
            config: ProducerStateConfig {
                snapshot_bytes: 1,
                snapshot_interval: Duration::from_secs(3600),
                ..ProducerStateConfig::default()
            },
            snapshot: self.sink.load(),
            sink: Some(Arc::clone(&self.sink) as Arc<dyn SnapshotSink>),
            clock: self.clock.clone(),
            ..ProducerSetup::default()
        };
        Appender::start_with_producers(log, "p", &self.config, setup)
    }
}

fn append(appender: &Appender, batches: Vec<RecordBatch>) -> Result<AppendAck, LogError> {
    appender.handle().blocking_append(batches)
}

fn producer_entry(appender: &Appender, producer_id: i64) -> Option<ProducerEntry> {
    block_on(appender.handle().producer_entry(producer_id)).expect("appender answers")
}

/// Applies a decided transaction as the coordinator does: from where the producer's sequence says it stopped.
fn apply(appender: &Appender, model: &mut Model, now_ms: i64) -> Result<(), LogError> {
    let decided = model.transaction.clone().expect("a decided transaction");
    let applied = producer_entry(appender, TXN_PRODUCER)
        .map_or(0, |entry| i64::from(entry.next_sequence()) - i64::from(decided.start_sequence));
    let mut sequence_records = 0i64;
    for batch in &decided.batches {
        let records = i64::from(batch.record_count());
        if sequence_records + records <= applied {
            sequence_records += records;
            continue;
        }
        sequence_records += records;
        let idx = model.attempt(batch);
        let ack = append(appender, vec![batch.clone()])?;
        assert!(!ack.duplicate, "a batch past the producer's sequence is new");
        assert_eq!(ack.durability, Durability::Fsynced);
        model.acked(idx, &ack.ranges, now_ms);
    }
    model.transaction.as_mut().expect("checked").applied = true;
    Ok(())
}

/// Performs one action of the `always` workload on the running appender (`None` after a failed restart).
fn act(
    partition: &Partition,
    appender: &mut Option<Appender>,
    model: &mut Model,
    action: &Action,
    fill: u8,
) -> Result<(), LogError> {
    let now_ms = partition.clock.now_ms();
    if let Action::Restart = action {
        appender.take().expect("running").shutdown()?;
        *appender = Some(partition.start()?);
        return Ok(());
    }
    let appender = appender.as_ref().expect("running");
    match action {
        Action::Plain(specs) => {
            let batches: Vec<RecordBatch> =
                specs.iter().map(|&(records, value)| make_batch(records, value, now_ms, fill)).collect();
            let from = model.attempts.len();
            for batch in &batches {
                model.attempt(batch);
            }
            let ack = append(appender, batches)?;
            assert_eq!(ack.durability, Durability::Fsynced);
            model.acked(from, &ack.ranges, now_ms);
        }
        Action::Idempotent { producer, records, value_bytes } => {
            let producer_id = PRODUCERS[*producer];
            let sequence = producer_entry(appender, producer_id).map_or(0, |entry| entry.next_sequence());
            let batch = stamped(producer_id, sequence, (*records, *value_bytes), fill);
            let idx = model.attempt(&batch);
            let ack = append(appender, vec![batch])?;
            assert!(!ack.duplicate && ack.durability == Durability::Fsynced, "{ack:?}");
            model.acked(idx, &ack.ranges, now_ms);
        }
        Action::Retry { producer } => {
            let producer_id = PRODUCERS[*producer];
            if let Some(last) = model.attempts.iter().rev().find(|a| a.batch.header().producer_id == producer_id) {
                let range = OffsetRange { first: last.first, last: last.next - 1 };
                let ack = append(appender, vec![last.batch.clone()])?;
                assert!(ack.duplicate && ack.ranges == [range], "a retry gets the original offsets: {ack:?}");
                assert_eq!(ack.durability, Durability::Fsynced);
            }
        }
        Action::Transaction(specs) => {
            // The decision: the producer's next sequence, durable in the metadata store before the apply starts.
            let start_sequence = producer_entry(appender, TXN_PRODUCER).map_or(0, |entry| entry.next_sequence());
            let mut sequence = start_sequence;
            let batches = specs
                .iter()
                .map(|&spec| {
                    let batch = stamped(TXN_PRODUCER, sequence, spec, fill);
                    sequence = sequence_after(&batch);
                    batch
                })
                .collect();
            model.transaction = Some(Decided { start_sequence, batches, applied: false });
            apply(appender, model, now_ms)?;
        }
        Action::Restart => unreachable!("handled above"),
    }
    Ok(())
}

/// How a run ended.
#[derive(Debug)]
enum Ended {
    /// The workload finished, with a clean shutdown.
    Finished,
    /// The crash point stopped it during this action (`None`: while starting or shutting down).
    Crashed(Option<Action>),
}

/// Runs the `always` workload until it ends or the crash point stops it.
fn run_always(partition: &Partition, actions: &[(Action, Duration)], model: &mut Model) -> Ended {
    let mut appender = match partition.start() {
        Ok(appender) => Some(appender),
        Err(_) => return Ended::Crashed(None),
    };
    for (idx, (action, pause)) in actions.iter().enumerate() {
        partition.clock.advance(*pause);
        if let Err(error) = act(partition, &mut appender, model, action, u8::try_from(idx % 250).expect("small")) {
            assert!(partition.fs.crash_point().is_some(), "an error without a crash point: {error:?}");
            if let Some(appender) = appender {
                let _ = appender.shutdown();
            }
            return Ended::Crashed(Some(action.clone()));
        }
    }
    if let Err(error) = appender.expect("running").shutdown() {
        assert!(partition.fs.crash_point().is_some(), "a clean shutdown failed without a crash point: {error:?}");
        return Ended::Crashed(None);
    }
    Ended::Finished
}

/// Runs the `interval` workload on a [`Log`] (plain batches and restarts), playing the appender's timer: a sync as
/// soon as something written is `INTERVAL` older than the last sync, also between requests.
fn run_interval(partition: &Partition, actions: &[(Action, Duration)], model: &mut Model) -> Ended {
    let interval_ms = i64::try_from(INTERVAL.as_millis()).expect("small");
    let clock = &partition.clock;
    let mut last_sync_ms = clock.now_ms();
    let Ok((mut log, _)) = partition.open_log() else { return Ended::Crashed(None) };
    for (idx, (action, pause)) in actions.iter().enumerate() {
        let target_ms = clock.now_ms() + i64::try_from(pause.as_millis()).expect("small");
        let result = (|| {
            if log.unsynced_bytes() > 0 && last_sync_ms + interval_ms <= target_ms {
                clock.set(clock.now_ms().max(last_sync_ms + interval_ms));
                log.sync()?;
                last_sync_ms = clock.now_ms();
            }
            clock.set(target_ms);
            let now_ms = clock.now_ms();
            match action {
                Action::Plain(specs) => {
                    let fill = u8::try_from(idx % 250).expect("small");
                    let mut batches: Vec<RecordBatch> =
                        specs.iter().map(|&(records, value)| make_batch(records, value, now_ms, fill)).collect();
                    let from = model.attempts.len();
                    for batch in &batches {
                        model.attempt(batch);
                    }
                    let ranges = log.append(&mut batches)?;
                    model.acked(from, &ranges, now_ms);
                    if log.unsynced_bytes() > 0 && now_ms >= last_sync_ms + interval_ms {
                        log.sync()?;
                        last_sync_ms = now_ms;
                    }
                }
                Action::Restart => {
                    log.close()?;
                    log = partition.open_log()?.0;
                    last_sync_ms = now_ms;
                }
                other => unreachable!("not in an interval workload: {other:?}"),
            }
            Ok::<(), LogError>(())
        })();
        if let Err(error) = result {
            assert!(partition.fs.crash_point().is_some(), "an error without a crash point: {error:?}");
            return Ended::Crashed(Some(action.clone()));
        }
    }
    if let Err(error) = log.close() {
        assert!(partition.fs.crash_point().is_some(), "a clean close failed without a crash point: {error:?}");
        return Ended::Crashed(None);
    }
    Ended::Finished
}

/// Models the power loss, reopens the partition and checks what the log kept against the model (see the module
/// docs); drops the lost attempts from the model and returns the reopened log and the lost attempts.
fn recover(partition: &Partition, model: &mut Model, mode: CrashMode, figures: &mut Figures) -> (Log, Vec<Attempt>) {
    let crash_ms = partition.clock.now_ms();
    partition.fs.crash(mode);
    let checkpoint_bytes = partition.fs.read_file(&Partition::dir().join(CHECKPOINT_FILE));
    let checkpoint = checkpoint_bytes.and_then(|bytes| Checkpoint::decode(&bytes).ok());
    let (log, report) = partition.open_log().expect("the partition reopens after a power loss");
    assert!(report.damaged.is_none(), "a power loss never damages the log: {report:?}");
    if let Some(checkpoint) = checkpoint {
        assert!(checkpoint.durable.next_offset <= report.end_offset, "checkpoint {checkpoint:?} beyond {report:?}");
    }
    let stored = read_all(&log.reader());
    assert!(stored.len() <= model.attempts.len(), "nothing appears that was not written");
    for (batch, attempt) in stored.iter().zip(&model.attempts) {
        assert_eq!(batch.as_bytes(), &attempt.bytes, "batch at offset {} is intact", attempt.first);
    }
    let end = stored.last().map_or(0, |batch| batch.header().next_offset());
    assert_eq!((log.end_offset(), log.start_offset()), (end, 0), "a dense prefix from offset 0");
    let lost = model.attempts.split_off(stored.len());
    for attempt in &lost {
        let Some(acked_ms) = attempt.acked_ms else {
            figures.lost_unacked += 1;
            continue;
        };
        let age_ms = crash_ms - acked_ms;
        figures.lost_acked += 1;
        figures.max_lost_age_ms = figures.max_lost_age_ms.max(age_ms);
        match log.fsync_policy() {
            FsyncPolicy::Interval(interval) => {
                let interval_ms = i64::try_from(interval.as_millis()).expect("small");
                assert!(
                    age_ms <= interval_ms,
                    "lost offset {} acknowledged {age_ms} ms before the crash",
                    attempt.first
                );
            }
            policy => panic!("{policy:?}: acknowledged batch at offset {} lost", attempt.first),
        }
    }
    figures.acked += u64::try_from(model.attempts.iter().filter(|a| a.acked_ms.is_some()).count()).expect("fits");
    (log, lost)
}

/// After recovery: the producer state agrees with the log, an interrupted transaction apply completes, retries are
/// duplicates with their original offsets, and the partition accepts appends.
fn check_producers(partition: &Partition, log: Log, lost: &[Attempt], model: &mut Model, figures: &mut Figures) {
    let snapshot = partition.sink.load();
    let end = log.end_offset();
    let appender = partition.start_on(log).expect("the appender starts after recovery");
    let rebuilt = appender.rebuild_report();
    match &snapshot {
        Some(snapshot) => {
            assert!(snapshot.offset <= end, "with fsync always a snapshot never runs ahead of the durable log");
            assert!(rebuilt.from_snapshot, "{rebuilt:?}");
            figures.snapshot_used += 1;
        }
        None => assert!(!rebuilt.from_snapshot),
    }
    let now_ms = partition.clock.now_ms();
    if model.transaction.as_ref().is_some_and(|decided| !decided.applied) {
        apply(&appender, model, now_ms).expect("the re-apply succeeds");
        figures.reapplied += 1;
    }
    if let Some(decided) = &model.transaction {
        for batch in &decided.batches {
            let sequence = batch.header().base_sequence;
            let copies = model.attempts.iter().filter(|a| a.batch.header().producer() == batch.header().producer());
            assert_eq!(copies.count(), 1, "transaction batch with sequence {sequence} is applied exactly once");
        }
    }
    for attempt in lost.iter().filter(|a| PRODUCERS.contains(&a.batch.header().producer_id)) {
        let idx = model.attempt(&attempt.batch);
        let ack = append(&appender, vec![attempt.batch.clone()]).expect("a lost batch is accepted again");
        assert!(!ack.duplicate, "a batch the log lost is no duplicate: {ack:?}");
        model.acked(idx, &ack.ranges, now_ms);
    }
    for producer_id in PRODUCERS.into_iter().chain([TXN_PRODUCER]) {
        let sent: Vec<Attempt> =
            model.attempts.iter().filter(|a| a.batch.header().producer_id == producer_id).cloned().collect();
        for attempt in sent.iter().rev().take(ferry_log::producers::BATCHES_RETAINED) {
            let ack = append(&appender, vec![attempt.batch.clone()]).expect("a retry is answered");
            let range = OffsetRange { first: attempt.first, last: attempt.next - 1 };
            assert!(ack.duplicate && ack.ranges == [range], "retry of offset {}: {ack:?}", attempt.first);
        }
        let sequence = sent.last().map_or(0, |attempt| sequence_after(&attempt.batch));
        let next = stamped(producer_id, sequence, (1, 10), 0xEE);
        let idx = model.attempt(&next);
        let ack = append(&appender, vec![next]).expect("the next sequence is accepted");
        assert!(!ack.duplicate);
        model.acked(idx, &ack.ranges, now_ms);
    }
    let idx = model.attempt(&make_batch(1, 10, now_ms, 0xEF));
    let ack = append(&appender, vec![make_batch(1, 10, now_ms, 0xEF)]).expect("the partition accepts appends");
    model.acked(idx, &ack.ranges, now_ms);
    let stored: Vec<Bytes> = read_all(&appender.reader()).into_iter().map(RecordBatch::into_bytes).collect();
    let expected: Vec<Bytes> = model.attempts.iter().map(|a| a.bytes.clone()).collect();
    assert!(stored == expected, "the log holds exactly the model's batches");
    appender.shutdown().expect("clean shutdown");
}

/// One seed: a dry run counts the I/O steps, the real run crashes at a seeded one, then recovery is checked.
fn check_seed(seed: u64, fsync: FsyncPolicy, figures: &mut Figures) {
    let always = fsync == FsyncPolicy::Always;
    let run = if always { run_always } else { run_interval };
    let mut rng = Rng::new(seed);
    let actions = workload(&mut rng, always);
    let dry = Partition::new(seed, fsync);
    assert!(matches!(run(&dry, &actions, &mut Model::default()), Ended::Finished), "the dry run finishes");
    let total = dry.fs.stats().io_steps;
    let step = rng.below(1..total + 1);
    let tear = rng.chance(1, 2);
    let mode = if rng.chance(1, 2) { CrashMode::PowerLossTorn } else { CrashMode::PowerLoss };
    let partition = Partition::new(seed, fsync);
    partition.fs.crash_at_step(step, tear);
    let mut model = Model::default();
    let Ended::Crashed(action) = run(&partition, &actions, &mut model) else {
        panic!("the run did not reach step {step} of {total}: the workload is not reproducible")
    };
    let point = partition.fs.crash_point().expect("halted at the crash point");
    *figures.phases.entry(classify(point.op, &point.path, action.as_ref())).or_default() += 1;
    figures.torn += u64::from(mode == CrashMode::PowerLossTorn);
    figures.steps += total;
    figures.seeds += 1;
    let (log, lost) = recover(&partition, &mut model, mode, figures);
    if always {
        check_producers(&partition, log, &lost, &mut model, figures);
    } else {
        let mut log = log;
        let end = log.end_offset();
        let ranges = log.append(&mut [make_batch(1, 10, 1, 0xEF)]).expect("the partition accepts appends");
        assert_eq!(ranges[0].first, end);
    }
}

fn run_suite(name: &str, env: &str, fsync: FsyncPolicy) -> Figures {
    let started = Instant::now();
    let mut figures = Figures::default();
    for_each_seed(env, seeds(env, 10_000, 1_000_000), |seed| check_seed(seed, fsync, &mut figures));
    figures.print(name, started.elapsed());
    figures
}

#[test]
fn power_loss_at_any_step_loses_no_acknowledged_write_with_fsync_always() {
    let figures = run_suite("power loss, fsync always", "FERRY_POWER_LOSS", FsyncPolicy::Always);
    assert_eq!(figures.lost_acked, 0);
    if figures.seeds >= 1_000 {
        for phase in [Phase::Append, Phase::Roll, Phase::Index, Phase::Checkpoint, Phase::Snapshot, Phase::Apply] {
            assert!(figures.phases.get(&phase).is_some_and(|n| *n > 0), "no crash point in {phase:?}: {figures:?}");
        }
    }
}

#[test]
fn power_loss_with_fsync_interval_loses_only_writes_of_the_last_interval() {
    let figures = run_suite("power loss, fsync interval:100", "FERRY_POWER_LOSS", FsyncPolicy::Interval(INTERVAL));
    assert!(figures.max_lost_age_ms <= 100, "{figures:?}");
}
