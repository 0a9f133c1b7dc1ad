//! Admission: which calls the server takes on, answered at once instead of queued.
//!
//! [`AdmissionLayer`] replaces a concurrency limit that waited in `poll_ready` (so an
//! overloaded server queued every call until its deadline expired, and health checks
//! queued with them). Its rules, in order:
//!
//! 1. **Health and reflection pass untouched** (`/grpc.health.v1.Health/*`,
//!    `/grpc.reflection.*`): no limit, no body timeout — probes and tools always answer.
//! 2. **The request body arrives first.** For unary and server-streaming methods the
//!    request's one message is read before the call is admitted, within
//!    `server.request_body_timeout_ms`; a body still missing then is answered
//!    DEADLINE_EXCEEDED (the gRPC code for "the time allowed ran out"; the slowloris
//!    defence) and counted in `trellis_server_request_body_timeouts_total`. A call waiting
//!    for its body holds no slot, so bodies that never arrive cannot starve anyone. The
//!    frames read are handed on untouched; past `server.max_message_bytes` the rest
//!    streams through, and tonic's own size limit answers. Client-streaming and
//!    bidirectional request bodies are long-lived by design and not waited for.
//! 3. **The hard ceiling**: at most `server.max_concurrent_requests` admitted calls at
//!    once, each counted until its response headers (a stream's life after that is
//!    bounded by its own service's stream caps).
//! 4. **The adaptive limit**, for unary calls only: at most
//!    `trellis_server_concurrency_limit` at once, a limit that TCP Vegas
//!    ([`tower_acc::Vegas`], after Netflix's `concurrency-limits`) moves with the
//!    service time of admitted calls: up while latency stays near the no-load
//!    latency it measured, down when calls queue. Streaming calls never take an adaptive
//!    slot and never teach it.
//!
//! A call over either limit is answered RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo`
//! ([`SHED_RETRY_AFTER`]) within the call, never queued, and counted in
//! `trellis_server_shed_total{grpc_service,grpc_method}` (paths no descriptor names count
//! as `unknown`). Peer clients treat that code as push-back, not as a failure.
//!
//! What teaches the limit is chosen so no client can shape it: a sample is the
//! *handler's* time, from the moment the whole body is in to the response headers (a
//! slow upload teaches nothing), and only from calls the handler completed: OK and the
//! domain answers NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION and ABORTED, and a
//! DEADLINE_EXCEEDED at the server's own `server.request_timeout_ms`. Calls cut short by
//! their caller's `grpc-timeout` or cancelled, and quick refusals (UNAUTHENTICATED,
//! PERMISSION_DENIED, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNIMPLEMENTED, …), count
//! for nothing: a client's tiny deadlines or a flood of cheap rejections cannot move
//! everyone's limit.
//!
//! Why Vegas: it anchors on the lowest latency it saw recently (reset by periodic probes)
//! and keeps the estimated queue between two small bounds, so under sustained overload
//! the limit settles near the service's real parallelism. A gradient rule (Netflix
//! Gradient2) compares recent latency with a long-run average that itself rises under
//! load, so in a simulation of 3× open-loop overload its limit climbed to the ceiling
//! within a second; Kratos's BBR rule needs a CPU reading, which shared machines and
//! container quotas make unreliable, and does not see saturation of anything but CPU.
//! tower-acc's own layer waits for a permit in `poll_ready`, so only its algorithm is
//! used, behind the try-acquire here.

mod body;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use prometheus::{IntCounter, IntCounterVec, Opts};
use tokio::time::Instant;
use tonic::Code;
use tower::{Layer, Service};
use tower_acc::Algorithm as _;

use super::ServerConfig;
use crate::context::grpc_timeout;
use crate::metrics::grpc::{RpcType, UNKNOWN, method_table};
use crate::metrics::{Metrics, MetricsError};
use crate::status::grpc_status;

/// The delay a shed call's `google.rpc.RetryInfo` advises: a few service times, so a
/// retrying client (with its own jitter) comes back after the burst.
pub const SHED_RETRY_AFTER: Duration = Duration::from_millis(100);

/// The gRPC message framing header: a compressed flag and a 4-byte length.
const MESSAGE_HEADER_BYTES: usize = 5;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether `path` is health or reflection, which no limit covers.
pub fn is_exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// How a method is admitted, from its streaming flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One request, one response: body read first, adaptive slot, sampled.
    Unary,
    /// One request, a response stream: body read first, ceiling only.
    ServerStream,
    /// A request stream: ceiling only, body not waited for.
    ClientStream,
}

impl From<RpcType> for Kind {
    fn from(rpc_type: RpcType) -> Self {
        match rpc_type {
            RpcType::Unary => Self::Unary,
            RpcType::ServerStream => Self::ServerStream,
            RpcType::ClientStream | RpcType::BidiStream => Self::ClientStream,
        }
    }
}

#[derive(Debug)]
struct Method {
    kind: Kind,
    shed: IntCounter,
}

