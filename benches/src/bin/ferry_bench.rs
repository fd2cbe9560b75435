//! `ferry-bench`: load generator for a running Ferry broker, through the real client library.
//!
//! Scenarios:
//! - `produce`: `--producers` producers send `--messages` records; throughput, and latency from `send` to the
//!   acknowledgement (the delivery future resolving).
//! - `consume`: `--consumers` consumers read the topic from the beginning until `--messages` records arrived.
//! - `end-to-end`: produce and consume at once; latency from `send` to receipt by a consumer.
//! - `latency`: one record in flight at a time; latency from `send` to acknowledgement.
//!
//! Reproduce (start the broker first, e.g. `./dev broker`):
//!
//! ```text
//! cargo run --release -p ferry-bench --bin ferry-bench -- produce --messages 1000000 --message-size 100
//! cargo run --release -p ferry-bench --bin ferry-bench -- latency --messages 10000
//! cargo run --release -p ferry-bench --bin ferry-bench -- produce --messages 200000 --idempotent
//! cargo run --release -p ferry-bench --bin ferry-bench -- produce --messages 200000 --transactional --txn-size 1000
//! ```
//!
//! The topic is created with `--partitions` partitions if it does not exist. `--json` prints one JSON object with
//! `messages_per_sec`, `mb_per_sec`, `p50_ms`, `p99_ms`, `p999_ms`, `max_ms` and the parameters.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use ferry_client::{
    Acks, Admin, ClientError, ConnectionConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    SeekTo, TransactionalConfig, TransactionalProducer,
};
use ferry_protocol::ErrorCode;
use hdrhistogram::Histogram;

