//! Fetch responses framed without copying their records.
//!
//! A fetch response is mostly record bytes from the log. The generic path
//! (`write_response`) copies them into the response buffer, and the socket
//! write copies them again. Here the response's own fields are encoded into
//! the buffer and each partition's records are left out of it, as a splice
//! `(offset, records)`: records in memory go out with the buffer in one
//! vectored write, records still in the log's segment files go from the
//! page cache to the socket with `sendfile`, never copied into the server
//! (as Kafka brokers do).
//!
//! The layout follows Fetch v4 to v12 field by field (v12 is the first
//! flexible version: compact lengths and tagged-field counts). A test checks
//! every version byte for byte against the kafka-protocol encoder.

use bytes::{BufMut, Bytes};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::FetchResponse;
use tidebase_catalog::storage::log::{FileRange, Located};

use super::InLog;

/// Record bytes to insert into an encoded frame.
pub(super) enum Records {
    Memory(Bytes),
    File(FileRange),
}

impl Records {
    fn len(&self) -> usize {
        match self {
            Records::Memory(b) => b.len(),
            Records::File(r) => r.len,
        }
    }
}

/// Records to insert into an encoded frame: `(offset in the frame buffer,
/// records)`, by offset.
pub(super) type Splices = Vec<(usize, Records)>;

/// Whether `r` sets nothing outside the fields [`encode`] writes: no tagged
/// fields, no leader or epoch hints (this broker never sets them).
pub(super) fn plain(r: &FetchResponse) -> bool {
    r.unknown_tagged_fields.is_empty()
        && r.node_endpoints.is_empty()
        && r.responses.iter().all(|t| {
            t.unknown_tagged_fields.is_empty()
                && t.partitions.iter().all(|p| {
                    p.unknown_tagged_fields.is_empty()
                        && p.diverging_epoch == Default::default()
                        && p.current_leader == Default::default()
                        && p.snapshot_id == Default::default()
                        && p.aborted_transactions
                            .as_ref()
                            .is_none_or(|a| a.iter().all(|t| t.unknown_tagged_fields.is_empty()))
                })
        })
}

/// Appends the frame (size, header, body) of fetch response `r` in version
/// `v` (4 to 12) to `out`, leaving each partition's records (its `records`,
/// or where `in_log` says they are, for partitions whose `records` is
/// `None`; in response order) out of it and in `splices`. `r` must be
/// [`plain`].
pub(super) fn encode(
    out: &mut Vec<u8>,
    splices: &mut Splices,
    correlation: i32,
    r: &FetchResponse,
    in_log: &[InLog],
    v: i16,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        (4..=12).contains(&v),
        "fetch version {v} is not framed here"
    );
    let flexible = v >= 12;
    let start = out.len();
    let first_splice = splices.len();
    out.put_i32(0);
    // Response header: v1 (with tagged fields) for flexible versions.
    out.put_i32(correlation);
    if flexible {
        varint(out, 0);
    }
    out.put_i32(r.throttle_time_ms);
    if v >= 7 {
        out.put_i16(r.error_code);
        out.put_i32(r.session_id);
    }
    array_len(out, flexible, Some(r.responses.len()))?;
    let mut in_log = in_log.iter().peekable();
    for (ti, t) in r.responses.iter().enumerate() {
        let name = t.topic.as_bytes();
        if flexible {
            varint(out, u32::try_from(name.len() + 1)?);
        } else {
            out.put_i16(i16::try_from(name.len())?);
        }
        out.put_slice(name);
        array_len(out, flexible, Some(t.partitions.len()))?;
        for (pi, p) in t.partitions.iter().enumerate() {
            let located = in_log.next_if(|(at, _)| *at == (ti, pi)).map(|(_, l)| l);
            partition(out, splices, p, located, v)?;
        }
        if flexible {
            varint(out, 0);
        }
    }
    if flexible {
        varint(out, 0);
    }
    anyhow::ensure!(
        in_log.next().is_none(),
        "records in the log for a partition not in the response"
    );
    let records: usize = splices[first_splice..].iter().map(|(_, r)| r.len()).sum();
    let size = i32::try_from(out.len() - start - 4 + records)?;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

