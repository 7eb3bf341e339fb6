//! The memstore: a store's recent writes, sorted, in memory.
//!
//! Each cell is one [`Entry`] in a B-tree: its row, qualifier and value in
//! one allocation, and the row's first 16 bytes inline as a big-endian
//! integer. Most comparisons on the way down the tree are decided by that
//! integer, without following a pointer to the heap (a cache miss per
//! comparison otherwise). The family is the store's and is not kept per
//! cell.
//!
//! Beside the tree, a [`RowFilter`] (a bloom filter over the rows, as
//! RocksDB keeps for its memtables) answers most gets of a row the memstore
//! does not hold without a walk down the tree, a cache miss per level.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};

use arrow::array::RecordBatch;
use parking_lot::RwLock;

use crate::cell::{cmp_versions, Cell, CellKey, CellKind, Mutation};
use crate::store_file::CellBatchBuilder;

/// One cell of a memstore.
struct Entry {
    /// The first 16 bytes of the row, big-endian, zero-padded: rows whose
    /// prefixes differ compare as their prefixes do.
    prefix: u128,
    /// Row, qualifier and value, one after the other.
    data: Box<[u8]>,
    row_len: u32,
    qualifier_len: u32,
    ts: i64,
    seq: u64,
    kind: CellKind,
}

fn prefix_of(row: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = row.len().min(16);
    b[..n].copy_from_slice(&row[..n]);
    u128::from_be_bytes(b)
}

impl Entry {
    fn new(row: &[u8], qualifier: &[u8], ts: i64, seq: u64, kind: CellKind, value: &[u8]) -> Self {
        let mut data = Vec::with_capacity(row.len() + qualifier.len() + value.len());
        data.extend_from_slice(row);
        data.extend_from_slice(qualifier);
        data.extend_from_slice(value);
        Self {
            prefix: prefix_of(row),
            data: data.into_boxed_slice(),
            row_len: u32::try_from(row.len()).expect("row keys are under 4 GiB"),
            qualifier_len: u32::try_from(qualifier.len()).expect("qualifiers are under 4 GiB"),
            ts,
            seq,
            kind,
        }
    }

    fn row(&self) -> &[u8] {
        &self.data[..self.row_len as usize]
    }

    fn qualifier(&self) -> &[u8] {
        let r = self.row_len as usize;
        &self.data[r..r + self.qualifier_len as usize]
    }

    fn value(&self) -> &[u8] {
        &self.data[(self.row_len + self.qualifier_len) as usize..]
    }

    fn cmp_row(&self, other: &Self) -> Ordering {
        self.prefix
            .cmp(&other.prefix)
            .then_with(|| self.row().cmp(other.row()))
    }

    /// Bytes this cell takes, roughly.
    fn size(&self) -> usize {
        self.data.len() + std::mem::size_of::<Self>() + 16
    }
}

/// Cell order, as [`CellKey`]'s within one family.
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_row(other).then_with(|| {
            cmp_versions(
                (self.qualifier(), self.ts, self.seq, self.kind),
                (other.qualifier(), other.ts, other.seq, other.kind),
            )
        })
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

/// A bloom filter over a memstore's rows, blocked: each row sets
/// [`RowFilter::PROBES`] bits in one 512-bit block (one cache line), so a
/// lookup costs one cache miss. It starts small and is rebuilt four times
/// larger from the tree whenever it holds more rows than it was sized for,
/// so it takes at most a few bytes per row of what the memstore holds.
struct RowFilter {
    blocks: Vec<[u64; 8]>,
    /// Rows added (a row written again counts again).
    rows: usize,
    /// Rows it holds at about 10 bits each.
    capacity: usize,
}

impl RowFilter {
    const PROBES: u64 = 6;
    const BITS_PER_ROW: usize = 10;
    const INITIAL_ROWS: usize = 1024;

    fn with_capacity(rows: usize) -> Self {
        let blocks = (rows * Self::BITS_PER_ROW)
            .div_ceil(512)
            .next_power_of_two();
        Self {
            blocks: vec![[0; 8]; blocks],
            rows: 0,
            capacity: blocks * 512 / Self::BITS_PER_ROW,
        }
    }

