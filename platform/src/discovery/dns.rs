//! DNS discovery: A/AAAA records of each configured address's host, or an SRV name,
//! re-resolved at the records' TTL (bounded) and at once after a connection failure.

use serde::Deserialize;

use super::{BoxFuture, DiscoveryError, Registered, Registration, Registry, Target, Watch};
use crate::config::{ConfigError, require_positive};

/// The `discovery.dns.*` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Shortest time between two resolutions of one name, s, whatever the TTL. Default 1.
    pub min_ttl_s: u64,
    /// Longest time a resolution is used, s, whatever the TTL. Default 30.
    pub max_ttl_s: u64,
    /// Comma-separated `ip:port` name servers (UDP and TCP). Default: the system's
    /// (`/etc/resolv.conf`).
    pub nameservers: Option<String>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            min_ttl_s: 1,
            max_ttl_s: 30,
            nameservers: None,
        }
    }
}

impl DnsConfig {
    /// Checks the values; `prefix` is the section's key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        require_positive(&format!("{prefix}.min_ttl_s"), self.min_ttl_s)?;
        if self.max_ttl_s < self.min_ttl_s {
            return Err(ConfigError::invalid(
                format!("{prefix}.max_ttl_s"),
                "must be at least min_ttl_s",
            ));
        }
        Ok(())
    }
}

/// The DNS backend.
#[derive(Debug)]
pub struct DnsRegistry {}

impl DnsRegistry {
    /// A resolver with `config`'s name servers and TTL bounds.
    ///
    /// # Errors
    /// [`DiscoveryError`] when the system's resolver configuration cannot be read.
    pub fn new(_config: &DnsConfig) -> Result<Self, DiscoveryError> {
        Err(DiscoveryError::backend("dns", "not implemented yet"))
    }
}

impl Registry for DnsRegistry {
    fn name(&self) -> &'static str {
        "dns"
    }

    fn watch(&self, _target: &Target) -> Watch {
        Watch::fixed(Vec::new())
    }

    fn register<'a>(
        &'a self,
        _registration: &'a Registration,
    ) -> BoxFuture<'a, Result<Box<dyn Registered>, DiscoveryError>> {
        Box::pin(async { Ok(Box::new(super::NotRegistered) as Box<dyn Registered>) })
    }
}
