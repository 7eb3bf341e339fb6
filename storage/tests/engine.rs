//! Engine tests: reopen, torn WAL tails, flush/compaction/split/merge, and
//! a model test against a BTreeMap.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{AsArray, RecordBatch};
use proptest::prelude::*;
use tidebase_storage::{
    CellKind, Engine, EngineOptions, FamilyOptions, Mutation, ReadOptions, ScanOptions, SyncPolicy,
    WalRecord,
};

fn tiny() -> EngineOptions {
    EngineOptions {
        sync: SyncPolicy::None,
        memstore_flush_bytes: 2048,
        region_split_bytes: 8 * 1024,
        compaction_min_files: 3,
        wal_segment_bytes: 4096,
        background: false,
        ..Default::default()
    }
}

fn families() -> Vec<(String, FamilyOptions)> {
    vec![
        (
            "f".into(),
            FamilyOptions {
                max_versions: 1,
                ..Default::default()
            },
        ),
        (
            "g".into(),
            FamilyOptions {
                max_versions: 1,
                ..Default::default()
            },
        ),
    ]
}

/// (row, family, qualifier, value) of a cell.
type Flat = (Vec<u8>, String, Vec<u8>, Vec<u8>);

/// Every cell in the batches, flattened.
fn cells(batches: &[RecordBatch]) -> Vec<Flat> {
    let mut out = Vec::new();
    for b in batches {
        let row = b.column(0).as_binary_view();
        let fam = b.column(1).as_string::<i32>();
        let q = b.column(2).as_binary_view();
        let v = b.column(4).as_binary_view();
        for i in 0..b.num_rows() {
            out.push((
                row.value(i).to_vec(),
                fam.value(i).to_string(),
                q.value(i).to_vec(),
                v.value(i).to_vec(),
            ));
        }
    }
    out
}

#[test]
fn reopen_without_flush_replays_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        background: false,
        ..Default::default()
    };
    {
        let e = Engine::open(dir.path(), opts.clone()).unwrap();
        e.create_table("t", families()).unwrap();
        for i in 0..100u32 {
            e.write(
                "t",
                vec![Mutation::put(
                    format!("r{i:03}").as_bytes(),
                    "f",
                    b"q",
                    1,
                    &i.to_le_bytes(),
                )],
            )
            .unwrap();
        }
    }
    let e = Engine::open(dir.path(), opts).unwrap();
    let all = cells(
        &e.scan(
            "t",
            &ScanOptions {
                batch_size: 7,
                ..ScanOptions::range(b"", b"")
            },
        )
        .unwrap(),
    );
    assert_eq!(all.len(), 100);
    assert_eq!(all[42].3, 42u32.to_le_bytes().to_vec());
}

fn last_segment(dir: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs.into_iter()
        .rev()
        .find(|p| std::fs::metadata(p).unwrap().len() > 8)
        .expect("a segment with records")
}

#[test]
fn torn_tail_at_every_offset_keeps_exactly_the_committed_prefix() {
    let base = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        background: false,
        sync: SyncPolicy::Always,
        ..Default::default()
    };
    {
        let e = Engine::open(base.path(), opts.clone()).unwrap();
        e.create_table("t", families()).unwrap();
        for i in 0..5u8 {
            e.write(
                "t",
                vec![
                    Mutation::put(&[i], "f", b"a", 1, b"x"),
                    Mutation::put(&[i], "g", b"b", 1, b"y"),
                ],
            )
            .unwrap();
        }
    }
    let seg = last_segment(base.path());
    let data = std::fs::read(&seg).unwrap();
    // Find where the last record starts.
    let mut pos = 8;
    let mut last_start = 8;
    while pos < data.len() {
        let (_, used) = WalRecord::decode(&data[pos..]).unwrap().unwrap();
        last_start = pos;
        pos += used;
    }
    for cut in last_start..=data.len() {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(base.path(), copy.path());
        let seg_copy = copy.path().join("wal").join(seg.file_name().unwrap());
        std::fs::write(&seg_copy, &data[..cut]).unwrap();
        let e = Engine::open(copy.path(), opts.clone()).unwrap();
        let rows: Vec<u8> = cells(
            &e.scan(
                "t",
                &ScanOptions {
                    batch_size: 100,
                    ..ScanOptions::range(b"", b"")
                },
            )
            .unwrap(),
        )
        .iter()
        .map(|c| c.0[0])
        .collect();
        let expected: Vec<u8> = if cut == data.len() {
            vec![0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        } else {
            vec![0, 0, 1, 1, 2, 2, 3, 3]
        };
        assert_eq!(rows, expected, "cut at {cut}");
        // The engine stays writable after cutting.
        e.write("t", vec![Mutation::put(b"z", "f", b"a", 1, b"x")])
            .unwrap();
    }
}

