//! SQL tables on regions: definitions, the row-key and value codecs, and
//! the DataFusion provider that reads and writes them.

pub mod codec;
pub mod ddl;
pub mod def;
pub mod provider;
pub mod schema;
pub mod system;

pub use def::{ColumnDef, SqlType, TableDef, DEFAULT_FAMILY};
pub use provider::{LookupTemplate, PointLookup, RegionTable};
pub use schema::RegionSchema;
