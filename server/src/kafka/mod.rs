//! The Kafka wire protocol listener.
//!
//! Frames are a big-endian i32 size and a request (header, body) encoded
//! with the kafka-protocol crate. Each connection answers its requests in
//! order. ApiVersions advertises exactly the versions in [`SUPPORTED`];
//! responses are built for the version the client asked for, setting only
//! fields that version has. A frame that is oversized, truncated or does not
//! decode closes the connection; an unknown API key or version gets
//! UNSUPPORTED_VERSION where the protocol has a way to say it, and a closed
//! connection otherwise.

mod fetch_frame;
mod groups;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::Compression;
use tidebase_catalog::storage::log::{Located, TopicConfig};
use tidebase_catalog::storage::StorageError;
use tidebase_catalog::topic::{self, TopicDef, Topics};
use tidebase_catalog::{Catalog, CatalogError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use groups::{Coordinator, Join};

/// A partition's records left in the log: `((topic index, partition
/// index) in the response, where they are)`.
type InLog = ((usize, usize), Located);

/// Largest request accepted (Kafka's default socket.request.max.bytes).
pub const MAX_FRAME: usize = 100 << 20;

/// (API, lowest version, highest version) served.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 6),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::InitProducerId, 0, 4),
];

// Kafka error codes used here.
const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const OFFSET_OUT_OF_RANGE: i16 = 1;
const UNSUPPORTED_VERSION: i16 = 35;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const INVALID_PARTITIONS: i16 = 37;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const KAFKA_STORAGE_ERROR: i16 = 56;
const UNKNOWN_SERVER_ERROR: i16 = -1;
const INVALID_RECORD: i16 = 87;

/// State shared by every Kafka connection.
pub struct Kafka {
    catalog: Arc<Catalog>,
    coordinator: Coordinator,
    appended: Arc<Notify>,
    advertised: SocketAddr,
    next_producer_id: AtomicI64,
    /// Buffers for fetched records and for encoded responses.
    buffers: BufferPool,
}

/// Buffers that fetches read partitions into, and that connections encode
/// responses into, reused across requests and connections: a fresh
/// multi-MiB buffer per partition per fetch was zeroed (a tenth of the
/// server's time while serving consumers), and a response buffer grown
/// afresh on each connection was faulted in again, page by page.
#[derive(Clone, Default)]
struct BufferPool(Arc<parking_lot::Mutex<Vec<Vec<u8>>>>);

/// Buffers kept at most, and the largest one kept.
const POOLED_BUFFERS: usize = 16;
const POOLED_BUFFER_BYTES: usize = 64 << 20;

impl BufferPool {
    fn take(&self) -> Vec<u8> {
        self.0.lock().pop().unwrap_or_default()
    }

    /// A buffer from the pool that goes back to it when dropped.
    fn lease(&self) -> Pooled {
        self.owning(self.take())
    }

    /// The bytes of `buffer` as `Bytes`; the buffer comes back to the pool
    /// when the last reference is dropped.
    fn share(&self, buffer: Vec<u8>) -> Bytes {
        Bytes::from_owner(self.owning(buffer))
    }

    fn owning(&self, buffer: Vec<u8>) -> Pooled {
        Pooled {
            buffer,
            pool: self.clone(),
        }
    }
}

struct Pooled {
    buffer: Vec<u8>,
    pool: BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        if buffer.capacity() <= POOLED_BUFFER_BYTES {
            let mut pool = self.pool.0.lock();
            if pool.len() < POOLED_BUFFERS {
                pool.push(buffer);
            }
        }
    }
}

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

fn topic_name(n: &str) -> TopicName {
    TopicName(s(n))
}

fn storage_code(e: &CatalogError) -> i16 {
    match e {
        CatalogError::Storage(StorageError::TopicNotFound(_))
        | CatalogError::Storage(StorageError::PartitionNotFound { .. })
        | CatalogError::TableNotFound(_) => UNKNOWN_TOPIC_OR_PARTITION,
        CatalogError::Storage(StorageError::InvalidRecordBatch(_)) => CORRUPT_MESSAGE,
        CatalogError::Storage(StorageError::OutOfOrderSequence { .. }) => {
            OUT_OF_ORDER_SEQUENCE_NUMBER
        }
        CatalogError::Storage(StorageError::OffsetOutOfRange { .. }) => OFFSET_OUT_OF_RANGE,
        CatalogError::Storage(StorageError::Io { .. } | StorageError::Poisoned(_)) => {
            KAFKA_STORAGE_ERROR
        }
        _ => UNKNOWN_SERVER_ERROR,
    }
}

impl Kafka {
    pub fn new(catalog: Arc<Catalog>, advertised: SocketAddr) -> Arc<Kafka> {
        let appended = Arc::new(Notify::new());
        let n = appended.clone();
        catalog
            .topics()
            .log()
            .set_append_listener(move |_, _| n.notify_waiters());
        // Producer ids must not repeat across restarts (the log remembers
        // sequence numbers per id): start from the clock.
        let start = tidebase_catalog::storage::now_ms().max(1) << 10;
        Arc::new(Kafka {
            catalog,
            coordinator: Coordinator::default(),
            appended,
            advertised,
            next_producer_id: AtomicI64::new(start),
            buffers: BufferPool::default(),
        })
    }

