//! The history of a chaos run, in Jepsen's vocabulary: every send a producer invoked with its outcome, and the
//! final read of every partition.
//!
//! Values are unique (`p{producer}-{seq}`), so the checker can tell which send a record came from.
//! A history is written to a text file (one operation per line) when a run fails, so it can be examined and the
//! checker re-run on it.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How a send ended, as the producer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Not completed yet (the run is still going), or the producer never reported back.
    /// Checked like [`Outcome::Unknown`].
    Pending,
    /// Acknowledged: the broker stored the value at this offset of the send's partition.
    Ok {
        /// The acknowledged offset.
        offset: u64,
    },
    /// Definitely not stored: the send was refused before anything reached the broker.
    Failed,
    /// Indeterminate (Jepsen's `:info`): a timeout or a lost connection; the value may or may not be stored.
    Unknown,
}

/// One send: which producer, its position in that producer's send order, the value and where it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    /// The producer that invoked it.
    pub producer: u32,
    /// Its position in the producer's send order, from 0.
    pub seq: u64,
    /// The target partition.
    pub partition: u32,
    /// The unique value.
    pub value: String,
    /// How it ended.
    pub outcome: Outcome,
}

/// One record of the final read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The partition it was read from.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// Its value (lossy UTF-8 of the bytes).
    pub value: String,
}

/// The whole history: the sends and the final read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Every send, in invocation order per producer.
    pub sends: Vec<Send>,
    /// Every record read at the end, in the order read.
    pub reads: Vec<Read>,
}

/// The unique value a producer sends as its `seq`-th record, padded to `value_bytes` (at least the bare value).
pub fn value_for(producer: u32, seq: u64, value_bytes: usize) -> String {
    let mut value = format!("p{producer}-{seq:09}");
    if value.len() < value_bytes {
        value.push(' ');
        while value.len() < value_bytes {
            value.push('.');
        }
    }
    value
}

/// The identity of a value: its text up to the first space (the padding is not part of it).
pub fn value_id(value: &str) -> &str {
    value.split(' ').next().unwrap_or(value)
}

impl History {
    /// Writes the history to `path`, one line per operation:
    /// `send <producer> <seq> <partition> <value> <outcome>` and `read <partition> <offset> <value>`.
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        let mut text = String::new();
        for send in &self.sends {
            let outcome = match send.outcome {
                Outcome::Pending => "pending".to_owned(),
                Outcome::Ok { offset } => format!("ok:{offset}"),
                Outcome::Failed => "failed".to_owned(),
                Outcome::Unknown => "unknown".to_owned(),
            };
            let value = value_id(&send.value);
            writeln!(text, "send {} {} {} {value} {outcome}", send.producer, send.seq, send.partition)
                .expect("writing to a String cannot fail");
        }
        for read in &self.reads {
            writeln!(text, "read {} {} {}", read.partition, read.offset, value_id(&read.value))
                .expect("writing to a String cannot fail");
        }
        std::fs::write(path, text)
    }
}

/// A history being recorded by concurrent producers: each send gets a slot when invoked and its outcome later.
///
/// Cheap to clone (clones share the recording); the lock is held only to push or update one entry.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    sends: Arc<Mutex<Vec<Send>>>,
    /// Sends completed so far, for progress checks without the lock.
    completed: Arc<AtomicU64>,
}

/// The position of a send in a [`Recorder`], to report its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendIdx(usize);

impl Recorder {
    /// Records the invocation of a send (outcome [`Outcome::Pending`]) and returns its slot.
    pub fn invoke(&self, producer: u32, seq: u64, partition: u32, value: String) -> SendIdx {
        let mut sends = self.sends.lock().expect("recorder lock");
        sends.push(Send { producer, seq, partition, value, outcome: Outcome::Pending });
        SendIdx(sends.len() - 1)
    }

    /// Records how the send in `idx` ended. An outcome is set once.
    pub fn complete(&self, idx: SendIdx, outcome: Outcome) {
        assert!(outcome != Outcome::Pending, "a completion has an outcome");
        let mut sends = self.sends.lock().expect("recorder lock");
        let send = &mut sends[idx.0];
        assert_eq!(send.outcome, Outcome::Pending, "send {} of producer {} completed twice", send.seq, send.producer);
        send.outcome = outcome;
        drop(sends);
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    /// How many sends completed so far (any outcome).
    pub fn n_completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// A copy of the sends recorded so far.
    pub fn sends(&self) -> Vec<Send> {
        self.sends.lock().expect("recorder lock").clone()
    }
}
