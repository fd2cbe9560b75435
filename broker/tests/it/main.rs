//! The broker's one integration-test binary (every test binary links RocksDB, so there is only one).
//!
//! - `alert_series`: the real binary through each fault an alert rule watches for (SIGKILL, a failing fsync, a
//!   damaged partition, a torn tail, a lagging group, an open transaction, a connection flood), scraped before and
//!   after; the values `ops/prometheus/tests.yml` (`promtool test rules`) must start from.
//! - `binary`: runs the real `ferry-broker` executable: startup, `/metrics`, signals, the data-directory lock,
//!   config errors.
//! - `in_process`: starts brokers with `ferry_broker::Broker::open`.
//! - `end_to_end`: the client library and the `ferry` CLI against an in-process broker over TCP: 100k records
//!   across 8 partitions, long polling, the CLI, metrics, clean restarts, topic deletion.
//! - `bad_input`: malformed frames (raw TCP) and invalid requests on a live broker, the connection limit, the
//!   request-read timeout; other clients are not disturbed.
//! - `chaos`: Jepsen-style histories and their checker (lost, duplicated, reordered values, offset gaps), and the
//!   crash driver: the real binary SIGKILLed at seeded moments (also during recovery) while producers write.
//! - `crash`: the real binary restarted (SIGTERM) and killed (SIGKILL) while a producer sends.
//! - `disk_full`: the real binary on a small tmpfs this test mounts: `DISK_FULL`, nothing acknowledged damaged,
//!   writes (and topic creation) resume once space is freed, also across a SIGKILL.
//! - `dedup`: message-id dedup: resent dedup keys dropped and reported with the original offsets (client and raw
//!   frames), the window in the ack, a retry after a SIGKILL, idempotent producers refused, the metric.
//! - `fault_proxy`: a frame-aware TCP proxy that drops, duplicates, delays and resets requests and responses, and
//!   its self-tests.
//! - `groups`: consumer groups: a member killed among three, the delivery guarantees of the commit modes, stale
//!   members fenced, cooperative rebalancing, static membership, committed offsets across a SIGKILL, a consumer
//!   rejoining after a broker SIGKILL, the CLI and the lag metrics, offset expiry.
//! - `transactions`: transactions in raw requests: commit and abort visibility, offsets in the transaction, fencing,
//!   stale and replayed requests, timeouts, the operator's list and abort, SIGKILL recovery (with failpoints).
//! - `hostile`: hostile and broken clients (live-socket fuzzers, idle and slowloris crowds, connection floods,
//!   consumers that never read, a record with a million headers) against the real binary, while well-behaved clients
//!   work: the broker stays up, within twice its baseline RSS, and the well-behaved clients see no error.
//! - `introspection`: `/health` and `/ready` over HTTP, DescribeBroker and DescribeProducers through the client and
//!   the CLI (`broker info`, `producers`, `topic describe` sizes, `group describe` lag in seconds, `--json`), and a
//!   damaged partition as `/ready`, `topic describe` and `broker info` report it.
//! - `harness`: an in-process test broker, the binary's client address, raw frames, metric values.
//! - `support`: a broker child process whose stderr log lines the tests can wait for, and a tiny HTTP scraper.

mod alert_series;
mod bad_input;
mod binary;
mod chaos;
mod copier;
mod crash;
mod dedup;
mod disk_full;
mod end_to_end;
mod fault_proxy;
mod groups;
mod harness;
mod hostile;
mod idempotence;
mod in_process;
mod introspection;
mod meta_corruption;
mod metrics;
mod support;
mod transactions;
mod transfer;
