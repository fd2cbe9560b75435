//! The checker: what went wrong in a [`History`], in the anomaly vocabulary of Jepsen's Kafka-queue checker
//! (`../shared/research/reliability.md` section 1.6).
//!
//! [`check`] returns a [`Report`] listing every anomaly it found; [`Report::violations`] says which of them the
//! guarantees under test ([`Expect`]) forbid, so a test asserts on an empty list and prints the rest.
//!
//! | field | anomaly | Jepsen's name |
//! | --- | --- | --- |
//! | `lost` | an acknowledged value is nowhere in the final read | `lost-write`, `unseen` |
//! | `ack_mismatch` | an acknowledged value is read, but not at the offset its acknowledgement gave | `inconsistent-offsets` |
//! | `duplicates` | a value stored at more than one offset | `duplicate` |
//! | `reordered` | a producer's values in one partition appear out of send order (first occurrences) | `nonmonotonic-send` |
//! | `gaps` | a partition's offsets are not dense | `poll-skip` |
//! | `reused_offsets` | one offset read with two values | `inconsistent-offsets` |
//! | `never_sent` | a value read that no producer sent | (garbage) |
//! | `failed_but_stored` | a value whose send definitely failed, read anyway | `G1a` (aborted read) |
//! | `wrong_partition` | a value read from a partition it was not sent to | |

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::history::{History, Outcome, value_id};

#[cfg(test)]
mod tests;

/// Which anomalies the guarantees under test allow; everything else in a [`Report`] is a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// Whether a value may be stored more than once: `true` for producers without idempotence (at-least-once: a
    /// retry after a lost acknowledgement appends the batch again), `false` for idempotent ones, where a duplicate
    /// is a bug. Reordering is judged on first occurrences either way, so a duplicate alone never counts as
    /// reordering.
    pub duplicates_allowed: bool,
}

impl Expect {
    /// A producer without idempotence: at-least-once, so duplicates are reported but allowed.
    pub const AT_LEAST_ONCE: Expect = Expect { duplicates_allowed: true };
    /// An idempotent producer: every anomaly is a violation.
    pub const EXACTLY_ONCE: Expect = Expect { duplicates_allowed: false };
}

/// A value stored at more than one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The value.
    pub value: String,
    /// Every (partition, offset) it was read at, in read order.
    pub at: Vec<(u32, u64)>,
}

/// A value of a producer that appears before one the producer sent earlier, in the same partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reordered {
    /// The producer.
    pub producer: u32,
    /// The partition.
    pub partition: u32,
    /// The value sent later but stored earlier, and its offset.
    pub value: String,
    /// Its (first) offset.
    pub offset: u64,
    /// The value sent earlier, stored at a higher offset.
    pub overtaken: String,
    /// Its (first) offset.
    pub overtaken_offset: u64,
}

/// A hole in a partition's offsets: after `after`, the next offset read was `next` instead of `after + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The partition.
    pub partition: u32,
    /// The offset before the hole (`None` when the hole is at the start: the first offset read is not 0).
    pub after: Option<u64>,
    /// The offset after the hole.
    pub next: u64,
}

/// An acknowledged value not found where its acknowledgement said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misplaced {
    /// The value.
    pub value: String,
    /// Where the acknowledgement put it.
    pub acked_at: (u32, u64),
    /// What is stored there instead (`None`: nothing was read at that offset).
    pub found_there: Option<String>,
}

