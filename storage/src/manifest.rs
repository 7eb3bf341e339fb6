//! The manifest: which tables, families, regions and store files exist.
//!
//! One snapshot file, `MANIFEST`, rewritten whole on every change through
//! `MANIFEST.tmp` + fsync + rename + fsync of the directory, so it is always
//! either the old or the new state. Text, one record per line, every name
//! and key in hex:
//!
//! ```text
//! tidebase-manifest 1
//! next_id <n>
//! table <id> <name>
//! schema <table id> <opaque bytes the catalog stores with the table>
//! family <table id> <name> <max versions> <ttl ms or -> <bloom> <block size> <compression>
//! region <id> <table id> <start key> <end key or ->
//! store <region id> <family> <flushed seq>
//! file <region id> <family> <file id>
//! crc <CRC-32 of every byte before this line, hex>
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{io, Result, StorageError};
use crate::options::{BloomKind, Compression, FamilyOptions};
use crate::store_file::{self, unhex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMeta {
    pub id: u64,
    pub name: String,
    pub families: Vec<(String, FamilyOptions)>,
    /// What the layer above stores about the table (its SQL definition),
    /// written atomically with the rest of the manifest.
    pub schema: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreMeta {
    /// Every edit up to this sequence number is in the files.
    pub flushed_seq: u64,
    pub files: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionMeta {
    pub id: u64,
    pub table: u64,
    pub start: Vec<u8>,
    /// Empty means no upper bound.
    pub end: Vec<u8>,
    pub stores: BTreeMap<String, StoreMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub next_id: u64,
    pub tables: BTreeMap<u64, TableMeta>,
    pub regions: BTreeMap<u64, RegionMeta>,
}

/// Hex, with `-` for empty so every field is a non-empty word.
fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "-".into();
    }
    store_file::hex(b)
}

fn unhex_field(s: &str) -> Option<Vec<u8>> {
    if s == "-" {
        Some(Vec::new())
    } else {
        unhex(s)
    }
}

impl Manifest {
    pub fn allocate_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn encode(&self) -> String {
        let mut s = String::from("tidebase-manifest 1\n");
        let _ = writeln!(s, "next_id {}", self.next_id);
        for t in self.tables.values() {
            let _ = writeln!(s, "table {} {}", t.id, hex(t.name.as_bytes()));
            let _ = writeln!(s, "schema {} {}", t.id, hex(&t.schema));
            for (name, f) in &t.families {
                let ttl = f.ttl_ms.map_or("-".to_string(), |t| t.to_string());
                let _ = writeln!(
                    s,
                    "family {} {} {} {} {} {} {}",
                    t.id,
                    hex(name.as_bytes()),
                    f.max_versions,
                    ttl,
                    f.bloom.name(),
                    f.block_size,
                    f.compression.name()
                );
            }
        }
        for r in self.regions.values() {
            let _ = writeln!(
                s,
                "region {} {} {} {}",
                r.id,
                r.table,
                hex(&r.start),
                hex(&r.end)
            );
            for (family, store) in &r.stores {
                let _ = writeln!(
                    s,
                    "store {} {} {}",
                    r.id,
                    hex(family.as_bytes()),
                    store.flushed_seq
                );
                for f in &store.files {
                    let _ = writeln!(s, "file {} {} {}", r.id, hex(family.as_bytes()), f);
                }
            }
        }
        let crc = crc32fast::hash(s.as_bytes());
        let _ = writeln!(s, "crc {crc:08x}");
        s
    }

    pub fn decode(text: &str, file: &Path) -> Result<Manifest> {
        let bad = |line: usize, reason: &str| StorageError::Corrupted {
            file: file.to_path_buf(),
            offset: line as u64,
            reason: format!("line {}: {reason}", line + 1),
        };
        let body_end = text
            .rfind("crc ")
            .ok_or_else(|| bad(0, "no checksum line"))?;
        let (body, crc_line) = text.split_at(body_end);
        let expected = u32::from_str_radix(crc_line.trim().trim_start_matches("crc "), 16)
            .map_err(|_| bad(0, "unreadable checksum"))?;
        if crc32fast::hash(body.as_bytes()) != expected {
            return Err(bad(0, "checksum mismatch"));
        }
        let mut m = Manifest::default();
        let name = |s: &str, line: usize| -> Result<String> {
            let b = unhex_field(s).ok_or_else(|| bad(line, "bad hex"))?;
            String::from_utf8(b).map_err(|_| bad(line, "name is not UTF-8"))
        };
        for (i, line) in body.lines().enumerate() {
            let f: Vec<&str> = line.split(' ').collect();
            let num = |idx: usize| -> Result<u64> {
                f.get(idx)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| bad(i, "bad number"))
            };
            let field = |idx: usize| -> Result<&str> {
                f.get(idx).copied().ok_or_else(|| bad(i, "missing field"))
            };
            match f[0] {
                "tidebase-manifest" if i == 0 => {
                    if field(1)? != "1" {
                        return Err(bad(i, "unknown manifest version"));
                    }
                }
                "next_id" => m.next_id = num(1)?,
                "table" => {
                    let id = num(1)?;
                    m.tables.insert(
                        id,
                        TableMeta {
                            id,
                            name: name(field(2)?, i)?,
                            families: Vec::new(),
                            schema: Vec::new(),
                        },
                    );
                }
                "schema" => {
                    let schema = unhex_field(field(2)?).ok_or_else(|| bad(i, "bad schema"))?;
                    m.tables
                        .get_mut(&num(1)?)
                        .ok_or_else(|| bad(i, "schema of unknown table"))?
                        .schema = schema;
                }
                "family" => {
                    let options = FamilyOptions {
                        max_versions: u32::try_from(num(3)?).map_err(|_| bad(i, "max versions"))?,
                        ttl_ms: match field(4)? {
                            "-" => None,
                            _ => Some(num(4)?),
                        },
                        bloom: BloomKind::parse(field(5)?).ok_or_else(|| bad(i, "bloom kind"))?,
                        block_size: usize::try_from(num(6)?).map_err(|_| bad(i, "block size"))?,
                        compression: Compression::parse(field(7)?)
                            .ok_or_else(|| bad(i, "compression"))?,
                    };
                    let family = name(field(2)?, i)?;
                    m.tables
                        .get_mut(&num(1)?)
                        .ok_or_else(|| bad(i, "family of unknown table"))?
                        .families
                        .push((family, options));
                }
                "region" => {
                    let id = num(1)?;
                    m.regions.insert(
                        id,
                        RegionMeta {
                            id,
                            table: num(2)?,
                            start: unhex_field(field(3)?).ok_or_else(|| bad(i, "bad start key"))?,
                            end: unhex_field(field(4)?).ok_or_else(|| bad(i, "bad end key"))?,
                            stores: BTreeMap::new(),
                        },
                    );
                }
                "store" => {
                    let r = m
                        .regions
                        .get_mut(&num(1)?)
                        .ok_or_else(|| bad(i, "store of unknown region"))?;
                    r.stores.insert(
                        name(field(2)?, i)?,
                        StoreMeta {
                            flushed_seq: num(3)?,
                            files: Vec::new(),
                        },
                    );
                }
                "file" => {
                    let family = name(field(2)?, i)?;
                    let r = m
                        .regions
                        .get_mut(&num(1)?)
                        .ok_or_else(|| bad(i, "file of unknown region"))?;
                    r.stores
                        .get_mut(&family)
                        .ok_or_else(|| bad(i, "file of unknown store"))?
                        .files
                        .push(num(3)?);
                }
                "" => {}
                _ => return Err(bad(i, "unknown record")),
            }
        }
        Ok(m)
    }

    /// Loads `dir/MANIFEST`, or `None` for a new engine.
    pub fn load(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join("MANIFEST");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| StorageError::Corrupted {
                    file: path.clone(),
                    offset: 0,
                    reason: "not UTF-8".into(),
                })?;
                Manifest::decode(&text, &path).map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Writes the snapshot atomically.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let tmp: PathBuf = dir.join("MANIFEST.tmp");
        let path = dir.join("MANIFEST");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(self.encode().as_bytes()).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        crate::wal::sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let mut m = Manifest::default();
        let t = m.allocate_id();
        m.tables.insert(
            t,
            TableMeta {
                id: t,
                name: "emp loyees".into(),
                schema: b"{\"columns\": []}".to_vec(),
                families: vec![
                    ("personal".into(), FamilyOptions::default()),
                    (
                        "p".into(),
                        FamilyOptions {
                            ttl_ms: Some(1000),
                            bloom: BloomKind::None,
                            ..Default::default()
                        },
                    ),
                ],
            },
        );
        let r = m.allocate_id();
        let mut stores = BTreeMap::new();
        stores.insert(
            "personal".into(),
            StoreMeta {
                flushed_seq: 9,
                files: vec![4, 5],
            },
        );
        stores.insert("p".into(), StoreMeta::default());
        m.regions.insert(
            r,
            RegionMeta {
                id: r,
                table: t,
                start: vec![],
                end: b"m\x00".to_vec(),
                stores,
            },
        );
        m
    }

    #[test]
    fn round_trips_and_detects_damage() {
        let m = sample();
        let text = m.encode();
        assert_eq!(Manifest::decode(&text, Path::new("M")).unwrap(), m);
        let damaged = text.replacen("flushed", "x", 1).replacen(" 9\n", " 8\n", 1);
        assert!(Manifest::decode(&damaged, Path::new("M")).is_err());
        assert!(Manifest::decode("garbage", Path::new("M")).is_err());
    }

    proptest::proptest! {
        #[test]
        fn random_text_never_panics(s in "\\PC{0,200}") {
            let _ = Manifest::decode(&s, Path::new("M"));
        }
    }
}
