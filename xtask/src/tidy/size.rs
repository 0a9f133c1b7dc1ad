//! File size: a source file does one job, and a long one is split along its seams
//! (rust-analyzer's habit), so no file of the workspace's own code is over
//! [`LIMIT`] lines unless its module doc gives the reason.
//!
//! What counts: every `.rs` file under the workspace root, except `target/`, hidden
//! directories (`.git`, `.cargo`), `tests/` directories and `tests.rs` files (the
//! out-of-line form of a `mod tests`). Generated code is not in the tree: `proto` writes
//! it to cargo's `OUT_DIR`. A file's lines are counted without a trailing
//! `#[cfg(test)] mod tests { … }` block (recognised as rustfmt writes it: `#[cfg(test)]`
//! and `mod tests {` at the start of lines, closed by the file's last line `}`).
//!
//! The exception: a line `//! Size: <reason>` among the `//!` lines the file opens with,
//! saying why the file is one piece (e.g. `//! Size: one state machine; its states and
//! transitions read best together`). An empty reason does not count.

use std::path::{Path, PathBuf};

use super::{files_under, read, relative};
use crate::workspace_root;

/// The most lines a source file has (tests aside) without a reason.
const LIMIT: usize = 600;

/// The module-doc line that exempts a file, followed by the reason.
const MARKER: &str = "//! Size:";

#[test]
fn no_source_file_is_over_the_limit_without_a_reason() {
    let root = workspace_root();
    let files: Vec<(String, String)> = source_files(&root)
        .iter()
        .map(|file| (relative(&root, file), read(file)))
        .collect();
    assert!(
        files.iter().any(|(path, _)| path.ends_with("lib.rs")),
        "the walk found no crate root"
    );
    let offenders = oversized(&files, LIMIT);
    assert!(
        offenders.is_empty(),
        "these files are over {LIMIT} lines (tests aside): split them along their seams, \
         or say why they are one piece in a `{MARKER} <reason>` line of their module doc:\n  {}",
        offenders.join("\n  ")
    );
}

#[test]
fn size_rule_reports_a_long_file_and_accepts_a_reason_or_a_long_test_block() {
    let body = |lines: usize| "fn f() {}\n".repeat(lines);
    let tests = format!(
        "#[cfg(test)]\nmod tests {{\n{}}}\n",
        "    fn t() {}\n".repeat(50)
    );
    let files = [
        ("long.rs", format!("//! Long.\n{}", body(10))),
        ("short.rs", format!("//! Short.\n{}", body(8))),
        (
            "reasoned.rs",
            format!("//! Long.\n//!\n//! Size: one parser.\n{}", body(10)),
        ),
        (
            "empty_reason.rs",
            format!("//! Long.\n//! Size:\n{}", body(10)),
        ),
        // The marker counts only in the module doc the file opens with.
        (
            "late_marker.rs",
            format!("//! Long.\n{}//! Size: too late.\n", body(10)),
        ),
        ("with_tests.rs", format!("//! Short.\n{}\n{tests}", body(8))),
        // A `mod tests` that is not last is counted.
        ("tests_first.rs", format!("//! Long.\n{tests}{}", body(8))),
    ]
    .map(|(path, text)| (path.to_owned(), text));
    assert_eq!(
        oversized(&files, 10),
        [
            "long.rs: 11 lines",
            "empty_reason.rs: 12 lines",
            "late_marker.rs: 12 lines",
            "tests_first.rs: 62 lines",
        ]
    );
}

#[test]
fn size_rule_walks_past_target_hidden_and_test_directories() {
    let dir = tempfile::tempdir().expect("temporary directory");
    for file in [
        "a/src/lib.rs",
        "a/src/m/tests.rs",
        "a/tests/api.rs",
        "target/debug/build/x.rs",
        ".cargo/x.rs",
        "b/build.rs",
    ] {
        let path = dir.path().join(file);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("creating a directory");
        std::fs::write(&path, "//! A file.\n").expect("writing a file");
    }
    let found: Vec<String> = source_files(dir.path())
        .iter()
        .map(|file| relative(dir.path(), file))
        .collect();
    assert_eq!(found, ["a/src/lib.rs", "b/build.rs"]);
}

/// The files among `(path, text)` pairs over `limit` lines (a trailing test block
/// aside) without a reason, as `PATH: N lines`.
fn oversized(files: &[(String, String)], limit: usize) -> Vec<String> {
    files
        .iter()
        .filter(|(_, text)| !has_reason(text))
        .filter_map(|(path, text)| {
            let lines = counted_lines(text);
            (lines > limit).then(|| format!("{path}: {lines} lines"))
        })
        .collect()
}

/// Whether the `//!` lines `text` opens with include a [`MARKER`] line with a reason.
fn has_reason(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .take_while(|line| line.starts_with("//!"))
        .filter_map(|line| line.strip_prefix(MARKER))
        .any(|reason| !reason.trim().is_empty())
}

/// The number of lines of `text` before a trailing `#[cfg(test)] mod tests { … }` block,
/// or all of them when there is none.
fn counted_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let last = lines.iter().rposition(|line| !line.trim().is_empty());
    let Some(last) = last else {
        return lines.len();
    };
    let tests = lines.windows(2).rposition(|pair| {
        pair[0].trim_end() == "#[cfg(test)]" && pair[1].trim_end() == "mod tests {"
    });
    match tests {
        // The block runs to the end when the first `}` at the start of a line after its
        // opening is the file's last line.
        Some(start)
            if lines[start + 2..]
                .iter()
                .position(|line| line.starts_with('}'))
                .is_some_and(|close| start + 2 + close == last) =>
        {
            start
        }
        _ => lines.len(),
    }
}

/// Every `.rs` file under `root` that the rule reads, sorted: not in `target/`, a hidden
/// directory or a `tests/` directory, and not a `tests.rs`.
fn source_files(root: &Path) -> Vec<PathBuf> {
    let name = |path: &Path| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    files_under(
        root,
        |dir| {
            let name = name(dir);
            !(name.starts_with('.') || name == "target" || name == "tests")
        },
        |file| file.extension().is_some_and(|e| e == "rs") && name(file) != "tests.rs",
    )
}
