//! Consul discovery and registration through the local agent's HTTP API.

use secrecy::SecretString;
use serde::Deserialize;

use super::{BoxFuture, DiscoveryError, Registered, Registration, Registry, Target, Watch};
use crate::config::{ConfigError, require_positive};

/// The `discovery.consul.*` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsulConfig {
    /// The agent's HTTP API. Default `http://127.0.0.1:8500`.
    pub address: String,
    /// ACL token sent as `X-Consul-Token`. Default: none (the `CONSUL_HTTP_TOKEN`
    /// variable when set). Secret.
    pub token: Option<SecretString>,
    /// Interval of the agent's gRPC health check, s. Default 10.
    pub check_interval_s: u64,
    /// `DeregisterCriticalServiceAfter`: the agent removes an instance whose check has
    /// been critical this long, s. Default 60.
    pub deregister_critical_after_s: u64,
    /// Longest wait of one blocking query, s. Default 55 (Consul caps it at 600).
    pub wait_s: u64,
    /// Datacenter to query. Default: the agent's.
    pub datacenter: Option<String>,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:8500".to_owned(),
            token: None,
            check_interval_s: 10,
            deregister_critical_after_s: 60,
            wait_s: 55,
            datacenter: None,
        }
    }
}

impl ConsulConfig {
    /// Checks the values; `prefix` is the section's key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        if !self.address.starts_with("http://") && !self.address.starts_with("https://") {
            return Err(ConfigError::invalid(
                format!("{prefix}.address"),
                format!("{:?} is not an http:// or https:// URL", self.address),
            ));
        }
        require_positive(&format!("{prefix}.check_interval_s"), self.check_interval_s)?;
        require_positive(
            &format!("{prefix}.deregister_critical_after_s"),
            self.deregister_critical_after_s,
        )?;
        require_positive(&format!("{prefix}.wait_s"), self.wait_s)
    }
}

/// The Consul backend.
#[derive(Debug)]
pub struct ConsulRegistry {}

impl ConsulRegistry {
    /// A client of the agent at `config.address`.
    ///
    /// # Errors
    /// [`DiscoveryError`] when the address is not a valid URL.
    pub fn new(_config: &ConsulConfig) -> Result<Self, DiscoveryError> {
        Err(DiscoveryError::backend("consul", "not implemented yet"))
    }
}

impl Registry for ConsulRegistry {
    fn name(&self) -> &'static str {
        "consul"
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
