use std::io::Write;

use clap::Parser;

use super::*;

fn ops_broker_toml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/broker.toml")
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

/// Applies `change` to the defaults and checks that validation fails naming `key`.
fn check_invalid(key: &str, change: impl FnOnce(&mut Config)) {
    let mut config = Config::default();
    change(&mut config);
    let error = config.validate().expect_err(key);
    match &error {
        ConfigError::OutOfRange { key: named, .. } | ConfigError::Invalid { key: named, .. } => {
            assert_eq!(*named, key, "{error}");
        }
        _ => panic!("unexpected error for {key}: {error:?}"),
    }
    assert!(error.to_string().contains(key), "the message names the key: {error}");
}

#[test]
fn defaults_are_valid_and_match_the_design() {
    let config = Config::default();
    config.validate().expect("defaults validate");
    assert_eq!(config.data_dir, Path::new("./ferry-data"));
    assert_eq!(config.listen.to_string(), "127.0.0.1:7070");
    assert_eq!(config.metrics_listen.to_string(), "127.0.0.1:7071");
    assert_eq!(config.fsync, FsyncPolicy::Always);
    assert_eq!(config.log.segment_bytes, 1 << 30);
    assert_eq!(config.log.retention_bytes, Limit::Unlimited);
    assert_eq!(config.server.frame_bytes_max, ferry_protocol::limits::FRAME_BYTES_MAX);
}

#[test]
fn ops_broker_toml_equals_the_defaults() {
    let from_file = Config::from_file(&ops_broker_toml()).expect("ops/broker.toml parses");
    assert_eq!(from_file, Config::default(), "ops/broker.toml and Config::default() have drifted apart");
}

#[test]
fn ops_broker_toml_lists_every_key() {
    // A key left out of the file would still parse to its default; check that each one is written out.
    let text = std::fs::read_to_string(ops_broker_toml()).expect("read ops/broker.toml");
    let keys = [
        "data_dir",
        "listen",
        "metrics_listen",
        "fsync",
        "log_format",
        "[log]",
        "segment_bytes",
        "segment_ms",
        "retention_ms",
        "retention_bytes",
        "index_interval_bytes",
        "batch_bytes_max",
        "[server]",
        "connections_max",
        "in_flight_requests_max",
        "idle_timeout_ms",
        "request_read_timeout_ms",
        "fetch_wait_ms_max",
        "frame_bytes_max",
        "request_bytes_max",
        "response_bytes_max",
        "partitions_per_topic_max",
        "request_timeout_ms",
        "write_timeout_ms",
        "fetch_bytes_max",
        "topics_max",
        "partitions_max",
        "[producers]",
        "ids_max",
        "entries_max",
        "id_expiration_ms",
        "snapshot_interval_ms",
        "snapshot_bytes",
        "[groups]",
        "groups_max",
        "members_per_group_max",
        "session_timeout_ms_min",
        "session_timeout_ms_max",
        "offsets_retention_ms",
        "offsets_retention_check_interval_ms",
    ];
    for key in keys {
        let written = text.lines().any(|line| line.starts_with(key));
        assert!(written, "ops/broker.toml does not set {key}");
    }
}

#[test]
fn flags_override_the_file_which_overrides_the_defaults() {
    let file = write_config(
        "listen = \"127.0.0.1:9000\"\nfsync = \"never\"\n[log]\nsegment_bytes = 4096\nretention_ms = -1\n",
    );
    let args = Args::parse_from([
        "ferry-broker",
        "--config",
        file.path().to_str().expect("utf-8 temp path"),
        "--listen",
        "127.0.0.1:9100",
        "--fsync",
        "interval:250",
    ]);
    let config = Config::load(&args).expect("load");
    assert_eq!(config.listen.to_string(), "127.0.0.1:9100", "flag beats file");
    assert_eq!(config.fsync, FsyncPolicy::Interval(Duration::from_millis(250)), "flag beats file");
    assert_eq!(config.log.segment_bytes, 4096, "file beats default");
    assert_eq!(config.log.retention_age, Limit::Unlimited, "-1 means forever");
    assert_eq!(config.metrics_listen, Config::default().metrics_listen, "untouched keys keep their defaults");
    assert_eq!(config.server, ServerConfig::default());
    config.validate().expect("valid");
}

