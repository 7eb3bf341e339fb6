//! Tidebase windows: Spark-style window specifications over DataFusion
//! DataFrames.
//!
//! ```
//! use datafusion::functions_aggregate::expr_fn::{avg, sum};
//! use datafusion::functions_window::expr_fn::{lag, rank};
//! use datafusion::prelude::col;
//! use tidebase_window::{Over, WindowSpec};
//!
//! // Window.partitionBy("name").orderBy("date").rowsBetween(-1, 1)
//! let w1 = WindowSpec::partition_by(["name"]).order_by(["date"]).rows_between(-1, 1);
//! let moving_avg = avg(col("amount")).over(&w1).unwrap();
//! // rowsBetween(Long.MinValue, 0)
//! let w2 = WindowSpec::partition_by(["name"]).order_by(["date"]).rows_between(i64::MIN, 0);
//! let cumulative = sum(col("amount")).over(&w2).unwrap();
//! let w3 = WindowSpec::partition_by(["name"]).order_by(["date"]);
//! let previous = lag(col("amount"), Some(1), None).over(&w3).unwrap();
//! let r = rank().over(&w3).unwrap();
//! # let _ = (moving_avg, cumulative, previous, r);
//! ```
//!
//! The same specification in SQL is `OVER (PARTITION BY name ORDER BY date
//! ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING)`; both plan to the same
//! DataFusion window expression, so they give the same answers.

pub mod example;
pub mod exclude;
pub mod grouped;
pub mod sorted;

/// What this crate adds to every session of `catalog`: window functions
/// over sorted input evaluated a partition at a time ([`sorted`]), and
/// aggregates grouped by a row-key prefix run per scan partition
/// ([`grouped`]).
pub fn install(catalog: tidebase_catalog::Catalog) -> tidebase_catalog::Catalog {
    catalog.with_physical_optimizer_rule(std::sync::Arc::new(sorted::SortedWindows))
}

use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::expr::{AggregateFunction, WindowFunction};
use datafusion::logical_expr::{
    Expr, ExprFunctionExt, SortExpr, WindowFrame, WindowFrameBound, WindowFrameUnits,
    WindowFunctionDefinition,
};
use datafusion::prelude::col;

/// Where a frame starts or ends, as Spark counts: negative = that many rows
/// (or units of the order key) before the current row, 0 = the current row,
/// positive = after it; `i64::MIN` and `i64::MAX` are unbounded.
fn bound(offset: i64, units: WindowFrameUnits) -> WindowFrameBound {
    let value = |n: u64| match units {
        WindowFrameUnits::Range => ScalarValue::Int64(Some(n as i64)),
        _ => ScalarValue::UInt64(Some(n)),
    };
    match offset {
        i64::MIN => WindowFrameBound::Preceding(ScalarValue::UInt64(None)),
        i64::MAX => WindowFrameBound::Following(ScalarValue::UInt64(None)),
        0 => WindowFrameBound::CurrentRow,
        n if n < 0 => WindowFrameBound::Preceding(value(n.unsigned_abs())),
        n => WindowFrameBound::Following(value(n as u64)),
    }
}

/// A window: partitioning, ordering and an optional frame. Without a frame
/// the SQL default applies (with ORDER BY: RANGE BETWEEN UNBOUNDED
/// PRECEDING AND CURRENT ROW; without: the whole partition).
#[derive(Debug, Clone, Default)]
pub struct WindowSpec {
    partition_by: Vec<Expr>,
    order_by: Vec<SortExpr>,
    frame: Option<WindowFrame>,
}

