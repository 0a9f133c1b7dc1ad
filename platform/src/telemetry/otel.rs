//! OpenTelemetry trace export: which settings apply (the standard `OTEL_*` variables over
//! the `telemetry.*` keys), their validation, and the tracer provider built from them.
//!
//! Precedence, per setting: the standard variable when it is set and not empty, else the
//! config key (file, then `TRELLIS_<SERVICE>__TELEMETRY__…`), else the default. The
//! OpenTelemetry specification has the SDK configured by its environment variables, and
//! operators' tooling (the Kubernetes operator, collectors' sidecars) sets exactly those;
//! the keys are for a config file. Settings the SDK would read itself are resolved here
//! and given to it explicitly, so what applies is what this module says.
//!
//! | setting | variable (wins) | key |
//! |---|---|---|
//! | endpoint | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then `OTEL_EXPORTER_OTLP_ENDPOINT` | `telemetry.otlp_endpoint` |
//! | `service.name` | `OTEL_SERVICE_NAME` | `telemetry.service_name` (then `service.name` in the resource attributes, then the service's own name) |
//! | resource attributes | `OTEL_RESOURCE_ATTRIBUTES` | `telemetry.resource_attributes` |
//! | sampler | `OTEL_TRACES_SAMPLER` | `telemetry.traces_sampler` |
//! | sampler argument | `OTEL_TRACES_SAMPLER_ARG` | `telemetry.traces_sampler_arg` |
//! | disabled | `OTEL_SDK_DISABLED` | `telemetry.sdk_disabled` |
//!
//! Tracing is off — no OpenTelemetry layer, no extraction or injection — when no endpoint
//! is set or the SDK is disabled.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};

use super::TelemetryConfig;
use crate::config::ConfigError;

/// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector's base URI for every signal.
pub const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the collector's URI for traces (wins over
/// [`ENV_ENDPOINT`]).
pub const ENV_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `OTEL_SERVICE_NAME`.
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value,key=value`, values percent-encoded.
pub const ENV_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// `OTEL_TRACES_SAMPLER`.
pub const ENV_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// `OTEL_TRACES_SAMPLER_ARG`.
pub const ENV_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
/// `OTEL_SDK_DISABLED`: `true` turns tracing off.
pub const ENV_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";

/// Spans kept for export at most; when the queue is full new spans are dropped (the SDK's
/// batch processor never blocks the caller).
const MAX_QUEUE_SIZE: usize = 2048;

/// The resolved trace export settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelSettings {
    /// The collector's OTLP/gRPC URI, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Further resource attributes, in the order given.
    pub resource_attributes: Vec<(String, String)>,
    /// The sampler.
    pub sampler: SamplerSetting,
}

/// The samplers of the OpenTelemetry specification's `OTEL_TRACES_SAMPLER` that the SDK
/// offers here (`jaeger_remote` and `xray` are not built in).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSetting {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio` with its ratio (0 to 1).
    TraceIdRatio(f64),
    /// `parentbased_always_on` (the default): follow the caller's decision, sample roots.
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` with the ratio for roots.
    ParentBasedTraceIdRatio(f64),
}

impl SamplerSetting {
    fn to_sampler(self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedTraceIdRatio(ratio) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
        }
    }
}

/// One setting's value and the name of where it came from (a variable or a key), for
/// error messages.
struct Sourced<T> {
    value: T,
    source: &'static str,
}

/// The variable `env_name` when set and not empty, else the key's value.
fn pick(
    env: &dyn Fn(&str) -> Option<String>,
    env_name: &'static str,
    key: &'static str,
    configured: Option<&str>,
) -> Option<Sourced<String>> {
    env(env_name)
        .filter(|v| !v.trim().is_empty())
        .map(|value| Sourced {
            value,
            source: env_name,
        })
        .or_else(|| {
            configured
                .filter(|v| !v.trim().is_empty())
                .map(|value| Sourced {
                    value: value.to_owned(),
                    source: key,
                })
        })
}

impl OtelSettings {
    /// The settings from `config` and the variables `env` returns, or `None` when tracing
    /// is off (no endpoint, or disabled). `default_service_name` is used when neither
    /// names the service.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the variable or key with a bad value: an endpoint
    /// that is not an `http://` URI, an unknown sampler, a sampler argument outside 0–1,
    /// resource attributes not of the form `key=value,…`, `OTEL_SDK_DISABLED` not
    /// `true`/`false`, an empty service name. Checked even when tracing is off.
    pub fn resolve(
        config: &TelemetryConfig,
        default_service_name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let disabled = match env(ENV_SDK_DISABLED).filter(|v| !v.trim().is_empty()) {
            Some(value) => match value.trim().to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(ConfigError::invalid(
                        ENV_SDK_DISABLED,
                        format!("{value:?} is neither true nor false"),
                    ));
                }
            },
            None => config.sdk_disabled,
        };
        let endpoint = env(ENV_TRACES_ENDPOINT)
            .filter(|v| !v.trim().is_empty())
            .map(|value| Sourced {
                value,
                source: ENV_TRACES_ENDPOINT,
            })
            .or_else(|| {
                pick(
                    env,
                    ENV_ENDPOINT,
                    "telemetry.otlp_endpoint",
                    config.otlp_endpoint.as_deref(),
                )
            });
        if let Some(endpoint) = &endpoint {
            validate_endpoint(endpoint)?;
        }
        let resource_attributes = match pick(
            env,
            ENV_RESOURCE_ATTRIBUTES,
            "telemetry.resource_attributes",
            config.resource_attributes.as_deref(),
        ) {
            Some(attributes) => parse_resource_attributes(&attributes)?,
            None => Vec::new(),
        };
        let named = pick(
            env,
            ENV_SERVICE_NAME,
            "telemetry.service_name",
            config.service_name.as_deref(),
        );
        if config
            .service_name
            .as_deref()
            .is_some_and(|name| name.trim().is_empty())
        {
            return Err(ConfigError::invalid(
                "telemetry.service_name",
                "must not be empty",
            ));
        }
        let service_name = named
            .map(|n| n.value.trim().to_owned())
            .or_else(|| {
                resource_attributes
                    .iter()
                    .find(|(key, _)| key == "service.name")
                    .map(|(_, value)| value.clone())
            })
            .unwrap_or_else(|| default_service_name.to_owned());
        let sampler = resolve_sampler(config, env)?;
        if disabled {
            return Ok(None);
        }
        Ok(endpoint.map(|endpoint| Self {
            endpoint: endpoint.value.trim().to_owned(),
            service_name,
            resource_attributes,
            sampler,
        }))
    }

    /// The tracer provider: OTLP over gRPC to [`Self::endpoint`] through the SDK's batch
    /// processor (its own thread; a full queue drops spans, so export never blocks a
    /// request), with the resource `service.name`, `service.version` and the configured
    /// attributes. Call inside a tokio runtime: the exporter's channel runs on it.
    ///
    /// # Errors
    /// The exporter's build error.
    pub fn build_provider(
        &self,
        service_version: &str,
    ) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
        use opentelemetry_otlp::WithExportConfig as _;

        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(self.endpoint.clone())
            .build()?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(MAX_QUEUE_SIZE)
                    .with_scheduled_delay(Duration::from_secs(1))
                    .build(),
            )
            .build();
        let mut attributes: Vec<KeyValue> = self
            .resource_attributes
            .iter()
            .filter(|(key, _)| key != "service.name")
            .map(|(key, value)| KeyValue::new(key.clone(), value.clone()))
            .collect();
        if !self
            .resource_attributes
            .iter()
            .any(|(key, _)| key == "service.version")
        {
            attributes.push(KeyValue::new("service.version", service_version.to_owned()));
        }
        let resource = Resource::builder_empty()
            .with_service_name(self.service_name.clone())
            .with_attributes(attributes)
            .build();
        Ok(SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(self.sampler.to_sampler())
            .with_resource(resource)
            .build())
    }
}

fn validate_endpoint(endpoint: &Sourced<String>) -> Result<(), ConfigError> {
    let value = endpoint.value.trim();
    let uri: http::Uri = value.parse().map_err(|err| {
        ConfigError::invalid(endpoint.source, format!("{value:?} is not a URI: {err}"))
    })?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(()),
        Some("https") => Err(ConfigError::invalid(
            endpoint.source,
            format!(
                "{value:?}: TLS to the collector is not built in; send to a local collector \
                 or agent over http://"
            ),
        )),
        _ => Err(ConfigError::invalid(
            endpoint.source,
            format!("{value:?} is not an http://host:port URI"),
        )),
    }
}

