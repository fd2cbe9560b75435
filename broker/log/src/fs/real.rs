//! [`RealFs`]: the [`Storage`] of the real file system, on `std::fs`.
//!
//! Positional reads use `pread` (`FileExt::read_at`), appends `writev` at the end of the file,
//! syncs `fdatasync` (`File::sync_data`) and, for directories, `fsync` on the directory itself.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{IOV_MAX, LogFile, OpenMode, Storage};

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl Storage for RealFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn LogFile>> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        match mode {
            OpenMode::CreateNew => options.create_new(true),
            OpenMode::Existing => &mut options,
            OpenMode::CreateOrOpen => options.create(true),
        };
        let file = options.open(path)?;
        Ok(Arc::new(RealFile { file, append_lock: Mutex::new(()) }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            // A name that is not UTF-8 is not one of ours; listing it lossily keeps it visible to recovery's logging.
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// A file of [`RealFs`].
#[derive(Debug)]
struct RealFile {
    file: File,
    /// Serializes appends: each one seeks to the end first. Readers never take it (they use `pread`).
    append_lock: Mutex<()>,
}

impl LogFile for RealFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.file.read_at(buf, pos)
    }

    fn append(&self, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        let _guard = self.append_lock.lock().map_err(|_| io::Error::other("append lock poisoned"))?;
        let mut file = &self.file;
        // Not O_APPEND: the checkpoint is rewritten in place with pwrite, which O_APPEND would turn into an append.
        file.seek(SeekFrom::End(0))?;
        for chunk in bufs.chunks(IOV_MAX) {
            let mut slices: Vec<IoSlice<'_>> = chunk.to_vec();
            let mut remaining: &mut [IoSlice<'_>] = &mut slices;
            IoSlice::advance_slices(&mut remaining, 0); // Skips leading empty slices.
            while !remaining.is_empty() {
                match file.write_vectored(remaining) {
                    Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "writev wrote nothing")),
                    Ok(n) => IoSlice::advance_slices(&mut remaining, n),
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.file.write_all_at(buf, pos)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}
