//! The transaction checker on hand-written histories: a clean one, then one per anomaly.

use super::{Txn, TxnHistory, TxnOutcome, check_transactions};
use crate::chaos::history::Read;

fn txn(id: &str, n_values: usize, outcome: TxnOutcome) -> Txn {
    Txn { id: id.to_owned(), values: (0..n_values).map(|idx| format!("{id}/{idx}")).collect(), outcome }
}

/// Reads of `values`, at consecutive offsets of partition 0.
fn reads(values: &[&str]) -> Vec<Read> {
    values
        .iter()
        .enumerate()
        .map(|(offset, value)| Read { partition: 0, offset: offset as u64, value: (*value).to_owned() })
        .collect()
}

/// A committed transaction of two values, an aborted one, and an unknown one that happened.
fn clean() -> TxnHistory {
    TxnHistory {
        txns: vec![
            txn("a", 2, TxnOutcome::Committed),
            txn("b", 2, TxnOutcome::Aborted),
            txn("c", 1, TxnOutcome::Unknown),
            txn("d", 3, TxnOutcome::Unknown),
        ],
        reads: reads(&["a/0", "c/0", "a/1"]),
    }
}

#[test]
fn a_clean_history_has_no_violation_and_counts_outcomes() {
    let report = check_transactions(&clean());
    assert_eq!(report.violations(), Vec::<String>::new());
    assert_eq!((report.n_committed, report.n_aborted, report.n_unknown, report.n_unknown_visible), (1, 1, 2, 1));
    assert_eq!(report.n_read, 3);
}

#[test]
fn a_visible_value_of_an_aborted_transaction_is_an_aborted_read() {
    let mut history = clean();
    history.reads.push(Read { partition: 1, offset: 0, value: "b/1".to_owned() });
    let report = check_transactions(&history);
    assert_eq!(report.aborted_reads, vec![("b".to_owned(), "b/1".to_owned())]);
    // Half of b is also a torn transaction.
    assert_eq!(report.torn, vec![("b".to_owned(), 1, 2)]);
    assert_eq!(report.violations().len(), 2);
}

#[test]
fn part_of_a_committed_or_unknown_transaction_is_torn() {
    let mut history = clean();
    history.reads.retain(|read| read.value != "a/1");
    history.reads.push(Read { partition: 2, offset: 0, value: "d/2".to_owned() });
    let report = check_transactions(&history);
    assert_eq!(report.torn, vec![("a".to_owned(), 1, 2), ("d".to_owned(), 1, 3)]);
    assert!(report.lost.is_empty() && report.aborted_reads.is_empty());
}

#[test]
fn a_committed_transaction_with_nothing_visible_is_lost() {
    let mut history = clean();
    history.reads.retain(|read| !read.value.starts_with("a/"));
    let report = check_transactions(&history);
    assert_eq!(report.lost, vec!["a".to_owned()]);
    assert!(report.torn.is_empty());
    // An unknown transaction with nothing visible is fine.
    assert_eq!(report.violations().len(), 1, "{:?}", report.violations());
}

#[test]
fn a_value_read_twice_is_a_duplicate_and_a_stranger_is_never_sent() {
    let mut history = clean();
    history.reads.push(Read { partition: 0, offset: 3, value: "a/0".to_owned() });
    history.reads.push(Read { partition: 0, offset: 4, value: "zombie/0".to_owned() });
    let report = check_transactions(&history);
    assert_eq!(report.duplicates, vec![("a/0".to_owned(), vec![(0, 0), (0, 3)])]);
    assert_eq!(report.never_sent, vec!["zombie/0".to_owned()]);
    assert_eq!(report.violations().len(), 2);
}
