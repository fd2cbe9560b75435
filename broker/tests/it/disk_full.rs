//! Disk full on a real, small file system: the real `ferry-broker` binary with its data directory on a 48 MiB tmpfs
//! that this test mounts. Producers write until the file system is full; then every failed write has a clear
//! error (`DISK_FULL`), everything acknowledged reads back intact, the broker stays up, and writes resume as soon as
//! space is freed, also across a SIGKILL and a restart.
//!
//! Mounting needs root (`CAP_SYS_ADMIN`), as in `.ci/run`; without it the test fails and says so rather than
//! skipping.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_client::{
    Admin, ClientError, ConnectionConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, SeekTo,
};
use ferry_protocol::ErrorCode;

use crate::chaos::driver::{start_broker, stop_broker};
use crate::support::BrokerProcess;

const TOPIC: &str = "full";
/// The tmpfs: small enough to fill in seconds, large enough for RocksDB's files and a few segments.
const FS_BYTES: u64 = 48 << 20;
/// A file written first and deleted to free space: more than the broker needs to continue.
const RESERVE_BYTES: usize = 12 << 20;
const VALUE_BYTES: usize = 1000;

/// A tmpfs of [`FS_BYTES`] mounted on a temporary directory; unmounted (lazily) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={FS_BYTES}"), "ferry-disk-full"])
            .arg(dir.path())
            .output()
            .expect("run mount(8)");
        assert!(
            output.status.success(),
            "the disk-full test mounts a {FS_BYTES}-byte tmpfs and needs root (CAP_SYS_ADMIN) for it: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn value(idx: u64) -> String {
    format!("{idx:012}-{}", "v".repeat(VALUE_BYTES - 13))
}

fn producer(addr: &str) -> Producer {
    let config = ProducerConfig {
        // A full disk is retriable: each record is retried until this runs out, then reported with DISK_FULL.
        delivery_timeout: Duration::from_secs(2),
        retry_backoff_initial: Duration::from_millis(20),
        retry_backoff_max: Duration::from_millis(200),
        batch_bytes_max: 64 * 1024,
        ..ProducerConfig::default()
    };
    Producer::new(addr.to_owned(), config).expect("producer")
}

/// Whether `error` says the disk is full: directly, or as the last error before the delivery timeout.
fn is_disk_full(error: &ClientError) -> bool {
    match error {
        ClientError::Broker { code, .. } => *code == ErrorCode::DiskFull,
        ClientError::DeliveryTimeout { last_error: Some(last), .. } => is_disk_full(last),
        _ => false,
    }
}

/// Sends values `from..` in waves until one fails; returns the values acknowledged (with their offsets, in send
/// order) and the first error. Every wave's sends are in flight together, so the disk fills mid-batch.
async fn produce_until_full(addr: &str, from: u64) -> (Vec<(u64, u64)>, ClientError) {
    let producer = producer(addr);
    let mut acked = Vec::new();
    let mut next = from;
    loop {
        let mut deliveries = Vec::new();
        for _ in 0..256 {
            let record = ProducerRecord::new(TOPIC, value(next)).with_partition(0);
            deliveries.push((next, producer.send(record).await.expect("send")));
            next += 1;
        }
        let mut failure = None;
        for (idx, delivery) in deliveries {
            match delivery.await {
                Ok(metadata) if failure.is_none() => acked.push((idx, metadata.offset.expect("acks=all"))),
                Ok(metadata) => panic!("value {idx} acknowledged at {:?} after an earlier one failed", metadata.offset),
                Err(error) => failure = failure.or(Some(error)),
            }
        }
        if let Some(error) = failure {
            let _ = producer.close().await;
            return (acked, error);
        }
        assert!(next - from < 200_000, "the {FS_BYTES}-byte file system never filled");
    }
}

/// Produces `values` and asserts each is acknowledged.
async fn produce_all(addr: &str, values: std::ops::Range<u64>) -> Vec<(u64, u64)> {
    let producer = producer(addr);
    let mut deliveries = Vec::new();
    for idx in values {
        deliveries
            .push((idx, producer.send(ProducerRecord::new(TOPIC, value(idx)).with_partition(0)).await.expect("send")));
    }
    let mut acked = Vec::new();
    for (idx, delivery) in deliveries {
        let metadata = delivery.await.unwrap_or_else(|error| panic!("value {idx} after space was freed: {error}"));
        acked.push((idx, metadata.offset.expect("acks=all")));
    }
    producer.close().await.expect("close");
    acked
}

