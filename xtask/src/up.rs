//! `cargo xtask up`: build every service, start them in dependency order with embedded
//! defaults, wait for each to report SERVING, make the dev admin, prefix and colour their
//! logs, and stop them all gracefully on Ctrl-C. Each service serves Prometheus metrics
//! on its gRPC port + 1000; `--observability` adds a Prometheus server scraping them
//! ([`crate::prometheus`]), and an `OTEL_EXPORTER_OTLP_ENDPOINT` in the environment
//! reaches every service.

use std::io::{BufRead as _, BufReader, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A service `up` runs: its package, binary, ports and environment prefix.
struct ServiceSpec {
    name: &'static str,
    package: &'static str,
    port: u16,
    /// The default `metrics.port` (the gRPC port + 1000), passed explicitly.
    metrics_port: u16,
    env_prefix: &'static str,
    colour: &'static str,
}

/// Every service, in dependency order (a service starts after those it calls).
const SERVICES: &[ServiceSpec] = &[
    ServiceSpec {
        name: "notification",
        package: "notification-service",
        port: 50053,
        metrics_port: 51053,
        env_prefix: "TRELLIS_NOTIFICATION",
        colour: "\x1b[35m",
    },
    ServiceSpec {
        name: "user",
        package: "user-service",
        port: 50051,
        metrics_port: 51051,
        env_prefix: "TRELLIS_USER",
        colour: "\x1b[36m",
    },
    ServiceSpec {
        name: "auth",
        package: "auth-service",
        port: 50052,
        metrics_port: 51052,
        env_prefix: "TRELLIS_AUTH",
        colour: "\x1b[33m",
    },
];

/// The account `up` makes an admin, through the user service's management command
/// (`user-service admin grant --create`), the way an operator makes the first admin.
const DEV_ADMIN_EMAIL: &str = "admin@example.com";
/// Where `up` keeps the dev admin's password (made at random on the first run, readable
/// by the owner only), beside the services' SQLite files.
const DEV_ADMIN_PASSWORD_FILE: &str = ".data/dev-admin-password";

/// How long a service may take to report SERVING.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// With --observability: the port Prometheus listens on (127.0.0.1).
    #[arg(
        long,
        default_value_t = 9090,
        requires = "observability",
        conflicts_with = "docker"
    )]
    prometheus_port: u16,
    #[command(flatten)]
    images: crate::images::Args,
}

/// The OpenTelemetry variables naming where traces go, the signal-specific one first (it
/// wins when both are set, as the OTLP exporter's specification says).
const OTLP_ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

