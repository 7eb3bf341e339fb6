//! `pg_catalog` as clients need it.
//!
//! `datafusion-pg-catalog` serves most of `pg_catalog`, computing `pg_class`,
//! `pg_attribute` and `pg_namespace` from the live catalog tree. Its
//! `pg_constraint`, `pg_index` and `pg_description` are static, so user
//! tables would show no primary key and no column comments. This overlay
//! answers those relations from the tables' declared constraints and column
//! families (each column of a region table is described as `row key` or
//! `family <name>`), with the OIDs that `pg_class` hands out, and passes
//! every other name through.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, SchemaRef};
use datafusion::catalog::{CatalogProvider, MemTable, SchemaProvider};
use datafusion::common::{Constraint, ScalarValue};
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::SessionContext;

use crate::error::CatalogError;
use crate::view::View;

/// Replaces the `pg_catalog` schema of `database` with the overlay.
pub(crate) fn install(
    ctx: &SessionContext,
    database: &dyn CatalogProvider,
) -> Result<(), CatalogError> {
    let inner = database
        .schema("pg_catalog")
        .ok_or_else(|| DataFusionError::Internal("pg_catalog was not registered".to_string()))?;
    let overlay = PgCatalogOverlay {
        inner,
        catalogs: ctx.state().catalog_list().clone(),
    };
    database.register_schema("pg_catalog", Arc::new(overlay))?;
    Ok(())
}

/// A table of a user schema (not `pg_catalog` or `information_schema`),
/// with what the catalogs say about it beyond its columns.
pub(crate) struct UserTable {
    pub schema: String,
    pub name: String,
    pub table: Arc<dyn TableProvider>,
    /// The primary key's columns (0-based), in key order; empty without one.
    pub key: Vec<usize>,
    /// Each column's comment (`row key`, `family personal`), for region
    /// tables; empty for other tables.
    pub descriptions: Vec<String>,
}

