//! The recorded series behind `ops/prometheus/tests.yml`: the real binary is driven through each fault the alert
//! rules in `ops/prometheus/alerts.yml` watch for, `/metrics` is scraped before (the healthy baseline) and after
//! each fault, and the scraped values are asserted twice: here, against what the fault must do to the metric, and
//! against the committed `tests.yml`, whose input series must start with exactly these values (see the comment at
//! the top of that file for how the time axis is extended and why the file is not regenerated).
//!
//! | fault, as recorded here                                   | series                                     | alert                   |
//! |-----------------------------------------------------------|--------------------------------------------|-------------------------|
//! | SIGKILL: the scrape is refused                            | `up`                                       | `FerryBrokerDown`       |
//! | `FERRY_FAILPOINT=segment_fsync_error`, one produce        | `ferry_log_fsync_errors_total`             | `FerryFsyncErrors`      |
//! | a byte flipped below the durable end, restart             | `ferry_log_damaged_partitions`             | `FerryPartitionDamaged` |
//! | garbage appended past the durable end, restart            | `ferry_log_recovery_truncated_bytes_total` | `FerryRecoveryTruncated`|
//! | a group that stopped committing while records arrive      | `ferry_group_lag_seconds`                  | `FerryConsumerLagHigh`  |
//! | a transaction left open                                   | `ferry_transaction_oldest_age_seconds`     | `FerryTransactionStuck` |
//! | more connections than `server.connections_max`            | `ferry_connections_rejected_total`         | `FerryConnectionsRejected` |

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_client::{
    Admin, CommitMode, Connection, ConnectionConfig, Consumer, ConsumerConfig, GroupConfig, GroupMetadata, OffsetReset,
    Producer, ProducerConfig, ProducerRecord, TransactionalConfig, TransactionalProducer,
};
use ferry_protocol::ErrorCode;
use prometheus_parse::{Scrape, Value};

use crate::harness::{addresses, eventually, scrape};
use crate::idempotence::{code, produce, stamped};
use crate::support::BrokerProcess;

/// The labels Prometheus adds to every series of the `ferry` scrape job in `tests.yml`.
const TARGET_LABELS: [(&str, &str); 2] = [("instance", "ferry:7071"), ("job", "ferry")];
/// `server.connections_max` of the recorded broker.
const CONNECTIONS_MAX: usize = 8;
/// Connections opened at once for the connection-limit fault.
const CONNECTIONS_FLOOD: usize = 60;
/// Bytes appended to a segment past its durable end for the torn-tail fault.
const TORN_TAIL_BYTES: usize = 100;
/// An age or lag recorded here is a few seconds (the run is short): `tests.yml` must start from a value in this
/// range too, below every alert threshold, and grows it by the scrape interval per sample.
const AGE_RECORDED_MAX_SECONDS: f64 = 30.0;

/// How a recorded value is compared with `tests.yml`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Counts: equal.
    Exact,
    /// Ages in seconds, which depend on the wall clock: both in `0..AGE_RECORDED_MAX_SECONDS`, and equal when 0.
    Age,
}

/// One series' recorded values: on the healthy baseline and after its fault.
#[derive(Debug, Clone, Copy)]
struct Recorded {
    baseline: f64,
    fault: f64,
    kind: Kind,
}

/// The `tests.yml` name of a sample: its name and labels plus the target labels, sorted.
fn series_key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut all: Vec<(&str, &str)> = labels.iter().copied().chain(TARGET_LABELS).collect();
    all.sort_unstable();
    let labels: Vec<String> = all.iter().map(|(key, value)| format!("{key}=\"{value}\"")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

async fn scrape_parsed(metrics: SocketAddr) -> Scrape {
    let text = scrape(metrics).await;
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("the exposition parses")
}

/// The value of the one sample of `name` with exactly `labels`, or `None`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name && sample.labels.len() == labels.len())
        .filter(|sample| labels.iter().all(|(key, value)| sample.labels.get(key) == Some(*value)))
        .map(|sample| match &sample.value {
            Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value) => *value,
            other => panic!("{name} is not a plain sample: {other:?}"),
        })
        .collect();
    assert!(matching.len() <= 1, "{name} {labels:?} matches {} samples", matching.len());
    matching.first().copied()
}

/// Like [`value`], failing when the series is missing: alert expressions over a counter see its first increase only
/// if the series was exported (at 0) before it.
fn present(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(scrape, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} is not exported"))
}

