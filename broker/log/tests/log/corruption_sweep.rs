//! Seeded corruption of real files (issue 7, T4): one mutation per case on a copy of a ~2 MB log of several segments,
//! then a reopen inside `catch_unwind`, and the outcome classified and checked against the documented one
//! (`ferry_log::recovery`):
//! - damage to a batch beyond the durable end (the unsynced last batch, appended garbage): truncated to the last valid
//!   batch, surviving offsets unchanged, appends continue;
//! - damage to a batch below the durable end: reported, either by recovery (the partition is damaged: writes refused,
//!   reads below the damage served) or, for a batch recovery does not verify (covered by a checked index), by a read
//!   of that batch failing its checksum;
//! - damage to an index or the checkpoint (or a deleted index): rebuilt or ignored, reads identical to a clean open;
//! - never a panic, and never a batch served that differs from what was written.
//!
//! Three logs are built once, one per way of stopping (clean close, unclean after a sync, unclean with the last batch
//! unsynced). 1,000 cases by default, 100,000 with `FERRY_SLOW_TESTS`; `FERRY_CORRUPTION_SEED` replays one case.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ferry_log::checkpoint::CHECKPOINT_FILE;
use ferry_log::{LogConfig, LogError, PartitionLog, RealFs, RecoveryReport, Storage};
use ferry_protocol::batch::BATCH_HEADER_BYTES;

use crate::common::{Rng, clock, for_each_seed, make_batch, open, seeds};
use crate::corruption::{Built, Stop, Stored, build_log, copy_of, segment_path};

const STOPS: [Stop; 3] = [Stop::Clean, Stop::UncleanSynced, Stop::UncleanUnsyncedLast];
const PAGE_BYTES: usize = 4096;

fn config() -> LogConfig {
    LogConfig { segment_bytes: 256 * 1024, index_interval_bytes: 4096, retention_age: None, ..LogConfig::default() }
}

/// About 2 MB in 8 or 9 segments: 1 to 12 records of up to 1.5 KB each; timestamps mostly increase, with dips.
fn build(stop: Stop) -> Built {
    let mut rng = Rng::new(7);
    let batches: Vec<_> = (0..385)
        .map(|idx: i64| {
            let timestamp = if idx % 9 == 8 { 100 + idx } else { 10_000 + 50 * idx };
            let fill = u8::try_from(idx % 251).expect("small");
            make_batch(u32::try_from(rng.below(1..13)).expect("small"), rng.index(0..1500), timestamp, fill)
        })
        .collect();
    let built = build_log(stop, &config(), batches.into_iter());
    assert!(built.batches.iter().filter(|b| b.position == 0).count() >= 6, "several segments");
    let active = built.batches.last().expect("batches").segment;
    assert!(
        built.batches.iter().filter(|b| b.segment == active).count() >= 10,
        "an active segment with middle batches"
    );
    built
}

/// Where a flip or burst lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// The header fields of any batch.
    Header,
    /// The last batch of the log.
    TailBatch,
    /// Any other batch of the active (last) segment.
    MiddleBatch,
    /// Any byte of a sealed segment.
    Sealed,
    OffsetIndex,
    TimeIndex,
    Checkpoint,
}

const TARGETS: [Target; 7] = [
    Target::Header,
    Target::TailBatch,
    Target::MiddleBatch,
    Target::Sealed,
    Target::OffsetIndex,
    Target::TimeIndex,
    Target::Checkpoint,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mutation {
    /// A file cut at a random point (segments: mostly the last, near its end).
    Truncate,
    /// One bit flipped.
    Flip(Target),
    /// 2 to 16 consecutive bits, the first and last flipped.
    Burst(Target),
    /// A 4 KiB page of any file zeroed.
    ZeroPage,
    /// Random bytes appended to the last segment.
    Garbage,
    /// An offset or time index deleted.
    DeleteIndex,
}

/// What the case must end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    /// Nothing visible changed: every batch read as written.
    Intact,
    /// Truncated back to the first `kept` batches.
    Truncated { kept: usize },
    /// Batch `idx` is bad: reported by recovery as damage there, or by a failed read of it.
    Detected { idx: usize },
}

