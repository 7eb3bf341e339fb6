//! `information_schema` as PostgreSQL names things.
//!
//! DataFusion's `information_schema` describes columns with Arrow type
//! names (`Int32`, `Utf8`) and has no constraints. This schema serves its
//! relations, except that `columns` is computed here with PostgreSQL's type
//! names (`integer`, `text`, `udt_name` `int4`, ...) and each column's
//! comment (its family, for region tables: `row key`, `family personal`),
//! and `table_constraints` and `key_column_usage` list the primary keys.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringBuilder, UInt64Builder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::information_schema::InformationSchemaProvider;
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider};
use datafusion::datasource::TableProvider;
use datafusion::error::Result;

use crate::error::CatalogError;
use crate::pg_overlay::{primary_key_name, user_tables, UserTable};
use crate::view::{BatchView, View};

/// The schema's name.
pub const NAME: &str = "information_schema";

/// Registers the schema in `database`, over every catalog of `catalogs`.
/// The session must not enable DataFusion's own `information_schema`,
/// which would shadow this one.
pub(crate) fn install(
    catalogs: Arc<dyn CatalogProviderList>,
    database: &dyn CatalogProvider,
) -> Result<(), CatalogError> {
    database.register_schema(
        NAME,
        Arc::new(InformationSchema {
            inner: InformationSchemaProvider::new(catalogs.clone()),
            catalogs,
        }),
    )?;
    Ok(())
}

#[derive(Debug)]
struct InformationSchema {
    inner: InformationSchemaProvider,
    catalogs: Arc<dyn CatalogProviderList>,
}

/// The relations computed here rather than by DataFusion.
const OWN: &[&str] = &["columns", "table_constraints", "key_column_usage"];

#[async_trait]
impl SchemaProvider for InformationSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.inner.table_names();
        for own in OWN {
            if !names.iter().any(|n| n == own) {
                names.push(own.to_string());
            }
        }
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let kind = match name.to_ascii_lowercase().as_str() {
            "columns" => Relation::Columns,
            "table_constraints" => Relation::TableConstraints,
            "key_column_usage" => Relation::KeyColumnUsage,
            _ => return self.inner.table(name).await,
        };
        Ok(Some(Arc::new(View(Computed {
            kind,
            catalogs: self.catalogs.clone(),
        }))))
    }

    fn table_exist(&self, name: &str) -> bool {
        OWN.contains(&name.to_ascii_lowercase().as_str()) || self.inner.table_exist(name)
    }
}

#[derive(Debug, Clone, Copy)]
enum Relation {
    Columns,
    TableConstraints,
    KeyColumnUsage,
}

#[derive(Debug)]
struct Computed {
    kind: Relation,
    catalogs: Arc<dyn CatalogProviderList>,
}

fn text(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn number(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::UInt64, nullable)
}

fn columns_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text("table_catalog", false),
        text("table_schema", false),
        text("table_name", false),
        text("column_name", false),
        number("ordinal_position", false),
        text("column_default", true),
        text("is_nullable", false),
        text("data_type", false),
        number("character_maximum_length", true),
        number("character_octet_length", true),
        number("numeric_precision", true),
        number("numeric_precision_radix", true),
        number("numeric_scale", true),
        number("datetime_precision", true),
        text("interval_type", true),
        text("udt_catalog", false),
        text("udt_schema", false),
        text("udt_name", false),
        text("column_comment", true),
    ]))
}

fn table_constraints_schema() -> SchemaRef {
    let mut fields = constraint_fields();
    fields.extend([
        text("constraint_type", false),
        text("is_deferrable", false),
        text("initially_deferred", false),
        text("enforced", false),
        text("nulls_distinct", true),
    ]);
    Arc::new(Schema::new(fields))
}

fn key_column_usage_schema() -> SchemaRef {
    let mut fields = constraint_fields();
    fields.extend([
        text("column_name", false),
        number("ordinal_position", false),
        number("position_in_unique_constraint", true),
    ]);
    Arc::new(Schema::new(fields))
}

/// How PostgreSQL's `information_schema.columns` describes a column of
/// Arrow type `ty`.
struct PgColumnType {
    data_type: String,
    udt_name: &'static str,
    /// Precision, radix and scale of numeric types.
    numeric: Option<(u64, u64, Option<u64>)>,
    datetime_precision: Option<u64>,
}

