//! Bulk loads: cells staged in memory, sorted, and written straight to
//! store files, which one manifest edit then adds to the table's regions
//! (HBase's bulk load). Nothing goes through the WAL or a memstore, and
//! nothing is visible, or left behind, until [`BulkLoad::commit`].
//!
//! Cells are staged in an arena; each has a 48-byte entry whose first
//! sixteen row bytes decide most comparisons of the sort. When the staged
//! bytes pass the engine's `bulk_load_memory`, they are sorted and written
//! as a *run*: one store file per region and family, cut at the region
//! boundaries of that moment. Each run stamps its cells with its own
//! sequence number, so a later run's cell wins over an earlier run's with
//! the same key, as a later write would. Within a run, of cells with the
//! same row, family, qualifier, timestamp and kind, the last one added is
//! kept.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::RecordBatch;

use crate::cell::CellKind;
use crate::engine::{Inner, Table};
use crate::error::{Result, StorageError};
use crate::store_file::{CellBatchBuilder, StoreFile};

/// Cells per batch a run is written in.
const RUN_BATCH: usize = 1 << 16;

/// One staged cell. `at` is the offset of its record in the arena: row,
/// qualifier and value lengths (u32 each), then their bytes.
#[derive(Clone, Copy)]
struct Entry {
    /// The row's first sixteen bytes, big-endian, zero-padded: rows of up
    /// to 16 bytes compare without the arena.
    prefix: u128,
    row_len: u32,
    /// About the bytes the cell takes in an uncompressed store file.
    size: u32,
    at: u32,
    /// Order of arrival: of equal cells, the newest is kept.
    ord: u32,
    ts: i64,
    family: u16,
    kind: CellKind,
}

/// Staged cells, unsorted.
pub(crate) struct Staged {
    arena: Vec<u8>,
    entries: Vec<Entry>,
}

impl Staged {
    /// Room for `budget` bytes of cells, reserved once: the memory is
    /// touched as cells arrive, never copied to a bigger buffer.
    fn with_budget(budget: usize) -> Self {
        let per_cell = std::mem::size_of::<Entry>() + 32;
        Self {
            arena: Vec::with_capacity(budget),
            entries: Vec::with_capacity(budget / per_cell),
        }
    }

    fn clear(&mut self) {
        self.arena.clear();
        self.entries.clear();
    }

    fn bytes(&self) -> usize {
        self.arena.len() + self.entries.len() * std::mem::size_of::<Entry>()
    }

    fn field(&self, at: usize, i: usize) -> &[u8] {
        let len = |k: usize| {
            let b = &self.arena[at + 4 * k..at + 4 * k + 4];
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
        };
        let mut start = at + 12;
        for k in 0..i {
            start += len(k);
        }
        &self.arena[start..start + len(i)]
    }

    fn row(&self, e: &Entry) -> &[u8] {
        self.field(e.at as usize, 0)
    }

    fn qualifier(&self, e: &Entry) -> &[u8] {
        self.field(e.at as usize, 1)
    }

    fn value(&self, e: &Entry) -> &[u8] {
        self.field(e.at as usize, 2)
    }

    /// Cell order (row, family, qualifier, timestamp descending, kind),
    /// then the newest arrival first.
    fn cmp(&self, a: &Entry, b: &Entry) -> Ordering {
        a.prefix
            .cmp(&b.prefix)
            .then_with(|| {
                if a.row_len.max(b.row_len) <= 16 {
                    a.row_len.cmp(&b.row_len)
                } else {
                    self.row(a).cmp(self.row(b))
                }
            })
            .then_with(|| a.family.cmp(&b.family))
            .then_with(|| self.qualifier(a).cmp(self.qualifier(b)))
            .then_with(|| b.ts.cmp(&a.ts))
            .then_with(|| (a.kind as u8).cmp(&(b.kind as u8)))
            .then_with(|| b.ord.cmp(&a.ord))
    }

