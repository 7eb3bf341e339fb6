//! `SortedWindowExec` against DataFusion's own window operator: every
//! query runs in a session with the rule and in one without, over the same
//! sorted input cut into small batches (so partitions and peer groups
//! straddle batches), and the answers must be equal.

use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, Int32Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_plan::displayable;
use datafusion::prelude::{col, SessionConfig, SessionContext};
use tidebase_window::sorted::SortedWindows;

/// 400 rows sorted by (p, o): partitions of 1 to 60 rows (one of them
/// p = NULL), ties in `o`, NULLs in `v` and `f`.
fn rows() -> RecordBatch {
    let (mut id, mut p, mut o, mut v, mut f) = (vec![], vec![], vec![], vec![], vec![]);
    let mut w: Vec<Option<i32>> = vec![];
    let mut x: u64 = 7;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    let mut part: Option<i32> = None;
    let mut left = 0;
    let mut order = 0i64;
    for i in 0..400 {
        if left == 0 {
            part = match part {
                None if i == 0 => None,
                None => Some(0),
                Some(k) => Some(k + 1),
            };
            left = 1 + next() % 60;
            order = 0;
        }
        left -= 1;
        order += (next() % 3) as i64; // 0 makes a tie with the previous row
        id.push(i as i64);
        p.push(part);
        o.push(order);
        v.push((next() % 7 != 0).then(|| next() as i64 % 1000 - 500));
        w.push((next() % 6 != 0).then(|| (next() % 200) as i32 - 100));
        f.push((next() % 5 != 0).then(|| (next() % 400) as f64 * 0.25 - 50.0));
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("p", DataType::Int32, true),
        Field::new("o", DataType::Int64, false),
        Field::new("v", DataType::Int64, true),
        Field::new("f", DataType::Float64, true),
        Field::new("w", DataType::Int32, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(id)),
            Arc::new(Int32Array::from(p)),
            Arc::new(Int64Array::from(o)),
            Arc::new(Int64Array::from(v)),
            Arc::new(Float64Array::from(f)),
            Arc::new(Int32Array::from(w)),
        ],
    )
    .unwrap()
}

fn context(with_rule: bool) -> SessionContext {
    let config = SessionConfig::new()
        .with_batch_size(7)
        .with_target_partitions(2)
        .set_bool("datafusion.optimizer.prefer_existing_sort", true);
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features();
    if with_rule {
        state = state.with_physical_optimizer_rule(Arc::new(SortedWindows));
    }
    let ctx = SessionContext::new_with_state(state.build());
    // Tidebase's avg: numeric over integers.
    ctx.register_udaf(tidebase_catalog::numeric::avg_udaf());
    let batch = rows();
    let batches: Vec<RecordBatch> = (0..batch.num_rows())
        .step_by(13)
        .map(|s| batch.slice(s, 13.min(batch.num_rows() - s)))
        .collect();
    // Two sorted partitions, as a region scan read in two halves gives.
    let half = batches.len() / 2;
    let partitions = vec![batches[..half].to_vec(), batches[half..].to_vec()];
    let table = MemTable::try_new(batch.schema(), partitions)
        .unwrap()
        .with_sort_order(vec![vec![
            col("p").sort(true, true),
            col("o").sort(true, false),
        ]]);
    ctx.register_table("t", Arc::new(table)).unwrap();
    ctx
}

/// The query's plan and its answer as text.
async fn run(ctx: &SessionContext, sql: &str) -> (String, String) {
    let df = ctx.sql(sql).await.unwrap();
    let plan = df.clone().create_physical_plan().await.unwrap();
    let plan = displayable(plan.as_ref()).indent(true).to_string();
    let batches = df.collect().await.unwrap();
    (plan, pretty_format_batches(&batches).unwrap().to_string())
}

