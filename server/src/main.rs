//! `tidebase`: the server binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tidebase_server::Config;

/// Tidebase: tables, topics and streaming windows behind the PostgreSQL wire protocol.
#[derive(Debug, Parser)]
#[command(name = "tidebase", version)]
struct Cli {
    /// Address for PostgreSQL clients (default 127.0.0.1:5433).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address for Kafka clients (default 127.0.0.1:9092; an empty value turns it off).
    #[arg(long)]
    kafka_listen: Option<String>,
    /// Data directory (default ./tidebase-data; created if missing).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TOML configuration file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or per module.
    #[arg(long)]
    log_level: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    match cli.kafka_listen.as_deref() {
        None if cli.config.is_none() => {
            config.kafka_listen = Some(SocketAddr::from(([127, 0, 0, 1], 9092)))
        }
        None => {}
        Some("") => config.kafka_listen = None,
        Some(a) => {
            config.kafka_listen = Some(
                a.parse()
                    .with_context(|| format!("--kafka-listen: bad address {a:?}"))?,
            )
        }
    }
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    if let Some(level) = cli.log_level {
        config.log_level = level;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&config.log_level)
                .with_context(|| format!("invalid log level {:?}", config.log_level))?,
        )
        .init();
    config.validate(config.listen)?;

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        tidebase_server::run(listener, config, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
