//! The guest's layering, checked on its sources: `kernel/` imports neither
//! `xcall` nor `workload`, and `xcall/` does not import `workload` (the
//! layers above plug into the kernel through registration points at boot).
//! `cargo test --test layers` runs it alone.

use std::fs;
use std::path::{Path, PathBuf};

/// The layers, lowest first, with the modules each may not name.
const RULES: &[(&str, &[&str])] = &[("kernel", &["xcall", "workload"]), ("xcall", &["workload"])];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines of `source` that reach one of `forbidden` through `crate::`,
/// also inside a grouped `use crate::{...}` (comments are skipped).
fn upward_references(source: &str, forbidden: &[&str]) -> Vec<(usize, String)> {
    let mut hits = Vec::new();
    let mut in_group = false;
    for (n, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let starts_group = code.contains("crate::{");
        let bad = forbidden.iter().any(|m| {
            code.contains(&format!("crate::{m}"))
                || ((in_group || starts_group)
                    && code
                        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .any(|w| w == *m))
        });
        if bad {
            hits.push((n + 1, line.trim().to_string()));
        }
        if starts_group {
            in_group = true;
        }
        if in_group && code.contains('}') {
            in_group = false;
        }
    }
    hits
}

#[test]
fn test_layers_guest_imports_only_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/src");
    let mut violations = Vec::new();
    for (layer, forbidden) in RULES {
        let mut files = Vec::new();
        rust_files(&src.join(layer), &mut files);
        assert!(!files.is_empty(), "no sources under guest/src/{layer}");
        for f in files {
            let text = fs::read_to_string(&f).expect("a readable source");
            for (line, code) in upward_references(&text, forbidden) {
                violations.push(format!("{}:{line}: {code}", f.display()));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "upward imports (kernel <- xcall <- workload):\n{}",
        violations.join("\n")
    );
}

#[test]
fn test_layers_checker_catches_upward_imports() {
    let forbidden = &["xcall", "workload"];
    assert_eq!(
        upward_references("use crate::xcall::pv;", forbidden).len(),
        1
    );
    assert_eq!(
        upward_references("    crate::workload::floor::on_ipi();", forbidden).len(),
        1
    );
    let grouped = "use crate::{\n    kernel::arch,\n    xcall,\n};";
    assert_eq!(
        upward_references(grouped, forbidden),
        [(3, "xcall,".to_string())]
    );
    assert!(upward_references("use crate::kernel::{arch, sched};", forbidden).is_empty());
    assert!(upward_references("// crate::xcall is above us", forbidden).is_empty());
}
