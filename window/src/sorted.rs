//! Window functions evaluated a whole partition at a time, with typed
//! loops, over input that arrives sorted by its partition and order keys.
//!
//! DataFusion's `BoundedWindowAggExec` evaluates frames row by row through
//! `Accumulator`s (`update_batch` and `retract_batch` on one-row slices),
//! which costs a few hundred nanoseconds per row and function. When its
//! input is already sorted (Tidebase's region scans come out in row-key
//! order, so `PARTITION BY user_id ORDER BY ts` over a `(user_id, ts)` key
//! needs no sort), [`SortedWindows`] swaps it for a [`SortedWindowExec`],
//! which buffers the rows of the partition in progress, and for every run
//! of complete partitions computes each function over plain slices:
//!
//! - `row_number`, `rank`, `dense_rank`, `percent_rank`, `cume_dist`;
//! - `lag` and `lead` with a constant offset and default;
//! - `sum`, `avg`, `count`, `min`, `max` over `ROWS` frames and over
//!   `RANGE` frames bounded by `UNBOUNDED` and `CURRENT ROW` (peers).
//!
//! A frame whose start is `UNBOUNDED PRECEDING` is folded once per
//! partition, adding rows as the frame's end advances; any other frame is
//! folded from its first row to its last for each row, which is what
//! PostgreSQL does for aggregates without an inverse transition (such as
//! `sum(float8)`), so floating-point results match it bit for bit. Frames
//! of that kind wider than [`MAX_DIRECT_WIDTH`] rows, `GROUPS` frames,
//! `RANGE` offsets, `FILTER`, `DISTINCT`, `IGNORE NULLS` and other
//! functions stay with DataFusion's operator, as does a window without
//! `PARTITION BY` (its one partition would be buffered whole).
//!
//! Memory: the rows of the partition being read, plus one input batch.

use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Decimal256Array, Float64Array, Int64Array, PrimitiveArray,
    UInt32Array, UInt64Array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::{
    cast, concat_batches, lexsort_to_indices, partition, take, SortColumn, SortOptions,
};
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, Float64Type, Int32Type, Int64Type, Schema, SchemaRef,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{WindowFrame, WindowFrameBound, WindowFrameUnits};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::window::{
    PlainAggregateWindowExpr, SlidingAggregateWindowExpr, StandardWindowExpr, WindowExpr,
};
use datafusion::physical_expr::{
    LexRequirement, OrderingRequirements, PhysicalExpr, PhysicalSortExpr, PhysicalSortRequirement,
};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec, WindowUDFExpr};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    InputDistributionRequirements, InputOrderMode, Partitioning, PlanProperties, RecordBatchStream,
};
use futures::{Stream, StreamExt};
use tidebase_catalog::numeric::{self, NumericKind, NUMERIC_DISPLAY};

/// The widest frame (in rows) folded row by row when its start moves.
pub const MAX_DIRECT_WIDTH: u64 = 64;

/// The physical optimizer rule that puts [`SortedWindowExec`] in place of
/// a `BoundedWindowAggExec` whose input is sorted and whose functions it
/// can all evaluate.
#[derive(Debug, Default)]
pub struct SortedWindows;

