//! Regions and their stores: one store per family, each a memstore (plus
//! memstores waiting to be flushed) and a list of immutable store files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use arrow::array::RecordBatch;

use crate::cell::Cell;
use crate::error::Result;
use crate::memstore::MemStore;
use crate::metrics::Metrics;
use crate::options::FamilyOptions;
use crate::read::{merge, resolve, ReadOptions};
use crate::scan::{Merge, Source, StoreScan, Visible};
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
                active: Arc::new(MemStore::new(family)),
                frozen: Vec::new(),
                files,
            }),
            maintenance: Mutex::new(()),
        }
    }

    /// Cells of `[start, end)` from memstores and files, merged; files are
    /// skipped by range and, for a single row, memstores and files by their
    /// bloom filters.
    pub fn cells(&self, start: &[u8], end: &[u8], single_row: bool) -> Result<Vec<Cell>> {
        // Under the state lock: copy what the memstores hold and pick the
        // files to read; read the files after letting go of it.
        let (mut sources, files) = {
            let state = self.state.read();
            let mut sources = Vec::new();
            for m in std::iter::once(&state.active).chain(state.frozen.iter().map(|(m, _)| m)) {
                if !single_row || m.may_contain_row(start) {
                    sources.push(m.range(start, end));
                }
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
            sources.push(if single_row {
                f.read_row(start)?
            } else {
                f.read_range(start, end)?
            });
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

    /// A streaming scan of `[start, end)`: memstores are copied into Arrow
    /// batches under the state lock; store files are read batch by batch
    /// as the scan proceeds (skipped when their range misses).
    pub fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        read: &ReadOptions,
        batch_size: usize,
    ) -> Result<StoreScan> {
        let (memory, files) = {
            let state = self.state.read();
            let mut memory = Vec::new();
            for m in std::iter::once(&state.active).chain(state.frozen.iter().map(|(m, _)| m)) {
                let range = m.range_batches(start, end, batch_size)?;
                if !range.batches.is_empty() {
                    memory.push(range);
                }
            }
            let files: Vec<Arc<StoreFile>> = state
                .files
                .iter()
                .filter(|f| f.overlaps(start, end))
                .cloned()
                .collect();
            (memory, files)
        };
        let mut visible = Visible::new(start, end, &self.options, read);
        // Sources whose every cell this read sees: puts only, no more
        // versions per column than it returns, nothing past its snapshot.
        let max_versions = visible.max_versions();
        let clean = self.options.ttl_ms.is_none()
            && read.time_range.is_none()
            && files.iter().all(|f| {
                f.deletes == 0
                    && f.versions.is_some_and(|v| v <= u64::from(max_versions))
                    && f.max_seq <= read.snapshot
            })
            && memory.iter().all(|m| {
                m.puts_only && m.max_seq <= read.snapshot && m.max_versions <= max_versions
            });
        if clean {
            // Only columns that span two sources are left to resolve (none
            // when there is one source).
            visible = visible.clean_sources();
        }
        let mut sources: Vec<Source> = Vec::new();
        for m in memory {
            sources.push(Box::new(m.batches.into_iter().map(Ok)));
        }
        for f in files {
            sources.push(Box::new(f.batches(start, end, batch_size)?));
        }
        Ok(StoreScan::new(
            &self.family,
            Merge::new(sources, batch_size),
            visible,
        ))
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
                let old = std::mem::replace(&mut s.active, Arc::new(MemStore::new(&store.family)));
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

/// Writes a store file of `batches` (store-file schema, sorted); `None`
/// when they hold no cells.
pub(crate) fn write_file(
    dir: &Path,
    id: u64,
    store: &Store,
    batches: &mut dyn Iterator<Item = Result<RecordBatch>>,
    cells_hint: usize,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<StoreFile>>> {
    Ok(store_file::write(
        &file_path(dir, id),
        id,
        &store.family,
        batches,
        cells_hint,
        &store.options,
        metrics,
    )?
    .map(Arc::new))
}
