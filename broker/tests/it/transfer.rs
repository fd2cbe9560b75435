//! The transfer test: transactions move amounts between accounts (a debit and a credit record, on the partitions
//! of two accounts), some are aborted on purpose, producers are killed mid-transaction and the real broker is
//! SIGKILLed. The transaction checker (`chaos::txn_checker`) then finds in a read-committed read every acknowledged
//! transfer whole, no aborted one (asked for, or abandoned and fenced), no half of any, nothing twice, and the sum
//! over all records is zero.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_client::{Admin, ClientError, ConnectionConfig, ProducerRecord, TransactionalConfig, TransactionalProducer};

use crate::chaos::driver::ChaosBroker;
use crate::chaos::read_all;
use crate::chaos::txn_checker::{Txn, TxnHistory, TxnOutcome, check_transactions};

const LEDGER: &str = "ledger";
const PARTITIONS: u32 = 4;
const ACCOUNTS: u64 = 10;

/// Every transfer the workers began, with what they were told.
type Outcomes = Vec<Txn>;

/// A transfer's two records, each `TRANSFER_ID:ACCOUNT:AMOUNT`, with the accounts' partitions.
fn legs(id: &str, step: u64) -> [(u32, String); 2] {
    let (from, to) = (step % ACCOUNTS, (step * 7 + 3) % ACCOUNTS);
    let amount = (step % 97 + 1) as i64;
    [(from, -amount), (to, amount)]
        .map(|(account, signed)| ((account % u64::from(PARTITIONS)) as u32, format!("{id}:{account}:{signed}")))
}

/// Begins a transfer and sends its two records.
async fn transfer(producer: &mut TransactionalProducer, id: &str, step: u64) -> Result<(), ClientError> {
    producer.begin()?;
    for (partition, value) in legs(id, step) {
        producer.send(ProducerRecord::new(LEDGER, value).with_partition(partition)).await?;
    }
    Ok(())
}

/// Records transfer `id`'s outcome.
fn record(outcomes: &Mutex<Outcomes>, id: String, step: u64, outcome: TxnOutcome) {
    let values = legs(&id, step).map(|(_, value)| value).to_vec();
    outcomes.lock().expect("outcomes").push(Txn { id, values, outcome });
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
            let outcome = match transfer(&mut producer, &id, step).await {
                // An abort asked for: whether or not the broker got it, the transaction cannot commit any more.
                Ok(()) if abort => {
                    let _ = producer.abort().await;
                    TxnOutcome::Aborted
                }
                Ok(()) => match producer.commit().await {
                    Ok(_) => TxnOutcome::Committed,
                    // The broker died during the commit, say: it may have committed.
                    Err(_) => TxnOutcome::Unknown,
                },
                // Never committed: the next instance's fencing aborts it.
                Err(_) => TxnOutcome::Aborted,
            };
            let failed = outcome != TxnOutcome::Committed && !abort;
            if outcome == TxnOutcome::Committed {
                done.fetch_add(1, Ordering::Relaxed);
            }
            record(&outcomes, id, step, outcome);
            // After a failure, start over with a new instance, which fences this one and settles its transaction.
            if failed {
                break;
            }
            // Every 50 transfers, this instance "crashes" mid-transaction: legs sent, never ended.
            if step.is_multiple_of(50) {
                let id = format!("w{worker}-{step}-crashed");
                let _ = transfer(&mut producer, &id, step).await;
                record(&outcomes, id, step, TxnOutcome::Aborted);
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

    let outcomes = Arc::new(Mutex::new(Outcomes::new()));
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
    let mut sum = 0i64;
    for read in &reads {
        let mut fields = read.value.rsplitn(3, ':');
        let amount: i64 = fields.next().and_then(|amount| amount.parse().ok()).expect("an amount");
        let account: u64 = fields.next().and_then(|account| account.parse().ok()).expect("an account");
        assert_eq!(read.partition, (account % u64::from(PARTITIONS)) as u32, "{}: the account's partition", read.value);
        sum += amount;
    }
    let txns = std::mem::take(&mut *outcomes.lock().expect("outcomes"));
    let report = check_transactions(&TxnHistory { txns, reads });
    assert_eq!(report.violations(), Vec::<String>::new(), "{report}");
    assert_eq!(sum, 0, "the ledger sums to zero");
    assert!(report.n_committed >= 1200 && report.n_aborted > 0, "{report}");
    eprintln!("transfer run, 5 broker SIGKILLs: {report}");
}
