use std::time::Duration;

use super::*;
use crate::config::{FsyncPolicy, Limit};
use crate::topic::TopicConfig;

fn open(dir: &Path) -> MetaStore {
    MetaStore::open(&dir.join("meta"), &MetaConfig::default()).expect("open the metadata store")
}

fn spec(name: &str, partitions: u32) -> TopicSpec {
    TopicSpec { name: name.to_owned(), partitions, config: TopicConfig::default() }
}

/// Writes raw bytes under `key` in `cf`, bypassing the encoding, as a disk fault or a bug would.
fn put_raw(store: &MetaStore, cf: &'static str, key: &[u8], value: &[u8]) {
    store.db.put_cf_opt(&store.cf(cf), key, value, &sync_write_options()).expect("raw put");
}

#[test]
fn topics_survive_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TopicConfig {
        retention_age: Some(Limit::Unlimited),
        retention_bytes: Some(Limit::AtMost(1 << 30)),
        segment_bytes: Some(1 << 20),
        segment_age: Some(Duration::from_secs(3600)),
        fsync: Some(FsyncPolicy::Interval(Duration::from_millis(50))),
        batch_bytes_max: Some(65_536),
        dedup_window: Some(Duration::from_secs(600)),
    };
    let store = open(dir.path());
    let orders = store
        .create_topic(
            &TopicSpec { name: "orders".to_owned(), partitions: 3, config: config.clone() },
            1_700_000_000_000,
        )
        .expect("create orders");
    let audit = store.create_topic(&spec("audit", 1), 1_700_000_000_001).expect("create audit");
    assert_eq!(orders.id, 1, "topic ids start at 1");
    assert_eq!(audit.id, 2);
    assert_eq!(orders.config, config);
    store.close().expect("close");

    let store = open(dir.path());
    assert_eq!(store.topic("orders").expect("read"), Some(orders.clone()));
    assert_eq!(store.topics().expect("list"), vec![audit, orders], "topics are listed by name");
    assert_eq!(store.topic("missing").expect("read"), None);
}

#[test]
fn topic_ids_are_never_reused_after_delete_or_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let first = store.create_topic(&spec("events", 1), 0).expect("create");
    assert_eq!(store.delete_topic("events").expect("delete"), Some(first.clone()));
    assert_eq!(store.delete_topic("events").expect("delete again"), None);
    drop(store);

    let store = open(dir.path());
    let second = store.create_topic(&spec("events", 1), 0).expect("create again");
    assert!(second.id > first.id, "a re-created topic gets a new id: {} after {}", second.id, first.id);
}

#[test]
fn creating_a_topic_twice_fails_with_topic_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.create_topic(&spec("orders", 2), 0).expect("create");
    let error = store.create_topic(&spec("orders", 5), 0).expect_err("second create");
    assert!(matches!(&error, MetaError::TopicExists { name } if name == "orders"), "{error:?}");
    assert_eq!(store.topic("orders").expect("read").expect("exists").partitions, 2, "the first record is kept");
}

#[test]
fn topic_state_changes_persist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.create_topic(&spec("orders", 1), 0).expect("create");
    let record = store.set_topic_state("orders", TopicState::Deleting).expect("set state");
    assert_eq!(record.state, TopicState::Deleting);
    let error = store.set_topic_state("missing", TopicState::Deleting).expect_err("unknown topic");
    assert!(matches!(error, MetaError::UnknownTopic { .. }), "{error:?}");
    drop(store);
    assert_eq!(open(dir.path()).topic("orders").expect("read").expect("exists").state, TopicState::Deleting);
}

#[test]
fn broker_identity_is_generated_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(dir.path()).broker_info().clone();
    assert!((1..1 << 31).contains(&first.broker_id), "{}", first.broker_id);
    assert_eq!(first.cluster_id.len(), 32);
    assert!(first.cluster_id.bytes().all(|byte| byte.is_ascii_hexdigit()), "{}", first.cluster_id);
    assert_eq!(first.format_version, FORMAT_VERSION);
    assert_eq!(open(dir.path()).broker_info(), &first, "the identity survives a restart");

    let other = tempfile::tempdir().expect("tempdir");
    assert_ne!(open(other.path()).broker_info().cluster_id, first.cluster_id, "each new store gets its own cluster id");
}

#[test]
fn column_families_created_by_an_earlier_open_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    // A dedup bucket created on demand, as the message-id dedup issue will do.
    store.db.create_cf("dedup_123", &cf_options(&MetaConfig::default())).expect("create dedup cf");
    let dedup = store.db.cf_handle("dedup_123").expect("dedup cf handle");
    store.db.put_cf_opt(&dedup, b"key", b"value", &sync_write_options()).expect("put");
    drop(dedup);
    store.close().expect("close");

    let store = open(dir.path());
    let names = store.cf_names.lock().expect("lock").clone();
    assert!(names.contains("dedup_123"), "{names:?}");
    let dedup = store.db.cf_handle("dedup_123").expect("dedup cf is open after a restart");
    assert_eq!(store.db.get_cf(&dedup, b"key").expect("get").as_deref(), Some(&b"value"[..]));
    drop(dedup);
    store.flush().expect("flush covers the dedup cf too");
}

#[test]
fn every_column_family_exists_after_the_first_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(dir.path()));
    let on_disk = Db::list_cf(&Options::default(), dir.path().join("meta")).expect("list");
    for name in COLUMN_FAMILIES {
        assert!(on_disk.iter().any(|found| found == name), "{name} missing from {on_disk:?}");
    }
}

