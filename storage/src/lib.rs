//! Tidebase storage: the bytes on disk.
//!
//! This crate will hold the region engine (write-ahead log, memstores,
//! Parquet store files with row-key bloom filters, manifests, compaction and
//! region splits) and the topic logs. It knows Arrow and Parquet but not SQL,
//! DataFusion or the wire protocol. Nothing is implemented here yet; tables
//! are in-memory DataFusion tables registered by `tidebase-catalog`.
