//! The deploy assets of deploy/observability as tests: the Prometheus configurations and
//! rules pass `promtool` (and the rules their unit tests), the Grafana dashboard and
//! provisioning files are well formed, the Compose file validates with and without its
//! `observability` profile, and every metric the dashboard and the rules query is one the
//! services export (deploy/observability/metric-names.txt).
//!
//! `promtool` (Debian's `prometheus` package) and `docker-compose` (or `docker compose`)
//! are external: a test that needs a missing one says so and passes, unless the `CI`
//! variable is set (as `.ci/run` does), where it fails.

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

// === Prometheus ===

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
                crate::up::stop_child("prometheus", &mut prometheus);
                panic!("prometheus did not scrape {address} within 60 s");
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(250)),
        }
    };
    let rules = http_get(api, "/api/v1/rules").expect("the rules");
    let samples = scraped("grpc_server_started_total");
    assert!(crate::up::stop_child("prometheus", &mut prometheus));
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

// === Grafana ===

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

/// The PromQL of every panel target.
fn dashboard_expressions(dashboard: &Value) -> Vec<String> {
    panels(dashboard)
        .into_iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn dashboard_panels_have_a_data_source_and_queries() {
    let dashboard = dashboard();
    let mut ids = BTreeSet::new();
    let mut queried = 0;
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        assert!(
            ids.insert(panel["id"].as_u64().expect("a numeric panel id")),
            "panel id of {title} is not unique"
        );
        assert!(panel["gridPos"].is_object(), "{title} has no gridPos");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title} does not use the dashboard's data source variable"
        );
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(!targets.is_empty(), "{title} has no targets");
        for target in targets {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "a target of {title}"
            );
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "a target of {title} has no expr"
            );
        }
        queried += 1;
    }
    assert!(queried >= 10, "only {queried} panels query anything");
    let kinds: BTreeSet<&str> = panels(&dashboard)
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert!(kinds.contains("heatmap"), "no latency heatmap: {kinds:?}");
}

#[test]
fn dashboard_variables_select_the_services_by_job() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let named = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(named("datasource")["type"], "datasource");
    assert_eq!(named("datasource")["query"], "prometheus");
    let service = named("service")["query"]["query"]
        .as_str()
        .expect("$service query");
    assert!(
        service.starts_with("label_values(") && service.ends_with(", job)"),
        "{service}"
    );
    // Every query follows $service, so the selector reaches every panel.
    for expr in dashboard_expressions(&dashboard) {
        assert!(
            expr.contains("job=~\"$service\""),
            "ignores $service: {expr}"
        );
    }
}

/// The dashboard's queries with Grafana's variables replaced by what Prometheus sees.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$service", ".*")
        .replace("$method", ".*")
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let Some(mut promtool) = tool("promtool", "the dashboard's PromQL") else {
        return;
    };
    // promtool parses expressions only inside rules: make one recording rule of each.
    let dashboard = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in dashboard_expressions(&dashboard).iter().enumerate() {
        let expr = serde_json::Value::from(as_promql(expr)).to_string();
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {expr}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, rules).expect("writing the rules");
    succeeds(promtool.args(["check", "rules"]).arg(&file));
}

#[test]
fn dashboard_and_rules_count_the_same_codes_as_server_errors() {
    let rules = read(&workspace_root().join(RULES));
    assert!(rules.contains(SERVER_ERROR_CODES));
    for expr in dashboard_expressions(&dashboard()) {
        if expr.contains("grpc_code=~") {
            assert!(expr.contains(SERVER_ERROR_CODES), "{expr}");
        }
    }
}

