//! The `ferry` command line (DESIGN.md section 6), as a library so tests can parse and run it in-process.
//!
//! ```text
//! ferry [--broker ADDR] topic create NAME [--partitions N] [--config KEY=VALUE]...
//! ferry [--broker ADDR] topic list | topic describe NAME | topic delete NAME
//! ferry [--broker ADDR] produce TOPIC [--partition P] [--key-separator SEP | --dedup-key-separator SEP]
//!       [--acks none|all] [--idempotent] [--linger-ms MS] [--delivery-timeout-ms MS]
//!       [--transactional-id ID [--txn-size N]]
//! ferry [--broker ADDR] consume TOPIC [--from-beginning] [--max-messages N] [--idle-timeout-ms MS] [--print-key]
//!       [--print-offset] [--partition P] [--group G [--commit before|after|none]]
//!       [--isolation read-committed|read-uncommitted]
//! ferry [--broker ADDR] group list | group describe G
//! ferry [--broker ADDR] txn list | txn abort ID
//! ferry [--broker ADDR] broker info
//! ferry [--broker ADDR] producers TOPIC
//! ```
//!
//! stdout carries only data (records, topic names and descriptions); logs, summaries and errors go to stderr.
//! The listing commands (`topic list`, `topic describe`, `group list`, `group describe`, `txn list`, `broker info`,
//! `producers`) print human-readable tab-separated tables by default, and one JSON document with the global `--json`
//! flag, for scripts.
//! The exit code is 0 on success and 1 on failure, with one error line on stderr.
//!
//! `produce --transactional-id ID` writes the lines in transactions: every `--txn-size N` lines (default: all of
//! stdin) are one transaction, committed once complete, so a producer killed mid-transaction leaves nothing of
//! that transaction visible. It reports how many lines were committed and exits 0 only if every line was.
//!
//! `consume --group G` joins group G (the broker assigns it partitions of TOPIC, shared with the group's other
//! members) and starts each partition at the group's committed offset (or at the beginning / end per
//! `--from-beginning` when none is committed). `--commit after` (the default) commits the records printed, when it
//! exits and every 5 seconds (at-least-once: a record is committed only once it was written to stdout);
//! `--commit before` commits records before printing them (at-most-once); `--commit none` never commits.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::time::Instant;

use crate::{
    Acks, Admin, ClientError, CommitMode, ConnectionConfig, Consumer, ConsumerConfig, ConsumerRecord, GroupConfig,
    Isolation, OffsetReset, Producer, ProducerConfig, ProducerRecord, SeekTo, TransactionalConfig,
    TransactionalProducer,
};

/// The broker address used when `--broker` is not given.
pub const DEFAULT_BROKER: &str = "127.0.0.1:7070";

/// The parsed command line.
///
/// ```
/// use clap::Parser;
/// use ferry_client::cli::{Cli, Command};
///
/// let cli = Cli::try_parse_from(["ferry", "--broker", "10.0.0.1:7070", "consume", "orders", "--from-beginning"]).unwrap();
/// assert_eq!(cli.broker, "10.0.0.1:7070");
/// assert!(matches!(cli.command, Command::Consume(args) if args.from_beginning));
/// ```
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Administer topics, produce and consume records on a Ferry broker",
    long_about = None
)]
pub struct Cli {
    /// The broker to talk to, as HOST:PORT.
    #[arg(long, global = true, value_name = "ADDR", default_value = DEFAULT_BROKER)]
    pub broker: String,
    /// Print listings and descriptions as one JSON document instead of a table (ignored by produce and consume).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Create, list, describe or delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Send one record per stdin line; exits 0 only when every line was acknowledged.
    Produce(ProduceArgs),
    /// Print records, one value per line, on stdout.
    Consume(ConsumeArgs),
    /// List or describe consumer groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// List or abort open transactions.
    #[command(subcommand)]
    Txn(TxnCommand),
    /// Describe the broker.
    #[command(subcommand)]
    Broker(BrokerCommand),
    /// List a topic's active idempotent producers, per partition: producer id, epoch, last sequence, last write
    /// time (ms since the Unix epoch) and last offset. Each partition lists at most 1000 (the lowest ids).
    Producers {
        /// The topic.
        topic: String,
    },
}

/// `ferry broker ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum BrokerCommand {
    /// Print the broker's version, uptime, data directory and its size, partition states, open connections and the
    /// configuration in effect.
    Info,
}

/// `ferry txn ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum TxnCommand {
    /// List the open transactions on stdout, oldest first, one per line (tab-separated, with a header line):
    /// transactional id, producer id, epoch, transaction, state, age, timeout, partitions, staged batches and bytes,
    /// group.
    List,
    /// Abort a transactional id's open transaction: nothing of it becomes visible, and its producer's next request
    /// in it fails with TRANSACTION_ABORTED.
    Abort {
        /// The transactional id.
        id: String,
    },
}

