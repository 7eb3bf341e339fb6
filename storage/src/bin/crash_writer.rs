//! Test helper for the crash test: writes batches with `sync = always`
//! from four threads, and bulk loads of 50 rows (several runs each) from a
//! fifth, and prints each acknowledged row with its batch or load number,
//! until it is killed. Not part of the server.
//!
//! Usage: `crash-writer <dir> <first batch number>`

use std::io::Write;
use std::sync::Arc;

use tidebase_storage::{
    CellKind, Engine, EngineOptions, FamilyOptions, Mutation, StorageError, SyncPolicy,
};

/// Rows per bulk load; the crash test expects a load whole or absent.
const LOAD_ROWS: u64 = 50;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(first)) = (args.next(), args.next()) else {
        eprintln!("usage: crash-writer <dir> <first batch number>");
        std::process::exit(2);
    };
    let first: u64 = first.parse().expect("batch number");
    let options = EngineOptions {
        sync: SyncPolicy::Always,
        memstore_flush_bytes: 16 * 1024,
        region_split_bytes: 96 * 1024,
        compaction_min_files: 3,
        wal_segment_bytes: 32 * 1024,
        bulk_load_memory: 4096,
        background: true,
        ..Default::default()
    };
    let engine = Arc::new(Engine::open(std::path::Path::new(&dir), options).expect("open"));
    let families = vec![
        ("f".to_string(), FamilyOptions::default()),
        ("g".to_string(), FamilyOptions::default()),
    ];
    match engine.create_table("t", families) {
        Ok(()) | Err(StorageError::TableExists(_)) => {}
        Err(e) => panic!("create table: {e}"),
    }
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let engine = engine.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                let mut n = first + t;
                loop {
                    let row = format!("k{:016}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 8);
                    let value = n.to_le_bytes();
                    let batch = vec![
                        Mutation::put(row.as_bytes(), "f", b"a", 1, &value),
                        Mutation::put(row.as_bytes(), "g", b"b", 1, &value),
                    ];
                    engine.write("t", batch).expect("write");
                    let mut o = out.lock().expect("stdout");
                    writeln!(o, "{n} {row}").expect("stdout");
                    o.flush().expect("stdout");
                    n += 4;
                }
            })
        })
        .collect();
    let loader = {
        let engine = engine.clone();
        let out = out.clone();
        std::thread::spawn(move || {
            // Load numbers lie above the writers' batch numbers of a round.
            let mut n = first + 5_000_000;
            loop {
                let value = n.to_le_bytes();
                let rows: Vec<String> = (0..LOAD_ROWS).map(|i| format!("b{n:012}{i:03}")).collect();
                let mut load = engine.bulk_load("t").expect("bulk load");
                for row in &rows {
                    load.add(row.as_bytes(), "f", b"a", 1, CellKind::Put, &value)
                        .expect("add");
                    load.add(row.as_bytes(), "g", b"b", 1, CellKind::Put, &value)
                        .expect("add");
                }
                load.commit().expect("commit");
                let mut o = out.lock().expect("stdout");
                for row in &rows {
                    writeln!(o, "{n} {row}").expect("stdout");
                }
                o.flush().expect("stdout");
                n += 1;
            }
        })
    };
    for t in threads {
        let _ = t.join();
    }
    let _ = loader.join();
}
