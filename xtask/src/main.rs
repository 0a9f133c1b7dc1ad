//! Developer commands for the Trellis workspace, run as `cargo xtask <command>`.
//!
//! xtask depends on no workspace crate, so it builds fast and works even when the
//! product does not compile.

mod bench;
mod child;
mod images;
#[cfg(test)]
mod kubernetes;
#[cfg(test)]
mod observability;
mod openapi;
mod prometheus;
mod services;
#[cfg(test)]
mod tidy;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Developer commands for Trellis")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build and run every service with embedded defaults; Ctrl-C stops them all.
    Up(up::Args),
    /// Build the service images and a PostgreSQL image (made from Debian's packages when
    /// no registry is reachable).
    Images(images::Args),
    /// Build the images, then run every test (`cargo test --workspace`).
    Test(images::Args),
    /// Build the load generator and the services (release), then measure: scenarios,
    /// a bare-tonic baseline in the same run, SLO gates (`cargo xtask bench --help`).
    Bench(bench::Args),
    /// Build the services and the fault suite (release), then inject each fault into a
    /// fresh system under load and check nothing acknowledged was lost
    /// (`cargo xtask chaos --help`).
    Chaos(bench::Args),
    /// Write each service's OpenAPI 3.1 document (generated from the protos by the
    /// service itself) to docs/openapi/; `--check` compares instead.
    Openapi(openapi::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up::run(&args),
        Command::Images(args) => images::run_images(&args).map(|()| ExitCode::SUCCESS),
        Command::Test(args) => test(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Chaos(args) => bench::chaos(&args),
        Command::Openapi(args) => openapi::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate's directory).
///
/// Read from the `CARGO_MANIFEST_DIR` that `cargo run`/`cargo test` set when they start
/// the process, before the one compiled in: clones sharing one target directory (as
/// `.ci/run` does) can reuse a binary built in another clone, whose compiled-in path may
/// be gone.
fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.clone(), std::path::Path::to_path_buf)
}

/// `cargo xtask test`: the container suites need the images, so build them first (unless
/// `TRELLIS_SKIP_DOCKER_TESTS=1`), then run the whole workspace's tests.
fn test(args: &images::Args) -> anyhow::Result<ExitCode> {
    if std::env::var("TRELLIS_SKIP_DOCKER_TESTS").is_ok_and(|v| v == "1") {
        eprintln!(
            "xtask test: TRELLIS_SKIP_DOCKER_TESTS=1: not building images; container suites will skip"
        );
    } else {
        images::run_images(args)?;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(workspace_root())
        .args(["test", "--workspace"])
        .env("TRELLIS_IMAGE_PREFIX", &args.prefix)
        .env("TRELLIS_IMAGE_TAG", &args.tag)
        .status()?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs `cargo build --message-format=json-render-diagnostics ARGS…` in `root` with
/// `env` set (cargo's progress goes to stderr) and returns the executables it built.
fn cargo_build(
    root: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    use anyhow::Context as _;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = std::process::Command::new(cargo)
        .current_dir(root)
        .args(["build", "--message-format=json-render-diagnostics"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !output.status.success() {
        anyhow::bail!("cargo build {} failed ({})", args.join(" "), output.status);
    }
    Ok(executables(&output.stdout))
}

/// The `(binary name, path)` pairs of executables in cargo's JSON messages.
fn executables(stdout: &[u8]) -> Vec<(String, PathBuf)> {
    let mut binaries = Vec::new();
    for line in stdout.split(|b| *b == b'\n') {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(name), Some(path)) = (
            message.pointer("/target/name").and_then(|v| v.as_str()),
            message.get("executable").and_then(|v| v.as_str()),
        ) {
            binaries.push((name.to_owned(), PathBuf::from(path)));
        }
    }
    binaries
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
