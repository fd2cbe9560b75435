use std::sync::Arc;

use super::*;
use crate::fuzz::{ProducerOp, producer_ops};
use ferry_protocol::batch::{NO_PRODUCER_EPOCH, NO_SEQUENCE, SEQUENCE_MAX};
use proptest::prelude::*;

const EXPIRATION_MS: i64 = 60_000;

fn header(producer_id: i64, epoch: i32, base_sequence: i32, count: u32, base_offset: u64) -> BatchHeader {
    BatchHeader {
        base_offset,
        batch_length: 100,
        magic: 1,
        crc: 0,
        attributes: Default::default(),
        last_offset_delta: count - 1,
        first_timestamp: 0,
        max_timestamp: 0,
        producer_id,
        producer_epoch: epoch,
        base_sequence,
        record_count: count,
    }
}

/// Checks a batch and, if it is to be appended, records it at `next_offset`; returns the verdict and the new end.
fn submit(
    table: &mut ProducerTable,
    mut h: BatchHeader,
    next_offset: u64,
    now_ms: i64,
) -> (Result<SequenceCheck, ProducerError>, u64) {
    let verdict = table.check(&h);
    if verdict == Ok(SequenceCheck::Append) {
        h.base_offset = next_offset;
        table.record(&h, now_ms);
        return (verdict, h.next_offset());
    }
    (verdict, next_offset)
}

#[test]
fn a_retry_gets_the_original_offsets_and_a_gap_is_refused_without_changing_state() {
    let mut table = ProducerTable::new(10);
    let (verdict, end) = submit(&mut table, header(7, 0, 0, 3, 0), 0, 1);
    assert_eq!(verdict, Ok(SequenceCheck::Append));
    assert_eq!(end, 3);
    let (verdict, end) = submit(&mut table, header(7, 0, 0, 3, 0), end, 2);
    assert_eq!(verdict, Ok(SequenceCheck::Duplicate { first_offset: 0, last_offset: 2 }));
    assert_eq!(end, 3);
    let before = table.get(7).cloned();
    let (verdict, _) = submit(&mut table, header(7, 0, 5, 1, 0), end, 3);
    assert_eq!(verdict, Err(ProducerError::OutOfOrder { expected: 3, received: 5 }));
    assert_eq!(table.get(7).cloned(), before, "a refused batch changes nothing");
    let (verdict, _) = submit(&mut table, header(7, 0, 3, 1, 0), end, 4);
    assert_eq!(verdict, Ok(SequenceCheck::Append));
}

#[test]
fn only_the_last_five_batches_are_recognised() {
    let mut table = ProducerTable::new(10);
    let mut end = 0;
    for sequence in 0..6 {
        end = submit(&mut table, header(1, 0, sequence, 1, 0), end, 0).1;
    }
    // Batch 0 fell out of the window: its retry is refused, never written twice.
    assert_eq!(table.check(&header(1, 0, 0, 1, 0)), Err(ProducerError::OutOfOrder { expected: 6, received: 0 }));
    assert_eq!(table.check(&header(1, 0, 1, 1, 0)), Ok(SequenceCheck::Duplicate { first_offset: 1, last_offset: 1 }));
}

#[test]
fn epochs_fence_older_producers_and_restart_sequences() {
    let mut table = ProducerTable::new(10);
    let end = submit(&mut table, header(1, 2, 0, 2, 0), 0, 0).1;
    assert_eq!(table.check(&header(1, 1, 2, 1, 0)), Err(ProducerError::Fenced { current: 2, received: 1 }));
    assert_eq!(table.check(&header(1, 3, 5, 1, 0)), Err(ProducerError::OutOfOrder { expected: 0, received: 5 }));
    let (verdict, _) = submit(&mut table, header(1, 3, 0, 1, 0), end, 0);
    assert_eq!(verdict, Ok(SequenceCheck::Append));
    assert_eq!(table.get(1).map(|entry| entry.epoch), Some(3));
    assert_eq!(table.check(&header(1, 2, 2, 1, 0)), Err(ProducerError::Fenced { current: 3, received: 2 }));
}