/// Every table of the user schemas of Tidebase's database.
pub(crate) async fn user_tables(
    catalogs: &dyn datafusion::catalog::CatalogProviderList,
) -> Result<Vec<UserTable>> {
    let mut out = Vec::new();
    let Some(db) = catalogs.catalog(crate::DATABASE_NAME) else {
        return Ok(out);
    };
    for schema_name in db.schema_names() {
        if schema_name == "pg_catalog" || schema_name == crate::information_schema::NAME {
            continue;
        }
        let Some(schema) = db.schema(&schema_name) else {
            continue;
        };
        for table_name in schema.table_names() {
            let Some(table) = schema.table(&table_name).await? else {
                continue;
            };
            let descriptions = table
                .downcast_ref::<crate::table::RegionTable>()
                .map(|t| {
                    t.def
                        .columns
                        .iter()
                        .map(|c| match c.family.as_str() {
                            "" => "row key".to_string(),
                            f => format!("family {f}"),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let key = table
                .constraints()
                .and_then(|cs| {
                    cs.iter().find_map(|c| match c {
                        Constraint::PrimaryKey(cols) => Some(cols.clone()),
                        _ => None,
                    })
                })
                .unwrap_or_default();
            out.push(UserTable {
                schema: schema_name.clone(),
                name: table_name,
                table,
                key,
                descriptions,
            });
        }
    }
    Ok(out)
}

#[derive(Debug, Clone)]
struct PgCatalogOverlay {
    inner: Arc<dyn SchemaProvider>,
    catalogs: Arc<dyn datafusion::catalog::CatalogProviderList>,
}

/// One user table with a primary key or column comments, as `pg_class`
/// numbers it.
struct KeyedTable {
    schema: String,
    name: String,
    /// The table's OID and its namespace's, from `pg_class`.
    oid: i32,
    namespace: i32,
    /// 1-based column numbers, as in `pg_attribute.attnum`.
    key_columns: Vec<i16>,
    /// Each column's comment (`row key`, `family personal`), for region
    /// tables; by column number - 1.
    descriptions: Vec<String>,
    /// Column names, by column number - 1.
    column_names: Vec<String>,
}

/// The name of `table`'s primary-key constraint and index, as PostgreSQL
/// names them.
pub(crate) fn primary_key_name(table: &str) -> String {
    format!("{table}_pkey")
}

impl KeyedTable {
    /// The name of the primary key's constraint and index.
    fn index_name(&self) -> String {
        primary_key_name(&self.name)
    }
}

/// The tables that declare a primary key.
fn with_keys(tables: &[KeyedTable]) -> impl Iterator<Item = &KeyedTable> {
    tables.iter().filter(|t| !t.key_columns.is_empty())
}

#[async_trait]
impl SchemaProvider for PgCatalogOverlay {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let lower = name.to_ascii_lowercase();
        let kind = match lower.as_str() {
            "pg_constraint" => KeyRelation::Constraint,
            "pg_index" => KeyRelation::Index,
            "pg_description" => KeyRelation::Description,
            "pg_class" => KeyRelation::Class,
            INDEX_DEFS => {
                return Ok(Some(Arc::new(View(KeyTable {
                    kind: KeyRelation::IndexDefs,
                    base: Arc::new(MemTable::try_new(index_defs_schema(), vec![vec![]])?),
                    overlay: self.clone(),
                }))))
            }
            _ => return self.inner.table(name).await,
        };
        let Some(base) = self.inner.table(&lower).await? else {
            return Ok(None);
        };
        // Rows are computed when the relation is scanned, not here: `pg_class`
        // resolves every table's schema (this one included) while holding its
        // OID cache, and computing rows needs that cache.
        Ok(Some(Arc::new(View(KeyTable {
            kind,
            base,
            overlay: self.clone(),
        }))))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

impl PgCatalogOverlay {
    /// User tables with a primary key or column comments, with the OIDs
    /// `pg_class` gives them (from `class`, its rows when the caller has
    /// read them already). Tables `pg_class` does not list are left out.
    async fn keyed_tables(&self, class: Option<&[RecordBatch]>) -> Result<Vec<KeyedTable>> {
        let oids = self.relation_oids(class).await?;
        let mut out = Vec::new();
        for t in user_tables(self.catalogs.as_ref()).await? {
            if t.key.is_empty() && t.descriptions.is_empty() {
                continue;
            }
            let Some(&(oid, namespace)) = oids.get(&(t.schema.clone(), t.name.clone())) else {
                continue;
            };
            out.push(KeyedTable {
                oid,
                namespace,
                key_columns: t
                    .key
                    .iter()
                    .map(|i| i16::try_from(*i + 1).unwrap_or(i16::MAX))
                    .collect(),
                column_names: t
                    .table
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect(),
                schema: t.schema,
                name: t.name,
                descriptions: t.descriptions,
            });
        }
        Ok(out)
    }

    /// `(schema, relation) -> (oid, namespace oid)` as `pg_class` numbers
    /// them, from `class` (`pg_class`'s rows) or a fresh read of it.
    async fn relation_oids(
        &self,
        class: Option<&[RecordBatch]>,
    ) -> Result<HashMap<(String, String), (i32, i32)>> {
        let ctx = SessionContext::new();
        let mut namespaces = HashMap::new();
        if let Some(ns) = self.inner.table("pg_namespace").await? {
            for batch in ctx.read_table(ns)?.collect().await? {
                let oid = int32_column(&batch, "oid")?;
                let name = string_column(&batch, "nspname")?;
                for i in 0..batch.num_rows() {
                    namespaces.insert(oid[i], name[i].clone());
                }
            }
        }
        let read;
        let class = match class {
            Some(batches) => batches,
            None => {
                read = match self.inner.table("pg_class").await? {
                    Some(class) => ctx.read_table(class)?.collect().await?,
                    None => Vec::new(),
                };
                &read
            }
        };
        let mut out = HashMap::new();
        for batch in class {
            let oid = int32_column(batch, "oid")?;
            let ns = int32_column(batch, "relnamespace")?;
            let name = string_column(batch, "relname")?;
            for i in 0..batch.num_rows() {
                if let Some(nspname) = namespaces.get(&ns[i]) {
                    out.insert((nspname.clone(), name[i].clone()), (oid[i], ns[i]));
                }
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy)]
enum KeyRelation {
    Constraint,
    Index,
    Description,
    /// `pg_class` with `relhasindex` set for keyed tables and one row per
    /// primary-key index, so psql's `\d` lists the key under "Indexes:".
    Class,
    /// [`INDEX_DEFS`].
    IndexDefs,
}

/// A relation of `pg_catalog` only Tidebase has: each primary-key index's
/// OID with its `pg_get_indexdef` and `pg_get_constraintdef` texts, which
/// the server's rewrite of those two functions reads.
pub const INDEX_DEFS: &str = "tidebase_index_defs";

fn index_defs_schema() -> SchemaRef {
    Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
        Field::new("oid", DataType::Int32, false),
        Field::new("indexdef", DataType::Utf8, false),
        Field::new("constraintdef", DataType::Utf8, false),
    ]))
}

/// `pg_constraint`, `pg_index`, `pg_description`, `pg_class` or
/// [`INDEX_DEFS`]: the static rows plus rows for user tables (primary keys,
/// their indexes, column comments), computed at scan time.
#[derive(Debug)]
struct KeyTable {
    kind: KeyRelation,
    base: Arc<dyn TableProvider>,
    overlay: PgCatalogOverlay,
}

#[async_trait]
impl crate::view::BatchView for KeyTable {
    fn view_schema(&self) -> SchemaRef {
        match self.kind {
            KeyRelation::Constraint
            | KeyRelation::Description
            | KeyRelation::Class
            | KeyRelation::IndexDefs => self.base.schema(),
            KeyRelation::Index => with_int2_vector(&self.base.schema(), "indkey"),
        }
    }

    async fn batch(&self) -> Result<RecordBatch> {
        let schema = self.view_schema();
        let ctx = SessionContext::new();
        let mut batches = ctx
            .read_table(self.base.clone())?
            .collect()
            .await?
            .into_iter()
            .map(|b| int2_vector_column(b, &schema, "indkey"))
            .collect::<Result<Vec<_>>>()?;
        // `pg_class`'s own rows give the OIDs: no second read of it.
        let class = matches!(self.kind, KeyRelation::Class).then_some(batches.as_slice());
        let keyed = self.overlay.keyed_tables(class).await?;
        let batch = match self.kind {
            KeyRelation::Constraint => constraint_rows(&schema, &keyed)?,
            KeyRelation::Index => index_rows(&schema, &keyed)?,
            KeyRelation::Description => description_rows(&schema, &keyed)?,
            KeyRelation::Class => {
                batches = batches
                    .into_iter()
                    .map(|b| with_indexes(b, &keyed))
                    .collect::<Result<Vec<_>>>()?;
                index_class_rows(&schema, &keyed)?
            }
            KeyRelation::IndexDefs => index_def_rows(&schema, &keyed)?,
        };
        batches.push(batch);
        Ok(datafusion::arrow::compute::concat_batches(
            &schema, &batches,
        )?)
    }
}

/// `int2vector` columns (`pg_index.indkey`) are arrays to clients that
/// `unnest` them; the static relation stores them as text.
fn with_int2_vector(schema: &SchemaRef, column: &str) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if f.name() == column {
                Field::new(
                    column,
                    DataType::List(Arc::new(Field::new_list_field(DataType::Int16, true))),
                    true,
                )
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
}

/// Rewrites a text `int2vector` column ("1 3") of `batch` as a list.
fn int2_vector_column(batch: RecordBatch, schema: &SchemaRef, column: &str) -> Result<RecordBatch> {
    let mut columns = batch.columns().to_vec();
    if let Ok(i) = batch.schema().index_of(column) {
        let text = datafusion::arrow::compute::cast(&columns[i], &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        let mut builder = datafusion::arrow::array::ListBuilder::new(
            datafusion::arrow::array::Int16Builder::new(),
        );
        for v in text.iter() {
            match v {
                None => builder.append_null(),
                Some(v) => {
                    for n in v
                        .split(|c: char| {
                            c == ' ' || c == ',' || c == '[' || c == ']' || c == '{' || c == '}'
                        })
                        .filter(|s| !s.is_empty())
                    {
                        builder.values().append_option(n.trim().parse::<i16>().ok());
                    }
                    builder.append(true);
                }
            }
        }
        columns[i] = Arc::new(builder.finish());
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn int32_column(batch: &RecordBatch, name: &str) -> Result<Vec<i32>> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| DataFusionError::Internal(format!("pg_catalog column {name} missing")))?;
    let col = datafusion::arrow::compute::cast(col, &DataType::Int32)?;
    let col = col.as_primitive::<Int32Type>();
    Ok((0..col.len()).map(|i| col.value(i)).collect())
}

fn string_column(batch: &RecordBatch, name: &str) -> Result<Vec<String>> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| DataFusionError::Internal(format!("pg_catalog column {name} missing")))?;
    let col = datafusion::arrow::compute::cast(col, &DataType::Utf8)?;
    let col = col.as_string::<i32>();
    Ok((0..col.len()).map(|i| col.value(i).to_string()).collect())
}

/// The synthetic OID of a table's primary-key index and constraint.
fn index_oid(table_oid: i32) -> i32 {
    // Far above the dynamic OID range, below i32::MAX for any table OID.
    table_oid.saturating_add(1_000_000_000)
}

fn int2_list(values: &[i16]) -> ScalarValue {
    let scalars: Vec<ScalarValue> = values
        .iter()
        .map(|v| ScalarValue::Int16(Some(*v)))
        .collect();
    ScalarValue::List(ScalarValue::new_list_nullable(&scalars, &DataType::Int16))
}

fn constraint_rows(schema: &SchemaRef, keyed: &[KeyedTable]) -> Result<RecordBatch> {
    let rows: Vec<HashMap<&str, ScalarValue>> = with_keys(keyed)
        .map(|t| {
            let (oid, ns) = (t.oid, t.namespace);
            HashMap::from([
                ("oid", ScalarValue::Int32(Some(index_oid(oid)))),
                ("conname", ScalarValue::Utf8(Some(t.index_name()))),
                ("connamespace", ScalarValue::Int32(Some(ns))),
                ("contype", ScalarValue::Utf8(Some("p".into()))),
                ("condeferrable", ScalarValue::Boolean(Some(false))),
                ("condeferred", ScalarValue::Boolean(Some(false))),
                ("convalidated", ScalarValue::Boolean(Some(true))),
                ("conrelid", ScalarValue::Int32(Some(oid))),
                ("contypid", ScalarValue::Int32(Some(0))),
                ("conindid", ScalarValue::Int32(Some(index_oid(oid)))),
                ("conparentid", ScalarValue::Int32(Some(0))),
                ("confrelid", ScalarValue::Int32(Some(0))),
                ("conislocal", ScalarValue::Boolean(Some(true))),
                ("coninhcount", ScalarValue::Int32(Some(0))),
                ("connoinherit", ScalarValue::Boolean(Some(true))),
                ("conkey", int2_list(&t.key_columns)),
            ])
        })
        .collect();
    build_batch(schema, &rows)
}

/// Sets `relhasindex` on the `pg_class` rows of tables with a primary key.
fn with_indexes(batch: RecordBatch, keyed: &[KeyedTable]) -> Result<RecordBatch> {
    let Ok(has_col) = batch.schema().index_of("relhasindex") else {
        return Ok(batch);
    };
    let with_key: std::collections::HashSet<i32> = with_keys(keyed).map(|t| t.oid).collect();
    let oid = int32_column(&batch, "oid")?;
    let has = batch.column(has_col).as_boolean();
    let updated: datafusion::arrow::array::BooleanArray = (0..batch.num_rows())
        .map(|i| Some(with_key.contains(&oid[i]) || has.value(i)))
        .collect();
    let mut columns = batch.columns().to_vec();
    columns[has_col] = Arc::new(updated);
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// One `pg_class` row per primary-key index.
fn index_class_rows(schema: &SchemaRef, keyed: &[KeyedTable]) -> Result<RecordBatch> {
    let rows: Vec<HashMap<&str, ScalarValue>> = with_keys(keyed)
        .map(|t| {
            let (oid, ns) = (t.oid, t.namespace);
            HashMap::from([
                ("oid", ScalarValue::Int32(Some(index_oid(oid)))),
                ("relname", ScalarValue::Utf8(Some(t.index_name()))),
                ("relnamespace", ScalarValue::Int32(Some(ns))),
                ("relam", ScalarValue::Int32(Some(BTREE_AM_OID))),
                ("relkind", ScalarValue::Utf8(Some("i".into()))),
                ("relpersistence", ScalarValue::Utf8(Some("p".into()))),
                ("relreplident", ScalarValue::Utf8(Some("n".into()))),
                (
                    "relnatts",
                    ScalarValue::Int16(Some(i16::try_from(t.key_columns.len()).unwrap_or(0))),
                ),
                ("relispopulated", ScalarValue::Boolean(Some(true))),
            ])
        })
        .collect();
    build_batch(schema, &rows)
}

/// `btree` in `pg_am`: how PostgreSQL would index a primary key.
const BTREE_AM_OID: i32 = 403;

fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

fn index_def_rows(schema: &SchemaRef, keyed: &[KeyedTable]) -> Result<RecordBatch> {
    let rows: Vec<HashMap<&str, ScalarValue>> = with_keys(keyed)
        .map(|t| {
            let oid = t.oid;
            let columns: Vec<String> = t
                .key_columns
                .iter()
                .filter_map(|n| {
                    t.column_names
                        .get(usize::try_from(*n).ok()?.checked_sub(1)?)
                })
                .map(|c| quote_ident(c))
                .collect();
            let columns = columns.join(", ");
            HashMap::from([
                ("oid", ScalarValue::Int32(Some(index_oid(oid)))),
                (
                    "indexdef",
                    ScalarValue::Utf8(Some(format!(
                        "CREATE UNIQUE INDEX {} ON {}.{} USING btree ({columns})",
                        quote_ident(&t.index_name()),
                        quote_ident(&t.schema),
                        quote_ident(&t.name)
                    ))),
                ),
                (
                    "constraintdef",
                    ScalarValue::Utf8(Some(format!("PRIMARY KEY ({columns})"))),
                ),
            ])
        })
        .collect();
    build_batch(schema, &rows)
}

/// `pg_class`'s OID, the `classoid` of a relation's comments.
pub const PG_CLASS_OID: i32 = 1259;

fn description_rows(schema: &SchemaRef, keyed: &[KeyedTable]) -> Result<RecordBatch> {
    let mut rows: Vec<HashMap<&str, ScalarValue>> = Vec::new();
    for t in keyed {
        for (i, d) in t.descriptions.iter().enumerate() {
            rows.push(HashMap::from([
                ("objoid", ScalarValue::Int32(Some(t.oid))),
                ("classoid", ScalarValue::Int32(Some(PG_CLASS_OID))),
                (
                    "objsubid",
                    ScalarValue::Int32(Some(i32::try_from(i + 1).unwrap_or(i32::MAX))),
                ),
                ("description", ScalarValue::Utf8(Some(d.clone()))),
            ]));
        }
    }
    build_batch(schema, &rows)
}

fn index_rows(schema: &SchemaRef, keyed: &[KeyedTable]) -> Result<RecordBatch> {
    let rows: Vec<HashMap<&str, ScalarValue>> = with_keys(keyed)
        .map(|t| {
            let oid = t.oid;
            let n = i16::try_from(t.key_columns.len()).unwrap_or(i16::MAX);
            HashMap::from([
                ("indexrelid", ScalarValue::Int32(Some(index_oid(oid)))),
                ("indrelid", ScalarValue::Int32(Some(oid))),
                ("indnatts", ScalarValue::Int16(Some(n))),
                ("indnkeyatts", ScalarValue::Int16(Some(n))),
                ("indisunique", ScalarValue::Boolean(Some(true))),
                ("indnullsnotdistinct", ScalarValue::Boolean(Some(false))),
                ("indisprimary", ScalarValue::Boolean(Some(true))),
                ("indisexclusion", ScalarValue::Boolean(Some(false))),
                ("indimmediate", ScalarValue::Boolean(Some(true))),
                ("indisclustered", ScalarValue::Boolean(Some(false))),
                ("indisvalid", ScalarValue::Boolean(Some(true))),
                ("indcheckxmin", ScalarValue::Boolean(Some(false))),
                ("indisready", ScalarValue::Boolean(Some(true))),
                ("indislive", ScalarValue::Boolean(Some(true))),
                ("indisreplident", ScalarValue::Boolean(Some(false))),
                ("indkey", int2_list(&t.key_columns)),
            ])
        })
        .collect();
    build_batch(schema, &rows)
}

/// Builds a batch of `schema` from rows keyed by column name. A column a row
/// does not name is NULL, or the type's zero value where NULL is not allowed.
fn build_batch(schema: &SchemaRef, rows: &[HashMap<&str, ScalarValue>]) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| column(field, rows))
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn column(field: &Field, rows: &[HashMap<&str, ScalarValue>]) -> Result<ArrayRef> {
    let target = field.data_type();
    let values = rows
        .iter()
        .map(|row| {
            let value = row
                .get(field.name().as_str())
                .and_then(|v| v.cast_to(target).ok());
            match value {
                Some(v) => Ok(v),
                None if field.is_nullable() => ScalarValue::try_from(target),
                None => ScalarValue::new_default(target),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    if values.is_empty() {
        return Ok(datafusion::arrow::array::new_empty_array(target));
    }
    let array = ScalarValue::iter_to_array(values)?;
    debug_assert_eq!(array.len(), rows.len());
    Ok(array)
}
