//! Region scans fold cells back into rows the same way whichever path they
//! take: a batch at a time when the default family holds every projected
//! column, cell by cell otherwise. Small batches make rows straddle them.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::prelude::SessionContext;
use tidebase_catalog::table::{ColumnDef, SqlType, TableDef, DEFAULT_FAMILY};
use tidebase_catalog::{Catalog, SessionSettings};

const ROWS: i64 = 500;

/// Row i: key (g, id), default-family a, b, c (some NULL, all three NULL
/// on every 11th row so that row is only a marker), family f's d.
fn row(i: i64) -> [Option<String>; 6] {
    let g = format!("g{}", i % 4);
    let marker_only = i % 11 == 0;
    let a = (!marker_only && i % 3 != 0).then(|| (i * 7 - 1000).to_string());
    let b = (!marker_only && i % 5 != 0).then(|| format!("b{i}"));
    let c = (!marker_only && i % 2 == 0).then(|| format!("{:?}", i as f64 / 4.0));
    let d = (i % 7 != 0).then(|| (i * 1000).to_string());
    [Some(g), Some(i.to_string()), a, b, c, d]
}

fn sql_value(v: &Option<String>, text: bool) -> String {
    match (v, text) {
        (None, _) => "NULL".into(),
        (Some(s), true) => format!("'{s}'"),
        (Some(s), false) => s.clone(),
    }
}

async fn table(dir: &std::path::Path) -> SessionContext {
    let catalog = Catalog::open(dir, Default::default()).unwrap();
    let column = |name: &str, family: &str, ty| ColumnDef {
        name: name.into(),
        family: family.into(),
        ty,
    };
    let def = TableDef {
        name: "t".into(),
        columns: vec![
            column("g", "", SqlType::Text),
            column("id", "", SqlType::Int8),
            column("a", DEFAULT_FAMILY, SqlType::Int4),
            column("b", DEFAULT_FAMILY, SqlType::Text),
            column("c", DEFAULT_FAMILY, SqlType::Float8),
            column("d", "f", SqlType::Int8),
        ],
        key: vec![0, 1],
        families: vec![
            (DEFAULT_FAMILY.into(), Default::default()),
            ("f".into(), Default::default()),
        ],
        split_size: None,
    };
    catalog.user_schema().create(def, true).unwrap();
    let ctx = catalog.new_session(SessionSettings::default());
    let values: Vec<String> = (0..ROWS)
        .map(|i| {
            let r = row(i);
            format!(
                "({}, {}, {}, {}, {}, {})",
                sql_value(&r[0], true),
                sql_value(&r[1], false),
                sql_value(&r[2], false),
                sql_value(&r[3], true),
                sql_value(&r[4], false),
                sql_value(&r[5], false)
            )
        })
        .collect();
    ctx.sql(&format!("INSERT INTO t VALUES {}", values.join(", ")))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    ctx.sql("SET datafusion.execution.batch_size = 7")
        .await
        .unwrap();
    ctx
}

fn text(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| {
                    if c.is_null(r) {
                        "NULL".into()
                    } else {
                        array_value_to_string(c, r).unwrap()
                    }
                })
                .collect();
            out.push(cells.join("|"));
        }
    }
    out
}

/// The expected rows of `columns` (indexes into [`row`]) in key order.
fn expected(columns: &[usize]) -> Vec<String> {
    let mut rows: Vec<(String, i64, String)> = (0..ROWS)
        .map(|i| {
            let r = row(i);
            let cells: Vec<String> = columns
                .iter()
                .map(|&c| r[c].clone().unwrap_or_else(|| "NULL".into()))
                .collect();
            (r[0].clone().unwrap(), i, cells.join("|"))
        })
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, _, s)| s).collect()
}

async fn query(ctx: &SessionContext, sql: &str) -> Vec<String> {
    text(&ctx.sql(sql).await.unwrap().collect().await.unwrap())
}

#[tokio::test]
async fn both_folding_paths_give_every_row_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = table(dir.path()).await;
    // The default family alone: folded a batch at a time. The scan is one
    // partition, so rows come in key order.
    let default_only = query(&ctx, "SELECT g, id, a, b, c FROM t").await;
    assert_eq!(default_only, expected(&[0, 1, 2, 3, 4]));
    // Two families: folded cell by cell.
    let both = query(&ctx, "SELECT g, id, a, b, c, d FROM t").await;
    assert_eq!(both, expected(&[0, 1, 2, 3, 4, 5]));
    // Values without keys, and keys without values.
    assert_eq!(query(&ctx, "SELECT c, a FROM t").await, expected(&[4, 2]));
    assert_eq!(query(&ctx, "SELECT id FROM t").await, expected(&[1]));
    // LIMIT stops inside a batch.
    for limit in [1, 6, 7, 8, 13, 499, 500, 501] {
        let rows = query(&ctx, &format!("SELECT g, id, b FROM t LIMIT {limit}")).await;
        let mut want = expected(&[0, 1, 3]);
        want.truncate(limit);
        assert_eq!(rows, want, "LIMIT {limit}");
    }
}
