use std::collections::BTreeMap;

use ferry_client::{Admin, ClientError, ConnectionConfig};
use ferry_protocol::ErrorCode;

use crate::support::{Peer, append_values};

#[tokio::test]
async fn topics_are_created_listed_described_and_deleted() {
    let peer = Peer::start().await;
    let admin = Admin::new(&peer.addr, ConnectionConfig::default()).expect("valid config");
    let config: BTreeMap<String, String> = [("retention.ms".to_owned(), "1000".to_owned())].into_iter().collect();
    admin.create_topic("orders", 3, config).await.expect("created");
    admin.create_topic("audit", 1, BTreeMap::new()).await.expect("created");
    let error = admin.create_topic("orders", 3, BTreeMap::new()).await.expect_err("exists");
    assert!(matches!(error, ClientError::Broker { code: ErrorCode::TopicAlreadyExists, .. }), "{error:?}");
    assert!(!error.is_retriable());
    let names: Vec<String> = admin.list_topics().await.expect("listed").into_iter().map(|topic| topic.name).collect();
    assert_eq!(names, vec!["audit", "orders"]);
    append_values(&peer, "orders", 1, &["a", "b"]);
    let topic = admin.describe_topic("orders").await.expect("described");
    assert_eq!(topic.partitions.len(), 3);
    assert_eq!((topic.partitions[1].start_offset, topic.partitions[1].end_offset), (0, 2));
    assert!(!topic.partitions[1].damaged);
    assert_eq!(topic.partitions[1].error, None);
    admin.delete_topic("orders").await.expect("deleted");
    let error = admin.describe_topic("orders").await.expect_err("gone");
    assert_eq!(error.error_code(), Some(ErrorCode::UnknownTopicOrPartition));
    admin.close().await;
}
