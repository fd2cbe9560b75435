//! Micro-benchmarks of a partition's dedup table of idempotent producers ([`ProducerTable`]): what the appender thread
//! does for each idempotent batch, with 1, 1,000 and 100,000 producers known to the partition.
//!
//! - `check_next`: the check of a producer's next batch (verdict: append). Pure; the table does not change.
//! - `check_duplicate`: the check of a retry of the producer's latest batch (verdict: duplicate, found last of the
//!   five retained batches, since the search starts at the oldest).
//! - `check_and_record`: the accept path, the check then [`ProducerTable::record`] after the append.
//! - `expire_none`: [`ProducerTable::expire`] when no entry has expired; the appender runs it after every group commit.
//!
//! Every producer has written five batches of 100 records. Each iteration picks a producer at random (xorshift), so
//! with 100,000 producers the lookups miss the CPU caches as a broker's would.
//!
//! Reproduce: `cargo bench -p ferry-bench --bench producer_state`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ferry_bench::micro::{self, Xorshift};
use ferry_log::producers::BATCHES_RETAINED;
use ferry_log::{ProducerTable, SequenceCheck};
use ferry_protocol::batch::{BatchHeader, ProducerFields, sequence_add};

/// Records per batch.
const BATCH_RECORDS: usize = 100;
const BATCH_RECORDS_U32: u32 = BATCH_RECORDS as u32;
/// When every producer wrote, in ms since the Unix epoch; `expire_none` runs a second later.
const WRITE_MS: i64 = micro::RECORD_TIMESTAMP_MS;
/// The default producer expiration (`ProducerStateConfig::expiration`): 24 hours.
const EXPIRATION_MS: i64 = 24 * 3600 * 1000;

/// The header of `producer_id`'s batch starting at sequence `base_sequence` (epoch 0), placed at `base_offset`.
fn header(template: &BatchHeader, producer_id: i64, base_sequence: i32, base_offset: u64) -> BatchHeader {
    BatchHeader { producer_id, producer_epoch: 0, base_sequence, base_offset, ..*template }
}

/// A producer id below `n_producers`.
fn pick(picker: &mut Xorshift, n_producers: usize) -> i64 {
    i64::try_from(picker.below(n_producers as u64)).expect("fewer producers than i64::MAX")
}

/// Sequence of the first record of a producer's `batch_idx`th batch.
fn sequence(batch_idx: usize) -> i32 {
    i32::try_from(batch_idx * BATCH_RECORDS).expect("benchmark sequences stay small")
}

/// A table of `n_producers` producers (ids 0 to n-1) that each wrote [`BATCHES_RETAINED`] batches.
fn table(template: &BatchHeader, n_producers: usize) -> ProducerTable {
    let mut table = ProducerTable::new(n_producers);
    let mut offset = 0u64;
    for batch_idx in 0..BATCHES_RETAINED {
        for producer_id in 0..n_producers {
            let id = i64::try_from(producer_id).expect("fewer producers than i64::MAX");
            table.record(&header(template, id, sequence(batch_idx), offset), WRITE_MS);
            offset += BATCH_RECORDS as u64;
        }
    }
    table
}

fn producer_state_benches(c: &mut Criterion) {
    let mut template = micro::batch(BATCH_RECORDS, 100);
    template.set_producer(ProducerFields { producer_id: 0, producer_epoch: 0, base_sequence: 0 });
    let template = *template.header();
    let mut group = c.benchmark_group("producer_state");
    for n_producers in [1usize, 1_000, 100_000] {
        let mut table = table(&template, n_producers);
        let next = sequence(BATCHES_RETAINED);
        let latest = sequence(BATCHES_RETAINED - 1);
        group.bench_function(BenchmarkId::new("check_next", n_producers), |b| {
            let mut picker = Xorshift::default();
            b.iter(|| {
                let id = pick(&mut picker, n_producers);
                let verdict = table.check(&header(&template, id, next, 0));
                assert_eq!(verdict, Ok(SequenceCheck::Append));
            })
        });
        group.bench_function(BenchmarkId::new("check_duplicate", n_producers), |b| {
            let mut picker = Xorshift::default();
            b.iter(|| {
                let id = pick(&mut picker, n_producers);
                let verdict = table.check(&header(&template, id, latest, 0));
                assert!(matches!(verdict, Ok(SequenceCheck::Duplicate { .. })));
            })
        });
        // Outside the closure: criterion calls it again for the measurement after the warm-up, and the table keeps
        // what the warm-up recorded.
        let mut picker = Xorshift::default();
        let mut next_sequences = vec![next; n_producers];
        let mut offset = 1u64 << 40;
        group.bench_function(BenchmarkId::new("check_and_record", n_producers), |b| {
            b.iter(|| {
                let id = pick(&mut picker, n_producers);
                let next_sequence = &mut next_sequences[usize::try_from(id).expect("a small id")];
                let header = header(&template, id, *next_sequence, offset);
                assert_eq!(table.check(&header), Ok(SequenceCheck::Append));
                table.record(&header, WRITE_MS);
                // A long run with one producer passes `SEQUENCE_MAX`: wrap as producers do.
                *next_sequence = sequence_add(*next_sequence, BATCH_RECORDS_U32);
                offset += BATCH_RECORDS as u64;
            })
        });
        group.bench_function(BenchmarkId::new("expire_none", n_producers), |b| {
            b.iter(|| assert_eq!(table.expire(black_box(WRITE_MS + 1000), EXPIRATION_MS), 0))
        });
    }
    group.finish();
}

criterion_group!(benches, producer_state_benches);
criterion_main!(benches);
