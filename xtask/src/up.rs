//! `cargo xtask up`: build every service, start them in dependency order with embedded
//! defaults, wait for each to report SERVING, make the dev admin, prefix and colour their
//! logs, and stop them all gracefully on Ctrl-C.

use std::io::{BufRead as _, BufReader, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A service `up` runs: its package, binary, port and environment prefix.
struct ServiceSpec {
    name: &'static str,
    package: &'static str,
    port: u16,
    env_prefix: &'static str,
    colour: &'static str,
}

/// Every service, in dependency order (a service starts after those it calls).
const SERVICES: &[ServiceSpec] = &[
    ServiceSpec {
        name: "notification",
        package: "notification-service",
        port: 50053,
        env_prefix: "TRELLIS_NOTIFICATION",
        colour: "\x1b[35m",
    },
    ServiceSpec {
        name: "user",
        package: "user-service",
        port: 50051,
        env_prefix: "TRELLIS_USER",
        colour: "\x1b[36m",
    },
    ServiceSpec {
        name: "auth",
        package: "auth-service",
        port: 50052,
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
    #[command(flatten)]
    images: crate::images::Args,
}

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
    let environment: Vec<(&str, String)> = vec![
        ("TRELLIS_USER__AUTH__CLIENT_SECRET", user_secret.clone()),
        ("TRELLIS_AUTH__SERVICE_CLIENTS__USER", user_secret),
    ];

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
        if ready.is_ok() && spec.name == "user" {
            ready = grant_dev_admin(&root, spec, &running[last].binary, &environment);
        }
        if let Err(err) = ready {
            stop_all(&mut running);
            return Err(err);
        }
    }

    print_banner(colour);

    let clean = match incoming.recv() {
        Ok(Event::Exited(name)) => {
            eprintln!("xtask: {name} exited unexpectedly; stopping the others");
            false
        }
        Ok(Event::Signal) | Err(_) => true,
    };
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
    environment: &[(&str, String)],
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
fn set_environment(command: &mut Command, spec: &ServiceSpec, environment: &[(&str, String)]) {
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
    environment: &[(&str, String)],
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
        if let Ok(pid) = i32::try_from(service.child.id()) {
            // Already gone is fine: wait() below reports how it ended.
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        match service.child.wait() {
            Ok(status) if status.success() => eprintln!("xtask: {} stopped", service.spec.name),
            Ok(status) => {
                all_zero = false;
                eprintln!("xtask: {} stopped with {status}", service.spec.name);
            }
            Err(err) => {
                all_zero = false;
                eprintln!("xtask: waiting for {}: {err}", service.spec.name);
            }
        }
    }
    all_zero
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

fn print_banner(colour: bool) {
    let (bold, reset) = if colour {
        ("\x1b[1m", "\x1b[0m")
    } else {
        ("", "")
    };
    println!();
    println!("{bold}Trellis is up.{reset} Services:");
    for spec in SERVICES {
        println!("  {:<13} localhost:{}", spec.name, spec.port);
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
    let compose = |verb: &[&str]| {
        let mut command = Command::new(program);
        command
            .current_dir(&root)
            .args(prefix)
            .args(["-p", "trellis", "-f", "deploy/compose.yaml"])
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
    let status = compose(&["up", "--remove-orphans"])
        .env("TRELLIS_USER_CLIENT_SECRET", &secret)
        .status()
        .context("running docker compose")?;
    let down = compose(&["down"])
        .status()
        .context("running docker compose down")?;
    Ok(if status.success() && down.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
