//! Deadlines on the server side: the caller's `grpc-timeout` (gRPC over HTTP/2,
//! "Timeout"), capped by `server.request_timeout_ms`, becomes the deadline of the
//! handler — installed as [`crate::context::deadline`] so the peer calls it makes get
//! no more than what is left — and a handler still running at the deadline is dropped
//! and answered DEADLINE_EXCEEDED, the code the gRPC spec gives an expired deadline.
//!
//! tonic's own timeout answers CANCELLED "Timeout expired" and sits outside every layer
//! (and a tonic client keeps a timer of its own); [`DeadlineService`] answers
//! [`TONIC_MARGIN`] before the caller's deadline, so the caller sees DEADLINE_EXCEEDED. Like tonic's, the deadline bounds the time to the response's
//! headers: a stream already answering is not cut.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use tokio::time::Instant;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::context;

/// How much earlier than the caller's `grpc-timeout` our answer is sent. tonic enforces
/// the header itself on both sides — its server's timer and, in a tonic client, the
/// caller's own timer from the moment it sent — and either answers CANCELLED "Timeout
/// expired". Ours must fire first *and* its DEADLINE_EXCEEDED reach the caller before
/// the caller's timer: tokio's timers tick in milliseconds, and on a loaded machine the
/// answer's way back takes a few more. 1 ms lost that race in a CI run.
pub const TONIC_MARGIN: Duration = Duration::from_millis(5);

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
            Some(timeout) if timeout <= self.cap => arrival + timeout.saturating_sub(TONIC_MARGIN),
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

/// The `grpc-timeout` header's value: 1 to 8 ASCII digits and a unit of `H M S m u n`
/// (gRPC over HTTP/2, "Timeout"). `None` when absent or malformed.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// `timeout` as a `grpc-timeout` value: whole milliseconds, rounded up so a call is never
/// given less than it has, or seconds when the milliseconds need more than 8 digits.
pub fn encode_grpc_timeout(timeout: Duration) -> String {
    let millis = timeout.as_nanos().div_ceil(1_000_000);
    if millis < 100_000_000 {
        format!("{millis}m")
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        headers
    }

    #[test]
    fn grpc_timeout_follows_the_spec_grammar() {
        assert_eq!(grpc_timeout(&headers("5S")), Some(Duration::from_secs(5)));
        assert_eq!(
            grpc_timeout(&headers("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            grpc_timeout(&headers("2H")),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(grpc_timeout(&headers("7u")), Some(Duration::from_micros(7)));
        for bad in ["", "m", "123456789m", "1x", "-1m", "1.5S", " 1m"] {
            assert_eq!(grpc_timeout(&headers(bad)), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn encoded_timeouts_round_up_and_fit_eight_digits() {
        assert_eq!(encode_grpc_timeout(Duration::from_micros(1500)), "2m");
        assert_eq!(encode_grpc_timeout(Duration::from_millis(30_000)), "30000m");
        assert_eq!(encode_grpc_timeout(Duration::ZERO), "0m");
        let long = encode_grpc_timeout(Duration::from_secs(400_000));
        assert_eq!(long, "400000S");
        assert_eq!(
            grpc_timeout(&headers(&long)),
            Some(Duration::from_secs(400_000))
        );
    }
}
