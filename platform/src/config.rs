//! Layered, typed configuration: code defaults, then an optional file, then environment
//! variables, validated before anything binds a port.
//!
//! Environment variables take the service's prefix and use `__` between nesting levels,
//! e.g. `TRELLIS_USER__SERVER__LISTEN_ADDR=0.0.0.0:50051` sets `server.listen_addr` of
//! the user service. Values are parsed as numbers and booleans where the target type
//! wants one.

use std::collections::HashMap;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::data::DatabaseConfig;
use crate::peer::PeerConfig;
use crate::server::ServerConfig;
use crate::telemetry::TelemetryConfig;

/// Who a service is: its short name (used in logs and file names) and the prefix of its
/// environment variables.
#[derive(Debug, Clone, Copy)]
pub struct ServiceInfo {
    /// Short name, e.g. `"user"`.
    pub name: &'static str,
    /// Prefix of the service's environment variables, e.g. `"TRELLIS_USER"`.
    pub env_prefix: &'static str,
}

/// The configuration of one service: a `serde` type whose `Default` holds the code
/// defaults and which exposes the platform's shared sections.
pub trait ServiceConfig: DeserializeOwned + Default + Send + 'static {
    /// The `server` section (listen address, limits, shutdown).
    fn server(&self) -> &ServerConfig;
    /// The `telemetry` section (log format and filter).
    fn telemetry(&self) -> &TelemetryConfig;
    /// The `database` section.
    fn database(&self) -> &DatabaseConfig;
    /// The peers, by name (empty for a service that calls none).
    fn peers(&self) -> HashMap<String, PeerConfig> {
        HashMap::new()
    }
    /// Checks the service's own sections; the shared ones are checked by
    /// [`Self::validate`].
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first key whose value is not acceptable.
    fn validate_own(&self) -> Result<(), ConfigError> {
        Ok(())
    }
    /// Checks every rule the types cannot express; a violation names its key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first key whose value is not acceptable.
    fn validate(&self) -> Result<(), ConfigError> {
        self.server().validate()?;
        self.telemetry().validate()?;
        self.database().validate()?;
        for (name, peer) in self.peers() {
            peer.validate(&format!("peers.{name}"))?;
        }
        self.validate_own()
    }
}

/// Why configuration could not be loaded. Every variant's message names the key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value did not fit its key's type.
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    /// A value has the right type but is not acceptable.
    #[error("invalid value for key `{key}`: {message}")]
    Invalid {
        /// The dotted key, e.g. `server.drain_timeout_ms`.
        key: String,
        /// What is wrong with it, e.g. `must be at least 1`.
        message: String,
    },
}

impl ConfigError {
    /// Builds [`ConfigError::Invalid`] for `key`.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Loads `T`: its `Default`, overlaid by `file` (TOML, YAML or JSON by extension) when
/// given, overlaid by the environment variables under `service.env_prefix`; then
/// validates it.
///
/// # Errors
/// [`ConfigError`] when the file is missing or malformed, a value does not fit its type,
/// or [`ServiceConfig::validate`] rejects a value.
pub fn load<T: ServiceConfig>(
    service: &ServiceInfo,
    file: Option<&Path>,
) -> Result<T, ConfigError> {
    load_from(service, file, std::env::vars())
}

/// [`load`] with the environment given explicitly, so tests need not touch the
/// process's own.
///
/// # Errors
/// As [`load`].
pub fn load_from<T: ServiceConfig>(
    service: &ServiceInfo,
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(file) = file {
        builder = builder.add_source(config::File::from(file).required(true));
    }
    let env: config::Map<String, String> = env.into_iter().collect();
    builder = builder.add_source(
        config::Environment::with_prefix(service.env_prefix)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(env)),
    );
    let config: T = builder.build()?.try_deserialize()?;
    config.validate()?;
    Ok(config)
}

/// Rejects zero for a count or duration key.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `key` when `value` is 0.
pub fn require_positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(key, "must be at least 1"));
    }
    Ok(())
}
