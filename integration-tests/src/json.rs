//! A plain HTTP/1.1 JSON client for the services' transcoded routes, as `curl` would
//! call them: no gRPC library involved.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// An HTTP/1.1 client with keep-alive.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One HTTP/JSON exchange's outcome.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: http::StatusCode,
    /// The response headers.
    pub headers: http::HeaderMap,
    /// The body, parsed (`Null` when empty or not JSON).
    pub json: serde_json::Value,
    /// The body as received.
    pub raw: Bytes,
}

impl Reply {
    /// The HTTP status and the `google.rpc.Status` body's gRPC code, compared together
    /// by the tests of AIP-193's mapping.
    pub fn status_and_code(&self) -> (u16, Option<i64>) {
        (self.status.as_u16(), self.json["code"].as_i64())
    }
}

/// Sends `method path` to `addr` with an optional bearer token and JSON body.
///
/// # Panics
/// When the request cannot be sent or the body read: the server is gone.
pub async fn call(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Reply {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
        }
        None => Bytes::new(),
    };
    send(request.body(Full::new(body)).expect("a valid request")).await
}

/// Sends `request` as it is (any method and headers, e.g. a CORS preflight).
///
/// # Panics
/// When the request cannot be sent or the body read: the server is gone.
pub async fn send(request: http::Request<Full<Bytes>>) -> Reply {
    let response = client()
        .request(request)
        .await
        .expect("the server answers HTTP/1.1");
    let (parts, body) = response.into_parts();
    let raw = body.collect().await.expect("a whole body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        json: serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null),
        raw,
    }
}
