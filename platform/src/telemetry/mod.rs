//! Telemetry: logs through `tracing` (human-readable text for a terminal, JSON lines for
//! machines, filtered by `RUST_LOG`-style directives) and OpenTelemetry traces exported
//! over OTLP/gRPC when a collector is configured ([`otel`] says which settings apply).
//!
//! [`init`] installs both and returns a [`TelemetryGuard`]; the runtime flushes and shuts
//! the tracer provider down through it at shutdown, off the async workers. With tracing
//! on, spans follow OpenTelemetry's RPC conventions ([`rpc`]), the W3C trace context
//! crosses every hop ([`propagation`]), and log lines carry the trace and span ids
//! ([`logs`]).

pub mod logs;
pub mod otel;
pub mod propagation;
pub mod rpc;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use otel::OtelSettings;
pub use propagation::{TraceContext, tracing_enabled};

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::config::ConfigError;

/// The `telemetry` section of a service's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `text`, `json`, or `auto` (text when standard error is a terminal, JSON
    /// otherwise). Default `auto`.
    pub log_format: LogFormat,
    /// `RUST_LOG`-style directives, e.g. `info,sqlx=warn`. The `RUST_LOG` variable, when
    /// set, takes precedence. Default `info,sqlx=warn,sea_orm=warn`.
    pub log_filter: String,
    /// The OTLP/gRPC collector traces go to, e.g. `http://otel-collector:4317`; unset
    /// (the default) leaves tracing off. `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` wins when set.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of exported spans; default the service's own name (e.g.
    /// `user`). `OTEL_SERVICE_NAME` wins when set.
    pub service_name: Option<String>,
    /// Further resource attributes, `key=value,key=value` (values percent-encoded), e.g.
    /// `deployment.environment=prod`. `OTEL_RESOURCE_ATTRIBUTES` wins when set.
    pub resource_attributes: Option<String>,
    /// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on` (default),
    /// `parentbased_always_off` or `parentbased_traceidratio`. `OTEL_TRACES_SAMPLER` wins
    /// when set.
    pub traces_sampler: Option<String>,
    /// The ratio (0 to 1) of the `*traceidratio` samplers; default 1.
    /// `OTEL_TRACES_SAMPLER_ARG` wins when set.
    pub traces_sampler_arg: Option<f64>,
    /// Turns tracing off even with an endpoint. Default false. `OTEL_SDK_DISABLED` wins
    /// when set.
    pub sdk_disabled: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Auto,
            log_filter: "info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn".to_owned(),
            otlp_endpoint: None,
            service_name: None,
            resource_attributes: None,
            traces_sampler: None,
            traces_sampler_arg: None,
            sdk_disabled: false,
        }
    }
}

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// One human-readable line per event, with the spans it happened in.
    Text,
    /// One JSON object per line, with the current span's fields.
    Json,
}

impl TelemetryConfig {
    /// Checks that the filter parses and the trace settings — these keys and the standard
    /// `OTEL_*` variables, which win over them — are valid ([`OtelSettings::resolve`]).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for `telemetry.log_filter`, or naming the key or variable
    /// holding a bad trace setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        EnvFilter::try_new(&self.log_filter)
            .map_err(|err| ConfigError::invalid("telemetry.log_filter", err.to_string()))?;
        OtelSettings::resolve(self, "service", &|name| std::env::var(name).ok()).map(drop)
    }
}

/// Log lines that may wait for the log writer's thread; past it new lines are dropped.
/// Its queue is allocated up front (some 32 bytes a line), so this is also its memory.
pub const LOG_LINES_QUEUED: usize = 16_384;

/// A writer of log lines into `out` from a thread of its own, lossy past
/// [`LOG_LINES_QUEUED`] waiting lines, and the guard that writes what waits when dropped.
fn log_writer<W: std::io::Write + Send + 'static>(
    out: W,
) -> (
    tracing_appender::non_blocking::NonBlocking,
    tracing_appender::non_blocking::WorkerGuard,
) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_LINES_QUEUED)
        .thread_name("trellis-log")
        .finish(out)
}

