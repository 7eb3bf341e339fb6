//! The DataFusion side of a region table: scans (one partition per region,
//! families pruned by the projection, key predicates turned into point gets
//! and range scans), inserts, updates and deletes.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, BinaryBuilder, BinaryViewArray, RecordBatch,
    RecordBatchOptions, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, Constraint, Constraints, DFSchema, ParamValues, ScalarValue};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    BinaryExpr, Expr, LogicalPlan, Operator, TableProviderFilterPushDown,
};
use datafusion::physical_expr::{
    create_physical_expr, EquivalenceProperties, LexOrdering, PhysicalExpr, PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    collect, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::StreamExt;
use tidebase_storage::{views, CellKind, Engine, Mutation, ReadOptions, ScanOptions, StoreScan};

use super::codec::{
    self, builder, decode_key_value, decode_key_values, decode_value, decode_values,
    encode_key_value, encode_value, skip_key_value,
};
use super::def::{SqlType, TableDef, DEFAULT_FAMILY};
use crate::CatalogError;

/// Timestamps for writes: wall-clock milliseconds that never go backwards,
/// and the hidden row keys of tables without a primary key.
#[derive(Debug, Default)]
pub struct Clock {
    last_ms: AtomicI64,
    last_hidden: AtomicU64,
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        let now = tidebase_storage::now_ms();
        self.last_ms.fetch_max(now, Ordering::SeqCst).max(now)
    }

    /// A new hidden row key: microseconds since the epoch, made unique and
    /// increasing.
    fn hidden_key(&self) -> u64 {
        let now = u64::try_from(tidebase_storage::now_ms()).unwrap_or(0) * 1000;
        let mut cur = self.last_hidden.load(Ordering::SeqCst);
        loop {
            let next = now.max(cur + 1);
            match self
                .last_hidden
                .compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(seen) => cur = seen,
            }
        }
    }
}

fn ext(e: impl Into<CatalogError>) -> DataFusionError {
    DataFusionError::External(Box::new(e.into()))
}

fn storage(e: tidebase_storage::StorageError) -> DataFusionError {
    ext(CatalogError::Storage(e))
}

/// A table whose rows live in the region engine.
pub struct RegionTable {
    pub def: TableDef,
    constraints: Constraints,
    engine: Arc<Engine>,
    clock: Arc<Clock>,
    /// Read the table as of this time (ms), when set.
    as_of: Option<i64>,
}

impl fmt::Debug for RegionTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegionTable({})", self.def.name)
    }
}

/// A row-key range to read: one key, or `[start, end)` (`end` empty = open).
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyScan {
    Point(Vec<u8>),
    Range(Vec<u8>, Vec<u8>),
}

/// The smallest byte string greater than every string starting with `p`
/// (empty = none).
fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut v = p.to_vec();
    while let Some(last) = v.pop() {
        if last < 0xFF {
            v.push(last + 1);
            return v;
        }
    }
    Vec::new()
}

fn min_end<'a>(a: &'a [u8], b: &'a [u8]) -> &'a [u8] {
    if a.is_empty() {
        b
    } else if b.is_empty() {
        a
    } else {
        a.min(b)
    }
}

impl RegionTable {
    pub fn new(def: TableDef, engine: Arc<Engine>, clock: Arc<Clock>) -> Self {
        Self {
            constraints: key_constraints(&def),
            def,
            engine,
            clock,
            as_of: None,
        }
    }

    /// Stages a bulk load: rows are turned into cells and handed to the
    /// engine's bulk load, which sorts them and writes store files; nothing
    /// is visible until [`CopyStage::commit`], then all of it is.
    pub fn stage(&self) -> Result<CopyStage> {
        Ok(CopyStage {
            table: self.clone_for_write(),
            load: self.engine.bulk_load(&self.def.name).map_err(storage)?,
            ts: self.clock.now_ms(),
            rows: 0,
        })
    }

    /// The same table read as it was at `ms`.
    pub fn as_of(&self, ms: i64) -> Self {
        Self {
            as_of: Some(ms),
            ..self.clone_for_write()
        }
    }

    pub(crate) fn read_options(&self) -> ReadOptions {
        ReadOptions {
            time_range: self.as_of.map(|t| (i64::MIN, t.saturating_add(1))),
            ..Default::default()
        }
    }

