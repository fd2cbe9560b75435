//! The transaction checker: what went wrong with transactions in a final read, after Kafka's `transactions_test.py`
//! and the torn-transaction and aborted-read anomalies of `../shared/research/reliability.md` section 8.
//!
//! A [`TxnHistory`] lists every transaction a test began (its values and what its producer was told) and the
//! records a read-committed reader found. [`check_transactions`] reports:
//!
//! | field | anomaly | Jepsen's name |
//! | --- | --- | --- |
//! | `aborted_reads` | a value of a transaction its producer saw aborted is visible | `G1a` (aborted read) |
//! | `torn` | some but not all values of a transaction are visible | torn transaction (G1c-like) |
//! | `lost` | a transaction its producer saw committed has no visible value | lost write |
//! | `duplicates` | a value visible more than once | duplicate |
//! | `never_sent` | a visible value that belongs to no transaction | garbage |
//!
//! A transaction whose outcome is unknown to its producer (the connection died during the commit) may be visible
//! whole or not at all; anything between is torn.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::checker::examples;
use super::history::Read;

#[cfg(test)]
mod tests;

/// What a transaction's producer was told at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    /// The commit was acknowledged: every value must be visible.
    Committed,
    /// The abort was acknowledged, or the transaction was abandoned and fenced: no value may be visible.
    Aborted,
    /// No answer (the connection or the broker died during the commit): all or nothing.
    Unknown,
}

/// One transaction: its values (unique in the whole history) and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    /// A name for reports.
    pub id: String,
    /// Every value it wrote.
    pub values: Vec<String>,
    /// What its producer was told.
    pub outcome: TxnOutcome,
}

/// The transactions of a run and a read-committed reader's final read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnHistory {
    /// Every transaction begun.
    pub txns: Vec<Txn>,
    /// What the reader saw, in fetch order.
    pub reads: Vec<Read>,
}

/// Everything the transaction checker found; empty vectors mean no anomaly of that kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnReport {
    /// Transactions by outcome: committed, aborted, unknown.
    pub n_committed: usize,
    /// See `n_committed`.
    pub n_aborted: usize,
    /// See `n_committed`.
    pub n_unknown: usize,
    /// Unknown-outcome transactions found visible (whole).
    pub n_unknown_visible: usize,
    /// Records read.
    pub n_read: usize,
    /// Values of aborted transactions that are visible: (transaction, value).
    pub aborted_reads: Vec<(String, String)>,
    /// Transactions partly visible: (transaction, values visible, values written).
    pub torn: Vec<(String, usize, usize)>,
    /// Committed transactions with no visible value.
    pub lost: Vec<String>,
    /// Values visible more than once, with every (partition, offset).
    pub duplicates: Vec<(String, Vec<(u32, u64)>)>,
    /// Visible values that belong to no transaction.
    pub never_sent: Vec<String>,
}

impl TxnReport {
    /// Every anomaly, one line per kind with a few examples; empty when the run is good.
    pub fn violations(&self) -> Vec<String> {
        let mut violations = Vec::new();
        let mut add = |kind: &str, count: usize, examples: String| {
            if count > 0 {
                violations.push(format!("{count} {kind}, e.g. {examples}"));
            }
        };
        add("aborted reads", self.aborted_reads.len(), examples(&self.aborted_reads));
        add("torn transactions", self.torn.len(), examples(&self.torn));
        add("lost committed transactions", self.lost.len(), examples(&self.lost));
        add("duplicated values", self.duplicates.len(), examples(&self.duplicates));
        add("values of no transaction", self.never_sent.len(), examples(&self.never_sent));
        violations
    }
}

impl fmt::Display for TxnReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "transactions: {} committed, {} aborted, {} unknown ({} of them visible), {} records read; \
             aborted reads {}, torn {}, lost {}, duplicated values {}, values of no transaction {}",
            self.n_committed,
            self.n_aborted,
            self.n_unknown,
            self.n_unknown_visible,
            self.n_read,
            self.aborted_reads.len(),
            self.torn.len(),
            self.lost.len(),
            self.duplicates.len(),
            self.never_sent.len(),
        )
    }
}

/// Checks `history`: every anomaly of the table in the module docs, each listed in the [`TxnReport`].
pub fn check_transactions(history: &TxnHistory) -> TxnReport {
    let mut report = TxnReport { n_read: history.reads.len(), ..TxnReport::default() };
    let mut read_at: BTreeMap<&str, Vec<(u32, u64)>> = BTreeMap::new();
    for read in &history.reads {
        read_at.entry(read.value.as_str()).or_default().push((read.partition, read.offset));
    }
    report.duplicates =
        read_at.iter().filter(|(_, at)| at.len() > 1).map(|(value, at)| ((*value).to_owned(), at.clone())).collect();

    let mut owner: HashMap<&str, &str> = HashMap::new();
    for txn in &history.txns {
        let visible: Vec<&String> = txn.values.iter().filter(|value| read_at.contains_key(value.as_str())).collect();
        for value in &txn.values {
            owner.insert(value, &txn.id);
        }
        let whole = visible.len() == txn.values.len();
        if !visible.is_empty() && !whole {
            report.torn.push((txn.id.clone(), visible.len(), txn.values.len()));
        }
        match txn.outcome {
            TxnOutcome::Committed => {
                report.n_committed += 1;
                if visible.is_empty() {
                    report.lost.push(txn.id.clone());
                }
            }
            TxnOutcome::Aborted => {
                report.n_aborted += 1;
                report.aborted_reads.extend(visible.iter().map(|value| (txn.id.clone(), (*value).clone())));
            }
            TxnOutcome::Unknown => {
                report.n_unknown += 1;
                if whole && !visible.is_empty() {
                    report.n_unknown_visible += 1;
                }
            }
        }
    }
    report.never_sent =
        read_at.keys().filter(|value| !owner.contains_key(**value)).map(|value| (*value).to_owned()).collect();
    report
}
