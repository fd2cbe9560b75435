use super::*;
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
    assert_eq!(table.check(&header(3, 0, 0, 1, 0)), Err(ProducerError::TooManyProducers { max: 2 }));
    assert!(table.get(1).is_some() && table.get(2).is_some());
    assert_eq!(table.check(&header(1, 0, 1, 1, 0)), Ok(SequenceCheck::Append), "known producers go on");
    assert_eq!(table.expire(EXPIRATION_MS + 1, EXPIRATION_MS), 2);
    assert_eq!(table.check(&header(3, 0, 0, 1, 0)), Ok(SequenceCheck::Append));
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
    let restored = ProducerTable::from_snapshot(&snapshot, 10);
    assert_eq!(restored.snapshot(end), snapshot);
}

/// One step of a simulated producer population.
#[derive(Debug, Clone)]
enum Op {
    /// Producer `p` sends its next new batch of `count` records.
    Send { p: usize, count: u32 },
    /// Producer `p` resends one of its batches still in flight (`idx` picks which, modulo the window).
    Retry { p: usize, idx: usize },
    /// The oldest in-flight batch of producer `p` is acknowledged: it leaves the window.
    Ack { p: usize },
    /// Producer `p` sends a batch with a gap in its sequence (a client bug or a lost earlier batch), of 8 records,
    /// a count no other batch has (see the uniqueness check at the end).
    Gap { p: usize },
    /// Producer `p` restarts with a bumped epoch (from sequence 0).
    Bump { p: usize },
    /// A zombie of producer `p` sends with the previous epoch.
    Zombie { p: usize },
    /// Time passes beyond the expiration; producers idle since are forgotten, and their clients gave up.
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..3usize;
    prop_oneof![
        6 => (p.clone(), 1..5u32).prop_map(|(p, count)| Op::Send { p, count }),
        4 => (p.clone(), 0..5usize).prop_map(|(p, idx)| Op::Retry { p, idx }),
        4 => p.clone().prop_map(|p| Op::Ack { p }),
        1 => p.clone().prop_map(|p| Op::Gap { p }),
        1 => p.clone().prop_map(|p| Op::Bump { p }),
        1 => p.clone().prop_map(|p| Op::Zombie { p }),
        1 => Just(Op::Expire),
    ]
}

/// A batch as the simulated client built it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sent {
    epoch: i32,
    first: i32,
    count: u32,
}

#[derive(Debug)]
struct Client {
    id: i64,
    epoch: i32,
    next: i32,
    /// Batches sent and not yet acknowledged, oldest first; never more than `BATCHES_RETAINED` (the client's rule).
    in_flight: VecDeque<Sent>,
}

/// The log as the model sees it: every written batch, in offset order.
#[derive(Debug, Default)]
struct ModelLog {
    batches: Vec<(i64, Sent, u64)>,
    end: u64,
    /// Batches below this index were written before the last expiry: the broker has forgotten them.
    remembered_from: usize,
}

impl ModelLog {
    /// The remembered batches of one producer and epoch, in order.
    fn of(&self, id: i64, epoch: i32) -> impl Iterator<Item = &(i64, Sent, u64)> {
        self.remembered().filter(move |(bid, sent, _)| *bid == id && sent.epoch == epoch)
    }