/// The admission state of one server: its limits, counts and metrics. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

struct Shared {
    ceiling: usize,
    min_limit: usize,
    /// The adaptive limit in force, kept between `min_limit` and `ceiling`.
    limit: AtomicUsize,
    algorithm: parking_lot::Mutex<tower_acc::Vegas>,
    /// Calls counted by the ceiling.
    admitted: AtomicUsize,
    /// Calls holding an adaptive slot.
    limited: AtomicUsize,
    methods: HashMap<String, Method>,
    unknown: Method,
    body_timeout: Duration,
    max_body_bytes: usize,
    request_timeout: Duration,
    body_timeouts: IntCounter,
    connections_refused: IntCounter,
}

impl Admission {
    /// The admission of a server with `config`, running `services` whose methods the
    /// encoded `descriptor_sets` describe; registers its metrics in `metrics`:
    /// `trellis_server_concurrency_limit` and `trellis_server_in_flight_requests`
    /// (gauges, calls), `trellis_server_shed_total{grpc_service,grpc_method}` (every
    /// known method at zero), `trellis_server_request_body_timeouts_total` and
    /// `trellis_server_connections_refused_total` (counters).
    ///
    /// # Errors
    /// [`MetricsError::Register`] when the names are taken (a second server on one
    /// handle); [`MetricsError::Descriptor`] when a set does not decode.
    pub fn new(
        config: &ServerConfig,
        services: &[&str],
        descriptor_sets: &[&[u8]],
        metrics: &Metrics,
    ) -> Result<Self, MetricsError> {
        let shed = metrics.register(IntCounterVec::new(
            Opts::new(
                "trellis_server_shed_total",
                "Calls answered RESOURCE_EXHAUSTED at once because the server was over its \
                 concurrency limit (adaptive, or server.max_concurrent_requests).",
            ),
            &["grpc_service", "grpc_method"],
        )?)?;
        let methods = method_table(descriptor_sets, Some(services))?
            .into_iter()
            .map(|(path, info)| {
                let method = Method {
                    kind: info.rpc_type.into(),
                    shed: shed.with_label_values(&[&info.service, &info.method]),
                };
                (path, method)
            })
            .collect();
        let unknown = Method {
            kind: Kind::Unary,
            shed: shed.with_label_values(&[UNKNOWN, UNKNOWN]),
        };
        let body_timeouts = metrics.register(IntCounter::new(
            "trellis_server_request_body_timeouts_total",
            "Calls answered DEADLINE_EXCEEDED because their request body did not arrive \
             within server.request_body_timeout_ms.",
        )?)?;
        let connections_refused = metrics.register(IntCounter::new(
            "trellis_server_connections_refused_total",
            "Connections closed on accept because their client address already had \
             server.max_connections_per_address open.",
        )?)?;

        let ceiling = config.max_concurrent_requests.max(1);
        let min_limit = config.min_concurrency_limit.clamp(1, ceiling);
        let initial = config.initial_concurrency_limit.clamp(min_limit, ceiling);
        let algorithm = tower_acc::Vegas::builder()
            .initial_limit(initial)
            .max_limit(ceiling)
            .build();
        let shared = Arc::new(Shared {
            ceiling,
            min_limit,
            limit: AtomicUsize::new(initial),
            algorithm: parking_lot::Mutex::new(algorithm),
            admitted: AtomicUsize::new(0),
            limited: AtomicUsize::new(0),
            methods,
            unknown,
            body_timeout: config.request_body_timeout,
            max_body_bytes: config
                .max_message_bytes
                .saturating_add(MESSAGE_HEADER_BYTES),
            request_timeout: config.request_timeout,
            body_timeouts,
            connections_refused,
        });
        let admission = Self { shared };
        let read = admission.clone();
        metrics.gauge_fn(
            "trellis_server_concurrency_limit",
            "The adaptive concurrency limit of unary calls in force (calls).",
            move || i64::try_from(read.limit()).unwrap_or(i64::MAX),
        )?;
        let read = admission.clone();
        metrics.gauge_fn(
            "trellis_server_in_flight_requests",
            "Unary calls admitted and not yet answered: what \
             trellis_server_concurrency_limit bounds (calls).",
            move || i64::try_from(read.in_flight()).unwrap_or(i64::MAX),
        )?;
        Ok(admission)
    }

    /// The adaptive limit in force, in calls.
    pub fn limit(&self) -> usize {
        self.shared.limit.load(Ordering::Relaxed)
    }

    /// Unary calls holding an adaptive slot now.
    pub fn in_flight(&self) -> usize {
        self.shared.limited.load(Ordering::Relaxed)
    }

