//! The write-ahead log.
//!
//! Segment files `wal/<segment number, 20 digits>.wal` start with the 8-byte magic
//! `TBWAL001` and hold records:
//!
//! ```text
//! u32 LE  payload length
//! u32 LE  CRC-32 (IEEE) of the payload
//! payload: u64 table id, u64 sequence number, u32 cell count, then per cell
//!          u32 row length, row, u16 family length, family (UTF-8),
//!          u32 qualifier length, qualifier, i64 timestamp, u8 kind,
//!          u32 value length, value          (all integers little-endian)
//! ```
//!
//! One record is one write batch, so a batch is all or nothing. With
//! `SyncPolicy::Always`, concurrent writers share fsyncs: the first writer
//! to find no sync in progress becomes the leader, writes everything
//! buffered and calls `fdatasync` once for the whole group.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::cell::{CellKind, Mutation};
use crate::error::{io, Result, StorageError};

const MAGIC: &[u8; 8] = b"TBWAL001";
const HEADER: usize = 8;

/// When a write returns relative to fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Return after `fdatasync`; concurrent writers share one (group commit).
    Always,
    /// Return after the write(2); a background thread syncs every few ms.
    Batch,
    /// Never sync; the OS writes back when it likes.
    None,
}

/// A decoded WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub table: u64,
    pub seq: u64,
    pub mutations: Vec<Mutation>,
}

/// Appends one framed record (length, CRC-32 of the payload, payload) to `out`.
fn encode_record(table: u64, seq: u64, mutations: &[Mutation], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&table.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&u32_len(mutations.len()).to_le_bytes());
    for m in mutations {
        out.extend_from_slice(&u32_len(m.row.len()).to_le_bytes());
        out.extend_from_slice(&m.row);
        let family = u16::try_from(m.family.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&family.to_le_bytes());
        out.extend_from_slice(&m.family.as_bytes()[..usize::from(family)]);
        out.extend_from_slice(&u32_len(m.qualifier.len()).to_le_bytes());
        out.extend_from_slice(&m.qualifier);
        out.extend_from_slice(&m.ts.to_le_bytes());
        out.push(m.kind as u8);
        out.extend_from_slice(&u32_len(m.value.len()).to_le_bytes());
        out.extend_from_slice(&m.value);
    }
    let payload = &out[start + 8..];
    let len = u32_len(payload.len());
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

impl WalRecord {
    /// Appends the framed record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_record(self.table, self.seq, &self.mutations, out);
    }

    /// Decodes the record at the start of `buf`. `Ok(None)` means the bytes
    /// end before the record does or its checksum fails: a torn write.
    /// `Err` means a record whose checksum holds but whose contents do not
    /// parse, which no crash produces.
    pub fn decode(buf: &[u8]) -> std::result::Result<Option<(WalRecord, usize)>, String> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let Some(payload) = buf.get(8..8 + len) else {
            return Ok(None);
        };
        if crc32fast::hash(payload) != crc {
            return Ok(None);
        }
        let mut r = Reader {
            buf: payload,
            pos: 0,
        };
        let table = r.u64()?;
        let seq = r.u64()?;
        let count = r.u32()?;
        let mut mutations = Vec::with_capacity(count.min(1 << 16) as usize);
        for _ in 0..count {
            let row = r.bytes32()?;
            let flen = usize::from(r.u16()?);
            let family =
                String::from_utf8(r.take(flen)?.to_vec()).map_err(|_| "family is not UTF-8")?;
            let qualifier = r.bytes32()?;
            let ts = i64::from_le_bytes(r.array::<8>()?);
            let kind = CellKind::from_u8(r.take(1)?[0]).ok_or("unknown cell kind")?;
            let value = r.bytes32()?;
            mutations.push(Mutation {
                row,
                family,
                qualifier,
                ts,
                kind,
                value,
            });
        }
        if r.pos != payload.len() {
            return Err("trailing bytes in record".into());
        }
        Ok(Some((
            WalRecord {
                table,
                seq,
                mutations,
            },
            8 + len,
        )))
    }
}

fn u32_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or("record shorter than its fields")?;
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u16(&mut self) -> std::result::Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn bytes32(&mut self) -> std::result::Result<Vec<u8>, String> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

struct Segment {
    path: PathBuf,
    max_seq: u64,
}

struct State {
    file: Arc<File>,
    file_len: u64,
    /// Encoded records not yet written.
    pending: Vec<u8>,
    /// The buffer the last leader wrote, kept for its capacity: the two
    /// swap, so appends do not grow a fresh buffer every time.
    spare: Vec<u8>,
    pending_max_seq: u64,
    next_seq: u64,
    /// Every record with a sequence number up to this one is durable.
    durable_seq: u64,
    /// Every record up to this one has been handed to the OS.
    written_seq: u64,
    leader_active: bool,
    closed: Vec<Segment>,
    current: Segment,
    segment_no: u64,
    failed: Option<String>,
    last_sync: Instant,
    bytes_written: u64,
}

