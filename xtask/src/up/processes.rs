//! The processes `up` runs: building the service binaries, spawning each replica with
//! its environment, forwarding its output under a coloured label, polling its health
//! check until it reports SERVING, watching for exits, and stopping them all.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::banner::metrics_note;
use super::plan::Replica;
use crate::child::stop_child;
use crate::services::SERVICES;

/// How long a service may take to report SERVING.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What the processes report to the loop that watches them.
pub(super) enum Event {
    Signal,
    /// The process with this label closed its output (it exited).
    Exited(String),
}

/// A started replica.
pub(super) struct Running {
    pub(super) replica: Replica,
    pub(super) child: Child,
    pub(super) binary: PathBuf,
    /// Set once it exited on its own (it was reaped: never signal its pid again).
    pub(super) exited: bool,
}

/// What starting a replica needs: the workspace, the built binaries, whether logs are
/// coloured, the shared environment, and the channel processes report their exit on.
pub(super) struct Launcher<'a> {
    pub(super) root: &'a Path,
    pub(super) binaries: &'a [(String, PathBuf)],
    pub(super) colour: bool,
    pub(super) environment: &'a [(String, String)],
    pub(super) events: mpsc::Sender<Event>,
    pub(super) incoming: &'a mpsc::Receiver<Event>,
}

impl Launcher<'_> {
    /// Starts `batch` (replicas of one service), adds them to `running`, and waits
    /// until each reports SERVING.
    pub(super) fn launch(
        &self,
        batch: Vec<Replica>,
        running: &mut Vec<Running>,
    ) -> anyhow::Result<()> {
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
pub(super) fn watch(running: &mut [Running], incoming: &mpsc::Receiver<Event>) -> bool {
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
pub(super) fn build(root: &Path, release: bool) -> anyhow::Result<Vec<(String, PathBuf)>> {
    eprintln!("xtask: building {} service(s)…", SERVICES.len());
    let mut args = Vec::new();
    for spec in SERVICES {
        args.extend(["--package", spec.package]);
    }
    if release {
        args.push("--release");
    }
    crate::cargo_build(root, &args, &[])
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
    let prefix = log_prefix(&label, spec.colour, colour);
    forward_output(&mut child, &prefix, Some((events, label)));
    Ok(Running {
        replica,
        child,
        binary,
        exited: false,
    })
}

/// Sets `replica`'s share of `environment` on `command` (a value the developer set
/// wins), then its own variables (its ports), which always do.
pub(super) fn set_environment(
    command: &mut Command,
    replica: &Replica,
    environment: &[(String, String)],
) {
    for (key, value) in environment {
        if key.starts_with(replica.spec.env_prefix) && std::env::var_os(key).is_none() {
            command.env(key, value);
        }
    }
    command.envs(replica.own_environment.iter().map(|(k, v)| (k, v)));
}

/// What `up` writes before each line of a process's output: `label` padded to 13
/// columns and a bar, in the ANSI colour `code` when `colour`.
pub(super) fn log_prefix(label: &str, code: &str, colour: bool) -> String {
    if colour {
        format!("{code}{label:<13}|\x1b[0m ")
    } else {
        format!("{label:<13}| ")
    }
}

/// Forwards `child`'s standard output and error, line by line, under `prefix`. With
/// `on_close`, the standard error reader sends [`Event::Exited`] with its label when the
/// process closes its output: that is how an unexpected exit is noticed while the others
/// keep running.
pub(super) fn forward_output(
    child: &mut Child,
    prefix: &str,
    on_close: Option<(mpsc::Sender<Event>, String)>,
) {
    if let Some(stdout) = child.stdout.take() {
        forward(Box::new(stdout), prefix.to_owned(), None);
    }
    if let Some(stderr) = child.stderr.take() {
        forward(Box::new(stderr), prefix.to_owned(), on_close);
    }
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
pub(super) fn stop_all(running: &mut [Running]) -> bool {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::spec;
    use super::*;

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
}
