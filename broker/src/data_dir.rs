//! The data directory: its layout, and the exclusive lock that keeps a second broker out of it.
//!
//! ```text
//! <data_dir>/
//!   LOCK    held with flock(LOCK_EX) by the running broker; holds its process id, for operators
//!   meta/   the metadata store (RocksDB)
//!   logs/   the partition logs, one directory per partition (layout in `crate::partitions`)
//! ```
//!
//! Two brokers on one directory would append to the same segment files and corrupt them,
//! so the lock is taken before anything else in the directory is opened,
//! and is released only when the broker has closed everything (or when the process dies: the kernel drops it).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::StartupError;

/// Name of the lock file in the data directory.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the metadata store's directory in the data directory.
pub const META_DIR: &str = "meta";

/// The exclusive lock on a data directory, held until dropped.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    /// Keeps the lock: the kernel releases it when the file is closed.
    _file: File,
}

impl DataDirLock {
    /// Creates the data directory if needed and locks it, failing at once if another process
    /// (or another broker in this process) holds the lock. Blocks on file I/O.
    // `File::try_lock` (flock on Linux, stable since Rust 1.89) keeps this crate free of `unsafe`.
    pub(crate) fn acquire(data_dir: &Path) -> Result<DataDirLock, StartupError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| StartupError::CreateDataDir { path: data_dir.to_owned(), source })?;
        let path = data_dir.join(LOCK_FILE);
        let lock_file_error = |source| StartupError::LockFile { path: path.clone(), source };
        // Not truncated on open: the holder's process id must survive a failed attempt to take the lock.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(lock_file_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StartupError::DataDirLocked { path: data_dir.to_owned(), holder: read_holder(&mut file) });
            }
            Err(TryLockError::Error(source)) => return Err(lock_file_error(source)),
        }
        file.set_len(0).map_err(lock_file_error)?;
        file.rewind().map_err(lock_file_error)?;
        writeln!(file, "{}", std::process::id()).map_err(lock_file_error)?;
        Ok(DataDirLock { _file: file })
    }
}

/// The process id written by the lock's holder, if it can be read.
fn read_holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The metadata store's directory in `data_dir`.
pub(crate) fn meta_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(META_DIR)
}
