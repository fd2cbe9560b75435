//! [`SimFs`]: an in-memory [`Storage`] that models what a power loss keeps, for tests (here, in the broker and in
//! the chaos suites).
//!
//! Per file it keeps the written content and the synced content; per directory the live entries and the durable ones
//! (an entry created, renamed or removed becomes durable only at [`Storage::sync_dir`]).
//! [`SimFs::crash`] then keeps only what was synced, for closed files too: closing never syncs (RocksDB's fault-injection
//! file system once synced on close and hid missing syncs, F20). A torn crash also lets a random prefix of the unsynced
//! writes reach the disk at 512-byte sector granularity, followed by up to two sectors of random bytes (seeded).
//! Faults on demand: the k-th file fsync fails with EIO ([`SimFs::fail_sync_after`]), writes fail with ENOSPC after a
//! byte budget ([`SimFs::fail_writes_after`]), and syncs can be held at a gate ([`SimFs::hold_syncs`]) so a test can
//! line requests up behind an fsync without sleeping.
//!
//! Crash points ([`SimFs::crash_at_step`]): every mutating operation (creating a file, a write, a file fsync, a
//! truncate, a rename, a remove, a directory fsync) is one numbered I/O step. At the chosen step the operation does
//! not complete (a write may leave a sector-aligned prefix behind) and fails, and every later operation fails too, as
//! if the process were gone; [`SimFs::crash`] then models the power loss and lifts the halt. Counting the steps of a
//! dry run ([`SimStats::io_steps`]) lets a test crash a workload at every step it takes.
//!
//! Directories are simplified: they exist durably as soon as they are created, and listings show files only.
//! Handles opened before a crash fail every later operation, like the handles of a killed process.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::{LogFile, OpenMode, Storage};

/// Sector size of the simulated device: the unit in which unsynced writes are torn.
const SECTOR_BYTES: usize = 512;
/// Most sectors of random bytes a torn crash leaves after the part of a write that made it to disk.
const TORN_GARBAGE_SECTORS_MAX: u64 = 2;

/// What a simulated crash keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// The process dies; the OS survives: everything written stays (synced or not), open handles die.
    ProcessKill,
    /// Power loss: only synced file data and synced directory entries survive.
    PowerLoss,
    /// Power loss during writeback: like `PowerLoss`, but a random prefix of each file's unsynced changes reached
    /// the disk, in whole sectors, followed by up to two sectors of random bytes.
    PowerLossTorn,
}

/// One recorded operation, in the order the simulated disk saw them (see [`SimFs::record_events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimEvent {
    /// Bytes written (appended or in place) to a file.
    Write {
        /// The file.
        path: PathBuf,
        /// Where the write started.
        pos: u64,
        /// How many bytes were written.
        len: u64,
    },
    /// A file fsync that succeeded; `len` bytes of the file are now durable.
    Sync {
        /// The file.
        path: PathBuf,
        /// The file's length, now durable.
        len: u64,
    },
    /// A file fsync that failed (injected).
    SyncFailed {
        /// The file.
        path: PathBuf,
    },
    /// A directory fsync.
    SyncDir {
        /// The directory.
        dir: PathBuf,
    },
    /// A marker a test recorded with [`SimFs::mark`].
    Marker {
        /// The test's label.
        label: u64,
    },
}

/// A kind of mutating operation: one I/O step (see [`SimFs::crash_at_step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SimOp {
    /// A file was created by [`Storage::open`].
    Create,
    /// An append or an in-place write.
    Write,
    /// A file fsync.
    Sync,
    /// A truncate.
    Truncate,
    /// A rename.
    Rename,
    /// A remove.
    Remove,
    /// A directory fsync.
    SyncDir,
}

/// The I/O step at which a crash point halted the simulated process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashPoint {
    /// The step's number, counted like [`SimStats::io_steps`] (from the file system's creation, 1 = the first).
    pub step: u64,
    /// What the step was doing.
    pub op: SimOp,
    /// The file or directory it was doing it to (for a rename, the source).
    pub path: PathBuf,
}

