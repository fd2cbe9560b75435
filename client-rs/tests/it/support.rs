//! A scripted peer: a TCP listener on 127.0.0.1:0 that decodes real frames with `FrameCodec` and answers with real
//! `Response`s, from a tiny in-memory broker model (a Vec of batches per partition, assigning offsets) or from a
//! test's hook. Tests wait for what the peer saw through a watch channel, never by sleeping.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_protocol::batch::split_batches;
use ferry_protocol::messages::{
    AbortTxnResponse, ApiVersionsResponse, BrokerLimits, CreateTopicResult, CreateTopicsResponse, DeleteTopicResult,
    DeleteTopicsResponse, DescribeTopicsResponse, EndTxnResponse, FetchPartitionResponse, FetchRequest, FetchResponse,
    FetchTopicResponse, InitProducerIdResponse, ListOffsetsPartitionResponse, ListOffsetsResponse,
    ListOffsetsTopicResponse, ListTopicsResponse, ListTxnsResponse, ListedTopic, OffsetSpec, PartitionDescription,
    ProducePartitionResponse, ProduceRequest, ProduceResponse, ProduceTopicResponse, TopicDescription,
    TxnOffsetCommitResponse, TxnProduceResponse, error_code_to_wire, supported_api_versions,
};
use ferry_protocol::{ApiKey, BatchBuilder, ErrorCode, FrameCodec, FrameHeader, NewRecord, Request, Response};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// What the peer does with a request.
pub enum Action {
    /// Answer from the model (the default).
    Model,
    /// Answer with this response.
    Respond(Response),
    /// Never answer.
    Ignore,
    /// Close the connection without answering.
    Close,
    /// Hand the request to the test (see [`Peer::next_forwarded`]).
    Forward,
}

/// Decides what to do with each request (ApiVersions included); may change the model.
pub type Hook = Box<dyn FnMut(&Request, &mut Model) -> Action + Send>;

/// A request handed to the test, with the means to answer it.
pub struct Incoming {
    pub header: FrameHeader,
    pub request: Request,
    pub conn: ConnHandle,
}

/// One connection of the peer, as seen by a test.
#[derive(Clone)]
pub struct ConnHandle {
    out: mpsc::Sender<Bytes>,
    close: CancellationToken,
}

impl ConnHandle {
    pub async fn respond(&self, header: &FrameHeader, response: Response) {
        let mut buf = BytesMut::new();
        response.encode(header, &mut buf).expect("responses fit in a frame");
        // The connection may be gone already; the test then sees the client's error instead.
        let _ = self.out.send(buf.freeze()).await;
    }

    pub fn close(&self) {
        self.close.cancel();
    }
}

impl Incoming {
    pub async fn respond(&self, response: Response) {
        self.conn.respond(&self.header, response).await;
    }
}

/// A request the peer received.
#[derive(Debug, Clone)]
pub struct Logged {
    pub connection_idx: usize,
    pub request: Request,
}

#[derive(Debug, Default)]
pub struct PartitionLog {
    /// Stored batches (rebased), back to back in offset order.
    pub batches: Vec<Bytes>,
    pub start_offset: u64,
    pub end_offset: u64,
}

/// A tiny broker: topics of partitions of batches.
#[derive(Debug)]
pub struct Model {
    pub topics: BTreeMap<String, Vec<PartitionLog>>,
    pub limits: BrokerLimits,
    /// Producer ids handed out by InitProducerId (the model does no dedup: it is the client's logic under test).
    pub producer_ids_issued: u32,
    /// The open transaction's staged batches, as (topic, partition, records), in arrival order. The model trusts the
    /// client: it checks no ids or numbers (the broker's own tests do), and EndTxn(commit) appends these.
    pub txn_staged: Vec<(String, u32, Bytes)>,
}

pub struct PeerState {
    pub model: Model,
    pub log: Vec<Logged>,
    pub n_connections: usize,
    hook: Option<Hook>,
}

struct Shared {
    state: Mutex<PeerState>,
    /// Bumped whenever a request is logged or records are appended.
    changes: watch::Sender<u64>,
    forward: mpsc::Sender<Incoming>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().expect("peer state lock")
    }

    fn bump(&self) {
        self.changes.send_modify(|count| *count += 1);
    }
}

pub struct Peer {
    pub addr: String,
    shared: Arc<Shared>,
    forwarded: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    _accept: AbortOnDropHandle<()>,
}

