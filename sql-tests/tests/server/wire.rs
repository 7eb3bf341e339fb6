//! The server over the wire with tokio-postgres and raw sockets: the
//! lecture's numbers, parameters, concurrency, limits, cancel, bad input,
//! authentication and shutdown.

use std::time::Duration;

use tidebase_sql_tests::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::NoTls;

const CUSTOMERS: &[(&str, &str, i32)] = &[
    ("Alice", "2016-05-01", 50),
    ("Alice", "2016-05-03", 45),
    ("Alice", "2016-05-04", 55),
    ("Bob", "2016-05-01", 25),
    ("Bob", "2016-05-04", 29),
    ("Bob", "2016-05-06", 27),
];

fn code(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_string())
}

#[tokio::test]
async fn lecture_example_with_parameters_and_binary_results() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let client = server.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE customers (name TEXT, date DATE, amount INT, PRIMARY KEY (name, date))",
        )
        .await?;
    let insert = client
        .prepare("INSERT INTO customers VALUES ($1, $2, $3)")
        .await?;
    assert_eq!(insert.params(), &[Type::TEXT, Type::DATE, Type::INT4]);
    for (name, date, amount) in CUSTOMERS {
        let date = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")?;
        assert_eq!(client.execute(&insert, &[name, &date, amount]).await?, 1);
    }
    let rows = client
        .query(
            "SELECT name, avg(amount) OVER w, sum(amount) OVER (PARTITION BY name ORDER BY date \
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW), \
             lag(amount, 1) OVER (PARTITION BY name ORDER BY date), \
             rank() OVER (PARTITION BY name ORDER BY date) \
             FROM customers WHERE name = $1 \
             WINDOW w AS (PARTITION BY name ORDER BY date ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) \
             ORDER BY date",
            &[&"Alice"],
        )
        .await?;
    // avg over an int column is numeric, as in PostgreSQL.
    let avg: Vec<String> = rows
        .iter()
        .map(|r| r.get::<_, rust_decimal::Decimal>(1).to_string())
        .collect();
    let sum: Vec<i64> = rows.iter().map(|r| r.get(2)).collect();
    let lag: Vec<Option<i32>> = rows.iter().map(|r| r.get(3)).collect();
    let rank: Vec<i64> = rows.iter().map(|r| r.get(4)).collect();
    assert_eq!(
        avg,
        [
            "47.5000000000000000",
            "50.0000000000000000",
            "50.0000000000000000"
        ]
    );
    assert_eq!(sum, vec![50, 95, 150]);
    assert_eq!(lag, vec![None, Some(50), Some(45)]);
    assert_eq!(rank, vec![1, 2, 3]);
    server.stop().await
}

#[tokio::test]
async fn errors_carry_sqlstates_and_the_connection_survives() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let client = server.connect().await?;
    let e = client.prepare("SELEC 1").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::SYNTAX_ERROR));
    let e = client
        .query("SELECT * FROM missing", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE));
    let e = client.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::DIVISION_BY_ZERO));
    // A parameter whose value does not fit its type.
    client.batch_execute("CREATE TABLE n (id INT)").await?;
    let e = client
        .query_typed(
            "INSERT INTO n VALUES ($1)",
            &[(&"not a number", Type::TEXT)],
        )
        .await
        .unwrap_err();
    let c = code(&e).unwrap_or_default();
    assert!(c.starts_with("22") || c.starts_with("42"), "got {e:?}");
    // After every failure above, the same connection still answers.
    let row = client.query_one("SELECT 41 + $1::BIGINT", &[&1i64]).await?;
    assert_eq!(row.get::<_, i64>(0), 42);
    server.stop().await
}

