//! The checker on hand-written histories: a clean one, then one per anomaly.

use super::{Expect, Gap, check};
use crate::chaos::history::{History, Outcome, Read, Send};

/// A send of producer `producer`'s `seq`-th value `p{producer}-{seq}` to `partition`.
fn send(producer: u32, seq: u64, partition: u32, outcome: Outcome) -> Send {
    Send { producer, seq, partition, value: format!("p{producer}-{seq}"), outcome }
}

fn ok(offset: u64) -> Outcome {
    Outcome::Ok { offset }
}

fn read(partition: u32, offset: u64, value: &str) -> Read {
    Read { partition, offset, value: value.to_owned() }
}

/// Two producers, two partitions, everything acknowledged and read once, in order.
fn clean() -> History {
    History {
        sends: vec![
            send(0, 0, 0, ok(0)),
            send(1, 0, 0, ok(1)),
            send(0, 1, 0, ok(2)),
            send(0, 2, 1, ok(0)),
            send(1, 1, 1, ok(1)),
        ],
        reads: vec![read(0, 0, "p0-0"), read(0, 1, "p1-0"), read(0, 2, "p0-1"), read(1, 0, "p0-2"), read(1, 1, "p1-1")],
    }
}

/// Checks `history` and returns the report and its violations under `expect`.
fn check_with(history: &History, expect: Expect) -> (super::Report, Vec<String>) {
    let report = check(history);
    let violations = report.violations(expect);
    (report, violations)
}

#[test]
fn a_clean_history_has_no_anomaly() {
    let (report, violations) = check_with(&clean(), Expect::EXACTLY_ONCE);
    assert_eq!(violations, Vec::<String>::new());
    assert_eq!((report.n_sends, report.n_acked, report.n_read), (5, 5, 5));
    assert_eq!(report, super::Report { n_sends: 5, n_acked: 5, n_read: 5, ..super::Report::default() });
}

#[test]
fn padding_after_the_value_id_is_ignored() {
    let mut history = clean();
    history.reads[0].value = "p0-0 ......".to_owned();
    assert_eq!(check_with(&history, Expect::EXACTLY_ONCE).1, Vec::<String>::new());
}

#[test]
fn an_acknowledged_value_missing_from_the_log_is_lost() {
    let mut history = clean();
    // p1-1 was acknowledged at 1:1, but the partition ends after offset 0.
    history.reads.pop();
    let (report, violations) = check_with(&history, Expect::AT_LEAST_ONCE);
    assert_eq!(report.lost, vec!["p1-1".to_owned()]);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].starts_with("1 lost acknowledged writes"), "{violations:?}");
}

#[test]
fn unknown_and_failed_sends_may_be_missing() {
    let mut history = clean();
    history.sends[4].outcome = Outcome::Unknown;
    history.sends.push(send(1, 2, 1, Outcome::Failed));
    history.sends.push(send(1, 3, 1, Outcome::Pending));
    history.reads.pop();
    let (report, violations) = check_with(&history, Expect::EXACTLY_ONCE);
    assert_eq!(violations, Vec::<String>::new());
    assert_eq!((report.n_unknown, report.n_failed, report.n_unknown_stored), (2, 1, 0));
}

#[test]
fn an_acknowledgement_naming_another_offset_is_a_mismatch() {
    let mut history = clean();
    history.sends[2].outcome = ok(1);
    let (report, violations) = check_with(&history, Expect::AT_LEAST_ONCE);
    assert_eq!(report.ack_mismatch.len(), 1);
    assert_eq!(report.ack_mismatch[0].value, "p0-1");
    assert_eq!(report.ack_mismatch[0].acked_at, (0, 1));
    assert_eq!(report.ack_mismatch[0].found_there.as_deref(), Some("p1-0"));
    assert_eq!(violations.len(), 1, "{violations:?}");
}

#[test]
fn a_value_at_two_offsets_is_a_duplicate_allowed_only_at_least_once() {
    let mut history = clean();
    // A retried batch: p0-1 stored again at 0:3, and its acknowledgement names the second copy.
    history.reads.insert(3, read(0, 3, "p0-1"));
    history.sends[2].outcome = ok(3);
    let (report, violations) = check_with(&history, Expect::AT_LEAST_ONCE);
    assert_eq!(violations, Vec::<String>::new(), "duplicates are allowed at least once");
    assert_eq!(report.duplicates.len(), 1);
    assert_eq!(report.duplicates[0].value, "p0-1");
    assert_eq!(report.duplicates[0].at, vec![(0, 2), (0, 3)]);
    assert_eq!(report.n_duplicate_copies, 1);
    assert!(report.reordered.is_empty(), "order is judged on first occurrences");

    let (_, violations) = check_with(&history, Expect::EXACTLY_ONCE);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].starts_with("1 duplicated values"), "{violations:?}");
}

