//! HTTP/JSON transcoding: every RPC with a `google.api.http` rule (AIP-127) is served as
//! a JSON resource on the gRPC port, over HTTP/1.1 and HTTP/2, as Envoy's gRPC-JSON
//! transcoder and grpc-gateway serve them.
//!
//! [`HttpJsonLayer`] is the server's outermost layer. A request whose `content-type` is
//! `application/grpc…` passes untouched. Any other request is matched against the
//! [`RouteTable`], its body read (bounded in size and time), and sent *inward* as the
//! gRPC call it stands for, on the same connection's extensions, so the metrics, request
//! ids, client address, admission, tracing, deadline, rate limits, authentication and
//! policy layers treat it exactly as a gRPC call. Inside them, [`TranscodeLayer`] binds
//! its path variables, query parameters and JSON body into the RPC's request message
//! (the canonical proto3 JSON mapping: lowerCamelCase or proto names, int64 as strings,
//! `Timestamp` as RFC 3339, `FieldMask` as a string, enums by name; unknown fields and a
//! path-bound field set again are INVALID_ARGUMENT), so JSON is parsed only for calls
//! those layers let through; field validation follows. The gRPC response becomes the
//! JSON body; a status other than OK becomes the HTTP status of AIP-193's mapping with
//! the `google.rpc.Status` JSON body ([`status`]), and RESOURCE_EXHAUSTED carries
//! `Retry-After`. A server-streaming RPC answers as Server-Sent Events: one `data:` line
//! of JSON per message, and a final `event: error` carrying the status when the stream
//! ends with one.
//!
//! `GET /openapi.json` serves the OpenAPI 3.1 document of the server's routes
//! ([`openapi`]), outside every limit (as health and reflection are).

pub mod openapi;
pub mod routes;
pub mod status;
mod transcode;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::json;
use tower::{Layer, Service};

pub use routes::{Route, RouteError, RouteTable};
use transcode::PendingJson;
pub use transcode::{TranscodeLayer, TranscodeService};

/// Marks a request that arrived as HTTP/JSON (a request extension the inner layers can
/// read, e.g. the span's `rpc.transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transcoded;

/// The path the OpenAPI document is served at.
pub const OPENAPI_PATH: &str = "/openapi.json";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the gateway serves: its routes, its OpenAPI document and its limits.
#[derive(Debug)]
struct Gateway {
    routes: RouteTable,
    openapi: Bytes,
    max_body_bytes: usize,
    body_timeout: std::time::Duration,
    counter: Option<prometheus::IntCounterVec>,
}

/// The transcoding layer (see the module docs).
#[derive(Debug, Clone)]
pub struct HttpJsonLayer {
    gateway: Arc<Gateway>,
}

impl HttpJsonLayer {
    /// A layer serving `routes`, with `openapi` (an encoded JSON document) at
    /// [`OPENAPI_PATH`] and JSON bodies of at most `max_body_bytes`, each whole within
    /// 5 s ([`Self::body_timeout`]).
    pub fn new(routes: RouteTable, openapi: Bytes, max_body_bytes: usize) -> Self {
        Self {
            gateway: Arc::new(Gateway {
                routes,
                openapi,
                max_body_bytes,
                body_timeout: std::time::Duration::from_secs(5),
                counter: None,
            }),
        }
    }

    /// How long a JSON body may take to arrive (the server passes
    /// `server.request_body_timeout_ms`, as admission gives a gRPC body): the gateway
    /// reads the body before the call goes inward, so a body trickled in byte by byte is
    /// answered 408 here instead of holding a task past the bound.
    #[must_use]
    pub fn body_timeout(mut self, timeout: std::time::Duration) -> Self {
        if let Some(gateway) = Arc::get_mut(&mut self.gateway) {
            gateway.body_timeout = timeout;
        }
        self
    }

