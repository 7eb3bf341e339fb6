//! The table provider of a topic: a scan per partition that reads whole
//! batches from the log, starting where `_offset` / `_timestamp` filters say
//! and skipping partitions that `_partition` filters exclude; and a sink
//! that appends rows as messages, partitioned as Kafka would.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Int32Builder, Int64Builder, RecordBatch,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{Int32Type, SchemaRef, TimestampMicrosecondType};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::ScalarValue;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::StreamExt;
use tidebase_storage::log::Partition;

use super::json::{self, Val};
use super::{decode_batches, encode_batch, partition_for_key, Message, TopicDef, Topics};
use crate::table::codec::{builder, finish};
use crate::table::{ColumnDef, SqlType, TableDef, DEFAULT_FAMILY};
use crate::CatalogError;

fn ext(e: impl Into<CatalogError>) -> DataFusionError {
    DataFusionError::External(Box::new(e.into()))
}

/// A topic read and written through SQL.
pub struct TopicTable {
    pub def: TopicDef,
    schema: SchemaRef,
    topics: std::sync::Weak<Topics>,
}

impl fmt::Debug for TopicTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicTable({})", self.def.name)
    }
}

/// What the filters allow: partitions, an offset range, a first timestamp.
#[derive(Debug, Clone, Default)]
struct Bounds {
    partitions: Option<BTreeSet<i64>>,
    min_offset: i64,
    max_offset: Option<i64>,
    min_ts_ms: Option<i64>,
}

fn column_literal(e: &BinaryExpr) -> Option<(&str, Operator, ScalarValue)> {
    match (e.left.as_ref(), e.right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) => Some((c.name.as_str(), e.op, v.clone())),
        (Expr::Literal(v, _), Expr::Column(c)) => Some((c.name.as_str(), e.op.swap()?, v.clone())),
        _ => None,
    }
}

fn as_i64(v: &ScalarValue) -> Option<i64> {
    match v
        .cast_to(&datafusion::arrow::datatypes::DataType::Int64)
        .ok()?
    {
        ScalarValue::Int64(Some(i)) => Some(i),
        _ => None,
    }
}

fn as_ms(v: &ScalarValue) -> Option<i64> {
    let ty = datafusion::arrow::datatypes::DataType::Timestamp(
        datafusion::arrow::datatypes::TimeUnit::Millisecond,
        None,
    );
    match v.cast_to(&ty).ok()? {
        ScalarValue::TimestampMillisecond(Some(ms), _) => Some(ms),
        _ => None,
    }
}

impl Bounds {
    /// Narrows the bounds by one filter; true if the filter was understood.
    fn apply(&mut self, f: &Expr) -> bool {
        let Expr::BinaryExpr(b) = f else {
            return false;
        };
        if b.op == Operator::And {
            let l = self.apply(&b.left);
            let r = self.apply(&b.right);
            return l && r;
        }
        let Some((col, op, v)) = column_literal(b) else {
            return false;
        };
        match col {
            "_partition" if op == Operator::Eq => {
                let Some(p) = as_i64(&v) else { return false };
                let set = self.partitions.get_or_insert_with(|| [p].into());
                set.retain(|x| *x == p);
                true
            }
            "_offset" => {
                let Some(o) = as_i64(&v) else { return false };
                match op {
                    Operator::Eq => {
                        self.min_offset = self.min_offset.max(o);
                        self.max_offset = Some(self.max_offset.map_or(o + 1, |m| m.min(o + 1)));
                    }
                    Operator::Gt => self.min_offset = self.min_offset.max(o + 1),
                    Operator::GtEq => self.min_offset = self.min_offset.max(o),
                    Operator::Lt => self.max_offset = Some(self.max_offset.map_or(o, |m| m.min(o))),
                    Operator::LtEq => {
                        self.max_offset = Some(self.max_offset.map_or(o + 1, |m| m.min(o + 1)))
                    }
                    _ => return false,
                }
                true
            }
            "_timestamp" if matches!(op, Operator::Gt | Operator::GtEq | Operator::Eq) => {
                let Some(ms) = as_ms(&v) else { return false };
                self.min_ts_ms = Some(self.min_ts_ms.map_or(ms, |m| m.max(ms)));
                true
            }
            _ => false,
        }
    }
}

impl TopicTable {
    pub(super) fn new(def: TopicDef, topics: Arc<Topics>) -> Self {
        Self {
            schema: def.schema(),
            def,
            topics: Arc::downgrade(&topics),
        }
    }

    fn topics(&self) -> Result<Arc<Topics>> {
        self.topics
            .upgrade()
            .ok_or_else(|| DataFusionError::Execution("the catalog is closed".into()))
    }

