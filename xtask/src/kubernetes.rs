//! The Kubernetes manifests of deploy/k8s as a test: runs their Python suite
//! (deploy/k8s/tests/test_manifests.py), which renders every overlay with `kubectl
//! kustomize`, validates it strictly and offline against the Kubernetes schemas
//! (`kubernetes-validate`), runs `yamllint`, checks the policy (probes, limits, security
//! context, disruption budgets, autoscalers, secrets, shutdown timing) and shows the
//! policy catches each rule broken in a rendered overlay.
//!
//! The suite is Python because its tools are (`kubernetes-validate`, `yamllint`, PyYAML,
//! pinned in deploy/k8s/requirements.txt). A missing `python3` or PyYAML, like a missing
//! tool inside the suite, skips with a message, unless the `CI` variable is set (as
//! `.ci/run` does), where it fails.

use std::process::Command;

use crate::workspace_root;

const SUITE: &str = "deploy/k8s/tests/test_manifests.py";
const REQUIREMENTS: &str = "deploy/k8s/requirements.txt";

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
