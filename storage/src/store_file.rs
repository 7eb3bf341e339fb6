//! Store files: immutable Parquet files holding one family's cells in key
//! order, with a row-key bloom filter and the row range in the footer.
//!
//! Columns: `row` (binary), `qualifier` (binary), `ts` (int64), `seq`
//! (uint64), `kind` (uint8), `value` (binary). Key-value metadata:
//! `tidebase.format` = `1`, `tidebase.family`, `tidebase.min_row`,
//! `tidebase.max_row`, `tidebase.mid_row` (hex), `tidebase.max_seq`,
//! `tidebase.cells`, `tidebase.bloom` (hex of [`Bloom::encode`], absent when
//! the family has no bloom filter).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{
    AsArray, BinaryBuilder, Int64Builder, RecordBatch, UInt64Builder, UInt8Builder,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt64Type, UInt8Type};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as PqCompression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::statistics::Statistics;

use crate::bloom::Bloom;
use crate::cell::{Cell, CellKey, CellKind};
use crate::error::{io, Result, StorageError};
use crate::options::{BloomKind, Compression, FamilyOptions};

/// Reads that touched a data page, and gets answered by a bloom filter
/// alone, across all store files (for tests and metrics).
pub static DATA_READS: AtomicU64 = AtomicU64::new(0);
pub static BLOOM_NEGATIVES: AtomicU64 = AtomicU64::new(0);

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("row", DataType::Binary, false),
        Field::new("qualifier", DataType::Binary, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("kind", DataType::UInt8, false),
        Field::new("value", DataType::Binary, false),
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
    pub size: u64,
    bloom: Option<Bloom>,
    bloom_kind: BloomKind,
    file: File,
    metadata: ArrowReaderMetadata,
}

impl std::fmt::Debug for StoreFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreFile")
            .field("path", &self.path)
            .field("cells", &self.cells)
            .finish()
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn bloom_key(kind: BloomKind, row: &[u8], qualifier: &[u8]) -> Option<Vec<u8>> {
    match kind {
        BloomKind::None => None,
        BloomKind::Row => Some(row.to_vec()),
        BloomKind::RowCol => {
            let mut k = Vec::with_capacity(row.len() + qualifier.len() + 4);
            k.extend_from_slice(&u32::try_from(row.len()).unwrap_or(u32::MAX).to_le_bytes());
            k.extend_from_slice(row);
            k.extend_from_slice(qualifier);
            Some(k)
        }
    }
}

/// Writes `cells` (sorted, one family) to `path` through a temporary file,
/// fsynced and renamed into place, and opens the result.
pub fn write(
    path: &Path,
    id: u64,
    family: &str,
    cells: &[Cell],
    options: &FamilyOptions,
) -> Result<StoreFile> {
    let tmp = path.with_extension("parquet.tmp");
    let pq = |source| StorageError::Parquet {
        file: tmp.clone(),
        source,
    };
    let compression = match options.compression {
        Compression::None => PqCompression::UNCOMPRESSED,
        Compression::Snappy => PqCompression::SNAPPY,
        Compression::Lz4 => PqCompression::LZ4_RAW,
        Compression::Zstd => PqCompression::ZSTD(ZstdLevel::default()),
    };
    let rows_per_group = (options.block_size / 64).clamp(1024, 1 << 20);
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(rows_per_group))
        .build();
    let file = File::create(&tmp).map_err(io(&tmp))?;
    let mut writer = ArrowWriter::try_new(file, schema(), Some(props)).map_err(pq)?;

    let mut bloom = match options.bloom {
        BloomKind::None => None,
        _ => Some(Bloom::with_capacity(cells.len())),
    };
    let mut max_seq = 0;
    for chunk in cells.chunks(8192) {
        let mut row = BinaryBuilder::new();
        let mut qualifier = BinaryBuilder::new();
        let mut ts = Int64Builder::new();
        let mut seq = UInt64Builder::new();
        let mut kind = UInt8Builder::new();
        let mut value = BinaryBuilder::new();
        for c in chunk {
            row.append_value(&c.key.row);
            qualifier.append_value(&c.key.qualifier);
            ts.append_value(c.key.ts);
            seq.append_value(c.key.seq);
            kind.append_value(c.key.kind as u8);
            value.append_value(&c.value);
            max_seq = max_seq.max(c.key.seq);
            if let (Some(b), Some(k)) = (
                bloom.as_mut(),
                bloom_key(options.bloom, &c.key.row, &c.key.qualifier),
            ) {
                b.insert(&k);
            }
        }
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(row.finish()),
                Arc::new(qualifier.finish()),
                Arc::new(ts.finish()),
                Arc::new(seq.finish()),
                Arc::new(kind.finish()),
                Arc::new(value.finish()),
            ],
        )?;
        writer.write(&batch).map_err(pq)?;
    }
    let first = cells.first().map(|c| c.key.row.clone()).unwrap_or_default();
    let last = cells.last().map(|c| c.key.row.clone()).unwrap_or_default();
    let mid = cells
        .get(cells.len() / 2)
        .map(|c| c.key.row.clone())
        .unwrap_or_default();
    let mut kv = vec![
        ("tidebase.format", "1".to_string()),
        ("tidebase.family", family.to_string()),
        ("tidebase.min_row", hex(&first)),
        ("tidebase.max_row", hex(&last)),
        ("tidebase.mid_row", hex(&mid)),
        ("tidebase.max_seq", max_seq.to_string()),
        ("tidebase.cells", cells.len().to_string()),
        ("tidebase.bloom_kind", options.bloom.name().to_string()),
    ];
    if let Some(b) = &bloom {
        kv.push(("tidebase.bloom", hex(&b.encode())));
    }
    for (k, v) in kv {
        writer.append_key_value_metadata(KeyValue::new(k.to_string(), v));
    }
    let file = writer.into_inner().map_err(pq)?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        crate::wal::sync_dir(dir)?;
    }
    StoreFile::open(path, id)
}