    /// The block of a row's hash, and its bit positions in that block:
    /// the low bits choose the block, two 9-bit fields of the high bits
    /// the positions (double hashing).
    fn probes(&self, hash: u64) -> (usize, impl Iterator<Item = usize>) {
        let block = (hash as usize) & (self.blocks.len() - 1);
        let (a, b) = ((hash >> 32) & 511, ((hash >> 41) & 511) | 1);
        (
            block,
            (0..Self::PROBES).map(move |i| (a.wrapping_add(i * b) & 511) as usize),
        )
    }

    fn insert(&mut self, hash: u64) {
        let (block, bits) = self.probes(hash);
        let words = &mut self.blocks[block];
        for bit in bits {
            words[bit / 64] |= 1 << (bit % 64);
        }
        self.rows += 1;
    }

    fn may_contain(&self, hash: u64) -> bool {
        let (block, mut bits) = self.probes(hash);
        let words = &self.blocks[block];
        bits.all(|bit| words[bit / 64] & (1 << (bit % 64)) != 0)
    }
}

fn row_hash(row: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(row)
}

/// A memstore's cells and the filter over their rows, under one lock.
struct Cells {
    tree: BTreeSet<Entry>,
    rows: RowFilter,
}

impl Default for Cells {
    fn default() -> Self {
        Self {
            tree: BTreeSet::new(),
            rows: RowFilter::with_capacity(RowFilter::INITIAL_ROWS),
        }
    }
}

impl Cells {
    /// Adds a row (by [`row_hash`]) to the filter, first rebuilding it four
    /// times larger from the tree when it is full. The row's cells are in
    /// the tree already.
    fn add_row(&mut self, hash: u64) {
        if self.rows.rows >= self.rows.capacity {
            let rows = (self.rows.capacity * 4).max(self.rows.rows * 2);
            let mut larger = RowFilter::with_capacity(rows);
            let mut last: Option<&[u8]> = None;
            for e in &self.tree {
                if last != Some(e.row()) {
                    larger.insert(row_hash(e.row()));
                    last = Some(e.row());
                }
            }
            self.rows = larger;
        }
        self.rows.insert(hash);
    }
}

/// Sorted cells of one store, with their total size.
pub struct MemStore {
    family: String,
    cells: RwLock<Cells>,
    bytes: AtomicUsize,
    max_seq: AtomicU64,
    min_seq: AtomicU64,
}

impl MemStore {
    /// An empty memstore of `family`.
    pub fn new(family: &str) -> Self {
        Self {
            family: family.to_string(),
            cells: RwLock::default(),
            bytes: AtomicUsize::new(0),
            max_seq: AtomicU64::new(0),
            min_seq: AtomicU64::new(u64::MAX),
        }
    }

    /// The smallest sequence number held, if any.
    pub fn min_seq(&self) -> Option<u64> {
        let v = self.min_seq.load(AtomicOrdering::Relaxed);
        (v != u64::MAX).then_some(v)
    }

