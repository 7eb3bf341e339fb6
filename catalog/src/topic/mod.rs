//! Topics as SQL sees them: definitions (columns and key), the registry
//! that creates and drops them, the table provider that reads and appends,
//! rejected messages, and consumer groups' committed offsets.
//!
//! A topic with columns carries a JSON object per message (see [`json`]); a
//! topic without columns carries raw key and value bytes. Both read as a
//! table with the columns plus `_partition`, `_offset`, `_timestamp` and
//! `_key`.

pub mod ddl;
pub mod json;
mod provider;
mod views;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use parking_lot::RwLock;
use tidebase_storage::log::{LogStore, TopicConfig};

pub use provider::{TopicStage, TopicTable};
pub use views::{ConsumerGroupsView, TopicsView};

use crate::table::codec::{arrow_type, hex, unhex};
use crate::table::SqlType;
use crate::CatalogError;

/// Topics whose names start with this are the system's own.
pub const INTERNAL_PREFIX: &str = "__";
/// Messages that did not fit their topic's columns.
pub const REJECTS_TOPIC: &str = "__rejects";
/// Consumer groups' committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The columns every topic reads with, after its own.
pub const META_COLUMNS: [&str; 4] = ["_partition", "_offset", "_timestamp", "_key"];

/// A topic as SQL sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDef {
    pub name: String,
    /// Empty: a raw topic, whose messages are key and value bytes.
    pub columns: Vec<(String, SqlType)>,
    /// The column whose text is the message key (Kafka's partitioner hashes it).
    pub key: Option<String>,
}

impl TopicDef {
    pub fn is_raw(&self) -> bool {
        self.columns.is_empty()
    }

    /// Declared columns (or `_value` for a raw topic), then the metadata columns.
    pub fn schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = if self.is_raw() {
            vec![Field::new("_value", DataType::Binary, true)]
        } else {
            self.columns
                .iter()
                .map(|(n, t)| Field::new(n, arrow_type(*t), true))
                .collect()
        };
        fields.push(Field::new("_partition", DataType::Int32, true));
        fields.push(Field::new("_offset", DataType::Int64, true));
        fields.push(Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ));
        fields.push(Field::new("_key", DataType::Binary, true));
        Arc::new(Schema::new(fields))
    }

    /// The one text encoding of a definition, kept in the log's topic.conf.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        for (n, t) in &self.columns {
            s.push_str(&format!(
                "column {} {}\n",
                t.name().replace(' ', "_"),
                hex_name(n)
            ));
        }
        if let Some(k) = &self.key {
            s.push_str(&format!("key {}\n", hex_name(k)));
        }
        s
    }

    pub fn decode(name: &str, text: &str) -> Result<TopicDef, CatalogError> {
        let bad = || CatalogError::Corrupt(format!("topic {name}: bad definition {text:?}"));
        let mut def = TopicDef {
            name: name.to_owned(),
            columns: Vec::new(),
            key: None,
        };
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["column", ty, n] => def.columns.push((
                    unhex_name(n).ok_or_else(bad)?,
                    SqlType::parse(&ty.replace('_', " ")).ok_or_else(bad)?,
                )),
                ["key", k] => def.key = Some(unhex_name(k).ok_or_else(bad)?),
                _ => return Err(bad()),
            }
        }
        Ok(def)
    }
}

fn hex_name(s: &str) -> String {
    hex(s.as_bytes())
}

fn unhex_name(s: &str) -> Option<String> {
    String::from_utf8(unhex(s)?).ok()
}

/// Kafka's murmur2 hash (the Java client's `Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a key.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions.max(1)
}

/// A message to append.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp_ms: i64,
}

/// Encodes messages as one record batch (magic 2, uncompressed).
pub fn encode_batch(messages: &[Message]) -> Vec<u8> {
    let records: Vec<Record> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch where offset - sequence changes;
            // the first record's -1 is "no sequence".
            sequence: i as i32 - 1,
            timestamp: m.timestamp_ms,
            key: m.key.as_deref().map(Bytes::copy_from_slice),
            value: m.value.as_deref().map(Bytes::copy_from_slice),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    // Encoding into memory with no compression cannot fail.
    let _ = RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    );
    buf.to_vec()
}

/// Decodes concatenated record batches (any compression) into records,
/// skipping control records.
pub fn decode_batches(data: &[u8]) -> Result<Vec<Record>, CatalogError> {
    let mut buf = Bytes::copy_from_slice(data);
    let sets = RecordBatchDecoder::decode_all(&mut buf)
        .map_err(|e| CatalogError::Corrupt(format!("record batch: {e}")))?;
    Ok(sets
        .into_iter()
        .flat_map(|s| s.records)
        .filter(|r| !r.control)
        .collect())
}

/// (group, topic, partition).
type GroupPartition = (String, String, i32);

/// Every user topic and the system topics, over one log store.
pub struct Topics {
    log: Arc<LogStore>,
    tables: RwLock<BTreeMap<String, Arc<TopicTable>>>,
    round_robin: AtomicU64,
    offsets: RwLock<BTreeMap<GroupPartition, (i64, String)>>,
    rejected: RwLock<BTreeMap<String, u64>>,
}

