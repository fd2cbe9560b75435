//! Micro-benchmarks of the record-batch format: build, decode (checksum included), record walk and rebase.
//!
//! Reproduce: `cargo bench -p ferry-bench --bench batch`

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferry_bench::micro;
use ferry_protocol::batch::RecordBatch;

fn batch_benches(c: &mut Criterion) {
    for (n_records, value_bytes) in [(100usize, 100usize), (64, 1024)] {
        let batch = micro::batch(n_records, value_bytes);
        let bytes: Bytes = batch.as_bytes().clone();
        let label = format!("{n_records}x{value_bytes}B");
        let mut group = c.benchmark_group("batch");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("build", &label), &(n_records, value_bytes), |b, &(n, v)| {
            b.iter(|| micro::batch(n, v))
        });
        group.bench_with_input(BenchmarkId::new("decode_and_verify_crc", &label), &bytes, |b, bytes| {
            b.iter(|| RecordBatch::decode(bytes.clone()).expect("valid batch"))
        });
        group.bench_with_input(BenchmarkId::new("walk_records", &label), &batch, |b, batch| {
            b.iter(|| batch.records().map(|r| r.expect("valid record").value.map_or(0, |v| v.len())).sum::<usize>())
        });
        group.bench_with_input(BenchmarkId::new("rebase", &label), &batch, |b, batch| {
            let mut batch = batch.clone();
            let mut offset = 0u64;
            b.iter(|| {
                offset += 1;
                batch.rebase(offset).expect("offset in range");
            })
        });
        group.finish();
    }
}

criterion_group!(benches, batch_benches);
criterion_main!(benches);
