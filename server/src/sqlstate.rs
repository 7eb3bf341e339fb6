//! The one place where errors become SQLSTATEs.
//!
//! Every failure a client can cause is mapped here to the code PostgreSQL
//! would send; `XX000` is reserved for internal errors, which are bugs.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;
use pgwire::error::{ErrorInfo, PgWireError};
use tidebase_catalog::storage::StorageError;
use tidebase_catalog::{CatalogError, SettingError};

/// An error while running a statement.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("syntax error: {0}")]
    Parse(#[from] ParserError),
    #[error("{}", .0.message())]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Setting(#[from] SettingError),
    #[error("cannot run {0} in a prepared statement")]
    SessionCommandWithParameters(&'static str),
    #[error("terminating connection due to administrator command")]
    ShuttingDown,
    #[error("{what} is not supported")]
    NotSupported { what: String },
    #[error("invalid input for parameter ${index}: {reason}")]
    InvalidParameter { index: usize, reason: String },
    #[error("invalid value for parameter \"{name}\": \"{value}\"")]
    InvalidSettingValue { name: String, value: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{message}")]
    Copy { code: &'static str, message: String },
    #[error("{message}")]
    Syntax { message: String },
}

impl From<QueryError> for PgWireError {
    fn from(e: QueryError) -> Self {
        PgWireError::UserError(Box::new(error_info(&e)))
    }
}

/// The ErrorResponse for `e`.
pub fn error_info(e: &QueryError) -> ErrorInfo {
    let (severity, code, message) = match e {
        QueryError::Parse(p) => ("ERROR", "42601", p.to_string()),
        QueryError::DataFusion(df) => {
            let (code, message) = datafusion_code(df);
            ("ERROR", code, message)
        }
        QueryError::Setting(s) => ("ERROR", "42704", s.to_string()),
        QueryError::SessionCommandWithParameters(_) => ("ERROR", "42P02", e.to_string()),
        QueryError::ShuttingDown => ("FATAL", "57P01", e.to_string()),
        QueryError::NotSupported { .. } => ("ERROR", "0A000", e.to_string()),
        QueryError::InvalidSettingValue { .. } => ("ERROR", "22023", e.to_string()),
        QueryError::InvalidParameter { .. } => ("ERROR", "22P02", e.to_string()),
        QueryError::Catalog(c) => ("ERROR", catalog_code(c), e.to_string()),
        QueryError::Copy { code, .. } => ("ERROR", *code, e.to_string()),
        QueryError::Syntax { .. } => ("ERROR", "42601", e.to_string()),
    };
    ErrorInfo::new(severity.to_string(), code.to_string(), message)
}

/// SQLSTATE and message for a DataFusion error, looking through the
/// context, diagnostic and sharing wrappers to the cause.
fn datafusion_code(e: &DataFusionError) -> (&'static str, String) {
    let root = e.find_root();
    let message = root.message().to_string();
    let code = match root {
        DataFusionError::SQL(..) => "42601",
        DataFusionError::SchemaError(se, _) => {
            use datafusion::common::SchemaError;
            match se.as_ref() {
                SchemaError::FieldNotFound { .. } => "42703",
                SchemaError::AmbiguousReference { .. } => "42702",
                SchemaError::DuplicateQualifiedField { .. }
                | SchemaError::DuplicateUnqualifiedField { .. } => "42701",
            }
        }
        DataFusionError::ArrowError(ae, _) => arrow_code(ae),
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::ResourcesExhausted(_) => "53200",
        DataFusionError::Plan(m) => plan_code(m),
        DataFusionError::Execution(m) => execution_code(m),
        DataFusionError::External(inner) => {
            if let Some(c) = inner.downcast_ref::<CatalogError>() {
                catalog_code(c)
            } else if let Some(a) = inner.downcast_ref::<ArrowError>() {
                arrow_code(a)
            } else {
                "XX000"
            }
        }
        DataFusionError::Internal(_) => "XX000",
        _ => "XX000",
    };
    (code, strip_prefix(&message))
}

fn catalog_code(e: &CatalogError) -> &'static str {
    match e {
        CatalogError::TableNotFound(_) => "42P01",
        CatalogError::TableExists(_) => "42P07",
        CatalogError::ColumnNotFound(_) => "42703",
        CatalogError::DuplicateColumn(_) => "42701",
        CatalogError::FamilyNotFound(_) => "42704",
        CatalogError::FamilyExists { .. } => "42710",
        CatalogError::UnknownOption(_) => "42704",
        CatalogError::BadOptionValue { .. } => "22023",
        CatalogError::UnsupportedType(_) | CatalogError::Unsupported(_) => "0A000",
        CatalogError::NullKey { .. } => "23502",
        CatalogError::Corrupt(_) => "XX001",
        CatalogError::Storage(s) => storage_code(s),
        CatalogError::DataFusion(d) => datafusion_code(d).0,
    }
}

fn storage_code(e: &StorageError) -> &'static str {
    match e {
        StorageError::TableNotFound(_) => "42P01",
        StorageError::TableExists(_) | StorageError::TopicExists(_) => "42P07",
        StorageError::TopicNotFound(_) => "42P01",
        StorageError::InvalidTopic(_)
        | StorageError::PartitionNotFound { .. }
        | StorageError::OffsetOutOfRange { .. } => "22023",
        StorageError::InvalidRecordBatch(_) | StorageError::OutOfOrderSequence { .. } => "22P03",
        StorageError::FamilyNotFound { .. } => "42704",
        StorageError::InvalidSplit { .. } | StorageError::NotAdjacent(..) => "22023",
        StorageError::Io { .. } | StorageError::Poisoned(_) => "58030",
        StorageError::CellTooLarge(_) => "54000",
        StorageError::TableChanged(_) => "40001",
        StorageError::Corrupted { .. } | StorageError::Parquet { .. } => "XX001",
        _ => "XX000",
    }
}

fn arrow_code(e: &ArrowError) -> &'static str {
    match e {
        ArrowError::DivideByZero => "22012",
        ArrowError::CastError(m) | ArrowError::ParseError(m) => {
            if m.contains("overflow") || m.contains("Overflow") || m.contains("too large") {
                "22003"
            } else {
                "22P02"
            }
        }
        ArrowError::ArithmeticOverflow(_) => "22003",
        ArrowError::ComputeError(m) if m.contains("Overflow") || m.contains("overflow") => "22003",
        ArrowError::InvalidArgumentError(m) if m.contains("non-nullable") => "23502",
        ArrowError::InvalidArgumentError(_) => "22023",
        _ => "XX000",
    }
}

