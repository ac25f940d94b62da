//! The LIFECYCLE.md files stay true to the code: every `src/file.rs:N` anchor
//! points at a function, and every invariant names a test that exists.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn lifecycle_docs() -> Vec<(String, String)> {
    let crates = workspace().join("crates");
    let mut docs: Vec<(String, String)> = std::fs::read_dir(&crates)
        .unwrap()
        .filter_map(|e| {
            let dir = e.ok()?.path();
            let text = std::fs::read_to_string(dir.join("LIFECYCLE.md")).ok()?;
            Some((dir.file_name()?.to_str()?.to_owned(), text))
        })
        .collect();
    docs.sort();
    assert!(docs.len() >= 3, "found only {docs:?}");
    docs
}

/// The backticked spans of a line.
fn spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

#[test]
fn every_anchor_points_at_a_function() {
    let mut wrong = Vec::new();
    for (krate, text) in lifecycle_docs() {
        for (n, line) in text.lines().enumerate() {
            for span in spans(line) {
                let Some((file, at)) = span.split_once(".rs:") else {
                    continue;
                };
                let Ok(at) = at.parse::<usize>() else {
                    continue;
                };
                let path = workspace()
                    .join("crates")
                    .join(&krate)
                    .join(format!("{file}.rs"));
                let code = std::fs::read_to_string(&path).unwrap_or_default();
                let target = code.lines().nth(at.saturating_sub(1)).unwrap_or("");
                if !target.contains("fn ") {
                    wrong.push(format!(
                        "{krate}/LIFECYCLE.md:{}: `{span}` is {target:?}",
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "stale anchors:\n{}", wrong.join("\n"));
}

/// A test file named in a doc: `tern/tests/x.rs` from the crates directory, or a
/// bare `x.rs` in some crate's tests.
fn test_file(name: &str) -> Option<PathBuf> {
    let crates = workspace().join("crates");
    if name.contains('/') {
        let p = crates.join(name);
        return p.exists().then_some(p);
    }
    std::fs::read_dir(&crates).ok()?.find_map(|e| {
        let p = e.ok()?.path().join("tests").join(name);
        p.exists().then_some(p)
    })
}

#[test]
fn every_invariant_names_a_test_that_exists() {
    let mut wrong = Vec::new();
    let mut named = 0;
    for (krate, text) in lifecycle_docs() {
        for (n, line) in text.lines().enumerate() {
            if !line.starts_with('|') {
                continue;
            }
            let Some(cell) = line.trim_end_matches('|').rsplit('|').next() else {
                continue;
            };
            let spans = spans(cell);
            let Some(file) = spans.first().filter(|s| s.ends_with(".rs")) else {
                continue;
            };
            let Some(path) = test_file(file) else {
                wrong.push(format!("{krate}/LIFECYCLE.md:{}: no file {file}", n + 1));
                continue;
            };
            let code = std::fs::read_to_string(&path).unwrap();
            for test in &spans[1..] {
                named += 1;
                if !code.contains(&format!("fn {test}(")) {
                    wrong.push(format!(
                        "{krate}/LIFECYCLE.md:{}: no test {test} in {file}",
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(named >= 10, "found only {named} named tests");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
