//! The notification service's configuration: defaults in code, then an optional file,
//! then `TRELLIS_NOTIFICATION__*` environment variables.

use std::collections::HashMap;

use secrecy::SecretString;
use serde::Deserialize;
use trellis_platform::auth::AuthConfig;
use trellis_platform::config::{ConfigError, ServiceConfig, ServiceInfo};
use trellis_platform::data::DatabaseConfig;
use trellis_platform::peer::PeerConfig;
use trellis_platform::server::ServerConfig;
use trellis_platform::telemetry::TelemetryConfig;

/// The notification service's identity: name `notification`, environment prefix
/// `TRELLIS_NOTIFICATION`.
pub const SERVICE: ServiceInfo = ServiceInfo {
    name: "notification",
    env_prefix: "TRELLIS_NOTIFICATION",
};

/// The default gRPC port of the notification service.
pub const DEFAULT_PORT: u16 = 50053;

/// The peers of the notification service and their default addresses.
const DEFAULT_PEERS: [(&str, &str); 1] = [("auth", "http://127.0.0.1:50052")];

/// Every setting of the notification service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address, limits, shutdown. Default port 50053.
    pub server: ServerConfig,
    /// Log format and filter.
    pub telemetry: TelemetryConfig,
    /// Default `sqlite://.data/notification.db?mode=rwc`.
    pub database: DatabaseConfig,
    /// Token verification.
    pub auth: AuthConfig,
    /// Peers: `auth` (signing keys, default `http://127.0.0.1:50052`).
    pub peers: HashMap<String, PeerConfig>,
    /// Key that signs page tokens; random per process when unset.
    pub page_token_secret: Option<SecretString>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::with_port(DEFAULT_PORT),
            telemetry: TelemetryConfig::default(),
            database: DatabaseConfig::with_url("sqlite://.data/notification.db?mode=rwc"),
            auth: AuthConfig::default(),
            peers: HashMap::new(),
            page_token_secret: None,
        }
    }
}

impl Config {
    /// The configured peers over their defaults.
    pub fn peers(&self) -> HashMap<String, PeerConfig> {
        trellis_platform::peer::with_defaults(&self.peers, &DEFAULT_PEERS)
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
        self.auth.validate("auth")
    }
}