fn start(data_dir: &Path, config: Option<&Path>, env: Option<(&str, &str)>) -> (BrokerProcess, String, SocketAddr) {
    tokio::task::block_in_place(|| {
        let mut broker = BrokerProcess::start_configured(data_dir, config, env);
        let (client, metrics) = addresses(&mut broker);
        (broker, client.to_string(), metrics)
    })
}

fn stop(broker: BrokerProcess, signal: libc::c_int) {
    tokio::task::block_in_place(|| {
        broker.signal(signal);
        broker.wait_for_exit();
    });
}

async fn produce_values(addr: &str, topic: &str, values: impl IntoIterator<Item = String>) {
    let producer = Producer::new(addr.to_owned(), ProducerConfig::default()).expect("producer");
    let mut deliveries = Vec::new();
    for value in values {
        deliveries.push(producer.send(ProducerRecord::new(topic, value)).await.expect("accepted"));
    }
    for delivery in deliveries {
        delivery.await.expect("acknowledged");
    }
    producer.close().await.expect("closed");
}

/// The segment data files (`*.log`) of partition 0 of `topic`, oldest first.
fn segments(data_dir: &Path, topic: &str) -> Vec<PathBuf> {
    let logs = data_dir.join("logs");
    let topic_dir = std::fs::read_dir(&logs)
        .expect("logs/")
        .map(|entry| entry.expect("dir entry").path())
        .find(|path| path.file_name().is_some_and(|name| name.to_string_lossy().ends_with(&format!("-{topic}"))))
        .unwrap_or_else(|| panic!("no directory for {topic} in {}", logs.display()));
    let mut files: Vec<PathBuf> = std::fs::read_dir(topic_dir.join("00000"))
        .expect("partition directory")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .collect();
    files.sort();
    files
}

