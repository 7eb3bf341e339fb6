//! One client connection's state: its DataFusion context and settings.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::prelude::SessionContext;
use tidebase_catalog::{Catalog, SessionSettings};
use tokio::sync::Notify;

use crate::sqlstate::QueryError;

/// A connection's session.
pub struct Session {
    pub id: u64,
    pub ctx: SessionContext,
    pub settings: SessionSettings,
    pub catalog: Arc<Catalog>,
}

impl Session {
    pub fn new(id: u64, catalog: &Arc<Catalog>) -> Self {
        let settings = SessionSettings::default();
        let ctx = catalog.new_session(settings.clone());
        tidebase_window::exclude::register(&ctx);
        Self {
            id,
            ctx,
            settings,
            catalog: catalog.clone(),
        }
    }

    /// Applies what the client sent in its StartupMessage.
    pub fn apply_startup_parameters<'a>(&self, params: impl Iterator<Item = (&'a str, &'a str)>) {
        for (name, value) in params {
            match name {
                "user" | "database" | "replication" | "options" => {}
                // Tidebase speaks UTF-8 only; drivers spell it many ways.
                "client_encoding" => self.settings.set(name, "UTF8"),
                _ => self.settings.set(name, value),
            }
        }
    }
}

/// Tracks running statements so shutdown can wait for them.
#[derive(Default)]
pub struct Shutdown {
    stopping: AtomicBool,
    running: AtomicUsize,
    idle: Notify,
}

/// Held while a statement runs.
pub struct RunningStatement(Arc<Shutdown>);

impl Drop for RunningStatement {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Shutdown {
    /// Registers a statement, or refuses it once shutdown has begun.
    pub fn enter(self: &Arc<Self>) -> Result<RunningStatement, QueryError> {
        self.running.fetch_add(1, Ordering::SeqCst);
        let guard = RunningStatement(self.clone());
        if self.stopping.load(Ordering::SeqCst) {
            return Err(QueryError::ShuttingDown);
        }
        Ok(guard)
    }

    pub fn begin(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Resolves once no statement is running.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}