    /// The encoded key prefix for a literal compared with the first key
    /// column, or `None` when the literal does not convert.
    fn key_literal(&self, value: &ScalarValue) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.encode_key_part(&mut out, 0, value).then_some(out)
    }

    /// Appends `value`, converted to the type of key column `j`, to the
    /// encoded key `out`; false when it does not convert.
    fn encode_key_part(&self, out: &mut Vec<u8>, j: usize, value: &ScalarValue) -> bool {
        let Some(col) = self.def.key.get(j).map(|&c| &self.def.columns[c]) else {
            return false;
        };
        value
            .cast_to(&codec::arrow_type(col.ty))
            .ok()
            .and_then(|v| v.to_array().ok())
            .is_some_and(|array| encode_key_value(out, col.ty, &array, 0))
    }

    fn first_key_column(&self, e: &Expr) -> bool {
        match (e, self.def.key.first()) {
            (Expr::Column(c), Some(k)) => c.name == self.def.columns[*k].name,
            _ => false,
        }
    }

    /// The key ranges one filter allows, if it constrains only the first
    /// key column with literals.
    fn filter_ranges(&self, e: &Expr) -> Option<Vec<KeyScan>> {
        let single = self.def.key.len() == 1;
        let eq = |k: Vec<u8>| {
            if single {
                KeyScan::Point(k)
            } else {
                let end = prefix_end(&k);
                KeyScan::Range(k, end)
            }
        };
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if *op == Operator::And {
                    let a = self.filter_ranges(left);
                    let b = self.filter_ranges(right);
                    return match (a, b) {
                        (Some(a), Some(b)) => Some(intersect(&a, &b)),
                        (Some(a), None) | (None, Some(a)) => Some(a),
                        (None, None) => None,
                    };
                }
                if *op == Operator::Or {
                    let mut a = self.filter_ranges(left)?;
                    a.extend(self.filter_ranges(right)?);
                    return Some(a);
                }
                let (op, lit) = match (left.as_ref(), right.as_ref()) {
                    (c, Expr::Literal(v, _)) if self.first_key_column(c) => (*op, v),
                    (Expr::Literal(v, _), c) if self.first_key_column(c) => (op.swap()?, v),
                    _ => return None,
                };
                let k = self.key_literal(lit)?;
                Some(vec![match op {
                    Operator::Eq => eq(k),
                    Operator::Gt => KeyScan::Range(prefix_end(&k), Vec::new()),
                    Operator::GtEq => KeyScan::Range(k, Vec::new()),
                    Operator::Lt => KeyScan::Range(Vec::new(), k),
                    Operator::LtEq => KeyScan::Range(Vec::new(), prefix_end(&k)),
                    _ => return None,
                }])
            }
            Expr::Between(b) if !b.negated && self.first_key_column(&b.expr) => {
                let (Expr::Literal(lo, _), Expr::Literal(hi, _)) =
                    (b.low.as_ref(), b.high.as_ref())
                else {
                    return None;
                };
                Some(vec![KeyScan::Range(
                    self.key_literal(lo)?,
                    prefix_end(&self.key_literal(hi)?),
                )])
            }
            Expr::InList(l) if !l.negated && self.first_key_column(&l.expr) => l
                .list
                .iter()
                .map(|v| match v {
                    Expr::Literal(v, _) => self.key_literal(v).map(eq),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// What to read for these filters: `None` = everything.
    fn key_scans(&self, filters: &[Expr]) -> Option<Vec<KeyScan>> {
        let mut out: Option<Vec<KeyScan>> = None;
        let prefix = self.equality_prefix(filters).map(|p| vec![p]);
        for r in filters
            .iter()
            .filter_map(|f| self.filter_ranges(f))
            .chain(prefix)
        {
            out = Some(match out {
                None => r,
                Some(prev) => intersect(&prev, &r),
            });
        }
        out
    }

    /// `key column = x` (either way round): the key position and `x`.
    fn key_column_eq<'e>(&self, e: &'e Expr) -> Option<(usize, &'e Expr)> {
        let Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) = e
        else {
            return None;
        };
        let (col, other) = match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), x) | (x, Expr::Column(c)) => (c, x),
            _ => return None,
        };
        let j = self
            .def
            .key
            .iter()
            .position(|&k| self.def.columns[k].name == col.name)?;
        Some((j, other))
    }

    /// `key column = literal` (either way round): the key position and the
    /// literal.
    fn key_column_equal<'e>(&self, e: &'e Expr) -> Option<(usize, &'e ScalarValue)> {
        match self.key_column_eq(e)? {
            (j, Expr::Literal(v, _)) => Some((j, v)),
            _ => None,
        }
    }

    /// `key column = literal` or `key column = $n` (either way round): the
    /// key position and the value.
    fn key_column_is(&self, e: &Expr) -> Option<(usize, KeyValue)> {
        match self.key_column_eq(e)? {
            (j, Expr::Literal(v, _)) => Some((j, KeyValue::Literal(v.clone()))),
            (j, Expr::Placeholder(p)) => Some((j, KeyValue::Param(p.id.clone()))),
            _ => None,
        }
    }

    /// Whether the filter holds an equality on a key column that
    /// [`Self::equality_prefix`] can use.
    fn key_equality(&self, f: &Expr) -> bool {
        self.def.key.len() > 1
            && datafusion::logical_expr::utils::split_conjunction(f)
                .into_iter()
                .any(|c| self.key_column_equal(c).is_some())
    }

    /// For a key of several columns: the rows that `key column = literal`
    /// conjuncts on its first two or more columns allow (a point when they
    /// name every key column).
    fn equality_prefix(&self, filters: &[Expr]) -> Option<KeyScan> {
        if self.def.key.len() < 2 {
            return None;
        }
        let mut values: Vec<Option<&ScalarValue>> = vec![None; self.def.key.len()];
        for f in filters {
            for c in datafusion::logical_expr::utils::split_conjunction(f) {
                if let Some((j, v)) = self.key_column_equal(c) {
                    values[j] = Some(v);
                }
            }
        }
        let n = values.iter().take_while(|v| v.is_some()).count();
        if n < 2 {
            return None;
        }
        let mut key = Vec::new();
        for (j, v) in values.iter().take(n).enumerate() {
            if !self.encode_key_part(&mut key, j, (*v)?) {
                return None;
            }
        }
        Some(if n == self.def.key.len() {
            KeyScan::Point(key)
        } else {
            let end = prefix_end(&key);
            KeyScan::Range(key, end)
        })
    }

    /// Families the columns need, the default family (which shows which
    /// rows exist) first.
    fn families_for(&self, columns: &[usize]) -> Vec<String> {
        let mut fams = vec![DEFAULT_FAMILY.to_string()];
        for &c in columns {
            let f = &self.def.columns[c].family;
            if !f.is_empty() && !fams.contains(f) {
                fams.push(f.clone());
            }
        }
        fams
    }

    fn plan(
        &self,
        projection: Vec<usize>,
        filters: &[Expr],
        limit: Option<usize>,
        with_row_key: bool,
        parallelism: usize,
    ) -> Result<RegionScanExec> {
        let scans = self.key_scans(filters);
        let regions = self.engine.regions(&self.def.name).map_err(storage)?;
        let mut partitions: Vec<Vec<KeyScan>> = Vec::new();
        // Where each partition's region could be cut in two.
        let mut mids: Vec<Option<Vec<u8>>> = Vec::new();
        for r in &regions {
            let mut mine = Vec::new();
            let all = [KeyScan::Range(Vec::new(), Vec::new())];
            for s in scans.as_deref().unwrap_or(&all) {
                match s {
                    KeyScan::Point(k) => {
                        if k.as_slice() >= r.start.as_slice()
                            && (r.end.is_empty() || k.as_slice() < r.end.as_slice())
                        {
                            mine.push(s.clone());
                        }
                    }
                    KeyScan::Range(a, b) => {
                        let lo = a.as_slice().max(r.start.as_slice()).to_vec();
                        let hi = min_end(b, &r.end).to_vec();
                        if hi.is_empty() || lo < hi {
                            mine.push(KeyScan::Range(lo, hi));
                        }
                    }
                }
            }
            if !mine.is_empty() {
                partitions.push(mine);
                mids.push(r.mid_key.clone());
            }
        }
        let regions_scanned = partitions.len();
        // Fewer regions than cores: cut single-range partitions at their
        // region's middle key, so a table of one region still scans (and
        // aggregates) on every core. Each half stays in key order.
        if limit.is_none() {
            let mut i = 0;
            while partitions.len() < parallelism && i < partitions.len() {
                let cut = match (partitions[i].as_slice(), &mids[i]) {
                    ([KeyScan::Range(lo, hi)], Some(mid))
                        if mid.as_slice() > lo.as_slice()
                            && (hi.is_empty() || mid.as_slice() < hi.as_slice()) =>
                    {
                        Some((lo.clone(), mid.clone(), hi.clone()))
                    }
                    _ => None,
                };
                if let Some((lo, mid, hi)) = cut {
                    partitions[i] = vec![KeyScan::Range(lo, mid.clone())];
                    partitions.insert(i + 1, vec![KeyScan::Range(mid, hi)]);
                    mids[i] = None;
                    mids.insert(i + 1, None);
                    i += 2;
                } else {
                    i += 1;
                }
            }
        }
        let mut fields: Vec<Field> = projection
            .iter()
            .map(|&i| self.def.schema().field(i).clone())
            .collect();
        if with_row_key {
            fields.push(Field::new(ROW_KEY, DataType::Binary, false));
        }
        let schema = Arc::new(Schema::new(fields));
        // Rows come in key order within a partition: declare the ordering
        // on the longest projected prefix of the key.
        let mut eq = EquivalenceProperties::new(schema.clone());
        let mut sort = Vec::new();
        for k in &self.def.key {
            match projection.iter().position(|p| p == k) {
                Some(i) => sort.push(PhysicalSortExpr::new_default(Arc::new(
                    datafusion::physical_expr::expressions::Column::new(schema.field(i).name(), i),
                ))),
                None => break,
            }
        }
        if let Some(ordering) = LexOrdering::new(sort) {
            eq.add_orderings([ordering]);
        }
        let properties = Arc::new(PlanProperties::new(
            eq,
            Partitioning::UnknownPartitioning(partitions.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(RegionScanExec {
            table: self.clone_with_as_of(),
            families: self.families_for(&projection),
            projection,
            regions: regions_scanned,
            partitions,
            limit,
            with_row_key,
            grouped_by: Vec::new(),
            schema,
            properties,
        })
    }

    /// Mutations that write `batch` (in table-schema order) as puts. A NULL
    /// value writes nothing (a put only carries the cells it has). A row
    /// exists while its default family has a visible cell, so a row whose
    /// default-family columns are all NULL here also gets a marker cell
    /// (default family, empty qualifier and value). Fails on a NULL key,
    /// naming the row.
    pub fn put_mutations(
        &self,
        batch: &RecordBatch,
        first_row: u64,
        ts: i64,
    ) -> Result<Vec<Mutation>> {
        let mut out = Vec::with_capacity(batch.num_rows() * (batch.num_columns() + 1));
        self.for_each_put(batch, first_row, |key, family, qualifier, value| {
            out.push(Mutation::put(key, family, qualifier, ts, value));
            Ok(())
        })?;
        Ok(out)
    }

    /// The cells that store the rows of `batch` (table-schema order), as
    /// (row key, family, qualifier, value): each non-NULL value, and a row
    /// marker for a row with no value in the default family. Errors name
    /// the row (counted from `first_row + 1`).
    fn for_each_put(
        &self,
        batch: &RecordBatch,
        first_row: u64,
        mut put: impl FnMut(&[u8], &str, &[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        for row in 0..batch.num_rows() {
            let key = self.row_key(batch, row, first_row)?;
            let mut marked = false;
            for (i, c) in self.def.columns.iter().enumerate() {
                if self.def.key.contains(&i) {
                    continue;
                }
                if let Some(v) = encode_value(c.ty, batch.column(i), row) {
                    marked |= c.family == DEFAULT_FAMILY;
                    put(&key, &c.family, c.name.as_bytes(), &v)?;
                }
            }
            if !marked {
                // The row marker (see `row_marker`).
                put(&key, DEFAULT_FAMILY, b"", b"")?;
            }
        }
        Ok(())
    }

    fn row_key(&self, batch: &RecordBatch, row: usize, first_row: u64) -> Result<Vec<u8>> {
        if self.def.key.is_empty() {
            return Ok(self.clock.hidden_key().to_be_bytes().to_vec());
        }
        let mut key = Vec::new();
        for &k in &self.def.key {
            let c = &self.def.columns[k];
            if !encode_key_value(&mut key, c.ty, batch.column(k), row) {
                return Err(ext(CatalogError::NullKey {
                    column: c.name.clone(),
                    table: self.def.name.clone(),
                    row: first_row + row as u64 + 1,
                }));
            }
        }
        Ok(key)
    }

    fn write(&self, mutations: Vec<Mutation>) -> Result<()> {
        if mutations.is_empty() {
            return Ok(());
        }
        self.engine
            .write(&self.def.name, mutations)
            .map_err(storage)?;
        Ok(())
    }

    /// Rows matching `filters`, with their row keys, as planned now and
    /// read when the returned plan runs.
    fn matching(&self, state: &dyn Session, filters: &[Expr]) -> Result<Matching> {
        let all: Vec<usize> = (0..self.def.columns.len()).collect();
        let scan = Arc::new(self.plan(all, filters, None, true, 1)?);
        let schema = scan.schema();
        let df_schema = DFSchema::try_from(schema.clone())?;
        let predicate = filters
            .iter()
            .cloned()
            .reduce(|a, b| a.and(b))
            .map(|f| {
                create_physical_expr(
                    &f,
                    &df_schema,
                    state.execution_props(),
                    &PhysicalPlanningContext::default(),
                )
            })
            .transpose()?;
        Ok((scan, predicate, schema))
    }
}

/// The cell that shows row `key` exists when its default family holds no
/// value: default family, empty qualifier, empty value.
fn row_marker(key: &[u8], ts: i64) -> Mutation {
    Mutation::put(key, DEFAULT_FAMILY, b"", ts, b"")
}

fn key_constraints(def: &TableDef) -> Constraints {
    if def.key.is_empty() {
        Constraints::default()
    } else {
        Constraints::new_unverified(vec![Constraint::PrimaryKey(def.key.clone())])
    }
}

/// A scan of every column plus the row key, the predicate that picks the
/// rows, and the scan's schema.
type Matching = (
    Arc<dyn ExecutionPlan>,
    Option<Arc<dyn PhysicalExpr>>,
    SchemaRef,
);

/// Name of the row-key column internal scans add.
const ROW_KEY: &str = "__tidebase_row_key";

fn intersect(a: &[KeyScan], b: &[KeyScan]) -> Vec<KeyScan> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            let (xs, xe, xp) = bounds(x);
            let (ys, ye, yp) = bounds(y);
            let lo = xs.max(ys).to_vec();
            let hi = min_end(xe, ye).to_vec();
            if !(hi.is_empty() || lo < hi) {
                continue;
            }
            out.push(match (xp, yp) {
                (true, _) => x.clone(),
                (_, true) => y.clone(),
                _ => KeyScan::Range(lo, hi),
            });
        }
    }
    out
}

/// Start, end and whether it is a point.
fn bounds(s: &KeyScan) -> (&[u8], &[u8], bool) {
    match s {
        KeyScan::Point(k) => (k.as_slice(), &[], true),
        KeyScan::Range(a, b) => (a.as_slice(), b.as_slice(), false),
    }
}

#[async_trait]
impl TableProvider for RegionTable {
    fn schema(&self) -> SchemaRef {
        self.def.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn constraints(&self) -> Option<&Constraints> {
        Some(&self.constraints)
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.filter_ranges(f).is_some() || self.key_equality(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let projection = projection
            .cloned()
            .unwrap_or_else(|| (0..self.def.columns.len()).collect());
        let parallelism = state.config().target_partitions();
        Ok(Arc::new(self.plan(
            projection,
            filters,
            limit,
            false,
            parallelism,
        )?))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(DataFusionError::NotImplemented(format!(
                "{insert_op} is not supported for region tables"
            )));
        }
        let sink = RegionSink {
            table: self.clone_for_write(),
            schema: self.def.schema(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    async fn delete_from(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (scan, predicate, _) = self.matching(state, &filters)?;
        let table = Arc::new(self.clone_for_write());
        let families: Vec<String> = self.def.families.iter().map(|(f, _)| f.clone()).collect();
        Ok(Arc::new(CountExec::new(
            "DeleteExec",
            scan,
            move |batch, keep| {
                let ts = table.clock.now_ms();
                let keys = batch.column(batch.num_columns() - 1).as_binary::<i32>();
                let mut m = Vec::new();
                for i in 0..batch.num_rows() {
                    if keep.is_valid(i) && keep.value(i) {
                        for f in &families {
                            m.push(Mutation::delete_family(keys.value(i), f, ts));
                        }
                    }
                }
                Ok(m)
            },
            predicate,
            self.def.name.clone(),
            self.engine.clone(),
        )))
    }

    async fn update(
        &self,
        state: &dyn Session,
        assignments: Vec<(String, Expr)>,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (scan, predicate, schema) = self.matching(state, &filters)?;
        let df_schema = DFSchema::try_from(schema)?;
        let mut targets = Vec::new();
        for (name, expr) in &assignments {
            let i = self
                .def
                .column(name)
                .ok_or_else(|| ext(CatalogError::ColumnNotFound(name.clone())))?;
            if self.def.key.contains(&i) {
                return Err(ext(CatalogError::Unsupported(format!(
                    "updating key column \"{name}\" (delete the row and insert it again)"
                ))));
            }
            // UPDATE SET x = x is planned as an assignment of the column itself.
            if matches!(expr, Expr::Column(Column { name: n, .. }) if n == name) {
                continue;
            }
            targets.push((
                i,
                create_physical_expr(
                    expr,
                    &df_schema,
                    state.execution_props(),
                    &PhysicalPlanningContext::default(),
                )?,
            ));
        }
        let table = Arc::new(self.clone_for_write());
        Ok(Arc::new(CountExec::new(
            "UpdateExec",
            scan,
            move |batch, keep| {
                let ts = table.clock.now_ms();
                let keys = batch.column(batch.num_columns() - 1).as_binary::<i32>();
                let mut values = Vec::new();
                for (i, e) in &targets {
                    let ty = codec::arrow_type(table.def.columns[*i].ty);
                    let v = e.evaluate(batch)?.into_array(batch.num_rows())?;
                    let v = datafusion::arrow::compute::cast(&v, &ty)?;
                    values.push((*i, v));
                }
                let mut m = Vec::new();
                for row in 0..batch.num_rows() {
                    if !(keep.is_valid(row) && keep.value(row)) {
                        continue;
                    }
                    let key = keys.value(row);
                    m.push(row_marker(key, ts));
                    for (i, v) in &values {
                        let c = &table.def.columns[*i];
                        m.push(match encode_value(c.ty, v, row) {
                            Some(bytes) => {
                                Mutation::put(key, &c.family, c.name.as_bytes(), ts, &bytes)
                            }
                            None => Mutation::delete(key, &c.family, c.name.as_bytes(), ts),
                        });
                    }
                }
                Ok(m)
            },
            predicate,
            self.def.name.clone(),
            self.engine.clone(),
        )))
    }
}

impl RegionTable {
    fn clone_with_as_of(&self) -> RegionTable {
        RegionTable {
            as_of: self.as_of,
            ..self.clone_for_write()
        }
    }

    fn clone_for_write(&self) -> RegionTable {
        RegionTable {
            constraints: self.constraints.clone(),
            def: self.def.clone(),
            engine: self.engine.clone(),
            clock: self.clock.clone(),
            as_of: None,
        }
    }
}

/// Writes an INSERT's rows: all of them in one WAL record, so the
/// statement is all-or-nothing.
struct RegionSink {
    table: RegionTable,
    schema: SchemaRef,
}

impl fmt::Debug for RegionSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegionSink({})", self.table.def.name)
    }
}

impl DisplayAs for RegionSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegionSink: table={}", self.table.def.name)
    }
}

#[async_trait]
impl DataSink for RegionSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let ts = self.table.clock.now_ms();
        let mut rows = 0u64;
        let mut mutations = Vec::new();
        while let Some(batch) = data.next().await {
            let batch = batch?;
            mutations.extend(self.table.put_mutations(&batch, rows, ts)?);
            rows += batch.num_rows() as u64;
        }
        let table = self.table.clone_for_write();
        tokio::task::spawn_blocking(move || table.write(mutations))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
        Ok(rows)
    }
}

