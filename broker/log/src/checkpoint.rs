//! The per-partition `checkpoint` file: a lower bound of what is durable, and the clean-shutdown marker.
//!
//! One fixed-size record, rewritten in place at offset 0. A 48-byte write at offset 0 lies within one sector, which
//! devices write atomically; if one is torn anyway, its CRC-32C fails and the checkpoint is treated as absent
//! (recovery then scans everything). The appender rewrites it after every successful data fsync without syncing it
//! (one `pwrite`); at roll, at open and at clean close it is fsynced. It only moves forward and always describes data
//! that was fsynced before it was written, so whatever version survives a crash is a LOWER BOUND of the durable log.
//! That is what lets recovery tell a torn tail (beyond the bound: truncate) from damage (below it: refuse writes).
//!
//! # Layout (version 1, big-endian, 48 bytes)
//!
//! ```text
//! offset size field
//!      0    4 magic                 "FCKP"
//!      4    2 version               u16  1
//!      6    1 clean                 u8   1 after a clean close, 0 while the log is open or after a crash
//!      7    1 reserved              u8   0
//!      8    8 recovery_point        u64  base offset of the first segment recovery may need to scan
//!     16    8 durable_segment_base  u64  base offset of the segment holding the durable end
//!     24    8 durable_position      u64  byte length of that segment known to be durable
//!     32    8 durable_next_offset   u64  the offset right after the last durable batch
//!     40    4 reserved              u32  0
//!     44    4 crc                   u32  CRC-32C of bytes 0..44
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::LogError;
use crate::fs::{LogFile, OpenMode, Storage, read_up_to};

/// Name of the checkpoint file in a partition directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// Size of the checkpoint record.
pub const CHECKPOINT_BYTES: usize = 48;
const MAGIC: [u8; 4] = *b"FCKP";
const VERSION: u16 = 1;
const CRC_AT: usize = 44;
const _: () = assert!(CRC_AT + 4 == CHECKPOINT_BYTES);
// Sector-atomic in place: the record never spans two 512-byte sectors.
const _: () = assert!(CHECKPOINT_BYTES <= 512);

/// A point of the log: a position in a segment and the offset found there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPoint {
    /// Base offset of the segment.
    pub segment_base: u64,
    /// Byte position in the segment.
    pub position: u64,
    /// The offset of the batch starting at that position (or the next offset to assign, at the end).
    pub next_offset: u64,
}

/// The decoded checkpoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Whether the log was closed cleanly (the next open may skip the scan).
    pub clean: bool,
    /// Base offset of the first segment that may need scanning: every segment before it was fsynced whole.
    pub recovery_point: u64,
    /// The durable end when the record was written: a lower bound of what is durable.
    pub durable: LogPoint,
}

impl Checkpoint {
    /// Encodes the record, checksum included.
    pub fn encode(&self) -> [u8; CHECKPOINT_BYTES] {
        let mut out = [0u8; CHECKPOINT_BYTES];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&VERSION.to_be_bytes());
        out[6] = u8::from(self.clean);
        out[8..16].copy_from_slice(&self.recovery_point.to_be_bytes());
        out[16..24].copy_from_slice(&self.durable.segment_base.to_be_bytes());
        out[24..32].copy_from_slice(&self.durable.position.to_be_bytes());
        out[32..40].copy_from_slice(&self.durable.next_offset.to_be_bytes());
        let crc = crc32c::crc32c(&out[..CRC_AT]);
        out[CRC_AT..].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes a record, or says why it is not a valid one (then it is treated as absent).
    pub fn decode(buf: &[u8]) -> Result<Checkpoint, &'static str> {
        let Some(buf) = buf.get(..CHECKPOINT_BYTES) else { return Err("shorter than a checkpoint record") };
        let u64_at = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&buf[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        let stored = u32::from_be_bytes([buf[CRC_AT], buf[CRC_AT + 1], buf[CRC_AT + 2], buf[CRC_AT + 3]]);
        if stored != crc32c::crc32c(&buf[..CRC_AT]) {
            return Err("checksum mismatch");
        }
        if buf[0..4] != MAGIC {
            return Err("bad magic");
        }
        if u16::from_be_bytes([buf[4], buf[5]]) != VERSION {
            return Err("unknown version");
        }
        let clean = match buf[6] {
            0 => false,
            1 => true,
            _ => return Err("clean flag is neither 0 nor 1"),
        };
        let checkpoint = Checkpoint {
            clean,
            recovery_point: u64_at(8),
            durable: LogPoint { segment_base: u64_at(16), position: u64_at(24), next_offset: u64_at(32) },
        };
        if checkpoint.durable.segment_base < checkpoint.recovery_point
            || checkpoint.durable.next_offset < checkpoint.durable.segment_base
        {
            return Err("fields contradict each other");
        }
        Ok(checkpoint)
    }
}

/// The open checkpoint file of a partition.
#[derive(Debug)]
pub(crate) struct CheckpointFile {
    file: Arc<dyn LogFile>,
    path: PathBuf,
    last: Option<Checkpoint>,
}

impl CheckpointFile {
    /// Opens (creating if missing, with a directory sync) the checkpoint file and reads the record it holds.
    /// Returns the record, or `None` with the reason when it is absent or invalid.
    pub fn open(
        storage: &dyn Storage,
        dir: &Path,
    ) -> Result<(CheckpointFile, Result<Checkpoint, &'static str>), LogError> {
        let path = dir.join(CHECKPOINT_FILE);
        let existed = storage.list(dir).map_err(|e| LogError::io("list", dir, e))?.iter().any(|n| n == CHECKPOINT_FILE);
        let file = storage.open(&path, OpenMode::CreateOrOpen).map_err(|e| LogError::io("open", &path, e))?;
        if !existed {
            storage.sync_dir(dir).map_err(|source| LogError::SyncFailed { path: dir.to_path_buf(), source })?;
        }
        let bytes = read_up_to(file.as_ref(), 0, CHECKPOINT_BYTES).map_err(|e| LogError::io("read", &path, e))?;
        let record = if existed { Checkpoint::decode(&bytes) } else { Err("missing") };
        Ok((CheckpointFile { file, path, last: None }, record))
    }

    /// Rewrites the record in place; with `sync`, fsyncs it too.
    ///
    /// Panics if the durable point would move backwards: the caller only ever records data it fsynced.
    pub fn write(&mut self, checkpoint: Checkpoint, sync: bool) -> Result<(), LogError> {
        if let Some(last) = self.last {
            assert!(checkpoint.durable >= last.durable, "checkpoint durable point moved backwards");
            assert!(checkpoint.recovery_point >= last.recovery_point, "checkpoint recovery point moved backwards");
        }
        self.file.write_at(&checkpoint.encode(), 0).map_err(|e| LogError::write(&self.path, e))?;
        if sync {
            self.file.sync_data().map_err(|source| LogError::SyncFailed { path: self.path.clone(), source })?;
        }
        self.last = Some(checkpoint);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