/// The outcome classes counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Intact,
    IndexRebuilt,
    Truncated,
    DamagedAtOpen,
    DetectedOnRead,
}

/// A read of one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Read {
    Served(u64, Bytes),
    OutOfRange,
    Failed(String),
}

/// Everything the reopened log said, gathered inside `catch_unwind`.
#[derive(Debug)]
struct Observed {
    report: RecoveryReport,
    reads: Vec<Read>,
    by_timestamp: Vec<(i64, Result<Option<u64>, String>)>,
    append: Result<u64, LogError>,
}

fn observe(dir: &Path, batches: &[Stored], timestamps: &[i64]) -> Observed {
    let storage: Arc<dyn Storage> = Arc::new(RealFs);
    let (mut log, report) = open(&storage, dir, &config(), &clock());
    let reader = log.reader();
    let reads = batches
        .iter()
        .map(|batch| match reader.read(batch.base, 1) {
            Ok(slice) if slice.batch_count == 0 => Read::OutOfRange,
            Ok(slice) => Read::Served(slice.first_offset, slice.bytes),
            Err(LogError::OffsetOutOfRange { .. }) => Read::OutOfRange,
            Err(error) => Read::Failed(error.to_string()),
        })
        .collect();
    let by_timestamp = timestamps
        .iter()
        .map(|&timestamp| (timestamp, reader.read_by_timestamp(timestamp).map_err(|e| e.to_string())))
        .collect();
    let append = log.append(&mut [make_batch(1, 10, 1, 0xEE)]).map(|ranges| ranges[0].first);
    Observed { report, reads, by_timestamp, append }
}

fn file_len(path: &Path) -> usize {
    usize::try_from(fs::metadata(path).expect("file exists").len()).expect("fits")
}

/// The non-empty index files of the log (of `suffix`).
fn index_files(dir: &Path, built: &Built, suffix: &str) -> Vec<PathBuf> {
    let mut segments: Vec<u64> = built.batches.iter().map(|b| b.segment).collect();
    segments.dedup();
    segments.into_iter().map(|base| segment_path(dir, base, suffix)).filter(|path| file_len(path) > 0).collect()
}

/// A byte position and the file it is in for a flip or burst on `target`.
fn pick_spot(rng: &mut Rng, dir: &Path, built: &Built, target: Target) -> (PathBuf, usize) {
    let batches = &built.batches;
    let last = batches.last().expect("batches");
    let in_batch = |rng: &mut Rng, batch: &Stored, len: usize| {
        let at = usize::try_from(batch.position).expect("fits") + rng.index(0..len);
        (segment_path(dir, batch.segment, ".log"), at)
    };
    let in_file = |rng: &mut Rng, files: Vec<PathBuf>| {
        let path = files[rng.index(0..files.len())].clone();
        let at = rng.index(0..file_len(&path));
        (path, at)
    };
    match target {
        Target::Header => {
            let idx = rng.index(0..batches.len());
            in_batch(rng, &batches[idx], BATCH_HEADER_BYTES)
        }
        Target::TailBatch => in_batch(rng, last, usize::try_from(last.len()).expect("fits")),
        Target::MiddleBatch => {
            let first_active = batches.iter().position(|b| b.segment == last.segment).expect("active");
            // The active segment's other batches (the tail itself if it is alone there).
            let batch = &batches[rng.index(first_active..(batches.len() - 1).max(first_active + 1))];
            in_batch(rng, batch, usize::try_from(batch.len()).expect("fits"))
        }
        Target::Sealed => {
            let sealed: Vec<&Stored> = batches.iter().filter(|b| b.segment != last.segment).collect();
            let batch = sealed[rng.index(0..sealed.len())];
            in_batch(rng, batch, usize::try_from(batch.len()).expect("fits"))
        }
        Target::OffsetIndex => in_file(rng, index_files(dir, built, ".index")),
        Target::TimeIndex => in_file(rng, index_files(dir, built, ".timeindex")),
        Target::Checkpoint => in_file(rng, vec![dir.join(CHECKPOINT_FILE)]),
    }
}