#[test]
fn corruption_before_the_tail_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        background: false,
        ..Default::default()
    };
    {
        let e = Engine::open(dir.path(), opts.clone()).unwrap();
        e.create_table("t", families()).unwrap();
        e.write("t", vec![Mutation::put(b"a", "f", b"q", 1, b"v")])
            .unwrap();
    }
    {
        // A second open starts a new segment, so the first is no longer last.
        let e = Engine::open(dir.path(), opts.clone()).unwrap();
        e.write("t", vec![Mutation::put(b"b", "f", b"q", 1, b"v")])
            .unwrap();
    }
    let mut segs: Vec<_> = std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let first = segs
        .iter()
        .find(|p| std::fs::metadata(p).unwrap().len() > 8)
        .unwrap()
        .clone();
    let mut data = std::fs::read(&first).unwrap();
    let n = data.len();
    data[n - 2] ^= 0xff;
    std::fs::write(&first, data).unwrap();
    let err = Engine::open(dir.path(), opts)
        .err()
        .expect("corruption detected");
    let msg = err.to_string();
    assert!(
        msg.contains(first.file_name().unwrap().to_str().unwrap()) && msg.contains("offset"),
        "{msg}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn versions_flush_compaction_split_and_merge_keep_the_answers() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), tiny()).unwrap();
    e.create_table(
        "t",
        vec![(
            "f".into(),
            FamilyOptions {
                max_versions: 3,
                ..Default::default()
            },
        )],
    )
    .unwrap();
    for ts in 1..=5 {
        e.write(
            "t",
            vec![Mutation::put(
                b"k",
                "f",
                b"q",
                ts,
                format!("v{ts}").as_bytes(),
            )],
        )
        .unwrap();
    }
    let three = ReadOptions {
        max_versions: 10,
        ..Default::default()
    };
    let versions = |e: &Engine| -> Vec<i64> {
        e.get("t", b"k", &[], &three)
            .unwrap()
            .iter()
            .map(|c| c.key.ts)
            .collect()
    };
    assert_eq!(versions(&e), vec![5, 4, 3]);
    e.flush("t").unwrap();
    e.compact("t", true).unwrap();
    assert_eq!(versions(&e), vec![5, 4, 3]);
    let files = e.store_files("t").unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(
        files[0].cells, 3,
        "major compaction keeps max_versions cells"
    );

    for i in 0..2000u32 {
        e.write(
            "t",
            vec![Mutation::put(
                format!("row{i:05}").as_bytes(),
                "f",
                b"q",
                1,
                &[7u8; 32],
            )],
        )
        .unwrap();
    }
    e.flush("t").unwrap();
    while e.split_large_regions("t").unwrap() > 0 {}
    let regions = e.regions("t").unwrap();
    assert!(regions.len() > 1, "splits happened: {regions:?}");
    assert_eq!(scanned_rows(&e), 2000);
    for w in regions.windows(2) {
        assert_eq!(w[0].end, w[1].start, "regions tile the key space");
    }
    e.merge_regions("t", regions[0].id, regions[1].id).unwrap();
    assert_eq!(e.regions("t").unwrap().len(), regions.len() - 1);
    assert_eq!(scanned_rows(&e), 2000);
    drop(e);
    let e = Engine::open(dir.path(), tiny()).unwrap();
    assert_eq!(e.regions("t").unwrap().len(), regions.len() - 1);
    assert_eq!(scanned_rows(&e), 2000);
    assert_eq!(versions(&e), vec![5, 4, 3]);
}

