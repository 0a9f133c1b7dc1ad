//! The platform's module graph: its top-level modules, with the modules each refers to
//! through `crate::` and `super::` paths (read with proc-macro2's lexer, so comments and
//! strings do not count), must form layers with no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{read, rust_files};
use crate::workspace_root;

/// Module names mapped to the module names they refer to.
type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn platform_modules_form_no_cycle() {
    let graph = platform_module_graph(&workspace_root());
    assert!(
        graph.len() >= 2,
        "found fewer than two platform modules: {graph:?}"
    );
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "the platform's modules must form layers, but these cycles exist:\n  {}",
        found
            .iter()
            .map(|c| c.join(" -> "))
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

#[test]
fn cycle_detector_reports_every_cycle_with_its_path() {
    let graph = graph(&[
        ("a", "b"),
        ("b", "c"),
        ("c", "a"),
        ("c", "d"),
        ("d", "e"),
        ("e", "d"),
    ]);
    assert_eq!(
        cycles(&graph),
        [vec!["a", "b", "c", "a"], vec!["d", "e", "d"]]
    );
}

#[test]
fn cycle_detector_passes_a_dag() {
    let graph = graph(&[("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("a", "d")]);
    assert!(cycles(&graph).is_empty(), "{:?}", cycles(&graph));
}

#[test]
fn references_follow_crate_and_super_paths_but_not_comments_or_strings() {
    let source = r##"
        //! Mentions crate::doc in a comment.
        use crate::{alpha, beta::{B1, B2}, gamma::Gamma as G};
        use crate::delta::Delta;
        use super::epsilon;
        /* crate::block /* nested crate::nested */ */
        fn f<'a>(x: &'a str) -> char {
            let _ = "crate::string";
            let _ = r#"crate::raw"#;
            crate::zeta::call();
            $crate::eta::run!();
            pub(crate) fn g() {}
            '{'
        }
        mod tests {
            use super::*;
            use super::super::theta;
        }
    "##;
    // In platform/src/m.rs: `super` from the file is the crate root, from `tests` it is `m`.
    let names = references(source, &["m".to_owned()]);
    assert_eq!(
        names,
        [
            "alpha", "beta", "delta", "epsilon", "eta", "gamma", "theta", "zeta"
        ]
        .map(String::from)
        .into_iter()
        .collect::<BTreeSet<_>>()
    );
    // In platform/src/m/n.rs, `super` is `m` itself: only `super::super` leaves it.
    let names = references(source, &["m".to_owned(), "n".to_owned()]);
    assert!(
        !names.contains("epsilon") && !names.contains("theta"),
        "{names:?}"
    );
}

#[test]
fn root_reexports_map_names_to_their_modules() {
    let lib = "pub mod config;\npub use config::{ConfigError, inner::Deep as Renamed};\npub use runtime::run;\nuse std::fmt;";
    let modules: BTreeSet<String> = ["config", "runtime"].map(String::from).into();
    let reexports = root_reexports(lib, &modules);
    assert_eq!(
        reexports,
        [
            ("ConfigError", "config"),
            ("Renamed", "config"),
            ("run", "runtime")
        ]
        .map(|(n, m)| (n.to_owned(), m.to_owned()))
        .into()
    );
}

/// The top-level modules of `platform/src` (`X.rs` and `X/`), each with the top-level
/// modules its files refer to through `crate::` or `super::` paths (itself excluded).
fn platform_module_graph(root: &Path) -> Graph {
    let src = root.join("platform/src");
    let mut files: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for file in rust_files(&src) {
        let Ok(rel) = file.strip_prefix(&src) else {
            continue;
        };
        let path = module_path(rel);
        if matches!(path.as_slice(), [only] if only == "lib" || only == "main") {
            continue;
        }
        if let Some(top) = path.first() {
            files.entry(top.clone()).or_default().push(file);
        }
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let reexports = root_reexports(&read(&src.join("lib.rs")), &modules);

    let mut graph = Graph::new();
    for (module, module_files) in &files {
        let edges = graph.entry(module.clone()).or_default();
        for file in module_files {
            let path = module_path(file.strip_prefix(&src).unwrap_or(file));
            for name in references(&read(file), &path) {
                let target = if modules.contains(&name) {
                    Some(&name)
                } else {
                    reexports.get(&name)
                };
                if let Some(target) = target.filter(|t| *t != module) {
                    edges.insert(target.clone());
                }
            }
        }
    }
    graph
}

/// The module path of a file from its path relative to `src/`: `["server"]` for
/// `server.rs` and `server/mod.rs`, `["server", "trace"]` for `server/trace.rs`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut path: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if path.last().is_some_and(|last| last == "mod") {
        path.pop();
    }
    path
}

/// Every elementary cycle of `graph`, each as its path from its least node back to that
/// node (`["a", "b", "a"]`), in order.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    fn walk(graph: &Graph, start: &str, path: &mut Vec<String>, found: &mut Vec<Vec<String>>) {
        let Some(node) = path.last().cloned() else {
            return;
        };
        for next in graph.get(&node).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(next.clone());
                found.push(cycle);
            } else if next.as_str() > start && !path.contains(next) {
                path.push(next.clone());
                walk(graph, start, path, found);
                path.pop();
            }
        }
    }
    let mut found = Vec::new();
    for start in graph.keys() {
        walk(graph, start, &mut vec![start.clone()], &mut found);
    }
    found.sort();
    found
}

