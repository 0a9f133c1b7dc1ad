//! The server side of the request id: taken from the caller's `x-request-id` header or
//! generated, written back onto the request (so the tracing span and handlers see it),
//! and installed as [`crate::context`] while the handler runs so peer clients forward it
//! on every call they make for this request. It also records the request's arrival
//! ([`super::deadline::Arrival`]), which the call's deadline counts from.

use std::task::{Context, Poll};

use http::{HeaderValue, Request};
use tower::{Layer, Service};

use crate::context;
use crate::context::REQUEST_ID_HEADER;

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
            .and_then(|value| value.to_str().ok());
        let id = context::request_id_or_new(given);
        if given != Some(id.as_str()) {
            // A missing or unacceptable id is replaced on the request too, so the span
            // and the handler never see the caller's bytes.
            if let Ok(value) = HeaderValue::from_str(&id) {
                request.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
        }
        request
            .extensions_mut()
            .insert(super::deadline::Arrival(tokio::time::Instant::now()));
        context::scope(id, self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt as _;

    use super::*;
    use crate::context::current_request_id;

    /// What the handler sees as the request id header and the task-local id.
    async fn seen(given: &str) -> (Option<String>, Option<String>) {
        let service = RequestIdLayer.layer(tower::service_fn(|request: Request<()>| async move {
            let header = request
                .headers()
                .get(REQUEST_ID_HEADER)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            Ok::<_, std::convert::Infallible>((header, current_request_id()))
        }));
        let request = Request::builder()
            .header(REQUEST_ID_HEADER, given)
            .body(())
            .unwrap_or_default();
        service.oneshot(request).await.unwrap_or_default()
    }

    #[tokio::test]
    async fn a_forged_request_id_is_replaced_on_the_request_and_in_the_context() {
        let (header, current) = seen("abc\" level=ERROR msg=\"forged").await;
        assert_eq!(header, current);
        assert!(current.as_deref().is_some_and(context::is_valid_request_id));
        assert_ne!(current.as_deref(), Some("abc\" level=ERROR msg=\"forged"));

        let (header, current) = seen("req-42").await;
        assert_eq!(header.as_deref(), Some("req-42"));
        assert_eq!(current.as_deref(), Some("req-42"));
    }
}