/// `key=value,key=value` with percent-encoded values (the specification's format for
/// `OTEL_RESOURCE_ATTRIBUTES`).
fn parse_resource_attributes(
    attributes: &Sourced<String>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut parsed = Vec::new();
    for pair in attributes.value.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(ConfigError::invalid(
                attributes.source,
                format!("{pair:?} is not key=value"),
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(ConfigError::invalid(
                attributes.source,
                format!("{pair:?} has an empty key"),
            ));
        }
        let value = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .map_err(|_| {
                ConfigError::invalid(
                    attributes.source,
                    format!("the value of {key:?} is not UTF-8 once percent-decoded"),
                )
            })?;
        parsed.push((key.to_owned(), value.into_owned()));
    }
    Ok(parsed)
}

fn resolve_sampler(
    config: &TelemetryConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SamplerSetting, ConfigError> {
    let name = pick(
        env,
        ENV_SAMPLER,
        "telemetry.traces_sampler",
        config.traces_sampler.as_deref(),
    );
    let configured_arg = config.traces_sampler_arg.map(|arg| arg.to_string());
    let arg = pick(
        env,
        ENV_SAMPLER_ARG,
        "telemetry.traces_sampler_arg",
        configured_arg.as_deref(),
    );
    let ratio = || -> Result<f64, ConfigError> {
        let Some(arg) = &arg else { return Ok(1.0) };
        match arg.value.trim().parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
            _ => Err(ConfigError::invalid(
                arg.source,
                format!("{:?} is not a ratio from 0 to 1", arg.value),
            )),
        }
    };
    let Some(name) = name else {
        return Ok(SamplerSetting::ParentBasedAlwaysOn);
    };
    Ok(match name.value.trim() {
        "always_on" => SamplerSetting::AlwaysOn,
        "always_off" => SamplerSetting::AlwaysOff,
        "traceidratio" => SamplerSetting::TraceIdRatio(ratio()?),
        "parentbased_always_on" => SamplerSetting::ParentBasedAlwaysOn,
        "parentbased_always_off" => SamplerSetting::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => SamplerSetting::ParentBasedTraceIdRatio(ratio()?),
        other => {
            return Err(ConfigError::invalid(
                name.source,
                format!(
                    "{other:?} is not one of always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
                ),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(
        config: &TelemetryConfig,
        vars: &[(&str, &str)],
    ) -> Result<Option<OtelSettings>, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OtelSettings::resolve(config, "user", &|name| vars.get(name).cloned())
    }

    fn with_endpoint() -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: Some("http://config:4317".to_owned()),
            ..TelemetryConfig::default()
        }
    }

    fn invalid_key(result: Result<Option<OtelSettings>, ConfigError>) -> Option<String> {
        match result {
            Err(ConfigError::Invalid { key, .. }) => Some(key),
            _ => None,
        }
    }

    #[test]
    fn tracing_is_off_without_an_endpoint_or_when_disabled() {
        assert_eq!(resolve(&TelemetryConfig::default(), &[]).ok(), Some(None));
        let disabled = TelemetryConfig {
            sdk_disabled: true,
            ..with_endpoint()
        };
        assert_eq!(resolve(&disabled, &[]).ok(), Some(None));
        assert_eq!(
            resolve(&with_endpoint(), &[(ENV_SDK_DISABLED, "TRUE")]).ok(),
            Some(None)
        );
        // The variable wins both ways.
        assert!(matches!(
            resolve(&disabled, &[(ENV_SDK_DISABLED, "false")]),
            Ok(Some(_))
        ));
    }

    #[test]
    fn standard_variables_win_over_config_keys() {
        let config = TelemetryConfig {
            service_name: Some("from-config".to_owned()),
            traces_sampler: Some("always_off".to_owned()),
            traces_sampler_arg: Some(0.5),
            resource_attributes: Some("deployment.environment=config".to_owned()),
            ..with_endpoint()
        };
        let from_config = resolve(&config, &[]).ok().flatten();
        assert_eq!(
            from_config,
            Some(OtelSettings {
                endpoint: "http://config:4317".to_owned(),
                service_name: "from-config".to_owned(),
                resource_attributes: vec![(
                    "deployment.environment".to_owned(),
                    "config".to_owned()
                )],
                sampler: SamplerSetting::AlwaysOff,
            })
        );
        let from_env = resolve(
            &config,
            &[
                (ENV_ENDPOINT, "http://all:4317"),
                (ENV_TRACES_ENDPOINT, "http://traces:4317"),
                (ENV_SERVICE_NAME, "from-env"),
                (ENV_SAMPLER, "parentbased_traceidratio"),
                (ENV_SAMPLER_ARG, "0.01"),
                (ENV_RESOURCE_ATTRIBUTES, "team=a%2Cb"),
            ],
        )
        .ok()
        .flatten();
        assert_eq!(
            from_env,
            Some(OtelSettings {
                endpoint: "http://traces:4317".to_owned(),
                service_name: "from-env".to_owned(),
                resource_attributes: vec![("team".to_owned(), "a,b".to_owned())],
                sampler: SamplerSetting::ParentBasedTraceIdRatio(0.01),
            })
        );
        let general = resolve(&config, &[(ENV_ENDPOINT, "http://all:4317")])
            .ok()
            .flatten()
            .map(|s| s.endpoint);
        assert_eq!(general.as_deref(), Some("http://all:4317"));
    }

    #[test]
    fn the_service_name_defaults_to_the_resource_attribute_then_the_service() {
        let named = |vars: &[(&str, &str)]| {
            resolve(&with_endpoint(), vars)
                .ok()
                .flatten()
                .map(|s| s.service_name)
        };
        assert_eq!(named(&[]).as_deref(), Some("user"));
        assert_eq!(
            named(&[(ENV_RESOURCE_ATTRIBUTES, "service.name=accounts")]).as_deref(),
            Some("accounts")
        );
        assert_eq!(
            named(&[
                (ENV_RESOURCE_ATTRIBUTES, "service.name=accounts"),
                (ENV_SERVICE_NAME, "users")
            ])
            .as_deref(),
            Some("users")
        );
    }

    #[test]
    fn bad_values_name_the_variable_or_key_that_holds_them() {
        let config = with_endpoint();
        for (vars, key) in [
            (vec![(ENV_SAMPLER, "sometimes")], ENV_SAMPLER),
            (
                vec![(ENV_SAMPLER, "traceidratio"), (ENV_SAMPLER_ARG, "2")],
                ENV_SAMPLER_ARG,
            ),
            (
                vec![(ENV_SAMPLER, "traceidratio"), (ENV_SAMPLER_ARG, "x")],
                ENV_SAMPLER_ARG,
            ),
            (vec![(ENV_ENDPOINT, "collector:4317")], ENV_ENDPOINT),
            (
                vec![(ENV_TRACES_ENDPOINT, "https://c:4317")],
                ENV_TRACES_ENDPOINT,
            ),
            (
                vec![(ENV_RESOURCE_ATTRIBUTES, "novalue")],
                ENV_RESOURCE_ATTRIBUTES,
            ),
            (
                vec![(ENV_RESOURCE_ATTRIBUTES, "=x")],
                ENV_RESOURCE_ATTRIBUTES,
            ),
            (vec![(ENV_SDK_DISABLED, "yes")], ENV_SDK_DISABLED),
        ] {
            assert_eq!(
                invalid_key(resolve(&config, &vars)).as_deref(),
                Some(key),
                "{vars:?}"
            );
        }
        let bad_keys = [
            (
                TelemetryConfig {
                    otlp_endpoint: Some("ftp://c".to_owned()),
                    ..TelemetryConfig::default()
                },
                "telemetry.otlp_endpoint",
            ),
            (
                TelemetryConfig {
                    traces_sampler: Some("traceidratio".to_owned()),
                    traces_sampler_arg: Some(-0.5),
                    ..with_endpoint()
                },
                "telemetry.traces_sampler_arg",
            ),
            (
                TelemetryConfig {
                    traces_sampler: Some("jaeger_remote".to_owned()),
                    ..with_endpoint()
                },
                "telemetry.traces_sampler",
            ),
            (
                TelemetryConfig {
                    service_name: Some(" ".to_owned()),
                    ..with_endpoint()
                },
                "telemetry.service_name",
            ),
        ];
        for (config, key) in bad_keys {
            assert_eq!(invalid_key(resolve(&config, &[])).as_deref(), Some(key));
        }
        // Checked even when tracing is off, so a typo shows before it matters.
        assert_eq!(
            invalid_key(resolve(
                &TelemetryConfig::default(),
                &[(ENV_SAMPLER, "sometimes")]
            ))
            .as_deref(),
            Some(ENV_SAMPLER)
        );
    }
}
