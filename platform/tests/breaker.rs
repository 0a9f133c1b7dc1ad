//! The per-peer circuit breaker against a fake peer that counts the calls reaching it:
//! failures open the circuit, an open circuit answers UNAVAILABLE without I/O, client
//! errors never open it, and half-open probes close or re-open it.

// Tests panic on purpose: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use trellis_platform::peer::breaker::{
    Breaker, BreakerConfig, BreakerService, CircuitState, FailureModel,
};

/// What the fake peer answers.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// This status (`Code::Ok`: a SERVING response).
    Code(Code),
    /// Wait for [`FakePeer::release`], then answer OK.
    Hold,
}

/// A health service whose answer the test switches and which counts the calls that
/// reach it.
struct FakePeer {
    answer: Mutex<Answer>,
    calls: AtomicUsize,
    release: Notify,
}

impl FakePeer {
    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// The fake as a gRPC service.
struct FakeService(Arc<FakePeer>);

#[tonic::async_trait]
impl Health for FakeService {
    async fn check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let peer = &self.0;
        peer.calls.fetch_add(1, Ordering::SeqCst);
        let answer = *peer.answer.lock().unwrap();
        let code = match answer {
            Answer::Code(code) => code,
            Answer::Hold => {
                peer.release.notified().await;
                Code::Ok
            }
        };
        if code == Code::Ok {
            Ok(Response::new(HealthCheckResponse { status: 1 }))
        } else {
            Err(Status::new(code, "the fake peer says so"))
        }
    }

    type WatchStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("not used"))
    }
}

/// Starts the fake peer on 127.0.0.1:0; returns it and a lazy channel to it.
async fn fake_peer(answer: Answer) -> (Arc<FakePeer>, Channel) {
    let peer = Arc::new(FakePeer {
        answer: Mutex::new(answer),
        calls: AtomicUsize::new(0),
        release: Notify::new(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(FakeService(Arc::clone(&peer))))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    (peer, channel)
}

type Client = HealthClient<BreakerService<Channel>>;

fn client(breaker: &Breaker, channel: Channel) -> Client {
    HealthClient::new(tower::Layer::layer(breaker, channel))
}

async fn check(client: &mut Client) -> Result<(), Status> {
    client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(drop)
}

/// Whether `result` is the breaker's own rejection.
fn rejected(result: &Result<(), Status>) -> bool {
    matches!(result, Err(status)
        if status.code() == Code::Unavailable
            && status.message().starts_with("circuit breaker for fake is open"))
}

fn breaker(config: BreakerConfig) -> Breaker {
    Breaker::new("fake", &config).unwrap()
}

/// Opens after `failures` in a row and stays open for a minute: long enough that no
/// test step can see it half-open by accident.
fn opens_after(failures: u32) -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: failures,
        open: Duration::from_millis(60_000),
        ..BreakerConfig::default()
    }
}

/// Opens after one failure and lets a probe through 30 ms later.
fn probes_soon() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: 1,
        open: Duration::from_millis(30),
        ..BreakerConfig::default()
    }
}

/// A fake peer answering UNAVAILABLE and a breaker that one call to it has opened,
/// with [`probes_soon`]'s settings.
async fn opened_by_a_failure() -> (Arc<FakePeer>, Breaker, Client) {
    let (peer, channel) = fake_peer(Answer::Code(Code::Unavailable)).await;
    let breaker = breaker(probes_soon());
    let mut client = client(&breaker, channel);
    check(&mut client).await.unwrap_err();
    assert_eq!(breaker.state(), CircuitState::Open);
    (peer, breaker, client)
}

const POLL: Duration = Duration::from_millis(5);
const DEADLINE: Duration = Duration::from_secs(10);