#[derive(Parser, Debug, Clone)]
#[command(about = "Load generator for a running Ferry broker")]
struct Cli {
    /// What to measure.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    broker: String,
    /// Topic to use (created if missing).
    #[arg(long, default_value = "ferry-bench")]
    topic: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// The topic's fsync policy when it is created (`always`, `interval:MS`, `never`); the broker's default if unset.
    #[arg(long)]
    fsync: Option<String>,
    /// Concurrent producers.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Concurrent consumers (partitions are split between them).
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Records to send (or to read, for `consume`), after the warm-up.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Value bytes per record (at least 16 for `end-to-end`, which stores the send time in the value).
    #[arg(long, default_value_t = 100)]
    message_size: usize,
    /// Producer batch size limit, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    batch_bytes: u32,
    /// Producer linger, milliseconds.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Record keys: `unique` (`PRODUCER-INDEX`, spread over the partitions by hash) or `none` (keyless: the client's
    /// sticky partitioner fills one partition's batch at a time).
    #[arg(long, value_enum, default_value_t = KeysArg::Unique)]
    keys: KeysArg,
    /// Records each producer keeps unacknowledged at most (`produce`, `end-to-end`): the pipeline depth.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    window: u64,
    /// Acknowledgement: none (fire-and-forget) or all (durable per the broker's fsync policy).
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    acks: AcksArg,
    /// Records sent before measuring starts (not counted).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Idempotent producers (producer ids and sequence numbers; needs --acks all). Off by default so that runs with
    /// and without it can be compared.
    #[arg(long)]
    idempotent: bool,
    /// Transactional producers (`produce` only): each producer commits every `--txn-size` records as one
    /// transaction; latency is from a record's `send` to its transaction's commit being answered.
    #[arg(long)]
    transactional: bool,
    /// Records per transaction with `--transactional`.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    txn_size: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Produce,
    Consume,
    EndToEnd,
    Latency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KeysArg {
    Unique,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AcksArg {
    None,
    All,
}

/// What one run measured.
struct Outcome {
    messages: u64,
    bytes: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    /// `end-to-end` only: how the consumers' lag behaved while the producers ran.
    lag: Option<Lag>,
}

/// Consumer lag sampled every 100 ms while the producers run: records sent and not yet received (which includes up
/// to `--window` records per producer in flight to the broker).
struct Lag {
    /// The producers' rate alone, records/s.
    produce_rate: f64,
    max_records: u64,
    /// Least-squares slope of lag over time, records/s: about 0 when the consumers keep up.
    slope_per_sec: f64,
}

impl Lag {
    fn from_samples(samples: &[(f64, f64)], produce_rate: f64) -> Lag {
        let n = samples.len().max(1) as f64;
        let mean_t = samples.iter().map(|(t, _)| t).sum::<f64>() / n;
        let mean_lag = samples.iter().map(|(_, lag)| lag).sum::<f64>() / n;
        let covariance: f64 = samples.iter().map(|(t, lag)| (t - mean_t) * (lag - mean_lag)).sum();
        let variance: f64 = samples.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
        let slope_per_sec = if variance > 0.0 { covariance / variance } else { 0.0 };
        let max_records = samples.iter().map(|(_, lag)| *lag as u64).max().unwrap_or(0);
        Lag { produce_rate, max_records, slope_per_sec }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.transactional && (cli.scenario != Scenario::Produce || cli.warmup != 0 || cli.acks == AcksArg::None) {
        bail!("--transactional works with the produce scenario, --acks all and no --warmup");
    }
    if cli.idempotent && cli.acks == AcksArg::None {
        bail!("--idempotent needs --acks all");
    }
    if cli.scenario == Scenario::EndToEnd && cli.message_size < 16 {
        bail!("end-to-end needs --message-size of at least 16 (the value carries its send time)");
    }
    ensure_topic(&cli).await?;
    let progress = Arc::new(AtomicU64::new(0));
    let reporter = tokio::spawn(report_progress(Arc::clone(&progress), cli.messages));
    let outcome = match cli.scenario {
        Scenario::Produce if cli.transactional => produce_transactional(&cli, Arc::clone(&progress)).await?,
        Scenario::Produce => produce(&cli, cli.producers, cli.messages, Arc::clone(&progress), Arc::default()).await?,
        Scenario::Latency => produce_one_at_a_time(&cli, Arc::clone(&progress)).await?,
        Scenario::Consume => consume(&cli, Arc::clone(&progress)).await?,
        Scenario::EndToEnd => end_to_end(&cli, Arc::clone(&progress)).await?,
    };
    reporter.abort();
    print_outcome(&cli, &outcome);
    Ok(())
}

async fn ensure_topic(cli: &Cli) -> anyhow::Result<()> {
    let admin = Admin::new(cli.broker.clone(), ConnectionConfig::default())?;
    let config = cli.fsync.iter().map(|policy| ("fsync".to_owned(), policy.clone())).collect();
    match admin.create_topic(&cli.topic, cli.partitions, config).await {
        Ok(()) => {}
        Err(ClientError::Broker { code: ErrorCode::TopicAlreadyExists, .. }) => {}
        Err(error) => return Err(error).context("creating the benchmark topic"),
    }
    admin.close().await;
    Ok(())
}

fn producer_config(cli: &Cli) -> ProducerConfig {
    ProducerConfig {
        acks: match cli.acks {
            AcksArg::All => Acks::All,
            AcksArg::None => Acks::None,
        },
        linger: Duration::from_millis(cli.linger_ms),
        batch_bytes_max: cli.batch_bytes,
        idempotence: cli.idempotent,
        ..ProducerConfig::default()
    }
}

fn now_us() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX)
}

/// A value of `size` bytes whose first 8 bytes are the send time (µs since the epoch), for end-to-end latency.
fn value(size: usize, sent_us: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(size);
    buf.put_u64(sent_us);
    buf.resize(size.max(8), 0x5a);
    buf.freeze()
}

/// The benchmark's record: keyed `PRODUCER-INDEX` with `--keys unique`, keyless with `--keys none`.
fn record(topic: &str, keys: KeysArg, producer_idx: usize, record_idx: u64, value: Bytes) -> ProducerRecord {
    let record = ProducerRecord::new(topic.to_owned(), value);
    match keys {
        KeysArg::Unique => record.with_key(format!("{producer_idx}-{record_idx}")),
        KeysArg::None => record,
    }
}

/// Sends `messages` records from `producers` producers (plus the warm-up), keeping the delivery futures of up to
/// `window` records per producer in flight; records latency from `send` to acknowledgement.
async fn produce(
    cli: &Cli,
    producers: usize,
    messages: u64,
    progress: Arc<AtomicU64>,
    sent_count: Arc<AtomicU64>,
) -> anyhow::Result<Outcome> {
    let window = usize::try_from(cli.window).context("--window")?;
    let per_producer = messages.div_ceil(producers as u64);
    let warmup_per_producer = cli.warmup.div_ceil(producers as u64);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(producers);
    for producer_idx in 0..producers {
        let producer = Producer::new(cli.broker.clone(), producer_config(cli))?;
        let (topic, size, keys, progress) = (cli.topic.clone(), cli.message_size, cli.keys, Arc::clone(&progress));
        let sent_count = Arc::clone(&sent_count);
        tasks.push(tokio::spawn(async move {
            let mut latency_us = Histogram::<u64>::new(3)?;
            let mut pending = VecDeque::with_capacity(window.min(1 << 20));
            let mut started = Instant::now();
            for record_idx in 0..warmup_per_producer + per_producer {
                if record_idx == warmup_per_producer {
                    for (_, delivery) in pending.drain(..) {
                        let _: ferry_client::RecordMetadata = delivery_result(delivery).await?;
                    }
                    started = Instant::now();
                }
                if pending.len() == window {
                    let (sent, delivery): (Instant, _) = pending.pop_front().context("window is full")?;
                    delivery_result(delivery).await?;
                    latency_us.record(sent.elapsed().as_micros() as u64)?;
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                let record = record(&topic, keys, producer_idx, record_idx, value(size, now_us()));
                let sent = Instant::now();
                pending.push_back((sent, producer.send(record).await?));
                sent_count.fetch_add(1, Ordering::Relaxed);
            }
            for (sent, delivery) in pending {
                delivery_result(delivery).await?;
                latency_us.record(sent.elapsed().as_micros() as u64)?;
                progress.fetch_add(1, Ordering::Relaxed);
            }
            producer.close().await?;
            anyhow::Ok((latency_us, started.elapsed()))
        }));
    }
    let mut latency_us = Histogram::<u64>::new(3)?;
    let mut elapsed = Duration::ZERO;
    for task in tasks {
        let (histogram, producer_elapsed) = task.await??;
        latency_us.add(histogram)?;
        elapsed = elapsed.max(producer_elapsed);
    }
    if cli.warmup == 0 {
        elapsed = started.elapsed();
    }
    let sent = per_producer * producers as u64;
    Ok(Outcome { messages: sent, bytes: sent * cli.message_size as u64, elapsed, latency_us, lag: None })
}

/// `--producers` transactional producers, each committing every `--txn-size` records.
async fn produce_transactional(cli: &Cli, progress: Arc<AtomicU64>) -> anyhow::Result<Outcome> {
    let per_producer = cli.messages.div_ceil(cli.producers as u64);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(cli.producers);
    for producer_idx in 0..cli.producers {
        let config = TransactionalConfig {
            batch_bytes_max: cli.batch_bytes as usize,
            ..TransactionalConfig::new(format!("ferry-bench-{producer_idx}"))
        };
        let mut producer = TransactionalProducer::connect(cli.broker.clone(), config).await?;
        let (topic, size, keys, txn_size, progress) =
            (cli.topic.clone(), cli.message_size, cli.keys, cli.txn_size, Arc::clone(&progress));
        tasks.push(tokio::spawn(async move {
            let mut latency_us = Histogram::<u64>::new(3)?;
            let mut sent_at = Vec::with_capacity(txn_size as usize);
            let mut record_idx = 0;
            while record_idx < per_producer {
                producer.begin()?;
                sent_at.clear();
                while record_idx < per_producer && (sent_at.len() as u64) < txn_size {
                    sent_at.push(Instant::now());
                    producer.send(record(&topic, keys, producer_idx, record_idx, value(size, now_us()))).await?;
                    record_idx += 1;
                }
                producer.commit().await.context("a transaction did not commit")?;
                for sent in &sent_at {
                    latency_us.record(sent.elapsed().as_micros() as u64)?;
                }
                progress.fetch_add(sent_at.len() as u64, Ordering::Relaxed);
            }
            producer.close().await;
            anyhow::Ok(latency_us)
        }));
    }
    let mut latency_us = Histogram::<u64>::new(3)?;
    for task in tasks {
        latency_us.add(task.await??)?;
    }
    let sent = per_producer * cli.producers as u64;
    Ok(Outcome {
        messages: sent,
        bytes: sent * cli.message_size as u64,
        elapsed: started.elapsed(),
        latency_us,
        lag: None,
    })
}

async fn delivery_result(delivery: ferry_client::DeliveryFuture) -> anyhow::Result<ferry_client::RecordMetadata> {
    delivery.await.context("a record was not acknowledged")
}

/// One record in flight at a time: the latency of a lone durable produce.
async fn produce_one_at_a_time(cli: &Cli, progress: Arc<AtomicU64>) -> anyhow::Result<Outcome> {
    let config = ProducerConfig { linger: Duration::ZERO, ..producer_config(cli) };
    let producer = Producer::new(cli.broker.clone(), config)?;
    let mut latency_us = Histogram::<u64>::new(3)?;
    for record_idx in 0..cli.warmup {
        let record = ProducerRecord::new(cli.topic.clone(), value(cli.message_size, now_us()));
        producer.send(record).await?.await.with_context(|| format!("warm-up record {record_idx}"))?;
    }
    let started = Instant::now();
    for _ in 0..cli.messages {
        let record = ProducerRecord::new(cli.topic.clone(), value(cli.message_size, now_us()));
        let sent = Instant::now();
        producer.send(record).await?.await.context("a record was not acknowledged")?;
        latency_us.record(sent.elapsed().as_micros() as u64)?;
        progress.fetch_add(1, Ordering::Relaxed);
    }
    let elapsed = started.elapsed();
    producer.close().await?;
    Ok(Outcome {
        messages: cli.messages,
        bytes: cli.messages * cli.message_size as u64,
        elapsed,
        latency_us,
        lag: None,
    })
}

/// Reads the topic from the beginning with `--consumers` consumers until `--messages` records arrived.
async fn consume(cli: &Cli, progress: Arc<AtomicU64>) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let (messages, bytes, latency_us) = consume_until(cli, cli.messages, progress, None).await?;
    Ok(Outcome { messages, bytes, elapsed: started.elapsed(), latency_us, lag: None })
}

/// Consumers that read until `target` records arrived in total, from the beginning, or from `start_offsets` (one per
/// partition) measuring latency: then each value's first 8 bytes are its send time.
async fn consume_until(
    cli: &Cli,
    target: u64,
    progress: Arc<AtomicU64>,
    start_offsets: Option<Vec<u64>>,
) -> anyhow::Result<(u64, u64, Histogram<u64>)> {
    let measure_latency = start_offsets.is_some();
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let consumers = cli.consumers.clamp(1, cli.partitions as usize);
    for consumer_idx in 0..consumers {
        let partitions: Vec<u32> = (0..cli.partitions).filter(|p| *p as usize % consumers == consumer_idx).collect();
        let mut consumer = Consumer::new(cli.broker.clone(), ConsumerConfig::default())?;
        consumer.assign(&cli.topic, partitions.iter().copied())?;
        for &partition in &partitions {
            let seek_to = match &start_offsets {
                Some(offsets) => SeekTo::Offset(offsets[partition as usize]),
                None => SeekTo::Earliest,
            };
            consumer.seek(&cli.topic, partition, seek_to)?;
        }
        let (received, progress) = (Arc::clone(&received), Arc::clone(&progress));
        tasks.push(tokio::spawn(async move {
            let mut latency_us = Histogram::<u64>::new(3)?;
            let mut bytes = 0u64;
            while received.load(Ordering::Relaxed) < target {
                let records = consumer.poll(Duration::from_millis(200)).await?;
                let now = now_us();
                for record in &records {
                    let value = record.value.as_deref().unwrap_or_default();
                    bytes += value.len() as u64;
                    if measure_latency && value.len() >= 8 {
                        let sent = u64::from_be_bytes(value[..8].try_into().context("8 bytes")?);
                        latency_us.record(now.saturating_sub(sent).max(1))?;
                    }
                }
                received.fetch_add(records.len() as u64, Ordering::Relaxed);
                progress.fetch_add(records.len() as u64, Ordering::Relaxed);
            }
            consumer.close().await;
            anyhow::Ok((bytes, latency_us))
        }));
    }
    let mut latency_us = Histogram::<u64>::new(3)?;
    let mut bytes = 0;
    for task in tasks {
        let (consumer_bytes, histogram) = task.await??;
        bytes += consumer_bytes;
        latency_us.add(histogram)?;
    }
    Ok((received.load(Ordering::Relaxed), bytes, latency_us))
}

/// Produce and consume at once; latency from `send` to receipt.
async fn end_to_end(cli: &Cli, progress: Arc<AtomicU64>) -> anyhow::Result<Outcome> {
    // The consumers start at the current end of every partition, so they receive exactly what is sent below.
    let admin = Admin::new(cli.broker.clone(), ConnectionConfig::default())?;
    let description = admin.describe_topic(&cli.topic).await?;
    admin.close().await;
    let mut end_offsets = vec![0; description.partitions.len()];
    for partition in &description.partitions {
        end_offsets[partition.partition as usize] = partition.end_offset;
    }
    let started = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let consumers = {
        let (cli, received) = (cli.clone(), Arc::clone(&received));
        tokio::spawn(async move { consume_until(&cli, cli.messages, received, Some(end_offsets)).await })
    };
    // Lag is sampled only while the producers run: afterwards it can only shrink.
    let sent = Arc::new(AtomicU64::new(0));
    let producing = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sent, received, producing) = (Arc::clone(&sent), Arc::clone(&received), Arc::clone(&producing));
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            while producing.load(Ordering::Relaxed) {
                interval.tick().await;
                let lag = sent.load(Ordering::Relaxed).saturating_sub(received.load(Ordering::Relaxed));
                samples.push((started.elapsed().as_secs_f64(), lag as f64));
            }
            samples
        })
    };
    let produced = produce(cli, cli.producers, cli.messages, progress, Arc::clone(&sent)).await;
    producing.store(false, Ordering::Relaxed);
    let samples = sampler.await?;
    let produced = produced?;
    let (messages, bytes, latency_us) = consumers.await??;
    let produce_rate = produced.messages as f64 / produced.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let lag = Some(Lag::from_samples(&samples, produce_rate));
    Ok(Outcome { messages, bytes, elapsed: started.elapsed(), latency_us, lag })
}

