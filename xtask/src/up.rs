//! `cargo xtask up`: build every service, start them in dependency order with embedded
//! defaults, wait for each to report SERVING, make the dev admin, prefix and colour their
//! logs, and stop them all gracefully on Ctrl-C. Each service serves Prometheus metrics
//! on its gRPC port + 1000; `--observability` adds a Prometheus server scraping them
//! ([`crate::prometheus`]), and an `OTEL_EXPORTER_OTLP_ENDPOINT` in the environment
//! reaches every service. `--scale SERVICE=N` runs N processes of a service (its
//! replicas, sharing its database) and points every other service at all of them.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, IsTerminal as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A service `up` runs: its package, binary, ports, environment prefix and peers.
#[derive(Debug, PartialEq, Eq)]
struct ServiceSpec {
    name: &'static str,
    package: &'static str,
    port: u16,
    /// The default `metrics.port` (the gRPC port + 1000), passed explicitly.
    metrics_port: u16,
    env_prefix: &'static str,
    colour: &'static str,
    /// The services it calls (its `DEFAULT_PEERS`, by name).
    peers: &'static [&'static str],
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
        peers: &["auth"],
    },
    ServiceSpec {
        name: "user",
        package: "user-service",
        port: 50051,
        metrics_port: 51051,
        env_prefix: "TRELLIS_USER",
        colour: "\x1b[36m",
        peers: &["auth", "notification"],
    },
    ServiceSpec {
        name: "auth",
        package: "auth-service",
        port: 50052,
        metrics_port: 51052,
        env_prefix: "TRELLIS_AUTH",
        colour: "\x1b[33m",
        peers: &["user", "notification"],
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

/// The most processes `--scale` runs of one service.
const MAX_REPLICAS: usize = 16;

/// `--scale SERVICE=N`: run `replicas` processes of the service named `service`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scale {
    service: &'static str,
    replicas: usize,
}

/// Parses `SERVICE=N` (N from 1 to [`MAX_REPLICAS`]); the error names what is wrong
/// and what is accepted.
fn parse_scale(value: &str) -> Result<Scale, String> {
    let names = || {
        SERVICES
            .iter()
            .map(|spec| spec.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (name, count) = value
        .split_once('=')
        .ok_or_else(|| format!("expected SERVICE=N, e.g. user=3 (services: {})", names()))?;
    let spec = SERVICES
        .iter()
        .find(|spec| spec.name == name.trim())
        .ok_or_else(|| format!("unknown service `{name}` (services: {})", names()))?;
    let replicas = count
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_REPLICAS).contains(n))
        .ok_or_else(|| {
            format!("`{count}` is not a number of replicas: give 1 to {MAX_REPLICAS}")
        })?;
    Ok(Scale {
        service: spec.name,
        replicas,
    })
}

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
    /// The process with this label closed its output (it exited).
    Exited(String),
}

/// One process `up` runs: a replica of a service.
#[derive(Debug)]
struct Replica {
    spec: &'static ServiceSpec,
    /// 1-based; the first keeps the service's default ports.
    index: usize,
    /// How many replicas the service has.
    of: usize,
    /// Its gRPC port.
    port: u16,
    /// Its `/metrics` address; `None` when metrics are off.
    metrics: Option<SocketAddr>,
    /// Variables for this replica alone (its ports), over the developer's.
    own_environment: Vec<(String, String)>,
}

impl Replica {
    /// `user`, or `user#2` when the service has several replicas.
    fn label(&self) -> String {
        if self.of > 1 {
            format!("{}#{}", self.spec.name, self.index)
        } else {
            self.spec.name.to_owned()
        }
    }

