//! W3C trace context (`traceparent`, `tracestate`) and `baggage` across process and task
//! boundaries, through the global text-map propagator that [`super::init`] sets (W3C
//! TraceContext + Baggage; the SDK does not read `OTEL_PROPAGATORS`).
//!
//! Every function here is a branch and nothing more while tracing is off
//! ([`tracing_enabled`] is false): no header is read or written, no context captured.
//!
//! Trust: a server continues the caller's trace — parent, sampled flag, `tracestate` and
//! `baggage` — only for a Trellis service ([`set_parent_from_headers`]); anyone else's
//! context becomes a span link on a new root ([`link_from_headers`]), so an anonymous
//! caller can neither force (or suppress) sampling, nor graft our spans onto a trace of
//! its choosing, nor plant baggage that our services would carry to their peers.
//! [`crate::server::trace`] makes that decision.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator as _,
};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OpenTelemetry layer is installed).
pub fn tracing_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Marks tracing on and sets the global propagator: W3C TraceContext and Baggage.
pub(super) fn enable() {
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    ENABLED.store(true, Ordering::Relaxed);
}

/// Turns propagation on without installing anything else, for tests that install their
/// own OpenTelemetry layer on a thread-local subscriber.
#[cfg(test)]
pub(crate) fn enable_for_tests() {
    enable();
}