/// Every file of the partition directory.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir).expect("list").map(|e| e.expect("entry").path()).collect();
    files.sort();
    files
}

/// Applies one seeded mutation to the copy in `dir`; returns it and the file it changed.
fn mutate(rng: &mut Rng, dir: &Path, built: &Built) -> (Mutation, PathBuf) {
    let last = built.batches.last().expect("batches");
    let mutation = match rng.below(0..10) {
        0 | 1 => Mutation::Truncate,
        2..=4 => Mutation::Flip(TARGETS[rng.index(0..TARGETS.len())]),
        5 | 6 => Mutation::Burst(TARGETS[rng.index(0..TARGETS.len())]),
        7 => Mutation::ZeroPage,
        8 => Mutation::Garbage,
        _ => Mutation::DeleteIndex,
    };
    let path = match mutation {
        Mutation::Truncate => {
            let path = if rng.chance(1, 2) {
                segment_path(dir, last.segment, ".log")
            } else {
                let files = all_files(dir);
                files[rng.index(0..files.len())].clone()
            };
            let len = file_len(&path);
            // Mostly close to the end (as torn writes are), sometimes anywhere.
            let cut = if rng.chance(2, 3) { len.saturating_sub(rng.index(1..2048)) } else { rng.index(0..len.max(1)) };
            let mut content = fs::read(&path).expect("read");
            content.truncate(cut);
            fs::write(&path, content).expect("write");
            path
        }
        Mutation::Flip(target) | Mutation::Burst(target) => {
            let (path, at) = pick_spot(rng, dir, built, target);
            let mut content = fs::read(&path).expect("read");
            let first_bit = at * 8 + rng.index(0..8);
            let n_bits = if let Mutation::Flip(_) = mutation { 1 } else { rng.index(2..17) };
            for bit in first_bit..(first_bit + n_bits).min(content.len() * 8) {
                let inner = bit != first_bit && bit != first_bit + n_bits - 1;
                if !inner || rng.chance(1, 2) {
                    content[bit / 8] ^= 1 << (bit % 8);
                }
            }
            fs::write(&path, content).expect("write");
            path
        }
        Mutation::ZeroPage => {
            let files = all_files(dir);
            let path = files[rng.index(0..files.len())].clone();
            let mut content = fs::read(&path).expect("read");
            let start = rng.index(0..content.len().div_ceil(PAGE_BYTES).max(1)) * PAGE_BYTES;
            let end = content.len().min(start + PAGE_BYTES);
            content[start.min(end)..end].fill(0);
            fs::write(&path, content).expect("write");
            path
        }
        Mutation::Garbage => {
            let path = segment_path(dir, last.segment, ".log");
            let garbage: Vec<u8> = (0..rng.index(1..4096)).map(|_| rng.next_u64() as u8).collect();
            fs::OpenOptions::new().append(true).open(&path).expect("open").write_all(&garbage).expect("append");
            path
        }
        Mutation::DeleteIndex => {
            let suffix = if rng.chance(1, 2) { ".index" } else { ".timeindex" };
            let segments: Vec<u64> = built.batches.iter().map(|b| b.segment).collect();
            let path = segment_path(dir, segments[rng.index(0..segments.len())], suffix);
            fs::remove_file(&path).expect("remove");
            path
        }
    };
    (mutation, path)
}

