//! One peer call from start to answer: its deadline, its attempts over the balancer's
//! instances, and its retries.
//!
//! **Deadline.** The smallest of the peer's `timeout_ms`, a `grpc-timeout` the caller
//! set, and — inside a handler — the handler's own deadline less [`DEADLINE_MARGIN`]
//! (so the answer can still get back in time). Each attempt sends what is left as
//! `grpc-timeout`; at the deadline the call ends DEADLINE_EXCEEDED, and a call whose
//! deadline already passed fails so without I/O.
//!
//! **What counts against the peer** (for its circuit breaker, the outlier ejection of
//! its instances and their latency estimates) is only what the peer caused, so no
//! client can shape the platform's view of a peer by the deadlines it picks:
//!
//! - the call's deadline is *the peer's* when `timeout_ms` was the binding bound (no
//!   later than the caller's `grpc-timeout` and the handler's deadline less the margin);
//!   otherwise it is *the caller's*;
//! - a DEADLINE_EXCEEDED — our timer expiring, tonic's timer for the `grpc-timeout` we
//!   sent, or the peer answering DEADLINE_EXCEEDED (or CANCELLED, tonic's server-side
//!   timeout) for the deadline we propagated — counts as the peer's failure only under
//!   the peer's own deadline; under the caller's it counts **nothing**: neither failure
//!   nor success (a success would let short calls reset a failure run or dilute a
//!   failure rate), it is not recorded by the balancer and the breaker lets it pass
//!   unrecorded ([`super::breaker::Uncounted`]);
//! - a call with no time left is refused locally, before the breaker, sending nothing and
//!   counting nothing (not even in the retry budget);
//! - a cancelled call (its future dropped) records nothing: its outstanding count on the
//!   instance is released and a half-open probe permit goes back to the breaker;
//! - every other outcome is the peer's: its UNAVAILABLE, INTERNAL, transport errors, and
//!   its own `timeout_ms` expiring, so a hanging peer still opens its circuit.
//!
//! The DEADLINE_EXCEEDED a caller caused carries the metadata [`CALLER_CAUSED_KEY`]
//! (`trellis-caller-caused: deadline`); [`caused_by_caller`] tells it from a fault of
//! the platform, e.g. so a login throttle keeps charging the attempt.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::ServiceExt as _;
use tower::retry::backoff::Backoff as _;

use super::PeerShared;
use super::balance::{Endpoint, Outcome, Outstanding};
use super::breaker::{Uncounted, is_failure_code};
use super::retry::{never_sent, timed_out};
use super::stats::inc;
use crate::context::{self, encode_grpc_timeout, grpc_timeout};
use crate::status::grpc_status;

/// Taken off a handler's remaining time for the peer calls it makes: the time to carry
/// the answer back and finish the handler.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// The metadata key on a status whose cause is the caller's own deadline, not a fault of
/// the peer or the platform: a DEADLINE_EXCEEDED (or the CANCELLED of tonic's
/// server-side timeout) of a peer call whose binding deadline was the caller's
/// `grpc-timeout` or its handler's deadline, and the local refusal of a call with no time
/// left. Its value is `deadline`. Set only by the peer client that made the call: one a
/// peer sends is removed.
pub const CALLER_CAUSED_KEY: &str = "trellis-caller-caused";

/// Whether `status`, the error of a call over a [`super::PeerChannel`], was caused by the
/// caller's own deadline (see [`CALLER_CAUSED_KEY`]) rather than by the peer or the
/// platform (the peer down, unreachable or failing, its circuit open, its own
/// `timeout_ms` expired). Such a status counted nothing against the peer.
pub fn caused_by_caller(status: &Status) -> bool {
    status
        .metadata()
        .get(CALLER_CAUSED_KEY)
        .is_some_and(|value| value == "deadline")
}

/// When a call must be answered by, and whose bound that is.
#[derive(Debug, Clone, Copy)]
pub(super) struct CallDeadline {
    /// When the call started.
    started: Instant,
    /// When it must be answered by.
    at: Instant,
    /// Whether the peer's own `timeout_ms` is the binding bound (no later than the
    /// caller's): only then does its expiry count against the peer.
    peers: bool,
}

