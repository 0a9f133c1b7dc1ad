//! Service discovery and registration: a [`Registry`] resolves a peer's name to a
//! changing set of [`Instance`]s (a [`Watch`]) and registers the running service so its
//! peers find it.
//!
//! The backend is chosen by `discovery.backend` ([`DiscoveryConfig`]):
//!
//! | backend | finds peers by | registers by |
//! |---|---|---|
//! | `static` (default) | `peers.<name>.addresses` as given | nothing |
//! | `dns` | A/AAAA of each address's host, or SRV `peers.<name>.srv`, re-resolved at the TTL (bounded by `discovery.dns.min_ttl_s`..`max_ttl_s`) and at once after a connection failure | nothing (Kubernetes headless Services, compose's `--scale`) |
//! | `consul` | blocking queries on `/v1/health/service/<service>?passing` | the local agent, with a gRPC health check and `DeregisterCriticalServiceAfter` |
//! | `etcd` | a watch on the key prefix `<prefix><service>/` | a key under a lease kept alive while the process runs |
//!
//! `<service>` is `peers.<name>.service` (default: the peer's name). A backend that
//! cannot answer keeps the last set it resolved (gRPC's name-resolution rule: a
//! resolver error does not empty a working channel).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::{Notify, watch};

use crate::config::ConfigError;

pub mod consul;
pub mod dns;
pub mod etcd;

pub use consul::{ConsulConfig, ConsulRegistry};
pub use dns::{DnsConfig, DnsRegistry};
pub use etcd::{EtcdConfig, EtcdRegistry};

/// A boxed future, as the object-safe [`Registry`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One reachable instance of a service: the base URI calls go to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instance {
    /// Base URI, e.g. `http://10.1.2.3:50051` or `http://[::1]:50051`.
    pub uri: String,
}

impl Instance {
    /// The instance at `uri` (a base URI such as `http://127.0.0.1:50051`).
    pub fn new(uri: impl Into<String>) -> Self {
        Self { uri: uri.into() }
    }

    /// The instance at `host:port` over plain HTTP/2; an IPv6 literal is bracketed.
    pub fn from_host_port(host: &str, port: u16) -> Self {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.contains(':') {
            Self::new(format!("http://[{host}]:{port}"))
        } else {
            Self::new(format!("http://{host}:{port}"))
        }
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// A resolved set of instances, sorted and without duplicates.
pub type Instances = Arc<[Instance]>;

/// What a balancer needs to know to find one peer: its name in the registry and, for the
/// static and DNS backends, its configured addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The peer's key in `peers.<name>` (used in logs and metrics).
    pub peer: String,
    /// The service's name in the registry (`peers.<name>.service`, default the peer's
    /// name).
    pub service: String,
    /// `peers.<name>.addresses`: base URIs (static), or URIs whose host DNS resolves.
    pub addresses: Vec<String>,
    /// `peers.<name>.srv`: an SRV name (DNS backend), e.g.
    /// `_grpc._tcp.user.default.svc.cluster.local`.
    pub srv: Option<String>,
}

/// The instances of one service as a backend sees them, updated as they change.
///
/// `None` until the backend's first answer; then the latest set (possibly empty). The
/// backend stops watching once every clone of the [`Watch`] is dropped.
#[derive(Debug, Clone)]
pub struct Watch {
    updates: watch::Receiver<Option<Instances>>,
    refresh: Arc<Notify>,
}

impl Watch {
    /// A watch that never changes: `instances` from the start.
    pub fn fixed(instances: Vec<Instance>) -> Self {
        let (publisher, watch) = channel();
        publisher.publish(instances);
        // The sender may go: receivers keep the last value.
        watch
    }

    /// The latest set, `None` before the backend's first answer.
    pub fn current(&self) -> Option<Instances> {
        self.updates.borrow().clone()
    }

    /// Waits for the next change; `false` when the backend stopped (no more changes).
    pub async fn changed(&mut self) -> bool {
        self.updates.changed().await.is_ok()
    }

    /// Marks the current value seen, so [`Self::changed`] waits for a newer one.
    pub fn mark_seen(&mut self) {
        self.updates.mark_unchanged();
    }