    /// The layer for `service_names`' routes in `pool`, with the OpenAPI document of
    /// them (titled `title`, each operation's audience from `audience`), which it serves
    /// and also returns.
    ///
    /// # Errors
    /// [`RouteError`] for an HTTP rule the gateway cannot serve.
    pub fn from_descriptors(
        pool: &prost_reflect::DescriptorPool,
        service_names: &[&str],
        title: &str,
        audience: &dyn Fn(&str) -> openapi::Audience,
        max_body_bytes: usize,
    ) -> Result<(Self, serde_json::Value), RouteError> {
        let routes = RouteTable::new(pool, service_names)?;
        let document = openapi::document(pool, &routes, title, audience);
        let encoded = Bytes::from(serde_json::to_vec_pretty(&document).unwrap_or_default());
        Ok((Self::new(routes, encoded, max_body_bytes), document))
    }

    /// Counts each HTTP/JSON response in `trellis_http_json_responses_total`
    /// (labels `grpc_service`, `grpc_method`, `http_status`), beside the `grpc_server_*`
    /// families the transcoded call is counted in.
    ///
    /// # Errors
    /// [`crate::metrics::MetricsError`] when the family is registered already.
    pub fn with_metrics(
        mut self,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, crate::metrics::MetricsError> {
        let counter = metrics.register(prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "trellis_http_json_responses_total",
                "HTTP/JSON responses (transcoded calls and refusals before any call), by RPC and HTTP status.",
            ),
            &["grpc_service", "grpc_method", "http_status"],
        )?)?;
        if let Some(gateway) = Arc::get_mut(&mut self.gateway) {
            gateway.counter = Some(counter);
        }
        Ok(self)
    }
}

impl<S> Layer<S> for HttpJsonLayer {
    type Service = HttpJsonService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpJsonService {
            inner,
            gateway: Arc::clone(&self.gateway),
        }
    }
}

/// The service [`HttpJsonLayer`] makes.
#[derive(Debug, Clone)]
pub struct HttpJsonService<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ResBody> Service<Request<tonic::body::Body>> for HttpJsonService<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let is_grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/grpc"));
        if is_grpc {
            let future = self.inner.call(request);
            return Box::pin(async move { Ok(future.await?.map(tonic::body::Body::new)) });
        }
        let gateway = Arc::clone(&self.gateway);
        if request.uri().path() == OPENAPI_PATH && request.method() == http::Method::GET {
            let response = Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(tonic::body::Body::new(http_body_util::Full::new(
                    gateway.openapi.clone(),
                )))
                .unwrap_or_default();
            return Box::pin(async move { Ok(response) });
        }
        let found = match gateway.routes.find(request.method(), request.uri().path()) {
            Ok(Some((route, values))) => Ok((
                route.clone(),
                values
                    .into_iter()
                    .map(|(path, value)| (path.to_vec(), value))
                    .collect::<Vec<_>>(),
            )),
            Ok(None) => Err((
                StatusCode::NOT_FOUND,
                tonic::Code::NotFound,
                format!("no route for {} {}", request.method(), request.uri().path()),
            )),
            Err(()) => Err((
                StatusCode::METHOD_NOT_ALLOWED,
                tonic::Code::Unimplemented,
                format!(
                    "{} is not allowed on {}",
                    request.method(),
                    request.uri().path()
                ),
            )),
        };
        let (route, values) = match found {
            Ok(found) => found,
            Err((http_status, code, message)) => {
                gateway.count(None, http_status);
                let body = json!({"code": code as i32, "message": message});
                return Box::pin(async move { Ok(json_response(http_status, &body)) });
            }
        };
        // The inner service was made ready by poll_ready; the clone takes its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = transcode(&gateway, inner, request, &route, values).await?;
            gateway.count(Some(&route), response.status());
            Ok(response)
        })
    }
}