type RowsToMutations = dyn Fn(&RecordBatch, &datafusion::arrow::array::BooleanArray) -> Result<Vec<Mutation>>
    + Send
    + Sync;

/// Runs a scan, picks the rows the predicate keeps, turns them into
/// mutations, writes them as one batch and returns the row count.
struct CountExec {
    name: &'static str,
    scan: Arc<dyn ExecutionPlan>,
    predicate: Option<Arc<dyn PhysicalExpr>>,
    to_mutations: Arc<RowsToMutations>,
    table: String,
    engine: Arc<Engine>,
    properties: Arc<PlanProperties>,
}

impl CountExec {
    fn new(
        name: &'static str,
        scan: Arc<dyn ExecutionPlan>,
        f: impl Fn(&RecordBatch, &datafusion::arrow::array::BooleanArray) -> Result<Vec<Mutation>>
            + Send
            + Sync
            + 'static,
        predicate: Option<Arc<dyn PhysicalExpr>>,
        table: String,
        engine: Arc<Engine>,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(count_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            name,
            scan,
            predicate,
            to_mutations: Arc::new(f),
            table,
            engine,
            properties,
        }
    }
}

fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]))
}

impl fmt::Debug for CountExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name, self.table)
    }
}

impl DisplayAs for CountExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: table={}", self.name, self.table)
    }
}