/// Whether a scrape of `metrics` is refused, as Prometheus then records `up == 0`.
fn scrape_refused(metrics: SocketAddr) -> bool {
    TcpStream::connect_timeout(&metrics, Duration::from_secs(2)).is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_moves_the_series_its_alert_watches_and_tests_yml_starts_from_the_recorded_values() {
    let mut recorded: BTreeMap<String, Recorded> = BTreeMap::new();
    let mut record = |name: &str, labels: &[(&str, &str)], baseline: f64, fault: f64, kind: Kind| {
        recorded.insert(series_key(name, labels), Recorded { baseline, fault, kind });
    };
    let (orders, damaged, torn) = (("topic", "orders"), ("topic", "damaged"), ("topic", "torn"));
    let partition = ("partition", "0");
    let group_labels = [("group", "lagging"), orders, partition];

    // Broker A: topics, a caught-up group, no transaction, no rejection: the healthy baseline.
    let data_dir = tempfile::tempdir().expect("tempdir");
    let config = data_dir.path().join("broker.toml");
    std::fs::write(&config, format!("[server]\nconnections_max = {CONNECTIONS_MAX}\n")).expect("write config");
    let data = data_dir.path().join("data");
    let (broker, addr, metrics) = start(&data, Some(&config), None);
    let admin = Admin::new(addr.clone(), ConnectionConfig::default()).expect("admin");
    for topic in ["orders", "damaged", "torn"] {
        admin.create_topic(topic, 1, BTreeMap::new()).await.expect("create topic");
    }
    admin.close().await;
    for topic in ["orders", "damaged", "torn"] {
        produce_values(&addr, topic, (0..20).map(|idx| format!("{topic} value {idx:04}"))).await;
    }
    let consumer_config = ConsumerConfig {
        fetch_wait_max: Duration::from_millis(50),
        offset_reset: OffsetReset::Earliest,
        group: Some(GroupConfig { commit_mode: CommitMode::After, ..GroupConfig::new("lagging") }),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(addr.clone(), consumer_config).expect("consumer");
    consumer.subscribe(["orders"]).expect("subscribe");
    let mut n_read = 0;
    while n_read < 20 {
        n_read += consumer.poll(Duration::from_millis(200)).await.expect("poll").len();
    }
    consumer.commit().await.expect("commit");
    consumer.close().await;
    eventually("the caught-up group's lag to be published", || async {
        value(&scrape_parsed(metrics).await, "ferry_group_lag_records", &group_labels) == Some(0.0)
    })
    .await;
    let baseline = scrape_parsed(metrics).await;
    assert_eq!(present(&baseline, "ferry_group_lag_seconds", &group_labels), 0.0);
    assert_eq!(present(&baseline, "ferry_transactions_open", &[]), 0.0);
    assert_eq!(present(&baseline, "ferry_transaction_oldest_age_seconds", &[]), 0.0);
    assert_eq!(present(&baseline, "ferry_connections_rejected_total", &[("reason", "limit")]), 0.0);
    for topic in [damaged, torn] {
        assert_eq!(present(&baseline, "ferry_log_damaged_partitions", &[topic, partition]), 0.0);
        assert_eq!(present(&baseline, "ferry_log_recovery_truncated_bytes_total", &[topic, partition]), 0.0);
    }
    assert!(!scrape_refused(metrics), "a running broker is scraped (up == 1)");

    // Faults on broker A: the group stops while records arrive, a transaction is left open, a connection flood.
    produce_values(&addr, "orders", (20..25).map(|idx| format!("orders value {idx:04}"))).await;
    let mut txn = TransactionalProducer::connect(&addr, TransactionalConfig::new("left-open")).await.expect("txn");
    assert_eq!(txn.config().transaction_timeout, Duration::from_secs(60), "tests.yml aborts it after 60 s");
    txn.begin().expect("begin");
    txn.send_offsets(&GroupMetadata::standalone("txn-group"), &[("orders".to_owned(), 0, 1)])
        .await
        .expect("the broker opens the transaction");
    eventually("the lag and the open transaction to be published", || async {
        let scraped = scrape_parsed(metrics).await;
        value(&scraped, "ferry_group_lag_records", &group_labels) == Some(5.0)
            && value(&scraped, "ferry_transactions_open", &[]) == Some(1.0)
    })
    .await;
    let aged = scrape_parsed(metrics).await;
    let lag = present(&aged, "ferry_group_lag_seconds", &group_labels);
    let txn_age = present(&aged, "ferry_transaction_oldest_age_seconds", &[]);
    assert!(lag > 0.0 && lag < AGE_RECORDED_MAX_SECONDS, "lag {lag} s");
    assert!(txn_age > 0.0 && txn_age < AGE_RECORDED_MAX_SECONDS, "transaction age {txn_age} s");
    // Both ages grow with the wall clock while nothing changes: tests.yml adds 15 s per 15 s sample.
    let waited = tokio::time::Instant::now();
    eventually("the lag to be refreshed", || async {
        present(&scrape_parsed(metrics).await, "ferry_group_lag_seconds", &group_labels) > lag
    })
    .await;
    let later = scrape_parsed(metrics).await;
    let elapsed = waited.elapsed().as_secs_f64();
    let lag_growth = present(&later, "ferry_group_lag_seconds", &group_labels) - lag;
    let txn_growth = present(&later, "ferry_transaction_oldest_age_seconds", &[]) - txn_age;
    // The lag is refreshed every 5 s and the age every second, so each lags the wall clock by about that (plus a
    // margin for a loaded machine).
    assert!(lag_growth > 0.0 && lag_growth <= elapsed + 8.0, "lag grew {lag_growth} s in {elapsed} s");
    assert!(txn_growth >= elapsed - 3.0 && txn_growth <= elapsed + 3.0, "age grew {txn_growth} s in {elapsed} s");
    record("ferry_group_lag_seconds", &group_labels, 0.0, lag, Kind::Age);
    record("ferry_transaction_oldest_age_seconds", &[], 0.0, txn_age, Kind::Age);

    // The transactional producer holds the only client connection; the flood fills the rest and is refused.
    eventually("only the transactional producer to be connected", || async {
        value(&scrape_parsed(metrics).await, "ferry_connections_open", &[]) == Some(1.0)
    })
    .await;
    let mut flood = Vec::new();
    let mut n_refused: u32 = 0;
    for _ in 0..CONNECTIONS_FLOOD {
        let connection = Connection::new(addr.clone(), ConnectionConfig::default()).expect("connection");
        match connection.limits().await {
            Ok(_) => flood.push(connection),
            Err(error) => {
                assert_eq!(error.error_code(), Some(ErrorCode::ConnectionLimit), "{error}");
                n_refused += 1;
                connection.close().await;
            }
        }
    }
    assert_eq!(flood.len(), CONNECTIONS_MAX - 1, "the free slots are served");
    let flooded = scrape_parsed(metrics).await;
    let rejected = present(&flooded, "ferry_connections_rejected_total", &[("reason", "limit")]);
    assert_eq!(rejected, f64::from(n_refused), "each refused connection is counted");
    assert_eq!(n_refused as usize, CONNECTIONS_FLOOD - (CONNECTIONS_MAX - 1));
    record("ferry_connections_rejected_total", &[("reason", "limit")], 0.0, rejected, Kind::Exact);
    for connection in flood {
        connection.close().await;
    }

    // SIGKILL: the scrape is refused.
    stop(broker, libc::SIGKILL);
    assert!(scrape_refused(metrics), "a killed broker's scrape is refused (up == 0)");
    record("up", &[], 1.0, 0.0, Kind::Exact);
    drop(txn);

    // While it is down: a byte flipped in the middle of `damaged` (below its durable end), garbage after the end
    // of `torn` (past its durable end, as a write torn by the crash).
    let damaged_segment = segments(&data, "damaged").pop().expect("a segment");
    let mut bytes = std::fs::read(&damaged_segment).expect("read segment");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&damaged_segment, &bytes).expect("write segment");
    let torn_segment = segments(&data, "torn").pop().expect("a segment");
    let mut tail = std::fs::OpenOptions::new().append(true).open(&torn_segment).expect("open segment");
    std::io::Write::write_all(&mut tail, &[0xA5; TORN_TAIL_BYTES]).expect("append garbage");
    drop(tail);

    // Broker B, restarted on the same directory: recovery finds both.
    let (broker, _addr, metrics) = start(&data, Some(&config), None);
    let recovered = scrape_parsed(metrics).await;
    let damaged_after = present(&recovered, "ferry_log_damaged_partitions", &[damaged, partition]);
    let truncated = present(&recovered, "ferry_log_recovery_truncated_bytes_total", &[torn, partition]);
    assert_eq!(damaged_after, 1.0, "the flipped byte damages the partition");
    assert_eq!(truncated, TORN_TAIL_BYTES as f64, "exactly the torn tail is cut off");
    assert_eq!(
        present(&recovered, "ferry_log_damaged_partitions", &[torn, partition]),
        0.0,
        "a torn tail is no damage"
    );
    assert_eq!(present(&recovered, "ferry_log_recovery_truncated_bytes_total", &[damaged, partition]), 0.0);
    assert_eq!(present(&recovered, "ferry_transaction_oldest_age_seconds", &[]), 0.0, "aborted by the restart");
    record("ferry_log_damaged_partitions", &[damaged, partition], 0.0, damaged_after, Kind::Exact);
    record("ferry_log_recovery_truncated_bytes_total", &[torn, partition], 0.0, truncated, Kind::Exact);
    stop(broker, libc::SIGTERM);

    // Broker C, with segment fsyncs failing: one produce stops its partition.
    let fsync_dir = tempfile::tempdir().expect("tempdir");
    let (broker, addr, metrics) = start(fsync_dir.path(), None, Some(("FERRY_FAILPOINT", "segment_fsync_error")));
    let admin = Admin::new(addr.clone(), ConnectionConfig::default()).expect("admin");
    admin.create_topic("fsync", 1, BTreeMap::new()).await.expect("create topic");
    admin.close().await;
    let fsync_labels = [partition, ("topic", "fsync")];
    let before = present(&scrape_parsed(metrics).await, "ferry_log_fsync_errors_total", &fsync_labels);
    assert_eq!(before, 0.0);
    let connection = Connection::new(addr.clone(), ConnectionConfig::default()).expect("connection");
    let response = produce(&connection, "fsync", stamped(-1, -1, -1, &["never synced"])).await;
    assert_eq!(code(&response), Some(ErrorCode::StorageError), "{}", response.error_message);
    let after = present(&scrape_parsed(metrics).await, "ferry_log_fsync_errors_total", &fsync_labels);
    assert_eq!(after, 1.0, "the failed fsync is counted once: it stops the partition");
    record("ferry_log_fsync_errors_total", &fsync_labels, before, after, Kind::Exact);
    drop(connection);
    stop(broker, libc::SIGKILL);

    check_tests_yml(&recorded);
}

/// The path of `ops/prometheus/tests.yml`.
fn tests_yml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/prometheus/tests.yml")
}

