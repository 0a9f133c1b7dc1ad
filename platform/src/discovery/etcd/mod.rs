//! etcd discovery and registration: a key per instance under a lease kept alive while
//! the process runs, found by a watch on the service's key prefix.
//!
//! The backend speaks etcd's v3 gRPC API through the clients generated in
//! [`trellis_proto::etcd`] (the `etcd-client` crate's build needs a protoc binary):
//!
//! - **register**: `LeaseGrant` (TTL `lease_ttl_s`), then `Put <prefix><service>/<id>` =
//!   `{"uri":"http://host:port","metadata":{...}}` attached to that lease. A task streams
//!   `LeaseKeepAlive` every TTL/3; when the lease is lost (a keep-alive answered with
//!   TTL 0, or no answer for a whole TTL) it grants a new lease and puts the key again.
//!   Deregistering stops the task and revokes the lease, which deletes the key at once;
//!   a killed process's key goes when its lease expires, one TTL after the last
//!   keep-alive (etcd's lease semantics, <https://etcd.io/docs/v3.5/learning/api/#lease-api>).
//! - **watch**: `Range` over the prefix `<prefix><service>/` (`range_end` is the prefix
//!   with its last byte plus one, as etcd's API defines prefix ranges), publish, then
//!   `Watch` from the range's revision + 1 and apply each PUT and DELETE. A compacted,
//!   cancelled or broken watch ranges again and watches anew; until then the last set
//!   stays published.
//! - **endpoints**: one lazily connected channel per endpoint. Calls go to one member and
//!   move on to the next when it is unreachable: tonic's balanced channel keeps picking
//!   dead endpoints (STACK-NOTES), where failing over is what etcd's own client does.
//!
//! This module holds the section and the [`Registry`]; `cluster` the endpoint failover,
//! `lease` the registration and `watch` the watch.

mod cluster;
mod lease;
mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_with::serde_as;
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, DiscoveryError, Registered, Registration, Registry, Target, Watch};
use crate::config::{ConfigError, NonZeroMilliSeconds, require_positive};
use cluster::{Cluster, Member};
use watch::Follower;

/// The backend's name in errors and logs.
const BACKEND: &str = "etcd";

/// The first retry delay after a failure; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The longest delay between two retries of a watch or a lease grant.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The `discovery.etcd.*` section.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Comma-separated client URLs (`http://host:port`, or `https://` with `ca`; a bare
    /// `host:port` means `http://`). Default `http://127.0.0.1:2379`.
    pub endpoints: String,
    /// PEM file of the CA the members' server certificates chain to: required by, and
    /// only with, `https://` endpoints (the certificate must name the endpoint's host).
    pub ca: Option<std::path::PathBuf>,
    /// PEM files of a client certificate and its key for etcd's `--client-cert-auth`
    /// (with etcd's auth on, the certificate's CN is the etcd user). Both or neither;
    /// `https://` only.
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's key (see `cert`).
    pub key: Option<std::path::PathBuf>,
    /// Key prefix; an instance is stored at `<prefix><service>/<id>`. Default
    /// `/trellis/services/`.
    pub prefix: String,
    /// Lease time to live, s: a killed instance disappears this long after its last
    /// keep-alive. Default 10. etcd raises a TTL below its minimum (about 2 s with the
    /// default heartbeat) to that minimum.
    pub lease_ttl_s: u64,
    /// `timeout_ms`: deadline of each call to etcd and of connecting to a member, ms. Default 5000.
    #[serde(rename = "timeout_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: "http://127.0.0.1:2379".to_owned(),
            ca: None,
            cert: None,
            key: None,
            prefix: "/trellis/services/".to_owned(),
            lease_ttl_s: 10,
            timeout: Duration::from_secs(5),
        }
    }
}

impl EtcdConfig {
    /// Checks the values; `prefix` is the section's key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        self.members()
            .map_err(|message| ConfigError::invalid(format!("{prefix}.endpoints"), message))?;
        require_positive(&format!("{prefix}.lease_ttl_s"), self.lease_ttl_s)?;
        if i64::try_from(self.lease_ttl_s).is_err() {
            return Err(ConfigError::invalid(
                format!("{prefix}.lease_ttl_s"),
                "is too large",
            ));
        }
        Ok(())
    }

    /// The endpoints as members, or why they are invalid.
    fn members(&self) -> Result<Vec<Member>, String> {
        cluster::members(&self.endpoints, self.timeout, self.tls()?.as_ref())
    }

    /// The TLS settings of `https://` endpoints, read from the files; `None` without `ca`.
    fn tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
        let read = |path: &std::path::PathBuf| {
            std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))
        };
        let Some(ca) = &self.ca else {
            if self.cert.is_some() || self.key.is_some() {
                return Err("a client certificate needs `ca` and https:// endpoints".to_owned());
            }
            return Ok(None);
        };
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(tonic::transport::Identity::from_pem(
                    read(cert)?,
                    read(key)?,
                ));
            }
            (None, None) => {}
            _ => return Err("set both `cert` and `key`, or neither".to_owned()),
        }
        Ok(Some(tls))
    }
}

