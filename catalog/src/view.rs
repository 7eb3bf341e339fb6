//! Read-only system views whose rows are one batch built when they are scanned.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{MemTable, Session};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// What a view computes: its schema and, at each scan, its rows.
#[async_trait]
pub(crate) trait BatchView: std::fmt::Debug + Send + Sync + 'static {
    fn view_schema(&self) -> SchemaRef;
    async fn batch(&self) -> Result<RecordBatch>;
}

/// The table provider of a [`BatchView`].
#[derive(Debug)]
pub(crate) struct View<T>(pub T);

#[async_trait]
impl<T: BatchView> TableProvider for View<T> {
    fn schema(&self) -> SchemaRef {
        self.0.view_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        MemTable::try_new(self.0.view_schema(), vec![vec![self.0.batch().await?]])?
            .scan(state, projection, filters, limit)
            .await
    }
}
