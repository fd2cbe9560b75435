//! Model-based test (sled's `fuzz_model` shape): random operations against the log on `SimFs` and against a trivial
//! in-memory model, with crashes that keep only what was synced (optionally torn) and clean reopens.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use ferry_log::fs::CrashMode;
use ferry_log::{FsyncPolicy, Log, LogConfig, LogError, PartitionLog, SimFs, Storage};
use ferry_protocol::batch::split_batches;
use proptest::prelude::*;

use crate::common::{clock, make_batch, open, read_all, small_config};

#[derive(Debug, Clone)]
enum Op {
    /// Batches as (records, value bytes); values up to 1500 bytes make some batches larger than a quarter segment,
    /// and calls of several batches cross the 4 KiB segment size, so rolls are frequent.
    Append(Vec<(u32, usize)>),
    /// Read at the model's `pick`-th batch (modulo), shifted by `shift` offsets, with `bytes_max`.
    Read {
        pick: usize,
        shift: u8,
        bytes_max: u32,
    },
    Sync,
    Crash(CrashMode),
    /// Clean close and reopen.
    Reopen,
    Retention,
}

fn op() -> impl Strategy<Value = Op> {
    let batch = (1u32..4, prop_oneof![0usize..100, 100usize..1500]);
    prop_oneof![
        6 => prop::collection::vec(batch, 1..5).prop_map(Op::Append),
        3 => (any::<usize>(), 0u8..4, prop_oneof![Just(0u32), 1u32..3000, Just(1 << 20)])
            .prop_map(|(pick, shift, bytes_max)| Op::Read { pick, shift, bytes_max }),
        3 => Just(Op::Sync),
        1 => prop_oneof![Just(CrashMode::ProcessKill), Just(CrashMode::PowerLoss), Just(CrashMode::PowerLossTorn)]
            .prop_map(Op::Crash),
        1 => Just(Op::Reopen),
        1 => Just(Op::Retention),
    ]
}

/// What the log must contain: every appended batch still in it, as stored, plus what is known durable.
struct Model {
    /// (base offset, next offset, bytes) of every batch appended and not lost to a crash or retention.
    batches: Vec<(u64, u64, Bytes)>,
    /// Offsets below this were synced: every crash keeps them.
    synced_end: u64,
    start: u64,
}

impl Model {
    fn end(&self) -> u64 {
        self.batches.last().map_or(self.start, |b| b.1)
    }
}

struct Harness {
    fs: SimFs,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    config: LogConfig,
    clock: Arc<ferry_log::ManualClock>,
    log: Option<Log>,
    model: Model,
}

impl Harness {
    fn log(&mut self) -> &mut Log {
        self.log.as_mut().expect("log is open between operations")
    }

    fn reopen(&mut self, torn: bool) {
        let (log, report) = open(&self.storage, &self.dir, &self.config, &self.clock);
        assert!(report.damaged.is_none(), "a crash (torn: {torn}) never damages the log: {report:?}");
        let end = log.end_offset();
        let model = &mut self.model;
        assert!(end >= model.synced_end, "synced data survives: end {end} < synced {}", model.synced_end);
        assert!(end <= model.end(), "nothing appears that was not appended: end {end} > {}", model.end());
        model.batches.retain(|b| b.0 < end);
        assert_eq!(model.end(), end, "the log ends at a batch boundary");
        let start = log.start_offset();
        // Retention deletions are durable before apply_retention returns, so the start never moves back.
        assert_eq!(start, model.start, "start offset survives the reopen");
        model.synced_end = end; // Recovery fsyncs what it accepts.
        self.log = Some(log);
        self.check_contents();
    }

