//! Ferry benchmarks: load generators and micro-benchmarks (see `benches/README.md`).
