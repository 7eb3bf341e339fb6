//! Topics: Kafka-style partitioned, append-only logs (not the LSM).
//!
//! ```text
//! <data>/topics/<topic>/topic.conf        the topic's settings (atomic rewrite)
//! <data>/topics/<topic>/<partition>/      one directory per partition
//!                      .../<base>.log     record batches (see `batch`)
//!                      .../<base>.index   a sealed segment's offset and time index
//! ```
//!
//! A topic exists once its `topic.conf` is in place; a directory without one
//! (a crash during CREATE) is removed on open, as is a dropped topic's
//! renamed directory (`.<topic>.dropped`).

pub mod batch;
mod partition;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

pub use batch::{BatchError, BatchHeader};
pub use partition::{Appended, Fetched, FileRange, Located, Partition};

use crate::error::{io, Result, StorageError};
use crate::store_file::{hex, unhex};
use crate::wal::{sync_dir, SyncPolicy};

/// How a log store writes.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub sync: SyncPolicy,
    /// How often the `Batch` policy syncs.
    pub batch_sync_interval: Duration,
    /// A segment this big is sealed and a new one started (default 64 MiB).
    pub segment_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            sync: SyncPolicy::Always,
            batch_sync_interval: Duration::from_millis(5),
            segment_bytes: 64 << 20,
        }
    }
}

/// A topic's settings. `schema` is opaque here: the catalog keeps the
/// topic's columns in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    pub partitions: u32,
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<u64>,
    pub schema: Option<String>,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            partitions: 1,
            retention_ms: None,
            retention_bytes: None,
            schema: None,
        }
    }
}

const CONF_MAGIC: &str = "tidebase-topic 1";

impl TopicConfig {
    fn encode(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{CONF_MAGIC}");
        let _ = writeln!(s, "partitions {}", self.partitions);
        let _ = writeln!(s, "retention_ms {}", self.retention_ms.unwrap_or(-1));
        let _ = writeln!(
            s,
            "retention_bytes {}",
            self.retention_bytes.map_or(-1, |b| b as i64)
        );
        if let Some(schema) = &self.schema {
            let _ = writeln!(s, "schema {}", hex(schema.as_bytes()));
        }
        let crc = crc32fast::hash(s.as_bytes());
        let _ = writeln!(s, "crc {crc:08x}");
        s
    }

    fn decode(path: &Path, text: &str) -> Result<TopicConfig> {
        let bad = |reason: String| StorageError::Corrupted {
            file: path.to_path_buf(),
            offset: 0,
            reason,
        };
        let body_end = text
            .rfind("crc ")
            .ok_or_else(|| bad("no checksum line".into()))?;
        let (body, crc_line) = text.split_at(body_end);
        let stored = u32::from_str_radix(crc_line.trim_start_matches("crc ").trim(), 16)
            .map_err(|_| bad("unreadable checksum".into()))?;
        if stored != crc32fast::hash(body.as_bytes()) {
            return Err(bad("checksum mismatch".into()));
        }
        let mut lines = body.lines();
        if lines.next() != Some(CONF_MAGIC) {
            return Err(bad("not a topic configuration".into()));
        }
        let mut c = TopicConfig::default();
        for line in lines {
            let (k, v) = line
                .split_once(' ')
                .ok_or_else(|| bad(format!("bad line {line:?}")))?;
            let num = || {
                v.parse::<i64>()
                    .map_err(|_| bad(format!("bad value in {line:?}")))
            };
            match k {
                "partitions" => {
                    c.partitions =
                        u32::try_from(num()?).map_err(|_| bad("bad partitions".into()))?
                }
                "retention_ms" => c.retention_ms = Some(num()?).filter(|v| *v >= 0),
                "retention_bytes" => {
                    c.retention_bytes = Some(num()?).filter(|v| *v >= 0).map(|v| v as u64)
                }
                "schema" => {
                    let bytes = unhex(v).ok_or_else(|| bad("bad schema hex".into()))?;
                    c.schema = Some(
                        String::from_utf8(bytes).map_err(|_| bad("schema is not UTF-8".into()))?,
                    );
                }
                _ => return Err(bad(format!("unknown key {k:?}"))),
            }
        }
        Ok(c)
    }
}

