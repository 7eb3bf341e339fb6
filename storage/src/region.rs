//! Regions and their stores: one store per family, each a memstore (plus
//! memstores waiting to be flushed) and a list of immutable store files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch, StringArray,
};
use parking_lot::{Mutex, RwLock};

use crate::cell::Cell;
use crate::error::Result;
use crate::memstore::MemStore;
use crate::metrics::Metrics;
use crate::options::FamilyOptions;
use crate::read::{merge, resolve, ReadOptions};
use crate::store_file::{self, StoreFile};

/// What a store holds at one moment.
#[derive(Clone)]
pub(crate) struct StoreState {
    pub active: Arc<MemStore>,
    /// Oldest first.
    pub frozen: Vec<(Arc<MemStore>, u64)>,
    pub files: Vec<Arc<StoreFile>>,
}

pub(crate) struct Store {
    pub family: String,
    pub options: FamilyOptions,
    pub state: RwLock<StoreState>,
    /// One compaction or flush at a time per store.
    pub maintenance: Mutex<()>,
}

impl Store {
    pub fn new(family: &str, options: FamilyOptions, files: Vec<Arc<StoreFile>>) -> Self {
        Self {
            family: family.to_string(),
            options,
            state: RwLock::new(StoreState {
                active: Arc::new(MemStore::default()),
                frozen: Vec::new(),
                files,
            }),
            maintenance: Mutex::new(()),
        }
    }

    /// Cells of `[start, end)` from memstores and files, merged; files are
    /// skipped by range and, for a single row, by bloom filter.
    pub fn cells(&self, start: &[u8], end: &[u8], single_row: bool) -> Result<Vec<Cell>> {
        // Under the state lock: copy what the memstores hold and pick the
        // files to read; read the files after letting go of it.
        let (mut sources, files) = {
            let state = self.state.read();
            let mut sources = vec![state.active.range(start, end)];
            for (m, _) in &state.frozen {
                sources.push(m.range(start, end));
            }
            let files: Vec<Arc<StoreFile>> = state
                .files
                .iter()
                .filter(|f| {
                    if single_row {
                        f.may_contain_row(start, None)
                    } else {
                        f.overlaps(start, end)
                    }
                })
                .cloned()
                .collect();
            (sources, files)
        };
        for f in files {
            sources.push(f.read_range(start, end)?);
        }
        Ok(merge(sources))
    }

    pub fn read(
        &self,
        start: &[u8],
        end: &[u8],
        single_row: bool,
        read: &ReadOptions,
    ) -> Result<Vec<Cell>> {
        Ok(resolve(
            self.cells(start, end, single_row)?,
            &self.options,
            read,
        ))
    }

    /// A scan straight from Arrow batches, without building cells, when the
    /// range's only source is one store file without delete markers and no
    /// TTL, time range or snapshot older than the file can hide a version.
    /// `None` means the general path must run.
    pub fn scan_batches(
        &self,
        start: &[u8],
        end: &[u8],
        read: &ReadOptions,
        batch_size: usize,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let state = self.state.read().clone();
        let in_memory = std::iter::once(&state.active)
            .chain(state.frozen.iter().map(|(m, _)| m))
            .any(|m| m.has_range(start, end));
        if in_memory || self.options.ttl_ms.is_some() || read.time_range.is_some() {
            return Ok(None);
        }
        let mut files = state.files.iter().filter(|f| f.overlaps(start, end));
        let (Some(file), None) = (files.next(), files.next()) else {
            return Ok(if state.files.iter().any(|f| f.overlaps(start, end)) {
                None
            } else {
                Some(Vec::new())
            });
        };
        if file.deletes != Some(0) || read.snapshot < file.max_seq {
            return Ok(None);
        }
        let max_versions = read.max_versions.min(self.options.max_versions).max(1);
        let mut out = Vec::new();
        // The column of the previous row and how many versions it has shown.
        let mut prev: Option<(Vec<u8>, Vec<u8>)> = None;
        let mut shown = 0u32;
        for batch in file.batches(start, end, batch_size)? {
            let batch = batch?;
            let row = batch.column(0).as_binary::<i32>();
            let qualifier = batch.column(1).as_binary::<i32>();
            let mut keep = BooleanBufferBuilder::new(batch.num_rows());
            let mut last = 0;
            for i in 0..batch.num_rows() {
                let (r, q) = (row.value(i), qualifier.value(i));
                let in_range = r >= start && (end.is_empty() || r < end);
                let same = i > 0 && row.value(i - 1) == r && qualifier.value(i - 1) == q
                    || i == 0 && prev.as_ref().is_some_and(|(pr, pq)| pr == r && pq == q);
                shown = if same { shown + 1 } else { 1 };
                keep.append(in_range && shown <= max_versions);
                last = i;
            }
            if batch.num_rows() > 0 {
                prev = Some((row.value(last).to_vec(), qualifier.value(last).to_vec()));
            }
            let mask = BooleanArray::new(keep.finish(), None);
            let n = mask.true_count();
            if n == 0 {
                continue;
            }
            let pick = |c: usize| arrow::compute::filter(batch.column(c), &mask);
            let family: ArrayRef = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                self.family.as_str(),
                n,
            )));
            out.push(RecordBatch::try_new(
                crate::engine::cell_schema(),
                vec![pick(0)?, family, pick(1)?, pick(2)?, pick(5)?],
            )?);
        }
        Ok(Some(out))
    }

    pub fn memstore_bytes(&self) -> usize {
        let s = self.state.read();
        s.active.bytes() + s.frozen.iter().map(|(m, _)| m.bytes()).sum::<usize>()
    }

    /// Smallest sequence number not yet in a file, if any.
    pub fn min_unflushed(&self) -> Option<u64> {
        let s = self.state.read();
        let mut min = None;
        for m in std::iter::once(&s.active).chain(s.frozen.iter().map(|(m, _)| m)) {
            if let Some(v) = m.min_seq() {
                min = Some(min.map_or(v, |x: u64| x.min(v)));
            }
        }
        min
    }
}