/// `ferry topic ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// The topic name: 1 to 249 of ASCII letters, digits, '.', '_' and '-'.
        name: String,
        /// The number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// A per-topic config override, e.g. retention.ms=86400000; repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
    },
    /// List every topic's name on stdout, one per line.
    List,
    /// Print a topic's config and each partition's offsets, size, segments, fsync policy and health.
    Describe {
        /// The topic name.
        name: String,
    },
    /// Delete a topic and all its records.
    Delete {
        /// The topic name.
        name: String,
    },
}

/// `ferry group ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum GroupCommand {
    /// List every group on stdout, one per line: GROUP<TAB>STATE<TAB>MEMBERS.
    List,
    /// Print a group's members and assignments, and per partition its committed offset, end offset and lag in
    /// records and in seconds (the age of the next record the group consumes).
    Describe {
        /// The group id.
        name: String,
    },
}

/// When `ferry consume --group` commits offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CommitArg {
    /// Commit records before printing them: at-most-once.
    Before,
    /// Commit records once printed: at-least-once.
    After,
    /// Never commit.
    None,
}

/// The isolation level of `ferry consume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IsolationArg {
    /// Only committed transactional records (and non-transactional ones).
    ReadCommitted,
    /// Every appended record (the same records, with Ferry's staged transactions).
    ReadUncommitted,
}

/// The acknowledgement mode of `ferry produce`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    /// Fire-and-forget: a line counts once written to the socket (at-most-once).
    None,
    /// Wait for the broker's durable acknowledgement of every line.
    All,
}

/// `ferry produce ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProduceArgs {
    /// The topic to send to.
    pub topic: String,
    /// Send every record to this partition (default: by key hash, or sticky without a key).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Split each line at the first SEP into KEY and VALUE; a line without SEP is an error.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Split each line at the first SEP into a DEDUP KEY and VALUE (message-id dedup: on a topic with
    /// dedup.window.ms, a line whose dedup key was written within the window is not written again). Turns
    /// idempotence off, which dedup keys need.
    #[arg(long, value_name = "SEP", conflicts_with_all = ["key_separator", "idempotent"])]
    pub dedup_key_separator: Option<String>,
    /// When a record counts as sent.
    #[arg(long, value_enum, default_value = "all")]
    pub acks: AcksArg,
    /// How long a batch waits for more lines before it is sent, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5)]
    pub linger_ms: u64,
    /// How long a line may take to be acknowledged, retries and broker restarts included, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 120_000)]
    pub delivery_timeout_ms: u64,
    /// Idempotent producer: every line written exactly once and in order despite retries and broker restarts.
    /// The default with `--acks all`; refused with `--acks none`.
    #[arg(long)]
    pub idempotent: bool,
    /// Transactional producer with this transactional id: lines are committed in transactions (see --txn-size), and
    /// a producer killed mid-transaction leaves nothing of that transaction visible. Fences any other producer with
    /// the same id.
    #[arg(long, value_name = "ID", conflicts_with_all = ["dedup_key_separator", "acks"])]
    pub transactional_id: Option<String>,
    /// With --transactional-id: lines per transaction [default: all of stdin in one transaction].
    #[arg(long, value_name = "N", requires = "transactional_id", value_parser = clap::value_parser!(u64).range(1..))]
    pub txn_size: Option<u64>,
}

/// `ferry consume ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumeArgs {
    /// The topic to read.
    pub topic: String,
    /// Start at the oldest stored record instead of the end.
    #[arg(long)]
    pub from_beginning: bool,
    /// Exit after printing this many records.
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,
    /// Exit after this many milliseconds without a new record (default: wait forever).
    #[arg(long, value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Print the key, a tab, then the value (an absent key prints as nothing).
    #[arg(long)]
    pub print_key: bool,
    /// Prefix each line with PARTITION:OFFSET and a tab.
    #[arg(long)]
    pub print_offset: bool,
    /// Read only this partition (default: all of the topic's partitions).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Consume as a member of this consumer group: partitions are shared with its other members and reading resumes
    /// at the group's committed offsets.
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// Which records to read. With Ferry both levels read the same records: the log only ever holds committed
    /// transactional records.
    #[arg(long, value_enum, default_value = "read-committed")]
    pub isolation: IsolationArg,
    /// With --group: when offsets are committed [default: after].
    #[arg(long, value_enum)]
    pub commit: Option<CommitArg>,
}

