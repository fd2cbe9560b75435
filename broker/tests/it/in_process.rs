//! Tests that start brokers in this process with `ferry_broker::Broker::open`.

use ferry_broker::topic::{TopicConfig, TopicSpec};
use ferry_broker::{Broker, Config, StartupError};

use crate::support::http_get;

fn config_for(data_dir: &std::path::Path) -> Config {
    Config {
        data_dir: data_dir.to_owned(),
        listen: "127.0.0.1:0".parse().expect("address"),
        metrics_listen: "127.0.0.1:0".parse().expect("address"),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_locks_the_data_dir_until_shutdown_and_topics_survive_a_restart() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::open(config_for(data_dir.path())).await.expect("open");

    let metrics_address = broker.metrics_address();
    let (status_line, body) =
        tokio::task::spawn_blocking(move || http_get(metrics_address, "/metrics")).await.expect("scrape thread");
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    assert!(body.contains("# HELP ferry_build_info "), "{body}");

    let error = Broker::open(config_for(data_dir.path())).await.expect_err("second open on the same dir");
    assert!(
        matches!(error, StartupError::DataDirLocked { holder: Some(pid), .. } if pid == std::process::id()),
        "{error:?}"
    );

    let meta = std::sync::Arc::clone(broker.meta());
    let spec = TopicSpec { name: "orders".to_owned(), partitions: 3, config: TopicConfig::default() };
    let created =
        tokio::task::spawn_blocking(move || meta.create_topic(&spec, 0)).await.expect("task").expect("create");
    broker.shutdown().await.expect("shutdown");

    let broker = Broker::open(config_for(data_dir.path())).await.expect("reopen after shutdown");
    let meta = std::sync::Arc::clone(broker.meta());
    let found = tokio::task::spawn_blocking(move || meta.topic("orders")).await.expect("task").expect("read");
    assert_eq!(found, Some(created));
    broker.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_rejects_an_invalid_config() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_for(data_dir.path());
    config.server.connections_max = 0;
    let error = Broker::open(config).await.expect_err("invalid config");
    assert!(error.to_string().contains("invalid configuration"), "{error}");
    assert!(matches!(error, StartupError::Config(_)), "{error:?}");
}
