use super::worker::FlushTracker;
use super::*;

fn check_invalid(config: ProducerConfig, field: &str) {
    match config.validate() {
        Err(ClientError::InvalidConfig { field: bad, .. }) => assert_eq!(bad, field),
        other => panic!("expected {field} to be rejected, got {other:?}"),
    }
}

#[test]
fn defaults_are_kafkas_and_valid() {
    let config = ProducerConfig::default();
    assert_eq!(config.acks, Acks::All);
    assert_eq!(config.delivery_timeout, Duration::from_secs(120));
    assert_eq!(config.buffer_bytes_max, 32 * 1024 * 1024);
    assert_eq!(config.max_in_flight_per_partition, 5);
    assert!(config.idempotence, "idempotence is on by default, as in Kafka 3.0+");
    assert_eq!(config.linger, Duration::from_millis(5));
    assert!(config.validate().is_ok());
}

#[test]
fn out_of_range_settings_are_rejected_by_name() {
    check_invalid(
        ProducerConfig { max_in_flight_per_partition: 6, ..ProducerConfig::default() },
        "max_in_flight_per_partition",
    );
    check_invalid(
        ProducerConfig { max_in_flight_per_partition: 0, ..ProducerConfig::default() },
        "max_in_flight_per_partition",
    );
    check_invalid(ProducerConfig { batch_bytes_max: 10, ..ProducerConfig::default() }, "batch_bytes_max");
    check_invalid(ProducerConfig { buffer_bytes_max: 1000, ..ProducerConfig::default() }, "buffer_bytes_max");
    check_invalid(ProducerConfig { delivery_timeout: Duration::ZERO, ..ProducerConfig::default() }, "delivery_timeout");
    assert!(ProducerConfig { max_in_flight_per_partition: 5, ..ProducerConfig::default() }.validate().is_ok());
    check_invalid(ProducerConfig { acks: Acks::None, ..ProducerConfig::default() }, "idempotence");
    assert!(ProducerConfig { acks: Acks::None, idempotence: false, ..ProducerConfig::default() }.validate().is_ok());
}

#[test]
fn a_record_costs_its_bytes_plus_overhead() {
    let record = ProducerRecord::new("t", vec![0u8; 100]).with_key("k").with_header("h", "v");
    assert_eq!(record.buffer_bytes(), RECORD_OVERHEAD_BYTES + 100 + 1 + (1 + 1 + 20));
}

#[test]
fn flush_waits_for_records_accepted_before_it_only() {
    let mut tracker = FlushTracker::default();
    let first = tracker.accept();
    let second = tracker.accept();
    let (waiter, mut flushed) = oneshot::channel();
    tracker.flush(waiter);
    let after_flush = tracker.accept();
    tracker.complete(first);
    assert!(flushed.try_recv().is_err(), "one record of the flush is still outstanding");
    tracker.complete(second);
    assert!(flushed.try_recv().is_ok(), "everything before the flush completed");
    // A flush with nothing outstanding before it completes at once, even with later records pending.
    let (waiter, mut flushed) = oneshot::channel();
    tracker.flush(waiter);
    assert!(flushed.try_recv().is_err(), "the record accepted after the first flush is outstanding");
    tracker.complete(after_flush);
    assert!(flushed.try_recv().is_ok());
    let (waiter, mut flushed) = oneshot::channel();
    tracker.flush(waiter);
    assert!(flushed.try_recv().is_ok());
}