impl StoreFile {
    /// Opens a store file, reading only its footer.
    pub fn open(path: &Path, id: u64) -> Result<StoreFile> {
        let file = File::open(path).map_err(io(path))?;
        let size = file.metadata().map_err(io(path))?.len();
        let metadata =
            ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(|source| {
                StorageError::Parquet {
                    file: path.to_path_buf(),
                    source,
                }
            })?;
        let corrupted = |reason: &str| StorageError::Corrupted {
            file: path.to_path_buf(),
            offset: 0,
            reason: reason.to_string(),
        };
        if metadata.schema().fields() != schema().fields() {
            return Err(corrupted("unexpected store-file schema"));
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
            size,
            bloom,
            bloom_kind,
            file,
            metadata,
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
                BLOOM_NEGATIVES.fetch_add(1, Ordering::Relaxed);
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

    /// The cells whose rows are in `[start, end)`, in order. Row groups
    /// outside the range are skipped by their statistics.
    pub fn read_range(&self, start: &[u8], end: &[u8]) -> Result<Vec<Cell>> {
        let pq = |source| StorageError::Parquet {
            file: self.path.clone(),
            source,
        };
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
            return Ok(Vec::new());
        }
        DATA_READS.fetch_add(1, Ordering::Relaxed);
        let file = self.file.try_clone().map_err(io(&self.path))?;
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.metadata.clone())
                .with_row_groups(groups)
                .with_batch_size(8192)
                .build()
                .map_err(pq)?;
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch?;
            let row = batch.column(0).as_binary::<i32>();
            let qualifier = batch.column(1).as_binary::<i32>();
            let ts = batch.column(2).as_primitive::<Int64Type>();
            let seq = batch.column(3).as_primitive::<UInt64Type>();
            let kind = batch.column(4).as_primitive::<UInt8Type>();
            let value = batch.column(5).as_binary::<i32>();
            for i in 0..batch.num_rows() {
                let r = row.value(i);
                if r < start || (!end.is_empty() && r >= end) {
                    continue;
                }
                let k =
                    CellKind::from_u8(kind.value(i)).ok_or_else(|| StorageError::Corrupted {
                        file: self.path.clone(),
                        offset: 0,
                        reason: format!("unknown cell kind {}", kind.value(i)),
                    })?;
                out.push(Cell {
                    key: CellKey {
                        row: r.to_vec(),
                        family: self.family.clone(),
                        qualifier: qualifier.value(i).to_vec(),
                        ts: ts.value(i),
                        seq: seq.value(i),
                        kind: k,
                    },
                    value: value.value(i).to_vec(),
                });
            }
        }
        Ok(out)
    }
}
