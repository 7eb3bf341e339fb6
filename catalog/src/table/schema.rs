//! The `public` schema: region tables, loaded from the engine's manifest at
//! start and changed only through DDL.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::SchemaProvider;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};
use parking_lot::RwLock;
use tidebase_storage::Engine;

use super::def::TableDef;
use super::provider::{Clock, RegionTable};
use crate::topic::{TopicDef, Topics};
use crate::CatalogError;
use tidebase_storage::log::TopicConfig;

/// User tables, each a [`RegionTable`].
pub struct RegionSchema {
    engine: Arc<Engine>,
    topics: Arc<Topics>,
    clock: Arc<Clock>,
    tables: RwLock<BTreeMap<String, Arc<RegionTable>>>,
}

impl std::fmt::Debug for RegionSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionSchema")
            .field("tables", &self.tables.read().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RegionSchema {
    /// Loads every table the engine holds.
    pub fn open(engine: Arc<Engine>, topics: Arc<Topics>) -> Result<Self, CatalogError> {
        let clock = Arc::new(Clock::default());
        let mut tables = BTreeMap::new();
        for (_, bytes) in engine.table_schemas() {
            install(&engine, &clock, &mut tables, TableDef::decode(&bytes)?)?;
        }
        Ok(Self {
            engine,
            topics,
            clock,
            tables: RwLock::new(tables),
        })
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The topics, which share this schema's names.
    pub fn topics(&self) -> &Arc<Topics> {
        &self.topics
    }

    /// Names of region tables (not topics).
    pub fn region_table_names(&self) -> Vec<String> {
        self.tables.read().keys().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<Arc<RegionTable>> {
        self.tables.read().get(name).cloned()
    }

    /// Creates a table. `Ok(false)` when it exists and `if_not_exists`.
    pub fn create(&self, def: TableDef, if_not_exists: bool) -> Result<bool, CatalogError> {
        let mut tables = self.tables.write();
        if tables.contains_key(&def.name) || self.topics.get(&def.name).is_some() {
            return if if_not_exists {
                Ok(false)
            } else {
                Err(CatalogError::TableExists(def.name))
            };
        }
        self.engine
            .create_table_with_schema(&def.name, def.families.clone(), def.encode())?;
        install(&self.engine, &self.clock, &mut tables, def)?;
        Ok(true)
    }

    /// Creates a topic. Tables and topics share one name space, so the
    /// table names stay locked while it is made. `Ok(false)` when the name
    /// is taken and `if_not_exists`.
    pub fn create_topic(
        &self,
        def: TopicDef,
        config: TopicConfig,
        if_not_exists: bool,
    ) -> Result<bool, CatalogError> {
        let tables = self.tables.read();
        if tables.contains_key(&def.name) {
            return if if_not_exists {
                Ok(false)
            } else {
                Err(CatalogError::TableExists(def.name))
            };
        }
        self.topics.create(def, config, if_not_exists)
    }

    /// Replaces a table's definition (columns or options added; the
    /// families must already exist in the engine).
    pub fn redefine(&self, def: TableDef) -> Result<(), CatalogError> {
        let mut tables = self.tables.write();
        if !tables.contains_key(&def.name) {
            return Err(CatalogError::TableNotFound(def.name));
        }
        self.engine.set_table_schema(&def.name, def.encode())?;
        install(&self.engine, &self.clock, &mut tables, def)
    }

    /// Installs a definition whose families changed (added, or options
    /// changed): the engine takes the families and the definition in one
    /// manifest write.
    pub fn alter_families(&self, def: TableDef) -> Result<(), CatalogError> {
        let mut tables = self.tables.write();
        if !tables.contains_key(&def.name) {
            return Err(CatalogError::TableNotFound(def.name));
        }
        self.engine
            .alter_families(&def.name, def.families.clone(), def.encode())?;
        install(&self.engine, &self.clock, &mut tables, def)
    }

    pub fn truncate(&self, name: &str) -> Result<(), CatalogError> {
        let tables = self.tables.read();
        let t = tables
            .get(name)
            .ok_or_else(|| CatalogError::TableNotFound(name.into()))?;
        self.engine.truncate_table(name)?;
        self.engine.set_split_bytes(name, t.def.split_size)?;
        Ok(())
    }

    pub fn drop_table(&self, name: &str) -> Result<Option<Arc<RegionTable>>, CatalogError> {
        let mut tables = self.tables.write();
        let Some(t) = tables.remove(name) else {
            return Ok(None);
        };
        self.engine.drop_table(name)?;
        Ok(Some(t))
    }
}

/// Makes `def` the table the schema serves under its name, applying the
/// split size it sets to the engine's table.
fn install(
    engine: &Arc<Engine>,
    clock: &Arc<Clock>,
    tables: &mut BTreeMap<String, Arc<RegionTable>>,
    def: TableDef,
) -> Result<(), CatalogError> {
    engine.set_split_bytes(&def.name, def.split_size)?;
    tables.insert(
        def.name.clone(),
        Arc::new(RegionTable::new(def, engine.clone(), clock.clone())),
    );
    Ok(())
}

#[async_trait]
impl SchemaProvider for RegionSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.region_table_names();
        names.extend(self.topics.names());
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(t) = self.get(name) {
            return Ok(Some(t as Arc<dyn TableProvider>));
        }
        Ok(self
            .topics
            .get(name)
            .filter(|_| !name.starts_with(crate::topic::INTERNAL_PREFIX))
            .map(|t| t as Arc<dyn TableProvider>))
    }

    fn register_table(
        &self,
        name: String,
        _table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        Err(DataFusionError::NotImplemented(format!(
            "registering \"{name}\" as an external table in a region schema"
        )))
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(self.drop_table(name)?.map(|t| t as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.read().contains_key(name)
            || (!name.starts_with(crate::topic::INTERNAL_PREFIX) && self.topics.get(name).is_some())
    }
}