    fn remembered(&self) -> impl Iterator<Item = &(i64, Sent, u64)> {
        self.batches[self.remembered_from..].iter()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if std::env::var_os("FERRY_SLOW_TESTS").is_some() { 4096 } else { 256 }))]

    /// Against a model that remembers every batch ever written: the table appends exactly the batches the model says
    /// are new, recognises every retry of a batch in the client's window with its original offsets, refuses gaps and
    /// zombies without changing state; and in the end no batch was written twice and each producer's batches are in
    /// sequence order, across wrap-around, epoch bumps and expiry.
    #[test]
    fn the_table_agrees_with_a_model_over_random_streams(
        ops in prop::collection::vec(op(), 1..200),
        start_near_max in any::<[bool; 3]>(),
    ) {
        let mut table = ProducerTable::new(100);
        let mut log = ModelLog::default();
        let mut now = 0i64;
        let mut clients: Vec<Client> = (0..3)
            .map(|p| Client {
                id: 10 + p as i64,
                epoch: 0,
                next: if start_near_max[p] { SEQUENCE_MAX - 3 } else { 0 },
                in_flight: VecDeque::new(),
            })
            .collect();
        // A producer starting near the end of the sequence space has a history: record it in the table and the model.
        for client in clients.iter_mut().filter(|client| client.next != 0) {
            let sent = Sent { epoch: 0, first: client.next - 3, count: 3 };
            table.record(&header(client.id, 0, sent.first, sent.count, log.end), now);
            log.batches.push((client.id, sent, log.end));
            log.end += 3;
        }
        for op in ops {
            now += 1;
            let (p, sent) = match op {
                Op::Send { p, count } => {
                    let client = &mut clients[p];
                    if client.in_flight.len() == BATCHES_RETAINED {
                        continue;
                    }
                    let sent = Sent { epoch: client.epoch, first: client.next, count };
                    client.next = sequence_add(client.next, count);
                    client.in_flight.push_back(sent);
                    (p, sent)
                }
                Op::Retry { p, idx } => {
                    let client = &clients[p];
                    if client.in_flight.is_empty() {
                        continue;
                    }
                    (p, client.in_flight[idx % client.in_flight.len()])
                }
                Op::Ack { p } => {
                    // Only a batch that was written can be acknowledged.
                    let client = &mut clients[p];
                    if let Some(front) = client.in_flight.front().copied()
                        && log.of(client.id, front.epoch).any(|(_, sent, _)| *sent == front)
                    {
                        client.in_flight.pop_front();
                    }
                    continue;
                }
                Op::Gap { p } => {
                    let client = &clients[p];
                    (p, Sent { epoch: client.epoch, first: sequence_add(client.next, 7), count: 8 })
                }
                Op::Bump { p } => {
                    let client = &mut clients[p];
                    client.epoch += 1;
                    client.next = 0;
                    client.in_flight.clear();
                    continue;
                }
                Op::Zombie { p } => {
                    let client = &clients[p];
                    if client.epoch == 0 {
                        continue;
                    }
                    // A count no client batch has (see the uniqueness check at the end).
                    (p, Sent { epoch: client.epoch - 1, first: 0, count: 9 })
                }
                Op::Expire => {
                    now += EXPIRATION_MS;
                    table.expire(now, EXPIRATION_MS);
                    log.remembered_from = log.batches.len();
                    // The clients gave up on their batches and start over with new producer ids.
                    for client in &mut clients {
                        client.in_flight.clear();
                        client.id += 100;
                        client.epoch = 0;
                        client.next = 0;
                    }
                    continue;
                }
            };
            let id = clients[p].id;
            let h = header(id, sent.epoch, sent.first, sent.count, 0);
            // The model's verdict, from the whole history.
            let known = log.remembered().any(|(bid, ..)| *bid == id);
            prop_assert_eq!(table.get(id).is_some(), known);
            let newest_epoch = log.remembered().filter(|(bid, ..)| *bid == id).map(|(_, s, _)| s.epoch).max();
            let written: Vec<&(i64, Sent, u64)> = log.of(id, sent.epoch).collect();
            let expected = if !known {
                if sent.first == 0 { Ok(SequenceCheck::Append) } else { Err(ProducerError::OutOfOrder { expected: 0, received: sent.first }) }
            } else if newest_epoch.is_some_and(|newest| sent.epoch < newest) {
                Err(ProducerError::Fenced { current: newest_epoch.unwrap_or(0), received: sent.epoch })
            } else if newest_epoch.is_some_and(|newest| sent.epoch > newest) {
                if sent.first == 0 { Ok(SequenceCheck::Append) } else { Err(ProducerError::OutOfOrder { expected: 0, received: sent.first }) }
            } else if let Some((_, _, offset)) = written.iter().rev().take(BATCHES_RETAINED).find(|(_, s, _)| s.first == sent.first && s.count == sent.count) {
                Ok(SequenceCheck::Duplicate { first_offset: *offset, last_offset: offset + u64::from(sent.count) - 1 })
            } else {
                let (_, last, _) = written.last().expect("a known producer in its epoch has written");
                let expected = sequence_add(last.first, last.count);
                if sent.first == expected { Ok(SequenceCheck::Append) } else { Err(ProducerError::OutOfOrder { expected, received: sent.first }) }
            };
            let before = table.snapshot(log.end);
            let (verdict, end) = submit(&mut table, h, log.end, now);
            prop_assert_eq!(verdict, expected);
            match verdict {
                Ok(SequenceCheck::Append) => {
                    log.batches.push((id, sent, log.end));
                    log.end = end;
                }
                _ => prop_assert_eq!(table.snapshot(log.end), before, "only an append changes the table"),
            }
        }
        // No batch was written twice: every client batch is unique by (producer, epoch, first sequence, count)
        // within one wrap of the sequence space, which these short runs never complete.
        let mut seen = std::collections::HashSet::new();
        // Gap (count 8) and zombie (count 9) batches are left out: a producer whose state expired may start anywhere,
        // so those may be written again after an expiry, as the module docs say.
        for (id, sent, _) in log.batches.iter().filter(|(_, sent, _)| sent.count < 8) {
            prop_assert!(seen.insert((*id, sent.epoch, sent.first, sent.count)), "written twice: {:?}", sent);
        }
    }
}
