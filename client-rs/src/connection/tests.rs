use super::*;
use ferry_protocol::messages::ApiVersionRange;

#[test]
fn announced_limits_replace_defaults_and_zero_means_the_protocol_limit() {
    let announced = ferry_protocol::messages::BrokerLimits {
        frame_bytes_max: 1 << 20,
        batch_bytes_max: 0,
        batch_records_max: 10,
        fetch_bytes_max: 0,
        fetch_wait_ms_max: 250,
        in_flight_requests_max: 8,
        partitions_per_topic_max: 0,
    };
    let limits = BrokerLimits::from_wire(Some(&announced));
    assert_eq!(limits.frame_bytes_max, 1 << 20);
    assert_eq!(limits.batch_bytes_max, BATCH_BYTES_MAX);
    assert_eq!(limits.batch_records_max, 10);
    assert_eq!(limits.fetch_wait_max, Duration::from_millis(250));
    assert_eq!(limits.in_flight_requests_max, 8);
    assert_eq!(limits.partitions_per_topic_max, PARTITIONS_PER_TOPIC_MAX);
    assert_eq!(BrokerLimits::from_wire(None), BrokerLimits::PROTOCOL);
}

#[test]
fn an_api_is_supported_only_when_the_broker_range_covers_our_version() {
    let range = |api: ApiKey, version_min, version_max| ApiVersionRange {
        api_key: u32::from(api.as_u16()),
        version_min,
        version_max,
    };
    let response = ApiVersionsResponse {
        api_versions: vec![range(ApiKey::ApiVersions, 0, 3), range(ApiKey::Produce, 1, 2), range(ApiKey::Fetch, 0, 0)],
        ..ApiVersionsResponse::default()
    };
    assert_eq!(supported_apis(&response), vec![ApiKey::ApiVersions, ApiKey::Fetch]);
}

#[test]
fn config_validation_names_the_bad_field() {
    let check = |config: ConnectionConfig, field: &str| match config.validate() {
        Err(ClientError::InvalidConfig { field: bad, .. }) => assert_eq!(bad, field),
        other => panic!("expected {field} to be rejected, got {other:?}"),
    };
    check(ConnectionConfig { in_flight_requests_max: 0, ..ConnectionConfig::default() }, "in_flight_requests_max");
    check(ConnectionConfig { request_timeout: Duration::ZERO, ..ConnectionConfig::default() }, "request_timeout");
    check(
        ConnectionConfig { reconnect_backoff_initial: Duration::from_secs(5), ..ConnectionConfig::default() },
        "reconnect_backoff_initial",
    );
    assert!(ConnectionConfig::default().validate().is_ok());
}

#[test]
fn closing_pending_fails_waiters_and_refuses_new_ones() {
    let pending = Pending { state: Mutex::new(PendingState::default()) };
    let (sender, mut receiver) = oneshot::channel();
    pending.insert(7, sender).expect("open");
    pending.close(ClientError::ConnectionLost { addr: "a".into() });
    assert!(matches!(receiver.try_recv(), Ok(Err(ClientError::ConnectionLost { .. }))));
    let (sender, _receiver) = oneshot::channel();
    assert!(matches!(pending.insert(8, sender), Err(ClientError::ConnectionLost { .. })));
}