/// Everything the checker found; empty vectors mean no anomaly of that kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Sends in the history.
    pub n_sends: usize,
    /// Acknowledged sends.
    pub n_acked: usize,
    /// Sends that definitely failed.
    pub n_failed: usize,
    /// Sends with an unknown (or pending) outcome.
    pub n_unknown: usize,
    /// Records in the final read.
    pub n_read: usize,
    /// Unknown sends whose value was read (they happened).
    pub n_unknown_stored: usize,
    /// Acknowledged values not read anywhere.
    pub lost: Vec<String>,
    /// Acknowledged values read, but not at their acknowledged offset.
    pub ack_mismatch: Vec<Misplaced>,
    /// Values stored at more than one offset.
    pub duplicates: Vec<Duplicate>,
    /// Extra copies in all, over every duplicated value (a value read three times adds 2).
    pub n_duplicate_copies: usize,
    /// First occurrences out of a producer's send order, per partition.
    pub reordered: Vec<Reordered>,
    /// Holes in a partition's offsets.
    pub gaps: Vec<Gap>,
    /// Offsets read more than once with different values: (partition, offset, values).
    pub reused_offsets: Vec<(u32, u64, Vec<String>)>,
    /// Values read that no producer sent.
    pub never_sent: Vec<String>,
    /// Values whose send definitely failed, read anyway.
    pub failed_but_stored: Vec<String>,
    /// Values read from another partition than the one they were sent to: (value, sent to, read from).
    pub wrong_partition: Vec<(String, u32, u32)>,
}

impl Report {
    /// The anomalies `expect` forbids, one line each (at most a few examples per kind); empty when the run is good.
    pub fn violations(&self, expect: Expect) -> Vec<String> {
        let mut violations = Vec::new();
        let mut add = |kind: &str, count: usize, examples: String| {
            if count > 0 {
                violations.push(format!("{count} {kind}, e.g. {examples}"));
            }
        };
        add("lost acknowledged writes", self.lost.len(), examples(&self.lost));
        add("acknowledged at another offset than stored", self.ack_mismatch.len(), examples(&self.ack_mismatch));
        if !expect.duplicates_allowed {
            add("duplicated values", self.duplicates.len(), examples(&self.duplicates));
        }
        add("reordered values", self.reordered.len(), examples(&self.reordered));
        add("offset gaps", self.gaps.len(), examples(&self.gaps));
        add("reused offsets", self.reused_offsets.len(), examples(&self.reused_offsets));
        add("values never sent", self.never_sent.len(), examples(&self.never_sent));
        add("definitely failed sends stored", self.failed_but_stored.len(), examples(&self.failed_but_stored));
        add("values in the wrong partition", self.wrong_partition.len(), examples(&self.wrong_partition));
        violations
    }
}

impl fmt::Display for Report {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "sends {} (ok {}, failed {}, unknown {} of which {} stored), read {}; lost {}, ack mismatch {}, \
             duplicated values {} ({} extra copies), reordered {}, gaps {}, reused offsets {}, never sent {}, \
             failed but stored {}, wrong partition {}",
            self.n_sends,
            self.n_acked,
            self.n_failed,
            self.n_unknown,
            self.n_unknown_stored,
            self.n_read,
            self.lost.len(),
            self.ack_mismatch.len(),
            self.duplicates.len(),
            self.n_duplicate_copies,
            self.reordered.len(),
            self.gaps.len(),
            self.reused_offsets.len(),
            self.never_sent.len(),
            self.failed_but_stored.len(),
            self.wrong_partition.len(),
        )
    }
}

/// The first three items of a list, for a violation line.
pub(super) fn examples<T: fmt::Debug>(items: &[T]) -> String {
    let shown: Vec<&T> = items.iter().take(3).collect();
    if items.len() > shown.len() {
        format!("{shown:?} and {} more", items.len() - shown.len())
    } else {
        format!("{shown:?}")
    }
}

/// A value's send order (`seq`), its lowest offset in its partition, and the value.
type FirstOccurrence<'history> = (u64, u64, &'history str);

