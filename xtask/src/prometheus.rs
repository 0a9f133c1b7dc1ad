//! The Prometheus server of `cargo xtask up --observability`: its configuration (every
//! service's metrics endpoint on this machine, the repository's alert rules) and how it
//! runs — the machine's `prometheus` binary when on `PATH`, else the Compose profile's
//! image under Docker with the host's network.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// The alert and recording rules, relative to the workspace root; the generated
/// configuration loads every `*.rules.yml` in it (not the `*.rules.test.yml` unit tests).
pub(crate) const RULES_DIR: &str = "deploy/observability/prometheus/rules";
/// Where `up` writes the configuration and keeps the TSDB, relative to the workspace root.
pub(crate) const DATA_DIR: &str = ".data/prometheus";
/// The image used when no `prometheus` binary is on `PATH`: the Compose profile's
/// default (`TRELLIS_PROMETHEUS_IMAGE` in deploy/compose.yaml, which overrides both).
pub(crate) const DEFAULT_IMAGE: &str = "prom/prometheus:v3.5.0";
/// The variable naming another Prometheus image, as in deploy/compose.yaml.
const IMAGE_VARIABLE: &str = "TRELLIS_PROMETHEUS_IMAGE";
/// Where the image expects its configuration and rules (the Compose profile's mounts).
const CONTAINER_CONFIG: &str = "/etc/prometheus/prometheus.yml";
const CONTAINER_RULES: &str = "/etc/prometheus/rules";
const CONTAINER_DATA: &str = "/prometheus";
/// How long Prometheus may take to accept connections on its port.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One scrape target: the job name the rules and the dashboard select on (`user`, `auth`,
/// `notification`) and the `host:port` of one process's `/metrics` (a service scaled to
/// several replicas has one target per replica, all under its job).
pub(crate) struct Target {
    pub(crate) job: &'static str,
    pub(crate) address: String,
}

/// How Prometheus runs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Runner {
    /// The machine's `prometheus` binary.
    Binary(PathBuf),
    /// `docker run` of this image (present locally or just pulled).
    Docker(String),
}

/// The Prometheus configuration for `targets` — one scrape job per job name, in order of
/// first appearance, listing all its targets (Prometheus rejects two jobs of one name) —
/// loading the rules in `rules_dir` (a path as Prometheus will see it). Strings are
/// written as JSON strings, which YAML reads as double-quoted scalars.
pub(crate) fn config(targets: &[Target], rules_dir: &str, scrape_interval: Duration) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let interval = format!("{}s", scrape_interval.as_secs().max(1));
    let mut yaml = String::new();
    let _ = writeln!(
        yaml,
        "# Written by `cargo xtask up --observability` at each start: edits are lost.\n\
         global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
         rule_files:\n  - {}\nscrape_configs:",
        quote(&format!("{}/*.rules.yml", rules_dir.trim_end_matches('/')))
    );
    let mut jobs: Vec<&str> = Vec::new();
    for target in targets {
        if !jobs.contains(&target.job) {
            jobs.push(target.job);
        }
    }
    for job in jobs {
        let addresses: Vec<String> = targets
            .iter()
            .filter(|t| t.job == job)
            .map(|t| quote(&t.address))
            .collect();
        let _ = writeln!(
            yaml,
            "  - job_name: {}\n    static_configs:\n      - targets: [{}]",
            quote(job),
            addresses.join(", ")
        );
    }
    yaml
}

