//! Region tables over the wire: COPY in and out, plans that use the row
//! key and the families, AS OF, automatic splits under load, and survival
//! of SIGKILL during a stream of acknowledged writes.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, TryStreamExt};
use tidebase_sql_tests::TestServer;
use tokio_postgres::NoTls;

fn code(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_string())
}

async fn copy_in(
    client: &tokio_postgres::Client,
    sql: &str,
    data: &str,
) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in::<_, Bytes>(sql).await?;
    futures::pin_mut!(sink);
    sink.send(Bytes::from(data.to_string())).await?;
    sink.finish().await
}

/// The physical and logical plans of `sql`, one line per plan line.
async fn explain(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<String> {
    let rows = client.simple_query(&format!("EXPLAIN {sql}")).await?;
    let mut text = String::new();
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            text.push_str(r.get(1).unwrap_or_default());
            text.push('\n');
        }
    }
    Ok(text)
}

async fn copy_out(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<String> {
    let stream = client.copy_out(sql).await?;
    let chunks: Vec<Bytes> = stream.try_collect().await?;
    Ok(chunks
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect())
}

#[tokio::test]
async fn copy_loads_all_or_nothing_and_copies_out() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let client = server.connect().await?;
    client
        .batch_execute("CREATE TABLE t (id INT PRIMARY KEY, d.name TEXT, d.score DOUBLE PRECISION, d.day DATE)")
        .await?;
    let n = copy_in(
        &client,
        "COPY t FROM STDIN",
        "1\tann\t1.5\t2024-01-01\n2\t\\N\t2\t2024-01-02\n3\ttab\\there\t-0.25\t\\N\n",
    )
    .await?;
    assert_eq!(n, 3);
    let n = copy_in(
        &client,
        "COPY t (id, name) FROM STDIN WITH (FORMAT csv, HEADER true)",
        "id,name\n4,\"a, \"\"quoted\"\"\nname\"\n5,\n",
    )
    .await?;
    assert_eq!(n, 2);
    let rows = client
        .query("SELECT id, name FROM t ORDER BY id", &[])
        .await?;
    let got: Vec<(i32, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            (1, Some("ann".into())),
            (2, None),
            (3, Some("tab\there".into())),
            (4, Some("a, \"quoted\"\nname".into())),
            (5, None),
        ]
    );

    // A bad value on line 3 aborts the COPY with 22P02 and the line number;
    // none of its rows are kept.
    let e = copy_in(
        &client,
        "COPY t FROM STDIN",
        "10\tx\t1\t2024-01-01\n11\ty\t2\t2024-01-01\n12\tz\tnot-a-number\t2024-01-01\n",
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e).as_deref(), Some("22P02"), "{e:?}");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("line 3"), "{msg}");
    let e = copy_in(&client, "COPY t FROM STDIN", "13\tx\n")
        .await
        .unwrap_err();
    assert_eq!(code(&e).as_deref(), Some("22P04"));
    let e = copy_in(&client, "COPY t FROM STDIN", "\\N\tx\t1\t2024-01-01\n")
        .await
        .unwrap_err();
    assert_eq!(code(&e).as_deref(), Some("23502"));
    let count: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await?
        .get(0);
    assert_eq!(count, 5);

    // Out, as text and as CSV with a header.
    let text = copy_out(&client, "COPY t TO STDOUT").await?;
    assert_eq!(
        text.lines().take(3).collect::<Vec<_>>(),
        vec![
            "1\tann\t1.5\t2024-01-01",
            "2\t\\N\t2\t2024-01-02",
            "3\ttab\\there\t-0.25\t\\N"
        ]
    );
    let csv = copy_out(&client, "COPY (SELECT id, name FROM t WHERE id >= 4 ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER true)").await?;
    assert_eq!(csv, "id,name\n4,\"a, \"\"quoted\"\"\nname\"\n5,\n");
    // A query's columns are named as in a SELECT, and its SQL is Tidebase's.
    let csv = copy_out(&client, "COPY (SELECT id, count(*) OVER (), sum(id) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING EXCLUDE CURRENT ROW) FROM t WHERE id <= 2 ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER true)").await?;
    assert_eq!(csv, "id,count,sum\n1,2,2\n2,2,1\n");
    server.stop().await
}