/// What the documented rules say for a change whose first changed byte is `first_changed` in `path`.
fn expected(built: &Built, stop: Stop, path: &Path, first_changed: Option<usize>) -> Expected {
    let Some(first_changed) = first_changed else { return Expected::Intact };
    let is_segment = path.extension().is_some_and(|ext| ext == "log");
    if !is_segment {
        return Expected::Intact;
    }
    let base: u64 = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).expect("segment name");
    let at = u64::try_from(first_changed).expect("fits");
    let batches = &built.batches;
    // The first batch changed; past a segment's end, the next segment's first (its base no longer follows).
    let idx = batches.iter().position(|b| (b.segment == base && b.position + b.len() > at) || b.segment > base);
    let Some(idx) = idx else {
        return Expected::Truncated { kept: batches.len() }; // Past the end of the log.
    };
    if stop == Stop::UncleanUnsyncedLast && idx == batches.len() - 1 {
        return Expected::Truncated { kept: idx }; // Beyond the durable end.
    }
    Expected::Detected { idx }
}

fn first_difference(before: &[u8], after: Option<&[u8]>) -> Option<usize> {
    let Some(after) = after else { return Some(0) };
    let common = before.len().min(after.len());
    (0..common).find(|&i| before[i] != after[i]).or((before.len() != after.len()).then_some(common))
}

/// Checks the observation against the expectation and the rule that holds always: nothing served differs from what
/// was written. Returns the outcome class.
fn check(built: &Built, expected: Expected, observed: &Observed) -> Outcome {
    let batches = &built.batches;
    let report = &observed.report;
    for (batch, read) in batches.iter().zip(&observed.reads) {
        if let Read::Served(first, bytes) = read {
            assert!(*first == batch.base && *bytes == batch.bytes, "offset {} served differing bytes", batch.base);
        }
    }
    let served_below = |end: usize| observed.reads[..end].iter().all(|r| matches!(r, Read::Served(..)));
    let out_of_range_from = |from: usize| observed.reads[from..].iter().all(|r| *r == Read::OutOfRange);
    match expected {
        Expected::Intact => {
            assert!(report.damaged.is_none() && report.truncated_bytes == 0, "{report:?}");
            assert!(served_below(batches.len()), "every batch served: {:?}", observed.reads);
            let end = batches.last().expect("batches").next;
            assert_eq!(observed.append.as_ref().ok(), Some(&end), "appends continue at the end");
            for (timestamp, found) in &observed.by_timestamp {
                let want = batches.iter().find(|b| b.max_timestamp >= *timestamp).map(|b| b.base);
                assert_eq!(found.as_ref().ok(), Some(&want), "read_by_timestamp({timestamp})");
            }
            if report.rebuilt_indexes > 0 { Outcome::IndexRebuilt } else { Outcome::Intact }
        }
        Expected::Truncated { kept } => {
            assert!(report.damaged.is_none(), "{report:?}");
            assert!(served_below(kept) && out_of_range_from(kept), "prefix of {kept} kept: {:?}", observed.reads);
            let end = if kept == 0 { 0 } else { batches[kept - 1].next };
            assert_eq!((report.end_offset, observed.append.as_ref().ok()), (end, Some(&end)), "{report:?}");
            Outcome::Truncated
        }
        Expected::Detected { idx } => {
            assert!(served_below(idx), "batches below the damage served: {:?}", observed.reads);
            if let Some(damage) = &report.damaged {
                assert_eq!(damage.offset, batches[idx].base, "damage reported at the first bad batch: {damage}");
                assert!(out_of_range_from(idx), "nothing served from the damage on");
                assert!(matches!(observed.append, Err(LogError::Damaged { .. })), "{:?}", observed.append);
                Outcome::DamagedAtOpen
            } else {
                assert_eq!(report.truncated_bytes, 0, "damage below the durable end is never truncated: {report:?}");
                assert!(matches!(observed.reads[idx], Read::Failed(_)), "batch {idx} undetected: {report:?}");
                Outcome::DetectedOnRead
            }
        }
    }
}

/// Counts per mutation and outcome, printed to stderr.
#[derive(Debug, Default)]
struct Figures {
    cases: u64,
    counts: BTreeMap<(Mutation, Outcome), u64>,
    single_bit_flips_in_segments: u64,
    panics: u64,
}

