//! Message-id dedup in the metadata store: time-bucketed `dedup_<bucket>` column families, and per partition the log
//! offset below which every record's dedup key is indexed (`producer_state`, partition key plus [`COVERED_SUFFIX`]).
//!
//! A bucket holds the keys appended during [`DEDUP_BUCKET_SECS`] seconds from its start (its name's number, seconds
//! since the epoch). Column families are created on demand by the first insert into their bucket and dropped whole
//! by [`MetaStore::drop_expired_dedup_buckets`] once no window can reach them: expiry is a cheap drop, never a scan.
//! A lookup reads, newest first, only the buckets that overlap the window, and honours each entry's stored append
//! time, so an entry just past the window in a bucket still in use is not a match.

use std::sync::{Arc, PoisonError};

use rocksdb::WriteBatch;

use super::values::{self, VALUE_VERSION};
use super::{CF_DEDUP_PREFIX, CF_PRODUCER_STATE, EngineError, MetaError, MetaStore, corrupt};

/// Width of one dedup bucket (one column family), in seconds.
pub const DEDUP_BUCKET_SECS: u64 = 3600;

/// The longest window a topic may configure (`dedup.window.ms`), in milliseconds. A bucket is dropped once it ended
/// more than this long ago.
pub const DEDUP_WINDOW_MS_MAX: u64 = 86_400_000;

/// Most dedup column families alive at once: the buckets a maximal window spans, plus the current one and the one
/// waiting for the periodic drop. An insert that would exceed it fails (the appender keeps its entries in memory).
pub const DEDUP_BUCKETS_MAX: usize = (DEDUP_WINDOW_MS_MAX / 1000 / DEDUP_BUCKET_SECS) as usize + 3;

const _: () = assert!(DEDUP_WINDOW_MS_MAX == crate::config::bounds::DEDUP_WINDOW_MS.max);

/// Suffix byte after the `producer_state` partition key under which the dedup coverage is stored: it sorts within the
/// topic's key range, so deleting the topic's producer state deletes it too.
const COVERED_SUFFIX: u8 = 1;

/// `dedup_<bucket>/<u64 topic id><u32 partition><dedup key>`: the first copy of a record with that key.
#[derive(Clone, PartialEq, prost::Message)]
struct DedupValue {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(uint64, tag = "2")]
    offset: u64,
    /// When the record was appended, ms since the Unix epoch.
    #[prost(int64, tag = "3")]
    append_ms: i64,
}

/// `producer_state/<u64 topic id><u32 partition><u8 1>`: every record below `offset` has its dedup key indexed.
#[derive(Clone, PartialEq, prost::Message)]
struct DedupCoveredValue {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(uint64, tag = "2")]
    offset: u64,
}

/// One record to index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupRecord<'a> {
    /// The record's dedup key.
    pub key: &'a [u8],
    /// The record's offset.
    pub offset: u64,
    /// When it was appended, ms since the Unix epoch.
    pub append_ms: i64,
}

fn entry_key(topic_id: u64, partition: u32, key: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(12 + key.len());
    bytes.extend_from_slice(&topic_id.to_be_bytes());
    bytes.extend_from_slice(&partition.to_be_bytes());
    bytes.extend_from_slice(key);
    bytes
}

fn covered_key(topic_id: u64, partition: u32) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[..8].copy_from_slice(&topic_id.to_be_bytes());
    key[8..12].copy_from_slice(&partition.to_be_bytes());
    key[12] = COVERED_SUFFIX;
    key
}

/// The start (seconds since the epoch) of the bucket holding `ms`.
fn bucket_of(ms: i64) -> u64 {
    let secs = u64::try_from(ms.max(0) / 1000).unwrap_or(0);
    secs - secs % DEDUP_BUCKET_SECS
}

fn bucket_name(bucket: u64) -> String {
    format!("{CF_DEDUP_PREFIX}{bucket}")
}

fn parse_bucket(name: &str) -> Option<u64> {
    name.strip_prefix(CF_DEDUP_PREFIX)?.parse().ok()
}

/// Every error from a dedup column family names this, since the family's own name is not static.
const CF_DEDUP: &str = "dedup_<bucket>";

impl MetaStore {
    /// The dedup buckets that exist, oldest first.
    pub fn dedup_buckets(&self) -> Vec<u64> {
        let names = self.cf_names.lock().unwrap_or_else(PoisonError::into_inner);
        let mut buckets: Vec<u64> = names.iter().filter_map(|name| parse_bucket(name)).collect();
        buckets.sort_unstable();
        buckets
    }