impl std::fmt::Debug for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics")
            .field("topics", &self.tables.read().keys().collect::<Vec<_>>())
            .finish()
    }
}

fn system_def(name: &str) -> TopicDef {
    let cols: &[(&str, SqlType)] = if name == REJECTS_TOPIC {
        &[
            ("topic", SqlType::Text),
            ("reason", SqlType::Text),
            ("key", SqlType::Bytea),
            ("value", SqlType::Bytea),
        ]
    } else {
        &[
            ("group_id", SqlType::Text),
            ("topic", SqlType::Text),
            ("partition", SqlType::Int4),
            ("committed_offset", SqlType::Int8),
            ("metadata", SqlType::Text),
        ]
    };
    TopicDef {
        name: name.to_owned(),
        columns: cols.iter().map(|(n, t)| (n.to_string(), *t)).collect(),
        key: None,
    }
}

impl Topics {
    /// Loads every topic of the log store, creating the system topics.
    pub fn open(log: Arc<LogStore>) -> Result<Arc<Topics>, CatalogError> {
        for name in [REJECTS_TOPIC, OFFSETS_TOPIC] {
            if log.topic(name).is_none() {
                log.create_topic(
                    name,
                    TopicConfig {
                        schema: Some(system_def(name).encode()),
                        ..TopicConfig::default()
                    },
                )?;
            }
        }
        let topics = Arc::new(Topics {
            log: log.clone(),
            tables: RwLock::new(BTreeMap::new()),
            round_robin: AtomicU64::new(0),
            offsets: RwLock::new(BTreeMap::new()),
            rejected: RwLock::new(BTreeMap::new()),
        });
        for t in log.topics() {
            let def = TopicDef::decode(t.name(), t.config().schema.as_deref().unwrap_or(""))?;
            let table = Arc::new(TopicTable::new(def, topics.clone()));
            topics.tables.write().insert(t.name().to_owned(), table);
        }
        topics.load_offsets()?;
        topics.count_rejects()?;
        Ok(topics)
    }

    pub fn log(&self) -> &Arc<LogStore> {
        &self.log
    }

    /// A topic's table, system topics included.
    pub fn get(&self, name: &str) -> Option<Arc<TopicTable>> {
        self.tables.read().get(name).cloned()
    }

    /// User topics' names.
    pub fn names(&self) -> Vec<String> {
        self.tables
            .read()
            .keys()
            .filter(|n| !n.starts_with(INTERNAL_PREFIX))
            .cloned()
            .collect()
    }

    /// Creates a topic. `Ok(false)` if it exists and `if_not_exists`.
    pub fn create(
        self: &Arc<Self>,
        def: TopicDef,
        mut config: TopicConfig,
        if_not_exists: bool,
    ) -> Result<bool, CatalogError> {
        if self.get(&def.name).is_some() {
            return if if_not_exists {
                Ok(false)
            } else {
                Err(CatalogError::TableExists(def.name))
            };
        }
        if def.name.starts_with(INTERNAL_PREFIX) {
            return Err(CatalogError::BadOptionValue {
                name: "topic name".into(),
                value: def.name,
            });
        }
        config.schema = Some(def.encode());
        self.log.create_topic(&def.name, config)?;
        let table = Arc::new(TopicTable::new(def.clone(), self.clone()));
        self.tables.write().insert(def.name, table);
        Ok(true)
    }

    /// Drops a topic; `Ok(false)` if there is none of that name.
    pub fn drop_topic(&self, name: &str) -> Result<bool, CatalogError> {
        if name.starts_with(INTERNAL_PREFIX) || self.get(name).is_none() {
            return Ok(false);
        }
        self.log.drop_topic(name)?;
        self.tables.write().remove(name);
        self.offsets.write().retain(|(_, t, _), _| t != name);
        Ok(true)
    }

    /// Changes partitions or retention (`None` leaves a setting alone).
    pub fn alter(
        &self,
        name: &str,
        partitions: Option<u32>,
        retention_ms: Option<Option<i64>>,
        retention_bytes: Option<Option<u64>>,
    ) -> Result<TopicConfig, CatalogError> {
        if self.get(name).is_none() || name.starts_with(INTERNAL_PREFIX) {
            return Err(CatalogError::TableNotFound(name.to_owned()));
        }
        Ok(self.log.alter_topic(name, |c| {
            if let Some(p) = partitions {
                c.partitions = p;
            }
            if let Some(r) = retention_ms {
                c.retention_ms = r;
            }
            if let Some(r) = retention_bytes {
                c.retention_bytes = r;
            }
        })?)
    }

    /// A partition for a message without a key: round robin.
    pub fn next_round_robin(&self, partitions: u32) -> u32 {
        (self.round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(partitions.max(1))) as u32
    }

