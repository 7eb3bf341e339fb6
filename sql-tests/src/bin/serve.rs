//! A Tidebase server for tests that need a separate process (to kill it):
//! `serve DATA_DIR` listens on a free port of 127.0.0.1, prints the port on
//! the first line of stdout, and serves until killed.

use std::io::Write;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data_dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: serve DATA_DIR"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = tidebase_server::Config {
        listen: addr,
        data_dir: data_dir.into(),
        ..Default::default()
    };
    println!("{}", addr.port());
    std::io::stdout().flush()?;
    tidebase_server::run(listener, config, std::future::pending::<()>()).await?;
    Ok(())
}
