//! Micro-benchmarks of the fetch read path: [`LogReader::read`] from a partition log in the page cache, and the
//! offset-index lookup a read starts with.
//!
//! Two logs are written once (fsync `never`, so their data stays in the page cache) in a temporary directory under
//! `/var/tmp` (or `$FERRY_BENCH_DIR`): 10,000 batches of 100 records x 100 B (11 KiB each: every batch gets an index
//! entry, one per 4 KiB by default) and 100,000 batches of one 100 B record (175 B each: an entry every 23 or so
//! batches, so a lookup reads headers from the entry to the batch).
//!
//! - `fetch/read_first_batch`: a read of the first batch only (`bytes_max` 1): no index lookup.
//! - `fetch/read_1MiB`: a read from the first offset with `bytes_max` 1 MiB, each batch's CRC-32C verified.
//! - `fetch/read_random_batch`: a read of the batch holding a random offset (`bytes_max` 1): lookup and read.
//! - `fetch_index/locate_random`: the lookup alone ([`LogReader::locate_offset`]): the in-memory index's binary
//!   search, then the batch headers read to check the entry and walk to the batch.
//!
//! Reproduce: `cargo bench -p ferry-bench --bench fetch`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferry_bench::micro::{self, Xorshift};
use ferry_log::{FsyncPolicy, Log, LogReader, PartitionLog};

/// Batches per append call while a log is written.
const APPEND_BATCHES: usize = 100;
/// The large read's `bytes_max`: 1 MiB.
const LARGE_READ_BYTES: u32 = 1 << 20;

/// A log of `n_batches` batches of `n_records` records of `value_bytes` bytes, written without fsync.
fn written_log(dir: &std::path::Path, n_batches: usize, n_records: usize, value_bytes: usize) -> Log {
    assert!(n_batches.is_multiple_of(APPEND_BATCHES), "whole append calls");
    let mut log = micro::open_log(dir, micro::log_config(FsyncPolicy::Never));
    let mut batches = vec![micro::batch(n_records, value_bytes); APPEND_BATCHES];
    for _ in 0..n_batches / APPEND_BATCHES {
        log.append(&mut batches).expect("append");
    }
    log
}

fn read_len(reader: &LogReader, from: u64, bytes_max: u32) -> u64 {
    reader.read(from, bytes_max).expect("read").bytes.len() as u64
}

fn fetch_benches(c: &mut Criterion) {
    for (n_batches, n_records, value_bytes) in [(10_000usize, 100usize, 100usize), (100_000, 1, 100)] {
        let dir = micro::temp_dir();
        let log = written_log(dir.path(), n_batches, n_records, value_bytes);
        let reader = log.reader();
        let end = reader.visible_end();
        let label = format!("{n_batches}x{n_records}x{value_bytes}B");

        let mut group = c.benchmark_group("fetch");
        group.throughput(Throughput::Bytes(read_len(&reader, 0, 1)));
        group.bench_function(BenchmarkId::new("read_first_batch", &label), |b| {
            b.iter(|| reader.read(black_box(0), 1).expect("read"))
        });
        group.throughput(Throughput::Bytes(read_len(&reader, 0, LARGE_READ_BYTES)));
        group.bench_function(BenchmarkId::new("read_1MiB", &label), |b| {
            b.iter(|| reader.read(black_box(0), LARGE_READ_BYTES).expect("read"))
        });
        group.throughput(Throughput::Bytes(read_len(&reader, 0, 1)));
        group.bench_function(BenchmarkId::new("read_random_batch", &label), |b| {
            let mut random = Xorshift::default();
            b.iter(|| reader.read(random.below(end), 1).expect("read"))
        });
        group.finish();

        let mut group = c.benchmark_group("fetch_index");
        group.bench_function(BenchmarkId::new("locate_random", &label), |b| {
            let mut random = Xorshift::default();
            b.iter(|| reader.locate_offset(random.below(end)).expect("locate"))
        });
        group.finish();
    }
}

criterion_group!(benches, fetch_benches);
criterion_main!(benches);
