//! The system a chaos run faults: the three services as release processes on SQLite
//! databases in a temporary directory (the dev setup's credentials, as `cargo xtask up`),
//! the user service as two replicas sharing its database, every caller of user calling
//! both; and the process-level faults — SIGKILL, SIGTERM, SIGSTOP/SIGCONT, a start again
//! with the same configuration.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

use crate::system::{SERVICE_CLIENT_ID, free_port, random_secret, serving, tail};

/// A process's environment variables.
type Env = Vec<(String, String)>;

/// How long a process may take to report SERVING.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Replicas of the user service: one may fail while the other serves.
pub const USER_REPLICAS: usize = 2;

/// One process of the cluster and how to start it again.
#[derive(Debug)]
struct Process {
    /// `user-1`, `user-2`, `auth`, `notification`.
    name: String,
    program: PathBuf,
    env: Vec<(String, String)>,
    /// `http://127.0.0.1:port`.
    uri: String,
    child: Option<Child>,
    log: PathBuf,
}

/// The running cluster; dropping it kills every process.
#[derive(Debug)]
pub struct Cluster {
    processes: Vec<Process>,
    dir: tempfile::TempDir,
    /// The client id and secret that may get service tokens (the user service's).
    pub service_client: (String, String),
}

impl Cluster {
    /// Starts notification, the user replicas and auth from `bin_dir`, each on a free
    /// port with its metrics endpoint off, and waits until each reports SERVING.
    ///
    /// # Errors
    /// A binary is missing or a process fails to start.
    pub async fn start(bin_dir: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("trellis-chaos-")
            .tempdir()
            .context("making a temporary directory")?;
        let secret = random_secret()?;
        let port = || -> anyhow::Result<String> { Ok(format!("127.0.0.1:{}", free_port()?)) };
        let notification = port()?;
        let users: Vec<String> = (0..USER_REPLICAS)
            .map(|_| port())
            .collect::<Result<_, _>>()?;
        let auth = port()?;
        let http = |address: &str| format!("http://{address}");
        let user_addresses = users.iter().map(|a| http(a)).collect::<Vec<_>>().join(",");
        let data = dir.path().display().to_string();
        let common = |prefix: &str, name: &str, listen: &str| {
            vec![
                (format!("{prefix}__SERVER__LISTEN_ADDR"), listen.to_owned()),
                (
                    format!("{prefix}__DATABASE__URL"),
                    format!("sqlite://{data}/{name}.db?mode=rwc"),
                ),
                (format!("{prefix}__METRICS__PORT"), "0".to_owned()),
                // Every call comes from 127.0.0.1 and a handful of subjects.
                (
                    format!("{prefix}__RATE_LIMITS__ENABLED"),
                    "false".to_owned(),
                ),
            ]
        };
        let mut plan: Vec<(String, &str, String, Env)> = Vec::new();
        let mut env = common("TRELLIS_NOTIFICATION", "notification", &notification);
        env.push((
            "TRELLIS_NOTIFICATION__PEERS__AUTH__ADDRESSES".to_owned(),
            http(&auth),
        ));
        plan.push((
            "notification".to_owned(),
            "notification-service",
            notification.clone(),
            env,
        ));
        for (i, listen) in users.iter().enumerate() {
            let mut env = common("TRELLIS_USER", "user", listen);
            env.extend([
                (
                    "TRELLIS_USER__PEERS__AUTH__ADDRESSES".to_owned(),
                    http(&auth),
                ),
                (
                    "TRELLIS_USER__PEERS__NOTIFICATION__ADDRESSES".to_owned(),
                    http(&notification),
                ),
                (
                    "TRELLIS_USER__AUTH__CLIENT_SECRET".to_owned(),
                    secret.clone(),
                ),
                (
                    "TRELLIS_USER__SIGN_UP_RATE__PER_MINUTE".to_owned(),
                    "0".to_owned(),
                ),
                // A replica's outbox retries within the runs' few seconds.
                (
                    "TRELLIS_USER__OUTBOX__MAX_BACKOFF_MS".to_owned(),
                    "2000".to_owned(),
                ),
                (
                    "TRELLIS_USER__OUTBOX__POLL_INTERVAL_MS".to_owned(),
                    "500".to_owned(),
                ),
            ]);
            plan.push((
                format!("user-{}", i + 1),
                "user-service",
                listen.clone(),
                env,
            ));
        }
        let mut env = common("TRELLIS_AUTH", "auth", &auth);
        env.extend([
            (
                "TRELLIS_AUTH__PEERS__USER__ADDRESSES".to_owned(),
                user_addresses,
            ),
            (
                "TRELLIS_AUTH__PEERS__NOTIFICATION__ADDRESSES".to_owned(),
                http(&notification),
            ),
            (
                format!(
                    "TRELLIS_AUTH__SERVICE_CLIENTS__{}",
                    SERVICE_CLIENT_ID.to_uppercase()
                ),
                secret.clone(),
            ),
        ]);
        plan.push(("auth".to_owned(), "auth-service", auth.clone(), env));

        let mut cluster = Self {
            processes: Vec::new(),
            dir,
            service_client: (SERVICE_CLIENT_ID.to_owned(), secret),
        };
        for (name, binary, listen, env) in plan {
            let program = bin_dir.join(binary);
            if !program.is_file() {
                bail!(
                    "{} is missing: build it with `cargo build --release -p {binary}` or run `cargo xtask chaos`",
                    program.display()
                );
            }
            let log = cluster.dir.path().join(format!("{name}.log"));
            cluster.processes.push(Process {
                name: name.clone(),
                program,
                env,
                uri: http(&listen),
                child: None,
                log,
            });
            cluster.restart(&name).await?;
        }
        Ok(cluster)
    }