    fn topics(&self) -> &Arc<Topics> {
        self.catalog.topics()
    }

    /// Accepts connections until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let sweeper = {
            let me = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                let mut n = 0u64;
                loop {
                    tick.tick().await;
                    me.coordinator.expire();
                    n += 1;
                    if n.is_multiple_of(120) {
                        let topics = me.topics().clone();
                        let now = tidebase_catalog::storage::now_ms();
                        let _ = tokio::task::spawn_blocking(move || {
                            if let Err(e) = topics.log().enforce_retention(now) {
                                tracing::error!(error = %e, "topic retention failed");
                            }
                        })
                        .await;
                    }
                }
            })
        };
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let Ok((socket, peer)) = accepted else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let me = self.clone();
                    conns.spawn(async move {
                        if let Err(e) = me.connection(socket, peer).await {
                            tracing::debug!(%peer, error = %e, "kafka connection closed");
                        }
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        sweeper.abort();
        conns.abort_all();
    }

    async fn connection(
        self: Arc<Self>,
        mut socket: TcpStream,
        peer: SocketAddr,
    ) -> anyhow::Result<()> {
        socket.set_nodelay(true)?;
        // Back to the pool when the connection ends, however it ends.
        let mut out = self.buffers.lease();
        // Requests are read into one buffer per connection, in large reads
        // into uninitialised capacity (no zeroing of large frames). A frame
        // is split off it and dropped when its request is done, so the next
        // `reserve` finds the allocation unshared and reuses it.
        let mut input = BytesMut::with_capacity(64 << 10);
        // Records of a fetch response, written from where they were read.
        let mut splices = fetch_frame::Splices::new();
        loop {
            while input.len() < 4 {
                if socket.read_buf(&mut input).await? == 0 {
                    if input.is_empty() {
                        return Ok(());
                    }
                    anyhow::bail!("connection closed inside a frame header");
                }
            }
            let size = i32::from_be_bytes([input[0], input[1], input[2], input[3]]);
            if size < 8 || size as usize > MAX_FRAME {
                anyhow::bail!("frame size {size} is out of bounds");
            }
            let size = size as usize;
            if input.len() < 4 + size {
                input.reserve(4 + size - input.len());
            }
            while input.len() < 4 + size {
                if socket.read_buf(&mut input).await? == 0 {
                    anyhow::bail!("connection closed inside a frame");
                }
            }
            let mut buf = input.split_to(4 + size).freeze().slice(4..);
            let out = &mut out.buffer;
            let api_key = i16::from_be_bytes([buf[0], buf[1]]);
            let version = i16::from_be_bytes([buf[2], buf[3]]);
            let correlation = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
            let Ok(key) = ApiKey::try_from(api_key) else {
                anyhow::bail!("unknown API key {api_key}");
            };
            let supported = SUPPORTED
                .iter()
                .find(|(k, _, _)| *k == key)
                .is_some_and(|(_, lo, hi)| (*lo..=*hi).contains(&version));
            if !supported {
                if key == ApiKey::ApiVersions {
                    // Answer in v0 so any client can read the versions we have.
                    out.clear();
                    let mut r = self.api_versions();
                    r.error_code = UNSUPPORTED_VERSION;
                    write_response(out, correlation, 0, &r, 0)?;
                    socket.write_all(out).await?;
                    continue;
                }
                anyhow::bail!("unsupported version {version} of {key:?}");
            }
            let header = RequestHeader::decode(&mut buf, key.request_header_version(version))?;
            let client_id = header
                .client_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default();
            out.clear();
            let respond = self
                .handle(
                    key,
                    version,
                    &mut buf,
                    &client_id,
                    peer,
                    correlation,
                    out,
                    &mut splices,
                )
                .await?;
            if respond {
                write_spliced(&mut socket, out, &splices).await?;
            }
            // Records in memory go back to the pool, segment files are let go.
            splices.clear();
        }
    }

    fn api_versions(&self) -> ApiVersionsResponse {
        let mut r = ApiVersionsResponse::default();
        r.api_keys = SUPPORTED
            .iter()
            .map(|(k, lo, hi)| {
                let mut v = ApiVersion::default();
                v.api_key = *k as i16;
                v.min_version = *lo;
                v.max_version = *hi;
                v
            })
            .collect();
        r
    }

    /// Runs one request and encodes its response into `out`; false when
    /// the protocol wants no response (Produce with acks = 0).
    #[allow(clippy::too_many_arguments)]
    async fn handle(
        &self,
        key: ApiKey,
        v: i16,
        buf: &mut Bytes,
        client_id: &str,
        peer: SocketAddr,
        correlation: i32,
        out: &mut Vec<u8>,
        splices: &mut fetch_frame::Splices,
    ) -> anyhow::Result<bool> {
        let hv = key.response_header_version(v);
        macro_rules! reply {
            ($resp:expr) => {{
                write_response(out, correlation, hv, &$resp, v)?;
                Ok(true)
            }};
        }
        match key {
            ApiKey::ApiVersions => {
                let _req = ApiVersionsRequest::decode(buf, v)?;
                reply!(self.api_versions())
            }
            ApiKey::Metadata => reply!(self.metadata(MetadataRequest::decode(buf, v)?, v)),
            ApiKey::Produce => {
                let req = ProduceRequest::decode(buf, v)?;
                let acks = req.acks;
                let resp = self.produce(req, v).await;
                if acks == 0 {
                    return Ok(false);
                }
                reply!(resp)
            }
            ApiKey::Fetch => {
                let (mut resp, in_log) = self.fetch(FetchRequest::decode(buf, v)?, v).await;
                if fetch_frame::plain(&resp) {
                    fetch_frame::encode(out, splices, correlation, &resp, &in_log, v)?;
                    Ok(true)
                } else {
                    self.read_records(&mut resp, in_log).await;
                    reply!(resp)
                }
            }
            ApiKey::ListOffsets => {
                reply!(self.list_offsets(ListOffsetsRequest::decode(buf, v)?).await)
            }
            ApiKey::CreateTopics => reply!(
                self.create_topics(CreateTopicsRequest::decode(buf, v)?, v)
                    .await
            ),
            ApiKey::DeleteTopics => reply!(
                self.delete_topics(DeleteTopicsRequest::decode(buf, v)?)
                    .await
            ),
            ApiKey::InitProducerId => {
                let _req = InitProducerIdRequest::decode(buf, v)?;
                let mut r = InitProducerIdResponse::default();
                r.producer_id = ProducerId(self.next_producer_id.fetch_add(1, Ordering::Relaxed));
                r.producer_epoch = 0;
                reply!(r)
            }
            ApiKey::FindCoordinator => {
                let req = FindCoordinatorRequest::decode(buf, v)?;
                let mut r = FindCoordinatorResponse::default();
                let host = s(self.advertised.ip().to_string());
                let port = i32::from(self.advertised.port());
                if v >= 4 {
                    r.coordinators = req
                        .coordinator_keys
                        .iter()
                        .map(|k| {
                            let mut c = CoordinatorEntry::default();
                            c.key = k.clone();
                            c.node_id = BrokerId(0);
                            c.host = host.clone();
                            c.port = port;
                            c
                        })
                        .collect();
                } else {
                    r.node_id = BrokerId(0);
                    r.host = host;
                    r.port = port;
                }
                reply!(r)
            }
            ApiKey::JoinGroup => {
                let req = JoinGroupRequest::decode(buf, v)?;
                let rx = self.coordinator.join(Join {
                    group: req.group_id.to_string(),
                    member_id: req.member_id.to_string(),
                    client_id: client_id.to_string(),
                    client_host: peer.ip().to_string(),
                    protocol_type: req.protocol_type.to_string(),
                    protocols: req
                        .protocols
                        .iter()
                        .map(|p| (p.name.to_string(), p.metadata.clone()))
                        .collect(),
                    session_timeout: Duration::from_millis(req.session_timeout_ms.max(1000) as u64),
                    rebalance_timeout: Duration::from_millis(
                        (if v >= 1 {
                            req.rebalance_timeout_ms
                        } else {
                            req.session_timeout_ms
                        })
                        .max(1000) as u64,
                    ),
                });
                let res = rx.await.unwrap_or_default();
                let mut r = JoinGroupResponse::default();
                r.error_code = res.error;
                r.generation_id = if res.error == 0 { res.generation } else { -1 };
                if v >= 7 {
                    r.protocol_type = Some(s(res.protocol_type.clone()));
                }
                r.protocol_name = Some(s(res.protocol));
                r.leader = s(res.leader);
                r.member_id = s(res.member_id);
                r.members = res
                    .members
                    .into_iter()
                    .map(|(id, meta)| {
                        let mut m = JoinGroupResponseMember::default();
                        m.member_id = s(id);
                        m.metadata = meta;
                        m
                    })
                    .collect();
                reply!(r)
            }
            ApiKey::SyncGroup => {
                let req = SyncGroupRequest::decode(buf, v)?;
                let rx = self.coordinator.sync(
                    &req.group_id,
                    &req.member_id,
                    req.generation_id,
                    req.assignments
                        .iter()
                        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                        .collect(),
                );
                let (code, assignment) = rx
                    .await
                    .unwrap_or((groups::REBALANCE_IN_PROGRESS, Bytes::new()));
                let mut r = SyncGroupResponse::default();
                r.error_code = code;
                r.assignment = assignment;
                if v >= 5 {
                    r.protocol_type = req.protocol_type.clone();
                    r.protocol_name = req.protocol_name.clone();
                }
                reply!(r)
            }
            ApiKey::Heartbeat => {
                let req = HeartbeatRequest::decode(buf, v)?;
                let mut r = HeartbeatResponse::default();
                r.error_code =
                    self.coordinator
                        .heartbeat(&req.group_id, &req.member_id, req.generation_id);
                reply!(r)
            }
            ApiKey::LeaveGroup => {
                let req = LeaveGroupRequest::decode(buf, v)?;
                let mut r = LeaveGroupResponse::default();
                if v >= 3 {
                    for m in &req.members {
                        let mut mr = MemberResponse::default();
                        mr.member_id = m.member_id.clone();
                        mr.error_code = self.coordinator.leave(&req.group_id, &m.member_id);
                        r.members.push(mr);
                    }
                } else {
                    r.error_code = self.coordinator.leave(&req.group_id, &req.member_id);
                }
                reply!(r)
            }
            ApiKey::OffsetCommit => reply!(
                self.offset_commit(OffsetCommitRequest::decode(buf, v)?)
                    .await
            ),
            ApiKey::OffsetFetch => reply!(self.offset_fetch(OffsetFetchRequest::decode(buf, v)?)),
            ApiKey::ListGroups => {
                let _req = ListGroupsRequest::decode(buf, v)?;
                let mut r = ListGroupsResponse::default();
                r.groups = self
                    .coordinator
                    .list()
                    .into_iter()
                    .map(|(name, ptype, state)| {
                        let mut g = ListedGroup::default();
                        g.group_id = GroupId(s(name));
                        g.protocol_type = s(ptype);
                        if v >= 4 {
                            g.group_state = s(state.name());
                        }
                        g
                    })
                    .collect();
                reply!(r)
            }
            ApiKey::DescribeGroups => {
                let req = DescribeGroupsRequest::decode(buf, v)?;
                let mut r = DescribeGroupsResponse::default();
                for gid in &req.groups {
                    let mut d = DescribedGroup::default();
                    d.group_id = gid.clone();
                    match self.coordinator.describe(gid) {
                        Some(info) => {
                            d.group_state = s(info.state.name());
                            d.protocol_type = s(info.protocol_type);
                            d.protocol_data = s(info.protocol.clone());
                            d.members = info
                                .members
                                .into_iter()
                                .map(|m| {
                                    let mut dm = DescribedGroupMember::default();
                                    dm.member_id = s(m.id);
                                    dm.client_id = s(m.client_id);
                                    dm.client_host = s(m.client_host);
                                    dm.member_metadata = m
                                        .protocols
                                        .iter()
                                        .find(|(n, _)| *n == info.protocol)
                                        .map(|(_, b)| b.clone())
                                        .unwrap_or_default();
                                    dm.member_assignment = m.assignment;
                                    dm
                                })
                                .collect();
                        }
                        None => d.group_state = s("Dead"),
                    }
                    r.groups.push(d);
                }
                reply!(r)
            }
            other => anyhow::bail!("no handler for {other:?}"),
        }
    }

    fn metadata(&self, req: MetadataRequest, v: i16) -> MetadataResponse {
        let mut r = MetadataResponse::default();
        let mut broker = MetadataResponseBroker::default();
        broker.node_id = BrokerId(0);
        broker.host = s(self.advertised.ip().to_string());
        broker.port = i32::from(self.advertised.port());
        r.brokers = vec![broker];
        if v >= 2 {
            r.cluster_id = Some(s("tidebase"));
        }
        r.controller_id = BrokerId(0);
        let names: Vec<String> = match &req.topics {
            None => self.topics().names(),
            Some(ts) => ts
                .iter()
                .filter_map(|t| t.name.as_ref().map(|n| n.to_string()))
                .collect(),
        };
        for name in names {
            let mut t = MetadataResponseTopic::default();
            t.name = Some(topic_name(&name));
            match self.topics().log().topic(&name) {
                Some(lt) => {
                    t.is_internal = name.starts_with(topic::INTERNAL_PREFIX);
                    t.partitions = (0..lt.partition_count() as i32)
                        .map(|p| {
                            let mut mp = MetadataResponsePartition::default();
                            mp.partition_index = p;
                            mp.leader_id = BrokerId(0);
                            mp.replica_nodes = vec![BrokerId(0)];
                            mp.isr_nodes = vec![BrokerId(0)];
                            mp
                        })
                        .collect();
                }
                None => t.error_code = UNKNOWN_TOPIC_OR_PARTITION,
            }
            r.topics.push(t);
        }
        r
    }

    async fn produce(&self, req: ProduceRequest, v: i16) -> ProduceResponse {
        // Every partition's append runs at once: each partition is its own
        // log, so their writes and syncs overlap instead of queueing.
        let mut appends = Vec::new();
        for td in &req.topic_data {
            let name = td.name.to_string();
            for pd in &td.partition_data {
                let data = pd.records.clone().unwrap_or_default();
                let (name, index) = (name.clone(), pd.index);
                appends.push(async move { self.append(&name, index, data).await });
            }
        }
        let mut results = futures::future::join_all(appends).await.into_iter();
        let mut r = ProduceResponse::default();
        for td in req.topic_data {
            let mut tr = TopicProduceResponse::default();
            tr.name = td.name.clone();
            for pd in td.partition_data {
                let mut pr = PartitionProduceResponse::default();
                pr.index = pd.index;
                match results.next().unwrap_or(Err(UNKNOWN_SERVER_ERROR)) {
                    Ok((base, start)) => {
                        pr.base_offset = base;
                        if v >= 5 {
                            pr.log_start_offset = start;
                        }
                    }
                    Err(code) => {
                        pr.error_code = code;
                        pr.base_offset = -1;
                    }
                }
                tr.partition_responses.push(pr);
            }
            r.responses.push(tr);
        }
        r
    }

    /// Appends a producer's record batches. For a topic with columns each
    /// record's value must be a JSON object that fits them; records that do
    /// not go to the rejects and the rest are appended.
    async fn append(&self, topic: &str, partition: i32, data: Bytes) -> Result<(i64, i64), i16> {
        if topic.starts_with(topic::INTERNAL_PREFIX) {
            return Err(UNKNOWN_TOPIC_OR_PARTITION);
        }
        let topics = self.topics().clone();
        let table = topics.get(topic).ok_or(UNKNOWN_TOPIC_OR_PARTITION)?;
        if partition < 0 {
            return Err(UNKNOWN_TOPIC_OR_PARTITION);
        }
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            // The log checks every batch it appends; a topic with columns
            // checks first, before it decodes the records.
            let mut payload = data;
            if !table.def.is_raw() {
                let data = payload.clone();
                tidebase_catalog::storage::log::batch::check_batches(&data)
                    .map_err(|_| CORRUPT_MESSAGE)?;
                let records = topic::decode_batches(&data).map_err(|_| CORRUPT_MESSAGE)?;
                let mut bad = Vec::new();
                for rec in &records {
                    if let Err(reason) =
                        topic::json::decode_row(&table.def.columns, rec.value.as_deref())
                    {
                        bad.push(rec.offset);
                        topics
                            .reject(
                                &topic,
                                &reason,
                                rec.key.as_deref(),
                                rec.value.as_deref(),
                                rec.timestamp,
                            )
                            .map_err(|e| storage_code(&e))?;
                    }
                }
                if !bad.is_empty() {
                    // Keep the producer's offsets, ids and sequences for the
                    // records that fit; the offsets of the rejects stay unused.
                    let keep: Vec<_> = records
                        .into_iter()
                        .filter(|r| !bad.contains(&r.offset))
                        .collect();
                    if keep.is_empty() {
                        return Err(INVALID_RECORD);
                    }
                    let mut buf = BytesMut::new();
                    kafka_protocol::records::RecordBatchEncoder::encode(
                        &mut buf,
                        &keep,
                        &kafka_protocol::records::RecordEncodeOptions {
                            version: 2,
                            compression: Compression::None,
                        },
                    )
                    .map_err(|_| CORRUPT_MESSAGE)?;
                    payload = buf.freeze();
                }
            }
            let appended = topics
                .log()
                .append(&topic, partition as u32, &payload)
                .map_err(|e| storage_code(&CatalogError::Storage(e)))?;
            Ok((appended.base_offset, appended.log_start))
        })
        .await
        .unwrap_or(Err(UNKNOWN_SERVER_ERROR))
    }

    /// A fetch: the response, with the records of each partition left in
    /// the log (where they are in its segment files).
    async fn fetch(&self, req: FetchRequest, v: i16) -> (FetchResponse, Vec<InLog>) {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(req.max_wait_ms.clamp(0, 60_000) as u64);
        let min_bytes = req.min_bytes.max(0) as usize;
        let max_bytes = if req.max_bytes > 0 {
            req.max_bytes as usize
        } else {
            50 << 20
        };
        loop {
            // Register for wake-ups before reading, so no append is missed.
            let notified = self.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (resp, in_log) = self.fetch_once(&req, v, max_bytes);
            let bytes: usize = in_log.iter().map(|(_, l)| l.len()).sum();
            if bytes >= min_bytes.max(1) || tokio::time::Instant::now() >= deadline {
                return (resp, in_log);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.fetch_once(&req, v, max_bytes);
            }
        }
    }

    /// Where the records a fetch asks for are: finding them reads no
    /// record (only the partitions' in-memory indexes).
    fn fetch_once(
        &self,
        req: &FetchRequest,
        v: i16,
        max_bytes: usize,
    ) -> (FetchResponse, Vec<InLog>) {
        let mut r = FetchResponse::default();
        let mut in_log = Vec::new();
        let mut total = 0usize;
        for (ti, ft) in req.topics.iter().enumerate() {
            let name = ft.topic.to_string();
            let mut tr = FetchableTopicResponse::default();
            tr.topic = ft.topic.clone();
            let log_topic = self
                .topics()
                .log()
                .topic(&name)
                .filter(|_| !name.starts_with(topic::INTERNAL_PREFIX));
            for (pi, fp) in ft.partitions.iter().enumerate() {
                let mut pd = PartitionData::default();
                pd.partition_index = fp.partition;
                let part = log_topic
                    .as_ref()
                    .and_then(|t| t.partition(fp.partition.max(0) as u32));
                match part.filter(|_| fp.partition >= 0) {
                    None => {
                        pd.error_code = UNKNOWN_TOPIC_OR_PARTITION;
                        pd.high_watermark = -1;
                    }
                    Some(p) => {
                        let budget = (fp.partition_max_bytes.max(0) as usize)
                            .min(max_bytes.saturating_sub(total));
                        let located = if budget == 0 && total > 0 {
                            Ok(Located {
                                ranges: Vec::new(),
                                high_watermark: p.high_watermark(),
                                log_start: p.log_start(),
                            })
                        } else {
                            p.locate(fp.fetch_offset, budget.max(1))
                        };
                        match located {
                            Ok(l) => {
                                pd.high_watermark = l.high_watermark;
                                pd.last_stable_offset = l.high_watermark;
                                if v >= 5 {
                                    pd.log_start_offset = l.log_start;
                                }
                                total += l.len();
                                // The records are where `in_log` says.
                                pd.records = None;
                                in_log.push(((ti, pi), l));
                            }
                            Err(e) => {
                                pd.error_code = storage_code(&CatalogError::Storage(e));
                                pd.high_watermark = -1;
                            }
                        }
                    }
                }
                tr.partitions.push(pd);
            }
            r.responses.push(tr);
        }
        (r, in_log)
    }

    /// Reads records left in the log into the response, for the generic
    /// encoder; a partition whose read fails gets the error's code.
    async fn read_records(&self, r: &mut FetchResponse, in_log: Vec<InLog>) {
        for ((ti, pi), located) in in_log {
            let buffer = self.buffers.take();
            let read = tokio::task::spawn_blocking(move || located.read_into(buffer))
                .await
                .unwrap_or_else(|e| Err(StorageError::Poisoned(e.to_string())));
            let Some(pd) = r
                .responses
                .get_mut(ti)
                .and_then(|t| t.partitions.get_mut(pi))
            else {
                continue;
            };
            match read {
                Ok(f) => pd.records = Some(self.buffers.share(f.data)),
                Err(e) => {
                    pd.error_code = storage_code(&CatalogError::Storage(e));
                    pd.high_watermark = -1;
                }
            }
        }
    }

    async fn list_offsets(&self, req: ListOffsetsRequest) -> ListOffsetsResponse {
        let mut r = ListOffsetsResponse::default();
        for t in req.topics {
            let name = t.name.to_string();
            let mut tr = ListOffsetsTopicResponse::default();
            tr.name = t.name.clone();
            let lt = self.topics().log().topic(&name);
            for p in t.partitions {
                let mut pr = ListOffsetsPartitionResponse::default();
                pr.partition_index = p.partition_index;
                match lt
                    .as_ref()
                    .and_then(|lt| lt.partition(p.partition_index.max(0) as u32))
                {
                    None => pr.error_code = UNKNOWN_TOPIC_OR_PARTITION,
                    Some(part) => {
                        pr.timestamp = -1;
                        pr.offset = match p.timestamp {
                            -2 => part.log_start(),
                            -1 | -3 => part.high_watermark(),
                            ts => {
                                let found =
                                    tokio::task::spawn_blocking(move || offset_for_time(&part, ts))
                                        .await
                                        .ok()
                                        .flatten();
                                match found {
                                    Some((o, t)) => {
                                        pr.timestamp = t;
                                        o
                                    }
                                    None => -1,
                                }
                            }
                        };
                    }
                }
                tr.partitions.push(pr);
            }
            r.topics.push(tr);
        }
        r
    }

    async fn create_topics(&self, req: CreateTopicsRequest, v: i16) -> CreateTopicsResponse {
        let mut r = CreateTopicsResponse::default();
        for t in req.topics {
            let mut res = CreatableTopicResult::default();
            res.name = t.name.clone();
            let partitions = if t.num_partitions <= 0 {
                1
            } else {
                t.num_partitions as u32
            };
            let def = TopicDef {
                name: t.name.to_string(),
                columns: Vec::new(),
                key: None,
            };
            let config = TopicConfig {
                partitions,
                ..Default::default()
            };
            let code = if partitions > topic::ddl::MAX_PARTITIONS {
                INVALID_PARTITIONS
            } else if req.validate_only {
                use datafusion::catalog::SchemaProvider;
                if self.catalog.user_schema().table_exist(&def.name) {
                    TOPIC_ALREADY_EXISTS
                } else {
                    0
                }
            } else {
                let schema = self.catalog.user_schema().clone();
                match tokio::task::spawn_blocking(move || schema.create_topic(def, config, false))
                    .await
                {
                    Ok(Ok(_)) => 0,
                    Ok(Err(CatalogError::Storage(StorageError::InvalidTopic(_))))
                    | Ok(Err(CatalogError::BadOptionValue { .. })) => INVALID_TOPIC_EXCEPTION,
                    Ok(Err(CatalogError::TableExists(_))) => TOPIC_ALREADY_EXISTS,
                    _ => UNKNOWN_SERVER_ERROR,
                }
            };
            res.error_code = code;
            if v >= 5 && code == 0 {
                res.num_partitions = partitions as i32;
                res.replication_factor = 1;
            }
            r.topics.push(res);
        }
        r
    }

    async fn delete_topics(&self, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
        let mut r = DeleteTopicsResponse::default();
        for n in req.topic_names {
            let mut res = DeletableTopicResult::default();
            res.name = Some(n.clone());
            let topics = self.topics().clone();
            let name = n.to_string();
            res.error_code =
                match tokio::task::spawn_blocking(move || topics.drop_topic(&name)).await {
                    Ok(Ok(true)) => 0,
                    Ok(Ok(false)) => UNKNOWN_TOPIC_OR_PARTITION,
                    _ => UNKNOWN_SERVER_ERROR,
                };
            r.responses.push(res);
        }
        r
    }

    async fn offset_commit(&self, req: OffsetCommitRequest) -> OffsetCommitResponse {
        let group = req.group_id.to_string();
        let mut r = OffsetCommitResponse::default();
        // A commit from a member of an older generation is refused.
        let stale = req.generation_id_or_member_epoch >= 0
            && self
                .coordinator
                .generation_of(&group, &req.member_id)
                .is_none_or(|g| g != req.generation_id_or_member_epoch);
        let mut entries = Vec::new();
        for t in &req.topics {
            for p in &t.partitions {
                entries.push((
                    t.name.to_string(),
                    p.partition_index,
                    p.committed_offset,
                    p.committed_metadata
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default(),
                ));
            }
        }
        let code = if stale {
            if self
                .coordinator
                .generation_of(&group, &req.member_id)
                .is_none()
            {
                groups::UNKNOWN_MEMBER_ID
            } else {
                groups::ILLEGAL_GENERATION
            }
        } else if entries.iter().any(|(t, p, _, _)| {
            self.topics()
                .log()
                .topic(t)
                .and_then(|lt| lt.partition(*p as u32))
                .is_none()
                || *p < 0
        }) {
            UNKNOWN_TOPIC_OR_PARTITION
        } else {
            let topics = self.topics().clone();
            let now = tidebase_catalog::storage::now_ms();
            match tokio::task::spawn_blocking(move || topics.commit_offsets(&group, &entries, now))
                .await
            {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => storage_code(&e),
                Err(_) => UNKNOWN_SERVER_ERROR,
            }
        };
        for t in &req.topics {
            let mut tr = OffsetCommitResponseTopic::default();
            tr.name = t.name.clone();
            for p in &t.partitions {
                let mut pr = OffsetCommitResponsePartition::default();
                pr.partition_index = p.partition_index;
                pr.error_code = code;
                tr.partitions.push(pr);
            }
            r.topics.push(tr);
        }
        r
    }

    fn offset_fetch(&self, req: OffsetFetchRequest) -> OffsetFetchResponse {
        let group = req.group_id.to_string();
        let mut r = OffsetFetchResponse::default();
        let wanted: Vec<(String, Vec<i32>)> = match &req.topics {
            Some(ts) => ts
                .iter()
                .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                .collect(),
            None => {
                let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
                for ((g, t, p), _) in self.topics().all_committed() {
                    if g == group {
                        by_topic.entry(t).or_default().push(p);
                    }
                }
                by_topic.into_iter().collect()
            }
        };
        for (name, parts) in wanted {
            let mut tr = OffsetFetchResponseTopic::default();
            tr.name = topic_name(&name);
            for p in parts {
                let mut pr = OffsetFetchResponsePartition::default();
                pr.partition_index = p;
                match self.topics().committed(&group, &name, p) {
                    Some((o, meta)) => {
                        pr.committed_offset = o;
                        pr.metadata = Some(s(meta));
                    }
                    None => {
                        pr.committed_offset = -1;
                        pr.metadata = Some(s(""));
                    }
                }
                tr.partitions.push(pr);
            }
            r.topics.push(tr);
        }
        r
    }
}

