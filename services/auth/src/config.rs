//! The auth service's own settings, beside the platform's sections: defaults in code,
//! then an optional file, then `TRELLIS_AUTH__*` environment variables.

use std::collections::HashMap;

use secrecy::SecretString;
use serde::Deserialize;
use trellis_platform::auth::{DEFAULT_AUDIENCE, DEFAULT_ISSUER};
use trellis_platform::config::{ConfigError, Validate, require_positive};

use crate::domain::MAX_ACCESS_TOKEN_TTL;

/// Token lifetimes and claims.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// `iss`. Default `trellis-auth`.
    pub issuer: String,
    /// `aud`. Default `trellis`.
    pub audience: String,
    /// Access-token lifetime, s. Default and maximum 900 (15 min).
    pub access_token_ttl_secs: u64,
    /// Service-token lifetime, s. Default 300.
    pub service_token_ttl_secs: u64,
    /// Absolute lifetime of a sign-in's refresh tokens, s. Default 2592000 (30 days).
    pub refresh_token_ttl_secs: u64,
    /// How long a signing key signs before the next takes over, s. Default 2592000.
    pub key_rotation_interval_secs: u64,
    /// How long a new key is published before it signs, s. Default 600; keep it above
    /// verifiers' key cache age (5 min).
    pub key_publish_lead_secs: u64,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            issuer: DEFAULT_ISSUER.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            access_token_ttl_secs: MAX_ACCESS_TOKEN_TTL.as_secs(),
            service_token_ttl_secs: 300,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            key_rotation_interval_secs: 30 * 24 * 3600,
            key_publish_lead_secs: 600,
        }
    }
}

/// Failed sign-in budgets, each over any one-hour window (see
/// [`crate::domain::throttle`] for the design).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Failures allowed per account in any hour from addresses it has not signed in from,
    /// and as much again from each address it has. Default 100 (OWASP ASVS).
    pub max_failures_per_account_per_hour: u32,
    /// Failures allowed per source address (IPv6: per /64) in any hour, over every
    /// account. Default 1000.
    pub max_failures_per_source_per_hour: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            max_failures_per_account_per_hour: 100,
            max_failures_per_source_per_hour: 1000,
        }
    }
}

/// The auth service's own keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Token lifetimes and claims.
    pub tokens: TokenConfig,
    /// Failed sign-in budgets.
    pub login_throttle: ThrottleConfig,
    /// Service clients: client id → secret (OAuth 2.0 client credentials). E.g.
    /// `TRELLIS_AUTH__SERVICE_CLIENTS__USER=<secret>`.
    pub service_clients: HashMap<String, SecretString>,
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        let tokens = &self.tokens;
        if tokens.access_token_ttl_secs == 0
            || tokens.access_token_ttl_secs > MAX_ACCESS_TOKEN_TTL.as_secs()
        {
            return Err(ConfigError::invalid(
                "tokens.access_token_ttl_secs",
                format!("must be 1 to {}", MAX_ACCESS_TOKEN_TTL.as_secs()),
            ));
        }
        require_positive(
            "tokens.service_token_ttl_secs",
            tokens.service_token_ttl_secs,
        )?;
        require_positive(
            "tokens.refresh_token_ttl_secs",
            tokens.refresh_token_ttl_secs,
        )?;
        require_positive("tokens.key_publish_lead_secs", tokens.key_publish_lead_secs)?;
        if tokens.key_rotation_interval_secs <= tokens.key_publish_lead_secs {
            return Err(ConfigError::invalid(
                "tokens.key_rotation_interval_secs",
                "must be longer than tokens.key_publish_lead_secs",
            ));
        }
        require_positive(
            "login_throttle.max_failures_per_account_per_hour",
            u64::from(self.login_throttle.max_failures_per_account_per_hour),
        )?;
        require_positive(
            "login_throttle.max_failures_per_source_per_hour",
            u64::from(self.login_throttle.max_failures_per_source_per_hour),
        )?;
        for (client, secret) in &self.service_clients {
            if secrecy::ExposeSecret::expose_secret(secret).len() < 16 {
                return Err(ConfigError::invalid(
                    format!("service_clients.{client}"),
                    "must be at least 16 bytes",
                ));
            }
        }
        Ok(())
    }

    /// Every accepted client secret, so the platform refuses published defaults.
    fn secrets(&self) -> Vec<(String, &SecretString)> {
        self.service_clients
            .iter()
            .map(|(client, secret)| (format!("service_clients.{client}"), secret))
            .collect()
    }
}
