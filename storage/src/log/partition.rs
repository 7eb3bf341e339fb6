//! One partition of a topic: an append-only sequence of segment files.
//!
//! `<partition dir>/<base offset, 20 digits>.log` holds record batches back to
//! back, exactly as producers sent them but for the base offset, which the log
//! assigns. A sealed segment also has `<base>.index`: one entry per batch
//! (offset range, file position, size, max timestamp), that is, the offset
//! index and the time index in one file, with a CRC-32 at the end. The active
//! (last) segment's index lives in memory and is rebuilt on open by reading
//! its batches, whose checksums also find a torn tail to cut.
//!
//! Appends are group-committed as in the WAL: the first writer to find no
//! write in progress writes every pending batch and, under `SyncPolicy::Always`,
//! calls `fdatasync` once for the group. Readers see offsets below the *high
//! watermark*, which moves only when the bytes are durable by the policy.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::batch::{check_batch, check_batches, set_base_offset, BatchHeader};
use crate::error::{io, Result, StorageError};
use crate::wal::{sync_dir, SyncPolicy};

/// One batch in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    base: i64,
    last: i64,
    pos: u64,
    size: u32,
    max_ts: i64,
}

const ENTRY_LEN: usize = 36;
/// The largest write buffer kept for reuse.
const SPARE_BYTES: usize = 16 << 20;

impl Entry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.base.to_le_bytes());
        out.extend_from_slice(&self.last.to_le_bytes());
        out.extend_from_slice(&self.pos.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.max_ts.to_le_bytes());
    }
    fn decode(b: &[u8]) -> Entry {
        let i64_at = |at: usize| i64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
        Entry {
            base: i64_at(0),
            last: i64_at(8),
            pos: i64_at(16) as u64,
            size: u32::from_le_bytes(b[24..28].try_into().unwrap_or([0; 4])),
            max_ts: i64_at(28),
        }
    }
}

struct Segment {
    base: i64,
    path: PathBuf,
    file: Arc<File>,
    size: u64,
    entries: Vec<Entry>,
}

impl Segment {
    fn max_ts(&self) -> i64 {
        self.entries
            .iter()
            .map(|e| e.max_ts)
            .max()
            .unwrap_or(i64::MIN)
    }
}

