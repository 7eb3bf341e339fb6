//! The engine: tables of regions over one write-ahead log and one manifest,
//! with flush, compaction and split running in the background.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use arrow::array::{
    ArrayRef, BinaryViewBuilder, Int64Builder, RecordBatch, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::bulk::{BulkLoad, RunFile, SortedRun};
use crate::cell::{Cell, Mutation};
use crate::error::{io, Result, StorageError};
use crate::manifest::{Manifest, RegionMeta, StoreMeta, TableMeta};
use crate::memstore::MemStore;
use crate::metrics::{EngineMetrics, Metrics};
use crate::options::{EngineOptions, FamilyOptions, SyncPolicy};
use crate::read::{merge, ReadOptions};
use crate::region::{file_path, write_file, Region, Store};
use crate::scan::{Merge, Source, StoreScan, Visible};
use crate::store_file::{self, StoreFile};
use crate::wal::Wal;

/// Cells per batch a memstore is flushed in.
const FLUSH_BATCH: usize = 1 << 16;

pub(crate) struct Table {
    id: u64,
    pub(crate) families: BTreeMap<String, FamilyOptions>,
    /// Sorted by start key; together they cover every key.
    regions: RwLock<Vec<Arc<Region>>>,
    /// This table's split threshold; 0 = the engine's.
    split_bytes: std::sync::atomic::AtomicU64,
    /// Replaced by a new definition (families changed): writers that hold
    /// this object look the table up again; flush and compaction skip it.
    retired: std::sync::atomic::AtomicBool,
}

impl Table {
    fn region_for(regions: &[Arc<Region>], row: &[u8]) -> Arc<Region> {
        let i = regions.partition_point(|r| r.start.as_slice() <= row);
        regions[i.saturating_sub(1)].clone()
    }
}

/// One region as the system views show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    pub id: u64,
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub size_bytes: u64,
    pub memstore_bytes: u64,
    pub files: usize,
    pub reads: u64,
    pub writes: u64,
    /// A row key near the middle of the region's data (from its biggest
    /// store file), where a scan can be cut in two to run in parallel.
    pub mid_key: Option<Vec<u8>>,
}

/// One store file as the system views show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFileInfo {
    pub region: u64,
    pub family: String,
    pub path: PathBuf,
    pub cells: u64,
    pub bytes: u64,
    /// The newest edit the file holds.
    pub max_seq: u64,
    /// Delete markers in the file.
    pub deletes: u64,
    /// The most versions of one column of a row in the file (`None` for
    /// files written before this was recorded).
    pub versions: Option<u64>,
}

/// What a scan reads.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// First row (inclusive).
    pub start: Vec<u8>,
    /// Row to stop before; empty = to the end of the table.
    pub end: Vec<u8>,
    /// Families to read; empty = all. Other families' files are not opened.
    pub families: Vec<String>,
    pub read: ReadOptions,
    /// Cells per Arrow batch.
    pub batch_size: usize,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            start: Vec::new(),
            end: Vec::new(),
            families: Vec::new(),
            read: ReadOptions::default(),
            batch_size: 8192,
        }
    }
}

