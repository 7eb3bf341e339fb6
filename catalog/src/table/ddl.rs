//! CREATE TABLE and ALTER TABLE for region tables: columns with families
//! (`family.column`), the primary key as row key, and storage options.

use datafusion::sql::sqlparser::ast::{
    ColumnOption, CreateTable, CreateTableOptions, Expr, SqlOption, TableConstraint, Value,
};
use tidebase_storage::{BloomKind, Compression, FamilyOptions};

use super::def::{ColumnDef, SqlType, TableDef, DEFAULT_FAMILY};
use crate::CatalogError;

/// Splits `family.column` (as written in DDL) into its parts; a name
/// without a dot is in the default family.
pub fn split_family(name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((f, c)) if !f.is_empty() && !c.is_empty() => (f.to_string(), c.to_string()),
        _ => (DEFAULT_FAMILY.to_string(), name.to_string()),
    }
}

pub(crate) fn column_type(ty: &str) -> Result<SqlType, CatalogError> {
    SqlType::parse(ty).ok_or_else(|| CatalogError::UnsupportedType(ty.to_lowercase()))
}

/// A table definition from a parsed CREATE TABLE.
pub fn table_def(ct: &CreateTable) -> Result<TableDef, CatalogError> {
    let name = ct
        .name
        .0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.clone())
        .ok_or_else(|| CatalogError::Unsupported("this table name".into()))?;
    let mut def = TableDef {
        name,
        columns: Vec::new(),
        key: Vec::new(),
        families: vec![(DEFAULT_FAMILY.to_string(), FamilyOptions::default())],
        split_size: None,
    };
    let mut key_names: Vec<String> = Vec::new();
    for c in &ct.columns {
        let (family, col) = split_family(&c.name.value);
        if def.column(&col).is_some() {
            return Err(CatalogError::DuplicateColumn(col));
        }
        for o in &c.options {
            if let ColumnOption::PrimaryKey(_) = o.option {
                key_names.push(col.clone());
            }
        }
        if !def.families.iter().any(|(f, _)| *f == family) {
            def.families
                .push((family.clone(), FamilyOptions::default()));
        }
        def.columns.push(ColumnDef {
            name: col,
            family,
            ty: column_type(&c.data_type.to_string())?,
        });
    }
    for c in &ct.constraints {
        if let TableConstraint::PrimaryKey(pk) = c {
            if !key_names.is_empty() {
                return Err(CatalogError::Unsupported(
                    "more than one primary key".into(),
                ));
            }
            for ic in &pk.columns {
                match &ic.column.expr {
                    Expr::Identifier(i) => key_names.push(split_family(&i.value).1),
                    other => {
                        return Err(CatalogError::Unsupported(format!(
                            "primary key expression {other}"
                        )))
                    }
                }
            }
        }
    }
    for k in key_names {
        let i = def
            .column(&k)
            .ok_or_else(|| CatalogError::ColumnNotFound(k.clone()))?;
        def.key.push(i);
        // Key columns live in the row key, not in a family.
        def.columns[i].family = String::new();
    }
    // Families that only held key columns are not needed.
    let used: Vec<String> = def.columns.iter().map(|c| c.family.clone()).collect();
    def.families
        .retain(|(f, _)| f == DEFAULT_FAMILY || used.contains(f));
    let options = match &ct.table_options {
        CreateTableOptions::With(o) | CreateTableOptions::Options(o) => o.clone(),
        CreateTableOptions::None => Vec::new(),
        _ => return Err(CatalogError::Unsupported("these table options".into())),
    };
    apply_options(&mut def, &options)?;
    Ok(def)
}

