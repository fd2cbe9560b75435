//! Idempotent producers in the metadata store: issued producer ids (`producer_ids`, and the `broker` key
//! `next_producer_id`) and each partition's dedup-state snapshot (`producer_state`).

use std::collections::VecDeque;

use ferry_log::producers::{BatchMeta, ProducerEntry, ProducerSnapshot};
use rocksdb::{IteratorMode, WriteBatch};

use super::values::{self, VALUE_VERSION};
use super::{CF_BROKER, CF_PRODUCER_IDS, CF_PRODUCER_STATE, CorruptReason, EngineError, MetaError, MetaStore, corrupt};

const KEY_NEXT_PRODUCER_ID: &[u8] = b"next_producer_id";
/// Producer ids start at 1; a store written before producer ids existed has no counter and starts there.
const PRODUCER_ID_FIRST: u64 = 1;

/// An issued producer id as stored: its epoch and when it was last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredProducerId {
    /// The producer id.
    pub producer_id: i64,
    /// Its current epoch.
    pub epoch: i32,
    /// When it was issued or last wrote (as of the last time the registry persisted it), ms since the Unix epoch.
    pub last_seen_ms: i64,
}

/// `producer_ids/<u64 producer id>`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProducerIdValue {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(int32, tag = "2")]
    epoch: i32,
    #[prost(int64, tag = "3")]
    last_seen_ms: i64,
}

