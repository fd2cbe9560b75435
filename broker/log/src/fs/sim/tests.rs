use std::io::IoSlice;
use std::path::Path;

use super::*;

fn setup(seed: u64) -> (SimFs, PathBuf) {
    let fs = SimFs::new(seed);
    let dir = PathBuf::from("/p");
    fs.create_dir_all(&dir).expect("dir");
    (fs, dir)
}

fn append(file: &Arc<dyn LogFile>, bytes: &[u8]) {
    file.append(&[IoSlice::new(bytes)]).expect("append");
}

fn content(fs: &SimFs, path: &Path) -> Option<Vec<u8>> {
    fs.read_file(path)
}

#[test]
fn power_loss_keeps_only_synced_data_and_synced_entries() {
    let (fs, dir) = setup(1);
    let a = dir.join("a");
    let file = fs.open(&a, OpenMode::CreateNew).expect("create");
    append(&file, b"hello");
    fs.sync_dir(&dir).expect("sync dir");
    file.sync_data().expect("sync");
    append(&file, b" world");
    drop(file); // Closing syncs nothing.
    let b = dir.join("b");
    let other = fs.open(&b, OpenMode::CreateNew).expect("create");
    append(&other, b"never durable: entry not synced");
    other.sync_data().expect("sync");
    fs.crash(CrashMode::PowerLoss);
    assert_eq!(content(&fs, &a).as_deref(), Some(&b"hello"[..]));
    assert_eq!(content(&fs, &b), None);
    assert!(other.len().is_err(), "handles from before the crash are dead");
}

#[test]
fn process_kill_keeps_everything_written() {
    let (fs, dir) = setup(2);
    let a = dir.join("a");
    let file = fs.open(&a, OpenMode::CreateNew).expect("create");
    append(&file, b"unsynced");
    fs.crash(CrashMode::ProcessKill);
    assert_eq!(content(&fs, &a).as_deref(), Some(&b"unsynced"[..]));
    fs.crash(CrashMode::PowerLoss);
    assert_eq!(content(&fs, &a), None, "the entry itself was never synced");
}

#[test]
fn removal_and_rename_are_durable_only_after_sync_dir() {
    let (fs, dir) = setup(3);
    let (a, b) = (dir.join("a"), dir.join("b"));
    let file = fs.open(&a, OpenMode::CreateNew).expect("create");
    append(&file, b"x");
    file.sync_data().expect("sync");
    fs.sync_dir(&dir).expect("sync dir");
    fs.rename(&a, &b).expect("rename");
    fs.crash(CrashMode::PowerLoss);
    assert_eq!(fs.list(&dir).expect("list"), vec!["a".to_owned()]);
    fs.remove(&a).expect("remove");
    fs.sync_dir(&dir).expect("sync dir");
    fs.crash(CrashMode::PowerLoss);
    assert!(fs.list(&dir).expect("list").is_empty());
}

#[test]
fn torn_crash_keeps_a_sector_prefix_then_garbage_and_never_touches_synced_bytes() {
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let (fs, dir) = setup(seed);
        let a = dir.join("a");
        let file = fs.open(&a, OpenMode::CreateNew).expect("create");
        let synced: Vec<u8> = (0..700u32).map(|i| (i % 251) as u8).collect();
        append(&file, &synced);
        file.sync_data().expect("sync");
        fs.sync_dir(&dir).expect("sync dir");
        let unsynced = vec![0xAB; 2000];
        append(&file, &unsynced);
        fs.crash(CrashMode::PowerLossTorn);
        let after = content(&fs, &a).expect("file survives");
        assert_eq!(&after[..700], &synced[..], "seed {seed}: synced bytes intact");
        let written: Vec<u8> = synced.iter().chain(unsynced.iter()).copied().collect();
        // The first changed sector starts at 512: everything up to the tear point equals what was written.
        let intact = after.iter().zip(written.iter()).take_while(|(x, y)| x == y).count();
        assert!(intact >= 700, "seed {seed}");
        assert!(after.len() <= written.len(), "seed {seed}: never longer than written");
        outcomes.insert(after.len() == 700);
    }
    assert_eq!(outcomes.len(), 2, "some crashes tear, some keep only the synced part");
}

#[test]
fn injected_faults_fail_the_kth_sync_and_writes_beyond_the_budget() {
    let (fs, dir) = setup(4);
    let a = dir.join("a");
    let file = fs.open(&a, OpenMode::CreateNew).expect("create");
    fs.fail_sync_after(2);
    append(&file, b"one");
    file.sync_data().expect("first sync succeeds");
    append(&file, b"two");
    let error = file.sync_data().expect_err("second sync fails");
    assert_eq!(error.raw_os_error(), Some(libc::EIO));
    assert_eq!(fs.synced_len(&a), Some(3), "the failed sync made nothing durable");
    fs.fail_writes_after(Some(4));
    let error = file.append(&[IoSlice::new(b"abcdefgh")]).expect_err("no space");
    assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(content(&fs, &a).expect("file").len(), 6 + 4, "the part that fit was written");
    fs.fail_writes_after(None);
    append(&file, b"ok");
    assert_eq!(fs.stats().file_syncs, 2);
}
