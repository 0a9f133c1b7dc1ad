//! The Grafana assets: the dashboard's panels have a data source and valid PromQL
//! queries, its variables select the services by job, it counts the same codes as server
//! errors as the rules, and the provisioning points at the Compose services and the
//! dashboard.

use super::*;

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
pub(super) fn dashboard_expressions(dashboard: &Value) -> Vec<String> {
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
