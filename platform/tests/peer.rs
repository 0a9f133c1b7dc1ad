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
use trellis_platform::testing::assert_eventually_that;

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
            // Only the calls under test: the balancer's health watch comes here too.
            if request.uri().path().ends_with("/Check") {
                record.lock().unwrap().push(request.headers().clone());
            }
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
            timeout: Duration::from_millis(1500),
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

// ---------------------------------------------------------------------------------------
// Resilience: replicas that die and return, empty sets, deadlines across hops.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::{Code, Request, Response, Status};
use trellis_platform::discovery::{Registry, StaticRegistry, Target, Watch};
use trellis_platform::peer::{EndpointState, OutlierConfig};
use trellis_proto::user_v1 as pb;
use trellis_proto::user_v1::user_internal_service_client::UserInternalServiceClient;
use trellis_proto::user_v1::user_internal_service_server::{
    UserInternalService, UserInternalServiceServer,
};

/// A fake user service: VerifyCredentials (declared IDEMPOTENT in the protos) answers
/// with the replica's number after `delay`, counting the calls it answers.
#[derive(Clone)]
struct FakeUsers {
    replica: usize,
    served: Arc<AtomicUsize>,
    delay: Duration,
    seen_timeouts: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl UserInternalService for FakeUsers {
    async fn verify_credentials(
        &self,
        request: Request<pb::VerifyCredentialsRequest>,
    ) -> Result<Response<pb::VerifyCredentialsResponse>, Status> {
        if let Some(timeout) = request.metadata().get("grpc-timeout") {
            self.seen_timeouts
                .lock()
                .unwrap()
                .push(timeout.to_str().unwrap().to_owned());
        }
        tokio::time::sleep(self.delay).await;
        self.served.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::VerifyCredentialsResponse {
            user: Some(pb::User {
                id: self.replica.to_string(),
                ..pb::User::default()
            }),
        }))
    }

    async fn lookup_user(
        &self,
        _: Request<pb::LookupUserRequest>,
    ) -> Result<Response<pb::LookupUserResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// One replica in a runtime of its own, so [`Replica::kill`] can drop every task and
/// socket at once, as SIGKILL would.
struct Replica {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Replica {
    fn start(replica: usize, addr: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let users = FakeUsers {
            replica,
            served: Arc::clone(&served),
            delay: Duration::from_millis(2),
            seen_timeouts: Arc::default(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(UserInternalServiceServer::new(users))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self {
            addr,
            served,
            runtime: Some(runtime),
        }
    }

    fn kill(mut self) -> SocketAddr {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        self.addr
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // Without blocking: the tests drop replicas inside their own runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn user_peers(addrs: &[SocketAddr], config: PeerConfig) -> Peers {
    let addresses = addrs
        .iter()
        .map(|addr| format!("http://{addr}"))
        .collect::<Vec<_>>()
        .join(",");
    Peers::new(HashMap::from([(
        "user".to_owned(),
        PeerConfig {
            addresses,
            ..config
        },
    )]))
}

async fn verify(
    client: &mut UserInternalServiceClient<trellis_platform::peer::PeerChannel>,
) -> Result<String, Status> {
    let response = client
        .verify_credentials(pb::VerifyCredentialsRequest {
            email: "ada@example.com".into(),
            password: "correct horse".into(),
        })
        .await?;
    Ok(response.into_inner().user.unwrap_or_default().id)
}

/// Polls `check` until it holds (the testkit's [`assert_eventually_that`]).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    assert_eventually_that(what, || std::future::ready(check())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_replicas_under_load_fails_no_call_and_it_returns_to_rotation() {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let replicas: Vec<Replica> = (0..3).map(|i| Replica::start(i, any)).collect();
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let peers = user_peers(&addrs, PeerConfig::default());
    let channel = peers.channel("user").unwrap();
    eventually("every replica reports SERVING", || {
        let states = peers.instances("user");
        states.len() == 3 && states.iter().all(|s| s.state == EndpointState::Serving)
    })
    .await;

    // A steady load: 8 callers in a loop until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..8 {
        let mut client = UserInternalServiceClient::new(channel.clone());
        let (stop, failures, done) = (Arc::clone(&stop), Arc::clone(&failures), Arc::clone(&done));
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match verify(&mut client).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        failures.lock().unwrap().push(status);
                        0
                    }
                };
            }
        }));
    }
    let mut replicas = replicas.into_iter();
    let (first, victim, third) = (
        replicas.next().unwrap(),
        replicas.next().unwrap(),
        replicas.next().unwrap(),
    );
    eventually("the victim serves part of the load", || {
        victim.served.load(Ordering::Relaxed) >= 20
    })
    .await;
    let victim_addr = victim.kill();
    let at_kill = done.load(Ordering::Relaxed);
    eventually("calls go on after the kill", || {
        done.load(Ordering::Relaxed) >= at_kill + 200
    })
    .await;
    let victim_uri = format!("http://{victim_addr}");
    let state_of_victim = || {
        peers
            .instances("user")
            .into_iter()
            .find(|s| s.uri == victim_uri)
            .map(|s| s.state)
    };
    assert!(
        !state_of_victim().unwrap().in_rotation(),
        "the killed replica is out of rotation: {:?}",
        peers.instances("user")
    );

    // It returns on the same port: back in rotation, and serving calls again.
    let returned = Replica::start(1, victim_addr);
    eventually("the returned replica reports SERVING", || {
        state_of_victim() == Some(EndpointState::Serving)
    })
    .await;
    eventually("the returned replica serves calls", || {
        returned.served.load(Ordering::Relaxed) >= 10
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} calls failed, e.g. {:?}",
        failures.len(),
        done.load(Ordering::Relaxed) + failures.len(),
        failures.first()
    );
    assert!(first.served.load(Ordering::Relaxed) > 0 && third.served.load(Ordering::Relaxed) > 0);
    drop((first, third, returned));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_replica_down_calls_fail_fast_and_recover_on_their_own() {
    let replica = Replica::start(0, SocketAddr::from(([127, 0, 0, 1], 0)));
    let peers = user_peers(
        &[replica.addr],
        PeerConfig {
            // Far longer than the test may take: failing fast must not wait for it.
            connect_timeout: Duration::from_millis(60_000),
            timeout: Duration::from_millis(60_000),
            ..PeerConfig::default()
        },
    );
    let mut client = UserInternalServiceClient::new(peers.channel("user").unwrap());
    assert_eq!(verify(&mut client).await.unwrap(), "0");
    let addr = replica.kill();
    eventually("the dead replica leaves the rotation", || {
        peers
            .instances("user")
            .iter()
            .all(|s| !s.state.in_rotation())
    })
    .await;
    let failed = tokio::time::timeout(Duration::from_secs(10), verify(&mut client))
        .await
        .expect("the call does not hang")
        .unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert!(failed.message().contains("user"), "{failed:?}");

    let _back = Replica::start(7, addr);
    let mut answer = None;
    // The failures above may have opened the circuit breaker (open 10 s by default):
    // recovery then waits for its probe.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while answer.is_none() && tokio::time::Instant::now() < deadline {
        answer = verify(&mut client).await.ok();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        answer.as_deref(),
        Some("7"),
        "calls recover once a replica returns"
    );
}

