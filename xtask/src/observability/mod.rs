//! The deploy assets of deploy/observability as tests: the Prometheus configurations and
//! rules pass `promtool` (and the rules their unit tests), the Grafana dashboard and
//! provisioning files are well formed, the Compose file validates with and without its
//! `observability` profile, and every metric the dashboard and the rules query is one the
//! services export (deploy/observability/metric-names.txt).
//!
//! `promtool` (Debian's `prometheus` package) and `docker-compose` (or `docker compose`)
//! are external: a test that needs a missing one says so and passes, unless the `CI`
//! variable is set (as `.ci/run` does), where it fails.
//!
//! One module per asset: [`prometheus`] (configurations, rules and the server `up`
//! runs), [`grafana`] (the dashboard and its provisioning), and [`metric_names`] (every
//! metric queried is one exported); the Compose file's tests are here.

mod grafana;
mod metric_names;
mod prometheus;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use crate::workspace_root;

const PROMETHEUS_DIR: &str = "deploy/observability/prometheus";
const RULES: &str = "deploy/observability/prometheus/rules/trellis.rules.yml";
const RULES_TESTS: &str = "deploy/observability/prometheus/rules/trellis.rules.test.yml";
const DASHBOARD: &str = "deploy/observability/grafana/dashboards/trellis.json";
const PROVISIONING: &str = "deploy/observability/grafana/provisioning";
const METRIC_NAMES: &str = "deploy/observability/metric-names.txt";
const COMPOSE: &str = "deploy/compose.yaml";
const COMPOSE_ENV: &str = "deploy/observability/compose.env";

/// Codes that count as server errors, in the rules and the dashboard alike.
const SERVER_ERROR_CODES: &str =
    "Unknown|Internal|Unavailable|DataLoss|DeadlineExceeded|Unimplemented";

// === tools ===

/// The command that runs `program`, or `None` (after saying so) when it is not installed
/// and `CI` is unset. Under `CI` a missing tool fails the test.
fn tool(program: &str, why: &str) -> Option<Command> {
    if crate::prometheus::on_path(program).is_some() {
        return Some(Command::new(program));
    }
    missing(program, why)
}

fn missing<T>(program: &str, why: &str) -> Option<T> {
    assert!(
        std::env::var_os("CI").is_none(),
        "`{program}` is not installed, and CI is set: {why} needs it"
    );
    eprintln!("SKIPPED: `{program}` is not installed; {why} is not checked");
    None
}

/// `docker-compose`, else `docker compose` when the plugin answers.
fn compose() -> Option<Command> {
    if crate::prometheus::on_path("docker-compose").is_some() {
        return Some(Command::new("docker-compose"));
    }
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if plugin {
        let mut command = Command::new("docker");
        command.arg("compose");
        return Some(command);
    }
    missing("docker-compose", "the Compose file")
}

/// Runs `command` and fails the test, showing its output, unless it succeeds.
fn succeeds(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("running {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

fn yaml(path: &Path) -> Yaml {
    YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|err| panic!("{} is not YAML: {err}", path.display()))
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{} is empty", path.display()))
}

fn dashboard() -> Value {
    let path = workspace_root().join(DASHBOARD);
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|err| panic!("{} is not JSON: {err}", path.display()))
}

// === Compose ===

#[test]
fn compose_file_validates_with_and_without_the_observability_profile() {
    let root = workspace_root();
    let runs: [&[&str]; 3] = [
        &[],
        &["--profile", "observability"],
        &["--env-file", COMPOSE_ENV],
    ];
    for extra in runs {
        let Some(mut compose) = compose() else {
            return;
        };
        succeeds(
            compose
                .current_dir(&root)
                .args(["-p", "trellis", "-f", COMPOSE])
                .args(extra)
                .args(["config", "-q"]),
        );
    }
}

#[test]
fn xtask_runs_the_prometheus_image_of_the_compose_profile() {
    let compose = read(&workspace_root().join(COMPOSE));
    let expected = format!(
        "image: ${{TRELLIS_PROMETHEUS_IMAGE:-{}}}",
        crate::prometheus::DEFAULT_IMAGE
    );
    assert!(compose.contains(&expected), "{COMPOSE} lacks `{expected}`");
}
