//! A Tidebase server for tests that need a separate process (to kill it):
//! `serve DATA_DIR` listens on a free port of 127.0.0.1, prints the port on
//! the first line of stdout, the port of its Kafka listener on the second,
//! and serves until killed.

use std::io::Write;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data_dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: serve DATA_DIR"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let kafka = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let kafka_port = kafka.local_addr()?.port();
    let config = tidebase_server::Config {
        listen: addr,
        data_dir: data_dir.into(),
        ..Default::default()
    };
    // One write, and no failure if the parent stopped reading after the
    // first line (a closed pipe must not end the server).
    let mut out = std::io::stdout();
    let _ = write!(out, "{}\n{kafka_port}\n", addr.port());
    let _ = out.flush();
    tidebase_server::run_with_kafka(listener, Some(kafka), config, std::future::pending::<()>())
        .await?;
    Ok(())
}
