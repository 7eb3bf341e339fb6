//! The lecture's four window results through the DataFrame-style API, over
//! a Tidebase table, checked value by value and against the same query in SQL.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, Int32Type, Int64Type, UInt64Type};
use datafusion::functions_aggregate::expr_fn::avg;
use datafusion::functions_window::expr_fn::{lag, rank};
use datafusion::prelude::{col, DataFrame};
use tidebase_window::{cumulative_sum, moving_avg, Over, WindowSpec};

async fn run(df: DataFrame, expr: datafusion::prelude::Expr) -> Vec<RecordBatch> {
    df.select(vec![col("name"), col("date"), expr.alias("v")])
        .unwrap()
        .sort_by(vec![col("name"), col("date")])
        .unwrap()
        .collect()
        .await
        .unwrap()
}

/// The window column's values as Arrow prints them.
fn text_column(batches: &[RecordBatch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(|i| {
                datafusion::arrow::util::display::array_value_to_string(b.column(2), i).unwrap()
            })
        })
        .collect()
}

fn column<T: datafusion::arrow::datatypes::ArrowPrimitiveType>(
    batches: &[RecordBatch],
) -> Vec<Option<T::Native>> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column(2).as_primitive::<T>();
            (0..a.len())
                .map(|i| (!a.is_null(i)).then(|| a.value(i)))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn the_lectures_four_results() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = tidebase_window::example::customers(dir.path())
        .await
        .unwrap();
    let t = ctx.table("customers").await.unwrap();
    let w = WindowSpec::partition_by(["name"]).order_by(["date"]);

    let avg3 = run(
        t.clone(),
        avg(col("amount"))
            .over(&w.clone().rows_between(-1, 1))
            .unwrap(),
    )
    .await;
    assert_eq!(
        column::<Float64Type>(&avg3),
        [47.5, 50.0, 50.0, 27.0, 27.0, 28.0].map(Some).to_vec()
    );
    // The helper is SQL's avg: numeric over an integer column.
    let helper = run(t.clone(), moving_avg("amount", &w, 1, 1).unwrap()).await;
    assert_eq!(
        text_column(&helper),
        [
            "47.50000000000000000000",
            "50.00000000000000000000",
            "50.00000000000000000000",
            "27.00000000000000000000",
            "27.00000000000000000000",
            "28.00000000000000000000",
        ]
    );

    let cum = run(t.clone(), cumulative_sum("amount", &w).unwrap()).await;
    assert_eq!(
        column::<Int64Type>(&cum),
        [50, 95, 150, 25, 54, 81].map(Some).to_vec()
    );

    let prev = run(
        t.clone(),
        lag(col("amount"), Some(1), None).over(&w).unwrap(),
    )
    .await;
    assert_eq!(
        column::<Int32Type>(&prev),
        vec![None, Some(50), Some(45), None, Some(25), Some(29)]
    );

    let r = run(t.clone(), rank().over(&w).unwrap()).await;
    assert_eq!(
        column::<UInt64Type>(&r),
        [1, 2, 3, 1, 2, 3].map(Some).to_vec()
    );

    // The same window in SQL gives the same numbers.
    let sql = ctx
        .sql("SELECT name, date, avg(amount) OVER (PARTITION BY name ORDER BY date ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) AS v FROM customers ORDER BY name, date")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(text_column(&sql), text_column(&helper));
}
