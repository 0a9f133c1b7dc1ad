//! The server's fault layer: a route layer (so health and reflection pass untouched)
//! that delays or aborts the calls [`Faults::plan`] picks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::Faults;

/// Injects the server's faults (see [`super`]); install it with
/// [`crate::server::ServerBuilder::route_layer`] inside authentication and rate limits.
#[derive(Debug, Clone)]
pub struct FaultLayer {
    faults: Arc<Faults>,
}

impl FaultLayer {
    /// A layer injecting `faults` (from [`Faults::for_server`]).
    pub fn new(faults: Arc<Faults>) -> Self {
        Self { faults }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Faulted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Faulted {
            inner,
            faults: Arc::clone(&self.faults),
        }
    }
}

/// The service made by [`FaultLayer`].
#[derive(Debug, Clone)]
pub struct Faulted<S> {
    inner: S,
    faults: Arc<Faults>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Faulted<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Some(plan) = self.faults.plan(request.uri().path(), request.headers()) else {
            return Box::pin(self.inner.call(request));
        };
        // The ready service answers this call; a clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            if let Some(delay) = plan.delay {
                // Cancelled with the call: the deadline layer above drops it at the
                // call's deadline, and a caller that goes away drops it too.
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = &plan.abort {
                return Ok(status.clone().into_http());
            }
            let response = inner.call(request).await;
            drop(plan);
            response
        })
    }
}
