//! Reads of one row from a store file, column by column.
//!
//! A get wants the cells of one row: a few values of each of the six
//! columns. The Arrow reader would decode a whole page of every column into
//! arrays and then look for the row in them. This reads the pages of the row
//! column that may hold the row (by the page index), finds the row's cells
//! there, and decodes only those cells of the other five columns: the pages
//! before them are skipped unread, the values before them in their page are
//! skipped undecoded. The bytes each step needs are fetched with as few
//! reads as their places in the file allow (the small dictionary-encoded
//! columns lie next to each other, so one read usually covers them all).

use bytes::Bytes;
use parquet::column::reader::{get_column_reader, ColumnReader, ColumnReaderImpl};
use parquet::data_type::{ByteArray, DataType as PqDataType};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, RowGroupMetaData};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::page_index::offset_index::OffsetIndexMetaData;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;
use std::sync::Arc;

use crate::cell::{Cell, CellKey, CellKind};
use crate::error::{Result, StorageError};
use crate::metrics::Metrics;
use crate::store_file::{ChunkedRead, PositionalFile, StoreFile};

/// Byte ranges closer than this are fetched with one read: reading a few
/// KiB more costs less than another system call.
const GAP: u64 = 32 * 1024;

/// Store-file columns, in order (see [`crate::store_file`]).
const ROW: usize = 0;
const QUALIFIER: usize = 1;
const TS: usize = 2;
const SEQ: usize = 3;
const KIND: usize = 4;
const VALUE: usize = 5;

impl StoreFile {
    /// The cells of `row`, in order; `None` when the file has no usable
    /// page index (the caller reads the row's range instead).
    pub(crate) fn cells_of_row(&self, row: &[u8]) -> Result<Option<Vec<Cell>>> {
        let md = self.metadata.metadata();
        let (Some(columns), Some(offsets)) = (md.column_index(), md.offset_index()) else {
            return Ok(None);
        };
        let parquet = |source: ParquetError| StorageError::Parquet {
            file: self.path.clone(),
            source,
        };
        let mut out = Vec::new();
        for g in self.groups_of(row) {
            let group = md.row_group(g);
            let (Some(index), Some(offsets)) = (columns.get(g), offsets.get(g)) else {
                return Ok(None);
            };
            let Some(span) = row_pages(group, index.first(), offsets.first(), row) else {
                return Ok(None);
            };
            let Some((first, end)) = span else {
                continue;
            };
            Metrics::add(&self.metrics.data_reads, 1);
            let read = GroupRead {
                md,
                group: g,
                offsets,
                file: &self.file,
            };
            // The row column's pages that may hold the row, then the row's
            // cells in them.
            let fetched = read.fetch(&[ROW], first, end).map_err(parquet)?;
            let rows = read
                .bytes(&fetched, ROW, first, end - first)
                .map_err(parquet)?;
            let from = rows.partition_point(|r| r.data() < row);
            let to = rows.partition_point(|r| r.data() <= row);
            if from == to {
                continue;
            }
            // Only those cells of the other columns.
            let (at, n) = (first + from, to - from);
            let fetched = read
                .fetch(&[QUALIFIER, TS, SEQ, KIND, VALUE], at, at + n)
                .map_err(parquet)?;
            let qualifier = read.bytes(&fetched, QUALIFIER, at, n).map_err(parquet)?;
            let ts = read.ints(&fetched, TS, at, n).map_err(parquet)?;
            let seq = read.ints(&fetched, SEQ, at, n).map_err(parquet)?;
            let kind = read.ints(&fetched, KIND, at, n).map_err(parquet)?;
            let value = read.bytes(&fetched, VALUE, at, n).map_err(parquet)?;
            for i in 0..n {
                let kind = u8::try_from(kind[i])
                    .ok()
                    .and_then(CellKind::from_u8)
                    .ok_or_else(|| self.corrupted(&format!("unknown cell kind {}", kind[i])))?;
                out.push(Cell {
                    key: CellKey {
                        row: row.to_vec(),
                        family: self.family.clone(),
                        qualifier: qualifier[i].data().to_vec(),
                        ts: ts[i],
                        seq: seq[i] as u64,
                        kind,
                    },
                    value: value[i].data().to_vec(),
                });
            }
        }
        Ok(Some(out))
    }