    /// `http://…` of the process `name`; empty when there is none.
    #[must_use]
    pub fn uri(&self, name: &str) -> String {
        self.find(name).map(|p| p.uri.clone()).unwrap_or_default()
    }

    /// The user replicas' URIs.
    #[must_use]
    pub fn user_uris(&self) -> Vec<String> {
        (1..=USER_REPLICAS)
            .map(|i| self.uri(&format!("user-{i}")))
            .collect()
    }

    fn find(&self, name: &str) -> Option<&Process> {
        self.processes.iter().find(|p| p.name == name)
    }

    fn find_mut(&mut self, name: &str) -> anyhow::Result<&mut Process> {
        self.processes
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no process {name}"))
    }

    /// Sends `signal` to `name` (SIGKILL and SIGTERM also reap it: SIGTERM waits up to
    /// [`STOP_TIMEOUT`] for its drain, then kills it).
    ///
    /// # Errors
    /// It is not running, or the signal cannot be sent.
    pub async fn signal(&mut self, name: &str, signal: Signal) -> anyhow::Result<()> {
        let process = self.find_mut(name)?;
        let child = process
            .child
            .as_mut()
            .with_context(|| format!("{name} is not running"))?;
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        kill(pid, signal).with_context(|| format!("sending {signal} to {name}"))?;
        if matches!(signal, Signal::SIGKILL | Signal::SIGTERM) {
            let mut child = process.child.take().context("running")?;
            tokio::task::spawn_blocking(move || {
                let deadline = std::time::Instant::now() + STOP_TIMEOUT;
                while child.try_wait().ok().flatten().is_none() {
                    if std::time::Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .await
            .context("waiting for the process to end")?;
        }
        Ok(())
    }

    /// Starts `name` (again) with its configuration, its log appended to, and waits until
    /// it reports SERVING.
    ///
    /// # Errors
    /// It is running already, or exits or does not serve within [`READY_TIMEOUT`].
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let dir = self.dir.path().to_owned();
        let process = self.find_mut(name)?;
        if process.child.is_some() {
            bail!("{name} is running already");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&process.log)
            .with_context(|| format!("opening {}", process.log.display()))?;
        let child = Command::new(&process.program)
            .envs(process.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", process.program.display()))?;
        process.child = Some(child);
        let (uri, log) = (process.uri.clone(), process.log.clone());
        let started = Instant::now();
        loop {
            let process = self.find_mut(name)?;
            if let Some(status) = process
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                process.child = None;
                bail!(
                    "{name} exited during start-up ({status}); its log:\n{}",
                    tail(&log)
                );
            }
            if serving(&uri).await {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "{name} did not report SERVING within {} s; its log:\n{}",
                    READY_TIMEOUT.as_secs(),
                    tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM to every process still running, newest first (each drains).
    pub async fn stop(mut self) {
        let names: Vec<String> = self
            .processes
            .iter()
            .rev()
            .filter(|p| p.child.is_some())
            .map(|p| p.name.clone())
            .collect();
        for name in names {
            // A paused process would never drain: let it go on first.
            let _ = self.signal(&name, Signal::SIGCONT).await;
            let _ = self.signal(&name, Signal::SIGTERM).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for process in &mut self.processes {
            if let Some(child) = process.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