/// One topic: its settings and partitions.
pub struct Topic {
    name: String,
    dir: PathBuf,
    config: RwLock<TopicConfig>,
    partitions: RwLock<Vec<Arc<Partition>>>,
}

impl Topic {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn config(&self) -> TopicConfig {
        self.config.read().clone()
    }
    pub fn partition_count(&self) -> u32 {
        self.partitions.read().len() as u32
    }
    pub fn partition(&self, p: u32) -> Option<Arc<Partition>> {
        self.partitions.read().get(p as usize).cloned()
    }
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().clone()
    }
}

type Listener = Arc<dyn Fn(&str, u32) + Send + Sync>;

/// Every topic of a data directory.
pub struct LogStore {
    dir: PathBuf,
    options: LogOptions,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    ddl: Mutex<()>,
    listener: RwLock<Option<Listener>>,
}

/// Kafka's rule for topic names.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl LogStore {
    /// Opens every topic under `dir`, creating `dir` if needed.
    pub fn open(dir: &Path, options: LogOptions) -> Result<Arc<LogStore>> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut topics = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if !path.is_dir() {
                continue;
            }
            let conf = path.join("topic.conf");
            if name.starts_with('.') || !conf.exists() {
                tracing::warn!(dir = %path.display(), "removing an unfinished or dropped topic");
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
                continue;
            }
            let text = std::fs::read_to_string(&conf).map_err(io(&conf))?;
            let config = TopicConfig::decode(&conf, &text)?;
            let mut parts = Vec::new();
            for p in 0..config.partitions {
                parts.push(Arc::new(Partition::open(
                    &path.join(p.to_string()),
                    options.sync,
                    options.segment_bytes,
                )?));
            }
            topics.insert(
                name.clone(),
                Arc::new(Topic {
                    name,
                    dir: path,
                    config: RwLock::new(config),
                    partitions: RwLock::new(parts),
                }),
            );
        }
        let store = Arc::new(LogStore {
            dir: dir.to_path_buf(),
            options,
            topics: RwLock::new(topics),
            ddl: Mutex::new(()),
            listener: RwLock::new(None),
        });
        if store.options.sync == SyncPolicy::Batch {
            let weak = Arc::downgrade(&store);
            let every = store.options.batch_sync_interval;
            std::thread::Builder::new()
                .name("log-sync".into())
                .spawn(move || {
                    while let Some(store) = weak.upgrade() {
                        if let Err(e) = store.sync_all() {
                            tracing::error!(error = %e, "log sync failed");
                        }
                        drop(store);
                        std::thread::sleep(every);
                    }
                })
                .map_err(io(dir))?;
        }
        Ok(store)
    }

    /// Called after every append with the topic and partition, so waiting
    /// readers (long-polling consumers) can wake up.
    pub fn set_append_listener(&self, f: impl Fn(&str, u32) + Send + Sync + 'static) {
        *self.listener.write() = Some(Arc::new(f));
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().values().cloned().collect()
    }

    /// Creates a topic; its directory and partitions exist before its
    /// configuration file is renamed into place.
    pub fn create_topic(&self, name: &str, config: TopicConfig) -> Result<Arc<Topic>> {
        if !valid_topic_name(name) {
            return Err(StorageError::InvalidTopic(name.to_owned()));
        }
        if config.partitions == 0 {
            return Err(StorageError::InvalidTopic(format!(
                "{name}: a topic needs at least one partition"
            )));
        }
        let _ddl = self.ddl.lock();
        if self.topics.read().contains_key(name) {
            return Err(StorageError::TopicExists(name.to_owned()));
        }
        let dir = self.dir.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut parts = Vec::new();
        for p in 0..config.partitions {
            parts.push(Arc::new(Partition::open(
                &dir.join(p.to_string()),
                self.options.sync,
                self.options.segment_bytes,
            )?));
        }
        sync_dir(&dir)?;
        write_conf(&dir, &config)?;
        sync_dir(&self.dir)?;
        let topic = Arc::new(Topic {
            name: name.to_owned(),
            dir,
            config: RwLock::new(config),
            partitions: RwLock::new(parts),
        });
        self.topics.write().insert(name.to_owned(), topic.clone());
        Ok(topic)
    }

    /// Drops a topic: its directory is renamed away (the commit point), then removed.
    pub fn drop_topic(&self, name: &str) -> Result<()> {
        let _ddl = self.ddl.lock();
        let topic = self
            .topics
            .write()
            .remove(name)
            .ok_or_else(|| StorageError::TopicNotFound(name.to_owned()))?;
        let gone = self.dir.join(format!(".{name}.dropped"));
        std::fs::rename(&topic.dir, &gone).map_err(io(&topic.dir))?;
        sync_dir(&self.dir)?;
        std::fs::remove_dir_all(&gone).map_err(io(&gone))?;
        Ok(())
    }

    /// Changes a topic's settings. Partitions only grow.
    pub fn alter_topic(
        &self,
        name: &str,
        change: impl FnOnce(&mut TopicConfig),
    ) -> Result<TopicConfig> {
        let _ddl = self.ddl.lock();
        let topic = self
            .topic(name)
            .ok_or_else(|| StorageError::TopicNotFound(name.to_owned()))?;
        let mut config = topic.config();
        let before = config.partitions;
        change(&mut config);
        if config.partitions < before {
            return Err(StorageError::InvalidTopic(format!(
                "{name}: partitions can only grow (from {before} to {})",
                config.partitions
            )));
        }
        let mut added = Vec::new();
        for p in before..config.partitions {
            added.push(Arc::new(Partition::open(
                &topic.dir.join(p.to_string()),
                self.options.sync,
                self.options.segment_bytes,
            )?));
        }
        sync_dir(&topic.dir)?;
        write_conf(&topic.dir, &config)?;
        topic.partitions.write().extend(added);
        *topic.config.write() = config.clone();
        Ok(config)
    }

    /// Appends record batches to one partition and tells the listener.
    pub fn append(&self, topic: &str, partition: u32, data: &[u8]) -> Result<Appended> {
        let t = self
            .topic(topic)
            .ok_or_else(|| StorageError::TopicNotFound(topic.to_owned()))?;
        let p = t
            .partition(partition)
            .ok_or(StorageError::PartitionNotFound {
                topic: topic.to_owned(),
                partition,
            })?;
        let appended = p.append(data)?;
        if let Some(listener) = self.listener.read().clone() {
            listener(topic, partition);
        }
        Ok(appended)
    }

    /// Applies every topic's retention; returns the segments deleted.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize> {
        let mut removed = 0;
        for t in self.topics() {
            let c = t.config();
            if c.retention_ms.is_none() && c.retention_bytes.is_none() {
                continue;
            }
            for p in t.partitions() {
                removed += p.enforce_retention(c.retention_ms, c.retention_bytes, now_ms)?;
            }
        }
        Ok(removed)
    }

    /// Syncs every partition's active segment.
    pub fn sync_all(&self) -> Result<()> {
        for t in self.topics() {
            for p in t.partitions() {
                p.sync()?;
            }
        }
        Ok(())
    }
}

fn write_conf(dir: &Path, config: &TopicConfig) -> Result<()> {
    let path = dir.join("topic.conf");
    let tmp = dir.join("topic.conf.tmp");
    std::fs::write(&tmp, config.encode()).map_err(io(&tmp))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(dir)
}