#[test]
fn a_scan_of_one_file_hides_exactly_what_the_read_rules_hide() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), tiny()).unwrap();
    let three = vec![(
        "f".to_string(),
        FamilyOptions {
            max_versions: 3,
            ..Default::default()
        },
    )];
    e.create_table("t", three.clone()).unwrap();
    let put =
        |row: &str, ts: i64, v: &str| Mutation::put(row.as_bytes(), "f", b"q", ts, v.as_bytes());
    let rows: Vec<Mutation> = (0..50).map(|i| put(&format!("r{i:02}"), 1, "a")).collect();
    e.write("t", rows).unwrap();
    e.flush("t").unwrap();
    e.compact("t", true).unwrap();
    let files = e.store_files("t").unwrap();
    assert_eq!(
        (files.len(), files[0].deletes, files[0].versions),
        (1, 0, Some(1))
    );
    let scan = |start: &str, end: &str, read: ReadOptions| {
        let opts = ScanOptions {
            batch_size: 7,
            read,
            ..ScanOptions::range(start.as_bytes(), end.as_bytes())
        };
        cells(&e.scan("t", &opts).unwrap())
            .into_iter()
            .map(|(r, _, _, v)| (String::from_utf8(r).unwrap(), String::from_utf8(v).unwrap()))
            .collect::<Vec<_>>()
    };
    let newest = ReadOptions::default();
    let got = scan("r10", "r20", newest.clone());
    assert_eq!(got.len(), 10);
    assert_eq!((got[0].0.as_str(), got[9].0.as_str()), ("r10", "r19"));
    // Ranges that start or end between rows, inside one batch.
    assert_eq!(scan("r105", "r125", newest.clone()).len(), 2);
    assert_eq!(scan("r485", "", newest.clone()).len(), 1);
    // A snapshot older than the file sees none of it.
    let before = ReadOptions {
        snapshot: 0,
        ..Default::default()
    };
    assert!(scan("", "", before).is_empty());

    // Two versions of r05 in one file: a read of one version gets the
    // newest, a read of three gets both.
    e.write("t", vec![put("r05", 2, "b")]).unwrap();
    e.flush("t").unwrap();
    e.compact("t", true).unwrap();
    let files = e.store_files("t").unwrap();
    assert_eq!((files.len(), files[0].versions), (1, Some(2)));
    assert_eq!(
        scan("r05", "r06", newest.clone()),
        vec![("r05".into(), "b".into())]
    );
    let all = ReadOptions {
        max_versions: 3,
        ..Default::default()
    };
    assert_eq!(
        scan("r05", "r06", all),
        vec![("r05".into(), "b".into()), ("r05".into(), "a".into())]
    );

    // A file with a delete marker: the deleted cell stays hidden.
    e.create_table("u", three).unwrap();
    e.write(
        "u",
        vec![
            Mutation::put(b"x", "f", b"q", 1, b"gone"),
            Mutation::put(b"y", "f", b"q", 1, b"kept"),
        ],
    )
    .unwrap();
    e.write("u", vec![Mutation::delete(b"x", "f", b"q", 1)])
        .unwrap();
    e.flush("u").unwrap();
    let files = e.store_files("u").unwrap();
    assert_eq!((files.len(), files[0].deletes), (1, 1));
    let got = cells(&e.scan("u", &ScanOptions::range(b"", b"")).unwrap());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, b"y");
}