    /// Keeps a message that did not fit its topic, with the reason.
    pub fn reject(
        &self,
        topic: &str,
        reason: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: i64,
    ) -> Result<(), CatalogError> {
        let hexed = |b: Option<&[u8]>| {
            b.map_or(serde_json::Value::Null, |b| {
                serde_json::Value::String(json::bytea_text(b))
            })
        };
        let v = serde_json::json!({
            "topic": topic,
            "reason": reason,
            "key": hexed(key),
            "value": hexed(value),
        });
        let batch = encode_batch(&[Message {
            key: Some(topic.as_bytes().to_vec()),
            value: Some(v.to_string().into_bytes()),
            timestamp_ms,
        }]);
        self.log.append(REJECTS_TOPIC, 0, &batch)?;
        *self.rejected.write().entry(topic.to_owned()).or_default() += 1;
        Ok(())
    }

    /// Records committed offsets of a consumer group (one durable append).
    pub fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(String, i32, i64, String)],
        now_ms: i64,
    ) -> Result<(), CatalogError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let messages: Vec<Message> = offsets
            .iter()
            .map(|(topic, p, o, meta)| Message {
                key: Some(group.as_bytes().to_vec()),
                value: Some(
                    serde_json::json!({
                        "group_id": group, "topic": topic, "partition": p,
                        "committed_offset": o, "metadata": meta,
                    })
                    .to_string()
                    .into_bytes(),
                ),
                timestamp_ms: now_ms,
            })
            .collect();
        self.log
            .append(OFFSETS_TOPIC, 0, &encode_batch(&messages))?;
        let mut map = self.offsets.write();
        for (topic, p, o, meta) in offsets {
            map.insert((group.to_owned(), topic.clone(), *p), (*o, meta.clone()));
        }
        Ok(())
    }

    /// A group's committed offset for a partition.
    pub fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<(i64, String)> {
        self.offsets
            .read()
            .get(&(group.to_owned(), topic.to_owned(), partition))
            .cloned()
    }

    /// Every committed offset: (group, topic, partition) -> offset.
    pub fn all_committed(&self) -> Vec<((String, String, i32), i64)> {
        self.offsets
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.0))
            .collect()
    }

    /// Messages of `topic` sent to the rejects.
    pub fn rejected(&self, topic: &str) -> u64 {
        self.rejected.read().get(topic).copied().unwrap_or(0)
    }

    /// Hands every record of a system topic to `f`, oldest first.
    fn replay(&self, name: &str, mut f: impl FnMut(&Record)) -> Result<(), CatalogError> {
        let Some(t) = self.log.topic(name) else {
            return Ok(());
        };
        for p in t.partitions() {
            let mut at = p.log_start();
            while at < p.high_watermark() {
                let fetched = p.read(at, 1 << 20)?;
                let records = decode_batches(&fetched.data)?;
                let Some(last) = records.last().map(|r| r.offset) else {
                    break;
                };
                records.iter().filter(|r| r.offset >= at).for_each(&mut f);
                at = last + 1;
            }
        }
        Ok(())
    }

    fn count_rejects(&self) -> Result<(), CatalogError> {
        let mut counts = self.rejected.write();
        self.replay(REJECTS_TOPIC, |r| {
            if let Some(k) = &r.key {
                *counts
                    .entry(String::from_utf8_lossy(k).into_owned())
                    .or_default() += 1;
            }
        })
    }

    fn load_offsets(&self) -> Result<(), CatalogError> {
        let def = system_def(OFFSETS_TOPIC);
        let mut map = self.offsets.write();
        self.replay(OFFSETS_TOPIC, |r| {
                    let Ok(v) = json::decode_row(&def.columns, r.value.as_deref()) else {
                        return;
                    };
                    if let [json::Val::Text(g), json::Val::Text(t), json::Val::Int(p), json::Val::Int(o), meta] =
                        v.as_slice()
                    {
                        let meta = match meta {
                            json::Val::Text(m) => m.clone(),
                            _ => String::new(),
                        };
                        map.insert((g.clone(), t.clone(), *p as i32), (*o, meta));
                    }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.
        for (s, h) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(s.as_bytes()), h, "{s}");
        }
    }

    #[test]
    fn definition_round_trip() {
        let def = TopicDef {
            name: "clicks".into(),
            columns: vec![
                ("user id".into(), SqlType::Text),
                ("ts".into(), SqlType::Timestamp),
                ("n".into(), SqlType::Float8),
            ],
            key: Some("user id".into()),
        };
        assert_eq!(TopicDef::decode("clicks", &def.encode()).unwrap(), def);
        assert!(TopicDef::decode("x", "column nope 00").is_err());
    }

    #[test]
    fn batches_round_trip() {
        let msgs: Vec<Message> = (0..5)
            .map(|i| Message {
                key: (i % 2 == 0).then(|| vec![i as u8]),
                value: Some(format!("v{i}").into_bytes()),
                timestamp_ms: 100 + i,
            })
            .collect();
        let b = encode_batch(&msgs);
        assert_eq!(
            tidebase_storage::log::batch::check_batches(&b)
                .unwrap()
                .len(),
            1
        );
        let back = decode_batches(&b).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back[4].offset, 4);
        assert_eq!(back[3].timestamp, 103);
        assert_eq!(back[1].key, None);
        assert_eq!(back[2].value.as_deref(), Some(&b"v2"[..]));
    }
}