/// What [`init`] installed; [`TelemetryGuard::shutdown`] flushes the spans still queued.
#[derive(Debug, Default)]
#[must_use = "shut the guard down at exit, or queued spans are lost"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    /// The log writer's thread: dropping it writes the lines still queued.
    log_writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl TelemetryGuard {
    /// Whether spans are exported.
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans queued so far, waiting for the export. Blocking: call it off
    /// the async runtime's workers (e.g. in `spawn_blocking`), since the export itself
    /// runs on the runtime and a blocked worker can stall it.
    ///
    /// # Errors
    /// The SDK's error (e.g. the collector did not answer in time).
    pub fn flush(&self) -> Result<(), opentelemetry_sdk::error::OTelSdkError> {
        self.provider
            .as_ref()
            .map_or(Ok(()), SdkTracerProvider::force_flush)
    }

    /// Flushes and shuts the tracer provider down, waiting at most `timeout` (the
    /// server's drain bound). Blocking, like [`Self::flush`]: call it off the runtime's
    /// workers while the runtime still runs (the runtime does this after serving).
    pub fn shutdown(self, timeout: Duration) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown_with_timeout(timeout)
        {
            tracing::warn!(error = %err, "trace export did not finish at shutdown");
        }
        // Last: the warning above is written too.
        drop(self.log_writer);
    }
}

/// The subscriber: log lines (`json` or text, with ANSI colours when `ansi`) filtered by
/// `filter` into `writer`, and, with a `provider`, the OpenTelemetry layer and the trace
/// ids of log lines.
fn subscriber<W>(
    json: bool,
    ansi: bool,
    filter: EnvFilter,
    provider: Option<&SdkTracerProvider>,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    // Spans are exported by their own filter, not the log filter: turning logs down to
    // `warn` must not end tracing. Every layer has a filter (one that enables nothing
    // while tracing is off): a layer without one would make every callsite, down to
    // TRACE in hyper and h2, be evaluated for it.
    let export_filter = if provider.is_some() {
        span_filter()
    } else {
        tracing_subscriber::filter::Targets::new()
    };
    let otel_layer = provider
        .map(|provider| {
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("trellis"))
                .with_threads(false)
        })
        .with_filter(export_filter.clone());
    let ids_layer = logs::TraceIdsLayer::new(provider.is_some()).with_filter(export_filter);
    let output = if json {
        let mut layer = json_subscriber::layer()
            .with_writer(writer)
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false);
        let inner = layer.inner_layer_mut();
        inner.add_from_extension_ref::<logs::TraceIds, _, _>("trace_id", |ids| Some(&ids.trace_id));
        inner.add_from_extension_ref::<logs::TraceIds, _, _>("span_id", |ids| Some(&ids.span_id));
        layer.boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .event_format(logs::ShortTraceId(tracing_subscriber::fmt::format()))
            .boxed()
    };
    tracing_subscriber::registry()
        .with(otel_layer)
        .with(ids_layer)
        .with(output.with_filter(filter))
}

/// What becomes an exported span (or span event): INFO and above, but the database
/// crates' chatter only from WARN (as the default log filter). Health checks are DEBUG
/// spans, so they are never exported.
fn span_filter() -> tracing_subscriber::filter::Targets {
    use tracing::level_filters::LevelFilter;
    tracing_subscriber::filter::Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("sqlx", LevelFilter::WARN)
        .with_target("sea_orm", LevelFilter::WARN)
        .with_target("sea_orm_migration", LevelFilter::WARN)
}