/// The log: appends, group commit, segment roll and purge.
pub struct Wal {
    dir: PathBuf,
    policy: SyncPolicy,
    segment_bytes: u64,
    state: Mutex<State>,
    durable: Condvar,
}

impl Wal {
    /// Replays every segment in `dir` (cutting a torn tail off the last),
    /// hands each record to `apply`, and opens a fresh segment. Sequence
    /// numbers continue above both the log's and `floor` (the highest one
    /// already in store files, whose segments may have been purged).
    pub fn open(
        dir: &Path,
        policy: SyncPolicy,
        segment_bytes: u64,
        floor: u64,
        mut apply: impl FnMut(WalRecord) -> Result<()>,
    ) -> Result<Wal> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .collect();
        paths.sort();
        let mut closed = Vec::new();
        let mut max_seq = 0;
        for (i, path) in paths.iter().enumerate() {
            let last = i + 1 == paths.len();
            let seg_max = replay_segment(path, last, &mut apply)?;
            max_seq = max_seq.max(seg_max);
            closed.push(Segment {
                path: path.clone(),
                max_seq: seg_max,
            });
        }
        let max_seq = max_seq.max(floor);
        let next_seq = max_seq + 1;
        let last_no = paths
            .iter()
            .filter_map(|p| p.file_stem()?.to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let (file, current) = new_segment(dir, last_no + 1)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            policy,
            segment_bytes,
            state: Mutex::new(State {
                file: Arc::new(file),
                file_len: HEADER as u64,
                pending: Vec::new(),
                spare: Vec::new(),
                pending_max_seq: 0,
                next_seq,
                durable_seq: max_seq,
                written_seq: max_seq,
                leader_active: false,
                closed,
                current,
                segment_no: last_no + 1,
                failed: None,
                last_sync: Instant::now(),
                bytes_written: 0,
            }),
            durable: Condvar::new(),
        })
    }

    /// The highest sequence number handed out so far.
    pub fn last_seq(&self) -> u64 {
        self.state.lock().next_seq - 1
    }

    /// Hands out a sequence number that no record carries: a bulk load
    /// stamps it on the cells of store files it writes straight to disk
    /// (after a restart, numbers continue above the files' own).
    pub fn reserve(&self) -> Result<u64> {
        let mut st = self.state.lock();
        if let Some(e) = &st.failed {
            return Err(StorageError::Poisoned(e.clone()));
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        Ok(seq)
    }

    /// Appends one batch and returns its sequence number once the policy
    /// says the write is done. `before_release` runs under the log's lock
    /// with the assigned sequence number, so callers can register it in
    /// order.
    pub fn append(
        &self,
        table: u64,
        mutations: &[Mutation],
        before_release: impl FnOnce(u64),
    ) -> Result<u64> {
        let mut st = self.state.lock();
        if let Some(e) = &st.failed {
            return Err(StorageError::Poisoned(e.clone()));
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        before_release(seq);
        let before = st.pending.len();
        encode_record(table, seq, mutations, &mut st.pending);
        st.bytes_written += (st.pending.len() - before) as u64;
        st.pending_max_seq = seq;
        let sync = self.policy == SyncPolicy::Always;
        loop {
            let done = if sync { st.durable_seq } else { st.written_seq };
            if done >= seq {
                return Ok(seq);
            }
            if let Some(e) = &st.failed {
                return Err(StorageError::Poisoned(e.clone()));
            }
            if !st.leader_active {
                st.leader_active = true;
                let result = self.write_pending(&mut st, sync);
                st.leader_active = false;
                self.durable.notify_all();
                result?;
            } else {
                self.durable.wait(&mut st);
            }
        }
    }

    /// Writes the pending buffer (outside the lock) and syncs if asked.
    fn write_pending(&self, st: &mut parking_lot::MutexGuard<'_, State>, sync: bool) -> Result<()> {
        let spare = std::mem::take(&mut st.spare);
        let mut buf = std::mem::replace(&mut st.pending, spare);
        let upto = st.pending_max_seq;
        let file = st.file.clone();
        let len = buf.len() as u64;
        let result = parking_lot::MutexGuard::unlocked(st, || {
            (&*file).write_all(&buf)?;
            if sync {
                file.sync_data()?;
            }
            Ok::<_, std::io::Error>(())
        });
        // A huge batch's buffer is not kept.
        if buf.capacity() <= 4 << 20 {
            buf.clear();
            st.spare = buf;
        }
        if let Err(e) = result {
            let path = st.current.path.clone();
            let msg = format!("WAL write to {} failed: {e}", path.display());
            st.failed = Some(msg.clone());
            self.durable.notify_all();
            return Err(StorageError::Io { path, source: e });
        }
        st.file_len += len;
        st.written_seq = st.written_seq.max(upto);
        st.current.max_seq = st.current.max_seq.max(upto);
        if sync || self.policy == SyncPolicy::None {
            st.durable_seq = st.durable_seq.max(upto);
        }
        if sync {
            st.last_sync = Instant::now();
        }
        if st.file_len >= self.segment_bytes && st.pending.is_empty() {
            self.roll(st)?;
        }
        Ok(())
    }

    fn roll(&self, st: &mut State) -> Result<()> {
        st.file.sync_data().map_err(io(&st.current.path))?;
        st.segment_no += 1;
        let (file, segment) = new_segment(&self.dir, st.segment_no)?;
        let old = std::mem::replace(&mut st.current, segment);
        st.closed.push(old);
        st.file = Arc::new(file);
        st.file_len = HEADER as u64;
        Ok(())
    }

    /// Syncs whatever has been written (the `Batch` policy's timer calls this).
    pub fn sync(&self) -> Result<()> {
        let mut st = self.state.lock();
        while st.leader_active {
            self.durable.wait(&mut st);
        }
        let written = st.written_seq;
        st.file.sync_data().map_err(io(&st.current.path))?;
        st.durable_seq = st.durable_seq.max(written);
        st.last_sync = Instant::now();
        Ok(())
    }

    /// Deletes closed segments whose every edit has a sequence number below
    /// `flushed_below` (that is, is in a store file).
    pub fn purge(&self, flushed_below: u64) -> Result<usize> {
        let mut st = self.state.lock();
        let mut removed = 0;
        let mut keep = Vec::new();
        for seg in std::mem::take(&mut st.closed) {
            if seg.max_seq < flushed_below {
                std::fs::remove_file(&seg.path).map_err(io(&seg.path))?;
                removed += 1;
            } else {
                keep.push(seg);
            }
        }
        st.closed = keep;
        Ok(removed)
    }

    /// Bytes of records appended since the log was opened.
    pub fn bytes_written(&self) -> u64 {
        self.state.lock().bytes_written
    }

    /// Number of segment files, for tests and metrics.
    pub fn segment_count(&self) -> usize {
        self.state.lock().closed.len() + 1
    }
}

fn new_segment(dir: &Path, number: u64) -> Result<(File, Segment)> {
    let path = dir.join(format!("{number:020}.wal"));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    file.write_all(MAGIC).map_err(io(&path))?;
    file.sync_all().map_err(io(&path))?;
    sync_dir(dir)?;
    Ok((file, Segment { path, max_seq: 0 }))
}

/// fsyncs a directory so renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Replays one segment; returns its highest sequence number.
fn replay_segment(
    path: &Path,
    last: bool,
    apply: &mut impl FnMut(WalRecord) -> Result<()>,
) -> Result<u64> {
    let data = std::fs::read(path).map_err(io(path))?;
    let corrupted = |offset: usize, reason: String| StorageError::Corrupted {
        file: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    if data.len() < HEADER || &data[..HEADER] != MAGIC {
        if last && data.len() < HEADER && MAGIC.starts_with(&data) {
            // Created but the header never made it: an empty segment.
            truncate(path, 0)?;
            return Ok(0);
        }
        return Err(corrupted(0, "not a WAL segment (bad magic)".into()));
    }
    let mut pos = HEADER;
    let mut max_seq = 0;
    while pos < data.len() {
        match WalRecord::decode(&data[pos..]).map_err(|e| corrupted(pos, e))? {
            Some((record, used)) => {
                max_seq = max_seq.max(record.seq);
                apply(record)?;
                pos += used;
            }
            None if last => {
                tracing::warn!(
                    file = %path.display(),
                    offset = pos,
                    cut = data.len() - pos,
                    "torn record at the end of the WAL; cutting it off"
                );
                truncate(path, pos as u64)?;
                break;
            }
            None => {
                return Err(corrupted(
                    pos,
                    "incomplete or checksum-failing record".into(),
                ))
            }
        }
    }
    Ok(max_seq)
}

fn truncate(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    f.set_len(len).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> WalRecord {
        WalRecord {
            table: 7,
            seq,
            mutations: vec![
                Mutation::put(b"row", "f", b"q", 42, b"value"),
                Mutation::delete(b"row2", "g", b"", -1),
                Mutation::delete_family(b"r", "f", 9),
            ],
        }
    }

    #[test]
    fn record_round_trips() {
        let mut buf = Vec::new();
        record(5).encode(&mut buf);
        let (decoded, used) = WalRecord::decode(&buf).unwrap().unwrap();
        assert_eq!(decoded, record(5));
        assert_eq!(used, buf.len());
    }

    #[test]
    fn every_truncation_is_torn_not_an_error() {
        let mut buf = Vec::new();
        record(1).encode(&mut buf);
        for cut in 0..buf.len() {
            assert_eq!(WalRecord::decode(&buf[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn flipped_bits_fail_the_checksum() {
        let mut buf = Vec::new();
        record(1).encode(&mut buf);
        for i in 8..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert_eq!(WalRecord::decode(&bad), Ok(None), "flip at {i}");
        }
    }

    proptest::proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = WalRecord::decode(&bytes);
        }

        #[test]
        fn decoding_random_bytes_with_a_valid_frame_never_panics(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let mut buf = Vec::new();
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            buf.extend_from_slice(&payload);
            let _ = WalRecord::decode(&buf);
        }
    }
}
