//! `up --docker`: the container images on PostgreSQL under Compose (deploy/compose.yaml),
//! built first when any is missing.

use std::process::{Command, ExitCode};

use anyhow::Context as _;

use super::{Args, random_secret};
use crate::services::{SERVICES, Service, by_port};

/// `up --docker`: the images on PostgreSQL under Compose, in the foreground; Ctrl-C stops
/// the containers, then they are removed (the data volume stays).
pub(super) fn run_compose(args: &Args) -> anyhow::Result<ExitCode> {
    let root = crate::workspace_root();
    let images = &args.images;
    let missing = SERVICES
        .iter()
        .map(|service| images.service_image(service.name))
        .chain([images.postgres_image()])
        .any(|image| !crate::images::image_exists(&image));
    if args.build || missing {
        crate::images::run_images(images)?;
    }
    let (program, prefix): (&str, &[&str]) =
        if crate::images::quiet_ok(Command::new("docker-compose").arg("version")) {
            ("docker-compose", &[])
        } else {
            ("docker", &["compose"])
        };
    let profile: &[&str] = if args.observability {
        &["--profile", "observability"]
    } else {
        &[]
    };
    let compose = |verb: &[&str]| {
        let mut command = Command::new(program);
        command
            .current_dir(&root)
            .args(prefix)
            .args(["-p", "trellis", "-f", "deploy/compose.yaml"])
            .args(profile)
            .args(verb)
            .env("TRELLIS_IMAGE_PREFIX", &images.prefix)
            .env("TRELLIS_IMAGE_TAG", &images.tag);
        command
    };
    let secret = random_secret()?;
    // Compose handles Ctrl-C itself (it stops the containers); xtask only waits.
    ctrlc::set_handler(|| {}).context("installing the Ctrl-C handler")?;
    eprintln!("xtask: starting the system on PostgreSQL with Compose; Ctrl-C stops it");
    eprintln!(
        "xtask: the services answer on {}",
        addresses("localhost:", "", |s| s.port)
    );
    let mut up = compose(&["up", "--remove-orphans"]);
    up.env("TRELLIS_USER_CLIENT_SECRET", &secret);
    if args.observability {
        // The profile's Jaeger, by its Compose name; the containers could not reach an
        // endpoint on this machine's loopback anyway.
        up.env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317");
        eprintln!(
            "xtask: with the observability profile: Prometheus http://localhost:9090, Grafana \
             http://localhost:3000, Jaeger http://localhost:16686 (their images must be present \
             or pullable)"
        );
    }
    eprintln!(
        "xtask: metrics at {}",
        addresses("http://localhost:", "/metrics", |s| s.metrics_port)
    );
    let status = up.status().context("running docker compose")?;
    let down = compose(&["down"])
        .status()
        .context("running docker compose down")?;
    Ok(if status.success() && down.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The services' host ports under Compose, by port, each with its name: the first as
/// `{before}PORT{after} (name)`, the others as `PORT (name)` or, with an `after`,
/// `:PORT (name)`.
fn addresses(before: &str, after: &str, port: impl Fn(&Service) -> u16) -> String {
    by_port()
        .into_iter()
        .enumerate()
        .map(|(i, service)| match i {
            0 => format!("{before}{}{after} ({})", port(service), service.name),
            _ if after.is_empty() => format!("{} ({})", port(service), service.name),
            _ => format!(":{} ({})", port(service), service.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_addresses_name_each_service_by_port() {
        assert_eq!(
            addresses("localhost:", "", |s| s.port),
            "localhost:50051 (user), 50052 (auth), 50053 (notification)"
        );
        assert_eq!(
            addresses("http://localhost:", "/metrics", |s| s.metrics_port),
            "http://localhost:51051/metrics (user), :51052 (auth), :51053 (notification)"
        );
    }
}