#[tokio::test]
async fn fifty_concurrent_connections() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut tasks = Vec::new();
    for i in 0..50i64 {
        let client = server.connect().await?;
        tasks.push(tokio::spawn(async move {
            let row = client.query_one("SELECT $1::BIGINT * 2", &[&i]).await?;
            Ok::<i64, tokio_postgres::Error>(row.get(0))
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await??, i64::try_from(i)? * 2);
    }
    server.stop().await
}

#[tokio::test]
async fn connections_over_the_limit_get_53300() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| c.max_connections = 2).await?;
    let a = server.connect().await?;
    let _b = server.connect().await?;
    let e = tokio_postgres::connect(&server.conn_str(), NoTls)
        .await
        .err()
        .expect("third connection refused");
    assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    drop(a);
    // The freed slot is reusable once the server sees the disconnect.
    let mut reconnected = None;
    for _ in 0..100 {
        match server.connect().await {
            Ok(c) => {
                reconnected = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let c = reconnected.expect("slot freed after disconnect");
    assert_eq!(c.query_one("SELECT 1::INT", &[]).await?.get::<_, i32>(0), 1);
    server.stop().await
}

#[tokio::test]
async fn cancel_request_stops_a_running_query() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let client = server.connect().await?;
    let token = client.cancel_token();
    let query = tokio::spawn(async move {
        client
            .simple_query(
                "SELECT count(*) FROM generate_series(1, 10000000000) AS t(x) WHERE x % 7 = 3",
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(NoTls).await?;
    let result = tokio::time::timeout(Duration::from_secs(30), query).await??;
    let e = result.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED));
    server.stop().await
}

#[tokio::test]
async fn garbage_and_abandoned_connections_do_not_hurt_the_server() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    // A startup packet of garbage.
    let mut raw = tokio::net::TcpStream::connect(server.addr).await?;
    raw.write_all(&[0, 0, 0, 12, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4])
        .await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await??;
    // Either closed outright or an ErrorResponse ('E') then close.
    assert!(n == 0 || buf[0] == b'E', "unexpected reply {:?}", &buf[..n]);
    // A length that claims a gigabyte.
    let mut raw = tokio::net::TcpStream::connect(server.addr).await?;
    raw.write_all(&[0x40, 0, 0, 0, 0, 3, 0, 0]).await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await;
    drop(raw);
    // A client that disconnects in the middle of a query.
    let (client, connection) = tokio_postgres::connect(&server.conn_str(), NoTls).await?;
    let conn_task = tokio::spawn(connection);
    let query = tokio::spawn(async move {
        client
            .simple_query("SELECT count(*) FROM generate_series(1, 10000000000)")
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn_task.abort();
    query.abort();
    // The server still serves.
    let client = server.connect().await?;
    assert_eq!(
        client
            .query_one("SELECT 7::INT", &[])
            .await?
            .get::<_, i32>(0),
        7
    );
    server.stop().await
}

#[tokio::test]
async fn scram_authentication() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.auth.method = tidebase_server::config::AuthMethod::ScramSha256;
        c.auth.users = vec![tidebase_server::config::UserConfig {
            name: "app".into(),
            password: "s3cret".into(),
        }];
    })
    .await?;
    let base = format!("host=127.0.0.1 port={} dbname=tidebase", server.addr.port());
    let (client, conn) =
        tokio_postgres::connect(&format!("{base} user=app password=s3cret"), NoTls).await?;
    tokio::spawn(conn);
    assert_eq!(
        client
            .query_one("SELECT 1::INT", &[])
            .await?
            .get::<_, i32>(0),
        1
    );
    let e = tokio_postgres::connect(&format!("{base} user=app password=wrong"), NoTls)
        .await
        .err()
        .expect("wrong password refused");
    assert_eq!(e.code(), Some(&SqlState::INVALID_PASSWORD));
    let e = tokio_postgres::connect(&format!("{base} user=nobody password=x"), NoTls)
        .await
        .err()
        .expect("unknown user refused");
    assert_eq!(e.code(), Some(&SqlState::INVALID_PASSWORD));
    server.stop().await
}

#[tokio::test]
async fn tls_that_cannot_be_loaded_stops_the_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("bad.pem"), "not a certificate")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let config = tidebase_server::Config {
        listen: listener.local_addr()?,
        data_dir: dir.path().join("data"),
        tls: Some(tidebase_server::config::TlsConfig {
            cert: dir.path().join("bad.pem"),
            key: dir.path().join("missing.key"),
        }),
        ..Default::default()
    };
    let err = tidebase_server::run(listener, config, std::future::pending::<()>())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    Ok(())
}

