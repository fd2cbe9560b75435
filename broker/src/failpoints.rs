//! Test-only fault injection through the `FERRY_FAILPOINT` environment variable, read once per process.
//!
//! Unset (always, in production) nothing here changes behaviour. The values:
//!
//! - `txn_after_decision`, `txn_mid_apply`: abort the process inside a transaction commit (see `crate::transactions`).
//! - `segment_fsync_error`: every `fdatasync` of a segment data file (`*.log`) fails with `EIO`, so the first append
//!   to a partition under `fsync = "always"` (or its first interval sync) stops that partition with a sync error and
//!   counts in `ferry_log_fsync_errors_total`. Index files, checkpoints and directories sync normally, so topics can
//!   still be created. Used by the alert-series test to record a real fsync error (`FerryFsyncErrors`).

use std::io::{self, IoSlice};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use ferry_log::{LogFile, OpenMode, RealFs, Storage};

/// The environment variable naming the active failpoint.
pub const FAILPOINT_ENV: &str = "FERRY_FAILPOINT";
/// Failpoint: segment data fsyncs fail with `EIO`.
pub const SEGMENT_FSYNC_ERROR: &str = "segment_fsync_error";

/// Whether `FERRY_FAILPOINT` is set to `name`.
pub(crate) fn active(name: &str) -> bool {
    static FAILPOINT: OnceLock<Option<String>> = OnceLock::new();
    FAILPOINT.get_or_init(|| std::env::var(FAILPOINT_ENV).ok()).as_deref() == Some(name)
}

/// The storage partition logs are opened on: the real file system, or with [`SEGMENT_FSYNC_ERROR`] active, the
/// real file system whose segment data fsyncs fail.
pub(crate) fn partition_storage() -> Arc<dyn Storage> {
    if active(SEGMENT_FSYNC_ERROR) {
        tracing::warn!(failpoint = SEGMENT_FSYNC_ERROR, "failpoint active: segment data fsyncs will fail");
        Arc::new(FailingSegmentSyncFs)
    } else {
        Arc::new(RealFs)
    }
}

/// [`RealFs`] whose segment data files fail `sync_data` with `EIO`.
#[derive(Debug)]
struct FailingSegmentSyncFs;

impl Storage for FailingSegmentSyncFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn LogFile>> {
        let file = RealFs.open(path, mode)?;
        if path.extension().is_some_and(|extension| extension == "log") {
            Ok(Arc::new(FailingSyncFile { inner: file }))
        } else {
            Ok(file)
        }
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        RealFs.remove(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealFs.list(dir)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealFs.create_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealFs.sync_dir(dir)
    }
}

/// A real file whose `sync_data` always fails.
#[derive(Debug)]
struct FailingSyncFile {
    inner: Arc<dyn LogFile>,
}

impl LogFile for FailingSyncFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }

    fn append(&self, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        self.inner.append(bufs)
    }

    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.inner.write_at(buf, pos)
    }

    fn sync_data(&self) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EIO))
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}
