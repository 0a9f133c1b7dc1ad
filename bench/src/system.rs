//! Processes the bench starts: the three services (release binaries, a fresh SQLite
//! database each in a temporary directory, free ports, the dev setup's credentials) or
//! the bare-tonic baseline server, each pinned to the server CPUs with `taskset` when
//! asked, waited for until they report SERVING, and stopped with SIGTERM at the end.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::load::{SystemUnderTest, Targets};

/// How long a process may take to report SERVING.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a starting process's health is asked: the resolution of its start-up time.
const READY_POLL: Duration = Duration::from_millis(2);
/// How long the system idles after start-up before its idle memory is read: the start-up
/// work (key fetches, the outbox's first look) is done by then.
const IDLE_SETTLE: Duration = Duration::from_secs(1);

/// A started process's start-up figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Startup {
    /// The process's name (`user`, `auth`, `notification`, `baseline`).
    pub process: String,
    /// From the spawn to the first health Check answered SERVING, ms (to within the
    /// 2 ms poll): a cold start, migrations of a fresh database included.
    pub serving_ms: f64,
    /// Resident memory (`VmRSS`) after [`IDLE_SETTLE`] of idling once everything is
    /// SERVING, KiB.
    pub idle_rss_kib: u64,
    /// Its anonymous part (`RssAnon`), KiB: the rest is the binary's own resident pages.
    pub idle_rss_anon_kib: u64,
}

/// The client id the bench's service credentials belong to: the user service's, which
/// `SendNotification` admits (as `cargo xtask up` sets it up).
pub const SERVICE_CLIENT_ID: &str = "user";

/// A service the bench starts: binary, environment prefix, peers.
struct ServiceSpec {
    name: &'static str,
    binary: &'static str,
    env_prefix: &'static str,
    peers: &'static [&'static str],
}

/// In dependency order (a service starts after those it calls), as `cargo xtask up`.
const SERVICES: [ServiceSpec; 3] = [
    ServiceSpec {
        name: "notification",
        binary: "notification-service",
        env_prefix: "TRELLIS_NOTIFICATION",
        peers: &["auth"],
    },
    ServiceSpec {
        name: "user",
        binary: "user-service",
        env_prefix: "TRELLIS_USER",
        peers: &["auth", "notification"],
    },
    ServiceSpec {
        name: "auth",
        binary: "auth-service",
        env_prefix: "TRELLIS_AUTH",
        peers: &["user", "notification"],
    },
];