    /// Inserts the cells of one write batch (sequence number `seq`) under
    /// one lock. The cells are built and sorted before the lock is taken
    /// (concurrent writers overlap in that part), and go in in key order,
    /// so consecutive inserts descend the same path of the tree. Of equal
    /// cells in the batch, the last one is kept (the sort is stable).
    pub fn insert_all<'a>(&self, seq: u64, mutations: impl IntoIterator<Item = &'a Mutation>) {
        let mut entries: Vec<Entry> = mutations
            .into_iter()
            .map(|m| Entry::new(&m.row, &m.qualifier, m.ts, seq, m.kind, &m.value))
            .collect();
        entries.sort();
        let added: usize = entries.iter().map(Entry::size).sum();
        // The batch's rows, hashed before the lock is taken (a row's cells
        // are adjacent once sorted).
        let mut rows: Vec<u64> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if i == 0 || entries[i - 1].cmp_row(e) != Ordering::Equal {
                rows.push(row_hash(e.row()));
            }
        }
        {
            // Tree first: a rebuild of the filter reads the tree, and must
            // find the batch's rows there.
            let mut cells = self.cells.write();
            for e in entries {
                cells.tree.replace(e);
            }
            for hash in rows {
                cells.add_row(hash);
            }
        }
        self.bytes.fetch_add(added, AtomicOrdering::Relaxed);
        self.max_seq.fetch_max(seq, AtomicOrdering::Relaxed);
        self.min_seq.fetch_min(seq, AtomicOrdering::Relaxed);
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(AtomicOrdering::Relaxed)
    }

    #[cfg(test)]
    pub fn max_seq(&self) -> u64 {
        self.max_seq.load(AtomicOrdering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.cells.read().tree.is_empty()
    }

    /// False when the memstore certainly holds no cell of `row`.
    pub fn may_contain_row(&self, row: &[u8]) -> bool {
        self.cells.read().rows.may_contain(row_hash(row))
    }

    /// Copies the cells whose row is in `[start, end)` (`end` empty = no end).
    pub fn range(&self, start: &[u8], end: &[u8]) -> Vec<Cell> {
        let cells = self.cells.read();
        in_range(&cells.tree, start, end)
            .map(|e| Cell {
                key: CellKey {
                    row: e.row().to_vec(),
                    family: self.family.clone(),
                    qualifier: e.qualifier().to_vec(),
                    ts: e.ts,
                    seq: e.seq,
                    kind: e.kind,
                },
                value: e.value().to_vec(),
            })
            .collect()
    }

    /// The cells of rows in `[start, end)` as Arrow batches of at most
    /// `chunk` cells (built at their size: one batch grown cell by cell
    /// was copied at every doubling), in cell order, with what a read needs
    /// to know of them.
    pub fn range_batches(
        &self,
        start: &[u8],
        end: &[u8],
        chunk: usize,
    ) -> crate::error::Result<MemRange> {
        let chunk = chunk.max(1);
        let cells = self.cells.read();
        let mut out = MemRange {
            batches: Vec::new(),
            puts_only: true,
            max_seq: 0,
            max_versions: 0,
        };
        let mut batch = CellBatchBuilder::with_capacity(chunk);
        let mut prev: Option<&Entry> = None;
        let mut run = 0u32;
        for e in in_range(&cells.tree, start, end) {
            out.puts_only &= e.kind == CellKind::Put;
            out.max_seq = out.max_seq.max(e.seq);
            run = match prev {
                Some(p) if p.row() == e.row() && p.qualifier() == e.qualifier() => run + 1,
                _ => 1,
            };
            out.max_versions = out.max_versions.max(run);
            prev = Some(e);
            batch.append(e.row(), e.qualifier(), e.ts, e.seq, e.kind, e.value());
            if batch.len() == chunk {
                let full = std::mem::replace(&mut batch, CellBatchBuilder::with_capacity(chunk));
                out.batches.push(full.finish()?);
            }
        }
        drop(cells);
        if !batch.is_empty() {
            out.batches.push(batch.finish()?);
        }
        Ok(out)
    }
}

/// A memstore's cells in a row range ([`MemStore::range_batches`]).
pub struct MemRange {
    /// The cells in order, in batches.
    pub batches: Vec<RecordBatch>,
    /// No delete markers among them.
    pub puts_only: bool,
    /// Their highest sequence number (0 when there are none).
    pub max_seq: u64,
    /// The most cells any one column has among them.
    pub max_versions: u32,
}

