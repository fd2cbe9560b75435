use std::pin::Pin;
use std::task::{Context, Poll};

use clap::Parser;
use ferry_client::cli::{
    AcksArg, BrokerCommand, Cli, CliError, Command, GroupCommand, IsolationArg, TopicCommand, TxnCommand, run,
};
use ferry_client::partition_for_key;
use ferry_protocol::messages::{EndTxnResponse, error_code_to_wire};
use ferry_protocol::{ApiKey, ErrorCode, Request, Response};

use crate::support::{Action, Peer};

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("ferry").chain(args.iter().copied()))
}

#[test]
fn topic_commands_parse_with_their_defaults() {
    let cli = parse(&["topic", "create", "orders"]).expect("valid");
    assert_eq!(cli.broker, "127.0.0.1:7070");
    let Command::Topic(TopicCommand::Create { name, partitions, config }) = cli.command else { panic!("create") };
    assert_eq!((name.as_str(), partitions, config.len()), ("orders", 1, 0));

    let cli = parse(&[
        "--broker",
        "10.1.2.3:9000",
        "topic",
        "create",
        "orders",
        "--partitions",
        "8",
        "--config",
        "retention.ms=1000",
        "--config",
        "fsync=never",
    ])
    .expect("valid");
    assert_eq!(cli.broker, "10.1.2.3:9000");
    let Command::Topic(TopicCommand::Create { partitions, config, .. }) = cli.command else { panic!("create") };
    assert_eq!(partitions, 8);
    assert_eq!(config, vec![("retention.ms".to_owned(), "1000".to_owned()), ("fsync".to_owned(), "never".to_owned())]);

    assert!(matches!(parse(&["topic", "list"]).expect("valid").command, Command::Topic(TopicCommand::List)));
    assert!(matches!(
        parse(&["topic", "describe", "t"]).expect("valid").command,
        Command::Topic(TopicCommand::Describe { .. })
    ));
    assert!(matches!(
        parse(&["topic", "delete", "t"]).expect("valid").command,
        Command::Topic(TopicCommand::Delete { .. })
    ));
    assert!(parse(&["topic", "create", "t", "--config", "no-equals-sign"]).is_err());
    assert!(parse(&["topic", "create", "t", "--partitions", "-1"]).is_err());
    assert!(parse(&["topic", "describe"]).is_err(), "a name is required");
}

#[test]
fn introspection_commands_parse_and_json_is_a_global_flag() {
    let cli = parse(&["broker", "info"]).expect("valid");
    assert!(matches!(cli.command, Command::Broker(BrokerCommand::Info)) && !cli.json);
    let cli = parse(&["producers", "orders", "--json"]).expect("valid");
    assert!(matches!(cli.command, Command::Producers { topic } if topic == "orders"));
    assert!(cli.json, "--json after the subcommand");
    assert!(parse(&["--json", "topic", "describe", "t"]).expect("valid").json, "--json before the subcommand");
    assert!(parse(&["producers"]).is_err(), "a topic is required");
    assert!(parse(&["broker"]).is_err(), "broker needs a subcommand");
}

#[test]
fn the_dedup_key_separator_excludes_the_key_separator_and_idempotence() {
    let Command::Produce(produce) = parse(&["produce", "orders", "--dedup-key-separator", ":"]).expect("valid").command
    else {
        panic!("produce")
    };
    assert_eq!(produce.dedup_key_separator.as_deref(), Some(":"));
    assert!(parse(&["produce", "orders", "--dedup-key-separator", ":", "--key-separator", "="]).is_err());
    assert!(parse(&["produce", "orders", "--dedup-key-separator", ":", "--idempotent"]).is_err());
}

