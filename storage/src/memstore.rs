//! The memstore: a store's recent writes, sorted, in memory.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arrow::array::RecordBatch;
use parking_lot::RwLock;

use crate::cell::{Cell, CellKey, CellKind};
use crate::store_file::CellBatchBuilder;

/// Sorted cells of one store, with their total size.
pub struct MemStore {
    cells: RwLock<BTreeMap<CellKey, Vec<u8>>>,
    bytes: AtomicUsize,
    max_seq: AtomicU64,
    min_seq: AtomicU64,
}

impl Default for MemStore {
    fn default() -> Self {
        Self {
            cells: RwLock::default(),
            bytes: AtomicUsize::new(0),
            max_seq: AtomicU64::new(0),
            min_seq: AtomicU64::new(u64::MAX),
        }
    }
}

impl MemStore {
    /// The smallest sequence number held, if any.
    pub fn min_seq(&self) -> Option<u64> {
        let v = self.min_seq.load(Ordering::Relaxed);
        (v != u64::MAX).then_some(v)
    }

    pub fn insert(&self, cell: Cell) {
        self.bytes.fetch_add(cell.heap_size(), Ordering::Relaxed);
        self.max_seq.fetch_max(cell.key.seq, Ordering::Relaxed);
        self.min_seq.fetch_min(cell.key.seq, Ordering::Relaxed);
        self.cells.write().insert(cell.key, cell.value);
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn max_seq(&self) -> u64 {
        self.max_seq.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.cells.read().is_empty()
    }

    /// Copies the cells whose row is in `[start, end)` (`end` empty = no end).
    pub fn range(&self, start: &[u8], end: &[u8]) -> Vec<Cell> {
        let cells = self.cells.read();
        in_range(&cells, start, end)
            .map(|(k, v)| Cell {
                key: k.clone(),
                value: v.clone(),
            })
            .collect()
    }

    /// The cells whose row is in `[start, end)` as one batch in the
    /// store-file schema, or `None` when there are none.
    pub fn range_batch(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> crate::error::Result<Option<RecordBatch>> {
        let cells = self.cells.read();
        let mut batch = CellBatchBuilder::default();
        for (k, v) in in_range(&cells, start, end) {
            batch.append(&k.row, &k.qualifier, k.ts, k.seq, k.kind, v);
        }
        drop(cells);
        if batch.is_empty() {
            return Ok(None);
        }
        batch.finish().map(Some)
    }
}

/// The cells whose row is in `[start, end)` (`end` empty = no end).
fn in_range<'a>(
    cells: &'a BTreeMap<CellKey, Vec<u8>>,
    start: &[u8],
    end: &'a [u8],
) -> impl Iterator<Item = (&'a CellKey, &'a Vec<u8>)> {
    cells
        .range((Bound::Included(lower_bound(start)), Bound::Unbounded))
        .take_while(move |(k, _)| end.is_empty() || k.row.as_slice() < end)
}

/// The smallest key of `row`.
fn lower_bound(row: &[u8]) -> CellKey {
    CellKey {
        row: row.to_vec(),
        family: String::new(),
        qualifier: Vec::new(),
        ts: i64::MAX,
        seq: u64::MAX,
        kind: CellKind::Put,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::Mutation;

    #[test]
    fn range_is_half_open_and_ordered() {
        let m = MemStore::default();
        for (i, row) in ["c", "a", "b", "d"].iter().enumerate() {
            m.insert(Mutation::put(row.as_bytes(), "f", b"q", 1, b"v").into_cell(i as u64 + 1));
        }
        let rows: Vec<Vec<u8>> = m.range(b"b", b"d").into_iter().map(|c| c.key.row).collect();
        assert_eq!(rows, vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(m.range(&[], &[]).len(), 4);
        assert_eq!(m.max_seq(), 4);
    }
}