#[test]
fn seeded_corruption_of_real_files_ends_in_the_documented_outcome() {
    let started = Instant::now();
    let built: Vec<Built> = STOPS.iter().map(|&stop| build(stop)).collect();
    let timestamps: Vec<i64> = {
        let first = &built[0].batches;
        let mut all: Vec<i64> = first.iter().step_by(2).flat_map(|b| [b.max_timestamp, b.max_timestamp + 1]).collect();
        all.extend([0, i64::MAX]);
        all
    };
    let mut figures = Figures::default();
    let env = "FERRY_CORRUPTION";
    for_each_seed(env, seeds(env, 1_000, 100_000), |seed| {
        let mut rng = Rng::new(seed);
        let stop_idx = rng.index(0..STOPS.len());
        let (stop, original) = (STOPS[stop_idx], &built[stop_idx]);
        let copy = copy_of(original);
        let before: BTreeMap<PathBuf, Vec<u8>> =
            all_files(copy.path()).into_iter().map(|path| (path.clone(), fs::read(path).expect("read"))).collect();
        let (mutation, path) = mutate(&mut rng, copy.path(), original);
        let after = fs::read(&path).ok();
        let first_changed = first_difference(&before[&path], after.as_deref());
        let expected = expected(original, stop, &path, first_changed);
        let observed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            observe(copy.path(), &original.batches, &timestamps)
        }))
        .unwrap_or_else(|_| {
            figures.panics += 1;
            panic!("case {seed}: {mutation:?} of {} panicked the log", path.display())
        });
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(original, expected, &observed)))
            .unwrap_or_else(|panic| {
                let _ = writeln!(
                    std::io::stderr(),
                    "case {seed}: {stop:?}, {mutation:?} of {} at byte {first_changed:?}: expected {expected:?}, \
                     observed {:?}",
                    path.display(),
                    observed.report
                );
                std::panic::resume_unwind(panic)
            });
        if let Mutation::Flip(target) = mutation
            && !matches!(target, Target::OffsetIndex | Target::TimeIndex | Target::Checkpoint)
        {
            assert_ne!(outcome, Outcome::Intact, "a single-bit flip in a segment is detected");
            figures.single_bit_flips_in_segments += 1;
        }
        figures.cases += 1;
        *figures.counts.entry((mutation, outcome)).or_default() += 1;
    });
    let _ = writeln!(
        std::io::stderr(),
        "corruption sweep: {} cases in {:.1} s, {} panics, {} single-bit flips in segments all detected; \
         per (mutation, outcome): {:?}",
        figures.cases,
        started.elapsed().as_secs_f64(),
        figures.panics,
        figures.single_bit_flips_in_segments,
        figures.counts
    );
    assert_eq!(figures.panics, 0);
}

/// A time-index entry whose timestamp was lowered (still structurally valid: strictly increasing) must not make a
/// lookup by timestamp skip batches.
#[test]
fn a_lowered_time_index_entry_never_skips_batches_in_a_lookup_by_timestamp() {
    let built = build(Stop::Clean);
    let first_segment = segment_path(built.dir.path(), 0, ".timeindex");
    let n_entries = file_len(&first_segment) / 12;
    assert!(n_entries >= 3, "the first segment has time entries");
    let timestamps: Vec<i64> = built.batches.iter().flat_map(|b| [b.max_timestamp, b.max_timestamp + 1]).collect();
    for entry in 1..n_entries {
        let copy = copy_of(&built);
        let path = segment_path(copy.path(), 0, ".timeindex");
        let mut content = fs::read(&path).expect("read");
        let timestamp_at = |content: &[u8], idx: usize| {
            i64::from_be_bytes(content[idx * 12..idx * 12 + 8].try_into().expect("8 bytes"))
        };
        let lowered = timestamp_at(&content, entry - 1) + 1;
        content[entry * 12..entry * 12 + 8].copy_from_slice(&lowered.to_be_bytes());
        fs::write(&path, content).expect("write");
        let observed = observe(copy.path(), &built.batches, &timestamps);
        check(&built, Expected::Intact, &observed);
    }
}