#[test]
fn produce_and_consume_parse_with_their_defaults() {
    let Command::Produce(produce) = parse(&["produce", "orders"]).expect("valid").command else { panic!("produce") };
    assert_eq!(produce.acks, AcksArg::All);
    assert_eq!(produce.linger_ms, 5);
    assert_eq!(produce.delivery_timeout_ms, 120_000);
    assert_eq!((produce.partition, produce.key_separator.as_deref()), (None, None));
    let cli = parse(&[
        "produce",
        "orders",
        "--acks",
        "none",
        "--key-separator",
        ":",
        "--partition",
        "2",
        "--linger-ms",
        "0",
        "--delivery-timeout-ms",
        "500",
    ])
    .expect("valid");
    let Command::Produce(produce) = cli.command else { panic!("produce") };
    assert_eq!(produce.acks, AcksArg::None);
    assert_eq!(
        (produce.partition, produce.key_separator.as_deref(), produce.linger_ms, produce.delivery_timeout_ms),
        (Some(2), Some(":"), 0, 500)
    );
    assert!(parse(&["produce", "orders", "--acks", "some"]).is_err());

    let Command::Consume(consume) = parse(&["consume", "orders"]).expect("valid").command else { panic!("consume") };
    assert!(!consume.from_beginning && !consume.print_key && !consume.print_offset);
    assert_eq!((consume.max_messages, consume.idle_timeout_ms, consume.partition), (None, None, None));
    let cli = parse(&[
        "consume",
        "orders",
        "--from-beginning",
        "--max-messages",
        "10",
        "--idle-timeout-ms",
        "250",
        "--print-key",
        "--print-offset",
        "--partition",
        "3",
    ])
    .expect("valid");
    let Command::Consume(consume) = cli.command else { panic!("consume") };
    assert!(consume.from_beginning && consume.print_key && consume.print_offset);
    assert_eq!((consume.max_messages, consume.idle_timeout_ms, consume.partition), (Some(10), Some(250), Some(3)));
    assert!(parse(&["consume"]).is_err(), "a topic is required");
    assert!(parse(&["frobnicate"]).is_err());
}

#[test]
fn transaction_flags_parse_and_conflict_with_non_transactional_modes() {
    let Command::Produce(produce) =
        parse(&["produce", "orders", "--transactional-id", "loader-0", "--txn-size", "100"]).expect("valid").command
    else {
        panic!("produce")
    };
    assert_eq!((produce.transactional_id.as_deref(), produce.txn_size), (Some("loader-0"), Some(100)));
    assert!(parse(&["produce", "orders", "--txn-size", "100"]).is_err(), "--txn-size needs --transactional-id");
    assert!(parse(&["produce", "orders", "--transactional-id", "t", "--txn-size", "0"]).is_err());
    assert!(parse(&["produce", "orders", "--transactional-id", "t", "--acks", "none"]).is_err());
    assert!(parse(&["produce", "orders", "--transactional-id", "t", "--dedup-key-separator", ":"]).is_err());

    let Command::Consume(consume) = parse(&["consume", "orders"]).expect("valid").command else { panic!("consume") };
    assert_eq!(consume.isolation, IsolationArg::ReadCommitted);
    let cli = parse(&["consume", "orders", "--isolation", "read-uncommitted"]).expect("valid");
    assert!(matches!(cli.command, Command::Consume(consume) if consume.isolation == IsolationArg::ReadUncommitted));
    assert!(parse(&["consume", "orders", "--isolation", "serializable"]).is_err());

    assert!(matches!(parse(&["txn", "list"]).expect("valid").command, Command::Txn(TxnCommand::List)));
    let cli = parse(&["txn", "abort", "loader-0"]).expect("valid");
    assert!(matches!(cli.command, Command::Txn(TxnCommand::Abort { id }) if id == "loader-0"));
    assert!(parse(&["txn", "abort"]).is_err(), "an id is required");
}

#[tokio::test]
async fn transactional_produce_commits_every_txn_size_lines() {
    let peer = Peer::start().await;
    peer.create_topic("lines", 2);
    let input: String = (0..25).map(|line_idx| format!("line {line_idx}\n")).collect();
    let mut stderr = Vec::new();
    let args = ["--broker", &peer.addr, "produce", "lines", "--transactional-id", "loader-0", "--txn-size", "10"];
    run(parse(&args).expect("valid"), input.as_bytes(), tokio::io::sink(), &mut stderr).await.expect("committed");
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(stderr.contains("25 of 25 records committed"), "{stderr}");
    // 10 + 10 + 5 lines: three transactions, each ended once.
    let ends: Vec<u64> = peer
        .requests(ApiKey::EndTxn)
        .into_iter()
        .map(|request| match request {
            Request::EndTxn(end) if end.commit => end.transaction,
            other => panic!("a commit, not {other:?}"),
        })
        .collect();
    assert_eq!(ends, vec![0, 1, 2]);
    let n_stored: usize = (0..2).map(|partition| peer.records("lines", partition).len()).sum();
    assert_eq!(n_stored, 25);
}

