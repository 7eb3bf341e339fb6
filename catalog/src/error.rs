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
