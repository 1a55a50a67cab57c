//! The core must stay pure: no sockets, files, environment or clock (design.md §1-2).
//! This reads every file under `src/core` and fails on a forbidden path.

use std::path::Path;

const FORBIDDEN: &[&str] = &[
    "tokio",
    "axum",
    "sqlx",
    "reqwest",
    "lettre",
    "hyper",
    "tungstenite",
    "std::fs",
    "std::net",
    "std::env",
    "std::process",
    "SystemTime",
    "Instant::now",
    "std::thread::sleep",
];

fn visit(dir: &Path, found: &mut Vec<String>, files: &mut usize) {
    for entry in std::fs::read_dir(dir).expect("src/core is readable") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            visit(&path, found, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            *files += 1;
            let text = std::fs::read_to_string(&path).expect("utf-8 source");
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for f in FORBIDDEN {
                    if code.contains(f) {
                        found.push(format!("{}:{}: {f}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
}

#[test]
fn core_imports_no_io_and_reads_no_clock() {
    let mut found = Vec::new();
    let mut files = 0;
    visit(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core"), &mut found, &mut files);
    assert!(files >= 15, "expected the core's files, saw {files}");
    assert!(found.is_empty(), "impure core:\n{}", found.join("\n"));
}
