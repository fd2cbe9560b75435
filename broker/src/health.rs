//! Liveness and readiness, as the `/health` and `/ready` endpoints next to `/metrics` report them.
//!
//! `/health` answers 200 whenever the metrics listener answers at all: the process is alive and its runtime serves.
//! `/ready` answers 200 only once the broker serves clients: the metadata store is open, recovery finished and no
//! partition is damaged or failed; otherwise 503 with a one-line reason ([`NotReady`]).
//! [`crate::Broker::open`] starts the metrics listener before the metadata store and the partitions open, so during a
//! long recovery `/health` says 200 and `/ready` says 503 `recovering`.

use std::sync::{Arc, Mutex, PoisonError};

use ferry_log::LogStatus;

use crate::partitions::Partitions;

/// How far the broker has come in starting or stopping.
#[derive(Debug, Clone, Default)]
enum Phase {
    /// The metadata store is opening.
    #[default]
    OpeningMetadata,
    /// Partitions are being recovered and the coordinators loaded.
    Recovering,
    /// Clients are served.
    Serving(Arc<Partitions>),
    /// Shutdown began.
    ShuttingDown,
}

/// Why the broker is not ready; its `Display` is the one-line body of a 503 from `/ready`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The metadata store is still opening.
    #[error("opening the metadata store")]
    OpeningMetadata,
    /// Partition recovery (or loading the coordinators) has not finished.
    #[error("recovering")]
    Recovering,
    /// The broker is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// Recovery found corruption below a partition's acknowledged end; it refuses writes.
    #[error("partition {topic}/{partition} is damaged")]
    Damaged {
        /// The topic.
        topic: String,
        /// The partition number.
        partition: u32,
    },
    /// A fatal error (such as a failed fsync) stopped a partition until the broker restarts.
    #[error("partition {topic}/{partition} failed")]
    Failed {
        /// The topic.
        topic: String,
        /// The partition number.
        partition: u32,
    },
}

/// The broker's readiness, shared by the startup code (which moves it forward) and the `/ready` endpoint.
#[derive(Debug, Default)]
pub struct Readiness {
    phase: Mutex<Phase>,
}

impl Readiness {
    /// A broker that has not opened its metadata store yet.
    pub fn new() -> Readiness {
        Readiness::default()
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase;
    }

    /// The metadata store is open; partitions are being recovered.
    pub fn recovering(&self) {
        self.set(Phase::Recovering);
    }

    /// Recovery finished and clients are served; from now on readiness depends on the partitions' health.
    pub fn serving(&self, partitions: Arc<Partitions>) {
        self.set(Phase::Serving(partitions));
    }

    /// Shutdown began.
    pub fn shutting_down(&self) {
        self.set(Phase::ShuttingDown);
    }

    /// `Ok` if the broker is ready to serve clients, otherwise the first reason it is not (partitions in topic and
    /// partition order). Cheap: reads in-memory partition state, no I/O.
    pub fn check(&self) -> Result<(), NotReady> {
        let phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let partitions = match phase {
            Phase::OpeningMetadata => return Err(NotReady::OpeningMetadata),
            Phase::Recovering => return Err(NotReady::Recovering),
            Phase::ShuttingDown => return Err(NotReady::ShuttingDown),
            Phase::Serving(partitions) => partitions,
        };
        for topic in partitions.topics() {
            for partition in &topic.partitions {
                let (name, id) = (topic.name(), partition.id);
                match partition.reader().status() {
                    LogStatus::Damaged(_) => return Err(NotReady::Damaged { topic: name.to_owned(), partition: id }),
                    LogStatus::Failed(_) => return Err(NotReady::Failed { topic: name.to_owned(), partition: id }),
                    LogStatus::Open | LogStatus::Closed => {}
                }
            }
        }
        Ok(())
    }
}
