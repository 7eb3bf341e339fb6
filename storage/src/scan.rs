//! Streaming scans of one store: a k-way merge of its sources (memstore
//! snapshots and store files) done on Arrow batches, and the read rules of
//! [`crate::read::resolve`] applied batch by batch, so a scan never builds
//! one `Cell` per cell and never holds more than a few batches per source.
//!
//! Batches are in the store-file schema: `row`, `qualifier`, `ts`, `seq`,
//! `kind`, `value` (see `docs/format.md`).

use std::cmp::Ordering;

use arrow::array::{
    AsArray, BinaryViewArray, BooleanArray, BooleanBufferBuilder, PrimitiveArray, RecordBatch,
};
use arrow::datatypes::{Int64Type, UInt64Type, UInt8Type};

use crate::cell::CellKind;
use crate::error::Result;
use crate::options::FamilyOptions;
use crate::read::ReadOptions;
use crate::views;

/// Batches of one source, sorted in cell order.
pub(crate) type Source = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// The columns a merge compares, of one batch.
struct Keys {
    row: BinaryViewArray,
    qualifier: BinaryViewArray,
    ts: PrimitiveArray<Int64Type>,
    seq: PrimitiveArray<UInt64Type>,
}

impl Keys {
    fn of(batch: &RecordBatch) -> Self {
        Self {
            row: batch.column(0).as_binary_view().clone(),
            qualifier: batch.column(1).as_binary_view().clone(),
            ts: batch.column(2).as_primitive::<Int64Type>().clone(),
            seq: batch.column(3).as_primitive::<UInt64Type>().clone(),
        }
    }

    /// Cell order: row, qualifier ascending; timestamp, sequence descending.
    fn cmp(&self, i: usize, other: &Keys, j: usize) -> Ordering {
        views::cmp(&self.row, i, &other.row, j)
            .then_with(|| views::cmp(&self.qualifier, i, &other.qualifier, j))
            .then_with(|| other.ts.value(j).cmp(&self.ts.value(i)))
            .then_with(|| other.seq.value(j).cmp(&self.seq.value(i)))
    }
}

struct Cursor {
    keys: Keys,
    /// Index of the batch in the output chunk's list of batches.
    slot: usize,
    pos: usize,
    len: usize,
}

/// Sets `slot` to the column `(row, qualifier)`, reusing its buffers.
fn remember(slot: &mut Option<(Vec<u8>, Vec<u8>)>, row: &[u8], qualifier: &[u8]) {
    match slot {
        Some((r, q)) => {
            r.clear();
            r.extend_from_slice(row);
            q.clear();
            q.extend_from_slice(qualifier);
        }
        None => *slot = Some((row.to_vec(), qualifier.to_vec())),
    }
}

/// Average cells per run from which a merged batch is assembled by
/// concatenating slices rather than gathering cell by cell.
const LONG_RUN: usize = 32;

/// Merges sources into one stream in cell order.
pub(crate) struct Merge {
    sources: Vec<Source>,
    cursors: Vec<Option<Cursor>>,
    /// Batches the cursors point into, for `interleave`.
    slots: Vec<RecordBatch>,
    started: bool,
    batch_size: usize,
    /// Row and qualifier of the last cell picked (kept across batches),
    /// and its source: to see a column continue from one source into
    /// another.
    last: Option<(Vec<u8>, Vec<u8>)>,
    last_source: usize,
    /// The last batch returned holds two adjacent cells of one column
    /// from different sources.
    crossed: bool,
}

impl Merge {
    pub fn new(sources: Vec<Source>, batch_size: usize) -> Self {
        let n = sources.len();
        Self {
            sources,
            cursors: (0..n).map(|_| None).collect(),
            slots: Vec::new(),
            started: false,
            batch_size: batch_size.max(1),
            last: None,
            last_source: 0,
            crossed: false,
        }
    }

    /// Whether the last batch returned may hold versions of one column
    /// from more than one source: within a batch that does not, each
    /// column's cells all come from one source, in that source's order.
    pub fn crossed(&self) -> bool {
        self.crossed
    }

