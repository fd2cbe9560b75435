//! Fuzz entry points, shared by the cargo-fuzz targets in `broker/log/fuzz/` and the tests that replay their committed
//! corpus under stable `cargo test`. Not part of the crate's API.
//!
//! Targets: [`producer_table`] (the dedup table against a model) and [`segment_recovery`] (a partition directory of
//! arbitrary files, recovered).

mod segment_recovery;

use std::collections::{HashSet, VecDeque};

use ferry_protocol::batch::{Attributes, BatchHeader, SEQUENCE_MAX, sequence_add};

use crate::producers::{BATCHES_RETAINED, ProducerError, ProducerTable, SequenceCheck};

pub use segment_recovery::{
    CLOCK_START_MS, FILES_MAX, FIX_CHECKSUMS_BIT, FileKind, PARTITION_DIR, PartitionFile, decode_partition,
    encode_partition, open_partition, read_partition, recovery_config, segment_recovery, write_partition,
};

/// How long the simulated producers' state lives without a write.
const EXPIRATION_MS: i64 = 60_000;

/// One step of a simulated population of three idempotent producers (`p` picks one, modulo 3).
#[derive(Debug, Clone, Copy)]
pub enum ProducerOp {
    /// The producer sends its next new batch of `count` records (1 to 4) if it has fewer than five in flight.
    Send {
        /// The producer.
        p: u8,
        /// Records in the batch.
        count: u32,
    },
    /// The producer resends one of its batches in flight (`idx` picks which, modulo the window).
    Retry {
        /// The producer.
        p: u8,
        /// Which batch.
        idx: u8,
    },
    /// The producer's oldest batch in flight is acknowledged, if it was written.
    Ack {
        /// The producer.
        p: u8,
    },
    /// The producer sends a batch with a hole before it (8 records, a count no other batch has).
    Gap {
        /// The producer.
        p: u8,
    },
    /// The producer restarts with a bumped epoch, from sequence 0.
    Bump {
        /// The producer.
        p: u8,
    },
    /// A zombie of the producer sends with the previous epoch (9 records, a count no other batch has).
    Zombie {
        /// The producer.
        p: u8,
    },
    /// Time passes beyond the expiration: the table forgets everyone, and the clients start over with new ids.
    Expire,
}

/// Decodes arbitrary bytes into producer steps (three bytes each) and runs them, with the first byte choosing which
/// producers start near the end of the sequence space; see [`producer_ops`].
pub fn producer_table(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else { return };
    let start_near_max = [first & 1 != 0, first & 2 != 0, first & 4 != 0];
    let ops: Vec<ProducerOp> = rest
        .chunks_exact(3)
        .map(|op| {
            let (p, arg) = (op[1] % 3, op[2]);
            match op[0] % 7 {
                0 => ProducerOp::Send { p, count: u32::from(arg % 4) + 1 },
                1 => ProducerOp::Retry { p, idx: arg },
                2 => ProducerOp::Ack { p },
                3 => ProducerOp::Gap { p },
                4 => ProducerOp::Bump { p },
                5 => ProducerOp::Zombie { p },
                _ => ProducerOp::Expire,
            }
        })
        .collect();
    producer_ops(&ops, start_near_max);
}

/// A batch as a simulated client built it.
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
    /// Batches below this index were written before the last expiry: the table has forgotten them.
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

    /// What the table must answer for `sent` of producer `id`, from the whole remembered history.
    fn verdict(&self, id: i64, sent: Sent) -> Result<SequenceCheck, ProducerError> {
        let out_of_order = |expected: i32| {
            if sent.first == expected {
                Ok(SequenceCheck::Append)
            } else {
                Err(ProducerError::OutOfOrder { expected, received: sent.first })
            }
        };
        let newest_epoch = self.remembered().filter(|(bid, ..)| *bid == id).map(|(_, s, _)| s.epoch).max();
        let Some(newest) = newest_epoch else { return out_of_order(0) };
        if sent.epoch < newest {
            return Err(ProducerError::Fenced { current: newest, received: sent.epoch });
        }
        if sent.epoch > newest {
            return out_of_order(0);
        }
        let written: Vec<&(i64, Sent, u64)> = self.of(id, sent.epoch).collect();
        let retained = written.iter().rev().take(BATCHES_RETAINED);
        if let Some((_, _, offset)) = retained.clone().find(|(_, s, _)| s.first == sent.first && s.count == sent.count)
        {
            let last_offset = offset + u64::from(sent.count) - 1;
            return Ok(SequenceCheck::Duplicate { first_offset: *offset, last_offset });
        }
        let last = written.last().map_or(Sent { epoch: 0, first: 0, count: 0 }, |(_, sent, _)| *sent);
        out_of_order(sequence_add(last.first, last.count))
    }
}

