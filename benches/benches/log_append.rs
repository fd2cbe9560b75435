//! Micro-benchmarks of the partition log's append ([`PartitionLog::append`]), with fsync `never` and `always`.
//!
//! One iteration appends one batch, as the appender does for one request. Each sample appends to a fresh log in a
//! temporary directory under `/var/tmp` (or `$FERRY_BENCH_DIR`), so a sample's writes never reach a segment roll and
//! are deleted (mostly before writeback) when it ends. With fsync `always` an iteration is an append then a
//! [`PartitionLog::sync`]: one `fdatasync` of the segment and the checkpoint rewrite, the cost of a group commit of one
//! batch; it measures the disk's flush latency more than the code, hence few samples.
//!
//! Reproduce: `cargo bench -p ferry-bench --bench log_append`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use ferry_bench::micro;
use ferry_log::{FsyncPolicy, PartitionLog};
use ferry_protocol::RecordBatch;

/// Appends `iters` copies of `template` to a fresh log (syncing after each with fsync `always`); returns the time taken.
fn append_timed(fsync: FsyncPolicy, template: &RecordBatch, iters: u64) -> Duration {
    let dir = micro::temp_dir();
    let mut log = micro::open_log(dir.path(), micro::log_config(fsync));
    let mut batches = vec![template.clone()];
    // Untimed: the first rebase copies the buffer shared with the template, later ones rewrite it in place (as for a
    // batch just read from a socket), and the segment holds data before the first timed append.
    log.append(&mut batches).expect("append");
    log.sync().expect("sync");
    let started = Instant::now();
    for _ in 0..iters {
        black_box(log.append(&mut batches).expect("append"));
        if fsync == FsyncPolicy::Always {
            log.sync().expect("sync");
        }
    }
    started.elapsed()
}

fn append_benches(c: &mut Criterion) {
    for fsync in [FsyncPolicy::Never, FsyncPolicy::Always] {
        let mut group = c.benchmark_group(format!("log_append_fsync_{fsync}"));
        if fsync == FsyncPolicy::Always {
            // Each iteration waits for the device (0.25-3 ms here): ten flat samples finish in seconds.
            group.sample_size(10).sampling_mode(SamplingMode::Flat);
        }
        for (n_records, value_bytes) in [(100usize, 100usize), (64, 1024)] {
            let template = micro::batch(n_records, value_bytes);
            group.throughput(Throughput::Bytes(u64::from(template.len_bytes())));
            let label = format!("{n_records}x{value_bytes}B");
            group.bench_with_input(BenchmarkId::from_parameter(label), &template, |b, template| {
                b.iter_custom(|iters| append_timed(fsync, template, iters))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, append_benches);
criterion_main!(benches);