#[test]
fn scans_of_several_clean_sources_resolve_the_columns_that_span_them() {
    let dir = tempfile::tempdir().unwrap();
    // No compaction, split or flush of its own: the sources stay as
    // written.
    let opts = EngineOptions {
        compaction_min_files: 100,
        memstore_flush_bytes: 1 << 20,
        region_split_bytes: 1 << 30,
        ..tiny()
    };
    let e = Engine::open(dir.path(), opts).unwrap();
    let three = FamilyOptions {
        max_versions: 3,
        ..Default::default()
    };
    e.create_table("t", vec![("f".to_string(), three)]).unwrap();
    let put = |i: u32, ts: i64, v: &str| {
        Mutation::put(format!("r{i:03}").as_bytes(), "f", b"q", ts, v.as_bytes())
    };
    // Versions of each row, newest first: three files and a memstore, each
    // with one version per column (no deletes), overlapping in r010..r024;
    // in r300..r419 runs of 40 cells alternate between a file and the
    // memstore.
    let mut versions: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    let writes: [(Vec<u32>, i64, &str, bool); 5] = [
        ((0..30).collect(), 1, "a", true),
        ((10..20).collect(), 2, "b", true),
        ((300..340).chain(380..420).collect(), 3, "e", true),
        ((15..25).collect(), 4, "c", false),
        ((340..380).collect(), 5, "f", false),
    ];
    for (rows, ts, v, flush) in writes {
        e.write("t", rows.iter().map(|&i| put(i, ts, v)).collect())
            .unwrap();
        for i in rows {
            versions.entry(i).or_default().insert(0, v);
        }
        if flush {
            e.flush("t").unwrap();
        }
    }
    let files = e.store_files("t").unwrap();
    assert!(
        files.len() == 3
            && files
                .iter()
                .all(|f| f.deletes == 0 && f.versions == Some(1))
    );
    for max_versions in 1..=3u32 {
        for batch_size in [1, 2, 3, 7, 100] {
            for (start, end) in [(0, 30), (12, 22), (20, 28), (300, 420), (0, 500)] {
                let opts = ScanOptions {
                    batch_size,
                    read: ReadOptions {
                        max_versions,
                        ..Default::default()
                    },
                    ..ScanOptions::range(
                        format!("r{start:03}").as_bytes(),
                        format!("r{end:03}").as_bytes(),
                    )
                };
                let got: Vec<(String, String)> = cells(&e.scan("t", &opts).unwrap())
                    .into_iter()
                    .map(|(r, _, _, v)| {
                        (String::from_utf8(r).unwrap(), String::from_utf8(v).unwrap())
                    })
                    .collect();
                let want: Vec<(String, String)> = versions
                    .range(start..end)
                    .flat_map(|(i, vs)| {
                        vs.iter()
                            .take(max_versions as usize)
                            .map(move |v| (format!("r{i:03}"), v.to_string()))
                    })
                    .collect();
                assert_eq!(
                    got, want,
                    "{max_versions} versions, batches of {batch_size}, r{start}..r{end}"
                );
            }
        }
    }
}

/// Cells of rows `row...` scanned in batches of 100.
#[test]
fn a_get_for_a_missing_row_reads_no_data_page() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        memstore_flush_bytes: 1 << 20,
        ..tiny()
    };
    let e = Engine::open(dir.path(), opts).unwrap();
    e.create_table("t", families()).unwrap();
    for i in 0..200u32 {
        let key = format!("key{i:05}").into_bytes();
        e.write("t", vec![Mutation::put(&key, "f", b"q", 1, b"value")])
            .unwrap();
    }
    e.flush("t").unwrap();
    assert_eq!(e.store_files("t").unwrap().len(), 1);
    let read = ReadOptions::default();

    // A present row is read from a data page.
    let before = e.metrics();
    assert_eq!(e.get("t", b"key00007", &[], &read).unwrap().len(), 1);
    assert_eq!(e.metrics().data_reads, before.data_reads + 1);

    // 199 missing rows inside the file's key range (between key00000 and
    // key00199): each get consults the filter once, and only a false
    // positive reads a page.
    let before = e.metrics();
    for i in 0..199u32 {
        let key = format!("key{i:05}x").into_bytes();
        assert!(e.get("t", &key, &[], &read).unwrap().is_empty());
    }
    let after = e.metrics();
    let negatives = after.bloom_negatives - before.bloom_negatives;
    let reads = after.data_reads - before.data_reads;
    assert_eq!(negatives + reads, 199);
    assert!(negatives >= 189, "bloom negatives: {negatives} of 199");

    // Rows outside the file's key range are not even checked.
    let before = e.metrics();
    assert!(e.get("t", b"zzz", &[], &read).unwrap().is_empty());
    assert_eq!(e.metrics(), before);
}