#[tokio::test]
async fn shutdown_with_idle_clients_returns() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let client = server.connect().await?;
    client.simple_query("SELECT 1").await?;
    tokio::time::timeout(Duration::from_secs(20), server.stop()).await??;
    assert!(client.simple_query("SELECT 1").await.is_err());
    Ok(())
}

#[tokio::test]
async fn startup_parameters_reach_the_session() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (client, conn) = tokio_postgres::connect(
        &format!("{} application_name=wiretest", server.conn_str()),
        NoTls,
    )
    .await?;
    tokio::spawn(conn);
    let rows = client.simple_query("SHOW application_name").await?;
    let value = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("wiretest"));
    server.stop().await
}

#[tokio::test]
async fn result_columns_carry_postgresql_names() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (client, conn) = tokio_postgres::connect(&server.conn_str(), NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute("CREATE TABLE names_t (id INT PRIMARY KEY, x INT); INSERT INTO names_t VALUES (1, 2), (2, 2)")
        .await?;
    let sql = "SELECT id, count(*) OVER (), sum(x) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING EXCLUDE CURRENT ROW), \
               x::bigint, '7'::int, id + 1, rank() OVER (ORDER BY x), sum(x) OVER () AS total FROM names_t ORDER BY id";
    let expected = [
        "id", "count", "sum", "x", "int4", "?column?", "rank", "total",
    ];
    // Extended protocol: RowDescription of the prepared statement.
    let stmt = client.prepare(sql).await?;
    let got: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
    assert_eq!(got, expected);
    let rows = client.query(&stmt, &[]).await?;
    assert_eq!(rows.len(), 2);
    let sum: Option<i64> = rows[0].get(2);
    assert_eq!(sum, Some(2));
    // Simple protocol, with duplicate names as PostgreSQL allows them.
    let messages = client
        .simple_query("SELECT count(*), count(x), max(id) FROM names_t")
        .await?;
    let columns = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::RowDescription(c) => Some(c.clone()),
            _ => None,
        })
        .expect("row description");
    let got: Vec<&str> = columns.iter().map(|c| c.name()).collect();
    assert_eq!(got, ["count", "count", "max"]);
    server.stop().await
}

/// An ordered result with bigint-cast ranks that leaves the window in
/// more than one batch (one per group) arrives in order: the cast must not
/// sit above the sort, where the planner would spread the sorted batches
/// over partitions again and interleave them.
#[tokio::test]
async fn ordered_results_of_several_batches_stay_ordered() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (client, conn) = tokio_postgres::connect(&server.conn_str(), NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE TABLE visits (name TEXT, day INT, amount INT, PRIMARY KEY (name, day)); \
             INSERT INTO visits VALUES ('Alice', 1, 50), ('Alice', 3, 45), ('Alice', 4, 55), \
             ('Bob', 1, 25), ('Bob', 4, 29), ('Bob', 6, 27), ('Carol', 2, 10), ('Carol', 5, 12)",
        )
        .await?;
    let sql = "SELECT name, day, rank() OVER (PARTITION BY name ORDER BY day) AS r \
               FROM visits ORDER BY name, day";
    for _ in 0..30 {
        let rows = client.query(sql, &[]).await?;
        let got: Vec<(String, i32, i64)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, sorted);
        assert_eq!(got.len(), 8);
    }
    server.stop().await
}

/// avg, stddev and variance over integers are numeric (OID 1700) and arrive
/// in binary at PostgreSQL's display scale: a driver reads the same decimal
/// PostgreSQL would send, including values past 28 digits.
#[tokio::test]
async fn integer_averages_are_numeric_in_binary() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let client = server.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE num_t (id INT PRIMARY KEY, x INT, b BIGINT); \
             INSERT INTO num_t VALUES (1, 1, 9223372036854775807), (2, 2, 0), (3, 2, 0)",
        )
        .await?;
    let stmt = client
        .prepare("SELECT avg(x), stddev(x), variance(b) FROM num_t")
        .await?;
    let types: Vec<_> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
    assert_eq!(types, [Type::NUMERIC, Type::NUMERIC, Type::NUMERIC]);
    // tokio-postgres asks for binary results; rust_decimal keeps the scale.
    let row = client.query_one(&stmt, &[]).await?;
    let avg: rust_decimal::Decimal = row.get(0);
    assert_eq!(avg.to_string(), "1.6666666666666667");
    let stddev: rust_decimal::Decimal = row.get(1);
    assert_eq!(stddev.to_string(), "0.57735026918962576451");
    // PostgreSQL: 28356863910078205282465635928077500416 (38 digits): past
    // rust_decimal, so read as text.
    let text = client
        .simple_query("SELECT variance(b) FROM num_t")
        .await?
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
    assert_eq!(
        text.as_deref(),
        Some("28356863910078205282465635928077500416")
    );
    server.stop().await
}