impl Gateway {
    fn count(&self, route: Option<&Route>, status: StatusCode) {
        let Some(counter) = &self.counter else {
            return;
        };
        let service = route.map(|route| route.method.parent_service());
        let (service, method) = match (&service, route) {
            (Some(service), Some(route)) => (service.full_name(), route.method.name()),
            _ => ("unknown", "unknown"),
        };
        counter
            .with_label_values(&[service, method, status.as_str()])
            .inc();
    }
}

/// A JSON response with `status` and `body`.
fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<tonic::body::Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(bytes),
        )))
        .unwrap_or_default()
}

/// The HTTP response of a gRPC status that is not OK.
fn status_response(status: &tonic::Status) -> Response<tonic::body::Body> {
    let mut response = json_response(
        status::http_status(status.code()),
        &status::status_json(status),
    );
    if let Some(seconds) = status::retry_after_seconds(status) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Request headers that describe the HTTP/JSON exchange, not the call: they are not
/// passed on as gRPC metadata.
fn is_hop_or_representation(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-type"
            | "content-length"
            | "content-encoding"
            | "accept"
            | "accept-encoding"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "upgrade"
            | "proxy-connection"
            | "grpc-encoding"
            | "grpc-accept-encoding"
    )
}

async fn transcode<S, ResBody>(
    gateway: &Gateway,
    mut inner: S,
    request: Request<tonic::body::Body>,
    route: &Arc<Route>,
    values: Vec<(Vec<String>, String)>,
) -> Result<Response<tonic::body::Body>, S::Error>
where
    S: Service<Request<tonic::body::Body>, Response = Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let collected = tokio::time::timeout(
        gateway.body_timeout,
        http_body_util::Limited::new(body, gateway.max_body_bytes).collect(),
    )
    .await;
    let Ok(collected) = collected else {
        let mut response = status_response(&tonic::Status::deadline_exceeded(format!(
            "the request body did not arrive within {} ms",
            gateway.body_timeout.as_millis()
        )));
        *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
        return Ok(response);
    };
    let body = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            let too_large = err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return Ok(if too_large {
                let mut response = status_response(&tonic::Status::resource_exhausted(format!(
                    "the request body exceeds {} bytes",
                    gateway.max_body_bytes
                )));
                *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                response
            } else {
                status_response(&tonic::Status::invalid_argument(
                    "the request body could not be read",
                ))
            });
        }
    };
    // The JSON is parsed inside admission, rate limits and authentication
    // ([`TranscodeLayer`]): a call that is shed or refused costs no parse.
    let pending = PendingJson {
        route: Arc::clone(route),
        values,
        query: parts.uri.query().map(str::to_owned),
        body,
    };
    let mut grpc = Request::builder()
        .method(http::Method::POST)
        .uri(route.grpc_path.as_str())
        .version(http::Version::HTTP_2)
        .body(tonic::body::Body::empty())
        .unwrap_or_default();
    for (name, value) in &parts.headers {
        if !is_hop_or_representation(name) {
            grpc.headers_mut().append(name.clone(), value.clone());
        }
    }
    grpc.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    grpc.headers_mut()
        .insert(header::TE, HeaderValue::from_static("trailers"));
    *grpc.extensions_mut() = parts.extensions;
    grpc.extensions_mut().insert(Transcoded);
    grpc.extensions_mut().insert(Arc::new(pending));

    let response = inner.call(grpc).await?;
    let (response_parts, body) = response.into_parts();
    // Trailers-only: the status is in the headers, and there is no message.
    if let Some(status) = tonic::Status::from_header_map(&response_parts.headers)
        && status.code() != tonic::Code::Ok
    {
        return Ok(status_response(&status));
    }
    let output = route.method.output();
    if route.method.is_server_streaming() {
        return Ok(server_sent_events(body, output));
    }
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(_) => {
            return Ok(status_response(&tonic::Status::unavailable(
                "the call ended before its response",
            )));
        }
    };
    let trailers = collected.trailers().cloned();
    let data = collected.to_bytes();
    if let Some(status) = trailers
        .as_ref()
        .and_then(tonic::Status::from_header_map)
        .filter(|status| status.code() != tonic::Code::Ok)
    {
        return Ok(status_response(&status));
    }
    let mut buffer = BytesMut::from(data.as_ref());
    match next_message(&mut buffer, &output) {
        Some(Ok(json)) => Ok(ok_response(json)),
        _ => Ok(status_response(&tonic::Status::internal(
            "the response could not be transcoded",
        ))),
    }
}