impl PhysicalOptimizerRule for SortedWindows {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        rewrite(plan, false)
    }

    fn name(&self) -> &str {
        "tidebase_sorted_windows"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Rewrites `plan` bottom-up. `partitioned` says whether something above
/// relies on how `plan`'s output is partitioned (a hash join, an
/// aggregate's final phase, ...); where nothing does, a window may read a
/// scan whose partitions keep its groups together instead of a hash
/// repartition of it.
fn rewrite(plan: Arc<dyn ExecutionPlan>, partitioned: bool) -> Result<Arc<dyn ExecutionPlan>> {
    let requirements = plan.input_distribution_requirements();
    // These make a partitioning of their own; anything else may hand its
    // input's partitioning on.
    let resets = plan.downcast_ref::<RepartitionExec>().is_some()
        || plan.downcast_ref::<CoalescePartitionsExec>().is_some()
        || plan.downcast_ref::<SortPreservingMergeExec>().is_some();
    let children = plan.children();
    // Of several inputs, partitions may have to line up (a partitioned
    // join, an interleave): count each as relied on.
    let several = children.len() > 1;
    let mut new_children = Vec::with_capacity(children.len());
    for (i, child) in children.into_iter().enumerate() {
        let required = !matches!(
            requirements.child_distribution(i),
            None | Some(Distribution::UnspecifiedDistribution)
        );
        let child_partitioned = required || several || (partitioned && !resets);
        new_children.push(rewrite(child.clone(), child_partitioned)?);
    }
    let plan = replace_children_if_necessary(plan, new_children)?;
    if !partitioned {
        if let Some(whole) = crate::grouped::per_partition(&plan) {
            return Ok(whole);
        }
    }
    // Both of DataFusion's window operators read input sorted by the
    // partition and order keys; the bounded one says so by its mode (it
    // also runs over partially sorted input).
    let window = if let Some(w) = plan.downcast_ref::<BoundedWindowAggExec>() {
        (w.input_order_mode == InputOrderMode::Sorted).then(|| (w.input(), w.window_expr()))
    } else {
        plan.downcast_ref::<WindowAggExec>()
            .map(|w| (w.input(), w.window_expr()))
    };
    let Some((input, exprs)) = window else {
        return Ok(plan);
    };
    match SortedWindowExec::of(input, exprs, &plan, !partitioned) {
        Some(exec) => Ok(Arc::new(exec)),
        None => Ok(plan),
    }
}

/// Where a frame starts or ends relative to the current row.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bound {
    Unbounded,
    /// Rows before (negative) or after (positive) the current row.
    Rows(i64),
    /// The first (as a start) or last (as an end) peer of the current row.
    Peer,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Agg {
    Sum,
    Avg,
    Count,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ranking {
    RowNumber,
    Rank,
    DenseRank,
    PercentRank,
    CumeDist,
}

/// One window function, as this operator evaluates it.
#[derive(Debug, Clone)]
enum Func {
    Aggregate {
        agg: Agg,
        arg: Arc<dyn PhysicalExpr>,
        start: Bound,
        end: Bound,
    },
    Rank(Ranking),
    /// `lag` (positive offset) or `lead` (negative).
    Shift {
        arg: Arc<dyn PhysicalExpr>,
        offset: i64,
        default: ScalarValue,
    },
}

impl Func {
    fn needs_peers(&self) -> bool {
        match self {
            Func::Aggregate { start, end, .. } => *start == Bound::Peer || *end == Bound::Peer,
            Func::Rank(r) => *r != Ranking::RowNumber,
            Func::Shift { .. } => false,
        }
    }
}

fn literal(e: &Arc<dyn PhysicalExpr>) -> Option<ScalarValue> {
    e.downcast_ref::<Literal>().map(|l| l.value().clone())
}

fn frame_bound(b: &WindowFrameBound, units: WindowFrameUnits) -> Option<Bound> {
    let rows = |v: &ScalarValue| -> Option<i64> {
        match v {
            ScalarValue::UInt64(Some(n)) => i64::try_from(*n).ok(),
            ScalarValue::Int64(Some(n)) if *n >= 0 => Some(*n),
            _ => None,
        }
    };
    match (b, units) {
        (WindowFrameBound::Preceding(v), _) if v.is_null() => Some(Bound::Unbounded),
        (WindowFrameBound::Following(v), _) if v.is_null() => Some(Bound::Unbounded),
        (WindowFrameBound::CurrentRow, WindowFrameUnits::Rows) => Some(Bound::Rows(0)),
        (WindowFrameBound::CurrentRow, WindowFrameUnits::Range) => Some(Bound::Peer),
        (WindowFrameBound::Preceding(v), WindowFrameUnits::Rows) => {
            rows(v).map(|n| Bound::Rows(-n))
        }
        (WindowFrameBound::Following(v), WindowFrameUnits::Rows) => rows(v).map(Bound::Rows),
        _ => None,
    }
}

/// The frame's bounds, when this operator can fold it.
fn frame(f: &WindowFrame) -> Option<(Bound, Bound)> {
    if f.units == WindowFrameUnits::Groups {
        return None;
    }
    let start = frame_bound(&f.start_bound, f.units)?;
    let end = frame_bound(&f.end_bound, f.units)?;
    match (start, end) {
        (Bound::Unbounded, _) => Some((start, end)),
        (Bound::Rows(a), Bound::Rows(b)) if b >= a && (b - a) as u64 <= MAX_DIRECT_WIDTH => {
            Some((start, end))
        }
        _ => None,
    }
}

/// `fun` over `window`; `described` is the window expression's `Debug`
/// text, the one place its `FILTER` clause shows (the accessor is on a
/// trait DataFusion does not export).
fn aggregate(
    fun: &AggregateFunctionExpr,
    window: &dyn WindowExpr,
    described: &str,
    input: &Schema,
) -> Option<Func> {
    let field = window.field().ok()?;
    if !described.contains("filter: None") || fun.is_distinct() || fun.ignore_nulls() {
        return None;
    }
    let args = fun.expressions();
    let [arg] = args.as_slice() else {
        return None;
    };
    let agg = match fun.fun().name() {
        "sum" => Agg::Sum,
        "avg" => Agg::Avg,
        "count" => Agg::Count,
        "min" => Agg::Min,
        "max" => Agg::Max,
        _ => return None,
    };
    let out = field.data_type();
    let typed = match agg {
        Agg::Count => out == &DataType::Int64,
        // Tidebase's numeric avg over int2/int4: sums fit 64 bits.
        Agg::Avg => {
            out == &DataType::Float64
                || (field.metadata().get(NUMERIC_DISPLAY).map(String::as_str)
                    == Some(NumericKind::Avg.display_rule())
                    && matches!(
                        arg.data_type(input).ok()?,
                        DataType::Int16 | DataType::Int32
                    ))
        }
        Agg::Sum => matches!(out, DataType::Int64 | DataType::Float64),
        Agg::Min | Agg::Max => matches!(out, DataType::Int32 | DataType::Int64 | DataType::Float64),
    };
    if !typed {
        return None;
    }
    let (start, end) = frame(window.get_window_frame())?;
    Some(Func::Aggregate {
        agg,
        arg: arg.clone(),
        start,
        end,
    })
}

fn standard(expr: &StandardWindowExpr) -> Option<Func> {
    let udwf = expr
        .get_standard_func_expr()
        .as_any()
        .downcast_ref::<WindowUDFExpr>()?;
    // An expression DataFusion reversed (to read its input backwards)
    // evaluates differently from what its name says; the flag is private.
    if format!("{udwf:?}").contains("is_reversed: true") {
        return None;
    }
    let args = udwf.args();
    let rank = |r| args.is_empty().then_some(Func::Rank(r));
    match udwf.fun().name() {
        "row_number" => rank(Ranking::RowNumber),
        "rank" => rank(Ranking::Rank),
        "dense_rank" => rank(Ranking::DenseRank),
        "percent_rank" => rank(Ranking::PercentRank),
        "cume_dist" => rank(Ranking::CumeDist),
        name @ ("lag" | "lead") => {
            let arg = args.first()?.clone();
            let offset = match args.get(1).map(literal) {
                None => 1,
                Some(Some(v)) => match v {
                    ScalarValue::Int64(Some(n)) => n,
                    ScalarValue::Int32(Some(n)) => n.into(),
                    _ => return None,
                },
                Some(None) => return None,
            };
            let default = match args.get(2).map(literal) {
                None => ScalarValue::Null,
                Some(Some(v)) => v,
                Some(None) => return None,
            };
            let offset = if name == "lag" {
                offset
            } else {
                offset.checked_neg()?
            };
            Some(Func::Shift {
                arg,
                offset,
                default,
            })
        }
        _ => None,
    }
}

fn func(expr: &Arc<dyn WindowExpr>, input: &Schema) -> Option<Func> {
    let any = expr.as_any();
    if let Some(s) = any.downcast_ref::<StandardWindowExpr>() {
        return standard(s);
    }
    if let Some(p) = any.downcast_ref::<PlainAggregateWindowExpr>() {
        return aggregate(
            p.get_aggregate_expr(),
            expr.as_ref(),
            &format!("{p:?}"),
            input,
        );
    }
    if let Some(s) = any.downcast_ref::<SlidingAggregateWindowExpr>() {
        return aggregate(
            s.get_aggregate_expr(),
            expr.as_ref(),
            &format!("{s:?}"),
            input,
        );
    }
    None
}

/// Evaluates window functions over input sorted by partition and order
/// keys (see the module documentation).
#[derive(Debug)]
pub struct SortedWindowExec {
    input: Arc<dyn ExecutionPlan>,
    /// What the replaced operator reported, kept for the plan's display.
    names: Vec<String>,
    funcs: Arc<Vec<Func>>,
    partition_by: Arc<Vec<Arc<dyn PhysicalExpr>>>,
    order_by: Arc<Vec<Arc<dyn PhysicalExpr>>>,
    /// Sort each partition's rows by these first (the input is grouped by
    /// partition but not ordered within).
    sort_within: Option<Arc<Vec<PhysicalSortExpr>>>,
    distribution: InputDistributionRequirements,
    ordering: Vec<Option<OrderingRequirements>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl SortedWindowExec {
    /// The operator that can stand in for the window operator `node`
    /// (which evaluates `exprs` over `input`), if it knows every function.
    /// With `regroup` (nothing above relies on the window's output
    /// partitioning), a hash repartition of a region scan under it gives
    /// way to the scan with partitions that keep each group together.
    fn of(
        input: &Arc<dyn ExecutionPlan>,
        exprs: &[Arc<dyn WindowExpr>],
        node: &Arc<dyn ExecutionPlan>,
        regroup: bool,
    ) -> Option<SortedWindowExec> {
        let first = exprs.first()?;
        if first.partition_by().is_empty() {
            return None;
        }
        let mut funcs = Vec::with_capacity(exprs.len());
        let schema = input.schema();
        for e in exprs {
            // One operator evaluates expressions of one window spec.
            if e.partition_by() != first.partition_by() || e.order_by() != first.order_by() {
                return None;
            }
            funcs.push(func(e, &schema)?);
        }
        // A sort under the window that only orders rows within partitions
        // that already arrive together is done here, a partition at a time.
        let (input, sort_within, ordering) = match grouped_input(input, first.as_ref()) {
            Some((below, grouping)) => (
                below,
                Some(Arc::new(first.order_by().to_vec())),
                vec![Some(OrderingRequirements::new(grouping))],
            ),
            None => (input.clone(), None, node.required_input_ordering()),
        };
        let mut distribution = node.input_distribution_requirements();
        let mut properties = node.properties().clone();
        let regrouped = regroup
            .then(|| grouped_scan(&input, first.partition_by()))
            .flatten()
            .filter(|scan| match ordering.first() {
                Some(Some(required)) => scan
                    .equivalence_properties()
                    .ordering_satisfy_requirement(required.first().iter().cloned())
                    .unwrap_or(false),
                _ => true,
            });
        let input = match regrouped {
            Some(scan) => {
                // The scan's partitions hold whole groups: no distribution
                // is asked of it, and the output is partitioned like it.
                distribution =
                    InputDistributionRequirements::new(vec![Distribution::UnspecifiedDistribution]);
                properties = Arc::new(PlanProperties::new(
                    properties.eq_properties.clone(),
                    scan.output_partitioning().clone(),
                    properties.emission_type,
                    properties.boundedness,
                ));
                scan
            }
            None => input,
        };
        Some(SortedWindowExec {
            input,
            sort_within,
            names: exprs.iter().map(|e| e.name().to_string()).collect(),
            funcs: Arc::new(funcs),
            partition_by: Arc::new(first.partition_by().to_vec()),
            order_by: Arc::new(first.order_by().iter().map(|s| s.expr.clone()).collect()),
            distribution,
            ordering,
            schema: node.schema(),
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for SortedWindowExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SortedWindowExec: [{}]", self.names.join(", "))?;
        if let Some(order) = &self.sort_within {
            let order: Vec<String> = order.iter().map(|e| e.to_string()).collect();
            write!(f, ", sorts each partition by [{}]", order.join(", "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for SortedWindowExec {
    fn name(&self) -> &str {
        "SortedWindowExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.distribution.clone()
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        self.ordering.clone()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let args = self.funcs.iter().filter_map(|func| match func {
            Func::Aggregate { arg, .. } | Func::Shift { arg, .. } => Some(arg),
            Func::Rank(_) => None,
        });
        for e in self
            .partition_by
            .iter()
            .chain(self.order_by.iter())
            .chain(args)
        {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("SortedWindowExec has one input".into()))?;
        Ok(Arc::new(SortedWindowExec {
            input,
            names: self.names.clone(),
            funcs: self.funcs.clone(),
            partition_by: self.partition_by.clone(),
            order_by: self.order_by.clone(),
            sort_within: self.sort_within.clone(),
            distribution: self.distribution.clone(),
            ordering: self.ordering.clone(),
            schema: self.schema.clone(),
            properties: self.properties.clone(),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Ok(Box::pin(SortedWindowStream {
            input: self.input.execute(partition, context)?,
            eval: Evaluator {
                funcs: self.funcs.clone(),
                partition_by: self.partition_by.clone(),
                order_by: self.order_by.clone(),
                sort_within: self.sort_within.clone(),
                schema: self.schema.clone(),
            },
            pending: Vec::new(),
            pending_key: Vec::new(),
            done: false,
            metrics: BaselineMetrics::new(&self.metrics, partition),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// What a stream needs to evaluate one run of complete partitions.
struct Evaluator {
    funcs: Arc<Vec<Func>>,
    partition_by: Arc<Vec<Arc<dyn PhysicalExpr>>>,
    order_by: Arc<Vec<Arc<dyn PhysicalExpr>>>,
    sort_within: Option<Arc<Vec<PhysicalSortExpr>>>,
    schema: SchemaRef,
}

fn columns(exprs: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    exprs
        .iter()
        .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
        .collect()
}

impl Evaluator {
    /// `batch` (whole partitions) with the window columns appended.
    fn evaluate(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let keys = columns(&self.partition_by, batch)?;
        let parts = partition(&keys)?.ranges();
        // Reordering rows within a partition leaves its key columns as they
        // were: `keys` and `parts` still hold.
        let batch = &match &self.sort_within {
            Some(order) => sort_partitions(batch, &parts, order)?,
            None => batch.clone(),
        };
        let parts = parts.as_slice();
        let n = batch.num_rows();
        // Peer groups: rows equal on partition and order keys.
        let peers = if self.funcs.iter().any(Func::needs_peers) {
            let mut all = keys;
            all.extend(columns(&self.order_by, batch)?);
            Some(Peers::new(&partition(&all)?.ranges(), n))
        } else {
            None
        };
        let mut out = batch.columns().to_vec();
        for (i, f) in self.funcs.iter().enumerate() {
            let ty = self.schema.field(batch.num_columns() + i).data_type();
            let array = match f {
                Func::Rank(r) => rank(*r, parts, peers.as_ref(), n),
                Func::Shift {
                    arg,
                    offset,
                    default,
                } => shift(
                    &arg.evaluate(batch)?.into_array(n)?,
                    *offset,
                    default,
                    parts,
                    ty,
                )?,
                Func::Aggregate {
                    agg,
                    arg,
                    start,
                    end,
                } => {
                    let frames = Frames {
                        parts,
                        peers: peers.as_ref(),
                        start: *start,
                        end: *end,
                    };
                    fold(*agg, &arg.evaluate(batch)?.into_array(n)?, &frames, ty)?
                }
            };
            out.push(array);
        }
        Ok(RecordBatch::try_new(self.schema.clone(), out)?)
    }
}

/// Rows of `batch` reordered so that each partition of `parts` is sorted
/// by `order`.
fn sort_partitions(
    batch: &RecordBatch,
    parts: &[Range<usize>],
    order: &[PhysicalSortExpr],
) -> Result<RecordBatch> {
    let keys: Vec<(ArrayRef, SortOptions)> = order
        .iter()
        .map(|e| {
            Ok((
                e.expr.evaluate(batch)?.into_array(batch.num_rows())?,
                e.options,
            ))
        })
        .collect::<Result<_>>()?;
    let mut indices: Vec<u32> = Vec::with_capacity(batch.num_rows());
    for p in parts {
        let columns: Vec<SortColumn> = keys
            .iter()
            .map(|(k, options)| SortColumn {
                values: k.slice(p.start, p.len()),
                options: Some(*options),
            })
            .collect();
        let local = lexsort_to_indices(&columns, None)?;
        indices.extend(local.values().iter().map(|&i| i + p.start as u32));
    }
    let indices = UInt32Array::from(indices);
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &indices, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// When the window's input is a sort by its partition keys and then its
/// order keys, over rows already grouped by the partition keys (or over a
/// repartition that can keep them grouped by merging instead), returns
/// those grouped rows and the grouping (the partition keys in any
/// direction): the sort within each partition is left to
/// [`SortedWindowExec`].
fn grouped_input(
    input: &Arc<dyn ExecutionPlan>,
    window: &dyn WindowExpr,
) -> Option<(Arc<dyn ExecutionPlan>, LexRequirement)> {
    let sort = input.downcast_ref::<SortExec>()?;
    if sort.fetch().is_some() || !sort.preserve_partitioning() {
        return None;
    }
    let (pk, ok) = (window.partition_by(), window.order_by());
    let exprs: Vec<PhysicalSortExpr> = sort.expr().iter().cloned().collect();
    if exprs.len() != pk.len() + ok.len() || ok.is_empty() {
        return None;
    }
    let (head, tail) = exprs.split_at(pk.len());
    if tail != ok || !head.iter().all(|h| pk.iter().any(|p| p == &h.expr)) {
        return None;
    }
    let grouping = LexRequirement::new(
        head.iter()
            .map(|h| PhysicalSortRequirement::new(h.expr.clone(), None)),
    )?;
    let grouped = |plan: &Arc<dyn ExecutionPlan>| {
        plan.equivalence_properties()
            .ordering_satisfy_requirement(grouping.iter().cloned())
            .unwrap_or(false)
    };
    let below = sort.input();
    if grouped(below) {
        return Some((below.clone(), grouping));
    }
    let repartition = below.downcast_ref::<RepartitionExec>()?;
    if repartition.preserve_order() {
        return None;
    }
    let merged: Arc<dyn ExecutionPlan> = Arc::new(
        RepartitionExec::try_new(
            repartition.input().clone(),
            repartition.partitioning().clone(),
        )
        .ok()?
        .with_preserve_order(),
    );
    grouped(&merged).then_some((merged, grouping))
}

/// `input`, a hash repartition of a region scan by the window's partition
/// keys, replaced by the scan with partitions cut only between groups
/// (when the keys are the leading columns of the row key).
fn grouped_scan(
    input: &Arc<dyn ExecutionPlan>,
    partition_by: &[Arc<dyn PhysicalExpr>],
) -> Option<Arc<dyn ExecutionPlan>> {
    let repartition = input.downcast_ref::<RepartitionExec>()?;
    let Partitioning::Hash(hashed, _) = repartition.partitioning() else {
        return None;
    };
    if hashed.len() != partition_by.len() || !hashed.iter().all(|h| partition_by.contains(h)) {
        return None;
    }
    crate::grouped::regrouped(repartition.input(), partition_by)
}

/// Each row's peer group, as `[start, end)`.
struct Peers {
    start: Vec<u32>,
    end: Vec<u32>,
}

impl Peers {
    fn new(groups: &[Range<usize>], n: usize) -> Self {
        let mut start = Vec::with_capacity(n);
        let mut end = Vec::with_capacity(n);
        for g in groups {
            start.extend(std::iter::repeat_n(g.start as u32, g.len()));
            end.extend(std::iter::repeat_n(g.end as u32, g.len()));
        }
        Self { start, end }
    }
}

fn rank(r: Ranking, parts: &[Range<usize>], peers: Option<&Peers>, n: usize) -> ArrayRef {
    if r == Ranking::RowNumber {
        let mut v = Vec::with_capacity(n);
        for p in parts {
            v.extend(1..=p.len() as u64);
        }
        return Arc::new(UInt64Array::from(v));
    }
    let peers = peers.expect("ranks read peer groups");
    match r {
        Ranking::Rank | Ranking::DenseRank => {
            let mut v = Vec::with_capacity(n);
            for p in parts {
                let mut dense = 0u64;
                for i in p.clone() {
                    let s = peers.start[i] as usize;
                    if s == i {
                        dense += 1;
                    }
                    v.push(if r == Ranking::Rank {
                        (s - p.start + 1) as u64
                    } else {
                        dense
                    });
                }
            }
            Arc::new(UInt64Array::from(v))
        }
        _ => {
            let mut v = Vec::with_capacity(n);
            for p in parts {
                let len = p.len() as f64;
                for i in p.clone() {
                    v.push(if r == Ranking::PercentRank {
                        if p.len() <= 1 {
                            0.0
                        } else {
                            (peers.start[i] as usize - p.start) as f64 / (len - 1.0)
                        }
                    } else {
                        (peers.end[i] as usize - p.start) as f64 / len
                    });
                }
            }
            Arc::new(Float64Array::from(v))
        }
    }
}

/// `lag`/`lead`: each row takes the value `offset` rows back (forward when
/// negative) in its partition, or `default` past the partition's edge.
fn shift(
    values: &ArrayRef,
    offset: i64,
    default: &ScalarValue,
    parts: &[Range<usize>],
    ty: &DataType,
) -> Result<ArrayRef> {
    let values = if values.data_type() == ty {
        values.clone()
    } else {
        cast(values, ty)?
    };
    let n = values.len();
    let mut indices: Vec<Option<u32>> = Vec::with_capacity(n);
    let mut outside = false;
    for p in parts {
        for i in p.clone() {
            let j = i as i64 - offset;
            if j >= p.start as i64 && j < p.end as i64 {
                indices.push(Some(j as u32));
            } else {
                indices.push(None);
                outside = true;
            }
        }
    }
    let indices = UInt32Array::from(indices);
    let taken = take(values.as_ref(), &indices, None)?;
    if !outside || default.is_null() {
        return Ok(taken);
    }
    // Rows whose source is outside the partition get the default.
    let default = default.cast_to(ty)?.to_array_of_size(1)?;
    let picks: Vec<Option<u32>> = indices
        .iter()
        .enumerate()
        .map(|(i, j)| Some(if j.is_some() { i as u32 + 1 } else { 0 }))
        .collect();
    let both = datafusion::arrow::compute::concat(&[default.as_ref(), taken.as_ref()])?;
    Ok(take(both.as_ref(), &UInt32Array::from(picks), None)?)
}

/// The frame of every row, from the partitions and the frame's bounds.
struct Frames<'a> {
    parts: &'a [Range<usize>],
    peers: Option<&'a Peers>,
    start: Bound,
    end: Bound,
}

impl Frames<'_> {
    /// Row `i`'s frame `[from, to)` in partition `p`; empty when `to <=
    /// from`.
    fn of(&self, p: &Range<usize>, i: usize) -> (usize, usize) {
        let clamp = |x: i64| x.clamp(p.start as i64, p.end as i64) as usize;
        let from = match self.start {
            Bound::Unbounded => p.start,
            Bound::Rows(n) => clamp(i as i64 + n),
            Bound::Peer => self.peers.expect("peer frames read peers").start[i] as usize,
        };
        let to = match self.end {
            Bound::Unbounded => p.end,
            Bound::Rows(n) => clamp(i as i64 + n + 1),
            Bound::Peer => self.peers.expect("peer frames read peers").end[i] as usize,
        };
        (from, to)
    }
}

/// A value an aggregate folds.
trait Value: Copy + Default {
    fn plus(self, other: Self) -> Self;
    fn less(self, other: Self) -> bool;
}

impl Value for i64 {
    fn plus(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
    fn less(self, other: Self) -> bool {
        self < other
    }
}

impl Value for i32 {
    fn plus(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
    fn less(self, other: Self) -> bool {
        self < other
    }
}

impl Value for f64 {
    fn plus(self, other: Self) -> Self {
        self + other
    }
    // PostgreSQL orders NaN above every number, and NaNs as equal.
    fn less(self, other: Self) -> bool {
        !self.is_nan() && (other.is_nan() || self < other)
    }
}

/// The fold of one frame: its non-null count and the combined value.
#[derive(Clone, Copy)]
struct State<T> {
    count: i64,
    acc: T,
}

impl<T: Value> State<T> {
    fn empty() -> Self {
        Self {
            count: 0,
            acc: T::default(),
        }
    }

    fn add(&mut self, agg: Agg, v: T) {
        self.acc = if self.count == 0 {
            v
        } else {
            match agg {
                Agg::Min if v.less(self.acc) => v,
                Agg::Max if self.acc.less(v) => v,
                Agg::Min | Agg::Max => self.acc,
                _ => self.acc.plus(v),
            }
        };
        self.count += 1;
    }
}

/// Folds every row's frame: one state per row.
fn fold_frames<T: Value>(
    agg: Agg,
    values: &[T],
    nulls: Option<&NullBuffer>,
    frames: &Frames<'_>,
) -> Vec<State<T>> {
    let valid = |i: usize| nulls.is_none_or(|n| n.is_valid(i));
    let n = values.len();
    let mut out = Vec::with_capacity(n);
    for p in frames.parts {
        if frames.start == Bound::Unbounded {
            // The frame only grows: add rows as its end advances.
            let mut state = State::empty();
            let mut next = p.start;
            for i in p.clone() {
                let (_, to) = frames.of(p, i);
                while next < to {
                    if valid(next) {
                        state.add(agg, values[next]);
                    }
                    next += 1;
                }
                out.push(state);
            }
        } else {
            for i in p.clone() {
                let (from, to) = frames.of(p, i);
                let mut state = State::empty();
                for (j, &v) in values.iter().enumerate().take(to).skip(from) {
                    if valid(j) {
                        state.add(agg, v);
                    }
                }
                out.push(state);
            }
        }
    }
    out
}

fn finish<T, O>(states: &[State<T>], f: impl Fn(&State<T>) -> O::Native) -> ArrayRef
where
    O: ArrowPrimitiveType,
{
    let values: Vec<O::Native> = states.iter().map(&f).collect();
    let nulls = NullBuffer::from_iter(states.iter().map(|s| s.count > 0));
    Arc::new(PrimitiveArray::<O>::new(values.into(), Some(nulls)))
}

fn typed<T: ArrowPrimitiveType>(values: &ArrayRef) -> &PrimitiveArray<T> {
    values.as_primitive::<T>()
}

/// An aggregate over every row's frame, as an array of type `ty`.
fn fold(agg: Agg, values: &ArrayRef, frames: &Frames<'_>, ty: &DataType) -> Result<ArrayRef> {
    if agg == Agg::Count {
        // A count reads only which values are NULL.
        let zeros = vec![0i64; values.len()];
        let nulls = values.logical_nulls();
        let states = fold_frames(Agg::Sum, &zeros, nulls.as_ref(), frames);
        let counts: Vec<i64> = states.iter().map(|s| s.count).collect();
        return Ok(Arc::new(Int64Array::from(counts)));
    }
    if agg == Agg::Avg && matches!(ty, DataType::Decimal256(..)) {
        // A numeric average of small integers: 64-bit sums, divided as
        // PostgreSQL divides.
        let values = cast(values, &DataType::Int64)?;
        let v = typed::<Int64Type>(&values);
        let states = fold_frames(
            Agg::Sum,
            v.values(),
            values.logical_nulls().as_ref(),
            frames,
        );
        let averages: Decimal256Array = states
            .iter()
            .map(|s| {
                (s.count > 0)
                    .then(|| numeric::average(i128::from(s.acc), s.count))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        return Ok(Arc::new(averages.with_data_type(ty.clone())));
    }
    // Sums and averages fold in the result's type; min and max in the
    // argument's, which is the result's.
    let input = if agg == Agg::Avg {
        DataType::Float64
    } else {
        ty.clone()
    };
    let values = if values.data_type() == &input {
        values.clone()
    } else {
        cast(values, &input)?
    };
    let nulls = values.logical_nulls();
    Ok(match &input {
        DataType::Float64 => {
            let v = typed::<Float64Type>(&values);
            let states = fold_frames(agg, v.values(), nulls.as_ref(), frames);
            if agg == Agg::Avg {
                finish::<f64, Float64Type>(&states, |s| s.acc / s.count as f64)
            } else {
                finish::<f64, Float64Type>(&states, |s| s.acc)
            }
        }
        DataType::Int64 => {
            let v = typed::<Int64Type>(&values);
            let states = fold_frames(agg, v.values(), nulls.as_ref(), frames);
            finish::<i64, Int64Type>(&states, |s| s.acc)
        }
        DataType::Int32 => {
            let v = typed::<Int32Type>(&values);
            let states = fold_frames(agg, v.values(), nulls.as_ref(), frames);
            finish::<i32, Int32Type>(&states, |s| s.acc)
        }
        other => {
            return Err(DataFusionError::Internal(format!(
                "SortedWindowExec cannot fold {other}"
            )))
        }
    })
}

/// The operator's stream: input batches are held until a later row starts
/// a new partition, then every complete partition is evaluated at once.
struct SortedWindowStream {
    input: SendableRecordBatchStream,
    eval: Evaluator,
    /// Rows of the partition in progress (the last one seen).
    pending: Vec<RecordBatch>,
    /// That partition's key.
    pending_key: Vec<ScalarValue>,
    done: bool,
    metrics: BaselineMetrics,
}

impl SortedWindowStream {
    fn key_at(keys: &[ArrayRef], row: usize) -> Result<Vec<ScalarValue>> {
        keys.iter()
            .map(|k| ScalarValue::try_from_array(k, row))
            .collect()
    }

    /// Takes in one input batch; returns the evaluated complete partitions
    /// it closes, if any.
    fn push(&mut self, batch: RecordBatch) -> Result<Option<RecordBatch>> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(None);
        }
        let keys = columns(&self.eval.partition_by, &batch)?;
        let last_start = partition(&keys)?
            .ranges()
            .last()
            .map(|r| r.start)
            .unwrap_or(0);
        let first_key = Self::key_at(&keys, 0)?;
        let continues = !self.pending.is_empty() && first_key == self.pending_key;
        if last_start == 0 && continues {
            self.pending.push(batch);
            return Ok(None);
        }
        // Everything before `last_start` (and all of `pending`) is whole.
        let mut complete = std::mem::take(&mut self.pending);
        if last_start > 0 {
            complete.push(batch.slice(0, last_start));
        }
        self.pending = vec![batch.slice(last_start, n - last_start)];
        self.pending_key = Self::key_at(&keys, last_start)?;
        self.evaluate(complete)
    }

    fn evaluate(&self, batches: Vec<RecordBatch>) -> Result<Option<RecordBatch>> {
        if batches.is_empty() {
            return Ok(None);
        }
        let batch = if batches.len() == 1 {
            batches.into_iter().next().expect("one batch")
        } else {
            concat_batches(&batches[0].schema(), &batches)?
        };
        self.eval.evaluate(&batch).map(Some)
    }
}

impl Stream for SortedWindowStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let item = match self.input.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(item) => item,
            };
            let elapsed = self.metrics.elapsed_compute().clone();
            let timer = elapsed.timer();
            let result = match item {
                Some(Ok(batch)) => self.push(batch),
                Some(Err(e)) => Err(e),
                None => {
                    self.done = true;
                    let rest = std::mem::take(&mut self.pending);
                    self.evaluate(rest)
                }
            };
            timer.done();
            match result {
                Ok(None) => continue,
                Ok(Some(batch)) => {
                    self.metrics.record_output(batch.num_rows());
                    return Poll::Ready(Some(Ok(batch)));
                }
                Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

impl RecordBatchStream for SortedWindowStream {
    fn schema(&self) -> SchemaRef {
        self.eval.schema.clone()
    }
}