impl ScanOptions {
    /// Rows in `[start, end)`.
    pub fn range(start: &[u8], end: &[u8]) -> Self {
        Self {
            start: start.to_vec(),
            end: end.to_vec(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Flush(u64, u64),
    Compact(u64, u64, bool),
    MaybeSplit(u64, u64),
}

pub(crate) struct Inner {
    dir: PathBuf,
    options: EngineOptions,
    wal: Wal,
    manifest: Mutex<Manifest>,
    tables: RwLock<BTreeMap<String, Arc<Table>>>,
    /// Sequence numbers handed out but not yet in memstores.
    in_flight: Mutex<BTreeSet<u64>>,
    tasks: Mutex<VecDeque<Task>>,
    wake: Condvar,
    stopping: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

/// The storage engine.
pub struct Engine {
    inner: Arc<Inner>,
    workers: Vec<JoinHandle<()>>,
}

/// The Arrow schema scans return: one row per cell.
pub fn cell_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("row", DataType::BinaryView, false),
        Field::new("family", DataType::Utf8, false),
        Field::new("qualifier", DataType::BinaryView, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("value", DataType::BinaryView, false),
    ]))
}

impl Engine {
    /// Opens (or creates) the engine in `dir`: loads the manifest, removes
    /// files nothing refers to, replays the WAL into memstores.
    pub fn open(dir: &Path, options: EngineOptions) -> Result<Engine> {
        std::fs::create_dir_all(dir.join("files")).map_err(io(dir))?;
        let manifest = Manifest::load(dir)?.unwrap_or_default();
        remove_unreferenced_files(dir, &manifest)?;
        let metrics = Arc::new(Metrics::default());
        let mut tables = BTreeMap::new();
        for t in manifest.tables.values() {
            let table = build_table(dir, t, &manifest, &metrics)?;
            tables.insert(t.name.clone(), Arc::new(table));
        }
        let by_id: BTreeMap<u64, Arc<Table>> = tables.values().map(|t| (t.id, t.clone())).collect();
        let flushed: BTreeMap<(u64, String), u64> = manifest
            .regions
            .values()
            .flat_map(|r| {
                r.stores
                    .iter()
                    .map(move |(f, s)| ((r.id, f.clone()), s.flushed_seq))
            })
            .collect();
        let mut replayed = 0u64;
        // Bulk-loaded files carry numbers no WAL record does.
        let file_seqs = tables.values().flat_map(|t| {
            t.regions
                .read()
                .iter()
                .flat_map(|r| r.stores.values().flat_map(|s| s.state.read().files.clone()))
                .map(|f| f.max_seq)
                .collect::<Vec<_>>()
        });
        let floor = flushed
            .values()
            .copied()
            .chain(file_seqs)
            .max()
            .unwrap_or(0);
        let wal = Wal::open(
            &dir.join("wal"),
            options.sync,
            options.wal_segment_bytes,
            floor,
            |record| {
                let Some(table) = by_id.get(&record.table) else {
                    return Ok(()); // a dropped table
                };
                let regions = table.regions.read();
                for m in record.mutations {
                    let region = Table::region_for(&regions, &m.row);
                    let Some(store) = region.stores.get(&m.family) else {
                        continue;
                    };
                    if record.seq
                        > flushed
                            .get(&(region.id, m.family.clone()))
                            .copied()
                            .unwrap_or(0)
                    {
                        store.state.read().active.insert_all(record.seq, [&m]);
                        replayed += 1;
                    }
                }
                Ok(())
            },
        )?;
        tracing::info!(dir = %dir.display(), tables = tables.len(), replayed, "engine opened");
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            options: options.clone(),
            wal,
            manifest: Mutex::new(manifest),
            tables: RwLock::new(tables),
            in_flight: Mutex::new(BTreeSet::new()),
            tasks: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            metrics,
        });
        let mut workers = Vec::new();
        if options.background {
            let w = inner.clone();
            workers.push(
                std::thread::Builder::new()
                    .name("tidebase-maintenance".into())
                    .spawn(move || w.run_tasks())
                    .map_err(io(dir))?,
            );
            if options.sync == SyncPolicy::Batch {
                let w = inner.clone();
                workers.push(
                    std::thread::Builder::new()
                        .name("tidebase-wal-sync".into())
                        .spawn(move || w.run_sync())
                        .map_err(io(dir))?,
                );
            }
        }
        Ok(Engine { inner, workers })
    }

    /// Creates a table with one region covering every key.
    pub fn create_table(&self, name: &str, families: Vec<(String, FamilyOptions)>) -> Result<()> {
        self.create_table_with_schema(name, families, Vec::new())
    }

    /// Creates a table and records `schema` (opaque to the engine) with it,
    /// in the same atomic manifest write.
    pub fn create_table_with_schema(
        &self,
        name: &str,
        families: Vec<(String, FamilyOptions)>,
        schema: Vec<u8>,
    ) -> Result<()> {
        let inner = &self.inner;
        let mut tables = inner.tables.write();
        if tables.contains_key(name) {
            return Err(StorageError::TableExists(name.to_string()));
        }
        let mut m = inner.manifest.lock();
        let mut next = m.clone();
        let meta = add_empty_table(
            &mut next,
            TableMeta {
                id: 0,
                name: name.to_string(),
                families,
                schema,
            },
        );
        next.store(&inner.dir)?;
        let table = build_table(&inner.dir, &meta, &next, &inner.metrics)?;
        *m = next;
        tables.insert(name.to_string(), Arc::new(table));
        Ok(())
    }

    /// Drops a table and deletes its files.
    pub fn drop_table(&self, name: &str) -> Result<()> {
        let inner = &self.inner;
        let mut tables = inner.tables.write();
        let table = tables
            .get(name)
            .cloned()
            .ok_or_else(|| StorageError::TableNotFound(name.to_string()))?;
        let mut m = inner.manifest.lock();
        let mut next = m.clone();
        next.tables.remove(&table.id);
        next.regions.retain(|_, r| r.table != table.id);
        next.store(&inner.dir)?;
        let old = std::mem::replace(&mut *m, next);
        delete_released_files(&inner.dir, &old, &m);
        tables.remove(name);
        Ok(())
    }

    /// Sets a table's region split threshold (`None` = the engine's). Not
    /// persisted: the layer above applies it again after opening.
    pub fn set_split_bytes(&self, table: &str, bytes: Option<u64>) -> Result<()> {
        self.table(table)?
            .split_bytes
            .store(bytes.unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// Every table with the schema bytes stored with it.
    pub fn table_schemas(&self) -> Vec<(String, Vec<u8>)> {
        let m = self.inner.manifest.lock();
        m.tables
            .values()
            .map(|t| (t.name.clone(), t.schema.clone()))
            .collect()
    }

    /// Replaces the schema bytes stored with a table.
    pub fn set_table_schema(&self, name: &str, schema: Vec<u8>) -> Result<()> {
        let table = self.table(name)?;
        let mut m = self.inner.manifest.lock();
        let mut next = m.clone();
        next.tables
            .get_mut(&table.id)
            .ok_or_else(|| StorageError::TableNotFound(name.to_string()))?
            .schema = schema;
        next.store(&self.inner.dir)?;
        *m = next;
        Ok(())
    }

    /// Removes every row: the table is replaced by an empty one with the
    /// same families and schema, in one manifest write.
    pub fn truncate_table(&self, name: &str) -> Result<()> {
        let inner = &self.inner;
        let mut tables = inner.tables.write();
        let table = tables
            .get(name)
            .cloned()
            .ok_or_else(|| StorageError::TableNotFound(name.to_string()))?;
        let mut m = inner.manifest.lock();
        let mut next = m.clone();
        let old_meta = next
            .tables
            .remove(&table.id)
            .ok_or_else(|| StorageError::TableNotFound(name.to_string()))?;
        next.regions.retain(|_, r| r.table != table.id);
        let meta = add_empty_table(&mut next, old_meta);
        next.store(&inner.dir)?;
        let built = build_table(&inner.dir, &meta, &next, &inner.metrics)?;
        let old = std::mem::replace(&mut *m, next);
        delete_released_files(&inner.dir, &old, &m);
        tables.insert(name.to_string(), Arc::new(built));
        Ok(())
    }

    pub fn table_names(&self) -> Vec<String> {
        self.inner.tables.read().keys().cloned().collect()
    }

    fn table(&self, name: &str) -> Result<Arc<Table>> {
        self.inner.table(name)
    }

    /// Applies a batch atomically: one WAL record, then the memstores.
    /// Returns the batch's sequence number.
    pub fn write(&self, table: &str, mut mutations: Vec<Mutation>) -> Result<u64> {
        loop {
            match self.inner.write(&self.table(table)?, mutations)? {
                Ok(seq) => return Ok(seq),
                // The table was redefined meanwhile: write to the new one.
                Err(back) => mutations = back,
            }
        }
    }

    /// Sets a table's families: families not there yet get empty stores in
    /// every region, existing ones take the given options (for reads at
    /// once, for their files at the next compaction). Families cannot be
    /// removed. `schema` (the caller's table definition) is stored in the
    /// same manifest write. Writes wait while memstores are flushed.
    pub fn alter_families(
        &self,
        name: &str,
        families: Vec<(String, FamilyOptions)>,
        schema: Vec<u8>,
    ) -> Result<()> {
        let inner = &self.inner;
        let mut tables = inner.tables.write();
        let table = tables
            .get(name)
            .cloned()
            .ok_or_else(|| StorageError::TableNotFound(name.to_string()))?;
        if let Some(gone) = table
            .families
            .keys()
            .find(|f| !families.iter().any(|(n, _)| n == *f))
        {
            return Err(StorageError::FamilyNotFound {
                table: name.to_string(),
                family: gone.clone(),
            });
        }
        // No writer gets past this; memstores go to files so the new table
        // object starts from files alone.
        let regions = table.regions.write();
        for r in regions.iter() {
            inner.freeze_region(r);
            inner.flush_region(&table, r)?;
        }
        let _maintenance: Vec<_> = regions
            .iter()
            .flat_map(|r| r.stores.values())
            .map(|s| s.maintenance.lock())
            .collect();
        let mut m = inner.manifest.lock();
        let mut next = m.clone();
        let meta = next
            .tables
            .get_mut(&table.id)
            .ok_or_else(|| StorageError::TableNotFound(name.to_string()))?;
        meta.families = families.clone();
        meta.schema = schema;
        let meta = meta.clone();
        for r in next.regions.values_mut().filter(|r| r.table == table.id) {
            for (f, _) in &families {
                r.stores.entry(f.clone()).or_default();
            }
        }
        next.store(&inner.dir)?;
        let built = build_table(&inner.dir, &meta, &next, &inner.metrics)?;
        built
            .split_bytes
            .store(table.split_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        *m = next;
        table.retired.store(true, Ordering::SeqCst);
        tables.insert(name.to_string(), Arc::new(built));
        Ok(())
    }

    /// The engine's counters since it was opened.
    pub fn metrics(&self) -> EngineMetrics {
        EngineMetrics {
            wal_bytes: self.inner.wal.bytes_written(),
            ..self.inner.metrics.snapshot()
        }
    }

    /// The highest sequence number whose effects every reader sees.
    pub fn visible_seq(&self) -> u64 {
        self.inner.visible_seq()
    }

    /// One row: the cells of the given families (all when empty).
    pub fn get(
        &self,
        table: &str,
        row: &[u8],
        families: &[&str],
        read: &ReadOptions,
    ) -> Result<Vec<Cell>> {
        let table = self.table(table)?;
        // The snapshot is taken, and the stores read, under the regions'
        // lock: a bulk load is published under it too, all or nothing.
        let regions = table.regions.read();
        let region = Table::region_for(&regions, row);
        region.reads.fetch_add(1, Ordering::Relaxed);
        let read = self.inner.with_snapshot(read);
        let mut end = row.to_vec();
        end.push(0);
        let mut out = Vec::new();
        for (family, store) in selected(&region, &table, families)? {
            let _ = family;
            out.extend(store.read(row, &end, true, &read)?);
        }
        Ok(out)
    }

    /// Cells of rows in `[start, end)` (`end` empty = to the end), in key
    /// order, as Arrow batches of at most `batch_size` cells.
    pub fn scan(&self, table: &str, scan: &ScanOptions) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        for scans in self.scan_stores(table, scan)? {
            batches.extend(collect_region(scans, scan.batch_size)?);
        }
        Ok(batches)
    }

    /// Ids of a table's regions in key order (for parallel scans).
    pub fn region_ids(&self, table: &str) -> Result<Vec<u64>> {
        Ok(self
            .table(table)?
            .regions
            .read()
            .iter()
            .map(|r| r.id)
            .collect())
    }

    /// Scans one region (clamped to `[start, end)`).
    pub fn scan_region(
        &self,
        table: &str,
        region: u64,
        scan: &ScanOptions,
    ) -> Result<Vec<RecordBatch>> {
        let table = self.table(table)?;
        let scans = {
            let regions = table.regions.read();
            let r = regions
                .iter()
                .find(|r| r.id == region)
                .ok_or(StorageError::RegionNotFound(region))?;
            region_stores(&table, r, &self.inner.at_snapshot(scan))?
        };
        collect_region(scans, scan.batch_size)
    }

    /// Streaming scans of the regions that overlap `[start, end)`, in key
    /// order: for each region, one [`StoreScan`] per selected family (in
    /// family name order), all at one snapshot. Regions can be read on
    /// different threads.
    pub fn scan_stores(&self, table: &str, scan: &ScanOptions) -> Result<Vec<Vec<StoreScan>>> {
        let table = self.table(table)?;
        let regions = table.regions.read();
        let scan = self.inner.at_snapshot(scan);
        overlapping(&regions, &scan.start, &scan.end)
            .iter()
            .map(|r| region_stores(&table, r, &scan))
            .collect()
    }

    /// Flushes every memstore of the table now.
    pub fn flush(&self, table: &str) -> Result<()> {
        let table = self.table(table)?;
        let regions = table.regions.read().clone();
        for r in regions {
            self.inner.freeze_region(&r);
            self.inner.flush_region(&table, &r)?;
        }
        self.inner.purge_wal()
    }

    /// Compacts every store of the table now (major: drop deleted, expired
    /// and surplus versions).
    pub fn compact(&self, table: &str, major: bool) -> Result<()> {
        let table = self.table(table)?;
        let regions = table.regions.read().clone();
        for r in regions {
            self.inner.compact_region(&table, &r, major)?;
        }
        Ok(())
    }

    /// Splits the region holding `key` at `key`.
    pub fn split_at(&self, table: &str, key: &[u8]) -> Result<()> {
        let table = self.table(table)?;
        let region = Table::region_for(&table.regions.read(), key);
        self.inner.split(&table, region.id, key)
    }

    /// Splits regions past the size threshold; returns how many split.
    pub fn split_large_regions(&self, table: &str) -> Result<usize> {
        let table = self.table(table)?;
        let ids: Vec<u64> = table.regions.read().iter().map(|r| r.id).collect();
        let mut n = 0;
        for id in ids {
            if self.inner.maybe_split(&table, id)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Merges two adjacent regions into one.
    pub fn merge_regions(&self, table: &str, left: u64, right: u64) -> Result<()> {
        let table = self.table(table)?;
        self.inner.merge(&table, left, right)
    }

    pub fn regions(&self, table: &str) -> Result<Vec<RegionInfo>> {
        let table = self.table(table)?;
        let regions = table.regions.read().clone();
        Ok(regions
            .iter()
            .map(|r| RegionInfo {
                id: r.id,
                start: r.start.clone(),
                end: r.end.clone(),
                size_bytes: r.size(),
                memstore_bytes: r.stores.values().map(|s| s.memstore_bytes() as u64).sum(),
                files: r.stores.values().map(|s| s.state.read().files.len()).sum(),
                reads: r.reads.load(Ordering::Relaxed),
                writes: r.writes.load(Ordering::Relaxed),
                mid_key: r.split_point(),
            })
            .collect())
    }

    /// Store files of a table.
    pub fn store_files(&self, table: &str) -> Result<Vec<StoreFileInfo>> {
        let table = self.table(table)?;
        let regions = table.regions.read().clone();
        let mut out = Vec::new();
        for r in &regions {
            for s in r.stores.values() {
                for f in &s.state.read().files {
                    out.push(StoreFileInfo {
                        region: r.id,
                        family: s.family.clone(),
                        path: f.path.clone(),
                        cells: f.cells,
                        bytes: f.size,
                        max_seq: f.max_seq,
                        deletes: f.deletes,
                        versions: f.versions,
                    });
                }
            }
        }
        Ok(out)
    }

    /// WAL segment files on disk.
    pub fn wal_segments(&self) -> usize {
        self.inner.wal.segment_count()
    }

    /// Starts a bulk load into `table`: cells sorted in memory and written
    /// straight to store files, visible all at once when it commits.
    pub fn bulk_load(&self, table: &str) -> Result<BulkLoad> {
        Ok(BulkLoad::new(self.inner.clone(), self.table(table)?, table))
    }

    /// Waits until queued background work is done.
    pub fn wait_idle(&self) {
        let mut tasks = self.inner.tasks.lock();
        while !tasks.is_empty() {
            self.inner
                .wake
                .wait_for(&mut tasks, std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Err(e) = self.inner.wal.sync() {
            tracing::error!(error = %e, "final WAL sync failed");
        }
    }
}

fn selected<'a>(
    region: &'a Region,
    table: &Table,
    families: &[&str],
) -> Result<Vec<(&'a String, &'a Store)>> {
    if families.is_empty() {
        return Ok(region.stores.iter().collect());
    }
    families
        .iter()
        .map(|f| {
            region
                .stores
                .get_key_value(*f)
                .ok_or_else(|| StorageError::FamilyNotFound {
                    table: table.id.to_string(),
                    family: f.to_string(),
                })
        })
        .collect()
}

/// The regions of `table` that overlap `[start, end)` (`end` empty = to
/// the end), in key order.
fn overlapping(regions: &[Arc<Region>], start: &[u8], end: &[u8]) -> Vec<Arc<Region>> {
    regions
        .iter()
        .filter(|r| {
            (end.is_empty() || r.start.as_slice() < end)
                && (r.end.is_empty() || r.end.as_slice() > start)
        })
        .cloned()
        .collect()
}

/// Streaming scans of one region's selected stores over the scan's range
/// clamped to the region.
fn region_stores(table: &Table, region: &Region, scan: &ScanOptions) -> Result<Vec<StoreScan>> {
    let (start, end) = (scan.start.as_slice(), scan.end.as_slice());
    let families: Vec<&str> = scan.families.iter().map(String::as_str).collect();
    region.reads.fetch_add(1, Ordering::Relaxed);
    let lo = start.max(region.start.as_slice());
    let hi = match (end.is_empty(), region.end.is_empty()) {
        (true, _) => region.end.as_slice(),
        (false, true) => end,
        (false, false) => end.min(region.end.as_slice()),
    };
    selected(region, table, &families)?
        .into_iter()
        .map(|(_, store)| store.scan(lo, hi, &scan.read, scan.batch_size))
        .collect()
}

/// A region's store scans read to the end, in the cell schema.
fn collect_region(mut scans: Vec<StoreScan>, batch_size: usize) -> Result<Vec<RecordBatch>> {
    if scans.len() == 1 {
        let family = scans[0].family().to_string();
        return scans
            .pop()
            .into_iter()
            .flatten()
            .map(|b| cell_batch(&b?, &family))
            .collect();
    }
    let mut per_family = Vec::new();
    for s in scans {
        let family = s.family().to_string();
        let mut cells = Vec::new();
        for b in s {
            cells.extend(store_file::cells_of(&b?, &family));
        }
        per_family.push(cells);
    }
    to_batches(&merge(per_family), batch_size.max(1))
}

/// A store-file-schema batch of one family in the cell schema.
fn cell_batch(batch: &RecordBatch, family: &str) -> Result<RecordBatch> {
    let family: ArrayRef = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
        family,
        batch.num_rows(),
    )));
    Ok(RecordBatch::try_new(
        cell_schema(),
        vec![
            batch.column(0).clone(),
            family,
            batch.column(1).clone(),
            batch.column(2).clone(),
            batch.column(5).clone(),
        ],
    )?)
}

fn to_batches(cells: &[Cell], batch_size: usize) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for chunk in cells.chunks(batch_size) {
        let mut row = BinaryViewBuilder::new();
        let mut family = StringBuilder::new();
        let mut qualifier = BinaryViewBuilder::new();
        let mut ts = Int64Builder::new();
        let mut value = BinaryViewBuilder::new();
        for c in chunk {
            row.append_value(&c.key.row);
            family.append_value(&c.key.family);
            qualifier.append_value(&c.key.qualifier);
            ts.append_value(c.key.ts);
            value.append_value(&c.value);
        }
        out.push(RecordBatch::try_new(
            cell_schema(),
            vec![
                Arc::new(row.finish()),
                Arc::new(family.finish()),
                Arc::new(qualifier.finish()),
                Arc::new(ts.finish()),
                Arc::new(value.finish()),
            ],
        )?);
    }
    Ok(out)
}