/// Whether `taskset` (util-linux) can be run.
#[must_use]
pub fn taskset_available() -> bool {
    Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A command running `program` on `cpus` (`taskset -c`, which execs it, so the child's
/// pid is the program's), or unpinned without them.
fn pinned(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.args(["-c", cpus]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Pins every thread of this process to `cpus` (a `taskset` list such as `1` or `1-3`).
/// Call it before starting the async runtime, so its workers are sized to the list.
///
/// # Errors
/// `taskset` fails (no such CPU, not installed).
pub fn pin_current_process(cpus: &str) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset")?;
    if !status.success() {
        bail!("taskset -c {cpus} failed ({status})");
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
///
/// # Errors
/// No port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// 192 random bits from the OS, hex-encoded.
pub(crate) fn random_secret() -> anyhow::Result<String> {
    let mut bytes = [0_u8; 24];
    getrandom::fill(&mut bytes).context("reading the OS's random bytes")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// One process the bench started.
#[derive(Debug)]
struct Managed {
    name: String,
    child: Child,
    log: PathBuf,
    spawned: Instant,
    serving_after: Option<Duration>,
}

/// Processes the bench started, with their working directory; dropping it kills any
/// still running ([`Running::stop`] ends them gracefully).
#[derive(Debug)]
pub struct Running {
    processes: Vec<Managed>,
    dir: tempfile::TempDir,
}

impl Running {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            processes: Vec::new(),
            dir: tempfile::Builder::new()
                .prefix("trellis-bench-")
                .tempdir()
                .context("making a temporary directory")?,
        })
    }

    /// `(name, pid)` of each process.
    #[must_use]
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.processes
            .iter()
            .map(|p| (p.name.clone(), p.child.id()))
            .collect()
    }

    /// Starts `program` with `args` and `env` as `name`, pinned to `cpus`, its output
    /// in a log file of the working directory.
    fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        cpus: Option<&str>,
    ) -> anyhow::Result<()> {
        let log = self.dir.path().join(format!("{name}.log"));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = pinned(program, cpus);
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        // taskset execs the program: the child's pid is the service's.
        let spawned = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        self.processes.push(Managed {
            name: name.to_owned(),
            child,
            log,
            spawned,
            serving_after: None,
        });
        Ok(())
    }

    /// Each process's start-up time and, after [`IDLE_SETTLE`] of idling, its resident
    /// memory.
    ///
    /// # Errors
    /// A process's `/proc` files cannot be read (it exited).
    pub async fn startup(&self) -> anyhow::Result<Vec<Startup>> {
        tokio::time::sleep(IDLE_SETTLE).await;
        self.processes
            .iter()
            .map(|p| {
                let sample = crate::procstat::sample(p.child.id())?;
                Ok(Startup {
                    process: p.name.clone(),
                    serving_ms: p.serving_after.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
                    idle_rss_kib: sample.rss_kib,
                    idle_rss_anon_kib: sample.rss_anon_kib,
                })
            })
            .collect()
    }

    /// Polls `uri`'s health Check until it answers SERVING, and records the time since
    /// the spawn; fails when the newest process exits first or [`READY_TIMEOUT`] passes.
    async fn wait_serving(&mut self, uri: &str) -> anyhow::Result<()> {
        let Some(process) = self.processes.last_mut() else {
            bail!("no process to wait for");
        };
        let started = process.spawned;
        loop {
            if let Some(status) = process.child.try_wait()? {
                bail!(
                    "{} exited during start-up ({status}); its log:\n{}",
                    process.name,
                    tail(&process.log)
                );
            }
            if serving(uri).await {
                process.serving_after = Some(started.elapsed());
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "{} did not report SERVING within {} s; its log:\n{}",
                    process.name,
                    READY_TIMEOUT.as_secs(),
                    tail(&process.log)
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Sends SIGTERM to every process, newest first, and waits for each (SIGKILL after
    /// [`STOP_TIMEOUT`]). Reports a process that did not exit with status 0.
    ///
    /// # Errors
    /// A process exited with a failure, or had to be killed.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let processes = std::mem::take(&mut self.processes);
        tokio::task::spawn_blocking(move || {
            let mut failures = Vec::new();
            for mut process in processes.into_iter().rev() {
                if let Err(err) = stop_one(&mut process) {
                    failures.push(format!("{err:#}\n{}", tail(&process.log)));
                }
            }
            if failures.is_empty() {
                Ok(())
            } else {
                bail!("{}", failures.join("\n"))
            }
        })
        .await
        .context("stopping the processes")?
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for process in &mut self.processes {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }
}

fn stop_one(process: &mut Managed) -> anyhow::Result<()> {
    let pid = Pid::from_raw(i32::try_from(process.child.id())?);
    // Already gone is fine: the wait below says how it ended.
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = std::time::Instant::now() + STOP_TIMEOUT;
    loop {
        if let Some(status) = process.child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!("{} stopped with {status}", process.name);
        }
        if std::time::Instant::now() > deadline {
            let _ = process.child.kill();
            let _ = process.child.wait();
            bail!(
                "{} did not stop within {} s and was killed",
                process.name,
                STOP_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last lines of a log file, for an error message.
pub(crate) fn tail(path: &Path) -> String {
    let Ok(file) = std::fs::File::open(path) else {
        return String::new();
    };
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

pub(crate) async fn serving(uri: &str) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(uri.to_owned()) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .is_ok_and(|r| r.get_ref().status() == ServingStatus::Serving)
}

/// Runs `program argon2-rate --duration DURATION` (normally this very binary) pinned to
/// `cpus` and returns the argon2id verifications a second it printed: the login
/// scenario's reference, measured on the servers' core.
///
/// # Errors
/// It cannot be run, fails, or prints no number.
pub async fn argon2_rate(
    program: &Path,
    cpus: Option<&str>,
    duration: Duration,
) -> anyhow::Result<f64> {
    let mut command = pinned(program, cpus);
    command
        .arg("argon2-rate")
        .arg("--duration")
        .arg(format!("{}ms", duration.as_millis()));
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .context("running argon2-rate")?
        .context("running argon2-rate")?;
    if !output.status.success() {
        bail!(
            "argon2-rate failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("argon2-rate printed {text:?}, not a rate"))
}

/// Starts the bare-tonic baseline server (`program baseline-server --listen ADDR`,
/// normally this very binary) pinned to `cpus`.
///
/// # Errors
/// It cannot be started or does not report SERVING.
pub async fn start_baseline(
    program: &Path,
    cpus: Option<&str>,
) -> anyhow::Result<(Running, SystemUnderTest)> {
    let mut running = Running::new()?;
    let address = format!("127.0.0.1:{}", free_port()?);
    running.spawn(
        "baseline",
        program,
        &["baseline-server", "--listen", &address],
        &[],
        cpus,
    )?;
    let uri = format!("http://{address}");
    running.wait_serving(&uri).await?;
    let sut = SystemUnderTest {
        targets: Targets {
            health: Some(uri),
            ..Targets::default()
        },
        processes: running.pids(),
        service_client: None,
    };
    Ok((running, sut))
}

/// Starts the three services from `bin_dir` (`user-service`, `auth-service`,
/// `notification-service`) on free ports with fresh SQLite databases, pinned to `cpus`,
/// with `extra_env` on top of the dev setup, and waits until each reports SERVING.
///
/// The dev setup (as `cargo xtask up`): a random client secret shared by the user
/// service and auth, peers at each other's addresses; plus the sign-up rate limit off
/// (`sign_up_rate.per_minute = 0`) and the per-caller rate limits off
/// (`rate_limits.enabled = false`), since every call comes from 127.0.0.1 and a handful
/// of subjects: the bench measures the service, not one caller's budget.
///
/// # Errors
/// A binary is missing, or a service fails to start.
pub async fn start_system(
    bin_dir: &Path,
    cpus: Option<&str>,
    extra_env: &[(String, String)],
) -> anyhow::Result<(Running, SystemUnderTest)> {
    let mut running = Running::new()?;
    let secret = random_secret()?;
    let ports: Vec<(&str, u16)> = SERVICES
        .iter()
        .map(|s| Ok((s.name, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let address = |name: &str| {
        let port = ports
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, p)| *p);
        format!("http://127.0.0.1:{port}")
    };
    let data = running.dir.path().to_owned();
    for spec in &SERVICES {
        let binary = bin_dir.join(spec.binary);
        if !binary.is_file() {
            bail!(
                "{} is missing: build it with `cargo build --release -p {}` or run `cargo xtask bench`",
                binary.display(),
                spec.binary
            );
        }
        let prefix = spec.env_prefix;
        let listen = address(spec.name).trim_start_matches("http://").to_owned();
        let mut env = vec![
            (format!("{prefix}__SERVER__LISTEN_ADDR"), listen),
            (
                format!("{prefix}__DATABASE__URL"),
                format!("sqlite://{}/{}.db?mode=rwc", data.display(), spec.name),
            ),
            // Metrics on, as in production, on a free port (not the default one a running
            // `cargo xtask up` holds); a variant's `…__METRICS__PORT=0` turns them off.
            (format!("{prefix}__METRICS__PORT"), free_port()?.to_string()),
            (
                format!("{prefix}__RATE_LIMITS__ENABLED"),
                "false".to_owned(),
            ),
        ];
        for peer in spec.peers {
            let key = format!("{prefix}__PEERS__{}__ADDRESSES", peer.to_uppercase());
            env.push((key, address(peer)));
        }
        match spec.name {
            "user" => {
                env.push((format!("{prefix}__AUTH__CLIENT_SECRET"), secret.clone()));
                env.push((
                    format!("{prefix}__SIGN_UP_RATE__PER_MINUTE"),
                    "0".to_owned(),
                ));
            }
            "auth" => env.push((
                format!(
                    "{prefix}__SERVICE_CLIENTS__{}",
                    SERVICE_CLIENT_ID.to_uppercase()
                ),
                secret.clone(),
            )),
            _ => {}
        }
        env.extend(extra_env.iter().cloned());
        running.spawn(spec.name, &binary, &[], &env, cpus)?;
        running.wait_serving(&address(spec.name)).await?;
    }
    let sut = SystemUnderTest {
        targets: Targets {
            user: Some(address("user")),
            auth: Some(address("auth")),
            notification: Some(address("notification")),
            health: None,
            subscribe: None,
        },
        processes: running.pids(),
        service_client: Some((SERVICE_CLIENT_ID.to_owned(), secret)),
    };
    Ok((running, sut))
}
