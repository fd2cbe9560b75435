//! DescribeBroker: the broker's version, uptime, configuration in effect, data-directory usage and partition states.

use std::path::Path;
use std::sync::Arc;

use ferry_log::LogStatus;
use ferry_protocol::messages::DescribeBrokerResponse;

use crate::server::ServerState;

/// Most directory entries one data-directory walk visits; a larger directory is reported as the bytes of the first
/// this many entries (the walk stops there, so one request never scans without bound).
pub const DATA_DIR_ENTRIES_MAX: usize = 1_000_000;

/// Answers a DescribeBroker request. The data-directory walk runs on the blocking pool, under the broker's permits
/// for blocking reads.
pub(crate) async fn handle(state: &ServerState) -> DescribeBrokerResponse {
    let data_dir = state.config.data_dir.clone();
    let permit = Arc::clone(&state.reads).acquire_owned().await.expect("the read semaphore is never closed");
    let data_dir_bytes = tokio::task::spawn_blocking(move || {
        let bytes = directory_bytes(&data_dir, DATA_DIR_ENTRIES_MAX);
        drop(permit);
        bytes
    })
    .await
    .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));

    let topics = state.partitions.topics();
    let (mut healthy, mut damaged, mut failed) = (0u32, 0u32, 0u32);
    for partition in topics.iter().flat_map(|topic| &topic.partitions) {
        match partition.reader().status() {
            LogStatus::Open | LogStatus::Closed => healthy += 1,
            LogStatus::Damaged(_) => damaged += 1,
            LogStatus::Failed(_) => failed += 1,
        }
    }
    DescribeBrokerResponse {
        error_code: 0,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_ms: u64::try_from(state.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        config: state.config.to_pairs().into_iter().map(|(key, value)| (key.to_owned(), value)).collect(),
        data_dir: state.config.data_dir.display().to_string(),
        data_dir_bytes,
        topics: u32::try_from(topics.len()).unwrap_or(u32::MAX),
        partitions_healthy: healthy,
        partitions_damaged: damaged,
        partitions_failed: failed,
        connections_open: u32::try_from(state.connections_open()).unwrap_or(u32::MAX),
    }
}

/// The bytes of every regular file under `dir`, visiting at most `entries_max` entries. Unreadable entries (a file
/// deleted by retention mid-walk, say) count as 0 bytes. Symbolic links are not followed. Blocks: call it from a
/// blocking thread.
fn directory_bytes(dir: &Path, entries_max: usize) -> u64 {
    let mut total: u64 = 0;
    let mut visited = 0usize;
    // Directories still to read; bounded by `entries_max` because each was one visited entry.
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if visited >= entries_max {
                return total;
            }
            visited += 1;
            let Ok(file_type) = entry.file_type() else { continue };
            if file_type.is_dir() {
                pending.push(entry.path());
            } else if file_type.is_file() {
                total = total.saturating_add(entry.metadata().map_or(0, |metadata| metadata.len()));
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::directory_bytes;

    #[test]
    fn directory_bytes_sums_nested_files_and_stops_at_the_entry_limit() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("a"), [0u8; 10]).expect("write a");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/b"), [0u8; 32]).expect("write b");
        assert_eq!(directory_bytes(dir.path(), 100), 42);
        assert!(directory_bytes(dir.path(), 1) <= 10, "one entry visited at most");
        assert_eq!(directory_bytes(&dir.path().join("missing"), 100), 0);
    }
}
