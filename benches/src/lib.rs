//! Ferry benchmarks: load generators and micro-benchmarks (see `benches/README.md`).
//!
//! The library holds what the criterion micro-benchmarks in `benches/` share: [`micro`].

pub mod micro;
