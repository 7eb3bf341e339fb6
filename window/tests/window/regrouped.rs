//! Windows over a Tidebase table of several regions, where the rows of one
//! `PARTITION BY` group straddle region boundaries (one group spans three
//! regions): with nothing above relying on the window's partitioning, the
//! window reads the scan with partitions cut between groups instead of a
//! hash repartition, and every answer equals DataFusion's own over the same
//! rows.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::physical_plan::{displayable, ExecutionPlanProperties};
use datafusion::prelude::{SessionConfig, SessionContext};
use tidebase_catalog::table::codec::encode_key_value;
use tidebase_catalog::table::{ColumnDef, SqlType, TableDef, DEFAULT_FAMILY};
use tidebase_catalog::{Catalog, SessionSettings};

const USERS: i32 = 6;
const PER_USER: i64 = 40;

fn key(user: i32, ts: i64) -> Vec<u8> {
    let mut k = Vec::new();
    let u: ArrayRef = Arc::new(Int32Array::from(vec![user]));
    let t: ArrayRef = Arc::new(Int64Array::from(vec![ts]));
    assert!(encode_key_value(&mut k, SqlType::Int4, &u, 0));
    assert!(encode_key_value(&mut k, SqlType::Int8, &t, 0));
    k
}

/// The Tidebase session (with the window rule) and a plain DataFusion
/// session over a copy of the same rows.
async fn sessions(dir: &std::path::Path) -> (SessionContext, SessionContext) {
    let catalog = tidebase_window::install(Catalog::open(dir, Default::default()).unwrap());
    // Key columns live in the row key (no family).
    let column = |name: &str, family: &str, ty| ColumnDef {
        name: name.into(),
        family: family.into(),
        ty,
    };
    let def = TableDef {
        name: "tx".into(),
        columns: vec![
            column("user_id", "", SqlType::Int4),
            column("ts", "", SqlType::Int8),
            column("amount", DEFAULT_FAMILY, SqlType::Int4),
        ],
        key: vec![0, 1],
        families: vec![(DEFAULT_FAMILY.into(), Default::default())],
        split_size: None,
    };
    catalog.user_schema().create(def, true).unwrap();
    let ctx = catalog.new_session(SessionSettings::default());
    let values: Vec<String> = (0..USERS)
        .flat_map(|u| {
            (0..PER_USER).map(move |t| format!("({u}, {t}, {})", (t * 7 + u as i64) % 11))
        })
        .collect();
    ctx.sql(&format!("INSERT INTO tx VALUES {}", values.join(", ")))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    // Cuts inside groups: user 1 at ts 17, user 4 at ts 10 and 30 (three
    // regions), and one exactly where user 2 begins.
    let engine = catalog.user_schema().engine();
    engine.flush("tx").unwrap();
    for (u, t) in [(1, 17), (2, 0), (4, 10), (4, 30)] {
        engine.split_at("tx", &key(u, t)).unwrap();
    }
    assert_eq!(engine.regions("tx").unwrap().len(), 5);

    let rows = ctx
        .sql("SELECT * FROM tx")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let plain = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    let copy = MemTable::try_new(rows[0].schema(), vec![rows]).unwrap();
    plain.register_table("tx", Arc::new(copy)).unwrap();
    (ctx, plain)
}

async fn answer(ctx: &SessionContext, sql: &str) -> (String, String) {
    let df = ctx.sql(sql).await.unwrap();
    let plan = df.clone().create_physical_plan().await.unwrap();
    let plan = displayable(plan.as_ref()).indent(true).to_string();
    let batches: Vec<RecordBatch> = df.collect().await.unwrap();
    (plan, pretty_format_batches(&batches).unwrap().to_string())
}

#[tokio::test]
async fn groups_that_straddle_regions_are_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (tidebase, plain) = sessions(dir.path()).await;
    let windows = [
        // Over float8: over integers Tidebase's avg is numeric, DataFusion's float8.
        "avg(CAST(amount AS DOUBLE)) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING)",
        "sum(amount) OVER (PARTITION BY user_id ORDER BY ts ROWS UNBOUNDED PRECEDING)",
        "lag(amount, 1) OVER (PARTITION BY user_id ORDER BY ts)",
        "rank() OVER (PARTITION BY user_id ORDER BY amount)",
        "count(*) OVER (PARTITION BY user_id)",
    ];
    for w in windows {
        let sql = format!("SELECT user_id, ts, {w} AS x FROM tx ORDER BY user_id, ts");
        let (plan, got) = answer(&tidebase, &sql).await;
        let (_, want) = answer(&plain, &sql).await;
        assert_eq!(got, want, "{w}\n{plan}");
        assert!(plan.contains("SortedWindowExec"), "{w}\n{plan}");
        assert!(
            plan.contains("partitions_grouped_by=[user_id]"),
            "{w}\n{plan}"
        );
        assert!(!plan.contains("Hash([user_id"), "{w}\n{plan}");
    }
    // Partitioned by the whole key: every cut is between groups.
    let sql =
        "SELECT user_id, ts, row_number() OVER (PARTITION BY user_id, ts ORDER BY amount) AS x \
               FROM tx ORDER BY user_id, ts";
    let (plan, got) = answer(&tidebase, sql).await;
    assert_eq!(got, answer(&plain, sql).await.1);
    assert!(
        plan.contains("partitions_grouped_by=[user_id, ts]"),
        "{plan}"
    );
}

#[tokio::test]
async fn a_partitioning_relied_on_above_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (tidebase, plain) = sessions(dir.path()).await;
    // The aggregate above groups by the window's partition key and may
    // count on the hash partitioning the window hands on.
    let sql = "SELECT user_id, max(r) AS m, count(*) AS n FROM \
               (SELECT user_id, rank() OVER (PARTITION BY user_id ORDER BY amount) AS r FROM tx) s \
               GROUP BY user_id ORDER BY user_id";
    let (plan, got) = answer(&tidebase, sql).await;
    assert_eq!(got, answer(&plain, sql).await.1);
    assert!(plan.contains("SortedWindowExec"), "{plan}");
    if plan.contains("partitions_grouped_by") {
        // Only where the aggregate repartitions for itself.
        let above = plan.split("SortedWindowExec").next().unwrap();
        assert!(above.contains("RepartitionExec"), "{plan}");
    }
    // A window partitioned by a column that is not a key prefix keeps the
    // hash repartition.
    let sql = "SELECT ts, sum(amount) OVER (PARTITION BY ts ORDER BY user_id) AS x FROM tx ORDER BY ts, x";
    let (plan, got) = answer(&tidebase, sql).await;
    assert_eq!(got, answer(&plain, sql).await.1);
    assert!(!plan.contains("partitions_grouped_by"), "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_query_over_one_region_stays_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = tidebase_window::example::customers(dir.path())
        .await
        .unwrap();
    let sql = "SELECT name, date, rank() OVER (PARTITION BY name ORDER BY date) AS r \
               FROM customers ORDER BY name, date";
    let (plan, first) = answer(&ctx, sql).await;
    assert!(first.find("Alice") < first.find("Bob"), "{plan}\n{first}");
    for _ in 0..20 {
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        let counts: Vec<usize> = {
            let mut v = Vec::new();
            let mut p = plan.clone();
            loop {
                v.push(p.output_partitioning().partition_count());
                let Some(c) = p.children().first().map(|c| (*c).clone()) else {
                    break;
                };
                p = c;
            }
            v
        };
        let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .unwrap();
        let again = pretty_format_batches(&batches).unwrap().to_string();
        assert_eq!(again, first, "{shown}\n{counts:?}");
    }
}
