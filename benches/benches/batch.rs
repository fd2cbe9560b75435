//! Micro-benchmarks of the record-batch format: build, decode (checksum included), record walk and rebase.
//!
//! Reproduce: `cargo bench -p ferry-bench --bench batch`

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferry_protocol::batch::{BatchBuilder, NewRecord, RecordBatch};

fn build(n_records: usize, value_bytes: usize) -> RecordBatch {
    let value = vec![0x5a; value_bytes];
    let mut builder = BatchBuilder::new();
    for record_idx in 0..n_records {
        let key = (record_idx as u64).to_be_bytes();
        builder
            .push(NewRecord { timestamp: 1_700_000_000_000, key: Some(&key), value: Some(&value), headers: &[] })
            .expect("the benchmark batch fits the limits");
    }
    builder.build().expect("the benchmark batch is not empty")
}

fn batch_benches(c: &mut Criterion) {
    for (n_records, value_bytes) in [(100usize, 100usize), (64, 1024)] {
        let batch = build(n_records, value_bytes);
        let bytes: Bytes = batch.as_bytes().clone();
        let label = format!("{n_records}x{value_bytes}B");
        let mut group = c.benchmark_group("batch");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("build", &label), &(n_records, value_bytes), |b, &(n, v)| {
            b.iter(|| build(n, v))
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
