//! The server side of the request id: taken from the caller's `x-request-id` header or
//! generated, written back onto the request (so the tracing span and handlers see it),
//! and installed as [`crate::context`] while the handler runs so peer clients forward it
//! on every call they make for this request.

use std::task::{Context, Poll};

use http::{HeaderValue, Request};
use tower::{Layer, Service};

use crate::context::{self, MAX_REQUEST_ID_LEN};
pub use crate::context::{REQUEST_ID_HEADER, current_request_id};

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
            .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN)
            .map(str::to_owned);
        let id = given.unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4().to_string();
            if let Ok(value) = HeaderValue::from_str(&id) {
                request.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
            id
        });
        context::scope(id, self.inner.call(request))
    }
}
