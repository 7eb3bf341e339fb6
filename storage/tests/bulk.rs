//! Bulk loads: invisible until committed, all at once after, nothing left
//! behind by an abandoned or failed load, sequence numbers that survive a
//! reopen, and regions split before the files are written.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tidebase_storage::{
    BulkLoad, CellKind, Engine, EngineOptions, FamilyOptions, Mutation, ReadOptions, ScanOptions,
    StorageError, SyncPolicy,
};

fn options() -> EngineOptions {
    EngineOptions {
        sync: SyncPolicy::None,
        background: false,
        ..Default::default()
    }
}

/// The test options with a bulk-load memory budget of `bytes`.
fn with_memory(bytes: usize) -> EngineOptions {
    EngineOptions {
        bulk_load_memory: bytes,
        ..options()
    }
}

fn open(dir: &Path, options: EngineOptions) -> Engine {
    let e = Engine::open(dir, options).unwrap();
    if !e.table_names().contains(&"t".to_string()) {
        e.create_table("t", vec![("f".into(), FamilyOptions::default())])
            .unwrap();
    }
    e
}

fn key(i: u32) -> Vec<u8> {
    format!("k{i:06}").into_bytes()
}

/// A load of keys `0..n` (one cell each), not committed.
fn load_keys(e: &Engine, n: u32) -> BulkLoad {
    let mut load = e.bulk_load("t").unwrap();
    for i in 0..n {
        load.add(&key(i), "f", b"q", 1, CellKind::Put, b"v")
            .unwrap();
    }
    load
}

fn count(e: &Engine) -> usize {
    e.scan("t", &ScanOptions::default())
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

fn store_files_on_disk(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("files")).unwrap().count()
}

#[test]
fn a_load_is_invisible_until_committed_and_an_abandoned_one_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), with_memory(4096));
    let load = load_keys(&e, 1000);
    assert!(store_files_on_disk(dir.path()) > 0, "runs were spilled");
    assert_eq!(count(&e), 0);
    drop(load);
    assert_eq!(store_files_on_disk(dir.path()), 0);

    let load = load_keys(&e, 1000);
    assert_eq!(load.commit().unwrap(), 1000);
    assert_eq!(count(&e), 1000);
    let err = e
        .bulk_load("t")
        .unwrap()
        .add(b"r", "nope", b"q", 1, CellKind::Put, b"v")
        .unwrap_err();
    assert!(matches!(err, StorageError::FamilyNotFound { .. }), "{err}");
}

#[test]
fn the_last_of_equal_cells_wins_within_a_run_and_across_runs() {
    for memory in [1 << 20, 200] {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path(), with_memory(memory));
        e.write("t", vec![Mutation::put(b"a", "f", b"q", 1, b"old")])
            .unwrap();
        let mut load = e.bulk_load("t").unwrap();
        for v in 0..20u8 {
            load.add(b"a", "f", b"q", 2, CellKind::Put, &[v]).unwrap();
            load.add(b"b", "f", b"q", 2, CellKind::Put, &[v]).unwrap();
        }
        load.commit().unwrap();
        for row in [b"a", b"b"] {
            let cells = e.get("t", row, &[], &ReadOptions::default()).unwrap();
            assert_eq!(cells.len(), 1, "memory {memory}");
            assert_eq!(cells[0].value, vec![19], "memory {memory}");
        }
        if memory == 200 {
            // Each run has its own sequence number: like separate writes,
            // runs leave versions of one timestamp.
            continue;
        }
        // One run keeps one of equal cells: its newest, over the older put.
        let read = ReadOptions {
            max_versions: 3,
            ..Default::default()
        };
        let values: Vec<Vec<u8>> = e
            .get("t", b"a", &[], &read)
            .unwrap()
            .into_iter()
            .map(|c| c.value)
            .collect();
        assert_eq!(values, vec![vec![19], b"old".to_vec()], "memory {memory}");
    }
}

#[test]
fn writes_after_a_reopen_are_newer_than_the_loaded_cells() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = open(dir.path(), options());
        let mut load = e.bulk_load("t").unwrap();
        load.add(b"a", "f", b"q", 7, CellKind::Put, b"loaded")
            .unwrap();
        load.commit().unwrap();
    }
    let e = open(dir.path(), options());
    assert_eq!(
        e.get("t", b"a", &[], &ReadOptions::default()).unwrap()[0].value,
        b"loaded"
    );
    // Same timestamp: the higher sequence number wins.
    e.write("t", vec![Mutation::put(b"a", "f", b"q", 7, b"written")])
        .unwrap();
    assert_eq!(
        e.get("t", b"a", &[], &ReadOptions::default()).unwrap()[0].value,
        b"written"
    );
}

#[test]
fn a_large_load_splits_its_region_first_and_rewrites_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(
        dir.path(),
        EngineOptions {
            region_split_bytes: 1 << 20,
            ..options()
        },
    );
    let mut load = e.bulk_load("t").unwrap();
    // Out of order, about 3.5 MB as files; enough cells that the sort
    // runs on two threads.
    for i in 0..100_000u32 {
        let k = (i * 7919) % 100_000;
        load.add(&key(k), "f", b"q", 1, CellKind::Put, &[0u8; 16])
            .unwrap();
    }
    load.commit().unwrap();
    let regions = e.regions("t").unwrap();
    assert!(regions.len() >= 4, "{} regions", regions.len());
    for r in &regions {
        assert_eq!(r.files, 1, "region {} has {} files", r.id, r.files);
        assert!(
            r.size_bytes <= 1 << 20,
            "region {} is {} bytes",
            r.id,
            r.size_bytes
        );
    }
    assert_eq!(e.metrics().compaction_bytes, 0, "no file was rewritten");
    let batches = e.scan("t", &ScanOptions::default()).unwrap();
    let mut rows = Vec::new();
    for b in &batches {
        let col = arrow::array::AsArray::as_binary_view(b.column(0));
        rows.extend(col.iter().map(|r| r.unwrap().to_vec()));
    }
    assert_eq!(rows, (0..100_000).map(key).collect::<Vec<_>>());
}

#[test]
fn a_load_into_a_table_truncated_meanwhile_fails_and_loads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), with_memory(2048));
    let load = load_keys(&e, 500);
    e.truncate_table("t").unwrap();
    let err = load.commit().unwrap_err();
    assert!(matches!(err, StorageError::TableChanged(_)), "{err}");
    assert_eq!(count(&e), 0);
    assert_eq!(store_files_on_disk(dir.path()), 0);
}

#[test]
fn concurrent_scans_see_all_of_a_load_or_none_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = Arc::new(open(dir.path(), with_memory(8192)));
    for i in [2000, 4000, 6000, 8000] {
        e.split_at("t", &key(i)).unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (e, done) = (e.clone(), done.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !done.load(Ordering::SeqCst) {
                seen.insert(count(&e));
            }
            seen.insert(count(&e));
            seen
        })
    };
    for round in 0..5u32 {
        let mut load = e.bulk_load("t").unwrap();
        for i in 0..10_000u32 {
            let k = (i * 7919 + round) % 10_000;
            load.add(&key(k), "f", &round.to_be_bytes(), 1, CellKind::Put, b"v")
                .unwrap();
        }
        load.commit().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.join().unwrap();
    let allowed: std::collections::BTreeSet<usize> = (0..=5).map(|n| n * 10_000).collect();
    assert!(seen.is_subset(&allowed), "scans saw {seen:?}");
    assert!(seen.contains(&50_000));
}