fn header(producer_id: i64, sent: Sent, base_offset: u64) -> BatchHeader {
    BatchHeader {
        base_offset,
        batch_length: 100,
        magic: 1,
        crc: 0,
        attributes: Attributes::default(),
        last_offset_delta: sent.count - 1,
        first_timestamp: 0,
        max_timestamp: 0,
        producer_id,
        producer_epoch: sent.epoch,
        base_sequence: sent.first,
        record_count: sent.count,
    }
}

/// Runs `ops` against a [`ProducerTable`] and a model that remembers every batch ever written, and panics where they
/// disagree: the table must append exactly the batches the model calls new, recognise every retry of a batch in the
/// client's window with its original offsets, refuse gaps and zombies without changing state, and in the end no
/// batch may have been written twice, across wrap-around, epoch bumps and expiry.
pub fn producer_ops(ops: &[ProducerOp], start_near_max: [bool; 3]) {
    let mut table = ProducerTable::new(100);
    let mut log = ModelLog::default();
    let mut now = 0i64;
    let mut clients: Vec<Client> = (0..3)
        .map(|p| Client {
            id: 10 + p,
            epoch: 0,
            next: if start_near_max[usize::try_from(p).unwrap_or(0)] { SEQUENCE_MAX - 3 } else { 0 },
            in_flight: VecDeque::new(),
        })
        .collect();
    // A producer starting near the end of the sequence space has a history: record it in the table and the model.
    for client in clients.iter_mut().filter(|client| client.next != 0) {
        let sent = Sent { epoch: 0, first: client.next - 3, count: 3 };
        table.record(&header(client.id, sent, log.end), now);
        log.batches.push((client.id, sent, log.end));
        log.end += 3;
    }
    for &op in ops {
        now += 1;
        let (p, sent) = match op {
            ProducerOp::Send { p, count } => {
                let client = &mut clients[usize::from(p % 3)];
                if client.in_flight.len() == BATCHES_RETAINED {
                    continue;
                }
                let sent = Sent { epoch: client.epoch, first: client.next, count: count.clamp(1, 4) };
                client.next = sequence_add(client.next, sent.count);
                client.in_flight.push_back(sent);
                (p, sent)
            }
            ProducerOp::Retry { p, idx } => {
                let client = &clients[usize::from(p % 3)];
                if client.in_flight.is_empty() {
                    continue;
                }
                (p, client.in_flight[usize::from(idx) % client.in_flight.len()])
            }
            ProducerOp::Ack { p } => {
                // Only a batch that was written can be acknowledged.
                let client = &mut clients[usize::from(p % 3)];
                if let Some(front) = client.in_flight.front().copied()
                    && log.of(client.id, front.epoch).any(|(_, sent, _)| *sent == front)
                {
                    client.in_flight.pop_front();
                }
                continue;
            }
            ProducerOp::Gap { p } => {
                let client = &clients[usize::from(p % 3)];
                (p, Sent { epoch: client.epoch, first: sequence_add(client.next, 7), count: 8 })
            }
            ProducerOp::Bump { p } => {
                let client = &mut clients[usize::from(p % 3)];
                client.epoch += 1;
                client.next = 0;
                client.in_flight.clear();
                continue;
            }
            ProducerOp::Zombie { p } => {
                let client = &clients[usize::from(p % 3)];
                if client.epoch == 0 {
                    continue;
                }
                (p, Sent { epoch: client.epoch - 1, first: 0, count: 9 })
            }
            ProducerOp::Expire => {
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
        let id = clients[usize::from(p % 3)].id;
        let known = log.remembered().any(|(bid, ..)| *bid == id);
        assert_eq!(table.get(id).is_some(), known, "the table knows producer {id} exactly when the model does");
        let expected = log.verdict(id, sent);
        let mut batch = header(id, sent, 0);
        let before = table.snapshot(log.end);
        let verdict = table.check(&batch);
        assert_eq!(verdict, expected, "producer {id}, batch {sent:?}");
        if verdict == Ok(SequenceCheck::Append) {
            batch.base_offset = log.end;
            table.record(&batch, now);
            log.batches.push((id, sent, log.end));
            log.end = batch.next_offset();
        } else {
            assert_eq!(table.snapshot(log.end), before, "only an append changes the table");
        }
    }
    // No batch was written twice: every client batch is unique by (producer, epoch, first sequence, count) within one
    // wrap of the sequence space, which no input is long enough to complete. Gap (count 8) and zombie (count 9)
    // batches are left out: a producer whose state expired may start over, so those may be written again.
    let mut seen = HashSet::new();
    for (id, sent, _) in log.batches.iter().filter(|(_, sent, _)| sent.count < 8) {
        assert!(seen.insert((*id, sent.epoch, sent.first, sent.count)), "written twice: {sent:?}");
    }
}