fn partition(
    out: &mut Vec<u8>,
    splices: &mut Splices,
    p: &PartitionData,
    located: Option<&Located>,
    v: i16,
) -> anyhow::Result<()> {
    let flexible = v >= 12;
    out.put_i32(p.partition_index);
    out.put_i16(p.error_code);
    out.put_i64(p.high_watermark);
    out.put_i64(p.last_stable_offset);
    if v >= 5 {
        out.put_i64(p.log_start_offset);
    }
    let aborted = p.aborted_transactions.as_ref();
    array_len(out, flexible, aborted.map(Vec::len))?;
    for a in aborted.into_iter().flatten() {
        out.put_i64(a.producer_id.0);
        out.put_i64(a.first_offset);
        if flexible {
            varint(out, 0);
        }
    }
    if v >= 11 {
        out.put_i32(p.preferred_read_replica.0);
    } else {
        anyhow::ensure!(
            p.preferred_read_replica.0 == -1,
            "a preferred read replica needs fetch v11"
        );
    }
    // The partition's records as pieces to splice in; `None` is null.
    let records: Option<Vec<Records>> = match (&p.records, located) {
        (Some(bytes), None) => Some(vec![Records::Memory(bytes.clone())]),
        (None, Some(located)) => Some(
            located
                .ranges
                .iter()
                .map(|r| Records::File(r.clone()))
                .collect(),
        ),
        (None, None) => None,
        (Some(_), Some(_)) => anyhow::bail!("a partition's records are in memory and in the log"),
    };
    match records {
        None if flexible => varint(out, 0),
        None => out.put_i32(-1),
        Some(records) => {
            let len: usize = records.iter().map(Records::len).sum();
            if flexible {
                varint(out, u32::try_from(len + 1)?);
            } else {
                out.put_i32(i32::try_from(len)?);
            }
            let at = out.len();
            splices.extend(records.into_iter().filter(|r| r.len() > 0).map(|r| (at, r)));
        }
    }
    if flexible {
        varint(out, 0);
    }
    Ok(())
}

/// An array's length: a compact (length + 1, 0 for null) unsigned varint
/// in flexible versions, an `i32` (-1 for null) before.
fn array_len(out: &mut Vec<u8>, flexible: bool, len: Option<usize>) -> anyhow::Result<()> {
    match (flexible, len) {
        (true, None) => varint(out, 0),
        (true, Some(n)) => varint(out, u32::try_from(n + 1)?),
        (false, None) => out.put_i32(-1),
        (false, Some(n)) => out.put_i32(i32::try_from(n)?),
    }
    Ok(())
}