    /// Creates the bucket's column family if it does not exist.
    fn ensure_dedup_bucket(&self, bucket: u64) -> Result<(), MetaError> {
        let name = bucket_name(bucket);
        let mut names = self.cf_names.lock().unwrap_or_else(PoisonError::into_inner);
        if names.contains(&name) {
            return Ok(());
        }
        let buckets = names.iter().filter(|name| parse_bucket(name).is_some()).count();
        if buckets >= DEDUP_BUCKETS_MAX {
            return Err(MetaError::TooManyDedupBuckets { max: DEDUP_BUCKETS_MAX });
        }
        self.db
            .create_cf(&name, &super::cf_options(&self.config))
            .map_err(|source| MetaError::Write(EngineError(source)))?;
        names.insert(name);
        Ok(())
    }

    /// Stores a partition's dedup records and, in the same synced batch, that every record below `covered_up_to` is
    /// indexed. Each record goes into the bucket of its append time (created if needed).
    pub fn insert_dedup(
        &self,
        topic_id: u64,
        partition: u32,
        records: &[DedupRecord<'_>],
        covered_up_to: u64,
    ) -> Result<(), MetaError> {
        let mut batch = WriteBatch::default();
        let mut handles: Vec<(u64, Arc<rocksdb::BoundColumnFamily<'_>>)> = Vec::new();
        for record in records {
            let bucket = bucket_of(record.append_ms);
            let handle = match handles.iter().find(|(known, _)| *known == bucket) {
                Some((_, handle)) => Arc::clone(handle),
                None => {
                    self.ensure_dedup_bucket(bucket)?;
                    let name = bucket_name(bucket);
                    let Some(handle) = self.db.cf_handle(&name) else {
                        return Err(MetaError::DedupBucketGone { name });
                    };
                    handles.push((bucket, Arc::clone(&handle)));
                    handle
                }
            };
            let value = DedupValue { version: VALUE_VERSION, offset: record.offset, append_ms: record.append_ms };
            batch.put_cf(&handle, entry_key(topic_id, partition, record.key), values::encode(&value));
        }
        let covered = DedupCoveredValue { version: VALUE_VERSION, offset: covered_up_to };
        batch.put_cf(&self.cf(CF_PRODUCER_STATE), covered_key(topic_id, partition), values::encode(&covered));
        self.write(batch)
    }

    /// The offset of each key's record appended at or after `not_before_ms`, in `keys` order.
    pub fn lookup_dedup(
        &self,
        topic_id: u64,
        partition: u32,
        keys: &[&[u8]],
        not_before_ms: i64,
    ) -> Result<Vec<Option<u64>>, MetaError> {
        let mut found: Vec<Option<u64>> = vec![None; keys.len()];
        let first_bucket = bucket_of(not_before_ms);
        let mut buckets = self.dedup_buckets();
        buckets.retain(|bucket| *bucket >= first_bucket);
        let entry_keys: Vec<Vec<u8>> = keys.iter().map(|key| entry_key(topic_id, partition, key)).collect();
        // Newest first: a key written again after its window passed has its live entry in the newer bucket.
        for bucket in buckets.into_iter().rev() {
            let missing: Vec<usize> = (0..keys.len()).filter(|idx| found[*idx].is_none()).collect();
            if missing.is_empty() {
                break;
            }
            // Dropped since it was listed: it held nothing within the window.
            let Some(handle) = self.db.cf_handle(&bucket_name(bucket)) else { continue };
            let results = self.db.multi_get_cf(missing.iter().map(|idx| (&handle, entry_keys[*idx].as_slice())));
            for (idx, result) in missing.into_iter().zip(results) {
                let bytes = result.map_err(|source| MetaError::Read { cf: CF_DEDUP, source: EngineError(source) })?;
                let Some(bytes) = bytes else { continue };
                let value = values::decode::<DedupValue>(&bytes)
                    .map_err(|reason| corrupt(CF_DEDUP, &entry_keys[idx], reason))?;
                if value.append_ms >= not_before_ms {
                    found[idx] = Some(value.offset);
                }
            }
        }
        Ok(found)
    }

    /// The offset below which every record of the partition has its dedup key indexed, if one was stored.
    pub fn dedup_covered_up_to(&self, topic_id: u64, partition: u32) -> Result<Option<u64>, MetaError> {
        let key = covered_key(topic_id, partition);
        let stored = super::read_value::<DedupCoveredValue>(&self.db, CF_PRODUCER_STATE, &key)?;
        Ok(stored.map(|value| value.offset))
    }

    /// Drops every dedup bucket that ended more than [`DEDUP_WINDOW_MS_MAX`] before `now_ms`: no window reaches it.
    /// Returns how many were dropped.
    pub fn drop_expired_dedup_buckets(&self, now_ms: i64) -> Result<usize, MetaError> {
        let now_secs = u64::try_from(now_ms.max(0) / 1000).unwrap_or(0);
        let mut names = self.cf_names.lock().unwrap_or_else(PoisonError::into_inner);
        let expired: Vec<String> = names
            .iter()
            .filter(|name| {
                parse_bucket(name)
                    .is_some_and(|bucket| bucket + DEDUP_BUCKET_SECS + DEDUP_WINDOW_MS_MAX / 1000 < now_secs)
            })
            .cloned()
            .collect();
        for name in &expired {
            self.db.drop_cf(name).map_err(|source| MetaError::Write(EngineError(source)))?;
            names.remove(name);
        }
        Ok(expired.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetaConfig;

    const HOUR_MS: i64 = 3_600_000;
    const NOW_MS: i64 = 1_700_000_000_000;

    fn record(key: &[u8], offset: u64, append_ms: i64) -> DedupRecord<'_> {
        DedupRecord { key, offset, append_ms }
    }

    #[test]
    fn bucket_column_families_are_created_on_demand_dropped_when_expired_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta");
        let store = MetaStore::open(&path, &MetaConfig::default()).expect("open");
        assert!(store.dedup_buckets().is_empty());
        store.insert_dedup(1, 0, &[record(b"old", 0, NOW_MS - 30 * HOUR_MS)], 1).expect("insert");
        store.insert_dedup(1, 0, &[record(b"a", 1, NOW_MS), record(b"b", 2, NOW_MS + 1)], 3).expect("insert");
        let buckets = store.dedup_buckets();
        assert_eq!(buckets, vec![bucket_of(NOW_MS - 30 * HOUR_MS), bucket_of(NOW_MS)]);
        store.close().expect("close");

        let store = MetaStore::open(&path, &MetaConfig::default()).expect("reopen");
        assert_eq!(store.dedup_buckets(), buckets, "bucket column families are opened again");
        assert_eq!(store.dedup_covered_up_to(1, 0).expect("read"), Some(3));
        assert_eq!(store.drop_expired_dedup_buckets(NOW_MS).expect("drop"), 1, "only the 30-hour-old bucket");
        assert_eq!(store.dedup_buckets(), vec![bucket_of(NOW_MS)]);
        assert_eq!(store.lookup_dedup(1, 0, &[b"a"], NOW_MS - HOUR_MS).expect("lookup"), vec![Some(1)]);
        store.delete_producer_snapshots(1).expect("delete the topic's producer state");
        assert_eq!(store.dedup_covered_up_to(1, 0).expect("read"), None, "deleted with the topic");
    }

    #[test]
    fn lookups_honour_the_window_and_the_partition() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MetaStore::open(&dir.path().join("meta"), &MetaConfig::default()).expect("open");
        store
            .insert_dedup(7, 2, &[record(b"early", 10, NOW_MS - 2 * HOUR_MS), record(b"late", 11, NOW_MS)], 12)
            .expect("insert");
        let keys: [&[u8]; 3] = [b"early", b"late", b"never"];
        assert_eq!(
            store.lookup_dedup(7, 2, &keys, NOW_MS - 3 * HOUR_MS).expect("lookup"),
            vec![Some(10), Some(11), None]
        );
        assert_eq!(store.lookup_dedup(7, 2, &keys, NOW_MS - HOUR_MS).expect("lookup"), vec![None, Some(11), None]);
        // Within one bucket, the stored append time decides.
        assert_eq!(store.lookup_dedup(7, 2, &[b"late"], NOW_MS + 1).expect("lookup"), vec![None]);
        assert_eq!(store.lookup_dedup(7, 3, &keys, 0).expect("lookup"), vec![None, None, None], "another partition");
        // A key written again after its window passed is found with its new offset.
        store.insert_dedup(7, 2, &[record(b"early", 20, NOW_MS)], 21).expect("insert");
        assert_eq!(store.lookup_dedup(7, 2, &[b"early"], 0).expect("lookup"), vec![Some(20)]);
    }
}
