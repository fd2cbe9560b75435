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
    let server = tokio::spawn(serve(listener, recorder.handle(), shutdown.clone()));

    let response = exchange(address, "GET /metrics HTTP/1.1\r\nHost: ferry\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("\r\n\r\n# HELP ferry_build_info "), "{response}");
    assert!(response.contains("ferry_build_info{version=\"test\"} 1\n"), "{response}");

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
