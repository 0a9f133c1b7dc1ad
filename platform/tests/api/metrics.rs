//! A service's metrics endpoint, scraped over HTTP after real calls: the gRPC families
//! count each call by method and code (rejections by the access policy and unknown
//! methods included), token failures by reason, the database pool, and the whole text
//! passes `promtool check metrics`.

use std::sync::Arc;

use tonic::Code;
use trellis_platform::service::Launch;
use trellis_platform::testing::metrics::{assert_promtool_accepts, http_get, sample, scrape};
use trellis_platform::testing::{
    TestIssuer, TestServer, code, local_listener, test_config, with_token,
};
use trellis_proto::notification_v1::notification_internal_service_client::NotificationInternalServiceClient;
use trellis_proto::user_v1 as user_pb;
use trellis_proto::user_v1::user_service_client::UserServiceClient;

use crate::support::Probe;

const SEND: &str = r#"grpc_method="SendNotification",grpc_service="trellis.notification.v1.NotificationInternalService",grpc_type="unary""#;

fn handled(code: &str, labels: &str) -> String {
    format!("grpc_server_handled_total{{grpc_code=\"{code}\",{labels}}}")
}

#[tokio::test]
async fn a_scrape_counts_calls_by_method_and_code_and_passes_promtool() {
    let issuer = TestIssuer::new();
    let server = TestServer::start(
        Launch::new(test_config::<Probe>())
            .key_source(Arc::new(issuer.key_source()))
            .metrics_listener(local_listener()),
    )
    .await;
    let metrics_addr = server.metrics_addr.expect("a metrics endpoint");
    let mut client = NotificationInternalServiceClient::new(server.channel.clone());
    let mut send = async |token: Option<&str>| {
        let request = crate::support::send_request();
        let request = match token {
            Some(token) => with_token(request, token),
            None => tonic::Request::new(request),
        };
        code(client.send_notification(request).await)
    };
    let user = issuer.service_token("user", "probe");
    assert_eq!(send(Some(&user)).await, Ok(()));
    assert_eq!(send(Some(&user)).await, Ok(()));
    assert_eq!(
        send(Some(&issuer.service_token("billing", "probe"))).await,
        Err(Code::PermissionDenied)
    );
    assert_eq!(send(Some("garbage")).await, Err(Code::Unauthenticated));
    assert_eq!(send(None).await, Err(Code::Unauthenticated));
    // A service this server does not run: answered UNIMPLEMENTED, folded into `unknown`.
    let unknown = UserServiceClient::new(server.channel.clone())
        .get_user(with_token(
            user_pb::GetUserRequest::default(),
            &issuer.user_token("ada", &[]),
        ))
        .await;
    assert_eq!(code(unknown), Err(Code::Unimplemented));

    let text = scrape(metrics_addr).await;
    let value =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(value(&format!("grpc_server_started_total{{{SEND}}}")), 5.0);
    assert_eq!(value(&handled("OK", SEND)), 2.0);
    assert_eq!(value(&handled("PermissionDenied", SEND)), 1.0);
    assert_eq!(value(&handled("Unauthenticated", SEND)), 2.0);
    // Every other code is there at zero.
    assert_eq!(value(&handled("DeadlineExceeded", SEND)), 0.0);
    assert_eq!(value(&handled("Canceled", SEND)), 0.0);
    assert_eq!(
        value(&format!("grpc_server_handling_seconds_count{{{SEND}}}")),
        5.0
    );
    // Admission reads a unary call's request before anything else (the slowloris
    // defence), so all five were received, refused ones included; two were answered.
    assert_eq!(
        value(&format!("grpc_server_msg_received_total{{{SEND}}}")),
        5.0
    );
    assert_eq!(value(&format!("grpc_server_msg_sent_total{{{SEND}}}")), 2.0);
    assert_eq!(
        value(&handled(
            "Unimplemented",
            r#"grpc_method="unknown",grpc_service="unknown",grpc_type="unary""#
        )),
        1.0
    );
    assert!(!text.contains("trellis.user.v1"), "{text}");
    // Health checks (the testkit waited for SERVING) are counted like any call.
    assert!(
        value(&handled(
            "OK",
            r#"grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary""#
        )) >= 1.0
    );
    assert_eq!(
        value(&format!(
            "grpc_server_started_total{{{}}}",
            r#"grpc_method="Watch",grpc_service="grpc.health.v1.Health",grpc_type="server_stream""#
        )),
        0.0
    );
    let failures = |reason: &str| {
        value(&format!(
            "trellis_auth_token_verification_failures_total{{reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(failures("malformed"), 1.0);
    assert_eq!(failures("missing"), 1.0);
    assert_eq!(failures("expired"), 0.0);
    assert!(value(r#"trellis_db_pool_connections{state="idle"}"#) >= 0.0);
    assert!(value("process_resident_memory_bytes") > 0.0);
    assert!(value("process_start_time_seconds") > 0.0);
    assert_promtool_accepts(&text);

    let missing = http_get(metrics_addr, "/other").await;
    assert_eq!(missing.status, 404);
    server.stop().await;
}

#[tokio::test]
async fn a_service_without_a_metrics_listener_or_port_serves_no_endpoint() {
    let issuer = TestIssuer::new();
    let server = TestServer::start(
        Launch::new(test_config::<Probe>()).key_source(Arc::new(issuer.key_source())),
    )
    .await;
    assert_eq!(server.metrics_addr, None);
    server.stop().await;
}

#[tokio::test]
async fn the_endpoint_answers_throughout_the_drain() {
    let issuer = TestIssuer::new();
    let mut config = test_config::<Probe>();
    config.server.drain_timeout = std::time::Duration::from_millis(2_000);
    let mut server = TestServer::start(
        Launch::new(config)
            .key_source(Arc::new(issuer.key_source()))
            .metrics_listener(local_listener()),
    )
    .await;
    let metrics_addr = server.metrics_addr.expect("a metrics endpoint");
    // A health Watch stream keeps the drain from finishing until its bound.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("the watch opens")
        .into_inner();
    watch.message().await.expect("a status").expect("open");
    let stopped = server.stopped();
    // NOT_SERVING arrives once shutdown has begun; the drain is still running.
    watch.message().await.expect("a status").expect("open");
    let text = scrape(metrics_addr).await;
    assert!(text.contains("grpc_server_started_total"), "{text}");
    drop(watch);
    stopped
        .await
        .expect("the server task ends")
        .expect("a clean stop");
}

#[test]
fn the_metrics_port_defaults_to_the_grpc_port_plus_1000_and_0_turns_it_off() {
    use trellis_platform::Service as _;
    let config = crate::support::load(&[]).unwrap();
    assert_eq!(Probe::DEFAULT_METRICS_PORT, 51099);
    assert_eq!(config.metrics.port, 51099);
    assert_eq!(config.metrics.host.to_string(), "0.0.0.0");
    assert!(config.metrics.enabled());

    let config = crate::support::load(&[
        ("TRELLIS_PROBE__METRICS__PORT", "0"),
        ("TRELLIS_PROBE__METRICS__HOST", "127.0.0.1"),
    ])
    .unwrap();
    assert!(!config.metrics.enabled());
    assert_eq!(config.metrics.host.to_string(), "127.0.0.1");
    // Setting the host alone keeps the service's port.
    let config = crate::support::load(&[("TRELLIS_PROBE__METRICS__HOST", "::1")]).unwrap();
    assert_eq!(config.metrics.port, 51099);

    for (key, value) in [
        ("TRELLIS_PROBE__METRICS__PORT", "70000"),
        ("TRELLIS_PROBE__METRICS__HOST", "not an address"),
    ] {
        let err = crate::support::load(&[(key, value)])
            .err()
            .map(|err| err.to_string())
            .unwrap_or_default();
        assert!(err.contains("metrics."), "{key}={value}: {err}");
    }
}
