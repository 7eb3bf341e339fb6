//! Accepting connections: the connection limit, one task and one tracing
//! span per connection, and graceful shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::{ConnectionManager, PgWireServerHandlers};
use tidebase_catalog::Catalog;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::Config;
use crate::error::ServerError;
use crate::query::QueryHandler;
use crate::session::{Session, Shutdown};
use crate::startup::{Startup, Users};

/// What every connection shares.
struct Shared {
    config: Config,
    catalog: Arc<Catalog>,
    users: Arc<Users>,
    sql: Arc<PostgresCompatibilityParser>,
    cancel: Arc<DefaultCancelHandler>,
    manager: Arc<ConnectionManager>,
    shutdown: Arc<Shutdown>,
    tls: Option<pgwire::tokio::TlsAcceptor>,
}

/// The protocol handlers of one connection.
struct Connection {
    startup: Arc<Startup>,
    query: Arc<QueryHandler>,
    cancel: Arc<DefaultCancelHandler>,
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        self.query.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.query.clone()
    }

    fn copy_handler(&self) -> Arc<impl pgwire::api::copy::CopyHandler> {
        self.query.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// Serves `listener` until `shutdown` resolves; then stops accepting, lets
/// running statements finish within the configured grace period, closes
/// every connection and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let kafka = match config.kafka_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            ServerError::InvalidConfig(format!("cannot listen for Kafka clients on {addr}: {e}"))
        })?),
        None => None,
    };
    run_with_kafka(listener, kafka, config, shutdown).await
}

/// [`run`] with the Kafka listener already bound (tests bind port 0).
pub async fn run_with_kafka(
    listener: TcpListener,
    kafka: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let local = listener.local_addr()?;
    config.validate(local)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let tls = config.tls.as_ref().map(crate::tls::load).transpose()?;
    let manager = Arc::new(ConnectionManager::new());
    let shared = Arc::new(Shared {
        users: Arc::new(Users::new(&config.auth.users)),
        catalog: {
            let dir = config.data_dir.clone();
            let options = config.storage.engine_options();
            Arc::new(
                tokio::task::spawn_blocking(move || {
                    Catalog::open(&dir, options).map(tidebase_window::install)
                })
                .await
                .map_err(|e| ServerError::InvalidConfig(format!("opening the catalog: {e}")))??,
            )
        },
        sql: Arc::new(PostgresCompatibilityParser::new()),
        cancel: Arc::new(DefaultCancelHandler::new(manager.clone())),
        manager,
        shutdown: Arc::new(Shutdown::default()),
        tls,
        config,
    });
    tracing::info!(%local, tls = shared.tls.is_some(), "listening");
    let stop_kafka = tokio_util::sync::CancellationToken::new();
    let kafka_task = match kafka {
        Some(l) => {
            let addr = l.local_addr()?;
            tracing::info!(%addr, "listening for Kafka clients");
            let k = crate::kafka::Kafka::new(shared.catalog.clone(), addr);
            Some(tokio::spawn(
                k.serve(l, stop_kafka.clone().cancelled_owned()),
            ))
        }
        None => None,
    };

    let slots = Arc::new(Semaphore::new(shared.config.max_connections));
    let mut connections = JoinSet::new();
    let next_id = AtomicU64::new(1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let span = tracing::info_span!("conn", id, %peer);
                let shared = shared.clone();
                let permit = slots.clone().try_acquire_owned();
                connections.spawn(async move {
                    match permit {
                        Ok(_permit) => serve(shared, socket, id).await,
                        Err(_) => refuse(shared, socket, id).await,
                    }
                }.instrument(span));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    tracing::info!("shutting down: no new connections");
    stop_kafka.cancel();
    if let Some(t) = kafka_task {
        let _ = t.await;
    }
    shared.shutdown.begin();
    let grace = Duration::from_millis(shared.config.shutdown_grace_ms);
    if tokio::time::timeout(grace, shared.shutdown.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "statements still running after the grace period; closing anyway"
        );
    }
    connections.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn serve(shared: Arc<Shared>, socket: TcpStream, id: u64) {
    tracing::debug!("connected");
    let session = Arc::new(Session::new(id, &shared.catalog));
    let handlers = Connection {
        startup: Arc::new(Startup::new(
            shared.config.auth.method,
            &shared.users,
            session.clone(),
            shared.manager.clone(),
        )),
        query: Arc::new(QueryHandler::new(
            session,
            shared.sql.clone(),
            shared.shutdown.clone(),
        )),
        cancel: shared.cancel.clone(),
    };
    match pgwire::tokio::process_socket(socket, shared.tls.clone(), handlers).await {
        Ok(()) => tracing::debug!("disconnected"),
        Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
    }
}

/// Answers the startup of a connection over the limit with 53300, as
/// PostgreSQL does, then closes it.
async fn refuse(shared: Arc<Shared>, socket: TcpStream, id: u64) {
    tracing::warn!(
        limit = shared.config.max_connections,
        "too many connections"
    );
    let session = Arc::new(Session::new(id, &shared.catalog));
    let handlers = Connection {
        startup: Arc::new(Startup::reject(
            "53300",
            "sorry, too many clients already",
            session.clone(),
        )),
        query: Arc::new(QueryHandler::new(
            session,
            shared.sql.clone(),
            shared.shutdown.clone(),
        )),
        cancel: shared.cancel.clone(),
    };
    let _ = pgwire::tokio::process_socket(socket, shared.tls.clone(), handlers).await;
}
