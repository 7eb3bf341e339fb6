//! Region-engine benchmark: put, get and scan throughput and write
//! amplification. Run with `cargo bench -p tidebase-storage --bench engine`.
//!
//! `TIDEBASE_BENCH_CELLS` sets the size of the load used for the scan and
//! write-amplification figures (default 10,000,000). Data goes to a
//! temporary directory under `TIDEBASE_BENCH_DIR` (default the system's).
//! `TIDEBASE_BENCH_ONLY` runs only the figures whose label contains it
//! (for example `puts sync=None`, `gets`, `load`), for profiling one path.
//! `TIDEBASE_BENCH_COMPRESSION` (none, snappy, lz4, zstd) sets the family's
//! store-file compression (default: the family default).

use arrow::array::AsArray;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidebase_storage::{
    CellKind, Compression, Engine, EngineOptions, FamilyOptions, Mutation, ReadOptions,
    ScanOptions, SyncPolicy,
};
use xxhash_rust::xxh3::xxh3_128;

// The allocator the server runs the engine with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FAMILY: &str = "f";
const VALUE_LEN: usize = 100;

/// Sequential key `i` of writer `w`: 16 bytes, ordered by (w, i).
fn seq_key(w: u64, i: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&w.to_be_bytes());
    k.extend_from_slice(&i.to_be_bytes());
    k
}

/// Random-looking 16-byte key number `i` (a hash, so it can be recomputed).
fn random_key(i: u64) -> Vec<u8> {
    xxh3_128(&i.to_le_bytes()).to_be_bytes().to_vec()
}

fn value(i: u64) -> Vec<u8> {
    let mut v = vec![b'v'; VALUE_LEN];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn open(dir: &std::path::Path, sync: SyncPolicy, memstore: usize) -> Engine {
    let options = EngineOptions {
        sync,
        memstore_flush_bytes: memstore,
        ..Default::default()
    };
    let e = Engine::open(dir, options).expect("open engine");
    let mut family = FamilyOptions {
        max_versions: 1,
        ..Default::default()
    };
    if let Ok(c) = std::env::var("TIDEBASE_BENCH_COMPRESSION") {
        family.compression = Compression::parse(&c).expect("TIDEBASE_BENCH_COMPRESSION");
    }
    e.create_table("t", vec![(FAMILY.into(), family)])
        .expect("create table");
    e
}

#[derive(Clone, Copy)]
enum Keys {
    Sequential,
    Random,
}

/// `writers` threads each write `per_writer` cells in batches of `batch`.
/// Returns cells per second.
fn load(e: &Arc<Engine>, writers: u64, per_writer: u64, batch: u64, keys: Keys) -> f64 {
    let started = Instant::now();
    std::thread::scope(|s| {
        for w in 0..writers {
            let e = e.clone();
            s.spawn(move || {
                let mut i = 0;
                while i < per_writer {
                    let n = batch.min(per_writer - i);
                    let batch: Vec<Mutation> = (i..i + n)
                        .map(|j| {
                            let key = match keys {
                                Keys::Sequential => seq_key(w, j),
                                Keys::Random => random_key(w * per_writer + j),
                            };
                            Mutation {
                                row: key,
                                family: FAMILY.to_string(),
                                qualifier: b"q".to_vec(),
                                ts: 1,
                                kind: CellKind::Put,
                                value: value(j),
                            }
                        })
                        .collect();
                    e.write("t", batch).expect("write");
                    i += n;
                }
            });
        }
    });
    (writers * per_writer) as f64 / started.elapsed().as_secs_f64()
}

fn rate(ops: u64, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64()
}

/// Gets of `ops` keys from `key(i)`, returns (gets/s, rows found).
fn gets(e: &Engine, ops: u64, key: impl Fn(u64) -> Vec<u8> + Sync) -> (f64, u64) {
    gets_on(e, 1, ops, key)
}

/// The same on `threads` threads, each taking every `threads`-th key.
fn gets_on(e: &Engine, threads: u64, ops: u64, key: impl Fn(u64) -> Vec<u8> + Sync) -> (f64, u64) {
    let started = Instant::now();
    let found: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let key = &key;
                s.spawn(move || {
                    let read = ReadOptions::default();
                    let mut found = 0;
                    for i in (t..ops).step_by(threads as usize) {
                        if !e.get("t", &key(i), &[], &read).expect("get").is_empty() {
                            found += 1;
                        }
                    }
                    found
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("get thread"))
            .sum()
    });
    (rate(ops, started.elapsed()), found)
}

/// Scans every region of the table on `threads` threads (streaming store
/// scans, one region at a time per thread); returns (cells, bytes, elapsed).
fn scan(e: &Arc<Engine>, threads: usize) -> (u64, u64, Duration) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let started = Instant::now();
    let regions = std::sync::Mutex::new(e.scan_stores("t", &ScanOptions::default()).expect("scan"));
    let cells = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let Some(stores) = regions.lock().expect("lock").pop() else {
                    break;
                };
                for b in stores.into_iter().flatten() {
                    let b = b.expect("scan");
                    cells.fetch_add(b.num_rows() as u64, Relaxed);
                    // Row, qualifier and value bytes.
                    let size: u64 = [0, 1, 5]
                        .iter()
                        .flat_map(|c| b.column(*c).as_binary_view().lengths())
                        .map(u64::from)
                        .sum();
                    bytes.fetch_add(size, Relaxed);
                }
            });
        }
    });
    (cells.into_inner(), bytes.into_inner(), started.elapsed())
}