#[test]
fn a_new_producer_starts_at_sequence_zero() {
    let mut table = ProducerTable::new(10);
    // Its second batch overtook its first: refused, so the first can go first.
    assert_eq!(table.check(&header(1, 0, 3, 1, 0)), Err(ProducerError::OutOfOrder { expected: 0, received: 3 }));
    assert_eq!(submit(&mut table, header(1, 0, 0, 3, 0), 0, 0).0, Ok(SequenceCheck::Append));
    assert_eq!(submit(&mut table, header(1, 0, 3, 1, 0), 3, 0).0, Ok(SequenceCheck::Append));
}

#[test]
fn sequences_wrap_from_max_to_zero() {
    let mut table = ProducerTable::new(10);
    // A producer that has written almost 2^31 records: its state as a snapshot would hold it.
    table.record(&header(1, 0, SEQUENCE_MAX - 5, 4, 0), 0);
    let end = submit(&mut table, header(1, 0, SEQUENCE_MAX - 1, 4, 4), 4, 0).1;
    assert_eq!(table.get(1).map(ProducerEntry::next_sequence), Some(2));
    assert_eq!(
        table.check(&header(1, 0, SEQUENCE_MAX - 1, 4, 0)),
        Ok(SequenceCheck::Duplicate { first_offset: 4, last_offset: 7 })
    );
    assert_eq!(submit(&mut table, header(1, 0, 2, 1, 0), end, 0).0, Ok(SequenceCheck::Append));
}

#[test]
fn the_limit_refuses_new_producers_and_never_evicts_live_ones() {
    let mut table = ProducerTable::new(2);
    let _ = submit(&mut table, header(1, 0, 0, 1, 0), 0, 0);
    let _ = submit(&mut table, header(2, 0, 0, 1, 0), 1, 0);
    let partition_full =
        ProducerError::TooManyProducers { scope: "the partition", max: 2, setting: "producers.ids_max" };
    assert_eq!(table.check(&header(3, 0, 0, 1, 0)), Err(partition_full));
    assert!(table.get(1).is_some() && table.get(2).is_some());
    assert_eq!(table.check(&header(1, 0, 1, 1, 0)), Ok(SequenceCheck::Append), "known producers go on");
    assert_eq!(table.expire(EXPIRATION_MS + 1, EXPIRATION_MS), 2);
    assert_eq!(table.check(&header(3, 0, 0, 1, 0)), Ok(SequenceCheck::Append));
}

#[test]
fn every_table_of_a_broker_draws_from_one_budget() {
    let budget = EntryBudget::new(3);
    let mut first = ProducerTable::with_budget(10, Arc::clone(&budget));
    let mut second = ProducerTable::with_budget(10, Arc::clone(&budget));
    let _ = submit(&mut first, header(1, 0, 0, 1, 0), 0, 0);
    let _ = submit(&mut first, header(2, 0, 0, 1, 0), 1, 0);
    let _ = submit(&mut second, header(1, 0, 0, 1, 0), 0, 0);
    assert_eq!(budget.used(), 3);
    let broker_full = ProducerError::TooManyProducers { scope: "the broker", max: 3, setting: "producers.entries_max" };
    assert_eq!(second.check(&header(9, 0, 0, 1, 0)), Err(broker_full));
    assert_eq!(first.check(&header(1, 0, 1, 1, 0)), Ok(SequenceCheck::Append), "known producers go on");
    drop(first);
    assert_eq!(budget.used(), 1, "a dropped table gives its entries back");
    assert_eq!(second.expire(EXPIRATION_MS + 1, EXPIRATION_MS), 1);
    assert_eq!(budget.used(), 0, "expired entries are given back");
}

#[test]
fn invalid_producer_fields_are_refused_and_plain_batches_are_ignored() {
    let mut table = ProducerTable::new(2);
    assert!(matches!(table.check(&header(1, -1, 0, 1, 0)), Err(ProducerError::InvalidFields { .. })));
    assert!(matches!(table.check(&header(1, 0, -3, 1, 0)), Err(ProducerError::InvalidFields { .. })));
    table.record(&header(NO_PRODUCER_ID, NO_PRODUCER_EPOCH, NO_SEQUENCE, 1, 0), 0);
    assert!(table.is_empty());
}