    fn same_cell(&self, a: &Entry, b: &Entry) -> bool {
        a.prefix == b.prefix
            && a.row_len == b.row_len
            && a.family == b.family
            && a.ts == b.ts
            && a.kind == b.kind
            && self.row(a) == self.row(b)
            && self.qualifier(a) == self.qualifier(b)
    }

    /// Sorts the entries and drops all but the newest of equal cells.
    /// Large runs are cut in two around a sampled prefix and the halves
    /// sorted on two threads.
    fn sort(&mut self) {
        let mut entries = std::mem::take(&mut self.entries);
        let cmp = |a: &Entry, b: &Entry| self.cmp(a, b);
        if entries.len() < 1 << 16 {
            entries.sort_unstable_by(cmp);
        } else {
            let step = entries.len() / 255;
            let mut sample: Vec<u128> = (0..255).map(|i| entries[i * step].prefix).collect();
            sample.sort_unstable();
            let pivot = sample[127];
            // Entries below the pivot's prefix first: every one of them
            // sorts before every other.
            let mut lo = 0;
            for i in 0..entries.len() {
                if entries[i].prefix < pivot {
                    entries.swap(lo, i);
                    lo += 1;
                }
            }
            let (left, right) = entries.split_at_mut(lo);
            std::thread::scope(|scope| {
                scope.spawn(|| left.sort_unstable_by(cmp));
                right.sort_unstable_by(cmp);
            });
        }
        entries.dedup_by(|later, kept| self.same_cell(later, kept));
        self.entries = entries;
    }
}

/// Sorted cells of one run, ready to be cut by region and family.
pub(crate) struct SortedRun<'a> {
    staged: &'a Staged,
}

impl SortedRun<'_> {
    /// Entries (by index) whose row is in `[start, end)` (`end` empty = no
    /// bound).
    pub fn range(&self, start: &[u8], end: &[u8]) -> std::ops::Range<usize> {
        let s = self.staged;
        let lo = s.entries.partition_point(|e| s.row(e) < start);
        let hi = if end.is_empty() {
            s.entries.len()
        } else {
            s.entries.partition_point(|e| s.row(e) < end)
        };
        lo..hi.max(lo)
    }

    pub fn row(&self, i: usize) -> &[u8] {
        self.staged.row(&self.staged.entries[i])
    }

    /// About the bytes cell `i` takes in an uncompressed store file.
    pub fn file_bytes(&self, i: usize) -> u64 {
        u64::from(self.staged.entries[i].size)
    }

    /// The cells of `range` in `family`, as store-file batches stamped
    /// with `seq`.
    pub fn batches(
        &self,
        range: std::ops::Range<usize>,
        family: u16,
        seq: u64,
    ) -> impl Iterator<Item = Result<RecordBatch>> + '_ {
        let s = self.staged;
        let mut cells = s.entries[range].iter().filter(move |e| e.family == family);
        std::iter::from_fn(move || {
            let mut b = CellBatchBuilder::with_capacity(RUN_BATCH);
            for e in cells.by_ref() {
                b.append(s.row(e), s.qualifier(e), e.ts, seq, e.kind, s.value(e));
                if b.len() == RUN_BATCH {
                    break;
                }
            }
            (!b.is_empty()).then(|| b.finish())
        })
    }

    /// How many of the cells of `range` are in `family`.
    pub fn count(&self, range: std::ops::Range<usize>, family: u16) -> usize {
        self.staged.entries[range]
            .iter()
            .filter(|e| e.family == family)
            .count()
    }
}

/// A written run's file, not yet in any region.
pub(crate) struct RunFile {
    pub family: String,
    pub file: Arc<StoreFile>,
}

/// A bulk load into one table (see the module documentation).
pub struct BulkLoad {
    inner: Arc<Inner>,
    table: Arc<Table>,
    name: String,
    /// The table's families in name order; cells refer to them by index.
    families: Vec<String>,
    staged: Staged,
    runs: Vec<RunFile>,
    /// The newest sequence number a run was stamped with.
    max_seq: u64,
    cells: u64,
    user_bytes: u64,
}