/// One input series of `tests.yml`: in a healthy or a fault test, its name and its `values` expanded.
#[derive(Debug)]
struct InputSeries {
    fault: bool,
    series: String,
    values: Vec<Option<f64>>,
}

/// Checks that every input series of `tests.yml` was recorded here and starts from the recorded values: in the
/// healthy-baseline test every sample is the baseline; in a fault test the first sample is the baseline and the
/// first sample after it (past a gap, `_`, while the broker is down) is the value after the fault.
fn check_tests_yml(recorded: &BTreeMap<String, Recorded>) {
    eprintln!("recorded series: {recorded:#?}");
    let path = tests_yml();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let inputs = parse_input_series(&text);
    let hint = "ops/prometheus/tests.yml must start each input series from the values this test scraped \
                (printed above); update it by hand from this run, then `promtool test rules ops/prometheus/tests.yml`";
    let mut faulted = std::collections::BTreeSet::new();
    for input in &inputs {
        let Some(expected) = recorded.get(&input.series) else {
            panic!("{} is not a series this test recorded; recorded: {recorded:#?}\n{hint}", input.series)
        };
        let matches = |committed: Option<f64>, scraped: f64| match (committed, expected.kind) {
            (None, _) => false,
            (Some(committed), Kind::Exact) => committed == scraped,
            (Some(committed), Kind::Age) if scraped == 0.0 => committed == 0.0,
            (Some(committed), Kind::Age) => committed > 0.0 && committed < AGE_RECORDED_MAX_SECONDS,
        };
        if input.fault {
            faulted.insert(input.series.clone());
            let first = input.values.first().copied().flatten();
            let after = input.values.iter().skip(1).find(|value| value.is_some()).copied().flatten();
            assert!(
                matches(first, expected.baseline) && matches(after, expected.fault),
                "{}: tests.yml starts {first:?} then {after:?}, recorded {expected:?}\n{hint}",
                input.series
            );
        } else {
            assert!(
                input.values.iter().all(|value| matches(*value, expected.baseline)),
                "{}: the healthy test must hold the recorded baseline {expected:?}\n{hint}",
                input.series
            );
        }
    }
    for series in recorded.keys() {
        assert!(faulted.contains(series), "tests.yml has no fault test over recorded {series}\n{hint}");
    }
}