/// The first offset whose record timestamp is at least `ts`, with that timestamp.
fn offset_for_time(p: &tidebase_catalog::storage::log::Partition, ts: i64) -> Option<(i64, i64)> {
    let base = p.batch_for_timestamp(ts)?;
    let f = p.read(base, 1).ok()?;
    let records = topic::decode_batches(&f.data).ok()?;
    records
        .iter()
        .find(|r| r.offset >= base && r.timestamp >= ts)
        .map(|r| (r.offset, r.timestamp))
        .or(Some((base, -1)))
}

/// Writes the frame `out` with `splices` inserted: pieces in memory in
/// vectored writes, file ranges with `sendfile`.
///
/// `sendfile` runs on the connection's task: records in the page cache (a
/// consumer keeping up) go to the socket without a copy through the server;
/// records no longer cached are read from disk on this worker thread, as a
/// Kafka broker's network threads do.
async fn write_spliced(
    socket: &mut TcpStream,
    out: &[u8],
    splices: &fetch_frame::Splices,
) -> std::io::Result<()> {
    use fetch_frame::Piece;
    use std::io::IoSlice;
    if splices.is_empty() {
        return socket.write_all(out).await;
    }
    let mut memory: Vec<IoSlice> = Vec::new();
    for piece in fetch_frame::pieces(out, splices).map(Some).chain([None]) {
        match piece {
            Some(Piece::Memory(b)) => memory.push(IoSlice::new(b)),
            file => {
                let mut rest = memory.as_mut_slice();
                while !rest.is_empty() {
                    let n = socket.write_vectored(rest).await?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::WriteZero.into());
                    }
                    IoSlice::advance_slices(&mut rest, n);
                }
                memory.clear();
                if let Some(Piece::File(r)) = file {
                    send_file(socket, r).await?;
                }
            }
        }
    }
    Ok(())
}