/// What the log remembers of an idempotent producer, to drop retried batches.
#[derive(Debug, Clone, Copy)]
struct ProducerState {
    epoch: i16,
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

struct State {
    segments: Vec<Segment>,
    next_offset: i64,
    high_watermark: i64,
    pending: Vec<u8>,
    /// The buffer the last write went out of, kept for the next `pending`:
    /// a fresh buffer per write grew by doubling into memory the kernel had
    /// to fault in and zero.
    spare: Vec<u8>,
    pending_entries: Vec<Entry>,
    leader_active: bool,
    failed: Option<String>,
    last_sync: Instant,
    producers: HashMap<i64, ProducerState>,
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record appended (or, for a retried batch, of the
    /// copy already in the log).
    pub base_offset: i64,
    /// The batch was a retry of one already in the log and was not written again.
    pub duplicate: bool,
    pub log_start: i64,
}

/// Batches read from a partition.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// Whole record batches, back to back; the first one contains the
    /// requested offset.
    pub data: Vec<u8>,
    pub high_watermark: i64,
    pub log_start: i64,
}

/// Where whole record batches of a read are: byte ranges of the
/// partition's segment files, in log order ([`Partition::locate`]). The
/// files are held open, so a segment deleted meanwhile can still be read.
#[derive(Debug, Clone, Default)]
pub struct Located {
    pub ranges: Vec<FileRange>,
    pub high_watermark: i64,
    pub log_start: i64,
}

/// Bytes `[pos, pos + len)` of a segment file.
#[derive(Debug, Clone)]
pub struct FileRange {
    pub file: Arc<File>,
    pub path: PathBuf,
    pub pos: u64,
    pub len: usize,
}

impl Located {
    /// The bytes of all ranges.
    pub fn len(&self) -> usize {
        self.ranges.iter().map(|r| r.len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the ranges into `buffer` (reused: memory that served an
    /// earlier read is neither zeroed again nor faulted in anew).
    pub fn read_into(self, buffer: Vec<u8>) -> Result<Fetched> {
        let mut data = buffer;
        let n = self.len();
        // Every byte below `n` is read from the file next.
        if data.len() < n {
            data.resize(n, 0);
        } else {
            data.truncate(n);
        }
        let mut at = 0;
        for r in self.ranges {
            r.file
                .read_exact_at(&mut data[at..at + r.len], r.pos)
                .map_err(io(&r.path))?;
            at += r.len;
        }
        Ok(Fetched {
            data,
            high_watermark: self.high_watermark,
            log_start: self.log_start,
        })
    }
}

/// A partition's log.
pub struct Partition {
    dir: PathBuf,
    policy: SyncPolicy,
    segment_bytes: u64,
    state: Mutex<State>,
    durable: Condvar,
}

fn segment_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn index_path(log: &Path) -> PathBuf {
    log.with_extension("index")
}

fn open_rw(path: &Path, create: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(io(path))
}

impl Partition {
    /// Opens (or creates) the partition in `dir`, cutting a torn tail off the
    /// active segment.
    pub fn open(dir: &Path, policy: SyncPolicy, segment_bytes: u64) -> Result<Partition> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut bases: Vec<(i64, PathBuf)> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .filter_map(|p| Some((p.file_stem()?.to_str()?.parse::<i64>().ok()?, p)))
            .collect();
        bases.sort();
        let mut segments = Vec::new();
        let mut producers = HashMap::new();
        let mut expected: Option<i64> = None;
        let n = bases.len();
        for (i, (base, path)) in bases.into_iter().enumerate() {
            let last = i + 1 == n;
            if let Some(e) = expected {
                if e != base {
                    return Err(StorageError::Corrupted {
                        file: path,
                        offset: 0,
                        reason: format!(
                            "segment starts at offset {base}, the previous one ends at {e}"
                        ),
                    });
                }
            }
            let seg = load_segment(&path, base, last, &mut producers)?;
            expected = Some(seg.entries.last().map_or(base, |e| e.last + 1));
            segments.push(seg);
        }
        if segments.is_empty() {
            let path = segment_path(dir, 0);
            let file = open_rw(&path, true)?;
            sync_dir(dir)?;
            segments.push(Segment {
                base: 0,
                path,
                file: Arc::new(file),
                size: 0,
                entries: Vec::new(),
            });
        }
        let next_offset = expected.unwrap_or(0);
        Ok(Partition {
            dir: dir.to_path_buf(),
            policy,
            segment_bytes,
            state: Mutex::new(State {
                segments,
                next_offset,
                high_watermark: next_offset,
                pending: Vec::new(),
                spare: Vec::new(),
                pending_entries: Vec::new(),
                leader_active: false,
                failed: None,
                last_sync: Instant::now(),
                producers,
            }),
            durable: Condvar::new(),
        })
    }

    /// Appends record batches (one or more, back to back), assigning offsets.
    /// Returns once the policy says they are written; only then can readers
    /// see them.
    pub fn append(&self, data: &[u8]) -> Result<Appended> {
        let headers = check_batches(data).map_err(StorageError::InvalidRecordBatch)?;
        let mut st = self.state.lock();
        if let Some(e) = &st.failed {
            return Err(StorageError::Poisoned(e.clone()));
        }
        // Idempotent producers: a batch equal to the last one seen from the
        // producer is a retry; one that skips sequence numbers is refused.
        let mut duplicate_of = None;
        for h in &headers {
            if h.producer_id < 0 || h.base_sequence < 0 {
                continue;
            }
            if let Some(p) = st.producers.get(&h.producer_id) {
                if p.epoch == h.producer_epoch {
                    if h.base_sequence == p.first_seq {
                        duplicate_of = Some(p.base_offset);
                        continue;
                    }
                    if h.base_sequence != p.last_seq.wrapping_add(1) {
                        return Err(StorageError::OutOfOrderSequence {
                            producer_id: h.producer_id,
                            expected: p.last_seq.wrapping_add(1),
                            got: h.base_sequence,
                        });
                    }
                }
            }
        }
        if let Some(base_offset) = duplicate_of {
            if headers.len() == 1 {
                return Ok(Appended {
                    base_offset,
                    duplicate: true,
                    log_start: st.segments[0].base,
                });
            }
        }
        let first = st.next_offset;
        // The batches go straight into the pending buffer, where their base
        // offsets are set: one copy of the producer's bytes.
        let at = st.pending.len();
        st.pending.extend_from_slice(data);
        let mut pos = 0usize;
        for h in &headers {
            let base = st.next_offset;
            set_base_offset(&mut st.pending[at + pos..], base);
            let entry = Entry {
                base,
                last: base + i64::from(h.last_offset_delta),
                pos: (at + pos) as u64,
                size: h.size as u32,
                max_ts: h.max_timestamp,
            };
            st.pending_entries.push(entry);
            if h.producer_id >= 0 && h.base_sequence >= 0 {
                st.producers.insert(
                    h.producer_id,
                    ProducerState {
                        epoch: h.producer_epoch,
                        first_seq: h.base_sequence,
                        last_seq: h.base_sequence.wrapping_add(h.last_offset_delta),
                        base_offset: base,
                    },
                );
            }
            st.next_offset = entry.last + 1;
            pos += h.size;
        }
        let upto = st.next_offset;
        loop {
            if st.high_watermark >= upto {
                return Ok(Appended {
                    base_offset: first,
                    duplicate: false,
                    log_start: st.segments[0].base,
                });
            }
            if let Some(e) = &st.failed {
                return Err(StorageError::Poisoned(e.clone()));
            }
            if !st.leader_active {
                st.leader_active = true;
                let result = self.write_pending(&mut st);
                st.leader_active = false;
                self.durable.notify_all();
                result?;
            } else {
                self.durable.wait(&mut st);
            }
        }
    }

    fn write_pending(&self, st: &mut parking_lot::MutexGuard<'_, State>) -> Result<()> {
        if st.pending_entries.is_empty() {
            return Ok(());
        }
        let active_size = st.segments.last().map_or(0, |s| s.size);
        if active_size >= self.segment_bytes {
            let base = st.pending_entries[0].base;
            self.roll(st, base)?;
        }
        let spare = std::mem::take(&mut st.spare);
        let mut buf = std::mem::replace(&mut st.pending, spare);
        let mut entries = std::mem::take(&mut st.pending_entries);
        let upto = entries.last().map_or(st.high_watermark, |e| e.last + 1);
        let (file, path, at) = {
            let seg = st
                .segments
                .last()
                .expect("a partition always has a segment");
            (seg.file.clone(), seg.path.clone(), seg.size)
        };
        let sync = self.policy == SyncPolicy::Always;
        let result = parking_lot::MutexGuard::unlocked(st, || {
            file.write_all_at(&buf, at)?;
            if sync {
                file.sync_data()?;
            }
            Ok::<_, std::io::Error>(())
        });
        if let Err(e) = result {
            let msg = format!("log write to {} failed: {e}", path.display());
            st.failed = Some(msg);
            return Err(StorageError::Io { path, source: e });
        }
        for e in &mut entries {
            e.pos += at;
        }
        let seg = st
            .segments
            .last_mut()
            .expect("a partition always has a segment");
        seg.size += buf.len() as u64;
        seg.entries.extend(entries);
        st.high_watermark = upto;
        if buf.capacity() <= SPARE_BYTES {
            buf.clear();
            st.spare = buf;
        }
        if sync {
            st.last_sync = Instant::now();
        }
        Ok(())
    }

    /// Seals the active segment (writing its index) and starts one at `base`.
    fn roll(&self, st: &mut State, base: i64) -> Result<()> {
        if let Some(seg) = st.segments.last() {
            if self.policy != SyncPolicy::None {
                seg.file.sync_data().map_err(io(&seg.path))?;
            }
            write_index(seg)?;
        }
        let path = segment_path(&self.dir, base);
        let file = open_rw(&path, true)?;
        sync_dir(&self.dir)?;
        st.segments.push(Segment {
            base,
            path,
            file: Arc::new(file),
            size: 0,
            entries: Vec::new(),
        });
        Ok(())
    }

    /// Syncs what has been written (the `Batch` policy's timer).
    pub fn sync(&self) -> Result<()> {
        let st = self.state.lock();
        if let Some(seg) = st.segments.last() {
            seg.file.sync_data().map_err(io(&seg.path))?;
        }
        Ok(())
    }

    /// Reads whole batches starting with the one that holds `offset`, up to
    /// about `max_bytes` (at least one batch if there is one).
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<Fetched> {
        self.read_into(offset, max_bytes, Vec::new())
    }

    /// [`Partition::read`] into `buffer`, whose memory is reused
    /// ([`Located::read_into`]; the Kafka listener keeps a pool of them).
    pub fn read_into(&self, offset: i64, max_bytes: usize, buffer: Vec<u8>) -> Result<Fetched> {
        self.locate(offset, max_bytes)?.read_into(buffer)
    }

    /// Where [`Partition::read`] would read from, without reading: whole
    /// batches starting with the one that holds `offset`, up to about
    /// `max_bytes` (at least one batch if there is one), below the high
    /// watermark.
    pub fn locate(&self, offset: i64, max_bytes: usize) -> Result<Located> {
        let st = self.state.lock();
        let start = st.segments[0].base;
        let hw = st.high_watermark;
        if offset < start || offset > hw {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                start,
                end: hw,
            });
        }
        let mut ranges = Vec::new();
        let mut total = 0usize;
        let first_seg = st
            .segments
            .partition_point(|s| s.base <= offset)
            .saturating_sub(1);
        'outer: for seg in &st.segments[first_seg..] {
            let from = seg.entries.partition_point(|e| e.last < offset);
            let mut range: Option<(u64, usize)> = None;
            let to_range = |(pos, len)| FileRange {
                file: seg.file.clone(),
                path: seg.path.clone(),
                pos,
                len,
            };
            for e in &seg.entries[from..] {
                if e.base >= hw || (total > 0 && total + e.size as usize > max_bytes) {
                    ranges.extend(range.map(to_range));
                    break 'outer;
                }
                total += e.size as usize;
                range = Some(match range {
                    None => (e.pos, e.size as usize),
                    Some((pos, len)) => (pos, len + e.size as usize),
                });
            }
            ranges.extend(range.map(to_range));
        }
        Ok(Located {
            ranges,
            high_watermark: hw,
            log_start: start,
        })
    }

