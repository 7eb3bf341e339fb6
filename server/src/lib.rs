//! The Tidebase server: PostgreSQL's wire protocol in front of DataFusion
//! and the Tidebase catalog.
//!
//! [`run`] serves a bound listener until `shutdown` resolves, so tests start
//! a server in-process on port 0:
//!
//! ```no_run
//! # async fn example() -> Result<(), tidebase_server::ServerError> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let config = tidebase_server::Config::default();
//! tidebase_server::run(listener, config, std::future::pending::<()>()).await
//! # }
//! ```

/// The server allocates and frees small objects on many threads (a COPY
/// builds cells on one thread, the engine frees them on another); glibc's
/// malloc spent a third of a bulk load's time in its free lists. Every
/// binary that links the server (the `tidebase` binary, tests, benches)
/// uses mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod coalesce;
pub mod config;
mod copy;
mod ddl;
mod error;
mod kafka;
mod listener;
mod query;
mod rewrite;
mod session;
mod sqlstate;
mod startup;
mod statement;
mod text;
mod tls;

pub use config::Config;
pub use error::ServerError;
pub use listener::{run, run_with_kafka};
