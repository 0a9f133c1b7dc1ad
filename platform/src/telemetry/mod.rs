//! Logging through `tracing`: human-readable text for a terminal, JSON lines for
//! machines, filtered by `RUST_LOG`-style directives.

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
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Auto,
            log_filter: "info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn".to_owned(),
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
    /// Checks that the filter parses.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for `telemetry.log_filter`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        EnvFilter::try_new(&self.log_filter)
            .map(|_| ())
            .map_err(|err| ConfigError::invalid("telemetry.log_filter", err.to_string()))
    }
}

/// Installs the global `tracing` subscriber. Call once, before the first log line; a
/// second call leaves the first subscriber in place.
pub fn init(config: &TelemetryConfig) {
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.with_ansi(terminal).try_init()
    };
    // Already installed (tests start several services in one process): keep the first.
    drop(result);
}
