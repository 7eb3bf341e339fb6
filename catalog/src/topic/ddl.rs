//! `CREATE TOPIC` and `ALTER TOPIC ... SET (...)` options.
//!
//! `CREATE TOPIC name [(column type, ...)] [WITH (PARTITIONS = n, KEY = column,
//! RETENTION = '7 days', RETENTION_BYTES = '1GB')]` is parsed as the CREATE
//! TABLE it resembles.

use datafusion::sql::sqlparser::ast::{CreateTable, CreateTableOptions, SqlOption};
use tidebase_storage::log::TopicConfig;

use super::TopicDef;
use crate::table::ddl::{column_type, option_text, parse_size, parse_ttl};
use crate::CatalogError;

/// Partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// A topic's definition and settings from a parsed `CREATE TOPIC`.
pub fn topic_def(ct: &CreateTable) -> Result<(TopicDef, TopicConfig), CatalogError> {
    let name = ct
        .name
        .0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.clone())
        .ok_or_else(|| CatalogError::Unsupported("this topic name".into()))?;
    let mut def = TopicDef {
        name,
        columns: Vec::new(),
        key: None,
    };
    for c in &ct.columns {
        let col = c.name.value.clone();
        if def.columns.iter().any(|(n, _)| *n == col) {
            return Err(CatalogError::DuplicateColumn(col));
        }
        if col.starts_with('_') && super::META_COLUMNS.contains(&col.as_str()) {
            return Err(CatalogError::BadOptionValue {
                name: "column name".into(),
                value: format!("{col} (reserved for every topic)"),
            });
        }
        def.columns
            .push((col, column_type(&c.data_type.to_string())?));
    }
    let mut config = TopicConfig::default();
    let options: Vec<SqlOption> = match &ct.table_options {
        CreateTableOptions::With(o) | CreateTableOptions::Options(o) => o.clone(),
        _ => Vec::new(),
    };
    for o in &options {
        match o {
            SqlOption::KeyValue { key, value } => {
                set_option(&mut def, &mut config, &key.value, &option_text(value), true)?
            }
            other => return Err(CatalogError::UnknownOption(other.to_string())),
        }
    }
    Ok((def, config))
}

/// Sets one topic option. `KEY` only at creation.
pub fn set_option(
    def: &mut TopicDef,
    config: &mut TopicConfig,
    key: &str,
    value: &str,
    creating: bool,
) -> Result<(), CatalogError> {
    let bad = || CatalogError::BadOptionValue {
        name: key.to_string(),
        value: value.to_string(),
    };
    let none =
        |v: &str| v.eq_ignore_ascii_case("none") || v.eq_ignore_ascii_case("forever") || v == "-1";
    match key.to_ascii_uppercase().as_str() {
        "PARTITIONS" => {
            config.partitions = value
                .parse::<u32>()
                .ok()
                .filter(|p| (1..=MAX_PARTITIONS).contains(p))
                .ok_or_else(bad)?
        }
        "KEY" if creating => {
            if !def.columns.iter().any(|(c, _)| c == value) {
                return Err(CatalogError::ColumnNotFound(value.to_string()));
            }
            def.key = Some(value.to_string());
        }
        "RETENTION" | "RETENTION_MS" => {
            config.retention_ms = if none(value) {
                None
            } else {
                Some(
                    parse_ttl(value)
                        .filter(|t| *t > 0)
                        .and_then(|t| i64::try_from(t).ok())
                        .ok_or_else(bad)?,
                )
            }
        }
        "RETENTION_BYTES" => {
            config.retention_bytes = if none(value) {
                None
            } else {
                Some(parse_size(value).filter(|b| *b > 0).ok_or_else(bad)?)
            }
        }
        _ => return Err(CatalogError::UnknownOption(key.to_string())),
    }
    Ok(())
}
