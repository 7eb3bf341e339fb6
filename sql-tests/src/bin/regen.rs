//! Rewrites the expected results of sqllogictest files from a live server:
//! `regen CONNECTION_STRING FILE...`. `sql-tests/pg/regen.sh` runs it
//! against a throwaway PostgreSQL 15 for the files under `slt/pg/`, whose
//! expected values are PostgreSQL's.

use tidebase_sql_tests::{Protocol, Wire};
use tokio_postgres::NoTls;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let conn = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: regen CONNECTION_STRING FILE..."))?;
    for file in args {
        let conn = conn.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let conn = conn.clone();
            async move {
                let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok::<_, tidebase_sql_tests::WireError>(Wire::new(client, Protocol::Simple))
            }
        });
        runner.with_hash_threshold(0);
        runner
            .update_test_file(
                &file,
                " ",
                sqllogictest::default_validator,
                sqllogictest::default_normalizer,
                sqllogictest::default_column_validator,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        println!("regenerated {file}");
    }
    Ok(())
}