#[test]
fn a_later_send_stored_before_an_earlier_one_is_reordered() {
    let mut history = clean();
    // Producer 0's values 0 and 1 in partition 0 swapped places.
    history.reads[0].value = "p0-1".to_owned();
    history.reads[2].value = "p0-0".to_owned();
    history.sends[0].outcome = ok(2);
    history.sends[2].outcome = ok(0);
    let (report, violations) = check_with(&history, Expect::AT_LEAST_ONCE);
    assert_eq!(report.reordered.len(), 1, "{report:?}");
    let reordered = &report.reordered[0];
    assert_eq!((reordered.producer, reordered.partition), (0, 0));
    assert_eq!((reordered.value.as_str(), reordered.offset), ("p0-1", 0));
    assert_eq!((reordered.overtaken.as_str(), reordered.overtaken_offset), ("p0-0", 2));
    assert_eq!(violations.len(), 1, "{violations:?}");
}

#[test]
fn other_producers_values_in_between_are_not_reordering() {
    let history = History {
        sends: vec![send(0, 0, 0, ok(1)), send(1, 0, 0, ok(0)), send(0, 1, 0, ok(2))],
        reads: vec![read(0, 0, "p1-0"), read(0, 1, "p0-0"), read(0, 2, "p0-1")],
    };
    assert_eq!(check_with(&history, Expect::EXACTLY_ONCE).1, Vec::<String>::new());
}

#[test]
fn a_hole_in_the_offsets_is_a_gap() {
    let mut history = clean();
    // Partition 1 skips offset 1, and partition 0 does not start at 0.
    history.reads[4].offset = 2;
    history.sends[4].outcome = ok(2);
    history.reads.remove(0);
    history.sends[0].outcome = Outcome::Unknown;
    let (report, violations) = check_with(&history, Expect::AT_LEAST_ONCE);
    assert_eq!(
        report.gaps,
        vec![Gap { partition: 0, after: None, next: 1 }, Gap { partition: 1, after: Some(0), next: 2 }]
    );
    assert_eq!(violations.len(), 1, "{violations:?}");
}

#[test]
fn one_offset_with_two_values_is_a_reused_offset() {
    let mut history = clean();
    history.reads.push(read(0, 1, "p9-9"));
    history.sends.push(send(9, 9, 0, Outcome::Unknown));
    let (report, violations) = check_with(&history, Expect::AT_LEAST_ONCE);
    assert_eq!(report.reused_offsets, vec![(0, 1, vec!["p1-0".to_owned(), "p9-9".to_owned()])]);
    assert_eq!(violations.len(), 1, "{violations:?}");
}

#[test]
fn a_value_nobody_sent_is_reported() {
    let mut history = clean();
    history.reads.push(read(1, 2, "garbage"));
    let (report, violations) = check_with(&history, Expect::AT_LEAST_ONCE);
    assert_eq!(report.never_sent, vec!["garbage".to_owned()]);
    assert_eq!(violations.len(), 1, "{violations:?}");
}

#[test]
fn a_definitely_failed_send_that_was_stored_is_reported() {
    let mut history = clean();
    history.sends[3].outcome = Outcome::Failed;
    let (report, violations) = check_with(&history, Expect::AT_LEAST_ONCE);
    assert_eq!(report.failed_but_stored, vec!["p0-2".to_owned()]);
    assert_eq!(violations.len(), 1, "{violations:?}");
}

#[test]
fn a_value_read_from_another_partition_is_reported() {
    let mut history = clean();
    history.sends[3].partition = 0;
    history.sends[3].outcome = Outcome::Unknown;
    let (report, violations) = check_with(&history, Expect::AT_LEAST_ONCE);
    assert_eq!(report.wrong_partition, vec![("p0-2".to_owned(), 0, 1)]);
    assert_eq!(violations.len(), 1, "{violations:?}");
}

#[test]
fn the_history_file_has_one_line_per_operation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.txt");
    let mut history = clean();
    history.sends[1].outcome = Outcome::Unknown;
    history.write_to(&path).expect("write");
    let text = std::fs::read_to_string(&path).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[0], "send 0 0 0 p0-0 ok:0");
    assert_eq!(lines[1], "send 1 0 0 p1-0 unknown");
    assert_eq!(lines[5], "read 0 0 p0-0");
}
