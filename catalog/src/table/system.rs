//! What users can see of the storage: the `as_of` and `cells` table
//! functions and the `tidebase.regions` / `tidebase.store_files` views.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{MemTable, TableFunctionArgs, TableFunctionImpl};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use tidebase_storage::{ReadOptions, ScanOptions};

use super::codec::{arrow_type, builder, decode_key_value, finish, hex, value_text};
use super::def::DEFAULT_FAMILY;
use super::schema::RegionSchema;
use crate::view::BatchView;
use crate::CatalogError;

fn ext(e: impl Into<CatalogError>) -> DataFusionError {
    DataFusionError::External(Box::new(e.into()))
}

fn literal_text(e: &Expr, what: &str) -> Result<String> {
    match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Ok(s.clone()),
        Expr::Literal(v, _) => Ok(v.to_string()),
        _ => Err(DataFusionError::Plan(format!("{what} must be a literal"))),
    }
}

/// `as_of('t', '2026-01-01 12:00:00')`: table `t` as it was at that time
/// (within the versions its families retain).
#[derive(Debug)]
pub struct AsOf(pub Arc<RegionSchema>);

impl TableFunctionImpl for AsOf {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let [table, at] = args.exprs() else {
            return Err(DataFusionError::Plan(
                "as_of(table, timestamp) takes two arguments".into(),
            ));
        };
        let name = literal_text(table, "the table name")?;
        let t = self
            .0
            .get(&name)
            .ok_or_else(|| ext(CatalogError::TableNotFound(name.clone())))?;
        let ts = match at {
            Expr::Literal(v, _) => v
                .cast_to(&DataType::Timestamp(TimeUnit::Millisecond, None))
                .map_err(|e| DataFusionError::Plan(format!("as_of: bad timestamp: {e}")))?,
            _ => {
                return Err(DataFusionError::Plan(
                    "as_of: the timestamp must be a literal".into(),
                ))
            }
        };
        let ScalarValue::TimestampMillisecond(Some(ms), _) = ts else {
            return Err(DataFusionError::Plan("as_of: the timestamp is NULL".into()));
        };
        Ok(Arc::new(t.as_of(ms)))
    }
}

/// `cells('t')`: every retained version of every cell of `t`, one row per
/// cell: the row key's columns, family, qualifier, timestamp and the value
/// as text.
#[derive(Debug)]
pub struct Cells(pub Arc<RegionSchema>);