#[test]
fn unknown_keys_are_errors_naming_the_key_and_line() {
    let file = write_config("listen = \"127.0.0.1:9000\"\n\n[log]\nsegment_bytez = 4096\n");
    let error = Config::from_file(file.path()).expect_err("unknown key");
    assert!(matches!(error, ConfigError::Parse { line: 4, .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("segment_bytez"), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
}

#[test]
fn values_of_the_wrong_shape_are_parse_errors() {
    for text in
        ["fsync = \"sometimes\"", "listen = \"localhost\"", "[log]\nretention_bytes = -2", "log_format = \"xml\""]
    {
        let error = Config::from_file(write_config(text).path()).expect_err(text);
        assert!(matches!(error, ConfigError::Parse { .. }), "{text}: {error:?}");
    }
}

#[test]
fn a_missing_config_file_is_a_read_error() {
    let error = Config::from_file(Path::new("/nonexistent/ferry.toml")).expect_err("missing file");
    assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
}

#[test]
fn validate_names_the_key_out_of_bounds() {
    check_invalid("data_dir", |config| config.data_dir = PathBuf::new());
    check_invalid("metrics_listen", |config| config.metrics_listen = config.listen);
    check_invalid("fsync", |config| config.fsync = FsyncPolicy::Interval(Duration::ZERO));
    check_invalid("log.segment_bytes", |config| config.log.segment_bytes = 10);
    check_invalid("groups.session_timeout_ms_max", |config| {
        config.groups.session_timeout_max = Duration::from_millis(500)
    });
    check_invalid("groups.offsets_retention_ms", |config| config.groups.offsets_retention = Duration::from_millis(999));
    check_invalid("log.segment_bytes", |config| config.log.segment_bytes = 1 << 32);
    check_invalid("log.segment_ms", |config| config.log.segment_age = Duration::ZERO);
    check_invalid("log.retention_ms", |config| config.log.retention_age = Limit::AtMost(Duration::MAX));
    check_invalid("log.index_interval_bytes", |config| config.log.index_interval_bytes = 0);
    check_invalid("log.batch_bytes_max", |config| config.log.batch_bytes_max = u32::MAX);
    check_invalid("server.connections_max", |config| config.server.connections_max = 0);
    check_invalid("server.in_flight_requests_max", |config| config.server.in_flight_requests_max = 0);
    check_invalid("server.idle_timeout_ms", |config| config.server.idle_timeout = Duration::from_millis(10));
    check_invalid("server.request_read_timeout_ms", |config| config.server.request_read_timeout = Duration::ZERO);
    check_invalid("server.fetch_wait_ms_max", |config| config.server.fetch_wait_max = Duration::from_secs(3600));
    check_invalid("server.frame_bytes_max", |config| config.server.frame_bytes_max = 1024);
    check_invalid("server.request_bytes_max", |config| config.server.request_bytes_max = 1 << 20);
    check_invalid("server.response_bytes_max", |config| config.server.response_bytes_max = 1 << 20);
    check_invalid("server.partitions_per_topic_max", |config| config.server.partitions_per_topic_max = 0);
    check_invalid("producers.ids_max", |config| config.producers.ids_max = 0);
    check_invalid("producers.entries_max", |config| config.producers.entries_max = 0);
    check_invalid("producers.id_expiration_ms", |config| config.producers.id_expiration = Duration::from_millis(999));
    check_invalid("producers.snapshot_interval_ms", |config| config.producers.snapshot_interval = Duration::ZERO);
    check_invalid("producers.snapshot_bytes", |config| config.producers.snapshot_bytes = 1);
    // In bounds on its own, but too small for the default batch size plus the frame overhead.
    check_invalid("server.frame_bytes_max", |config| config.server.frame_bytes_max = 4 * 1024 * 1024);
}

#[test]
fn port_zero_may_be_shared_by_both_listeners() {
    let mut config = Config::default();
    config.listen = "127.0.0.1:0".parse().expect("address");
    config.metrics_listen = config.listen;
    config.validate().expect("two ephemeral ports never collide");
}