impl Peer {
    pub async fn start() -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr").to_string();
        let (forward, forwarded) = mpsc::channel(1024);
        let shared = Arc::new(Shared {
            state: Mutex::new(PeerState {
                model: Model {
                    topics: BTreeMap::new(),
                    limits: default_limits(),
                    producer_ids_issued: 0,
                    txn_staged: Vec::new(),
                },
                log: Vec::new(),
                n_connections: 0,
                hook: None,
            }),
            changes: watch::channel(0).0,
            forward,
        });
        let accept_shared = shared.clone();
        let accept = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { break };
                let connection_idx = {
                    let mut state = accept_shared.lock();
                    state.n_connections += 1;
                    state.n_connections - 1
                };
                connections.spawn(serve(stream, connection_idx, accept_shared.clone()));
            }
        });
        Peer { addr, shared, forwarded: tokio::sync::Mutex::new(forwarded), _accept: AbortOnDropHandle::new(accept) }
    }

    pub fn set_hook(&self, hook: impl FnMut(&Request, &mut Model) -> Action + Send + 'static) {
        self.shared.lock().hook = Some(Box::new(hook));
    }

    pub fn state(&self) -> MutexGuard<'_, PeerState> {
        self.shared.lock()
    }

    pub fn create_topic(&self, name: &str, partition_count: u32) {
        self.state().model.create(name, partition_count);
    }

    /// Waits until `condition` holds on the peer's state; re-checked after every request and append.
    pub async fn wait_until(&self, mut condition: impl FnMut(&PeerState) -> bool) {
        let mut changes = self.shared.changes.subscribe();
        loop {
            if condition(&self.shared.lock()) {
                return;
            }
            changes.changed().await.expect("the peer outlives the test");
        }
    }

    /// The number of requests of `api` received so far.
    pub fn count(&self, api: ApiKey) -> usize {
        self.state().log.iter().filter(|logged| logged.request.api_key() == api).count()
    }

    /// The requests of `api` received so far.
    pub fn requests(&self, api: ApiKey) -> Vec<Request> {
        self.state().log.iter().filter(|logged| logged.request.api_key() == api).map(|l| l.request.clone()).collect()
    }

    /// The next request a hook forwarded to the test.
    pub async fn next_forwarded(&self) -> Incoming {
        self.forwarded.lock().await.recv().await.expect("the peer outlives the test")
    }

    /// The next forwarded request, if one arrives within `wait` (use with a paused clock).
    pub async fn try_next_forwarded(&self, wait: Duration) -> Option<Incoming> {
        tokio::time::timeout(wait, self.next_forwarded()).await.ok()
    }

    /// Answers a forwarded request from the model, as if no hook had intercepted it.
    pub async fn answer(&self, incoming: &Incoming) {
        let reply = self.state().model.handle(&incoming.request);
        self.shared.bump();
        match reply {
            Reply::Now(response) => incoming.respond(response).await,
            Reply::None | Reply::Park(_) => panic!("answer only requests the model answers at once"),
        }
    }

    /// Every stored record of a partition as (offset, key, value), verifying every batch.
    pub fn records(&self, topic: &str, partition: u32) -> Vec<(u64, Option<Bytes>, Option<Bytes>)> {
        let state = self.state();
        let log = &state.model.topics[topic][partition as usize];
        let mut records = Vec::new();
        for stored in &log.batches {
            let batch = ferry_protocol::RecordBatch::decode(stored.clone()).expect("stored batches are valid");
            for record in batch.records() {
                let record = record.expect("valid record");
                records.push((record.offset, record.key, record.value));
            }
        }
        records
    }
}

pub fn default_limits() -> BrokerLimits {
    BrokerLimits {
        frame_bytes_max: ferry_protocol::limits::FRAME_BYTES_MAX,
        batch_bytes_max: ferry_protocol::limits::BATCH_BYTES_MAX,
        batch_records_max: ferry_protocol::limits::BATCH_RECORDS_MAX,
        fetch_bytes_max: 4 * 1024 * 1024,
        fetch_wait_ms_max: 30_000,
        in_flight_requests_max: 100,
        partitions_per_topic_max: 1024,
    }
}

fn code(error: ErrorCode) -> u32 {
    error_code_to_wire(error)
}

