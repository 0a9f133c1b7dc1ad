//! One `tracing` span per RPC — `rpc{rpc.service rpc.method request_id}` — and one event
//! when it finishes, carrying the gRPC status code and the latency in ms.
//!
//! With tracing on, the span is also the call's OpenTelemetry server span
//! ([`crate::telemetry::rpc`]): named `package.Service/Method`, with `rpc.system`, the
//! local and peer addresses (the accept path's [`ConnectionInfo`]), the client certificate's
//! SPIFFE ID (`peer.identity`, under mutual TLS), and
//! `rpc.grpc.status_code` when the response ends. The span ends with the response body,
//! so a stream's span lasts as long as the stream.
//!
//! The code is read where the gRPC spec puts it: in the response headers of a
//! trailers-only response (most errors), otherwise in the trailers, so a streaming RPC is
//! logged when its stream ends, not when its headers are sent.
//!
//! # Names come from the method table, never from the path
//!
//! The service and method of the span, its log lines and its OpenTelemetry name are those
//! of the [`KnownMethod`] the metrics layer (outermost) put into the request after finding
//! the path in the server's method table. A path no descriptor names — `/no.Such/Method`,
//! random bytes — is called `unknown` everywhere (span fields, span name, metric labels),
//! so a caller cannot mint label values or log fields; its span and its outcome
//! (UNIMPLEMENTED) are logged at DEBUG under the target [`UNKNOWN_METHOD_TARGET`], so a
//! flood of made-up paths does not flood the logs.
//!
//! # Whose trace context is continued
//!
//! The span continues the caller's W3C trace context (a child of its `traceparent`, its
//! sampled flag and `baggage` carried on) only when the caller is a Trellis service — its
//! bearer token verifies as a service token. Any other caller's context becomes a span
//! link on a new root, its sampled flag ignored and its baggage dropped
//! ([`propagation::link_from_headers`]).
//!
//! The decision must be made before the span is first entered (an OpenTelemetry span's
//! parent is fixed when it starts), and this layer runs before authentication. So it is
//! made by [`TrustLayer`], just outside the span: for a request that carries trace context
//! *and* a bearer token, it asks the service's [`CallerTrust`] — the same
//! [`crate::auth::TokenVerifier`] the authentication layer uses, whose verified-token cache
//! then answers that layer at no further cost — and marks the request; the span reads the
//! mark. A request without trace context or without a token is decided at once (nothing
//! to continue, or nobody to trust). A server with no token verifier (every method
//! public) trusts nobody.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use tower::{Layer, Service};
use tower_http::classify::{GrpcErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, OnEos, OnResponse, TraceLayer};
use tracing::Span;

use super::connection::ConnectionInfo;

use crate::context::REQUEST_ID_HEADER;
use crate::metrics::grpc::{KnownMethod, UNKNOWN};
use crate::telemetry::{self, propagation, rpc};

/// The target of the span and log lines of calls to unknown methods (DEBUG), e.g. to turn
/// them on with `RUST_LOG=info,trellis_platform::server::unknown_method=debug`.
pub const UNKNOWN_METHOD_TARGET: &str = "trellis_platform::server::unknown_method";

/// The tower-http tracing layer inside [`RpcTraceLayer`].
pub type RpcSpanLayer = TraceLayer<
    SharedClassifier<GrpcErrorsAsFailures>,
    MakeRpcSpan,
    (),
    RecordResponse,
    (),
    RecordEos,
    (),
>;

/// The tracing layer the server installs: the trust decision ([`TrustLayer`]) around the
/// per-RPC span ([`RpcSpanLayer`]).
pub type RpcTraceLayer = tower::layer::util::Stack<RpcSpanLayer, TrustLayer>;

/// Builds the layer, trusting no caller's trace context (every caller's context becomes
/// a link).
pub fn layer() -> RpcTraceLayer {
    layer_trusting(CallerTrust::nobody())
}

/// Builds the layer, continuing the trace context of the callers `trust` vouches for.
pub fn layer_trusting(trust: CallerTrust) -> RpcTraceLayer {
    let spans = TraceLayer::new_for_grpc()
        .make_span_with(MakeRpcSpan)
        .on_request(())
        .on_response(RecordResponse)
        .on_body_chunk(())
        .on_eos(RecordEos)
        .on_failure(());
    tower::layer::util::Stack::new(spans, TrustLayer { trust })
}

type TrustFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Maps a bearer token to whether its holder is trusted.
type TrustCheck = dyn Fn(&str) -> TrustFuture + Send + Sync;

/// Whether a caller may continue its own trace here: given the caller's bearer token,
/// resolves to `true` for a Trellis service. Cheap to clone; the default trusts nobody.
#[derive(Clone, Default)]
pub struct CallerTrust(Option<Arc<TrustCheck>>);

impl std::fmt::Debug for CallerTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CallerTrust")
            .field(&if self.0.is_some() { "tokens" } else { "nobody" })
            .finish()
    }
}

impl CallerTrust {
    /// Trusts nobody: every caller's trace context becomes a link.
    pub fn nobody() -> Self {
        Self(None)
    }

    /// Trusts the callers whose bearer token `check` resolves `true` for (see
    /// [`crate::auth::AuthLayer::caller_trust`]).
    pub fn new<F, Fut>(check: F) -> Self
    where
        F: Fn(&str) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        Self(Some(Arc::new(move |token| Box::pin(check(token)))))
    }
}

/// The mark [`TrustLayer`] puts on a request whose caller's trace context is continued.
#[derive(Debug, Clone, Copy)]
pub struct TrustedTraceContext;

/// Marks the requests whose caller's trace context the span continues (see the module
/// docs); strips `baggage` from the others.
#[derive(Debug, Clone)]
pub struct TrustLayer {
    trust: CallerTrust,
}

impl<S> Layer<S> for TrustLayer {
    type Service = TrustService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrustService {
            inner,
            trust: self.trust.clone(),
        }
    }
}

/// The service made by [`TrustLayer`].
#[derive(Debug, Clone)]
pub struct TrustService<S> {
    inner: S,
    trust: CallerTrust,
}

/// The bearer token of `headers`, if any (RFC 6750 §2.1).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

impl<S, B> Service<Request<B>> for TrustService<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrustFutureOr<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let headers = request.headers();
        let carries_context = ["traceparent", "tracestate", "baggage"]
            .iter()
            .any(|name| headers.contains_key(*name));
        if !telemetry::tracing_enabled() || !carries_context {
            return TrustFutureOr::now(self.inner.call(request));
        }
        let check = match (&self.trust.0, bearer_token(headers)) {
            (Some(check), Some(token)) => check(token),
            _ => {
                request.headers_mut().remove("baggage");
                return TrustFutureOr::now(self.inner.call(request));
            }
        };
        // Take the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        TrustFutureOr::later(Box::pin(async move {
            if check.await {
                request.extensions_mut().insert(TrustedTraceContext);
            } else {
                request.headers_mut().remove("baggage");
            }
            inner.call(request).await
        }))
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`TrustService`]: the inner call at once when nothing had to
    /// be verified, else after the verification.
    pub struct TrustFutureOr<F, R, E> {
        #[pin]
        state: TrustState<F, R, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = TrustStateProj]
    enum TrustState<F, R, E> {
        Now {
            #[pin]
            inner: F,
        },
        Later {
            future: Pin<Box<dyn Future<Output = Result<R, E>> + Send>>,
        },
    }
}

impl<F, R, E> TrustFutureOr<F, R, E> {
    fn now(inner: F) -> Self {
        Self {
            state: TrustState::Now { inner },
        }
    }

    fn later(future: Pin<Box<dyn Future<Output = Result<R, E>> + Send>>) -> Self {
        Self {
            state: TrustState::Later { future },
        }
    }
}

impl<F, R, E> Future for TrustFutureOr<F, R, E>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = Result<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            TrustStateProj::Now { inner } => inner.poll(cx),
            TrustStateProj::Later { future } => future.as_mut().poll(cx),
        }
    }
}

/// Makes the per-RPC span from the request's [`KnownMethod`] (or `unknown`).
#[derive(Debug, Clone, Copy)]
pub struct MakeRpcSpan;

