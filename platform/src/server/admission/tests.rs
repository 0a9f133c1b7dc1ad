//! The admission rules, on a handler the tests hold and release.

use std::convert::Infallible;
use std::sync::Arc;

use http_body::Frame;
use tokio_util::sync::CancellationToken;
use tonic_types::StatusExt as _;
use tower::ServiceExt as _;

use super::*;

const SUBSCRIBE: &str = "/trellis.notification.v1.NotificationService/Subscribe";
const LIST: &str = "/trellis.notification.v1.NotificationService/ListNotifications";

/// Admission with a ceiling of `ceiling` and an adaptive limit fixed at `limit`, for
/// the notification service's methods.
fn admission(ceiling: usize, limit: usize) -> (Admission, Metrics) {
    let config = ServerConfig {
        max_concurrent_requests: ceiling,
        min_concurrency_limit: limit,
        initial_concurrency_limit: limit,
        request_body_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
    let admission = Admission::new(
        &config,
        &["trellis.notification.v1.NotificationService"],
        &[trellis_proto::FILE_DESCRIPTOR_SET],
        &metrics,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (admission, metrics)
}

/// A handler that answers OK once `release` is cancelled.
fn held(
    release: CancellationToken,
) -> impl Service<
    Request<tonic::body::Body>,
    Response = Response<tonic::body::Body>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_request: Request<tonic::body::Body>| {
        let release = release.clone();
        async move {
            release.cancelled().await;
            Ok::<_, Infallible>(Response::new(tonic::body::Body::empty()))
        }
    })
}

/// Lets spawned calls run until `condition` holds.
async fn settle(condition: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if condition() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the calls did not settle");
}

fn request(path: &str) -> Request<tonic::body::Body> {
    Request::post(path)
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from_static(&[0, 0, 0, 0, 0]),
        )))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn code(response: &Response<tonic::body::Body>) -> Option<Code> {
    grpc_status(response.headers())
}

fn shed(metrics: &Metrics, method: &str) -> bool {
    metrics.encode().unwrap_or_default().contains(&format!(
        "trellis_server_shed_total{{grpc_method=\"{method}\",grpc_service=\"trellis.notification.v1.NotificationService\"}} 1\n"
    ))
}

#[tokio::test]
async fn a_call_over_the_limit_is_answered_resource_exhausted_at_once_and_health_still_passes() {
    let (admission, metrics) = admission(8, 1);
    let release = CancellationToken::new();
    let service = admission.layer().layer(held(release.clone()));

    let first = tokio::spawn(service.clone().oneshot(request(LIST)));
    settle(|| admission.in_flight() == 1).await;

    // The limit is full: the next call is answered, not queued.
    let response = service
        .clone()
        .oneshot(request(LIST))
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(code(&response), Some(Code::ResourceExhausted));
    let status =
        tonic::Status::from_header_map(response.headers()).unwrap_or_else(|| panic!("a status"));
    let retry = status.get_details_retry_info().and_then(|r| r.retry_delay);
    assert_eq!(retry, Some(SHED_RETRY_AFTER));
    assert!(
        shed(&metrics, "ListNotifications"),
        "{}",
        metrics.encode().unwrap_or_default()
    );

    // Health passes untouched (the handler here answers once released).
    let health = tokio::spawn(
        service
            .clone()
            .oneshot(request("/grpc.health.v1.Health/Check")),
    );
    release.cancel();
    let health = health.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        health.ok().and_then(|r| code(&r)),
        None,
        "health was not shed"
    );
    let first = first.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.ok().and_then(|r| code(&r)), None);
    assert_eq!(admission.in_flight(), 0);
}

#[tokio::test]
async fn a_cancelled_call_frees_its_slot_and_teaches_nothing() {
    let (admission, _metrics) = admission(8, 1);
    let release = CancellationToken::new();
    let service = admission.layer().layer(held(release));
    let call = tokio::spawn(service.clone().oneshot(request(LIST)));
    settle(|| admission.in_flight() == 1).await;
    call.abort();
    settle(|| admission.in_flight() == 0).await;
    let samples = admission.shared.algorithm.lock().max_concurrency();
    assert_eq!(samples, 1, "the limit did not move");
}