/// What the model does with a request.
enum Reply {
    Now(Response),
    None,
    /// A fetch with nothing to return yet: wait for an append or its deadline.
    Park(FetchRequest),
}

impl Model {
    pub fn create(&mut self, name: &str, partition_count: u32) {
        let partitions = (0..partition_count).map(|_| PartitionLog::default()).collect();
        self.topics.insert(name.to_owned(), partitions);
    }

    pub fn partition_mut(&mut self, topic: &str, partition: u32) -> Option<&mut PartitionLog> {
        self.topics.get_mut(topic)?.get_mut(usize::try_from(partition).ok()?)
    }

    /// Appends a batch of `values` (rebased to the partition's end); returns its base offset.
    pub fn append_values(&mut self, topic: &str, partition: u32, values: &[&str]) -> u64 {
        let mut builder = BatchBuilder::new();
        for value in values {
            builder
                .push(NewRecord { timestamp: 1_000, value: Some(value.as_bytes()), ..NewRecord::default() })
                .expect("fits");
        }
        let log = self.partition_mut(topic, partition).expect("partition exists");
        let mut batch = builder.build().expect("non-empty");
        let base_offset = log.end_offset;
        batch.rebase(base_offset).expect("small offsets");
        log.end_offset = batch.last_offset() + 1;
        log.batches.push(batch.into_bytes());
        base_offset
    }

    /// Appends a batch like `append_values`, then flips one bit of its last byte: the CRC no longer matches.
    pub fn append_corrupted(&mut self, topic: &str, partition: u32, values: &[&str]) {
        self.append_values(topic, partition, values);
        let log = self.partition_mut(topic, partition).expect("partition exists");
        let stored = log.batches.pop().expect("just appended");
        let mut corrupted = BytesMut::from(&stored[..]);
        let last = corrupted.len() - 1;
        corrupted[last] ^= 0x01;
        log.batches.push(corrupted.freeze());
    }

    /// Retention: the partition now starts at `start_offset` (whole batches below it are dropped).
    pub fn truncate_start(&mut self, topic: &str, partition: u32, start_offset: u64) {
        let log = self.partition_mut(topic, partition).expect("partition exists");
        log.batches.retain(|stored| last_offset(stored) >= start_offset);
        log.start_offset = start_offset;
    }