fn scanned_rows(e: &Engine) -> usize {
    let scan = ScanOptions {
        batch_size: 100,
        ..ScanOptions::range(b"row", b"rox")
    };
    cells(&e.scan("t", &scan).unwrap()).len()
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, bool, u8, u8),
    Delete(u8, bool, u8),
    DeleteFamily(u8, bool),
    Get(u8),
    /// Rows `a..b` of every family, or of one (`Some(true)` = g).
    Scan(u8, u8, Option<bool>),
    Flush,
    Compact(bool),
    Split,
    SplitAt(u8),
    Merge,
    Reopen,
    /// Puts (row, family g?, qualifier, value) through one bulk load.
    Bulk(Vec<(u8, bool, u8, u8)>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0u8..40, any::<bool>(), 0u8..3, any::<u8>()).prop_map(|(r, f, q, v)| Op::Put(r, f, q, v)),
        2 => (0u8..40, any::<bool>(), 0u8..3).prop_map(|(r, f, q)| Op::Delete(r, f, q)),
        1 => (0u8..40, any::<bool>()).prop_map(|(r, f)| Op::DeleteFamily(r, f)),
        3 => (0u8..40).prop_map(Op::Get),
        3 => (0u8..40, 0u8..40, proptest::option::of(any::<bool>()))
            .prop_map(|(a, b, g)| Op::Scan(a.min(b), a.max(b), g)),
        1 => Just(Op::Flush),
        1 => any::<bool>().prop_map(Op::Compact),
        1 => Just(Op::Split),
        1 => (1u8..40).prop_map(Op::SplitAt),
        1 => Just(Op::Merge),
        1 => Just(Op::Reopen),
        2 => proptest::collection::vec((0u8..40, any::<bool>(), 0u8..3, any::<u8>()), 1..12)
            .prop_map(Op::Bulk),
    ]
}

fn row(r: u8) -> Vec<u8> {
    format!("row{r:02}").into_bytes()
}

type Oracle = BTreeMap<(Vec<u8>, String, Vec<u8>), Vec<u8>>;

fn expected(oracle: &Oracle, start: &[u8], end: &[u8]) -> Vec<Flat> {
    oracle
        .iter()
        .filter(|((r, _, _), _)| r.as_slice() >= start && r.as_slice() < end)
        .map(|((r, f, q), v)| (r.clone(), f.clone(), q.clone(), v.clone()))
        .collect()
}