#[test]
fn snapshot_round_trips() {
    let mut table = ProducerTable::new(10);
    let mut end = 0;
    for (id, sequence) in [(3, 0), (1, 0), (3, 2), (1, 1)] {
        end = submit(&mut table, header(id, 0, sequence, 2, 0), end, 5).1;
    }
    let snapshot = table.snapshot(end);
    assert_eq!(snapshot.offset, end);
    assert_eq!(snapshot.entries.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![1, 3]);
    let restored = ProducerTable::from_snapshot(&snapshot, 10, EntryBudget::new(100));
    assert_eq!(restored.snapshot(end), snapshot);
}

fn op() -> impl Strategy<Value = ProducerOp> {
    let p = 0..3u8;
    prop_oneof![
        6 => (p.clone(), 1..5u32).prop_map(|(p, count)| ProducerOp::Send { p, count }),
        4 => (p.clone(), 0..5u8).prop_map(|(p, idx)| ProducerOp::Retry { p, idx }),
        4 => p.clone().prop_map(|p| ProducerOp::Ack { p }),
        1 => p.clone().prop_map(|p| ProducerOp::Gap { p }),
        1 => p.clone().prop_map(|p| ProducerOp::Bump { p }),
        1 => p.clone().prop_map(|p| ProducerOp::Zombie { p }),
        1 => Just(ProducerOp::Expire),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if std::env::var_os("FERRY_SLOW_TESTS").is_some() { 4096 } else { 256 }))]

    /// The table against the model of [`crate::fuzz::producer_ops`] over random streams of sends, retries, gaps,
    /// epoch bumps, zombies and expiry, some producers starting near the end of the sequence space (wrap-around).
    #[test]
    fn the_table_agrees_with_a_model_over_random_streams(
        ops in prop::collection::vec(op(), 1..200),
        start_near_max in any::<[bool; 3]>(),
    ) {
        producer_ops(&ops, start_near_max);
    }
}

/// `expire` skips its scan while no entry can be old enough; the bound it keeps must never hide an expired entry:
/// not after writes at mixed times, not after a scan that expired some, not in a table restored from a snapshot.
#[test]
fn expiry_drops_exactly_the_entries_older_than_the_cutoff_whatever_the_order_of_writes() {
    let mut table = ProducerTable::new(10);
    let _ = submit(&mut table, header(1, 0, 0, 1, 0), 0, 1_000);
    let _ = submit(&mut table, header(2, 0, 0, 1, 0), 1, 500);
    let _ = submit(&mut table, header(3, 0, 0, 1, 0), 2, 2_000);
    assert_eq!(table.expire(500 + EXPIRATION_MS - 1, EXPIRATION_MS), 0, "nothing is old enough yet");
    assert_eq!(table.expire(500 + EXPIRATION_MS, EXPIRATION_MS), 1, "the entry written at 500 expires");
    assert!(table.get(2).is_none() && table.get(1).is_some());
    // Producer 1 writes again: its entry is now as young as that write.
    let _ = submit(&mut table, header(1, 0, 1, 1, 0), 3, 3_000);
    assert_eq!(table.expire(2_000 + EXPIRATION_MS, EXPIRATION_MS), 1, "only producer 3 (2,000) is old enough");
    assert!(table.get(3).is_none() && table.get(1).is_some());
    // A new producer written with an older clock (a replay) is still seen by the next expiry.
    let _ = submit(&mut table, header(4, 0, 0, 1, 0), 4, 100);
    assert_eq!(table.expire(100 + EXPIRATION_MS, EXPIRATION_MS), 1);
    assert!(table.get(4).is_none());

    let snapshot = table.snapshot(5);
    let mut restored = ProducerTable::from_snapshot(&snapshot, 10, EntryBudget::new(10));
    assert_eq!(restored.expire(3_000 + EXPIRATION_MS - 1, EXPIRATION_MS), 0);
    assert_eq!(restored.expire(3_000 + EXPIRATION_MS, EXPIRATION_MS), 1, "a restored entry expires on its own time");
    assert!(restored.is_empty());
}