/// Adds `meta` to the manifest under a new id, with one empty region
/// covering every key; returns it with its id.
fn add_empty_table(next: &mut Manifest, mut meta: TableMeta) -> TableMeta {
    meta.id = next.allocate_id();
    let region = next.allocate_id();
    let stores = meta
        .families
        .iter()
        .map(|(f, _)| (f.clone(), StoreMeta::default()))
        .collect();
    next.regions.insert(
        region,
        RegionMeta {
            id: region,
            table: meta.id,
            start: vec![],
            end: vec![],
            stores,
        },
    );
    next.tables.insert(meta.id, meta.clone());
    meta
}

fn build_table(
    dir: &Path,
    meta: &TableMeta,
    manifest: &Manifest,
    metrics: &Arc<Metrics>,
) -> Result<Table> {
    let families: BTreeMap<String, FamilyOptions> = meta.families.iter().cloned().collect();
    let mut regions = Vec::new();
    for r in manifest.regions.values().filter(|r| r.table == meta.id) {
        regions.push(Arc::new(build_region(dir, r, &families, metrics)?));
    }
    regions.sort_by(|a, b| a.start.cmp(&b.start));
    Ok(Table {
        id: meta.id,
        families,
        regions: RwLock::new(regions),
        split_bytes: std::sync::atomic::AtomicU64::new(0),
        retired: std::sync::atomic::AtomicBool::new(false),
    })
}

