//! Store files: immutable Parquet files holding one family's cells in key
//! order, with a row-key bloom filter and the row range in the footer.
//!
//! Columns: `row` (binary), `qualifier` (binary), `ts` (int64), `seq`
//! (uint64), `kind` (uint8), `value` (binary). Key-value metadata:
//! `tidebase.format` = `1`, `tidebase.family`, `tidebase.min_row`,
//! `tidebase.max_row`, `tidebase.mid_row` (hex), `tidebase.max_seq`,
//! `tidebase.cells`, `tidebase.bloom` (hex of [`Bloom::encode`], absent when
//! the family has no bloom filter).

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, AsArray, BinaryViewBuilder, Int64Builder, RecordBatch, UInt64Builder,
    UInt8Builder,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt64Type, UInt8Type};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as PqCompression, ZstdLevel};
use parquet::file::metadata::{KeyValue, PageIndexPolicy};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::ChunkReader;
use parquet::file::statistics::Statistics;
use parquet::schema::types::ColumnPath;

use crate::bloom::Bloom;
use crate::cell::{Cell, CellKey, CellKind};
use crate::error::{io, Result, StorageError};
use crate::metrics::Metrics;
use crate::options::{BloomKind, Compression, FamilyOptions};

pub(crate) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("row", DataType::BinaryView, false),
        Field::new("qualifier", DataType::BinaryView, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("kind", DataType::UInt8, false),
        Field::new("value", DataType::BinaryView, false),
    ]))
}

/// An open store file.
pub struct StoreFile {
    pub id: u64,
    pub path: PathBuf,
    pub family: String,
    pub min_row: Vec<u8>,
    pub max_row: Vec<u8>,
    pub mid_row: Vec<u8>,
    pub max_seq: u64,
    pub cells: u64,
    /// Delete markers in the file.
    pub deletes: u64,
    /// The most versions any one column of a row has in the file (absent
    /// in files written before it was recorded).
    pub versions: Option<u64>,
    pub size: u64,
    bloom: Option<Bloom>,
    bloom_kind: BloomKind,
    pub(crate) file: PositionalFile,
    pub(crate) metadata: ArrowReaderMetadata,
    /// Each row group's first and last row (by its statistics, in group
    /// order), so a get finds its group by binary search; `None` when a
    /// group has no row statistics.
    pub(crate) group_rows: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    pub(crate) metrics: Arc<Metrics>,
}

/// A store file read with positional reads (`pread`), so concurrent scans
/// of one file do not share a file offset (a `File::try_clone` does).
#[derive(Clone)]
pub(crate) struct PositionalFile {
    file: Arc<File>,
    len: u64,
    /// Counts the reads (`file_reads`).
    metrics: Arc<Metrics>,
}

impl parquet::file::reader::Length for PositionalFile {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for PositionalFile {
    type T = PositionalRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<PositionalRead> {
        Ok(PositionalRead {
            file: self.file.clone(),
            pos: start,
            metrics: self.metrics.clone(),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        Metrics::add(&self.metrics.file_reads, 1);
        // Read into uninitialised capacity: zeroing a column chunk first
        // cost as much as a tenth of a scan.
        let mut buf = Vec::with_capacity(length);
        while buf.len() < length {
            let at = start + buf.len() as u64;
            let n = rustix::io::pread(&*self.file, rustix::buffer::spare_capacity(&mut buf), at)
                .map_err(std::io::Error::from)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{length} bytes at offset {start} run past the end of the file"),
                )
                .into());
            }
        }
        // The capacity may exceed `length`, and the last read with it.
        buf.truncate(length);
        Ok(buf.into())
    }
}

/// A reader at its own position in a [`PositionalFile`].
pub(crate) struct PositionalRead {
    file: Arc<File>,
    pos: u64,
    metrics: Arc<Metrics>,
}

impl std::io::Read for PositionalRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        Metrics::add(&self.metrics.file_reads, 1);
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A [`PositionalFile`] read by whole column chunks: the first read inside
/// a chunk loads all of it with one `pread`, and the chunk's pages are then
/// served from memory. A scan that reads whole row groups pays one system
/// call per column chunk instead of one per page (a page is 8 KiB), and
/// holds at most one chunk per column. Reads outside the chunks go to the
/// file.
struct ChunkedFile {
    file: PositionalFile,
    /// `(start, end, column)` of each column chunk to read, by start.
    chunks: Vec<(u64, u64, usize)>,
    /// The loaded chunk of each column: its start and bytes.
    loaded: parking_lot::Mutex<Vec<Option<(u64, bytes::Bytes)>>>,
}

impl ChunkedFile {
    fn new(
        file: PositionalFile,
        metadata: &parquet::file::metadata::ParquetMetaData,
        groups: &[usize],
    ) -> Self {
        let mut chunks = Vec::new();
        let mut columns = 0;
        for &g in groups {
            for (c, chunk) in metadata.row_group(g).columns().iter().enumerate() {
                let (start, len) = chunk.byte_range();
                chunks.push((start, start + len, c));
                columns = columns.max(c + 1);
            }
        }
        chunks.sort_unstable();
        Self {
            file,
            chunks,
            loaded: parking_lot::Mutex::new(vec![None; columns]),
        }
    }