/// The cells whose row is in `[start, end)` (`end` empty = no end).
fn in_range<'a>(
    cells: &'a BTreeSet<Entry>,
    start: &[u8],
    end: &'a [u8],
) -> impl Iterator<Item = &'a Entry> {
    // The smallest entry of `start`: empty qualifier, newest possible.
    let lower = Entry::new(start, &[], i64::MAX, u64::MAX, CellKind::Put, &[]);
    let end_prefix = prefix_of(end);
    cells
        .range((Bound::Included(lower), Bound::Unbounded))
        .take_while(move |e| {
            end.is_empty() || e.prefix < end_prefix || (e.prefix == end_prefix && e.row() < end)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_is_half_open_and_ordered() {
        let m = MemStore::new("f");
        for (i, row) in ["c", "a", "b", "d"].iter().enumerate() {
            m.insert_all(
                i as u64 + 1,
                [&Mutation::put(row.as_bytes(), "f", b"q", 1, b"v")],
            );
        }
        let rows: Vec<Vec<u8>> = m.range(b"b", b"d").into_iter().map(|c| c.key.row).collect();
        assert_eq!(rows, vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(m.range(&[], &[]).len(), 4);
        assert_eq!(m.max_seq(), 4);
    }

    #[test]
    fn of_equal_cells_in_one_batch_the_last_is_kept() {
        let m = MemStore::new("f");
        let batch: Vec<Mutation> = (0..50u8)
            .map(|i| Mutation::put(&[b'r', i % 5], "f", b"q", 1, &[i]))
            .collect();
        m.insert_all(1, &batch);
        let cells = m.range(&[], &[]);
        let values: Vec<Vec<u8>> = cells.into_iter().map(|c| c.value).collect();
        assert_eq!(values, (45..50u8).map(|i| vec![i]).collect::<Vec<_>>());
    }

    #[test]
    fn the_row_filter_finds_every_row_as_it_grows() {
        let m = MemStore::new("f");
        let row = |i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes();
        // Batches of 1 to 99 rows, some rows written twice, many rebuilds.
        let mut written = 0u64;
        let mut seq = 1;
        while written < 60_000 {
            let n = seq % 99 + 1;
            let puts: Vec<Mutation> = (written..written + n)
                .flat_map(|i| {
                    let again = Mutation::put(&row(i / 2), "f", b"q", 2, b"v");
                    [Mutation::put(&row(i), "f", b"q", 1, b"v"), again]
                })
                .collect();
            m.insert_all(seq, &puts);
            written += n;
            seq += 1;
            // Right after a batch, and whatever rebuilds it caused.
            assert!(m.may_contain_row(&row(written - 1)));
        }
        assert!((0..written).all(|i| m.may_contain_row(&row(i))));
        let cells = m.cells.read();
        assert!(cells.rows.capacity >= 60_000 && cells.rows.capacity < 4 * 2 * 60_000);
        drop(cells);
        // Rows never written: about 1% pass (6 bits in a 512-bit block at
        // 10 bits per row or more).
        let passed = (1u64 << 40..(1 << 40) + 100_000)
            .filter(|&i| m.may_contain_row(&row(i)))
            .count();
        assert!(passed < 3_000, "{passed} of 100,000 absent rows passed");
        assert!(!MemStore::new("f").may_contain_row(b"anything"));
    }

    fn key() -> impl proptest::strategy::Strategy<Value = (Vec<u8>, Vec<u8>, i64, u64)> {
        // Few byte values and lengths around 16, so prefixes tie often and
        // rows are often prefixes of each other (zero bytes included).
        (
            proptest::collection::vec(0u8..3, 0..24),
            proptest::collection::vec(0u8..3, 0..3),
            -2i64..2,
            0u64..3,
        )
    }

    proptest::proptest! {
        #[test]
        fn entries_sort_as_cell_keys(a in key(), b in key()) {
            let entry = |k: &(Vec<u8>, Vec<u8>, i64, u64)| {
                Entry::new(&k.0, &k.1, k.2, k.3, CellKind::Put, b"")
            };
            let cell = |k: &(Vec<u8>, Vec<u8>, i64, u64)| CellKey {
                row: k.0.clone(),
                family: "f".into(),
                qualifier: k.1.clone(),
                ts: k.2,
                seq: k.3,
                kind: CellKind::Put,
            };
            proptest::prop_assert_eq!(entry(&a).cmp(&entry(&b)), cell(&a).cmp(&cell(&b)));
        }

        #[test]
        fn ranges_hold_exactly_their_rows(
            rows in proptest::collection::vec(key(), 0..40),
            start in proptest::collection::vec(0u8..3, 0..20),
            end in proptest::collection::vec(0u8..3, 0..20),
        ) {
            let m = MemStore::new("f");
            for (i, (row, q, ts, _)) in rows.iter().enumerate() {
                m.insert_all(i as u64, [&Mutation::put(row, "f", q, *ts, b"v")]);
            }
            let got: Vec<Vec<u8>> = m.range(&start, &end).into_iter().map(|c| c.key.row).collect();
            let mut want: Vec<Vec<u8>> = rows
                .iter()
                .map(|r| r.0.clone())
                .filter(|r| *r >= start && (end.is_empty() || *r < end))
                .collect();
            want.sort();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