impl ExecutionPlan for CountExec {
    fn name(&self) -> &str {
        self.name
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let scan = self.scan.clone();
        let predicate = self.predicate.clone();
        let f = self.to_mutations.clone();
        let engine = self.engine.clone();
        let table = self.table.clone();
        let work = async move {
            let batches = collect(scan, context).await?;
            let mut mutations = Vec::new();
            let mut count = 0u64;
            for b in &batches {
                let keep = match &predicate {
                    Some(p) => {
                        let v = p.evaluate(b)?.into_array(b.num_rows())?;
                        v.as_boolean_opt()
                            .ok_or_else(|| {
                                DataFusionError::Internal("predicate is not boolean".into())
                            })?
                            .clone()
                    }
                    None => datafusion::arrow::array::BooleanArray::from(vec![true; b.num_rows()]),
                };
                count += (0..keep.len())
                    .filter(|&i| keep.is_valid(i) && keep.value(i))
                    .count() as u64;
                mutations.extend(f(b, &keep)?);
            }
            if !mutations.is_empty() {
                tokio::task::spawn_blocking(move || engine.write(&table, mutations))
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?
                    .map_err(storage)?;
            }
            RecordBatch::try_new(
                count_schema(),
                vec![Arc::new(UInt64Array::from(vec![count]))],
            )
            .map_err(DataFusionError::from)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            count_schema(),
            futures::stream::once(work),
        )))
    }
}