    /// The column chunk that holds the byte at `offset`:
    /// `(start, end, column)`.
    fn chunk_at(&self, offset: u64) -> Option<(u64, u64, usize)> {
        let i = self.chunks.partition_point(|&(s, _, _)| s <= offset);
        let chunk = *self.chunks.get(i.checked_sub(1)?)?;
        (offset < chunk.1).then_some(chunk)
    }

    /// Bytes `[start, end)` of the chunk `(chunk_start, _, column)`,
    /// loading the chunk when it is not the column's one in memory.
    fn chunk_slice(
        &self,
        (chunk_start, chunk_end, column): (u64, u64, usize),
        start: u64,
        end: u64,
    ) -> parquet::errors::Result<bytes::Bytes> {
        let offset = |at: u64| {
            usize::try_from(at - chunk_start)
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        };
        let mut loaded = self.loaded.lock();
        let slot = &mut loaded[column];
        let bytes = match slot {
            Some((s, bytes)) if *s == chunk_start => bytes,
            _ => {
                let bytes = self.file.get_bytes(chunk_start, offset(chunk_end)?)?;
                &mut slot.insert((chunk_start, bytes)).1
            }
        };
        Ok(bytes.slice(offset(start)?..offset(end)?))
    }
}

impl parquet::file::reader::Length for ChunkedFile {
    fn len(&self) -> u64 {
        self.file.len
    }
}

/// A reader of a [`ChunkedFile`]: from memory inside a column chunk, from
/// the file outside.
pub(crate) enum ChunkedRead {
    Memory(bytes::buf::Reader<bytes::Bytes>),
    File(PositionalRead),
}

impl std::io::Read for ChunkedRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ChunkedRead::Memory(r) => r.read(buf),
            ChunkedRead::File(r) => r.read(buf),
        }
    }
}

impl ChunkReader for ChunkedFile {
    type T = ChunkedRead;

    /// The Parquet reader reads a column chunk's pages (headers and data)
    /// through one reader from the chunk's start.
    fn get_read(&self, start: u64) -> parquet::errors::Result<ChunkedRead> {
        use bytes::Buf;
        match self.chunk_at(start) {
            Some(chunk) => Ok(ChunkedRead::Memory(
                self.chunk_slice(chunk, start, chunk.1)?.reader(),
            )),
            None => Ok(ChunkedRead::File(self.file.get_read(start)?)),
        }
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        let end = start + length as u64;
        match self.chunk_at(start) {
            Some(chunk) if end <= chunk.1 => self.chunk_slice(chunk, start, end),
            _ => self.file.get_bytes(start, length),
        }
    }
}

impl std::fmt::Debug for StoreFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreFile")
            .field("path", &self.path)
            .field("cells", &self.cells)
            .finish()
    }
}

/// Lower-case hex of bytes: how Tidebase's text formats (store-file
/// metadata, manifest, topic configs, catalog definitions) spell binary.
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 15)]));
    }
    s
}

/// The bytes of an even-length hex string, or `None`.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

fn bloom_key<'a>(kind: BloomKind, row: &'a [u8], qualifier: &[u8]) -> Option<Cow<'a, [u8]>> {
    match kind {
        BloomKind::None => None,
        BloomKind::Row => Some(Cow::Borrowed(row)),
        BloomKind::RowCol => {
            let mut k = Vec::with_capacity(row.len() + qualifier.len() + 4);
            k.extend_from_slice(&u32::try_from(row.len()).unwrap_or(u32::MAX).to_le_bytes());
            k.extend_from_slice(row);
            k.extend_from_slice(qualifier);
            Some(Cow::Owned(k))
        }
    }
}

/// Target size of a data page.
const PAGE_BYTES: usize = 8 * 1024;
/// Most rows in a data page (dictionary-encoded columns stay small in bytes).
const PAGE_ROWS: usize = 256;

/// Largest dictionary page of a column chunk.
const DICTIONARY_BYTES: usize = 4 * 1024;

/// Cells between two samples kept for the file's middle row.
const MID_SAMPLE: u64 = 1024;