/// Checks `history`: every anomaly of the table in the module docs, each listed in the [`Report`].
///
/// Values are compared by identity ([`value_id`]: padding ignored).
pub fn check(history: &History) -> Report {
    let mut report = Report { n_sends: history.sends.len(), n_read: history.reads.len(), ..Report::default() };

    // Where each value was read, and what each (partition, offset) holds.
    let mut read_at: HashMap<&str, Vec<(u32, u64)>> = HashMap::new();
    let mut by_offset: BTreeMap<(u32, u64), Vec<&str>> = BTreeMap::new();
    for read in &history.reads {
        let value = value_id(&read.value);
        read_at.entry(value).or_default().push((read.partition, read.offset));
        let values = by_offset.entry((read.partition, read.offset)).or_default();
        if !values.contains(&value) {
            values.push(value);
        }
    }

    for (&(partition, offset), values) in &by_offset {
        if values.len() > 1 {
            let values = values.iter().map(|value| (*value).to_owned()).collect();
            report.reused_offsets.push((partition, offset, values));
        }
    }

    // Density: per partition, the distinct offsets read must be 0, 1, 2, ... without holes.
    let mut previous: Option<(u32, u64)> = None;
    for &(partition, offset) in by_offset.keys() {
        let expected = match previous {
            Some((previous_partition, previous_offset)) if previous_partition == partition => Some(previous_offset),
            _ => None,
        };
        match expected {
            Some(after) if offset != after + 1 => report.gaps.push(Gap { partition, after: Some(after), next: offset }),
            None if offset != 0 => report.gaps.push(Gap { partition, after: None, next: offset }),
            _ => {}
        }
        previous = Some((partition, offset));
    }

    // Duplicates, in a stable order (by first place read).
    let mut duplicates: Vec<Duplicate> = read_at
        .iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(value, at)| Duplicate { value: (*value).to_owned(), at: at.clone() })
        .collect();
    duplicates.sort_by_key(|duplicate| duplicate.at[0]);
    report.n_duplicate_copies = duplicates.iter().map(|duplicate| duplicate.at.len() - 1).sum();
    report.duplicates = duplicates;

    // Per send: its outcome against what was read.
    let mut sent: HashMap<&str, (u32, Outcome)> = HashMap::with_capacity(history.sends.len());
    // First offsets of each producer's values per partition, keyed by send order.
    let mut firsts: BTreeMap<(u32, u32), Vec<FirstOccurrence<'_>>> = BTreeMap::new();
    for send in &history.sends {
        let value = value_id(&send.value);
        sent.insert(value, (send.partition, send.outcome));
        let at = read_at.get(value);
        match send.outcome {
            Outcome::Ok { offset } => {
                report.n_acked += 1;
                match at {
                    None => report.lost.push(value.to_owned()),
                    Some(at) if !at.contains(&(send.partition, offset)) => {
                        let found_there = by_offset.get(&(send.partition, offset)).map(|values| values.join("|"));
                        report.ack_mismatch.push(Misplaced {
                            value: value.to_owned(),
                            acked_at: (send.partition, offset),
                            found_there,
                        });
                    }
                    Some(_) => {}
                }
            }
            Outcome::Failed => {
                report.n_failed += 1;
                if at.is_some() {
                    report.failed_but_stored.push(value.to_owned());
                }
            }
            Outcome::Unknown | Outcome::Pending => {
                report.n_unknown += 1;
                if at.is_some() {
                    report.n_unknown_stored += 1;
                }
            }
        }
        if let Some(at) = at {
            for &(partition, _) in at {
                if partition != send.partition {
                    report.wrong_partition.push((value.to_owned(), send.partition, partition));
                }
            }
            let first_offset =
                at.iter().filter(|(partition, _)| *partition == send.partition).map(|(_, offset)| *offset).min();
            if let Some(first_offset) = first_offset {
                firsts.entry((send.producer, send.partition)).or_default().push((send.seq, first_offset, value));
            }
        }
    }

    let mut never_sent_seen = std::collections::HashSet::new();
    for read in &history.reads {
        let value = value_id(&read.value);
        if !sent.contains_key(value) && never_sent_seen.insert(value) {
            report.never_sent.push(value.to_owned());
        }
    }

    // Order: in send order, each first occurrence must lie above every earlier one of the same producer.
    for ((producer, partition), mut values) in firsts {
        values.sort_unstable_by_key(|&(seq, _, _)| seq);
        let mut highest: Option<(u64, &str)> = None;
        for (_, offset, value) in values {
            match highest {
                Some((highest_offset, highest_value)) if offset < highest_offset => {
                    report.reordered.push(Reordered {
                        producer,
                        partition,
                        value: value.to_owned(),
                        offset,
                        overtaken: highest_value.to_owned(),
                        overtaken_offset: highest_offset,
                    });
                }
                _ => highest = Some((offset, value)),
            }
        }
    }
    report
}
