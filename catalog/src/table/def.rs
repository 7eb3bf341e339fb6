//! A table's SQL definition: columns, families, key, options; and its one
//! byte encoding, stored with the table in the engine's manifest.

use std::fmt::Write as _;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use tidebase_storage::{BloomKind, Compression, FamilyOptions};

use super::codec::arrow_type;
use crate::CatalogError;

/// The family of a column declared without one.
pub const DEFAULT_FAMILY: &str = "0";

/// The column types a region table stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Text,
    Bytea,
    Date,
    Timestamp,
}

impl SqlType {
    pub fn name(self) -> &'static str {
        match self {
            SqlType::Bool => "boolean",
            SqlType::Int2 => "smallint",
            SqlType::Int4 => "integer",
            SqlType::Int8 => "bigint",
            SqlType::Float4 => "real",
            SqlType::Float8 => "double precision",
            SqlType::Text => "text",
            SqlType::Bytea => "bytea",
            SqlType::Date => "date",
            SqlType::Timestamp => "timestamp",
        }
    }

    /// The type of a SQL type name as written in DDL (lower case).
    pub fn parse(name: &str) -> Option<SqlType> {
        let n = name.trim().to_ascii_lowercase();
        let base = n.split('(').next().unwrap_or("").trim();
        Some(match base {
            "bool" | "boolean" => SqlType::Bool,
            "int2" | "smallint" => SqlType::Int2,
            "int" | "int4" | "integer" => SqlType::Int4,
            "int8" | "bigint" => SqlType::Int8,
            "float4" | "real" => SqlType::Float4,
            "float8" | "double precision" | "double" | "float" => SqlType::Float8,
            "text" | "varchar" | "character varying" | "string" | "char" | "character"
            | "bpchar" => SqlType::Text,
            "bytea" => SqlType::Bytea,
            "date" => SqlType::Date,
            "timestamp" | "timestamp without time zone" => SqlType::Timestamp,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    /// Empty for key columns (they live in the row key, not in a family).
    pub family: String,
    pub ty: SqlType,
}

/// A table as SQL sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDef {
    pub name: String,
    pub columns: Vec<ColumnDef>,
    /// Indexes of the primary-key columns, in key order. Empty: a hidden,
    /// increasing row key.
    pub key: Vec<usize>,
    /// Every family with its options, the default family first.
    pub families: Vec<(String, FamilyOptions)>,
    /// Bytes past which a region splits.
    pub split_size: Option<u64>,
}

impl TableDef {
    pub fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .enumerate()
                .map(|(i, c)| Field::new(&c.name, arrow_type(c.ty), !self.key.contains(&i)))
                .collect::<Vec<_>>(),
        ))
    }

    /// The schema with every column nullable, for batches whose key
    /// columns are checked while they are written.
    pub fn schema_nullable(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, arrow_type(c.ty), true))
                .collect::<Vec<_>>(),
        ))
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn family_options(&self, family: &str) -> Option<&FamilyOptions> {
        self.families
            .iter()
            .find(|(f, _)| f == family)
            .map(|(_, o)| o)
    }

    /// The one encoding of a definition (text, one record per line, names
    /// in hex).
    pub fn encode(&self) -> Vec<u8> {
        let hex = |s: &str| -> String {
            if s.is_empty() {
                "-".into()
            } else {
                super::codec::hex(s.as_bytes())
            }
        };
        let mut s = String::from("tidebase-table 1\n");
        let _ = writeln!(s, "name {}", hex(&self.name));
        for c in &self.columns {
            let _ = writeln!(
                s,
                "column {} {} {}",
                hex(&c.name),
                hex(&c.family),
                hex(c.ty.name())
            );
        }
        let key: Vec<String> = self.key.iter().map(|k| k.to_string()).collect();
        let _ = writeln!(
            s,
            "key {}",
            if key.is_empty() {
                "-".into()
            } else {
                key.join(",")
            }
        );
        for (f, o) in &self.families {
            let _ = writeln!(
                s,
                "family {} {} {} {} {} {}",
                hex(f),
                o.max_versions,
                o.ttl_ms.map_or("-".to_string(), |t| t.to_string()),
                o.bloom.name(),
                o.block_size,
                o.compression.name()
            );
        }
        if let Some(sz) = self.split_size {
            let _ = writeln!(s, "split_size {sz}");
        }
        s.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<TableDef, CatalogError> {
        let bad = |what: &str| CatalogError::Corrupt(format!("table definition: {what}"));
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let unhex = |s: &str| -> Result<String, CatalogError> {
            if s == "-" {
                return Ok(String::new());
            }
            if !s.len().is_multiple_of(2) {
                return Err(bad("odd hex"));
            }
            let b = super::codec::unhex(s).ok_or_else(|| bad("bad hex"))?;
            String::from_utf8(b).map_err(|_| bad("name not UTF-8"))
        };
        let mut lines = text.lines();
        if lines.next() != Some("tidebase-table 1") {
            return Err(bad("unknown version"));
        }
        let mut def = TableDef {
            name: String::new(),
            columns: Vec::new(),
            key: Vec::new(),
            families: Vec::new(),
            split_size: None,
        };
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            let field = |i: usize| f.get(i).copied().ok_or_else(|| bad("missing field"));
            let num = |i: usize| -> Result<u64, CatalogError> {
                field(i)?.parse().map_err(|_| bad("bad number"))
            };
            match f[0] {
                "name" => def.name = unhex(field(1)?)?,
                "column" => def.columns.push(ColumnDef {
                    name: unhex(field(1)?)?,
                    family: unhex(field(2)?)?,
                    ty: SqlType::parse(&unhex(field(3)?)?).ok_or_else(|| bad("unknown type"))?,
                }),
                "key" => {
                    if field(1)? != "-" {
                        for k in field(1)?.split(',') {
                            let k: usize = k.parse().map_err(|_| bad("bad key column"))?;
                            if k >= def.columns.len() {
                                return Err(bad("key column out of range"));
                            }
                            def.key.push(k);
                        }
                    }
                }
                "family" => def.families.push((
                    unhex(field(1)?)?,
                    FamilyOptions {
                        max_versions: u32::try_from(num(2)?).map_err(|_| bad("versions"))?,
                        ttl_ms: match field(3)? {
                            "-" => None,
                            _ => Some(num(3)?),
                        },
                        bloom: BloomKind::parse(field(4)?).ok_or_else(|| bad("bloom"))?,
                        block_size: usize::try_from(num(5)?).map_err(|_| bad("block size"))?,
                        compression: Compression::parse(field(6)?)
                            .ok_or_else(|| bad("compression"))?,
                    },
                )),
                "split_size" => def.split_size = Some(num(1)?),
                "" => {}
                _ => return Err(bad("unknown record")),
            }
        }
        Ok(def)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_round_trip_and_garbage_is_an_error() {
        let def = TableDef {
            name: "emp loyees".into(),
            columns: vec![
                ColumnDef {
                    name: "id".into(),
                    family: String::new(),
                    ty: SqlType::Int4,
                },
                ColumnDef {
                    name: "name".into(),
                    family: "personal".into(),
                    ty: SqlType::Text,
                },
            ],
            key: vec![0],
            families: vec![
                (DEFAULT_FAMILY.into(), FamilyOptions::default()),
                (
                    "personal".into(),
                    FamilyOptions {
                        max_versions: 5,
                        ttl_ms: Some(1000),
                        ..Default::default()
                    },
                ),
            ],
            split_size: Some(1 << 20),
        };
        assert_eq!(TableDef::decode(&def.encode()).unwrap(), def);
        assert!(TableDef::decode(b"tidebase-table 1\nkey 7\n").is_err());
        assert!(TableDef::decode(b"\xff").is_err());
        assert!(TableDef::decode(b"tidebase-table 1\ncolumn zz").is_err());
    }
}
