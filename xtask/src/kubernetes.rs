//! The Kubernetes manifests of deploy/k8s as a test: runs their Python suite
//! (deploy/k8s/tests/test_manifests.py), which renders every overlay with `kubectl
//! kustomize`, validates it strictly and offline against the Kubernetes schemas
//! (`kubernetes-validate`), runs `yamllint`, checks the policy (probes, limits, security
//! context, disruption budgets, autoscalers, secrets, shutdown timing) and shows the
//! policy catches each rule broken in a rendered overlay. A second test holds the base
//! manifests and the suite's list of services to xtask's service table
//! ([`crate::services`]): every service, with its gRPC and metrics ports.
//!
//! The suite is Python because its tools are (`kubernetes-validate`, `yamllint`, PyYAML,
//! pinned in deploy/k8s/requirements.txt). A missing `python3` or PyYAML, like a missing
//! tool inside the suite, skips with a message, unless the `CI` variable is set (as
//! `.ci/run` does), where it fails.

use std::process::Command;

use yaml_rust2::YamlLoader;

use crate::services::{SERVICES, by_port};
use crate::workspace_root;

const SUITE: &str = "deploy/k8s/tests/test_manifests.py";
const REQUIREMENTS: &str = "deploy/k8s/requirements.txt";
/// The base manifests, one `<service>.yaml` each.
const BASE: &str = "deploy/k8s/base";

/// `python3` with PyYAML, or `None` (after saying why) when either is missing and `CI`
/// is unset.
fn python() -> Option<Command> {
    let ready = Command::new("python3")
        .args(["-c", "import yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ready {
        return Some(Command::new("python3"));
    }
    let why = format!(
        "`python3` with PyYAML is not installed (python3 -m pip install -r {REQUIREMENTS})"
    );
    assert!(
        std::env::var_os("CI").is_none(),
        "{why}, and CI is set: the Kubernetes manifests' tests need it"
    );
    eprintln!("SKIPPED: {why}; the Kubernetes manifests are not checked");
    None
}

#[test]
fn kubernetes_manifests_render_validate_and_keep_the_policy() {
    let Some(mut python) = python() else {
        return;
    };
    let output = python
        .current_dir(workspace_root())
        .args([SUITE, "-v"])
        .output()
        .unwrap_or_else(|err| panic!("running python3 {SUITE}: {err}"));
    // unittest reports on standard error: each test's name and outcome, then a summary.
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python3 {SUITE} failed ({}):\n{}{report}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
    );
    eprintln!("{report}");
}

#[test]
fn manifests_and_their_suite_cover_the_service_table_with_its_ports() {
    let root = workspace_root();
    // The suite's own list of the services it checks, as written in it.
    let suite = std::fs::read_to_string(root.join(SUITE)).expect("the manifests' suite");
    let listed = suite
        .lines()
        .find_map(|line| line.strip_prefix("SERVICES = "))
        .unwrap_or_else(|| panic!("{SUITE} has no `SERVICES = (…)` line"));
    let names: Vec<&str> = listed.split('"').skip(1).step_by(2).collect();
    let expected: Vec<&str> = by_port().iter().map(|service| service.name).collect();
    assert_eq!(
        names, expected,
        "{SUITE}'s SERVICES and xtask's service table"
    );

    for service in SERVICES {
        let path = root.join(BASE).join(format!("{}.yaml", service.name));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let documents = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let deployment = documents
            .iter()
            .find(|doc| doc["kind"].as_str() == Some("Deployment"))
            .unwrap_or_else(|| panic!("{} has no Deployment", path.display()));
        let ports = &deployment["spec"]["template"]["spec"]["containers"][0]["ports"];
        let port = |name: &str| {
            ports
                .as_vec()
                .into_iter()
                .flatten()
                .find(|port| port["name"].as_str() == Some(name))
                .and_then(|port| port["containerPort"].as_i64())
        };
        let expected = |port: u16| Some(i64::from(port));
        assert_eq!(port("grpc"), expected(service.port), "{}", path.display());
        assert_eq!(
            port("metrics"),
            expected(service.metrics_port),
            "{}",
            path.display()
        );
    }
}