/// Operation counts of a [`SimFs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimStats {
    /// Mutating operations attempted (I/O steps, see [`SimOp`]), including one halted by a crash point.
    pub io_steps: u64,
    /// File fsyncs attempted (including failed ones).
    pub file_syncs: u64,
    /// Directory fsyncs.
    pub dir_syncs: u64,
    /// Bytes written to files.
    pub bytes_written: u64,
    /// Crashes simulated.
    pub crashes: u64,
}

/// The simulated file system. Cloning shares the same disk.
#[derive(Debug, Clone)]
pub struct SimFs {
    inner: Arc<SimInner>,
}

#[derive(Debug)]
struct SimInner {
    state: Mutex<SimState>,
    gate: Mutex<Gate>,
    gate_changed: Condvar,
}

#[derive(Debug, Default)]
struct Gate {
    hold: bool,
    waiting: usize,
}

#[derive(Debug)]
struct SimState {
    generation: u64,
    dirs: BTreeMap<PathBuf, SimDir>,
    inodes: HashMap<u64, SimInode>,
    next_ino: u64,
    rng: u64,
    stats: SimStats,
    fail_file_sync_at: Option<u64>,
    write_budget: Option<u64>,
    recording: bool,
    events: Vec<SimEvent>,
    /// The step to halt at, and whether a write halted there leaves a torn prefix.
    crash_at: Option<(u64, bool)>,
    /// Set once a crash point was reached: every operation fails until [`SimFs::crash`].
    halted: Option<CrashPoint>,
}

/// What a mutating operation does after counting its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Complete normally.
    Run,
    /// The crash point: do not complete (a write keeps a torn prefix if `tear`), then fail.
    Halt { tear: bool },
}

fn process_gone() -> io::Error {
    io::Error::other("simulated process halted at a crash point")
}

#[derive(Debug, Default, Clone)]
struct SimDir {
    live: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct SimInode {
    data: Vec<u8>,
    synced: Vec<u8>,
    /// Bytes before this position are equal in `data` and `synced`; `usize::MAX` when nothing changed.
    dirty_from: usize,
}

impl SimInode {
    fn mark_dirty(&mut self, from: usize) {
        self.dirty_from = self.dirty_from.min(from);
    }