    fn log_topic(&self) -> Result<Arc<tidebase_storage::log::Topic>> {
        self.topics()?
            .log()
            .topic(&self.def.name)
            .ok_or_else(|| ext(CatalogError::TableNotFound(self.def.name.clone())))
    }

    /// Turns rows (in this table's schema) into messages per partition.
    /// Explicit `_partition`, `_key` and `_timestamp` values win over the
    /// key column, the partitioner and the clock.
    pub fn messages_for(
        &self,
        batch: &RecordBatch,
        partitions: u32,
        now_ms: i64,
        first_row: u64,
    ) -> Result<Vec<(u32, Message)>> {
        let topics = self.topics()?;
        let n = self.def.columns.len().max(1);
        let cols: Vec<ArrayRef> = batch.columns()[..n].to_vec();
        let part = batch.column(n).as_primitive::<Int32Type>();
        let ts = batch
            .column(n + 2)
            .as_primitive::<TimestampMicrosecondType>();
        let keys = batch.column(n + 3).as_binary::<i32>();
        let key_col = self
            .def
            .key
            .as_ref()
            .and_then(|k| self.def.columns.iter().position(|(c, _)| c == k));
        let mut out = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let key = if keys.is_valid(row) {
                Some(keys.value(row).to_vec())
            } else {
                key_col.and_then(|i| json::key_text(self.def.columns[i].1, &cols[i], row))
            };
            let value = if self.def.is_raw() {
                let v = cols[0].as_binary::<i32>();
                v.is_valid(row).then(|| v.value(row).to_vec())
            } else {
                Some(json::row_to_json(&self.def.columns, &cols, row))
            };
            let p = if part.is_valid(row) {
                let p = part.value(row);
                if p < 0 || p as u32 >= partitions {
                    return Err(ext(CatalogError::BadOptionValue {
                        name: format!("_partition (row {})", first_row + row as u64 + 1),
                        value: p.to_string(),
                    }));
                }
                p as u32
            } else {
                match &key {
                    Some(k) => partition_for_key(k, partitions),
                    None => topics.next_round_robin(partitions),
                }
            };
            let timestamp_ms = if ts.is_valid(row) {
                ts.value(row).div_euclid(1000)
            } else {
                now_ms
            };
            out.push((
                p,
                Message {
                    key,
                    value,
                    timestamp_ms,
                },
            ));
        }
        Ok(out)
    }

    /// A handle on the same topic, for sinks and COPY.
    fn detached(&self) -> Arc<TopicTable> {
        Arc::new(TopicTable {
            def: self.def.clone(),
            schema: self.schema.clone(),
            topics: self.topics.clone(),
        })
    }

    /// The topic as a table definition, for COPY: its own columns (or
    /// `_value`), then the metadata columns.
    pub fn copy_def(&self) -> TableDef {
        let mut columns: Vec<ColumnDef> = if self.def.is_raw() {
            vec![ColumnDef {
                name: "_value".into(),
                family: DEFAULT_FAMILY.into(),
                ty: SqlType::Bytea,
            }]
        } else {
            self.def
                .columns
                .iter()
                .map(|(n, t)| ColumnDef {
                    name: n.clone(),
                    family: DEFAULT_FAMILY.into(),
                    ty: *t,
                })
                .collect()
        };
        for (n, t) in [
            ("_partition", SqlType::Int4),
            ("_offset", SqlType::Int8),
            ("_timestamp", SqlType::Timestamp),
            ("_key", SqlType::Bytea),
        ] {
            columns.push(ColumnDef {
                name: n.into(),
                family: DEFAULT_FAMILY.into(),
                ty: t,
            });
        }
        TableDef {
            name: self.def.name.clone(),
            columns,
            key: Vec::new(),
            families: vec![(DEFAULT_FAMILY.into(), Default::default())],
            split_size: None,
        }
    }

    /// Columns a COPY without a column list fills: the topic's own.
    pub fn copy_columns(&self) -> usize {
        self.def.columns.len().max(1)
    }

    /// Starts a staged COPY: messages are encoded into a spill file and
    /// appended only when the whole input parsed.
    pub fn stage(&self) -> Result<TopicStage> {
        let partitions = self.log_topic()?.partition_count();
        let spill = tempfile::tempfile()
            .map_err(|e| DataFusionError::Execution(format!("COPY spill file: {e}")))?;
        Ok(TopicStage {
            table: self.detached(),
            spill: std::io::BufWriter::new(spill),
            rows: 0,
            now: tidebase_storage::now_ms(),
            partitions,
        })
    }

    /// Appends rows (in this table's schema): one record batch per partition.
    pub fn append_rows(&self, batch: &RecordBatch, now_ms: i64, first_row: u64) -> Result<u64> {
        let topic = self.log_topic()?;
        let partitions = topic.partition_count();
        let mut per: Vec<Vec<Message>> = vec![Vec::new(); partitions as usize];
        for (p, m) in self.messages_for(batch, partitions, now_ms, first_row)? {
            per[p as usize].push(m);
        }
        let log = self.topics()?.log().clone();
        for (p, msgs) in per.iter().enumerate() {
            if !msgs.is_empty() {
                log.append(&self.def.name, p as u32, &encode_batch(msgs))
                    .map_err(ext)?;
            }
        }
        Ok(batch.num_rows() as u64)
    }
}

