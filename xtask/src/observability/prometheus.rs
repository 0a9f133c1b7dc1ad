//! The Prometheus assets: the Compose and Kubernetes configurations and the one
//! `up --observability` writes pass `promtool`, the server `up` runs scrapes by job and
//! loads the rules, and the rules pass `promtool`, their unit tests and carry a severity,
//! summary and description.

use super::*;

#[test]
fn compose_prometheus_config_passes_promtool() {
    let Some(mut promtool) = tool("promtool", "the Prometheus configuration") else {
        return;
    };
    let config = workspace_root().join(PROMETHEUS_DIR).join("prometheus.yml");
    let output = succeeds(promtool.args(["check", "config"]).arg(&config));
    // The config names the rules relative to itself: promtool must have found them.
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("trellis.rules.yml"), "{said}");
}

#[test]
fn kubernetes_prometheus_config_passes_promtool() {
    let Some(mut promtool) = tool("promtool", "the Kubernetes Prometheus configuration") else {
        return;
    };
    let config = workspace_root()
        .join(PROMETHEUS_DIR)
        .join("prometheus.kubernetes.yml");
    let output = promtool
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("running promtool");
    if output.status.success() {
        return;
    }
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Debian builds Prometheus without Kubernetes discovery: check everything else (the
    // relabelling above all) with a static target list in its place.
    assert!(
        said.contains("field kubernetes_sd_configs not found"),
        "promtool rejects {}:\n{said}",
        config.display()
    );
    eprintln!("note: this promtool lacks Kubernetes discovery; checking the rest of the file");
    let text = read(&config);
    let replaced = text
        .replace("kubernetes_sd_configs:", "static_configs:")
        .replace("- role: pod", "- targets: []");
    assert_ne!(replaced, text);
    let dir = tempfile::tempdir().expect("temporary directory");
    let copy = dir.path().join("prometheus.yml");
    std::fs::write(&copy, replaced).expect("writing the copy");
    let mut promtool = Command::new("promtool");
    succeeds(promtool.args(["check", "config"]).arg(&copy));
}

#[test]
fn config_of_up_observability_passes_promtool() {
    let Some(mut promtool) = tool("promtool", "the configuration `up --observability` writes")
    else {
        return;
    };
    // Two user replicas (`up --scale user=2`): one job with two targets, as Prometheus
    // rejects two jobs of one name.
    let targets = [
        ("user", 51051),
        ("user", 41051),
        ("auth", 51052),
        ("notification", 51053),
    ]
    .map(|(job, port)| crate::prometheus::Target {
        job,
        address: format!("127.0.0.1:{port}"),
    });
    let rules = workspace_root().join(crate::prometheus::RULES_DIR);
    let config = crate::prometheus::config(
        &targets,
        &rules.display().to_string(),
        std::time::Duration::from_secs(5),
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, config).expect("writing the configuration");
    let output = succeeds(promtool.args(["check", "config"]).arg(&file));
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("trellis.rules.yml"), "{said}");
    assert!(
        !said.contains("trellis.rules.test.yml"),
        "the unit tests were loaded as rules: {said}"
    );
}

/// A one-shot HTTP/1.0 GET of `path` on `address`: the response's body.
fn http_get(address: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map_or(response.clone(), |(_, body)| body.to_owned()))
}

#[test]
fn prometheus_of_up_observability_scrapes_by_job_and_loads_the_rules() {
    let Some(binary) = crate::prometheus::on_path("prometheus")
        .or_else(|| missing("prometheus", "`up --observability`'s Prometheus"))
    else {
        return;
    };
    // A stand-in for a service's metrics endpoint.
    let service = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let address = service.local_addr().expect("its address");
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        for stream in service.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0_u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\r\n\
                  # HELP grpc_server_started_total RPCs started.\n\
                  # TYPE grpc_server_started_total counter\n\
                  grpc_server_started_total{grpc_type=\"unary\",grpc_service=\"s\",grpc_method=\"m\"} 1\n",
            );
        }
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut prometheus = crate::prometheus::start(
        dir.path(),
        &workspace_root().join(crate::prometheus::RULES_DIR),
        &crate::prometheus::Runner::Binary(binary),
        &[crate::prometheus::Target {
            job: "user",
            address: address.to_string(),
        }],
        port,
    )
    .expect("prometheus starts");
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let scraped = |query: &str| -> Option<Value> {
        let body = http_get(api, &format!("/api/v1/query?query={query}")).ok()?;
        let answer: Value = serde_json::from_str(&body).ok()?;
        answer["data"]["result"].get(0).cloned()
    };
    let started = std::time::Instant::now();
    let up = loop {
        match scraped("up") {
            Some(sample) if sample["value"][1] == "1" => break sample,
            _ if started.elapsed() > std::time::Duration::from_secs(60) => {
                crate::child::stop_child("prometheus", &mut prometheus);
                panic!("prometheus did not scrape {address} within 60 s");
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(250)),
        }
    };
    let rules = http_get(api, "/api/v1/rules").expect("the rules");
    let samples = scraped("grpc_server_started_total");
    assert!(crate::child::stop_child("prometheus", &mut prometheus));
    assert_eq!(up["metric"]["job"], "user", "{up}");
    assert!(
        rules.contains("TrellisServiceDown"),
        "rules not loaded: {rules}"
    );
    let sample = samples.expect("the scraped counter");
    assert_eq!(sample["metric"]["job"], "user", "{sample}");
    assert!(
        dir.path().join("data").is_dir(),
        "no TSDB in the directory given"
    );
}

#[test]
fn rules_pass_promtool_check() {
    let Some(mut promtool) = tool("promtool", "the alert rules") else {
        return;
    };
    succeeds(
        promtool
            .args(["check", "rules"])
            .arg(workspace_root().join(RULES)),
    );
}

#[test]
fn rules_pass_their_unit_tests() {
    let Some(mut promtool) = tool("promtool", "the alert rules' unit tests") else {
        return;
    };
    let tests = workspace_root().join(RULES_TESTS);
    // The tests name the rules relative to their own directory.
    succeeds(
        promtool
            .current_dir(tests.parent().expect("the rules directory"))
            .args(["test", "rules"])
            .arg(&tests),
    );
}

#[test]
fn every_alert_has_a_severity_summary_and_description() {
    let rules = yaml(&workspace_root().join(RULES));
    let mut alerts = 0;
    for rule in rules["groups"]
        .as_vec()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_vec().expect("rules").iter())
    {
        let Some(name) = rule["alert"].as_str() else {
            continue;
        };
        alerts += 1;
        assert!(
            matches!(
                rule["labels"]["severity"].as_str(),
                Some("critical" | "warning")
            ),
            "{name} has no severity label critical|warning"
        );
        for annotation in ["summary", "description"] {
            assert!(
                rule["annotations"][annotation]
                    .as_str()
                    .is_some_and(|s| !s.trim().is_empty()),
                "{name} has no {annotation} annotation"
            );
        }
    }
    assert!(alerts >= 5, "found only {alerts} alerts");
    // Every alert is exercised by a unit test.
    let tests = read(&workspace_root().join(RULES_TESTS));
    for rule in rules["groups"]
        .as_vec()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_vec().expect("rules").iter())
    {
        if let Some(name) = rule["alert"].as_str() {
            assert!(
                tests.contains(&format!("alertname: {name}\n")),
                "no unit test in {RULES_TESTS} names {name}"
            );
        }
    }
}
