//! The registry of issued idempotent producer ids: the gate every idempotent batch passes before its partition's
//! dedup table (`ferry_log::producers`) sees it.
//!
//! `InitProducerId` issues an id ([`ProducerIds::issue`]: a synced write to the metadata store, so an id is never
//! issued twice) unless `producers.ids_max` ids are alive, in which case the new producer gets `PRODUCER_ID_LIMIT`:
//! a live producer's state is never evicted to make room. Every idempotent produce checks its id and epoch here
//! ([`ProducerIds::admit`]) and marks the id as seen. An id not seen for `producers.id_expiration_ms` expires: its
//! batches get `UNKNOWN_PRODUCER_ID` from then on.
//!
//! Why expiry cannot cause a duplicate: the admit check and the last-seen update happen together under one lock, so
//! once a batch of an id is admitted the id cannot expire for another full expiration period, far longer than any
//! request or retry may take (clients keep their delivery timeout below it). A batch that gets `UNKNOWN_PRODUCER_ID`
//! was not written, and neither was any later batch of that id; the client takes a new id and resends.
//!
//! Persistence: issued ids are written at once; last-seen times are persisted by [`ProducerIds::persist`], which the
//! broker runs periodically (a restart may see last-seen times up to one period old, which only shortens an idle
//! id's life by that much, never a live one's below `id_expiration_ms` minus the period).
//!
//! Memory: at most `ids_max` entries of a few dozen bytes; the per-partition tables are bounded separately (see
//! ARCHITECTURE.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::meta::{MetaError, MetaStore, StoredProducerId};

/// Why `InitProducerId` issued no id.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// `ids_max` producer ids are alive.
    #[error("the broker has its maximum of {max} active producer ids (producers.ids_max)")]
    Limit {
        /// The limit.
        max: u32,
    },
    /// The metadata store failed the write.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// Why a batch's producer id or epoch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// The id was never issued, or expired.
    #[error("unknown producer id {producer_id} (never issued, or expired after producers.id_expiration_ms idle)")]
    Unknown {
        /// The producer id.
        producer_id: i64,
    },
    /// The batch's epoch is older than the id's current one.
    #[error("producer fenced: epoch {received} is older than the current epoch {current}")]
    Fenced {
        /// The current epoch.
        current: i32,
        /// The batch's epoch.
        received: i32,
    },
    /// The batch's epoch is newer than any issued.
    #[error("producer epoch {received} is newer than the current epoch {current}")]
    InvalidEpoch {
        /// The current epoch.
        current: i32,
        /// The batch's epoch.
        received: i32,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    epoch: i32,
    last_seen_ms: i64,
    /// Seen since the last persist.
    dirty: bool,
}

/// The live producer ids (see the module docs). Cheap to share: clone the `Arc`.
#[derive(Debug)]
pub struct ProducerIds {
    meta: Arc<MetaStore>,
    ids_max: u32,
    expiration_ms: i64,
    entries: Mutex<HashMap<i64, Entry>>,
}

/// What one [`ProducerIds::persist`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PersistReport {
    /// Ids whose last-seen time was written.
    pub updated: usize,
    /// Ids that expired and were deleted.
    pub expired: usize,
}