#[tokio::test]
async fn plans_use_the_row_key_and_only_the_needed_families() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let client = server.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE emp (id INT PRIMARY KEY, personal.name TEXT, professional.salary BIGINT); \
             INSERT INTO emp VALUES (1, 'a', 10), (2, 'b', 20); \
             CREATE TABLE tx (user_id INT, ts BIGINT, amount DOUBLE PRECISION, PRIMARY KEY (user_id, ts)); \
             INSERT INTO tx VALUES (1, 1, 1.0), (1, 2, 2.0), (2, 1, 3.0)",
        )
        .await?;
    let plan = |sql: &'static str| explain(&client, sql);
    let p = plan("SELECT name FROM emp WHERE id = 2").await?;
    assert!(p.contains("families=[0, personal]"), "{p}");
    assert!(p.contains("point_gets=1, range_scans=0"), "{p}");
    assert!(!p.contains("professional"), "{p}");
    let p = plan("SELECT salary FROM emp WHERE id > 1").await?;
    assert!(p.contains("families=[0, professional]"), "{p}");
    assert!(p.contains("point_gets=0, range_scans=1"), "{p}");
    let p = plan("SELECT * FROM emp LIMIT 1").await?;
    assert!(p.contains("limit=1"), "{p}");
    // Equalities on every column of a composite key make one get; on a
    // prefix, one range.
    let p = plan("SELECT amount FROM tx WHERE user_id = 1 AND ts = 2").await?;
    assert!(p.contains("point_gets=1, range_scans=0"), "{p}");
    let p = plan("SELECT amount FROM tx WHERE ts = 2 AND user_id = 1 AND amount > 0").await?;
    assert!(p.contains("point_gets=1, range_scans=0"), "{p}");
    let p = plan("SELECT amount FROM tx WHERE user_id = 1").await?;
    assert!(p.contains("point_gets=0, range_scans=1"), "{p}");
    let got: Vec<f64> = client
        .query(
            "SELECT amount FROM tx WHERE user_id = $1 AND ts = $2",
            &[&1i32, &2i64],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, vec![2.0]);
    let none = client
        .query("SELECT amount FROM tx WHERE user_id = 1 AND ts = 9", &[])
        .await?;
    assert!(none.is_empty());
    // Whole-key lookups (answered by one get, without planning) agree with
    // SQL: column order, literals of other types, deletes, single keys.
    let row = client
        .query_one(
            "SELECT ts, amount, user_id FROM tx WHERE ts = 2 AND user_id = 1",
            &[],
        )
        .await?;
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, f64>(1),
            row.get::<_, i32>(2)
        ),
        (2, 2.0, 1)
    );
    let row = client
        .query_one("SELECT amount FROM tx WHERE user_id = '2' AND ts = 1", &[])
        .await?;
    assert_eq!(row.get::<_, f64>(0), 3.0);
    assert!(client
        .query("SELECT amount FROM tx WHERE user_id = 1.5 AND ts = 2", &[])
        .await?
        .is_empty());
    // Prepared: parameters and literals mixed, in any order.
    let row = client
        .query_one(
            "SELECT user_id, amount FROM tx WHERE ts = 2 AND user_id = $1",
            &[&1i32],
        )
        .await?;
    assert_eq!((row.get::<_, i32>(0), row.get::<_, f64>(1)), (1, 2.0));
    // A NULL key parameter matches no row (the planner answers it).
    assert!(client
        .query(
            "SELECT amount FROM tx WHERE user_id = $1 AND ts = $2",
            &[&None::<i32>, &2i64]
        )
        .await?
        .is_empty());
    let name: String = client
        .query_one("SELECT name FROM emp WHERE id = $1", &[&2i32])
        .await?
        .get(0);
    assert_eq!(name, "b");
    client
        .execute("DELETE FROM tx WHERE user_id = 2 AND ts = 1", &[])
        .await?;
    assert!(client
        .query(
            "SELECT amount FROM tx WHERE user_id = $1 AND ts = $2",
            &[&2i32, &1i64]
        )
        .await?
        .is_empty());
    client
        .execute("INSERT INTO tx VALUES (2, 1, 3.0)", &[])
        .await?;
    // The scan is ordered by (user_id, ts): the window needs no sort.
    let p =
        plan("SELECT user_id, sum(amount) OVER (PARTITION BY user_id ORDER BY ts) FROM tx").await?;
    assert!(!p.contains("SortExec"), "{p}");
    let rows = client
        .query("SELECT user_id, ts, sum(amount) OVER (PARTITION BY user_id ORDER BY ts) FROM tx ORDER BY user_id, ts", &[])
        .await?;
    let sums: Vec<f64> = rows.iter().map(|r| r.get(2)).collect();
    assert_eq!(sums, vec![1.0, 3.0, 3.0]);
    server.stop().await
}

