//! `cargo xtask bench [ARGS…]` and `cargo xtask chaos [ARGS…]`: build the load
//! generator's package (`trellis-bench`, with `trellis-chaos`) and the services in
//! release mode (the same static build as `cargo xtask images`, so one build serves
//! both), then run `trellis-bench` or `trellis-chaos` with ARGS passed through (see
//! their `--help`, the README's "Performance" and "Faults" sections).

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
    /// `cargo xtask bench --help` lists them) or trellis-chaos (`--fault F1,F7
    /// --duration 10s`; `cargo xtask chaos --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    run_binary("trellis-bench", args)
}

/// `cargo xtask chaos`: as `cargo xtask bench`, running `trellis-chaos` (the fault
/// suite) instead.
pub(crate) fn chaos(args: &Args) -> anyhow::Result<ExitCode> {
    run_binary("trellis-chaos", args)
}

fn run_binary(binary: &str, args: &Args) -> anyhow::Result<ExitCode> {
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
        "load generator (trellis-bench, trellis-chaos)",
    )?
    .into_iter()
    .find(|(name, _)| name == binary)
    .map(|(_, path)| path)
    .with_context(|| format!("cargo built no {binary} binary"))?;
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
