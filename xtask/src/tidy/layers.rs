//! The layers inside a service crate (DESIGN.md, "Layout"): only the gRPC layer, the
//! calls out and the crate root know protobuf types, and the domain knows neither the
//! transport nor the database.
//!
//! Both rules read the code of every crate under `services/` and `examples/` (their
//! `src/`; `tests/` directories are exempt) with proc-macro2's lexer, so a name in a
//! comment or a string does not count, while any path or `use` naming the crate does.

use std::path::Path;

use super::module_graph::{Token, lex};
use super::{read, relative, rust_files, subdirs};
use crate::workspace_root;

/// The crate the protobuf types come from, as Rust code names it.
const PROTO_CRATE: &str = "trellis_proto";

/// The crates the domain must not name: the transport and the database.
const NOT_IN_DOMAIN: [&str; 2] = ["tonic", "sea_orm"];

/// A source file: its path relative to the workspace root (with `/` separators) and its
/// text.
type Source = (String, String);

#[test]
fn trellis_proto_is_imported_only_by_a_services_grpc_peers_and_lib() {
    let files = service_sources(&workspace_root());
    assert!(
        files.iter().any(|(path, _)| path.ends_with("/src/grpc.rs")),
        "the walk found no service's grpc.rs"
    );
    let offenders = proto_outside_its_homes(&files);
    assert!(
        offenders.is_empty(),
        "only a service's src/grpc.rs, src/peers.rs and src/lib.rs may name {PROTO_CRATE} \
         (main.rs only calls run; storage and domain take plain types), but:\n  {}",
        offenders.join("\n  ")
    );
}

#[test]
fn no_domain_names_tonic_or_sea_orm() {
    let files = service_sources(&workspace_root());
    assert!(
        files.iter().any(|(path, _)| in_domain(path)),
        "the walk found no domain module"
    );
    let offenders = transport_or_database_in_domain(&files);
    assert!(
        offenders.is_empty(),
        "a service's domain states rules, with no gRPC and no SQL, but:\n  {}",
        offenders.join("\n  ")
    );
}

#[test]
fn proto_rule_reports_storage_domain_and_main_but_not_the_three_homes() {
    let files = sources(&[
        ("services/a/src/grpc.rs", "use trellis_proto::a_v1::Thing;"),
        (
            "services/a/src/peers.rs",
            "fn f() -> trellis_proto::b_v1::Call { todo!() }",
        ),
        (
            "services/a/src/lib.rs",
            "use trellis_proto::a_v1::a_server::AServer;",
        ),
        ("services/a/src/grpc/convert.rs", "use trellis_proto::a_v1;"),
        (
            "services/a/src/storage/mod.rs",
            "use trellis_proto::b_v1::SendRequest;",
        ),
        (
            "services/a/src/domain/mod.rs",
            "fn f(_: trellis_proto::a_v1::Thing) {}",
        ),
        ("examples/g/src/main.rs", "use trellis_proto as proto;"),
        // Mentions in comments and strings do not count.
        (
            "services/a/src/config.rs",
            "// trellis_proto\nconst S: &str = \"trellis_proto\";",
        ),
        (
            "services/a/tests/api/main.rs",
            "use trellis_proto::a_v1::Thing;",
        ),
        (
            "services/a/src/storage/tests/x.rs",
            "use trellis_proto::a_v1::Thing;",
        ),
    ]);
    assert_eq!(
        proto_outside_its_homes(&files),
        [
            "services/a/src/storage/mod.rs",
            "services/a/src/domain/mod.rs",
            "examples/g/src/main.rs",
        ]
    );
}

#[test]
fn domain_rule_reports_tonic_and_sea_orm_in_any_domain_module() {
    let files = sources(&[
        (
            "services/a/src/domain/mod.rs",
            "pub fn f() -> tonic::Status { todo!() }",
        ),
        (
            "services/a/src/domain/rules.rs",
            "use sea_orm::DatabaseConnection;",
        ),
        ("examples/g/src/domain.rs", "use ::tonic::Code;"),
        (
            "services/a/src/domain/clean.rs",
            "// no tonic here\npub struct Rule;",
        ),
        ("services/a/src/grpc.rs", "use tonic::Status;"),
        ("services/a/src/storage/mod.rs", "use sea_orm::EntityTrait;"),
        ("services/a/tests/domain/mod.rs", "use tonic::Code;"),
    ]);
    assert_eq!(
        transport_or_database_in_domain(&files),
        [
            "services/a/src/domain/mod.rs names tonic",
            "services/a/src/domain/rules.rs names sea_orm",
            "examples/g/src/domain.rs names tonic",
        ]
    );
}

/// Every `.rs` file of every crate under `services/` and `examples/`, outside `tests/`
/// directories.
fn service_sources(root: &Path) -> Vec<Source> {
    let mut files = Vec::new();
    for parent in ["services", "examples"] {
        for dir in subdirs(&root.join(parent)) {
            for file in rust_files(&dir.join("src")) {
                files.push((relative(root, &file).replace('\\', "/"), read(&file)));
            }
        }
    }
    files
}

/// The files among `files` that name [`PROTO_CRATE`] outside their crate's
/// `src/grpc.rs`, `src/peers.rs` and `src/lib.rs` (or a `src/grpc/` or `src/peers/`
/// folder, should one of them be split); files in `tests/` directories are exempt.
/// A re-export (`pub use trellis_proto::… as x` in a home, then `crate::x` elsewhere) is
/// not followed.
fn proto_outside_its_homes(files: &[Source]) -> Vec<String> {
    files
        .iter()
        .filter(|(path, _)| !in_tests(path))
        .filter(|(path, _)| {
            let in_src = path.split_once("/src/").map_or(path.as_str(), |(_, p)| p);
            let home = matches!(in_src, "grpc.rs" | "peers.rs" | "lib.rs")
                || in_src.starts_with("grpc/")
                || in_src.starts_with("peers/");
            !home
        })
        .filter(|(_, text)| names(text, PROTO_CRATE))
        .map(|(path, _)| path.clone())
        .collect()
}

/// Each file of a domain module (`domain.rs`, or anything under a `domain/` directory)
/// among `files` that names a crate of [`NOT_IN_DOMAIN`], as `PATH names CRATE`; files in
/// `tests/` directories are exempt.
fn transport_or_database_in_domain(files: &[Source]) -> Vec<String> {
    let mut offenders = Vec::new();
    for (path, text) in files.iter().filter(|(path, _)| !in_tests(path)) {
        if !in_domain(path) {
            continue;
        }
        for name in NOT_IN_DOMAIN {
            if names(text, name) {
                offenders.push(format!("{path} names {name}"));
            }
        }
    }
    offenders
}

/// Whether `path` lies in a `tests/` directory.
fn in_tests(path: &str) -> bool {
    path.split('/').any(|segment| segment == "tests")
}

/// Whether `path` is a domain module: `domain.rs` or a file under a `domain/` directory.
fn in_domain(path: &str) -> bool {
    path.split('/')
        .any(|segment| segment == "domain" || segment == "domain.rs")
}

/// Whether the Rust `source` has `name` as an identifier (comments and literals aside).
fn names(source: &str, name: &str) -> bool {
    lex(source)
        .iter()
        .any(|token| matches!(token, Token::Ident(word) if word == name))
}

/// `(path, text)` pairs as owned [`Source`]s.
fn sources(files: &[(&str, &str)]) -> Vec<Source> {
    files
        .iter()
        .map(|(path, text)| ((*path).to_owned(), (*text).to_owned()))
        .collect()
}
