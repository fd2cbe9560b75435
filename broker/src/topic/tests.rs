use std::collections::BTreeMap;

use super::*;

fn check_error(pairs: &[&str], expected: TopicConfigError) {
    let error = TopicConfig::from_pairs(pairs.iter().copied()).expect_err("invalid");
    assert_eq!(error, expected, "{pairs:?}");
}

#[test]
fn every_key_parses_and_prints_back() {
    let pairs = [
        "retention.ms=1000",
        "retention.bytes=-1",
        "segment.bytes=1048576",
        "segment.ms=60000",
        "fsync=interval:20",
        "max.message.bytes=65536",
        "dedup.window.ms=3600000",
    ];
    let config = TopicConfig::from_pairs(pairs).expect("parse");
    assert_eq!(config.retention_age, Some(Limit::AtMost(Duration::from_secs(1))));
    assert_eq!(config.retention_bytes, Some(Limit::Unlimited));
    assert_eq!(config.segment_bytes, Some(1 << 20));
    assert_eq!(config.segment_age, Some(Duration::from_secs(60)));
    assert_eq!(config.fsync, Some(FsyncPolicy::Interval(Duration::from_millis(20))));
    assert_eq!(config.batch_bytes_max, Some(65_536));
    assert_eq!(config.dedup_window(), Some(Duration::from_secs(3600)));

    let printed: Vec<String> = config.to_pairs().into_iter().map(|(key, value)| format!("{key}={value}")).collect();
    assert_eq!(printed, pairs, "to_pairs lists keys in KEYS order, in the form set parses");
    let map: BTreeMap<String, String> =
        config.to_pairs().into_iter().map(|(key, value)| (key.to_owned(), value)).collect();
    assert_eq!(TopicConfig::from_map(&map).expect("from map"), config);
}

#[test]
fn no_overrides_is_the_default() {
    assert_eq!(TopicConfig::from_pairs([]).expect("empty"), TopicConfig::default());
    assert!(TopicConfig::default().to_pairs().is_empty());
}

#[test]
fn bad_overrides_get_clear_errors() {
    check_error(&["retention.ms"], TopicConfigError::NotAPair { pair: "retention.ms".to_owned() });
    check_error(&["retention.msec=5"], TopicConfigError::UnknownKey { key: "retention.msec".to_owned() });
    check_error(&["segment.ms=5", "segment.ms=6"], TopicConfigError::DuplicateKey { key: "segment.ms" });
    check_error(
        &["segment.bytes=1GB"],
        TopicConfigError::InvalidValue {
            key: "segment.bytes",
            value: "1GB".to_owned(),
            expected: "a non-negative integer",
        },
    );
    check_error(
        &["retention.bytes=-2"],
        TopicConfigError::InvalidValue {
            key: "retention.bytes",
            value: "-2".to_owned(),
            expected: "-1 (no limit) or a non-negative integer",
        },
    );
    check_error(
        &["segment.bytes=10"],
        TopicConfigError::OutOfRange { key: "segment.bytes", value: 10, bounds: bounds::SEGMENT_BYTES },
    );
    check_error(
        &["max.message.bytes=4294967295"],
        TopicConfigError::OutOfRange {
            key: "max.message.bytes",
            value: u64::from(u32::MAX),
            bounds: bounds::BATCH_BYTES,
        },
    );
    let error = TopicConfig::from_pairs(["fsync=sometimes"]).expect_err("bad fsync");
    assert!(matches!(error, TopicConfigError::InvalidValue { key: "fsync", .. }), "{error:?}");
}

#[test]
fn unknown_key_message_lists_the_known_keys() {
    let message = TopicConfigError::UnknownKey { key: "colour".to_owned() }.to_string();
    for key in TopicConfig::KEYS {
        assert!(message.contains(key), "{message}");
    }
}

#[test]
fn a_dedup_window_of_zero_is_off_and_more_than_a_day_is_refused() {
    let off = TopicConfig::from_pairs(["dedup.window.ms=0"]).expect("parse");
    assert_eq!((off.dedup_window, off.dedup_window()), (Some(Duration::ZERO), None));
    assert_eq!(TopicConfig::default().dedup_window(), None);
    check_error(
        &["dedup.window.ms=86400001"],
        TopicConfigError::OutOfRange {
            key: "dedup.window.ms",
            value: 86_400_001,
            bounds: crate::config::bounds::DEDUP_WINDOW_MS,
        },
    );
}
