//! The docs' links: every relative link in README.md, ARCHITECTURE.md and `docs/**/*.md`
//! names a file or directory that exists, and its `#anchor` a heading of the Markdown
//! file it points to.
//!
//! Links are `[text](target)`, `![alt](target)` and reference definitions
//! `[label]: target`, outside fenced code blocks and code spans. Links with a scheme
//! (`https:`, `mailto:`, …) are not followed. Anchors are GitHub's heading slugs:
//! lowercase, punctuation other than `-` and `_` removed, each space a `-`, and the
//! second and later headings of one slug suffixed `-1`, `-2`, …; an HTML `id="…"` or
//! `name="…"` counts as an anchor too.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

use super::{files_under, read, relative};
use crate::workspace_root;

/// The Markdown files at the root whose links are checked (with `docs/`).
const ROOT_DOCS: [&str; 2] = ["README.md", "ARCHITECTURE.md"];

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = workspace_root();
    let files = doc_files(&root);
    assert!(
        files.contains(&root.join("README.md")),
        "the walk found no README.md: {files:?}"
    );
    let broken = broken_links(&root, &files);
    assert!(
        broken.is_empty(),
        "these links lead nowhere:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn link_rule_reports_missing_files_and_anchors_but_not_code_or_urls() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let root = dir.path();
    let write = |path: &str, text: &str| {
        let path = root.join(path);
        fs::create_dir_all(path.parent().expect("a parent")).expect("creating a directory");
        fs::write(&path, text).expect("writing a file");
    };
    write(
        "README.md",
        "# Trellis\n\n\
         See [the guide](docs/guide.md#the-two-commands), [setup](docs/guide.md#set-up), \
         [config](docs/guide.md#config-1) and [the code](platform/).\n\
         Broken: [gone](docs/gone.md), [no heading](docs/guide.md#no-such-heading), \
         [self](#trellis) and [bad self](#nothing).\n\
         ![a figure](docs/figure.png) and [a ref][r].\n\n\
         [r]: docs/missing.md\n\n\
         Not followed: [web](https://example.com/x.md), [mail](mailto:a@example.com), \
         `[code](nowhere.md)`.\n\n\
         ```md\n[fenced](nowhere.md)\n```\n",
    );
    write(
        "docs/guide.md",
        "# Guide\n\n## The two commands\n\n## Set up!\n\n## Config\n\n## Config\n\n\
         Back to the [README](../README.md#trellis) and [up](../README.md#up).\n",
    );
    write("platform/src/lib.rs", "//! The platform.\n");
    let files = doc_files(root);
    assert_eq!(
        files.iter().map(|f| relative(root, f)).collect::<Vec<_>>(),
        ["README.md", "docs/guide.md"]
    );
    assert_eq!(
        broken_links(root, &files),
        [
            "README.md:4: docs/gone.md (no such file)",
            "README.md:4: docs/guide.md#no-such-heading (no such heading)",
            "README.md:4: #nothing (no such heading)",
            "README.md:5: docs/figure.png (no such file)",
            "README.md:7: docs/missing.md (no such file)",
            "docs/guide.md:11: ../README.md#up (no such heading)",
        ]
    );
}

#[test]
fn slugs_follow_github() {
    let slugs = anchors(
        "# Hello, World!\n## `cargo xtask up` — the *first* run\n## Hello, World\n\
         ## snake_case and kebab-case\n### [Linked](x.md) heading\nSetext\n===\n\
         ```\n# not a heading\n```\n<a id=\"custom\"></a>\n",
    );
    assert_eq!(
        slugs,
        [
            "hello-world",
            "cargo-xtask-up--the-first-run",
            "hello-world-1",
            "snake_case-and-kebab-case",
            "linked-heading",
            "setext",
            "custom",
        ]
        .map(String::from)
        .into_iter()
        .collect::<BTreeSet<_>>()
    );
}

/// README.md and ARCHITECTURE.md under `root` (those that exist), then every `.md` under
/// `root/docs`, sorted.
fn doc_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ROOT_DOCS
        .iter()
        .map(|name| root.join(name))
        .filter(|path| path.is_file())
        .collect();
    let docs = files_under(
        &root.join("docs"),
        |_| true,
        |file| file.extension().is_some_and(|e| e == "md"),
    );
    files.extend(docs);
    files
}

