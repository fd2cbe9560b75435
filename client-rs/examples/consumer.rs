//! Reads every partition of a topic from the beginning and prints each record until nothing new arrives for a while.
//!
//! ```sh
//! cargo run -p ferry-client --example consumer -- 127.0.0.1:7070 orders
//! ```

use std::time::Duration;

use ferry_client::{Admin, ConnectionConfig, Consumer, ConsumerConfig, SeekTo};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let broker = args.next().unwrap_or_else(|| "127.0.0.1:7070".to_owned());
    let topic = args.next().unwrap_or_else(|| "orders".to_owned());

    // Manual assignment: ask the broker how many partitions the topic has, and read them all.
    let admin = Admin::new(broker.clone(), ConnectionConfig::default())?;
    let partition_count = admin.describe_topic(&topic).await?.partitions.len();
    admin.close().await;

    let mut consumer = Consumer::new(broker, ConsumerConfig::default())?;
    consumer.assign(&topic, (0..partition_count).map(|partition| u32::try_from(partition).unwrap_or(u32::MAX)))?;
    consumer.seek_all(SeekTo::Earliest);
    let mut n_records = 0u64;
    loop {
        // A long poll: returns as soon as records arrive, or empty after the timeout.
        let records = consumer.poll(Duration::from_secs(2)).await?;
        if records.is_empty() {
            break;
        }
        for record in records {
            let value = record.value.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            println!("{}:{}\t{value}", record.partition, record.offset);
            n_records += 1;
        }
    }
    consumer.close().await;
    eprintln!("{n_records} records read; nothing new for 2 s");
    Ok(())
}
