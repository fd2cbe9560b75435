//! Tests of the client library and the `ferry` command line against a scripted peer (`support`): a real TCP
//! listener that speaks real frames and answers from a small in-memory model or from the test's script.
//!
//! Timing: tokio's paused clock auto-advances whenever the runtime looks idle, and with a real TCP peer it can look
//! idle while loopback bytes are still inside the kernel; a jump then fires unrelated timeouts. So the paused clock
//! is used only where such a jump cannot change the outcome (a peer that never answers); the other timing tests run
//! in real time with short durations and generous bounds, and wait for events (`Peer::wait_until`, forwarded
//! requests), never for a fixed sleep.

mod admin;
#[cfg(feature = "cli")]
mod cli;
mod connection;
mod consumer;
mod idempotence;
mod producer;
mod support;
mod transaction;