/// Reads a table's regions: one partition per region that the key
/// predicates leave.
#[derive(Debug)]
pub struct RegionScanExec {
    table: RegionTable,
    projection: Vec<usize>,
    families: Vec<String>,
    /// Regions read; a region may be read as more than one partition.
    regions: usize,
    partitions: Vec<Vec<KeyScan>>,
    limit: Option<usize>,
    with_row_key: bool,
    /// Names of the leading key columns whose equal values never straddle
    /// two partitions (empty: partitions are cut anywhere).
    grouped_by: Vec<String>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl RegionScanExec {
    /// The same scan with its partitions cut only between rows that differ
    /// in the key columns at `columns` (positions in this scan's output):
    /// each partition then holds every row of the groups it starts, which
    /// is what a window `PARTITION BY` those columns needs from its input,
    /// without a hash repartition. `None` unless those columns are exactly
    /// the first ones of the row key and the scan is made of ranges.
    ///
    /// A cut between partitions that falls inside a group moves to where
    /// the group starts: the later partition also reads the group's rows
    /// from the end of the earlier one (a range of its region), so both
    /// stay in key order. Floating-point key columns are refused: two keys
    /// that differ in bytes (`0.0` and `-0.0`) are one value in SQL.
    pub fn grouped_by(&self, columns: &[usize]) -> Option<RegionScanExec> {
        let def = &self.table.def;
        let n = columns.len();
        let mut seen = vec![false; def.key.len()];
        for &c in columns {
            let table_col = *self.projection.get(c)?;
            let j = def.key.iter().position(|&k| k == table_col)?;
            if j >= n || std::mem::replace(&mut seen[j], true) {
                return None;
            }
        }
        let types: Vec<SqlType> = def.key[..n].iter().map(|&k| def.columns[k].ty).collect();
        if n == 0
            || types
                .iter()
                .any(|t| matches!(t, SqlType::Float4 | SqlType::Float8))
        {
            return None;
        }
        // One partition holds every group whole already.
        let partitions = if self.partitions.len() <= 1 {
            self.partitions.clone()
        } else {
            regroup_ranges(&self.partitions, &types)?
        };
        let properties = Arc::new(PlanProperties::new(
            self.properties.eq_properties.clone(),
            Partitioning::UnknownPartitioning(partitions.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Some(RegionScanExec {
            table: self.table.clone_with_as_of(),
            projection: self.projection.clone(),
            families: self.families.clone(),
            regions: self.regions,
            partitions,
            limit: self.limit,
            with_row_key: self.with_row_key,
            grouped_by: def.key[..n]
                .iter()
                .map(|&k| def.columns[k].name.clone())
                .collect(),
            schema: self.schema.clone(),
            properties,
        })
    }
}

/// `partitions` (ranges only, in key order) with every cut that falls
/// inside a group of the leading key columns `types` moved to where the
/// group starts: the parts of earlier partitions at or past that start
/// move to the front of the later one (a group may span more than one
/// partition: take from each, latest last). `None` for point scans or a
/// cut that is not a valid key.
fn regroup_ranges(partitions: &[Vec<KeyScan>], types: &[SqlType]) -> Option<Vec<Vec<KeyScan>>> {
    let mut parts: Vec<Vec<(Vec<u8>, Vec<u8>)>> = partitions
        .iter()
        .map(|p| {
            p.iter()
                .map(|s| match s {
                    KeyScan::Range(lo, hi) => Some((lo.clone(), hi.clone())),
                    KeyScan::Point(_) => None,
                })
                .collect()
        })
        .collect::<Option<_>>()?;
    for i in 1..parts.len() {
        let Some(start) = parts[i].first().map(|r| r.0.clone()) else {
            continue;
        };
        let cut = start[..codec::key_prefix_len(&start, types)?].to_vec();
        if cut == start {
            continue;
        }
        let mut moved = Vec::new();
        for earlier in parts[..i].iter_mut().rev() {
            let mut keep = Vec::with_capacity(earlier.len());
            let mut tail = Vec::new();
            for (lo, hi) in earlier.drain(..) {
                if !hi.is_empty() && hi <= cut {
                    keep.push((lo, hi));
                } else if lo >= cut {
                    tail.push((lo, hi));
                } else {
                    keep.push((lo, cut.clone()));
                    tail.push((cut.clone(), hi));
                }
            }
            *earlier = keep;
            tail.append(&mut moved);
            moved = tail;
        }
        moved.append(&mut parts[i]);
        parts[i] = moved;
    }
    Some(
        parts
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.into_iter()
                    .map(|(lo, hi)| KeyScan::Range(lo, hi))
                    .collect()
            })
            .collect(),
    )
}

impl DisplayAs for RegionScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let points: usize = self
            .partitions
            .iter()
            .flatten()
            .filter(|s| matches!(s, KeyScan::Point(_)))
            .count();
        let ranges: usize = self.partitions.iter().flatten().count() - points;
        write!(
            f,
            "RegionScanExec: table={}, regions={}, families=[{}], point_gets={points}, range_scans={ranges}",
            self.table.def.name,
            self.regions,
            self.families.join(", ")
        )?;
        if self.partitions.len() > self.regions {
            write!(f, ", partitions={}", self.partitions.len())?;
        }
        if let Some(l) = self.limit {
            write!(f, ", limit={l}")?;
        }
        if let Some(t) = self.table.as_of {
            write!(f, ", as_of_ms={t}")?;
        }
        if !self.grouped_by.is_empty() {
            write!(
                f,
                ", partitions_grouped_by=[{}]",
                self.grouped_by.join(", ")
            )?;
        }
        Ok(())
    }
}

