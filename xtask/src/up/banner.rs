//! What `up` prints once everything runs: each replica's gRPC and metrics addresses and
//! pid, Prometheus and where traces go, a first grpcurl tour, and the dev admin.

use super::admin::{DEV_ADMIN_EMAIL, DEV_ADMIN_PASSWORD_FILE};
use super::plan::{Replica, metrics_port_key};
use super::processes::Running;

/// The OpenTelemetry variables naming where traces go, the signal-specific one first (it
/// wins when both are set, as the OTLP exporter's specification says).
const OTLP_ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// What to say about `replica`'s metrics after "is SERVING": its URL, or that they are off.
pub(super) fn metrics_note(replica: &Replica) -> String {
    match replica.metrics {
        Some(address) => format!("; metrics at http://{address}/metrics"),
        None => format!(
            " (metrics off: {} is 0 or not a port)",
            metrics_port_key(replica.spec)
        ),
    }
}

/// The variable and endpoint traces are exported to, when one is set.
pub(super) fn traces_endpoint(
    lookup: impl Fn(&str) -> Option<String>,
) -> Option<(&'static str, String)> {
    OTLP_ENDPOINT_VARIABLES
        .iter()
        .find_map(|variable| lookup(variable).map(|endpoint| (*variable, endpoint)))
}

/// Prints where everything is, under a bold title when `colour`: each process in
/// `running`, Prometheus on `prometheus_port` when it runs, where traces go (from
/// `lookup`), the web page on `page_port` when it is served, a grpcurl tour (over TLS
/// when `tls`) and the dev admin.
pub(super) fn print_banner(
    colour: bool,
    running: &[Running],
    lookup: impl Fn(&str) -> Option<String> + Copy,
    prometheus_port: Option<u16>,
    tls: bool,
    page_port: Option<u16>,
) {
    let (bold, reset) = if colour {
        ("\x1b[1m", "\x1b[0m")
    } else {
        ("", "")
    };
    println!();
    println!("{bold}Trellis is up.{reset} Services (gRPC, Prometheus metrics, pid):");
    for service in running {
        let replica = &service.replica;
        let metrics = replica.metrics.map_or_else(
            || "metrics off".to_owned(),
            |a| format!("http://{a}/metrics"),
        );
        println!(
            "  {:<13} localhost:{:<6} {metrics:<37} pid {}",
            replica.label(),
            replica.port,
            service.child.id()
        );
    }
    if running.iter().any(|s| s.replica.of > 1) {
        println!(
            "  (the other services call every replica: peers.<service>.addresses lists them all)"
        );
    }
    if let Some(port) = prometheus_port {
        println!(
            "  {:<13} http://127.0.0.1:{port}  (alerts: /alerts; rules from {})",
            "prometheus",
            crate::prometheus::RULES_DIR
        );
    }
    match traces_endpoint(lookup) {
        Some((variable, endpoint)) => println!("  traces        {endpoint} ({variable})"),
        None => println!(
            "  traces        off (set OTEL_EXPORTER_OTLP_ENDPOINT, e.g. http://127.0.0.1:4317)"
        ),
    }
    if let Some(port) = page_port {
        println!();
        println!(
            "{bold}The web page: http://localhost:{port}/{reset}  (sign up, log in, watch notifications arrive)"
        );
    }
    let transport = grpcurl_transport(tls);
    println!();
    println!("A tour (grpcurl needs no .proto files: the services serve reflection):");
    if tls {
        println!(
            "  (mutual TLS between the services; you connect with server-only TLS, trusting\n   the development CA: internal methods need a service's certificate)"
        );
    }
    println!();
    println!("  # what is there");
    println!("  grpcurl {transport} localhost:50051 list");
    println!("  # sign up, then log in (the response holds tokens.accessToken and userId)");
    println!(
        "  grpcurl {transport} -d '{{\"email\":\"ada@example.com\",\"display_name\":\"Ada\",\"password\":\"correct horse battery\"}}' \\\n      localhost:50051 trellis.user.v1.UserService/CreateUser"
    );
    println!(
        "  grpcurl {transport} -d '{{\"email\":\"ada@example.com\",\"password\":\"correct horse battery\"}}' \\\n      localhost:50052 trellis.auth.v1.AuthService/Login"
    );
    println!("  TOKEN=<tokens.accessToken>  USER_ID=<userId>");
    println!("  # read yourself with the token");
    println!(
        "  grpcurl {transport} -H \"authorization: Bearer $TOKEN\" -d \"{{\\\"id\\\":\\\"$USER_ID\\\"}}\" \\\n      localhost:50051 trellis.user.v1.UserService/GetUser"
    );
    println!("  # your notifications, replayed then live (Ctrl-C to leave)");
    println!(
        "  grpcurl {transport} -H \"authorization: Bearer $TOKEN\" -d '{{}}' \\\n      localhost:50053 trellis.notification.v1.NotificationService/Subscribe"
    );
    let (scheme, curl_tls) = if tls {
        ("https", format!(" --cacert {}/ca.pem", super::tls::TLS_DIR))
    } else {
        ("http", String::new())
    };
    println!("  # the same over HTTP/JSON (docs/http-json.md); each service's OpenAPI 3.1");
    println!(
        "  curl -s{curl_tls} -H \"authorization: Bearer $TOKEN\" {scheme}://localhost:50051/v1/users/$USER_ID"
    );
    println!("  curl -s{curl_tls} {scheme}://localhost:50051/openapi.json");
    println!();
    println!(
        "  {DEV_ADMIN_EMAIL} has the admin role; it logs in with the password in {DEV_ADMIN_PASSWORD_FILE}"
    );
    println!(
        "  (roles: user-service admin grant|revoke EMAIL, or GrantRole/RevokeRole as an admin)"
    );
    println!();
    println!("Press Ctrl-C to stop everything.");
    println!();
}

/// grpcurl's transport flags: `-plaintext`, or trusting the development CA.
pub(super) fn grpcurl_transport(tls: bool) -> String {
    if tls {
        format!("-cacert {}/ca.pem", super::tls::TLS_DIR)
    } else {
        "-plaintext".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{set, test_plan};
    use super::*;

    #[test]
    fn metrics_note_gives_the_url_or_says_metrics_are_off() {
        let on = test_plan(&[], set(&[]), &[]).replicas;
        assert_eq!(
            metrics_note(&on[1]),
            "; metrics at http://127.0.0.1:51051/metrics"
        );
        let off = test_plan(&[], set(&[("TRELLIS_USER__METRICS__PORT", "0")]), &[]).replicas;
        assert!(
            metrics_note(&off[1]).contains("metrics off"),
            "{}",
            metrics_note(&off[1])
        );
    }

    #[test]
    fn traces_endpoint_prefers_the_traces_variable() {
        assert_eq!(traces_endpoint(|_| None), None);
        let general = |key: &str| {
            (key == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://collector:4317".to_owned())
        };
        assert_eq!(
            traces_endpoint(general),
            Some((
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector:4317".to_owned()
            ))
        );
        let both = |key: &str| {
            Some(if key == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" {
                "http://traces:4317".to_owned()
            } else {
                "http://collector:4317".to_owned()
            })
        };
        assert_eq!(
            traces_endpoint(both),
            Some((
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:4317".to_owned()
            ))
        );
    }
}
