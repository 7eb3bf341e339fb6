//! Errors of the storage engine.

use std::path::PathBuf;

/// What went wrong in the engine. Every variant names its cause; corruption
/// names the file and offset.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupted {file} at offset {offset}: {reason}")]
    Corrupted {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("store file {file}: {source}")]
    Parquet {
        file: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("table {0} does not exist")]
    TableNotFound(String),
    #[error("table {0} already exists")]
    TableExists(String),
    #[error("family {family} does not exist in table {table}")]
    FamilyNotFound { table: String, family: String },
    #[error("region {0} does not exist")]
    RegionNotFound(u64),
    #[error("cannot split region {region} at that key: {reason}")]
    InvalidSplit { region: u64, reason: &'static str },
    #[error("regions {0} and {1} are not adjacent")]
    NotAdjacent(u64, u64),
    #[error("topic {0} does not exist")]
    TopicNotFound(String),
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    #[error("topic {topic} has no partition {partition}")]
    PartitionNotFound { topic: String, partition: u32 },
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    #[error("invalid record batch: {0}")]
    InvalidRecordBatch(#[from] crate::log::BatchError),
    #[error("producer {producer_id}: expected sequence {expected}, got {got}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    #[error("a cell of {0} bytes is too large for a bulk load (at most 4 GiB)")]
    CellTooLarge(usize),
    #[error("table {0} was truncated, dropped or altered during a bulk load; nothing was loaded")]
    TableChanged(String),
    #[error("the engine is closed after an earlier write failure: {0}")]
    Poisoned(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Attaches the path to an I/O error.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.into();
    move |source| StorageError::Io { path, source }
}
