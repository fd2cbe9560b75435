//! Helpers for the server tests: an in-process broker on ephemeral ports, the real binary's client address,
//! raw frames over TCP, and reading metric values.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use ferry_broker::{Broker, Config};
use ferry_client::{Admin, ConnectionConfig};
use ferry_protocol::{Frame, FrameCodec};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use crate::support::{BrokerProcess, STEP_TIMEOUT, http_get};

/// A config for a broker in `data_dir` with ephemeral ports for clients and metrics.
pub fn config_for(data_dir: &Path) -> Config {
    Config {
        data_dir: data_dir.to_owned(),
        listen: "127.0.0.1:0".parse().expect("address"),
        metrics_listen: "127.0.0.1:0".parse().expect("address"),
        ..Config::default()
    }
}

/// A broker started in this process on a temporary data directory (removed when dropped).
pub struct TestBroker {
    broker: Option<Broker>,
    /// The client address, `HOST:PORT`.
    pub addr: String,
    /// The `/metrics` address.
    pub metrics: SocketAddr,
    config: Config,
    /// Kept last: the directory outlives the broker.
    pub data_dir: tempfile::TempDir,
}

impl TestBroker {
    /// Starts a broker with the default config on ephemeral ports.
    pub async fn start() -> TestBroker {
        TestBroker::start_with(|_| {}).await
    }

    /// Starts a broker with the default config changed by `change`.
    pub async fn start_with(change: impl FnOnce(&mut Config)) -> TestBroker {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let mut config = config_for(data_dir.path());
        change(&mut config);
        let broker = Broker::open(config.clone()).await.expect("broker starts");
        TestBroker {
            addr: broker.address().to_string(),
            metrics: broker.metrics_address(),
            broker: Some(broker),
            config,
            data_dir,
        }
    }

    /// The running broker.
    pub fn broker(&self) -> &Broker {
        self.broker.as_ref().expect("the broker is running")
    }

    /// Shuts the broker down cleanly and starts it again on the same data directory (new ephemeral ports).
    pub async fn restart(&mut self) {
        let broker = self.broker.take().expect("the broker is running");
        broker.shutdown().await.expect("clean shutdown");
        let broker = Broker::open(self.config.clone()).await.expect("broker restarts");
        self.addr = broker.address().to_string();
        self.metrics = broker.metrics_address();
        self.broker = Some(broker);
    }

    /// Shuts the broker down cleanly.
    pub async fn stop(mut self) {
        let broker = self.broker.take().expect("the broker is running");
        broker.shutdown().await.expect("clean shutdown");
    }

    /// An admin client for this broker.
    pub fn admin(&self) -> Admin {
        Admin::new(self.addr.clone(), ConnectionConfig::default()).expect("admin")
    }

    /// Creates a topic through the client.
    pub async fn create_topic(&self, name: &str, partitions: u32, config: &[(&str, &str)]) {
        let admin = self.admin();
        let config = config.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect();
        admin.create_topic(name, partitions, config).await.expect("create topic");
        admin.close().await;
    }

    /// The metrics exposition text.
    pub async fn scrape(&self) -> String {
        scrape(self.metrics).await
    }
}

/// `GET /metrics` on a blocking thread; returns the body.
pub async fn scrape(address: SocketAddr) -> String {
    let (status_line, body) =
        tokio::task::spawn_blocking(move || http_get(address, "/metrics")).await.expect("scrape thread");
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    body
}

/// `GET path` on a blocking thread; returns the status line and the body.
pub async fn http(address: SocketAddr, path: &str) -> (String, String) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || http_get(address, &path)).await.expect("http thread")
}

/// The value of the series named exactly `series` (name and labels as exported, e.g.
/// `ferry_requests_total{api="produce",result="ok"}`), or `None` if absent.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The client address of a `ferry-broker` process, once it is ready (from its `listening on ADDR` line).
pub fn client_address(broker: &mut BrokerProcess) -> SocketAddr {
    addresses(broker).0
}

/// The client and `/metrics` addresses of a `ferry-broker` process, once it is ready.
pub fn addresses(broker: &mut BrokerProcess) -> (SocketAddr, SocketAddr) {
    let metrics = broker.wait_until_ready();
    (listening_address(&broker.log), metrics)
}

/// The client address in a started broker's log (its `listening on ADDR` line).
pub fn listening_address(log: &[String]) -> SocketAddr {
    let line = log
        .iter()
        .find(|line| line.contains("listening on ") && !line.contains("metrics listening on "))
        .unwrap_or_else(|| panic!("no `listening on` line; log: {log:#?}"))
        .clone();
    let address = line.rsplit("listening on ").next().expect("rsplit yields a part").trim();
    address.parse().unwrap_or_else(|error| panic!("bad address in {line:?}: {error}"))
}

/// Reads one frame from a raw connection; `None` when the broker closed it (end of stream or reset) first.
pub async fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame> {
    let mut codec = FrameCodec::new();
    loop {
        if let Some(frame) = codec.decode(buf).expect("the broker sends valid frames") {
            return Some(frame);
        }
        let read = tokio::time::timeout(STEP_TIMEOUT, stream.read_buf(buf)).await.expect("a frame or a close in time");
        match read {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Waits until the broker closes a raw connection, failing if it sends anything more.
pub async fn expect_closed(stream: &mut TcpStream) {
    let mut rest = [0u8; 64];
    let read = tokio::time::timeout(STEP_TIMEOUT, stream.read(&mut rest)).await.expect("the broker closes in time");
    match read {
        Ok(0) | Err(_) => {}
        Ok(n_read) => panic!("expected the connection to close, got {n_read} more bytes"),
    }
}

/// Polls `condition` every 20 ms until it holds, failing after [`STEP_TIMEOUT`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the real `ferry-broker` binary on `data_dir` (blocking, so from a multi-threaded runtime) and returns it
/// with its client address, once it listens.
pub fn start_binary_on(data_dir: &Path) -> (BrokerProcess, SocketAddr) {
    tokio::task::block_in_place(|| {
        let mut broker = BrokerProcess::start_on(data_dir);
        let address = client_address(&mut broker);
        (broker, address)
    })
}
