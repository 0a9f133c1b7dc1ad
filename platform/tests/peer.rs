//! Peer channels: every call carries a deadline, the current request id and the
//! service's credentials, as the platform promises.

// Tests panic on purpose: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use trellis_platform::context as request_id;
use trellis_platform::peer::{CredentialSource, PeerConfig, Peers};

struct FixedToken;

impl CredentialSource for FixedToken {
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<String, tonic::Status>> + Send + '_>> {
        Box::pin(async { Ok("service-token".to_owned()) })
    }
}

/// A health server that records the headers of each request it gets.
async fn recording_server() -> (std::net::SocketAddr, Arc<Mutex<Vec<http::HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = tower::ServiceBuilder::new().map_request(
        move |request: http::Request<tonic::body::Body>| {
            record.lock().unwrap().push(request.headers().clone());
            request
        },
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, seen)
}

#[tokio::test]
async fn calls_carry_deadline_request_id_and_credentials() {
    let (addr, seen) = recording_server().await;
    let peers = Peers::new(HashMap::from([(
        "health".to_owned(),
        PeerConfig {
            timeout_ms: 1500,
            ..PeerConfig::with_address(format!("http://{addr}"))
        },
    )]))
    .with_credentials(Arc::new(FixedToken));
    let mut client = HealthClient::new(peers.channel("health").unwrap());

    request_id::scope("req-42".to_owned(), async {
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("the call succeeds");
    })
    .await;

    let headers = seen.lock().unwrap().pop().expect("a request was seen");
    assert_eq!(headers.get("x-request-id").unwrap(), "req-42");
    assert_eq!(headers.get("grpc-timeout").unwrap(), "1500m");
    assert_eq!(
        headers.get("authorization").unwrap(),
        "Bearer service-token"
    );
}

#[tokio::test]
async fn anonymous_channels_carry_no_credentials_and_a_fresh_request_id() {
    let (addr, seen) = recording_server().await;
    let peers = Peers::new(HashMap::from([(
        "health".to_owned(),
        PeerConfig::with_address(format!("http://{addr}")),
    )]))
    .with_credentials(Arc::new(FixedToken));
    let mut client = HealthClient::new(peers.anonymous_channel("health").unwrap());
    client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("the call succeeds");
    let headers = seen.lock().unwrap().pop().expect("a request was seen");
    assert!(headers.get("authorization").is_none());
    assert!(!headers.get("x-request-id").unwrap().is_empty());
}

#[tokio::test]
async fn an_unknown_peer_is_an_error_naming_it() {
    let err = Peers::new(HashMap::new()).channel("nowhere").unwrap_err();
    assert!(err.to_string().contains("nowhere"), "{err}");
}
