//! `cargo xtask up`: build every service, start them in dependency order with embedded
//! defaults, wait for each to report SERVING, make the dev admin, prefix and colour their
//! logs, and stop them all gracefully on Ctrl-C. Each service serves Prometheus metrics
//! on its gRPC port + 1000; `--observability` adds a Prometheus server scraping them
//! ([`crate::prometheus`]), and an `OTEL_EXPORTER_OTLP_ENDPOINT` in the environment
//! reaches every service. `--scale SERVICE=N` runs N processes of a service (its
//! replicas, sharing its database) and points every other service at all of them.
//!
//! This module reads the options and runs the steps in order; [`plan`] decides what to
//! start, [`processes`] starts, watches and stops it, [`admin`] makes the dev admin,
//! [`banner`] prints where everything is, [`web`] serves the web page, and [`compose`]
//! is `up --docker`.

mod admin;
mod banner;
mod compose;
mod plan;
mod processes;
#[cfg(test)]
mod test_support;
mod tls;
mod web;

use std::io::IsTerminal as _;
use std::path::Path;
use std::process::{Child, ExitCode};
use std::sync::mpsc;

use anyhow::Context as _;

use crate::child::stop_child;
use crate::services::SERVICES;
use plan::{Scale, metrics_port_key, parse_scale, prometheus_targets};
use processes::{Event, Launcher, Running};