/// A registry that resolves every peer to nothing.
struct Empty;

impl Registry for Empty {
    fn name(&self) -> &'static str {
        "empty"
    }

    fn watch(&self, _: &Target) -> Watch {
        Watch::fixed(Vec::new())
    }

    fn register<'a>(
        &'a self,
        registration: &'a trellis_platform::discovery::Registration,
    ) -> trellis_platform::discovery::BoxFuture<
        'a,
        Result<
            Box<dyn trellis_platform::discovery::Registered>,
            trellis_platform::discovery::DiscoveryError,
        >,
    > {
        StaticRegistry.register(registration)
    }
}

#[tokio::test]
async fn an_empty_set_fails_fast_with_unavailable() {
    let peers = Peers::with_registry(
        HashMap::from([(
            "user".to_owned(),
            PeerConfig {
                connect_timeout: Duration::from_millis(60_000),
                timeout: Duration::from_millis(60_000),
                ..PeerConfig::with_address("http://unused.invalid:1")
            },
        )]),
        Arc::new(Empty),
    );
    let mut client = UserInternalServiceClient::new(peers.channel("user").unwrap());
    let failed = tokio::time::timeout(Duration::from_secs(10), verify(&mut client))
        .await
        .expect("the call does not hang")
        .unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
}

#[tokio::test]
async fn ejected_instances_leave_rotation_within_the_ejection_share() {
    // Two replicas that fail every call with UNAVAILABLE but report SERVING.
    #[derive(Clone)]
    struct Failing(Arc<AtomicUsize>);
    #[tonic::async_trait]
    impl UserInternalService for Failing {
        async fn verify_credentials(
            &self,
            _: Request<pb::VerifyCredentialsRequest>,
        ) -> Result<Response<pb::VerifyCredentialsResponse>, Status> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Err(Status::internal("broken replica"))
        }
        async fn lookup_user(
            &self,
            _: Request<pb::LookupUserRequest>,
        ) -> Result<Response<pb::LookupUserResponse>, Status> {
            Err(Status::unimplemented("no"))
        }
    }
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(UserInternalServiceServer::new(Failing(Arc::default())))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
    }
    let peers = user_peers(
        &addrs,
        PeerConfig {
            health_check: false,
            // Ejection alone: a breaker would answer for the peer after 5 failures.
            breaker: trellis_platform::peer::BreakerConfig {
                enabled: false,
                ..Default::default()
            },
            outlier: OutlierConfig {
                consecutive_failures: 3,
                ..OutlierConfig::default()
            },
            ..PeerConfig::default()
        },
    );
    let mut client = UserInternalServiceClient::new(peers.channel("user").unwrap());
    for _ in 0..20 {
        assert_eq!(
            verify(&mut client).await.unwrap_err().code(),
            Code::Internal
        );
    }
    let states = peers.instances("user");
    let ejected = states
        .iter()
        .filter(|s| s.state == EndpointState::Ejected)
        .count();
    // 10 % of two instances rounds to none; Envoy still ejects one, never both.
    assert_eq!(ejected, 1, "{states:?}");
}