/// Whether the figure labelled `label` is asked for.
fn wanted(label: &str) -> bool {
    std::env::var("TIDEBASE_BENCH_ONLY").map_or(true, |only| label.contains(&only))
}

fn human(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2} M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} k", n / 1e3)
    } else {
        format!("{n:.0} ")
    }
}

fn tempdir() -> tempfile::TempDir {
    match std::env::var_os("TIDEBASE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory")
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let total: u64 = std::env::var("TIDEBASE_BENCH_CELLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    println!(
        "tidebase-storage engine benchmark: 16-byte keys, {VALUE_LEN}-byte values, compression {}",
        std::env::var("TIDEBASE_BENCH_COMPRESSION").unwrap_or_else(|_| "default".into())
    );
    println!();
    println!("puts");
    for (sync, writers, per_writer, batch) in [
        (SyncPolicy::Always, 8, 10_000, 1),
        (SyncPolicy::Always, 8, 40_000, 16),
        (SyncPolicy::None, 1, 1_000_000, 1),
        (SyncPolicy::None, 8, 250_000, 1),
        (SyncPolicy::None, 8, 250_000, 100),
        (SyncPolicy::None, 2, 1_000_000, 1000),
        (SyncPolicy::None, 1, 2_000_000, 1000),
    ] {
        for keys in [Keys::Sequential, Keys::Random] {
            let name = match keys {
                Keys::Sequential => "sequential",
                Keys::Random => "random",
            };
            let label =
                format!("sync={sync:?} writers={writers} cells/batch={batch:<3} {name:<10}");
            if !wanted(&format!("puts {label}")) {
                continue;
            }
            let dir = tempdir();
            let e = Arc::new(open(dir.path(), sync, 64 << 20));
            let r = load(&e, writers, per_writer, batch, keys);
            println!("  {label} {:>10} cells/s", human(r));
        }
    }

    if wanted("gets") {
        bench_gets();
    }
    if wanted("load") {
        bench_load(total);
    }
}

fn bench_gets() {
    println!();
    println!("gets (1,000,000 cells loaded, random keys)");
    let dir = tempdir();
    let e = Arc::new(open(dir.path(), SyncPolicy::None, 1 << 30));
    load(&e, 1, 1_000_000, 1000, Keys::Random);
    let ops = 500_000;
    let (r, found) = gets(&e, ops, |i| random_key((i * 7919) % 1_000_000));
    assert_eq!(found, ops, "every present key is found");
    println!("  memstore  present {:>10} gets/s", human(r));
    let (r, found) = gets(&e, ops, |i| random_key(u64::MAX - i));
    assert_eq!(found, 0, "no missing key is found");
    println!("  memstore  missing {:>10} gets/s", human(r));
    let (r, found) = gets_on(&e, 2, ops, |i| random_key(u64::MAX - i));
    assert_eq!(found, 0);
    println!("  memstore  missing {:>10} gets/s on 2 threads", human(r));
    e.flush("t").expect("flush");
    e.compact("t", true).expect("compact");
    let before = e.metrics();
    let file_ops = 20_000;
    let (r, found) = gets(&e, file_ops, |i| random_key((i * 7919) % 1_000_000));
    assert_eq!(found, file_ops);
    println!("  files     present {:>10} gets/s", human(r));
    let mid = e.metrics();
    let (r, found) = gets(&e, ops, |i| random_key(u64::MAX - i));
    assert_eq!(found, 0);
    let after = e.metrics();
    println!(
        "  files     missing {:>10} gets/s   (data pages read: {}, bloom negatives: {})",
        human(r),
        after.data_reads - mid.data_reads,
        after.bloom_negatives - mid.bloom_negatives
    );
    let _ = before;
    let (r, found) = gets_on(&e, 2, ops, |i| random_key(u64::MAX - i));
    assert_eq!(found, 0);
    println!("  files     missing {:>10} gets/s on 2 threads", human(r));
    let (r, found) = gets_on(&e, 2, file_ops, |i| random_key((i * 7919) % 1_000_000));
    assert_eq!(found, file_ops);
    println!("  files     present {:>10} gets/s on 2 threads", human(r));
}

fn bench_load(total: u64) {
    println!();
    println!("load of {total} cells, random keys, sync=None, 8 writers, 100 cells/batch, default thresholds");
    let dir = tempdir();
    let e = Arc::new(open(dir.path(), SyncPolicy::None, 64 << 20));
    let r = load(&e, 8, total / 8, 100, Keys::Random);
    e.wait_idle();
    let m = e.metrics();
    println!("  put rate {:>10} cells/s", human(r));
    println!(
        "  write amplification {:.2} (user {} MB, WAL {} MB, flushes {} MB, compactions {} MB); regions {}",
        m.write_amplification(),
        m.user_bytes >> 20,
        m.wal_bytes >> 20,
        m.flush_bytes >> 20,
        m.compaction_bytes >> 20,
        e.region_ids("t").map(|r| r.len()).unwrap_or(0)
    );
    e.flush("t").expect("flush");
    e.compact("t", true).expect("compact");
    let m = e.metrics();
    println!(
        "  after flush and major compaction: write amplification {:.2}",
        m.write_amplification()
    );
    for threads in [1, 2] {
        let (cells, bytes, took) = scan(&e, threads);
        assert_eq!(cells, total / 8 * 8, "the scan sees every cell");
        println!(
            "  scan from files, {threads} thread(s): {:>10} cells/s, {:.0} MB/s",
            human(rate(cells, took)),
            bytes as f64 / took.as_secs_f64() / 1e6
        );
    }
}
