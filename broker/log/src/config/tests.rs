use std::time::Duration;

use super::*;

fn check_parse(input: &str, expected: Option<FsyncPolicy>) {
    let parsed = input.parse::<FsyncPolicy>();
    match expected {
        Some(policy) => {
            assert_eq!(parsed, Ok(policy), "{input}");
            assert_eq!(policy.to_string().parse::<FsyncPolicy>(), Ok(policy), "round trip of {input}");
        }
        None => {
            let error = parsed.expect_err(input);
            assert_eq!(error.input, input);
            assert!(error.to_string().contains("interval:<ms>"), "error names the syntax: {error}");
        }
    }
}

#[test]
fn fsync_policy_parses_the_documented_syntax() {
    check_parse("always", Some(FsyncPolicy::Always));
    check_parse("never", Some(FsyncPolicy::Never));
    check_parse("interval:100", Some(FsyncPolicy::Interval(Duration::from_millis(100))));
    check_parse("interval:3600000", Some(FsyncPolicy::Interval(Duration::from_secs(3600))));
    for bad in ["", "Always", "interval:", "interval:0", "interval:-5", "interval:3600001", "interval:1ms", "sometimes"]
    {
        check_parse(bad, None);
    }
}

#[test]
fn validate_rejects_out_of_bounds_values() {
    assert!(LogConfig::default().validate().is_ok());
    let cases: Vec<(&str, LogConfig)> = vec![
        ("segment_bytes", LogConfig { segment_bytes: SEGMENT_BYTES_MIN - 1, ..LogConfig::default() }),
        ("segment_bytes", LogConfig { segment_bytes: SEGMENT_BYTES_MAX + 1, ..LogConfig::default() }),
        ("segment_age", LogConfig { segment_age: Duration::ZERO, ..LogConfig::default() }),
        ("index_interval_bytes", LogConfig { index_interval_bytes: 0, ..LogConfig::default() }),
        ("append_queue_depth", LogConfig { append_queue_depth: 0, ..LogConfig::default() }),
        ("group_bytes_max", LogConfig { group_bytes_max: 0, ..LogConfig::default() }),
        ("fsync", LogConfig { fsync: FsyncPolicy::Interval(Duration::ZERO), ..LogConfig::default() }),
    ];
    for (expected_field, config) in cases {
        match config.validate() {
            Err(LogError::InvalidConfig { field, .. }) => assert_eq!(field, expected_field),
            other => panic!("{expected_field}: expected InvalidConfig, got {other:?}"),
        }
    }
}