/// Reads propagation fields from HTTP headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes propagation fields into HTTP headers.
struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Makes `span` a child of the trace context in `headers` (`traceparent`, `tracestate`,
/// `baggage`) when they carry a valid one; call before `span` is first entered. Does
/// nothing while tracing is off.
pub fn set_parent_from_headers(span: &Span, headers: &http::HeaderMap) {
    if !tracing_enabled() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    set_parent(span, parent);
}

/// Writes `span`'s trace context into `headers` (`traceparent`, and `tracestate` and
/// `baggage` when there are any). Does nothing while tracing is off.
pub fn inject_into_headers(span: &Span, headers: &mut http::HeaderMap) {
    if !tracing_enabled() {
        return;
    }
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// Starts `span` as the root of a new trace with a link to the caller's span context in
/// `headers` (`traceparent`, `tracestate`), when valid: the W3C Trace Context spec's
/// answer to an untrusted caller (§ "Privacy considerations", "Security
/// considerations": restart the trace). The caller's sampled flag is not used (our own
/// sampler decides, as for a trace that starts here) and its `baggage` is not read, so
/// it goes no further. Call before `span` is first entered; nothing while tracing is
/// off.
pub fn link_from_headers(span: &Span, headers: &http::HeaderMap) {
    if !tracing_enabled() {
        return;
    }
    let caller = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let caller = caller.span().span_context().clone();
    if caller.is_valid() {
        span.add_link(caller);
    }
}

fn set_parent(span: &Span, parent: opentelemetry::Context) {
    if parent.span().span_context().is_valid()
        && let Err(err) = span.set_parent(parent)
    {
        tracing::debug!(error = %err, "cannot set a span's remote parent");
    }
}

/// A span's trace context, detached from the span: the propagation fields (`traceparent`,
/// `tracestate`, `baggage`) it would send. Carry it where a header cannot go — a database
/// row (the outbox), an in-process channel — and continue the trace from it later with
/// [`TraceContext::set_parent_of`]. Empty (and free) while tracing is off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    fields: HashMap<String, String>,
}

impl TraceContext {
    /// The context of the current span; empty when tracing is off or there is none.
    pub fn current() -> Self {
        Self::of(&Span::current())
    }

    /// The context of `span`; empty when tracing is off or `span` has none.
    pub fn of(span: &Span) -> Self {
        let mut fields = HashMap::new();
        if tracing_enabled() {
            let context = span.context();
            if context.span().span_context().is_valid() {
                opentelemetry::global::get_text_map_propagator(|propagator| {
                    propagator.inject_context(&context, &mut fields);
                });
            }
        }
        Self { fields }
    }

    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The propagation fields, e.g. `("traceparent", "00-…-…-01")`.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The stored form: a JSON object of the propagation fields, e.g.
    /// `{"traceparent":"00-4bf9…-00f0…-01"}`; `None` when empty.
    pub fn encode(&self) -> Option<String> {
        if self.fields.is_empty() {
            return None;
        }
        serde_json::to_string(&self.fields).ok()
    }

    /// Reads [`Self::encode`]'s form; anything else (or tracing off) gives an empty
    /// context, since a lost trace link must not fail the work it describes.
    pub fn decode(stored: &str) -> Self {
        if !tracing_enabled() {
            return Self::default();
        }
        Self {
            fields: serde_json::from_str(stored).unwrap_or_default(),
        }
    }

    /// Makes `span` a child of this context (before `span` is first entered). Does
    /// nothing when the context is empty or tracing is off.
    pub fn set_parent_of(&self, span: &Span) {
        if self.fields.is_empty() || !tracing_enabled() {
            return;
        }
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&self.fields)
        });
        set_parent(span, parent);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Runs `f` with an OpenTelemetry layer over a provider without exporter, on this
    /// thread only.
    fn with_otel<T>(f: impl FnOnce() -> T) -> T {
        enable_for_tests();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    fn trace_id(span: &Span) -> String {
        span.context().span().span_context().trace_id().to_string()
    }

    #[test]
    fn an_incoming_traceparent_becomes_the_spans_parent() {
        with_otel(|| {
            let mut headers = http::HeaderMap::new();
            headers.insert("traceparent", http::HeaderValue::from_static(PARENT));
            let span = tracing::info_span!("rpc");
            set_parent_from_headers(&span, &headers);
            assert_eq!(trace_id(&span), TRACE_ID);

            // No or a malformed header: a new trace.
            let fresh = tracing::info_span!("rpc");
            headers.insert("traceparent", http::HeaderValue::from_static("00-zz"));
            set_parent_from_headers(&fresh, &headers);
            assert_ne!(trace_id(&fresh), TRACE_ID);
        });
    }

    #[test]
    fn an_untrusted_context_is_only_a_link_and_its_baggage_goes_no_further() {
        with_otel(|| {
            let mut headers = http::HeaderMap::new();
            headers.insert("traceparent", http::HeaderValue::from_static(PARENT));
            headers.insert("baggage", http::HeaderValue::from_static("tenant=evil"));
            let span = tracing::info_span!("rpc");
            link_from_headers(&span, &headers);
            assert_ne!(trace_id(&span), TRACE_ID, "a new trace");
            let mut sent = http::HeaderMap::new();
            inject_into_headers(&span, &mut sent);
            assert!(sent.get("baggage").is_none(), "{sent:?}");

            // A trusted caller's baggage is carried on.
            let trusted = tracing::info_span!("rpc");
            set_parent_from_headers(&trusted, &headers);
            let mut sent = http::HeaderMap::new();
            inject_into_headers(&trusted, &mut sent);
            assert_eq!(
                sent.get("baggage").and_then(|v| v.to_str().ok()),
                Some("tenant=evil")
            );
        });
    }

    #[test]
    fn injection_writes_the_spans_own_valid_traceparent() {
        with_otel(|| {
            let span = tracing::info_span!("client");
            let mut headers = http::HeaderMap::new();
            inject_into_headers(&span, &mut headers);
            let sent = headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let parts: Vec<&str> = sent.split('-').collect();
            let span_context = span.context().span().span_context().clone();
            assert_eq!(parts.len(), 4, "{sent}");
            assert_eq!(parts[0], "00");
            assert_eq!(parts[1], span_context.trace_id().to_string());
            assert_eq!(parts[2], span_context.span_id().to_string());
            assert_eq!(parts[3], "01", "sampled");
        });
    }

    #[test]
    fn a_detached_context_survives_encoding_and_parents_a_later_span() {
        with_otel(|| {
            let origin = tracing::info_span!("enqueue");
            let stored = TraceContext::of(&origin).encode();
            assert!(stored.as_deref().is_some_and(|s| s.contains("traceparent")));
            let later = tracing::info_span!("deliver");
            TraceContext::decode(stored.as_deref().unwrap_or_default()).set_parent_of(&later);
            assert_eq!(trace_id(&later), trace_id(&origin));
            // Garbage in a row is no parent, and no failure.
            assert!(TraceContext::decode("not json").is_empty());
        });
    }
}
