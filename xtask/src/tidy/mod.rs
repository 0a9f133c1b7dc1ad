//! Repository rules as tests, in the manner of rust-analyzer's `xtask/src/tidy.rs`: each
//! test reads the source tree under [`workspace_root`] and fails naming every offender,
//! and each rule's checker has a test that shows it fails when the rule is broken.
//!
//! The rules come from DESIGN.md: every module says what it is; services meet only over
//! gRPC, never as crate dependencies ([`manifests`]); the platform's modules form layers
//! with no cycle ([`module_graph`]); only a service's gRPC layer, peers and crate root
//! know protobuf types, and its domain knows neither tonic nor sea-orm ([`layers`]); no
//! source file grows past the size limit without a reason ([`size`]); and every relative
//! link in the docs resolves ([`links`]).

mod layers;
mod links;
mod manifests;
mod module_graph;
mod size;

use std::fs;
use std::path::{Path, PathBuf};

use crate::workspace_root;

#[test]
fn every_source_file_opens_with_a_module_doc_comment() {
    let root = workspace_root();
    let mut source_dirs = vec![
        root.join("platform/src"),
        root.join("proto/src"),
        root.join("xtask/src"),
        root.join("integration-tests/src"),
    ];
    for parent in ["services", "examples"] {
        source_dirs.extend(
            subdirs(&root.join(parent))
                .into_iter()
                .map(|d| d.join("src")),
        );
    }
    let files: Vec<PathBuf> = source_dirs.iter().flat_map(|d| rust_files(d)).collect();
    assert!(
        files.contains(&root.join("platform/src/lib.rs")),
        "the walk found no platform source: {files:?}"
    );
    let offenders: Vec<String> = files
        .iter()
        .filter(|file| {
            let text = read(file);
            let first = text.lines().map(str::trim).find(|l| !l.is_empty());
            !first.is_some_and(|l| l.starts_with("//!"))
        })
        .map(|file| relative(&root, file))
        .collect();
    assert!(
        offenders.is_empty(),
        "these files do not open with a `//!` module doc comment:\n  {}",
        offenders.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------
// The source tree.

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The directories directly in `dir` (none when it does not exist), sorted.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Every `.rs` file under `dir`, recursively (none when it does not exist), sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    files_under(
        dir,
        |_| true,
        |file| file.extension().is_some_and(|e| e == "rs"),
    )
}

/// Every file under `dir` that `keep_file` accepts, descending only into directories
/// that `enter` accepts (none when `dir` does not exist), sorted.
fn files_under(
    dir: &Path,
    enter: impl Fn(&Path) -> bool,
    keep_file: impl Fn(&Path) -> bool,
) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            if path.is_dir() {
                if enter(&path) {
                    pending.push(path);
                }
            } else if keep_file(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
