//! Tests that run the real `ferry-broker` executable.

use std::os::unix::process::ExitStatusExt;

use crate::support::{BrokerProcess, http_get};

#[test]
fn broker_serves_metrics_and_exits_cleanly_on_sigterm() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut broker = BrokerProcess::start_on(data_dir.path());
    let metrics_address = broker.wait_until_ready();

    let (status_line, body) = http_get(metrics_address, "/metrics");
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    assert!(body.contains("# HELP ferry_build_info "), "{body}");
    assert!(body.contains(&format!("ferry_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))), "{body}");

    broker.signal(libc::SIGTERM);
    let (status, log) = broker.wait_for_exit();
    assert_eq!(status.code(), Some(0), "exit status {status:?}; log: {log:#?}");
    assert!(log.iter().any(|line| line.contains("broker stopped")), "{log:#?}");
    // The first line an operator reads: every key in effect, defaults and flags merged.
    let in_effect = log.iter().find(|line| line.contains("configuration in effect")).expect("a config line");
    assert!(in_effect.contains(&format!("data_dir={}", data_dir.path().display())), "{in_effect}");
    assert!(in_effect.contains("fsync=always") && in_effect.contains("log.segment_bytes="), "{in_effect}");
    assert!(data_dir.path().join("meta").join("CURRENT").exists(), "the metadata store was created in the data dir");
}

#[test]
fn second_broker_on_the_same_data_dir_fails_with_the_lock_error() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut first = BrokerProcess::start_on(data_dir.path());
    first.wait_until_ready();

    let second = BrokerProcess::start_on(data_dir.path());
    let (status, log) = second.wait_for_exit();
    assert_eq!(status.code(), Some(1), "exit status {status:?}; log: {log:#?}");
    let error_line = log.iter().find(|line| line.starts_with("ferry-broker: error: ")).expect("an error line");
    assert!(error_line.contains("is locked by another broker"), "{error_line}");
    assert!(error_line.contains(&format!("(process {})", first.pid())), "names the holder: {error_line}");

    // SIGINT (Ctrl-C) shuts down as cleanly as SIGTERM, and releases the lock.
    first.signal(libc::SIGINT);
    let (status, log) = first.wait_for_exit();
    assert_eq!(status.code(), Some(0), "exit status {status:?} (signal {:?}); log: {log:#?}", status.signal());
    let mut third = BrokerProcess::start_on(data_dir.path());
    third.wait_until_ready();
    third.signal(libc::SIGTERM);
    let (status, log) = third.wait_for_exit();
    assert_eq!(status.code(), Some(0), "a restart on the same dir succeeds; log: {log:#?}");
}

#[test]
fn unknown_config_key_exits_nonzero_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("broker.toml");
    std::fs::write(&config_path, "data_dir = \"./data\"\n[log]\nretention_msec = 1000\n").expect("write config");
    let broker = BrokerProcess::start(&["--config", config_path.to_str().expect("utf-8 temp path")]);
    let (status, log) = broker.wait_for_exit();
    assert_eq!(status.code(), Some(1), "{log:#?}");
    assert_eq!(log.len(), 1, "one error line: {log:#?}");
    assert!(log[0].starts_with("ferry-broker: error: invalid config file "), "{}", log[0]);
    assert!(log[0].contains("line 3") && log[0].contains("retention_msec"), "names the line and key: {}", log[0]);
    assert!(!dir.path().join("data").exists(), "nothing is created before the config is valid");
}

#[test]
fn out_of_range_flag_value_exits_nonzero_naming_the_key() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&[
        "--data-dir",
        data_dir.path().to_str().expect("utf-8 temp path"),
        "--fsync",
        "interval:3600001",
    ]);
    let (status, log) = broker.wait_for_exit();
    assert_ne!(status.code(), Some(0), "{log:#?}");
    assert!(log.iter().any(|line| line.contains("--fsync") && line.contains("interval:3600001")), "{log:#?}");
}