/// Sends a file range to the socket with `sendfile`, waiting whenever the
/// socket's buffer is full.
async fn send_file(
    socket: &TcpStream,
    r: &tidebase_catalog::storage::log::FileRange,
) -> std::io::Result<()> {
    let (mut pos, mut left) = (r.pos, r.len);
    while left > 0 {
        socket.writable().await?;
        let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
            rustix::fs::sendfile(socket, &*r.file, Some(&mut pos), left).map_err(Into::into)
        });
        match sent {
            Ok(0) => {
                // The file ends before the range its index gave: the frame
                // cannot be completed.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} ends before byte {}",
                        r.path.display(),
                        r.pos + r.len as u64
                    ),
                ));
            }
            Ok(n) => left -= n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Frames a response: size, header, body.
fn write_response<M: Encodable>(
    out: &mut Vec<u8>,
    correlation: i32,
    header_version: i16,
    body: &M,
    version: i16,
) -> anyhow::Result<()> {
    let start = out.len();
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation;
    // One allocation of the right size: a fetch response of many MiB grown
    // by doubling was copied (and faulted in) several times.
    out.reserve(4 + header.compute_size(header_version)? + body.compute_size(version)?);
    out.put_i32(0);
    header.encode(out, header_version)?;
    body.encode(out, version)?;
    let size = (out.len() - start - 4) as i32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fetch's frame with records sent from the segment files equals the
    /// generic encoding of the same response with the records read into
    /// memory, and those records are the batches appended.
    #[tokio::test]
    async fn fetched_records_go_out_from_the_log_as_they_were_appended() {
        use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
        use kafka_protocol::records::RecordBatchDecoder;
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = Arc::new(Catalog::open(dir.path(), Default::default()).expect("open"));
        let log = catalog.topics().log().clone();
        let config = TopicConfig {
            partitions: 2,
            ..Default::default()
        };
        log.create_topic("t", config).expect("create");
        for i in 0..6u32 {
            let messages: Vec<topic::Message> = ["a", "b"]
                .iter()
                .map(|s| topic::Message {
                    value: Some(format!("v{i}{s}").into_bytes()),
                    timestamp_ms: 1_700_000_000_000,
                    ..Default::default()
                })
                .collect();
            log.append("t", i % 2, &topic::encode_batch(&messages))
                .expect("append");
        }
        let kafka = Kafka::new(catalog, "127.0.0.1:9092".parse().expect("address"));
        let mut t = FetchTopic::default();
        t.topic = TopicName(StrBytes::from_static_str("t"));
        // Partition 1 from its second batch, partition 0 from the start,
        // and a partition the topic does not have.
        for (partition, offset) in [(1, 2), (0, 0), (7, 0)] {
            let mut p = FetchPartition::default();
            p.partition = partition;
            p.fetch_offset = offset;
            p.partition_max_bytes = 1 << 20;
            t.partitions.push(p);
        }
        let mut req = FetchRequest::default();
        req.max_bytes = 1 << 20;
        req.topics = vec![t];
        for v in [4, 11, 12] {
            let (resp, in_log) = kafka.fetch(req.clone(), v).await;
            assert_eq!(in_log.len(), 2, "two partitions have records in the log");
            let (mut out, mut splices) = (Vec::new(), fetch_frame::Splices::new());
            fetch_frame::encode(&mut out, &mut splices, 9, &resp, &in_log, v).expect("framed");
            let wire = fetch_frame::wire(&out, &splices);
            let mut read = resp.clone();
            kafka.read_records(&mut read, in_log).await;
            let mut generic = Vec::new();
            let hv = ApiKey::Fetch.response_header_version(v);
            write_response(&mut generic, 9, hv, &read, v).expect("generic");
            assert_eq!(wire, generic, "fetch v{v}");
            let values = |p: usize| -> Vec<(i64, Bytes)> {
                let mut records = read.responses[0].partitions[p].records.clone().unwrap();
                RecordBatchDecoder::decode_all(&mut records)
                    .expect("decode")
                    .iter()
                    .flat_map(|s| {
                        s.records
                            .iter()
                            .map(|r| (r.offset, r.value.clone().unwrap()))
                    })
                    .collect()
            };
            let want = |batches: &[u32], first: i64| -> Vec<(i64, Bytes)> {
                batches
                    .iter()
                    .flat_map(|i| [format!("v{i}a"), format!("v{i}b")])
                    .enumerate()
                    .map(|(k, s)| (first + k as i64, Bytes::from(s)))
                    .collect()
            };
            // Partition 1 holds batches 1, 3 and 5 at offsets 0-5.
            assert_eq!(values(0), want(&[3, 5], 2));
            assert_eq!(values(1), want(&[0, 2, 4], 0));
            let missing = &read.responses[0].partitions[2];
            assert_eq!(missing.error_code, UNKNOWN_TOPIC_OR_PARTITION);
        }
    }

    #[test]
    fn fetch_buffers_come_back_to_the_pool_when_the_last_reference_goes() {
        let pool = BufferPool::default();
        let mut buffer = pool.take();
        buffer.extend_from_slice(&[7; 1000]);
        let capacity = buffer.capacity();
        let bytes = pool.share(buffer);
        let response_copy = bytes.clone();
        assert_eq!(&bytes[..3], &[7, 7, 7]);
        drop(bytes);
        assert!(pool.0.lock().is_empty(), "a reference is still alive");
        drop(response_copy);
        let again = pool.take();
        assert_eq!(again.capacity(), capacity, "the same memory comes back");
        assert!(pool.take().is_empty(), "one buffer was pooled");
    }
}
