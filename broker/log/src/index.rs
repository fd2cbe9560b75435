//! Sparse offset and time indexes of a segment: hints that make lookups fast, never trusted for correctness.
//!
//! Both are rebuildable from the log. Recovery checks them structurally (size, ordering, bounds) and rebuilds any that
//! fail; a read that follows an entry checks that the batch found there has the expected offset and falls back to a
//! scan otherwise. They are kept in memory (8 or 12 bytes per `index_interval_bytes` of log) and appended to their
//! files as the segment grows; the files are fsynced at roll and clean close only.
//!
//! # Layouts (big-endian)
//!
//! ```text
//! <base>.index      entries of 8 bytes:  relative_offset u32 (base offset of a batch minus the segment's base)
//!                                        position        u32 (byte position of that batch in the segment)
//! <base>.timeindex  entries of 12 bytes: max_timestamp   i64 (largest record timestamp in the segment up to and
//!                                                             including that batch, ms since the Unix epoch)
//!                                        relative_offset u32 (base offset of that batch minus the segment's base)
//! ```
//!
//! An offset entry is added for the first batch that starts at least `index_interval_bytes` after the previous entry
//! (the segment start counts as an implicit entry at position 0). At the same batch a time entry is added if the
//! running maximum timestamp exceeds the last time entry's, so both files stay strictly increasing.

use std::sync::RwLock;

/// Size of one offset-index entry.
pub const OFFSET_ENTRY_BYTES: usize = 8;
/// Size of one time-index entry.
pub const TIME_ENTRY_BYTES: usize = 12;

/// One offset-index entry: the batch starting at `position` has base offset `segment base + relative_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// One time-index entry: batches up to and including the one at `relative_offset` have timestamps <= `max_timestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub max_timestamp: i64,
    pub relative_offset: u32,
}

impl OffsetEntry {
    pub fn encode(&self) -> [u8; OFFSET_ENTRY_BYTES] {
        let mut out = [0u8; OFFSET_ENTRY_BYTES];
        out[..4].copy_from_slice(&self.relative_offset.to_be_bytes());
        out[4..].copy_from_slice(&self.position.to_be_bytes());
        out
    }
}

