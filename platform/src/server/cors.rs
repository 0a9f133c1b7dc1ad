//! Which web pages may call the service from a browser: CORS ([Fetch standard]) for
//! gRPC-Web ([`super::grpc_web`]) and HTTP/JSON ([`crate::http_json`]).
//!
//! The `server.cors` section lists the allowed origins (none by default: browsers on
//! other origins cannot call at all). For those, `tower-http`'s CORS layer answers
//! preflights (methods `GET`, `POST`, `PATCH`, `DELETE`; request headers
//! [`ALLOWED_HEADERS`]; cached [`PREFLIGHT_MAX_AGE`]) and exposes [`EXPOSED_HEADERS`] on
//! responses, so a page can read `grpc-status` of a trailers-only gRPC-Web answer. A
//! preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from any other
//! origin is answered `403 Forbidden` with a plain-text reason, before any other layer.
//! Any other `OPTIONS`, and native gRPC calls with no `Origin`, pass inward untouched. No credentials mode: Trellis authenticates with bearer
//! tokens a page sends itself, never with cookies, so a page that is not allowed gains
//! nothing a non-browser client would not have (and cross-site request forgery has no
//! ambient credential to ride on). With no origin allowed, calls pass untouched.
//!
//! [Fetch standard]: https://fetch.spec.whatwg.org/#http-cors-protocol

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{Either, Ready, ready};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use serde::Deserialize;
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, CorsLayer as HttpCorsLayer};

/// Request headers a page may send: a bearer token, the content type, gRPC-Web's own,
/// a deadline and a request id.
pub const ALLOWED_HEADERS: [&str; 6] = [
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    crate::context::REQUEST_ID_HEADER,
];

/// Response headers a page may read: a call's status (gRPC-Web answers an error with
/// headers only), `Retry-After` of a 429, and the request id.
pub const EXPOSED_HEADERS: [&str; 5] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "retry-after",
    crate::context::REQUEST_ID_HEADER,
];

/// How long a browser may cache a preflight's answer (`Access-Control-Max-Age`).
pub const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The `server.cors` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// The origins (RFC 6454 serialized: `scheme://host[:port]`, no path, no default
    /// port, e.g. `https://app.example.com`, `http://localhost:50050`) whose pages may
    /// call. A list, or one string separated by commas (an environment variable).
    /// Default: none. `*` is refused: list the pages you serve.
    #[serde(deserialize_with = "deserialize_origins")]
    pub allowed_origins: Vec<String>,
}

fn deserialize_origins<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    crate::config::list_or_commas(
        deserializer,
        "origins such as https://app.example.com",
        parse_origin,
    )
}

/// Checks `origin` is a serialized origin a browser would send, in its canonical form
/// (lower-case scheme and host, no default port): the `Origin` header is compared byte
/// for byte.
///
/// # Errors
/// A sentence saying what is wrong with it.
pub fn parse_origin(origin: &str) -> Result<String, String> {
    let problem = |why: &str| Err(format!("`{origin}` is not an origin: {why}"));
    if origin == "*" || origin.contains('*') {
        return problem("wildcards are not allowed, list each page's origin");
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return problem("expected scheme://host[:port], e.g. https://app.example.com");
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return problem("the scheme must be http or https");
    }
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return problem("an origin has a host and an optional port, and nothing else");
    }
    let Ok(parsed) = authority.parse::<http::uri::Authority>() else {
        return problem("the host or port is malformed");
    };
    let default_port = if scheme == "https" { 443 } else { 80 };
    if parsed.port_u16() == Some(default_port) {
        return problem("drop the default port, browsers never send it");
    }
    Ok(format!("{scheme}://{}", authority.to_ascii_lowercase()))
}

/// The CORS policy of `config` as a layer; see the module docs.
pub fn layer(config: &CorsConfig) -> CorsLayer {
    let allowed: Arc<[HeaderValue]> = config
        .allowed_origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect();
    let headers = |names: &[&'static str]| {
        names
            .iter()
            .map(|name| HeaderName::from_static(name))
            .collect::<Vec<_>>()
    };
    let policy = HttpCorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed.iter().cloned()))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers(headers(&ALLOWED_HEADERS))
        .expose_headers(headers(&EXPOSED_HEADERS))
        .max_age(PREFLIGHT_MAX_AGE);
    CorsLayer { policy, allowed }
}

/// The layer of [`layer`].
#[derive(Debug, Clone)]
pub struct CorsLayer {
    policy: HttpCorsLayer,
    allowed: Arc<[HeaderValue]>,
}

impl<S> Layer<S> for CorsLayer {
    type Service = CorsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CorsService {
            inner: self.policy.layer(inner),
            allowed: Arc::clone(&self.allowed),
        }
    }
}

/// The service of [`CorsLayer`].
#[derive(Debug, Clone)]
pub struct CorsService<S> {
    inner: tower_http::cors::Cors<S>,
    allowed: Arc<[HeaderValue]>,
}

impl<S, ReqBody> Service<Request<ReqBody>> for CorsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<tonic::body::Body>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<
        Ready<Result<Self::Response, S::Error>>,
        Either<tower_http::cors::ResponseFuture<S::Future>, S::Future>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let headers = request.headers();
        let origin = headers.get(header::ORIGIN);
        let preflight = request.method() == Method::OPTIONS
            && origin.is_some()
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight
            && let Some(origin) = origin
            && !self.allowed.contains(origin)
        {
            return Either::Left(ready(Ok(forbidden(origin))));
        }
        // tower-http has nothing to add when no page may call (not even `Vary`), to a
        // native gRPC call with no `Origin` (never a browser's, never cached), and must
        // not answer an `OPTIONS` that is no preflight (it takes every `OPTIONS` for one):
        // those pass inward untouched.
        let untouched = self.allowed.is_empty()
            || (request.method() == Method::OPTIONS && !preflight)
            || (origin.is_none() && is_native_grpc(headers));
        if untouched {
            return Either::Right(Either::Right(self.inner.get_mut().call(request)));
        }
        Either::Right(Either::Left(self.inner.call(request)))
    }
}

/// True for `application/grpc` and `application/grpc+…` (not gRPC-Web).
fn is_native_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value == "application/grpc" || value.starts_with("application/grpc+"))
}

/// The answer to a preflight from an origin that is not allowed.
fn forbidden(origin: &HeaderValue) -> Response<tonic::body::Body> {
    let origin = String::from_utf8_lossy(origin.as_bytes());
    let text =
        format!("CORS: origin {origin} may not call this service (server.cors.allowed_origins)\n");
    let mut response = Response::new(tonic::body::Body::new(text));
    *response.status_mut() = StatusCode::FORBIDDEN;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_canonical_and_nothing_else_is_accepted() {
        assert_eq!(
            parse_origin("HTTP://LocalHost:50050"),
            Ok("http://localhost:50050".to_owned())
        );
        assert_eq!(
            parse_origin("https://app.example.com"),
            Ok("https://app.example.com".to_owned())
        );
        for (bad, says) in [
            ("*", "wildcards"),
            ("https://*.example.com", "wildcards"),
            ("app.example.com", "scheme://host"),
            ("ftp://example.com", "http or https"),
            ("https://example.com/", "nothing else"),
            ("https://example.com/app", "nothing else"),
            ("https://user@example.com", "nothing else"),
            ("https://", "nothing else"),
            ("https://example.com:443", "default port"),
            ("http://example.com:80", "default port"),
            ("http://exa mple.com", "malformed"),
        ] {
            let err = parse_origin(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