fn ok_response(json: Vec<u8>) -> Response<tonic::body::Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(json),
        )))
        .unwrap_or_default()
}

/// The next whole gRPC message in `buffer`, taken out and rendered as JSON; `None` until
/// one is whole. Compressed messages are refused (the gateway never asks for them).
fn next_message(
    buffer: &mut BytesMut,
    output: &MessageDescriptor,
) -> Option<Result<Vec<u8>, String>> {
    if buffer.len() < 5 {
        return None;
    }
    let compressed = buffer[0] != 0;
    let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if buffer.len() < 5 + len {
        return None;
    }
    buffer.advance(5);
    let payload = buffer.split_to(len).freeze();
    if compressed {
        return Some(Err("a compressed message".to_owned()));
    }
    let message = match DynamicMessage::decode(output.clone(), payload) {
        Ok(message) => message,
        Err(err) => return Some(Err(err.to_string())),
    };
    let mut serializer = serde_json::Serializer::new(Vec::new());
    Some(
        message
            .serialize_with_options(&mut serializer, &SerializeOptions::new())
            .map(|()| serializer.into_inner())
            .map_err(|err| err.to_string()),
    )
}

/// A server stream as Server-Sent Events (the WHATWG HTML standard's
/// `text/event-stream`): `data: <json>` per message; a status other than OK at the end
/// as `event: error` with the `google.rpc.Status` JSON.
fn server_sent_events<B>(body: B, output: MessageDescriptor) -> Response<tonic::body::Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    struct State<B> {
        body: Pin<Box<B>>,
        buffer: BytesMut,
        output: MessageDescriptor,
        done: bool,
    }
    let state = State {
        body: Box::pin(body),
        buffer: BytesMut::new(),
        output,
        done: false,
    };
    let events = futures::stream::unfold(state, |mut state| async move {
        loop {
            if state.done {
                return None;
            }
            if let Some(message) = next_message(&mut state.buffer, &state.output) {
                let event = match message {
                    Ok(json) => {
                        let mut event = Vec::with_capacity(json.len() + 8);
                        event.extend_from_slice(b"data: ");
                        event.extend_from_slice(&json);
                        event.extend_from_slice(b"\n\n");
                        event
                    }
                    Err(_) => {
                        state.done = true;
                        error_event(&tonic::Status::internal(
                            "a message could not be transcoded",
                        ))
                    }
                };
                return Some((Bytes::from(event), state));
            }
            match state.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => state.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        state.done = true;
                        let status = frame
                            .trailers_ref()
                            .and_then(tonic::Status::from_header_map)
                            .filter(|status| status.code() != tonic::Code::Ok);
                        if let Some(status) = status {
                            return Some((Bytes::from(error_event(&status)), state));
                        }
                    }
                },
                Some(Err(_)) => {
                    state.done = true;
                    let status = tonic::Status::unavailable("the stream broke");
                    return Some((Bytes::from(error_event(&status)), state));
                }
                None => return None,
            }
        }
    });
    let body = http_body_util::StreamBody::new(futures::StreamExt::map(events, |event| {
        Ok::<_, Infallible>(http_body::Frame::data(event))
    }));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(tonic::body::Body::new(body))
        .unwrap_or_default()
}

fn error_event(status: &tonic::Status) -> Vec<u8> {
    let json = serde_json::to_vec(&status::status_json(status)).unwrap_or_default();
    let mut event = b"event: error\ndata: ".to_vec();
    event.extend_from_slice(&json);
    event.extend_from_slice(b"\n\n");
    event
}
