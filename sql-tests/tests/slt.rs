//! Runs every `slt/**/*.slt` file over the real wire, once with the simple
//! protocol and once with the extended protocol, each against a fresh server.

use std::path::{Path, PathBuf};

use tidebase_sql_tests::{run_file, Protocol};

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            slt_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "slt") {
            out.push(path);
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("slt");
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut files = Vec::new();
    slt_files(&root, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no .slt files under {}", root.display());
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut failures = Vec::new();
    let mut ran = 0;
    for file in &files {
        let name = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        for protocol in [Protocol::Simple, Protocol::Extended] {
            ran += 1;
            match runtime.block_on(run_file(file, protocol)) {
                Ok(()) => println!("ok      {name} ({protocol:?})"),
                Err(e) => {
                    println!("FAILED  {name} ({protocol:?})\n{e}");
                    failures.push(format!("{name} ({protocol:?})"));
                }
            }
        }
    }
    println!("{ran} runs, {} failed", failures.len());
    if !failures.is_empty() {
        for f in &failures {
            println!("  failed: {f}");
        }
        std::process::exit(1);
    }
}