impl TableFunctionImpl for Cells {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let [table] = args.exprs() else {
            return Err(DataFusionError::Plan(
                "cells(table) takes one argument".into(),
            ));
        };
        let name = literal_text(table, "the table name")?;
        let t = self
            .0
            .get(&name)
            .ok_or_else(|| ext(CatalogError::TableNotFound(name.clone())))?;
        let def = &t.def;
        let mut fields: Vec<Field> = Vec::new();
        if def.key.is_empty() {
            fields.push(Field::new("row_key", DataType::Int64, false));
        }
        for &k in &def.key {
            let c = &def.columns[k];
            fields.push(Field::new(&c.name, arrow_type(c.ty), false));
        }
        fields.extend([
            Field::new("family", DataType::Utf8, false),
            Field::new("qualifier", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("value", DataType::Utf8, true),
        ]);
        let schema = Arc::new(Schema::new(fields));
        let scan = ScanOptions {
            read: ReadOptions {
                max_versions: u32::MAX,
                ..Default::default()
            },
            ..Default::default()
        };
        let batches = self
            .0
            .engine()
            .scan(&def.name, &scan)
            .map_err(|e| ext(CatalogError::from(e)))?;
        let n: usize = batches.iter().map(|b| b.num_rows()).sum();
        let mut keys: Vec<Box<dyn datafusion::arrow::array::ArrayBuilder>> = def
            .key
            .iter()
            .map(|&k| builder(def.columns[k].ty, n))
            .collect();
        let mut hidden = Int64Builder::new();
        let mut family = StringBuilder::new();
        let mut qualifier = StringBuilder::new();
        let mut ts = TimestampMillisecondBuilder::new();
        let mut value = StringBuilder::new();
        use datafusion::arrow::array::AsArray;
        for b in &batches {
            let row = b.column(0).as_binary_view();
            let fam = b.column(1).as_string::<i32>();
            let q = b.column(2).as_binary_view();
            let t_ = b
                .column(3)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let v = b.column(4).as_binary_view();
            for i in 0..b.num_rows() {
                let key = row.value(i);
                if def.key.is_empty() {
                    let k: [u8; 8] = key
                        .try_into()
                        .map_err(|_| ext(CatalogError::Corrupt("hidden row key".into())))?;
                    hidden.append_value(u64::from_be_bytes(k) as i64);
                } else {
                    let mut pos = 0;
                    for (j, &k) in def.key.iter().enumerate() {
                        decode_key_value(key, &mut pos, def.columns[k].ty, keys[j].as_mut())
                            .map_err(ext)?;
                    }
                }
                family.append_value(fam.value(i));
                let qual = String::from_utf8_lossy(q.value(i)).into_owned();
                ts.append_value(t_.value(i));
                if fam.value(i) == DEFAULT_FAMILY && qual.is_empty() {
                    qualifier.append_value("");
                    value.append_null();
                } else {
                    let text = match def
                        .columns
                        .iter()
                        .find(|c| c.family == fam.value(i) && c.name == qual)
                    {
                        Some(c) => value_text(c.ty, v.value(i)).map_err(ext)?,
                        None => String::from_utf8_lossy(v.value(i)).into_owned(),
                    };
                    qualifier.append_value(qual);
                    value.append_value(text);
                }
            }
        }
        let mut columns: Vec<ArrayRef> = Vec::new();
        if def.key.is_empty() {
            columns.push(Arc::new(hidden.finish()));
        }
        columns.extend(keys.into_iter().map(finish));
        columns.push(Arc::new(family.finish()));
        columns.push(Arc::new(qualifier.finish()));
        columns.push(Arc::new(ts.finish()));
        columns.push(Arc::new(value.finish()));
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

/// Which system view.
#[derive(Debug, Clone, Copy)]
pub enum ViewKind {
    Regions,
    StoreFiles,
}

/// `tidebase.regions` and `tidebase.store_files`, computed when scanned.
#[derive(Debug)]
pub struct SystemView {
    pub kind: ViewKind,
    pub tables: Arc<RegionSchema>,
}

#[async_trait::async_trait]
impl BatchView for SystemView {
    fn view_schema(&self) -> SchemaRef {
        let s = |n: &str| Field::new(n, DataType::Utf8, false);
        let u = |n: &str| Field::new(n, DataType::Int64, false);
        Arc::new(Schema::new(match self.kind {
            ViewKind::Regions => vec![
                s("table_name"),
                u("region_id"),
                s("start_key"),
                s("end_key"),
                u("size_bytes"),
                u("memstore_bytes"),
                u("store_files"),
                u("read_count"),
                u("write_count"),
            ],
            ViewKind::StoreFiles => vec![
                s("table_name"),
                u("region_id"),
                s("family"),
                s("path"),
                u("cells"),
                u("size_bytes"),
                u("max_seq"),
            ],
        }))
    }

    async fn batch(&self) -> Result<RecordBatch> {
        let engine = self.tables.engine();
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let schema = self.view_schema();
        let mut rows: Vec<Vec<Result<String, i64>>> = Vec::new();
        for table in self.tables.region_table_names() {
            match self.kind {
                ViewKind::Regions => {
                    for r in engine
                        .regions(&table)
                        .map_err(|e| ext(CatalogError::from(e)))?
                    {
                        rows.push(vec![
                            Ok(table.clone()),
                            Err(i(r.id)),
                            Ok(hex(&r.start)),
                            Ok(hex(&r.end)),
                            Err(i(r.size_bytes)),
                            Err(i(r.memstore_bytes)),
                            Err(r.files as i64),
                            Err(i(r.reads)),
                            Err(i(r.writes)),
                        ]);
                    }
                }
                ViewKind::StoreFiles => {
                    for f in engine
                        .store_files(&table)
                        .map_err(|e| ext(CatalogError::from(e)))?
                    {
                        rows.push(vec![
                            Ok(table.clone()),
                            Err(i(f.region)),
                            Ok(f.family.clone()),
                            Ok(f.path.display().to_string()),
                            Err(i(f.cells)),
                            Err(i(f.bytes)),
                            Err(i(f.max_seq)),
                        ]);
                    }
                }
            }
        }
        let columns: Vec<ArrayRef> = (0..schema.fields().len())
            .map(|c| -> ArrayRef {
                if schema.field(c).data_type() == &DataType::Utf8 {
                    let mut b = StringBuilder::new();
                    for r in &rows {
                        b.append_value(r[c].as_ref().cloned().unwrap_or_default());
                    }
                    Arc::new(b.finish())
                } else {
                    let mut b = Int64Builder::new();
                    for r in &rows {
                        b.append_value(r[c].as_ref().err().copied().unwrap_or_default());
                    }
                    Arc::new(b.finish())
                }
            })
            .collect();
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}
