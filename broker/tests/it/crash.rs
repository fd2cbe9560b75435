//! Restarts and crashes of the real `ferry-broker` process while a producer is sending.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_client::{Admin, ConnectionConfig, Producer, ProducerConfig, ProducerRecord};

use crate::chaos::driver::{start_broker, stop_broker};
use crate::chaos::read_all;
use crate::harness::eventually;

/// Every record of `topic`'s partitions from the start to their current end, by (partition, offset).
async fn read_everything(addr: &str, topic: &str, partitions: u32) -> BTreeMap<(u32, u64), String> {
    let reads = read_all(addr, topic, partitions, Duration::from_secs(120)).await;
    reads.into_iter().map(|read| ((read.partition, read.offset), read.value)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_mid_produce_gets_every_record_and_every_delivery_completes() {
    const HALF: usize = 10_000;
    const PARTITIONS: u32 = 3;
    let data_dir = tempfile::tempdir().expect("tempdir");
    let (broker, address) = start_broker(data_dir.path(), "127.0.0.1:0");
    let addr = address.to_string();
    let admin = Admin::new(addr.clone(), ConnectionConfig::default()).expect("admin");
    admin.create_topic("restart", PARTITIONS, BTreeMap::new()).await.expect("create");
    admin.close().await;

    let config =
        ProducerConfig { buffer_bytes_max: 256 * 1024, batch_bytes_max: 64 * 1024, ..ProducerConfig::default() };
    let producer = Producer::new(addr.clone(), config).expect("producer");
    let acked = Arc::new(AtomicUsize::new(0));
    let (restarting, restarted_signal) = tokio::sync::oneshot::channel::<()>();
    let producing = tokio::spawn({
        let (producer, acked) = (producer.clone(), Arc::clone(&acked));
        async move {
            let mut deliveries = Vec::with_capacity(2 * HALF);
            let mut restarted_signal = Some(restarted_signal);
            for idx in 0..2 * HALF {
                if idx == HALF {
                    // The second half is sent while the broker goes down and comes back.
                    let _ = restarted_signal.take().expect("once").await;
                }
                let record = ProducerRecord::new("restart", format!("value {idx:06}")).with_key(format!("key {idx}"));
                let delivery = producer.send(record).await.expect("accepted");
                let acked = Arc::clone(&acked);
                deliveries.push(tokio::spawn(async move {
                    let result = delivery.await;
                    acked.fetch_add(1, Ordering::Relaxed);
                    result
                }));
            }
            deliveries
        }
    });

    eventually("a tenth of the records to be acknowledged", || {
        let acked = Arc::clone(&acked);
        async move { acked.load(Ordering::Relaxed) >= HALF / 10 }
    })
    .await;
    let log = stop_broker(broker, libc::SIGTERM);
    assert!(log.iter().any(|line| line.contains("partition logs closed")), "appenders shut down: {log:#?}");
    let _ = restarting.send(());
    let (broker, restarted_address) = start_broker(data_dir.path(), &addr);
    assert_eq!(restarted_address, address, "same port");

    let deliveries = tokio::time::timeout(Duration::from_secs(120), producing).await.expect("all sent").expect("task");
    let mut offsets = BTreeMap::new();
    for (idx, delivery) in deliveries.into_iter().enumerate() {
        let metadata = delivery.await.expect("delivery task").unwrap_or_else(|error| panic!("record {idx}: {error}"));
        let offset = metadata.offset.unwrap_or_else(|| panic!("record {idx} has no offset"));
        offsets.insert(idx, (metadata.partition, offset));
    }
    producer.close().await.expect("close");

    let stored = read_everything(&addr, "restart", PARTITIONS).await;
    for (idx, (partition, offset)) in &offsets {
        let value = stored
            .get(&(*partition, *offset))
            .unwrap_or_else(|| panic!("record {idx} missing at {partition}:{offset}"));
        assert_eq!(value, &format!("value {idx:06}"), "the acknowledged offset holds the record");
    }
    // At-least-once: a batch in flight across the restart may be stored twice, never lost.
    assert!(stored.len() >= 2 * HALF, "{} stored", stored.len());
    stop_broker(broker, libc::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_acks_all_and_fsync_always_keeps_every_acknowledged_record() {
    const PARTITIONS: u32 = 4;
    const RECORDS_MAX: usize = 200_000;
    let data_dir = tempfile::tempdir().expect("tempdir");
    let (broker, address) = start_broker(data_dir.path(), "127.0.0.1:0");
    let addr = address.to_string();
    let admin = Admin::new(addr.clone(), ConnectionConfig::default()).expect("admin");
    admin.create_topic("crash", PARTITIONS, BTreeMap::new()).await.expect("create");
    admin.close().await;

    let config = ProducerConfig {
        buffer_bytes_max: 256 * 1024,
        batch_bytes_max: 64 * 1024,
        delivery_timeout: Duration::from_secs(3),
        ..ProducerConfig::default()
    };
    let acked: Arc<Mutex<Vec<(u32, u64, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let producing = tokio::spawn({
        let (acked, stop, addr) = (Arc::clone(&acked), Arc::clone(&stop), addr.clone());
        async move {
            let producer = Producer::new(addr, config).expect("producer");
            let mut deliveries = Vec::new();
            for idx in 0..RECORDS_MAX {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let value = format!("value {idx:06}");
                let record = ProducerRecord::new("crash", value.clone()).with_key(format!("key {idx}"));
                let Ok(delivery) = producer.send(record).await else { break };
                let acked = Arc::clone(&acked);
                deliveries.push(tokio::spawn(async move {
                    if let Ok(metadata) = delivery.await {
                        let offset = metadata.offset.expect("acks=all returns an offset");
                        acked.lock().expect("lock").push((metadata.partition, offset, value));
                    }
                }));
            }
            // Records still pending fail (Closed or a delivery timeout): they were never acknowledged.
            drop(producer);
            for delivery in deliveries {
                delivery.await.expect("delivery task");
            }
        }
    });

    eventually("some records to be acknowledged", || {
        let acked = Arc::clone(&acked);
        async move { acked.lock().expect("lock").len() >= 3000 }
    })
    .await;
    stop_broker(broker, libc::SIGKILL);
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(60), producing).await.expect("the producer gives up").expect("task");
    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    assert!(acked.len() >= 3000, "{}", acked.len());

    let (broker, restarted_address) = start_broker(data_dir.path(), "127.0.0.1:0");
    let log = broker.log.clone();
    assert!(
        log.iter().any(|line| line.contains("partition recovered") && line.contains("clean=false")),
        "a killed broker recovers by scanning: {log:#?}"
    );
    let stored = read_everything(&restarted_address.to_string(), "crash", PARTITIONS).await;
    for (partition, offset, value) in &acked {
        let found = stored.get(&(*partition, *offset));
        assert_eq!(found, Some(value), "acknowledged record at {partition}:{offset} survived the crash");
    }
    stop_broker(broker, libc::SIGTERM);
}