#[async_trait]
impl TableProvider for TopicTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        // The system topics are read-only views (tidebase.rejects).
        if self.def.name.starts_with(super::INTERNAL_PREFIX) {
            TableType::View
        } else {
            TableType::Base
        }
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // The log narrows what it reads; the filter still runs on the rows.
        Ok(filters
            .iter()
            .map(|f| {
                if Bounds::default().apply(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut bounds = Bounds::default();
        for f in filters {
            bounds.apply(f);
        }
        let topic = self.log_topic()?;
        let mut parts = Vec::new();
        for (i, p) in topic.partitions().into_iter().enumerate() {
            if bounds
                .partitions
                .as_ref()
                .is_some_and(|s| !s.contains(&(i as i64)))
            {
                continue;
            }
            let end = bounds
                .max_offset
                .map_or(p.high_watermark(), |m| m.min(p.high_watermark()));
            let mut start = bounds.min_offset.max(p.log_start());
            if let Some(ts) = bounds.min_ts_ms {
                start = start.max(p.batch_for_timestamp(ts).unwrap_or(end));
            }
            if start < end {
                parts.push((i as i32, p, start, end));
            }
        }
        let projected = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(projected.clone()),
            Partitioning::UnknownPartitioning(parts.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Arc::new(TopicScanExec {
            def: Arc::new(self.def.clone()),
            schema: self.schema.clone(),
            projected,
            projection: projection.cloned(),
            parts,
            properties,
        }))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(DataFusionError::NotImplemented(format!(
                "{insert_op} is not supported for topics (they only append)"
            )));
        }
        let sink = TopicSink {
            table: self.detached(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// A COPY into a topic in progress: encoded batches wait in a spill file.
pub struct TopicStage {
    table: Arc<TopicTable>,
    spill: std::io::BufWriter<std::fs::File>,
    rows: u64,
    now: i64,
    partitions: u32,
}

impl TopicStage {
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Encodes a chunk of rows (in the `copy_def` schema).
    pub fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        use std::io::Write;
        let mut per: Vec<Vec<Message>> = vec![Vec::new(); self.partitions as usize];
        for (p, m) in self
            .table
            .messages_for(batch, self.partitions, self.now, self.rows)?
        {
            per[p as usize].push(m);
        }
        let io = |e: std::io::Error| DataFusionError::Execution(format!("COPY spill file: {e}"));
        for (p, msgs) in per.iter().enumerate() {
            if msgs.is_empty() {
                continue;
            }
            let bytes = encode_batch(msgs);
            self.spill
                .write_all(&(p as u32).to_le_bytes())
                .map_err(io)?;
            self.spill
                .write_all(&(bytes.len() as u64).to_le_bytes())
                .map_err(io)?;
            self.spill.write_all(&bytes).map_err(io)?;
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Appends every staged batch; returns the rows copied.
    pub fn commit(self) -> Result<u64> {
        use std::io::{Read, Seek};
        let io = |e: std::io::Error| DataFusionError::Execution(format!("COPY spill file: {e}"));
        let mut file = self.spill.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
        let mut r = std::io::BufReader::new(file);
        let log = self.table.topics()?.log().clone();
        let mut head = [0u8; 12];
        loop {
            match r.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(io(e)),
            }
            let p = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            let mut len = [0u8; 8];
            len.copy_from_slice(&head[4..]);
            let mut bytes = vec![0u8; u64::from_le_bytes(len) as usize];
            r.read_exact(&mut bytes).map_err(io)?;
            log.append(&self.table.def.name, p, &bytes).map_err(ext)?;
        }
        Ok(self.rows)
    }
}

struct TopicSink {
    table: Arc<TopicTable>,
}

impl fmt::Debug for TopicSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicSink({})", self.table.def.name)
    }
}

impl DisplayAs for TopicSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicSink: topic={}", self.table.def.name)
    }
}

#[async_trait]
impl DataSink for TopicSink {
    fn schema(&self) -> &SchemaRef {
        &self.table.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let now = tidebase_storage::now_ms();
        let mut rows = 0u64;
        while let Some(batch) = data.next().await {
            let batch = batch?;
            let table = self.table.clone();
            let first = rows;
            rows += tokio::task::spawn_blocking(move || table.append_rows(&batch, now, first))
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))??;
        }
        Ok(rows)
    }
}