fn pg_column_type(ty: &DataType) -> PgColumnType {
    let plain = |data_type: &str, udt_name| PgColumnType {
        data_type: data_type.to_string(),
        udt_name,
        numeric: None,
        datetime_precision: None,
    };
    let integer = |data_type: &str, udt_name, bits| PgColumnType {
        numeric: Some((bits, 2, Some(0))),
        ..plain(data_type, udt_name)
    };
    let float = |data_type: &str, udt_name, bits| PgColumnType {
        numeric: Some((bits, 2, None)),
        ..plain(data_type, udt_name)
    };
    let timestamp = |data_type: &str, udt_name, unit: &TimeUnit| PgColumnType {
        datetime_precision: Some(match unit {
            TimeUnit::Second => 0,
            TimeUnit::Millisecond => 3,
            TimeUnit::Microsecond | TimeUnit::Nanosecond => 6,
        }),
        ..plain(data_type, udt_name)
    };
    match ty {
        DataType::Boolean => plain("boolean", "bool"),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => integer("smallint", "int2", 16),
        DataType::Int32 | DataType::UInt16 => integer("integer", "int4", 32),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => integer("bigint", "int8", 64),
        DataType::Float16 | DataType::Float32 => float("real", "float4", 24),
        DataType::Float64 => float("double precision", "float8", 53),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => PgColumnType {
            numeric: Some((u64::from(*p), 10, u64::try_from(*s).ok())),
            ..plain("numeric", "numeric")
        },
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => plain("text", "text"),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => plain("bytea", "bytea"),
        DataType::Date32 | DataType::Date64 => PgColumnType {
            datetime_precision: Some(0),
            ..plain("date", "date")
        },
        DataType::Time32(unit) | DataType::Time64(unit) => {
            timestamp("time without time zone", "time", unit)
        }
        DataType::Timestamp(unit, None) => {
            timestamp("timestamp without time zone", "timestamp", unit)
        }
        DataType::Timestamp(unit, Some(_)) => {
            timestamp("timestamp with time zone", "timestamptz", unit)
        }
        DataType::Interval(_) | DataType::Duration(_) => PgColumnType {
            datetime_precision: Some(6),
            ..plain("interval", "interval")
        },
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) => {
            plain("ARRAY", "_text")
        }
        DataType::Dictionary(_, value) => pg_column_type(value),
        _ => plain("USER-DEFINED", "unknown"),
    }
}

fn finish(schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// The columns `table_constraints` and `key_column_usage` begin with: the
/// constraint's name and its table's.
fn constraint_fields() -> Vec<Field> {
    vec![
        text("constraint_catalog", false),
        text("constraint_schema", false),
        text("constraint_name", false),
        text("table_catalog", false),
        text("table_schema", false),
        text("table_name", false),
    ]
}

/// The values of [`constraint_fields`] for the primary key of `t`, whose
/// name is `key`.
fn constraint_values<'a>(t: &'a UserTable, key: &'a str) -> [&'a str; 6] {
    let db = crate::DATABASE_NAME;
    [db, &t.schema, key, db, &t.schema, &t.name]
}