    /// Every batch of the model is readable with identical bytes, and nothing else is.
    fn check_contents(&mut self) {
        let log = self.log.as_ref().expect("open");
        let reader = log.reader();
        let stored = read_all(&reader);
        let expected: Vec<&Bytes> = self.model.batches.iter().map(|b| &b.2).collect();
        let visible = reader.visible_end();
        let expected_visible: Vec<&Bytes> = self.model.batches.iter().filter(|b| b.0 < visible).map(|b| &b.2).collect();
        let stored: Vec<&Bytes> = stored.iter().map(|b| b.as_bytes()).collect();
        assert_eq!(stored, expected_visible, "visible batches equal the model's");
        assert!(expected_visible.len() <= expected.len());
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Append(specs) => {
                let end = self.model.end();
                let mut batches: Vec<_> = specs
                    .iter()
                    .enumerate()
                    .map(|(idx, &(n, value))| {
                        make_batch(n, value, 1_000 + i64::try_from(end).expect("small"), idx as u8)
                    })
                    .collect();
                let ranges = self.log().append(&mut batches).expect("append on SimFs without faults succeeds");
                let mut next = end;
                for (range, batch) in ranges.iter().zip(&batches) {
                    assert_eq!(range.first, next, "offsets are assigned after every surviving batch");
                    assert_eq!(batch.base_offset(), range.first);
                    next = range.next();
                    self.model.batches.push((range.first, range.next(), batch.as_bytes().clone()));
                }
                assert_eq!(self.log().end_offset(), next);
            }
            Op::Read { pick, shift, bytes_max } => self.check_read(pick, shift, bytes_max),
            Op::Sync => {
                self.log().sync().expect("sync");
                self.model.synced_end = self.model.end();
                let visible = self.log().reader().visible_end();
                assert_eq!(visible, self.model.end(), "after a sync everything is visible");
            }
            Op::Crash(mode) => {
                self.fs.crash(mode);
                drop(self.log.take());
                self.reopen(mode == CrashMode::PowerLossTorn);
            }
            Op::Reopen => {
                self.log().close().expect("clean close");
                drop(self.log.take());
                let (log, report) = open(&self.storage, &self.dir, &self.config, &self.clock);
                assert!(report.clean, "a clean close leads to the clean path: {report:?}");
                assert_eq!(report.scanned_batches, 0, "the clean path scans nothing");
                assert_eq!(log.end_offset(), self.model.end());
                self.model.synced_end = self.model.end();
                self.log = Some(log);
                self.check_contents();
            }
            Op::Retention => {
                self.log().apply_retention().expect("retention");
                let start = self.log().start_offset();
                assert!(start >= self.model.start, "start only moves forward");
                self.model.batches.retain(|b| b.0 >= start);
                assert!(self.model.batches.first().is_none_or(|b| b.0 == start), "retention deletes whole batches");
                self.model.start = start;
            }
        }
    }

    fn check_read(&mut self, pick: usize, shift: u8, bytes_max: u32) {
        let reader = self.log().reader();
        let visible = reader.visible_end();
        let start = reader.start_offset();
        assert_eq!(start, self.model.start);
        let model = &self.model;
        let offset = if model.batches.is_empty() {
            model.end() + u64::from(shift)
        } else {
            let batch = &model.batches[pick % model.batches.len()];
            (batch.0 + u64::from(shift)).min(batch.1 + 1)
        };
        match reader.read(offset, bytes_max) {
            Err(LogError::OffsetOutOfRange { requested, start: s, end }) => {
                assert_eq!((requested, s, end), (offset, start, visible));
                assert!(offset < start || offset > visible, "in-range read {offset} refused");
            }
            Err(other) => panic!("read {offset} failed: {other}"),
            Ok(slice) => {
                assert!(offset >= start && offset <= visible);
                if offset == visible {
                    assert_eq!(slice.batch_count, 0);
                    return;
                }
                let batches: Vec<_> =
                    split_batches(slice.bytes.clone()).map(|b| b.expect("only whole, valid batches")).collect();
                assert!(!batches.is_empty(), "at least one batch below the visible end");
                let first_idx = model.batches.iter().position(|b| b.0 <= offset && offset < b.1).expect("model has it");
                for (idx, batch) in batches.iter().enumerate() {
                    let expected = &model.batches[first_idx + idx];
                    assert_eq!(batch.as_bytes(), &expected.2, "read returns the batch appended at that offset");
                    assert!(expected.0 < visible, "never past the visible end");
                }
                if batches.len() > 1 {
                    assert!(slice.bytes.len() <= bytes_max as usize, "more than one batch only within bytes_max");
                }
            }
        }
    }
}

fn run(seed: u64, policy_always: bool, retention: bool, ops: Vec<Op>) {
    let fs = SimFs::new(seed);
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let dir = PathBuf::from("/data/topic-0");
    let mut config = small_config(if policy_always { FsyncPolicy::Always } else { FsyncPolicy::Never });
    if retention {
        config.retention_bytes = Some(12 * 1024);
    }
    let clock = clock();
    let (log, report) = open(&storage, &dir, &config, &clock);
    assert!(report.damaged.is_none() && log.end_offset() == 0);
    let mut harness = Harness {
        fs,
        storage,
        dir,
        config,
        clock,
        log: Some(log),
        model: Model { batches: Vec::new(), synced_end: 0, start: 0 },
    };
    for op in ops {
        harness.apply(op);
    }
    // Finally: a power loss keeps at least everything synced.
    harness.fs.crash(CrashMode::PowerLossTorn);
    drop(harness.log.take());
    harness.reopen(true);
}

fn cases() -> u32 {
    if std::env::var_os("FERRY_SLOW_TESTS").is_some() { 4096 } else { 256 }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_the_model_across_crashes(
        seed in any::<u64>(),
        policy_always in any::<bool>(),
        retention in any::<bool>(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run(seed, policy_always, retention, ops);
    }
}
