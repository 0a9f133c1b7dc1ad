//! A real Prometheus server (Debian's `prometheus`) scrapes the three services' metrics
//! endpoints, and PromQL over its HTTP API sees the go-grpc-middleware names a Grafana
//! gRPC dashboard queries; each service's output passes `promtool check metrics`, and
//! together they export every family `deploy/observability/metric-names.txt` lists.
//! Skipped with a message where `prometheus` is not installed, unless `CI` is set.

// Tests panic on purpose: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use integration_tests::{System, client};
use trellis_platform::testing::local_listener;
use trellis_platform::testing::metrics::{
    assert_promtool_accepts, http_get, installed_tool, scrape,
};

/// How long Prometheus gets to start, scrape twice and answer: well beyond its usual
/// few seconds on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_service_and_promql_reads_the_grpc_families() {
    let Some(prometheus) = installed_tool("prometheus") else {
        return;
    };
    // Over mutual TLS, so the certificate's expiry gauge is exported too.
    let system = System::start_tls_with_metrics().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let targets: Vec<_> = ["user", "auth", "notification"]
        .into_iter()
        .map(|name| (name, system.metrics_addr(name).expect("a metrics endpoint")))
        .collect();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, prometheus_config(&targets)).expect("the config is written");
    let web = free_addr();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("a log file");
    let _prometheus = tokio::process::Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus starts");

    let report = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    let up = eventually(web, "sum(up)", |value| value == 3.0).await;
    assert!(up.is_some(), "not all three targets are up\n{}", report());

    // After the first scrapes (every series already there at zero), so a rate sees the
    // calls: a sign-up and a sign-in — Login on auth, which calls VerifyCredentials on user.
    client::sign_up_and_log_in(&system, "ada@example.com").await;
    let logins = eventually(
        web,
        r#"sum(grpc_server_handled_total{grpc_method="Login",grpc_code="OK"})"#,
        |value| value >= 1.0,
    )
    .await;
    assert!(
        logins.is_some(),
        "no successful Login counted\n{}",
        report()
    );
    let p99 = eventually(
        web,
        "histogram_quantile(0.99, sum by (le) (rate(grpc_server_handling_seconds_bucket[1m])))",
        f64::is_finite,
    )
    .await;
    assert!(p99.is_some(), "no latency quantile\n{}", report());
    let verified = eventually(
        web,
        r#"sum(grpc_client_handled_total{grpc_service="trellis.user.v1.UserInternalService",grpc_method="VerifyCredentials",grpc_code="OK"})"#,
        |value| value >= 1.0,
    )
    .await;
    assert!(
        verified.is_some(),
        "auth's peer call to user is not counted\n{}",
        report()
    );
    let outbox = eventually(web, "count(trellis_outbox_pending_messages)", |value| {
        value == 2.0
    })
    .await;
    assert!(
        outbox.is_some(),
        "user's and auth's outbox gauges are missing\n{}",
        report()
    );
    // Each service's own output passes Prometheus' linter, its metrics included; and
    // together they export every family the dashboard and the alert rules may query
    // (`metric-names.txt`, which xtask's observability tests hold those queries to).
    let mut exported = std::collections::BTreeSet::new();
    for (service, addr) in &targets {
        let text = scrape(*addr).await;
        assert!(
            text.contains("trellis_db_pool_connections"),
            "{service}: {text}"
        );
        assert_promtool_accepts(&text);
        exported.extend(
            text.lines()
                .filter_map(|line| line.strip_prefix("# TYPE "))
                .filter_map(|rest| rest.split_whitespace().next())
                .map(str::to_owned),
        );
    }
    let listed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/observability/metric-names.txt"
    ))
    .expect("deploy/observability/metric-names.txt");
    let missing: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter(|name| !exported.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "metric-names.txt lists families no service exports: {missing:?}"
    );
    system.stop().await;
}

/// Scrapes every second each `(service, address)`, labelled `service`.
fn prometheus_config(targets: &[(&str, SocketAddr)]) -> String {
    let mut config =
        String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
    for (service, addr) in targets {
        config.push_str(&format!(
            "  - job_name: {service}\n    static_configs:\n      - targets: ['{addr}']\n        labels:\n          service: {service}\n"
        ));
    }
    config
}

/// A port of 127.0.0.1 free a moment ago, for Prometheus to bind (it cannot be handed a
/// listener).
fn free_addr() -> SocketAddr {
    local_listener().local_addr().expect("a bound address")
}

/// Queries `query` until its single value satisfies `accept`; returns it, or `None`
/// after [`PATIENCE`].
async fn eventually(web: SocketAddr, query: &str, accept: impl Fn(f64) -> bool) -> Option<f64> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Some(value) = instant_query(web, query).await {
            if accept(value) {
                return Some(value);
            }
            last = Some(value);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("{query}: last value {last:?}");
    None
}

/// The value of an instant query returning one sample, `None` when Prometheus is not
/// answering yet or the result is empty.
async fn instant_query(web: SocketAddr, query: &str) -> Option<f64> {
    if tokio::net::TcpStream::connect(web).await.is_err() {
        return None;
    }
    let response = http_get(
        web,
        &format!("/api/v1/query?query={}", percent_encode(query)),
    )
    .await;
    if response.status != 200 {
        return None;
    }
    let body: serde_json::Value = serde_json::from_str(&response.body).ok()?;
    let result = body.pointer("/data/result")?.as_array()?;
    let [sample] = result.as_slice() else {
        return None;
    };
    sample.pointer("/value/1")?.as_str()?.parse().ok()
}

/// `text` with every byte outside RFC 3986's unreserved set percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[test]
fn queries_are_percent_encoded() {
    assert_eq!(
        percent_encode(r#"up{job="a b"}"#),
        "up%7Bjob%3D%22a%20b%22%7D"
    );
}