/// Options of `cargo xtask up`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Build with optimisations (`--release`).
    #[arg(long)]
    release: bool,
    /// Run the container images on PostgreSQL with Compose (deploy/compose.yaml) instead
    /// of local processes on SQLite; builds the images first when any is missing.
    #[arg(long)]
    docker: bool,
    /// With --docker: rebuild the images even when they exist.
    #[arg(long, requires = "docker")]
    build: bool,
    /// Also run Prometheus, scraping every service and loading the alert rules
    /// (deploy/observability): the `prometheus` binary when on PATH, else its image under
    /// Docker. With --docker: the Compose profile `observability` (Prometheus, Grafana,
    /// Jaeger), the services' traces sent to its Jaeger.
    #[arg(long)]
    observability: bool,
    /// Run N processes of SERVICE (1 to 16) sharing its database, e.g. `--scale user=3`;
    /// repeat it or separate by commas for several services. The first keeps the
    /// service's ports, the others take free ones; every other service calls all of them
    /// (`peers.<service>.addresses`). Not with --docker: deploy/compose.yaml publishes
    /// fixed host ports, so Compose cannot run two containers of a service.
    #[arg(
        long,
        value_name = "SERVICE=N",
        value_parser = parse_scale,
        value_delimiter = ',',
        conflicts_with = "docker"
    )]
    scale: Vec<Scale>,
    /// Run every service over mutual TLS: a development CA and one certificate per
    /// service (its SPIFFE ID, and localhost for grpcurl) are made under .data/tls/, and
    /// the tour's grpcurl commands take `-cacert .data/tls/ca.pem` instead of
    /// `-plaintext`. Not with --docker.
    #[arg(long, conflicts_with = "docker")]
    tls: bool,
    /// With --observability: the port Prometheus listens on (127.0.0.1).
    #[arg(
        long,
        default_value_t = 9090,
        requires = "observability",
        conflicts_with = "docker"
    )]
    prometheus_port: u16,
    /// The port the web page (web/) is served on (127.0.0.1); the services allow its
    /// origin (`server.cors.allowed_origins`). Not with --tls (a browser has no
    /// certificate for mutual TLS) or --docker.
    #[arg(long, default_value_t = web::WEB_PORT, conflicts_with = "docker")]
    web_port: u16,
    #[command(flatten)]
    images: crate::images::Args,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if args.docker {
        return compose::run_compose(args);
    }
    let root = crate::workspace_root();
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let lookup = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    let mut plan = plan::plan(&args.scale, lookup, plan::free_port, random_secret)?;
    if !args.tls {
        // Each replica's own variables, which win over the developer's: the value keeps
        // the origins the developer allowed and adds the page's.
        let cors = web::cors_environment(args.web_port, lookup);
        for replica in &mut plan.replicas {
            replica.own_environment.extend(
                cors.iter()
                    .filter(|(key, _)| key.starts_with(replica.spec.env_prefix))
                    .cloned(),
            );
        }
    }
    let binaries = processes::build(&root, args.release)?;

    // Service credentials for this run only: the user service's client secret, known to
    // auth. Nothing is written to disk.
    let user_secret = random_secret()?;
    let mut environment: Vec<(String, String)> = vec![
        (
            "TRELLIS_USER__AUTH__CLIENT_SECRET".to_owned(),
            user_secret.clone(),
        ),
        (
            "TRELLIS_AUTH__SERVICE_CLIENTS__USER".to_owned(),
            user_secret,
        ),
    ];
    environment.extend(
        SERVICES
            .iter()
            .map(|spec| (metrics_port_key(spec), spec.metrics_port.to_string())),
    );
    environment.extend(plan.environment);
    if args.tls {
        environment.extend(tls::make_certificates(&root)?);
        eprintln!(
            "xtask: mutual TLS on: a new development CA and certificates in {}",
            tls::TLS_DIR
        );
    }
    // The services inherit xtask's environment (nothing here clears it), so the OTEL_*
    // variables reach every one of them unchanged.
    if let Some((variable, endpoint)) = banner::traces_endpoint(lookup) {
        eprintln!("xtask: traces go to {endpoint} ({variable}, passed on to every service)");
        if lookup("OTEL_SERVICE_NAME").is_some() {
            eprintln!(
                "xtask: warning: OTEL_SERVICE_NAME is set, so all three services report under one name"
            );
        }
    }

    let (events, incoming) = mpsc::channel();
    let signal_events = events.clone();
    ctrlc::set_handler(move || drop(signal_events.send(Event::Signal)))
        .context("installing the Ctrl-C handler")?;

    let launcher = Launcher {
        root: &root,
        binaries: &binaries,
        colour,
        environment: &environment,
        events,
        incoming: &incoming,
    };
    let mut running: Vec<Running> = Vec::new();
    let mut replicas = plan.replicas.into_iter().peekable();
    while let Some(first) = replicas.next() {
        let spec = first.spec;
        let mut others = Vec::new();
        while let Some(replica) = replicas.next_if(|r| r.spec == spec) {
            others.push(replica);
        }
        // The first replica alone runs the migrations of a fresh database; the others
        // start once it is SERVING, so they find them done.
        let mut launched = launcher.launch(vec![first], &mut running);
        if launched.is_ok()
            && spec.name == "user"
            && let Some(service) = running.last()
        {
            launched = admin::grant_dev_admin(&root, service, &environment);
        }
        if launched.is_ok() && !others.is_empty() {
            launched = launcher.launch(others, &mut running);
        }
        if let Err(err) = launched {
            processes::stop_all(&mut running);
            return Err(err);
        }
    }

    let mut prometheus = None;
    if args.observability {
        prometheus = start_prometheus(&root, &running, args.prometheus_port, colour);
    }

    let page = if args.tls {
        eprintln!("xtask: no web page under --tls: a browser has no certificate for mutual TLS");
        None
    } else {
        match web::serve(&root, args.web_port, &running) {
            Ok(()) => Some(args.web_port),
            Err(err) => {
                eprintln!("xtask: going on without the web page: {err:#}");
                None
            }
        }
    };

    banner::print_banner(
        colour,
        &running,
        lookup,
        prometheus.is_some().then_some(args.prometheus_port),
        args.tls,
        page,
    );

    let clean = processes::watch(&mut running, &incoming);
    if let Some(child) = prometheus.as_mut() {
        // Its exit status is reported, not counted: the services' is the result.
        stop_child("prometheus", child);
    }
    let all_zero = processes::stop_all(&mut running);
    Ok(if clean && all_zero {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--observability`: starts Prometheus on `port`, scraping every replica in `running`,
/// with its output forwarded under `prometheus`. `None` (after saying why) when it
/// cannot run: the services keep going without it.
fn start_prometheus(root: &Path, running: &[Running], port: u16, colour: bool) -> Option<Child> {
    let targets = prometheus_targets(running.iter().map(|service| &service.replica));
    let started = crate::prometheus::choose_runner()
        .map_err(anyhow::Error::msg)
        .and_then(|runner| {
            crate::prometheus::start(
                &root.join(crate::prometheus::DATA_DIR),
                &root.join(crate::prometheus::RULES_DIR),
                &runner,
                &targets,
                port,
            )
        });
    match started {
        Ok(mut child) => {
            let prefix = processes::log_prefix("prometheus", "\x1b[32m", colour);
            processes::forward_output(&mut child, &prefix, None);
            Some(child)
        }
        Err(err) => {
            eprintln!("xtask: going on without Prometheus: {err:#}");
            None
        }
    }
}

/// 192 random bits from the OS, hex-encoded.
fn random_secret() -> anyhow::Result<String> {
    let mut bytes = [0_u8; 24];
    getrandom::fill(&mut bytes).context("reading the OS's random source")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::plan::Scale;
    use super::test_support::{parse, scale};

    #[test]
    fn observability_is_off_by_default_and_prometheus_listens_on_9090() {
        let args = parse(&[]).expect("no options");
        assert!(!args.observability);
        let args = parse(&["--observability"]).expect("--observability");
        assert!(args.observability);
        assert_eq!(args.prometheus_port, 9090);
        let args = parse(&["--observability", "--prometheus-port", "9191"]).expect("a port");
        assert_eq!(args.prometheus_port, 9191);
    }

    #[test]
    fn prometheus_port_needs_observability_and_no_docker() {
        assert!(parse(&["--prometheus-port", "9191"]).is_err());
        assert!(parse(&["--docker", "--observability", "--prometheus-port", "9191"]).is_err());
        assert!(parse(&["--docker", "--observability"]).is_ok());
    }

    #[test]
    fn scale_takes_service_equals_count_repeated_or_comma_separated() {
        assert_eq!(parse(&[]).expect("no options").scale, []);
        assert_eq!(
            scale(&["user=3"]),
            [Scale {
                service: "user",
                replicas: 3
            }]
        );
        let both = [
            Scale {
                service: "user",
                replicas: 3,
            },
            Scale {
                service: "notification",
                replicas: 2,
            },
        ];
        assert_eq!(scale(&["user=3", "notification=2"]), both);
        assert_eq!(scale(&["user=3,notification=2"]), both);
        assert_eq!(
            scale(&["auth=16"]),
            [Scale {
                service: "auth",
                replicas: 16
            }]
        );
    }

    #[test]
    fn scale_rejects_unknown_services_counts_out_of_range_and_other_forms() {
        for (value, says) in [
            (
                "billing=2",
                "unknown service `billing` (services: notification, user, auth)",
            ),
            ("user=0", "`0` is not a number of replicas: give 1 to 16"),
            ("user=17", "`17` is not a number of replicas"),
            ("user=-1", "`-1` is not a number of replicas"),
            ("user=three", "`three` is not a number of replicas"),
            ("user", "expected SERVICE=N, e.g. user=3"),
            ("=3", "unknown service ``"),
        ] {
            let err = parse(&["--scale", value]).expect_err(value).to_string();
            assert!(err.contains(says), "{value}: {err}");
        }
    }

    #[test]
    fn scale_is_refused_with_docker() {
        let err = parse(&["--docker", "--scale", "user=2"])
            .expect_err("--scale with --docker")
            .to_string();
        assert!(err.contains("cannot be used with"), "{err}");
    }
}
