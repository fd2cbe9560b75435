//! Compiles the `.proto` schemas under `proto/` into Rust with prost-build.
//!
//! protoc comes from the `protoc-bin-vendored` crate, so building needs no system protoc.
//! Every protobuf `bytes` field becomes `bytes::Bytes`, so decoding a frame body hands out slices of the
//! received buffer instead of copying record batches; maps become `BTreeMap` so encoding is deterministic.

use std::path::PathBuf;

/// The schemas, in the order they are documented; all are package `ferry.v1`.
const PROTO_FILES: &[&str] = &[
    "proto/api.proto",
    "proto/topics.proto",
    "proto/produce.proto",
    "proto/fetch.proto",
    "proto/offsets.proto",
    "proto/producer.proto",
    "proto/groups.proto",
    "proto/transactions.proto",
    "proto/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    // Setting PROTOC through the environment would need `unsafe` (`set_var`) in edition 2024;
    // prost-build takes the path directly instead.
    let protoc: PathBuf = protoc_bin_vendored::protoc_bin_path()?;
    prost_build::Config::new()
        .protoc_executable(protoc)
        .bytes(["."])
        .btree_map(["."])
        .compile_protos(PROTO_FILES, &["proto"])?;
    Ok(())
}