async fn report_progress(progress: Arc<AtomicU64>, total: u64) {
    let started = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_secs(2));
    interval.tick().await;
    loop {
        interval.tick().await;
        let done = progress.load(Ordering::Relaxed);
        let rate = done as f64 / started.elapsed().as_secs_f64();
        eprintln!("progress: {done}/{total} records, {rate:.0} records/s");
    }
}

fn print_outcome(cli: &Cli, outcome: &Outcome) {
    let seconds = outcome.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let messages_per_sec = outcome.messages as f64 / seconds;
    let mb_per_sec = outcome.bytes as f64 / seconds / 1e6;
    let ms = |quantile: f64| outcome.latency_us.value_at_quantile(quantile) as f64 / 1e3;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    // The name clap accepts on the command line (`end-to-end`), so the printed command reproduces the run.
    let scenario = cli.scenario.to_possible_value().map_or_else(String::new, |value| value.get_name().to_owned());
    let acks = format!("{:?}", cli.acks).to_lowercase();
    let lag_json = outcome.lag.as_ref().map_or_else(String::new, |lag| {
        format!(
            ",\"produce_messages_per_sec\":{:.1},\"lag_max_records\":{},\"lag_slope_per_sec\":{:.1}",
            lag.produce_rate, lag.max_records, lag.slope_per_sec
        )
    });
    if cli.json {
        println!(
            "{{\"scenario\":\"{scenario}\",\"messages\":{},\"seconds\":{seconds:.3},\"messages_per_sec\":{messages_per_sec:.1},\
             \"mb_per_sec\":{mb_per_sec:.2},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3},\
             \"partitions\":{},\"producers\":{},\"consumers\":{},\"message_size\":{},\"batch_bytes\":{},\"linger_ms\":{},\
             \"acks\":\"{acks}\",\"idempotent\":{},\"transactional\":{},\"warmup\":{},\"window\":{},\"keys\":\"{}\",\"fsync\":\"{}\",\
             \"cores\":{cores}{lag_json}}}",
            outcome.messages,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            outcome.latency_us.max() as f64 / 1e3,
            cli.partitions,
            cli.producers,
            cli.consumers,
            cli.message_size,
            cli.batch_bytes,
            cli.linger_ms,
            cli.idempotent,
            cli.transactional,
            cli.warmup,
            cli.window,
            format!("{:?}", cli.keys).to_lowercase(),
            cli.fsync.as_deref().unwrap_or("default"),
        );
        return;
    }
    println!(
        "ferry-bench {scenario}: {} records of {} B, {} partitions, {} producers, {} consumers, acks={acks}, \
         idempotent={}, transactional={}, linger {} ms, batch {} B, {cores} cores",
        outcome.messages,
        cli.message_size,
        cli.partitions,
        cli.producers,
        cli.consumers,
        cli.idempotent,
        cli.transactional,
        cli.linger_ms,
        cli.batch_bytes
    );
    println!("  {messages_per_sec:>12.0} records/s  {mb_per_sec:>8.1} MB/s  in {seconds:.2} s");
    println!(
        "  latency ms: p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        outcome.latency_us.max() as f64 / 1e3
    );
    if let Some(lag) = &outcome.lag {
        println!(
            "  producers alone {:.0} records/s; consumer lag while producing: max {} records, trend {:+.0} records/s",
            lag.produce_rate, lag.max_records, lag.slope_per_sec
        );
    }
    println!(
        "  reproduce: cargo run --release -p ferry-bench --bin ferry-bench -- {scenario} --broker {} --topic {} \
         --partitions {} --producers {} --consumers {} --messages {} --message-size {} --batch-bytes {} --linger-ms {} \
         --window {} --keys {} --acks {acks} --warmup {}{}{}",
        cli.broker,
        cli.topic,
        cli.partitions,
        cli.producers,
        cli.consumers,
        cli.messages,
        cli.message_size,
        cli.batch_bytes,
        cli.linger_ms,
        cli.window,
        format!("{:?}", cli.keys).to_lowercase(),
        cli.warmup,
        cli.fsync.as_ref().map_or_else(String::new, |policy| format!(" --fsync {policy}")),
        if cli.idempotent { " --idempotent".to_owned() } else { String::new() }
            + &if cli.transactional { format!(" --transactional --txn-size {}", cli.txn_size) } else { String::new() }
    );
}
