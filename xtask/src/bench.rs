//! `cargo xtask bench [ARGS…]`: build the load generator (`trellis-bench`) and the
//! services in release mode (the same static build as `cargo xtask images`, so one
//! build serves both), then run the load generator with ARGS passed through (see
//! `cargo xtask bench --help` and the README's "Performance" section).

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::Context as _;

use crate::services::SERVICES;

/// Options of `cargo xtask bench`: everything is passed to `trellis-bench`.
#[derive(Debug, clap::Args)]
// `--help` goes to trellis-bench, which lists the options.
#[command(disable_help_flag = true)]
pub(crate) struct Args {
    /// Arguments for trellis-bench (e.g. `--scenario health,get-user --duration 10s`;
    /// `cargo xtask bench --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let root = crate::workspace_root();
    let has = |flag: &str| {
        args.args.iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
        })
    };
    let help = has("--help") || has("-h");
    // Two cargo runs, not one: built together, the services would share the bench's
    // dependency features and be rebuilt, and differ from `cargo build --release -p …`.
    let service_dir = if has("--target") || help {
        None
    } else {
        let built = crate::images::static_binaries(&root)?;
        let dir = built
            .iter()
            .find(|(name, _)| SERVICES.iter().any(|service| service.package == name))
            .and_then(|(_, path)| path.parent())
            .map(Path::to_path_buf)
            .context("cargo built no service binary")?;
        Some(dir)
    };
    let bench = crate::images::static_release_build(
        &root,
        &["trellis-bench"],
        "load generator (trellis-bench)",
    )?
    .into_iter()
    .find(|(name, _)| name == "trellis-bench")
    .map(|(_, path)| path)
    .context("cargo built no trellis-bench binary")?;
    let mut command = Command::new(&bench);
    command.current_dir(&root);
    if let Some(dir) = service_dir.filter(|_| !has("--bin-dir")) {
        command.arg("--bin-dir").arg(dir);
    }
    let status = command
        .args(&args.args)
        .status()
        .with_context(|| format!("running {}", bench.display()))?;
    Ok(status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .map_or(ExitCode::FAILURE, ExitCode::from))
}