pub(crate) fn option_text(value: &Expr) -> String {
    match value {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            Value::Number(n, _) => n.clone(),
            other => other.to_string(),
        },
        Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

/// Bytes from `'256MB'`, `'64 KiB'`, `1048576`.
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Milliseconds from `'30 days'`, `'12 hours'`, `'90 s'` or seconds as a number
/// (HBase's TTL unit).
pub(crate) fn parse_ttl(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs: u64 = match unit.trim().to_ascii_lowercase().trim_end_matches('s') {
        "" | "second" | "sec" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        "d" | "day" => 86_400,
        "w" | "week" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(secs)?.checked_mul(1000)
}

/// Applies `WITH (...)` options: table-wide ones to every family, then
/// `family.OPTION` ones to that family.
pub fn apply_options(def: &mut TableDef, options: &[SqlOption]) -> Result<(), CatalogError> {
    let mut pairs = Vec::new();
    for o in options {
        match o {
            SqlOption::KeyValue { key, value } => {
                pairs.push((key.value.clone(), option_text(value)))
            }
            other => return Err(CatalogError::UnknownOption(other.to_string())),
        }
    }
    set_options(def, pairs)
}

/// Sets several options: table-wide ones first, so per-family options
/// override them.
pub fn set_options(
    def: &mut TableDef,
    mut pairs: Vec<(String, String)>,
) -> Result<(), CatalogError> {
    pairs.sort_by_key(|(k, _)| k.contains('.'));
    for (key, value) in pairs {
        set_option(def, &key, &value)?;
    }
    Ok(())
}

/// Sets one option (`VERSIONS`, `TTL`, `SPLIT_SIZE`, `BLOOMFILTER`,
/// `COMPRESSION`, `BLOCKSIZE`; `family.OPTION` for one family).
pub fn set_option(def: &mut TableDef, key: &str, value: &str) -> Result<(), CatalogError> {
    let (family, name) = match key.split_once('.') {
        Some((f, n)) => (Some(f.to_string()), n.to_ascii_uppercase()),
        None => (None, key.to_ascii_uppercase()),
    };
    let bad = || CatalogError::BadOptionValue {
        name: key.to_string(),
        value: value.to_string(),
    };
    if name == "SPLIT_SIZE" {
        if family.is_some() {
            return Err(CatalogError::UnknownOption(key.to_string()));
        }
        def.split_size = Some(parse_size(value).filter(|n| *n > 0).ok_or_else(bad)?);
        return Ok(());
    }
    let apply = |o: &mut FamilyOptions| -> Result<(), CatalogError> {
        match name.as_str() {
            "VERSIONS" => {
                o.max_versions = value
                    .parse::<u32>()
                    .ok()
                    .filter(|v| *v >= 1)
                    .ok_or_else(bad)?
            }
            "TTL" => {
                o.ttl_ms = if value.eq_ignore_ascii_case("forever") {
                    None
                } else {
                    Some(parse_ttl(value).filter(|t| *t > 0).ok_or_else(bad)?)
                }
            }
            "BLOOMFILTER" => {
                o.bloom = BloomKind::parse(&value.to_ascii_lowercase()).ok_or_else(bad)?
            }
            "COMPRESSION" => {
                o.compression = Compression::parse(&value.to_ascii_lowercase()).ok_or_else(bad)?
            }
            "BLOCKSIZE" => {
                o.block_size = parse_size(value)
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|n| *n >= 1024)
                    .ok_or_else(bad)?
            }
            _ => return Err(CatalogError::UnknownOption(key.to_string())),
        }
        Ok(())
    };
    match family {
        None => {
            for (_, o) in &mut def.families {
                apply(o)?;
            }
        }
        Some(f) => {
            let o = def
                .families
                .iter_mut()
                .find(|(n, _)| *n == f)
                .map(|(_, o)| o)
                .ok_or(CatalogError::FamilyNotFound(f))?;
            apply(o)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ttls() {
        assert_eq!(parse_size("256MB"), Some(256 << 20));
        assert_eq!(parse_size("64 KiB"), Some(64 << 10));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("1 parsec"), None);
        assert_eq!(parse_ttl("30 days"), Some(30 * 86_400_000));
        assert_eq!(parse_ttl("90"), Some(90_000));
        assert_eq!(parse_ttl("2 hours"), Some(7_200_000));
        assert_eq!(parse_ttl("soon"), None);
    }
}
