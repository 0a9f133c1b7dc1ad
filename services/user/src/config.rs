//! The user service's configuration: defaults in code, then an optional file, then
//! `TRELLIS_USER__*` environment variables (see the README's configuration reference).

use std::collections::HashMap;

use secrecy::SecretString;
use serde::Deserialize;
use trellis_platform::auth::AuthConfig;
use trellis_platform::config::{ConfigError, ServiceConfig, ServiceInfo};
use trellis_platform::data::DatabaseConfig;
use trellis_platform::outbox::OutboxConfig;
use trellis_platform::peer::PeerConfig;
use trellis_platform::server::ServerConfig;
use trellis_platform::telemetry::TelemetryConfig;

use crate::domain::password::{HashCost, OWASP_MIN_ITERATIONS, OWASP_MIN_MEMORY_KIB};

/// The user service's identity: name `user`, environment prefix `TRELLIS_USER`.
pub const SERVICE: ServiceInfo = ServiceInfo {
    name: "user",
    env_prefix: "TRELLIS_USER",
};

/// The default gRPC port of the user service.
pub const DEFAULT_PORT: u16 = 50051;

/// The peers of the user service and their default addresses.
const DEFAULT_PEERS: [(&str, &str); 2] = [
    ("auth", "http://127.0.0.1:50052"),
    ("notification", "http://127.0.0.1:50053"),
];

/// Every setting of the user service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address, limits, shutdown. Default port 50051.
    pub server: ServerConfig,
    /// Log format and filter.
    pub telemetry: TelemetryConfig,
    /// Default `sqlite://.data/user.db?mode=rwc`.
    pub database: DatabaseConfig,
    /// argon2id cost and concurrency.
    pub password_hashing: HashCost,
    /// Key that signs ListUsers page tokens. Unset: a random key per process, so tokens
    /// do not survive a restart or cross replicas; set it when running more than one.
    pub page_token_secret: Option<SecretString>,
    /// Token verification and this service's client secret.
    pub auth: AuthConfig,
    /// Peers: `auth` (keys, credentials; default `http://127.0.0.1:50052`) and
    /// `notification` (welcome notices; default `http://127.0.0.1:50053`). A peer set
    /// here replaces its default.
    pub peers: HashMap<String, PeerConfig>,
    /// Delivery of welcome notifications.
    pub outbox: OutboxConfig,
}

impl Config {
    /// The configured peers over their defaults.
    pub fn peers(&self) -> HashMap<String, PeerConfig> {
        trellis_platform::peer::with_defaults(&self.peers, &DEFAULT_PEERS)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::with_port(DEFAULT_PORT),
            telemetry: TelemetryConfig::default(),
            database: DatabaseConfig::with_url("sqlite://.data/user.db?mode=rwc"),
            password_hashing: HashCost::default(),
            page_token_secret: None,
            auth: AuthConfig::default(),
            peers: HashMap::new(),
            outbox: OutboxConfig::default(),
        }
    }
}

impl ServiceConfig for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }

    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }

    fn database(&self) -> &DatabaseConfig {
        &self.database
    }

    fn peers(&self) -> HashMap<String, PeerConfig> {
        Config::peers(self)
    }

    fn validate_own(&self) -> Result<(), ConfigError> {
        self.auth.validate("auth")?;
        self.outbox.validate()?;
        let cost = &self.password_hashing;
        if cost.memory_kib < OWASP_MIN_MEMORY_KIB {
            return Err(ConfigError::invalid(
                "password_hashing.memory_kib",
                format!("must be at least {OWASP_MIN_MEMORY_KIB} (OWASP's argon2id minimum)"),
            ));
        }
        if cost.iterations < OWASP_MIN_ITERATIONS {
            return Err(ConfigError::invalid(
                "password_hashing.iterations",
                format!("must be at least {OWASP_MIN_ITERATIONS} (OWASP's argon2id minimum)"),
            ));
        }
        trellis_platform::config::require_positive(
            "password_hashing.parallelism",
            u64::from(cost.parallelism),
        )?;
        trellis_platform::config::require_positive(
            "password_hashing.max_concurrent",
            cost.max_concurrent as u64,
        )?;
        if let Some(secret) = &self.page_token_secret
            && secrecy::ExposeSecret::expose_secret(secret).len() < 32
        {
            return Err(ConfigError::invalid(
                "page_token_secret",
                "must be at least 32 bytes",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        trellis_platform::config::load_from(
            &SERVICE,
            None,
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    #[test]
    fn defaults_listen_on_50051_with_a_sqlite_file() -> Result<(), ConfigError> {
        let config = load(&[])?;
        assert_eq!(config.server.listen_addr.port(), 50051);
        assert_eq!(config.password_hashing, HashCost::default());
        Ok(())
    }

    #[test]
    fn environment_overrides_nested_keys() -> Result<(), ConfigError> {
        let config = load(&[
            ("TRELLIS_USER__SERVER__LISTEN_ADDR", "127.0.0.1:6000"),
            ("TRELLIS_USER__SERVER__DRAIN_TIMEOUT_MS", "250"),
            ("TRELLIS_USER__TELEMETRY__LOG_FORMAT", "json"),
        ])?;
        assert_eq!(config.server.listen_addr.to_string(), "127.0.0.1:6000");
        assert_eq!(config.server.drain_timeout_ms, 250);
        Ok(())
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let err = load(&[("TRELLIS_USER__SERVER__DRAIN_TIMEOUT_MS", "soon")]).map(drop);
        let message = err.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(message.contains("server.drain_timeout_ms"), "{message}");

        let err = load(&[("TRELLIS_USER__PASSWORD_HASHING__MEMORY_KIB", "1024")]).map(drop);
        let message = err.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(message.contains("password_hashing.memory_kib"), "{message}");
    }

    #[test]
    fn an_unknown_key_is_rejected_by_name() {
        let err = load(&[("TRELLIS_USER__SERVER__LISTEN_PORT", "1")]).map(drop);
        let message = err.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(message.contains("listen_port"), "{message}");
    }
}
