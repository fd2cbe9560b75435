//! Chaos testing in Jepsen's vocabulary: a [`history::History`] of what producers sent and what the log holds at
//! the end, and a [`checker`] that names every anomaly in it.
//!
//! - `history`: sends (producer, send order, partition, unique value, outcome) and the final read.
//! - `checker`: lost acknowledged writes, duplicates, reordering, offset gaps and reuse, values never sent.

pub mod checker;
pub mod history;
