//! `cargo xtask images`: build the service images (static binaries on `scratch`) and make
//! sure a PostgreSQL image exists — the official one when present or pullable, otherwise
//! one made from Debian's packages.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::services::by_port;

/// Options of `cargo xtask images`.
#[derive(Debug, Clone, clap::Args)]
// Flattened into `up` as well: no argument group of its own, or the names would clash.
#[group(skip)]
pub(crate) struct Args {
    /// Repository prefix of the images: `<prefix>/user-service`, `<prefix>/postgres`.
    #[arg(long, default_value = "trellis", env = "TRELLIS_IMAGE_PREFIX")]
    pub(crate) prefix: String,
    /// Tag of the images.
    #[arg(long, default_value = "latest", env = "TRELLIS_IMAGE_TAG")]
    pub(crate) tag: String,
    /// Base of the service images. `scratch` needs no registry.
    #[arg(long, default_value = "scratch", env = "TRELLIS_BASE_IMAGE")]
    base_image: String,
    /// The official PostgreSQL image, used when present locally or pullable.
    #[arg(
        long,
        default_value = "postgres:15",
        env = "TRELLIS_OFFICIAL_POSTGRES_IMAGE"
    )]
    official_postgres: String,
    /// The Debian base that the fallback PostgreSQL image is built on (made with
    /// debootstrap when missing).
    #[arg(
        long,
        default_value = "trellis/debian-postgres-base:bookworm",
        env = "TRELLIS_POSTGRES_BASE_IMAGE"
    )]
    postgres_base: String,
}

impl Args {
    /// The name of a service's image.
    pub(crate) fn service_image(&self, service: &str) -> String {
        format!("{}/{service}-service:{}", self.prefix, self.tag)
    }

    /// The name of the PostgreSQL image the system and the suites use.
    pub(crate) fn postgres_image(&self) -> String {
        format!("{}/postgres:{}", self.prefix, self.tag)
    }
}

fn step(message: &str) {
    eprintln!("xtask images: {message}");
}

fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Runs a `docker build`, showing its output only when it fails (the legacy builder
/// prints a deprecation notice on every success).
fn docker_build(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stdout));
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        bail!("{what} failed ({})", output.status);
    }
    Ok(())
}

/// Whether `command` succeeds, its output discarded.
pub(crate) fn quiet_ok(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether Docker has `image` locally.
pub(crate) fn image_exists(image: &str) -> bool {
    quiet_ok(Command::new("docker").args(["image", "inspect", image]))
}

pub(crate) fn run_images(args: &Args) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    if !quiet_ok(Command::new("docker").arg("info")) {
        bail!(
            "no Docker engine answers (`docker info` failed): start one, or set \
             TRELLIS_SKIP_DOCKER_TESTS=1 to run the tests that need none"
        );
    }
    let started = Instant::now();
    postgres(&root, args)?;
    let binaries = static_binaries(&root)?;
    let context = stage_context(&binaries)?;
    for service in by_port() {
        let image = args.service_image(service.name);
        step(&format!("building {image} on {}", args.base_image));
        docker_build(
            Command::new("docker")
                .args(["build", "--quiet", "-f"])
                .arg(root.join("deploy/docker/Dockerfile"))
                .args(["--build-arg", &format!("SERVICE={}", service.name)])
                .args(["--build-arg", &format!("PORT={}", service.port)])
                .args(["--build-arg", &format!("BASE_IMAGE={}", args.base_image)])
                .args(["-t", &image])
                .arg(&context),
            &format!("docker build of {image}"),
        )?;
    }
    step("images:");
    for image in by_port()
        .into_iter()
        .map(|service| args.service_image(service.name))
        .chain([args.postgres_image()])
    {
        let output = Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Size}}", &image])
            .output()
            .context("docker image inspect")?;
        let bytes: f64 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or(0.0);
        eprintln!("  {image:<40} {:>8.1} MB", bytes / 1e6);
    }
    step(&format!("done in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// Makes `<prefix>/postgres:<tag>`: the official image if present or pullable, otherwise
/// our Debian-based one.
fn postgres(root: &Path, args: &Args) -> anyhow::Result<()> {
    let target = args.postgres_image();
    let official = &args.official_postgres;
    let have_official = image_exists(official) || {
        step(&format!("{official} is not here; trying to pull it"));
        quiet_ok(Command::new("docker").args(["pull", official]))
    };
    if have_official {
        step(&format!("using the official {official} as {target}"));
        return run(
            Command::new("docker").args(["tag", official, &target]),
            "docker tag",
        );
    }
    let base = &args.postgres_base;
    if !image_exists(base) {
        step(&format!(
            "no registry: making {base} from Debian's packages (debootstrap)"
        ));
        run(
            Command::new("bash")
                .arg(root.join("deploy/docker/debian-base.sh"))
                .args([base.as_str(), "postgresql-15"]),
            "deploy/docker/debian-base.sh",
        )?;
    }
    step(&format!("building {target} on {base}"));
    docker_build(
        Command::new("docker")
            .args([
                "build",
                "--quiet",
                "--build-arg",
                &format!("BASE_IMAGE={base}"),
                "-t",
                &target,
            ])
            .arg(root.join("deploy/docker/postgres")),
        "docker build of the PostgreSQL image",
    )
}

/// Builds the service binaries as static executables (glibc, `crt-static`).
pub(crate) fn static_binaries(root: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let packages: Vec<&str> = by_port()
        .into_iter()
        .map(|service| service.package)
        .collect();
    let binaries = static_release_build(root, &packages, "static release binaries")?;
    for name in packages {
        if !binaries.iter().any(|(n, _)| n == name) {
            bail!("cargo built no binary named {name}");
        }
    }
    Ok(binaries)
}

/// `cargo build --release --target <host>` of `packages` with `crt-static`: the build
/// the images and the bench share (one build serves both, in CI and on a warm machine).
/// `what` names it in the progress line. Returns `(binary name, path)` pairs.
pub(crate) fn static_release_build(
    root: &Path,
    packages: &[&str],
    what: &str,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let host = host_triple()?;
    eprintln!("xtask: building {what} for {host} (slow on a cold cache)…");
    let mut rustflags = std::env::var("RUSTFLAGS").unwrap_or_default();
    if !rustflags.contains("crt-static") {
        rustflags.push_str(" -C target-feature=+crt-static");
    }
    // An explicit target keeps build scripts and proc-macros dynamic while the binaries
    // link statically.
    let mut args = vec!["--release", "--target", &host];
    for package in packages {
        args.extend(["--package", package]);
    }
    crate::cargo_build(root, &args, &[("RUSTFLAGS", rustflags.trim())])
        .with_context(|| format!("building the {what}"))
}

fn host_triple() -> anyhow::Result<String> {
    let output = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV printed no host triple")
}

/// Copies the binaries and an empty `data/` into a fresh build context.
fn stage_context(binaries: &[(String, PathBuf)]) -> anyhow::Result<PathBuf> {
    let first = binaries
        .first()
        .map(|(_, p)| p.clone())
        .context("no binaries")?;
    let context = first
        .parent()
        .context("binary has no directory")?
        .join("docker-context");
    if context.exists() {
        std::fs::remove_dir_all(&context).context("clearing the build context")?;
    }
    std::fs::create_dir_all(context.join("data")).context("creating the build context")?;
    for (name, path) in binaries {
        std::fs::copy(path, context.join(name))
            .with_context(|| format!("copying {}", path.display()))?;
    }
    Ok(context)
}
