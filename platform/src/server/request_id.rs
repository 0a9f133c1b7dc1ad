//! The request id: taken from the caller's `x-request-id` header or generated, written
//! back onto the request (so the tracing span and handlers see it), and kept in a
//! task-local while the handler runs so [`crate::peer`] clients forward it on every
//! call they make for this request.

use std::future::Future;
use std::task::{Context, Poll};

use http::{HeaderValue, Request};
use tower::{Layer, Service};

/// The header that carries a request id between services.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request id accepted from a caller, in bytes; longer ones are replaced.
const MAX_LEN: usize = 128;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled, when called from inside a handler.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Runs `future` as part of the request `id` (for background work that continues a
/// request, e.g. an outbox delivery).
pub async fn scope<F: Future>(id: String, future: F) -> F::Output {
    REQUEST_ID.scope(id, future).await
}

/// Installs the request id on every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// The service made by [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tokio::task::futures::TaskLocalFuture<String, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let given = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|id| !id.is_empty() && id.len() <= MAX_LEN)
            .map(str::to_owned);
        let id = given.unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4().to_string();
            if let Ok(value) = HeaderValue::from_str(&id) {
                request.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
            id
        });
        REQUEST_ID.scope(id, self.inner.call(request))
    }
}