#[tokio::test]
async fn as_of_reads_the_table_as_it_was() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let client = server.connect().await?;
    client
        .batch_execute("CREATE TABLE p (id INT PRIMARY KEY, price BIGINT); INSERT INTO p VALUES (1, 100), (2, 200)")
        .await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let at: String = client
        .query_one("SELECT CAST(now() AS TEXT)", &[])
        .await?
        .get(0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .batch_execute("UPDATE p SET price = 150 WHERE id = 1; DELETE FROM p WHERE id = 2; INSERT INTO p VALUES (3, 300)")
        .await?;
    let now: Vec<(i32, i64)> = client
        .query("SELECT id, price FROM p", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(now, vec![(1, 150), (3, 300)]);
    let at = at.trim_end_matches('Z').replace('T', " ");
    let then: Vec<(i32, i64)> = client
        .query(
            &format!("SELECT id, price FROM p AS OF TIMESTAMP '{at}'"),
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(then, vec![(1, 100), (2, 200)]);
    server.stop().await
}

#[tokio::test]
async fn regions_split_under_load_and_answers_stay_the_same() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.storage.sync = tidebase_server::config::SyncMode::None;
        c.storage.memstore_flush_bytes = 16 * 1024;
    })
    .await?;
    let client = server.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE s (id INT PRIMARY KEY, v BIGINT, pad TEXT) WITH (SPLIT_SIZE = '24KB')",
        )
        .await?;
    let pad = "x".repeat(40);
    let mut expected_sum = 0i64;
    let mut rows = 0i64;
    for batch in 0..20 {
        let values: Vec<String> = (0..200)
            .map(|i| {
                // Interleave keys so every region keeps receiving writes.
                let id = i * 20 + batch;
                format!("({id}, {}, '{pad}')", id * 3)
            })
            .collect();
        client
            .batch_execute(&format!("INSERT INTO s VALUES {}", values.join(",")))
            .await?;
        for i in 0..200 {
            expected_sum += (i * 20 + batch) * 3;
        }
        rows += 200;
        let r = client
            .query_one("SELECT count(*), sum(v), min(id), max(id) FROM s", &[])
            .await?;
        assert_eq!(r.get::<_, i64>(0), rows);
        assert_eq!(r.get::<_, i64>(1), expected_sum);
        let point: i64 = client
            .query_one("SELECT v FROM s WHERE id = 21", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(-1);
        if batch >= 1 {
            assert_eq!(point, 63);
        }
    }
    // Splits run in the background; wait for them to settle.
    let deadline = Instant::now() + Duration::from_secs(30);
    let regions = loop {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM tidebase.regions WHERE table_name = 's'",
                &[],
            )
            .await?
            .get(0);
        if n >= 3 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(regions >= 3, "only {regions} regions");
    let r = client
        .query_one("SELECT count(*), sum(v) FROM s", &[])
        .await?;
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, i64>(1)),
        (rows, expected_sum)
    );
    let ranged: i64 = client
        .query_one("SELECT count(*) FROM s WHERE id >= 1000 AND id < 2000", &[])
        .await?
        .get(0);
    assert_eq!(ranged, 1000);
    server.stop().await
}