fn plan_code(m: &str) -> &'static str {
    let lower = m.to_ascii_lowercase();
    if lower.contains("table '") && lower.contains("not found")
        || lower.contains("table") && lower.contains("does not exist")
    {
        "42P01"
    } else if lower.contains("invalid function")
        || lower.contains("no function matches")
        || lower.contains("function") && lower.contains("does not exist")
    {
        "42883"
    } else if lower.contains("already exists") {
        "42P07"
    } else if lower.contains("cannot infer common")
        || lower.contains("cannot coerce")
        || lower.contains("cannot be cast")
        || lower.contains("does not support")
            && (lower.contains("type") || lower.contains("argument"))
        || lower.contains("failed to coerce")
        || lower.contains("coercion from")
    {
        "42804"
    } else if lower.contains("not supported") || lower.contains("unsupported") {
        "0A000"
    } else if lower.contains("schema") && lower.contains("not found") {
        "3F000"
    } else if lower.contains("placeholder") || lower.contains("parameter") {
        "42P02"
    } else {
        "42601"
    }
}

fn execution_code(m: &str) -> &'static str {
    let lower = m.to_ascii_lowercase();
    if lower.contains("already exists") {
        "42P07"
    } else if lower.contains("divide by zero") || lower.contains("division by zero") {
        "22012"
    } else if lower.contains("not found") && lower.contains("table") {
        "42P01"
    } else if lower.contains("overflow") {
        "22003"
    } else if lower.contains("cannot cast") || lower.contains("invalid") && lower.contains("syntax")
    {
        "22P02"
    } else if lower.contains("not supported") || lower.contains("unsupported") {
        "0A000"
    } else {
        "XX000"
    }
}

/// DataFusion prefixes messages with the error kind; clients want the cause.
fn strip_prefix(m: &str) -> String {
    m.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: QueryError) -> String {
        error_info(&e).code
    }

    #[test]
    fn datafusion_errors_map_to_postgres_codes() {
        let plan = |m: &str| QueryError::DataFusion(DataFusionError::Plan(m.into()));
        assert_eq!(
            code(plan("table 'tidebase.public.nope' not found")),
            "42P01"
        );
        assert_eq!(
            code(plan("Invalid function 'nope'.\nDid you mean 'now'?")),
            "42883"
        );
        assert_eq!(
            code(QueryError::DataFusion(DataFusionError::Execution(
                "Table 't' already exists".into()
            ))),
            "42P07"
        );
        assert_eq!(
            code(QueryError::DataFusion(DataFusionError::ArrowError(
                Box::new(ArrowError::DivideByZero),
                None
            ))),
            "22012"
        );
        assert_eq!(
            code(QueryError::DataFusion(DataFusionError::ArrowError(
                Box::new(ArrowError::CastError(
                    "Cannot cast string 'x' to value of Int32 type".into()
                )),
                None
            ))),
            "22P02"
        );
        assert_eq!(
            code(QueryError::DataFusion(DataFusionError::NotImplemented(
                "x".into()
            ))),
            "0A000"
        );
        let wrapped = DataFusionError::Context(
            "while planning".into(),
            Box::new(DataFusionError::Plan("table 't' not found".into())),
        );
        assert_eq!(code(QueryError::DataFusion(wrapped)), "42P01");
    }
}
