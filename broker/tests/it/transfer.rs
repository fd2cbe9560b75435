//! The transfer test: transactions move amounts between accounts (a debit and a credit record, on the partitions
//! of two accounts), some are aborted on purpose, producers are killed mid-transaction and the real broker is
//! SIGKILLed. A read-committed reader then sees every acknowledged transfer whole, no aborted one, no half of any,
//! and the sum over all records is zero.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_client::{Admin, ClientError, ConnectionConfig, ProducerRecord, TransactionalConfig, TransactionalProducer};

use crate::chaos::driver::ChaosBroker;
use crate::chaos::read_all;

const LEDGER: &str = "ledger";
const PARTITIONS: u32 = 4;
const ACCOUNTS: u64 = 10;

/// What the workers know of their transfers: acknowledged commits, and aborts they asked for and got.
#[derive(Default)]
struct Outcomes {
    committed: BTreeSet<String>,
    aborted: BTreeSet<String>,
}

/// A transfer's two records, each `TRANSFER_ID:ACCOUNT:AMOUNT`, to the accounts' partitions.
async fn transfer(producer: &mut TransactionalProducer, id: &str, step: u64) -> Result<(), ClientError> {
    let (from, to) = (step % ACCOUNTS, (step * 7 + 3) % ACCOUNTS);
    let amount = (step % 97 + 1) as i64;
    producer.begin()?;
    for (account, signed) in [(from, -amount), (to, amount)] {
        let record = ProducerRecord::new(LEDGER, format!("{id}:{account}:{signed}"))
            .with_partition((account % u64::from(PARTITIONS)) as u32);
        producer.send(record).await?;
    }
    Ok(())
}

async fn worker(
    addr: String,
    worker: usize,
    outcomes: Arc<Mutex<Outcomes>>,
    done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let mut step = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let config = TransactionalConfig::new(format!("bank-{worker}"));
        let Ok(mut producer) = TransactionalProducer::connect(addr.as_str(), config).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            step += 1;
            let id = format!("w{worker}-{step}");
            let abort = step.is_multiple_of(5);
            let result = match transfer(&mut producer, &id, step).await {
                Ok(()) if abort => producer.abort().await.map(|()| false),
                Ok(()) => producer.commit().await.map(|_| true),
                Err(error) => Err(error),
            };
            match result {
                Ok(true) => {
                    outcomes.lock().expect("outcomes").committed.insert(id);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {
                    outcomes.lock().expect("outcomes").aborted.insert(id);
                }
                // The outcome is unknown (the broker died during the commit, say): start over with a new instance,
                // which fences this one and settles its transaction.
                Err(_) => break,
            }
            // Every 50 transfers, this instance "crashes" mid-transaction: one leg sent, never ended.
            if step.is_multiple_of(50) {
                let _ = transfer(&mut producer, &format!("w{worker}-{step}-crashed"), step).await;
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_stay_whole_and_sum_to_zero_through_aborts_and_broker_sigkills() {
    let mut broker = ChaosBroker::start();
    let addr = broker.addr().to_string();
    let admin = Admin::new(addr.as_str(), ConnectionConfig::default()).expect("admin");
    admin.create_topic(LEDGER, PARTITIONS, Default::default()).await.expect("ledger topic");
    admin.close().await;

    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|idx| tokio::spawn(worker(addr.clone(), idx, Arc::clone(&outcomes), Arc::clone(&done), Arc::clone(&stop))))
        .collect();
    // Five SIGKILLs, each after another 200 acknowledged transfers.
    for kill in 1..=5 {
        let deadline = Instant::now() + Duration::from_secs(120);
        while done.load(Ordering::Relaxed) < kill * 200 {
            assert!(Instant::now() < deadline, "transfers went on after {} SIGKILLs", kill - 1);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::task::block_in_place(|| {
            broker.kill();
            broker.restart();
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while done.load(Ordering::Relaxed) < 1200 {
        assert!(Instant::now() < deadline, "transfers went on after the last SIGKILL");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in workers {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    // Open transactions of killed instances are settled when their id is initialized again or when they time out;
    // a new instance of each id settles them now.
    for idx in 0..3 {
        let producer = TransactionalProducer::connect(addr.as_str(), TransactionalConfig::new(format!("bank-{idx}")))
            .await
            .expect("a last instance");
        producer.close().await;
    }

    let reads = read_all(&addr, LEDGER, PARTITIONS, Duration::from_secs(60)).await;
    let mut legs: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut sum = 0i64;
    for read in &reads {
        let mut fields = read.value.rsplitn(3, ':');
        let amount: i64 = fields.next().and_then(|amount| amount.parse().ok()).expect("an amount");
        let account: u64 = fields.next().and_then(|account| account.parse().ok()).expect("an account");
        let id = fields.next().expect("a transfer id").to_owned();
        assert_eq!(read.partition, (account % u64::from(PARTITIONS)) as u32, "{id}: the account's partition");
        sum += amount;
        legs.entry(id).or_default().push(amount);
    }
    let outcomes = outcomes.lock().expect("outcomes");
    for (id, amounts) in &legs {
        assert_eq!(amounts.len(), 2, "transfer {id} is whole: {amounts:?}");
        assert_eq!(amounts.iter().sum::<i64>(), 0, "transfer {id} balances");
        assert!(!outcomes.aborted.contains(id), "aborted transfer {id} is visible");
        assert!(!id.ends_with("-crashed"), "the crashed instance's open transfer {id} is visible");
    }
    for id in &outcomes.committed {
        assert!(legs.contains_key(id), "acknowledged transfer {id} is visible");
    }
    assert_eq!(sum, 0, "the ledger sums to zero");
    eprintln!(
        "transfer run: {} acknowledged, {} aborted on purpose, {} visible (the rest: outcome unknown to the client), \
         5 broker SIGKILLs",
        outcomes.committed.len(),
        outcomes.aborted.len(),
        legs.len()
    );
}
