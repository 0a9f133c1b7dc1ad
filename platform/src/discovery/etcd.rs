//! etcd discovery and registration: a key per instance under a lease kept alive while
//! the process runs, found by a watch on the service's key prefix.

use serde::Deserialize;

use super::{BoxFuture, DiscoveryError, Registered, Registration, Registry, Target, Watch};
use crate::config::{ConfigError, require_positive};

/// The `discovery.etcd.*` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Comma-separated client URLs. Default `http://127.0.0.1:2379`.
    pub endpoints: String,
    /// Key prefix; an instance is stored at `<prefix><service>/<id>`. Default
    /// `/trellis/services/`.
    pub prefix: String,
    /// Lease time to live, s: a killed instance disappears this long after its last
    /// keep-alive. Default 10.
    pub lease_ttl_s: u64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: "http://127.0.0.1:2379".to_owned(),
            prefix: "/trellis/services/".to_owned(),
            lease_ttl_s: 10,
        }
    }
}

impl EtcdConfig {
    /// Checks the values; `prefix` is the section's key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        if self.endpoints.split(',').all(|e| e.trim().is_empty()) {
            return Err(ConfigError::invalid(
                format!("{prefix}.endpoints"),
                "must name at least one endpoint",
            ));
        }
        require_positive(&format!("{prefix}.lease_ttl_s"), self.lease_ttl_s)
    }
}

/// The etcd backend.
#[derive(Debug)]
pub struct EtcdRegistry {}

impl EtcdRegistry {
    /// A client of the cluster at `config.endpoints` (connects lazily).
    ///
    /// # Errors
    /// [`DiscoveryError`] when an endpoint is not a valid URL.
    pub fn new(_config: &EtcdConfig) -> Result<Self, DiscoveryError> {
        Err(DiscoveryError::backend("etcd", "not implemented yet"))
    }
}

impl Registry for EtcdRegistry {
    fn name(&self) -> &'static str {
        "etcd"
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