fn run_model(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        memstore_flush_bytes: 600,
        region_split_bytes: 6000,
        // A few cells per run: loads spill runs.
        bulk_load_memory: 300,
        ..tiny()
    };
    let mut e = Engine::open(dir.path(), opts.clone()).unwrap();
    e.create_table("t", families()).unwrap();
    let mut oracle = Oracle::new();
    for (ts, op) in ops.into_iter().enumerate() {
        let ts = ts as i64 + 1;
        let fam = |g: bool| if g { "g" } else { "f" };
        match op {
            Op::Put(r, g, q, v) => {
                let val = vec![v; 20];
                e.write("t", vec![Mutation::put(&row(r), fam(g), &[q], ts, &val)])
                    .unwrap();
                oracle.insert((row(r), fam(g).into(), vec![q]), val);
            }
            Op::Delete(r, g, q) => {
                e.write("t", vec![Mutation::delete(&row(r), fam(g), &[q], ts)])
                    .unwrap();
                oracle.remove(&(row(r), fam(g).into(), vec![q]));
            }
            Op::DeleteFamily(r, g) => {
                e.write("t", vec![Mutation::delete_family(&row(r), fam(g), ts)])
                    .unwrap();
                oracle.retain(|(rr, f, _), _| !(rr == &row(r) && f == fam(g)));
            }
            Op::Get(r) => {
                let got: Vec<_> = e
                    .get("t", &row(r), &[], &ReadOptions::default())
                    .unwrap()
                    .into_iter()
                    .map(|c| (c.key.row, c.key.family, c.key.qualifier, c.value))
                    .collect();
                let mut end = row(r);
                end.push(0);
                assert_eq!(got, expected(&oracle, &row(r), &end), "get {r}");
            }
            Op::Scan(a, b, g) => {
                let families = g.map(|g| vec![fam(g).to_string()]).unwrap_or_default();
                let got = cells(
                    &e.scan(
                        "t",
                        &ScanOptions {
                            batch_size: 5,
                            families,
                            ..ScanOptions::range(&row(a), &row(b))
                        },
                    )
                    .unwrap(),
                );
                let mut want = expected(&oracle, &row(a), &row(b));
                if let Some(g) = g {
                    want.retain(|c| c.1 == fam(g));
                }
                assert_eq!(got, want, "scan {a}..{b} of {g:?}");
            }
            Op::Flush => e.flush("t").unwrap(),
            Op::Compact(major) => e.compact("t", major).unwrap(),
            Op::Split => {
                e.split_large_regions("t").unwrap();
            }
            Op::SplitAt(r) => {
                let key = row(r);
                if !e.regions("t").unwrap().iter().any(|x| x.start == key) {
                    e.split_at("t", &key).unwrap();
                }
            }
            Op::Merge => {
                let regions = e.regions("t").unwrap();
                if regions.len() > 1 {
                    e.merge_regions("t", regions[0].id, regions[1].id).unwrap();
                }
            }
            Op::Reopen => {
                drop(e);
                e = Engine::open(dir.path(), opts.clone()).unwrap();
            }
            Op::Bulk(puts) => {
                let mut load = e.bulk_load("t").unwrap();
                for (r, g, q, v) in puts {
                    let val = vec![v; 20];
                    load.add(&row(r), fam(g), &[q], ts, CellKind::Put, &val)
                        .unwrap();
                    oracle.insert((row(r), fam(g).into(), vec![q]), val);
                }
                load.commit().unwrap();
            }
        }
    }
    let got = cells(
        &e.scan(
            "t",
            &ScanOptions {
                batch_size: 3,
                ..ScanOptions::range(b"", b"")
            },
        )
        .unwrap(),
    );
    assert_eq!(got, expected(&oracle, b"", b"\xff"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn engine_matches_a_btreemap(ops in proptest::collection::vec(op(), 1..300)) {
        run_model(ops);
    }
}

#[test]
fn concurrent_scans_of_one_shared_file_agree() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        memstore_flush_bytes: 16 << 20,
        ..tiny()
    };
    let e = std::sync::Arc::new(Engine::open(dir.path(), opts).unwrap());
    e.create_table("t", families()).unwrap();
    let rows: Vec<Mutation> = (0..3000u32)
        .map(|i| Mutation::put(format!("r{i:05}").as_bytes(), "f", b"q", 1, &[b'v'; 64]))
        .collect();
    e.write("t", rows).unwrap();
    e.flush("t").unwrap();
    // The daughters share the parent's file until a major compaction.
    e.split_at("t", b"r01500").unwrap();
    let regions = e.region_ids("t").unwrap();
    assert_eq!(regions.len(), 2);
    std::thread::scope(|s| {
        for t in 0..4 {
            let e = e.clone();
            let region = regions[t % 2];
            s.spawn(move || {
                for _ in 0..20 {
                    let got = cells(&e.scan_region("t", region, &ScanOptions::default()).unwrap());
                    assert_eq!(got.len(), 1500);
                }
            });
        }
    });
}

