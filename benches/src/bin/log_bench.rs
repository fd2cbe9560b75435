//! `log-bench`: the partition log alone (no network, no broker): append throughput with group commit, and the
//! time to recover a log after an unclean stop (SIGKILL).
//!
//! Reproduce (release build; the data directory must be on the disk you want to measure, not a tmpfs):
//!
//! ```text
//! cargo run --release -p ferry-bench --bin log-bench -- append --record-bytes 100 --fsync always
//! cargo run --release -p ferry-bench --bin log-bench -- append --record-bytes 1024 --fsync never
//! cargo run --release -p ferry-bench --bin log-bench -- recover --log-bytes 1073741824
//! ```
//!
//! `append` runs `--producers` threads, each keeping `--in-flight` batches queued at the partition's appender, the
//! way many producer connections would; it reports records/s, MB/s, fsyncs (device flushes from /sys/block, when
//! readable) and acknowledgement latency. `recover` has a child process write `--log-bytes` with fsync `always`,
//! kills it with SIGKILL once the last append was acknowledged, then times `Log::open` on what it left.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use ferry_log::{Appender, FsyncPolicy, Log, LogConfig, RealFs, SystemClock};
use ferry_protocol::batch::{BatchBuilder, NewRecord, RecordBatch};
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
#[command(about = "Benchmarks of Ferry's partition log alone")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Append throughput and acknowledgement latency.
    Append(AppendArgs),
    /// Recovery time of a log left by SIGKILL.
    Recover(RecoverArgs),
    /// Internal: write a log, report, then wait to be killed.
    #[command(hide = true)]
    WriteUntilKilled(WriteArgs),
}

#[derive(Args, Debug)]
struct AppendArgs {
    /// Directory for the log (a fresh temporary directory under it is used and removed). Default: /var/tmp.
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// Value bytes per record.
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// Target bytes per batch (a producer's batch size).
    #[arg(long, default_value_t = 16 * 1024)]
    batch_bytes: usize,
    /// Concurrent submitting threads (think producer connections).
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Batches each producer keeps in flight.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Bytes to append in total.
    #[arg(long, default_value_t = 1 << 30)]
    total_bytes: u64,
    /// Fsync policy: always | interval:MS | never.
    #[arg(long, default_value = "always")]
    fsync: FsyncPolicy,
    /// Segment size in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    segment_bytes: u64,
}

#[derive(Args, Debug)]
struct RecoverArgs {
    /// Directory for the log (a fresh temporary directory under it is used and removed). Default: /var/tmp.
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// Bytes of log to write before the kill.
    #[arg(long, default_value_t = 1 << 30)]
    log_bytes: u64,
    /// Value bytes per record.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Segment size in bytes: recovery scans from the last rolled segment, so smaller segments recover faster.
    #[arg(long, default_value_t = 1 << 30)]
    segment_bytes: u64,
    /// Also drop the page cache before recovering (needs root), to measure reads from the device.
    #[arg(long)]
    drop_caches: bool,
}

#[derive(Args, Debug)]
struct WriteArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    log_bytes: u64,
    #[arg(long)]
    record_bytes: usize,
    #[arg(long)]
    segment_bytes: u64,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Append(args) => append(args),
        Command::Recover(args) => recover(args),
        Command::WriteUntilKilled(args) => write_until_killed(args),
    }
}

/// One batch of `batch_bytes` (about) made of `record_bytes` records, as a producer would send it.
fn template_batch(record_bytes: usize, batch_bytes: usize) -> anyhow::Result<RecordBatch> {
    let value = vec![0x5a; record_bytes];
    let mut builder = BatchBuilder::new();
    let mut key_idx = 0u64;
    loop {
        let key = key_idx.to_be_bytes();
        let record = NewRecord { timestamp: now_ms(), key: Some(&key), value: Some(&value), headers: &[] };
        if !builder.is_empty() && builder.len_bytes() + builder.encoded_len(&record) > batch_bytes {
            break;
        }
        builder.push(record)?;
        key_idx += 1;
    }
    Ok(builder.build()?)
}

fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// A fresh copy of the batch, as if just read from a socket: the appender then rebases it in place.
fn fresh_copy(template: &RecordBatch) -> anyhow::Result<RecordBatch> {
    Ok(RecordBatch::decode(Bytes::copy_from_slice(template.as_bytes()))?)
}

fn log_config(fsync: FsyncPolicy, segment_bytes: u64) -> LogConfig {
    LogConfig { fsync, segment_bytes, retention_age: None, ..LogConfig::default() }
}

fn open_log(dir: &Path, config: &LogConfig) -> anyhow::Result<(Log, ferry_log::RecoveryReport)> {
    Ok(Log::open(Arc::new(RealFs), dir, config.clone(), Arc::new(SystemClock))?)
}

/// Device flush requests completed, summed over block devices (field 16 of /sys/block/*/stat), if readable.
fn device_flushes() -> Option<u64> {
    let mut total = None;
    for entry in std::fs::read_dir("/sys/block").ok()? {
        let stat = std::fs::read_to_string(entry.ok()?.path().join("stat")).ok()?;
        if let Some(flushes) = stat.split_whitespace().nth(15).and_then(|f| f.parse::<u64>().ok()) {
            *total.get_or_insert(0) += flushes;
        }
    }
    total
}

fn append(args: AppendArgs) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new().prefix("ferry-log-bench-").tempdir_in(&args.dir)?;
    let config = log_config(args.fsync, args.segment_bytes);
    let (log, _) = open_log(temp.path(), &config)?;
    let appender = Appender::start(log, "bench", &config)?;
    let template = template_batch(args.record_bytes, args.batch_bytes)?;
    let records_per_batch = u64::from(template.record_count());
    let batch_len = u64::from(template.len_bytes());
    let n_batches = args.total_bytes.div_ceil(batch_len);
    let batches_per_producer = n_batches.div_ceil(args.producers as u64);

    let flushes_before = device_flushes();
    let started = Instant::now();
    let threads: Vec<_> = (0..args.producers)
        .map(|_| {
            let handle = appender.handle();
            let template = template.clone();
            let in_flight = args.in_flight;
            std::thread::spawn(move || -> anyhow::Result<Histogram<u64>> {
                let mut latencies = Histogram::<u64>::new(3)?;
                let mut pending = VecDeque::with_capacity(in_flight);
                for _ in 0..batches_per_producer {
                    if pending.len() == in_flight {
                        let (sent, ack): (Instant, ferry_log::PendingAck) = pending.pop_front().context("non-empty")?;
                        ack.blocking_wait()?;
                        latencies.record(sent.elapsed().as_micros() as u64)?;
                    }
                    let batch = fresh_copy(&template)?;
                    pending.push_back((Instant::now(), handle.blocking_submit(vec![batch])?));
                }
                for (sent, ack) in pending {
                    ack.blocking_wait()?;
                    latencies.record(sent.elapsed().as_micros() as u64)?;
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Histogram::<u64>::new(3)?;
    for thread in threads {
        let histogram = thread.join().map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
        latencies.add(histogram)?;
    }
    let elapsed = started.elapsed();
    let flushes = device_flushes().zip(flushes_before).map(|(after, before)| after - before);
    appender.shutdown()?;

    let batches = batches_per_producer * args.producers as u64;
    let records = batches * records_per_batch;
    let bytes = batches * batch_len;
    let seconds = elapsed.as_secs_f64();
    println!(
        "log-bench append: fsync={} record_bytes={} batch_bytes={} producers={} in_flight={} cores={}",
        fsync_name(args.fsync),
        args.record_bytes,
        batch_len,
        args.producers,
        args.in_flight,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "  {records} records in {batches} batches, {:.1} MiB in {seconds:.2} s: {:.0} records/s, {:.1} MB/s",
        bytes as f64 / (1 << 20) as f64,
        records as f64 / seconds,
        bytes as f64 / seconds / 1e6,
    );
    match flushes {
        Some(flushes) => {
            println!("  device flushes: {flushes} ({:.1} batches per flush)", batches as f64 / flushes.max(1) as f64)
        }
        None => println!("  device flushes: not readable here"),
    }
    println!(
        "  ack latency ms: p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        latencies.value_at_quantile(0.50) as f64 / 1e3,
        latencies.value_at_quantile(0.99) as f64 / 1e3,
        latencies.value_at_quantile(0.999) as f64 / 1e3,
        latencies.max() as f64 / 1e3,
    );
    println!(
        "  reproduce: cargo run --release -p ferry-bench --bin log-bench -- append --record-bytes {} --batch-bytes {} \
         --producers {} --in-flight {} --total-bytes {} --fsync {}",
        args.record_bytes,
        args.batch_bytes,
        args.producers,
        args.in_flight,
        args.total_bytes,
        fsync_name(args.fsync),
    );
    Ok(())
}

fn fsync_name(policy: FsyncPolicy) -> String {
    match policy {
        FsyncPolicy::Always => "always".to_owned(),
        FsyncPolicy::Never => "never".to_owned(),
        FsyncPolicy::Interval(interval) => format!("interval:{}", interval.as_millis()),
    }
}

fn write_until_killed(args: WriteArgs) -> anyhow::Result<()> {
    let config = log_config(FsyncPolicy::Always, args.segment_bytes);
    let (log, _) = open_log(&args.dir, &config)?;
    let appender = Appender::start(log, "bench", &config)?;
    let handle = appender.handle();
    let template = template_batch(args.record_bytes, 256 * 1024)?;
    let mut written = 0u64;
    let mut pending = VecDeque::new();
    while written < args.log_bytes {
        if pending.len() == 16 {
            let ack: ferry_log::PendingAck = pending.pop_front().context("non-empty")?;
            ack.blocking_wait()?;
        }
        pending.push_back(handle.blocking_submit(vec![fresh_copy(&template)?])?);
        written += u64::from(template.len_bytes());
    }
    for ack in pending {
        ack.blocking_wait()?;
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "written {written}")?;
    stdout.flush()?;
    // Wait to be killed: never shut the appender down cleanly.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn recover(args: RecoverArgs) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new().prefix("ferry-recover-bench-").tempdir_in(&args.dir)?;
    let mut child = Process::new(std::env::current_exe()?)
        .args(["write-until-killed", "--dir"])
        .arg(temp.path())
        .args(["--log-bytes", &args.log_bytes.to_string()])
        .args(["--record-bytes", &args.record_bytes.to_string()])
        .args(["--segment-bytes", &args.segment_bytes.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("child stdout is piped")?).read_line(&mut line)?;
    child.kill()?; // SIGKILL: no clean shutdown, no final checkpoint.
    child.wait()?;
    if !line.starts_with("written ") {
        bail!("the writer failed before reporting: {line:?}");
    }
    let cold = args.drop_caches && drop_page_cache();
    let config = log_config(FsyncPolicy::Always, args.segment_bytes);
    let started = Instant::now();
    let (log, report) = open_log(temp.path(), &config)?;
    let elapsed = started.elapsed();
    drop(log);
    println!(
        "log-bench recover: {} after SIGKILL, segment_bytes={}, page cache {}, cores={}",
        line.trim(),
        args.segment_bytes,
        if cold { "dropped" } else { "warm" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "  open took {:.3} s: clean={} segments={} scanned {:.1} MiB in {} batches ({:.0} MB/s), truncated {} bytes, \
         rebuilt {} indexes, damaged={}",
        elapsed.as_secs_f64(),
        report.clean,
        report.segments,
        report.scanned_bytes as f64 / (1 << 20) as f64,
        report.scanned_batches,
        report.scanned_bytes as f64 / elapsed.as_secs_f64() / 1e6,
        report.truncated_bytes,
        report.rebuilt_indexes,
        report.damaged.is_some(),
    );
    println!(
        "  reproduce: cargo run --release -p ferry-bench --bin log-bench -- recover --log-bytes {} --record-bytes {} \
         --segment-bytes {}{}",
        args.log_bytes,
        args.record_bytes,
        args.segment_bytes,
        if args.drop_caches { " --drop-caches" } else { "" },
    );
    Ok(())
}

/// Writes dirty pages back and drops the page cache; false when not permitted.
fn drop_page_cache() -> bool {
    let synced = Process::new("sync").status().is_ok_and(|s| s.success());
    synced && std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}
