//! The Kafka listener against bad input and the protocol's corner cases:
//! each request is hand-built with the kafka-protocol crate and sent over a
//! raw socket.

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tidebase_sql_tests::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn send<R: Encodable>(
    sock: &mut TcpStream,
    key: ApiKey,
    version: i16,
    req: &R,
) -> anyhow::Result<()> {
    let mut body = BytesMut::new();
    let mut h = RequestHeader::default();
    h.request_api_key = key as i16;
    h.request_api_version = version;
    h.correlation_id = 7;
    h.client_id = Some(StrBytes::from_static_str("test"));
    h.encode(&mut body, key.request_header_version(version))?;
    req.encode(&mut body, version)?;
    sock.write_i32(body.len() as i32).await?;
    sock.write_all(&body).await?;
    Ok(())
}

async fn receive<R: Decodable>(
    sock: &mut TcpStream,
    key: ApiKey,
    version: i16,
) -> anyhow::Result<R> {
    let n = sock.read_i32().await?;
    let mut buf = vec![0u8; n as usize];
    sock.read_exact(&mut buf).await?;
    let mut b = Bytes::from(buf);
    let header = ResponseHeader::decode(&mut b, key.response_header_version(version))?;
    assert_eq!(header.correlation_id, 7);
    R::decode(&mut b, version)
}

/// True when the server closed the connection (EOF or reset) within 5 s.
async fn closed(sock: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), sock.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn batch(values: &[&str]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32 - 1,
            timestamp: 1_700_000_000_000 + i as i64,
            key: None,
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::Gzip,
        },
    )
    .unwrap();
    buf.freeze()
}

fn produce_req(topic: &str, records: Bytes) -> ProduceRequest {
    let mut p = PartitionProduceData::default();
    p.index = 0;
    p.records = Some(records);
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_string(topic.into()));
    t.partition_data = vec![p];
    let mut r = ProduceRequest::default();
    r.acks = -1;
    r.timeout_ms = 5000;
    r.topic_data = vec![t];
    r
}

fn fetch_req(topic: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    let mut p = FetchPartition::default();
    p.partition = 0;
    p.fetch_offset = offset;
    p.partition_max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic = TopicName(StrBytes::from_string(topic.into()));
    t.partitions = vec![p];
    let mut r = FetchRequest::default();
    r.replica_id = BrokerId(-1);
    r.max_wait_ms = max_wait_ms;
    r.min_bytes = 1;
    r.max_bytes = 1 << 20;
    r.topics = vec![t];
    r
}

#[tokio::test]
async fn api_versions_and_bad_frames() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut s = TcpStream::connect(server.kafka).await?;
    send(
        &mut s,
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    )
    .await?;
    let r: ApiVersionsResponse = receive(&mut s, ApiKey::ApiVersions, 3).await?;
    assert_eq!(r.error_code, 0);
    let produce = r
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Produce as i16)
        .unwrap();
    assert_eq!((produce.min_version, produce.max_version), (3, 9));
    assert_eq!(r.api_keys.len(), 17);

    // A version we do not have: UNSUPPORTED_VERSION, answered in v0.
    send(
        &mut s,
        ApiKey::ApiVersions,
        4,
        &ApiVersionsRequest::default(),
    )
    .await?;
    let r: ApiVersionsResponse = receive(&mut s, ApiKey::ApiVersions, 0).await?;
    assert_eq!(r.error_code, 35);
    assert!(!r.api_keys.is_empty());

    // An unknown API key closes the connection.
    s.write_i32(8).await?;
    s.write_all(&[0x03, 0xe7, 0, 0, 0, 0, 0, 7]).await?;
    assert!(closed(&mut s).await, "unknown API key");

    // An API we have at a version we do not: closed.
    let mut s = TcpStream::connect(server.kafka).await?;
    s.write_i32(12).await?;
    s.write_all(&[0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0]).await?;
    assert!(closed(&mut s).await, "unsupported Produce version");

    // An oversized frame, a negative one, a truncated one.
    for frame in [
        (1i32 << 30).to_be_bytes().to_vec(),
        (-5i32).to_be_bytes().to_vec(),
    ] {
        let mut s = TcpStream::connect(server.kafka).await?;
        s.write_all(&frame).await?;
        assert!(closed(&mut s).await);
    }
    let mut s = TcpStream::connect(server.kafka).await?;
    s.write_i32(100).await?;
    s.write_all(&[0, 18, 0, 3]).await?;
    s.shutdown().await?;
    assert!(closed(&mut s).await);
    // A frame whose body does not decode.
    let mut s = TcpStream::connect(server.kafka).await?;
    s.write_i32(12).await?;
    s.write_all(&[0, 3, 0, 9, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0x01])
        .await?;
    assert!(closed(&mut s).await, "garbage Metadata body");

    // The server is still there.
    let mut s = TcpStream::connect(server.kafka).await?;
    send(
        &mut s,
        ApiKey::ApiVersions,
        0,
        &ApiVersionsRequest::default(),
    )
    .await?;
    let r: ApiVersionsResponse = receive(&mut s, ApiKey::ApiVersions, 0).await?;
    assert_eq!(r.error_code, 0);
    server.stop().await
}

