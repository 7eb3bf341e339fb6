//! Drives a real Tidebase server over the PostgreSQL wire protocol.
//!
//! [`TestServer`] starts the server in-process on a free port with a fresh
//! data directory; [`Wire`] is a sqllogictest database that talks to it
//! with tokio-postgres through either the simple or the extended protocol.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use sqllogictest::{DBOutput, DefaultColumnType};
use tokio::sync::oneshot;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// A server running in this process until dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The Kafka listener's address.
    pub kafka: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server on 127.0.0.1 with default settings.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `configure` adjusts its configuration.
    pub async fn start_with(
        configure: impl FnOnce(&mut tidebase_server::Config),
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let kafka_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let kafka = kafka_listener.local_addr()?;
        let mut config = tidebase_server::Config {
            listen: addr,
            data_dir: dir.path().join("data"),
            ..Default::default()
        };
        configure(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) =
                tidebase_server::run_with_kafka(listener, Some(kafka_listener), config, shutdown)
                    .await
            {
                panic!("server failed: {e}");
            }
        });
        Ok(Self {
            addr,
            kafka,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        })
    }

    /// A libpq-style connection string for this server.
    pub fn conn_str(&self) -> String {
        format!(
            "host={} port={} user=tidebase dbname=tidebase",
            self.addr.ip(),
            self.addr.port()
        )
    }

    /// Connects with tokio-postgres; the connection is driven in the background.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let (client, connection) = tokio_postgres::connect(&self.conn_str(), NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await?;
        }
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Which half of the protocol a [`Wire`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Simple,
    Extended,
}

/// An error as the slt files match it: `<SQLSTATE>: <message>`.
#[derive(Debug)]
pub struct WireError(String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

impl From<tokio_postgres::Error> for WireError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => WireError(format!("{}: {}", db.code().code(), db.message())),
            None => WireError(e.to_string()),
        }
    }
}

/// A sqllogictest connection over the wire.
pub struct Wire {
    client: Client,
    protocol: Protocol,
}

impl Wire {
    pub fn new(client: Client, protocol: Protocol) -> Self {
        Self { client, protocol }
    }

    async fn run_simple(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, WireError> {
        let messages = self.client.simple_query(sql).await?;
        let mut rows = Vec::new();
        let mut columns = 0;
        let mut returned_rows = false;
        let mut count = 0;
        for m in messages {
            match m {
                SimpleQueryMessage::RowDescription(desc) => {
                    returned_rows = true;
                    columns = desc.len();
                }
                SimpleQueryMessage::Row(row) => {
                    returned_rows = true;
                    columns = row.len();
                    rows.push(
                        (0..row.len())
                            .map(|i| text_cell(row.get(i)))
                            .collect::<Vec<_>>(),
                    );
                }
                SimpleQueryMessage::CommandComplete(n) => count = n,
                _ => {}
            }
        }
        if returned_rows {
            Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Any; columns],
                rows,
            })
        } else {
            Ok(DBOutput::StatementComplete(count))
        }
    }

    async fn run_extended(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, WireError> {
        let stmt = self.client.prepare(sql).await?;
        if stmt.columns().is_empty() {
            let n = self.client.execute(&stmt, &[]).await?;
            return Ok(DBOutput::StatementComplete(n));
        }
        let result = self.client.query(&stmt, &[]).await?;
        let mut rows = Vec::new();
        for row in &result {
            let mut cells = Vec::new();
            for (i, col) in row.columns().iter().enumerate() {
                cells.push(binary_cell(row, i, col.type_())?);
            }
            rows.push(cells);
        }
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; stmt.columns().len()],
            rows,
        })
    }
}

fn text_cell(v: Option<&str>) -> String {
    match v {
        None => "NULL".into(),
        Some("") => "(empty)".into(),
        Some(s) => s.to_string(),
    }
}

/// Formats a binary-format value as PostgreSQL's text output would.
fn binary_cell(row: &tokio_postgres::Row, i: usize, ty: &Type) -> Result<String, WireError> {
    fn get<'a, T: FromSql<'a>>(
        row: &'a tokio_postgres::Row,
        i: usize,
    ) -> Result<Option<T>, WireError> {
        row.try_get::<_, Option<T>>(i)
            .map_err(|e| WireError(format!("decoding column {i}: {e}")))
    }
    fn show<T: ToString>(v: Option<T>) -> String {
        match v {
            None => "NULL".into(),
            Some(v) => text_cell(Some(&v.to_string())),
        }
    }
    fn float(v: f64) -> String {
        if v.is_nan() {
            "NaN".into()
        } else if v.is_infinite() {
            if v > 0.0 {
                "Infinity".into()
            } else {
                "-Infinity".into()
            }
        } else {
            v.to_string()
        }
    }
    Ok(match *ty {
        Type::BOOL => show(get::<bool>(row, i)?.map(|b| if b { "t" } else { "f" })),
        Type::INT2 => show(get::<i16>(row, i)?),
        Type::INT4 => show(get::<i32>(row, i)?),
        Type::INT8 => show(get::<i64>(row, i)?),
        Type::FLOAT4 => show(get::<f32>(row, i)?.map(|v| float(f64::from(v)))),
        Type::FLOAT8 => show(get::<f64>(row, i)?.map(float)),
        Type::NUMERIC => show(get::<rust_decimal::Decimal>(row, i)?),
        Type::DATE => show(get::<chrono::NaiveDate>(row, i)?),
        Type::TIMESTAMP => show(get::<chrono::NaiveDateTime>(row, i)?),
        Type::TIMESTAMPTZ => show(
            get::<chrono::DateTime<chrono::Utc>>(row, i)?
                .map(|t| t.format("%Y-%m-%d %H:%M:%S%.f+00").to_string()),
        ),
        Type::BYTEA => show(get::<Vec<u8>>(row, i)?.map(|b| {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("\\x{hex}")
        })),
        Type::INT8_ARRAY => show(get::<Vec<Option<i64>>>(row, i)?.map(|v| pg_array(&v))),
        Type::INT4_ARRAY => show(get::<Vec<Option<i32>>>(row, i)?.map(|v| pg_array(&v))),
        Type::TEXT_ARRAY => show(get::<Vec<Option<String>>>(row, i)?.map(|v| pg_array(&v))),
        _ => show(get::<String>(row, i)?),
    })
}

fn pg_array<T: ToString>(v: &[Option<T>]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|x| x.as_ref().map_or("NULL".to_string(), T::to_string))
        .collect();
    format!("{{{}}}", items.join(","))
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Wire {
    type Error = WireError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, WireError> {
        match self.protocol {
            Protocol::Simple => self.run_simple(sql).await,
            Protocol::Extended => self.run_extended(sql).await,
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        match self.protocol {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
        }
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await
    }
}

/// Runs one .slt file against a fresh server with the given protocol.
pub async fn run_file(path: &Path, protocol: Protocol) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let conn_str = server.conn_str();
    let mut runner = sqllogictest::Runner::new(move || {
        let conn_str = conn_str.clone();
        async move {
            let (client, connection) = tokio_postgres::connect(&conn_str, NoTls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok::<_, WireError>(Wire::new(client, protocol))
        }
    });
    runner.with_hash_threshold(0);
    runner.add_label(match protocol {
        Protocol::Simple => "simple",
        Protocol::Extended => "extended",
    });
    let result = runner.run_file_async(path).await;
    server.stop().await?;
    result.map_err(|e| anyhow::anyhow!("{}", e.display(true)))
}
