use super::*;

/// Renders what `record` records into a fresh recorder that has every metric described.
fn check_render(record: impl FnOnce()) -> String {
    let recorder = build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe();
        record();
    });
    handle.render()
}

#[test]
fn described_metrics_render_with_help_type_and_samples() {
    let text = check_render(|| {
        metrics::counter!(REQUESTS_TOTAL, LABEL_API => "produce", LABEL_RESULT => "ok").increment(3);
        metrics::histogram!(REQUEST_DURATION_SECONDS, LABEL_API => "produce").record(0.002);
    });
    assert!(
        text.contains("# HELP ferry_requests_total Requests handled, by api and result (ok or the error code).\n"),
        "{text}"
    );
    assert!(text.contains("# TYPE ferry_requests_total counter\n"), "{text}");
    assert!(text.contains("ferry_requests_total{api=\"produce\",result=\"ok\"} 3\n"), "{text}");
    assert!(text.contains("# TYPE ferry_request_duration_seconds histogram\n"), "durations are histograms: {text}");
    assert!(
        text.contains("ferry_request_duration_seconds_bucket{api=\"produce\",le=\"0.0025\"} 1\n"),
        "durations use DURATION_BUCKETS_SECONDS: {text}"
    );
}

#[test]
fn the_partition_logs_metrics_are_described_too() {
    let text = check_render(|| {
        metrics::counter!(ferry_log::metrics::FSYNC_ERRORS_TOTAL).increment(1);
        metrics::histogram!(ferry_log::metrics::FSYNC_DURATION_SECONDS).record(0.0003);
    });
    assert!(text.contains("# HELP ferry_log_fsync_errors_total "), "{text}");
    assert!(text.contains("ferry_log_fsync_duration_seconds_bucket{le=\"0.0005\"} 1\n"), "{text}");
}

#[test]
fn duration_buckets_are_increasing() {
    assert!(DURATION_BUCKETS_SECONDS.windows(2).all(|pair| pair[0] < pair[1]), "{DURATION_BUCKETS_SECONDS:?}");
}

/// Sends `request` to the endpoint and returns the whole response.
async fn exchange(address: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read response");
    response
}

#[tokio::test]
async fn endpoint_serves_metrics_and_rejects_other_paths() {
    let recorder = build_recorder();
    metrics::with_local_recorder(&recorder, || {
        describe();
        metrics::gauge!(BUILD_INFO, LABEL_VERSION => "test").set(1.0);
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address");
    let shutdown = CancellationToken::new();
    let readiness = Arc::new(Readiness::new());
    let server = tokio::spawn(serve(listener, recorder.handle(), Arc::clone(&readiness), shutdown.clone()));

    let response = exchange(address, "GET /metrics HTTP/1.1\r\nHost: ferry\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("\r\n\r\n# HELP ferry_build_info "), "{response}");
    assert!(response.contains("ferry_build_info{version=\"test\"} 1\n"), "{response}");

    let response = exchange(address, "GET /health HTTP/1.1\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n") && response.ends_with("\r\n\r\nok\n"), "{response}");
    let response = exchange(address, "GET /ready HTTP/1.1\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nnot ready: opening the metadata store\n"), "{response}");
    readiness.recovering();
    let response = exchange(address, "GET /ready HTTP/1.1\r\n\r\n").await;
    assert!(response.ends_with("\r\n\r\nnot ready: recovering\n"), "{response}");

    let response = exchange(address, "GET /other HTTP/1.1\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 404 Not Found\r\n"), "{response}");
    let response = exchange(address, "POST /metrics HTTP/1.1\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{response}");
    // Exactly the limit and no end of head: the endpoint reads it all (so closing sends no reset) and refuses it.
    let oversized = format!("GET /metrics HTTP/1.1\r\nX-Padding: {}", "x".repeat(SCRAPE_REQUEST_BYTES_MAX - 34));
    assert_eq!(oversized.len(), SCRAPE_REQUEST_BYTES_MAX);
    let response = exchange(address, &oversized).await;
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("serve stops on shutdown").expect("no panic");
}

