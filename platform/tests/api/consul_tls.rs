//! The Consul backend over HTTPS, against an in-process double of the agent's HTTP API
//! (no Consul binary can be installed here; the double answers the documented health
//! query): the agent's certificate is checked against `discovery.consul.ca` for the
//! address's host, a client certificate is presented to an agent that requires one
//! (`verify_incoming`), and without one the agent's refusal leaves the watch empty.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use trellis_platform::discovery::{ConsulConfig, ConsulRegistry, Registry, Target};
use trellis_platform::testing::{TestCa, WorkloadFiles, assert_eventually_that};

/// An HTTPS double of the agent requiring a client certificate of `ca`: every
/// `/v1/health/service/user` query answers one passing instance at 127.0.0.1:50051.
/// Returns its port, how many requests it answered and how many handshakes it refused.
async fn https_agent(
    ca: &TestCa,
    server: &WorkloadFiles,
) -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain = CertificateDer::pem_file_iter(&server.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&server.key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&answered);
    let refused = Arc::new(AtomicUsize::new(0));
    let refusals = Arc::clone(&refused);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, counter) = (acceptor.clone(), Arc::clone(&counter));
            let refusals = Arc::clone(&refusals);
            tokio::spawn(async move {
                // A client without a certificate fails here, as against a real agent.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    refusals.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let service = hyper::service::service_fn(move |_request| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = serde_json::json!([{
                        "Node": {"Node": "node-1", "Address": "127.0.0.1"},
                        "Service": {"ID": "user-1", "Service": "user", "Address": "127.0.0.1", "Port": 50051},
                        "Checks": [{"CheckID": "service:user-1", "Status": "passing"}],
                    }]);
                    async move {
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("x-consul-index", "7")
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body.to_string())))
                                .unwrap(),
                        )
                    }
                });
                drop(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await,
                );
            });
        }
    });
    (port, answered, refused)
}

fn target() -> Target {
    Target {
        peer: "user".to_owned(),
        service: "user".to_owned(),
        addresses: Vec::new(),
        srv: None,
    }
}

#[tokio::test]
async fn the_agent_is_reached_over_https_with_a_client_certificate() {
    let ca = TestCa::new();
    let (port, answered, refused_handshakes) = https_agent(&ca, &ca.workload("consul")).await;
    let client = ca.workload("user");
    let config = ConsulConfig {
        // The agent's certificate names localhost.
        address: format!("https://localhost:{port}"),
        ca: Some(client.ca.clone()),
        cert: Some(client.cert.clone()),
        key: Some(client.key.clone()),
        wait_s: 1,
        ..ConsulConfig::default()
    };
    let registry = ConsulRegistry::new(&config).unwrap();
    let watch = registry.watch(&target());
    assert_eventually_that("the instance from the agent over HTTPS", || {
        let set = watch.current();
        async move { set.is_some_and(|set| set.iter().any(|i| i.uri == "http://127.0.0.1:50051")) }
    })
    .await;

    drop(watch);
    // Without a client certificate the agent refuses the handshake: no answer, no set.
    let anonymous = ConsulRegistry::new(&ConsulConfig {
        cert: None,
        key: None,
        ..config.clone()
    })
    .unwrap();
    let refused = anonymous.watch(&target());
    assert_eventually_that("the agent refusing the handshake", || {
        let count = refused_handshakes.load(Ordering::SeqCst);
        async move { count > 0 }
    })
    .await;
    assert_eq!(refused.current(), None);
    assert!(answered.load(Ordering::SeqCst) > 0);
    // An https:// address without `ca` is a configuration error.
    assert!(
        ConsulRegistry::new(&ConsulConfig {
            ca: None,
            cert: None,
            key: None,
            ..config
        })
        .is_err()
    );
}