/// Reads partitions of a topic, one output partition each.
struct TopicScanExec {
    def: Arc<TopicDef>,
    schema: SchemaRef,
    projected: SchemaRef,
    projection: Option<Vec<usize>>,
    /// (partition id, log, first offset, end offset exclusive)
    parts: Vec<(i32, Arc<Partition>, i64, i64)>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for TopicScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_as(DisplayFormatType::Default, f)
    }
}

impl DisplayAs for TopicScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<String> = self
            .parts
            .iter()
            .map(|(p, _, s, e)| format!("{p}:[{s},{e})"))
            .collect();
        write!(
            f,
            "TopicScanExec: topic={}, partitions={}",
            self.def.name,
            ranges.join(" ")
        )
    }
}

/// Decodes records (at offsets in [from, end)) into a batch of the full schema.
fn records_to_batch(
    def: &TopicDef,
    schema: &SchemaRef,
    partition: i32,
    records: &[kafka_protocol::records::Record],
    from: i64,
    end: i64,
) -> Result<RecordBatch> {
    let rows: Vec<&kafka_protocol::records::Record> = records
        .iter()
        .filter(|r| r.offset >= from && r.offset < end)
        .collect();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    if def.is_raw() {
        let mut b = BinaryBuilder::new();
        for r in &rows {
            b.append_option(r.value.as_deref());
        }
        columns.push(Arc::new(b.finish()));
    } else {
        let mut builders: Vec<_> = def
            .columns
            .iter()
            .map(|(_, t)| builder(*t, rows.len()))
            .collect();
        for r in &rows {
            // A message that does not decode (it was accepted before a
            // column existed, say) reads as NULLs.
            let vals = json::decode_row(&def.columns, r.value.as_deref())
                .unwrap_or_else(|_| vec![Val::Null; def.columns.len()]);
            for (b, v) in builders.iter_mut().zip(&vals) {
                json::append(b.as_mut(), v);
            }
        }
        columns.extend(builders.into_iter().map(finish));
    }
    let mut p = Int32Builder::with_capacity(rows.len());
    let mut o = Int64Builder::with_capacity(rows.len());
    let mut t = TimestampMicrosecondBuilder::with_capacity(rows.len());
    let mut k = BinaryBuilder::new();
    for r in &rows {
        p.append_value(partition);
        o.append_value(r.offset);
        t.append_value(r.timestamp.saturating_mul(1000));
        k.append_option(r.key.as_deref());
    }
    columns.push(Arc::new(p.finish()));
    columns.push(Arc::new(o.finish()));
    columns.push(Arc::new(t.finish()));
    columns.push(Arc::new(k.finish()));
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

const READ_BYTES: usize = 1 << 20;

impl ExecutionPlan for TopicScanExec {
    fn name(&self) -> &str {
        "TopicScanExec"
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
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let Some((pid, log, start, end)) = self.parts.get(partition).cloned() else {
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                self.projected.clone(),
                futures::stream::empty(),
            )));
        };
        let def = self.def.clone();
        let schema = self.schema.clone();
        let projection = self.projection.clone();
        let stream = futures::stream::unfold(start, move |at| {
            let def = def.clone();
            let schema = schema.clone();
            let projection = projection.clone();
            let log = log.clone();
            async move {
                if at >= end {
                    return None;
                }
                let step = tokio::task::spawn_blocking(move || -> Result<(RecordBatch, i64)> {
                    let fetched = log.read(at, READ_BYTES).map_err(ext)?;
                    let headers = tidebase_storage::log::batch::check_batches(&fetched.data)
                        .map_err(|e| ext(tidebase_storage::StorageError::from(e)))?;
                    let next = headers.last().map_or(end, |h| h.last_offset() + 1);
                    let records = decode_batches(&fetched.data)?;
                    let batch = records_to_batch(&def, &schema, pid, &records, at, end)?;
                    let batch = match &projection {
                        Some(p) => batch.project(p)?,
                        None => batch,
                    };
                    Ok((batch, next.max(at + 1)))
                })
                .await;
                match step {
                    Ok(Ok((batch, next))) => Some((Ok(batch), next)),
                    Ok(Err(e)) => Some((Err(e), end)),
                    Err(e) => Some((Err(DataFusionError::External(Box::new(e))), end)),
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.projected.clone(),
            stream,
        )))
    }
}
