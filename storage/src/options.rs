//! Engine and family options.

use std::time::Duration;

pub use crate::wal::SyncPolicy;

/// Which keys a store file's bloom filter holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BloomKind {
    None,
    Row,
    RowCol,
}

impl BloomKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Row => "row",
            Self::RowCol => "rowcol",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Some(Self::None),
            "row" => Some(Self::Row),
            "rowcol" | "row+col" | "row_col" => Some(Self::RowCol),
            _ => None,
        }
    }
}

/// Store-file compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Some(Self::None),
            "snappy" => Some(Self::Snappy),
            "lz4" => Some(Self::Lz4),
            "zstd" => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// Options of one column family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyOptions {
    /// Versions kept per column (default 3).
    pub max_versions: u32,
    /// Cells older than this are hidden and dropped by major compaction.
    pub ttl_ms: Option<u64>,
    pub bloom: BloomKind,
    /// Target bytes of cells per Parquet row group (default 1 MiB): the
    /// unit a scan skips by row-key statistics. A get decodes one page
    /// (at most 8 KiB or 256 cells) per column, found by the page index.
    pub block_size: usize,
    /// Store-file compression (default none, as in HBase: a scan of
    /// uncompressed pages from the page cache runs at about twice the cells
    /// per second of LZ4 pages, for about 3.4 times the bytes on disk;
    /// lz4, snappy and zstd trade that CPU for space).
    pub compression: Compression,
}

impl Default for FamilyOptions {
    fn default() -> Self {
        Self {
            max_versions: 3,
            ttl_ms: None,
            bloom: BloomKind::Row,
            block_size: 1 << 20,
            compression: Compression::None,
        }
    }
}

/// Options of the whole engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub sync: SyncPolicy,
    /// How often the `Batch` policy syncs.
    pub batch_sync_interval: Duration,
    /// A memstore this big is flushed (default 64 MiB).
    pub memstore_flush_bytes: usize,
    /// Writers wait while a region has this many memstores waiting to be
    /// flushed.
    pub max_frozen_memstores: usize,
    /// A region whose size passes this splits (default 256 MiB).
    pub region_split_bytes: u64,
    /// A store with this many files is compacted (minor).
    pub compaction_min_files: usize,
    pub wal_segment_bytes: u64,
    /// A bulk load sorts this many bytes of cells in memory before it
    /// writes them as a run of store files (default 1 GiB, at most 2 GiB).
    pub bulk_load_memory: usize,
    /// Run flushes, compactions and splits on a background thread. Tests
    /// that drive every step themselves turn this off.
    pub background: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            sync: SyncPolicy::Always,
            batch_sync_interval: Duration::from_millis(5),
            memstore_flush_bytes: 64 << 20,
            max_frozen_memstores: 4,
            region_split_bytes: 256 << 20,
            compaction_min_files: 4,
            wal_segment_bytes: 64 << 20,
            bulk_load_memory: 1 << 30,
            background: true,
        }
    }
}