    fn sync(&mut self) {
        if self.dirty_from == usize::MAX {
            return;
        }
        let keep = self.dirty_from.min(self.synced.len()).min(self.data.len());
        self.synced.truncate(keep);
        self.synced.extend_from_slice(&self.data[keep..]);
        self.dirty_from = usize::MAX;
    }
}

fn split_path(path: &Path) -> io::Result<(PathBuf, String)> {
    let parent = path.parent().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no UTF-8 file name"))?;
    Ok((parent.to_path_buf(), name.to_owned()))
}

fn not_found(what: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", what.display()))
}

impl SimState {
    fn next_random(&mut self) -> u64 {
        // splitmix64: tiny, seeded, good enough to pick tear points and garbage bytes.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A random number in `0..=max`.
    fn random_up_to(&mut self, max: u64) -> u64 {
        if max == u64::MAX { self.next_random() } else { self.next_random() % (max + 1) }
    }

    /// Fails if a crash point halted the process.
    fn alive(&self) -> io::Result<()> {
        if self.halted.is_some() { Err(process_gone()) } else { Ok(()) }
    }

    /// Counts one mutating operation; at the crash point, halts the process.
    fn step(&mut self, op: SimOp, path: &Path) -> io::Result<Step> {
        self.alive()?;
        self.stats.io_steps += 1;
        match self.crash_at {
            Some((step, tear)) if step == self.stats.io_steps => {
                self.halted = Some(CrashPoint { step, op, path: path.to_path_buf() });
                Ok(Step::Halt { tear })
            }
            _ => Ok(Step::Run),
        }
    }

    fn record(&mut self, event: SimEvent) {
        if self.recording {
            self.events.push(event);
        }
    }

    fn lookup(&self, path: &Path) -> io::Result<u64> {
        let (dir, name) = split_path(path)?;
        let dir = self.dirs.get(&dir).ok_or_else(|| not_found(&dir))?;
        dir.live.get(&name).copied().ok_or_else(|| not_found(path))
    }

    /// How many bytes of a write of `len` bytes at `pos` a crash in the middle of it leaves: a random number of the
    /// whole sectors it fills, never all of it.
    fn torn_prefix(&mut self, pos: usize, len: usize) -> usize {
        let end = pos.saturating_add(len);
        let first_boundary = (pos / SECTOR_BYTES + 1) * SECTOR_BYTES;
        if first_boundary >= end {
            return 0;
        }
        let boundaries = (end - 1 - first_boundary) / SECTOR_BYTES + 1;
        let pick = usize::try_from(self.random_up_to(to_u64(boundaries))).unwrap_or(0);
        if pick == 0 { 0 } else { first_boundary + (pick - 1) * SECTOR_BYTES - pos }
    }

    /// What survives of one file after a torn power loss: the synced content, overwritten by a random number of
    /// whole sectors of the unsynced content from the first changed sector on, then up to two sectors of garbage.
    fn torn_content(&mut self, inode: &SimInode) -> Vec<u8> {
        let (old, new) = (&inode.synced, &inode.data);
        if inode.dirty_from == usize::MAX {
            return old.clone();
        }
        let start = inode.dirty_from.min(old.len()).min(new.len()) / SECTOR_BYTES * SECTOR_BYTES;
        let new_sectors = new.len().saturating_sub(start).div_ceil(SECTOR_BYTES);
        let kept_sectors = self.random_up_to(u64::try_from(new_sectors).unwrap_or(u64::MAX));
        let kept_sectors = usize::try_from(kept_sectors).unwrap_or(new_sectors);
        let garbage_sectors_max = TORN_GARBAGE_SECTORS_MAX.min(u64::try_from(new_sectors - kept_sectors).unwrap_or(0));
        let garbage_sectors = usize::try_from(self.random_up_to(garbage_sectors_max)).unwrap_or(0);
        let new_end = new.len().min(start + kept_sectors * SECTOR_BYTES);
        // Bytes before the first change were synced and stay intact: a sector is never torn below what was synced.
        let new_end = new_end.max(inode.dirty_from.min(new.len()));
        let mut content = new[..new_end].to_vec();
        let garbage_end = new.len().min(new_end + garbage_sectors * SECTOR_BYTES);
        while content.len() < garbage_end {
            let word = self.next_random().to_le_bytes();
            let take = (garbage_end - content.len()).min(word.len());
            content.extend_from_slice(&word[..take]);
        }
        if old.len() > content.len() {
            content.extend_from_slice(&old[content.len()..]);
        }
        content
    }
}

impl SimFs {
    /// An empty file system whose random choices (tears, garbage) follow `seed`.
    pub fn new(seed: u64) -> SimFs {
        let state = SimState {
            generation: 0,
            dirs: BTreeMap::new(),
            inodes: HashMap::new(),
            next_ino: 1,
            rng: seed,
            stats: SimStats::default(),
            fail_file_sync_at: None,
            write_budget: None,
            recording: false,
            events: Vec::new(),
            crash_at: None,
            halted: None,
        };
        SimFs {
            inner: Arc::new(SimInner {
                state: Mutex::new(state),
                gate: Mutex::new(Gate::default()),
                gate_changed: Condvar::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock is a bug in a test or in SimFs itself; the data is still usable.
        self.inner.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Simulates a crash: see [`CrashMode`]. Every handle opened before it fails from now on.
    pub fn crash(&self, mode: CrashMode) {
        let mut state = self.state();
        state.generation += 1;
        state.stats.crashes += 1;
        state.crash_at = None;
        state.halted = None;
        if mode == CrashMode::ProcessKill {
            return;
        }
        let dirs: Vec<PathBuf> = state.dirs.keys().cloned().collect();
        let mut survivors = HashMap::new();
        for dir in dirs {
            let durable = state.dirs.get(&dir).map(|d| d.durable.clone()).unwrap_or_default();
            for ino in durable.values() {
                if survivors.contains_key(ino) {
                    continue;
                }
                let Some(inode) = state.inodes.remove(ino) else { continue };
                let content =
                    if mode == CrashMode::PowerLossTorn { state.torn_content(&inode) } else { inode.synced.clone() };
                survivors.insert(*ino, SimInode { data: content.clone(), synced: content, dirty_from: usize::MAX });
            }
            if let Some(d) = state.dirs.get_mut(&dir) {
                d.live = durable;
            }
        }
        state.inodes = survivors;
    }

    /// Halts the simulated process at the `k`-th I/O step from now (1 = the next mutating operation): that operation
    /// does not complete and fails, and so does every later operation of any kind, until [`SimFs::crash`] models the
    /// power loss. With `tear`, a write halted there leaves a random number of whole sectors of its bytes in the
    /// file (unsynced, so a torn power loss may keep them). See [`SimFs::crash_point`] for where it stopped.
    pub fn crash_at_step(&self, k: u64, tear: bool) {
        let mut state = self.state();
        state.crash_at = Some((state.stats.io_steps + k.max(1), tear));
    }

    /// The step a crash point halted at, if one was reached since the last crash.
    pub fn crash_point(&self) -> Option<CrashPoint> {
        self.state().halted.clone()
    }

    /// Makes the `k`-th file fsync from now (1 = the next one) fail with EIO, leaving the file's unsynced data unsynced.
    pub fn fail_sync_after(&self, k: u64) {
        let mut state = self.state();
        state.fail_file_sync_at = Some(state.stats.file_syncs + k.max(1));
    }

    /// Lets only `bytes` more bytes be written; the write that crosses the budget writes what fits and fails with
    /// ENOSPC, as do all later ones. `None` lifts the limit (space was freed).
    pub fn fail_writes_after(&self, bytes: Option<u64>) {
        self.state().write_budget = bytes;
    }

    /// While `hold` is true, every file fsync waits at a gate; releasing lets them all proceed.
    pub fn hold_syncs(&self, hold: bool) {
        let mut gate = self.inner.gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        gate.hold = hold;
        self.inner.gate_changed.notify_all();
    }

    /// Blocks until at least one fsync waits at the gate (see [`SimFs::hold_syncs`]).
    pub fn wait_for_held_sync(&self) {
        let mut gate = self.inner.gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while gate.waiting == 0 {
            gate = self.inner.gate_changed.wait(gate).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Starts or stops recording [`SimEvent`]s.
    pub fn record_events(&self, on: bool) {
        self.state().recording = on;
    }

    /// The events recorded so far, oldest first.
    pub fn events(&self) -> Vec<SimEvent> {
        self.state().events.clone()
    }

    /// Records a test's marker among the events, to check what happened before it.
    pub fn mark(&self, label: u64) {
        self.state().record(SimEvent::Marker { label });
    }

    /// Operation counts so far.
    pub fn stats(&self) -> SimStats {
        self.state().stats
    }

    /// The current (written) content of a file, if it exists.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state();
        let ino = state.lookup(path).ok()?;
        state.inodes.get(&ino).map(|inode| inode.data.clone())
    }

    /// Bytes of a file that a power loss now would keep in place (its synced length), if it exists.
    pub fn synced_len(&self, path: &Path) -> Option<u64> {
        let state = self.state();
        let ino = state.lookup(path).ok()?;
        state.inodes.get(&ino).and_then(|inode| u64::try_from(inode.synced.len()).ok())
    }

    /// Changes a file's content on the simulated disk itself (synced and written alike): bit rot, a bad sector.
    /// Returns false if the file does not exist.
    pub fn corrupt(&self, path: &Path, change: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut state = self.state();
        let Ok(ino) = state.lookup(path) else { return false };
        let Some(inode) = state.inodes.get_mut(&ino) else { return false };
        inode.sync();
        change(&mut inode.data);
        inode.synced = inode.data.clone();
        true
    }
}

impl Storage for SimFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn LogFile>> {
        let (dir, name) = split_path(path)?;
        let mut state = self.state();
        state.alive()?;
        let generation = state.generation;
        let existing = state.dirs.get(&dir).ok_or_else(|| not_found(&dir))?.live.get(&name).copied();
        let ino = match (existing, mode) {
            (Some(_), OpenMode::CreateNew) => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", path.display())));
            }
            (Some(ino), _) => ino,
            (None, OpenMode::Existing) => return Err(not_found(path)),
            (None, _) => {
                if state.step(SimOp::Create, path)? != Step::Run {
                    return Err(process_gone());
                }
                let ino = state.next_ino;
                state.next_ino += 1;
                state.inodes.insert(ino, SimInode { dirty_from: usize::MAX, ..SimInode::default() });
                if let Some(d) = state.dirs.get_mut(&dir) {
                    d.live.insert(name, ino);
                }
                ino
            }
        };
        Ok(Arc::new(SimFile { fs: self.clone(), ino, generation, path: path.to_path_buf() }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = split_path(path)?;
        let mut state = self.state();
        if state.step(SimOp::Remove, path)? != Step::Run {
            return Err(process_gone());
        }
        let d = state.dirs.get_mut(&dir).ok_or_else(|| not_found(&dir))?;
        d.live.remove(&name).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from_dir, from_name) = split_path(from)?;
        let (to_dir, to_name) = split_path(to)?;
        let mut state = self.state();
        if state.step(SimOp::Rename, from)? != Step::Run {
            return Err(process_gone());
        }
        if !state.dirs.contains_key(&to_dir) {
            return Err(not_found(&to_dir));
        }
        let d = state.dirs.get_mut(&from_dir).ok_or_else(|| not_found(&from_dir))?;
        let ino = d.live.remove(&from_name).ok_or_else(|| not_found(from))?;
        if let Some(d) = state.dirs.get_mut(&to_dir) {
            d.live.insert(to_name, ino);
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state();
        state.alive()?;
        let d = state.dirs.get(dir).ok_or_else(|| not_found(dir))?;
        Ok(d.live.keys().cloned().collect())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state();
        state.alive()?;
        for ancestor in dir.ancestors() {
            if ancestor.as_os_str().is_empty() {
                continue;
            }
            state.dirs.entry(ancestor.to_path_buf()).or_default();
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state();
        if state.step(SimOp::SyncDir, dir)? != Step::Run {
            return Err(process_gone());
        }
        let d = state.dirs.get_mut(dir).ok_or_else(|| not_found(dir))?;
        d.durable = d.live.clone();
        state.stats.dir_syncs += 1;
        state.record(SimEvent::SyncDir { dir: dir.to_path_buf() });
        Ok(())
    }
}

/// An open file of a [`SimFs`].
#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    ino: u64,
    /// The crash generation it was opened in; after a crash it fails every operation.
    generation: u64,
    path: PathBuf,
}

impl SimFile {
    /// Locks the state, checking the handle survived no crash, and runs `f` on the file's inode.
    fn with_inode<T>(&self, f: impl FnOnce(&mut SimState, u64) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.fs.state();
        if state.generation != self.generation {
            return Err(io::Error::other("file handle from before a simulated crash"));
        }
        state.alive()?;
        if !state.inodes.contains_key(&self.ino) {
            return Err(io::Error::other("inode vanished"));
        }
        f(&mut state, self.ino)
    }

    fn pass_gate(&self) {
        let inner = &self.fs.inner;
        let mut gate = inner.gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !gate.hold {
            return;
        }
        gate.waiting += 1;
        inner.gate_changed.notify_all();
        while gate.hold {
            gate = inner.gate_changed.wait(gate).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        gate.waiting -= 1;
    }
}

fn to_usize(value: u64) -> io::Result<usize> {
    usize::try_from(value).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "position beyond memory"))
}

fn to_u64(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

fn write_into(state: &mut SimState, ino: u64, path: &Path, pos: usize, bytes: &[u8]) -> io::Result<()> {
    let Some(inode) = state.inodes.get(&ino) else { return Err(io::Error::other("inode vanished")) };
    let end = pos.checked_add(bytes.len()).ok_or_else(|| io::Error::other("write end overflows"))?;
    let old_len = inode.data.len();
    // Only bytes past the current end take space; overwriting in place never fails for lack of room.
    let growth = to_u64(end.saturating_sub(old_len));
    let (allowed, full) = match state.write_budget {
        Some(budget) if growth > budget => {
            let room_end = old_len.saturating_add(to_usize(budget)?);
            (room_end.saturating_sub(pos).min(bytes.len()), true)
        }
        _ => (bytes.len(), false),
    };
    if let Some(budget) = state.write_budget.as_mut() {
        *budget = budget.saturating_sub(growth);
    }
    if full && allowed == 0 {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    let Some(inode) = state.inodes.get_mut(&ino) else { return Err(io::Error::other("inode vanished")) };
    let written_end = pos + allowed;
    if inode.data.len() < written_end {
        inode.data.resize(written_end, 0);
    }
    inode.data[pos..written_end].copy_from_slice(&bytes[..allowed]);
    inode.mark_dirty(pos);
    state.stats.bytes_written += to_u64(allowed);
    state.record(SimEvent::Write { path: path.to_path_buf(), pos: to_u64(pos), len: to_u64(allowed) });
    if full {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    Ok(())
}

impl LogFile for SimFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.with_inode(|state, ino| {
            let data = &state.inodes[&ino].data;
            let Ok(pos) = usize::try_from(pos) else { return Ok(0) };
            if pos >= data.len() {
                return Ok(0);
            }
            let n = buf.len().min(data.len() - pos);
            buf[..n].copy_from_slice(&data[pos..pos + n]);
            Ok(n)
        })
    }

    fn append(&self, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        self.with_inode(|state, ino| {
            let step = state.step(SimOp::Write, &self.path)?;
            let start = state.inodes[&ino].data.len();
            let total: usize = bufs.iter().map(|buf| buf.len()).sum();
            let mut keep = match step {
                Step::Run => total,
                Step::Halt { tear: false } => 0,
                Step::Halt { tear: true } => state.torn_prefix(start, total),
            };
            for buf in bufs {
                let take = keep.min(buf.len());
                if take == 0 {
                    break;
                }
                let pos = state.inodes[&ino].data.len();
                write_into(state, ino, &self.path, pos, &buf[..take])?;
                keep -= take;
            }
            if step == Step::Run { Ok(()) } else { Err(process_gone()) }
        })
    }

    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let pos = to_usize(pos)?;
        self.with_inode(|state, ino| match state.step(SimOp::Write, &self.path)? {
            Step::Run => write_into(state, ino, &self.path, pos, buf),
            Step::Halt { tear } => {
                let keep = if tear { state.torn_prefix(pos, buf.len()) } else { 0 };
                if keep > 0 {
                    write_into(state, ino, &self.path, pos, &buf[..keep])?;
                }
                Err(process_gone())
            }
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.pass_gate();
        self.with_inode(|state, ino| {
            if state.step(SimOp::Sync, &self.path)? != Step::Run {
                return Err(process_gone());
            }
            state.stats.file_syncs += 1;
            if state.fail_file_sync_at == Some(state.stats.file_syncs) {
                state.record(SimEvent::SyncFailed { path: self.path.clone() });
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let Some(inode) = state.inodes.get_mut(&ino) else { return Err(io::Error::other("inode vanished")) };
            inode.sync();
            let len = to_u64(inode.data.len());
            state.record(SimEvent::Sync { path: self.path.clone(), len });
            Ok(())
        })
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        let len = to_usize(len)?;
        self.with_inode(|state, ino| {
            if state.step(SimOp::Truncate, &self.path)? != Step::Run {
                return Err(process_gone());
            }
            let Some(inode) = state.inodes.get_mut(&ino) else { return Err(io::Error::other("inode vanished")) };
            let old_len = inode.data.len();
            inode.data.resize(len, 0);
            inode.mark_dirty(len.min(old_len));
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with_inode(|state, ino| Ok(to_u64(state.inodes[&ino].data.len())))
    }
}

#[cfg(test)]
mod tests;