/// A server in a child process.
struct Process {
    child: Child,
    port: u16,
}

impl Process {
    fn start(dir: &std::path::Path) -> anyhow::Result<Process> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_serve"))
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port = line.trim().parse()?;
        Ok(Process { child, port })
    }

    async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={} user=t dbname=tidebase", self.port),
            NoTls,
        )
        .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn acknowledged_inserts_and_copies_survive_sigkill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut acknowledged: BTreeSet<i64> = BTreeSet::new();
    let mut next_id = 0i64;
    for round in 0..4u64 {
        let server = Process::start(dir.path())?;
        let client = server.connect().await?;
        if round == 0 {
            client
                .batch_execute("CREATE TABLE w (id BIGINT PRIMARY KEY, v TEXT)")
                .await?;
        }
        // Every acknowledged row from earlier rounds is there.
        let present: BTreeSet<i64> = client
            .query("SELECT id FROM w", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            acknowledged.is_subset(&present),
            "round {round}: lost {:?}",
            acknowledged
                .difference(&present)
                .take(5)
                .collect::<Vec<_>>()
        );
        // Whatever else is there came from a statement cut off by the kill,
        // and came whole: a COPY's 50 rows or an INSERT's 3.
        acknowledged = present;

        // Writers run while the server is killed at a moment that varies.
        let copier = server.connect().await?;
        let inserter = client;
        let start = next_id;
        next_id += 1_000_000;
        let copies = tokio::spawn(async move {
            let mut done = Vec::new();
            let mut id = start;
            loop {
                let data: String = (id..id + 50).map(|i| format!("{i}\tcopy\n")).collect();
                match copy_in(&copier, "COPY w FROM STDIN", &data).await {
                    Ok(50) => done.extend(id..id + 50),
                    _ => break,
                }
                id += 50;
            }
            done
        });
        let inserts = tokio::spawn(async move {
            let mut done = Vec::new();
            let mut id = start + 500_000;
            loop {
                let sql = format!(
                    "INSERT INTO w VALUES ({id}, 'a'), ({}, 'b'), ({}, 'c')",
                    id + 1,
                    id + 2
                );
                match inserter.execute(sql.as_str(), &[]).await {
                    Ok(3) => done.extend(id..id + 3),
                    _ => break,
                }
                id += 3;
            }
            done
        });
        tokio::time::sleep(Duration::from_millis(300 + round * 170)).await;
        server.kill();
        let copied = copies.await?;
        let inserted = inserts.await?;
        assert!(
            !copied.is_empty() && !inserted.is_empty(),
            "round {round}: no writes acknowledged"
        );
        acknowledged.extend(copied);
        acknowledged.extend(inserted);
    }
    let server = Process::start(dir.path())?;
    let client = server.connect().await?;
    let present: BTreeSet<i64> = client
        .query("SELECT id FROM w", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(acknowledged.is_subset(&present));
    // Statements are whole: every COPY block of 50 and INSERT of 3 is
    // complete or absent.
    for id in &present {
        let (base, size) = if id % 1_000_000 < 500_000 {
            (id - (id % 1_000_000) % 50, 50)
        } else {
            let off = id % 1_000_000 - 500_000;
            (id - off % 3, 3)
        };
        for j in base..base + size {
            assert!(
                present.contains(&j),
                "{id} present but {j} of the same statement is not"
            );
        }
    }
    server.kill();
    Ok(())
}

