//! Group commit groups: one fsync covers every request queued behind it, and every reply follows its fsync.

use std::path::PathBuf;
use std::sync::Arc;

use ferry_log::fs::SimEvent;
use ferry_log::{Appender, Durability, FsyncPolicy, LogConfig, SimFs, Storage};

use crate::common::{clock, make_batch, open, small_config};

fn start(fs: &SimFs) -> (Appender, LogConfig) {
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let config = LogConfig { segment_bytes: 1 << 30, ..small_config(FsyncPolicy::Always) };
    let (log, _) = open(&storage, &PathBuf::from("/data/p"), &config, &clock());
    (Appender::start(log, "group", &config).expect("start"), config)
}

#[test]
fn requests_queued_behind_an_fsync_share_the_next_one() {
    let fs = SimFs::new(1);
    let (appender, _) = start(&fs);
    let handle = appender.handle();
    let syncs_before = fs.stats().file_syncs;
    fs.hold_syncs(true);
    let first = handle.blocking_submit(vec![make_batch(1, 100, 1, 0)]).expect("submit");
    fs.wait_for_held_sync();
    let queued: Vec<_> =
        (0..99).map(|idx| handle.blocking_submit(vec![make_batch(1, 100, 1, idx as u8)]).expect("submit")).collect();
    assert_eq!(handle.queued(), 99, "all 99 wait in the queue");
    fs.hold_syncs(false);
    first.blocking_wait().expect("first group");
    for (next, pending) in (1..).zip(queued) {
        let ack = pending.blocking_wait().expect("second group");
        assert_eq!(ack.durability, Durability::Fsynced);
        assert_eq!(ack.ranges[0].first, next, "offsets follow submission order");
    }
    assert_eq!(fs.stats().file_syncs - syncs_before, 2, "100 appends, 2 fsyncs");
    appender.shutdown().expect("shutdown");
}

#[test]
fn concurrent_appenders_get_replies_only_after_the_fsync_covering_them() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 40;
    let fs = SimFs::new(2);
    let (appender, _) = start(&fs);
    fs.record_events(true);
    let segment = PathBuf::from("/data/p/00000000000000000000.log");
    let batch_len = make_batch(1, 200, 1, 0).len_bytes() as u64;
    let threads: Vec<_> = (0..THREADS)
        .map(|thread_idx| {
            let handle = appender.handle();
            let fs = fs.clone();
            let segment = segment.clone();
            std::thread::spawn(move || {
                for idx in 0..PER_THREAD {
                    let ack =
                        handle.blocking_append(vec![make_batch(1, 200, 1, (thread_idx * idx) as u8)]).expect("ack");
                    let offset = ack.ranges[0].first;
                    // All batches have the same size, so the batch at `offset` ends at (offset + 1) * batch_len.
                    let end = (offset + 1) * batch_len;
                    assert!(fs.synced_len(&segment).expect("segment") >= end, "acknowledged before durable");
                    fs.mark(offset);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("appender thread");
    }
    let events = fs.events();
    let mut synced = 0u64;
    let mut n_syncs = 0;
    let mut n_marks = 0;
    for event in &events {
        match event {
            SimEvent::Sync { path, len } if *path == segment => {
                synced = *len;
                n_syncs += 1;
            }
            SimEvent::Marker { label } => {
                assert!(synced >= (label + 1) * batch_len, "reply for offset {label} came before its fsync");
                n_marks += 1;
            }
            _ => {}
        }
    }
    assert_eq!(n_marks, THREADS * PER_THREAD);
    assert!(n_syncs <= THREADS * PER_THREAD, "at most one fsync per append ({n_syncs})");
    appender.shutdown().expect("shutdown");
}
