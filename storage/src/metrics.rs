//! Counters one engine keeps about its own work, for benchmarks, tests and
//! the system views.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared by the engine and its store files.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub user_bytes: AtomicU64,
    pub flush_bytes: AtomicU64,
    pub bulk_bytes: AtomicU64,
    pub compaction_bytes: AtomicU64,
    pub data_reads: AtomicU64,
    pub file_reads: AtomicU64,
    pub bloom_negatives: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> EngineMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EngineMetrics {
            user_bytes: get(&self.user_bytes),
            wal_bytes: 0,
            flush_bytes: get(&self.flush_bytes),
            bulk_bytes: get(&self.bulk_bytes),
            compaction_bytes: get(&self.compaction_bytes),
            data_reads: get(&self.data_reads),
            file_reads: get(&self.file_reads),
            bloom_negatives: get(&self.bloom_negatives),
        }
    }
}

/// A copy of an engine's counters since it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineMetrics {
    /// Row, qualifier and value bytes of every mutation written (and cell
    /// bulk-loaded).
    pub user_bytes: u64,
    /// Bytes appended to the write-ahead log.
    pub wal_bytes: u64,
    /// Bytes of store files written by flushes.
    pub flush_bytes: u64,
    /// Bytes of store files written by bulk loads.
    pub bulk_bytes: u64,
    /// Bytes of store files written by compactions.
    pub compaction_bytes: u64,
    /// Store-file reads that decoded at least one data page.
    pub data_reads: u64,
    /// Reads (system calls) of store-file bytes.
    pub file_reads: u64,
    /// Single-row reads of a file answered "absent" by its bloom filter.
    pub bloom_negatives: u64,
}

impl EngineMetrics {
    /// Bytes written to disk (WAL and store files) per byte of user data.
    pub fn write_amplification(&self) -> f64 {
        if self.user_bytes == 0 {
            return 0.0;
        }
        (self.wal_bytes + self.flush_bytes + self.bulk_bytes + self.compaction_bytes) as f64
            / self.user_bytes as f64
    }
}