#[test]
fn concurrent_writers_and_readers_do_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        background: true,
        memstore_flush_bytes: 64 << 10,
        ..tiny()
    };
    let e = std::sync::Arc::new(Engine::open(dir.path(), opts).unwrap());
    e.create_table("t", families()).unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let worker = {
        let e = e.clone();
        std::thread::spawn(move || {
            std::thread::scope(|s| {
                for w in 0..4u32 {
                    let e = e.clone();
                    s.spawn(move || {
                        for i in 0..1500u32 {
                            let key = format!("w{w}-{i:05}");
                            e.write("t", vec![Mutation::put(key.as_bytes(), "f", b"q", 1, b"v")])
                                .unwrap();
                        }
                    });
                }
                for _ in 0..2 {
                    let e = e.clone();
                    s.spawn(move || {
                        for i in 0..3000u32 {
                            let key = format!("w1-{:05}", i % 1500);
                            e.get("t", key.as_bytes(), &[], &ReadOptions::default())
                                .unwrap();
                        }
                    });
                }
            });
            done.send(()).unwrap();
        })
    };
    finished
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("writers and readers deadlocked");
    worker.join().unwrap();
    e.wait_idle();
    let scan = ScanOptions::range(b"", b"");
    assert_eq!(cells(&e.scan("t", &scan).unwrap()).len(), 6000);
}

#[test]
fn families_can_be_added_and_retuned_while_writers_run() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        background: true,
        ..tiny()
    };
    let three = FamilyOptions {
        max_versions: 3,
        ..Default::default()
    };
    let e = std::sync::Arc::new(Engine::open(dir.path(), opts.clone()).unwrap());
    e.create_table("t", vec![("f".into(), three.clone())])
        .unwrap();
    for ts in 1..=3 {
        e.write(
            "t",
            vec![Mutation::put(
                b"r",
                "f",
                b"q",
                ts,
                format!("v{ts}").as_bytes(),
            )],
        )
        .unwrap();
    }
    let all = ReadOptions {
        max_versions: 10,
        ..Default::default()
    };
    assert_eq!(e.get("t", b"r", &[], &all).unwrap().len(), 3);

    // A writer keeps going while the families change under it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (e, stop) = (e.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let row = format!("w{n:06}");
                e.write("t", vec![Mutation::put(row.as_bytes(), "f", b"q", 1, b"x")])
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let one = FamilyOptions {
        max_versions: 1,
        ..Default::default()
    };
    e.alter_families(
        "t",
        vec![("f".into(), one.clone()), ("g".into(), three.clone())],
        b"schema v2".to_vec(),
    )
    .unwrap();
    e.write("t", vec![Mutation::put(b"r", "g", b"q", 1, b"new family")])
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written > 0);

    let check = |e: &Engine| {
        // f now keeps one version; g exists.
        let got = e.get("t", b"r", &[], &all).unwrap();
        let values: Vec<&[u8]> = got.iter().map(|c| c.value.as_slice()).collect();
        assert_eq!(values, vec![&b"v3"[..], &b"new family"[..]]);
        // Every acknowledged write of the writer is there.
        let scan = ScanOptions {
            families: vec!["f".into()],
            ..ScanOptions::range(b"w", b"x")
        };
        assert_eq!(cells(&e.scan("t", &scan).unwrap()).len(), written as usize);
    };
    check(&e);
    assert_eq!(
        e.table_schemas(),
        vec![("t".to_string(), b"schema v2".to_vec())]
    );
    // Removing a family is refused.
    assert!(e
        .alter_families("t", vec![("g".into(), three)], Vec::new())
        .is_err());
    let e = std::sync::Arc::try_unwrap(e).ok().unwrap();
    drop(e);
    let e = Engine::open(dir.path(), opts).unwrap();
    check(&e);
}