    /// The layer that admits calls.
    pub fn layer(&self) -> AdmissionLayer {
        AdmissionLayer {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The counter of connections refused by the per-address cap
    /// ([`super::connection::AddressCap`]).
    pub fn connections_refused(&self) -> IntCounter {
        self.shared.connections_refused.clone()
    }
}

impl Shared {
    fn method(&self, path: &str) -> &Method {
        self.methods.get(path).unwrap_or(&self.unknown)
    }

    /// A slot under the ceiling (and under the adaptive limit when `adaptive`), or `None`.
    fn admit(self: &Arc<Self>, adaptive: bool) -> Option<Ticket> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.ceiling {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        if adaptive
            && self.limited.fetch_add(1, Ordering::AcqRel) >= self.limit.load(Ordering::Relaxed)
        {
            self.limited.fetch_sub(1, Ordering::AcqRel);
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Ticket {
            shared: Arc::clone(self),
            adaptive,
        })
    }

    /// Teaches the algorithm one service time, with the calls in flight as it ended.
    fn sample(&self, service_time: Duration) {
        let in_flight = self.limited.load(Ordering::Relaxed);
        let mut algorithm = self.algorithm.lock();
        algorithm.update(service_time, in_flight, false, false);
        let limit = algorithm
            .max_concurrency()
            .clamp(self.min_limit, self.ceiling);
        drop(algorithm);
        self.limit.store(limit, Ordering::Relaxed);
    }
}

/// An admitted call's slot, given back when dropped (answered, failed or cancelled).
struct Ticket {
    shared: Arc<Shared>,
    adaptive: bool,
}

impl Ticket {
    /// Ends the call; `service_time` teaches the limit when it is a sample to trust.
    fn finish(self, service_time: Option<Duration>) {
        if let (true, Some(time)) = (self.adaptive, service_time) {
            self.shared.sample(time);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.adaptive {
            self.shared.limited.fetch_sub(1, Ordering::AcqRel);
        }
        self.shared.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether an answer with `headers` is a service time to learn from (see the module
/// docs): the handler completed, and no caller's deadline cut it short.
fn teaches(
    headers: &http::HeaderMap,
    caller_timeout: Option<Duration>,
    request_timeout: Duration,
) -> bool {
    match grpc_status(headers) {
        // The status comes in the trailers: the handler answered with a message.
        None => true,
        Some(Code::Ok | Code::NotFound | Code::AlreadyExists | Code::FailedPrecondition)
        | Some(Code::Aborted) => true,
        // Only the server's own bound, never a caller's grpc-timeout.
        Some(Code::DeadlineExceeded) => caller_timeout.is_none_or(|t| t > request_timeout),
        Some(_) => false,
    }
}

/// Admits calls (see the module docs). Install it outside the drain and deadline layers.
#[derive(Clone)]
pub struct AdmissionLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AdmissionLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service made by [`AdmissionLayer`]: always ready; a call over a limit is answered,
/// not held.
#[derive(Clone)]
pub struct AdmissionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for AdmissionService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionService").finish_non_exhaustive()
    }
}

/// The response future of [`AdmissionService`].
pub type AdmissionFuture<E> =
    Pin<Box<dyn Future<Output = Result<Response<tonic::body::Body>, E>> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for AdmissionService<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = AdmissionFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The service polled ready goes with this call; the clone stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if is_exempt(request.uri().path()) {
            let response = inner.call(request.map(tonic::body::Body::new));
            return Box::pin(async move { Ok(response.await?.map(tonic::body::Body::new)) });
        }
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let method = shared.method(request.uri().path());
            let kind = method.kind;
            let request = if kind == Kind::ClientStream {
                request.map(tonic::body::Body::new)
            } else {
                let (parts, body) = request.into_parts();
                let read = body::prefetch(body, shared.max_body_bytes);
                match tokio::time::timeout(shared.body_timeout, read).await {
                    Ok(body) => Request::from_parts(parts, tonic::body::Body::new(body)),
                    Err(_) => {
                        shared.body_timeouts.inc();
                        tracing::debug!(
                            path = parts.uri.path(),
                            "request body timed out; answering DEADLINE_EXCEEDED"
                        );
                        return Ok(body_timeout_status(shared.body_timeout).into_http());
                    }
                }
            };
            let Some(ticket) = shared.admit(kind == Kind::Unary) else {
                method.shed.inc();
                tracing::debug!("over the concurrency limit; answering RESOURCE_EXHAUSTED");
                return Ok(crate::status::resource_exhausted(
                    "the server is over its concurrency limit; retry later",
                    SHED_RETRY_AFTER,
                )
                .into_http());
            };
            let caller_timeout = grpc_timeout(request.headers());
            let started = Instant::now();
            // Dropped here (the call cancelled), the ticket frees its slot unsampled.
            let response = inner.call(request).await?;
            let service_time = teaches(response.headers(), caller_timeout, shared.request_timeout)
                .then(|| started.elapsed());
            ticket.finish(service_time);
            Ok(response.map(tonic::body::Body::new))
        })
    }
}

/// The answer to a call whose body did not arrive within `timeout`.
fn body_timeout_status(timeout: Duration) -> tonic::Status {
    tonic::Status::deadline_exceeded(format!(
        "the request body did not arrive within {} ms (server.request_body_timeout_ms)",
        timeout.as_millis()
    ))
}