impl ExecutionPlan for RegionScanExec {
    fn name(&self) -> &str {
        "RegionScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let scans = self.partitions.get(partition).cloned().unwrap_or_default();
        let reader = PartitionReader {
            table: self.table.clone_with_as_of(),
            projection: self.projection.clone(),
            families: self.families.clone(),
            limit: self.limit,
            with_row_key: self.with_row_key,
            schema: self.schema.clone(),
            batch_size: context.session_config().batch_size(),
        };
        // The region is read on a blocking thread and its batches handed
        // over as they fill, two at most in flight: memory stays bounded
        // and the plan above works while the scan goes on. A consumer that
        // stops early (LIMIT, cancel) drops the receiver, which stops it.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(2);
        tokio::task::spawn_blocking(move || {
            let mut emit = |b: RecordBatch| tx.blocking_send(Ok(b)).is_ok();
            if let Err(e) = reader.read(&scans, &mut emit) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// A query that reads one row by its whole key: `SELECT col, ... FROM t
/// WHERE k1 = lit AND k2 = lit ...` over one region table, with nothing
/// else in the plan. It runs as one get, without planning.
pub struct PointLookup {
    reader: Arc<PartitionReader>,
    key: Vec<u8>,
}

/// A point lookup whose key values may be parameters (`k1 = $1`): what the
/// plan says, recognised once when a statement is prepared, and bound to
/// each execution's values without binding or looking at the plan again.
#[derive(Clone)]
pub struct LookupTemplate {
    reader: Arc<PartitionReader>,
    /// Each key column's value, in key order.
    values: Vec<KeyValue>,
}

#[derive(Clone, Debug)]
enum KeyValue {
    Literal(ScalarValue),
    Param(String),
}

impl fmt::Debug for LookupTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LookupTemplate")
            .field("table", &self.reader.table.def.name)
            .field("values", &self.values)
            .finish()
    }
}

impl LookupTemplate {
    /// Recognises the plan (before optimisation; placeholders allowed).
    pub fn of(plan: &LogicalPlan) -> Option<LookupTemplate> {
        let LogicalPlan::Projection(p) = plan else {
            return None;
        };
        let LogicalPlan::Filter(f) = p.input.as_ref() else {
            return None;
        };
        let LogicalPlan::TableScan(scan) = f.input.as_ref() else {
            return None;
        };
        if !scan.filters.is_empty() || scan.fetch.is_some() || scan.projection.is_some() {
            return None;
        }
        let provider = datafusion::datasource::source_as_provider(&scan.source).ok()?;
        let table = provider.downcast_ref::<RegionTable>()?;
        // Every conjunct is an equality on a key column, each column once.
        let mut values: Vec<Option<KeyValue>> = vec![None; table.def.key.len()];
        for c in datafusion::logical_expr::utils::split_conjunction(&f.predicate) {
            let (j, v) = table.key_column_is(c)?;
            if values[j].replace(v).is_some() {
                return None;
            }
        }
        let values = values.into_iter().collect::<Option<Vec<_>>>()?;
        let projection = p
            .expr
            .iter()
            .map(|e| match e {
                Expr::Column(c) => table.def.columns.iter().position(|col| col.name == c.name),
                _ => None,
            })
            .collect::<Option<Vec<usize>>>()?;
        Some(LookupTemplate {
            reader: Arc::new(PartitionReader {
                table: table.clone_with_as_of(),
                families: table.families_for(&projection),
                projection,
                limit: None,
                with_row_key: false,
                schema: Arc::new(plan.schema().as_arrow().clone()),
                batch_size: 1,
            }),
            values,
        })
    }

    /// The lookup with these parameter values; `None` when a value is
    /// missing or is not exactly a value of its key column's type
    /// (`int_key = 5.5` matches nothing; a cast would round it), which the
    /// planner then answers.
    pub fn bind(&self, params: Option<&ParamValues>) -> Option<PointLookup> {
        let table = &self.reader.table;
        let mut key = Vec::new();
        for (j, v) in self.values.iter().enumerate() {
            let value = match v {
                KeyValue::Literal(v) => v.clone(),
                KeyValue::Param(id) => params?
                    .get_placeholders_with_values(id)
                    .ok()?
                    .value()
                    .clone(),
            };
            let ty = table.def.columns[table.def.key[j]].ty;
            let cast = value.cast_to(&codec::arrow_type(ty)).ok()?;
            if cast.is_null() || cast.cast_to(&value.data_type()).ok()? != value {
                return None;
            }
            if !table.encode_key_part(&mut key, j, &cast) {
                return None;
            }
        }
        Some(PointLookup {
            reader: self.reader.clone(),
            key,
        })
    }
}

impl PointLookup {
    pub fn schema(&self) -> SchemaRef {
        self.reader.schema.clone()
    }

    /// The row, if it exists (blocking: it reads the store).
    pub fn run(&self) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        let mut emit = |b: RecordBatch| {
            out.push(b);
            true
        };
        self.reader
            .read(&[KeyScan::Point(self.key.clone())], &mut emit)?;
        Ok(out)
    }
}

struct PartitionReader {
    table: RegionTable,
    projection: Vec<usize>,
    families: Vec<String>,
    limit: Option<usize>,
    with_row_key: bool,
    schema: SchemaRef,
    batch_size: usize,
}

/// Receives finished batches; returns false when it wants no more.
type Emit<'a> = dyn FnMut(RecordBatch) -> bool + 'a;

impl PartitionReader {
    fn read(&self, scans: &[KeyScan], emit: &mut Emit<'_>) -> Result<()> {
        let engine = &self.table.engine;
        let name = &self.table.def.name;
        let read = self.table.read_options();
        let mut rows = RowAssembler::new(self);
        let families: Vec<&str> = self.families.iter().map(String::as_str).collect();
        let mut key = Vec::new();
        for s in scans {
            if rows.done() {
                break;
            }
            match s {
                KeyScan::Point(k) => {
                    key.clear();
                    key.extend_from_slice(k);
                    for c in engine.get(name, k, &families, &read).map_err(storage)? {
                        let (cols, is_default) = rows.columns_of(&c.key.family);
                        rows.set(&cols, is_default, &c.key.qualifier, &c.value);
                    }
                    rows.end_row(&key, emit)?;
                }
                KeyScan::Range(a, b) => {
                    let opts = ScanOptions {
                        start: a.clone(),
                        end: b.clone(),
                        families: self.families.clone(),
                        read: read.clone(),
                        batch_size: self.batch_size,
                    };
                    for region in engine.scan_stores(name, &opts).map_err(storage)? {
                        rows.region(region, &mut key, emit)?;
                        if rows.done() {
                            break;
                        }
                    }
                }
            }
        }
        rows.flush_batch(emit)
    }
}

/// One family's visible cells of a region, batch by batch.
struct FamilyCursor {
    scan: StoreScan,
    row: BinaryViewArray,
    qualifier: BinaryViewArray,
    value: BinaryViewArray,
    pos: usize,
    /// Projected position of each of the family's columns, by qualifier.
    columns: Vec<(Vec<u8>, usize)>,
    is_default: bool,
}

impl FamilyCursor {
    /// The current cell's row, loading the next batch when one is used up.
    fn row(&mut self) -> Result<Option<&[u8]>> {
        while self.pos >= self.row.len() {
            match self.scan.next() {
                None => return Ok(None),
                Some(batch) => {
                    let batch = batch.map_err(storage)?;
                    self.row = batch.column(0).as_binary_view().clone();
                    self.qualifier = batch.column(1).as_binary_view().clone();
                    self.value = batch.column(5).as_binary_view().clone();
                    self.pos = 0;
                }
            }
        }
        Ok(Some(self.row.value(self.pos)))
    }
}

/// Folds cells (in key order) into rows of the projected columns.
struct RowAssembler<'a> {
    reader: &'a PartitionReader,
    /// For each key column, its projected position.
    key_targets: Vec<Option<usize>>,
    /// Where key columns that are not projected are decoded (and dropped).
    scratch: Vec<Box<dyn ArrayBuilder>>,
    /// A cell of the current row's default family was seen (the row
    /// exists).
    exists: bool,
    /// The current row's value of each projected column, if seen.
    values: Vec<Vec<u8>>,
    present: Vec<bool>,
    builders: Vec<Box<dyn ArrayBuilder>>,
    row_keys: BinaryBuilder,
    rows_in_batch: usize,
    rows_total: usize,
    /// The consumer wants no more batches.
    stopped: bool,
}

