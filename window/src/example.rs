//! The lecture's example data in a Tidebase table, for examples and tests.

use std::path::Path;

use datafusion::error::Result;
use datafusion::prelude::SessionContext;
use tidebase_catalog::table::{ColumnDef, SqlType, TableDef, DEFAULT_FAMILY};
use tidebase_catalog::{Catalog, SessionSettings};

/// The six visits of the lecture: (name, date, amount spent).
pub const CUSTOMERS: &[(&str, &str, i32)] = &[
    ("Alice", "2016-05-01", 50),
    ("Alice", "2016-05-03", 45),
    ("Alice", "2016-05-04", 55),
    ("Bob", "2016-05-01", 25),
    ("Bob", "2016-05-04", 29),
    ("Bob", "2016-05-06", 27),
];

/// Opens a Tidebase catalog in `dir` with a `customers` table (row key
/// (name, date)) holding [`CUSTOMERS`], and returns a session over it.
pub async fn customers(dir: &Path) -> Result<SessionContext> {
    let catalog = crate::install(Catalog::open(dir, Default::default())?);
    let column = |name: &str, family: &str, ty| ColumnDef {
        name: name.into(),
        family: family.into(),
        ty,
    };
    let def = TableDef {
        name: "customers".into(),
        columns: vec![
            column("name", "", SqlType::Text),
            column("date", "", SqlType::Date),
            column("amount", DEFAULT_FAMILY, SqlType::Int4),
        ],
        key: vec![0, 1],
        families: vec![(DEFAULT_FAMILY.into(), Default::default())],
        split_size: None,
    };
    catalog.user_schema().create(def, true)?;
    let ctx = catalog.new_session(SessionSettings::default());
    let values: Vec<String> = CUSTOMERS
        .iter()
        .map(|(n, d, a)| format!("('{n}', DATE '{d}', {a})"))
        .collect();
    ctx.sql(&format!(
        "INSERT INTO customers VALUES {}",
        values.join(", ")
    ))
    .await?
    .collect()
    .await?;
    Ok(ctx)
}
