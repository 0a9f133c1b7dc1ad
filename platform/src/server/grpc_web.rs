//! gRPC-Web on the service's one port, for browsers ([gRPC-Web protocol]).
//!
//! A request whose `content-type` is `application/grpc-web…` (binary or `-text`, over
//! HTTP/1.1 or HTTP/2) is translated by `tonic-web` into the gRPC call it stands for and
//! sent inward through the whole chain (HTTP/JSON passes it untouched, then metrics,
//! request ids, admission, tracing, deadlines, the route layers: limits, authentication,
//! the access policy, field rules); the response is translated back, its trailers
//! becoming the final frame of the body. Unary and server-streaming calls work (browsers
//! cannot stream requests). Every other request passes untouched: tonic-web alone would
//! answer HTTP/1.1 requests that are not gRPC-Web with 400, and those are HTTP/JSON's.
//!
//! Which pages may call is CORS's business ([`super::cors`]), outside this layer.
//!
//! [gRPC-Web protocol]: https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md

use std::task::{Context, Poll};

use futures::future::Either;
use http::{Request, Response, header};
use tonic::body::Body;
use tower::{Layer, Service};

/// Marks a request that arrived as gRPC-Web (a request extension the inner layers can
/// read, e.g. the span's `rpc.transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcWeb;

/// The content types of gRPC-Web, exactly as tonic-web accepts them.
const GRPC_WEB_CONTENT_TYPES: [&str; 4] = [
    "application/grpc-web",
    "application/grpc-web+proto",
    "application/grpc-web-text",
    "application/grpc-web-text+proto",
];

/// True when `request` says it is gRPC-Web (`application/grpc-web`, `…+proto`,
/// `…-text`, `…-text+proto`).
pub fn is_grpc_web<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| GRPC_WEB_CONTENT_TYPES.iter().any(|web| value == *web))
}

/// Serves gRPC-Web requests as gRPC through the inner service; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcWebLayer;

impl<S> Layer<S> for GrpcWebLayer {
    type Service = GrpcWebService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcWebService { inner }
    }
}

/// The service of [`GrpcWebLayer`].
#[derive(Debug, Clone)]
pub struct GrpcWebService<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for GrpcWebService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<tonic_web::ResponseFuture<S::Future>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // The service polled ready is the one called (tower's contract); its clone
        // stays for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        if is_grpc_web(&request) {
            request.extensions_mut().insert(GrpcWeb);
            Either::Left(tonic_web::GrpcWebLayer::new().layer(inner).call(request))
        } else {
            let mut inner = inner;
            Either::Right(inner.call(request))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(content_type: &str) -> Request<()> {
        Request::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(())
            .unwrap_or_default()
    }

    #[test]
    fn only_grpc_web_content_types_are_translated() {
        for web in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpc-web-text",
            "application/grpc-web-text+proto",
        ] {
            assert!(is_grpc_web(&with_type(web)), "{web}");
        }
        for other in [
            "application/grpc",
            "application/json",
            "text/plain",
            "application/grpc-webx",
            "application/grpc-web+json",
        ] {
            assert!(!is_grpc_web(&with_type(other)), "{other}");
        }
        assert!(!is_grpc_web(&Request::new(())));
    }
}