impl<'a> RowAssembler<'a> {
    fn new(reader: &'a PartitionReader) -> Self {
        let def = &reader.table.def;
        let n = reader.projection.len();
        Self {
            reader,
            key_targets: def
                .key
                .iter()
                .map(|k| reader.projection.iter().position(|p| p == k))
                .collect(),
            scratch: def
                .key
                .iter()
                .map(|&k| builder(def.columns[k].ty, 0))
                .collect(),
            exists: false,
            values: vec![Vec::new(); n],
            present: vec![false; n],
            builders: reader
                .projection
                .iter()
                .map(|&c| builder(def.columns[c].ty, reader.batch_size))
                .collect(),
            row_keys: BinaryBuilder::new(),
            rows_in_batch: 0,
            rows_total: 0,
            stopped: false,
        }
    }

    fn done(&self) -> bool {
        self.stopped || self.reader.limit.is_some_and(|l| self.rows_total >= l)
    }

    /// The projected non-key columns of `family` (qualifier, position), and
    /// whether it is the default family (whose cells show a row exists).
    fn columns_of(&self, family: &str) -> (Vec<(Vec<u8>, usize)>, bool) {
        let def = &self.reader.table.def;
        let columns = self
            .reader
            .projection
            .iter()
            .enumerate()
            .filter(|&(_, &c)| !def.key.contains(&c) && def.columns[c].family == family)
            .map(|(pos, &c)| (def.columns[c].name.as_bytes().to_vec(), pos))
            .collect();
        (columns, family == DEFAULT_FAMILY)
    }

    /// Records one visible cell of the current row.
    fn set(
        &mut self,
        columns: &[(Vec<u8>, usize)],
        is_default: bool,
        qualifier: &[u8],
        value: &[u8],
    ) {
        // Any visible cell of the default family, its marker or a value,
        // shows the row exists.
        self.exists |= is_default;
        if qualifier.is_empty() {
            return;
        }
        if let Some((_, pos)) = columns.iter().find(|(q, _)| q.as_slice() == qualifier) {
            self.values[*pos].clear();
            self.values[*pos].extend_from_slice(value);
            self.present[*pos] = true;
        }
    }

    /// Folds one region's family scans, merged by row.
    fn region(
        &mut self,
        scans: Vec<StoreScan>,
        key: &mut Vec<u8>,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        let mut cursors: Vec<FamilyCursor> = scans
            .into_iter()
            .map(|scan| {
                let (columns, is_default) = self.columns_of(scan.family());
                FamilyCursor {
                    scan,
                    row: BinaryViewArray::new_null(0),
                    qualifier: BinaryViewArray::new_null(0),
                    value: BinaryViewArray::new_null(0),
                    pos: 0,
                    columns,
                    is_default,
                }
            })
            .collect();
        if let [only] = cursors.as_mut_slice() {
            if only.is_default && only.columns.len() == self.value_columns() {
                return self.one_family(only, key, emit);
            }
        }
        while !self.done() {
            // The smallest current row among the families.
            let mut next: Option<&[u8]> = None;
            for c in cursors.iter_mut() {
                if let Some(r) = c.row()? {
                    if next.is_none_or(|n| r < n) {
                        next = Some(r);
                    }
                }
            }
            let Some(next) = next else { break };
            key.clear();
            key.extend_from_slice(next);
            for c in cursors.iter_mut() {
                while c.row()? == Some(key.as_slice()) {
                    let (q, v) = (c.qualifier.value(c.pos), c.value.value(c.pos));
                    self.set(&c.columns, c.is_default, q, v);
                    c.pos += 1;
                }
            }
            self.end_row(key, emit)?;
        }
        Ok(())
    }

    /// How many projected columns are not key columns.
    fn value_columns(&self) -> usize {
        self.reader.projection.len() - self.key_targets.iter().flatten().count()
    }

    /// Folds a region whose only scanned family is the default one and
    /// holds every projected value column: every cell's row exists. The
    /// rows wholly inside a batch are folded a batch at a time
    /// ([`RowAssembler::rows_of`]); a row that goes on into the next batch
    /// is folded cell by cell.
    fn one_family(
        &mut self,
        c: &mut FamilyCursor,
        key: &mut Vec<u8>,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        // `key` is a row whose cells so far went through `set`.
        let mut open = false;
        while !self.done() {
            if c.row()?.is_none() {
                break;
            }
            let n = c.row.len();
            let mut i = c.pos;
            if open {
                while i < n && c.row.value(i) == key.as_slice() {
                    self.set(&c.columns, true, c.qualifier.value(i), c.value.value(i));
                    i += 1;
                }
                if i == n {
                    c.pos = n;
                    continue;
                }
                self.end_row(key, emit)?;
            }
            // The batch's last row may go on in the next batch.
            let mut last = n - 1;
            while last > i && views::eq(&c.row, last - 1, &c.row, n - 1) {
                last -= 1;
            }
            self.rows_of(c, i, last, emit)?;
            key.clear();
            key.extend_from_slice(c.row.value(last));
            for j in last..n {
                self.set(&c.columns, true, c.qualifier.value(j), c.value.value(j));
            }
            open = true;
            c.pos = n;
        }
        if open {
            self.end_row(key, emit)?;
        }
        Ok(())
    }