impl WindowSpec {
    /// A window partitioned by these columns.
    pub fn partition_by<I, S>(columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            partition_by: columns.into_iter().map(|c| col(c.as_ref())).collect(),
            ..Default::default()
        }
    }

    /// A window over the whole input (`OVER ()`).
    pub fn unpartitioned() -> Self {
        Self::default()
    }

    /// Orders each partition by these columns, ascending, NULLs last (as
    /// PostgreSQL sorts ascending).
    pub fn order_by<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.order_by = columns
            .into_iter()
            .map(|c| col(c.as_ref()).sort(true, false))
            .collect();
        self
    }

    /// Orders each partition by arbitrary sort expressions.
    pub fn order_by_exprs(mut self, sorts: Vec<SortExpr>) -> Self {
        self.order_by = sorts;
        self
    }

    /// A frame of rows: `rows_between(-1, 1)` is `ROWS BETWEEN 1 PRECEDING
    /// AND 1 FOLLOWING`; `rows_between(i64::MIN, 0)` is `ROWS BETWEEN
    /// UNBOUNDED PRECEDING AND CURRENT ROW`.
    pub fn rows_between(mut self, start: i64, end: i64) -> Self {
        self.frame = Some(WindowFrame::new_bounds(
            WindowFrameUnits::Rows,
            bound(start, WindowFrameUnits::Rows),
            bound(end, WindowFrameUnits::Rows),
        ));
        self
    }

    /// A frame by value of the (single, numeric) order key: `range_between(-10, 0)`
    /// is `RANGE BETWEEN 10 PRECEDING AND CURRENT ROW`.
    pub fn range_between(mut self, start: i64, end: i64) -> Self {
        self.frame = Some(WindowFrame::new_bounds(
            WindowFrameUnits::Range,
            bound(start, WindowFrameUnits::Range),
            bound(end, WindowFrameUnits::Range),
        ));
        self
    }

    /// Applies the window to a window function or an aggregate.
    pub fn apply(&self, function: Expr) -> Result<Expr> {
        let window = match function {
            Expr::WindowFunction(w) => Expr::WindowFunction(w),
            Expr::AggregateFunction(AggregateFunction { func, params }) => {
                if params.distinct {
                    return Err(DataFusionError::NotImplemented(
                        "DISTINCT aggregates over a window".into(),
                    ));
                }
                let mut w =
                    WindowFunction::new(WindowFunctionDefinition::AggregateUDF(func), params.args);
                w.params.filter = params.filter;
                Expr::from(w)
            }
            other => {
                return Err(DataFusionError::Plan(format!(
                    "{other} is not a window function or an aggregate"
                )))
            }
        };
        let mut builder = window
            .partition_by(self.partition_by.clone())
            .order_by(self.order_by.clone());
        if let Some(frame) = &self.frame {
            builder = builder.window_frame(frame.clone());
        }
        builder.build()
    }
}

/// `f.over(&spec)`, as in Spark.
pub trait Over {
    fn over(self, spec: &WindowSpec) -> Result<Expr>;
}

impl Over for Expr {
    fn over(self, spec: &WindowSpec) -> Result<Expr> {
        spec.apply(self)
    }
}

/// The average of `column` over `before` rows before and `after` rows after
/// each row of its partition: SQL's `avg`, so numeric over an integer column.
pub fn moving_avg(column: &str, spec: &WindowSpec, before: i64, after: i64) -> Result<Expr> {
    tidebase_catalog::numeric::avg(col(column)).over(&spec.clone().rows_between(-before, after))
}

/// The running total of `column` from the start of the partition.
pub fn cumulative_sum(column: &str, spec: &WindowSpec) -> Result<Expr> {
    datafusion::functions_aggregate::expr_fn::sum(col(column))
        .over(&spec.clone().rows_between(i64::MIN, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_window_functions_and_aggregates_take_a_window() {
        let spec = WindowSpec::partition_by(["a"]).order_by(["b"]);
        assert!(col("x").over(&spec).is_err());
        let e = datafusion::functions_aggregate::expr_fn::avg(col("x"))
            .over(&spec.clone().rows_between(-1, 1))
            .unwrap();
        let text = e.to_string();
        assert!(text.contains("PARTITION BY [a]"), "{text}");
        assert!(
            text.contains("ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING"),
            "{text}"
        );
    }
}
