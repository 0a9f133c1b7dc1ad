//! Admission as a client sees it: calls whose bodies never arrive starve nobody and are
//! answered at the body timeout; load past a handler's capacity is shed at once with
//! RESOURCE_EXHAUSTED while admitted calls succeed and health answers; one address may
//! hold only so many connections, unless it is a trusted proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis_platform::metrics::Metrics;
use trellis_platform::server::{LIVENESS, ServerBuilder, ServerConfig};
use trellis_platform::testing::{answers_of, assert_eventually, call_without_body, wait_serving};
use trellis_proto::notification_v1 as pb;
use trellis_proto::notification_v1::notification_internal_service_client::NotificationInternalServiceClient;
use trellis_proto::notification_v1::notification_internal_service_server::{
    NotificationInternalService, NotificationInternalServiceServer,
};

const SEND: &str = "/trellis.notification.v1.NotificationInternalService/SendNotification";

/// A handler with a fixed capacity: `workers` calls at once, each taking `work`; the
/// rest wait for a worker (as calls wait for a pool of database connections or hashing
/// threads), so latency grows with load.
#[derive(Debug, Clone)]
struct Pool {
    workers: Arc<Semaphore>,
    work: Duration,
}

impl Pool {
    fn new(workers: usize, work: Duration) -> Self {
        Self {
            workers: Arc::new(Semaphore::new(workers)),
            work,
        }
    }
}

#[tonic::async_trait]
impl NotificationInternalService for Pool {
    async fn send_notification(
        &self,
        _: Request<pb::SendNotificationRequest>,
    ) -> Result<Response<pb::SendNotificationResponse>, Status> {
        let _worker = self
            .workers
            .acquire()
            .await
            .map_err(|_| Status::internal("closed"))?;
        tokio::time::sleep(self.work).await;
        Ok(Response::new(pb::SendNotificationResponse::default()))
    }
}

/// Serves `pool` with `config` on 127.0.0.1; returns the address and the metrics.
async fn serve(config: ServerConfig, pool: Pool) -> (SocketAddr, Metrics) {
    let metrics = Metrics::new().unwrap();
    let config = ServerConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        ..config
    };
    let mut builder = ServerBuilder::new(config)
        .metrics(metrics.clone())
        .file_descriptor_set(trellis_proto::FILE_DESCRIPTOR_SET);
    builder.add_service(NotificationInternalServiceServer::new(pool));
    let server = builder.bind().await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run_until(std::future::pending()));
    wait_serving(addr).await;
    (addr, metrics)
}

/// A new connection to `addr` (a tonic `Channel` is one HTTP/2 connection).
async fn connect(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
}

/// The value of the first series of `name` whose line contains `labels`.
fn metric(metrics: &Metrics, name: &str, labels: &str) -> f64 {
    let text = metrics.encode().unwrap();
    text.lines()
        .find(|line| line.starts_with(name) && line.contains(labels))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} with {labels} in\n{text}"))
}

async fn liveness(addr: SocketAddr) -> Result<ServingStatus, Status> {
    let channel = connect(addr)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: LIVENESS.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status())
}

async fn send(client: &mut NotificationInternalServiceClient<Channel>) -> Result<(), Status> {
    let mut request = Request::new(crate::support::send_request());
    request.set_timeout(Duration::from_secs(5));
    client.send_notification(request).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_whose_bodies_never_arrive_starve_neither_health_nor_other_calls() {
    const CONNECTIONS: usize = 6;
    const PER_CONNECTION: usize = 184;
    let (addr, metrics) = serve(
        ServerConfig {
            request_body_timeout: Duration::from_secs(8),
            ..ServerConfig::default()
        },
        Pool::new(4, Duration::ZERO),
    )
    .await;

    // 1,104 calls: headers sent, bodies never, on six connections (each within the
    // server's 200 streams per connection).
    let mut hanging = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut channel = connect(addr).await.unwrap();
        for _ in 0..PER_CONNECTION {
            hanging.push(call_without_body(&mut channel, SEND).await);
        }
    }
    let total = (CONNECTIONS * PER_CONNECTION) as f64;
    // Every one has reached the server.
    assert_eventually(|| async {
        metric(&metrics, "grpc_server_started_total", "SendNotification") == total
    })
    .await;

    let asked = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(2), liveness(addr)).await;
    assert_eq!(
        status.ok().and_then(Result::ok),
        Some(ServingStatus::Serving),
        "liveness answers within 2 s"
    );
    let mut client = NotificationInternalServiceClient::new(connect(addr).await.unwrap());
    send(&mut client)
        .await
        .expect("another call is admitted and answered");
    assert!(
        hanging.iter().all(|call| !call.is_finished()),
        "the hanging calls were still waiting ({} ms after the check began)",
        asked.elapsed().as_millis()
    );

    // Then the body timeout answers every one of them.
    let answered = answers_of(hanging, Duration::from_secs(60)).await;
    assert!(
        answered
            .iter()
            .all(|code| *code == Some(Code::DeadlineExceeded)),
        "{:?}",
        answered
            .iter()
            .find(|code| **code != Some(Code::DeadlineExceeded))
    );
    assert_eq!(
        metric(&metrics, "trellis_server_request_body_timeouts_total", ""),
        total
    );
}