    /// Asks the backend to resolve again now (the balancer calls it after a connection
    /// failure; DNS re-resolves, the push-based backends ignore it).
    pub fn refresh(&self) {
        self.refresh.notify_one();
    }
}

/// A backend's side of a [`Watch`].
#[derive(Debug)]
pub struct Publisher {
    updates: watch::Sender<Option<Instances>>,
    refresh: Arc<Notify>,
}

/// A connected [`Publisher`] and [`Watch`].
pub fn channel() -> (Publisher, Watch) {
    let (sender, receiver) = watch::channel(None);
    let refresh = Arc::new(Notify::new());
    (
        Publisher {
            updates: sender,
            refresh: Arc::clone(&refresh),
        },
        Watch {
            updates: receiver,
            refresh,
        },
    )
}

/// The most instances of one peer a registry answer may set: a larger answer (a
/// registry flooded by whoever may write to it) keeps its first this many, in order, with
/// a warning, so a forged answer cannot make a service open unbounded connections.
pub const MAX_INSTANCES: usize = 256;

impl Publisher {
    /// Publishes `instances` (sorted, deduplicated and capped at [`MAX_INSTANCES`] here);
    /// watchers wake only when the set differs from the last one.
    pub fn publish(&self, mut instances: Vec<Instance>) {
        instances.sort();
        instances.dedup();
        if instances.len() > MAX_INSTANCES {
            tracing::warn!(
                answered = instances.len(),
                kept = MAX_INSTANCES,
                "a registry answer names more instances than a peer may have; keeping the first"
            );
            instances.truncate(MAX_INSTANCES);
        }
        self.updates.send_if_modified(|current| {
            if current.as_deref() == Some(instances.as_slice()) {
                return false;
            }
            *current = Some(Instances::from(instances));
            true
        });
    }

    /// Completes when every [`Watch`] is gone: the backend's task should then stop.
    pub async fn closed(&self) {
        self.updates.closed().await;
    }

    /// Completes when a watcher asks for a fresh resolution ([`Watch::refresh`]).
    pub async fn refresh_requested(&self) {
        self.refresh.notified().await;
    }

    /// Whether every [`Watch`] is gone.
    pub fn is_closed(&self) -> bool {
        self.updates.is_closed()
    }
}

/// How the running service announces itself to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The service's name in the registry, e.g. `user`.
    pub service: String,
    /// This instance's unique id, e.g. `user-10.1.2.3-50051`.
    pub id: String,
    /// The host or IP peers reach it at (`discovery.advertise_host`).
    pub host: String,
    /// Its gRPC port.
    pub port: u16,
    /// The `grpc.health.v1` service name that reports its readiness (Consul's gRPC
    /// check asks for it), e.g. `trellis.user.v1.UserService`.
    pub health_service: String,
    /// Free-form metadata (version, metrics port), stored where the backend allows.
    pub metadata: BTreeMap<String, String>,
}

impl Registration {
    /// The instance peers reach this registration at.
    pub fn instance(&self) -> Instance {
        Instance::from_host_port(&self.host, self.port)
    }
}

/// A live registration; [`Self::deregister`] removes it (at shutdown, before the drain).
pub trait Registered: Send + Sync + 'static {
    /// Removes the registration and stops keeping it alive.
    ///
    /// # Errors
    /// [`DiscoveryError`] when the registry could not be told; the registration then
    /// expires on its own (lease TTL, critical-check deregistration).
    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<(), DiscoveryError>>;
}

/// Nothing to remove: the static and DNS backends do not register.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotRegistered;

impl Registered for NotRegistered {
    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<(), DiscoveryError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Resolves peers to instances and registers this service.
pub trait Registry: Send + Sync + 'static {
    /// The backend's name, as in `discovery.backend`.
    fn name(&self) -> &'static str;

    /// Starts watching `target`'s instances. Errors of the backend are logged and
    /// retried by the backend; the watch keeps its last set meanwhile.
    fn watch(&self, target: &Target) -> Watch;

    /// Registers this process as `registration`.
    ///
    /// # Errors
    /// [`DiscoveryError`] when the registry refuses it or cannot be reached.
    fn register<'a>(
        &'a self,
        registration: &'a Registration,
    ) -> BoxFuture<'a, Result<Box<dyn Registered>, DiscoveryError>>;
}

/// Why discovery or registration failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The registry could not be reached or answered with an error.
    #[error("{backend}: {message}")]
    Backend {
        /// `dns`, `consul` or `etcd`.
        backend: &'static str,
        /// What went wrong, with the address it went wrong at.
        message: String,
    },
}

impl DiscoveryError {
    /// A backend error.
    pub fn backend(backend: &'static str, message: impl fmt::Display) -> Self {
        Self::Backend {
            backend,
            message: message.to_string(),
        }
    }
}

/// The configured addresses, as they are: `discovery.backend = "static"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StaticRegistry;