#[tokio::test]
async fn transactional_produce_exits_with_an_error_when_a_commit_is_refused() {
    let peer = Peer::start().await;
    peer.create_topic("lines", 1);
    peer.set_hook(|request, _| match request {
        Request::EndTxn(_) => Action::Respond(Response::EndTxn(EndTxnResponse {
            error_code: error_code_to_wire(ErrorCode::TransactionAborted),
            ..EndTxnResponse::default()
        })),
        _ => Action::Model,
    });
    let mut stderr = Vec::new();
    let args = ["--broker", &peer.addr, "produce", "lines", "--transactional-id", "loader-0"];
    let error = run(parse(&args).expect("valid"), &b"a\nb\n"[..], tokio::io::sink(), &mut stderr)
        .await
        .expect_err("not committed");
    assert!(matches!(error, CliError::Uncommitted { n_committed: 0, n_lines: 2, .. }), "{error:?}");
    assert!(String::from_utf8_lossy(&stderr).contains("0 of 2 records committed"));
}

#[tokio::test]
async fn txn_list_prints_a_header_and_txn_abort_reports_nothing_open() {
    let peer = Peer::start().await;
    let mut stdout = Vec::new();
    run(parse(&["--broker", &peer.addr, "txn", "list"]).expect("valid"), &b""[..], &mut stdout, tokio::io::sink())
        .await
        .expect("listed");
    assert!(String::from_utf8_lossy(&stdout).starts_with("TRANSACTIONAL_ID\tPRODUCER_ID"));
    let mut stderr = Vec::new();
    let abort = parse(&["--broker", &peer.addr, "txn", "abort", "loader-0"]).expect("valid");
    run(abort, &b""[..], tokio::io::sink(), &mut stderr).await.expect("answered");
    assert!(String::from_utf8_lossy(&stderr).contains("loader-0 has no open transaction"));
}

#[tokio::test]
async fn group_flags_that_do_not_go_together_are_rejected_before_connecting() {
    for args in
        [&["consume", "orders", "--commit", "after"][..], &["consume", "orders", "--group", "g", "--partition", "1"]]
    {
        let cli = parse(args).expect("parsed, to be rejected when run");
        let error = run(cli, &b""[..], tokio::io::sink(), tokio::io::sink()).await.expect_err("usage error");
        assert!(matches!(error, CliError::Usage(_)), "{args:?}: {error:?}");
    }
    assert!(parse(&["consume", "orders", "--group", "g", "--commit", "sometimes"]).is_err());
    let cli = parse(&["group", "describe", "g"]).expect("valid");
    assert!(matches!(cli.command, Command::Group(GroupCommand::Describe { name }) if name == "g"));
}