fn varint(out: &mut Vec<u8>, mut n: u32) {
    while n >= 0x80 {
        out.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

/// A piece of a frame on the wire.
pub(super) enum Piece<'a> {
    Memory(&'a [u8]),
    File(&'a FileRange),
}

/// The pieces of the frame `out` with `splices` inserted, in wire order
/// (empty ones left out).
pub(super) fn pieces<'a>(out: &'a [u8], splices: &'a Splices) -> impl Iterator<Item = Piece<'a>> {
    let mut at = 0;
    splices
        .iter()
        .flat_map(move |(offset, records)| {
            let head = Piece::Memory(&out[at..*offset]);
            at = *offset;
            let records = match records {
                Records::Memory(b) => Piece::Memory(b.as_ref()),
                Records::File(r) => Piece::File(r),
            };
            [head, records]
        })
        .chain(std::iter::once_with(move || {
            Piece::Memory(&out[splices.last().map_or(0, |(offset, _)| *offset)..])
        }))
        .filter(|p| !matches!(p, Piece::Memory(b) if b.is_empty()))
}

/// The frame as it goes on the wire, file ranges read.
#[cfg(test)]
pub(super) fn wire(out: &[u8], splices: &Splices) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut wire = Vec::new();
    for piece in pieces(out, splices) {
        match piece {
            Piece::Memory(b) => wire.extend_from_slice(b),
            Piece::File(r) => {
                let mut bytes = vec![0; r.len];
                r.file.read_exact_at(&mut bytes, r.pos).expect("read");
                wire.extend_from_slice(&bytes);
            }
        }
    }
    wire
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse};
    use kafka_protocol::messages::{ApiKey, BrokerId, ProducerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn response(v: i16) -> FetchResponse {
        let mut r = FetchResponse::default();
        r.throttle_time_ms = 7;
        if v >= 7 {
            r.error_code = 0;
            r.session_id = 42;
        }
        for (name, parts) in [("clicks", 3), ("a-much-longer-topic-name", 2), ("empty", 0)] {
            let mut t = FetchableTopicResponse::default();
            t.topic = TopicName(StrBytes::from_static_str(name));
            for i in 0..parts {
                let mut p = PartitionData::default();
                p.partition_index = i;
                p.error_code = if i == 2 { 3 } else { 0 };
                p.high_watermark = 1000 + i64::from(i);
                p.last_stable_offset = 999;
                if v >= 5 {
                    p.log_start_offset = 5;
                }
                p.aborted_transactions = match i {
                    0 => None,
                    1 => Some(Vec::new()),
                    _ => {
                        let mut a = AbortedTransaction::default();
                        a.producer_id = ProducerId(9);
                        a.first_offset = 77;
                        Some(vec![a])
                    }
                };
                if v >= 11 && i == 1 {
                    p.preferred_read_replica = BrokerId(0);
                }
                p.records = match i {
                    0 => Some(Bytes::from(vec![7u8; 300])),
                    1 => Some(Bytes::new()),
                    _ => None,
                };
                t.partitions.push(p);
            }
            r.responses.push(t);
        }
        r
    }

    #[test]
    fn frames_equal_the_generic_encoder_in_every_version() {
        for v in 4..=12 {
            let r = response(v);
            assert!(plain(&r));
            let mut generic = Vec::new();
            let hv = ApiKey::Fetch.response_header_version(v);
            super::super::write_response(&mut generic, 11, hv, &r, v).expect("generic");
            let (mut out, mut splices) = (vec![1, 2, 3], Splices::new());
            encode(&mut out, &mut splices, 11, &r, &[], v).expect("framed");
            // What was in the buffer before stays; records are not copied.
            assert_eq!(&out[..3], &[1, 2, 3]);
            assert_eq!(splices.len(), 2, "two partitions have records (v{v})");
            assert!(out.len() + 600 - 3 == generic.len(), "v{v}");
            assert_eq!(&wire(&out, &splices)[3..], generic.as_slice(), "fetch v{v}");
        }
    }

    #[test]
    fn records_in_the_log_are_framed_as_records_in_memory() {
        use std::io::Write;
        use std::sync::Arc;
        // A segment file: 100 bytes of something else, then the records of
        // partition 0 in two ranges (as across two segments), then those of
        // partition 1.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("segment");
        let mut f = std::fs::File::create(&path).expect("create");
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        f.write_all(&data).expect("write");
        let file = Arc::new(std::fs::File::open(&path).expect("open"));
        let range = |pos: u64, len: usize| FileRange {
            file: file.clone(),
            path: path.clone(),
            pos,
            len,
        };
        for v in 4..=12 {
            let mut in_memory = response(v);
            let mut in_files = response(v);
            let mut located = Vec::new();
            for (pi, ranges) in [
                (0, vec![range(100, 200), range(300, 100)]),
                (1, vec![range(400, 50)]),
            ] {
                let bytes: Vec<u8> = ranges
                    .iter()
                    .flat_map(|r| data[r.pos as usize..r.pos as usize + r.len].to_vec())
                    .collect();
                in_memory.responses[0].partitions[pi].records = Some(Bytes::from(bytes));
                in_files.responses[0].partitions[pi].records = None;
                let l = Located {
                    ranges,
                    high_watermark: 0,
                    log_start: 0,
                };
                located.push(((0, pi), l));
            }
            let (mut expected, mut splices) = (Vec::new(), Splices::new());
            encode(&mut expected, &mut splices, 5, &in_memory, &[], v).expect("framed");
            let expected = wire(&expected, &splices);
            let (mut out, mut splices) = (Vec::new(), Splices::new());
            encode(&mut out, &mut splices, 5, &in_files, &located, v).expect("framed");
            let files = splices
                .iter()
                .filter(|(_, r)| matches!(r, Records::File(_)))
                .count();
            assert_eq!(files, 3, "v{v}");
            assert_eq!(wire(&out, &splices), expected, "fetch v{v}");
        }
        // Located records for a partition that is not in the response.
        let (mut out, mut splices) = (Vec::new(), Splices::new());
        let stray = [((9, 0), Located::default())];
        assert!(encode(&mut out, &mut splices, 5, &response(12), &stray, 12).is_err());
    }

    #[test]
    fn responses_with_hints_are_not_plain() {
        let mut r = response(12);
        r.responses[0].partitions[0].current_leader.leader_id = BrokerId(0);
        assert!(!plain(&r));
    }
}
