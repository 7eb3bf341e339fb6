//! The lecture's customer analytics with the DataFrame-style window API,
//! over a Tidebase table: `cargo run -p tidebase-window --example customers`.

use datafusion::functions_aggregate::expr_fn::avg;
use datafusion::functions_window::expr_fn::{lag, rank};
use datafusion::prelude::col;
use tidebase_window::{cumulative_sum, Over, WindowSpec};

#[tokio::main]
async fn main() -> datafusion::error::Result<()> {
    let dir = tempfile::tempdir()?;
    let ctx = tidebase_window::example::customers(dir.path()).await?;
    let customers = ctx.table("customers").await?;
    let by_date = WindowSpec::partition_by(["name"]).order_by(["date"]);

    println!("Moving average of the amount spent (one row before and after):");
    customers
        .clone()
        .select(vec![
            col("name"),
            col("date"),
            col("amount"),
            avg(col("amount"))
                .over(&by_date.clone().rows_between(-1, 1))?
                .alias("moving_avg"),
        ])?
        .sort_by(vec![col("name"), col("date")])?
        .show()
        .await?;

    println!("Cumulative sum of the amount spent:");
    customers
        .clone()
        .select(vec![
            col("name"),
            col("date"),
            col("amount"),
            cumulative_sum("amount", &by_date)?.alias("cumulative_sum"),
        ])?
        .sort_by(vec![col("name"), col("date")])?
        .show()
        .await?;

    println!("The previous amount spent:");
    customers
        .clone()
        .select(vec![
            col("name"),
            col("date"),
            col("amount"),
            lag(col("amount"), Some(1), None)
                .over(&by_date)?
                .alias("previous_amount"),
        ])?
        .sort_by(vec![col("name"), col("date")])?
        .show()
        .await?;

    println!("Rank of each visit:");
    customers
        .select(vec![
            col("name"),
            col("date"),
            col("amount"),
            rank().over(&by_date)?.alias("rank"),
        ])?
        .sort_by(vec![col("name"), col("date")])?
        .show()
        .await?;
    Ok(())
}