/// The etcd backend: cheap to clone (the members' channels are shared).
#[derive(Debug, Clone)]
pub struct EtcdRegistry {
    cluster: Arc<Cluster>,
    prefix: String,
    lease_ttl_s: i64,
}

impl EtcdRegistry {
    /// A client of the cluster at `config.endpoints` (connects lazily, on first use).
    ///
    /// # Errors
    /// [`DiscoveryError`] when an endpoint is not a valid `http://` URL or a value is out
    /// of range.
    pub fn new(config: &EtcdConfig) -> Result<Self, DiscoveryError> {
        config
            .validate("discovery.etcd")
            .map_err(|err| DiscoveryError::backend(BACKEND, err))?;
        let members = config
            .members()
            .map_err(|err| DiscoveryError::backend(BACKEND, err))?;
        let lease_ttl_s = i64::try_from(config.lease_ttl_s)
            .map_err(|_| DiscoveryError::backend(BACKEND, "lease_ttl_s is too large"))?;
        Ok(Self {
            cluster: Arc::new(Cluster::new(members, config.timeout)),
            prefix: config.prefix.clone(),
            lease_ttl_s,
        })
    }

    /// The key prefix every instance of `service` is stored under: `<prefix><service>/`.
    fn service_prefix(&self, service: &str) -> String {
        format!("{}{service}/", self.prefix)
    }
}

impl Registry for EtcdRegistry {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn watch(&self, target: &Target) -> Watch {
        let (publisher, watch) = super::channel();
        let follower = Follower {
            cluster: Arc::clone(&self.cluster),
            peer: target.peer.clone(),
            prefix: self.service_prefix(&target.service).into_bytes(),
            publisher,
        };
        tokio::spawn(follower.run());
        watch
    }

    fn register<'a>(
        &'a self,
        registration: &'a Registration,
    ) -> BoxFuture<'a, Result<Box<dyn Registered>, DiscoveryError>> {
        Box::pin(async move {
            for (field, value) in [("service", &registration.service), ("id", &registration.id)] {
                if value.is_empty() || value.contains('/') {
                    return Err(DiscoveryError::backend(
                        BACKEND,
                        format!(
                            "the registration's {field} {value:?} must be non-empty and have no '/' (it is a key segment)"
                        ),
                    ));
                }
            }
            let key = format!(
                "{}{}",
                self.service_prefix(&registration.service),
                registration.id
            );
            let value = serde_json::to_vec(&Record {
                uri: registration.instance().uri,
                metadata: registration.metadata.clone(),
            })
            .map_err(|err| DiscoveryError::backend(BACKEND, err))?;
            lease::register(&self.cluster, key, value, self.lease_ttl_s).await
        })
    }
}

/// What a registration stores as its key's value (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The instance's base URI, e.g. `http://10.1.2.3:50051`.
    uri: String,
    /// The registration's metadata.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// Exponential retry delays from [`FIRST_RETRY`] up to a bound, with ±20 % jitter.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self {
            next: FIRST_RETRY,
            max,
        }
    }

    fn reset(&mut self) {
        self.next = FIRST_RETRY;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay.mul_f64(rand::rng().random_range(0.8..1.2))
    }

    /// Sleeps the next delay; `false` when `cancel` fired first.
    async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_urls_or_bare_host_ports() {
        let config = EtcdConfig {
            endpoints: "10.0.0.1:2379, http://etcd-1:2379,".to_owned(),
            ..EtcdConfig::default()
        };
        let urls: Vec<String> = config
            .members()
            .unwrap()
            .into_iter()
            .map(|m| m.url)
            .collect();
        assert_eq!(urls, ["http://10.0.0.1:2379", "http://etcd-1:2379"]);

        for (endpoints, ttl, key) in [
            // https:// without `ca`.
            ("https://etcd:2379", 10, "discovery.etcd.endpoints"),
            (" , ", 10, "discovery.etcd.endpoints"),
            ("http://bad host:1", 10, "discovery.etcd.endpoints"),
            ("http://etcd:2379", 0, "discovery.etcd.lease_ttl_s"),
        ] {
            let config = EtcdConfig {
                endpoints: endpoints.to_owned(),
                lease_ttl_s: ttl,
                ..EtcdConfig::default()
            };
            let err = config.validate("discovery.etcd").unwrap_err();
            assert!(err.to_string().contains(key), "{endpoints:?}: {err}");
            assert!(EtcdRegistry::new(&config).is_err());
        }
    }
}
