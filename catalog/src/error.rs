//! Errors raised by the catalog.

use datafusion::error::DataFusionError;

/// What went wrong while building or consulting the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A table was looked up but is not in the catalog.
    #[error("relation \"{0}\" does not exist")]
    TableNotFound(String),
    /// A table of that name already exists.
    #[error("relation \"{0}\" already exists")]
    TableExists(String),
    #[error("column \"{0}\" does not exist")]
    ColumnNotFound(String),
    #[error("column \"{0}\" specified more than once")]
    DuplicateColumn(String),
    #[error("column family \"{0}\" does not exist")]
    FamilyNotFound(String),
    #[error("column family \"{family}\" of relation \"{table}\" already exists")]
    FamilyExists { table: String, family: String },
    #[error("unrecognized parameter \"{0}\"")]
    UnknownOption(String),
    #[error("invalid value for parameter \"{name}\": \"{value}\"")]
    BadOptionValue { name: String, value: String },
    #[error("type \"{0}\" is not supported in region tables")]
    UnsupportedType(String),
    #[error("null value in column \"{column}\" of relation \"{table}\" violates not-null constraint (row {row})")]
    NullKey {
        column: String,
        table: String,
        row: u64,
    },
    #[error("{0} is not supported")]
    Unsupported(String),
    /// Stored bytes that do not decode.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Storage(#[from] tidebase_storage::StorageError),
    /// DataFusion refused to build a system table or function.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
}

impl From<CatalogError> for DataFusionError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::DataFusion(e) => e,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}
