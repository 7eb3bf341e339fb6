//! Tidebase storage: the bytes on disk.
//!
//! An LSM engine with HBase's model. A *cell* is (row, family, qualifier,
//! timestamp, kind) -> value. A table is split by row-key range into
//! *regions*; each region has one *store* per column family, made of a
//! memstore and immutable Parquet *store files* with a row-key bloom filter.
//! Every write batch goes to the write-ahead log first (group-committed),
//! then to memstores; full memstores are flushed in the background; files
//! are compacted; large regions split. Opening the engine replays the WAL.
//!
//! ```
//! use tidebase_storage::{Engine, EngineOptions, FamilyOptions, Mutation, ReadOptions};
//! let dir = tempfile::tempdir().unwrap();
//! let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
//! engine.create_table("emp", vec![("personal".into(), FamilyOptions::default())]).unwrap();
//! engine.write("emp", vec![Mutation::put(b"row1", "personal", b"name", 1, b"Ada")]).unwrap();
//! let cells = engine.get("emp", b"row1", &[], &ReadOptions::default()).unwrap();
//! assert_eq!(cells[0].value, b"Ada");
//! ```
//!
//! It knows Arrow and Parquet, not SQL, DataFusion or the wire protocol.

mod bloom;
mod bulk;
mod cell;
mod engine;
mod error;
pub mod log;
mod manifest;
mod memstore;
mod metrics;
mod options;
mod read;
mod region;
mod row_read;
mod scan;
mod store_file;
pub mod views;
mod wal;

pub use bulk::BulkLoad;
pub use cell::{Cell, CellKey, CellKind, Mutation};
pub use engine::{cell_schema, Engine, RegionInfo, ScanOptions, StoreFileInfo};
pub use error::{Result, StorageError};
pub use metrics::EngineMetrics;
pub use options::{BloomKind, Compression, EngineOptions, FamilyOptions, SyncPolicy};
pub use read::{now_ms, ReadOptions};
pub use scan::StoreScan;
pub use store_file::{hex, unhex};
pub use wal::WalRecord;