#[test]
fn grafana_provisioning_points_at_the_compose_services_and_the_dashboard() {
    let root = workspace_root();
    let datasources = yaml(&root.join(PROVISIONING).join("datasources/trellis.yml"));
    assert_eq!(datasources["apiVersion"].as_i64(), Some(1));
    let sources = datasources["datasources"].as_vec().expect("datasources");
    let prometheus = sources
        .iter()
        .find(|s| s["type"].as_str() == Some("prometheus"))
        .expect("a Prometheus data source");
    // The dashboard's data source variable defaults to this uid.
    assert_eq!(prometheus["uid"].as_str(), Some("prometheus"));
    assert_eq!(
        dashboard()["templating"]["list"][0]["current"]["value"],
        "prometheus"
    );
    assert_eq!(prometheus["url"].as_str(), Some("http://prometheus:9090"));

    let dashboards = yaml(&root.join(PROVISIONING).join("dashboards/trellis.yml"));
    assert_eq!(dashboards["apiVersion"].as_i64(), Some(1));
    let path = dashboards["providers"][0]["options"]["path"]
        .as_str()
        .expect("a provider path");
    // Compose mounts the dashboards directory at the provider's path.
    let compose = read(&root.join(COMPOSE));
    assert!(
        compose.contains(&format!("./observability/grafana/dashboards:{path}:ro")),
        "{COMPOSE} does not mount the dashboards at {path}"
    );
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

// === Metric names ===

/// The metric families a PromQL expression (or Grafana's `label_values(metric, label)`)
/// selects: `_bucket`, `_sum` and `_count` stripped to their histogram's family; function,
/// operator and label names, strings, durations, numbers and Grafana variables skipped;
/// `up` (Prometheus's own) and recording-rule names (they contain `:`) left out.
///
/// A lexical scan, not a parser: enough for the expressions we write, and any name it
/// misreads shows up as an unknown metric in the test that uses it.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LIST: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
    ];

    if let Some(args) = expr.trim().strip_prefix("label_values(") {
        // Grafana: label_values(metric, label) or label_values(label).
        return args
            .rsplit_once(',')
            .map(|(metric, _)| metric_names(metric))
            .unwrap_or_default();
    }
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening delimiter to its closing one, over quoted strings.
    let skip_to = |mut i: usize, close: char| -> usize {
        while i < chars.len() && chars[i] != close {
            if matches!(chars[i], '"' | '\'' | '`') {
                i = skip_string(&chars, i);
            } else {
                i += 1;
            }
        }
        i + 1
    };
    let next_significant = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        (i, chars.get(i).copied())
    };
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c == '#' {
            i = skip_to(i + 1, '\n');
        } else if c == '$' {
            // A Grafana variable: $name or ${name}.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_to(i + 1, '}');
            } else {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations (1e3, 0.99, 5m).
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let (after, next) = next_significant(i);
            if LABEL_LIST.contains(&word.as_str()) {
                if next == Some('(') {
                    i = skip_to(after + 1, ')');
                }
            } else if KEYWORDS.contains(&word.as_str()) || next == Some('(') {
                // An operator, or a function or aggregation called here.
            } else if AGGREGATIONS.contains(&word.as_str()) {
                // `sum by (…) (…)`: the label list follows.
            } else if word != "up" && !word.contains(':') {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix))
                    .unwrap_or(&word);
                names.insert(family.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index just past the string literal that opens at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// The names listed in metric-names.txt.
fn exported_metric_names() -> BTreeSet<String> {
    read(&workspace_root().join(METRIC_NAMES))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Every metric family the dashboard (panels and variables) and the rules query.
fn queried_metric_names() -> BTreeSet<String> {
    let dashboard = dashboard();
    let mut names: BTreeSet<String> = dashboard_expressions(&dashboard)
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            names.extend(metric_names(query));
        }
    }
    let rules = yaml(&workspace_root().join(RULES));
    for group in rules["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            names.extend(metric_names(rule["expr"].as_str().expect("an expr")));
        }
    }
    names
}

#[test]
fn dashboard_and_rules_query_only_exported_metrics() {
    let exported = exported_metric_names();
    let queried = queried_metric_names();
    assert!(
        queried.len() >= 10 && queried.contains("grpc_server_handling_seconds"),
        "the scan found too little: {queried:?}"
    );
    let unknown: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard or the rules query metrics the services do not export \
         (not in {METRIC_NAMES}): {unknown:?}"
    );
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (job, le) (rate(grpc_server_handling_seconds_bucket{job=~"$service", grpc_type="unary"}[$__rate_interval])))"#
        ),
        ["grpc_server_handling_seconds"]
    );
    assert_eq!(
        names(
            r#"sum without (instance) (rate(a_total{code=~"x|y"}[5m] offset 1h)) / on (job) group_left (le) (b_count > 0) and up == 1 or c:rate5m"#
        ),
        ["a_total", "b"]
    );
    assert_eq!(
        names("time() - process_start_time_seconds{job=\"user\"}"),
        ["process_start_time_seconds"]
    );
    assert_eq!(names("max(x_sum) by (job) + 1e3"), ["x"]);
    assert_eq!(
        names(r#"label_values(grpc_server_started_total{job=~"$service"}, grpc_method)"#),
        ["grpc_server_started_total"]
    );
    assert!(names("label_values(job)").is_empty());
    assert!(names(r#"count_values("v", up)"#).is_empty());
}