/// Collects the names and kinds of the metrics `describe` describes; records nothing.
#[derive(Default)]
struct Described(std::sync::Mutex<std::collections::BTreeMap<String, &'static str>>);

impl metrics::Recorder for Described {
    fn describe_counter(&self, key: metrics::KeyName, _: Option<Unit>, _: metrics::SharedString) {
        self.0.lock().expect("lock").insert(key.as_str().to_owned(), "counter");
    }
    fn describe_gauge(&self, key: metrics::KeyName, _: Option<Unit>, _: metrics::SharedString) {
        self.0.lock().expect("lock").insert(key.as_str().to_owned(), "gauge");
    }
    fn describe_histogram(&self, key: metrics::KeyName, _: Option<Unit>, _: metrics::SharedString) {
        self.0.lock().expect("lock").insert(key.as_str().to_owned(), "histogram");
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// Every metric the broker exports (described by [`describe`]), with its kind.
fn exported() -> std::collections::BTreeMap<String, &'static str> {
    let described = Described::default();
    metrics::with_local_recorder(&described, describe);
    described.0.into_inner().expect("lock")
}

/// The `ferry_*` metric names a PromQL expression uses, with the histogram series suffixes taken off.
fn ferry_metrics_in(expr: &str, exported: &std::collections::BTreeMap<String, &'static str>) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut at = 0;
    while let Some(found) = expr[at..].find("ferry_") {
        let start = at + found;
        let end = start + bytes[start..].iter().take_while(|byte| byte.is_ascii_lowercase() || **byte == b'_').count();
        let name = &expr[start..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|base| exported.get(*base) == Some(&"histogram")))
            .unwrap_or(name);
        names.push(base.to_owned());
        at = end;
    }
    names
}

fn ops_file(path: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops").join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The Grafana dashboard is well-formed and every query names only metrics the broker exports, so a renamed metric
/// cannot leave an empty panel behind.
#[test]
fn every_dashboard_panel_queries_exported_metrics() {
    let exported = exported();
    let dashboard: serde_json::Value = serde_json::from_str(&ops_file("grafana/ferry.json")).expect("valid JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string(), "a dashboard has a title and uid");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut used = std::collections::BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(panel["gridPos"]["w"].is_u64() && panel["gridPos"]["h"].is_u64(), "{title}: gridPos");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{title}: a target without expr"));
            let names = ferry_metrics_in(expr, &exported);
            assert!(!names.is_empty(), "{title}: {expr} queries no ferry metric");
            for name in names {
                assert!(exported.contains_key(&name), "{title}: {name} is not exported by the broker");
                used.insert(name);
            }
        }
    }
    // The families operators look at first are on the dashboard.
    for needed in [
        PRODUCE_RECORDS_TOTAL,
        REQUEST_DURATION_SECONDS,
        ferry_log::metrics::FSYNC_DURATION_SECONDS,
        GROUP_LAG_SECONDS,
        DUPLICATES_DROPPED_TOTAL,
        PRODUCER_IDS_ACTIVE,
    ] {
        assert!(used.contains(needed), "the dashboard has no panel for {needed}");
    }
}

/// Every alert rule names only metrics the broker exports (or `up` and node_exporter's filesystem metrics).
#[test]
fn every_alert_rule_queries_exported_metrics() {
    let exported = exported();
    let rules = ops_file("prometheus/alerts.yml");
    let exprs: Vec<&str> =
        rules.lines().filter_map(|line| line.trim_start().strip_prefix("expr:")).map(str::trim).collect();
    assert!(exprs.len() >= 8, "{} alert expressions", exprs.len());
    for expr in exprs {
        for name in ferry_metrics_in(expr, &exported) {
            assert!(exported.contains_key(&name), "alert expression {expr:?}: {name} is not exported");
        }
    }
}