#[tokio::test]
async fn a_lone_ejected_instance_still_gets_calls() {
    // One replica that fails a burst of calls, then recovers: ejection must not lock the
    // only instance out for the ejection time (Envoy routes to ejected hosts when no
    // other is left).
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    #[derive(Clone)]
    struct Flaky(Arc<std::sync::atomic::AtomicBool>);
    #[tonic::async_trait]
    impl UserInternalService for Flaky {
        async fn verify_credentials(
            &self,
            _: Request<pb::VerifyCredentialsRequest>,
        ) -> Result<Response<pb::VerifyCredentialsResponse>, Status> {
            if self.0.load(Ordering::Relaxed) {
                return Err(Status::internal("a bad moment"));
            }
            Ok(Response::new(pb::VerifyCredentialsResponse::default()))
        }
        async fn lookup_user(
            &self,
            _: Request<pb::LookupUserRequest>,
        ) -> Result<Response<pb::LookupUserResponse>, Status> {
            Err(Status::unimplemented("no"))
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UserInternalServiceServer::new(Flaky(Arc::clone(&failing))))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let peers = user_peers(
        &[addr],
        PeerConfig {
            health_check: false,
            breaker: trellis_platform::peer::BreakerConfig {
                enabled: false,
                ..Default::default()
            },
            ..PeerConfig::default()
        },
    );
    let mut client = UserInternalServiceClient::new(peers.channel("user").unwrap());
    for _ in 0..10 {
        assert_eq!(
            verify(&mut client).await.unwrap_err().code(),
            Code::Internal
        );
    }
    assert_eq!(peers.instances("user")[0].state, EndpointState::Ejected);
    failing.store(false, Ordering::Relaxed);
    assert!(
        verify(&mut client).await.is_ok(),
        "the lone instance is still called"
    );
}

/// A user service whose VerifyCredentials asks another one (over a peer channel), as
/// auth's Login does: the second hop of a deadline.
#[derive(Clone)]
struct Relay {
    next: trellis_platform::peer::PeerChannel,
    remaining_seen: Arc<Mutex<Option<Duration>>>,
}

#[tonic::async_trait]
impl UserInternalService for Relay {
    async fn verify_credentials(
        &self,
        request: Request<pb::VerifyCredentialsRequest>,
    ) -> Result<Response<pb::VerifyCredentialsResponse>, Status> {
        *self.remaining_seen.lock().unwrap() = trellis_platform::context::remaining();
        UserInternalServiceClient::new(self.next.clone())
            .verify_credentials(request.into_inner())
            .await
    }

    async fn lookup_user(
        &self,
        _: Request<pb::LookupUserRequest>,
    ) -> Result<Response<pb::LookupUserResponse>, Status> {
        Err(Status::unimplemented("no"))
    }
}

#[tokio::test]
async fn a_deadline_shrinks_across_two_hops_and_expires_as_deadline_exceeded() {
    // Hop 2: answers after 3 s, far past the caller's deadline.
    let seen_timeouts: Arc<Mutex<Vec<String>>> = Arc::default();
    let slow = FakeUsers {
        replica: 2,
        served: Arc::default(),
        delay: Duration::from_secs(3),
        seen_timeouts: Arc::clone(&seen_timeouts),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UserInternalServiceServer::new(slow))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // Hop 1: a platform server, whose handler calls hop 2 with a 5 s peer timeout.
    let peers = user_peers(&[slow_addr], PeerConfig::default());
    let remaining_seen: Arc<Mutex<Option<Duration>>> = Arc::default();
    let relay = Relay {
        next: peers.channel("user").unwrap(),
        remaining_seen: Arc::clone(&remaining_seen),
    };
    let mut builder = trellis_platform::server::ServerBuilder::new(
        trellis_platform::server::ServerConfig::default(),
    )
    .listener(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    builder.add_service(UserInternalServiceServer::new(relay));
    let server = builder.bind().await.unwrap();
    let relay_addr = server.local_addr();
    tokio::spawn(server.run_until(std::future::pending()));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{relay_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = Request::new(pb::VerifyCredentialsRequest::default());
    request.set_timeout(Duration::from_millis(400));
    let failed = UserInternalServiceClient::new(channel)
        .verify_credentials(request)
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Code::DeadlineExceeded, "{failed:?}");

    let remaining = remaining_seen
        .lock()
        .unwrap()
        .expect("the handler saw a deadline");
    assert!(remaining <= Duration::from_millis(400), "{remaining:?}");
    let sent = seen_timeouts.lock().unwrap().clone();
    let [sent] = sent.as_slice() else {
        panic!("hop 2 saw one call, with a grpc-timeout: {sent:?}");
    };
    let millis: u64 = sent.trim_end_matches('m').parse().unwrap();
    assert!(
        millis < 400 && sent.ends_with('m'),
        "hop 2 got less than the caller's 400 ms, not its own 5 s: {sent}"
    );
}
