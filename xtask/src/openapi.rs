//! `cargo xtask openapi`: writes each service's OpenAPI 3.1 document, generated from its
//! descriptors by the service binary itself (`<service> openapi`, the document it serves
//! at `GET /openapi.json`), to `docs/openapi/<service>.json`; `--check` fails instead when
//! a committed document differs from what the code generates.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context as _;

use crate::services::by_port;

/// `cargo xtask openapi` options.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Compare with the committed documents instead of writing them; exit 1 when one is
    /// stale.
    #[arg(long)]
    check: bool,
}

/// The folder the documents are written to, under the workspace root.
pub(crate) const DOCS_DIR: &str = "docs/openapi";

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let root = crate::workspace_root();
    let services = by_port();
    eprintln!("xtask: building {} service(s)…", services.len());
    let mut build_args = Vec::new();
    for spec in &services {
        build_args.extend(["--package", spec.package]);
    }
    let binaries = crate::cargo_build(&root, &build_args, &[])?;
    let dir = root.join(DOCS_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut stale = Vec::new();
    for spec in services {
        let binary = binaries
            .iter()
            .find(|(name, _)| name == spec.package)
            .map(|(_, path)| path)
            .with_context(|| format!("cargo built no {} binary", spec.package))?;
        let document = generate(&root, binary, spec.env_prefix)
            .with_context(|| format!("generating the {} document", spec.name))?;
        let path = dir.join(format!("{}.json", spec.name));
        if args.check {
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if committed != document {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::write(&path, &document)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("xtask: wrote {}", path.display());
        }
    }
    if stale.is_empty() {
        if args.check {
            eprintln!("xtask: the OpenAPI documents match the protos");
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "xtask: stale OpenAPI document(s): {} (run `cargo xtask openapi`)",
            stale.join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// What `binary openapi` prints, with the service's own environment cleared so the
/// embedded defaults apply.
fn generate(root: &Path, binary: &Path, env_prefix: &str) -> anyhow::Result<String> {
    let mut command = Command::new(binary);
    command
        .current_dir(root)
        .arg("openapi")
        .stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with(env_prefix) {
            command.env_remove(&key);
        }
    }
    command.env(format!("{env_prefix}__TELEMETRY__LOG_FORMAT"), "text");
    let output = command
        .output()
        .with_context(|| format!("running {} openapi", binary.display()))?;
    if !output.status.success() {
        anyhow::bail!(
            "{} openapi failed ({}): {}",
            binary.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let document: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("the document is not JSON")?;
    Ok(format!("{}\n", serde_json::to_string_pretty(&document)?))
}
