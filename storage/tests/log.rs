//! Topic logs: offsets, reads, reopen, torn tails, retention, idempotence.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tidebase_storage::log::{LogOptions, LogStore, TopicConfig};
use tidebase_storage::{StorageError, SyncPolicy};

fn record(offset: i64, value: &str, ts: i64, producer: Option<(i64, i32)>) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: producer.map_or(-1, |p| p.0),
        producer_epoch: if producer.is_some() { 0 } else { -1 },
        timestamp_type: TimestampType::Creation,
        offset,
        // The encoder starts a new batch where offset - sequence changes.
        sequence: producer.map_or(offset as i32 - 1, |p| p.1),
        timestamp: ts,
        key: None,
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: Default::default(),
    }
}

fn batch_with(
    values: &[&str],
    ts: i64,
    producer: Option<(i64, i32)>,
    compression: Compression,
) -> Vec<u8> {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| record(i as i64, v, ts, producer.map(|p| (p.0, p.1 + i as i32))))
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.to_vec()
}

fn batch(values: &[&str], ts: i64) -> Vec<u8> {
    batch_with(values, ts, None, Compression::None)
}

fn values(data: &[u8]) -> Vec<(i64, String)> {
    let mut buf = Bytes::copy_from_slice(data);
    let mut out = Vec::new();
    for set in RecordBatchDecoder::decode_all(&mut buf).unwrap() {
        for r in set.records {
            out.push((
                r.offset,
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            ));
        }
    }
    out
}

fn options(segment_bytes: u64) -> LogOptions {
    LogOptions {
        sync: SyncPolicy::Always,
        segment_bytes,
        ..LogOptions::default()
    }
}

#[test]
fn offsets_reads_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogStore::open(dir.path(), options(300)).unwrap();
        log.create_topic(
            "t",
            TopicConfig {
                partitions: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            log.create_topic("t", TopicConfig::default()),
            Err(StorageError::TopicExists(_))
        ));
        assert!(matches!(
            log.create_topic("bad name", TopicConfig::default()),
            Err(StorageError::InvalidTopic(_))
        ));
        for i in 0..20 {
            let a = log
                .append(
                    "t",
                    0,
                    &batch(&[&format!("a{i}"), &format!("b{i}")], 1000 + i),
                )
                .unwrap();
            assert_eq!(a.base_offset, 2 * i);
        }
        let a = log
            .append(
                "t",
                1,
                &batch_with(&["z1", "z2", "z3"], 5, None, Compression::Gzip),
            )
            .unwrap();
        assert_eq!(a.base_offset, 0);
        let p = log.topic("t").unwrap().partition(0).unwrap();
        assert!(
            p.segment_count() > 2,
            "small segments roll: {}",
            p.segment_count()
        );
        let all = values(&p.read(0, usize::MAX).unwrap().data);
        assert_eq!(all.len(), 40);
        assert!(all.iter().enumerate().all(|(i, (o, _))| *o == i as i64));
        // A read from the middle starts with the batch that holds the offset.
        let mid = values(&p.read(13, 1).unwrap().data);
        assert_eq!(mid, vec![(12, "a6".to_string()), (13, "b6".to_string())]);
        // A reused buffer, longer and full of other bytes, reads the same.
        let reused = p.read_into(13, 1, vec![0xee; 1 << 16]).unwrap().data;
        assert_eq!(reused, p.read(13, 1).unwrap().data);
        let grown = p.read_into(0, usize::MAX, vec![0xee; 3]).unwrap().data;
        assert_eq!(values(&grown), all);
        assert_eq!(p.read(40, 100).unwrap().data.len(), 0);
        assert!(matches!(
            p.read(41, 100),
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(p.batch_for_timestamp(1010), Some(20));
        assert_eq!(p.batch_for_timestamp(5000), None);
    }
    let log = LogStore::open(dir.path(), options(300)).unwrap();
    let t = log.topic("t").unwrap();
    let p = t.partition(0).unwrap();
    assert_eq!(p.high_watermark(), 40);
    assert_eq!(values(&p.read(0, usize::MAX).unwrap().data).len(), 40);
    assert_eq!(
        values(&t.partition(1).unwrap().read(0, usize::MAX).unwrap().data),
        vec![(0, "z1".into()), (1, "z2".into()), (2, "z3".into())]
    );
    assert_eq!(
        log.append("t", 0, &batch(&["c"], 1)).unwrap().base_offset,
        40
    );
    // Partitions only grow; the new ones start empty.
    log.alter_topic("t", |c| c.partitions = 4).unwrap();
    assert_eq!(t.partition_count(), 4);
    assert!(log.alter_topic("t", |c| c.partitions = 3).is_err());
    log.drop_topic("t").unwrap();
    assert!(log.topic("t").is_none());
    drop(log);
    let log = LogStore::open(dir.path(), options(300)).unwrap();
    assert!(log.topics().is_empty());
}

