//! `tidebase.topics` and `tidebase.consumer_groups`.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::Result;

use super::Topics;
use crate::view::BatchView;

fn schema_of(cols: &[(&str, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(
        cols.iter()
            .map(|(n, t)| Field::new(*n, t.clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// `tidebase.topics`: one row per user topic.
#[derive(Debug)]
pub struct TopicsView(pub Arc<Topics>);

#[async_trait::async_trait]
impl BatchView for TopicsView {
    fn view_schema(&self) -> SchemaRef {
        schema_of(&[
            ("topic", DataType::Utf8),
            ("partitions", DataType::Int32),
            ("key_column", DataType::Utf8),
            ("columns", DataType::Utf8),
            ("retention_ms", DataType::Int64),
            ("retention_bytes", DataType::Int64),
            ("messages", DataType::Int64),
            ("size_bytes", DataType::Int64),
            ("rejected", DataType::Int64),
        ])
    }

    async fn batch(&self) -> Result<RecordBatch> {
        let mut name = Vec::new();
        let mut parts = Vec::new();
        let mut key = Vec::new();
        let mut cols = Vec::new();
        let mut rms = Vec::new();
        let mut rbytes = Vec::new();
        let mut msgs = Vec::new();
        let mut size = Vec::new();
        let mut rejected = Vec::new();
        for n in self.0.names() {
            let (Some(t), Some(table)) = (self.0.log().topic(&n), self.0.get(&n)) else {
                continue;
            };
            let c = t.config();
            name.push(n.clone());
            parts.push(c.partitions as i32);
            key.push(table.def.key.clone());
            cols.push(
                table
                    .def
                    .columns
                    .iter()
                    .map(|(c, ty)| format!("{c} {}", ty.name()))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            rms.push(c.retention_ms);
            rbytes.push(c.retention_bytes.map(|b| b as i64));
            let ps = t.partitions();
            msgs.push(
                ps.iter()
                    .map(|p| p.high_watermark() - p.log_start())
                    .sum::<i64>(),
            );
            size.push(ps.iter().map(|p| p.size() as i64).sum::<i64>());
            rejected.push(self.0.rejected(&n) as i64);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(name)),
            Arc::new(Int32Array::from(parts)),
            Arc::new(StringArray::from(key)),
            Arc::new(StringArray::from(cols)),
            Arc::new(Int64Array::from(rms)),
            Arc::new(Int64Array::from(rbytes)),
            Arc::new(Int64Array::from(msgs)),
            Arc::new(Int64Array::from(size)),
            Arc::new(Int64Array::from(rejected)),
        ];
        Ok(RecordBatch::try_new(self.view_schema(), columns)?)
    }
}

/// `tidebase.consumer_groups`: committed offset, latest offset and lag per
/// group and partition.
#[derive(Debug)]
pub struct ConsumerGroupsView(pub Arc<Topics>);

#[async_trait::async_trait]
impl BatchView for ConsumerGroupsView {
    fn view_schema(&self) -> SchemaRef {
        schema_of(&[
            ("group_id", DataType::Utf8),
            ("topic", DataType::Utf8),
            ("partition", DataType::Int32),
            ("committed_offset", DataType::Int64),
            ("latest_offset", DataType::Int64),
            ("lag", DataType::Int64),
        ])
    }

    async fn batch(&self) -> Result<RecordBatch> {
        let mut g = Vec::new();
        let mut t = Vec::new();
        let mut p = Vec::new();
        let mut c = Vec::new();
        let mut l = Vec::new();
        let mut lag = Vec::new();
        for ((group, topic, partition), committed) in self.0.all_committed() {
            let latest = self
                .0
                .log()
                .topic(&topic)
                .and_then(|tp| tp.partition(partition as u32))
                .map(|part| part.high_watermark());
            g.push(group);
            t.push(topic);
            p.push(partition);
            c.push(committed);
            l.push(latest);
            lag.push(latest.map(|x| (x - committed).max(0)));
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(g)),
            Arc::new(StringArray::from(t)),
            Arc::new(Int32Array::from(p)),
            Arc::new(Int64Array::from(c)),
            Arc::new(Int64Array::from(l)),
            Arc::new(Int64Array::from(lag)),
        ];
        Ok(RecordBatch::try_new(self.view_schema(), columns)?)
    }
}
