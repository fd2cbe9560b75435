//! The crash test of issues 4 and 7: SIGKILL the real broker at seeded moments while producers write, then check
//! the history.

use std::io::Write as _;
use std::time::Duration;

use super::checker::Expect;
use super::driver::CrashRun;
use super::rng::{seed_from_env, slow_tests};
use crate::fault_proxy::FaultPlan;

/// Prints a line that shows in the test output even when the test passes (libtest captures `println!`, not
/// direct writes to stderr), so `.ci/run` logs keep the figures.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// What the crash test demands of the producers: they are idempotent (the default), so the run must end with every
/// value exactly once, in per-producer order, at dense offsets, whatever the kills cut off.
const CRASH_EXPECT: Expect = Expect::EXACTLY_ONCE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_at_seeded_moments_lose_no_acknowledged_value_and_keep_offsets_dense_and_in_order() {
    let seed = seed_from_env();
    let run = CrashRun { expect: CRASH_EXPECT, ..CrashRun::from_env(seed) };
    report(&format!(
        "chaos crash run: FERRY_CHAOS_SEED={seed}: {} values, {} kills, {} producers, {} partitions",
        run.values, run.kills, run.producers, run.partitions
    ));
    let (values, kills) = (run.values, run.kills);
    let figures = run.run().await;
    report(&format!("chaos crash run (seed {seed}): {figures}"));
    // The checker found no violation (or `run` panicked); these say the run was as large as asked.
    assert_eq!(figures.kills, kills);
    assert!(figures.kills_during_recovery >= 1, "{figures}");
    assert_eq!(figures.report.n_sends, usize::try_from(values).expect("fits"));
    assert!(figures.report.n_acked > 0, "{figures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_faults_and_sigkills_together_lose_no_acknowledged_value() {
    let seed = seed_from_env();
    let mut run = CrashRun { expect: CRASH_EXPECT, ..CrashRun::from_env(seed) };
    (run.values, run.kills) = if slow_tests() { (200_000, 30) } else { (20_000, 3) };
    // Small batches make many requests to hit; a dropped request or response costs one request timeout: keep it short.
    run.producer_config.batch_bytes_max = 4096;
    run.producer_config.connection.request_timeout = Duration::from_millis(500);
    run.network_faults = Some(FaultPlan { delay_max: Duration::from_millis(200), ..FaultPlan::uniform(seed, 0.02) });
    report(&format!("chaos network run: FERRY_CHAOS_SEED={seed}: {} values, {} kills", run.values, run.kills));
    let figures = run.run().await;
    report(&format!("chaos network run (seed {seed}): {figures}"));
    let counts = figures.network_faults.expect("the run had a proxy");
    assert!(counts.faults() > 0, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_keeps_its_seed_history_and_broker_log() {
    let seed = 4242;
    let dir = super::driver::artifacts_dir(seed);
    let _ = std::fs::remove_dir_all(&dir);
    let mut broker = tokio::task::block_in_place(super::driver::ChaosBroker::start);
    tokio::task::block_in_place(|| broker.kill());
    assert!(tokio::task::block_in_place(|| broker.restart()) > std::time::Duration::ZERO);
    let recorder = super::history::Recorder::default();
    let send_idx = recorder.invoke(0, 0, 0, "p0-000000000".to_owned());
    recorder.complete(send_idx, super::history::Outcome::Unknown);
    // What `CrashRun::run` leaves armed when it panics.
    drop(super::driver::Artifacts::new(CrashRun::from_env(seed), recorder, broker.log()));
    tokio::task::block_in_place(|| broker.stop());

    let run = std::fs::read_to_string(dir.join("run.txt")).expect("run.txt");
    assert!(run.starts_with("replay with FERRY_CHAOS_SEED=4242 "), "{run}");
    let history = std::fs::read_to_string(dir.join("history.txt")).expect("history.txt");
    assert_eq!(history, "send 0 0 0 p0-000000000 unknown\n");
    let log = std::fs::read_to_string(dir.join("broker.log")).expect("broker.log");
    assert!(log.contains("incarnation 1 SIGKILLed"), "{log}");
    assert!(log.contains("partition logs open"), "the first incarnation's stderr is kept: {log}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_pauses_longer_than_the_request_timeout_and_sigkills_lose_and_duplicate_nothing() {
    let seed = seed_from_env();
    let mut run = CrashRun { expect: CRASH_EXPECT, ..CrashRun::from_env(seed) };
    (run.values, run.kills, run.pauses) = if slow_tests() { (1_000_000, 50, 200) } else { (50_000, 3, 8) };
    // Pauses up to 2.5 s against a 1 s request timeout: most make the producers give up on requests the frozen
    // broker still holds in its sockets, reconnect and retry them; the broker then sees both copies.
    run.pause_max = Duration::from_millis(2500);
    run.producer_config.connection.request_timeout = Duration::from_secs(1);
    report(&format!(
        "chaos pause run: FERRY_CHAOS_SEED={seed}: {} values, {} kills, {} pauses",
        run.values, run.kills, run.pauses
    ));
    let (kills, pauses) = (run.kills, run.pauses);
    let figures = run.run().await;
    report(&format!("chaos pause run (seed {seed}): {figures}"));
    assert_eq!((figures.kills, figures.pauses), (kills, pauses));
}