#[tokio::test]
async fn produced_lines_come_back_from_consume_with_keys_and_offsets() {
    let peer = Peer::start().await;
    peer.create_topic("lines", 3);
    let input: String = (0..1000).map(|line_idx| format!("key-{line_idx}:value {line_idx}\n")).collect();
    let mut stderr = Vec::new();
    let produce = parse(&["--broker", &peer.addr, "produce", "lines", "--key-separator", ":"]).expect("valid");
    run(produce, input.as_bytes(), tokio::io::sink(), &mut stderr).await.expect("every line acknowledged");
    assert!(
        String::from_utf8_lossy(&stderr).contains("1000 of 1000 records acknowledged"),
        "{}",
        String::from_utf8_lossy(&stderr)
    );

    let mut stdout = Vec::new();
    let consume = parse(&[
        "--broker",
        &peer.addr,
        "consume",
        "lines",
        "--from-beginning",
        "--max-messages",
        "1000",
        "--print-key",
        "--print-offset",
    ])
    .expect("valid");
    run(consume, &b""[..], &mut stdout, tokio::io::sink()).await.expect("consumed");
    let output = String::from_utf8(stdout).expect("utf-8");
    let mut seen = Vec::new();
    for line in output.lines() {
        let (position, rest) = line.split_once('\t').expect("PARTITION:OFFSET<TAB>");
        let (key, value) = rest.split_once('\t').expect("KEY<TAB>VALUE");
        let partition: u32 = position.split_once(':').expect("P:O").0.parse().expect("partition");
        assert_eq!(partition, partition_for_key(key.as_bytes(), 3), "{line}");
        assert_eq!(value, format!("value {}", &key["key-".len()..]));
        seen.push(key.to_owned());
    }
    seen.sort();
    let mut expected: Vec<String> = (0..1000).map(|line_idx| format!("key-{line_idx}")).collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_line_without_the_separator_fails_the_produce_after_reporting_the_count() {
    let peer = Peer::start().await;
    peer.create_topic("lines", 1);
    let mut stderr = Vec::new();
    let produce = parse(&["--broker", &peer.addr, "produce", "lines", "--key-separator", "="]).expect("valid");
    let error = run(produce, &b"a=1\nb=2\nno separator here\nc=3\n"[..], tokio::io::sink(), &mut stderr)
        .await
        .expect_err("bad line");
    match &error {
        CliError::Incomplete { n_acknowledged: 2, n_lines: 3, first_error } => {
            assert!(matches!(**first_error, CliError::BadLine { line_number: 3, .. }), "{first_error:?}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(String::from_utf8_lossy(&stderr).contains("2 of 3 records acknowledged"));
    assert_eq!(peer.records("lines", 0).len(), 2, "the lines before the bad one were sent; none after");
}

#[tokio::test]
async fn consume_exits_after_the_idle_timeout_with_nothing_new() {
    let peer = Peer::start().await;
    peer.create_topic("lines", 2);
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let consume = parse(&["--broker", &peer.addr, "consume", "lines", "--idle-timeout-ms", "300"]).expect("valid");
    let started = tokio::time::Instant::now();
    run(consume, &b""[..], &mut stdout, &mut stderr).await.expect("idle exit");
    assert!(stdout.is_empty());
    assert!(String::from_utf8_lossy(&stderr).contains("consumed 0 records"));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_millis(300) && elapsed < std::time::Duration::from_secs(10),
        "{elapsed:?}"
    );
}

/// A stdout whose reader went away, as with `ferry consume ... | head -1`.
struct ClosedPipe;

impl tokio::io::AsyncWrite for ClosedPipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn consume_stops_quietly_when_stdout_is_closed() {
    let peer = Peer::start().await;
    peer.create_topic("lines", 1);
    crate::support::append_values(&peer, "lines", 0, &["a", "b", "c"]);
    let consume = parse(&["--broker", &peer.addr, "consume", "lines", "--from-beginning"]).expect("valid");
    run(consume, &b""[..], ClosedPipe, tokio::io::sink())
        .await
        .expect("a closed stdout ends the command without error");
}

#[tokio::test]
async fn topic_commands_print_data_on_stdout() {
    let peer = Peer::start().await;
    let broker = peer.addr.clone();
    let run_ok = |args: Vec<&str>| {
        let cli = parse(&[&["--broker", broker.as_str()][..], &args[..]].concat()).expect("valid");
        async move {
            let mut stdout = Vec::new();
            run(cli, &b""[..], &mut stdout, tokio::io::sink()).await.map(|()| String::from_utf8(stdout).expect("utf-8"))
        }
    };
    assert_eq!(
        run_ok(vec!["topic", "create", "orders", "--partitions", "2", "--config", "retention.ms=5"])
            .await
            .expect("created"),
        ""
    );
    run_ok(vec!["topic", "create", "audit"]).await.expect("created");
    assert_eq!(run_ok(vec!["topic", "list"]).await.expect("listed"), "audit\norders\n");
    let listed: serde_json::Value =
        serde_json::from_str(&run_ok(vec!["--json", "topic", "list"]).await.expect("listed")).expect("JSON");
    assert_eq!(listed, serde_json::json!([{"name": "audit", "partitions": 1}, {"name": "orders", "partitions": 2}]));
    let description = run_ok(vec!["topic", "describe", "orders"]).await.expect("described");
    assert!(description.starts_with("topic: orders\tpartitions: 2"), "{description}");
    assert!(description.contains("partition: 1\tstart: 0\tend: 0\tdamaged: false"), "{description}");
    run_ok(vec!["topic", "delete", "orders"]).await.expect("deleted");
    let error = run_ok(vec!["topic", "delete", "orders"]).await.expect_err("already deleted");
    assert!(error.to_string().contains("UNKNOWN_TOPIC_OR_PARTITION"), "{error}");
}