impl<B> MakeSpan<B> for MakeRpcSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let known = request.extensions().get::<KnownMethod>();
        let request_id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        // One callsite per level (a span's level is static).
        macro_rules! rpc_span {
            ($level:expr, $service:expr, $method:expr) => {
                tracing::span!(
                    $level,
                    "rpc",
                    rpc.service = %$service,
                    rpc.method = %$method,
                    request_id = %request_id,
                    otel.name = tracing::field::Empty,
                    otel.kind = tracing::field::Empty,
                    peer.identity = tracing::field::Empty,
                    rpc.transport = tracing::field::Empty,
                )
            };
        }
        let span = match known {
            // Health checks arrive every few seconds from orchestrators: keep them at
            // DEBUG.
            Some(known) if known.service() == "grpc.health.v1.Health" => {
                rpc_span!(tracing::Level::DEBUG, known.service(), known.method())
            }
            Some(known) => rpc_span!(tracing::Level::INFO, known.service(), known.method()),
            None => tracing::span!(
                target: UNKNOWN_METHOD_TARGET,
                tracing::Level::DEBUG,
                "rpc",
                rpc.service = %UNKNOWN,
                rpc.method = %UNKNOWN,
                request_id = %request_id,
                otel.name = tracing::field::Empty,
                otel.kind = tracing::field::Empty,
                peer.identity = tracing::field::Empty,
                rpc.transport = tracing::field::Empty,
            ),
        };
        // A call that arrived as HTTP/JSON or gRPC-Web says so ([`crate::http_json`],
        // [`super::grpc_web`]); gRPC is the default and is not recorded.
        let extensions = request.extensions();
        if extensions.get::<crate::http_json::Transcoded>().is_some() {
            span.record("rpc.transport", "http_json");
        } else if extensions.get::<super::grpc_web::GrpcWeb>().is_some() {
            span.record("rpc.transport", "grpc_web");
        }
        let connection = ConnectionInfo::of(request.extensions());
        if let Some(identity) = connection
            .and_then(|info| info.peer_certificate.as_deref())
            .and_then(|certificate| certificate.spiffe_id.as_ref())
        {
            span.record("peer.identity", tracing::field::display(identity));
        }
        if telemetry::tracing_enabled() && !span.is_disabled() {
            match known {
                Some(known) => {
                    span.record(
                        "otel.name",
                        format!("{}/{}", known.service(), known.method()),
                    );
                }
                None => {
                    span.record("otel.name", UNKNOWN);
                }
            }
            span.record("otel.kind", "server");
            rpc::record_server_attributes(
                &span,
                connection.and_then(ConnectionInfo::local_addr),
                connection.and_then(ConnectionInfo::remote_addr),
            );
            if request.extensions().get::<TrustedTraceContext>().is_some() {
                propagation::set_parent_from_headers(&span, request.headers());
            } else {
                propagation::link_from_headers(&span, request.headers());
            }
        }
        span
    }
}

/// Logs a trailers-only response (its status is in the headers).
#[derive(Debug, Clone, Copy)]
pub struct RecordResponse;

impl<B> OnResponse<B> for RecordResponse {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        if response.headers().contains_key("grpc-status") {
            finished(Some(response.headers()), latency, span);
        }
    }
}

/// Logs a response whose status arrives in the trailers.
#[derive(Debug, Clone, Copy)]
pub struct RecordEos;

impl OnEos for RecordEos {
    fn on_eos(self, trailers: Option<&HeaderMap>, stream_duration: Duration, span: &Span) {
        finished(trailers, stream_duration, span);
    }
}