#[tokio::test]
async fn aggregates_grouped_by_a_key_prefix_run_per_region_without_an_exchange(
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let client = server.connect().await?;
    // 50 users x 100 timestamps, in three regions cut inside users 20 and 35.
    client
        .batch_execute(
            "CREATE TABLE grp (user_id INT, ts BIGINT, amount BIGINT, PRIMARY KEY (user_id, ts)); \
             INSERT INTO grp SELECT v % 50, v / 50, v FROM generate_series(0, 4999) AS g(v); \
             ALTER TABLE grp SPLIT AT (20, 50); ALTER TABLE grp SPLIT AT (35, 7); ALTER TABLE grp FLUSH",
        )
        .await?;
    let amount = |u: i64, t: i64| u + 50 * t;
    for (sql, filtered) in [
        ("SELECT user_id, sum(amount), count(*) FROM grp GROUP BY user_id ORDER BY user_id", false),
        (
            "SELECT user_id, sum(amount), count(*) FROM grp WHERE amount % 3 = 0 GROUP BY user_id ORDER BY user_id",
            true,
        ),
    ] {
        let plan = explain(&client, sql).await?;
        assert!(
            plan.contains("mode=SinglePartitioned") && !plan.contains("RepartitionExec"),
            "{plan}"
        );
        let got: Vec<(i32, i64, i64)> = client
            .query(sql, &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let want: Vec<(i32, i64, i64)> = (0..50i64)
            .map(|u| {
                let values: Vec<i64> = (0..100)
                    .map(|t| amount(u, t))
                    .filter(|a| !filtered || a % 3 == 0)
                    .collect();
                (u as i32, values.iter().sum(), values.len() as i64)
            })
            .collect();
        assert_eq!(got, want, "{sql}");
    }
    // Groups that are not a key prefix still go through an exchange.
    let sql = "SELECT ts, sum(amount) FROM grp GROUP BY ts ORDER BY ts";
    assert!(explain(&client, sql).await?.contains("RepartitionExec"));
    let got: Vec<(i64, i64)> = client
        .query(sql, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: Vec<(i64, i64)> = (0..100i64)
        .map(|t| (t, (0..50).map(|u| amount(u, t)).sum()))
        .collect();
    assert_eq!(got, want);
    Ok(())
}

#[tokio::test]
async fn a_single_region_is_scanned_in_parallel_halves() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let client = server.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE halves (user_id INT, ts BIGINT, amount BIGINT, PRIMARY KEY (user_id, ts)); \
             INSERT INTO halves SELECT v % 50, v / 50, v FROM generate_series(0, 4999) AS g(v); \
             ALTER TABLE halves FLUSH",
        )
        .await?;
    let plan = explain(
        &client,
        "SELECT user_id, sum(amount) FROM halves GROUP BY user_id",
    )
    .await?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= 2 {
        assert!(
            plan.contains("regions=1") && plan.contains("partitions=2"),
            "{plan}"
        );
    }
    // The halves together give the whole table, in key order where asked.
    let row = client
        .query_one(
            "SELECT count(*), sum(amount), count(DISTINCT user_id) FROM halves",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, i64>(0), 5000);
    assert_eq!(row.get::<_, i64>(1), (0..5000i64).sum::<i64>());
    assert_eq!(row.get::<_, i64>(2), 50);
    let keys: Vec<(i32, i64)> = client
        .query("SELECT user_id, ts FROM halves ORDER BY user_id, ts", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut expected: Vec<(i32, i64)> = (0..5000i64).map(|v| ((v % 50) as i32, v / 50)).collect();
    expected.sort();
    assert_eq!(keys, expected);
    let running: i64 = client
        .query_one(
            "SELECT sum(c) FROM (SELECT sum(amount) OVER (PARTITION BY user_id ORDER BY ts ROWS UNBOUNDED PRECEDING) AS c FROM halves) s",
            &[],
        )
        .await?
        .get(0);
    // Each user's running sums: amount = user + 50 * ts for ts in 0..100.
    let want: i64 = (0..50i64)
        .map(|u| {
            (0..100i64)
                .map(|t| (0..=t).map(|k| u + 50 * k).sum::<i64>())
                .sum::<i64>()
        })
        .sum();
    assert_eq!(running, want);
    // Both halves come out in key order: the window merges them, no sort.
    let plan = explain(
        &client,
        "SELECT sum(amount) OVER (PARTITION BY user_id ORDER BY ts) FROM halves",
    )
    .await?;
    assert!(!plan.contains("SortExec"), "{plan}");
    server.stop().await
}