/// Writes `batches` (in the store-file schema, sorted, one family) to
/// `path` through a temporary file, fsynced and renamed into place, and
/// opens the result; `None`, and no file, when there are no cells.
/// `cells_hint` (an upper bound of the cell count) sizes the bloom filter.
/// An error from `batches` removes the temporary file.
pub(crate) fn write(
    path: &Path,
    id: u64,
    family: &str,
    batches: &mut dyn Iterator<Item = Result<RecordBatch>>,
    cells_hint: usize,
    options: &FamilyOptions,
    metrics: &Arc<Metrics>,
) -> Result<Option<StoreFile>> {
    let tmp = path.with_extension("parquet.tmp");
    let written = write_tmp(&tmp, family, batches, cells_hint, options);
    match written {
        Ok(true) => {}
        Ok(false) => {
            let _ = std::fs::remove_file(&tmp);
            return Ok(None);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        crate::wal::sync_dir(dir)?;
    }
    StoreFile::open(path, id, metrics).map(Some)
}

/// Writes and fsyncs the temporary file; false when there were no cells.
fn write_tmp(
    tmp: &Path,
    family: &str,
    batches: &mut dyn Iterator<Item = Result<RecordBatch>>,
    cells_hint: usize,
    options: &FamilyOptions,
) -> Result<bool> {
    let pq = |source| StorageError::Parquet {
        file: tmp.to_path_buf(),
        source,
    };
    let mut batches = batches.filter(|b| !matches!(b, Ok(b) if b.num_rows() == 0));
    let Some(first) = batches.next().transpose()? else {
        return Ok(false);
    };
    let compression = match options.compression {
        Compression::None => PqCompression::UNCOMPRESSED,
        Compression::Snappy => PqCompression::SNAPPY,
        Compression::Lz4 => PqCompression::LZ4_RAW,
        Compression::Zstd => PqCompression::ZSTD(ZstdLevel::default()),
    };
    // A row group is the unit a scan skips by statistics: size it to about
    // `block_size` bytes of cells (HBase's block), by the average cell size
    // of the first batch.
    let bytes: usize = [0, 1, 5]
        .iter()
        .flat_map(|&c| first.column(c).as_binary_view().lengths())
        .map(|l| l as usize)
        .sum::<usize>()
        + first.num_rows() * (8 + 8 + 1);
    let avg = (bytes / first.num_rows().max(1)).max(1);
    let rows_per_group = (options.block_size / avg).clamp(128, 1 << 20);
    // Pages are small and indexed (the page index holds each page's row
    // range and first row), so a get decodes one page per column, not the
    // whole row group.
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(rows_per_group))
        .set_data_page_size_limit(PAGE_BYTES)
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_write_batch_size(PAGE_ROWS / 2)
        // Only the row column's statistics steer reads (row groups and pages
        // skipped by range); min/max of values and qualifiers would cost a
        // comparison per cell at every flush and compaction, for nothing.
        .set_statistics_enabled(EnabledStatistics::None)
        .set_column_statistics_enabled(ColumnPath::from("row"), EnabledStatistics::Page)
        // Row keys and values are mostly distinct: a dictionary would have
        // to be decoded whole (up to a MiB per row group) before a get could
        // read its one page. Qualifiers, timestamps, sequence numbers and
        // kinds repeat and keep theirs, as long as it stays small: past
        // DICTIONARY_BYTES (distinct timestamps of single puts) the column
        // falls back to plain pages, as a get decodes the dictionary whole.
        .set_column_dictionary_enabled(ColumnPath::from("row"), false)
        .set_column_dictionary_enabled(ColumnPath::from("value"), false)
        .set_dictionary_page_size_limit(DICTIONARY_BYTES)
        .build();
    let file = File::create(tmp).map_err(io(tmp))?;
    let mut writer = ArrowWriter::try_new(file, schema(), Some(props)).map_err(pq)?;
    let mut bloom = match options.bloom {
        BloomKind::None => None,
        _ => Some(Bloom::with_capacity(cells_hint.max(1))),
    };
    let (mut max_seq, mut deletes, mut cells) = (0u64, 0u64, 0u64);
    let mut first_row: Option<Vec<u8>> = None;
    let mut last_row = Vec::new();
    // Versions of the current column so far, and the most of any column.
    let (mut run, mut versions) = (0u64, 0u64);
    let mut last_qualifier = Vec::new();
    let mut samples: Vec<Vec<u8>> = Vec::new();
    for batch in std::iter::once(Ok(first)).chain(batches) {
        let batch = batch?;
        let row = batch.column(0).as_binary_view();
        let qualifier = batch.column(1).as_binary_view();
        let seq = batch.column(3).as_primitive::<UInt64Type>();
        let kind = batch.column(4).as_primitive::<UInt8Type>();
        max_seq = max_seq.max(arrow::compute::max(seq).unwrap_or(0));
        deletes += kind
            .values()
            .iter()
            .filter(|&&k| k != CellKind::Put as u8)
            .count() as u64;
        for i in 0..batch.num_rows() {
            let r = row.value(i);
            let q = qualifier.value(i);
            let (prev_row, prev_qualifier) = if i > 0 {
                (row.value(i - 1), qualifier.value(i - 1))
            } else {
                (last_row.as_slice(), last_qualifier.as_slice())
            };
            let same_row = cells > 0 && prev_row == r;
            run = if same_row && prev_qualifier == q {
                run + 1
            } else {
                1
            };
            versions = versions.max(run);
            if let Some(b) = bloom.as_mut() {
                // Row keys repeat for every column of a row: add each once.
                let repeat = options.bloom == BloomKind::Row && same_row;
                if !repeat {
                    if let Some(k) = bloom_key(options.bloom, r, qualifier.value(i)) {
                        b.insert(&k);
                    }
                }
            }
            if cells.is_multiple_of(MID_SAMPLE) {
                samples.push(r.to_vec());
            }
            cells += 1;
        }
        if first_row.is_none() {
            first_row = Some(row.value(0).to_vec());
        }
        last_row = row.value(batch.num_rows() - 1).to_vec();
        last_qualifier = qualifier.value(batch.num_rows() - 1).to_vec();
        writer.write(&batch).map_err(pq)?;
    }
    let first = first_row.unwrap_or_default();
    let mid = samples.get(samples.len() / 2).cloned().unwrap_or_default();
    let mut kv = vec![
        ("tidebase.format", "1".to_string()),
        ("tidebase.family", family.to_string()),
        ("tidebase.min_row", hex(&first)),
        ("tidebase.max_row", hex(&last_row)),
        ("tidebase.mid_row", hex(&mid)),
        ("tidebase.max_seq", max_seq.to_string()),
        ("tidebase.cells", cells.to_string()),
        ("tidebase.deletes", deletes.to_string()),
        ("tidebase.versions", versions.to_string()),
        ("tidebase.bloom_kind", options.bloom.name().to_string()),
    ];
    if let Some(b) = &bloom {
        kv.push(("tidebase.bloom", hex(&b.encode())));
    }
    for (k, v) in kv {
        writer.append_key_value_metadata(KeyValue::new(k.to_string(), v));
    }
    let file = writer.into_inner().map_err(pq)?;
    file.sync_all().map_err(io(tmp))?;
    Ok(true)
}