impl BulkLoad {
    pub(crate) fn new(inner: Arc<Inner>, table: Arc<Table>, name: &str) -> Self {
        let families = table.families.keys().cloned().collect();
        let staged = Staged::with_budget(inner.bulk_memory());
        Self {
            inner,
            table,
            name: name.to_string(),
            families,
            staged,
            runs: Vec::new(),
            max_seq: 0,
            cells: 0,
            user_bytes: 0,
        }
    }

    /// Cells added so far.
    pub fn cells(&self) -> u64 {
        self.cells
    }

    /// Stages one cell (a put, or a delete marker with an empty value).
    pub fn add(
        &mut self,
        row: &[u8],
        family: &str,
        qualifier: &[u8],
        ts: i64,
        kind: CellKind,
        value: &[u8],
    ) -> Result<()> {
        let Ok(f) = self.families.binary_search_by(|x| x.as_str().cmp(family)) else {
            return Err(StorageError::FamilyNotFound {
                table: self.name.clone(),
                family: family.to_string(),
            });
        };
        let size = 12 + row.len() + qualifier.len() + value.len();
        if size > u32::MAX as usize {
            return Err(StorageError::CellTooLarge(size));
        }
        // Arena offsets are 32-bit.
        if self.staged.arena.len() + size > u32::MAX as usize {
            self.write_run(false)?;
        }
        let staged = &mut self.staged;
        let at = staged.arena.len() as u32;
        for part in [row, qualifier, value] {
            staged
                .arena
                .extend_from_slice(&(part.len() as u32).to_le_bytes());
        }
        for part in [row, qualifier, value] {
            staged.arena.extend_from_slice(part);
        }
        let mut prefix = [0u8; 16];
        let n = row.len().min(16);
        prefix[..n].copy_from_slice(&row[..n]);
        staged.entries.push(Entry {
            prefix: u128::from_be_bytes(prefix),
            row_len: row.len() as u32,
            size: size as u32,
            at,
            ord: staged.entries.len() as u32,
            ts,
            family: f as u16,
            kind,
        });
        self.cells += 1;
        self.user_bytes += (row.len() + qualifier.len() + value.len()) as u64;
        if self.staged.bytes() >= self.inner.bulk_memory() {
            self.write_run(false)?;
        }
        Ok(())
    }

    /// Sorts what is staged and writes it as a run. `last`: the load ends
    /// with this run, so regions it would take past their split threshold
    /// are split first, at row keys of the run.
    fn write_run(&mut self, last: bool) -> Result<()> {
        if self.staged.entries.is_empty() {
            return Ok(());
        }
        self.staged.sort();
        let run = SortedRun {
            staged: &self.staged,
        };
        if last {
            self.inner.split_for_load(&self.table, &run)?;
        }
        let (seq, files) = self.inner.write_run(&self.table, &self.families, &run)?;
        self.max_seq = self.max_seq.max(seq);
        self.runs.extend(files);
        self.staged.clear();
        Ok(())
    }

    /// Writes what is left and adds every run's files to the table's
    /// regions in one manifest edit: the whole load becomes visible at
    /// once. Returns the number of cells added.
    pub fn commit(mut self) -> Result<u64> {
        self.write_run(true)?;
        self.inner.publish_load(
            &self.name,
            &self.table,
            &self.runs,
            self.max_seq,
            self.user_bytes,
        )?;
        // The files are the table's now.
        self.runs.clear();
        Ok(self.cells)
    }
}

impl Drop for BulkLoad {
    /// A load dropped before its commit deletes the files of its runs.
    fn drop(&mut self) {
        for run in self.runs.drain(..) {
            if let Err(e) = std::fs::remove_file(&run.file.path) {
                tracing::warn!(file = %run.file.path.display(), error = %e, "could not delete an abandoned bulk-load file");
            }
        }
    }
}
