//! What the container suites need of the machine: a Docker engine and the images
//! `cargo xtask images` builds. Without them a suite fails with instructions, unless
//! `TRELLIS_SKIP_DOCKER_TESTS=1` says to skip it.

use std::process::{Command, Stdio};

/// The opt-out variable.
pub const SKIP_VARIABLE: &str = "TRELLIS_SKIP_DOCKER_TESTS";

/// The name of a Trellis image, e.g. `("trellis/user-service", "latest")`, following
/// `TRELLIS_IMAGE_PREFIX` and `TRELLIS_IMAGE_TAG` as `cargo xtask images` does.
pub fn image(name: &str) -> (String, String) {
    let prefix = std::env::var("TRELLIS_IMAGE_PREFIX").unwrap_or_else(|_| "trellis".to_owned());
    let tag = std::env::var("TRELLIS_IMAGE_TAG").unwrap_or_else(|_| "latest".to_owned());
    (format!("{prefix}/{name}"), tag)
}

fn succeeds(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether a container suite can run: `true` when Docker answers and every image in
/// `images` exists; `false` when the opt-out is set.
///
/// # Panics
/// When Docker or an image is missing and the opt-out is not set, with a message saying
/// how to run the suite — a container suite never passes silently.
pub fn require(images: &[&str]) -> bool {
    if std::env::var(SKIP_VARIABLE).is_ok_and(|v| v == "1") {
        eprintln!("{SKIP_VARIABLE}=1: skipping a container suite");
        return false;
    }
    assert!(
        succeeds(&["info"]),
        "no Docker engine answers (`docker info` failed). Start Docker and run `cargo xtask test`, \\
         or set {SKIP_VARIABLE}=1 to skip the container suites"
    );
    for name in images {
        let (repository, tag) = image(name);
        assert!(
            succeeds(&["image", "inspect", &format!("{repository}:{tag}")]),
            "image {repository}:{tag} is missing: run `cargo xtask images` (or `cargo xtask test`), \\
             or set {SKIP_VARIABLE}=1 to skip the container suites"
        );
    }
    true
}