/// Installs the global `tracing` subscriber and, when a collector is configured, the
/// OpenTelemetry layer exporting spans as `default_service_name` at `service_version`.
/// Call once, inside the tokio runtime that will serve (the exporter runs on it), before
/// the first log line; a second call leaves the first subscriber in place and exports
/// nothing.
pub fn init(
    config: &TelemetryConfig,
    default_service_name: &str,
    service_version: &str,
) -> TelemetryGuard {
    use std::io::IsTerminal as _;

    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(&config.log_filter));
    let terminal = std::io::stderr().is_terminal();
    let json = match config.log_format {
        LogFormat::Auto => !terminal,
        LogFormat::Text => false,
        LogFormat::Json => true,
    };
    // Validated at load; a failure here (a variable changed since) leaves tracing off.
    let (provider, otel_error) =
        match OtelSettings::resolve(config, default_service_name, &|name| {
            std::env::var(name).ok()
        }) {
            Ok(Some(settings)) => match settings.build_provider(service_version) {
                Ok(provider) => (Some(provider), None),
                Err(err) => (None, Some(err.to_string())),
            },
            Ok(None) => (None, None),
            Err(err) => (None, Some(err.to_string())),
        };
    // Lines are formatted on the calling thread and written to stderr by a thread of
    // their own: a worker never waits for a write or a slow reader of the pipe, and past
    // LOG_LINES_QUEUED lines waiting (a flood, a stalled reader) new lines are dropped,
    // not queued.
    let (writer, log_writer) = log_writer(std::io::stderr());
    let installed = subscriber(json, terminal, filter, provider.as_ref(), writer)
        .try_init()
        .is_ok();
    let log_writer = installed.then_some(log_writer);
    if let Some(error) = otel_error {
        tracing::error!(%error, "trace export is off");
    }
    match provider {
        Some(provider) if installed => {
            propagation::enable();
            opentelemetry::global::set_tracer_provider(provider.clone());
            TelemetryGuard {
                provider: Some(provider),
                log_writer,
            }
        }
        // Already installed (tests start several services in one process): keep the
        // first, and export nothing from here.
        Some(provider) => {
            drop(provider.shutdown());
            TelemetryGuard::default()
        }
        None => TelemetryGuard {
            provider: None,
            log_writer,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// Standard error that stopped being read: every write waits until the test ends.
    struct Stalled(std::sync::mpsc::Receiver<()>);

    impl std::io::Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            // Blocks until the sender is dropped (the test is over).
            let _ = self.0.recv();
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_log_reader_never_blocks_the_thread_that_logs() {
        let (release, stalled) = std::sync::mpsc::channel();
        let (writer, guard) = log_writer(Stalled(stalled));
        let subscriber = subscriber(true, false, EnvFilter::new("info"), None, writer);
        // More lines than may wait: with a writer that blocked, this would never end.
        tracing::subscriber::with_default(subscriber, || {
            for line in 0..(LOG_LINES_QUEUED * 2) {
                tracing::info!(line, "a line nobody reads");
            }
        });
        drop(release);
        drop(guard);
    }

    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::*;

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut out) = self.0.lock() {
                out.extend_from_slice(buf);
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines logged by `f` under the subscriber [`init`] would install, with tracing
    /// on (`traced`) or off, and the ids of the span they were logged in.
    fn logged(json: bool, traced: bool) -> (String, String, String) {
        propagation::enable_for_tests();
        let provider = SdkTracerProvider::builder().build();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = subscriber(
            json,
            false,
            EnvFilter::new("info"),
            traced.then_some(&provider),
            move || writer.clone(),
        );
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("rpc", request_id = "req-1");
            let _entered = span.enter();
            tracing::info!("rpc finished");
            let context = span.context();
            let span_context = context.span().span_context().clone();
            (
                span_context.trace_id().to_string(),
                span_context.span_id().to_string(),
            )
        });
        let out = captured.0.lock().map(|o| o.clone()).unwrap_or_default();
        (
            String::from_utf8_lossy(&out).into_owned(),
            trace_id,
            span_id,
        )
    }

    #[test]
    fn json_lines_carry_the_trace_and_span_id_and_the_request_id() {
        let (out, trace_id, span_id) = logged(true, true);
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
        assert_eq!(line["trace_id"].as_str(), Some(trace_id.as_str()), "{out}");
        assert_eq!(line["span_id"].as_str(), Some(span_id.as_str()), "{out}");
        assert_eq!(trace_id.len(), 32);
        assert_eq!(span_id.len(), 16);
        assert_eq!(line["span"]["request_id"].as_str(), Some("req-1"), "{out}");
        assert_eq!(line["message"].as_str(), Some("rpc finished"), "{out}");

        // Tracing off: no ids at all.
        let (out, _, _) = logged(true, false);
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
        assert!(
            line.get("trace_id").is_none() && line.get("span_id").is_none(),
            "{out}"
        );
        assert_eq!(line["span"]["request_id"].as_str(), Some("req-1"), "{out}");
    }

    #[test]
    fn events_below_the_log_filter_are_not_even_evaluated() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static EVALUATED: AtomicUsize = AtomicUsize::new(0);
        fn evaluated() -> usize {
            EVALUATED.fetch_add(1, Ordering::Relaxed)
        }
        let provider = SdkTracerProvider::builder().build();
        for traced in [false, true] {
            let subscriber = subscriber(
                false,
                false,
                EnvFilter::new("info"),
                traced.then_some(&provider),
                std::io::sink,
            );
            tracing::subscriber::with_default(subscriber, || {
                tracing::debug!(n = evaluated(), "below the filter");
                let _span = tracing::debug_span!("health", n = evaluated()).entered();
            });
        }
        assert_eq!(EVALUATED.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn text_lines_start_with_a_short_trace_id() {
        let (out, trace_id, _) = logged(false, true);
        assert!(
            out.starts_with(&format!("trace={} ", &trace_id[..8])),
            "{out}"
        );
        let (out, _, _) = logged(false, false);
        assert!(!out.contains("trace="), "{out}");
    }
}