    /// Loads source `s`'s next non-empty batch into its cursor.
    fn advance(&mut self, s: usize) -> Result<()> {
        self.cursors[s] = None;
        for batch in self.sources[s].by_ref() {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            self.cursors[s] = Some(Cursor {
                keys: Keys::of(&batch),
                slot: self.slots.len(),
                pos: 0,
                len: batch.num_rows(),
            });
            self.slots.push(batch);
            break;
        }
        Ok(())
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.sources.len() == 1 {
            return self.sources[0].next().transpose();
        }
        if !self.started {
            self.started = true;
            for s in 0..self.sources.len() {
                self.advance(s)?;
            }
        }
        // Only the batches the cursors stand in are needed from here on.
        let mut live = Vec::with_capacity(self.cursors.len());
        for c in self.cursors.iter_mut().flatten() {
            live.push(self.slots[c.slot].clone());
            c.slot = live.len() - 1;
        }
        self.slots = live;
        self.crossed = false;
        // Runs of cells taken from one batch: (slot, first cell, cells).
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        let mut picked = 0;
        while picked < self.batch_size {
            // The smallest cursor, and the second smallest to bound its run.
            let mut best: Option<usize> = None;
            let mut second: Option<usize> = None;
            for (i, c) in self.cursors.iter().enumerate() {
                let Some(c) = c else { continue };
                match best {
                    None => best = Some(i),
                    Some(b) => {
                        let bc = self.cursors[b].as_ref().expect("best is live");
                        if c.keys.cmp(c.pos, &bc.keys, bc.pos) == Ordering::Less {
                            second = best;
                            best = Some(i);
                        } else if second.is_none_or(|s| {
                            let sc = self.cursors[s].as_ref().expect("second is live");
                            c.keys.cmp(c.pos, &sc.keys, sc.pos) == Ordering::Less
                        }) {
                            second = Some(i);
                        }
                    }
                }
            }
            let Some(b) = best else { break };
            // Take the best cursor's cells while they stay below the second.
            let exhausted = {
                let (head, tail) = self.cursors.split_at_mut(b);
                let (cur, tail) = tail.split_first_mut().expect("b is in range");
                let cur = cur.as_mut().expect("best is live");
                let other = second.map(|s| {
                    let c = if s < b { &head[s] } else { &tail[s - b - 1] };
                    c.as_ref().expect("second is live")
                });
                if let Some((row, qualifier)) = &self.last {
                    if self.last_source != b
                        && cur.keys.row.value(cur.pos) == row.as_slice()
                        && cur.keys.qualifier.value(cur.pos) == qualifier.as_slice()
                    {
                        self.crossed = true;
                    }
                }
                // The head is the smallest cell; the run goes on to the
                // first cell not below the second cursor's head, found by
                // galloping (runs are often long: a memstore's cells
                // between two rows of a file).
                let limit = cur.len.min(cur.pos + (self.batch_size - picked));
                let end = match other {
                    None => limit,
                    Some(o) => {
                        let below = |k: usize| cur.keys.cmp(k, &o.keys, o.pos) == Ordering::Less;
                        // Every cell before `lo` is below; `hi` is the limit
                        // or a cell that is not.
                        let (mut lo, mut hi, mut step) = (cur.pos + 1, cur.pos + 1, 1);
                        while hi < limit && below(hi) {
                            lo = hi + 1;
                            hi += step;
                            step *= 2;
                        }
                        hi = hi.min(limit);
                        while lo < hi {
                            let mid = lo + (hi - lo) / 2;
                            if below(mid) {
                                lo = mid + 1;
                            } else {
                                hi = mid;
                            }
                        }
                        lo
                    }
                };
                runs.push((cur.slot, cur.pos, end - cur.pos));
                picked += end - cur.pos;
                cur.pos = end;
                remember(
                    &mut self.last,
                    cur.keys.row.value(cur.pos - 1),
                    cur.keys.qualifier.value(cur.pos - 1),
                );
                self.last_source = b;
                cur.pos == cur.len
            };
            if exhausted {
                self.advance(b)?;
            }
        }
        // One run is a slice of its batch; long runs are copied together
        // run by run; short ones (sources whose keys interleave finely,
        // as random keys do) cell by cell, which costs less per cell than
        // a slice per run.
        match runs.as_slice() {
            [] => Ok(None),
            &[(slot, from, len)] => Ok(Some(self.slots[slot].slice(from, len))),
            _ if picked >= LONG_RUN * runs.len() => {
                let parts: Vec<RecordBatch> = runs
                    .iter()
                    .map(|&(slot, from, len)| self.slots[slot].slice(from, len))
                    .collect();
                let schema = parts[0].schema();
                Ok(Some(arrow::compute::concat_batches(&schema, &parts)?))
            }
            _ => {
                let picks: Vec<(usize, usize)> = runs
                    .iter()
                    .flat_map(|&(slot, from, len)| (from..from + len).map(move |i| (slot, i)))
                    .collect();
                let schema = self.slots[0].schema();
                let columns = (0..schema.fields().len())
                    .map(|c| {
                        let arrays: Vec<&dyn arrow::array::Array> =
                            self.slots.iter().map(|b| b.column(c).as_ref()).collect();
                        arrow::compute::interleave(&arrays, &picks)
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(Some(RecordBatch::try_new(schema, columns)?))
            }
        }
    }
}

impl Iterator for Merge {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}

/// The read rules applied to a merged stream: the puts a reader sees in
/// `[start, end)`, the same decisions as [`crate::read::resolve`].
pub(crate) struct Visible {
    start: Vec<u8>,
    end: Vec<u8>,
    max_versions: u32,
    ttl: Option<i64>,
    read: ReadOptions,
    /// Row and qualifier of the last cell looked at in the previous batch.
    prev: Option<(Vec<u8>, Vec<u8>)>,
    family_deletes: Vec<(i64, u64)>,
    column_deletes: Vec<(i64, u64)>,
    versions: u32,
    /// Keep every cell in range (deletes and all versions): a minor
    /// compaction's rule.
    everything: bool,
    /// Every source holds only puts this read sees, at most `max_versions`
    /// per column: a merged batch in which no column spans two sources
    /// needs only the row range ([`Visible::apply_clean`]).
    clean: bool,
    /// A row at or past `end` was seen.
    pub done: bool,
}

impl Visible {
    pub fn new(start: &[u8], end: &[u8], family: &FamilyOptions, read: &ReadOptions) -> Self {
        Self {
            start: start.to_vec(),
            end: end.to_vec(),
            max_versions: read.max_versions.min(family.max_versions).max(1),
            ttl: family.ttl_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
            read: read.clone(),
            prev: None,
            family_deletes: Vec::new(),
            column_deletes: Vec::new(),
            versions: 0,
            everything: false,
            clean: false,
            done: false,
        }
    }

    /// Every cell of `[start, end)`, whatever its kind or age.
    pub fn everything(start: &[u8], end: &[u8]) -> Self {
        Self {
            everything: true,
            ..Self::new(
                start,
                end,
                &FamilyOptions::default(),
                &ReadOptions::default(),
            )
        }
    }

    /// The same rules, over sources that the caller knows each hold only
    /// puts this read sees (no deletes, at most [`Visible::max_versions`]
    /// per column, nothing past its snapshot, no TTL or time range): only
    /// a column whose versions come from more than one source needs them.
    pub fn clean_sources(self) -> Self {
        Self {
            clean: true,
            ..self
        }
    }

    /// Whether the sources are clean ([`Visible::clean_sources`]).
    pub fn is_clean(&self) -> bool {
        self.clean
    }

    /// The visible puts of a merged batch of clean sources in which no
    /// column spans two sources: every cell in range. Keeps the state
    /// [`Visible::apply`] carries into the next batch.
    pub fn apply_clean(&mut self, batch: &RecordBatch) -> Option<RecordBatch> {
        let n = batch.num_rows();
        if n > 0 {
            let row = batch.column(0).as_binary_view();
            let qualifier = batch.column(1).as_binary_view();
            let (r, q) = (row.value(n - 1), qualifier.value(n - 1));
            // The batch's last column so far: its cells in this batch, and
            // those before it when the column began in the last batch.
            let mut run = 1;
            while run < n
                && views::eq(row, n - 1 - run, row, n - 1)
                && views::eq(qualifier, n - 1 - run, qualifier, n - 1)
            {
                run += 1;
            }
            let continued = run == n
                && self
                    .prev
                    .as_ref()
                    .is_some_and(|(pr, pq)| pr.as_slice() == r && pq.as_slice() == q);
            self.versions = if continued {
                self.versions + run as u32
            } else {
                run as u32
            };
            remember(&mut self.prev, r, q);
            self.family_deletes.clear();
            self.column_deletes.clear();
        }
        self.clip(batch)
    }

    /// The versions per column this read returns.
    pub fn max_versions(&self) -> u32 {
        self.max_versions
    }

    /// The visible puts of `batch`, or `None` when it has none.
    pub fn apply(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        if self.everything {
            return Ok(self.clip(batch));
        }
        let n = batch.num_rows();
        let row = batch.column(0).as_binary_view();
        let qualifier = batch.column(1).as_binary_view();
        let ts = batch.column(2).as_primitive::<Int64Type>();
        let seq = batch.column(3).as_primitive::<UInt64Type>();
        let kind = batch.column(4).as_primitive::<UInt8Type>();
        let mut keep = BooleanBufferBuilder::new(n);
        // Index in this batch of the last cell looked at.
        let mut last: Option<usize> = None;
        let (start, end) = (self.start.as_slice(), self.end.as_slice());
        // Rows are sorted: when the first is in range no row is below the
        // start, and when the last is, none is past the end.
        let check_start = n > 0 && row.value(0) < start;
        let check_end = n > 0 && !end.is_empty() && row.value(n - 1) >= end;
        for i in 0..n {
            let r = row.value(i);
            if check_start && r < start {
                keep.append(false);
                continue;
            }
            if check_end && r >= end {
                self.done = true;
                keep.append_n(n - i, false);
                break;
            }
            let s = seq.value(i);
            if s > self.read.snapshot {
                keep.append(false);
                continue;
            }
            let (same_row, same_column) = match last {
                Some(j) => {
                    let same_row = views::eq(row, j, row, i);
                    (same_row, same_row && views::eq(qualifier, j, qualifier, i))
                }
                None => match &self.prev {
                    Some((pr, pq)) => {
                        let same_row = pr.as_slice() == r;
                        (same_row, same_row && pq.as_slice() == qualifier.value(i))
                    }
                    None => (false, false),
                },
            };
            last = Some(i);
            if !same_row {
                self.family_deletes.clear();
            }
            if !same_column {
                self.column_deletes.clear();
                self.versions = 0;
            }
            let t = ts.value(i);
            let future = self.read.time_range.is_some_and(|(_, max)| t >= max);
            let visible = match CellKind::from_u8(kind.value(i)) {
                Some(CellKind::DeleteFamily | CellKind::Delete) if future => false,
                Some(CellKind::DeleteFamily) => {
                    self.family_deletes.push((t, s));
                    false
                }
                Some(CellKind::Delete) => {
                    self.column_deletes.push((t, s));
                    false
                }
                Some(CellKind::Put) => {
                    let masked = self
                        .family_deletes
                        .iter()
                        .chain(self.column_deletes.iter())
                        .any(|&(dt, ds)| dt >= t && ds > s);
                    let expired = self
                        .ttl
                        .is_some_and(|ttl| self.read.now_ms.saturating_sub(t) > ttl);
                    let outside = self
                        .read
                        .time_range
                        .is_some_and(|(min, max)| t < min || t >= max);
                    if !masked && !expired && !outside && self.versions < self.max_versions {
                        self.versions += 1;
                        true
                    } else {
                        false
                    }
                }
                // Store files are checked when read; memstores hold only
                // known kinds.
                None => false,
            };
            keep.append(visible);
        }
        if let Some(j) = last {
            remember(&mut self.prev, row.value(j), qualifier.value(j));
        }
        let mask = BooleanArray::new(keep.finish(), None);
        match mask.true_count() {
            0 => Ok(None),
            k if k == n => Ok(Some(batch.clone())),
            _ => Ok(Some(arrow::compute::filter_record_batch(batch, &mask)?)),
        }
    }
}

impl Visible {
    /// The cells of `batch` (sorted by row) inside `[start, end)`, sliced
    /// without copying; `None` when there are none.
    fn clip(&mut self, batch: &RecordBatch) -> Option<RecordBatch> {
        let row = batch.column(0).as_binary_view();
        let n = batch.num_rows();
        let below = |bound: &[u8]| {
            // The first index whose row is at or past `bound`.
            let (mut lo, mut hi) = (0, n);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if row.value(mid) < bound {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        let from = if n > 0 && row.value(0) < self.start.as_slice() {
            below(&self.start)
        } else {
            0
        };
        let to = if n > 0 && !self.end.is_empty() && row.value(n - 1) >= self.end.as_slice() {
            self.done = true;
            below(&self.end)
        } else {
            n
        };
        (from < to).then(|| batch.slice(from, to - from))
    }
}

/// The visible cells of one store over a row range, as a stream of
/// batches in the store-file schema (`row`, `qualifier`, `ts`, `seq`,
/// `kind`, `value`), in cell order, only puts (every kind for a minor
/// compaction's [`Visible::everything`]).
pub struct StoreScan {
    family: String,
    merge: Merge,
    visible: Visible,
}

impl StoreScan {
    pub(crate) fn new(family: &str, merge: Merge, visible: Visible) -> Self {
        Self {
            family: family.to_string(),
            merge,
            visible,
        }
    }

    /// The family this store holds.
    pub fn family(&self) -> &str {
        &self.family
    }
}

impl Iterator for StoreScan {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.visible.done {
            match self.merge.next()? {
                Err(e) => {
                    self.visible.done = true;
                    return Some(Err(e));
                }
                Ok(batch) => {
                    let visible = if self.visible.is_clean() && !self.merge.crossed() {
                        Ok(self.visible.apply_clean(&batch))
                    } else {
                        self.visible.apply(&batch)
                    };
                    match visible {
                        Ok(None) => continue,
                        other => return other.transpose(),
                    }
                }
            }
        }
        None
    }
}