/// Builds one batch in the store-file schema, cell by cell.
#[derive(Default)]
pub(crate) struct CellBatchBuilder {
    row: BinaryViewBuilder,
    qualifier: BinaryViewBuilder,
    ts: Int64Builder,
    seq: UInt64Builder,
    kind: UInt8Builder,
    value: BinaryViewBuilder,
}

impl CellBatchBuilder {
    pub fn append(
        &mut self,
        row: &[u8],
        qualifier: &[u8],
        ts: i64,
        seq: u64,
        kind: CellKind,
        value: &[u8],
    ) {
        self.row.append_value(row);
        self.qualifier.append_value(qualifier);
        self.ts.append_value(ts);
        self.seq.append_value(seq);
        self.kind.append_value(kind as u8);
        self.value.append_value(value);
    }

    /// A builder with room for `cells` cells of up to 12-byte rows,
    /// qualifiers and values (longer ones go to growing data buffers).
    pub fn with_capacity(cells: usize) -> Self {
        Self {
            row: BinaryViewBuilder::with_capacity(cells),
            qualifier: BinaryViewBuilder::with_capacity(cells),
            ts: Int64Builder::with_capacity(cells),
            seq: UInt64Builder::with_capacity(cells),
            kind: UInt8Builder::with_capacity(cells),
            value: BinaryViewBuilder::with_capacity(cells),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.row.is_empty()
    }

    pub fn len(&self) -> usize {
        self.row.len()
    }

    pub fn finish(mut self) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(self.row.finish()),
                Arc::new(self.qualifier.finish()),
                Arc::new(self.ts.finish()),
                Arc::new(self.seq.finish()),
                Arc::new(self.kind.finish()),
                Arc::new(self.value.finish()),
            ],
        )?)
    }
}

impl StoreFile {
    /// Opens a store file, reading only its footer.
    pub(crate) fn open(path: &Path, id: u64, metrics: &Arc<Metrics>) -> Result<StoreFile> {
        let file = File::open(path).map_err(io(path))?;
        let size = file.metadata().map_err(io(path))?.len();
        let file = PositionalFile {
            file: Arc::new(file),
            len: size,
            metrics: metrics.clone(),
        };
        let metadata = guarded(path, || {
            // Row keys, qualifiers and values are read as views into the
            // decompressed pages, not copied out of them.
            let options = ArrowReaderOptions::new()
                .with_page_index_policy(PageIndexPolicy::Optional)
                .with_schema(schema());
            ArrowReaderMetadata::load(&file, options).map_err(|source| StorageError::Parquet {
                file: path.to_path_buf(),
                source,
            })
        })?;
        let corrupted = |reason: &str| StorageError::Corrupted {
            file: path.to_path_buf(),
            offset: 0,
            reason: reason.to_string(),
        };
        if metadata.schema().fields() != schema().fields() {
            return Err(corrupted("unexpected store-file schema"));
        }
        // The Parquet reader trusts the footer's offsets (and asserts on some
        // of them), so check every column chunk lies inside the file.
        for rg in metadata.metadata().row_groups() {
            for c in rg.columns() {
                let start = c.dictionary_page_offset().unwrap_or(c.data_page_offset());
                let len = c.compressed_size();
                let inside = start >= 0
                    && len >= 0
                    && c.data_page_offset() >= 0
                    && u64::try_from(start.saturating_add(len)).is_ok_and(|end| end <= size);
                if !inside {
                    return Err(corrupted("column chunk outside the file"));
                }
            }
        }
        let kv: std::collections::HashMap<String, String> = metadata
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .map(|kvs| {
                kvs.iter()
                    .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
                    .collect()
            })
            .unwrap_or_default();
        let get = |k: &str| kv.get(k).ok_or_else(|| corrupted(&format!("missing {k}")));
        if get("tidebase.format")? != "1" {
            return Err(corrupted("unknown store-file format version"));
        }
        let row = |k: &str| -> Result<Vec<u8>> {
            unhex(get(k)?).ok_or_else(|| corrupted(&format!("bad {k}")))
        };
        let bloom_kind = BloomKind::parse(get("tidebase.bloom_kind")?)
            .ok_or_else(|| corrupted("bad bloom kind"))?;
        let bloom = match kv.get("tidebase.bloom") {
            Some(h) => Some(
                unhex(h)
                    .and_then(|b| Bloom::decode(&b))
                    .ok_or_else(|| corrupted("bad bloom filter"))?,
            ),
            None => None,
        };
        let group_rows = metadata
            .metadata()
            .row_groups()
            .iter()
            .map(|g| match g.column(0).statistics() {
                Some(Statistics::ByteArray(s)) => {
                    Some((s.min_bytes_opt()?.to_vec(), s.max_bytes_opt()?.to_vec()))
                }
                _ => None,
            })
            .collect();
        Ok(StoreFile {
            id,
            path: path.to_path_buf(),
            family: get("tidebase.family")?.clone(),
            min_row: row("tidebase.min_row")?,
            max_row: row("tidebase.max_row")?,
            mid_row: row("tidebase.mid_row")?,
            max_seq: get("tidebase.max_seq")?
                .parse()
                .map_err(|_| corrupted("bad max_seq"))?,
            cells: get("tidebase.cells")?
                .parse()
                .map_err(|_| corrupted("bad cell count"))?,
            deletes: get("tidebase.deletes")?
                .parse()
                .map_err(|_| corrupted("bad delete count"))?,
            versions: kv
                .get("tidebase.versions")
                .map(|v| v.parse().map_err(|_| corrupted("bad version count")))
                .transpose()?,
            size,
            bloom,
            bloom_kind,
            file,
            metadata,
            group_rows,
            metrics: metrics.clone(),
        })
    }