/// A frontend message: tag, length, body.
fn frontend(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Reads one backend message: its tag and body.
async fn backend(s: &mut tokio::net::TcpStream) -> anyhow::Result<(u8, Vec<u8>)> {
    let tag = s.read_u8().await?;
    let len = s.read_i32().await?;
    let mut body = vec![0; usize::try_from(len - 4)?];
    s.read_exact(&mut body).await?;
    Ok((tag, body))
}

/// Reads backend messages up to and including one tagged `last`; returns
/// their tags.
async fn backend_until(s: &mut tokio::net::TcpStream, last: u8) -> anyhow::Result<Vec<u8>> {
    let mut tags = Vec::new();
    loop {
        let (tag, body) = tokio::time::timeout(Duration::from_secs(10), backend(s)).await??;
        anyhow::ensure!(tag != b'E', "error: {}", String::from_utf8_lossy(&body));
        tags.push(tag);
        if tag == last {
            return Ok(tags);
        }
    }
}

#[tokio::test]
async fn extended_query_output_waits_for_sync_or_flush() -> anyhow::Result<()> {
    // As in PostgreSQL, ParseComplete, BindComplete, rows and
    // CommandComplete stay in the server's buffer until Sync or Flush: one
    // write per request cycle. asyncpg's Parse + Describe + Flush, and every
    // driver's ... + Sync, must still get their answers.
    let server = TestServer::start().await?;
    let mut s = tokio::net::TcpStream::connect(server.addr).await?;
    let mut startup = Vec::new();
    startup.extend_from_slice(&196608i32.to_be_bytes());
    startup.extend_from_slice(b"user\0tidebase\0database\0tidebase\0\0");
    let mut packet = (startup.len() as i32 + 4).to_be_bytes().to_vec();
    packet.extend_from_slice(&startup);
    s.write_all(&packet).await?;
    backend_until(&mut s, b'Z').await?;

    let parse = frontend(b'P', b"\0SELECT $1::int + 1\0\0\0");
    let mut bind_body = b"\0\0".to_vec();
    bind_body.extend_from_slice(&0i16.to_be_bytes()); // parameter formats: text
    bind_body.extend_from_slice(&1i16.to_be_bytes()); // one parameter
    bind_body.extend_from_slice(&2i32.to_be_bytes());
    bind_body.extend_from_slice(b"41");
    bind_body.extend_from_slice(&0i16.to_be_bytes()); // result formats: text
    let bind = frontend(b'B', &bind_body);
    let execute = frontend(b'E', b"\0\0\0\0\0");
    let mut batch = [parse, bind.clone(), execute.clone()].concat();
    s.write_all(&batch).await?;
    // Nothing is written before Sync or Flush.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), s.peek(&mut byte)).await;
    assert!(early.is_err(), "the server wrote before Sync or Flush");
    // Flush: everything so far, without ReadyForQuery.
    s.write_all(&frontend(b'H', b"")).await?;
    assert_eq!(
        backend_until(&mut s, b'C').await?,
        vec![b'1', b'2', b'D', b'C']
    );
    // Bind, Execute, Sync: all of it, ending with ReadyForQuery.
    batch = [bind, execute, frontend(b'S', b"")].concat();
    s.write_all(&batch).await?;
    assert_eq!(
        backend_until(&mut s, b'Z').await?,
        vec![b'2', b'D', b'C', b'Z']
    );
    drop(s);
    server.stop().await
}
