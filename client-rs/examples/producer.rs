//! Sends records to a topic and waits for every acknowledgement.
//!
//! ```sh
//! ferry topic create orders --partitions 4
//! cargo run -p ferry-client --example producer -- 127.0.0.1:7070 orders 1000
//! ```

use std::time::Duration;

use anyhow::Context;
use ferry_client::{Acks, Producer, ProducerConfig, ProducerRecord};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let broker = args.next().unwrap_or_else(|| "127.0.0.1:7070".to_owned());
    let topic = args.next().unwrap_or_else(|| "orders".to_owned());
    let n_records: u64 = args.next().map_or(Ok(1000), |count| count.parse()).context("the record count")?;

    let config = ProducerConfig { acks: Acks::All, linger: Duration::from_millis(5), ..ProducerConfig::default() };
    let producer = Producer::new(broker, config)?;
    // `send` returns once the record is buffered (waiting while the buffer is full); the delivery future resolves
    // once the broker acknowledged it. Keep the futures and await them afterwards, so records are batched.
    let mut deliveries = Vec::new();
    for record_idx in 0..n_records {
        let record = ProducerRecord::new(topic.clone(), format!("order {record_idx}"))
            .with_key(format!("customer-{}", record_idx % 10))
            .with_header("source", "example");
        deliveries.push(producer.send(record).await?);
    }
    let mut n_acknowledged = 0;
    for delivery in deliveries {
        let metadata = delivery.await.context("a record was not delivered")?;
        if n_acknowledged == 0 {
            println!("first record stored at partition {} offset {:?}", metadata.partition, metadata.offset);
        }
        n_acknowledged += 1;
    }
    producer.close().await?;
    println!("{n_acknowledged} of {n_records} records acknowledged");
    Ok(())
}
