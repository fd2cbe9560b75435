use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferry_client::{Admin, ClientError, Connection, ConnectionConfig};
use ferry_protocol::messages::{
    ApiVersionsResponse, DescribeTopicsRequest, DescribeTopicsResponse, FetchRequest, ListTopicsRequest,
    TopicDescription, supported_api_versions,
};
use ferry_protocol::{ApiKey, Request, Response};

use crate::support::{Action, Peer};

#[tokio::test]
async fn pipelined_responses_answered_out_of_order_reach_their_callers() {
    let peer = Peer::start().await;
    peer.set_hook(|request, _| match request {
        Request::ApiVersions(_) => Action::Model,
        _ => Action::Forward,
    });
    let connection = Connection::new(&peer.addr, ConnectionConfig::default()).expect("valid config");
    let calls: Vec<_> = (0..3)
        .map(|call_idx| {
            let connection = connection.clone();
            tokio::spawn(async move {
                let names = vec![format!("topic-{call_idx}")];
                connection.request(Request::DescribeTopics(DescribeTopicsRequest { names })).await
            })
        })
        .collect();
    // All three arrive before any is answered: they are pipelined on one connection.
    let mut incoming = Vec::new();
    for _ in 0..3 {
        incoming.push(peer.next_forwarded().await);
    }
    for request in incoming.iter().rev() {
        let Request::DescribeTopics(describe) = &request.request else { panic!("unexpected {:?}", request.request) };
        let topic = TopicDescription { name: describe.names[0].clone(), ..TopicDescription::default() };
        request.respond(Response::DescribeTopics(DescribeTopicsResponse { error_code: 0, topics: vec![topic] })).await;
    }
    for (call_idx, call) in calls.into_iter().enumerate() {
        let response = call.await.expect("task").expect("answered");
        let Response::DescribeTopics(response) = response else { panic!("unexpected {response:?}") };
        assert_eq!(response.topics[0].name, format!("topic-{call_idx}"));
    }
    assert_eq!(peer.state().n_connections, 1);
}

#[tokio::test]
async fn api_versions_is_the_first_request_on_every_connection_and_a_lost_connection_reconnects() {
    let peer = Peer::start().await;
    let list_topics_seen = Arc::new(AtomicUsize::new(0));
    let seen = list_topics_seen.clone();
    peer.set_hook(move |request, _| match request {
        Request::ListTopics(_) if seen.fetch_add(1, Ordering::SeqCst) == 0 => Action::Close,
        _ => Action::Model,
    });
    peer.create_topic("orders", 2);
    let admin = Admin::new(&peer.addr, ConnectionConfig::default()).expect("valid config");
    let error = admin.list_topics().await.expect_err("the peer closes the connection");
    assert!(matches!(error, ClientError::ConnectionLost { .. }), "{error:?}");
    assert!(error.is_retriable());
    let topics = admin.list_topics().await.expect("reconnected");
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].partition_count, 2);
    let state = peer.state();
    assert_eq!(state.n_connections, 2);
    for connection_idx in 0..2 {
        let first = state.log.iter().find(|logged| logged.connection_idx == connection_idx).expect("a request");
        assert_eq!(first.request.api_key(), ApiKey::ApiVersions, "connection {connection_idx}");
    }
}

#[tokio::test]
async fn every_pending_request_fails_with_connection_lost_when_the_peer_closes() {
    let peer = Peer::start().await;
    peer.set_hook(|request, _| match request {
        Request::ApiVersions(_) => Action::Model,
        _ => Action::Forward,
    });
    let connection = Connection::new(&peer.addr, ConnectionConfig::default()).expect("valid config");
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let connection = connection.clone();
            tokio::spawn(async move { connection.request(Request::ListTopics(ListTopicsRequest {})).await })
        })
        .collect();
    let first = peer.next_forwarded().await;
    let _second = peer.next_forwarded().await;
    first.conn.close();
    for call in calls {
        let error = call.await.expect("task").expect_err("connection closed");
        assert!(matches!(error, ClientError::ConnectionLost { .. }), "{error:?}");
    }
}

#[tokio::test]
async fn a_request_without_answer_times_out_and_the_next_one_uses_a_new_connection() {
    let peer = Peer::start().await;
    let ignored = Arc::new(AtomicUsize::new(0));
    let seen = ignored.clone();
    peer.set_hook(move |request, _| match request {
        Request::ListTopics(_) if seen.fetch_add(1, Ordering::SeqCst) == 0 => Action::Ignore,
        _ => Action::Model,
    });
    let config = ConnectionConfig { request_timeout: Duration::from_millis(300), ..ConnectionConfig::default() };
    let connection = Connection::new(&peer.addr, config).expect("valid config");
    let started = tokio::time::Instant::now();
    let error = connection.request(Request::ListTopics(ListTopicsRequest {})).await.expect_err("never answered");
    assert!(
        matches!(error, ClientError::RequestTimeout { timeout } if timeout == Duration::from_millis(300)),
        "{error:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300) && started.elapsed() < Duration::from_secs(10));
    connection.request(Request::ListTopics(ListTopicsRequest {})).await.expect("answered on a new connection");
    assert_eq!(peer.state().n_connections, 2);
}

#[tokio::test]
async fn an_api_the_broker_does_not_speak_fails_without_being_sent() {
    let peer = Peer::start().await;
    peer.set_hook(|request, _| match request {
        Request::ApiVersions(_) => {
            let api_versions = supported_api_versions()
                .into_iter()
                .filter(|range| range.api_key != u32::from(ApiKey::Fetch.as_u16()))
                .collect();
            Action::Respond(Response::ApiVersions(ApiVersionsResponse {
                api_versions,
                ..ApiVersionsResponse::default()
            }))
        }
        _ => Action::Model,
    });
    let connection = Connection::new(&peer.addr, ConnectionConfig::default()).expect("valid config");
    let error = connection.request(Request::Fetch(FetchRequest::default())).await.expect_err("unsupported");
    assert!(matches!(error, ClientError::UnsupportedApi { api: ApiKey::Fetch, .. }), "{error:?}");
    assert!(!error.is_retriable());
    assert_eq!(peer.count(ApiKey::Fetch), 0);
    connection.request(Request::ListTopics(ListTopicsRequest {})).await.expect("other apis work");
}

#[tokio::test]
async fn an_unreachable_broker_gives_a_retriable_connect_error() {
    // Bind and drop a listener so the port is very likely closed.
    let addr = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    let connection = Connection::new(&addr, ConnectionConfig::default()).expect("valid config");
    let error = connection.request(Request::ListTopics(ListTopicsRequest {})).await.expect_err("nobody listens");
    assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
    assert!(error.is_retriable());
}

/// A broker that is shutting down resets connections still in its listener's backlog: the handshake then fails
/// with a retriable lost connection (a producer retries it), not a protocol error (which would fail records).
#[tokio::test]
async fn a_connection_reset_during_the_handshake_is_a_retriable_lost_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    let resetter = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        // Wait for the ApiVersions request, then close with a reset (linger 0), as a dropped backlog does.
        let mut buf = [0u8; 64];
        let _ = stream.readable().await;
        let _ = stream.try_read(&mut buf);
        stream.set_zero_linger().expect("linger");
        drop(stream);
    });
    let connection = Connection::new(&addr, ConnectionConfig::default()).expect("valid config");
    let error = connection.limits().await.expect_err("reset");
    resetter.await.expect("task");
    assert!(matches!(error, ClientError::ConnectionLost { .. }), "{error:?}");
    assert!(error.is_retriable());
    connection.close().await;
}