#[tokio::test]
async fn corrupt_batches_are_refused_and_fetch_long_polls() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let client = server.connect().await?;
    client
        .batch_execute("CREATE TOPIC t WITH (PARTITIONS = 1)")
        .await?;
    let mut s = TcpStream::connect(server.kafka).await?;

    let good = batch(&["a", "b", "c"]);
    let mut flipped = BytesMut::from(&good[..]);
    let last = flipped.len() - 1;
    flipped[last] ^= 0x55;
    let mut truncated = BytesMut::from(&good[..]);
    truncated.truncate(good.len() - 3);
    for bad in [
        flipped.freeze(),
        truncated.freeze(),
        Bytes::from_static(b"garbage"),
    ] {
        send(&mut s, ApiKey::Produce, 9, &produce_req("t", bad)).await?;
        let r: ProduceResponse = receive(&mut s, ApiKey::Produce, 9).await?;
        assert_eq!(
            r.responses[0].partition_responses[0].error_code, 2,
            "CORRUPT_MESSAGE"
        );
    }
    send(
        &mut s,
        ApiKey::Produce,
        9,
        &produce_req("nope", good.clone()),
    )
    .await?;
    let r: ProduceResponse = receive(&mut s, ApiKey::Produce, 9).await?;
    assert_eq!(
        r.responses[0].partition_responses[0].error_code, 3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );
    let rows = client.query_one("SELECT count(*) FROM t", &[]).await?;
    assert_eq!(
        rows.get::<_, i64>(0),
        0,
        "nothing of a bad batch is in the log"
    );

    send(&mut s, ApiKey::Produce, 9, &produce_req("t", good)).await?;
    let explain = |sql: &'static str| {
        let client = &client;
        async move {
            let rows = client.simple_query(sql).await?;
            let mut text = String::new();
            for m in rows {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    text.push_str(r.get(1).unwrap_or(""));
                    text.push('\n');
                }
            }
            Ok::<_, anyhow::Error>(text)
        }
    };
    let r: ProduceResponse = receive(&mut s, ApiKey::Produce, 9).await?;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 0);

    // Filters on _partition and _offset narrow what the log reads.
    let plan =
        explain("EXPLAIN SELECT _value FROM t WHERE _partition = 0 AND _offset >= 1").await?;
    assert!(
        plan.contains("TopicScanExec: topic=t, partitions=0:[1,3)"),
        "{plan}"
    );
    let plan = explain("EXPLAIN SELECT _value FROM t WHERE _partition = 1").await?;
    assert!(
        plan.contains("TopicScanExec: topic=t, partitions=\n") || plan.contains("partitions=\n"),
        "{plan}"
    );

    // A fetch at the end waits; an INSERT through SQL wakes it.
    let mut f = TcpStream::connect(server.kafka).await?;
    let started = Instant::now();
    send(&mut f, ApiKey::Fetch, 12, &fetch_req("t", 3, 10_000)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .batch_execute("INSERT INTO t (_value) VALUES ('d'::bytea)")
        .await?;
    let r: FetchResponse = receive(&mut f, ApiKey::Fetch, 12).await?;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let p = &r.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, 4));
    let mut records = p.records.clone().unwrap();
    let sets = RecordBatchDecoder::decode_all(&mut records)?;
    let got: Vec<(i64, Bytes)> = sets
        .iter()
        .flat_map(|s| {
            s.records
                .iter()
                .map(|r| (r.offset, r.value.clone().unwrap()))
        })
        .collect();
    assert_eq!(got, vec![(3, Bytes::from_static(b"d"))]);

    // With nothing new, the fetch returns empty after max wait.
    let started = Instant::now();
    send(&mut f, ApiKey::Fetch, 12, &fetch_req("t", 4, 300)).await?;
    let r: FetchResponse = receive(&mut f, ApiKey::Fetch, 12).await?;
    assert!(started.elapsed() >= Duration::from_millis(290));
    assert_eq!(
        r.responses[0].partitions[0]
            .records
            .as_ref()
            .map_or(0, |b| b.remaining()),
        0
    );
    // Past the end: OFFSET_OUT_OF_RANGE.
    send(&mut f, ApiKey::Fetch, 12, &fetch_req("t", 99, 0)).await?;
    let r: FetchResponse = receive(&mut f, ApiKey::Fetch, 12).await?;
    assert_eq!(r.responses[0].partitions[0].error_code, 1);
    server.stop().await
}

#[tokio::test]
async fn copy_into_a_topic_is_all_or_nothing() -> anyhow::Result<()> {
    use futures::SinkExt;
    let server = TestServer::start().await?;
    let client = server.connect().await?;
    client
        .batch_execute("CREATE TOPIC c (user_id TEXT, n INT) WITH (PARTITIONS = 4, KEY = user_id)")
        .await?;
    let copy = |data: &'static str| {
        let client = &client;
        async move {
            let sink = client
                .copy_in::<_, Bytes>("COPY c FROM STDIN (FORMAT csv, HEADER)")
                .await?;
            futures::pin_mut!(sink);
            sink.send(Bytes::from_static(data.as_bytes())).await?;
            sink.finish().await
        }
    };
    assert_eq!(copy("user_id,n\nu1,1\nu2,2\nu1,3\n").await?, 3);
    // A bad line: 22P02 naming the line, and nothing of this COPY is kept.
    let err = copy("user_id,n\nu3,4\nu4,four\n").await.unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22P02");
    assert!(db.message().contains("line 3"), "{}", db.message());
    let rows = client
        .query(
            "SELECT user_id, n, _partition, _offset FROM c ORDER BY n",
            &[],
        )
        .await?;
    let got: Vec<(String, i32, i32, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    // Same key, same partition, offsets in COPY order.
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].2, got[2].2);
    assert_eq!((got[0].3, got[2].3), (0, 1));
    server.stop().await
}
