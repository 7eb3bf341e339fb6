//! Tidebase against PostgreSQL 15 on the same rows, in one run:
//! bulk load through COPY FROM STDIN, point lookups by key over the wire,
//! and a full-scan aggregate. Run with
//! `cargo bench -p tidebase-sql-tests --bench vs_postgres`.
//!
//! `TIDEBASE_BENCH_ROWS` sets the row count (default 10,000,000): user_id
//! among 10,000 users, ts, amount. PostgreSQL is started from `initdb` /
//! `pg_ctl` on PATH in a throwaway directory on 127.0.0.1 (as the
//! `postgres` user when this runs as root, which PostgreSQL refuses).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::SinkExt;
use tidebase_sql_tests::TestServer;
use tokio_postgres::{Client, NoTls};

const USERS: u64 = 10_000;

fn row(i: u64) -> (u64, u64, f64) {
    let amount = ((i.wrapping_mul(7919)) % 100_000) as f64 / 100.0;
    (i % USERS, i / USERS, amount)
}

async fn connect(conn: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// COPY FROM STDIN of `rows` rows, generated 64 KiB at a time.
async fn load(client: &Client, rows: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let sink = client.copy_in::<_, Bytes>("COPY tx FROM STDIN").await?;
    futures::pin_mut!(sink);
    let mut buf = String::with_capacity(1 << 17);
    for i in 0..rows {
        let (u, t, a) = row(i);
        buf.push_str(&format!("{u}\t{t}\t{a}\n"));
        if buf.len() >= 1 << 16 {
            sink.send(Bytes::from(std::mem::take(&mut buf))).await?;
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await?;
    }
    let n = sink.finish().await?;
    anyhow::ensure!(n == rows, "COPY reported {n} rows, expected {rows}");
    Ok(started.elapsed())
}

/// p50 and p99 of point lookups of existing keys.
async fn lookups(client: &Client, rows: u64, n: usize) -> anyhow::Result<(Duration, Duration)> {
    let stmt = client
        .prepare("SELECT amount FROM tx WHERE user_id = $1 AND ts = $2")
        .await?;
    let mut times = Vec::with_capacity(n);
    let mut x: u64 = 12345;
    for _ in 0..n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let i = (x >> 11) % rows;
        let (u, t, a) = row(i);
        let started = Instant::now();
        let r = client.query_one(&stmt, &[&(u as i32), &(t as i64)]).await?;
        times.push(started.elapsed());
        let got: f64 = r.get(0);
        anyhow::ensure!(
            (got - a).abs() < 1e-9,
            "lookup of row {i} returned {got}, expected {a}"
        );
    }
    times.sort();
    Ok((times[n / 2], times[n * 99 / 100]))
}

/// Median of 3 runs of the GROUP BY; also checks the row count.
async fn aggregate(client: &Client) -> anyhow::Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let rows = client
            .query("SELECT user_id, sum(amount) FROM tx GROUP BY user_id", &[])
            .await?;
        times.push(started.elapsed());
        anyhow::ensure!(
            rows.len() as u64 == USERS,
            "GROUP BY returned {} groups",
            rows.len()
        );
    }
    times.sort();
    Ok(times[1])
}

struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    fn command(&self, program: &str) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", program]);
            c
        } else {
            Command::new(program)
        }
    }

    fn start() -> anyhow::Result<Postgres> {
        let dir = tempfile::tempdir()?;
        let as_postgres = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
            || Command::new("id")
                .arg("-u")
                .output()
                .map(|o| o.stdout.starts_with(b"0"))
                .unwrap_or(false);
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let pg = Postgres {
            dir,
            port,
            as_postgres,
        };
        if as_postgres {
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(pg.dir.path())
                .status()?;
        }
        let data = pg.dir.path().join("data");
        let status = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "initdb failed");
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c shared_buffers=1GB -c max_wal_size=8GB",
            port,
            pg.dir.path().display()
        );
        let status = pg
            .command("pg_ctl")
            .args(["-w", "-D"])
            .arg(&data)
            .args(["-o", &opts, "-l"])
            .arg(pg.dir.path().join("log"))
            .arg("start")
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "pg_ctl start failed");
        Ok(pg)
    }

    fn conn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .command("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(Path::new(&data))
            .arg("stop")
            .stdout(std::process::Stdio::null())
            .status();
    }
}

struct Figures {
    load: Duration,
    p50: Duration,
    p99: Duration,
    agg: Duration,
}

async fn run(client: &Client, rows: u64) -> anyhow::Result<Figures> {
    let load_time = load(client, rows).await?;
    let (p50, p99) = lookups(client, rows, 2000).await?;
    let agg = aggregate(client).await?;
    Ok(Figures {
        load: load_time,
        p50,
        p99,
        agg,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows: u64 = std::env::var("TIDEBASE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    println!("Tidebase vs PostgreSQL 15: {rows} rows (user_id among {USERS} users, ts, amount)");

    let pg = Postgres::start()?;
    let client = connect(&pg.conn()).await?;
    client
        .batch_execute("CREATE TABLE tx (user_id INT, ts BIGINT, amount DOUBLE PRECISION, PRIMARY KEY (user_id, ts))")
        .await?;
    let p = run(&client, rows).await?;
    drop(client);
    drop(pg);

    let server = TestServer::start_with(|c| {
        if let Ok(dir) = std::env::var("TIDEBASE_BENCH_DIR") {
            c.data_dir = Path::new(&dir).join(format!("bench-{}", std::process::id()));
        }
    })
    .await?;
    let client = connect(&server.conn_str()).await?;
    client
        .batch_execute("CREATE TABLE tx (user_id INT, ts BIGINT, amount DOUBLE PRECISION, PRIMARY KEY (user_id, ts))")
        .await?;
    let t = run(&client, rows).await?;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!();
    println!(
        "{:<34} {:>14} {:>14} {:>9}",
        "", "PostgreSQL", "Tidebase", "ratio"
    );
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!(
        "{:<34} {:>12.0}/s {:>12.0}/s {:>8.2}x  (target >= 2x)",
        "COPY FROM STDIN rows",
        rate(p.load),
        rate(t.load),
        rate(t.load) / rate(p.load)
    );
    println!(
        "{:<34} {:>11.3} ms {:>11.3} ms {:>8.2}x  (target <= 1x)",
        "point lookup p50",
        ms(p.p50),
        ms(t.p50),
        ms(t.p50) / ms(p.p50)
    );
    println!(
        "{:<34} {:>11.3} ms {:>11.3} ms {:>8.2}x",
        "point lookup p99",
        ms(p.p99),
        ms(t.p99),
        ms(t.p99) / ms(p.p99)
    );
    println!(
        "{:<34} {:>11.1} ms {:>11.1} ms {:>8.2}x  (target <= 0.5x)",
        "GROUP BY user_id, sum(amount)",
        ms(p.agg),
        ms(t.agg),
        ms(t.agg) / ms(p.agg)
    );
    server.stop().await
}