    /// The first offset still in the log.
    pub fn log_start(&self) -> i64 {
        self.state.lock().segments[0].base
    }

    /// One past the last readable offset.
    pub fn high_watermark(&self) -> i64 {
        self.state.lock().high_watermark
    }

    /// The base offset of the first batch whose max timestamp is at least
    /// `ts` (the batch may start with earlier records), or `None` if every
    /// record is older.
    pub fn batch_for_timestamp(&self, ts: i64) -> Option<i64> {
        let st = self.state.lock();
        let hw = st.high_watermark;
        st.segments
            .iter()
            .flat_map(|s| s.entries.iter())
            .take_while(|e| e.base < hw)
            .find(|e| e.max_ts >= ts)
            .map(|e| e.base)
    }

    /// Bytes on disk.
    pub fn size(&self) -> u64 {
        self.state.lock().segments.iter().map(|s| s.size).sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.state.lock().segments.len()
    }

    /// Deletes whole old segments: those whose newest record is older than
    /// `retention_ms` before `now_ms`, and the oldest while the rest still
    /// hold at least `retention_bytes`. An expired active segment is sealed
    /// first so an idle partition ages out too. Returns segments deleted.
    pub fn enforce_retention(
        &self,
        retention_ms: Option<i64>,
        retention_bytes: Option<u64>,
        now_ms: i64,
    ) -> Result<usize> {
        let mut st = self.state.lock();
        while st.leader_active {
            self.durable.wait(&mut st);
        }
        let expired = |seg: &Segment| {
            retention_ms.is_some_and(|r| !seg.entries.is_empty() && seg.max_ts() < now_ms - r)
        };
        if st.segments.last().is_some_and(expired) {
            let next = st.next_offset;
            self.roll(&mut st, next)?;
        }
        let mut doomed = Vec::new();
        let mut total: u64 = st.segments.iter().map(|s| s.size).sum();
        while st.segments.len() > 1 {
            let first = &st.segments[0];
            let oversize = retention_bytes.is_some_and(|rb| total - first.size >= rb);
            if !(expired(first) || oversize) {
                break;
            }
            total -= first.size;
            doomed.push(st.segments.remove(0).path);
        }
        drop(st);
        for path in &doomed {
            std::fs::remove_file(path).map_err(io(path))?;
            let index = index_path(path);
            if index.exists() {
                std::fs::remove_file(&index).map_err(io(&index))?;
            }
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(doomed.len())
    }
}

fn write_index(seg: &Segment) -> Result<()> {
    let mut out = Vec::with_capacity(seg.entries.len() * ENTRY_LEN + 4);
    for e in &seg.entries {
        e.encode(&mut out);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let path = index_path(&seg.path);
    let tmp = path.with_extension("index.tmp");
    std::fs::write(&tmp, &out).map_err(io(&tmp))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(())
}

/// A sealed segment's index, if present, intact and matching the file size.
fn read_index(log: &Path, base: i64, size: u64) -> Option<Vec<Entry>> {
    let data = std::fs::read(index_path(log)).ok()?;
    if data.len() < 4 || (data.len() - 4) % ENTRY_LEN != 0 {
        return None;
    }
    let (body, crc) = data.split_at(data.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return None;
    }
    let entries: Vec<Entry> = body.chunks_exact(ENTRY_LEN).map(Entry::decode).collect();
    let mut next = (base, 0u64);
    for e in &entries {
        if e.base != next.0 || e.pos != next.1 || e.last < e.base {
            return None;
        }
        next = (e.last + 1, e.pos + u64::from(e.size));
    }
    (next.1 == size).then_some(entries)
}

fn load_segment(
    path: &Path,
    base: i64,
    active: bool,
    producers: &mut HashMap<i64, ProducerState>,
) -> Result<Segment> {
    let file = open_rw(path, false)?;
    let size = file.metadata().map_err(io(path))?.len();
    if !active {
        if let Some(entries) = read_index(path, base, size) {
            // Producer state only matters for recent batches; a sealed
            // segment's index does not carry it.
            return Ok(Segment {
                base,
                path: path.to_path_buf(),
                file: Arc::new(file),
                size,
                entries,
            });
        }
    }
    let data = std::fs::read(path).map_err(io(path))?;
    let mut entries = Vec::new();
    let mut pos = 0usize;
    let mut next = base;
    while pos < data.len() {
        let checked: Result<BatchHeader, _> = check_batch(&data[pos..]);
        let h = match checked {
            Ok(h) if h.base_offset == next => h,
            Ok(h) if active => {
                tracing::warn!(file = %path.display(), pos, base = h.base_offset, "cutting a log tail with an unexpected offset");
                break;
            }
            Ok(h) => {
                return Err(StorageError::Corrupted {
                    file: path.to_path_buf(),
                    offset: pos as u64,
                    reason: format!("batch has base offset {}, expected {next}", h.base_offset),
                })
            }
            Err(e) if active => {
                tracing::warn!(file = %path.display(), pos, error = %e, "cutting a torn log tail");
                break;
            }
            Err(e) => {
                return Err(StorageError::Corrupted {
                    file: path.to_path_buf(),
                    offset: pos as u64,
                    reason: e.to_string(),
                })
            }
        };
        entries.push(Entry {
            base: h.base_offset,
            last: h.last_offset(),
            pos: pos as u64,
            size: h.size as u32,
            max_ts: h.max_timestamp,
        });
        if h.producer_id >= 0 && h.base_sequence >= 0 {
            producers.insert(
                h.producer_id,
                ProducerState {
                    epoch: h.producer_epoch,
                    first_seq: h.base_sequence,
                    last_seq: h.base_sequence.wrapping_add(h.last_offset_delta),
                    base_offset: h.base_offset,
                },
            );
        }
        next = h.last_offset() + 1;
        pos += h.size;
    }
    if (pos as u64) < size {
        file.set_len(pos as u64).map_err(io(path))?;
        file.sync_all().map_err(io(path))?;
    }
    Ok(Segment {
        base,
        path: path.to_path_buf(),
        file: Arc::new(file),
        size: pos as u64,
        entries,
    })
}