async fn check(functions: &[&str], window: &str, replaced: bool) {
    let (with, without) = (context(true), context(false));
    let sql = format!(
        "SELECT id, {} FROM t WINDOW w AS ({window}) ORDER BY id",
        functions
            .iter()
            .map(|f| format!("{f} OVER w"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (plan, ours) = run(&with, &sql).await;
    let (_, theirs) = run(&without, &sql).await;
    assert_eq!(plan.contains("SortedWindowExec"), replaced, "{sql}\n{plan}");
    assert_eq!(ours, theirs, "{sql}\n{plan}");
}

const W: &str = "PARTITION BY p ORDER BY o";

#[tokio::test]
async fn ranking_functions_match_datafusion() {
    check(
        &[
            "row_number()",
            "rank()",
            "dense_rank()",
            "percent_rank()",
            "cume_dist()",
        ],
        W,
        true,
    )
    .await;
}

#[tokio::test]
async fn lag_and_lead_match_datafusion() {
    check(
        &[
            "lag(v)",
            "lag(v, 2, -1)",
            "lead(v)",
            "lead(f, 3, 0.5)",
            "lag(f, 0)",
        ],
        W,
        true,
    )
    .await;
}

#[tokio::test]
async fn aggregates_over_row_frames_match_datafusion() {
    let functions = [
        "sum(v)", "avg(f)", "count(v)", "count(*)", "min(v)", "max(f)", "min(f)", "max(v)",
    ];
    for frame in [
        "ROWS BETWEEN 2 PRECEDING AND 1 FOLLOWING",
        "ROWS UNBOUNDED PRECEDING",
        "ROWS BETWEEN 3 PRECEDING AND 1 PRECEDING",
        "ROWS BETWEEN 1 FOLLOWING AND 3 FOLLOWING",
        "ROWS BETWEEN CURRENT ROW AND CURRENT ROW",
        "ROWS BETWEEN UNBOUNDED PRECEDING AND 2 FOLLOWING",
        "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING",
    ] {
        check(&functions, &format!("{W} {frame}"), true).await;
    }
}

#[tokio::test]
async fn aggregates_over_peer_frames_match_datafusion() {
    let functions = ["sum(v)", "avg(f)", "count(v)", "min(v)", "max(f)"];
    // The default frame: RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW.
    check(&functions, W, true).await;
    check(
        &functions,
        &format!("{W} RANGE BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING"),
        true,
    )
    .await;
    check(&functions, "PARTITION BY p", true).await;
}

#[tokio::test]
async fn a_sort_within_partitions_is_done_per_partition() {
    // The input is grouped by p but not ordered by v: the sort DataFusion
    // plans under the window is done a partition at a time instead. Only
    // functions whose answer does not depend on the order among peers.
    let functions = [
        "rank()",
        "dense_rank()",
        "percent_rank()",
        "cume_dist()",
        "sum(v)",
        "count(*)",
        "min(f)",
        "max(v)",
        "avg(f)",
    ];
    for window in [
        "PARTITION BY p ORDER BY v",
        "PARTITION BY p ORDER BY v DESC NULLS FIRST",
        "PARTITION BY p ORDER BY f, v DESC",
    ] {
        check(&functions, window, true).await;
        let (plan, _) = run(
            &context(true),
            &format!("SELECT rank() OVER ({window}) FROM t"),
        )
        .await;
        assert!(plan.contains("sorts each partition by"), "{plan}");
        assert!(!plan.contains("SortExec"), "{plan}");
    }
}

#[tokio::test]
async fn what_it_does_not_evaluate_stays_with_datafusion() {
    // Frames it does not fold, FILTER, DISTINCT, other functions, no
    // PARTITION BY.
    for (functions, window) in [
        (
            &["sum(v)"][..],
            format!("{W} ROWS BETWEEN 100 PRECEDING AND CURRENT ROW"),
        ),
        (
            &["sum(v)"][..],
            format!("{W} RANGE BETWEEN 2 PRECEDING AND CURRENT ROW"),
        ),
        (
            &["sum(v)"][..],
            format!("{W} GROUPS BETWEEN 1 PRECEDING AND CURRENT ROW"),
        ),
        (
            &["sum(v)"][..],
            format!("{W} RANGE BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING"),
        ),
        (&["sum(v) FILTER (WHERE v > 0)"][..], W.to_string()),
        (&["count(DISTINCT v)"][..], W.to_string()),
        (&["first_value(v)", "ntile(3)"][..], W.to_string()),
        (&["sum(v)", "row_number()"][..], "ORDER BY p, o".to_string()),
    ] {
        check(functions, &window, false).await;
    }
}

#[tokio::test]
async fn a_window_read_backwards_keeps_its_meaning() {
    // DataFusion may reverse such a window to use the input's order; the
    // answers must stay right whoever evaluates it.
    let (with, without) = (context(true), context(false));
    let sql = "SELECT id, lag(v) OVER (PARTITION BY p ORDER BY o DESC) AS a, \
               sum(v) OVER (PARTITION BY p ORDER BY o DESC ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS b \
               FROM t ORDER BY id";
    let (plan, ours) = run(&with, sql).await;
    let (_, theirs) = run(&without, sql).await;
    assert_eq!(ours, theirs, "{plan}");
}

/// Tidebase's numeric avg over an int column is folded here too (64-bit
/// sums, PostgreSQL's division); over bigint, whose sums could pass 64
/// bits, it stays with DataFusion's operator and the exact accumulator.
#[tokio::test]
async fn numeric_averages_of_small_integers_match_the_accumulator() {
    for frame in [
        "ROWS BETWEEN 2 PRECEDING AND 1 FOLLOWING",
        "ROWS UNBOUNDED PRECEDING",
        "ROWS BETWEEN CURRENT ROW AND CURRENT ROW",
        "RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW",
    ] {
        check(&["avg(w)", "sum(w)"], &format!("{W} {frame}"), true).await;
    }
    check(&["avg(v)"], &format!("{W} ROWS UNBOUNDED PRECEDING"), false).await;
}
