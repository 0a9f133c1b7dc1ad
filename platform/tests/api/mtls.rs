//! Mutual TLS (`tls`): an internal method admits only a caller whose certificate proves
//! the service its token names; tokens are refused outside their audience and their
//! certificate; peers accept only the SPIFFE ID they expect, so an impostor a registry
//! points at gets no secret and serves no keys; certificates rotate without a restart.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use secrecy::SecretString;
use tonic::Code;
use tonic::transport::Channel;
use trellis_platform::auth::{ClientCredentials, KeySource as _, RemoteKeySource};
use trellis_platform::peer::{CredentialSource, PeerConfig, Peers};
use trellis_platform::service::Launch;
use trellis_platform::testing::{
    FakeAuth, TestCa, TestIssuer, TestServer, WorkloadFiles, assert_eventually_that, code,
    test_config, tls_channel, with_token, write_replacing,
};
use trellis_platform::tls::{SpiffeId, TlsSource, thumbprint};
use trellis_proto::notification_v1::notification_internal_service_client::NotificationInternalServiceClient;

use crate::support::Probe;

/// The probe (`SendNotification` internal, for `user` and `auth`) over mutual TLS with
/// its own certificate, re-read every `reload`.
async fn start_probe(ca: &TestCa, issuer: &TestIssuer, reload: Duration) -> TestServer {
    start_probe_with(ca, issuer, |tls| tls.reload_interval = reload).await
}

/// [`start_probe`] with `configure` applied to its `tls` section.
async fn start_probe_with(
    ca: &TestCa,
    issuer: &TestIssuer,
    configure: impl FnOnce(&mut trellis_platform::tls::TlsConfig),
) -> TestServer {
    let mut config = test_config::<Probe>();
    config.tls = ca.workload("probe").config();
    configure(&mut config.tls);
    TestServer::start_tls(
        Launch::new(config).key_source(Arc::new(issuer.key_source())),
        &ca.workload("user"),
    )
    .await
}

/// The thumbprint of the certificate in `files`.
fn thumbprint_of(files: &WorkloadFiles) -> String {
    files.thumbprint()
}

fn client(
    server: &TestServer,
    ca: &TestCa,
    presenting: Option<&WorkloadFiles>,
) -> NotificationInternalServiceClient<Channel> {
    NotificationInternalServiceClient::new(tls_channel(
        server.addr,
        &ca.dir().join("ca.pem"),
        presenting,
    ))
}

async fn send(
    client: &mut NotificationInternalServiceClient<Channel>,
    token: &str,
) -> Result<(), Code> {
    code(
        client
            .send_notification(with_token(crate::support::send_request(), token))
            .await,
    )
}