impl CallDeadline {
    /// The deadline of a call starting now to a peer with `timeout`, given the request's
    /// `headers` (its `grpc-timeout`) and the handler's deadline, if any.
    pub(super) fn new(timeout: Duration, headers: &HeaderMap) -> Self {
        let started = Instant::now();
        let own = started + timeout;
        let mut callers: Option<Instant> = grpc_timeout(headers).map(|given| started + given);
        if let Some(handler) = context::deadline() {
            let handler = handler.checked_sub(DEADLINE_MARGIN).unwrap_or(started);
            callers = Some(callers.map_or(handler, |given| given.min(handler)));
        }
        match callers {
            Some(callers) if callers < own => Self {
                started,
                at: callers,
                peers: false,
            },
            _ => Self {
                started,
                at: own,
                peers: true,
            },
        }
    }

    /// Whether no time is left.
    pub(super) fn passed(&self) -> bool {
        self.at <= Instant::now()
    }

    /// Spends `plan`'s delay within this deadline, then gives its abort as the call's
    /// answer; `None` lets the call go on. A delay past the deadline ends at the deadline
    /// with DEADLINE_EXCEEDED (gRFC A33). Neither answer reaches the breaker.
    pub(super) async fn inject(
        &self,
        plan: &crate::faults::Plan,
        peer: &str,
    ) -> Option<http::Response<Body>> {
        if let Some(delay) = plan.delay {
            let until = Instant::now() + delay;
            tokio::time::sleep_until(until.min(self.at)).await;
            if until > self.at {
                return Some(
                    Status::deadline_exceeded(format!(
                        "an injected delay of {} ms to {peer} outlasted the deadline",
                        delay.as_millis()
                    ))
                    .into_http(),
                );
            }
        }
        plan.abort.as_ref().map(|status| status.clone().into_http())
    }
}

/// The answer to a call refused locally because its caller's deadline left no time: sent
/// nowhere, counted nowhere.
pub(super) fn no_time_left(peer: &str) -> http::Response<Body> {
    caller_caused(Status::deadline_exceeded(format!(
        "no time left in the caller's deadline to call {peer}"
    )))
}

/// `status` marked as the caller's doing, as a response the breaker does not count.
fn caller_caused(mut status: Status) -> http::Response<Body> {
    status.metadata_mut().insert(
        CALLER_CAUSED_KEY,
        tonic::metadata::MetadataValue::from_static("deadline"),
    );
    let mut response = status.into_http();
    response.extensions_mut().insert(Uncounted);
    response
}

/// The attempts of a call as a service, for the circuit breaker to wrap.
#[derive(Clone)]
pub(super) struct Attempts(pub(super) Arc<PeerShared>);

impl tower::Service<http::Request<Body>> for Attempts {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = Arc::clone(&self.0);
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            Ok(send(&shared, &path, request).await)
        })
    }
}

