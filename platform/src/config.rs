//! Layered, typed configuration — the leaf every platform section builds on: code
//! defaults, then an optional file, then environment variables, validated before anything
//! binds a port.
//!
//! Environment variables take the service's prefix and use `__` between nesting levels,
//! e.g. `TRELLIS_USER__SERVER__LISTEN_ADDR=0.0.0.0:50051` sets `server.listen_addr` of
//! the user service. Values are parsed as numbers and booleans where the target type
//! wants one. This module knows no section: the sections live with the code they
//! configure, and [`crate::service::Config`] assembles them.

use std::num::NonZeroU64;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize as _;
use serde::de::{DeserializeOwned, Deserializer};

/// Who a service is: its short name (used in logs, file names and as its OAuth client
/// id) and the prefix of its environment variables.
#[derive(Debug, Clone, Copy)]
pub struct ServiceInfo {
    /// Short name, e.g. `"user"`.
    pub name: &'static str,
    /// Prefix of the service's environment variables, e.g. `"TRELLIS_USER"`.
    pub env_prefix: &'static str,
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

/// A configuration section with rules its types cannot express.
pub trait Validate {
    /// Checks the values; a violation names its dotted key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first key whose value is not acceptable.
    fn validate(&self) -> Result<(), ConfigError>;

    /// The secrets this section holds, by dotted key (e.g. `service_clients.user`), so
    /// the platform can refuse known default secrets outside local development. Default:
    /// none.
    fn secrets(&self) -> Vec<(String, &secrecy::SecretString)> {
        Vec::new()
    }
}

/// The top-level table of the layered sources: `defaults` (dotted key, value) under
/// `file` (TOML, YAML or JSON by extension) when given, under the variables of `env`
/// that start with `service.env_prefix`.
///
/// # Errors
/// [`ConfigError::Load`] when the file is missing or malformed.
pub fn layered(
    service: &ServiceInfo,
    defaults: &[(String, String)],
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<config::Map<String, config::Value>, ConfigError> {
    let mut builder = config::Config::builder();
    for (key, value) in defaults {
        builder = builder.set_default(key.as_str(), value.as_str())?;
    }
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
    let built = builder.build()?;
    Ok(config::Source::collect(&built)?)
}

/// Deserializes `T` from a table made by [`layered`]; a value of the wrong type gives an
/// error naming its dotted key.
///
/// # Errors
/// [`ConfigError::Load`] when a value does not fit its key's type or a key is unknown.
pub fn deserialize<T: DeserializeOwned>(
    table: config::Map<String, config::Value>,
) -> Result<T, ConfigError> {
    Ok(config::Value::new(None, config::ValueKind::Table(table)).try_deserialize()?)
}

/// A [`Duration`] read as a whole number of milliseconds that must not be 0: the
/// `serde_with` adapter of the `*_ms` keys where zero makes no sense (a timeout, an
/// interval). Use it as `#[serde_as(as = "NonZeroMilliSeconds")]`, with
/// `#[serde(rename = "…_ms")]` on the field; 0 fails loading with an error that names the
/// key (e.g. "invalid value: integer `0`, expected a nonzero u64 for key
/// `server.drain_timeout_ms`"). Only the config's values are checked: code may still
/// build the field as [`Duration::ZERO`]. Keys where 0 is fine use `serde_with`'s
/// `DurationMilliSeconds<u64>`.
#[derive(Debug, Clone, Copy)]
pub struct NonZeroMilliSeconds;

impl<'de> serde_with::DeserializeAs<'de, Duration> for NonZeroMilliSeconds {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        NonZeroU64::deserialize(deserializer).map(|ms| Duration::from_millis(ms.get()))
    }
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

/// Deserializes a list given either as a sequence or as one string separated by commas
/// (how an environment variable carries it), each entry trimmed, empty ones skipped, and
/// checked by `parse` (whose error names the entry). `expecting` completes "expected …".
///
/// # Errors
/// The first entry `parse` refuses, or a value that is neither a string nor a list.
pub fn list_or_commas<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
{
    struct Entries<T> {
        expecting: &'static str,
        parse: fn(&str) -> Result<T, String>,
    }

    impl<'de, T> serde::de::Visitor<'de> for Entries<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}, as a list or separated by commas", self.expecting)
        }

        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
            value
                .split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(|entry| (self.parse)(entry).map_err(E::custom))
                .collect()
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::new();
            while let Some(entry) = seq.next_element::<String>()? {
                entries.push((self.parse)(entry.trim()).map_err(serde::de::Error::custom)?);
            }
            Ok(entries)
        }
    }

    deserializer.deserialize_any(Entries { expecting, parse })
}
