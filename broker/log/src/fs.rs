//! The file interface the log is written against: [`Storage`] (a directory tree) and [`LogFile`] (one open file).
//!
//! Everything the log does to disk goes through these two traits, so tests can swap the real file system
//! ([`RealFs`]) for the simulated one ([`SimFs`]), which loses unsynced data on a simulated crash, tears writes,
//! fails the k-th fsync or runs out of space. The traits are deliberately small: positional reads, appends at the end,
//! one in-place write (the checkpoint), `fdatasync`, truncate, and the directory operations recovery needs.

mod real;
mod sim;

use std::fmt;
use std::io::{self, IoSlice};
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

pub use real::RealFs;
pub use sim::{CrashMode, CrashPoint, SimEvent, SimFs, SimOp, SimStats};

/// Most buffers handed to one `writev` call (Linux `UIO_MAXIOV`); longer lists are written in chunks.
pub const IOV_MAX: usize = 1024;
const _: () = assert!(IOV_MAX as i64 == libc::UIO_MAXIOV as i64);

/// How [`Storage::open`] treats an existing or missing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file; fail with `AlreadyExists` if it exists.
    CreateNew,
    /// Open an existing file; fail with `NotFound` if it is missing.
    Existing,
    /// Open the file, creating it empty if missing.
    CreateOrOpen,
}

/// A directory tree of files. Implementations must be usable from several threads.
///
/// Durability contract (POSIX): a created, renamed or removed directory entry survives a power loss only after
/// [`Storage::sync_dir`] on its directory; file contents only after [`LogFile::sync_data`]. Closing a file syncs nothing.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Opens a file for reading and writing.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn LogFile>>;
    /// Removes a file (open handles keep working on the removed file, as on Unix).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Names of the entries of a directory, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a directory and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes the entries of a directory durable (`fsync` on the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// One open file. Reads are positional so readers never share a cursor with the writer.
pub trait LogFile: Send + Sync + fmt::Debug {
    /// Reads at `pos` into `buf`, returning the bytes read (fewer than asked only at the end of the file).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Appends all of `bufs` at the end of the file, in order, in as few `writev` calls as possible.
    /// On error a prefix of the bytes may have been written; the caller truncates back to where it started.
    fn append(&self, bufs: &[IoSlice<'_>]) -> io::Result<()>;
    /// Writes all of `buf` at `pos` (used for the checkpoint, rewritten in place).
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Makes the file's data (and the size needed to read it) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Sets the file's length, cutting or zero-extending.
    fn truncate(&self, len: u64) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// Reads up to `len` bytes at `pos`, fewer only when the file ends first.
pub(crate) fn read_up_to(file: &dyn LogFile, pos: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    let mut filled = 0;
    while filled < len {
        let offset = u64::try_from(filled).map_err(io::Error::other)?;
        let read_pos = pos.checked_add(offset).ok_or_else(|| io::Error::other("read position overflows"))?;
        match file.read_at(&mut buf[filled..], read_pos) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    buf.truncate(filled);
    Ok(buf.freeze())
}
