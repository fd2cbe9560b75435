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

/// Runs a fixed sequence of every kind of step with a crash point at `k` (if any); returns how many steps completed.
fn run_steps(fs: &SimFs, dir: &Path) -> usize {
    let ops: Vec<Box<dyn Fn() -> io::Result<()>>> = vec![
        Box::new(|| fs.open(&dir.join("a"), OpenMode::CreateNew).map(drop)),
        Box::new(|| fs.sync_dir(dir)),
        Box::new(|| fs.open(&dir.join("a"), OpenMode::Existing)?.append(&[IoSlice::new(&[7u8; 1500])])),
        Box::new(|| fs.open(&dir.join("a"), OpenMode::Existing)?.sync_data()),
        Box::new(|| fs.open(&dir.join("a"), OpenMode::Existing)?.write_at(&[9u8; 1200], 1000)),
        Box::new(|| fs.open(&dir.join("a"), OpenMode::Existing)?.truncate(1800)),
        Box::new(|| fs.rename(&dir.join("a"), &dir.join("b"))),
        Box::new(|| fs.remove(&dir.join("b"))),
    ];
    ops.iter().take_while(|op| op().is_ok()).count()
}

#[test]
fn every_mutating_operation_is_one_step_and_a_crash_point_halts_everything_after_it() {
    let (dry, dir) = setup(5);
    assert_eq!(run_steps(&dry, &dir), 8);
    assert_eq!(dry.stats().io_steps, 8);
    assert_eq!(dry.crash_point(), None);
    let expected_ops =
        [SimOp::Create, SimOp::SyncDir, SimOp::Write, SimOp::Sync, SimOp::Write, SimOp::Truncate, SimOp::Rename];
    for (idx, op) in expected_ops.iter().enumerate() {
        let (fs, dir) = setup(5);
        let k = u64::try_from(idx).expect("small") + 1;
        fs.crash_at_step(k, false);
        assert_eq!(run_steps(&fs, &dir), idx, "step {k} halts");
        let point = fs.crash_point().expect("halted");
        assert_eq!((point.step, point.op), (k, *op));
        assert_eq!(fs.stats().io_steps, k, "nothing counts after the halt");
        assert!(fs.list(&dir).is_err(), "reads fail too: the process is gone");
        fs.crash(CrashMode::PowerLoss);
        assert_eq!(fs.crash_point(), None, "the crash lifts the halt");
        assert!(fs.list(&dir).is_ok());
    }
}

#[test]
fn a_write_halted_by_a_crash_point_leaves_nothing_or_a_torn_sector_prefix() {
    let mut kept_lengths = std::collections::BTreeSet::new();
    for seed in 0..100 {
        let (fs, dir) = setup(seed);
        let a = dir.join("a");
        let file = fs.open(&a, OpenMode::CreateNew).expect("create");
        append(&file, &[1u8; 100]);
        fs.crash_at_step(1, seed % 2 == 0);
        let write = [2u8; 2000];
        assert!(file.append(&[IoSlice::new(&write[..700]), IoSlice::new(&write[700..])]).is_err());
        assert!(file.len().is_err(), "the process is gone");
        fs.crash(CrashMode::ProcessKill);
        let kept = content(&fs, &a).expect("file exists").len() - 100;
        assert!(kept < 2000, "a halted write never completes");
        if seed % 2 == 1 {
            assert_eq!(kept, 0, "without tear nothing is written");
        } else {
            assert_eq!((100 + kept) % 512 * usize::from(kept > 0), 0, "torn at a sector boundary: {kept}");
        }
        kept_lengths.insert(kept);
    }
    assert!(kept_lengths.len() >= 3, "tears vary: {kept_lengths:?}");
}