/// Stores `value` as the record of topic `orders` and checks that reading it, listing topics and reopening
/// all report `Corrupt` for that key instead of panicking.
fn check_corrupt_topic_value(value: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.create_topic(&spec("audit", 1), 0).expect("create");
    put_raw(&store, CF_TOPICS, b"orders", value);

    let is_corrupt_orders =
        |error: &MetaError| matches!(error, MetaError::Corrupt { cf, key, .. } if cf == CF_TOPICS && key == b"orders");
    let error = store.topic("orders").expect_err("read corrupt value");
    assert!(is_corrupt_orders(&error), "{value:?}: {error:?}");
    let error = store.topics().expect_err("list with a corrupt value");
    assert!(is_corrupt_orders(&error), "{value:?}: {error:?}");
    assert_eq!(store.topic("audit").expect("other topics still read").map(|record| record.id), Some(1));
    assert!(error.to_string().contains("orders"), "the message names the key: {error}");
}

#[test]
fn corrupt_topic_values_are_reported_not_panicked_on() {
    check_corrupt_topic_value(b"\xff\xff\xff\xff");
    check_corrupt_topic_value(b"");
    // Version 2: written by a newer broker.
    check_corrupt_topic_value(&values::encode(&values::NextIdValue { version: 2, next: 1 }));
    // Valid version, impossible content: state 0, partitions 0.
    check_corrupt_topic_value(&values::encode(&values::NextIdValue { version: 1, next: 1 }));
    let mut bad_fsync = values::topic_to_value(&TopicRecord {
        name: "orders".to_owned(),
        id: 7,
        partitions: 1,
        config: TopicConfig::default(),
        created_at_ms: 0,
        state: TopicState::Active,
    });
    bad_fsync.config.get_or_insert_default().fsync = Some("sometimes".to_owned());
    check_corrupt_topic_value(&values::encode(&bad_fsync));
}

#[test]
fn a_corrupt_broker_record_fails_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    put_raw(&store, CF_BROKER, KEY_INFO, b"\x08");
    store.close().expect("close");
    let error = MetaStore::open(&dir.path().join("meta"), &MetaConfig::default()).expect_err("open");
    assert!(matches!(&error, MetaError::Corrupt { cf, .. } if cf == CF_BROKER), "{error:?}");
}

#[test]
fn a_store_from_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let mut info =
        read_value::<values::BrokerInfoValue>(&store.db, CF_BROKER, KEY_INFO).expect("read").expect("exists");
    info.format_version = FORMAT_VERSION + 1;
    put_raw(&store, CF_BROKER, KEY_INFO, &values::encode(&info));
    store.close().expect("close");
    let error = MetaStore::open(&dir.path().join("meta"), &MetaConfig::default()).expect_err("open");
    assert!(matches!(error, MetaError::UnsupportedFormat { found, .. } if found == FORMAT_VERSION + 1), "{error:?}");
}

#[test]
fn a_store_with_topics_but_no_identity_is_not_reinitialized() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.create_topic(&spec("orders", 1), 0).expect("create");
    store.db.delete_cf_opt(&store.cf(CF_BROKER), KEY_INFO, &sync_write_options()).expect("delete info");
    store.close().expect("close");
    let error = MetaStore::open(&dir.path().join("meta"), &MetaConfig::default()).expect_err("open");
    let is_missing_info = matches!(&error, MetaError::Corrupt { cf, key, reason: CorruptReason::Missing }
        if cf == CF_BROKER && key == KEY_INFO);
    assert!(is_missing_info, "{error:?}");
}

fn committed(offset: u64, commit_time_ms: u64) -> CommittedOffset {
    CommittedOffset { offset, metadata: format!("m{offset}"), commit_time_ms }
}

#[test]
fn committed_offsets_survive_reopen_and_stay_per_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    // "ab" and "abc" share a prefix as strings; the length prefix keeps their keys apart.
    store.commit_offsets("ab", &[(1, 0, committed(10, 100)), (1, 1, committed(11, 100))]).expect("commit ab");
    store.commit_offsets("abc", &[(2, 0, committed(20, 200))]).expect("commit abc");
    store.commit_offsets("ab", &[(1, 0, committed(12, 300))]).expect("commit ab again");
    store.close().expect("close");

    let store = open(dir.path());
    assert_eq!(store.group_offsets("ab").expect("read"), vec![(1, 0, committed(12, 300)), (1, 1, committed(11, 100))]);
    assert_eq!(store.group_offsets("abc").expect("read"), vec![(2, 0, committed(20, 200))]);
    assert_eq!(store.group_offsets("a").expect("read"), vec![]);
    assert_eq!(store.offset_groups(10).expect("groups"), vec!["ab".to_owned(), "abc".to_owned()]);
    assert_eq!(store.offset_groups(1).expect("groups"), vec!["ab".to_owned()]);

    let expired = store
        .expire_offsets(|group, topic_id, _, offset| group == "ab" && topic_id == 1 && offset.commit_time_ms < 200);
    assert_eq!(expired.expect("expire"), 1);
    assert_eq!(store.group_offsets("ab").expect("read"), vec![(1, 0, committed(12, 300))]);
}

#[test]
fn corrupt_offset_values_are_reported_not_panicked_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    put_raw(&store, CF_CONSUMER_OFFSETS, &offset_key("g", 1, 0), b"\xff\xff");
    assert!(matches!(store.group_offsets("g"), Err(MetaError::Corrupt { .. })));
    put_raw(&store, CF_CONSUMER_OFFSETS, b"\x00", b"");
    assert!(matches!(store.offset_groups(10), Err(MetaError::Corrupt { .. })));
}