/// Every relative link in `files` (paths under `root`) that leads nowhere, as
/// `FILE:LINE: TARGET (why)`.
fn broken_links(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut broken = Vec::new();
    for file in files {
        let text = read(file);
        for (line, target) in links(&text) {
            if has_scheme(&target) {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let dir = file.parent().unwrap_or(root);
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                normalise(&dir.join(percent_decoded(path)))
            };
            let markdown = resolved.extension().is_some_and(|e| e == "md");
            let why = if !resolved.exists() {
                Some("no such file")
            } else if !anchor.is_empty()
                && markdown
                && !anchors(&read(&resolved)).contains(&anchor.to_lowercase())
            {
                Some("no such heading")
            } else {
                None
            };
            if let Some(why) = why {
                broken.push(format!("{}:{line}: {target} ({why})", relative(root, file)));
            }
        }
    }
    broken
}

/// The link targets in Markdown `text` with their 1-based line numbers, outside fenced
/// code blocks and code spans.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in prose_lines(text) {
        let line = without_code_spans(line);
        // A reference definition: `[label]: target`.
        if let Some(rest) = line.trim_start().strip_prefix('[')
            && let Some((_, definition)) = rest.split_once("]:")
            && let Some(target) = definition.split_whitespace().next()
        {
            found.push((number, unbracketed(target)));
            continue;
        }
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let inside = after[..end].trim();
            // `(target "title")`: the target is the first word.
            if let Some(target) = inside.split_whitespace().next() {
                found.push((number, unbracketed(target)));
            }
            rest = &after[end..];
        }
    }
    found
}

/// The slugs a Markdown file's headings (ATX and setext, outside code blocks) and HTML
/// `id`/`name` attributes give, as GitHub makes them.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut slugs = BTreeSet::new();
    let mut taken: Vec<String> = Vec::new();
    let lines = prose_lines(text);
    for (i, (number, line)) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let heading = if trimmed.starts_with('#') {
            let text = trimmed.trim_start_matches('#');
            (text.is_empty() || text.starts_with(' '))
                .then(|| text.trim().trim_end_matches('#').trim_end())
        } else {
            // A setext heading: a line of text underlined by `===` or `---` on the next.
            lines
                .get(i + 1)
                .filter(|(next, underline)| {
                    *next == number + 1
                        && !trimmed.is_empty()
                        && !trimmed.starts_with('|')
                        && underline.len() >= 3
                        && (underline.trim().chars().all(|c| c == '=')
                            || underline.trim().chars().all(|c| c == '-'))
                })
                .map(|_| trimmed.trim())
        };
        if let Some(heading) = heading {
            let base = slug(heading);
            let count = taken.iter().filter(|s| **s == base).count();
            taken.push(base.clone());
            slugs.insert(if count == 0 {
                base
            } else {
                format!("{base}-{count}")
            });
        }
        for attribute in ["id=\"", "name=\""] {
            for (at, _) in line.match_indices(attribute) {
                let value = &line[at + attribute.len()..];
                if let Some(end) = value.find('"') {
                    slugs.insert(value[..end].to_lowercase());
                }
            }
        }
    }
    slugs
}

/// GitHub's slug of a heading's text: link syntax reduced to its text, lowercase,
/// characters other than letters, digits, spaces, `-` and `_` removed, spaces as `-`.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    // `[text](target)` reads as `text`.
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|c| open + c) else {
            break;
        };
        let Some(end) = rest[close..].find(')').map(|e| close + e) else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The lines of `text` outside fenced code blocks (``` or ~~~), with 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(marker)) => fence = Some(marker),
            (Some(open), Some(marker)) if open == marker => fence = None,
            (None, None) => lines.push((i + 1, line)),
            _ => {}
        }
    }
    lines
}

/// `line` with its code spans (`` `…` ``) removed.
fn without_code_spans(line: &str) -> String {
    line.split('`').step_by(2).collect::<Vec<_>>().join(" ")
}

/// A target without the `<…>` it may be written in.
fn unbracketed(target: &str) -> String {
    target
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(target)
        .to_owned()
}

/// Whether `target` starts with a URI scheme (`https:`, `mailto:`, …).
fn has_scheme(target: &str) -> bool {
    target.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// `path` with `%XX` escapes decoded (`%20` is a space).
fn percent_decoded(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `path` with `.` and `..` resolved lexically (so `docs/../README.md` is found even
/// when `docs/` does not exist).
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