    /// Its base URI, as a peer calls it.
    fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// What `up` runs, computed from the options alone: every replica, in start order (a
/// service after those it calls; its first replica first), and the variables scaling
/// adds for every process.
#[derive(Debug)]
struct Plan {
    replicas: Vec<Replica>,
    /// `(key, value)` pairs; each process takes those under its service's prefix, and a
    /// value the developer set wins.
    environment: Vec<(String, String)>,
}

/// Plans the replicas for `scales`: the first of each service on its default ports, the
/// others on ports from `free_port` that are no service's default and not given twice;
/// each other service's `peers.<service>.addresses` lists every replica of a scaled
/// service, and a scaled service gets one `page_token_secret` from `secret` for all its
/// replicas (so a page token from one works at another). `lookup` reads the developer's
/// environment (metrics port and host). Errors when a service is scaled twice, or
/// `free_port` fails or finds no new port.
fn plan(
    scales: &[Scale],
    lookup: impl Fn(&str) -> Option<String>,
    mut free_port: impl FnMut() -> std::io::Result<u16>,
    mut secret: impl FnMut() -> anyhow::Result<String>,
) -> anyhow::Result<Plan> {
    for (i, scale) in scales.iter().enumerate() {
        if scales[..i].iter().any(|s| s.service == scale.service) {
            bail!(
                "--scale names {} twice: give each service once",
                scale.service
            );
        }
    }
    let mut taken: BTreeSet<u16> = SERVICES
        .iter()
        .flat_map(|spec| [spec.port, spec.metrics_port])
        .collect();
    let mut next_port = || -> anyhow::Result<u16> {
        for _ in 0..100 {
            let port = free_port().context("finding a free port for a replica")?;
            if port != 0 && taken.insert(port) {
                return Ok(port);
            }
        }
        bail!("found no free port for a replica in 100 tries")
    };
    let mut replicas = Vec::new();
    for spec in SERVICES {
        let of = scales
            .iter()
            .find(|s| s.service == spec.name)
            .map_or(1, |s| s.replicas);
        let first_metrics = metrics_address(spec, &lookup);
        replicas.push(Replica {
            spec,
            index: 1,
            of,
            port: spec.port,
            metrics: first_metrics,
            own_environment: Vec::new(),
        });
        for index in 2..=of {
            let port = next_port()?;
            let metrics = match first_metrics {
                Some(first) => Some(SocketAddr::new(first.ip(), next_port()?)),
                None => None,
            };
            let metrics_port = metrics.map_or(0, |a| a.port());
            replicas.push(Replica {
                spec,
                index,
                of,
                port,
                metrics,
                own_environment: vec![
                    (
                        format!("{}__SERVER__LISTEN_ADDR", spec.env_prefix),
                        SocketAddr::from(([0, 0, 0, 0], port)).to_string(),
                    ),
                    (metrics_port_key(spec), metrics_port.to_string()),
                ],
            });
        }
    }
    let mut environment = Vec::new();
    for spec in SERVICES {
        let own: Vec<&Replica> = replicas.iter().filter(|r| r.spec == spec).collect();
        if own.len() < 2 {
            continue;
        }
        let addresses = own.iter().map(|r| r.uri()).collect::<Vec<_>>().join(",");
        for caller in SERVICES.iter().filter(|c| c.peers.contains(&spec.name)) {
            environment.push((
                format!(
                    "{}__PEERS__{}__ADDRESSES",
                    caller.env_prefix,
                    spec.name.to_uppercase()
                ),
                addresses.clone(),
            ));
        }
        environment.push((format!("{}__PAGE_TOKEN_SECRET", spec.env_prefix), secret()?));
    }
    Ok(Plan {
        replicas,
        environment,
    })
}

/// A free TCP port on 127.0.0.1, as the OS hands one out (bound, then released).
fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()
        .map(|a| a.port())
}

/// The scrape targets of `--observability`: every replica with metrics on, under its
/// service's job.
fn prometheus_targets<'a>(
    replicas: impl IntoIterator<Item = &'a Replica>,
) -> Vec<crate::prometheus::Target> {
    replicas
        .into_iter()
        .filter_map(|replica| {
            replica.metrics.map(|address| crate::prometheus::Target {
                job: replica.spec.name,
                address: address.to_string(),
            })
        })
        .collect()
}

