//! The Tidebase catalog: what the bytes mean.
//!
//! The catalog owns the DataFusion catalog tree that every session shares
//! (`tidebase.public` for user tables, `pg_catalog` and `information_schema`
//! for clients that introspect), the PostgreSQL-compatible system functions,
//! and the per-session settings that `SET`/`SHOW`/`current_setting()` see.
//!
//! User tables live in the `public` schema, a [`RegionSchema`]: each table
//! is a [`RegionTable`] whose rows are cells in the region engine, and whose
//! definition is stored with it in the engine's manifest.
//!
//! ```
//! # tokio_test_block_on(async {
//! use tidebase_catalog::{Catalog, SessionSettings};
//! let dir = tempfile::tempdir().unwrap();
//! let catalog = Catalog::open(dir.path(), Default::default()).unwrap();
//! let ctx = catalog.new_session(SessionSettings::default());
//! let batches = ctx.sql("SELECT 1 + 1 AS two").await.unwrap().collect().await.unwrap();
//! assert_eq!(batches[0].num_rows(), 1);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Runtime::new().unwrap().block_on(f)
//! # }
//! ```

mod error;
mod functions;
mod information_schema;
mod json_build_object;
pub mod numeric;
mod pg_overlay;
pub use pg_overlay::{INDEX_DEFS, PG_CLASS_OID};
mod settings;
pub mod table;
pub mod topic;
mod view;

use std::sync::Arc;

use datafusion::catalog::SchemaProvider;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::execution::context::SessionContext;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::prelude::SessionConfig;
use std::path::Path;
use tidebase_storage::{Engine, EngineOptions};

pub use error::CatalogError;
pub use settings::{canonical_name, SessionSettings, SettingError};
pub use table::{RegionSchema, RegionTable};
/// The region engine the catalog runs on.
pub use tidebase_storage as storage;

/// Name of the database (DataFusion catalog) clients see.
pub const DATABASE_NAME: &str = "tidebase";
/// Name of the schema user tables live in.
pub const DEFAULT_SCHEMA: &str = "public";
/// Name of the schema of Tidebase's system views.
pub const SYSTEM_SCHEMA: &str = "tidebase";
/// The PostgreSQL version Tidebase speaks, as clients parse it.
pub const PG_VERSION: &str = "15.0";

/// `server_version` as sent in ParameterStatus.
pub fn server_version() -> String {
    format!("{PG_VERSION} (Tidebase {})", env!("CARGO_PKG_VERSION"))
}

/// What `SELECT version()` returns: PostgreSQL's shape, naming Tidebase.
pub fn version_string() -> String {
    format!(
        "PostgreSQL {PG_VERSION} (Tidebase {}) on {}-unknown-linux-gnu, compiled by rustc, 64-bit",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
}

/// The shared catalog. Cheap to clone sessions from; safe to share.
pub struct Catalog {
    template: SessionState,
    user_schema: Arc<RegionSchema>,
}

impl Catalog {
    /// Opens the region engine in `dir` and builds the catalog tree over it:
    /// `public` (the engine's tables), `pg_catalog` and `information_schema`.
    pub fn open(dir: &Path, options: EngineOptions) -> Result<Self, CatalogError> {
        let log = tidebase_storage::log::LogStore::open(
            &dir.join("topics"),
            tidebase_storage::log::LogOptions {
                sync: options.sync,
                batch_sync_interval: options.batch_sync_interval,
                ..Default::default()
            },
        )?;
        let engine = Arc::new(Engine::open(dir, options)?);
        let topics = topic::Topics::open(log)?;
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(DATABASE_NAME, DEFAULT_SCHEMA)
            .with_create_default_catalog_and_schema(false)
            // Tidebase's own `information_schema` (PostgreSQL's type names,
            // constraints) is a schema of the database; DataFusion's would
            // shadow it.
            .with_information_schema(false)
            .set_str("datafusion.sql_parser.dialect", "PostgreSQL")
            // Region scans come out in row-key order per partition: a window
            // or aggregate that repartitions them merges the sorted streams
            // instead of sorting again.
            .set_bool("datafusion.optimizer.prefer_existing_sort", true);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .build();
        let ctx = SessionContext::new_with_state(state);

        let database = Arc::new(MemoryCatalogProvider::new());
        let user_schema = Arc::new(RegionSchema::open(engine, topics.clone())?);
        database.register_schema(
            DEFAULT_SCHEMA,
            user_schema.clone() as Arc<dyn SchemaProvider>,
        )?;
        ctx.register_catalog(DATABASE_NAME, database.clone());

        datafusion_pg_catalog::setup_pg_catalog(
            &ctx,
            DATABASE_NAME,
            datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
        )
        .map_err(|e| CatalogError::DataFusion(*e))?;
        pg_overlay::install(&ctx, database.as_ref())?;
        information_schema::install(ctx.state().catalog_list().clone(), database.as_ref())?;
        let system = Arc::new(datafusion::catalog::MemorySchemaProvider::new());
        for (name, kind) in [
            ("regions", table::system::ViewKind::Regions),
            ("store_files", table::system::ViewKind::StoreFiles),
        ] {
            system.register_table(
                name.to_string(),
                Arc::new(view::View(table::system::SystemView {
                    kind,
                    tables: user_schema.clone(),
                })),
            )?;
        }
        system.register_table(
            "topics".to_string(),
            Arc::new(view::View(topic::TopicsView(topics.clone()))),
        )?;
        system.register_table(
            "consumer_groups".to_string(),
            Arc::new(view::View(topic::ConsumerGroupsView(topics.clone()))),
        )?;
        if let Some(rejects) = topics.get(topic::REJECTS_TOPIC) {
            system.register_table("rejects".to_string(), rejects)?;
        }
        database.register_schema(SYSTEM_SCHEMA, system)?;
        ctx.register_udtf("as_of", Arc::new(table::system::AsOf(user_schema.clone())));
        ctx.register_udtf("cells", Arc::new(table::system::Cells(user_schema.clone())));
        functions::register_static(&ctx);

        Ok(Self {
            template: ctx.state(),
            user_schema,
        })
    }

    /// Adds a physical optimizer rule to every session opened from now on
    /// (after DataFusion's own rules).
    pub fn with_physical_optimizer_rule(
        mut self,
        rule: Arc<dyn datafusion::physical_optimizer::PhysicalOptimizerRule + Send + Sync>,
    ) -> Self {
        self.template = SessionStateBuilder::new_from_existing(self.template)
            .with_physical_optimizer_rule(rule)
            .build();
        self
    }

    /// A new session over the shared catalog, with its own settings.
    pub fn new_session(&self, settings: SessionSettings) -> SessionContext {
        let ctx = SessionContext::new_with_state(self.template.clone());
        functions::register_session(&ctx, settings);
        ctx
    }

    /// The schema that holds user tables.
    pub fn topics(&self) -> &Arc<topic::Topics> {
        self.user_schema.topics()
    }

    pub fn user_schema(&self) -> &Arc<RegionSchema> {
        &self.user_schema
    }
}