/// Calls until a call reaches the peer (its counter moves), asserting that every call
/// before it was rejected locally; returns that call's result.
async fn call_until_probe(client: &mut Client, peer: &FakePeer) -> Result<(), Status> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let before = peer.calls();
        let result = check(client).await;
        if peer.calls() > before {
            return result;
        }
        assert!(
            rejected(&result),
            "a call that never reached the peer: {result:?}"
        );
        assert!(Instant::now() < deadline, "no probe within {DEADLINE:?}");
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn failures_open_the_circuit_and_then_calls_are_rejected_without_reaching_the_peer() {
    let (peer, channel) = fake_peer(Answer::Code(Code::Unavailable)).await;
    let breaker = breaker(opens_after(3));
    let mut first = client(&breaker, channel.clone());

    for _ in 0..2 {
        let status = check(&mut first).await.unwrap_err();
        assert_eq!(status.message(), "the fake peer says so");
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
    check(&mut first).await.unwrap_err();
    assert_eq!(breaker.state(), CircuitState::Open);
    assert_eq!(peer.calls(), 3);

    // Another service made by the same breaker shares the open circuit.
    let mut second = client(&breaker, channel);
    for client in [&mut first, &mut second] {
        for _ in 0..3 {
            let result = check(client).await;
            assert!(rejected(&result), "{result:?}");
        }
    }
    assert_eq!(peer.calls(), 3, "no rejected call reached the peer");
    assert_eq!(breaker.rejections(), 6);
}

#[tokio::test]
async fn client_errors_count_as_successes_and_never_open_the_circuit() {
    let (peer, channel) = fake_peer(Answer::Code(Code::Ok)).await;
    let breaker = breaker(opens_after(2));
    let mut client = client(&breaker, channel);

    // Each client error breaks the run of failures, so two in a row never happen.
    for client_error in [
        Code::NotFound,
        Code::InvalidArgument,
        Code::Unauthenticated,
        Code::Ok,
    ] {
        for answer in [Code::Unavailable, client_error] {
            peer.answer(Answer::Code(answer));
            let result = check(&mut client).await;
            assert_eq!(result.err().map(|s| s.code()).unwrap_or(Code::Ok), answer);
        }
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(peer.calls(), 8);
    assert_eq!(breaker.rejections(), 0);

    // Two server errors in a row do open it.
    for answer in [Code::DeadlineExceeded, Code::Internal] {
        peer.answer(Answer::Code(answer));
        check(&mut client).await.unwrap_err();
    }
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[tokio::test]
async fn transport_errors_open_the_circuit() {
    // A port nobody listens on: connections are refused.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let breaker = breaker(opens_after(2));
    let mut client = client(&breaker, channel);

    for _ in 0..2 {
        let result = check(&mut client).await;
        assert!(!rejected(&result), "{result:?}");
        assert_eq!(result.unwrap_err().code(), Code::Unavailable);
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    assert!(rejected(&check(&mut client).await));
}

#[tokio::test]
async fn a_successful_probe_after_the_open_interval_closes_the_circuit() {
    let (peer, breaker, mut client) = opened_by_a_failure().await;

    peer.answer(Answer::Code(Code::Ok));
    call_until_probe(&mut client, &peer)
        .await
        .expect("the probe succeeds");
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(peer.calls(), 2, "one failure, then one probe");

    // Closed again: calls flow.
    check(&mut client).await.unwrap();
    assert_eq!(peer.calls(), 3);
}

#[tokio::test]
async fn a_failed_probe_reopens_the_circuit() {
    let (peer, breaker, mut client) = opened_by_a_failure().await;

    let probe = call_until_probe(&mut client, &peer).await;
    assert_eq!(probe.unwrap_err().message(), "the fake peer says so");
    assert_eq!(breaker.state(), CircuitState::Open);

    // And it keeps probing: the next probe, successful, closes it.
    peer.answer(Answer::Code(Code::Ok));
    call_until_probe(&mut client, &peer).await.unwrap();
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test]
async fn half_open_lets_only_the_configured_number_of_probes_through() {
    let (peer, breaker, mut client) = opened_by_a_failure().await;

    // Start calls in the background until one reaches the peer and is held there.
    peer.answer(Answer::Hold);
    let deadline = Instant::now() + DEADLINE;
    let probe = loop {
        let before = peer.calls();
        let mut background = client.clone();
        let call = tokio::spawn(async move { check(&mut background).await });
        while !call.is_finished() && peer.calls() == before {
            assert!(Instant::now() < deadline, "no probe within {DEADLINE:?}");
            tokio::time::sleep(POLL).await;
        }
        if peer.calls() > before {
            break call;
        }
        assert!(rejected(&call.await.unwrap()));
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(breaker.state(), CircuitState::HalfOpen);

    // One probe is in flight: every other call is rejected without reaching the peer.
    let calls = peer.calls();
    // (Bounded: a call let through would be held by the peer.)
    for _ in 0..3 {
        let result = tokio::time::timeout(DEADLINE, check(&mut client)).await;
        assert!(
            result.as_ref().is_ok_and(rejected),
            "a second call was let through: {result:?}"
        );
    }
    assert_eq!(peer.calls(), calls);

    peer.release.notify_one();
    probe.await.unwrap().expect("the held probe succeeds");
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test]
async fn a_disabled_breaker_lets_every_call_through() {
    let (peer, channel) = fake_peer(Answer::Code(Code::Unavailable)).await;
    let breaker = breaker(BreakerConfig {
        enabled: false,
        ..opens_after(1)
    });
    let mut client = client(&breaker, channel);
    for _ in 0..5 {
        assert!(!rejected(&check(&mut client).await));
    }
    assert_eq!(peer.calls(), 5);
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(breaker.rejections(), 0);
}

#[tokio::test]
async fn the_rate_model_opens_on_the_failure_rate_of_the_window() {
    let (peer, channel) = fake_peer(Answer::Code(Code::Ok)).await;
    let breaker = breaker(BreakerConfig {
        failure_model: FailureModel::Rate,
        failure_rate_percent: 50,
        minimum_calls: 4,
        window: Duration::from_millis(60_000),
        ..opens_after(1)
    });
    let mut client = client(&breaker, channel);

    // No two failures in a row, yet half of the calls fail.
    for (answer, state) in [
        (Code::Unavailable, CircuitState::Closed),
        (Code::Ok, CircuitState::Closed),
        (Code::Unavailable, CircuitState::Closed),
        (Code::Ok, CircuitState::Open),
    ] {
        peer.answer(Answer::Code(answer));
        let result = check(&mut client).await;
        assert_eq!(result.err().map(|s| s.code()).unwrap_or(Code::Ok), answer);
        assert_eq!(breaker.state(), state);
    }
    assert!(rejected(&check(&mut client).await));
}