    /// The row groups that may hold `row`, in order: found by binary search
    /// over their rows (groups are in row order, each group's range ends at
    /// or before the next one's starts), or all of them in a file without
    /// row statistics.
    fn groups_of(&self, row: &[u8]) -> std::ops::Range<usize> {
        match &self.group_rows {
            Some(groups) => {
                let first = groups.partition_point(|(_, max)| max.as_slice() < row);
                let end = first + groups[first..].partition_point(|(min, _)| min.as_slice() <= row);
                first..end
            }
            None => 0..self.metadata.metadata().num_row_groups(),
        }
    }

    fn corrupted(&self, reason: &str) -> StorageError {
        StorageError::Corrupted {
            file: self.path.clone(),
            offset: 0,
            reason: reason.to_string(),
        }
    }
}

/// Rows `[first, end)` of the group: the pages of the row column whose
/// range (by the column index) may hold `row`. `Some(None)` when none may;
/// `None` when the index is missing or inconsistent.
fn row_pages(
    group: &RowGroupMetaData,
    index: Option<&ColumnIndexMetaData>,
    offsets: Option<&OffsetIndexMetaData>,
    row: &[u8],
) -> Option<Option<(usize, usize)>> {
    let ColumnIndexMetaData::BYTE_ARRAY(index) = index? else {
        return None;
    };
    let pages = offsets?.page_locations();
    let rows = usize::try_from(group.num_rows()).ok()?;
    if usize::try_from(index.num_pages()).ok()? != pages.len() {
        return None;
    }
    let first_row = |p: usize| -> Option<usize> {
        match pages.get(p) {
            Some(page) => usize::try_from(page.first_row_index).ok(),
            None => Some(rows),
        }
    };
    // Pages are in row order: the first whose maximum reaches the row, and
    // those after it whose minimum does not pass it.
    let (mut lo, mut hi) = (0, pages.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if index.max_value(mid).is_some_and(|max| max < row) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let mut last = lo;
    while last < pages.len() && index.min_value(last).is_none_or(|min| min <= row) {
        last += 1;
    }
    if last == lo {
        return Some(None);
    }
    let (first, end) = (first_row(lo)?, first_row(last)?);
    // A damaged index must not steer the decoder.
    (first < end && end <= rows && (lo > 0 || first == 0)).then_some(Some((first, end)))
}

/// Reads of some rows of one row group.
struct GroupRead<'a> {
    md: &'a ParquetMetaData,
    group: usize,
    offsets: &'a [OffsetIndexMetaData],
    file: &'a PositionalFile,
}

