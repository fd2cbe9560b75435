//! Replays the committed fuzz corpus (`broker/log/fuzz/corpus/<target>/`) through the fuzz entry points, so stable
//! `cargo test` exercises every input the fuzzer found interesting (and every seed) on every run.
//!
//! The `segment_recovery` seeds are partitions written by the real log on a `SimFs`, then damaged in the ways recovery
//! tells apart. After a format change, regenerate them with
//! `FERRY_WRITE_FUZZ_SEEDS=1 cargo test -p ferry-log --test log fuzz_corpus` and commit the files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_log::fuzz::{
    CLOCK_START_MS, FILES_MAX, FIX_CHECKSUMS_BIT, FileKind, PartitionFile, decode_partition, encode_partition,
    open_partition, read_partition, segment_recovery,
};
use ferry_log::{Clock, ManualClock, PartitionLog, RecoveryReport, SimFs};
use ferry_protocol::batch::{peek_batch_length, split_batches};

use crate::common::make_batch;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

/// Runs every input in a target's corpus through its entry point; any panic fails the test.
fn check_corpus(target: &str, run: fn(&[u8])) {
    let mut n_inputs = 0;
    for entry in std::fs::read_dir(corpus_dir(target)).expect("the corpus directory exists") {
        let input = std::fs::read(entry.expect("corpus entry").path()).expect("corpus file is readable");
        run(&input);
        n_inputs += 1;
    }
    assert!(n_inputs >= 10, "{target} corpus has only {n_inputs} inputs");
}

#[test]
fn the_producer_table_corpus_agrees_with_the_model() {
    check_corpus("producer_table", ferry_log::fuzz::producer_table);
}

#[test]
fn the_segment_recovery_corpus_recovers_consistently() {
    check_corpus("segment_recovery", |input| {
        segment_recovery(input);
    });
}

/// How a seed log is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Closed: a clean checkpoint.
    Clean,
    /// Everything synced, then dropped: an unclean checkpoint at the end.
    Synced,
    /// The last batch appended but not synced, then dropped: the checkpoint's durable end is before it.
    LastUnsynced,
}

/// A partition written by the real log: `batches_per_segment` batches of two 100-byte records in each segment (the
/// clock passes the segment age between segments), left as `stop` says.
fn written(batches_per_segment: &[usize], stop: Stop) -> Vec<PartitionFile> {
    let storage = SimFs::new(0);
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let (mut log, report) = open_partition(&storage, dyn_clock);
    assert!(report.damaged.is_none());
    let n_batches: usize = batches_per_segment.iter().sum();
    let mut batch_idx = 0;
    for n_in_segment in batches_per_segment {
        clock.advance(Duration::from_secs(2));
        for _ in 0..*n_in_segment {
            let fill = u8::try_from(batch_idx).expect("few batches");
            let mut batch = [make_batch(2, 100, CLOCK_START_MS + i64::from(fill) * 10, fill)];
            log.append(&mut batch).expect("append to a healthy log");
            batch_idx += 1;
            if stop != Stop::LastUnsynced || batch_idx < n_batches {
                log.sync().expect("sync");
            }
        }
    }
    if stop == Stop::Clean {
        log.close().expect("close");
    }
    drop(log);
    read_partition(&storage)
}

/// The files of `files` other than those of `kind`.
fn without(files: &[PartitionFile], kind: FileKind) -> Vec<PartitionFile> {
    files.iter().filter(|file| file.kind != kind).cloned().collect()
}

/// `files` with the content of the last file of `kind` changed.
fn changed(files: &[PartitionFile], kind: FileKind, change: impl FnOnce(&mut Vec<u8>)) -> Vec<PartitionFile> {
    let mut files = files.to_vec();
    let file = files.iter_mut().rev().find(|file| file.kind == kind).expect("the file to change exists");
    change(&mut file.content);
    files
}