impl ProducerIds {
    /// Loads the issued ids from the store, dropping those expired at `now_ms`. Blocks on the store.
    pub fn load(
        meta: Arc<MetaStore>,
        ids_max: u32,
        expiration: Duration,
        now_ms: i64,
    ) -> Result<ProducerIds, MetaError> {
        let expiration_ms = i64::try_from(expiration.as_millis()).unwrap_or(i64::MAX);
        let stored = meta.producer_ids()?;
        let registry = ProducerIds { meta, ids_max, expiration_ms, entries: Mutex::new(HashMap::new()) };
        {
            let mut entries = registry.lock();
            for id in stored {
                // Expired ones are deleted by the first persist.
                entries.insert(id.producer_id, Entry { epoch: id.epoch, last_seen_ms: id.last_seen_ms, dirty: false });
            }
        }
        registry.persist(now_ms)?;
        Ok(registry)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn expired(&self, entry: &Entry, now_ms: i64) -> bool {
        entry.last_seen_ms <= now_ms.saturating_sub(self.expiration_ms)
    }

    /// Producer ids alive (issued and not yet swept as expired).
    pub fn active(&self) -> usize {
        self.lock().len()
    }

    /// How long an idle id lives.
    pub fn expiration(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.expiration_ms).unwrap_or(0))
    }

    /// Issues a new producer id with epoch 0. Blocks on the store: call it from a blocking thread.
    pub fn issue(&self, now_ms: i64) -> Result<StoredProducerId, IssueError> {
        {
            let mut entries = self.lock();
            if entries.len() >= self.ids_max as usize {
                entries.retain(|_, entry| !self.expired(entry, now_ms));
                if entries.len() >= self.ids_max as usize {
                    return Err(IssueError::Limit { max: self.ids_max });
                }
            }
        }
        // Two racing issues may both pass the check above and exceed the limit by one each: the limit bounds memory,
        // and being off by the number of concurrent InitProducerId calls keeps that bound.
        let stored = self.meta.allocate_producer_id(now_ms)?;
        self.lock().insert(stored.producer_id, Entry { epoch: stored.epoch, last_seen_ms: now_ms, dirty: false });
        Ok(stored)
    }

    /// Checks a batch's producer id and epoch, and marks the id as seen at `now_ms`. Never blocks on I/O.
    pub fn admit(&self, producer_id: i64, epoch: i32, now_ms: i64) -> Result<(), AdmitError> {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(&producer_id) else { return Err(AdmitError::Unknown { producer_id }) };
        if self.expired(entry, now_ms) {
            entries.remove(&producer_id);
            return Err(AdmitError::Unknown { producer_id });
        }
        if epoch < entry.epoch {
            return Err(AdmitError::Fenced { current: entry.epoch, received: epoch });
        }
        if epoch > entry.epoch {
            return Err(AdmitError::InvalidEpoch { current: entry.epoch, received: epoch });
        }
        entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
        entry.dirty = true;
        Ok(())
    }

    /// Writes the last-seen times of ids seen since the last call and deletes the ids expired at `now_ms`.
    /// Blocks on the store: call it from a blocking thread.
    pub fn persist(&self, now_ms: i64) -> Result<PersistReport, MetaError> {
        let (live, expired) = {
            let mut entries = self.lock();
            let expired: Vec<i64> =
                entries.iter().filter(|(_, entry)| self.expired(entry, now_ms)).map(|(id, _)| *id).collect();
            for id in &expired {
                entries.remove(id);
            }
            let live: Vec<StoredProducerId> = entries
                .iter_mut()
                .filter(|(_, entry)| entry.dirty)
                .map(|(id, entry)| {
                    entry.dirty = false;
                    StoredProducerId { producer_id: *id, epoch: entry.epoch, last_seen_ms: entry.last_seen_ms }
                })
                .collect();
            (live, expired)
        };
        let report = PersistReport { updated: live.len(), expired: expired.len() };
        if let Err(error) = self.meta.update_producer_ids(&live, &expired) {
            // Mark them dirty again so the next persist retries; expired ids stay deleted in memory and are deleted
            // from the store by the next load if not before.
            let mut entries = self.lock();
            for id in live {
                if let Some(entry) = entries.get_mut(&id.producer_id) {
                    entry.dirty = true;
                }
            }
            return Err(error);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetaConfig;

    fn registry(dir: &std::path::Path, ids_max: u32) -> ProducerIds {
        let meta = Arc::new(MetaStore::open(&dir.join("meta"), &MetaConfig::default()).expect("open"));
        ProducerIds::load(meta, ids_max, Duration::from_secs(10), 0).expect("load")
    }

    #[test]
    fn admits_issued_ids_and_refuses_unknown_fenced_and_future_epochs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = registry(dir.path(), 10);
        let issued = ids.issue(1_000).expect("issue");
        assert_eq!(ids.admit(issued.producer_id, 0, 2_000), Ok(()));
        assert_eq!(
            ids.admit(issued.producer_id + 1, 0, 2_000),
            Err(AdmitError::Unknown { producer_id: issued.producer_id + 1 })
        );
        assert_eq!(ids.admit(issued.producer_id, -1, 2_000), Err(AdmitError::Fenced { current: 0, received: -1 }));
        assert_eq!(ids.admit(issued.producer_id, 1, 2_000), Err(AdmitError::InvalidEpoch { current: 0, received: 1 }));
    }

    #[test]
    fn idle_ids_expire_and_live_ones_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = registry(dir.path(), 10);
        let idle = ids.issue(0).expect("issue").producer_id;
        let busy = ids.issue(0).expect("issue").producer_id;
        for now in (1..=3).map(|step| step * 4_000) {
            assert_eq!(ids.admit(busy, 0, now), Ok(()), "a producer that writes stays alive");
        }
        assert_eq!(ids.admit(idle, 0, 12_000), Err(AdmitError::Unknown { producer_id: idle }));
        assert_eq!(ids.persist(12_000).expect("persist"), PersistReport { updated: 1, expired: 0 });
        assert_eq!(ids.active(), 1);
    }

    #[test]
    fn the_limit_refuses_new_ids_until_one_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = registry(dir.path(), 2);
        ids.issue(0).expect("issue");
        let live = ids.issue(5_000).expect("issue").producer_id;
        assert!(matches!(ids.issue(6_000), Err(IssueError::Limit { max: 2 })));
        assert_eq!(ids.admit(live, 0, 6_000), Ok(()), "no live producer was evicted");
        // The first id has been idle for 10 s at 10 000: it makes room.
        ids.issue(10_000).expect("room after expiry");
    }

    #[test]
    fn ids_and_last_seen_times_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (early, late) = {
            let ids = registry(dir.path(), 10);
            let early = ids.issue(0).expect("issue").producer_id;
            let late = ids.issue(0).expect("issue").producer_id;
            ids.admit(late, 0, 9_000).expect("admit");
            ids.persist(9_000).expect("persist");
            (early, late)
        };
        let meta = Arc::new(MetaStore::open(&dir.path().join("meta"), &MetaConfig::default()).expect("reopen"));
        let ids = ProducerIds::load(meta, 10, Duration::from_secs(10), 15_000).expect("load");
        assert_eq!(ids.admit(early, 0, 15_000), Err(AdmitError::Unknown { producer_id: early }), "expired while down");
        assert_eq!(ids.admit(late, 0, 15_000), Ok(()));
        assert!(ids.issue(15_000).expect("issue").producer_id > late, "ids are never reused");
    }
}