impl Registry for StaticRegistry {
    fn name(&self) -> &'static str {
        "static"
    }

    fn watch(&self, target: &Target) -> Watch {
        Watch::fixed(target.addresses.iter().map(Instance::new).collect())
    }

    fn register<'a>(
        &'a self,
        _registration: &'a Registration,
    ) -> BoxFuture<'a, Result<Box<dyn Registered>, DiscoveryError>> {
        Box::pin(async { Ok(Box::new(NotRegistered) as Box<dyn Registered>) })
    }
}

/// Which registry finds peers and registers the service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `peers.<name>.addresses` as given; no registration.
    #[default]
    Static,
    /// DNS A/AAAA or SRV records; no registration.
    Dns,
    /// A Consul agent.
    Consul,
    /// An etcd cluster.
    Etcd,
}

/// The `discovery.*` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// `static` (default), `dns`, `consul` or `etcd`.
    pub backend: Backend,
    /// The host or IP peers reach this instance at, when it registers (Consul, etcd).
    /// Default: the `POD_IP` variable when set, else the listen address's IP when it is
    /// not unspecified, else `127.0.0.1`.
    pub advertise_host: Option<String>,
    /// The DNS backend's settings.
    pub dns: DnsConfig,
    /// The Consul backend's settings.
    pub consul: ConsulConfig,
    /// The etcd backend's settings.
    pub etcd: EtcdConfig,
}

impl DiscoveryConfig {
    /// Checks the values of the chosen backend.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.backend {
            Backend::Static => Ok(()),
            Backend::Dns => self.dns.validate("discovery.dns"),
            Backend::Consul => self.consul.validate("discovery.consul"),
            Backend::Etcd => self.etcd.validate("discovery.etcd"),
        }
    }

    /// The chosen registry.
    ///
    /// # Errors
    /// [`DiscoveryError`] when the backend cannot be set up (e.g. no system resolver
    /// configuration for DNS).
    pub fn registry(&self) -> Result<Arc<dyn Registry>, DiscoveryError> {
        Ok(match self.backend {
            Backend::Static => Arc::new(StaticRegistry),
            Backend::Dns => Arc::new(DnsRegistry::new(&self.dns)?),
            Backend::Consul => Arc::new(ConsulRegistry::new(&self.consul)?),
            Backend::Etcd => Arc::new(EtcdRegistry::new(&self.etcd)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_capped_at_max_instances() {
        let (publisher, watch) = channel();
        let flood: Vec<Instance> = (0..MAX_INSTANCES + 100)
            .map(|i| Instance::from_host_port("10.0.0.1", u16::try_from(1000 + i).unwrap_or(0)))
            .collect();
        publisher.publish(flood);
        assert_eq!(watch.current().map(|set| set.len()), Some(MAX_INSTANCES));
    }

    #[tokio::test]
    async fn a_publisher_wakes_watchers_only_on_a_different_set() {
        let (publisher, mut watch) = channel();
        assert_eq!(watch.current(), None);
        publisher.publish(vec![
            Instance::new("http://b:1"),
            Instance::new("http://a:1"),
        ]);
        assert!(watch.changed().await);
        let first = watch.current().unwrap();
        assert_eq!(
            first.iter().map(|i| i.uri.as_str()).collect::<Vec<_>>(),
            ["http://a:1", "http://b:1"]
        );
        publisher.publish(vec![
            Instance::new("http://a:1"),
            Instance::new("http://b:1"),
            Instance::new("http://a:1"),
        ]);
        assert!(
            !watch.updates.has_changed().unwrap(),
            "same set, no wake-up"
        );
        publisher.publish(Vec::new());
        assert!(watch.changed().await);
        assert_eq!(watch.current().unwrap().len(), 0);
        drop(publisher);
        assert!(!watch.changed().await, "a stopped backend ends the watch");
    }

    #[tokio::test]
    async fn the_publisher_sees_its_watchers_leave() {
        let (publisher, watch) = channel();
        let clone = watch.clone();
        drop(watch);
        assert!(!publisher.is_closed());
        drop(clone);
        tokio::time::timeout(std::time::Duration::from_secs(1), publisher.closed())
            .await
            .unwrap();
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(Instance::from_host_port("::1", 5).uri, "http://[::1]:5");
        assert_eq!(Instance::from_host_port("[::1]", 5).uri, "http://[::1]:5");
        assert_eq!(
            Instance::from_host_port("10.0.0.1", 5).uri,
            "http://10.0.0.1:5"
        );
    }

    #[test]
    fn static_registry_watches_the_configured_addresses() {
        let target = Target {
            peer: "user".into(),
            service: "user".into(),
            addresses: vec!["http://127.0.0.1:2".into(), "http://127.0.0.1:1".into()],
            srv: None,
        };
        let watch = StaticRegistry.watch(&target);
        assert_eq!(watch.current().unwrap().len(), 2);
    }
}