#[derive(Debug, Default)]
struct Outcomes {
    ok: usize,
    shed: usize,
    other: Vec<Code>,
    slowest_shed: Duration,
    slowest: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_past_capacity_is_shed_at_once_while_admitted_calls_succeed() {
    const INITIAL_LIMIT: usize = 16;
    const CALLERS: usize = 48;
    let (addr, metrics) = serve(
        ServerConfig {
            max_concurrent_requests: 64,
            initial_concurrency_limit: INITIAL_LIMIT,
            min_concurrency_limit: 2,
            ..ServerConfig::default()
        },
        // Capacity: 2 calls per 20 ms, 100 calls a second.
        Pool::new(2, Duration::from_millis(20)),
    )
    .await;

    let outcomes = Arc::new(parking_lot::Mutex::new(Outcomes::default()));
    let end = Instant::now() + Duration::from_secs(2);
    let mut callers = Vec::new();
    for _ in 0..4 {
        let channel = connect(addr).await.unwrap();
        for _ in 0..CALLERS / 4 {
            let mut client = NotificationInternalServiceClient::new(channel.clone());
            let outcomes = Arc::clone(&outcomes);
            callers.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let sent = Instant::now();
                    let result = send(&mut client).await;
                    let took = sent.elapsed();
                    let shed = {
                        let mut seen = outcomes.lock();
                        seen.slowest = seen.slowest.max(took);
                        match result.map_err(|status| status.code()) {
                            Ok(()) => {
                                seen.ok += 1;
                                false
                            }
                            Err(Code::ResourceExhausted) => {
                                seen.shed += 1;
                                seen.slowest_shed = seen.slowest_shed.max(took);
                                true
                            }
                            Err(code) => {
                                seen.other.push(code);
                                false
                            }
                        }
                    };
                    if shed {
                        // A shed caller comes back soon, keeping the load past capacity.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }));
        }
    }

    // Meanwhile health answers, and the adaptive limit comes down from where it began.
    let mut lowest_limit = f64::MAX;
    let mut checks = 0;
    while Instant::now() < end {
        let status = tokio::time::timeout(Duration::from_secs(2), liveness(addr)).await;
        assert_eq!(
            status.ok().and_then(Result::ok),
            Some(ServingStatus::Serving),
            "liveness answers within 2 s under load"
        );
        checks += 1;
        lowest_limit = lowest_limit.min(metric(&metrics, "trellis_server_concurrency_limit", ""));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for caller in callers {
        caller.await.unwrap();
    }

    let outcomes = outcomes.lock();
    println!(
        "ok {} shed {} other {:?}; slowest shed {} ms, slowest call {} ms; lowest limit {lowest_limit}; {checks} health checks",
        outcomes.ok,
        outcomes.shed,
        outcomes.other,
        outcomes.slowest_shed.as_millis(),
        outcomes.slowest.as_millis(),
    );
    assert!(
        outcomes.other.is_empty(),
        "only OK or RESOURCE_EXHAUSTED: {:?}",
        outcomes.other
    );
    assert!(outcomes.shed > 0, "load past capacity is shed");
    // Goodput kept: capacity is 200 calls in the 2 s; a fifth of it is a generous floor.
    assert!(outcomes.ok >= 40, "admitted calls succeed: {}", outcomes.ok);
    // Shedding answers at once: well before the 5 s deadline (the bound is generous for a
    // busy machine, not a latency figure).
    assert!(
        outcomes.slowest_shed < Duration::from_secs(1),
        "{:?}",
        outcomes.slowest_shed
    );
    assert!(
        outcomes.slowest < Duration::from_secs(5),
        "no call waits out its deadline"
    );
    assert!(
        lowest_limit < INITIAL_LIMIT as f64,
        "queueing lowers the adaptive limit: {lowest_limit}"
    );
    assert_eq!(
        metric(&metrics, "trellis_server_shed_total", "SendNotification"),
        outcomes.shed as f64,
        "each shed call is counted"
    );
}

#[tokio::test]
async fn an_address_over_its_connection_cap_is_closed_and_a_trusted_proxy_is_not() {
    let (addr, metrics) = serve(
        ServerConfig {
            max_connections_per_address: 3,
            ..ServerConfig::default()
        },
        Pool::new(1, Duration::ZERO),
    )
    .await;
    // Three connections that answer (`serve` waited on a connection of its own, which
    // may hold a place until it closes).
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while held.len() < 3 {
        assert!(Instant::now() < deadline, "three connections are accepted");
        if let Ok(channel) = connect(addr).await {
            let request = HealthCheckRequest {
                service: LIVENESS.to_owned(),
            };
            if HealthClient::new(channel.clone())
                .check(request)
                .await
                .is_ok()
            {
                held.push(channel);
                continue;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The fourth from 127.0.0.1 is closed at once.
    assert!(
        liveness(addr).await.is_err(),
        "a fourth connection is refused"
    );
    assert!(metric(&metrics, "trellis_server_connections_refused_total", "") >= 1.0);

    // A closed connection frees its place.
    held.pop();
    assert_eventually(|| async { liveness(addr).await.is_ok() }).await;

    // Behind a trusted proxy, many clients share one address: no cap.
    let (proxied, _metrics) = serve(
        ServerConfig {
            max_connections_per_address: 1,
            trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
            ..ServerConfig::default()
        },
        Pool::new(1, Duration::ZERO),
    )
    .await;
    let mut many = Vec::new();
    for _ in 0..4 {
        let channel = connect(proxied).await.unwrap();
        let mut health = HealthClient::new(channel.clone());
        let status = health
            .check(HealthCheckRequest {
                service: LIVENESS.to_owned(),
            })
            .await
            .map(|response| response.into_inner().status());
        assert_eq!(status.ok(), Some(ServingStatus::Serving));
        many.push(channel);
    }
}