#[test]
fn bad_batches_are_refused_and_leave_the_log_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogStore::open(dir.path(), options(1 << 20)).unwrap();
    log.create_topic("t", TopicConfig::default()).unwrap();
    let good = batch(&["x"], 1);
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    for bad in [
        vec![],
        good[..good.len() - 1].to_vec(),
        flipped,
        vec![0u8; 70],
    ] {
        assert!(matches!(
            log.append("t", 0, &bad),
            Err(StorageError::InvalidRecordBatch(_))
        ));
    }
    assert!(matches!(
        log.append("t", 5, &good),
        Err(StorageError::PartitionNotFound { .. })
    ));
    assert_eq!(log.append("t", 0, &good).unwrap().base_offset, 0);
}

#[test]
fn torn_tail_is_cut_at_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogStore::open(dir.path(), options(1 << 20)).unwrap();
        log.create_topic("t", TopicConfig::default()).unwrap();
        log.append("t", 0, &batch(&["one", "two"], 1)).unwrap();
        log.append("t", 0, &batch(&["three"], 2)).unwrap();
    }
    let seg = dir.path().join("t/0/00000000000000000000.log");
    let full = std::fs::read(&seg).unwrap();
    let first_len = batch(&["one", "two"], 1).len();
    for cut in first_len..full.len() {
        std::fs::write(&seg, &full[..cut]).unwrap();
        let log = LogStore::open(dir.path(), options(1 << 20)).unwrap();
        let p = log.topic("t").unwrap().partition(0).unwrap();
        assert_eq!(p.high_watermark(), 2, "cut at {cut}");
        assert_eq!(values(&p.read(0, usize::MAX).unwrap().data).len(), 2);
        // The next append continues right after the kept prefix.
        assert_eq!(
            log.append("t", 0, &batch(&["again"], 3))
                .unwrap()
                .base_offset,
            2
        );
    }
}

#[test]
fn corruption_in_a_sealed_segment_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogStore::open(dir.path(), options(100)).unwrap();
        log.create_topic("t", TopicConfig::default()).unwrap();
        for i in 0..5 {
            log.append("t", 0, &batch(&["some value here"], i)).unwrap();
        }
    }
    let seg = dir.path().join("t/0/00000000000000000000.log");
    std::fs::remove_file(seg.with_extension("index")).unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[30] ^= 1;
    std::fs::write(&seg, bytes).unwrap();
    let err = LogStore::open(dir.path(), options(100))
        .err()
        .expect("corruption is an error");
    let text = err.to_string();
    assert!(
        text.contains("00000000000000000000.log") && text.contains("offset 0"),
        "{text}"
    );
}