#[tokio::test]
async fn streaming_calls_take_no_adaptive_slot_but_count_against_the_ceiling() {
    let (admission, metrics) = admission(3, 1);
    let release = CancellationToken::new();
    let service = admission.layer().layer(held(release.clone()));
    let unary = tokio::spawn(service.clone().oneshot(request(LIST)));
    let streams: Vec<_> = (0..2)
        .map(|_| tokio::spawn(service.clone().oneshot(request(SUBSCRIBE))))
        .collect();
    settle(|| admission.shared.admitted.load(Ordering::Relaxed) == 3).await;
    assert_eq!(
        admission.in_flight(),
        1,
        "only the unary call holds an adaptive slot"
    );
    let over = service
        .clone()
        .oneshot(request(SUBSCRIBE))
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(code(&over), Some(Code::ResourceExhausted), "the ceiling");
    assert!(shed(&metrics, "Subscribe"));
    release.cancel();
    drop(unary.await);
    for stream in streams {
        drop(stream.await);
    }
}

/// A request body that sends its headers and never a byte.
#[derive(Default)]
struct Silent;

impl Body for Silent {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_that_never_arrives_is_answered_deadline_exceeded_holding_no_slot() {
    let (admission, metrics) = admission(1, 1);
    let called = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&called);
    let service = admission.layer().layer(tower::service_fn(
        move |_request: Request<tonic::body::Body>| {
            count.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, Infallible>(Response::new(tonic::body::Body::empty())) }
        },
    ));
    let hanging = Request::post(LIST)
        .body(Silent)
        .unwrap_or_else(|e| panic!("{e}"));
    let hanging = tokio::spawn(service.clone().oneshot(hanging));
    tokio::task::yield_now().await;
    // Meanwhile a whole call is admitted: the waiting body holds nothing.
    let normal = service
        .clone()
        .oneshot(request(LIST))
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(code(&normal), None);

    let answered = hanging.await.unwrap_or_else(|e| panic!("{e}"));
    let answered = answered.unwrap_or_else(|e| match e {});
    assert_eq!(code(&answered), Some(Code::DeadlineExceeded));
    assert_eq!(
        called.load(Ordering::Relaxed),
        1,
        "the handler never saw it"
    );
    assert!(
        metrics
            .encode()
            .unwrap_or_default()
            .contains("trellis_server_request_body_timeouts_total 1\n")
    );
}

#[test]
fn only_completed_calls_outside_a_callers_deadline_teach_the_limit() {
    let cap = Duration::from_secs(30);
    let with = |code: Code| {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", http::HeaderValue::from(code as i32));
        headers
    };
    assert!(
        teaches(&http::HeaderMap::new(), None, cap),
        "status in trailers"
    );
    assert!(teaches(&with(Code::NotFound), None, cap));
    let short = Some(Duration::from_millis(8));
    assert!(
        !teaches(&with(Code::DeadlineExceeded), short, cap),
        "the caller's deadline"
    );
    assert!(
        teaches(&with(Code::DeadlineExceeded), None, cap),
        "the server's own bound"
    );
    assert!(teaches(&with(Code::DeadlineExceeded), Some(cap * 2), cap));
    for quick in [
        Code::Cancelled,
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::InvalidArgument,
        Code::ResourceExhausted,
        Code::Unimplemented,
        Code::Unavailable,
    ] {
        assert!(!teaches(&with(quick), None, cap), "{quick:?}");
    }
}

#[test]
fn queueing_latency_lowers_the_limit_and_the_floor_holds() {
    let config = ServerConfig {
        max_concurrent_requests: 1024,
        min_concurrency_limit: 16,
        initial_concurrency_limit: 64,
        ..ServerConfig::default()
    };
    let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
    let admission = Admission::new(&config, &[], &[], &metrics).unwrap_or_else(|e| panic!("{e}"));
    let shared = &admission.shared;
    // Loaded (every slot taken), at the no-load latency: the limit grows.
    shared.limited.store(64, Ordering::Relaxed);
    for _ in 0..6 {
        shared.sample(Duration::from_millis(1));
    }
    let grown = admission.limit();
    assert!(grown > 64, "{grown}");
    // Calls queue (ten times the no-load latency): the limit comes down step by step,
    // and stops at the floor. (Fewer samples than Vegas's next probe, which would
    // take the queued latency as the new no-load one.)
    shared.limited.store(grown, Ordering::Relaxed);
    for _ in 0..85 {
        shared.sample(Duration::from_millis(10));
    }
    assert_eq!(admission.limit(), 16, "down from {grown} to the floor");
    shared.limited.store(0, Ordering::Relaxed);
}
