//! Chaos testing in Jepsen's vocabulary: a [`history::History`] of what producers sent and what the log holds at
//! the end, a [`checker`] that names every anomaly in it, and a [`driver`] that SIGKILLs the real broker.
//!
//! - `history`: sends (producer, send order, partition, unique value, outcome) and the final read.
//! - `checker`: lost acknowledged writes, duplicates, reordering, offset gaps and reuse, values never sent.
//! - `driver`: the real broker binary SIGKILLed, SIGSTOPped and restarted while producers write; `ChaosBroker`,
//!   `CrashRun`.
//! - `txn_checker`: aborted reads, torn transactions, lost commits and duplicates in a read-committed read.
//! - `rng`: the seeded random numbers every fault choice comes from, and the `FERRY_CHAOS_SEED` to replay one.

pub mod checker;
pub mod driver;
pub mod history;
pub mod rng;
pub mod txn_checker;

#[cfg(test)]
mod tests;

use std::time::Duration;

use ferry_client::{Admin, ConnectionConfig, Consumer, ConsumerConfig, SeekTo};
use tokio::time::Instant;

use history::Read;

/// Reads every record of `topic`'s partitions `0..partitions`, from each partition's start to the end it has when
/// the read starts, in fetch order (a record read twice is listed twice).
/// Fails the test if that takes longer than `deadline`.
pub async fn read_all(addr: &str, topic: &str, partitions: u32, deadline: Duration) -> Vec<Read> {
    let admin = Admin::new(addr, ConnectionConfig::default()).expect("admin");
    let info = admin.describe_topic(topic).await.expect("describe the topic");
    admin.close().await;
    let total: u64 = info.partitions.iter().map(|partition| partition.end_offset - partition.start_offset).sum();
    let mut consumer = Consumer::new(addr, ConsumerConfig::default()).expect("consumer");
    consumer.assign(topic, 0..partitions).expect("assign");
    consumer.seek_all(SeekTo::Earliest);
    let mut reads = Vec::with_capacity(usize::try_from(total).expect("fits in memory"));
    let deadline = Instant::now() + deadline;
    while (reads.len() as u64) < total {
        assert!(Instant::now() < deadline, "read {} of {total} records of {topic} in time", reads.len());
        for record in consumer.poll(Duration::from_millis(500)).await.expect("poll") {
            let value = record.value.as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
            reads.push(Read { partition: record.partition, offset: record.offset, value });
        }
    }
    consumer.close().await;
    reads
}
