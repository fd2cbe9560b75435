//! The history of a chaos run, in Jepsen's vocabulary: every send a producer invoked with its outcome, and the
//! final read of every partition.
//!
//! Values are unique (`p{producer}-{seq}`), so the checker can tell which send a record came from.
//! A history is written to a text file (one operation per line) when a run fails, so it can be examined and the
//! checker re-run on it.

use std::fmt::Write as _;
use std::path::Path;

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