    fn handle(&mut self, request: &Request) -> Reply {
        match request {
            Request::InitProducerId(_) => {
                self.producer_ids_issued += 1;
                Reply::Now(Response::InitProducerId(InitProducerIdResponse {
                    error_code: 0,
                    error_message: String::new(),
                    producer_id: i64::from(self.producer_ids_issued),
                    producer_epoch: 0,
                    producer_id_expiration_ms: 24 * 3600 * 1000,
                    batches_retained: 5,
                    transaction_timeout_ms: 60_000,
                }))
            }
            Request::ApiVersions(_) => Reply::Now(Response::ApiVersions(ApiVersionsResponse {
                error_code: 0,
                api_versions: supported_api_versions(),
                limits: Some(self.limits),
                broker_software_version: "test-peer".to_owned(),
            })),
            Request::CreateTopics(request) => {
                let topics = request
                    .topics
                    .iter()
                    .map(|topic| {
                        let error_code = if self.topics.contains_key(&topic.name) {
                            code(ErrorCode::TopicAlreadyExists)
                        } else if topic.partition_count == 0 {
                            code(ErrorCode::InvalidPartitions)
                        } else {
                            self.create(&topic.name, topic.partition_count);
                            0
                        };
                        CreateTopicResult { name: topic.name.clone(), error_code, error_message: String::new() }
                    })
                    .collect();
                Reply::Now(Response::CreateTopics(CreateTopicsResponse { error_code: 0, topics }))
            }
            Request::DeleteTopics(request) => {
                let topics = request
                    .names
                    .iter()
                    .map(|name| DeleteTopicResult {
                        name: name.clone(),
                        error_code: if self.topics.remove(name).is_some() {
                            0
                        } else {
                            code(ErrorCode::UnknownTopicOrPartition)
                        },
                        error_message: String::new(),
                    })
                    .collect();
                Reply::Now(Response::DeleteTopics(DeleteTopicsResponse { error_code: 0, topics }))
            }
            Request::ListTopics(_) => Reply::Now(Response::ListTopics(ListTopicsResponse {
                error_code: 0,
                topics: self
                    .topics
                    .iter()
                    .map(|(name, partitions)| ListedTopic {
                        name: name.clone(),
                        partition_count: u32::try_from(partitions.len()).expect("few partitions"),
                    })
                    .collect(),
            })),
            Request::DescribeTopics(request) => {
                let topics = request
                    .names
                    .iter()
                    .map(|name| match self.topics.get(name) {
                        None => TopicDescription {
                            name: name.clone(),
                            error_code: code(ErrorCode::UnknownTopicOrPartition),
                            ..TopicDescription::default()
                        },
                        Some(partitions) => TopicDescription {
                            name: name.clone(),
                            partitions: partitions
                                .iter()
                                .enumerate()
                                .map(|(partition_idx, log)| PartitionDescription {
                                    partition: u32::try_from(partition_idx).expect("few partitions"),
                                    start_offset: log.start_offset,
                                    end_offset: log.end_offset,
                                    ..PartitionDescription::default()
                                })
                                .collect(),
                            ..TopicDescription::default()
                        },
                    })
                    .collect();
                Reply::Now(Response::DescribeTopics(DescribeTopicsResponse { error_code: 0, topics }))
            }
            Request::Produce(request) => {
                let response = self.produce(request);
                if request.acks == i32::from(ferry_protocol::messages::Acks::None) {
                    Reply::None
                } else {
                    Reply::Now(Response::Produce(response))
                }
            }
            Request::Fetch(request) => {
                let response = self.fetch(request);
                let has_data = response
                    .topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .any(|p| !p.records.is_empty() || p.error_code != 0);
                if has_data || request.wait_ms_max == 0 {
                    Reply::Now(Response::Fetch(response))
                } else {
                    Reply::Park(request.clone())
                }
            }
            Request::ListOffsets(request) => {
                let topics = request
                    .topics
                    .iter()
                    .map(|topic| ListOffsetsTopicResponse {
                        name: topic.name.clone(),
                        partitions: topic
                            .partitions
                            .iter()
                            .map(|lookup| {
                                self.list_offset(&topic.name, lookup.partition, OffsetSpec::try_from(lookup).ok())
                            })
                            .collect(),
                    })
                    .collect();
                Reply::Now(Response::ListOffsets(ListOffsetsResponse { error_code: 0, topics }))
            }
            Request::TxnProduce(request) => {
                let mut topics = Vec::new();
                for topic in &request.topics {
                    let mut partitions = Vec::new();
                    for partition in &topic.partitions {
                        let error_code = if self.partition_mut(&topic.name, partition.partition).is_some() {
                            self.txn_staged.push((topic.name.clone(), partition.partition, partition.records.clone()));
                            0
                        } else {
                            code(ErrorCode::UnknownTopicOrPartition)
                        };
                        partitions.push(ProducePartitionResponse {
                            partition: partition.partition,
                            error_code,
                            ..ProducePartitionResponse::default()
                        });
                    }
                    topics.push(ProduceTopicResponse { name: topic.name.clone(), partitions });
                }
                Reply::Now(Response::TxnProduce(TxnProduceResponse { topics, ..TxnProduceResponse::default() }))
            }
            Request::TxnOffsetCommit(_) => Reply::Now(Response::TxnOffsetCommit(TxnOffsetCommitResponse::default())),
            Request::EndTxn(request) => {
                let staged = std::mem::take(&mut self.txn_staged);
                let mut topics: Vec<ProduceTopicResponse> = Vec::new();
                if request.commit {
                    for (topic, partition, records) in staged {
                        let appended = self.append(&topic, partition, records);
                        match topics.iter_mut().find(|t| t.name == topic) {
                            Some(existing) => match existing.partitions.iter_mut().find(|p| p.partition == partition) {
                                Some(found) => found.last_offset = appended.last_offset,
                                None => existing.partitions.push(appended),
                            },
                            None => topics.push(ProduceTopicResponse { name: topic, partitions: vec![appended] }),
                        }
                    }
                }
                Reply::Now(Response::EndTxn(EndTxnResponse { topics, ..EndTxnResponse::default() }))
            }
            Request::ListTxns(_) => Reply::Now(Response::ListTxns(ListTxnsResponse::default())),
            Request::AbortTxn(_) => Reply::Now(Response::AbortTxn(AbortTxnResponse::default())),
            // The test peer does not coordinate groups (the broker's own tests do).
            Request::DescribeBroker(_)
            | Request::DescribeProducers(_)
            | Request::JoinGroup(_)
            | Request::Heartbeat(_)
            | Request::LeaveGroup(_)
            | Request::OffsetCommit(_)
            | Request::OffsetFetch(_)
            | Request::ListGroups(_)
            | Request::DescribeGroups(_) => Reply::Now(Response::Error(ferry_protocol::messages::ErrorResponse {
                error_code: code(ErrorCode::UnsupportedVersion),
                error_message: "the test peer has no group coordinator".to_owned(),
            })),
        }
    }

