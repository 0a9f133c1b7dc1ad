//! Trace ids in log lines: a layer that notes each span's OpenTelemetry trace and span id
//! (W3C lower-hex: 32 and 16 digits) when it is first entered, read by the JSON output as
//! `trace_id`/`span_id` and by the text output as a short `trace=<first 8 digits>`
//! prefix. Active only while tracing is on; otherwise lines carry no ids.

use std::fmt;
use std::sync::OnceLock;

use opentelemetry::trace::TraceContextExt as _;
use tracing::dispatcher::WeakDispatch;
use tracing::span::Id;
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// A span's OpenTelemetry ids, kept in its extensions.
#[derive(Debug, Clone)]
pub struct TraceIds {
    /// 32 lower-hex digits.
    pub trace_id: String,
    /// 16 lower-hex digits.
    pub span_id: String,
}

/// Notes [`TraceIds`] on every span when first entered (after its remote parent is set).
/// Put it after the OpenTelemetry layer. Always installed, not as an `Option` (which does
/// not pass the dispatch on to the layer in tracing-subscriber 0.3.23); inactive it costs
/// one branch per span entered.
#[derive(Debug, Default)]
pub struct TraceIdsLayer {
    dispatch: OnceLock<WeakDispatch>,
    active: bool,
}

impl TraceIdsLayer {
    /// The layer, noting ids when `active` (tracing is on).
    pub fn new(active: bool) -> Self {
        Self {
            dispatch: OnceLock::new(),
            active,
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for TraceIdsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        drop(self.dispatch.set(subscriber.downgrade()));
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if !self.active {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        if span.extensions().get::<TraceIds>().is_some() {
            return;
        }
        let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) else {
            return;
        };
        // No extension lock may be held here: this locks the span's own.
        let Some(context) = tracing_opentelemetry::get_otel_context(id, &dispatch) else {
            return;
        };
        let span_context = context.span().span_context().clone();
        if !span_context.is_valid() {
            return;
        }
        span.extensions_mut().insert(TraceIds {
            trace_id: span_context.trace_id().to_string(),
            span_id: span_context.span_id().to_string(),
        });
    }
}

/// The text format with `trace=<first 8 hex digits of the trace id> ` before each line
/// that happened in a traced span.
#[derive(Debug)]
pub struct ShortTraceId<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for ShortTraceId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if let Some(span) = ctx.parent_span()
            && let Some(ids) = span.extensions().get::<TraceIds>()
        {
            write!(
                writer,
                "trace={} ",
                ids.trace_id.get(..8).unwrap_or_default()
            )?;
        }
        self.0.format_event(ctx, writer, event)
    }
}
