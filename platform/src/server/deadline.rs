//! Deadlines on the server side: the caller's `grpc-timeout` (gRPC over HTTP/2,
//! "Timeout"), capped by `server.request_timeout_ms`, becomes the deadline of the
//! handler — installed as [`crate::context::deadline`] so the peer calls it makes get
//! no more than what is left — and a handler still running at the deadline is dropped
//! and answered DEADLINE_EXCEEDED, the code the gRPC spec gives an expired deadline.
//!
//! tonic's own timeout answers CANCELLED "Timeout expired" and sits outside every layer
//! (and a tonic client keeps a timer of its own); [`DeadlineService`] answers
//! [`margin`] before the caller's deadline, so the caller sees DEADLINE_EXCEEDED. Like tonic's, the deadline bounds the time to the response's
//! headers: a stream already answering is not cut.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::context::{self, grpc_timeout};

/// How much earlier than the caller's `grpc-timeout` our answer is sent. tonic enforces
/// the header itself on both sides — its server's timer and, in a tonic client, the
/// caller's own timer from the moment it sent — and either answers CANCELLED "Timeout
/// expired". Ours must fire first *and* its DEADLINE_EXCEEDED reach the caller before
/// the caller's timer: tokio's timers tick in milliseconds, and on a loaded machine the
/// answer's way back takes longer. 1 ms lost that race in a CI run, and 5 ms lost it in
/// 2 of 6 full test runs on two busy cores; 20 ms costs a handler a fiftieth of a
/// one-second deadline. A short deadline loses at most an eighth ([`margin`]), so a
/// caller's 10 ms still gives its handler 9 ms instead of none (a handler with no time
/// left refuses its peer calls locally).
pub const TONIC_MARGIN: Duration = Duration::from_millis(20);

/// The margin taken off a caller's `timeout`: [`TONIC_MARGIN`], or an eighth of the
/// timeout when that is less.
pub fn margin(timeout: Duration) -> Duration {
    TONIC_MARGIN.min(timeout / 8)
}

/// When a request arrived at the server, recorded by the outer request-id layer so the
/// deadline counts time spent queued behind the concurrency limit too.
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub Instant);

/// Applies each call's deadline (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    cap: Duration,
}

impl DeadlineLayer {
    /// Deadlines of at most `cap` (`server.request_timeout_ms`), the deadline of calls
    /// that set none.
    pub fn new(cap: Duration) -> Self {
        Self { cap }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            cap: self.cap,
        }
    }
}

/// The service made by [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    cap: Duration,
}

impl<S, B> Service<Request<B>> for DeadlineService<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let arrival = request
            .extensions()
            .get::<Arrival>()
            .map_or_else(Instant::now, |arrival| arrival.0);
        let deadline = match grpc_timeout(request.headers()) {
            Some(timeout) if timeout <= self.cap => arrival + timeout - margin(timeout),
            _ => arrival + self.cap,
        };
        let handler = context::with_deadline(deadline, self.inner.call(request));
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, handler).await {
                Ok(result) => result,
                Err(_) => Ok(tonic::Status::deadline_exceeded(
                    "deadline exceeded before the server answered",
                )
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_20_ms_but_never_more_than_an_eighth_of_the_timeout() {
        assert_eq!(margin(Duration::from_millis(400)), TONIC_MARGIN);
        assert_eq!(margin(Duration::from_secs(30)), TONIC_MARGIN);
        assert_eq!(margin(Duration::from_millis(80)), Duration::from_millis(10));
        assert_eq!(margin(Duration::from_millis(8)), Duration::from_millis(1));
        assert_eq!(margin(Duration::ZERO), Duration::ZERO);
    }
}
