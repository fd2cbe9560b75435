//! Exactly-once consume-transform-produce: copies a topic to another, upper-casing each value.
//!
//! Each poll's output records and the input offsets after them are committed in one transaction, so every input
//! record shows up in the output exactly once, whatever crashes or restarts happen. Run several copiers with
//! different transactional ids in the same group to share the input's partitions; a restarted copier with the same
//! transactional id fences its old instance.
//!
//! ```sh
//! ferry topic create input --partitions 4 && ferry topic create output --partitions 4
//! cargo run -p ferry-client --example copier -- 127.0.0.1:7070 input output copiers copier-0
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_client::{
    ClientError, CommitMode, Consumer, ConsumerConfig, ConsumerRecord, GroupConfig, GroupMetadata, OffsetReset,
    ProducerRecord, TransactionalConfig, TransactionalProducer,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut arg = |default: &str| args.next().unwrap_or_else(|| default.to_owned());
    let (broker, input, output, group, transactional_id) =
        (arg("127.0.0.1:7070"), arg("input"), arg("output"), arg("copiers"), arg("copier-0"));

    // The consumer never commits by itself: offsets are committed by the producer's transactions.
    let group = GroupConfig { commit_mode: CommitMode::None, ..GroupConfig::new(group) };
    let config = ConsumerConfig { group: Some(group), offset_reset: OffsetReset::Earliest, ..Default::default() };
    let mut consumer = Consumer::new(broker.clone(), config)?;
    consumer.subscribe([input.as_str()])?;
    let mut producer = TransactionalProducer::connect(broker, TransactionalConfig::new(transactional_id)).await?;

    loop {
        let records = consumer.poll(Duration::from_secs(1)).await?;
        let Some(group) = consumer.group_metadata() else { continue };
        if records.is_empty() {
            continue;
        }
        match copy(&mut producer, &group, &records, &output).await {
            Ok(()) => {}
            Err(error) if error.is_fenced() => {
                eprintln!("another copier with this transactional id took over; stopping");
                break;
            }
            Err(error) if error.is_transaction_aborted() || error.is_group_changed() => {
                // Nothing of the transaction is visible: read the same records again and redo the work. After a
                // rebalance the next poll rejoins the group, and partitions lost meanwhile are the new owner's.
                eprintln!("transaction aborted ({error}); processing the records again");
                producer.abort().await?;
                consumer.rewind(&records);
            }
            Err(error) => return Err(error.into()),
        }
    }
    producer.close().await;
    consumer.close().await;
    Ok(())
}

/// One transaction: the transformed records, and the input offsets after them.
async fn copy(
    producer: &mut TransactionalProducer,
    group: &GroupMetadata,
    records: &[ConsumerRecord],
    output: &str,
) -> Result<(), ClientError> {
    producer.begin()?;
    let mut next_offsets = BTreeMap::new();
    for record in records {
        let value = record.value.as_deref().unwrap_or_default().to_ascii_uppercase();
        let mut copy = ProducerRecord::new(output, value);
        copy.key = record.key.clone();
        producer.send(copy).await?;
        next_offsets.insert((record.topic.to_string(), record.partition), record.offset + 1);
    }
    let offsets: Vec<(String, u32, u64)> =
        next_offsets.into_iter().map(|((topic, partition), offset)| (topic, partition, offset)).collect();
    producer.send_offsets(group, &offsets).await?;
    producer.commit().await?;
    Ok(())
}