/// A graph from its edges.
fn graph(edges: &[(&str, &str)]) -> Graph {
    let mut graph = Graph::new();
    for (from, to) in edges {
        graph
            .entry((*from).to_owned())
            .or_default()
            .insert((*to).to_owned());
        graph.entry((*to).to_owned()).or_default();
    }
    graph
}

/// The names at the crate root that `source` refers to, for a file whose module path in
/// the crate is `file_module` (`["server"]` for `server.rs` or `server/mod.rs`,
/// `["server", "trace"]` for `server/trace.rs`): the first segment after `crate::` (or
/// `$crate::`), and after a `super::` chain that climbs to the crate root, counting inline
/// `mod x { … }` blocks. Grouped imports (`use crate::{a, b::C}`) give every group member.
fn references(source: &str, file_module: &[String]) -> BTreeSet<String> {
    let tokens = lex(source);
    let mut names = BTreeSet::new();
    // Inline modules open at a brace depth: (depth inside them, name).
    let mut inline: Vec<(usize, String)> = Vec::new();
    let mut depth: usize = 0;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Open => {
                depth += 1;
                if let (Some(Token::Ident(name)), Some(Token::Ident(keyword))) = (
                    i.checked_sub(1).and_then(|j| tokens.get(j)),
                    i.checked_sub(2).and_then(|j| tokens.get(j)),
                ) && keyword == "mod"
                {
                    inline.push((depth, name.clone()));
                }
            }
            Token::Close => {
                if inline.last().is_some_and(|(d, _)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Token::Ident(word) if word == "crate" && tokens.get(i + 1) == Some(&Token::PathSep) => {
                let mut at = i + 2;
                let mut paths = Vec::new();
                use_tree(&tokens, &mut at, &[], &mut paths);
                names.extend(paths.into_iter().filter_map(|(p, _)| p.into_iter().next()));
            }
            Token::Ident(word)
                if word == "super"
                    && tokens.get(i + 1) == Some(&Token::PathSep)
                    && i.checked_sub(1).and_then(|j| tokens.get(j)) != Some(&Token::PathSep) =>
            {
                let mut climbs = 0;
                let mut at = i;
                while matches!(tokens.get(at), Some(Token::Ident(w)) if w == "super")
                    && tokens.get(at + 1) == Some(&Token::PathSep)
                {
                    climbs += 1;
                    at += 2;
                }
                let module_depth = file_module.len() + inline.len();
                if module_depth == climbs {
                    let mut paths = Vec::new();
                    use_tree(&tokens, &mut at, &[], &mut paths);
                    names.extend(paths.into_iter().filter_map(|(p, _)| p.into_iter().next()));
                }
                i = at.max(i + 1);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// The names a crate root (`lib.rs`) imports from its own `modules`, mapped to the module:
/// `pub use config::{ConfigError, X as Y};` maps `ConfigError` and `Y` to `config`, so that
/// `crate::ConfigError` counts as a reference to `config`. Globs are not followed.
fn root_reexports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let tokens = lex(lib);
    let mut reexports = BTreeMap::new();
    let mut depth: usize = 0;
    for (i, token) in tokens.iter().enumerate() {
        match token {
            Token::Open => depth += 1,
            Token::Close => depth = depth.saturating_sub(1),
            Token::Ident(word) if word == "use" && depth == 0 => {
                let mut at = i + 1;
                let mut paths = Vec::new();
                use_tree(&tokens, &mut at, &[], &mut paths);
                for (path, binding) in paths {
                    let mut segments = path.iter().skip_while(|s| *s == "crate" || *s == "self");
                    if let (Some(module), Some(_), Some(binding)) =
                        (segments.next(), segments.next(), binding)
                        && modules.contains(module)
                    {
                        reexports.insert(binding, module.clone());
                    }
                }
            }
            _ => {}
        }
    }
    reexports
}

/// Parses the use tree (or plain path) at `tokens[*at..]` below `prefix`, pushing each path
/// it names with the name it binds (`None` for a glob), and leaves `*at` after it.
fn use_tree(
    tokens: &[Token],
    at: &mut usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, Option<String>)>,
) {
    let mut path = prefix.to_vec();
    loop {
        match tokens.get(*at) {
            Some(Token::Ident(segment)) if segment != "as" => {
                path.push(segment.clone());
                *at += 1;
                if tokens.get(*at) == Some(&Token::PathSep) {
                    *at += 1;
                    continue;
                }
                let binding = match (tokens.get(*at), tokens.get(*at + 1)) {
                    (Some(Token::Ident(word)), Some(Token::Ident(alias))) if word == "as" => {
                        *at += 2;
                        alias.clone()
                    }
                    _ if segment == "self" => {
                        path.pop();
                        path.last().cloned().unwrap_or_default()
                    }
                    _ => segment.clone(),
                };
                out.push((path, Some(binding)));
                return;
            }
            Some(Token::Star) => {
                *at += 1;
                out.push((path, None));
                return;
            }
            Some(Token::Open) => {
                *at += 1;
                loop {
                    match tokens.get(*at) {
                        None => return,
                        Some(Token::Close) => {
                            *at += 1;
                            return;
                        }
                        Some(Token::Comma) => *at += 1,
                        Some(_) => {
                            let before = *at;
                            use_tree(tokens, at, &path, out);
                            if *at == before {
                                *at += 1;
                            }
                        }
                    }
                }
            }
            _ => {
                if path.len() > prefix.len() {
                    let binding = path.last().cloned();
                    out.push((path, binding));
                }
                return;
            }
        }
    }
}

/// What [`references`] needs of Rust's tokens; comments, literals and lifetimes are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Token {
    Ident(String),
    /// `::`
    PathSep,
    /// `{`
    Open,
    /// `}`
    Close,
    Comma,
    Star,
    Other,
}

/// `source`'s tokens, by proc-macro2's Rust lexer (which drops comments and knows every
/// literal form), flattened with braces kept as [`Token::Open`] / [`Token::Close`].
pub(super) fn lex(source: &str) -> Vec<Token> {
    let stream: proc_macro2::TokenStream = source
        .parse()
        .unwrap_or_else(|err| panic!("not Rust tokens: {err:?}"));
    let mut tokens = Vec::new();
    flatten(stream, &mut tokens);
    tokens
}

fn flatten(stream: proc_macro2::TokenStream, out: &mut Vec<Token>) {
    use proc_macro2::{Delimiter, Spacing, TokenTree};
    let mut trees = stream.into_iter().peekable();
    while let Some(tree) = trees.next() {
        match tree {
            TokenTree::Ident(ident) => {
                let word = ident.to_string();
                let word = word.strip_prefix("r#").map_or(word.clone(), str::to_owned);
                out.push(Token::Ident(word));
            }
            TokenTree::Punct(punct) => out.push(match punct.as_char() {
                ':' if punct.spacing() == Spacing::Joint
                    && matches!(trees.peek(), Some(TokenTree::Punct(next)) if next.as_char() == ':') =>
                {
                    trees.next();
                    Token::PathSep
                }
                ',' => Token::Comma,
                '*' => Token::Star,
                _ => Token::Other,
            }),
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Brace => (Some(Token::Open), Some(Token::Close)),
                    Delimiter::None => (None, None),
                    Delimiter::Parenthesis | Delimiter::Bracket => {
                        (Some(Token::Other), Some(Token::Other))
                    }
                };
                out.extend(open);
                flatten(group.stream(), out);
                out.extend(close);
            }
            TokenTree::Literal(_) => {}
        }
    }
}