enum Event {
    Signal,
    Exited(&'static str),
}

struct Running {
    spec: &'static ServiceSpec,
    child: Child,
    binary: PathBuf,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if args.docker {
        return run_compose(args);
    }
    let root = crate::workspace_root();
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let binaries = build(&root, args.release)?;

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
    // The services inherit xtask's environment (nothing here clears it), so the OTEL_*
    // variables reach every one of them unchanged.
    let lookup = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    if let Some((variable, endpoint)) = traces_endpoint(lookup) {
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

    let mut running: Vec<Running> = Vec::new();
    for spec in SERVICES {
        let binary = binaries
            .iter()
            .find(|(name, _)| name == spec.package)
            .map(|(_, path)| path.clone())
            .with_context(|| format!("cargo built no binary named {}", spec.package))?;
        let child = start(&root, spec, &binary, colour, &environment, events.clone())?;
        running.push(Running {
            spec,
            child,
            binary,
        });
        let last = running.len() - 1;
        let mut ready = wait_ready(&mut running[last], &incoming);
        if ready.is_ok() {
            eprintln!(
                "xtask: {} is SERVING{}",
                spec.name,
                metrics_note(spec, lookup)
            );
        }
        if ready.is_ok() && spec.name == "user" {
            ready = grant_dev_admin(&root, spec, &running[last].binary, &environment);
        }
        if let Err(err) = ready {
            stop_all(&mut running);
            return Err(err);
        }
    }

    let mut prometheus = None;
    if args.observability {
        let targets: Vec<crate::prometheus::Target> = SERVICES
            .iter()
            .filter_map(|spec| {
                metrics_address(spec, lookup).map(|address| crate::prometheus::Target {
                    job: spec.name,
                    address,
                })
            })
            .collect();
        let started = crate::prometheus::choose_runner()
            .map_err(anyhow::Error::msg)
            .and_then(|runner| {
                crate::prometheus::start(
                    &root.join(crate::prometheus::DATA_DIR),
                    &root.join(crate::prometheus::RULES_DIR),
                    &runner,
                    &targets,
                    args.prometheus_port,
                )
            });
        match started {
            Ok(mut child) => {
                let prefix = if colour {
                    format!("\x1b[32m{:<13}|\x1b[0m ", "prometheus")
                } else {
                    format!("{:<13}| ", "prometheus")
                };
                for stream in [
                    child
                        .stdout
                        .take()
                        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                    child
                        .stderr
                        .take()
                        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                ]
                .into_iter()
                .flatten()
                {
                    forward(stream, prefix.clone(), None);
                }
                prometheus = Some(child);
            }
            Err(err) => eprintln!("xtask: going on without Prometheus: {err:#}"),
        }
    }

    print_banner(
        colour,
        lookup,
        prometheus.is_some().then_some(args.prometheus_port),
    );

    let clean = match incoming.recv() {
        Ok(Event::Exited(name)) => {
            eprintln!("xtask: {name} exited unexpectedly; stopping the others");
            false
        }
        Ok(Event::Signal) | Err(_) => true,
    };
    if let Some(child) = prometheus.as_mut() {
        // Its exit status is reported, not counted: the services' is the result.
        stop_child("prometheus", child);
    }
    let all_zero = stop_all(&mut running);
    Ok(if clean && all_zero {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Builds the service binaries and returns `(binary name, path)` pairs.
fn build(root: &Path, release: bool) -> anyhow::Result<Vec<(String, PathBuf)>> {
    eprintln!("xtask: building {} service(s)…", SERVICES.len());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args(["build", "--message-format=json-render-diagnostics"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for spec in SERVICES {
        command.args(["--package", spec.package]);
    }
    if release {
        command.arg("--release");
    }
    let output = command.output().context("running cargo build")?;
    if !output.status.success() {
        bail!("cargo build failed ({})", output.status);
    }
    Ok(crate::executables(&output.stdout))
}

fn start(
    root: &Path,
    spec: &'static ServiceSpec,
    binary: &Path,
    colour: bool,
    environment: &[(String, String)],
    events: mpsc::Sender<Event>,
) -> anyhow::Result<Child> {
    let mut command = Command::new(binary);
    command
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    set_environment(&mut command, spec, environment);
    let format_key = format!("{}__TELEMETRY__LOG_FORMAT", spec.env_prefix);
    if std::env::var_os(&format_key).is_none() {
        command.env(format_key, "text");
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let prefix = if colour {
        format!("{}{:<13}|\x1b[0m ", spec.colour, spec.name)
    } else {
        format!("{:<13}| ", spec.name)
    };
    let stdout = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    // The stderr reader ends when the process closes its output: that is how an
    // unexpected exit is noticed while the others keep running.
    if let Some(stdout) = stdout {
        forward(stdout, prefix.clone(), None);
    }
    if let Some(stderr) = stderr {
        forward(stderr, prefix, Some((events, spec.name)));
    }
    Ok(child)
}

/// Sets `spec`'s share of `environment` on `command`; a value the developer set wins.
fn set_environment(command: &mut Command, spec: &ServiceSpec, environment: &[(String, String)]) {
    for (key, value) in environment {
        if key.starts_with(spec.env_prefix) && std::env::var_os(key).is_none() {
            command.env(key, value);
        }
    }
}

/// Gives [`DEV_ADMIN_EMAIL`] the admin role with `user-service admin grant --create`,
/// run with the same config as the service (it may run meanwhile: they share the
/// database). On the first run it creates the account, with the password in
/// [`DEV_ADMIN_PASSWORD_FILE`]; later runs only make sure of the role.
fn grant_dev_admin(
    root: &Path,
    spec: &ServiceSpec,
    binary: &Path,
    environment: &[(String, String)],
) -> anyhow::Result<()> {
    let password = dev_admin_password(root)?;
    let mut command = Command::new(binary);
    command
        .current_dir(root)
        .args(["admin", "grant", "--create", DEV_ADMIN_EMAIL])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    set_environment(&mut command, spec, environment);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {} admin grant", binary.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // The password goes through a pipe, never the command line.
        stdin
            .write_all(format!("{password}\n").as_bytes())
            .context("passing the dev admin's password")?;
    }
    let output = child
        .wait_with_output()
        .context("waiting for user-service admin grant")?;
    if !output.status.success() {
        bail!(
            "making {DEV_ADMIN_EMAIL} an admin failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    eprintln!("xtask: {}", String::from_utf8_lossy(&output.stdout).trim());
    Ok(())
}

/// The dev admin's password from [`DEV_ADMIN_PASSWORD_FILE`], made at random (and the
/// file created, owner-only) when there is none.
fn dev_admin_password(root: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = root.join(DEV_ADMIN_PASSWORD_FILE);
    match std::fs::read_to_string(&path) {
        Ok(password) => return Ok(password.trim().to_owned()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    }
    let password = random_secret()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| writeln!(file, "{password}"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(password)
}

fn forward(
    stream: Box<dyn std::io::Read + Send>,
    prefix: String,
    on_close: Option<(mpsc::Sender<Event>, &'static str)>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut out = std::io::stdout().lock();
            drop(writeln!(out, "{prefix}{line}"));
        }
        if let Some((events, name)) = on_close {
            drop(events.send(Event::Exited(name)));
        }
    });
}

/// Polls the service's own `healthcheck` subcommand until it reports SERVING.
fn wait_ready(service: &mut Running, events: &mpsc::Receiver<Event>) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        match events.try_recv() {
            Ok(Event::Signal) => bail!("interrupted while {} was starting", service.spec.name),
            Ok(Event::Exited(name)) => bail!("{name} exited during start-up (see its log above)"),
            Err(_) => {}
        }
        let status = Command::new(&service.binary)
            .arg("healthcheck")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running the health check")?;
        if status.success() {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!(
                "{} did not report SERVING within {} s",
                service.spec.name,
                READY_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends SIGTERM to every service, newest first, and waits for each. Returns whether
/// all exited with status 0.
fn stop_all(running: &mut [Running]) -> bool {
    let mut all_zero = true;
    for service in running.iter_mut().rev() {
        all_zero &= stop_child(service.spec.name, &mut service.child);
    }
    all_zero
}

/// Sends SIGTERM to `child` and waits for it, saying how it ended. Returns whether it
/// exited with status 0.
pub(crate) fn stop_child(name: &str, child: &mut Child) -> bool {
    if let Ok(pid) = i32::try_from(child.id()) {
        // Already gone is fine: wait() below reports how it ended.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match child.wait() {
        Ok(status) if status.success() => {
            eprintln!("xtask: {name} stopped");
            true
        }
        Ok(status) => {
            eprintln!("xtask: {name} stopped with {status}");
            false
        }
        Err(err) => {
            eprintln!("xtask: waiting for {name}: {err}");
            false
        }
    }
}

/// `TRELLIS_<SERVICE>__METRICS__PORT`.
fn metrics_port_key(spec: &ServiceSpec) -> String {
    format!("{}__METRICS__PORT", spec.env_prefix)
}

/// The `host:port` of `spec`'s `/metrics` under `up`: the port the developer set
/// (`TRELLIS_<SERVICE>__METRICS__PORT`, read through `lookup`) or the default `up`
/// passes, on 127.0.0.1 unless `metrics.host` names one address. `None` when the port
/// is 0 (metrics off) or not a port.
fn metrics_address(spec: &ServiceSpec, lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    let port = match lookup(&metrics_port_key(spec)) {
        Some(value) => value.trim().parse::<u16>().ok()?,
        None => spec.metrics_port,
    };
    if port == 0 {
        return None;
    }
    let host = lookup(&format!("{}__METRICS__HOST", spec.env_prefix))
        .and_then(|h| h.trim().parse::<std::net::IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    Some(std::net::SocketAddr::from((host, port)).to_string())
}

/// What to say about `spec`'s metrics after "is SERVING": its URL, or that they are off.
fn metrics_note(spec: &ServiceSpec, lookup: impl Fn(&str) -> Option<String>) -> String {
    match metrics_address(spec, lookup) {
        Some(address) => format!("; metrics at http://{address}/metrics"),
        None => format!(
            " (metrics off: {} is 0 or not a port)",
            metrics_port_key(spec)
        ),
    }
}

/// The variable and endpoint traces are exported to, when one is set.
fn traces_endpoint(lookup: impl Fn(&str) -> Option<String>) -> Option<(&'static str, String)> {
    OTLP_ENDPOINT_VARIABLES
        .iter()
        .find_map(|variable| lookup(variable).map(|endpoint| (*variable, endpoint)))
}

/// 192 random bits from the OS, hex-encoded.
fn random_secret() -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0_u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn print_banner(
    colour: bool,
    lookup: impl Fn(&str) -> Option<String> + Copy,
    prometheus_port: Option<u16>,
) {
    let (bold, reset) = if colour {
        ("\x1b[1m", "\x1b[0m")
    } else {
        ("", "")
    };
    println!();
    println!("{bold}Trellis is up.{reset} Services (gRPC, then Prometheus metrics):");
    for spec in SERVICES {
        let metrics = metrics_address(spec, lookup).map_or_else(
            || "metrics off".to_owned(),
            |a| format!("http://{a}/metrics"),
        );
        println!("  {:<13} localhost:{:<6} {metrics}", spec.name, spec.port);
    }
    if let Some(port) = prometheus_port {
        println!(
            "  {:<13} http://127.0.0.1:{port}  (alerts: /alerts; rules from {})",
            "prometheus",
            crate::prometheus::RULES_DIR
        );
    }
    match traces_endpoint(lookup) {
        Some((variable, endpoint)) => println!("  traces        {endpoint} ({variable})"),
        None => println!(
            "  traces        off (set OTEL_EXPORTER_OTLP_ENDPOINT, e.g. http://127.0.0.1:4317)"
        ),
    }
    println!();
    println!("A tour (grpcurl needs no .proto files: the services serve reflection):");
    println!();
    println!("  # what is there");
    println!("  grpcurl -plaintext localhost:50051 list");
    println!("  # sign up, then log in (the response holds tokens.accessToken and userId)");
    println!(
        "  grpcurl -plaintext -d '{{\"email\":\"ada@example.com\",\"display_name\":\"Ada\",\"password\":\"correct horse battery\"}}' \\\n      localhost:50051 trellis.user.v1.UserService/CreateUser"
    );
    println!(
        "  grpcurl -plaintext -d '{{\"email\":\"ada@example.com\",\"password\":\"correct horse battery\"}}' \\\n      localhost:50052 trellis.auth.v1.AuthService/Login"
    );
    println!("  TOKEN=<tokens.accessToken>  USER_ID=<userId>");
    println!("  # read yourself with the token");
    println!(
        "  grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" -d \"{{\\\"id\\\":\\\"$USER_ID\\\"}}\" \\\n      localhost:50051 trellis.user.v1.UserService/GetUser"
    );
    println!("  # your notifications, replayed then live (Ctrl-C to leave)");
    println!(
        "  grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" -d '{{}}' \\\n      localhost:50053 trellis.notification.v1.NotificationService/Subscribe"
    );
    println!();
    println!(
        "  {DEV_ADMIN_EMAIL} has the admin role; it logs in with the password in {DEV_ADMIN_PASSWORD_FILE}"
    );
    println!(
        "  (roles: user-service admin grant|revoke EMAIL, or GrantRole/RevokeRole as an admin)"
    );
    println!();
    println!("Press Ctrl-C to stop everything.");
    println!();
}

/// `up --docker`: the images on PostgreSQL under Compose, in the foreground; Ctrl-C stops
/// the containers, then they are removed (the data volume stays).
fn run_compose(args: &Args) -> anyhow::Result<ExitCode> {
    let root = crate::workspace_root();
    let images = &args.images;
    let wanted = ["user", "auth", "notification"]
        .map(|s| images.service_image(s))
        .into_iter()
        .chain([images.postgres_image()]);
    let missing = wanted.clone().any(|image| {
        !Command::new("docker")
            .args(["image", "inspect", &image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if args.build || missing {
        crate::images::run_images(images)?;
    }
    let (program, prefix): (&str, &[&str]) = if Command::new("docker-compose")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
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
        "xtask: the services answer on localhost:50051 (user), 50052 (auth), 50053 (notification)"
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
        "xtask: metrics at http://localhost:51051/metrics (user), :51052 (auth), :51053 (notification)"
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// `up`'s options on a command line of their own.
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(line: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("up").chain(line.iter().copied())).map(|c| c.args)
    }

    fn spec(name: &str) -> &'static ServiceSpec {
        SERVICES
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

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
    fn metrics_ports_are_the_grpc_ports_plus_1000() {
        for spec in SERVICES {
            assert_eq!(spec.metrics_port, spec.port + 1000, "{}", spec.name);
        }
        assert_eq!(
            metrics_port_key(spec("user")),
            "TRELLIS_USER__METRICS__PORT"
        );
    }

    #[test]
    fn metrics_address_follows_the_developers_port_and_host() {
        let user = spec("user");
        let none = |_: &str| None;
        assert_eq!(
            metrics_address(user, none).as_deref(),
            Some("127.0.0.1:51051")
        );
        let set = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let moved = set(&[("TRELLIS_USER__METRICS__PORT", "9400")]);
        assert_eq!(
            metrics_address(user, moved).as_deref(),
            Some("127.0.0.1:9400")
        );
        let off = set(&[("TRELLIS_USER__METRICS__PORT", "0")]);
        assert_eq!(metrics_address(user, off), None);
        assert!(metrics_note(user, off).contains("metrics off"));
        let garbage = set(&[("TRELLIS_USER__METRICS__PORT", "ninety")]);
        assert_eq!(metrics_address(user, garbage), None);
        // Another service's setting is not this one's.
        let other = set(&[("TRELLIS_AUTH__METRICS__PORT", "0")]);
        assert_eq!(
            metrics_address(user, other).as_deref(),
            Some("127.0.0.1:51051")
        );
        let any = set(&[("TRELLIS_USER__METRICS__HOST", "0.0.0.0")]);
        assert_eq!(
            metrics_address(user, any).as_deref(),
            Some("127.0.0.1:51051")
        );
        let v6 = set(&[("TRELLIS_USER__METRICS__HOST", "::1")]);
        assert_eq!(metrics_address(user, v6).as_deref(), Some("[::1]:51051"));
        assert_eq!(
            metrics_note(user, none),
            "; metrics at http://127.0.0.1:51051/metrics"
        );
    }

    #[test]
    fn traces_endpoint_prefers_the_traces_variable() {
        assert_eq!(traces_endpoint(|_| None), None);
        let general = |key: &str| {
            (key == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://collector:4317".to_owned())
        };
        assert_eq!(
            traces_endpoint(general),
            Some((
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector:4317".to_owned()
            ))
        );
        let both = |key: &str| {
            Some(if key == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" {
                "http://traces:4317".to_owned()
            } else {
                "http://collector:4317".to_owned()
            })
        };
        assert_eq!(
            traces_endpoint(both),
            Some((
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:4317".to_owned()
            ))
        );
    }
}