impl GroupRead<'_> {
    /// The bytes of `columns` that rows `[first, end)` need (each column's
    /// dictionary page and the data pages holding those rows), in as few
    /// reads as their places allow.
    fn fetch(
        &self,
        columns: &[usize],
        first: usize,
        end: usize,
    ) -> parquet::errors::Result<Arc<Fetched>> {
        let group = self.md.row_group(self.group);
        let mut wanted = Vec::new();
        for &c in columns {
            let chunk = group.column(c);
            let pages = self
                .offsets
                .get(c)
                .map(|o| o.page_locations().as_slice())
                .unwrap_or_default();
            let (start, _) = chunk.byte_range();
            // Bytes before the first data page hold the dictionary page.
            if let Some(p) = pages.first() {
                let p = p.offset as u64;
                if p > start {
                    wanted.push((start, p));
                }
            }
            for (i, p) in pages.iter().enumerate() {
                let from = p.first_row_index as usize;
                let to = pages
                    .get(i + 1)
                    .map_or(usize::MAX, |n| n.first_row_index as usize);
                if from < end && to > first {
                    let at = p.offset as u64;
                    wanted.push((at, at + p.compressed_page_size.max(0) as u64));
                }
            }
        }
        wanted.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, e) in wanted {
            match merged.last_mut() {
                Some(last) if s <= last.1.saturating_add(GAP) => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        let mut ranges = Vec::with_capacity(merged.len());
        for (s, e) in merged {
            if e > self.file.len() {
                // Past the end: leave it to the reader, which reports it.
                continue;
            }
            let len = usize::try_from(e - s)
                .map_err(|_| ParquetError::General("page range too large".into()))?;
            ranges.push((s, self.file.get_bytes(s, len)?));
        }
        Ok(Arc::new(Fetched {
            file: self.file.clone(),
            ranges,
        }))
    }

    /// Values `[at, at + n)` of the byte-array column `c`.
    fn bytes(
        &self,
        fetched: &Arc<Fetched>,
        c: usize,
        at: usize,
        n: usize,
    ) -> parquet::errors::Result<Vec<ByteArray>> {
        match self.column(fetched, c)? {
            ColumnReader::ByteArrayColumnReader(r) => values(r, at, n),
            _ => Err(ParquetError::General(format!("column {c} is not binary"))),
        }
    }

    /// Values `[at, at + n)` of the integer column `c`.
    fn ints(
        &self,
        fetched: &Arc<Fetched>,
        c: usize,
        at: usize,
        n: usize,
    ) -> parquet::errors::Result<Vec<i64>> {
        match self.column(fetched, c)? {
            ColumnReader::Int64ColumnReader(r) => values(r, at, n),
            ColumnReader::Int32ColumnReader(r) => {
                Ok(values(r, at, n)?.into_iter().map(i64::from).collect())
            }
            _ => Err(ParquetError::General(format!(
                "column {c} is not an integer"
            ))),
        }
    }

    /// A reader of column `c` over the fetched bytes.
    fn column(&self, fetched: &Arc<Fetched>, c: usize) -> parquet::errors::Result<ColumnReader> {
        let group = self.md.row_group(self.group);
        let pages = self
            .offsets
            .get(c)
            .map(|o| o.page_locations().clone())
            .ok_or_else(|| ParquetError::General(format!("no offset index for column {c}")))?;
        let rows = usize::try_from(group.num_rows())
            .map_err(|_| ParquetError::General("negative row count".into()))?;
        let pages = SerializedPageReader::new(fetched.clone(), group.column(c), rows, Some(pages))?;
        let descr = self.md.file_metadata().schema_descr().column(c);
        Ok(get_column_reader(descr, Box::new(pages)))
    }
}

/// Skips `at` values of a column and reads the next `n`.
fn values<T: PqDataType>(
    mut reader: ColumnReaderImpl<T>,
    at: usize,
    n: usize,
) -> parquet::errors::Result<Vec<T::T>> {
    if reader.skip_records(at)? != at {
        return Err(ParquetError::General("column ends before the row".into()));
    }
    let mut out = Vec::with_capacity(n);
    let (read, _, _) = reader.read_records(n, None, None, &mut out)?;
    if read != n || out.len() != n {
        return Err(ParquetError::General("column ends inside the row".into()));
    }
    Ok(out)
}

/// Byte ranges of a store file read ahead; reads outside them go to the
/// file.
pub(crate) struct Fetched {
    file: PositionalFile,
    /// `(start, bytes)`, by start, not overlapping.
    ranges: Vec<(u64, Bytes)>,
}

impl Fetched {
    /// The fetched range that holds the byte at `at`: its start and bytes.
    fn range_at(&self, at: u64) -> Option<(u64, &Bytes)> {
        let i = self.ranges.partition_point(|(s, _)| *s <= at);
        let (s, bytes) = self.ranges.get(i.checked_sub(1)?)?;
        (at - s < bytes.len() as u64).then_some((*s, bytes))
    }

    /// The fetched bytes `[start, end)`, if one range holds them all.
    fn slice(&self, start: u64, end: u64) -> Option<Bytes> {
        let (s, bytes) = self.range_at(start)?;
        let (from, to) = (
            usize::try_from(start - s).ok()?,
            usize::try_from(end - s).ok()?,
        );
        (to <= bytes.len()).then(|| bytes.slice(from..to))
    }
}

impl Length for Fetched {
    fn len(&self) -> u64 {
        self.file.len()
    }
}

impl ChunkReader for Fetched {
    type T = ChunkedRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<ChunkedRead> {
        use bytes::Buf;
        match self.range_at(start) {
            Some((s, bytes)) => Ok(ChunkedRead::Memory(
                bytes.slice((start - s) as usize..).reader(),
            )),
            None => Ok(ChunkedRead::File(self.file.get_read(start)?)),
        }
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self.slice(start, start + length as u64) {
            Some(b) => Ok(b),
            None => self.file.get_bytes(start, length),
        }
    }
}