/// Sends `request` (to `path`) to one of the peer's instances, retrying where that is
/// safe; every failure is answered as a status response.
async fn send(
    shared: &PeerShared,
    path: &str,
    request: http::Request<Body>,
) -> http::Response<Body> {
    let peer = shared.balancer.peer();
    // Set by the channel before the credentials and the breaker; made here otherwise.
    let call_deadline = request
        .extensions()
        .get::<CallDeadline>()
        .copied()
        .unwrap_or_else(|| CallDeadline::new(shared.timeout, request.headers()));
    if call_deadline.passed() {
        return no_time_left(peer);
    }
    let deadline = call_deadline.at;
    let method = shared.methods.get(path);
    shared.retry.deposit();
    let (parts, body) = request.into_parts();
    // A unary request's message is read once, so each attempt can send it again; a
    // client stream goes out as it comes, once.
    let mut body = Some(body);
    let replay: Option<Bytes> = if method.client_streaming {
        None
    } else {
        match body.take().map(BodyExt::collect) {
            Some(collect) => match collect.await {
                Ok(collected) => Some(collected.to_bytes()),
                Err(status) => return status.into_http(),
            },
            None => None,
        }
    };
    let mut backoff = shared.retry.backoff();
    let mut tried: Vec<Arc<Endpoint>> = Vec::new();
    let mut attempt = 1;
    loop {
        let endpoint = match shared.balancer.pick(method.server_streaming, &tried).await {
            Ok(endpoint) => endpoint,
            Err(status) => return status.into_http(),
        };
        let mut request = http::Request::from_parts(
            parts.clone(),
            match (&replay, body.take()) {
                (Some(bytes), _) => Body::new(http_body_util::Full::new(bytes.clone())),
                (None, Some(stream)) => stream,
                (None, None) => Body::empty(),
            },
        );
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(value) = HeaderValue::from_str(&encode_grpc_timeout(left)) {
            request.headers_mut().insert("grpc-timeout", value);
        }
        let outstanding = endpoint.start_call();
        let started = Instant::now();
        let channel = endpoint.channel();
        let answered = match tokio::time::timeout_at(deadline, channel.oneshot(request)).await {
            // Our deadline, or the channel's own timer set from the `grpc-timeout` sent.
            Err(_) => None,
            Ok(Err(err)) if timed_out(&err) => None,
            Ok(result) => Some(result),
        };
        let rtt = started.elapsed();
        let Some(result) = answered else {
            let expired = Status::deadline_exceeded(format!(
                "{peer} did not answer within the deadline ({} ms)",
                (deadline - call_deadline.started).as_millis()
            ));
            if !call_deadline.peers {
                // The caller's deadline: no failure is recorded against the instance,
                // but the wait is its latency for picking (a hung instance is avoided).
                shared.balancer.waited(&endpoint, rtt);
                return caller_caused(expired);
            }
            shared.balancer.record(&endpoint, Outcome::Failure, rtt);
            return expired.into_http();
        };
        let (outcome, code, answer) = match result {
            Err(err) => {
                let unsent = never_sent(&err);
                let status = Status::unavailable(format!(
                    "{peer} at {} is unreachable: {err}",
                    endpoint.instance
                ));
                (
                    Outcome::TransportError,
                    Code::Unavailable,
                    Err((status, unsent)),
                )
            }
            Ok(mut response) => {
                // Only this client says what its caller caused.
                response.headers_mut().remove(CALLER_CAUSED_KEY);
                let code = grpc_status(response.headers()).unwrap_or(Code::Ok);
                if !call_deadline.peers && matches!(code, Code::DeadlineExceeded | Code::Cancelled)
                {
                    // The peer ran out of the caller's deadline we propagated.
                    response
                        .headers_mut()
                        .insert(CALLER_CAUSED_KEY, HeaderValue::from_static("deadline"));
                    response.extensions_mut().insert(Uncounted);
                    return response.map(Body::new);
                }
                // The instance's failures are the breaker's (gRPC codes that may succeed
                // elsewhere or later).
                let outcome = if is_failure_code(code) {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                (outcome, code, Ok(response))
            }
        };
        shared.balancer.record(&endpoint, outcome, rtt);
        let retryable = code == Code::Unavailable
            && replay.is_some()
            && (method.idempotent || matches!(answer, Err((_, true))));
        if retryable && attempt < shared.retry.max_attempts {
            if shared.retry.withdraw() {
                let pause = backoff.next_backoff();
                if pause.deadline() < deadline {
                    inc(shared.counters.retries.as_ref());
                    tracing::debug!(%peer, instance = %endpoint.instance, attempt, "retrying a peer call");
                    pause.await;
                    tried.push(endpoint);
                    attempt += 1;
                    continue;
                }
            } else {
                inc(shared.counters.budget_exhausted.as_ref());
                tracing::warn!(%peer, "retry budget spent: not retrying a failed peer call");
            }
        }
        return match answer {
            Err((status, _)) => status.into_http(),
            Ok(response) if method.server_streaming => {
                response.map(|body| Body::new(Tracked::new(body, outstanding)))
            }
            Ok(response) => response.map(Body::new),
        };
    }
}

pin_project_lite::pin_project! {
    /// A streamed response body that counts as an outstanding call on its instance
    /// until it ends or is dropped.
    struct Tracked<B> {
        #[pin]
        inner: B,
        outstanding: Option<Outstanding>,
    }
}

impl<B> Tracked<B> {
    fn new(inner: B, outstanding: Outstanding) -> Self {
        Self {
            inner,
            outstanding: Some(outstanding),
        }
    }
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            this.outstanding.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