    fn produce(&mut self, request: &ProduceRequest) -> ProduceResponse {
        let topics = request
            .topics
            .iter()
            .map(|topic| ProduceTopicResponse {
                name: topic.name.clone(),
                partitions: topic
                    .partitions
                    .iter()
                    .map(|partition| self.append(&topic.name, partition.partition, partition.records.clone()))
                    .collect(),
            })
            .collect();
        ProduceResponse { error_code: 0, topics }
    }

    fn append(&mut self, topic: &str, partition: u32, records: Bytes) -> ProducePartitionResponse {
        let failed = |error| ProducePartitionResponse {
            partition,
            error_code: code(error),
            ..ProducePartitionResponse::default()
        };
        let Some(log) = self.partition_mut(topic, partition) else {
            return failed(ErrorCode::UnknownTopicOrPartition);
        };
        let mut batches = Vec::new();
        for batch in split_batches(records) {
            match batch {
                Ok(batch) => batches.push(batch),
                Err(_) => return failed(ErrorCode::CorruptMessage),
            }
        }
        let base_offset = log.end_offset;
        for mut batch in batches {
            batch.rebase(log.end_offset).expect("small offsets");
            log.end_offset = batch.last_offset() + 1;
            log.batches.push(batch.into_bytes());
        }
        ProducePartitionResponse {
            partition,
            base_offset,
            last_offset: log.end_offset - 1,
            ..ProducePartitionResponse::default()
        }
    }

    fn fetch(&self, request: &FetchRequest) -> FetchResponse {
        let topics = request
            .topics
            .iter()
            .map(|topic| FetchTopicResponse {
                name: topic.name.clone(),
                partitions: topic
                    .partitions
                    .iter()
                    .map(|wanted| {
                        let log = self.topics.get(&topic.name).and_then(|p| p.get(wanted.partition as usize));
                        let Some(log) = log else {
                            return FetchPartitionResponse {
                                partition: wanted.partition,
                                error_code: code(ErrorCode::UnknownTopicOrPartition),
                                ..FetchPartitionResponse::default()
                            };
                        };
                        if wanted.fetch_offset < log.start_offset || wanted.fetch_offset > log.end_offset {
                            return FetchPartitionResponse {
                                partition: wanted.partition,
                                error_code: code(ErrorCode::OffsetOutOfRange),
                                high_watermark: log.end_offset,
                                log_start_offset: log.start_offset,
                                ..FetchPartitionResponse::default()
                            };
                        }
                        let mut records = BytesMut::new();
                        for stored in &log.batches {
                            if last_offset(stored) < wanted.fetch_offset {
                                continue;
                            }
                            records.extend_from_slice(stored);
                            let limit = wanted.partition_bytes_max as usize;
                            if limit > 0 && records.len() >= limit {
                                break;
                            }
                        }
                        FetchPartitionResponse {
                            partition: wanted.partition,
                            high_watermark: log.end_offset,
                            log_start_offset: log.start_offset,
                            records: records.freeze(),
                            ..FetchPartitionResponse::default()
                        }
                    })
                    .collect(),
            })
            .collect();
        FetchResponse { error_code: 0, topics }
    }

    fn list_offset(&self, topic: &str, partition: u32, spec: Option<OffsetSpec>) -> ListOffsetsPartitionResponse {
        let Some(log) = self.topics.get(topic).and_then(|p| p.get(partition as usize)) else {
            return ListOffsetsPartitionResponse {
                partition,
                error_code: code(ErrorCode::UnknownTopicOrPartition),
                ..ListOffsetsPartitionResponse::default()
            };
        };
        let (offset, timestamp_ms) = match spec {
            Some(OffsetSpec::Earliest) => (log.start_offset, -1),
            Some(OffsetSpec::Latest) | None => (log.end_offset, -1),
            Some(OffsetSpec::Timestamp(wanted)) => log
                .batches
                .iter()
                .filter_map(|stored| ferry_protocol::RecordBatch::decode(stored.clone()).ok())
                .flat_map(|batch| batch.records().filter_map(Result::ok).collect::<Vec<_>>())
                .find(|record| record.timestamp >= wanted)
                .map_or((log.end_offset, -1), |record| (record.offset, record.timestamp)),
        };
        ListOffsetsPartitionResponse { partition, offset, timestamp_ms, ..ListOffsetsPartitionResponse::default() }
    }
}

