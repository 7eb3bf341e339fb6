//! Aggregates grouped by a row-key prefix, one region scan partition at a
//! time.
//!
//! DataFusion plans `GROUP BY` over several partitions as a partial
//! aggregate per partition, a hash repartition, and a final aggregate. Over
//! a region scan whose output is sorted by the row key, it also keeps the
//! order through the repartition (`prefer_existing_sort`), and that merge
//! reads its inputs in key order: the scan of the second region waits for
//! the first to finish, so one core does the work. When the groups are a
//! prefix of the row key, a region scan can be cut so that every group lies
//! within one partition ([`RegionScanExec::grouped_by`]); then each
//! partition is aggregated whole on its own, with nothing exchanged.

use std::sync::Arc;

use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use tidebase_catalog::table::provider::RegionScanExec;

/// `plan` as one aggregate per scan partition, when it is the final phase
/// of an aggregate grouped by a row-key prefix of a region scan (read
/// directly or through a filter) and nothing above relies on how its
/// output is partitioned (the caller knows that).
pub fn per_partition(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    let last = plan.downcast_ref::<AggregateExec>()?;
    if *last.mode() != AggregateMode::FinalPartitioned || last.limit_options().is_some() {
        return None;
    }
    let repartition = last.input().downcast_ref::<RepartitionExec>()?;
    if !matches!(repartition.partitioning(), Partitioning::Hash(..)) {
        return None;
    }
    let first = repartition.input().downcast_ref::<AggregateExec>()?;
    if *first.mode() != AggregateMode::Partial || first.group_expr().has_grouping_set() {
        return None;
    }
    // The groups: plain columns of the scan (a filter keeps its schema).
    let by: Vec<&Arc<dyn PhysicalExpr>> =
        first.group_expr().expr().iter().map(|(e, _)| e).collect();
    let input = first.input();
    let grouped = match regrouped(input, by.iter().copied()) {
        Some(scan) => scan,
        None => {
            let filter = input.downcast_ref::<FilterExec>()?;
            let scan = regrouped(filter.input(), by.iter().copied())?;
            replace_children_if_necessary(Arc::clone(input), vec![scan]).ok()?
        }
    };
    let whole = AggregateExec::try_new(
        AggregateMode::SinglePartitioned,
        first.group_expr().clone(),
        first.aggr_expr().to_vec(),
        first.filter_expr().to_vec(),
        grouped,
        first.input_schema(),
    )
    .ok()?;
    // The same columns out as the final phase had.
    (whole.schema() == last.schema()).then(|| Arc::new(whole) as Arc<dyn ExecutionPlan>)
}

/// `plan`, when it is a region scan and `by` are plain columns of it that
/// are its leading row-key columns, cut into partitions only between
/// groups of those columns ([`RegionScanExec::grouped_by`]).
pub(crate) fn regrouped<'a>(
    plan: &Arc<dyn ExecutionPlan>,
    by: impl IntoIterator<Item = &'a Arc<dyn PhysicalExpr>>,
) -> Option<Arc<dyn ExecutionPlan>> {
    let scan = plan.downcast_ref::<RegionScanExec>()?;
    let columns = by
        .into_iter()
        .map(|e| e.downcast_ref::<Column>().map(Column::index))
        .collect::<Option<Vec<usize>>>()?;
    Some(Arc::new(scan.grouped_by(&columns)?))
}