/// A started replica.
struct Running {
    replica: Replica,
    child: Child,
    binary: PathBuf,
    /// Set once it exited on its own (it was reaped: never signal its pid again).
    exited: bool,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if args.docker {
        return run_compose(args);
    }
    let root = crate::workspace_root();
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let lookup = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    let plan = plan(&args.scale, lookup, free_port, random_secret)?;
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
    environment.extend(plan.environment);
    // The services inherit xtask's environment (nothing here clears it), so the OTEL_*
    // variables reach every one of them unchanged.
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
            launched = grant_dev_admin(&root, service, &environment);
        }
        if launched.is_ok() && !others.is_empty() {
            launched = launcher.launch(others, &mut running);
        }
        if let Err(err) = launched {
            stop_all(&mut running);
            return Err(err);
        }
    }

    let mut prometheus = None;
    if args.observability {
        let targets = prometheus_targets(running.iter().map(|service| &service.replica));
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
        &running,
        lookup,
        prometheus.is_some().then_some(args.prometheus_port),
    );

    let clean = watch(&mut running, &incoming);
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

/// What starting a replica needs: the workspace, the built binaries, whether logs are
/// coloured, the shared environment, and the channel processes report their exit on.
struct Launcher<'a> {
    root: &'a Path,
    binaries: &'a [(String, PathBuf)],
    colour: bool,
    environment: &'a [(String, String)],
    events: mpsc::Sender<Event>,
    incoming: &'a mpsc::Receiver<Event>,
}

impl Launcher<'_> {
    /// Starts `batch` (replicas of one service), adds them to `running`, and waits
    /// until each reports SERVING.
    fn launch(&self, batch: Vec<Replica>, running: &mut Vec<Running>) -> anyhow::Result<()> {
        let from = running.len();
        for replica in batch {
            let package = replica.spec.package;
            let binary = self
                .binaries
                .iter()
                .find(|(name, _)| name == package)
                .map(|(_, path)| path.clone())
                .with_context(|| format!("cargo built no binary named {package}"))?;
            running.push(start(
                self.root,
                replica,
                binary,
                self.colour,
                self.environment,
                self.events.clone(),
            )?);
        }
        for service in &running[from..] {
            wait_ready(service, self.environment, self.incoming)?;
            let replica = &service.replica;
            eprintln!(
                "xtask: {} is SERVING on localhost:{} (pid {}){}",
                replica.label(),
                replica.port,
                service.child.id(),
                metrics_note(replica)
            );
        }
        Ok(())
    }
}

/// Waits for Ctrl-C, reporting each process that exits meanwhile. A replica that exits
/// while others of its service still run is reported and the rest keep going (the
/// others' peer channels eject it: that is what scaling is for). When an unscaled
/// service's process exits, everything stops; a scaled service may lose every replica
/// (its callers then fail fast until one returns). Returns whether no process exited on
/// its own.
fn watch(running: &mut [Running], incoming: &mpsc::Receiver<Event>) -> bool {
    let mut clean = true;
    loop {
        let label = match incoming.recv() {
            Ok(Event::Exited(label)) => label,
            Ok(Event::Signal) | Err(_) => return clean,
        };
        let Some(gone) = running
            .iter_mut()
            .find(|s| !s.exited && s.replica.label() == label)
        else {
            continue;
        };
        clean = false;
        let how = match reap(&mut gone.child) {
            Some(status) => {
                gone.exited = true;
                status.to_string()
            }
            None => "closed its output".to_owned(),
        };
        let spec = gone.replica.spec;
        let left = running
            .iter()
            .filter(|s| s.replica.spec == spec && !s.exited)
            .count();
        let scaled = running.iter().filter(|s| s.replica.spec == spec).count() > 1;
        if left == 0 && !scaled {
            eprintln!("xtask: {label} exited unexpectedly ({how}); stopping the others");
            return false;
        }
        if left == 0 {
            eprintln!(
                "xtask: {label} exited unexpectedly ({how}); no {} replica is left: calls to \
                 it fail fast with UNAVAILABLE until one listens on a replica's address again \
                 (Ctrl-C stops everything)",
                spec.name
            );
            continue;
        }
        eprintln!(
            "xtask: {label} exited unexpectedly ({how}); {left} other {} replica(s) still \
             serve, so everything keeps running (Ctrl-C stops it)",
            spec.name
        );
    }
}

/// The exit status of a process whose output just closed, polling for up to 2 s;
/// `None` when it still runs.
fn reap(child: &mut Child) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if started.elapsed() < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(None) | Err(_) => return None,
        }
    }
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

