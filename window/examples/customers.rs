//! The lecture's customer analytics with the DataFrame-style window API,
//! over a Tidebase table: `cargo run -p tidebase-window --example customers`.

use datafusion::error::Result;
use datafusion::functions_aggregate::expr_fn::avg;
use datafusion::functions_window::expr_fn::{lag, rank};
use datafusion::prelude::{col, DataFrame, Expr};
use tidebase_window::{cumulative_sum, Over, WindowSpec};

/// Prints each visit with `column` computed by `window`, by name and date.
async fn show(title: &str, customers: &DataFrame, window: Expr, column: &str) -> Result<()> {
    println!("{title}:");
    customers
        .clone()
        .select(vec![
            col("name"),
            col("date"),
            col("amount"),
            window.alias(column),
        ])?
        .sort_by(vec![col("name"), col("date")])?
        .show()
        .await
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ctx = tidebase_window::example::customers(dir.path()).await?;
    let customers = ctx.table("customers").await?;
    let by_date = WindowSpec::partition_by(["name"]).order_by(["date"]);

    show(
        "Moving average of the amount spent (one row before and after)",
        &customers,
        avg(col("amount")).over(&by_date.clone().rows_between(-1, 1))?,
        "moving_avg",
    )
    .await?;
    show(
        "Cumulative sum of the amount spent",
        &customers,
        cumulative_sum("amount", &by_date)?,
        "cumulative_sum",
    )
    .await?;
    show(
        "The previous amount spent",
        &customers,
        lag(col("amount"), Some(1), None).over(&by_date)?,
        "previous_amount",
    )
    .await?;
    show(
        "Rank of each visit",
        &customers,
        rank().over(&by_date)?,
        "rank",
    )
    .await
}