#[tokio::test]
async fn an_internal_call_needs_a_certificate_proving_its_tokens_service() {
    let (ca, issuer) = (TestCa::new(), TestIssuer::new());
    let server = start_probe(&ca, &issuer, Duration::from_secs(60)).await;
    let (user, auth) = (ca.workload("user"), ca.workload("auth"));

    let token = issuer.bound_service_token("user", "probe", &thumbprint_of(&user));
    assert_eq!(
        send(&mut client(&server, &ca, Some(&user)), &token).await,
        Ok(())
    );

    // Another service's certificate, with a token naming `user` bound to it: the
    // certificate does not prove the token's service.
    let borrowed = issuer.bound_service_token("user", "probe", &thumbprint_of(&auth));
    assert_eq!(
        send(&mut client(&server, &ca, Some(&auth)), &borrowed).await,
        Err(Code::PermissionDenied)
    );
    // No client certificate (server-only TLS, as grpcurl connects).
    let unbound = issuer.service_token("user", "probe");
    assert_eq!(
        send(&mut client(&server, &ca, None), &unbound).await,
        Err(Code::Unauthenticated)
    );
    // `user` of another namespace, signed by the same CA (one issuer for several
    // namespaces or trust domains): not this namespace's `user`.
    let namesake = ca.issue(
        &SpiffeId::workload("trellis.local", "staging", "user"),
        "staging-user",
    );
    let namesakes = issuer.bound_service_token("user", "probe", &thumbprint_of(&namesake));
    assert_eq!(
        send(&mut client(&server, &ca, Some(&namesake)), &namesakes).await,
        Err(Code::PermissionDenied)
    );
    // The right certificate, but a token bound to none: internal methods need both.
    assert_eq!(
        send(&mut client(&server, &ca, Some(&user)), &unbound).await,
        Err(Code::PermissionDenied)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_token_for_another_audience_or_another_certificate_is_refused() {
    let (ca, issuer) = (TestCa::new(), TestIssuer::new());
    let server = start_probe(&ca, &issuer, Duration::from_secs(60)).await;
    let user = ca.workload("user");
    let mut as_user = client(&server, &ca, Some(&user));

    // Issued for calling `notification`: the probe is not its audience.
    let elsewhere = issuer.bound_service_token("user", "notification", &thumbprint_of(&user));
    assert_eq!(
        send(&mut as_user, &elsewhere).await,
        Err(Code::Unauthenticated)
    );

    // A second certificate of the same workload: a token bound to the first is refused
    // on its connection — a leaked token is useless on another channel.
    let other = ca.issue(
        &SpiffeId::workload("trellis.local", "default", "user"),
        "user-2",
    );
    let leaked = issuer.bound_service_token("user", "probe", &thumbprint_of(&user));
    assert_eq!(
        send(&mut client(&server, &ca, Some(&other)), &leaked).await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(send(&mut as_user, &leaked).await, Ok(()));
    server.stop().await;
}

#[tokio::test]
async fn a_certificate_of_another_ca_fails_the_handshake_and_plaintext_is_not_served() {
    let (ca, issuer) = (TestCa::new(), TestIssuer::new());
    let server = start_probe(&ca, &issuer, Duration::from_secs(60)).await;
    let other_ca = TestCa::new();
    let stranger = other_ca.workload("user");
    let token = issuer.bound_service_token("user", "probe", &thumbprint_of(&stranger));
    // Trusting the server's CA but presenting a certificate it does not trust.
    // (Under TLS 1.3 the client hears of the refusal on its first read: UNKNOWN or
    // UNAVAILABLE, as the transport error reaches tonic.)
    let mut foreign = client(&server, &ca, Some(&stranger));
    let refused = send(&mut foreign, &token).await;
    assert!(
        matches!(refused, Err(Code::Unavailable | Code::Unknown)),
        "{refused:?}"
    );
    let mut plaintext =
        NotificationInternalServiceClient::new(trellis_platform::testing::channel(server.addr));
    // The server answers the cleartext preface with a TLS alert: a transport error.
    let cleartext = send(&mut plaintext, &token).await;
    assert!(
        matches!(
            cleartext,
            Err(Code::Unavailable | Code::Internal | Code::Unknown)
        ),
        "{cleartext:?}"
    );

    // Health answers over server-only TLS: end users and probes need no certificate.
    let mut health = tonic_health::pb::health_client::HealthClient::new(tls_channel(
        server.addr,
        &ca.dir().join("ca.pem"),
        None,
    ));
    let status = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.stop().await;
}

/// Tokens signed here for calling `audience`, bound to this workload's current
/// certificate, as the auth service issues them.
struct BoundTokens {
    issuer: TestIssuer,
    tls: TlsSource,
}

impl CredentialSource for BoundTokens {
    fn token<'a>(
        &'a self,
        audience: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<String, tonic::Status>> + Send + 'a>> {
        let thumbprint = self.tls.current().thumbprint().to_owned();
        Box::pin(async move {
            Ok(self
                .issuer
                .bound_service_token("user", audience, &thumbprint))
        })
    }
}

#[tokio::test]
async fn a_peer_channel_reaches_only_the_spiffe_id_it_expects() {
    let (ca, issuer) = (TestCa::new(), TestIssuer::new());
    let server = start_probe(&ca, &issuer, Duration::from_secs(60)).await;
    let tls = TlsSource::load(&ca.workload("user").config(), "user")
        .unwrap()
        .unwrap();
    let address = format!("https://{}", server.addr);
    let peers = Peers::new(
        [
            ("probe".to_owned(), PeerConfig::with_address(&address)),
            (
                // The same address, expected to be `auth`: the probe's certificate
                // does not prove it.
                "impostor".to_owned(),
                PeerConfig {
                    spiffe_id: Some("spiffe://trellis.local/ns/default/sa/auth".to_owned()),
                    ..PeerConfig::with_address(&address)
                },
            ),
        ]
        .into(),
    )
    .with_tls(tls.clone())
    .with_credentials(Arc::new(BoundTokens {
        issuer: issuer.clone(),
        tls,
    }));
    let mut probe = NotificationInternalServiceClient::new(peers.channel("probe").unwrap());
    let sent = probe
        .send_notification(crate::support::send_request())
        .await;
    assert_eq!(code(sent), Ok(()));
    let mut impostor = NotificationInternalServiceClient::new(peers.channel("impostor").unwrap());
    let refused = impostor
        .send_notification(crate::support::send_request())
        .await;
    assert_eq!(code(refused), Err(Code::Unavailable));
    server.stop().await;
}

#[tokio::test]
async fn an_impostor_auth_gets_no_client_secret_and_serves_no_keys() {
    let ca = TestCa::new();
    let tls = TlsSource::load(&ca.workload("probe").config(), "probe")
        .unwrap()
        .unwrap();
    // A registry entry for `auth` that points at a server with a certificate of the
    // right CA but another workload's SPIFFE ID.
    let impostor = FakeAuth::start_tls(TestIssuer::new(), &ca.workload("user")).await;
    let real = FakeAuth::start_tls(TestIssuer::new(), &ca.workload("auth")).await;
    for (auth, expect_reached) in [(&impostor, false), (&real, true)] {
        let peers = Peers::new([("auth".to_owned(), PeerConfig::with_address(auth.uri()))].into())
            .with_tls(tls.clone());
        let credentials = ClientCredentials::new(
            "probe",
            SecretString::from("the probe's secret"),
            peers.pinned_channel("auth").unwrap(),
        )
        .bound_to(Some(tls.clone()));
        let token = credentials.token("notification").await;
        let keys = RemoteKeySource::new(peers.anonymous_channel("auth").unwrap())
            .fetch()
            .await;
        assert_eq!(token.is_ok(), expect_reached, "{:?}", token.err());
        assert_eq!(keys.is_ok(), expect_reached);
        assert_eq!(auth.token_requests(), usize::from(expect_reached));
        assert_eq!(auth.key_fetches(), usize::from(expect_reached));
    }
}

/// The thumbprint of the certificate `addr` presents to a new connection.
async fn presented(addr: std::net::SocketAddr, ca: &TestCa) -> String {
    presented_to(addr, ca, "127.0.0.1").await
}

/// [`presented`] to a client connecting from `source` (an address of the loopback).
async fn presented_to(addr: std::net::SocketAddr, ca: &TestCa, source: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    thumbprint(&tls.get_ref().1.peer_certificates().unwrap()[0])
}

#[tokio::test]
async fn replaced_files_serve_new_connections_without_a_restart_or_a_failed_call() {
    let (ca, issuer) = (TestCa::new(), TestIssuer::new());
    let server = start_probe(&ca, &issuer, Duration::from_millis(50)).await;
    let user = ca.workload("user");
    let before = presented(server.addr, &ca).await;
    assert_eq!(before, thumbprint_of(&ca.files("probe")));

    // Calls keep going on one connection while the files are replaced.
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let caller = {
        let (stop, calls, failures) = (stop.clone(), calls.clone(), failures.clone());
        let mut as_user = client(&server, &ca, Some(&user));
        let token = issuer.bound_service_token("user", "probe", &thumbprint_of(&user));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if send(&mut as_user, &token).await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let id = SpiffeId::workload("trellis.local", "default", "probe");
    let (cert, key) = ca.issue_pem(&id);
    let files = ca.files("probe");
    write_replacing(&files.key, &key);
    write_replacing(&files.cert, &cert);
    let after = thumbprint(&CertificateDer::from_pem_slice(cert.as_bytes()).unwrap());
    assert_ne!(before, after);
    assert_eventually_that("new connections get the new certificate", || async {
        presented(server.addr, &ca).await == after
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    caller.await.unwrap();
    assert!(calls.load(Ordering::Relaxed) > 0);
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no call failed");
    server.stop().await;
}

#[tokio::test]
async fn a_bad_new_pair_is_refused_and_the_old_one_kept() {
    let ca = TestCa::new();
    let files = ca.workload("probe");
    let source = TlsSource::load(&files.config(), "probe").unwrap().unwrap();
    let kept = source.current().thumbprint().to_owned();

    // A key that is not the certificate's.
    let (_, other_key) = ca.issue_pem(&SpiffeId::workload("trellis.local", "default", "probe"));
    write_replacing(&files.key, &other_key);
    assert!(source.reload().await.is_err());
    assert_eq!(source.current().thumbprint(), kept);
    // Another workload's certificate and key.
    let (cert, key) = ca.issue_pem(&SpiffeId::workload("trellis.local", "default", "auth"));
    write_replacing(&files.key, &key);
    write_replacing(&files.cert, &cert);
    assert!(source.reload().await.is_err());
    assert_eq!(source.current().thumbprint(), kept);
    // The right identity, from a CA the bundle does not hold: peers would refuse it.
    let (cert, key) =
        TestCa::new().issue_pem(&SpiffeId::workload("trellis.local", "default", "probe"));
    write_replacing(&files.key, &key);
    write_replacing(&files.cert, &cert);
    assert!(source.reload().await.is_err());
    assert_eq!(source.current().thumbprint(), kept);
    // A good pair again is taken.
    let (cert, key) = ca.issue_pem(&SpiffeId::workload("trellis.local", "default", "probe"));
    write_replacing(&files.key, &key);
    write_replacing(&files.cert, &cert);
    assert!(source.reload().await.unwrap());
    assert_ne!(source.current().thumbprint(), kept);
    assert_eq!(source.current().generation(), 5);
}

#[test]
fn a_certificate_of_another_identity_does_not_start_the_service() {
    let ca = TestCa::new();
    let mut config = ca.workload("user").config();
    let refused = TlsSource::load(&config, "probe").unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("spiffe://trellis.local/ns/default/sa/probe"),
        "{refused}"
    );
    config.key = None;
    assert!(config.validate().is_err(), "cert without key");
}

#[tokio::test]
async fn probes_and_the_certificate_expiry_are_served_in_plaintext_beside_the_metrics() {
    use trellis_platform::testing::metrics::{http_get, sample, scrape};
    let (ca, issuer) = (TestCa::new(), TestIssuer::new());
    let mut config = test_config::<Probe>();
    config.tls = ca.workload("probe").config();
    let server = TestServer::start_tls(
        Launch::new(config)
            .key_source(Arc::new(issuer.key_source()))
            .metrics_listener(trellis_platform::testing::local_listener()),
        &ca.workload("user"),
    )
    .await;
    let metrics = server.metrics_addr.unwrap();
    // Kubernetes' gRPC probes cannot speak TLS: these stand in for them.
    let live = http_get(metrics, "/livez").await;
    assert_eq!(live.status, 200);
    let ready = http_get(metrics, "/readyz").await;
    assert_eq!((ready.status, ready.body.trim()), (200, "SERVING"));
    let expiry = sample(
        &scrape(metrics).await,
        "trellis_tls_certificate_expiry_seconds",
    )
    .expect("the expiry gauge");
    assert!(expiry > 0.0, "{expiry}");
    server.stop().await;
}

/// A TCP connection to `addr` from `source` (an address of the loopback) that sends
/// nothing: a TLS handshake that never starts.
async fn idle_from(addr: std::net::SocketAddr, source: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// How many of `streams` the server closed (read end-of-file or an error within 1 s).
async fn closed(streams: &mut [tokio::net::TcpStream]) -> usize {
    use tokio::io::AsyncReadExt as _;
    let reads = streams.iter_mut().map(|stream| async move {
        let mut byte = [0_u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    });
    futures::future::join_all(reads)
        .await
        .into_iter()
        .filter(|closed| *closed)
        .count()
}

#[tokio::test]
async fn past_max_handshakes_the_oldest_stalled_one_is_evicted_for_a_new_client() {
    let (ca, issuer) = (TestCa::new(), TestIssuer::new());
    let server = start_probe_with(&ca, &issuer, |tls| tls.max_handshakes = 48).await;
    // 64 stalled handshakes from two addresses (32 each, each address's bound): the
    // 16 oldest are evicted as the newer ones arrive.
    let mut idle = Vec::new();
    for source in ["127.0.0.1", "127.0.0.2"] {
        for _ in 0..32 {
            idle.push(idle_from(server.addr, source).await);
        }
    }
    // A new client from a third address is served: it evicts the oldest, not itself.
    let served = tokio::time::timeout(
        Duration::from_secs(2),
        presented_to(server.addr, &ca, "127.0.0.3"),
    )
    .await
    .expect("a new client is not locked out by stalled handshakes");
    assert_eq!(served, ca.files("probe").thumbprint());
    assert_eq!(closed(&mut idle).await, 17, "64 + 1 - 48 evicted");
    server.stop().await;
}

#[tokio::test]
async fn a_handshake_flood_from_one_address_is_closed_and_others_are_served() {
    use trellis_platform::server::handshake::MAX_HANDSHAKES_PER_ADDRESS;
    let (ca, issuer) = (TestCa::new(), TestIssuer::new());
    let server = start_probe(&ca, &issuer, Duration::from_secs(60)).await;
    // Connections that never send a ClientHello, each holding a handshake open.
    let flood = 100;
    let mut idle = Vec::new();
    for _ in 0..flood {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // Those past the per-address bound are closed at once, long before the handshake
    // timeout (10 s): they read end-of-file.
    assert_eq!(closed(&mut idle).await, flood - MAX_HANDSHAKES_PER_ADDRESS);
    // Meanwhile a client from another address is accepted and served at once.
    let served = tokio::time::timeout(
        Duration::from_secs(2),
        presented_to(server.addr, &ca, "127.0.0.2"),
    )
    .await
    .expect("another address is not held up by the flood");
    assert_eq!(served, ca.files("probe").thumbprint());
    drop(idle);
    server.stop().await;
}

#[tokio::test]
async fn after_its_own_certificate_changes_a_peer_channel_presents_the_new_one() {
    let (ca, issuer) = (TestCa::new(), TestIssuer::new());
    let server = start_probe(&ca, &issuer, Duration::from_secs(60)).await;
    let user = ca.workload("user");
    let tls = TlsSource::load(&user.config(), "user").unwrap().unwrap();
    let peers = Peers::new(
        [(
            "probe".to_owned(),
            PeerConfig::with_address(format!("https://{}", server.addr)),
        )]
        .into(),
    )
    .with_tls(tls.clone())
    .with_credentials(Arc::new(BoundTokens {
        issuer: issuer.clone(),
        tls: tls.clone(),
    }));
    let mut probe = NotificationInternalServiceClient::new(peers.channel("probe").unwrap());
    let send = async |probe: &mut NotificationInternalServiceClient<_>| {
        code(
            probe
                .send_notification(crate::support::send_request())
                .await,
        )
    };
    assert_eq!(send(&mut probe).await, Ok(()));

    // The workload's certificate is renewed: its tokens are now bound to the new one,
    // which the connection made before does not present.
    let (cert, key) = ca.issue_pem(&SpiffeId::workload("trellis.local", "default", "user"));
    write_replacing(&user.key, &key);
    write_replacing(&user.cert, &cert);
    assert!(tls.reload().await.unwrap());
    assert_eq!(tls.current().thumbprint(), user.thumbprint());
    for _ in 0..3 {
        assert_eq!(
            send(&mut probe).await,
            Ok(()),
            "calls go on new connections"
        );
    }
    server.stop().await;
}
