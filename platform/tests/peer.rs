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
use trellis_platform::faults::{FaultRule, FaultsConfig};
use trellis_platform::peer::{CredentialSource, PeerConfig, Peers};
use trellis_platform::testing::assert_eventually_that;

struct FixedToken;

impl CredentialSource for FixedToken {
    fn token<'a>(
        &'a self,
        _audience: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<String, tonic::Status>> + Send + 'a>> {
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

// ---------------------------------------------------------------------------------------
// Failure accounting: only what the peer caused counts against it. A deadline the caller
// chose, a call refused for want of time and a cancelled call count nothing — neither
// failure nor success — while the peer's own timeout still opens the circuit.

use trellis_platform::peer::{BreakerConfig, CircuitState, PeerChannel, caused_by_caller};

/// How [`Switchable`] answers VerifyCredentials.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// At once, with a user.
    Answer,
    /// With a user, after this long.
    Sleep(Duration),
    /// At once, DEADLINE_EXCEEDED (as a server whose deadline ran out answers).
    DeadlineExceeded,
}

/// A user service whose behaviour the test switches; it counts the calls that reach it.
#[derive(Clone)]
struct Switchable {
    behaviour: Arc<Mutex<Behaviour>>,
    arrived: Arc<AtomicUsize>,
}

impl Switchable {
    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl UserInternalService for Switchable {
    async fn verify_credentials(
        &self,
        _: Request<pb::VerifyCredentialsRequest>,
    ) -> Result<Response<pb::VerifyCredentialsResponse>, Status> {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let behaviour = *self.behaviour.lock().unwrap();
        match behaviour {
            Behaviour::Answer => {}
            Behaviour::Sleep(delay) => tokio::time::sleep(delay).await,
            Behaviour::DeadlineExceeded => {
                return Err(Status::deadline_exceeded("the fake ran out of time"));
            }
        }
        Ok(Response::new(pb::VerifyCredentialsResponse {
            user: Some(pb::User {
                id: "1".to_owned(),
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

/// Starts a [`Switchable`] on 127.0.0.1:0 and returns it with the peers of a service
/// whose `user` peer it is: the peer's `timeout_ms` is `timeout`; its circuit opens after
/// 3 failures in a row and stays open for `open`; its instance is ejected after 3.
async fn accounting_fixture(
    behaviour: Behaviour,
    timeout: Duration,
    open: Duration,
) -> (Switchable, Peers, UserInternalServiceClient<PeerChannel>) {
    faulty_fixture(behaviour, timeout, open, FaultsConfig::default()).await
}

/// [`accounting_fixture`] with `faults` injected into calls to the `user` peer.
async fn faulty_fixture(
    behaviour: Behaviour,
    timeout: Duration,
    open: Duration,
    faults: FaultsConfig,
) -> (Switchable, Peers, UserInternalServiceClient<PeerChannel>) {
    let fake = Switchable {
        behaviour: Arc::new(Mutex::new(behaviour)),
        arrived: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UserInternalServiceServer::new(fake.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let peers = user_peers(
        &[addr],
        PeerConfig {
            timeout,
            health_check: false,
            breaker: BreakerConfig {
                consecutive_failures: 3,
                open,
                ..BreakerConfig::default()
            },
            outlier: OutlierConfig {
                consecutive_failures: 3,
                ..OutlierConfig::default()
            },
            ..PeerConfig::default()
        },
    )
    .with_faults(faults, None);
    let client = UserInternalServiceClient::new(peers.channel("user").unwrap());
    (fake, peers, client)
}

/// A VerifyCredentials call with `timeout` as its `grpc-timeout` (none: no deadline of
/// the caller's own).
async fn verify_within(
    client: &mut UserInternalServiceClient<PeerChannel>,
    timeout: Option<Duration>,
) -> Result<(), Status> {
    let mut request = Request::new(pb::VerifyCredentialsRequest::default());
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    client.verify_credentials(request).await.map(drop)
}

/// Asserts `result` is a DEADLINE_EXCEEDED the caller caused (`true`) or the peer did.
fn assert_deadline_exceeded(result: Result<(), Status>, by_caller: bool) {
    let status = result.expect_err("the deadline expires");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(caused_by_caller(&status), by_caller, "{status:?}");
}

fn ejected(peers: &Peers) -> bool {
    peers
        .instances("user")
        .iter()
        .any(|instance| instance.state == EndpointState::Ejected)
}

/// No peer timeout is reached in these tests unless they set a short one.
const LONG: Duration = Duration::from_secs(60);
/// A caller's deadline, far shorter than the peer's timeout and than the fake's sleep.
const SHORT: Duration = Duration::from_millis(20);

#[tokio::test]
async fn deadlines_a_caller_chose_never_open_the_circuit_nor_eject_the_instance() {
    let (fake, peers, mut client) =
        accounting_fixture(Behaviour::Sleep(LONG), Duration::from_secs(5), LONG).await;
    // The caller's `grpc-timeout` binds.
    for _ in 0..10 {
        assert_deadline_exceeded(verify_within(&mut client, Some(SHORT)).await, true);
    }
    // The handler's deadline binds (a server handler calling its peer).
    for _ in 0..5 {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(30);
        let result =
            trellis_platform::context::with_deadline(deadline, verify_within(&mut client, None))
                .await;
        assert_deadline_exceeded(result, true);
    }
    assert!(fake.arrived() > 0, "the calls reached the peer");
    assert_eq!(peers.circuit_state("user"), Some(CircuitState::Closed));
    assert!(!ejected(&peers), "{:?}", peers.instances("user"));
    eventually("no call is outstanding", || {
        peers.instances("user").iter().all(|i| i.outstanding == 0)
    })
    .await;
    fake.set(Behaviour::Answer);
    verify_within(&mut client, None)
        .await
        .expect("the peer is still called");
}

#[tokio::test]
async fn the_peers_own_timeout_still_opens_the_circuit_and_caller_deadlines_do_not_reset_the_run() {
    let (_fake, peers, mut client) =
        accounting_fixture(Behaviour::Sleep(LONG), Duration::from_millis(200), LONG).await;
    for _ in 0..2 {
        assert_deadline_exceeded(verify_within(&mut client, None).await, false);
    }
    // Counted as successes, these would reset the run of failures.
    for _ in 0..5 {
        assert_deadline_exceeded(verify_within(&mut client, Some(SHORT)).await, true);
    }
    assert_eq!(peers.circuit_state("user"), Some(CircuitState::Closed));
    assert_deadline_exceeded(verify_within(&mut client, None).await, false);
    assert_eq!(
        peers.circuit_state("user"),
        Some(CircuitState::Open),
        "three timeouts of the peer's own in a row open the circuit"
    );
    assert!(ejected(&peers), "{:?}", peers.instances("user"));
    let rejected = verify_within(&mut client, None).await.unwrap_err();
    assert_eq!(rejected.code(), Code::Unavailable, "{rejected:?}");
    assert!(!caused_by_caller(&rejected));
}

#[tokio::test]
async fn a_peer_answering_deadline_exceeded_counts_only_under_its_own_deadline() {
    let (_fake, peers, mut client) =
        accounting_fixture(Behaviour::DeadlineExceeded, Duration::from_secs(5), LONG).await;
    // The deadline propagated was the caller's 2 s: the peer ran out of the caller's time.
    for _ in 0..6 {
        assert_deadline_exceeded(
            verify_within(&mut client, Some(Duration::from_secs(2))).await,
            true,
        );
    }
    assert_eq!(peers.circuit_state("user"), Some(CircuitState::Closed));
    assert!(!ejected(&peers));
    // Under the peer's own 5 s, the same answer is the peer's failure.
    for _ in 0..3 {
        assert_deadline_exceeded(verify_within(&mut client, None).await, false);
    }
    assert_eq!(peers.circuit_state("user"), Some(CircuitState::Open));
}

#[tokio::test]
async fn a_call_with_no_time_left_is_refused_without_io_and_counts_nothing() {
    let (fake, peers, mut client) =
        accounting_fixture(Behaviour::Answer, Duration::from_secs(5), LONG).await;
    for _ in 0..5 {
        let spent = tokio::time::Instant::now();
        let result =
            trellis_platform::context::with_deadline(spent, verify_within(&mut client, None)).await;
        assert_deadline_exceeded(result, true);
        assert_deadline_exceeded(verify_within(&mut client, Some(Duration::ZERO)).await, true);
    }
    assert_eq!(fake.arrived(), 0, "nothing was sent");
    assert_eq!(peers.circuit_state("user"), Some(CircuitState::Closed));
    verify_within(&mut client, None)
        .await
        .expect("the peer is called");
    assert_eq!(fake.arrived(), 1);
}

#[tokio::test]
async fn a_cancelled_probe_releases_its_instance_and_its_half_open_permit() {
    let open = Duration::from_millis(50);
    let (fake, peers, mut client) =
        accounting_fixture(Behaviour::DeadlineExceeded, LONG, open).await;
    for _ in 0..3 {
        assert_deadline_exceeded(verify_within(&mut client, None).await, false);
    }
    assert_eq!(peers.circuit_state("user"), Some(CircuitState::Open));
    fake.set(Behaviour::Sleep(LONG));
    let arrived = fake.arrived();
    // Past `open`, the next call is the one probe half-open lets through.
    tokio::time::sleep(open * 2).await;
    let mut probe_client = client.clone();
    let probe = tokio::spawn(async move { verify_within(&mut probe_client, None).await });
    eventually("the probe reaches the peer", || fake.arrived() > arrived).await;
    assert_eq!(peers.circuit_state("user"), Some(CircuitState::HalfOpen));
    probe.abort();
    assert!(probe.await.unwrap_err().is_cancelled());
    eventually("the cancelled call is no longer outstanding", || {
        peers.instances("user").iter().all(|i| i.outstanding == 0)
    })
    .await;
    assert_eq!(
        peers.circuit_state("user"),
        Some(CircuitState::HalfOpen),
        "a cancelled probe decides nothing"
    );
    // Its permit is back: the next call is a probe, not a rejection.
    fake.set(Behaviour::Answer);
    verify_within(&mut client, None)
        .await
        .expect("the next probe is let through");
    assert_eq!(peers.circuit_state("user"), Some(CircuitState::Closed));
}

// ---------------------------------------------------------------------------------------
// Key fetches: tokens with unknown `kid`s, verified inside handlers with almost no time
// left, make one fetch from the identity peer, which runs to its end on its own and
// counts nothing against the peer.

use trellis_platform::auth::{AuthConfig, RemoteKeySource, TokenVerifier, VerifyError};
use trellis_platform::testing::{FakeAuth, TestIssuer};

#[tokio::test]
async fn unknown_kids_verified_with_no_time_left_make_one_key_fetch_and_leave_the_circuit_closed() {
    let issuer = TestIssuer::new();
    let auth = FakeAuth::start_with_key_delay(issuer.clone(), Duration::from_millis(100)).await;
    let peers = Peers::new(HashMap::from([(
        "auth".to_owned(),
        PeerConfig {
            health_check: false,
            breaker: BreakerConfig {
                consecutive_failures: 3,
                open: LONG,
                ..BreakerConfig::default()
            },
            ..PeerConfig::with_address(auth.uri())
        },
    )]));
    let verifier = TokenVerifier::new(
        &AuthConfig {
            // Longer than the test: one fetch is all that is allowed.
            min_refresh_interval: Duration::from_secs(3600),
            ..AuthConfig::default()
        },
        "user",
        RemoteKeySource::new(peers.anonymous_channel("auth").unwrap()),
    );
    // At once, 30 handlers with 5 ms left, each verifying a token of its own unknown kid
    // and giving up when its time is out.
    let handlers: Vec<_> = (0..30)
        .map(|_| {
            let verifier = verifier.clone();
            let token = TestIssuer::new().user_token("mallory", &[]);
            let deadline = tokio::time::Instant::now() + Duration::from_millis(5);
            tokio::spawn(trellis_platform::context::with_deadline(
                deadline,
                async move { tokio::time::timeout_at(deadline, verifier.verify(&token)).await },
            ))
        })
        .collect();
    for handler in handlers {
        match handler.await.unwrap() {
            Err(_) | Ok(Err(VerifyError::UnknownKey(_))) => {}
            other => panic!("a token with an unknown kid: {other:?}"),
        }
    }
    // Then 10 more with all the time they want: refused, with no fetch of their own.
    for _ in 0..10 {
        let token = TestIssuer::new().user_token("mallory", &[]);
        let refused = verifier.verify(&token).await;
        assert!(
            matches!(refused, Err(VerifyError::UnknownKey(_))),
            "{refused:?}"
        );
    }
    // The one fetch ran to its end without its callers: a valid token verifies.
    verifier
        .verify(&issuer.user_token("ada", &[]))
        .await
        .expect("a valid token verifies");
    assert_eq!(auth.key_fetches(), 1);
    assert_eq!(verifier.key_fetches(), 1);
    assert_eq!(peers.circuit_state("auth"), Some(CircuitState::Closed));
}

/// Faults on, with the one rule `rule` for calls to the `user` peer.
fn user_faults(rule: FaultRule) -> FaultsConfig {
    FaultsConfig {
        enabled: true,
        peers: std::collections::BTreeMap::from([(
            "user".to_owned(),
            std::collections::BTreeMap::from([("r".to_owned(), rule)]),
        )]),
        ..FaultsConfig::default()
    }
}

#[tokio::test]
async fn injected_aborts_and_delays_answer_the_caller_and_never_reach_the_peer_nor_its_breaker() {
    let aborts = user_faults(FaultRule {
        method: "trellis.user.v1.UserInternalService/*".to_owned(),
        abort_code: Some("UNAVAILABLE".to_owned()),
        ..FaultRule::default()
    });
    let (fake, peers, mut client) = faulty_fixture(Behaviour::Answer, LONG, LONG, aborts).await;
    // Ten aborts of an idempotent method: no retry, no breaker, no ejection.
    for _ in 0..10 {
        let status = verify_within(&mut client, None).await.expect_err("aborted");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("fault injected"), "{status:?}");
    }
    assert_eq!(fake.arrived(), 0, "an aborted call is sent nowhere");
    assert_eq!(peers.circuit_state("user"), Some(CircuitState::Closed));
    assert!(!ejected(&peers), "{:?}", peers.instances("user"));

    let delays = user_faults(FaultRule {
        delay: Some(LONG),
        ..FaultRule::default()
    });
    let (fake, peers, mut client) = faulty_fixture(Behaviour::Answer, LONG, LONG, delays).await;
    for _ in 0..5 {
        let status = verify_within(&mut client, Some(SHORT))
            .await
            .expect_err("the delay outlasts the deadline");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    }
    assert_eq!(fake.arrived(), 0);
    assert_eq!(peers.circuit_state("user"), Some(CircuitState::Closed));

    // A rule for another peer, or faults off, leave calls to `user` alone.
    let elsewhere = FaultsConfig {
        peers: std::collections::BTreeMap::from([(
            "auth".to_owned(),
            std::collections::BTreeMap::from([(
                "r".to_owned(),
                FaultRule {
                    abort_code: Some("INTERNAL".to_owned()),
                    ..FaultRule::default()
                },
            )]),
        )]),
        ..user_faults(FaultRule {
            abort_code: Some("INTERNAL".to_owned()),
            abort_percent: 0.0,
            ..FaultRule::default()
        })
    };
    let (fake, _peers, mut client) = faulty_fixture(Behaviour::Answer, LONG, LONG, elsewhere).await;
    verify_within(&mut client, None)
        .await
        .expect("no fault for this peer");
    assert_eq!(fake.arrived(), 1);
}

/// Serves a [`FakeUsers`] answering after `delay` on 127.0.0.1:0.
async fn serve_fake(replica: usize, delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let users = FakeUsers {
        replica,
        served: Arc::default(),
        delay,
        seen_timeouts: Arc::default(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UserInternalServiceServer::new(users))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn an_instance_that_kept_a_call_waiting_to_the_callers_deadline_is_avoided_afterwards() {
    // A paused or black-holed instance: it accepts calls and never answers. The callers'
    // deadlines are far shorter than the peer's timeout, so no failure may count
    // against it — but the time they waited is its latency for picking.
    let fast = serve_fake(1, Duration::from_millis(1)).await;
    let hung = serve_fake(2, LONG).await;
    let peers = user_peers(
        &[fast, hung],
        PeerConfig {
            timeout: LONG,
            health_check: false,
            ..PeerConfig::default()
        },
    );
    let mut client = UserInternalServiceClient::new(peers.channel("user").unwrap());
    let deadline = Duration::from_millis(200);
    let mut first_wait = None;
    for call in 0..64 {
        if let Err(status) = verify_within(&mut client, Some(deadline)).await {
            assert_deadline_exceeded(Err(status), true);
            first_wait = Some(call);
            break;
        }
    }
    assert!(
        first_wait.is_some(),
        "two choices never picked the hung instance"
    );
    // Its 200 ms wait is now its latency: every call goes to the one that answers.
    for _ in 0..30 {
        verify_within(&mut client, Some(deadline))
            .await
            .expect("the answering instance is picked");
    }
    assert!(!ejected(&peers), "a caller's deadline ejects nothing");
    assert_eq!(peers.circuit_state("user"), Some(CircuitState::Closed));
}