/// A row-key range of a table.
pub struct Region {
    pub id: u64,
    pub start: Vec<u8>,
    /// Empty = no upper bound.
    pub end: Vec<u8>,
    pub(crate) stores: BTreeMap<String, Store>,
    /// Writers hold it shared from WAL append to memstore insert; freezing a
    /// memstore holds it exclusively, so a frozen memstore holds every edit
    /// of the region up to the sequence number recorded with it.
    pub(crate) write_gate: RwLock<()>,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
}

impl Region {
    pub(crate) fn new(
        id: u64,
        start: Vec<u8>,
        end: Vec<u8>,
        stores: BTreeMap<String, Store>,
    ) -> Self {
        Self {
            id,
            start,
            end,
            stores,
            write_gate: RwLock::new(()),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    pub fn contains(&self, row: &[u8]) -> bool {
        row >= self.start.as_slice() && (self.end.is_empty() || row < self.end.as_slice())
    }

    /// Bytes on disk (files clamped by nothing: shared files count fully)
    /// plus memstores.
    pub fn size(&self) -> u64 {
        self.stores
            .values()
            .map(|s| {
                s.state.read().files.iter().map(|f| f.size).sum::<u64>() + s.memstore_bytes() as u64
            })
            .sum()
    }

    /// Whether some file still reaches outside this region (after a split,
    /// until compaction rewrites it).
    pub fn has_references(&self) -> bool {
        self.stores.values().any(|s| {
            s.state.read().files.iter().any(|f| {
                f.cells > 0
                    && (f.min_row.as_slice() < self.start.as_slice()
                        || (!self.end.is_empty() && f.max_row.as_slice() >= self.end.as_slice()))
            })
        })
    }

    /// Freezes every non-empty active memstore at sequence `seq`. The
    /// caller holds `write_gate` exclusively.
    pub(crate) fn freeze(&self, seq: u64) -> bool {
        let mut any = false;
        for store in self.stores.values() {
            let mut s = store.state.write();
            if !s.active.is_empty() {
                let old = std::mem::replace(&mut s.active, Arc::new(MemStore::default()));
                s.frozen.push((old, seq));
                any = true;
            }
        }
        any
    }

    /// A key near the middle of the region's data, strictly inside it.
    pub fn split_point(&self) -> Option<Vec<u8>> {
        let biggest = self
            .stores
            .values()
            .flat_map(|s| s.state.read().files.clone())
            .max_by_key(|f| f.size)?;
        let mid = biggest.mid_row.clone();
        (mid.as_slice() > self.start.as_slice() && self.contains(&mid)).then_some(mid)
    }
}

/// Where store file `id` lives.
pub(crate) fn file_path(dir: &Path, id: u64) -> PathBuf {
    dir.join("files").join(format!("{id:020}.parquet"))
}

/// Writes a store file for `cells`.
pub(crate) fn write_file(
    dir: &Path,
    id: u64,
    store: &Store,
    cells: &[Cell],
    metrics: &Arc<Metrics>,
) -> Result<Arc<StoreFile>> {
    Ok(Arc::new(store_file::write(
        &file_path(dir, id),
        id,
        &store.family,
        cells,
        &store.options,
        metrics,
    )?))
}
