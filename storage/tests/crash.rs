//! Kill -9 a writer at random moments (during flushes, compactions, splits
//! and bulk loads too) and check that every acknowledged batch and load is
//! back, whole, and that no batch or load is half-present.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use arrow::array::AsArray;
use rand::Rng;
use tidebase_storage::{Engine, EngineOptions, ScanOptions};

#[test]
fn every_acknowledged_batch_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::thread_rng();
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut splits_seen = 0;
    let mut loads_seen = 0;
    for round in 0..5u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
            .arg(dir.path())
            .arg((round * 10_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| {
                    let (n, row) = l.split_once(' ')?;
                    Some((row.to_string(), n.parse::<u64>().ok()?))
                })
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1000)));
        child.kill().unwrap();
        child.wait().unwrap();
        let round_acks = reader.join().unwrap();
        assert!(!round_acks.is_empty(), "round {round} acknowledged nothing");
        acked.extend(round_acks);

        let engine = Engine::open(
            dir.path(),
            EngineOptions {
                background: false,
                ..Default::default()
            },
        )
        .unwrap();
        // One scan: row -> values per family.
        let mut found: HashMap<Vec<u8>, Vec<(String, Vec<u8>)>> = HashMap::new();
        for b in engine.scan("t", &ScanOptions::default()).unwrap() {
            let rows = b.column(0).as_binary_view();
            let fams = b.column(1).as_string::<i32>();
            let vals = b.column(4).as_binary_view();
            for i in 0..b.num_rows() {
                found
                    .entry(rows.value(i).to_vec())
                    .or_default()
                    .push((fams.value(i).to_string(), vals.value(i).to_vec()));
            }
        }
        for (row, n) in &acked {
            let v = n.to_le_bytes().to_vec();
            let expected = vec![("f".to_string(), v.clone()), ("g".to_string(), v)];
            assert_eq!(
                found.get(row.as_bytes()),
                Some(&expected),
                "row {row} (batch {n}) after round {round}"
            );
        }
        // No batch is half-present: every row has both families.
        assert!(
            found.values().all(|f| f.len() == 2),
            "a batch is half-present after round {round}"
        );
        // No load is half-present: each load's rows carry its number.
        let mut per_load: HashMap<&[u8], u64> = HashMap::new();
        for (row, families) in &found {
            if row.starts_with(b"b") {
                *per_load.entry(families[0].1.as_slice()).or_default() += 1;
            }
        }
        assert!(
            per_load.values().all(|&n| n == 50),
            "a bulk load is half-present after round {round}: {per_load:?}"
        );
        loads_seen += per_load.len();
        let families_per_row = found;
        assert!(families_per_row.len() >= acked.len());
        splits_seen = splits_seen.max(engine.regions("t").unwrap().len());
    }
    assert!(loads_seen > 0, "no bulk load committed before a kill");
    assert!(
        splits_seen > 1,
        "the writer never split a region; the test did not exercise splits"
    );
}