/// `producer_state/<u64 topic id><u32 partition>`: a partition's dedup-state snapshot.
#[derive(Clone, PartialEq, prost::Message)]
struct ProducerSnapshotValue {
    #[prost(uint32, tag = "1")]
    version: u32,
    /// The log offset the snapshot covers up to (exclusive).
    #[prost(uint64, tag = "2")]
    offset: u64,
    #[prost(message, repeated, tag = "3")]
    entries: Vec<ProducerEntryValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProducerEntryValue {
    #[prost(int64, tag = "1")]
    producer_id: i64,
    #[prost(int32, tag = "2")]
    epoch: i32,
    #[prost(int64, tag = "3")]
    last_write_ms: i64,
    /// Oldest first.
    #[prost(message, repeated, tag = "4")]
    batches: Vec<BatchMetaValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct BatchMetaValue {
    #[prost(int32, tag = "1")]
    first_sequence: i32,
    #[prost(int32, tag = "2")]
    last_sequence: i32,
    #[prost(uint64, tag = "3")]
    first_offset: u64,
    #[prost(uint64, tag = "4")]
    last_offset: u64,
}

fn producer_id_key(producer_id: i64) -> [u8; 8] {
    // Issued ids are positive, so the cast keeps their order.
    (producer_id as u64).to_be_bytes()
}

fn partition_key(topic_id: u64, partition: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&topic_id.to_be_bytes());
    key[8..].copy_from_slice(&partition.to_be_bytes());
    key
}

fn snapshot_to_value(snapshot: &ProducerSnapshot) -> ProducerSnapshotValue {
    ProducerSnapshotValue {
        version: VALUE_VERSION,
        offset: snapshot.offset,
        entries: snapshot
            .entries
            .iter()
            .map(|(producer_id, entry)| ProducerEntryValue {
                producer_id: *producer_id,
                epoch: entry.epoch,
                last_write_ms: entry.last_write_ms,
                batches: entry
                    .batches
                    .iter()
                    .map(|batch| BatchMetaValue {
                        first_sequence: batch.first_sequence,
                        last_sequence: batch.last_sequence,
                        first_offset: batch.first_offset,
                        last_offset: batch.last_offset,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn snapshot_from_value(value: ProducerSnapshotValue) -> Result<ProducerSnapshot, CorruptReason> {
    let mut entries = Vec::with_capacity(value.entries.len());
    for entry in value.entries {
        if entry.producer_id < 0 || entry.epoch < 0 {
            return Err(CorruptReason::InvalidField { field: "producer_id" });
        }
        let batches: VecDeque<BatchMeta> = entry
            .batches
            .into_iter()
            .map(|batch| BatchMeta {
                first_sequence: batch.first_sequence,
                last_sequence: batch.last_sequence,
                first_offset: batch.first_offset,
                last_offset: batch.last_offset,
            })
            .collect();
        let valid = !batches.is_empty()
            && batches.len() <= ferry_log::producers::BATCHES_RETAINED
            && batches.iter().all(|batch| {
                batch.first_sequence >= 0
                    && batch.last_sequence >= 0
                    && batch.first_offset <= batch.last_offset
                    && batch.last_offset < value.offset
            });
        if !valid {
            return Err(CorruptReason::InvalidField { field: "batches" });
        }
        entries.push((
            entry.producer_id,
            ProducerEntry { epoch: entry.epoch, batches, last_write_ms: entry.last_write_ms },
        ));
    }
    Ok(ProducerSnapshot { offset: value.offset, entries })
}

impl MetaStore {
    /// Issues a new producer id with epoch 0, seen at `now_ms`: the id and the counter go in one synced batch, so an
    /// id is never issued twice.
    pub fn allocate_producer_id(&self, now_ms: i64) -> Result<StoredProducerId, MetaError> {
        let mut next = self.next_producer_id.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = *next;
        let producer_id = i64::try_from(id).expect("fewer than 2^63 producer ids are ever issued");
        let following = id.checked_add(1).expect("fewer than 2^63 producer ids are ever issued");
        let stored = StoredProducerId { producer_id, epoch: 0, last_seen_ms: now_ms };
        let mut batch = WriteBatch::default();
        batch.put_cf(&self.cf(CF_PRODUCER_IDS), producer_id_key(producer_id), producer_id_value(&stored));
        batch.put_cf(&self.cf(CF_BROKER), KEY_NEXT_PRODUCER_ID, values::encode(&values::next_id_to_value(following)));
        self.write(batch)?;
        *next = following;
        Ok(stored)
    }

    /// The id the next producer will get: every id this store ever issued is lower.
    pub fn next_producer_id(&self) -> u64 {
        *self.next_producer_id.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every issued producer id still stored, in id order.
    pub fn producer_ids(&self) -> Result<Vec<StoredProducerId>, MetaError> {
        let mut ids = Vec::new();
        for entry in self.db.iterator_cf(&self.cf(CF_PRODUCER_IDS), IteratorMode::Start) {
            let (key, value) =
                entry.map_err(|source| MetaError::Read { cf: CF_PRODUCER_IDS, source: EngineError(source) })?;
            let id: [u8; 8] =
                key.as_ref().try_into().map_err(|_| corrupt(CF_PRODUCER_IDS, &key, CorruptReason::InvalidKey))?;
            let producer_id = i64::try_from(u64::from_be_bytes(id))
                .map_err(|_| corrupt(CF_PRODUCER_IDS, &key, CorruptReason::InvalidKey))?;
            let stored =
                values::decode::<ProducerIdValue>(&value).map_err(|reason| corrupt(CF_PRODUCER_IDS, &key, reason))?;
            ids.push(StoredProducerId { producer_id, epoch: stored.epoch, last_seen_ms: stored.last_seen_ms });
        }
        Ok(ids)
    }

    /// Stores the given producer ids' epochs and last-seen times and deletes the `expired` ones, in one synced batch.
    pub fn update_producer_ids(&self, live: &[StoredProducerId], expired: &[i64]) -> Result<(), MetaError> {
        if live.is_empty() && expired.is_empty() {
            return Ok(());
        }
        let cf = self.cf(CF_PRODUCER_IDS);
        let mut batch = WriteBatch::default();
        for stored in live {
            batch.put_cf(&cf, producer_id_key(stored.producer_id), producer_id_value(stored));
        }
        for producer_id in expired {
            batch.delete_cf(&cf, producer_id_key(*producer_id));
        }
        self.write(batch)
    }

    /// A partition's last dedup-state snapshot, if one was stored.
    pub fn producer_snapshot(&self, topic_id: u64, partition: u32) -> Result<Option<ProducerSnapshot>, MetaError> {
        let key = partition_key(topic_id, partition);
        let Some(value) = super::read_value::<ProducerSnapshotValue>(&self.db, CF_PRODUCER_STATE, &key)? else {
            return Ok(None);
        };
        snapshot_from_value(value).map(Some).map_err(|reason| corrupt(CF_PRODUCER_STATE, &key, reason))
    }

    /// Replaces a partition's dedup-state snapshot (synced).
    pub fn save_producer_snapshot(
        &self,
        topic_id: u64,
        partition: u32,
        snapshot: &ProducerSnapshot,
    ) -> Result<(), MetaError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            &self.cf(CF_PRODUCER_STATE),
            partition_key(topic_id, partition),
            values::encode(&snapshot_to_value(snapshot)),
        );
        self.write(batch)
    }

    /// Deletes the dedup-state snapshots of every partition of a topic (when the topic is deleted).
    pub fn delete_producer_snapshots(&self, topic_id: u64) -> Result<(), MetaError> {
        let mut batch = WriteBatch::default();
        let start = partition_key(topic_id, 0);
        let end = match topic_id.checked_add(1) {
            Some(next) => partition_key(next, 0).to_vec(),
            None => vec![0xff; 13],
        };
        batch.delete_range_cf(&self.cf(CF_PRODUCER_STATE), start.to_vec(), end);
        self.write(batch)
    }

    /// Reads the producer-id counter when the store opens (1 if none was ever issued).
    pub(super) fn read_next_producer_id(db: &super::Db) -> Result<u64, MetaError> {
        match super::read_value::<values::NextIdValue>(db, CF_BROKER, KEY_NEXT_PRODUCER_ID)? {
            Some(stored) => {
                values::next_id_from_value(stored).map_err(|reason| corrupt(CF_BROKER, KEY_NEXT_PRODUCER_ID, reason))
            }
            None => Ok(PRODUCER_ID_FIRST),
        }
    }
}

fn producer_id_value(stored: &StoredProducerId) -> Vec<u8> {
    values::encode(&ProducerIdValue { version: VALUE_VERSION, epoch: stored.epoch, last_seen_ms: stored.last_seen_ms })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetaConfig;

    #[test]
    fn producer_ids_are_never_issued_twice_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta");
        let store = MetaStore::open(&path, &MetaConfig::default()).expect("open");
        let first = store.allocate_producer_id(10).expect("allocate");
        let second = store.allocate_producer_id(11).expect("allocate");
        assert_eq!((first.producer_id, second.producer_id), (1, 2));
        store
            .update_producer_ids(&[StoredProducerId { last_seen_ms: 99, ..second }], &[first.producer_id])
            .expect("update");
        store.close().expect("close");
        let store = MetaStore::open(&path, &MetaConfig::default()).expect("reopen");
        assert_eq!(
            store.producer_ids().expect("read"),
            vec![StoredProducerId { producer_id: 2, epoch: 0, last_seen_ms: 99 }]
        );
        assert_eq!(store.allocate_producer_id(12).expect("allocate").producer_id, 3, "the counter survived");
    }

    #[test]
    fn snapshots_round_trip_and_are_deleted_with_their_topic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MetaStore::open(&dir.path().join("meta"), &MetaConfig::default()).expect("open");
        let entry = ProducerEntry {
            epoch: 2,
            batches: VecDeque::from([BatchMeta {
                first_sequence: 5,
                last_sequence: 9,
                first_offset: 40,
                last_offset: 44,
            }]),
            last_write_ms: 1234,
        };
        let snapshot = ProducerSnapshot { offset: 45, entries: vec![(7, entry)] };
        store.save_producer_snapshot(3, 1, &snapshot).expect("save");
        store.save_producer_snapshot(4, 0, &snapshot).expect("save");
        assert_eq!(store.producer_snapshot(3, 1).expect("read"), Some(snapshot.clone()));
        assert_eq!(store.producer_snapshot(3, 0).expect("read"), None);
        store.delete_producer_snapshots(3).expect("delete");
        assert_eq!(store.producer_snapshot(3, 1).expect("read"), None);
        assert_eq!(store.producer_snapshot(4, 0).expect("read"), Some(snapshot), "another topic's snapshot stays");
    }

    #[test]
    fn an_impossible_snapshot_is_corrupt_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MetaStore::open(&dir.path().join("meta"), &MetaConfig::default()).expect("open");
        let mut value = snapshot_to_value(&ProducerSnapshot { offset: 1, entries: vec![] });
        value.entries.push(ProducerEntryValue { producer_id: 1, epoch: 0, last_write_ms: 0, batches: vec![] });
        let key = partition_key(1, 0);
        let mut batch = WriteBatch::default();
        batch.put_cf(&store.cf(CF_PRODUCER_STATE), key, values::encode(&value));
        store.write(batch).expect("write");
        assert!(matches!(store.producer_snapshot(1, 0), Err(MetaError::Corrupt { .. })));
    }
}