/// Starts `replica` from `binary`, forwarding its output under its label.
fn start(
    root: &Path,
    replica: Replica,
    binary: PathBuf,
    colour: bool,
    environment: &[(String, String)],
    events: mpsc::Sender<Event>,
) -> anyhow::Result<Running> {
    let spec = replica.spec;
    let mut command = Command::new(&binary);
    command
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    set_environment(&mut command, &replica, environment);
    let format_key = format!("{}__TELEMETRY__LOG_FORMAT", spec.env_prefix);
    if std::env::var_os(&format_key).is_none() {
        command.env(format_key, "text");
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let label = replica.label();
    let prefix = if colour {
        format!("{}{label:<13}|\x1b[0m ", spec.colour)
    } else {
        format!("{label:<13}| ")
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
        forward(stderr, prefix, Some((events, label)));
    }
    Ok(Running {
        replica,
        child,
        binary,
        exited: false,
    })
}

/// Sets `replica`'s share of `environment` on `command` (a value the developer set
/// wins), then its own variables (its ports), which always do.
fn set_environment(command: &mut Command, replica: &Replica, environment: &[(String, String)]) {
    for (key, value) in environment {
        if key.starts_with(replica.spec.env_prefix) && std::env::var_os(key).is_none() {
            command.env(key, value);
        }
    }
    command.envs(replica.own_environment.iter().map(|(k, v)| (k, v)));
}

/// Gives [`DEV_ADMIN_EMAIL`] the admin role with `user-service admin grant --create`,
/// run with the same config as the service (it may run meanwhile: they share the
/// database). On the first run it creates the account, with the password in
/// [`DEV_ADMIN_PASSWORD_FILE`]; later runs only make sure of the role.
fn grant_dev_admin(
    root: &Path,
    service: &Running,
    environment: &[(String, String)],
) -> anyhow::Result<()> {
    let binary = &service.binary;
    let password = dev_admin_password(root)?;
    let mut command = Command::new(binary);
    command
        .current_dir(root)
        .args(["admin", "grant", "--create", DEV_ADMIN_EMAIL])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    set_environment(&mut command, &service.replica, environment);
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
    on_close: Option<(mpsc::Sender<Event>, String)>,
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

/// Polls the service's own `healthcheck` subcommand, with the replica's configuration
/// (its port), until it reports SERVING.
fn wait_ready(
    service: &Running,
    environment: &[(String, String)],
    events: &mpsc::Receiver<Event>,
) -> anyhow::Result<()> {
    let label = service.replica.label();
    let started = Instant::now();
    loop {
        match events.try_recv() {
            Ok(Event::Signal) => bail!("interrupted while {label} was starting"),
            Ok(Event::Exited(name)) => bail!("{name} exited during start-up (see its log above)"),
            Err(_) => {}
        }
        let mut command = Command::new(&service.binary);
        set_environment(&mut command, &service.replica, environment);
        let status = command
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
                "{label} did not report SERVING within {} s",
                READY_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends SIGTERM to every process still running, newest first, and waits for each.
/// Returns whether all exited with status 0 (one that exited on its own already counts
/// as not).
fn stop_all(running: &mut [Running]) -> bool {
    let mut all_zero = true;
    for service in running.iter_mut().rev() {
        if service.exited {
            all_zero = false;
        } else {
            all_zero &= stop_child(&service.replica.label(), &mut service.child);
        }
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

/// The `host:port` of the `/metrics` of `spec`'s first replica under `up`: the port the
/// developer set (`TRELLIS_<SERVICE>__METRICS__PORT`, read through `lookup`) or the
/// default `up` passes, on 127.0.0.1 unless `metrics.host` names one address. `None`
/// when the port is 0 (metrics off) or not a port.
fn metrics_address(
    spec: &ServiceSpec,
    lookup: impl Fn(&str) -> Option<String>,
) -> Option<SocketAddr> {
    let port = match lookup(&metrics_port_key(spec)) {
        Some(value) => value.trim().parse::<u16>().ok()?,
        None => spec.metrics_port,
    };
    if port == 0 {
        return None;
    }
    let host = lookup(&format!("{}__METRICS__HOST", spec.env_prefix))
        .and_then(|h| h.trim().parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    Some(SocketAddr::from((host, port)))
}

/// What to say about `replica`'s metrics after "is SERVING": its URL, or that they are off.
fn metrics_note(replica: &Replica) -> String {
    match replica.metrics {
        Some(address) => format!("; metrics at http://{address}/metrics"),
        None => format!(
            " (metrics off: {} is 0 or not a port)",
            metrics_port_key(replica.spec)
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
    running: &[Running],
    lookup: impl Fn(&str) -> Option<String> + Copy,
    prometheus_port: Option<u16>,
) {
    let (bold, reset) = if colour {
        ("\x1b[1m", "\x1b[0m")
    } else {
        ("", "")
    };
    println!();
    println!("{bold}Trellis is up.{reset} Services (gRPC, Prometheus metrics, pid):");
    for service in running {
        let replica = &service.replica;
        let metrics = replica.metrics.map_or_else(
            || "metrics off".to_owned(),
            |a| format!("http://{a}/metrics"),
        );
        println!(
            "  {:<13} localhost:{:<6} {metrics:<37} pid {}",
            replica.label(),
            replica.port,
            service.child.id()
        );
    }
    if running.iter().any(|s| s.replica.of > 1) {
        println!(
            "  (the other services call every replica: peers.<service>.addresses lists them all)"
        );
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

    /// A `lookup` answering from `pairs`, as the developer's environment.
    fn set(
        pairs: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Option<String> + Copy {
        move |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    /// No developer settings.
    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn metrics_address_follows_the_developers_port_and_host() {
        let user = spec("user");
        let address = |lookup| metrics_address(user, lookup).map(|a| a.to_string());
        assert_eq!(address(set(&[])).as_deref(), Some("127.0.0.1:51051"));
        let moved = set(&[("TRELLIS_USER__METRICS__PORT", "9400")]);
        assert_eq!(address(moved).as_deref(), Some("127.0.0.1:9400"));
        let off = set(&[("TRELLIS_USER__METRICS__PORT", "0")]);
        assert_eq!(address(off), None);
        let garbage = set(&[("TRELLIS_USER__METRICS__PORT", "ninety")]);
        assert_eq!(address(garbage), None);
        // Another service's setting is not this one's.
        let other = set(&[("TRELLIS_AUTH__METRICS__PORT", "0")]);
        assert_eq!(address(other).as_deref(), Some("127.0.0.1:51051"));
        let any = set(&[("TRELLIS_USER__METRICS__HOST", "0.0.0.0")]);
        assert_eq!(address(any).as_deref(), Some("127.0.0.1:51051"));
        let v6 = set(&[("TRELLIS_USER__METRICS__HOST", "::1")]);
        assert_eq!(address(v6).as_deref(), Some("[::1]:51051"));
    }

    #[test]
    fn metrics_note_gives_the_url_or_says_metrics_are_off() {
        let on = test_plan(&[], set(&[]), &[]).replicas;
        assert_eq!(
            metrics_note(&on[1]),
            "; metrics at http://127.0.0.1:51051/metrics"
        );
        let off = test_plan(&[], set(&[("TRELLIS_USER__METRICS__PORT", "0")]), &[]).replicas;
        assert!(
            metrics_note(&off[1]).contains("metrics off"),
            "{}",
            metrics_note(&off[1])
        );
    }

    /// [`plan`] with free ports taken in turn from `ports` (then 40000, 40001, …) and
    /// secrets `secret-1`, `secret-2`, ….
    fn test_plan(scales: &[Scale], lookup: impl Fn(&str) -> Option<String>, ports: &[u16]) -> Plan {
        try_plan(scales, lookup, ports).expect("a plan")
    }

    fn try_plan(
        scales: &[Scale],
        lookup: impl Fn(&str) -> Option<String>,
        ports: &[u16],
    ) -> anyhow::Result<Plan> {
        let mut ports = ports.iter().copied();
        let mut next = 40_000;
        let mut secrets = 0;
        plan(
            scales,
            lookup,
            || {
                Ok(ports.next().unwrap_or_else(|| {
                    next += 1;
                    next - 1
                }))
            },
            || {
                secrets += 1;
                Ok(format!("secret-{secrets}"))
            },
        )
    }

    fn scale(line: &[&str]) -> Vec<Scale> {
        let mut args = vec![];
        for value in line {
            args.extend(["--scale", value]);
        }
        parse(&args).expect("valid --scale").scale
    }

    fn value<'a>(plan: &'a Plan, key: &str) -> Option<&'a str> {
        plan.environment
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn replicas_of<'a>(plan: &'a Plan, name: &str) -> Vec<&'a Replica> {
        plan.replicas
            .iter()
            .filter(|r| r.spec.name == name)
            .collect()
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

    #[test]
    fn without_scale_up_runs_one_process_per_service_on_its_default_ports() {
        let plan = test_plan(&[], none, &[]);
        let started: Vec<(String, u16, Option<String>)> = plan
            .replicas
            .iter()
            .map(|r| (r.label(), r.port, r.metrics.map(|a| a.to_string())))
            .collect();
        assert_eq!(
            started,
            [
                (
                    "notification".to_owned(),
                    50053,
                    Some("127.0.0.1:51053".to_owned())
                ),
                ("user".to_owned(), 50051, Some("127.0.0.1:51051".to_owned())),
                ("auth".to_owned(), 50052, Some("127.0.0.1:51052".to_owned())),
            ]
        );
        assert!(plan.replicas.iter().all(|r| r.own_environment.is_empty()));
        // The services' own default peer addresses stay in force.
        assert_eq!(plan.environment, []);
    }

    #[test]
    fn replicas_after_the_first_take_distinct_free_ports_that_are_no_default() {
        // The port source hands out defaults and repeats: the plan skips them.
        let plan = test_plan(
            &scale(&["user=3"]),
            none,
            &[
                50051, 41001, 51053, 41001, 41002, 50052, 41003, 41001, 41004,
            ],
        );
        let user = replicas_of(&plan, "user");
        let found: Vec<(String, u16, Option<String>)> = user
            .iter()
            .map(|r| (r.label(), r.port, r.metrics.map(|a| a.to_string())))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "user#1".to_owned(),
                    50051,
                    Some("127.0.0.1:51051".to_owned())
                ),
                (
                    "user#2".to_owned(),
                    41001,
                    Some("127.0.0.1:41002".to_owned())
                ),
                (
                    "user#3".to_owned(),
                    41003,
                    Some("127.0.0.1:41004".to_owned())
                ),
            ]
        );
        assert_eq!(user[0].own_environment, []);
        assert_eq!(
            user[2].own_environment,
            [
                (
                    "TRELLIS_USER__SERVER__LISTEN_ADDR".to_owned(),
                    "0.0.0.0:41003".to_owned()
                ),
                ("TRELLIS_USER__METRICS__PORT".to_owned(), "41004".to_owned()),
            ]
        );
        // The other services stay single, and start after those they call.
        let labels: Vec<String> = plan.replicas.iter().map(Replica::label).collect();
        assert_eq!(
            labels,
            ["notification", "user#1", "user#2", "user#3", "auth"]
        );
    }

    #[test]
    fn plan_fails_when_no_new_free_port_comes() {
        let mut calls = 0;
        let err = plan(
            &scale(&["user=2"]),
            none,
            || {
                calls += 1;
                Ok(50051)
            },
            || Ok("s".to_owned()),
        )
        .expect_err("only a default port on offer");
        assert!(err.to_string().contains("no free port"), "{err}");
        assert_eq!(calls, 100);
        let err = plan(
            &scale(&["user=2"]),
            none,
            || Err(std::io::Error::other("no sockets")),
            || Ok("s".to_owned()),
        )
        .expect_err("the port source fails");
        assert!(format!("{err:#}").contains("no sockets"), "{err:#}");
    }

    #[test]
    fn every_caller_of_a_scaled_service_lists_all_its_replicas() {
        let plan = test_plan(&scale(&["user=3", "notification=2"]), none, &[]);
        let uris = |name| {
            replicas_of(&plan, name)
                .iter()
                .map(|r| r.uri())
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            uris("user"),
            "http://127.0.0.1:50051,http://127.0.0.1:40002,http://127.0.0.1:40004"
        );
        let users = uris("user");
        let notifications = "http://127.0.0.1:50053,http://127.0.0.1:40000";
        for (key, expected) in [
            // auth calls user; nobody else does.
            ("TRELLIS_AUTH__PEERS__USER__ADDRESSES", Some(users.as_str())),
            ("TRELLIS_NOTIFICATION__PEERS__USER__ADDRESSES", None),
            // user and auth call notification.
            (
                "TRELLIS_USER__PEERS__NOTIFICATION__ADDRESSES",
                Some(notifications),
            ),
            (
                "TRELLIS_AUTH__PEERS__NOTIFICATION__ADDRESSES",
                Some(notifications),
            ),
            // auth is not scaled: its callers keep their default address.
            ("TRELLIS_USER__PEERS__AUTH__ADDRESSES", None),
            // One page-token key per scaled service, shared by its replicas.
            ("TRELLIS_NOTIFICATION__PAGE_TOKEN_SECRET", Some("secret-1")),
            ("TRELLIS_USER__PAGE_TOKEN_SECRET", Some("secret-2")),
            ("TRELLIS_AUTH__PAGE_TOKEN_SECRET", None),
        ] {
            assert_eq!(value(&plan, key), expected, "{key}");
        }
        // A replica takes the shared variables of its service, not another's.
        let mut command = Command::new("true");
        set_environment(
            &mut command,
            replicas_of(&plan, "user")[1],
            &plan.environment,
        );
        let passed: Vec<String> = command
            .get_envs()
            .filter_map(|(k, _)| k.to_str().map(str::to_owned))
            .collect();
        assert!(
            passed.contains(&"TRELLIS_USER__PEERS__NOTIFICATION__ADDRESSES".to_owned())
                && passed.contains(&"TRELLIS_USER__SERVER__LISTEN_ADDR".to_owned())
                && !passed.iter().any(|k| k.starts_with("TRELLIS_AUTH")),
            "{passed:?}"
        );
    }

    #[test]
    fn scaling_a_service_twice_is_an_error() {
        let err = try_plan(&scale(&["user=2", "user=3"]), none, &[]).expect_err("twice");
        assert!(err.to_string().contains("names user twice"), "{err}");
    }

    #[test]
    fn replicas_keep_metrics_off_when_the_developer_turned_them_off() {
        let plan = test_plan(
            &scale(&["auth=2"]),
            set(&[("TRELLIS_AUTH__METRICS__PORT", "0")]),
            &[],
        );
        let auth = replicas_of(&plan, "auth");
        assert_eq!(
            auth.iter().map(|r| r.metrics).collect::<Vec<_>>(),
            [None, None]
        );
        assert_eq!(
            auth[1].own_environment[1],
            ("TRELLIS_AUTH__METRICS__PORT".to_owned(), "0".to_owned())
        );
        // The developer's metrics host applies to every replica.
        let plan = test_plan(
            &scale(&["auth=2"]),
            set(&[("TRELLIS_AUTH__METRICS__HOST", "::1")]),
            &[],
        );
        let auth = replicas_of(&plan, "auth");
        assert_eq!(
            auth[1].metrics.map(|a| a.to_string()).as_deref(),
            Some("[::1]:40001")
        );
    }

    #[test]
    fn prometheus_scrapes_every_replica_under_its_service_job() {
        let plan = test_plan(&scale(&["user=3"]), none, &[]);
        let targets: Vec<(&str, String)> = prometheus_targets(&plan.replicas)
            .into_iter()
            .map(|t| (t.job, t.address))
            .collect();
        assert_eq!(
            targets,
            [
                ("notification", "127.0.0.1:51053".to_owned()),
                ("user", "127.0.0.1:51051".to_owned()),
                ("user", "127.0.0.1:40001".to_owned()),
                ("user", "127.0.0.1:40003".to_owned()),
                ("auth", "127.0.0.1:51052".to_owned()),
            ]
        );
        let off = test_plan(
            &scale(&["user=2"]),
            set(&[("TRELLIS_USER__METRICS__PORT", "0")]),
            &[],
        );
        assert!(
            prometheus_targets(&off.replicas)
                .iter()
                .all(|t| t.job != "user")
        );
    }

    #[test]
    fn the_peer_table_matches_the_services_default_peers() {
        let root = crate::workspace_root();
        for service in SERVICES {
            let path = root.join(format!("services/{}/src/lib.rs", service.name));
            let source = std::fs::read_to_string(&path).expect("the service's lib.rs");
            let start = source.find("DEFAULT_PEERS").expect("DEFAULT_PEERS");
            let block = &source[start..];
            let block = &block[..block.find("];").expect("the end of DEFAULT_PEERS")];
            // ("name", "http://127.0.0.1:port") pairs: every other quoted string.
            let quoted: Vec<&str> = block.split('"').skip(1).step_by(2).collect();
            let names: Vec<&str> = quoted.iter().step_by(2).copied().collect();
            assert_eq!(names, service.peers, "{}", path.display());
            for pair in quoted.chunks(2) {
                let peer = spec(pair[0]);
                assert_eq!(
                    pair[1],
                    format!("http://127.0.0.1:{}", peer.port),
                    "{pair:?}"
                );
            }
        }
    }

    /// A replica of `name` for the process tests.
    fn replica(name: &str, index: usize, of: usize) -> Replica {
        Replica {
            spec: spec(name),
            index,
            of,
            port: 0,
            metrics: None,
            own_environment: Vec::new(),
        }
    }

    fn running(replica: Replica, script: &str) -> Running {
        let child = Command::new("sh")
            .args(["-c", script])
            .spawn()
            .expect("sh runs");
        Running {
            replica,
            child,
            binary: PathBuf::from("sh"),
            exited: false,
        }
    }

    #[test]
    fn a_replica_exiting_while_others_serve_leaves_the_rest_running() {
        let mut processes = vec![
            running(replica("user", 1, 2), "exec sleep 60"),
            running(replica("user", 2, 2), "exit 3"),
        ];
        let (events, incoming) = mpsc::channel();
        events
            .send(Event::Exited("user#2".to_owned()))
            .expect("send");
        events.send(Event::Signal).expect("send");
        // Returns at the Signal, not at the exit: not clean, since one exited.
        assert!(!watch(&mut processes, &incoming));
        assert!(processes[1].exited);
        assert!(!processes[0].exited);
        assert_eq!(processes[0].child.try_wait().expect("try_wait"), None);
        assert!(!stop_all(&mut processes));
        assert!(processes[0].child.try_wait().expect("try_wait").is_some());
    }

    #[test]
    fn the_last_process_of_a_service_exiting_stops_everything() {
        let mut processes = vec![
            running(replica("auth", 1, 1), "exec sleep 60"),
            running(replica("user", 1, 1), "exit 0"),
        ];
        let (events, incoming) = mpsc::channel();
        events.send(Event::Exited("user".to_owned())).expect("send");
        // No Signal is sent: watch returns at the exit.
        assert!(!watch(&mut processes, &incoming));
        assert!(processes[1].exited);
        assert!(!stop_all(&mut processes));
        assert!(processes[0].child.try_wait().expect("try_wait").is_some());
    }

    #[test]
    fn a_scaled_service_losing_every_replica_keeps_the_rest_running() {
        let mut processes = vec![
            running(replica("auth", 1, 1), "exec sleep 60"),
            running(replica("user", 1, 2), "exit 0"),
            running(replica("user", 2, 2), "exit 0"),
        ];
        let (events, incoming) = mpsc::channel();
        for label in ["user#1", "user#2"] {
            events.send(Event::Exited(label.to_owned())).expect("send");
        }
        events.send(Event::Signal).expect("send");
        // Returns at the Signal: auth's callers fail fast meanwhile, and a returning
        // replica would be found again.
        assert!(!watch(&mut processes, &incoming));
        assert!(processes[1].exited && processes[2].exited);
        assert_eq!(processes[0].child.try_wait().expect("try_wait"), None);
        assert!(!stop_all(&mut processes));
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