    /// Whether the file may hold cells of `row` (and `qualifier`, for a
    /// row+column filter). Counts bloom negatives.
    pub fn may_contain_row(&self, row: &[u8], qualifier: Option<&[u8]>) -> bool {
        if row < self.min_row.as_slice() || row > self.max_row.as_slice() {
            return false;
        }
        let key = match (self.bloom_kind, qualifier) {
            (BloomKind::RowCol, None) => None,
            (kind, q) => bloom_key(kind, row, q.unwrap_or_default()),
        };
        match (&self.bloom, key) {
            (Some(b), Some(k)) if !b.may_contain(&k) => {
                Metrics::add(&self.metrics.bloom_negatives, 1);
                false
            }
            _ => true,
        }
    }

    /// Whether the file's rows overlap `[start, end)` (`end` empty = open).
    pub fn overlaps(&self, start: &[u8], end: &[u8]) -> bool {
        self.cells > 0
            && self.max_row.as_slice() >= start
            && (end.is_empty() || self.min_row.as_slice() < end)
    }

    /// A reader over the row groups that may hold rows of `[start, end)`
    /// (by their statistics), or `None` when no row group can.
    fn reader(
        &self,
        start: &[u8],
        end: &[u8],
        batch_size: usize,
    ) -> Result<Option<ParquetRecordBatchReader>> {
        let groups: Vec<usize> = self
            .metadata
            .metadata()
            .row_groups()
            .iter()
            .enumerate()
            .filter(|(_, rg)| match rg.column(0).statistics() {
                Some(Statistics::ByteArray(s)) => {
                    let below = s.max_bytes_opt().is_some_and(|max| max < start);
                    let above = !end.is_empty() && s.min_bytes_opt().is_some_and(|min| min >= end);
                    !below && !above
                }
                _ => true,
            })
            .map(|(i, _)| i)
            .collect();
        if groups.is_empty() {
            return Ok(None);
        }
        Metrics::add(&self.metrics.data_reads, 1);
        let selection = self.page_selection(&groups, start, end);
        // A read of a few pages (a get, a narrow range) reads just them; a
        // read of most of its row groups reads whole column chunks.
        let most = selection
            .as_ref()
            .is_none_or(|s| s.row_count() >= s.skipped_row_count());
        let built = if most {
            let file = ChunkedFile::new(self.file.clone(), self.metadata.metadata(), &groups);
            self.build_reader(file, groups, batch_size, selection)
        } else {
            self.build_reader(self.file.clone(), groups, batch_size, selection)
        };
        built.map(Some).map_err(|source| StorageError::Parquet {
            file: self.path.clone(),
            source,
        })
    }