fn build_region(
    dir: &Path,
    r: &RegionMeta,
    families: &BTreeMap<String, FamilyOptions>,
    metrics: &Arc<Metrics>,
) -> Result<Region> {
    let mut stores = BTreeMap::new();
    for (family, options) in families {
        let files = match r.stores.get(family) {
            Some(s) => s
                .files
                .iter()
                .map(|id| StoreFile::open(&file_path(dir, *id), *id, metrics).map(Arc::new))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        stores.insert(family.clone(), Store::new(family, options.clone(), files));
    }
    Ok(Region::new(r.id, r.start.clone(), r.end.clone(), stores))
}

/// The files a minor compaction merges: by age (newest edit), the newest
/// run in which no file is more than 1.2 times the size of all newer files
/// together, so large old files are not rewritten for every small flush
/// (HBase's ratio-based selection). Fewer than `min_files`: none; three
/// times `min_files` or more: all of them.
fn minor_selection(mut files: Vec<Arc<StoreFile>>, min_files: usize) -> Vec<Arc<StoreFile>> {
    if files.len() >= 3 * min_files.max(2) {
        // Too many files for reads: merge them all.
        return files;
    }
    files.sort_by_key(|f| f.max_seq);
    let mut newer: u64 = files.iter().map(|f| f.size).sum();
    let mut start = files.len();
    for (i, f) in files.iter().enumerate() {
        newer -= f.size;
        if f.size as f64 <= 1.2 * newer as f64 {
            start = i;
            break;
        }
    }
    let selected = files.split_off(start.min(files.len()));
    if selected.len() >= min_files.max(2) {
        selected
    } else {
        Vec::new()
    }
}

fn referenced(m: &Manifest) -> HashSet<u64> {
    m.regions
        .values()
        .flat_map(|r| r.stores.values().flat_map(|s| s.files.iter().copied()))
        .collect()
}

/// Deletes store files no manifest entry refers to (left by a crash during
/// flush, compaction or split).
fn remove_unreferenced_files(dir: &Path, m: &Manifest) -> Result<()> {
    let keep = referenced(m);
    let files = dir.join("files");
    for entry in std::fs::read_dir(&files).map_err(io(&files))?.flatten() {
        let path = entry.path();
        let id = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.split('.').next())
            .and_then(|s| s.parse::<u64>().ok());
        let stale =
            path.extension().is_some_and(|e| e == "tmp") || id.is_none_or(|id| !keep.contains(&id));
        if stale {
            tracing::info!(file = %path.display(), "removing unreferenced store file");
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Deletes files `old` referred to and `new` does not. Readers that still
/// hold one keep its data through their open handle.
fn delete_released_files(dir: &Path, old: &Manifest, new: &Manifest) {
    let keep = referenced(new);
    for id in referenced(old).difference(&keep) {
        let path = file_path(dir, *id);
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(file = %path.display(), error = %e, "could not delete released store file");
        }
    }
}

impl Inner {
    fn table(&self, name: &str) -> Result<Arc<Table>> {
        self.tables
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| StorageError::TableNotFound(name.to_string()))
    }

    fn table_by_id(&self, id: u64) -> Option<Arc<Table>> {
        self.tables.read().values().find(|t| t.id == id).cloned()
    }

    /// Lock order: the WAL's lock is never taken while `in_flight` is held
    /// (a writer holds the WAL's lock when it registers its number in
    /// `in_flight`). Reading the last number first is safe: every number up
    /// to it is either still in `in_flight` when we look, or done.
    fn visible_seq(&self) -> u64 {
        let last = self.wal.last_seq();
        let in_flight = self.in_flight.lock();
        match in_flight.first() {
            Some(first) => first - 1,
            None => last,
        }
    }

    fn with_snapshot(&self, read: &ReadOptions) -> ReadOptions {
        let mut r = read.clone();
        r.snapshot = r.snapshot.min(self.visible_seq());
        r
    }

    /// `scan` reading at the current snapshot (or its own, if older).
    fn at_snapshot(&self, scan: &ScanOptions) -> ScanOptions {
        ScanOptions {
            read: self.with_snapshot(&scan.read),
            ..scan.clone()
        }
    }

    /// `Ok(Err(mutations))`: the table object was retired; nothing written.
    fn write(
        &self,
        table: &Arc<Table>,
        mutations: Vec<Mutation>,
    ) -> Result<std::result::Result<u64, Vec<Mutation>>> {
        for m in &mutations {
            if !table.families.contains_key(&m.family) {
                return Err(StorageError::FamilyNotFound {
                    table: table.id.to_string(),
                    family: m.family.clone(),
                });
            }
        }
        let user_bytes: usize = mutations
            .iter()
            .map(|m| m.row.len() + m.qualifier.len() + m.value.len())
            .sum();
        Metrics::add(&self.metrics.user_bytes, user_bytes as u64);
        loop {
            let regions = table.regions.read();
            if table.retired.load(Ordering::SeqCst) {
                return Ok(Err(mutations));
            }
            let mut targets: Vec<Arc<Region>> = Vec::new();
            for m in &mutations {
                let r = Table::region_for(&regions, &m.row);
                if !targets.iter().any(|t| t.id == r.id) {
                    targets.push(r);
                }
            }
            // Backpressure: too many memstores waiting for a flush.
            if let Some(r) = targets.iter().find(|r| {
                r.stores
                    .values()
                    .any(|s| s.state.read().frozen.len() >= self.options.max_frozen_memstores)
            }) {
                let r = r.clone();
                drop(regions);
                self.flush_region(table, &r)?;
                continue;
            }
            targets.sort_by_key(|r| r.id);
            let gates: Vec<_> = targets.iter().map(|r| r.write_gate.read()).collect();
            let seq = self.wal.append(table.id, &mutations, |seq| {
                self.in_flight.lock().insert(seq);
            });
            let seq = match seq {
                Ok(s) => s,
                Err(e) => {
                    // The failed append's number never becomes visible.
                    let last = self.wal.last_seq();
                    self.in_flight.lock().remove(&last);
                    return Err(e);
                }
            };
            // The batch's cells by memstore, each memstore's inserted under
            // one lock. No memstore is frozen meanwhile: freezing waits for
            // the gates.
            let mut groups: Vec<(u64, &str, Arc<MemStore>, Vec<&Mutation>)> = Vec::new();
            for m in &mutations {
                let r = match targets.iter().find(|r| r.contains(&m.row)) {
                    Some(r) => r.clone(),
                    None => Table::region_for(&regions, &m.row),
                };
                r.writes.fetch_add(1, Ordering::Relaxed);
                match groups.iter_mut().find(|g| g.0 == r.id && g.1 == m.family) {
                    Some(g) => g.3.push(m),
                    None => {
                        if let Some(store) = r.stores.get(&m.family) {
                            let active = store.state.read().active.clone();
                            groups.push((r.id, &m.family, active, vec![m]));
                        }
                    }
                }
            }
            for (_, _, memstore, cells) in groups {
                memstore.insert_all(seq, cells);
            }
            self.in_flight.lock().remove(&seq);
            drop(gates);
            let full: Vec<Arc<Region>> = targets
                .into_iter()
                .filter(|r| {
                    r.stores
                        .values()
                        .any(|s| s.state.read().active.bytes() >= self.options.memstore_flush_bytes)
                })
                .collect();
            drop(regions);
            for r in full {
                if self.freeze_region(&r) {
                    if self.options.background {
                        self.enqueue(Task::Flush(table.id, r.id));
                    } else {
                        self.after_write_maintenance(table, &r)?;
                    }
                }
            }
            return Ok(Ok(seq));
        }
    }

    /// Without a background thread, the writer does the maintenance.
    fn after_write_maintenance(&self, table: &Arc<Table>, r: &Arc<Region>) -> Result<()> {
        self.flush_region(table, r)?;
        self.after_new_files(table, r)?;
        self.purge_wal()
    }

    /// After a region's stores gained files (a flush, a bulk load): a minor
    /// compaction when a store has `compaction_min_files`, then a split
    /// check; queued for the background thread, or done now without one.
    fn after_new_files(&self, table: &Arc<Table>, r: &Arc<Region>) -> Result<()> {
        let crowded = r
            .stores
            .values()
            .any(|s| s.state.read().files.len() >= self.options.compaction_min_files);
        if self.options.background {
            if crowded {
                self.enqueue(Task::Compact(table.id, r.id, false));
            }
            self.enqueue(Task::MaybeSplit(table.id, r.id));
        } else {
            if crowded {
                self.compact_region(table, r, false)?;
            }
            self.maybe_split(table, r.id)?;
        }
        Ok(())
    }

    pub(crate) fn bulk_memory(&self) -> usize {
        self.options.bulk_load_memory.clamp(1, 2 << 30)
    }

    fn split_threshold(&self, table: &Table) -> u64 {
        match table.split_bytes.load(Ordering::Relaxed) {
            0 => self.options.region_split_bytes,
            n => n,
        }
    }

    /// Before the last run of a bulk load is written: a region the run
    /// would take past its split threshold is split first, at row keys of
    /// the run, into pieces under the threshold. The run's files then land
    /// in the daughters as written; a split after the load would have to
    /// rewrite them.
    pub(crate) fn split_for_load(&self, table: &Table, run: &SortedRun<'_>) -> Result<()> {
        let threshold = self.split_threshold(table).max(1);
        let regions = table.regions.read().clone();
        let mut keys = Vec::new();
        for r in &regions {
            let range = run.range(&r.start, &r.end);
            if range.is_empty() {
                continue;
            }
            let load: u64 = range.clone().map(|i| run.file_bytes(i)).sum();
            let pieces = (r.size() + load).div_ceil(threshold);
            if pieces < 2 {
                continue;
            }
            let share = load / pieces;
            let (mut acc, mut cut) = (0, share);
            for i in range.clone() {
                acc += run.file_bytes(i);
                if acc >= cut && i + 1 < range.end && run.row(i + 1) != run.row(i) {
                    keys.push(run.row(i + 1).to_vec());
                    cut += share;
                }
            }
        }
        for key in keys {
            let region = Table::region_for(&table.regions.read(), &key);
            if region.start.as_slice() < key.as_slice() {
                self.split(table, region.id, &key)?;
            }
        }
        Ok(())
    }

    /// Writes a sorted run as one store file per region and family, cut at
    /// the regions' boundaries of now, every cell stamped with a new
    /// sequence number; files of different regions on different threads.
    /// The files belong to no region yet.
    pub(crate) fn write_run(
        &self,
        table: &Table,
        families: &[String],
        run: &SortedRun<'_>,
    ) -> Result<(u64, Vec<RunFile>)> {
        let seq = self.wal.reserve()?;
        let regions = table.regions.read().clone();
        let mut jobs = Vec::new();
        for r in &regions {
            let range = run.range(&r.start, &r.end);
            for (i, family) in families.iter().enumerate() {
                let Some(store) = r.stores.get(family) else {
                    continue;
                };
                let n = run.count(range.clone(), i as u16);
                if n > 0 {
                    jobs.push((store, i as u16, range.clone(), n));
                }
            }
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let done: Mutex<Vec<RunFile>> = Mutex::new(Vec::new());
        let failed: Mutex<Option<StorageError>> = Mutex::new(None);
        let work = || {
            while failed.lock().is_none() {
                let Some((store, family, range, n)) =
                    jobs.get(next.fetch_add(1, Ordering::Relaxed))
                else {
                    break;
                };
                let id = self.manifest.lock().allocate_id();
                let mut batches = run.batches(range.clone(), *family, seq);
                match write_file(&self.dir, id, store, &mut batches, *n, &self.metrics) {
                    Ok(Some(f)) => {
                        Metrics::add(&self.metrics.bulk_bytes, f.size);
                        done.lock().push(RunFile {
                            family: store.family.clone(),
                            file: f,
                        });
                    }
                    Ok(None) => {}
                    Err(e) => *failed.lock() = Some(e),
                }
            }
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(jobs.len());
        std::thread::scope(|scope| {
            for _ in 1..threads {
                scope.spawn(work);
            }
            work();
        });
        let files = done.into_inner();
        if let Some(e) = failed.into_inner() {
            for f in &files {
                let _ = std::fs::remove_file(&f.file.path);
            }
            return Err(e);
        }
        Ok((seq, files))
    }

    /// Adds a bulk load's files to the regions they overlap, in one
    /// manifest edit, under the regions' lock (which readers hold while
    /// they take their snapshot and open their stores): a reader sees all
    /// of the load or none of it.
    pub(crate) fn publish_load(
        &self,
        name: &str,
        table: &Arc<Table>,
        runs: &[RunFile],
        max_seq: u64,
        user_bytes: u64,
    ) -> Result<()> {
        if runs.is_empty() {
            return Ok(());
        }
        // Every number up to the load's is visible before its files are.
        while self.visible_seq() < max_seq {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        let touched = {
            let tables = self.tables.read();
            if !tables.get(name).is_some_and(|t| Arc::ptr_eq(t, table))
                || table.retired.load(Ordering::SeqCst)
            {
                return Err(StorageError::TableChanged(name.to_string()));
            }
            let regions = table.regions.write();
            let mut added: Vec<(Arc<Region>, &RunFile)> = Vec::new();
            let mut m = self.manifest.lock();
            let mut next = m.clone();
            for run in runs {
                let f = &run.file;
                for r in regions.iter().filter(|r| {
                    f.max_row.as_slice() >= r.start.as_slice()
                        && (r.end.is_empty() || f.min_row.as_slice() < r.end.as_slice())
                }) {
                    let meta = next
                        .regions
                        .get_mut(&r.id)
                        .ok_or(StorageError::RegionNotFound(r.id))?;
                    meta.stores
                        .entry(run.family.clone())
                        .or_default()
                        .files
                        .push(f.id);
                    added.push((r.clone(), run));
                }
            }
            next.store(&self.dir)?;
            *m = next;
            drop(m);
            let mut touched: Vec<Arc<Region>> = Vec::new();
            for (r, run) in added {
                if let Some(store) = r.stores.get(&run.family) {
                    store.state.write().files.push(run.file.clone());
                }
                if !touched.iter().any(|t| t.id == r.id) {
                    touched.push(r);
                }
            }
            touched
        };
        Metrics::add(&self.metrics.user_bytes, user_bytes);
        tracing::debug!(
            table = table.id,
            files = runs.len(),
            max_seq,
            "bulk load published"
        );
        for r in touched {
            self.after_new_files(table, &r)?;
        }
        Ok(())
    }

    fn enqueue(&self, task: Task) {
        let mut tasks = self.tasks.lock();
        if !tasks.contains(&task) {
            tasks.push_back(task);
        }
        self.wake.notify_all();
    }

    fn freeze_region(&self, r: &Region) -> bool {
        let _gate = r.write_gate.write();
        r.freeze(self.wal.last_seq())
    }

    /// Writes every frozen memstore of the region to a store file.
    fn flush_region(&self, table: &Table, r: &Region) -> Result<()> {
        for store in r.stores.values() {
            let _m = store.maintenance.lock();
            if table.retired.load(Ordering::SeqCst) {
                return Ok(());
            }
            loop {
                let Some((mem, seq)) = store.state.read().frozen.first().cloned() else {
                    break;
                };
                let batches = mem.range_batches(&[], &[], FLUSH_BATCH)?.batches;
                let file = if batches.is_empty() {
                    None
                } else {
                    let id = self.manifest.lock().allocate_id();
                    let n = batches.iter().map(|b| b.num_rows()).sum();
                    let f = write_file(
                        &self.dir,
                        id,
                        store,
                        &mut batches.into_iter().map(Ok),
                        n,
                        &self.metrics,
                    )?;
                    if let Some(f) = &f {
                        Metrics::add(&self.metrics.flush_bytes, f.size);
                    }
                    f
                };
                {
                    let mut m = self.manifest.lock();
                    let mut next = m.clone();
                    let Some(meta) = next.regions.get_mut(&r.id) else {
                        return Err(StorageError::RegionNotFound(r.id));
                    };
                    let s = meta.stores.entry(store.family.clone()).or_default();
                    s.flushed_seq = s.flushed_seq.max(seq);
                    if let Some(f) = &file {
                        s.files.push(f.id);
                    }
                    next.store(&self.dir)?;
                    *m = next;
                    let cells = file.as_ref().map_or(0, |f| f.cells);
                    let mut state = store.state.write();
                    if let Some(f) = file {
                        state.files.push(f);
                    }
                    state.frozen.remove(0);
                    drop(state);
                    tracing::debug!(table = table.id, region = r.id, family = %store.family, cells, "flushed");
                }
            }
        }
        Ok(())
    }

    /// Merges a store's files. Minor merges everything as is; major keeps
    /// only what a reader can see (dropping deletes, expired cells, surplus
    /// versions and cells outside the region).
    fn compact_region(&self, table: &Table, r: &Region, major: bool) -> Result<()> {
        for store in r.stores.values() {
            let _m = store.maintenance.lock();
            if table.retired.load(Ordering::SeqCst) {
                return Ok(());
            }
            let all = store.state.read().files.clone();
            let out_of_range = all.iter().any(|f| {
                f.min_row.as_slice() < r.start.as_slice()
                    || (!r.end.is_empty() && f.max_row.as_slice() >= r.end.as_slice())
            });
            let files = if major || out_of_range {
                all
            } else {
                minor_selection(all, self.options.compaction_min_files)
            };
            if files.len() < 2 && !(major || out_of_range) || files.is_empty() {
                continue;
            }
            // Merged batch by batch: the inputs are never all in memory.
            let mut sources: Vec<Source> = Vec::new();
            for f in &files {
                sources.push(Box::new(f.batches(&r.start, &r.end, 8192)?));
            }
            let visible = if major {
                let read = ReadOptions {
                    max_versions: store.options.max_versions,
                    ..Default::default()
                };
                Visible::new(&r.start, &r.end, &store.options, &read)
            } else {
                Visible::everything(&r.start, &r.end)
            };
            let mut merged = StoreScan::new(&store.family, Merge::new(sources, 8192), visible);
            let hint: u64 = files.iter().map(|f| f.cells).sum();
            let id = self.manifest.lock().allocate_id();
            let hint = usize::try_from(hint).unwrap_or(usize::MAX);
            let new = write_file(&self.dir, id, store, &mut merged, hint, &self.metrics)?;
            if let Some(f) = &new {
                Metrics::add(&self.metrics.compaction_bytes, f.size);
            }
            let replaced: HashSet<u64> = files.iter().map(|f| f.id).collect();
            let mut m = self.manifest.lock();
            let mut next = m.clone();
            let meta = next
                .regions
                .get_mut(&r.id)
                .ok_or(StorageError::RegionNotFound(r.id))?;
            let s = meta.stores.entry(store.family.clone()).or_default();
            s.files.retain(|id| !replaced.contains(id));
            if let Some(f) = &new {
                s.files.insert(0, f.id);
            }
            next.store(&self.dir)?;
            let old = std::mem::replace(&mut *m, next);
            {
                let mut state = store.state.write();
                state.files.retain(|f| !replaced.contains(&f.id));
                if let Some(f) = new {
                    state.files.insert(0, f);
                }
            }
            delete_released_files(&self.dir, &old, &m);
            tracing::debug!(table = table.id, region = r.id, family = %store.family, major, inputs = files.len(), "compacted");
        }
        Ok(())
    }

    fn maybe_split(&self, table: &Arc<Table>, region: u64) -> Result<bool> {
        let r = match table.regions.read().iter().find(|r| r.id == region) {
            Some(r) => r.clone(),
            None => return Ok(false),
        };
        if r.size() < self.split_threshold(table) {
            return Ok(false);
        }
        if r.has_references() {
            self.compact_region(table, &r, true)?;
        }
        match r.split_point() {
            Some(key) => {
                self.split(table, region, &key)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Splits a region at `key` into two daughters that share its files
    /// until compaction rewrites them.
    fn split(&self, table: &Table, region: u64, key: &[u8]) -> Result<()> {
        let mut regions = table.regions.write();
        if table.retired.load(Ordering::SeqCst) {
            // Redefined meanwhile; the new table object splits and merges.
            return Ok(());
        }
        let idx = regions
            .iter()
            .position(|r| r.id == region)
            .ok_or(StorageError::RegionNotFound(region))?;
        let parent = regions[idx].clone();
        if key <= parent.start.as_slice() || !parent.contains(key) {
            return Err(StorageError::InvalidSplit {
                region,
                reason: "the key is not strictly inside the region",
            });
        }
        parent.freeze(self.wal.last_seq());
        self.flush_region(table, &parent)?;
        let mut m = self.manifest.lock();
        let mut next = m.clone();
        let meta = next
            .regions
            .remove(&region)
            .ok_or(StorageError::RegionNotFound(region))?;
        let left_id = next.allocate_id();
        let right_id = next.allocate_id();
        let left = RegionMeta {
            id: left_id,
            table: meta.table,
            start: meta.start.clone(),
            end: key.to_vec(),
            stores: meta.stores.clone(),
        };
        let right = RegionMeta {
            id: right_id,
            table: meta.table,
            start: key.to_vec(),
            end: meta.end.clone(),
            stores: meta.stores.clone(),
        };
        let daughters = [left, right];
        let mut built = Vec::new();
        for d in &daughters {
            let mut stores = BTreeMap::new();
            for (family, store) in &parent.stores {
                stores.insert(
                    family.clone(),
                    Store::new(
                        family,
                        store.options.clone(),
                        store.state.read().files.clone(),
                    ),
                );
            }
            built.push(Arc::new(Region::new(
                d.id,
                d.start.clone(),
                d.end.clone(),
                stores,
            )));
        }
        for d in daughters {
            next.regions.insert(d.id, d);
        }
        next.store(&self.dir)?;
        *m = next;
        drop(m);
        regions.splice(idx..=idx, built);
        tracing::info!(
            table = table.id,
            region,
            left = left_id,
            right = right_id,
            "region split"
        );
        drop(regions);
        if self.options.background {
            self.enqueue(Task::Compact(table.id, left_id, true));
            self.enqueue(Task::Compact(table.id, right_id, true));
        }
        Ok(())
    }

    fn merge(&self, table: &Arc<Table>, left: u64, right: u64) -> Result<()> {
        let (l, r) = {
            let regions = table.regions.read();
            let find = |id| {
                regions
                    .iter()
                    .find(|r| r.id == id)
                    .cloned()
                    .ok_or(StorageError::RegionNotFound(id))
            };
            (find(left)?, find(right)?)
        };
        if l.end != r.start || l.end.is_empty() {
            return Err(StorageError::NotAdjacent(left, right));
        }
        // Rewrite files reaching outside each region so the union is exact.
        self.compact_region(table, &l, true)?;
        self.compact_region(table, &r, true)?;
        let mut regions = table.regions.write();
        if table.retired.load(Ordering::SeqCst) {
            // Redefined meanwhile; the new table object splits and merges.
            return Ok(());
        }
        let idx = regions
            .iter()
            .position(|x| x.id == left)
            .ok_or(StorageError::RegionNotFound(left))?;
        if regions.get(idx + 1).map(|x| x.id) != Some(right) {
            return Err(StorageError::NotAdjacent(left, right));
        }
        for x in [&l, &r] {
            x.freeze(self.wal.last_seq());
            self.flush_region(table, x)?;
        }
        let mut m = self.manifest.lock();
        let mut next = m.clone();
        let lm = next
            .regions
            .remove(&left)
            .ok_or(StorageError::RegionNotFound(left))?;
        let rm = next
            .regions
            .remove(&right)
            .ok_or(StorageError::RegionNotFound(right))?;
        let id = next.allocate_id();
        let mut stores = lm.stores.clone();
        for (family, s) in rm.stores {
            let e = stores.entry(family).or_default();
            e.flushed_seq = e.flushed_seq.max(s.flushed_seq);
            e.files.extend(s.files);
        }
        let merged = RegionMeta {
            id,
            table: lm.table,
            start: lm.start.clone(),
            end: rm.end.clone(),
            stores,
        };
        let mut built_stores = BTreeMap::new();
        for (family, store) in &l.stores {
            let mut files = store.state.read().files.clone();
            if let Some(rs) = r.stores.get(family) {
                files.extend(rs.state.read().files.clone());
            }
            built_stores.insert(
                family.clone(),
                Store::new(family, store.options.clone(), files),
            );
        }
        let region = Arc::new(Region::new(
            id,
            merged.start.clone(),
            merged.end.clone(),
            built_stores,
        ));
        next.regions.insert(id, merged);
        next.store(&self.dir)?;
        *m = next;
        regions.splice(idx..=idx + 1, [region]);
        tracing::info!(table = table.id, left, right, merged = id, "regions merged");
        Ok(())
    }

    /// Deletes WAL segments whose edits are all in store files.
    fn purge_wal(&self) -> Result<()> {
        let mut bound = self.visible_seq() + 1;
        for t in self.tables.read().values() {
            for r in t.regions.read().iter() {
                for s in r.stores.values() {
                    if let Some(min) = s.min_unflushed() {
                        bound = bound.min(min);
                    }
                }
            }
        }
        self.wal.purge(bound)?;
        Ok(())
    }

    fn run_tasks(&self) {
        loop {
            let task = {
                let mut tasks = self.tasks.lock();
                loop {
                    if self.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Some(t) = tasks.front().copied() {
                        break t;
                    }
                    self.wake
                        .wait_for(&mut tasks, std::time::Duration::from_millis(100));
                }
            };
            if let Err(e) = self.run_task(task) {
                tracing::error!(?task, error = %e, "background task failed");
            }
            self.tasks.lock().pop_front();
            self.wake.notify_all();
        }
    }

    fn run_task(&self, task: Task) -> Result<()> {
        let (table_id, region_id) = match task {
            Task::Flush(t, r) | Task::Compact(t, r, _) | Task::MaybeSplit(t, r) => (t, r),
        };
        let Some(table) = self.table_by_id(table_id) else {
            return Ok(());
        };
        let Some(region) = table
            .regions
            .read()
            .iter()
            .find(|r| r.id == region_id)
            .cloned()
        else {
            return Ok(());
        };
        match task {
            Task::Flush(..) => {
                self.flush_region(&table, &region)?;
                self.purge_wal()?;
                self.after_new_files(&table, &region)?;
            }
            Task::Compact(_, _, major) => self.compact_region(&table, &region, major)?,
            Task::MaybeSplit(..) => {
                self.maybe_split(&table, region_id)?;
            }
        }
        Ok(())
    }

    fn run_sync(&self) {
        while !self.stopping.load(Ordering::SeqCst) {
            std::thread::sleep(self.options.batch_sync_interval);
            if let Err(e) = self.wal.sync() {
                tracing::error!(error = %e, "WAL sync failed");
            }
        }
    }
}