/// Reads the whole partition and asserts it holds exactly the acknowledged values, at their offsets, in order.
async fn assert_holds_exactly(addr: &str, acked: &[(u64, u64)]) {
    let mut consumer = Consumer::new(addr.to_owned(), ConsumerConfig::default()).expect("consumer");
    consumer.assign(TOPIC, [0]).expect("assign");
    consumer.seek_all(SeekTo::Earliest);
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while read.len() < acked.len() {
        assert!(tokio::time::Instant::now() < deadline, "read {} of {} values in time", read.len(), acked.len());
        for record in consumer.poll(Duration::from_millis(300)).await.expect("poll") {
            let value = String::from_utf8(record.value.expect("a value").to_vec()).expect("utf-8");
            let idx: u64 = value[..12].parse().expect("an index");
            assert_eq!(value, self::value(idx), "value {idx} intact at offset {}", record.offset);
            read.push((idx, record.offset));
        }
    }
    // Nothing beyond them either.
    assert!(consumer.poll(Duration::from_millis(300)).await.expect("poll").is_empty(), "no unacknowledged value");
    consumer.close().await;
    assert_eq!(read, acked, "every acknowledged value once, at its acknowledged offset, in send order");
}

fn broker_on(data_dir: &Path) -> (BrokerProcess, String) {
    let (broker, addr) = start_broker(data_dir, "127.0.0.1:0");
    (broker, addr.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_with_disk_full_damages_nothing_and_writes_resume_when_space_is_freed() {
    let fs = Tmpfs::mount();
    let reserve: PathBuf = fs.path().join("reserve");
    std::fs::write(&reserve, vec![1u8; RESERVE_BYTES]).expect("write the reserve file");
    let data_dir = fs.path().join("data");
    let (broker, addr) = broker_on(&data_dir);
    let admin = Admin::new(addr.clone(), ConnectionConfig::default()).expect("admin");
    // Small segments, so the disk fills across rolls and index writes too.
    admin
        .create_topic(TOPIC, 1, [("segment.bytes".to_owned(), (1u64 << 20).to_string())].into())
        .await
        .expect("create the topic");
    admin.close().await;

    // Fill the disk.
    let (mut acked, error) = produce_until_full(&addr, 0).await;
    assert!(is_disk_full(&error), "the failed write says the disk is full: {error:?}");
    assert!(acked.len() > 1000, "{} values written before the disk was full", acked.len());
    let written_when_full = acked.len();

    // Still up, still serving: every acknowledged value reads back intact; another write fails the same way.
    assert_holds_exactly(&addr, &acked).await;
    let (more, error) = produce_until_full(&addr, 1_000_000).await;
    assert!(more.is_empty() && is_disk_full(&error), "{} more written; {error:?}", more.len());

    // Metadata writes on the full disk: a new topic (a RocksDB write and a partition directory).
    let admin = Admin::new(addr.clone(), ConnectionConfig::default()).expect("admin");
    let refused = admin.create_topic("late", 2, Default::default()).await.expect_err("no space for a new topic");
    assert!(is_disk_full(&refused), "{refused:?}");

    // Free space: writes resume, on the same broker, without a restart.
    std::fs::remove_file(&reserve).expect("free the reserve");
    acked.extend(produce_all(&addr, 2_000_000..2_002_000).await);
    assert_holds_exactly(&addr, &acked).await;
    // The refused topic left nothing behind: its name is free.
    admin.create_topic("late", 2, Default::default()).await.expect("create the topic once space is freed");
    admin.close().await;

    // And across a SIGKILL: the restarted broker recovers the same log, undamaged, and takes writes.
    let log = stop_broker(broker, libc::SIGKILL);
    assert!(log.iter().any(|line| line.contains("disk") && line.contains("full")), "the broker logged it: {log:#?}");
    let (broker, addr) = broker_on(&data_dir);
    assert_holds_exactly(&addr, &acked).await;
    acked.extend(produce_all(&addr, 3_000_000..3_000_100).await);
    assert_holds_exactly(&addr, &acked).await;
    let log = stop_broker(broker, libc::SIGTERM);
    let recovered: Vec<_> =
        log.iter().filter(|line| line.contains("ferry_log::recovery: partition recovered")).collect();
    assert!(
        recovered.len() == 3 && recovered.iter().all(|line| line.contains("damaged: None")),
        "three partitions recovered, none damaged: {log:#?}"
    );
    eprintln!(
        "disk full: {written_when_full} values of {VALUE_BYTES} B acknowledged before DISK_FULL on a {FS_BYTES}-byte tmpfs"
    );
}