    fn build_reader<T: ChunkReader + 'static>(
        &self,
        file: T,
        groups: Vec<usize>,
        batch_size: usize,
        selection: Option<RowSelection>,
    ) -> parquet::errors::Result<ParquetRecordBatchReader> {
        let mut builder =
            ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.metadata.clone())
                .with_row_groups(groups)
                .with_batch_size(batch_size.max(1));
        if let Some(selection) = selection {
            builder = builder.with_row_selection(selection);
        }
        builder.build()
    }

    /// The rows of `groups` whose pages of the row column may hold rows of
    /// `[start, end)`, by the page index; `None` when every row is needed
    /// or the file has no usable page index.
    fn page_selection(&self, groups: &[usize], start: &[u8], end: &[u8]) -> Option<RowSelection> {
        let md = self.metadata.metadata();
        let (columns, offsets) = (md.column_index()?, md.offset_index()?);
        let mut selectors = Vec::new();
        let mut skips = false;
        for &g in groups {
            let rows = usize::try_from(md.row_group(g).num_rows()).ok()?;
            let pages = offsets.get(g)?.first()?.page_locations();
            let ColumnIndexMetaData::BYTE_ARRAY(index) = columns.get(g)?.first()? else {
                return None;
            };
            if usize::try_from(index.num_pages()).ok()? != pages.len() {
                return None;
            }
            for (p, page) in pages.iter().enumerate() {
                let first = usize::try_from(page.first_row_index).ok()?;
                let next = match pages.get(p + 1) {
                    Some(n) => usize::try_from(n.first_row_index).ok()?,
                    None => rows,
                };
                // A damaged index must not steer the decoder.
                if (p == 0 && first != 0) || next <= first || next > rows {
                    return None;
                }
                let wanted = match (index.min_value(p), index.max_value(p)) {
                    (Some(min), Some(max)) => max >= start && (end.is_empty() || min < end),
                    _ => true,
                };
                skips |= !wanted;
                selectors.push(if wanted {
                    RowSelector::select(next - first)
                } else {
                    RowSelector::skip(next - first)
                });
            }
        }
        skips.then(|| RowSelection::from(selectors))
    }

    /// The file's record batches (in the store-file schema) that may hold
    /// rows of `[start, end)`; rows outside the range are not removed.
    pub fn batches(&self, start: &[u8], end: &[u8], batch_size: usize) -> Result<Batches> {
        let reader = guarded(&self.path, || self.reader(start, end, batch_size))?;
        Ok(Batches {
            reader,
            path: self.path.clone(),
        })
    }

    /// The cells of one row, in order: decoded column by column (see
    /// [`crate::row_read`]), or, in a file without a page index, read as
    /// the row's range.
    pub fn read_row(&self, row: &[u8]) -> Result<Vec<Cell>> {
        if let Some(cells) = guarded(&self.path, || self.cells_of_row(row))? {
            return Ok(cells);
        }
        let mut end = row.to_vec();
        end.push(0);
        self.read_range(row, &end)
    }

    /// The cells whose rows are in `[start, end)`, in order. Row groups
    /// outside the range are skipped by their statistics.
    pub fn read_range(&self, start: &[u8], end: &[u8]) -> Result<Vec<Cell>> {
        let mut out = Vec::new();
        // Batches of a few pages: a get selects one page per column (at
        // most PAGE_ROWS rows). The engine bench showed no difference in get
        // throughput from 8,192-row batches.
        for batch in self.batches(start, end, 4 * PAGE_ROWS)? {
            let batch = batch?;
            let row = batch.column(0).as_binary_view();
            let from = (0..batch.num_rows()).find(|&i| row.value(i) >= start);
            let to = (0..batch.num_rows())
                .find(|&i| !end.is_empty() && row.value(i) >= end)
                .unwrap_or(batch.num_rows());
            let Some(from) = from.filter(|&f| f < to) else {
                if to < batch.num_rows() {
                    break;
                }
                continue;
            };
            out.extend(cells_of(&batch.slice(from, to - from), &self.family));
            if to < batch.num_rows() {
                break;
            }
        }
        Ok(out)
    }
}

/// The cells of a batch in the store-file schema whose kinds were checked.
pub(crate) fn cells_of(batch: &RecordBatch, family: &str) -> Vec<Cell> {
    let row = batch.column(0).as_binary_view();
    let qualifier = batch.column(1).as_binary_view();
    let ts = batch.column(2).as_primitive::<Int64Type>();
    let seq = batch.column(3).as_primitive::<UInt64Type>();
    let kind = batch.column(4).as_primitive::<UInt8Type>();
    let value = batch.column(5).as_binary_view();
    (0..batch.num_rows())
        .map(|i| Cell {
            key: CellKey {
                row: row.value(i).to_vec(),
                family: family.to_string(),
                qualifier: qualifier.value(i).to_vec(),
                ts: ts.value(i),
                seq: seq.value(i),
                kind: CellKind::from_u8(kind.value(i)).unwrap_or(CellKind::Put),
            },
            value: value.value(i).to_vec(),
        })
        .collect()
}

/// Runs Parquet decoding, turning a panic inside the decoder (it asserts on
/// some malformed input) into a corruption error naming the file.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(StorageError::Corrupted {
            file: path.to_path_buf(),
            offset: 0,
            reason: "the Parquet decoder rejected the file".into(),
        })
    })
}

/// Refuses a batch whose `kind` column holds an unknown cell kind.
fn check_kinds(path: &Path, batch: &RecordBatch) -> Result<()> {
    let kinds = batch.column(4).as_primitive::<UInt8Type>();
    match kinds
        .values()
        .iter()
        .find(|&&k| CellKind::from_u8(k).is_none())
    {
        None => Ok(()),
        Some(k) => Err(StorageError::Corrupted {
            file: path.to_path_buf(),
            offset: 0,
            reason: format!("unknown cell kind {k}"),
        }),
    }
}

/// Record batches of one store file; stops after the first error.
pub struct Batches {
    reader: Option<ParquetRecordBatchReader>,
    path: PathBuf,
}