/// Picks how to run Prometheus: the `prometheus` binary on `PATH`, else the image (named
/// by `TRELLIS_PROMETHEUS_IMAGE`, default [`DEFAULT_IMAGE`]) when Docker has it or can
/// pull it. The error says why neither works.
pub(crate) fn choose_runner() -> Result<Runner, String> {
    if let Some(binary) = on_path("prometheus") {
        return Ok(Runner::Binary(binary));
    }
    let image = std::env::var(IMAGE_VARIABLE).unwrap_or_else(|_| DEFAULT_IMAGE.to_owned());
    let present = Command::new("docker")
        .args(["image", "inspect", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match present {
        Err(err) => return Err(format!("no `prometheus` on PATH and no docker ({err})")),
        Ok(status) if status.success() => return Ok(Runner::Docker(image)),
        Ok(_) => {}
    }
    eprintln!("xtask: no `prometheus` on PATH; pulling {image}…");
    match Command::new("docker").args(["pull", &image]).output() {
        Ok(output) if output.status.success() => Ok(Runner::Docker(image)),
        Ok(output) => Err(format!(
            "no `prometheus` on PATH, and the image {image} is not present and cannot be \
             pulled: {}",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("docker pull failed")
        )),
        Err(err) => Err(format!(
            "no `prometheus` on PATH; docker pull failed: {err}"
        )),
    }
}

/// Writes the configuration for `targets` into `dir` (`up`: [`DATA_DIR`]) and starts
/// Prometheus on 127.0.0.1:`port` with its TSDB in `dir/data`, loading the rules in
/// `rules` (`up`: [`RULES_DIR`]); returns once the port accepts connections. Errors when
/// the port is taken, or Prometheus exits or stays silent while starting.
pub(crate) fn start(
    dir: &Path,
    rules: &Path,
    runner: &Runner,
    targets: &[Target],
    port: u16,
) -> anyhow::Result<Child> {
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    // A Prometheus already there would answer the readiness check for ours.
    drop(TcpListener::bind(listen).with_context(|| {
        format!("{listen} is taken (another Prometheus?): choose another with --prometheus-port")
    })?);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let config_file = dir.join("prometheus.yml");
    let rules_seen = match runner {
        Runner::Binary(_) => rules.display().to_string(),
        Runner::Docker(_) => CONTAINER_RULES.to_owned(),
    };
    std::fs::write(
        &config_file,
        config(targets, &rules_seen, Duration::from_secs(5)),
    )
    .with_context(|| format!("writing {}", config_file.display()))?;

    let listen_flag = format!("--web.listen-address={listen}");
    let mut command = match runner {
        Runner::Binary(binary) => {
            let mut command = Command::new(binary);
            command
                .arg(format!("--config.file={}", config_file.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()));
            command
        }
        Runner::Docker(image) => {
            use std::os::unix::fs::MetadataExt as _;
            // The TSDB directory is the developer's: run as its owner so Prometheus can
            // write there (the image's default user is `nobody`).
            let owner = std::fs::metadata(&data)
                .map(|m| format!("{}:{}", m.uid(), m.gid()))
                .with_context(|| format!("reading {}", data.display()))?;
            let mut command = Command::new("docker");
            command
                .args(["run", "--rm", "--network", "host", "--user", &owner])
                .arg("-v")
                .arg(format!("{}:{CONTAINER_CONFIG}:ro", config_file.display()))
                .arg("-v")
                .arg(format!("{}:{CONTAINER_RULES}:ro", rules.display()))
                .arg("-v")
                .arg(format!("{}:{CONTAINER_DATA}", data.display()))
                .arg(image)
                .arg(format!("--config.file={CONTAINER_CONFIG}"))
                .arg(format!("--storage.tsdb.path={CONTAINER_DATA}"));
            command
        }
    };
    command
        .arg(listen_flag)
        .arg("--log.level=warn")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("starting prometheus")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("waiting for prometheus")? {
            use std::io::Read as _;
            let mut said = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = stderr.read_to_string(&mut said);
            }
            let last: Vec<&str> = said.lines().rev().take(3).collect();
            anyhow::bail!(
                "prometheus exited while starting ({status}): {}",
                last.into_iter().rev().collect::<Vec<_>>().join(" / ")
            );
        }
        if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
            return Ok(child);
        }
        if started.elapsed() > READY_TIMEOUT {
            crate::child::stop_child("prometheus", &mut child);
            anyhow::bail!(
                "prometheus did not listen on {listen} within {} s",
                READY_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The first executable file named `name` in the directories of `PATH`.
pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_scrapes_each_target_under_its_job_and_loads_the_rules() {
        let targets = [
            Target {
                job: "user",
                address: "127.0.0.1:51051".to_owned(),
            },
            Target {
                job: "auth",
                address: "127.0.0.1:51052".to_owned(),
            },
        ];
        let yaml = config(&targets, "/etc/prometheus/rules/", Duration::from_secs(5));
        assert!(
            yaml.contains("rule_files:\n  - \"/etc/prometheus/rules/*.rules.yml\"\n"),
            "{yaml}"
        );
        assert!(yaml.contains("  scrape_interval: 5s\n"), "{yaml}");
        assert!(
            yaml.contains(
                "  - job_name: \"user\"\n    static_configs:\n      - targets: [\"127.0.0.1:51051\"]\n"
            ),
            "{yaml}"
        );
        assert!(yaml.contains("  - job_name: \"auth\"\n"), "{yaml}");
    }

    #[test]
    fn config_scrapes_a_jobs_replicas_in_one_job() {
        let targets = ["127.0.0.1:51051", "127.0.0.1:41001", "127.0.0.1:41002"]
            .map(|address| Target {
                job: "user",
                address: address.to_owned(),
            })
            .into_iter()
            .chain([Target {
                job: "auth",
                address: "127.0.0.1:51052".to_owned(),
            }])
            .collect::<Vec<_>>();
        let yaml = config(&targets, "rules", Duration::from_secs(5));
        assert_eq!(yaml.matches("job_name: \"user\"").count(), 1, "{yaml}");
        assert!(
            yaml.contains(
                "  - job_name: \"user\"\n    static_configs:\n      - targets: \
                 [\"127.0.0.1:51051\", \"127.0.0.1:41001\", \"127.0.0.1:41002\"]\n  - job_name: \"auth\"\n"
            ),
            "{yaml}"
        );
    }

    #[test]
    fn config_quotes_paths_that_yaml_would_misread() {
        let yaml = config(&[], "/home/a: \"b\"/rules", Duration::from_secs(5));
        assert!(
            yaml.contains(r#"  - "/home/a: \"b\"/rules/*.rules.yml""#),
            "{yaml}"
        );
    }
}
