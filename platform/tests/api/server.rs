//! The server's HTTP/2 limits, as a client sees them.

use std::time::Duration;

use tokio_stream::StreamExt as _;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis_platform::server::{LIVENESS, ServerBuilder, ServerConfig};
use trellis_platform::testing::{channel, wait_serving};

use crate::support::load;

/// Serves health alone with `config` on 127.0.0.1; returns the address.
async fn serve(config: ServerConfig) -> std::net::SocketAddr {
    let config = ServerConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        ..config
    };
    let server = ServerBuilder::new(config).bind().await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run_until(std::future::pending()));
    wait_serving(addr).await;
    addr
}

#[tokio::test]
async fn the_server_advertises_its_max_concurrent_streams() {
    let addr = serve(ServerConfig {
        http2_max_concurrent_streams: 3,
        ..ServerConfig::default()
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    // A request answered means the server's SETTINGS frame (sent first) was read.
    let request = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = send.send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    tokio::select! {
        response = response => { response.unwrap(); }
        closed = &mut connection => panic!("the connection closed: {closed:?}"),
    }
    // Before the limit was set, tonic advertised none (unlimited).
    assert_eq!(connection.max_concurrent_send_streams(), 3);
}

#[tokio::test]
async fn a_stream_ends_when_its_connection_outlives_max_age_and_grace() {
    let addr = serve(ServerConfig {
        max_connection_age: Duration::from_millis(100),
        max_connection_age_grace: Duration::from_millis(100),
        ..ServerConfig::default()
    })
    .await;
    let mut client = HealthClient::new(channel(addr));
    let mut watch = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // Health's Watch never ends by itself; only the connection's end of life ends it.
    // The guard turns a hang (no age limit) into a failure.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(_)) = watch.next().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream outlived its connection's maximum age"
    );
}

#[test]
fn http2_limit_keys_load_and_are_validated() {
    let config = load(&[
        ("TRELLIS_PROBE__SERVER__HTTP2_MAX_CONCURRENT_STREAMS", "7"),
        ("TRELLIS_PROBE__SERVER__HTTP2_KEEPALIVE_INTERVAL_MS", "1000"),
        ("TRELLIS_PROBE__SERVER__MAX_CONNECTION_AGE_MS", "60000"),
        ("TRELLIS_PROBE__SERVER__MAX_CONNECTION_AGE_GRACE_MS", "5000"),
    ])
    .unwrap();
    assert_eq!(config.server.http2_max_concurrent_streams, 7);
    assert_eq!(
        config.server.http2_keepalive_interval,
        Duration::from_millis(1000)
    );
    assert_eq!(
        config.server.max_connection_lifetime(),
        std::time::Duration::from_millis(65_000)
    );
    for key in [
        "SERVER__HTTP2_MAX_CONCURRENT_STREAMS",
        "SERVER__HTTP2_KEEPALIVE_TIMEOUT_MS",
        "SERVER__HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS",
        "SERVER__MAX_CONNECTION_AGE_MS",
    ] {
        let variable = format!("TRELLIS_PROBE__{key}");
        let err = load(&[(variable.as_str(), "0")])
            .err()
            .map(|err| err.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(&key.to_lowercase().replace("__", ".")),
            "{key}: {err}"
        );
    }
}

#[tokio::test]
async fn liveness_stays_serving_while_readiness_fails() {
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let probe = std::sync::Arc::clone(&ready);
    let config = ServerConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        readiness_interval: Duration::from_millis(20),
        ..ServerConfig::default()
    };
    let server = ServerBuilder::new(config)
        .readiness(move || {
            let ready = probe.load(std::sync::atomic::Ordering::SeqCst);
            async move { ready }
        })
        .bind()
        .await
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run_until(std::future::pending()));
    wait_serving(addr).await;
    let health = HealthClient::new(channel(addr));
    let status = |service: &str| {
        let mut health = health.clone();
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        async move { health.check(request).await.unwrap().into_inner().status() }
    };
    assert_eq!(status(LIVENESS).await, ServingStatus::Serving);

    // The database (here, the probe) goes away: readiness follows, liveness does not.
    ready.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut watch = health
        .clone()
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // The bound turns a missing change into a failure, not a hang.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(reply) = watch.next().await {
            if reply.unwrap().status() == ServingStatus::NotServing {
                return;
            }
        }
        panic!("the watch ended before NOT_SERVING");
    })
    .await
    .expect("readiness turns NOT_SERVING");
    assert_eq!(status("").await, ServingStatus::NotServing);
    assert_eq!(status(LIVENESS).await, ServingStatus::Serving);
}

#[tokio::test]
async fn with_no_origin_allowed_preflights_are_forbidden_and_calls_carry_no_cors_headers() {
    let addr = serve(ServerConfig::default()).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);

    let preflight = http::Request::builder()
        .method(http::Method::OPTIONS)
        .uri(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-grpc-web")
        .body(())
        .unwrap();
    let (response, _) = send.send_request(preflight, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), http::StatusCode::FORBIDDEN);
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let call = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("origin", "https://app.example.com")
        .body(())
        .unwrap();
    let (response, mut body) = send.send_request(call, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    for name in [
        "vary",
        "access-control-allow-origin",
        "access-control-expose-headers",
    ] {
        assert!(
            response.headers().get(name).is_none(),
            "{name}: {response:?}"
        );
    }
}
