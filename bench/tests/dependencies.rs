//! Workspace hygiene: every dependency a crate declares is used by it
//! (named in its code), so `cargo tree` and the build stay honest — the
//! check `cargo-machete` makes, without installing it. A dependency used
//! only for its side effects must be listed in `IMPLICIT` with why.

use std::path::{Path, PathBuf};

/// Crates depended on without naming them in code.
const IMPLICIT: &[(&str, &str)] = &[];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn sources(dir: &Path, out: &mut String) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            out.push('\n');
        }
    }
}

/// Whether `code` names the crate `dep` (as `dep::`, `use dep`, `dep!`, `extern crate dep`).
fn names(code: &str, dep: &str) -> bool {
    let id = dep.replace('-', "_");
    let mut at = 0;
    while let Some(i) = code[at..].find(&id) {
        let start = at + i;
        let end = start + id.len();
        at = end;
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[end..];
        if rest.chars().next().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if rest.starts_with("::") || rest.starts_with('!') || rest.starts_with(';') || rest.starts_with(" as ") {
            return true;
        }
        if code[..start].trim_end().ends_with("use") || code[..start].trim_end().ends_with("crate") {
            return true;
        }
    }
    false
}

#[test]
fn every_declared_dependency_is_used() {
    let root = workspace();
    let ws: toml::Value = toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    let members: Vec<String> = ws["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    let mut unused = Vec::new();
    for m in &members {
        let dir = root.join(m);
        let manifest: toml::Value = toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
        // Benches and tests may use the crate's own dependencies too.
        let mut all = String::new();
        for d in ["src", "tests", "benches", "examples"] {
            sources(&dir.join(d), &mut all);
        }
        for (table, code) in [("dependencies", &all), ("dev-dependencies", &all)] {
            let Some(deps) = manifest.get(table).and_then(|t| t.as_table()) else {
                continue;
            };
            for (dep, spec) in deps {
                let _ = spec;
                if IMPLICIT.iter().any(|(d, _)| d == dep) || names(code, dep) {
                    continue;
                }
                unused.push(format!("{m}: [{table}] {dep}"));
            }
        }
    }
    assert!(
        unused.is_empty(),
        "declared and not used (remove them, or list them in IMPLICIT with why):\n{}",
        unused.join("\n")
    );
}

#[test]
fn the_check_sees_what_it_should() {
    assert!(names("use tokio::net::TcpStream;", "tokio"));
    assert!(names("let x = serde_json::to_string(&v);", "serde-json"));
    assert!(names("tracing::info!(\"x\")", "tracing"));
    assert!(!names("let tokio_like = 1;", "tokio"));
    assert!(!names("// mytokio::x", "tokio"));
    assert!(
        !names("use pingora_core::x;", "pingora"),
        "a prefix of another crate is not it"
    );
}