/// Why a `ferry` command failed; printed as one line on stderr.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A client operation failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Flags that do not go together.
    #[error("{0}")]
    Usage(&'static str),
    /// An input line could not be turned into a record.
    #[error("line {line_number}: {reason}")]
    BadLine {
        /// The 1-based line number.
        line_number: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Not every line was committed (transactional produce).
    #[error("only {n_committed} of {n_lines} records were committed; first failure")]
    Uncommitted {
        /// Lines in committed transactions.
        n_committed: u64,
        /// Lines read.
        n_lines: u64,
        /// The failure.
        #[source]
        first_error: Box<CliError>,
    },
    /// Not every line was acknowledged.
    #[error("only {n_acknowledged} of {n_lines} records were acknowledged; first failure")]
    Incomplete {
        /// Lines acknowledged (or written, with acks=none).
        n_acknowledged: u64,
        /// Lines read.
        n_lines: u64,
        /// The first failure.
        #[source]
        first_error: Box<CliError>,
    },
    /// Reading stdin failed.
    #[error("reading stdin")]
    Stdin(#[source] std::io::Error),
    /// Writing stdout failed (other than a closed pipe, which ends the command quietly).
    #[error("writing stdout")]
    Stdout(#[source] std::io::Error),
}

/// Parses `KEY=VALUE`.
fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// The `ferry` binary: parses the command line, runs it on a Tokio runtime, prints one error line on failure.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = error.print();
                return ExitCode::SUCCESS;
            }
            let rendered = error.to_string();
            let first_line = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("ferry: {first_line} (see 'ferry --help')");
            return ExitCode::FAILURE;
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ferry: error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let is_consume = matches!(cli.command, Command::Consume(_));
    let outcome = runtime.block_on(async {
        let run = run(cli, tokio::io::BufReader::new(tokio::io::stdin()), tokio::io::stdout(), tokio::io::stderr());
        tokio::select! {
            outcome = run => Some(outcome),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // Do not wait for tasks blocked on stdin after an interrupt.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match outcome {
        Some(Ok(())) => ExitCode::SUCCESS,
        // Ctrl-C is how an endless consume is stopped.
        None if is_consume => ExitCode::SUCCESS,
        None => {
            eprintln!("ferry: error: interrupted");
            ExitCode::FAILURE
        }
        Some(Err(error)) => {
            eprintln!("ferry: error: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// An error and its sources on one line, joined by ": ".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// Runs a parsed command with the given standard streams.
///
/// ```no_run
/// use clap::Parser;
/// use ferry_client::cli::{Cli, run};
///
/// # async fn example() -> Result<(), ferry_client::cli::CliError> {
/// let cli = Cli::try_parse_from(["ferry", "produce", "orders"]).expect("valid arguments");
/// let stdin = &b"first line\nsecond line\n"[..];
/// let mut stderr = Vec::new();
/// run(cli, stdin, tokio::io::sink(), &mut stderr).await?;
/// # Ok(())
/// # }
/// ```
pub async fn run<I, O, E>(cli: Cli, stdin: I, stdout: O, mut stderr: E) -> Result<(), CliError>
where
    I: AsyncBufRead + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let (broker, json) = (cli.broker, cli.json);
    match cli.command {
        Command::Topic(command) => topic(&broker, command, json, stdout, &mut stderr).await,
        Command::Produce(args) => produce(&broker, args, stdin, &mut stderr).await,
        Command::Consume(args) => consume(&broker, args, stdout, &mut stderr).await,
        Command::Group(command) => group(&broker, command, json, stdout).await,
        Command::Txn(command) => txn(&broker, command, json, stdout, &mut stderr).await,
        Command::Broker(BrokerCommand::Info) => broker_info(&broker, json, stdout).await,
        Command::Producers { topic } => producers(&broker, &topic, json, stdout).await,
    }
}

/// Writes a summary line to stderr; a failure to do so is not worth failing the command for.
async fn note(stderr: &mut (impl AsyncWrite + Unpin), line: &str) {
    let _ = stderr.write_all(format!("ferry: {line}\n").as_bytes()).await;
    let _ = stderr.flush().await;
}

async fn topic(
    broker: &str,
    command: TopicCommand,
    json: bool,
    stdout: impl AsyncWrite + Unpin,
    stderr: &mut (impl AsyncWrite + Unpin),
) -> Result<(), CliError> {
    let admin = Admin::new(broker, ConnectionConfig::default())?;
    let mut text = String::new();
    let mut document = None;
    match command {
        TopicCommand::Create { name, partitions, config } => {
            let config: BTreeMap<String, String> = config.into_iter().collect();
            admin.create_topic(&name, partitions, config).await?;
            note(stderr, &format!("created topic {name} with {partitions} partitions")).await;
        }
        TopicCommand::List => {
            let topics = admin.list_topics().await?;
            for topic in &topics {
                text.push_str(&topic.name);
                text.push('\n');
            }
            document = Some(Value::Array(
                topics.iter().map(|topic| json!({"name": topic.name, "partitions": topic.partition_count})).collect(),
            ));
        }
        TopicCommand::Describe { name } => {
            let topic = admin.describe_topic(&name).await?;
            document = Some(json!({
                "name": topic.name,
                "config": topic.config,
                "partitions": topic.partitions.iter().map(|partition| json!({
                    "partition": partition.partition,
                    "start_offset": partition.start_offset,
                    "end_offset": partition.end_offset,
                    "size_bytes": partition.size_bytes,
                    "segments": partition.segment_count,
                    "fsync": partition.fsync,
                    "damaged": partition.damaged,
                    "error": partition.error.as_ref().map(|(code, message)| error_json(*code, message)),
                })).collect::<Vec<Value>>(),
            }));
            let config: Vec<String> = topic.config.iter().map(|(key, value)| format!("{key}={value}")).collect();
            text.push_str(&format!(
                "topic: {}\tpartitions: {}\tconfig: {}\n",
                topic.name,
                topic.partitions.len(),
                config.join(",")
            ));
            for partition in &topic.partitions {
                text.push_str(&format!(
                    "\tpartition: {}\tstart: {}\tend: {}\tdamaged: {}\tsize: {}\tsegments: {}\tfsync: {}",
                    partition.partition,
                    partition.start_offset,
                    partition.end_offset,
                    partition.damaged,
                    partition.size_bytes,
                    partition.segment_count,
                    if partition.fsync.is_empty() { "-" } else { &partition.fsync },
                ));
                if let Some((code, message)) = &partition.error {
                    text.push_str(&format!("\terror: {code} {message}"));
                }
                text.push('\n');
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            note(stderr, &format!("deleted topic {name}")).await;
        }
    }
    admin.close().await;
    print_output(stdout, json, &text, document).await
}

async fn produce(
    broker: &str,
    args: ProduceArgs,
    mut stdin: impl AsyncBufRead + Unpin,
    stderr: &mut (impl AsyncWrite + Unpin),
) -> Result<(), CliError> {
    if args.idempotent && args.acks == AcksArg::None {
        return Err(CliError::Client(ClientError::InvalidConfig {
            field: "idempotence",
            reason: "--idempotent needs --acks all".to_owned(),
        }));
    }
    if let Some(transactional_id) = args.transactional_id.clone() {
        return produce_transactional(broker, args, transactional_id, stdin, stderr).await;
    }
    let acks = match args.acks {
        AcksArg::All => Acks::All,
        AcksArg::None => Acks::None,
    };
    let config = ProducerConfig {
        acks,
        // Idempotence is the default with acks=all (--idempotent only makes it explicit); acks=none cannot have it,
        // and neither can records with dedup keys.
        idempotence: acks == Acks::All && args.dedup_key_separator.is_none(),
        linger: Duration::from_millis(args.linger_ms),
        delivery_timeout: Duration::from_millis(args.delivery_timeout_ms),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(broker, config)?;
    let (separator, split) = match (&args.key_separator, &args.dedup_key_separator) {
        (_, Some(separator)) => (Some(separator), Split::DedupKey),
        (separator, None) => (separator.as_ref(), Split::Key),
    };
    let separator = separator.map(|separator| separator.as_bytes()).filter(|separator| !separator.is_empty());
    let mut deliveries = FuturesUnordered::new();
    let mut n_lines: u64 = 0;
    let mut n_acknowledged: u64 = 0;
    let mut n_duplicates: u64 = 0;
    let mut first_error: Option<CliError> = None;
    let mut line = Vec::new();
    let mut tally =
        |result: Result<crate::RecordMetadata, ClientError>, first_error: &mut Option<CliError>| match result {
            Ok(metadata) => {
                n_acknowledged += 1;
                n_duplicates += u64::from(metadata.duplicate);
            }
            Err(error) => {
                first_error.get_or_insert(CliError::Client(error));
            }
        };
    while first_error.is_none() {
        line.clear();
        match stdin.read_until(b'\n', &mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => {
                first_error = Some(CliError::Stdin(error));
                break;
            }
        }
        n_lines += 1;
        let record = match line_to_record(&args.topic, args.partition, separator.map(|sep| (sep, split)), &line) {
            Ok(record) => record,
            Err(reason) => {
                first_error = Some(CliError::BadLine { line_number: n_lines, reason });
                break;
            }
        };
        match producer.send(record).await {
            Ok(delivery) => deliveries.push(delivery),
            Err(error) => first_error = Some(CliError::Client(error)),
        }
        // Count what has completed, so the set of pending futures stays as small as the producer's buffer.
        while let Some(Some(result)) = deliveries.next().now_or_never() {
            tally(result, &mut first_error);
        }
    }
    while let Some(result) = deliveries.next().await {
        tally(result, &mut first_error);
    }
    let _ = producer.close().await;
    let verb = if acks == Acks::None { "written (acks=none: not acknowledged)" } else { "acknowledged" };
    let duplicates = match n_duplicates {
        0 => String::new(),
        n => format!(", {n} of them duplicates not written again"),
    };
    note(stderr, &format!("{n_acknowledged} of {n_lines} records {verb}{duplicates}")).await;
    match first_error {
        None => Ok(()),
        Some(error) => Err(CliError::Incomplete { n_acknowledged, n_lines, first_error: Box::new(error) }),
    }
}

/// `ferry produce --transactional-id`: every `--txn-size` lines (default: all) are one transaction.
async fn produce_transactional(
    broker: &str,
    args: ProduceArgs,
    transactional_id: String,
    mut stdin: impl AsyncBufRead + Unpin,
    stderr: &mut (impl AsyncWrite + Unpin),
) -> Result<(), CliError> {
    let separator = args.key_separator.as_ref().map(|separator| separator.as_bytes()).filter(|sep| !sep.is_empty());
    let mut n_lines: u64 = 0;
    let mut n_committed: u64 = 0;
    let mut n_in_transaction: u64 = 0;
    let mut producer: Option<TransactionalProducer> = None;
    let mut line = Vec::new();
    let outcome: Result<(), CliError> = async {
        let producer = match &mut producer {
            Some(producer) => producer,
            None => producer
                .insert(TransactionalProducer::connect(broker, TransactionalConfig::new(transactional_id)).await?),
        };
        loop {
            line.clear();
            let at_end = stdin.read_until(b'\n', &mut line).await.map_err(CliError::Stdin)? == 0;
            if !at_end {
                n_lines += 1;
                let split = separator.map(|separator| (separator, Split::Key));
                let record = line_to_record(&args.topic, args.partition, split, &line)
                    .map_err(|reason| CliError::BadLine { line_number: n_lines, reason })?;
                if n_in_transaction == 0 {
                    producer.begin()?;
                }
                n_in_transaction += 1;
                producer.send(record).await?;
            }
            // A complete transaction is committed at once, not when the next line arrives.
            if n_in_transaction > 0 && (at_end || args.txn_size.is_some_and(|size| n_in_transaction >= size)) {
                producer.commit().await?;
                n_committed += n_in_transaction;
                n_in_transaction = 0;
            }
            if at_end {
                return Ok(());
            }
        }
    }
    .await;
    if let Some(mut producer) = producer {
        if outcome.is_err() && n_in_transaction > 0 {
            let _ = producer.abort().await;
        }
        producer.close().await;
    }
    note(stderr, &format!("{n_committed} of {n_lines} records committed")).await;
    match outcome {
        Ok(()) => Ok(()),
        Err(error) => Err(CliError::Uncommitted { n_committed, n_lines, first_error: Box::new(error) }),
    }
}

/// What the part of a line before the separator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// The record's key (`--key-separator`).
    Key,
    /// The record's dedup key (`--dedup-key-separator`).
    DedupKey,
}

/// Turns one stdin line (with its line ending) into a record.
fn line_to_record(
    topic: &str,
    partition: Option<u32>,
    separator: Option<(&[u8], Split)>,
    line: &[u8],
) -> Result<ProducerRecord, String> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut record = match separator {
        None => ProducerRecord::new(topic, Bytes::copy_from_slice(line)),
        Some((separator, split)) => {
            let Some(at) = line.windows(separator.len()).position(|window| window == separator) else {
                return Err(format!("no key separator {:?}", String::from_utf8_lossy(separator)));
            };
            let record = ProducerRecord::new(topic, Bytes::copy_from_slice(&line[at + separator.len()..]));
            let prefix = Bytes::copy_from_slice(&line[..at]);
            match split {
                Split::Key => record.with_key(prefix),
                Split::DedupKey => record.with_dedup_key(prefix),
            }
        }
    };
    record.partition = partition;
    Ok(record)
}

async fn consume(
    broker: &str,
    args: ConsumeArgs,
    stdout: impl AsyncWrite + Unpin,
    stderr: &mut (impl AsyncWrite + Unpin),
) -> Result<(), CliError> {
    if args.commit.is_some() && args.group.is_none() {
        return Err(CliError::Usage("--commit needs --group"));
    }
    if args.partition.is_some() && args.group.is_some() {
        return Err(CliError::Usage("--partition and --group do not go together: the group assigns partitions"));
    }
    if args.max_messages == Some(0) {
        return Ok(());
    }
    let start = if args.from_beginning { SeekTo::Earliest } else { SeekTo::Latest };
    let offset_reset = if args.from_beginning { OffsetReset::Earliest } else { OffsetReset::Latest };
    let group = args.group.as_ref().map(|group_id| GroupConfig {
        commit_mode: match args.commit.unwrap_or(CommitArg::After) {
            CommitArg::Before => CommitMode::Before,
            CommitArg::After => CommitMode::After,
            CommitArg::None => CommitMode::None,
        },
        ..GroupConfig::new(group_id.clone())
    });
    let is_group = group.is_some();
    let isolation = match args.isolation {
        IsolationArg::ReadCommitted => Isolation::ReadCommitted,
        IsolationArg::ReadUncommitted => Isolation::ReadUncommitted,
    };
    let mut consumer =
        Consumer::new(broker, ConsumerConfig { offset_reset, group, isolation, ..ConsumerConfig::default() })?;
    if is_group {
        consumer.subscribe([args.topic.as_str()])?;
    } else {
        let partitions: Vec<u32> = match args.partition {
            Some(partition) => vec![partition],
            None => {
                let admin = Admin::new(broker, ConnectionConfig::default())?;
                let topic = admin.describe_topic(&args.topic).await;
                admin.close().await;
                topic?.partitions.iter().map(|partition| partition.partition).collect()
            }
        };
        consumer.assign(&args.topic, partitions)?;
        consumer.seek_all(start);
    }
    let idle_timeout = args.idle_timeout_ms.map(Duration::from_millis);
    let mut last_record_at = Instant::now();
    let mut n_printed: u64 = 0;
    let mut out = BufWriter::new(stdout);
    let mut line = Vec::new();
    'poll: loop {
        let poll_timeout = match idle_timeout {
            Some(idle_timeout) => {
                let left = (last_record_at + idle_timeout).saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                left.min(Duration::from_secs(1))
            }
            None => Duration::from_secs(1),
        };
        let records = consumer.poll(poll_timeout).await?;
        if records.is_empty() {
            continue;
        }
        last_record_at = Instant::now();
        let mut records = records.into_iter();
        while let Some(record) = records.next() {
            line.clear();
            format_record(&record, args.print_key, args.print_offset, &mut line);
            match write_out(&mut out, &line).await {
                Ok(()) => {}
                Err(WriteStop::Closed) => {
                    rewind_unprinted(&mut consumer, Some(record), records.by_ref());
                    break 'poll;
                }
                Err(WriteStop::Failed(error)) => return Err(CliError::Stdout(error)),
            }
            n_printed += 1;
            if args.max_messages.is_some_and(|max| n_printed >= max) {
                // Records received but not printed are not processed: a group commit must not cover them.
                rewind_unprinted(&mut consumer, None, records.by_ref());
                break 'poll;
            }
        }
        match flush_out(&mut out).await {
            Ok(()) => {}
            Err(WriteStop::Closed) => break,
            Err(WriteStop::Failed(error)) => return Err(CliError::Stdout(error)),
        }
    }
    match flush_out(&mut out).await {
        Ok(()) | Err(WriteStop::Closed) => {}
        Err(WriteStop::Failed(error)) => return Err(CliError::Stdout(error)),
    }
    consumer.close().await;
    note(stderr, &format!("consumed {n_printed} records")).await;
    Ok(())
}

/// Moves each partition back to its first record not printed (`first`, then `rest`), so that a commit covers only
/// printed records.
fn rewind_unprinted(
    consumer: &mut Consumer,
    first: Option<ConsumerRecord>,
    rest: impl Iterator<Item = ConsumerRecord>,
) {
    let mut rewound = std::collections::BTreeSet::new();
    for record in first.into_iter().chain(rest) {
        if rewound.insert((record.topic.clone(), record.partition)) {
            let _ = consumer.seek(&record.topic, record.partition, SeekTo::Offset(record.offset));
        }
    }
}

async fn group(
    broker: &str,
    command: GroupCommand,
    json: bool,
    stdout: impl AsyncWrite + Unpin,
) -> Result<(), CliError> {
    let admin = Admin::new(broker, ConnectionConfig::default())?;
    let mut text = String::new();
    let document;
    match command {
        GroupCommand::List => {
            let groups = admin.list_groups().await?;
            for group in &groups {
                text.push_str(&format!("{}\t{}\t{}\n", group.group_id, group.state, group.member_count));
            }
            document = Value::Array(
                groups
                    .iter()
                    .map(|group| json!({"group": group.group_id, "state": group.state, "members": group.member_count}))
                    .collect(),
            );
        }
        GroupCommand::Describe { name } => {
            let group = admin.describe_group(&name).await?;
            document = json!({
                "group": group.group_id,
                "state": group.state,
                "generation": group.generation,
                "assignor": group.assignor,
                "members": group.members.iter().map(|member| json!({
                    "member_id": member.member_id,
                    "instance_id": member.instance_id,
                    "client_id": member.client_id,
                    "partitions": member.assignment.iter()
                        .map(|(topic, partition)| json!({"topic": topic, "partition": partition}))
                        .collect::<Vec<Value>>(),
                })).collect::<Vec<Value>>(),
                "partitions": group.partitions.iter().map(|partition| json!({
                    "topic": partition.topic,
                    "partition": partition.partition,
                    "member_id": partition.member_id,
                    "committed_offset": partition.committed,
                    "end_offset": partition.end_offset,
                    "lag_records": partition.lag,
                    "lag_seconds": partition.lag_time.map(|lag| lag.as_secs_f64()),
                })).collect::<Vec<Value>>(),
            });
            text.push_str(&format!(
                "group: {}\tstate: {}\tgeneration: {}\tassignor: {}\tmembers: {}\n",
                group.group_id,
                group.state,
                group.generation,
                if group.assignor.is_empty() { "-" } else { &group.assignor },
                group.members.len()
            ));
            for member in &group.members {
                let assignment: Vec<String> =
                    member.assignment.iter().map(|(topic, partition)| format!("{topic}/{partition}")).collect();
                text.push_str(&format!(
                    "\tmember: {}\tinstance: {}\tclient: {}\tpartitions: {}\n",
                    member.member_id,
                    if member.instance_id.is_empty() { "-" } else { &member.instance_id },
                    member.client_id,
                    assignment.join(",")
                ));
            }
            text.push_str("\tTOPIC\tPARTITION\tMEMBER\tCOMMITTED\tEND\tLAG\tLAG_SECONDS\n");
            let dash = || "-".to_owned();
            for partition in &group.partitions {
                text.push_str(&format!(
                    "\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                    partition.topic,
                    partition.partition,
                    partition.member_id.clone().unwrap_or_else(dash),
                    partition.committed.map_or_else(dash, |offset| offset.to_string()),
                    partition.end_offset,
                    partition.lag.map_or_else(dash, |lag| lag.to_string()),
                    partition.lag_time.map_or_else(dash, |lag| format!("{:.3}", lag.as_secs_f64())),
                ));
            }
        }
    }
    admin.close().await;
    print_output(stdout, json, &text, Some(document)).await
}

async fn txn(
    broker: &str,
    command: TxnCommand,
    json: bool,
    stdout: impl AsyncWrite + Unpin,
    stderr: &mut (impl AsyncWrite + Unpin),
) -> Result<(), CliError> {
    let admin = Admin::new(broker, ConnectionConfig::default())?;
    let mut text = String::new();
    let mut document = None;
    match command {
        TxnCommand::List => {
            let transactions = admin.list_transactions().await;
            admin.close().await;
            let transactions = transactions?;
            document = Some(Value::Array(
                transactions
                    .iter()
                    .map(|txn| {
                        json!({
                            "transactional_id": txn.transactional_id,
                            "producer_id": txn.producer_id,
                            "epoch": txn.epoch,
                            "transaction": txn.transaction,
                            "state": txn.state,
                            "age_ms": txn.age.as_millis(),
                            "timeout_ms": txn.timeout.as_millis(),
                            "partitions": txn.partitions.iter()
                                .map(|(topic, partition)| json!({"topic": topic, "partition": partition}))
                                .collect::<Vec<Value>>(),
                            "staged_batches": txn.staged_batches,
                            "staged_bytes": txn.staged_bytes,
                            "group": txn.group_id,
                        })
                    })
                    .collect(),
            ));
            text.push_str(
                "TRANSACTIONAL_ID\tPRODUCER_ID\tEPOCH\tTRANSACTION\tSTATE\tAGE_MS\tTIMEOUT_MS\tPARTITIONS\t\
                 STAGED_BATCHES\tSTAGED_BYTES\tGROUP\n",
            );
            for txn in transactions {
                let partitions: Vec<String> =
                    txn.partitions.iter().map(|(topic, partition)| format!("{topic}/{partition}")).collect();
                text.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                    txn.transactional_id,
                    txn.producer_id,
                    txn.epoch,
                    txn.transaction,
                    txn.state,
                    txn.age.as_millis(),
                    txn.timeout.as_millis(),
                    if partitions.is_empty() { "-".to_owned() } else { partitions.join(",") },
                    txn.staged_batches,
                    txn.staged_bytes,
                    txn.group_id.as_deref().unwrap_or("-"),
                ));
            }
        }
        TxnCommand::Abort { id } => {
            let aborted = admin.abort_transaction(&id).await;
            admin.close().await;
            if aborted? {
                note(stderr, &format!("aborted the open transaction of {id}")).await;
            } else {
                note(stderr, &format!("{id} has no open transaction")).await;
            }
        }
    }
    print_output(stdout, json, &text, document).await
}

/// `ferry broker info`.
async fn broker_info(broker: &str, json: bool, stdout: impl AsyncWrite + Unpin) -> Result<(), CliError> {
    let admin = Admin::new(broker, ConnectionConfig::default())?;
    let info = admin.describe_broker().await;
    admin.close().await;
    let info = info?;
    let mut text = format!(
        "version: {}\nuptime_seconds: {}\ndata_dir: {}\ndata_dir_bytes: {}\ntopics: {}\n\
         partitions: {} healthy, {} damaged, {} failed\nconnections_open: {}\nconfig:\n",
        info.version,
        info.uptime.as_secs(),
        info.data_dir,
        info.data_dir_bytes,
        info.topics,
        info.partitions_healthy,
        info.partitions_damaged,
        info.partitions_failed,
        info.connections_open,
    );
    for (key, value) in &info.config {
        text.push_str(&format!("\t{key}\t{value}\n"));
    }
    let document = json!({
        "version": info.version,
        "uptime_ms": info.uptime.as_millis(),
        "data_dir": info.data_dir,
        "data_dir_bytes": info.data_dir_bytes,
        "topics": info.topics,
        "partitions": {
            "healthy": info.partitions_healthy,
            "damaged": info.partitions_damaged,
            "failed": info.partitions_failed,
        },
        "connections_open": info.connections_open,
        "config": info.config,
    });
    print_output(stdout, json, &text, Some(document)).await
}

/// `ferry producers TOPIC`.
async fn producers(broker: &str, topic: &str, json: bool, stdout: impl AsyncWrite + Unpin) -> Result<(), CliError> {
    let admin = Admin::new(broker, ConnectionConfig::default())?;
    let partitions = admin.describe_producers(topic).await;
    admin.close().await;
    let partitions = partitions?;
    let mut text = String::from("PARTITION\tPRODUCER_ID\tEPOCH\tLAST_SEQUENCE\tLAST_OFFSET\tLAST_WRITE_MS\n");
    for partition in &partitions {
        for producer in &partition.producers {
            text.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\n",
                partition.partition,
                producer.producer_id,
                producer.epoch,
                producer.last_sequence,
                producer.last_offset,
                producer.last_write_ms,
            ));
        }
        if partition.truncated {
            text.push_str(&format!(
                "{}\t... {} more not listed\n",
                partition.partition,
                u64::from(partition.producer_count).saturating_sub(partition.producers.len() as u64)
            ));
        }
        if let Some((code, message)) = &partition.error {
            text.push_str(&format!("{}\terror: {code} {message}\n", partition.partition));
        }
    }
    let document = Value::Array(
        partitions
            .iter()
            .map(|partition| {
                json!({
                    "partition": partition.partition,
                    "producer_count": partition.producer_count,
                    "truncated": partition.truncated,
                    "error": partition.error.as_ref().map(|(code, message)| error_json(*code, message)),
                    "producers": partition.producers.iter().map(|producer| json!({
                        "producer_id": producer.producer_id,
                        "epoch": producer.epoch,
                        "last_sequence": producer.last_sequence,
                        "last_offset": producer.last_offset,
                        "last_write_ms": producer.last_write_ms,
                    })).collect::<Vec<Value>>(),
                })
            })
            .collect(),
    );
    print_output(stdout, json, &text, Some(document)).await
}

/// An error code and message as JSON: `{"code": "PARTITION_DAMAGED", "message": "..."}`.
fn error_json(code: ferry_protocol::ErrorCode, message: &str) -> Value {
    json!({"code": code.to_string(), "message": message})
}

/// Writes a listing command's output: `document` as one pretty-printed JSON document with `--json` (when the
/// command has one), else `text`.
async fn print_output(
    stdout: impl AsyncWrite + Unpin,
    json: bool,
    text: &str,
    document: Option<Value>,
) -> Result<(), CliError> {
    match document {
        Some(document) if json => {
            let mut rendered = serde_json::to_string_pretty(&document).expect("a serde_json::Value always serializes");
            rendered.push('\n');
            print_text(stdout, &rendered).await
        }
        _ => print_text(stdout, text).await,
    }
}

/// Writes a command's whole output to stdout; a closed stdout (`| head`) is not an error.
async fn print_text(stdout: impl AsyncWrite + Unpin, text: &str) -> Result<(), CliError> {
    let mut out = BufWriter::new(stdout);
    let written = match write_out(&mut out, text.as_bytes()).await {
        Ok(()) => flush_out(&mut out).await,
        stop => stop,
    };
    match written {
        Ok(()) | Err(WriteStop::Closed) => Ok(()),
        Err(WriteStop::Failed(error)) => Err(CliError::Stdout(error)),
    }
}

/// One output line: `[PARTITION:OFFSET<TAB>][KEY<TAB>]VALUE<LF>`; null keys and values print as nothing.
pub fn format_record(record: &ConsumerRecord, print_key: bool, print_offset: bool, line: &mut Vec<u8>) {
    if print_offset {
        line.extend_from_slice(format!("{}:{}\t", record.partition, record.offset).as_bytes());
    }
    if print_key {
        line.extend_from_slice(record.key.as_deref().unwrap_or_default());
        line.push(b'\t');
    }
    line.extend_from_slice(record.value.as_deref().unwrap_or_default());
    line.push(b'\n');
}

/// Why output stopped.
enum WriteStop {
    /// The reader went away (`| head`): stop quietly.
    Closed,
    /// Any other write error.
    Failed(std::io::Error),
}

/// Writes `bytes` to the (buffered) output; [`flush_out`] pushes them out.
async fn write_out(out: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> Result<(), WriteStop> {
    classify(out.write_all(bytes).await)
}

async fn flush_out(out: &mut (impl AsyncWrite + Unpin)) -> Result<(), WriteStop> {
    classify(out.flush().await)
}

fn classify(result: std::io::Result<()>) -> Result<(), WriteStop> {
    match result {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Err(WriteStop::Closed),
        Err(error) => Err(WriteStop::Failed(error)),
    }
}