/// The last offset of a stored batch, read from its raw header (so a corrupted batch is still placed).
fn last_offset(stored: &[u8]) -> u64 {
    let base = u64::from_be_bytes(stored[0..8].try_into().expect("8 bytes"));
    let delta = u32::from_be_bytes(stored[19..23].try_into().expect("4 bytes"));
    base + u64::from(delta)
}

async fn serve(stream: TcpStream, connection_idx: usize, shared: Arc<Shared>) {
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = FramedRead::new(read_half, FrameCodec::new());
    let (out, mut out_receiver) = mpsc::channel::<Bytes>(1024);
    let close = CancellationToken::new();
    let conn = ConnHandle { out, close: close.clone() };
    let mut tasks = JoinSet::new();
    let writer_close = close.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = writer_close.cancelled() => break,
                bytes = out_receiver.recv() => match bytes {
                    Some(bytes) => if write_half.write_all(&bytes).await.is_err() { break },
                    None => break,
                },
            }
        }
        writer_close.cancel();
    });
    loop {
        let frame = tokio::select! {
            () = close.cancelled() => break,
            frame = reader.next() => match frame {
                Some(Ok(frame)) => frame,
                _ => break,
            },
        };
        let header = frame.header;
        let Ok(request) = Request::decode(&header, frame.body) else { break };
        let (action, reply) = {
            let mut guard = shared.lock();
            let state = &mut *guard;
            state.log.push(Logged { connection_idx, request: request.clone() });
            let action = match state.hook.as_mut() {
                Some(hook) => hook(&request, &mut state.model),
                None => Action::Model,
            };
            let reply = match action {
                Action::Model => Some(state.model.handle(&request)),
                _ => None,
            };
            (action, reply)
        };
        shared.bump();
        match (action, reply) {
            (Action::Model, Some(Reply::Now(response))) | (Action::Respond(response), _) => {
                conn.respond(&header, response).await;
            }
            (Action::Model, Some(Reply::Park(request))) => {
                tasks.spawn(long_poll(shared.clone(), conn.clone(), header, request));
            }
            (Action::Model, _) | (Action::Ignore, _) => {}
            (Action::Close, _) => break,
            (Action::Forward, _) => {
                let incoming = Incoming { header, request, conn: conn.clone() };
                let _ = shared.forward.send(incoming).await;
            }
        }
    }
    close.cancel();
}

/// Holds a fetch until the model has data for it or its wait ends, as a broker's long poll does.
async fn long_poll(shared: Arc<Shared>, conn: ConnHandle, header: FrameHeader, request: FetchRequest) {
    let deadline = Instant::now() + Duration::from_millis(u64::from(request.wait_ms_max));
    let mut changes = shared.changes.subscribe();
    loop {
        let response = shared.lock().model.fetch(&request);
        let has_data =
            response.topics.iter().flat_map(|t| &t.partitions).any(|p| !p.records.is_empty() || p.error_code != 0);
        if has_data || Instant::now() >= deadline {
            conn.respond(&header, Response::Fetch(response)).await;
            return;
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

/// Appends through the peer's model and wakes parked fetches.
pub fn append_values(peer: &Peer, topic: &str, partition: u32, values: &[&str]) -> u64 {
    let base_offset = peer.state().model.append_values(topic, partition, values);
    peer.shared.bump();
    base_offset
}

/// A produce response for partition 0 of `orders` failing with `error` (message "scripted").
pub fn failed_response(error: ErrorCode) -> Response {
    Response::Produce(ProduceResponse {
        error_code: 0,
        topics: vec![ProduceTopicResponse {
            name: "orders".to_owned(),
            partitions: vec![ProducePartitionResponse {
                partition: 0,
                error_code: error_code_to_wire(error),
                error_message: "scripted".to_owned(),
                ..ProducePartitionResponse::default()
            }],
        }],
    })
}