/// The input series of `tests.yml`, with `fault` from the comment that opens each test (`# healthy baseline` or
/// `# fault: ...`). Understands the subset of the promtool format the file uses: one `- series: '...'` line followed
/// by one `values: '...'` line.
fn parse_input_series(text: &str) -> Vec<InputSeries> {
    let mut inputs = Vec::new();
    let mut fault = None;
    let mut series: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with("# healthy baseline") {
            fault = Some(false);
        } else if line.starts_with("# fault:") {
            fault = Some(true);
        } else if let Some(rest) = line.strip_prefix("- series:") {
            series = Some(unquote(rest));
        } else if let Some(rest) = line.strip_prefix("values:") {
            let series = series.take().unwrap_or_else(|| panic!("values without a series: {line}"));
            let fault = fault.unwrap_or_else(|| {
                panic!("{series} is in a test without a `# healthy baseline` or `# fault:` comment")
            });
            inputs.push(InputSeries { fault, series, values: expand(&unquote(rest)) });
        }
    }
    assert!(!inputs.is_empty(), "no input series in tests.yml");
    inputs
}

fn unquote(text: &str) -> String {
    text.trim().trim_matches('\'').trim_matches('"').to_owned()
}

/// Expands promtool's series notation: `1`, `_`, `_x3`, `0x4` (five zeros), `1+15x3` (1 16 31 46), `5-1x2`.
fn expand(values: &str) -> Vec<Option<f64>> {
    let number = |text: &str| text.parse::<f64>().unwrap_or_else(|error| panic!("{text:?} in {values:?}: {error}"));
    let mut expanded = Vec::new();
    for token in values.split_whitespace() {
        let Some((start, times)) = token.split_once('x') else {
            expanded.push((token != "_").then(|| number(token)));
            continue;
        };
        let times: usize = times.parse().unwrap_or_else(|error| panic!("{token:?}: {error}"));
        if start == "_" {
            expanded.extend(std::iter::repeat_n(None, times));
            continue;
        }
        // The step's sign: `a+b` or `a-b` (a leading `-` belongs to a negative start).
        let split = start.char_indices().skip(1).find(|(_, char)| *char == '+' || *char == '-').map(|(idx, _)| idx);
        let (first, step) = match split {
            Some(idx) => (number(&start[..idx]), number(&start[idx..])),
            None => (number(start), 0.0),
        };
        #[allow(clippy::cast_precision_loss)] // Sample counts are small.
        expanded.extend((0..=times).map(|idx| Some(first + step * idx as f64)));
    }
    expanded
}
