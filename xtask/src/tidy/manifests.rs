//! The crates' manifests: services meet only over gRPC, so no service crate depends on
//! another, whether by name, by a renamed package, by path or through the workspace's
//! dependency table.

use std::path::{Path, PathBuf};

use super::{canonical, read, relative, subdirs};
use crate::workspace_root;

#[test]
fn no_service_crate_depends_on_another_service_crate() {
    let root = workspace_root();
    let workspace = manifest(&root.join("Cargo.toml"));
    let workspace_deps = workspace
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(toml::Value::as_table)
        .cloned()
        .unwrap_or_default();
    // Every package under services/, by name, with its directory.
    let services: Vec<(String, PathBuf, toml::Table)> = subdirs(&root.join("services"))
        .into_iter()
        .filter(|dir| dir.join("Cargo.toml").is_file())
        .map(|dir| {
            let manifest = manifest(&dir.join("Cargo.toml"));
            let name = manifest
                .get("package")
                .and_then(|p| p.get("name"))
                .and_then(toml::Value::as_str)
                .unwrap_or_else(|| panic!("{} names its package", dir.display()))
                .to_owned();
            (name, canonical(&dir), manifest)
        })
        .collect();
    assert!(
        services.len() >= 2,
        "found fewer than two service crates under services/: {:?}",
        services.iter().map(|s| &s.0).collect::<Vec<_>>()
    );

    let mut offenders = Vec::new();
    for (name, dir, manifest) in &services {
        for (section, deps) in dependency_tables(manifest) {
            for (key, spec) in deps {
                let (package, path) = dependency_target(key, spec, dir, &workspace_deps, &root);
                let other = services.iter().find(|(other, other_dir, _)| {
                    other != name && (*other == package || path.as_ref() == Some(other_dir))
                });
                if let Some((other, _, _)) = other {
                    offenders.push(format!(
                        "{} [{section}] {key} (the service crate {other})",
                        relative(&root, &dir.join("Cargo.toml"))
                    ));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "service crates must meet only over gRPC, but:\n  {}",
        offenders.join("\n  ")
    );
}

#[test]
fn dependency_targets_follow_renames_and_workspace_inheritance() {
    let manifest: toml::Table = r#"
        [dependencies]
        plain = "1"
        renamed = { package = "user-service", version = "1" }
        by-path = { path = "../user" }
        inherited.workspace = true
    "#
    .parse()
    .expect("a manifest");
    let workspace: toml::Table =
        r#"inherited = { package = "auth-service", path = "services/auth" }"#
            .parse()
            .expect("workspace dependencies");
    let root = Path::new("/nonexistent/root");
    let dir = root.join("services/notification");
    let deps = manifest["dependencies"].as_table().expect("a table");
    let target = |key: &str| dependency_target(key, &deps[key], &dir, &workspace, root);
    assert_eq!(target("plain"), ("plain".to_owned(), None));
    assert_eq!(target("renamed").0, "user-service");
    assert_eq!(
        target("by-path"),
        ("by-path".to_owned(), Some(dir.join("../user")))
    );
    assert_eq!(
        target("inherited"),
        ("auth-service".to_owned(), Some(root.join("services/auth")))
    );
}

fn manifest(path: &Path) -> toml::Table {
    read(path)
        .parse()
        .unwrap_or_else(|err| panic!("parse {}: {err}", path.display()))
}

/// The dependency tables of a manifest with their section names: `[dependencies]`,
/// `[dev-dependencies]`, `[build-dependencies]` and their `[target.'…'.*]` forms.
fn dependency_tables(manifest: &toml::Table) -> Vec<(String, &toml::Table)> {
    const KINDS: [&str; 3] = ["dependencies", "dev-dependencies", "build-dependencies"];
    let mut tables = Vec::new();
    for kind in KINDS {
        if let Some(table) = manifest.get(kind).and_then(toml::Value::as_table) {
            tables.push((kind.to_owned(), table));
        }
    }
    if let Some(targets) = manifest.get("target").and_then(toml::Value::as_table) {
        for (target, sections) in targets {
            for kind in KINDS {
                if let Some(table) = sections.get(kind).and_then(toml::Value::as_table) {
                    tables.push((format!("target.{target}.{kind}"), table));
                }
            }
        }
    }
    tables
}

/// The package a dependency entry names (its `package` key, else its own key) and the
/// directory of its `path`, following `workspace = true` to `[workspace.dependencies]`.
fn dependency_target(
    key: &str,
    spec: &toml::Value,
    manifest_dir: &Path,
    workspace_deps: &toml::Table,
    root: &Path,
) -> (String, Option<PathBuf>) {
    let inherited = spec.get("workspace").and_then(toml::Value::as_bool) == Some(true);
    let (spec, base) = match workspace_deps.get(key) {
        Some(workspace_spec) if inherited => (workspace_spec, root),
        _ => (spec, manifest_dir),
    };
    let package = spec
        .get("package")
        .and_then(toml::Value::as_str)
        .unwrap_or(key)
        .to_owned();
    let path = spec
        .get("path")
        .and_then(toml::Value::as_str)
        .map(|p| canonical(&base.join(p)));
    (package, path)
}