#[test]
fn retention_by_time_and_size_drops_whole_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogStore::open(dir.path(), options(200)).unwrap();
    let config = TopicConfig {
        retention_ms: Some(1000),
        ..Default::default()
    };
    log.create_topic("t", config).unwrap();
    for i in 0..10 {
        log.append(
            "t",
            0,
            &batch(&["0123456789012345678901234567890123456789"], i * 100),
        )
        .unwrap();
    }
    let p = log.topic("t").unwrap().partition(0).unwrap();
    let segments = p.segment_count();
    assert!(segments >= 3);
    // now = 1500: records at ts < 500 are expired; a segment goes only if all of it is.
    log.enforce_retention(1500).unwrap();
    let start = p.log_start();
    assert!(start > 0 && start <= 5, "log start {start}");
    assert_eq!(
        values(&p.read(start, usize::MAX).unwrap().data)
            .first()
            .unwrap()
            .0,
        start
    );
    assert!(matches!(
        p.read(0, 10),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    // Everything expired: the active segment is sealed and dropped, offsets go on.
    log.enforce_retention(1_000_000).unwrap();
    assert_eq!(p.log_start(), 10);
    assert_eq!(
        log.append("t", 0, &batch(&["new"], 2_000_000))
            .unwrap()
            .base_offset,
        10
    );

    log.create_topic(
        "s",
        TopicConfig {
            retention_bytes: Some(300),
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..10 {
        log.append(
            "s",
            0,
            &batch(&["0123456789012345678901234567890123456789"], i),
        )
        .unwrap();
    }
    let s = log.topic("s").unwrap().partition(0).unwrap();
    log.enforce_retention(0).unwrap();
    assert!(s.size() >= 300 && s.size() < 300 + 400, "size {}", s.size());
    assert!(s.log_start() > 0);
}

#[test]
fn retried_idempotent_batches_are_not_written_twice() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogStore::open(dir.path(), options(1 << 20)).unwrap();
        log.create_topic("t", TopicConfig::default()).unwrap();
        let b0 = batch_with(&["a", "b"], 1, Some((7, 0)), Compression::None);
        let b1 = batch_with(&["c"], 1, Some((7, 2)), Compression::None);
        assert_eq!(log.append("t", 0, &b0).unwrap().base_offset, 0);
        assert_eq!(log.append("t", 0, &b1).unwrap().base_offset, 2);
        let again = log.append("t", 0, &b1).unwrap();
        assert!(again.duplicate);
        assert_eq!(again.base_offset, 2);
        let gap = batch_with(&["e"], 1, Some((7, 9)), Compression::None);
        assert!(matches!(
            log.append("t", 0, &gap),
            Err(StorageError::OutOfOrderSequence { .. })
        ));
    }
    // The producer's state is rebuilt from the log after a restart.
    let log = LogStore::open(dir.path(), options(1 << 20)).unwrap();
    let b1 = batch_with(&["c"], 1, Some((7, 2)), Compression::None);
    assert!(log.append("t", 0, &b1).unwrap().duplicate);
    assert_eq!(
        log.topic("t")
            .unwrap()
            .partition(0)
            .unwrap()
            .high_watermark(),
        3
    );
}

#[test]
fn concurrent_appends_share_syncs_and_keep_offsets_dense() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogStore::open(dir.path(), options(4096)).unwrap();
    log.create_topic("t", TopicConfig::default()).unwrap();
    std::thread::scope(|s| {
        for w in 0..8 {
            let log = &log;
            s.spawn(move || {
                for i in 0..50 {
                    log.append("t", 0, &batch(&[&format!("{w}-{i}")], i))
                        .unwrap();
                }
            });
        }
    });
    let p = log.topic("t").unwrap().partition(0).unwrap();
    let all = values(&p.read(0, usize::MAX).unwrap().data);
    assert_eq!(all.len(), 400);
    assert!(all.iter().enumerate().all(|(i, (o, _))| *o == i as i64));
    for w in 0..8 {
        let mine: Vec<usize> = all
            .iter()
            .filter_map(|(_, v)| v.strip_prefix(&format!("{w}-"))?.parse().ok())
            .collect();
        assert_eq!(mine, (0..50).collect::<Vec<_>>(), "writer {w} in order");
    }
}