    /// Folds the whole rows of cells `[from, to)` of `c`'s batch column by
    /// column: first where each row starts and which cell holds each
    /// column's value, then each output column decoded in one pass.
    fn rows_of(
        &mut self,
        c: &FamilyCursor,
        from: usize,
        to: usize,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        const NONE: u32 = u32::MAX;
        let ncols = c.columns.len();
        // Row r starts at cell starts[r]; its value of column k is in cell
        // cells[r * ncols + k].
        let mut starts: Vec<u32> = Vec::with_capacity(to - from);
        let mut cells: Vec<u32> = Vec::with_capacity((to - from) * ncols);
        // Column names as views: a qualifier of up to 12 bytes is matched
        // by comparing its view (no column name is empty, so the row
        // marker matches none).
        let names: Vec<Option<u128>> = c
            .columns
            .iter()
            .map(|(name, _)| views::inline_view(name))
            .collect();
        for i in from..to {
            if i == from || !views::eq(&c.row, i, &c.row, i - 1) {
                starts.push(i as u32);
                if ncols == 1 {
                    cells.push(NONE);
                } else {
                    cells.extend(std::iter::repeat_n(NONE, ncols));
                }
            }
            let column = c
                .columns
                .iter()
                .zip(&names)
                .position(|((name, _), view)| views::is(&c.qualifier, i, name, *view));
            if let Some(k) = column {
                let r = starts.len() - 1;
                cells[r * ncols + k] = i as u32;
            }
        }
        let def = &self.reader.table.def;
        let mut r0 = 0;
        while r0 < starts.len() && !self.done() {
            let mut room = self.reader.batch_size - self.rows_in_batch;
            if let Some(l) = self.reader.limit {
                room = room.min(l - self.rows_total);
            }
            let r1 = (r0 + room).min(starts.len());
            let rows = &starts[r0..r1];
            let mut pos = vec![0usize; rows.len()];
            // Key columns up to the last projected one: the others are
            // stepped over, not decoded.
            let needed = self.key_targets.iter().rposition(Option::is_some);
            for (j, &k) in def.key.iter().enumerate().take(needed.map_or(0, |n| n + 1)) {
                let ty = def.columns[k].ty;
                let keys = rows
                    .iter()
                    .map(|&i| c.row.value(i as usize))
                    .zip(pos.iter_mut());
                match self.key_targets[j] {
                    Some(t) => {
                        decode_key_values(keys, ty, self.builders[t].as_mut()).map_err(ext)?
                    }
                    None => {
                        for (key, p) in keys {
                            skip_key_value(key, p, ty).map_err(ext)?;
                        }
                    }
                }
            }
            for (k, (_, out)) in c.columns.iter().enumerate() {
                let ty = def.columns[self.reader.projection[*out]].ty;
                let values = (r0..r1).map(|r| match cells[r * ncols + k] {
                    NONE => None,
                    i => Some(c.value.value(i as usize)),
                });
                decode_values(ty, values, self.builders[*out].as_mut()).map_err(ext)?;
            }
            if self.reader.with_row_key {
                for &i in rows {
                    self.row_keys.append_value(c.row.value(i as usize));
                }
            }
            self.rows_in_batch += rows.len();
            self.rows_total += rows.len();
            if self.rows_in_batch >= self.reader.batch_size {
                self.flush_batch(emit)?;
            }
            r0 = r1;
        }
        Ok(())
    }

    /// Emits the row `key` if it exists (a default-family cell is visible).
    fn end_row(&mut self, key: &[u8], emit: &mut Emit<'_>) -> Result<()> {
        let exists = std::mem::take(&mut self.exists);
        if !exists || self.done() {
            self.present.iter_mut().for_each(|p| *p = false);
            return Ok(());
        }
        let def = &self.reader.table.def;
        // Key columns: decode the key in order, straight into the output
        // builder of a projected column, into a scratch builder otherwise.
        let mut pos = 0;
        for (j, &k) in def.key.iter().enumerate() {
            let ty = def.columns[k].ty;
            let target = match self.key_targets[j] {
                Some(i) => self.builders[i].as_mut(),
                None => self.scratch[j].as_mut(),
            };
            decode_key_value(key, &mut pos, ty, target).map_err(ext)?;
        }
        for (i, &c) in self.reader.projection.iter().enumerate() {
            if self.key_targets.contains(&Some(i)) {
                continue;
            }
            let value = std::mem::take(&mut self.present[i]).then_some(self.values[i].as_slice());
            decode_value(def.columns[c].ty, value, self.builders[i].as_mut()).map_err(ext)?;
        }
        if self.reader.with_row_key {
            self.row_keys.append_value(key);
        }
        self.rows_in_batch += 1;
        self.rows_total += 1;
        if self.rows_in_batch >= self.reader.batch_size {
            self.flush_batch(emit)?;
        }
        Ok(())
    }

    fn flush_batch(&mut self, emit: &mut Emit<'_>) -> Result<()> {
        if self.rows_in_batch == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = self.builders.iter_mut().map(|b| b.finish()).collect();
        for b in &mut self.scratch {
            b.finish();
        }
        if self.reader.with_row_key {
            columns.push(Arc::new(self.row_keys.finish()));
        }
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows_in_batch));
        let batch =
            RecordBatch::try_new_with_options(self.reader.schema.clone(), columns, &options)?;
        self.rows_in_batch = 0;
        if !emit(batch) {
            self.stopped = true;
        }
        Ok(())
    }
}

/// A bulk load in progress (see [`RegionTable::stage`]).
pub struct CopyStage {
    table: RegionTable,
    load: tidebase_storage::BulkLoad,
    ts: i64,
    rows: u64,
}

impl CopyStage {
    /// Rows staged so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Stages a batch in table-schema order. Errors name the row (counted
    /// from 1 across the whole load).
    pub fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let (load, ts) = (&mut self.load, self.ts);
        self.table
            .for_each_put(batch, self.rows, |key, family, qualifier, value| {
                load.add(key, family, qualifier, ts, CellKind::Put, value)
                    .map_err(storage)
            })?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Makes the whole load visible at once; returns the row count.
    pub fn commit(self) -> Result<u64> {
        self.load.commit().map_err(storage)?;
        Ok(self.rows)
    }
}