impl Computed {
    async fn columns(&self) -> Result<RecordBatch> {
        let mut text_columns: Vec<StringBuilder> = (0..19).map(|_| StringBuilder::new()).collect();
        let mut numbers: Vec<UInt64Builder> = (0..19).map(|_| UInt64Builder::new()).collect();
        // Every schema but this one, pg_catalog included, as DataFusion's
        // relation lists them; user tables carry their comments.
        let users = user_tables(self.catalogs.as_ref()).await?;
        let mut tables: Vec<(String, String, SchemaRef, Vec<String>)> = Vec::new();
        if let Some(db) = self.catalogs.catalog(crate::DATABASE_NAME) {
            if let Some(pg) = db.schema("pg_catalog") {
                for name in pg.table_names() {
                    if let Some(t) = pg.table(&name).await? {
                        tables.push(("pg_catalog".into(), name, t.schema(), Vec::new()));
                    }
                }
            }
        }
        for t in users {
            tables.push((t.schema, t.name, t.table.schema(), t.descriptions));
        }
        for (schema, table, fields, comments) in &tables {
            for (i, f) in fields.fields().iter().enumerate() {
                let ty = pg_column_type(f.data_type());
                let (precision, radix, scale) = match ty.numeric {
                    Some((p, r, s)) => (Some(p), Some(r), s),
                    None => (None, None, None),
                };
                let texts: [(usize, Option<&str>); 12] = [
                    (0, Some(crate::DATABASE_NAME)),
                    (1, Some(schema)),
                    (2, Some(table)),
                    (3, Some(f.name())),
                    (5, None),
                    (6, Some(if f.is_nullable() { "YES" } else { "NO" })),
                    (7, Some(&ty.data_type)),
                    (14, None),
                    (15, Some(crate::DATABASE_NAME)),
                    (16, Some("pg_catalog")),
                    (17, Some(ty.udt_name)),
                    (18, comments.get(i).map(String::as_str)),
                ];
                for (c, v) in texts {
                    text_columns[c].append_option(v);
                }
                let values: [(usize, Option<u64>); 7] = [
                    (4, Some(i as u64 + 1)),
                    (8, None),
                    (9, None),
                    (10, precision),
                    (11, radix),
                    (12, scale),
                    (13, ty.datetime_precision),
                ];
                for (c, v) in values {
                    numbers[c].append_option(v);
                }
            }
        }
        let schema = columns_schema();
        let columns = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| -> ArrayRef {
                match f.data_type() {
                    DataType::UInt64 => Arc::new(numbers[i].finish()),
                    _ => Arc::new(text_columns[i].finish()),
                }
            })
            .collect();
        finish(schema, columns)
    }

    async fn table_constraints(&self) -> Result<RecordBatch> {
        let schema = table_constraints_schema();
        let mut builders: Vec<StringBuilder> = (0..schema.fields().len())
            .map(|_| StringBuilder::new())
            .collect();
        for t in user_tables(self.catalogs.as_ref()).await? {
            if t.key.is_empty() {
                continue;
            }
            let name = primary_key_name(&t.name);
            let row = constraint_values(&t, &name).map(Some).into_iter().chain([
                Some("PRIMARY KEY"),
                Some("NO"),
                Some("NO"),
                Some("YES"),
                None,
            ]);
            for (b, v) in builders.iter_mut().zip(row) {
                b.append_option(v);
            }
        }
        let columns = builders
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        finish(schema, columns)
    }

    async fn key_column_usage(&self) -> Result<RecordBatch> {
        let schema = key_column_usage_schema();
        let mut texts: Vec<StringBuilder> = (0..7).map(|_| StringBuilder::new()).collect();
        let (mut position, mut unique_position) = (UInt64Builder::new(), UInt64Builder::new());
        for t in user_tables(self.catalogs.as_ref()).await? {
            let name = primary_key_name(&t.name);
            let fields = t.table.schema();
            for (k, &c) in t.key.iter().enumerate() {
                let row = constraint_values(&t, &name)
                    .into_iter()
                    .chain([fields.field(c).name().as_str()]);
                for (b, v) in texts.iter_mut().zip(row) {
                    b.append_value(v);
                }
                position.append_value(k as u64 + 1);
                unique_position.append_null();
            }
        }
        let mut columns: Vec<ArrayRef> = texts
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        columns.push(Arc::new(position.finish()));
        columns.push(Arc::new(unique_position.finish()));
        finish(schema, columns)
    }
}

#[async_trait]
impl BatchView for Computed {
    fn view_schema(&self) -> SchemaRef {
        match self.kind {
            Relation::Columns => columns_schema(),
            Relation::TableConstraints => table_constraints_schema(),
            Relation::KeyColumnUsage => key_column_usage_schema(),
        }
    }

    async fn batch(&self) -> Result<RecordBatch> {
        match self.kind {
            Relation::Columns => self.columns().await,
            Relation::TableConstraints => self.table_constraints().await,
            Relation::KeyColumnUsage => self.key_column_usage().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_types_get_postgresql_names() {
        let name = |t: DataType| {
            let c = pg_column_type(&t);
            (c.data_type, c.udt_name)
        };
        assert_eq!(name(DataType::Int32), ("integer".into(), "int4"));
        assert_eq!(name(DataType::Int64), ("bigint".into(), "int8"));
        assert_eq!(
            name(DataType::Float64),
            ("double precision".into(), "float8")
        );
        assert_eq!(name(DataType::Utf8), ("text".into(), "text"));
        assert_eq!(name(DataType::Binary), ("bytea".into(), "bytea"));
        assert_eq!(
            name(DataType::Timestamp(TimeUnit::Microsecond, None)),
            ("timestamp without time zone".into(), "timestamp")
        );
        assert_eq!(
            pg_column_type(&DataType::Int16).numeric,
            Some((16, 2, Some(0)))
        );
        assert_eq!(
            pg_column_type(&DataType::Float64).numeric,
            Some((53, 2, None))
        );
    }
}