fn finished(headers: Option<&HeaderMap>, latency: Duration, span: &Span) {
    let code = rpc::status_code(headers);
    let message = headers
        .and_then(|h| h.get("grpc-message"))
        .and_then(|v| v.to_str().ok());
    rpc::record_status(span, rpc::Side::Server, code, message);
    // Microsecond precision is plenty; it keeps log lines short.
    let latency_ms = (latency.as_micros() as f64) / 1e3;
    let metadata = span.metadata();
    let _entered = span.enter();
    // An unknown method's outcome is DEBUG, whatever it is: scanners must not fill logs.
    if metadata.is_some_and(|m| m.target() == UNKNOWN_METHOD_TARGET) {
        tracing::event!(
            target: UNKNOWN_METHOD_TARGET,
            tracing::Level::DEBUG,
            grpc.code = ?code,
            latency_ms,
            "rpc finished"
        );
        return;
    }
    // A DEBUG (or disabled) span is a health check: its outcome is DEBUG too.
    let quiet = metadata.is_none_or(|m| *m.level() == tracing::Level::DEBUG);
    match code {
        tonic::Code::Ok if quiet => tracing::debug!(grpc.code = ?code, latency_ms, "rpc finished"),
        tonic::Code::Unknown
        | tonic::Code::Internal
        | tonic::Code::DataLoss
        | tonic::Code::Unimplemented => {
            tracing::warn!(grpc.code = ?code, latency_ms, "rpc finished");
        }
        _ => tracing::info!(grpc.code = ?code, latency_ms, "rpc finished"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt as _};
    use tracing_subscriber::registry::LookupSpan;

    use super::*;
    use crate::metrics::grpc::{MethodInfo, RpcType};

    const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// What a test saw: each span's (name, level, fields) and each event's (level,
    /// target).
    #[derive(Clone, Default)]
    struct Seen {
        spans: Arc<Mutex<Vec<(tracing::Level, String)>>>,
        events: Arc<Mutex<Vec<(tracing::Level, String)>>>,
    }

    struct Fields(String);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }

    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Seen {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: LayerContext<'_, S>,
        ) {
            let mut fields = Fields(String::new());
            attrs.record(&mut fields);
            self.spans
                .lock()
                .unwrap()
                .push((*attrs.metadata().level(), fields.0));
        }

        fn on_event(&self, event: &tracing::Event<'_>, _: LayerContext<'_, S>) {
            let meta = event.metadata();
            self.events
                .lock()
                .unwrap()
                .push((*meta.level(), meta.target().to_owned()));
        }
    }

    fn request(path: &str, known: Option<KnownMethod>) -> Request<()> {
        let mut request = Request::builder().uri(path).body(()).unwrap();
        if let Some(known) = known {
            request.extensions_mut().insert(known);
        }
        request
    }

    fn say_hello() -> KnownMethod {
        KnownMethod::new(MethodInfo {
            rpc_type: RpcType::Unary,
            service: "test.v1.Greeter".to_owned(),
            method: "SayHello".to_owned(),
        })
    }

    fn trailers(code: tonic::Code) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", (code as i32).into());
        headers
    }

    #[test]
    fn an_unknown_path_is_named_unknown_and_its_outcome_logged_at_debug() {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            for path in ["/no.Such/Method", "/%2e%2e/\u{1b}[31mrandom;rm -rf", "/x"] {
                let Ok(uri) = path.parse::<http::Uri>() else {
                    continue;
                };
                let span = MakeRpcSpan.make_span(&request(&uri.to_string(), None));
                finished(
                    Some(&trailers(tonic::Code::Unimplemented)),
                    Duration::ZERO,
                    &span,
                );
            }
        });
        let spans = seen.spans.lock().unwrap();
        assert!(!spans.is_empty());
        for (level, fields) in spans.iter() {
            assert_eq!(*level, tracing::Level::DEBUG, "{fields}");
            assert!(
                fields.contains("rpc.service=unknown rpc.method=unknown"),
                "{fields}"
            );
            assert!(
                !fields.contains("Such") && !fields.contains("random"),
                "{fields}"
            );
        }
        let events = seen.events.lock().unwrap();
        assert_eq!(events.len(), spans.len());
        for (level, target) in events.iter() {
            assert_eq!(*level, tracing::Level::DEBUG);
            assert_eq!(target, UNKNOWN_METHOD_TARGET);
        }
    }

    #[test]
    fn a_known_method_is_named_from_the_table_and_logged_as_before() {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            // The path says something else: the table's names win.
            let span =
                MakeRpcSpan.make_span(&request("/test.v1.Greeter/SayHello", Some(say_hello())));
            finished(
                Some(&trailers(tonic::Code::Internal)),
                Duration::ZERO,
                &span,
            );
        });
        let spans = seen.spans.lock().unwrap();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].0, tracing::Level::INFO);
        assert!(
            spans[0]
                .1
                .contains("rpc.service=test.v1.Greeter rpc.method=SayHello"),
            "{}",
            spans[0].1
        );
        assert_eq!(seen.events.lock().unwrap()[0].0, tracing::Level::WARN);
    }

    /// Keeps every span it is given.
    #[derive(Debug, Clone, Default)]
    struct Exported(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Exported {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    /// The server span made for a request carrying a caller's `traceparent` and
    /// `baggage`, marked trusted or not, as exported; and the baggage it would pass on.
    fn server_span(trusted: bool) -> (SpanData, Option<String>) {
        crate::telemetry::propagation::enable_for_tests();
        let exported = Exported::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exported.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let baggage = tracing::subscriber::with_default(subscriber, || {
            let mut request = request("/test.v1.Greeter/SayHello", Some(say_hello()));
            let headers = request.headers_mut();
            headers.insert("traceparent", http::HeaderValue::from_static(TRACEPARENT));
            headers.insert("baggage", http::HeaderValue::from_static("tenant=mallory"));
            if trusted {
                request.extensions_mut().insert(TrustedTraceContext);
            }
            let span = MakeRpcSpan.make_span(&request);
            let baggage = {
                let _entered = span.enter();
                let mut out = HeaderMap::new();
                propagation::inject_into_headers(&span, &mut out);
                out.get("baggage")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            drop(span);
            baggage
        });
        let mut spans = exported.0.lock().unwrap().clone();
        assert_eq!(spans.len(), 1, "one server span exported");
        (spans.remove(0), baggage)
    }

    #[test]
    fn an_untrusted_callers_context_is_a_link_on_a_new_root_without_its_baggage() {
        let (span, baggage) = server_span(false);
        assert_ne!(span.span_context.trace_id().to_string(), CALLER_TRACE);
        assert!(!span.parent_span_id.to_string().ends_with(CALLER_SPAN));
        let links: Vec<_> = span.links.iter().map(|l| l.span_context.clone()).collect();
        assert_eq!(links.len(), 1, "a link to the caller");
        assert_eq!(links[0].trace_id().to_string(), CALLER_TRACE);
        assert_eq!(links[0].span_id().to_string(), CALLER_SPAN);
        assert_eq!(baggage, None, "the caller's baggage goes no further");
    }

    #[test]
    fn a_trusted_callers_context_is_the_parent_with_its_baggage() {
        let (span, baggage) = server_span(true);
        assert_eq!(span.span_context.trace_id().to_string(), CALLER_TRACE);
        assert_eq!(span.parent_span_id.to_string(), CALLER_SPAN);
        assert!(span.links.is_empty());
        assert_eq!(baggage.as_deref(), Some("tenant=mallory"));
    }

    /// What the inner service saw: whether the request was marked trusted, and its
    /// `baggage`.
    async fn as_seen_inside(trust: CallerTrust, token: Option<&str>) -> (bool, bool) {
        crate::telemetry::propagation::enable_for_tests();
        let inner = tower::service_fn(|request: Request<()>| async move {
            Ok::<_, std::convert::Infallible>((
                request.extensions().get::<TrustedTraceContext>().is_some(),
                request.headers().contains_key("baggage"),
            ))
        });
        let mut service = TrustLayer { trust }.layer(inner);
        let mut request = request("/test.v1.Greeter/SayHello", None);
        let headers = request.headers_mut();
        headers.insert("traceparent", http::HeaderValue::from_static(TRACEPARENT));
        headers.insert("baggage", http::HeaderValue::from_static("tenant=mallory"));
        if let Some(token) = token {
            headers.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
        }
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .unwrap();
        service.call(request).await.unwrap()
    }

    #[tokio::test]
    async fn only_a_caller_the_trust_vouches_for_is_marked_and_keeps_its_baggage() {
        let trust = || CallerTrust::new(|token: &str| std::future::ready(token == "service"));
        assert_eq!(as_seen_inside(trust(), Some("service")).await, (true, true));
        assert_eq!(as_seen_inside(trust(), Some("user")).await, (false, false));
        assert_eq!(as_seen_inside(trust(), None).await, (false, false));
        assert_eq!(
            as_seen_inside(CallerTrust::nobody(), Some("service")).await,
            (false, false)
        );
    }
}