/// A seed and the property its first recovery must show.
type Seed = (&'static str, Vec<u8>, fn(&RecoveryReport) -> bool);

fn segment_recovery_seeds() -> Vec<Seed> {
    let clean = written(&[3], Stop::Clean);
    let synced = written(&[3], Stop::Synced);
    let last_unsynced = written(&[3], Stop::LastUnsynced);
    let two_segments = written(&[2, 2], Stop::Clean);
    let segment_len = synced.iter().find(|file| file.kind == FileKind::Segment).expect("a segment").content.len();

    let mut gap = two_segments.clone();
    let second_base = gap.iter().map(|file| file.base).max().expect("files");
    gap.iter_mut().filter(|file| file.base == second_base).for_each(|file| file.base += 5);
    let mut leftovers = synced.clone();
    leftovers.push(PartitionFile { kind: FileKind::Temp, base: 6, content: b"half-written".to_vec() });
    leftovers.push(PartitionFile { kind: FileKind::Index, base: 999, content: vec![0; 8] });
    let mut near_max_batch = make_batch(2, 10, CLOCK_START_MS, 7);
    near_max_batch.rebase(u64::MAX - 2).expect("two records fit below u64::MAX");
    let near_max = vec![PartitionFile {
        kind: FileKind::Segment,
        base: u64::MAX - 2,
        content: near_max_batch.as_bytes().to_vec(),
    }];
    let checkpoint_only: Vec<PartitionFile> =
        synced.iter().filter(|file| file.kind == FileKind::Checkpoint).cloned().collect();
    // The second batch claims offset 5 where 2 is expected; the harness makes its checksum verify.
    let offset_gap = changed(&synced, FileKind::Segment, |log| {
        let first_len = peek_batch_length(log).expect("a valid batch").expect("a whole header");
        let second = usize::try_from(first_len).expect("small batch");
        log[second..second + 8].copy_from_slice(&5u64.to_be_bytes());
    });

    let healthy = |report: &RecoveryReport| report.damaged.is_none();
    vec![
        ("clean", encode_partition(&clean), |report| report.clean && report.end_offset == 6),
        ("unclean", encode_partition(&synced), |report| !report.clean && report.damaged.is_none()),
        ("segment-only", encode_partition(&without(&without(&synced, FileKind::Index), FileKind::TimeIndex)), healthy),
        ("no-checkpoint", encode_partition(&without(&synced, FileKind::Checkpoint)), |report| !report.checkpoint_found),
        ("unsynced-tail", encode_partition(&last_unsynced), |report| report.end_offset == 6),
        (
            "torn-tail",
            encode_partition(&changed(&last_unsynced, FileKind::Segment, |log| log.truncate(log.len() - 50))),
            |report| report.truncated_bytes > 0 && report.damaged.is_none(),
        ),
        (
            "bit-flip-below-durable-end",
            encode_partition(&changed(&synced, FileKind::Segment, |log| log[segment_len / 2] ^= 0x10)),
            |report| report.damaged.is_some(),
        ),
        (
            "corrupt-index",
            encode_partition(&changed(&clean, FileKind::Index, |index| index.truncate(index.len() - 1))),
            |report| report.rebuilt_indexes > 0 && report.damaged.is_none(),
        ),
        ("two-segments", encode_partition(&two_segments), |report| report.segments == 2 && report.end_offset == 8),
        ("gap-between-segments", encode_partition(&gap), |report| report.damaged.is_some()),
        ("leftover-files", encode_partition(&leftovers), healthy),
        ("checkpoint-without-segments", encode_partition(&checkpoint_only), |report| report.damaged.is_some()),
        ("near-max-offset", encode_partition(&near_max), |report| report.end_offset == u64::MAX),
        ("empty-input", Vec::new(), |report| report.segments == 0 && report.end_offset == 0),
        ("checksummed-offset-gap", with_fixed_checksums(&offset_gap), |report| {
            report.damaged.as_ref().is_some_and(|damage| damage.reason.contains("base offset"))
        }),
        (
            "checksummed-offset-gap-no-checkpoint",
            with_fixed_checksums(&without(&offset_gap, FileKind::Checkpoint)),
            |report| report.damaged.is_none() && report.truncated_bytes > 0 && report.end_offset == 2,
        ),
    ]
}

/// Encodes `files`, asking the harness to rewrite the checksums of the segments' batches.
fn with_fixed_checksums(files: &[PartitionFile]) -> Vec<u8> {
    let mut input = Vec::new();
    for file in files {
        let mut record = encode_partition(std::slice::from_ref(file));
        if file.kind == FileKind::Segment {
            record[0] |= FIX_CHECKSUMS_BIT;
        }
        input.extend(record);
    }
    input
}

#[test]
fn the_input_layout_round_trips() {
    let mut files = written(&[2, 1], Stop::Clean);
    files.push(PartitionFile { kind: FileKind::Temp, base: u64::MAX, content: Vec::new() });
    assert!(files.len() <= FILES_MAX);
    assert_eq!(decode_partition(&encode_partition(&files)), files);
    let beyond_the_limit = encode_partition(&vec![files[0].clone(); FILES_MAX + 1]);
    assert_eq!(decode_partition(&beyond_the_limit).len(), FILES_MAX, "records past FILES_MAX are ignored");
    let cut = encode_partition(&files[..1]);
    let decoded = decode_partition(&cut[..cut.len() - 1]);
    assert_eq!(
        decoded[0].content,
        files[0].content[..files[0].content.len() - 1],
        "a short record keeps what is there"
    );
}

#[test]
fn flagged_segments_get_checksums_that_verify() {
    let files = written(&[3], Stop::Synced);
    // A byte of the first batch's record payload: the header still parses, only the checksum disagrees.
    let corrupted = changed(&files, FileKind::Segment, |log| log[100] ^= 0x01);
    let segment = |input: &[u8]| {
        let files = decode_partition(input);
        let segment = files.into_iter().find(|file| file.kind == FileKind::Segment).expect("a segment");
        split_batches(Bytes::from(segment.content)).map(|batch| batch.is_ok()).collect::<Vec<bool>>()
    };
    assert!(!segment(&encode_partition(&corrupted))[0], "the flipped byte breaks the checksum");
    assert_eq!(segment(&with_fixed_checksums(&corrupted)), [true, true, true]);
}

/// Each seed recovers as the case it was built for, and is committed with its current bytes (or written when
/// `FERRY_WRITE_FUZZ_SEEDS` is set).
#[test]
fn segment_recovery_seeds_recover_as_built_and_are_committed() {
    let write = std::env::var_os("FERRY_WRITE_FUZZ_SEEDS").is_some();
    for (name, input, expected) in segment_recovery_seeds() {
        let report = segment_recovery(&input);
        assert!(expected(&report), "seed {name}: {report:?}");
        let path = corpus_dir("segment_recovery").join(format!("seed-{name}"));
        if write {
            std::fs::write(&path, &input).expect("corpus directory is writable");
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(committed == input, "{} is stale: regenerate with FERRY_WRITE_FUZZ_SEEDS=1", path.display());
    }
}