impl TimeEntry {
    pub fn encode(&self) -> [u8; TIME_ENTRY_BYTES] {
        let mut out = [0u8; TIME_ENTRY_BYTES];
        out[..8].copy_from_slice(&self.max_timestamp.to_be_bytes());
        out[8..].copy_from_slice(&self.relative_offset.to_be_bytes());
        out
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Decodes and structurally validates an offset index for a segment of `segment_len` bytes:
/// whole entries, relative offsets and positions strictly increasing and positive, positions inside the segment.
pub(crate) fn decode_offset_index(bytes: &[u8], segment_len: u64) -> Result<Vec<OffsetEntry>, &'static str> {
    if !bytes.len().is_multiple_of(OFFSET_ENTRY_BYTES) {
        return Err("size is not a multiple of the entry size");
    }
    let mut entries = Vec::with_capacity(bytes.len() / OFFSET_ENTRY_BYTES);
    let mut previous = OffsetEntry { relative_offset: 0, position: 0 };
    for chunk in bytes.chunks_exact(OFFSET_ENTRY_BYTES) {
        let entry = OffsetEntry { relative_offset: u32_at(chunk, 0), position: u32_at(chunk, 4) };
        if entry.relative_offset <= previous.relative_offset || entry.position <= previous.position {
            return Err("entries do not strictly increase");
        }
        if u64::from(entry.position) >= segment_len {
            return Err("position beyond the segment");
        }
        entries.push(entry);
        previous = entry;
    }
    Ok(entries)
}

/// Decodes and structurally validates a time index: whole entries, timestamps and relative offsets strictly
/// increasing, every relative offset one the offset index has an entry for.
pub(crate) fn decode_time_index(bytes: &[u8], offsets: &[OffsetEntry]) -> Result<Vec<TimeEntry>, &'static str> {
    if !bytes.len().is_multiple_of(TIME_ENTRY_BYTES) {
        return Err("size is not a multiple of the entry size");
    }
    let mut entries: Vec<TimeEntry> = Vec::with_capacity(bytes.len() / TIME_ENTRY_BYTES);
    for chunk in bytes.chunks_exact(TIME_ENTRY_BYTES) {
        let mut timestamp = [0u8; 8];
        timestamp.copy_from_slice(&chunk[..8]);
        let entry = TimeEntry { max_timestamp: i64::from_be_bytes(timestamp), relative_offset: u32_at(chunk, 8) };
        if let Some(previous) = entries.last()
            && (entry.max_timestamp <= previous.max_timestamp || entry.relative_offset <= previous.relative_offset)
        {
            return Err("entries do not strictly increase");
        }
        if offsets.binary_search_by_key(&entry.relative_offset, |o| o.relative_offset).is_err() {
            return Err("entry at an offset the offset index does not have");
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// Decides where index entries go as batches are appended or scanned, so the writer and recovery build the same index.
#[derive(Debug, Clone)]
pub(crate) struct IndexPlanner {
    interval_bytes: u64,
    last_entry_position: u64,
    running_max_timestamp: Option<i64>,
    last_time_entry: Option<i64>,
}

impl IndexPlanner {
    pub fn new(interval_bytes: u32) -> IndexPlanner {
        IndexPlanner {
            interval_bytes: u64::from(interval_bytes),
            last_entry_position: 0,
            running_max_timestamp: None,
            last_time_entry: None,
        }
    }

    /// A planner that continues after existing entries (a segment reopened for appends).
    pub fn resume(
        interval_bytes: u32,
        offsets: &[OffsetEntry],
        times: &[TimeEntry],
        max_timestamp: Option<i64>,
    ) -> IndexPlanner {
        IndexPlanner {
            interval_bytes: u64::from(interval_bytes),
            last_entry_position: offsets.last().map_or(0, |entry| u64::from(entry.position)),
            running_max_timestamp: max_timestamp,
            last_time_entry: times.last().map(|entry| entry.max_timestamp),
        }
    }

    /// The largest timestamp seen in the segment so far.
    pub fn max_timestamp(&self) -> Option<i64> {
        self.running_max_timestamp
    }

    /// Accounts for the batch at `position` (relative offset `relative_offset`, largest timestamp `max_timestamp`),
    /// returning the entries to add for it.
    pub fn on_batch(
        &mut self,
        relative_offset: u32,
        position: u64,
        max_timestamp: i64,
    ) -> (Option<OffsetEntry>, Option<TimeEntry>) {
        let running = self.running_max_timestamp.map_or(max_timestamp, |m| m.max(max_timestamp));
        self.running_max_timestamp = Some(running);
        if position < self.last_entry_position.saturating_add(self.interval_bytes) {
            return (None, None);
        }
        let Ok(position_u32) = u32::try_from(position) else {
            // Cannot happen with a validated config (segments stay below 2 GiB); an index is a hint, so skip it.
            return (None, None);
        };
        if relative_offset == 0 {
            return (None, None);
        }
        self.last_entry_position = position;
        let offset_entry = OffsetEntry { relative_offset, position: position_u32 };
        let time_entry = if self.last_time_entry.is_none_or(|last| running > last) {
            self.last_time_entry = Some(running);
            Some(TimeEntry { max_timestamp: running, relative_offset })
        } else {
            None
        };
        (Some(offset_entry), time_entry)
    }
}

/// The in-memory indexes of one segment, shared by the writer (who appends) and readers (who look up).
/// Locks are held for one push or one binary search, never across I/O.
#[derive(Debug, Default)]
pub(crate) struct SegmentIndex {
    offsets: RwLock<Vec<OffsetEntry>>,
    times: RwLock<Vec<TimeEntry>>,
}

impl SegmentIndex {
    pub fn new(offsets: Vec<OffsetEntry>, times: Vec<TimeEntry>) -> SegmentIndex {
        SegmentIndex { offsets: RwLock::new(offsets), times: RwLock::new(times) }
    }

    /// The last entry whose relative offset is at most `relative_offset`: the place to start scanning for it.
    pub fn floor_offset(&self, relative_offset: u64) -> Option<OffsetEntry> {
        let offsets = self.offsets.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n_before = offsets.partition_point(|entry| u64::from(entry.relative_offset) <= relative_offset);
        n_before.checked_sub(1).map(|idx| offsets[idx])
    }

    /// Where a search for the first batch reaching `timestamp` can start: the time entry before the last one whose
    /// timestamp is below `timestamp` (`None`: at the segment's start).
    ///
    /// One entry earlier than the entries promise, because index files carry no checksum: an entry whose timestamp
    /// was lowered by a flipped bit (still strictly increasing, so it passes the structural check) would otherwise
    /// let the search skip batches that reach `timestamp`. With one entry of slack, any single wrong entry is harmless:
    /// either the entry used is right, or the entry after it is, and it bounds every batch before the start.
    pub fn floor_time(&self, timestamp: i64) -> Option<TimeEntry> {
        let times = self.times.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n_before = times.partition_point(|entry| entry.max_timestamp < timestamp);
        n_before.checked_sub(2).map(|idx| times[idx])
    }

    pub fn push(&self, offset_entry: Option<OffsetEntry>, time_entry: Option<TimeEntry>) {
        if let Some(entry) = offset_entry {
            self.offsets.write().unwrap_or_else(std::sync::PoisonError::into_inner).push(entry);
        }
        if let Some(entry) = time_entry {
            self.times.write().unwrap_or_else(std::sync::PoisonError::into_inner).push(entry);
        }
    }

    /// Copies of the entries.
    #[cfg(test)]
    pub fn entries(&self) -> (Vec<OffsetEntry>, Vec<TimeEntry>) {
        let offsets = self.offsets.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let times = self.times.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        (offsets, times)
    }
}

#[cfg(test)]
mod tests;