impl Iterator for Batches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let reader = self.reader.as_mut()?;
        let path = &self.path;
        let next = guarded(path, || {
            let batch = reader
                .next()
                .transpose()
                .map_err(|e| StorageError::Parquet {
                    file: path.clone(),
                    source: e.into(),
                })?;
            if let Some(b) = &batch {
                check_kinds(path, b)?;
            }
            Ok(batch)
        })
        .transpose();
        if !matches!(next, Some(Ok(_))) {
            self.reader = None;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::Mutation;
    use proptest::prelude::*;

    fn batch_of(cells: &[Cell]) -> Result<RecordBatch> {
        let mut b = CellBatchBuilder::default();
        for c in cells {
            let k = &c.key;
            b.append(&k.row, &k.qualifier, k.ts, k.seq, k.kind, &c.value);
        }
        b.finish()
    }

    fn write_cells(path: &Path, cells: &[Cell], options: &FamilyOptions, m: &Arc<Metrics>) {
        let batch = batch_of(cells).unwrap();
        write(
            path,
            1,
            "f",
            &mut std::iter::once(Ok(batch)),
            cells.len(),
            options,
            m,
        )
        .unwrap();
    }

    fn sample(dir: &Path) -> (PathBuf, Vec<u8>) {
        let cells: Vec<Cell> = (0..300u32)
            .map(|i| {
                let row = format!("row{i:04}").into_bytes();
                Mutation::put(&row, "f", b"q", i64::from(i), &[b'x'; 40]).into_cell(1)
            })
            .collect();
        let path = dir.join("sample.parquet");
        let options = FamilyOptions {
            block_size: 1 << 16,
            ..Default::default()
        };
        write_cells(&path, &cells, &options, &Arc::new(Metrics::default()));
        let bytes = std::fs::read(&path).unwrap();
        (path, bytes)
    }

    /// Opens and reads the damaged file; any outcome but a panic is fine.
    fn open_and_read(path: &Path, bytes: &[u8]) -> Result<usize> {
        std::fs::write(path, bytes).unwrap();
        let f = StoreFile::open(path, 1, &Arc::new(Metrics::default()))?;
        // Row reads decode column by column: they must not panic either.
        for row in [&b"row0001"[..], b"row0150", b"row0299"] {
            let _ = f.read_row(row);
        }
        let n = f.read_range(b"", b"")?.len();
        let _ = f.may_contain_row(b"row0001", None);
        Ok(n)
    }

    #[test]
    fn files_whose_arrow_schema_says_binary_read_the_same() {
        // A file as written before the binary columns were views: the same
        // Parquet columns and metadata, `Binary` in the embedded schema.
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = sample(dir.path());
        let m = Arc::new(Metrics::default());
        let current = StoreFile::open(&path, 1, &m).unwrap();
        let expected = current.read_range(b"", b"").unwrap();
        let kv = current
            .metadata
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .map(|kvs| {
                kvs.iter()
                    .filter(|kv| kv.key != "ARROW:schema")
                    .cloned()
                    .collect::<Vec<_>>()
            });
        let binary = Arc::new(Schema::new(
            schema()
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::BinaryView => f.as_ref().clone().with_data_type(DataType::Binary),
                    _ => f.as_ref().clone(),
                })
                .collect::<Vec<_>>(),
        ));
        let old = dir.path().join("old.parquet");
        let props = WriterProperties::builder()
            .set_key_value_metadata(kv)
            .build();
        let mut w =
            ArrowWriter::try_new(File::create(&old).unwrap(), binary.clone(), Some(props)).unwrap();
        for b in current.batches(b"", b"", 100).unwrap() {
            let b = b.unwrap();
            let columns = b
                .columns()
                .iter()
                .zip(binary.fields())
                .map(|(c, f)| arrow::compute::cast(c, f.data_type()).unwrap())
                .collect();
            w.write(&RecordBatch::try_new(binary.clone(), columns).unwrap())
                .unwrap();
        }
        w.close().unwrap();
        let embedded =
            ArrowReaderMetadata::load(&File::open(&old).unwrap(), ArrowReaderOptions::new())
                .unwrap();
        assert_eq!(embedded.schema().field(0).data_type(), &DataType::Binary);
        let f = StoreFile::open(&old, 2, &m).unwrap();
        assert_eq!(f.read_range(b"", b"").unwrap(), expected);
        assert_eq!(expected.len(), 300);
    }

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&all)), Some(all));
        assert_eq!(unhex("ABff"), Some(vec![0xab, 0xff]));
        for bad in ["abc", "0g", "+f", "é0"] {
            assert_eq!(unhex(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_intact_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = sample(dir.path());
        assert_eq!(open_and_read(&path, &bytes).unwrap(), 300);
    }

    #[test]
    fn a_row_read_decodes_only_its_pages() {
        let dir = tempfile::tempdir().unwrap();
        let row = |i: u32| format!("row{i:06}").into_bytes();
        let mut cells = Vec::new();
        for i in 0..6000u32 {
            for q in [b"a", b"b"] {
                let value = format!("{i}-{}", q[0] as char).into_bytes();
                cells.push(Mutation::put(&row(i), "f", q, 1, &value).into_cell(1));
            }
        }
        let path = dir.path().join("paged.parquet");
        let metrics = Arc::new(Metrics::default());
        write_cells(&path, &cells, &FamilyOptions::default(), &metrics);
        let f = StoreFile::open(&path, 1, &metrics).unwrap();
        assert_eq!(f.metadata.metadata().num_row_groups(), 1);
        for i in (0..6000u32).step_by(37) {
            let mut end = row(i);
            end.push(0);
            let got = f.read_range(&row(i), &end).unwrap();
            let values: Vec<Vec<u8>> = got.iter().map(|c| c.value.clone()).collect();
            assert_eq!(
                values,
                vec![format!("{i}-a").into_bytes(), format!("{i}-b").into_bytes()]
            );
            let selected = f.page_selection(&[0], &row(i), &end).unwrap().row_count();
            assert!(
                selected < 12_000 / 20,
                "row {i}: {selected} of 12000 rows decoded"
            );
        }
        assert_eq!(f.read_range(&row(1000), &row(2000)).unwrap().len(), 2000);
        assert!(f.page_selection(&[0], b"", b"").is_none());
    }

    #[test]
    fn a_row_read_column_by_column_finds_what_a_range_read_finds() {
        let dir = tempfile::tempdir().unwrap();
        let row = |i: u32| format!("row{:06}", i * 2).into_bytes();
        // Rows of one to three cells, puts and both kinds of delete, and
        // row 500 with 1,500 versions: it spans pages and row groups.
        let mut cells = Vec::new();
        for i in 0..3000u32 {
            let versions = if i == 500 { 1500 } else { 1 + i % 3 };
            for v in 0..versions {
                let ts = i64::from(versions - v);
                let m = match (i + v) % 7 {
                    0 => Mutation::delete(&row(i), "f", b"a", ts),
                    1 if v == 0 => Mutation::delete_family(&row(i), "f", ts),
                    _ => Mutation::put(&row(i), "f", b"a", ts, format!("{i}/{v}").as_bytes()),
                };
                cells.push(m.into_cell(u64::from(i * 7 + v)));
            }
        }
        cells.sort_by(|a, b| a.key.cmp(&b.key));
        for compression in [Compression::None, Compression::Zstd] {
            let path = dir.path().join(format!("{}.parquet", compression.name()));
            let metrics = Arc::new(Metrics::default());
            let options = FamilyOptions {
                block_size: 16 << 10,
                compression,
                ..FamilyOptions::default()
            };
            write_cells(&path, &cells, &options, &metrics);
            let f = StoreFile::open(&path, 1, &metrics).unwrap();
            assert!(f.metadata.metadata().num_row_groups() > 3);
            for i in 0..3000u32 {
                let mut end = row(i);
                end.push(0);
                let expected = f.read_range(&row(i), &end).unwrap();
                assert!(!expected.is_empty());
                assert_eq!(f.read_row(&row(i)).unwrap(), expected, "row {i}");
                // Between rows, before the first and after the last.
                let mut missing = row(i);
                missing.push(b'x');
                assert_eq!(f.read_row(&missing).unwrap(), vec![], "after row {i}");
            }
            assert_eq!(f.read_row(b"a").unwrap(), vec![]);
            assert_eq!(f.read_row(b"z").unwrap(), vec![]);
            assert_eq!(f.read_row(&row(500)).unwrap().len(), 1500);
            // One row of one cell: the row column's page, then the other
            // columns' pages (the small ones lie together).
            let before = metrics
                .file_reads
                .load(std::sync::atomic::Ordering::Relaxed);
            f.read_row(&row(1234)).unwrap();
            let reads = metrics
                .file_reads
                .load(std::sync::atomic::Ordering::Relaxed)
                - before;
            assert!(reads <= 3, "{reads} reads for one row");
        }
    }

    #[test]
    fn a_full_scan_reads_each_column_chunk_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut cells = Vec::new();
        for i in 0..20_000u32 {
            let row = format!("row{i:06}").into_bytes();
            let value = format!("value {i}").into_bytes();
            cells.push(Mutation::put(&row, "f", b"q", 1, &value).into_cell(u64::from(i)));
        }
        let path = dir.path().join("scan.parquet");
        let metrics = Arc::new(Metrics::default());
        let options = FamilyOptions {
            block_size: 64 << 10,
            ..FamilyOptions::default()
        };
        write_cells(&path, &cells, &options, &metrics);
        let f = StoreFile::open(&path, 1, &metrics).unwrap();
        let md = f.metadata.metadata();
        assert!(md.num_row_groups() > 1);
        let pages = md
            .offset_index()
            .unwrap()
            .iter()
            .flatten()
            .map(|c| c.page_locations().len())
            .sum::<usize>();
        let chunks = md.num_row_groups() * md.row_group(0).num_columns();
        assert!(pages > 2 * chunks, "{pages} pages in {chunks} chunks");
        // The cells of `[start, end)` and the file reads it took.
        let read = |start: &[u8], end: &[u8]| {
            let before = metrics
                .file_reads
                .load(std::sync::atomic::Ordering::Relaxed);
            let got = f.read_range(start, end).unwrap();
            let after = metrics
                .file_reads
                .load(std::sync::atomic::Ordering::Relaxed);
            (got, after - before)
        };
        let (got, reads) = read(b"", b"");
        assert_eq!(got, cells);
        assert_eq!(reads, chunks as u64);
        // Half the file (a region scanned in two halves): at most its
        // chunks, each once.
        let (got, reads) = read(b"row010000", b"");
        assert_eq!(got, cells[10_000..]);
        assert!(
            reads <= chunks as u64 / 2 + 6,
            "{reads} reads of {chunks} chunks"
        );
        // One row: a page or two per column, not whole chunks.
        let (got, reads) = read(b"row012345", b"row012346");
        assert_eq!(got, cells[12_345..12_346]);
        assert!(reads <= 12, "{reads} reads for one row");
    }

    #[test]
    fn every_truncation_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = sample(dir.path());
        for cut in (0..bytes.len()).step_by(97) {
            let err = open_and_read(&path, &bytes[..cut]).unwrap_err();
            assert!(err.to_string().contains("sample.parquet"), "{err}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn damaged_files_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (path, mut bytes) = sample(dir.path());
            for (at, b) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= b | 1;
            }
            let _ = open_and_read(&path, &bytes);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("random.parquet");
            let mut bytes = bytes;
            // Half the cases end in the Parquet magic so the footer is parsed.
            if bytes.len() % 2 == 0 {
                bytes.extend_from_slice(&[16, 0, 0, 0]);
                bytes.extend_from_slice(b"PAR1");
            }
            prop_assert!(open_and_read(&path, &bytes).is_err());
        }
    }
}
