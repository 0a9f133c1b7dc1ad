//! Clients to peer services, by name. A [`PeerChannel`] works with any generated client
//! and gives every call:
//!
//! - **discovery**: the peer's instances from the service's [`Registry`]
//!   (`discovery.backend`: static addresses, DNS, Consul or etcd), followed as they change;
//! - **balancing** over them with health checking and outlier ejection
//!   ([`balance`]): power of two choices on peak-EWMA latency (streams: on outstanding
//!   calls); a set with no instance in rotation fails fast with UNAVAILABLE;
//! - **a deadline** ([`call`]): the smaller of the peer's `timeout_ms` and what is left of
//!   the handler's own deadline, sent as `grpc-timeout`;
//! - **failure accounting a caller cannot shape** ([`call`]): only what the peer caused
//!   counts for its breaker and the ejection of its instances — its own `timeout_ms`
//!   expiring does, a deadline the caller chose, a cancelled call or a call refused for
//!   want of time counts nothing ([`caused_by_caller`] tells such a status apart);
//! - **retries** ([`retry`]) of methods the protos declare idempotent
//!   ([`methods`]), on UNAVAILABLE, within a budget and the deadline;
//! - **a circuit breaker** per peer ([`breaker`]) around the whole call: while open it
//!   answers UNAVAILABLE without I/O;
//! - the current request id as `x-request-id`, the service's credentials as a bearer
//!   token, the `grpc_client_*` metrics and the resilience metrics ([`stats`]), and —
//!   with tracing on — a client span whose W3C trace context goes along
//!   ([`crate::telemetry::rpc::client_span`]).

pub mod breaker;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use serde::Deserialize;
use serde_with::serde_as;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::Endpoint;
use tower::ServiceExt as _;
use tracing::Instrument as _;

use crate::config::{ConfigError, NonZeroMilliSeconds};
use crate::context::{REQUEST_ID_HEADER, current_request_id};
use crate::discovery::{Backend, Registry, StaticRegistry, Target};
use crate::faults::{FaultMetrics, Faults, FaultsConfig};
use crate::metrics::{ClientMetrics, Metrics, MetricsError};
use crate::telemetry::rpc::{self, PeerTarget};
use crate::tls::{PeerTls, SpiffeId, TlsConfig, TlsSource};

pub mod balance;
pub mod call;
pub mod methods;
pub mod retry;
mod stats;

pub use balance::{EndpointState, EndpointStatus, OutlierConfig};
pub use breaker::{Breaker, BreakerConfig, CircuitState};
pub use call::{CALLER_CAUSED_KEY, caused_by_caller};
pub use methods::{MethodInfo, MethodTable};
pub use retry::RetryConfig;

use balance::{Balancer, BalancerSettings};
use retry::RetryPolicy;
use stats::{PeerCounters, ResilienceMetrics};

/// How to reach one peer.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerConfig {
    /// Comma-separated base URIs, e.g. `http://127.0.0.1:50053`; calls are spread over
    /// them. With `discovery.backend = "dns"` each host is looked up (A/AAAA) and every
    /// address it has is an instance. Unused by Consul and etcd.
    pub addresses: String,
    /// The peer's name in the registry (Consul, etcd). Default: the peer's key.
    pub service: Option<String>,
    /// An SRV name to resolve instead of `addresses` (DNS backend), e.g.
    /// `_grpc._tcp.user.default.svc.cluster.local`.
    pub srv: Option<String>,
    /// `timeout_ms`: deadline of each call, ms. Default 5000.
    #[serde(rename = "timeout_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub timeout: Duration,
    /// `connect_timeout_ms`: deadline of establishing a connection, ms; also how long a call waits
    /// for discovery's first answer. Default 2000.
    #[serde(rename = "connect_timeout_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub connect_timeout: Duration,
    /// Follow each instance's `grpc.health.v1` Watch and send calls only to those
    /// SERVING (gRPC client-side health checking). Default true.
    pub health_check: bool,
    /// Outlier ejection.
    pub outlier: OutlierConfig,
    /// Retries of calls to idempotent methods.
    pub retry: RetryConfig,
    /// The peer's circuit breaker.
    pub breaker: BreakerConfig,
    /// The SPIFFE ID the peer must prove under mutual TLS. Default: the peer's name as
    /// a workload of this service's trust domain and namespace
    /// (`spiffe://<tls.trust_domain>/ns/<tls.namespace>/sa/<peer>`).
    pub spiffe_id: Option<String>,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            addresses: String::new(),
            service: None,
            srv: None,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            health_check: true,
            outlier: OutlierConfig::default(),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            spiffe_id: None,
        }
    }
}

impl PeerConfig {
    /// The defaults, with one address.
    pub fn with_address(address: impl Into<String>) -> Self {
        Self {
            addresses: address.into(),
            ..Self::default()
        }
    }

    /// Checks the values for `backend`; `prefix` is the section's key, e.g.
    /// `peers.notification`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self, prefix: &str, backend: Backend) -> Result<(), ConfigError> {
        let addresses = self.address_list();
        let needs_addresses = match backend {
            Backend::Static => true,
            Backend::Dns => self.srv.as_deref().is_none_or(str::is_empty),
            Backend::Consul | Backend::Etcd => false,
        };
        if addresses.is_empty() && needs_addresses {
            return Err(ConfigError::invalid(
                format!("{prefix}.addresses"),
                match backend {
                    Backend::Dns => "must name at least one address, or set srv",
                    _ => "must name at least one address",
                },
            ));
        }
        for address in addresses {
            if Endpoint::from_shared(address.to_owned()).is_err() || !address.starts_with("http") {
                return Err(ConfigError::invalid(
                    format!("{prefix}.addresses"),
                    format!("{address:?} is not an http:// or https:// URI"),
                ));
            }
        }
        if let Some(id) = &self.spiffe_id
            && SpiffeId::parse(id).is_none()
        {
            return Err(ConfigError::invalid(
                format!("{prefix}.spiffe_id"),
                format!("{id:?} is not spiffe://<trust domain>/ns/<namespace>/sa/<service>"),
            ));
        }
        self.outlier.validate(&format!("{prefix}.outlier"))?;
        self.retry.validate(&format!("{prefix}.retry"))?;
        self.breaker.validate(&format!("{prefix}.breaker"))
    }

    /// The SPIFFE ID the peer named `peer` must prove under `tls`.
    pub fn identity(&self, peer: &str, tls: &TlsConfig) -> SpiffeId {
        self.spiffe_id
            .as_deref()
            .and_then(SpiffeId::parse)
            .unwrap_or_else(|| tls.identity_of(peer))
    }

    /// The service the peer named `peer` is, as tokens for calling it name it (`aud`):
    /// the service of `spiffe_id` when set, else `peer`.
    pub fn audience(&self, peer: &str) -> String {
        self.spiffe_id
            .as_deref()
            .and_then(SpiffeId::parse)
            .map_or_else(|| peer.to_owned(), |id| id.service().to_owned())
    }

    /// What discovery resolves for the peer named `peer`.
    pub fn target(&self, peer: &str) -> Target {
        Target {
            peer: peer.to_owned(),
            service: self
                .service
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| peer.to_owned()),
            addresses: self.address_list().into_iter().map(str::to_owned).collect(),
            srv: self.srv.clone().filter(|s| !s.is_empty()),
        }
    }

    fn address_list(&self) -> Vec<&str> {
        self.addresses
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect()
    }
}

/// Why a peer channel could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No configuration names the peer.
    #[error("no peer named {0:?} is configured")]
    Unknown(String),
    /// The peer's configuration is not acceptable.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Something that supplies this service's own access token for peer calls.
pub trait CredentialSource: Send + Sync + 'static {
    /// A currently valid service access token for calling the service named `audience`
    /// (its `aud`: a service refuses a token issued for another).
    fn token<'a>(
        &'a self,
        audience: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<String, Status>> + Send + 'a>>;
}

/// The peers of a service: makes [`PeerChannel`]s by name. Channels to one peer share
/// its balancer (instances, health, load, ejections) and its retry budget, whichever
/// clone of [`Peers`] made them.
#[derive(Clone)]
pub struct Peers {
    configs: HashMap<String, PeerConfig>,
    registry: Arc<dyn Registry>,
    methods: MethodTable,
    credentials: Option<Arc<dyn CredentialSource>>,
    metrics: ClientMetrics,
    resilience: Option<ResilienceMetrics>,
    tls: Option<TlsSource>,
    faults: Arc<FaultsConfig>,
    fault_metrics: Option<FaultMetrics>,
    shared: Arc<parking_lot::Mutex<HashMap<String, Arc<PeerShared>>>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("configs", &self.configs)
            .field("registry", &self.registry.name())
            .finish_non_exhaustive()
    }
}

impl Peers {
    /// Peers from configuration, found by static discovery (the configured addresses),
    /// with no credentials and no metrics.
    pub fn new(configs: HashMap<String, PeerConfig>) -> Self {
        Self::with_registry(configs, Arc::new(StaticRegistry))
    }

    /// Peers from configuration, found through `registry`.
    pub fn with_registry(
        configs: HashMap<String, PeerConfig>,
        registry: Arc<dyn Registry>,
    ) -> Self {
        Self {
            configs,
            registry,
            methods: MethodTable::trellis(),
            credentials: None,
            metrics: ClientMetrics::default(),
            resilience: None,
            tls: None,
            faults: Arc::default(),
            fault_metrics: None,
            shared: Arc::default(),
        }
    }

    /// Injects the faults `config` gives for each peer (`faults.peers.<peer>.*`, see
    /// [`crate::faults`]) into calls through channels made after this, counted in
    /// `metrics` when given. Nothing is injected unless `config.enabled`.
    #[must_use]
    pub fn with_faults(mut self, config: FaultsConfig, metrics: Option<FaultMetrics>) -> Self {
        self.faults = Arc::new(config);
        self.fault_metrics = metrics;
        self
    }

    /// Connects to every peer over mutual TLS with `source`'s certificate, accepting
    /// only the peer's SPIFFE ID ([`PeerConfig::identity`]); for channels made after
    /// this.
    #[must_use]
    pub fn with_tls(mut self, source: TlsSource) -> Self {
        self.tls = Some(source);
        self
    }

    /// A channel to `peer` that carries no credentials and goes only to the addresses
    /// configured for it (`peers.<peer>.addresses`), never to an instance a registry
    /// reports: for what must reach the real peer — a client secret, signing keys — when
    /// no certificate proves the peer's identity. Under mutual TLS the certificate
    /// proves it, and this is [`Self::anonymous_channel`]; likewise when no address is
    /// configured (a registry-only peer), with a warning.
    ///
    /// # Errors
    /// As [`Self::channel`].
    pub fn pinned_channel(&self, peer: &str) -> Result<PeerChannel, PeerError> {
        let config = self
            .configs
            .get(peer)
            .ok_or_else(|| PeerError::Unknown(peer.to_owned()))?;
        if self.tls.is_some() || self.registry.name() == "static" {
            return self.anonymous_channel(peer);
        }
        if config.address_list().is_empty() {
            tracing::warn!(
                peer,
                registry = self.registry.name(),
                "no peers.{peer}.addresses and no tls: signing keys and the client secret \
                 follow the registry, which a forged entry can redirect; set tls or the \
                 addresses"
            );
            return self.anonymous_channel(peer);
        }
        let pinned = Self {
            registry: Arc::new(StaticRegistry),
            shared: Arc::default(),
            ..self.clone()
        };
        pinned.make_channel(peer, None)
    }

    /// Reads which methods are safe to retry from `descriptor_set` (an encoded
    /// `FileDescriptorSet`) too, besides Trellis's own protos; for channels made after
    /// this.
    #[must_use]
    pub fn with_descriptor_set(mut self, descriptor_set: &[u8]) -> Self {
        self.methods.add(descriptor_set);
        self
    }

    /// Records the `grpc_client_*` metrics of calls through channels made after this
    /// into `metrics` (the service's handle), with the retries, budget exhaustion,
    /// ejections and instance states of each peer.
    ///
    /// # Errors
    /// [`MetricsError`] when the peer families are already registered in `metrics`.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Result<Self, MetricsError> {
        self.metrics = metrics.client();
        let resilience = ResilienceMetrics::register(metrics, Arc::clone(&self.shared))?;
        self.resilience = Some(resilience);
        Ok(self)
    }

    /// Attaches `credentials` to every call made through channels made after this.
    #[must_use]
    pub fn with_credentials(mut self, credentials: Arc<dyn CredentialSource>) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// A channel to `peer`, carrying this service's credentials if it has any. Must be
    /// called within a tokio runtime.
    ///
    /// # Errors
    /// [`PeerError::Unknown`] when no `peers.<peer>` is configured.
    pub fn channel(&self, peer: &str) -> Result<PeerChannel, PeerError> {
        self.make_channel(peer, self.credentials.clone())
    }

    /// A channel to `peer` that carries no credentials (for public methods, such as
    /// fetching credentials themselves).
    ///
    /// # Errors
    /// As [`Self::channel`].
    pub fn anonymous_channel(&self, peer: &str) -> Result<PeerChannel, PeerError> {
        self.make_channel(peer, None)
    }

    /// Each instance of `peer` the balancer knows, with its state; empty before the
    /// first channel to it is made.
    pub fn instances(&self, peer: &str) -> Vec<EndpointStatus> {
        self.shared
            .lock()
            .get(peer)
            .map(|shared| shared.balancer.status())
            .unwrap_or_default()
    }

    /// The state of `peer`'s circuit breaker; `None` before the first channel to it is
    /// made. The `trellis_peer_circuit_state{peer}` gauge reads the same.
    pub fn circuit_state(&self, peer: &str) -> Option<CircuitState> {
        self.shared
            .lock()
            .get(peer)
            .map(|shared| shared.breaker.state())
    }

    fn make_channel(
        &self,
        peer: &str,
        credentials: Option<Arc<dyn CredentialSource>>,
    ) -> Result<PeerChannel, PeerError> {
        let config = self
            .configs
            .get(peer)
            .ok_or_else(|| PeerError::Unknown(peer.to_owned()))?;
        let shared = {
            let mut peers = self.shared.lock();
            match peers.get(peer) {
                Some(shared) => Arc::clone(shared),
                None => {
                    let shared = self.make_shared(peer, config)?;
                    peers.insert(peer.to_owned(), Arc::clone(&shared));
                    shared
                }
            }
        };
        Ok(PeerChannel {
            shared,
            credentials,
            metrics: self.metrics.clone(),
        })
    }

    fn make_shared(&self, peer: &str, config: &PeerConfig) -> Result<Arc<PeerShared>, PeerError> {
        let breaker = Breaker::new(peer, &config.breaker)?;
        let target = config.target(peer);
        let counters = self
            .resilience
            .as_ref()
            .map(|metrics| metrics.counters(peer))
            .unwrap_or_default();
        let balancer = Balancer::new(
            peer,
            self.registry.watch(&target),
            BalancerSettings {
                connect_timeout: config.connect_timeout,
                health_check: config.health_check,
                outlier: config.outlier.clone(),
                ejections_total: counters.ejections.clone(),
                tls: self.tls.as_ref().map(|source| {
                    PeerTls::new(source.clone(), config.identity(peer, source.config()))
                }),
            },
        );
        Ok(Arc::new(PeerShared {
            breaker,
            span_target: Arc::new(PeerTarget::new(peer, &target.addresses)),
            balancer,
            methods: self.methods.clone(),
            timeout: config.timeout,
            retry: RetryPolicy::new(&config.retry),
            counters,
            audience: config.audience(peer),
            faults: Faults::for_peer(&self.faults, peer, self.fault_metrics.as_ref()),
        }))
    }
}

/// What every channel to one peer shares.
#[derive(Debug)]
struct PeerShared {
    balancer: Arc<Balancer>,
    breaker: Breaker,
    methods: MethodTable,
    timeout: Duration,
    retry: RetryPolicy,
    counters: PeerCounters,
    /// Where calls go, for the client spans.
    span_target: Arc<PeerTarget>,
    /// The service the calls are for: the `aud` of the tokens they carry.
    audience: String,
    /// Faults injected on purpose (`faults.peers.<peer>`), if any.
    faults: Option<Arc<Faults>>,
}

/// A channel to one peer; use it with any generated client. Each call is balanced over
/// the peer's instances, given a deadline and retried when that is safe (see the
/// module docs); failures are answered as gRPC statuses, so the error type is
/// [`Infallible`].
#[derive(Clone)]
pub struct PeerChannel {
    shared: Arc<PeerShared>,
    credentials: Option<Arc<dyn CredentialSource>>,
    metrics: ClientMetrics,
}

impl std::fmt::Debug for PeerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerChannel")
            .field("peer", self.shared.balancer.peer())
            .field("timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}

impl tower::Service<http::Request<Body>> for PeerChannel {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is per instance: each attempt waits for its instance's channel.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let credentials = self.credentials.clone();
        self.metrics
            .observe(request, move |mut request| async move {
                // The deadline counts from here: the credentials below take time too.
                let deadline = call::CallDeadline::new(shared.timeout, request.headers());
                if deadline.passed() {
                    // Refused before the breaker: sent nowhere, counted nowhere.
                    return Ok(call::no_time_left(shared.balancer.peer()));
                }
                request.extensions_mut().insert(deadline);
                // Faults come first (gRFC A33): above the breaker, balancing and retries.
                let fault = shared
                    .faults
                    .as_ref()
                    .and_then(|faults| faults.plan(request.uri().path(), request.headers()));
                if let Some(plan) = &fault
                    && let Some(answer) = deadline.inject(plan, shared.balancer.peer()).await
                {
                    return Ok(answer);
                }
                let headers = request.headers_mut();
                if !headers.contains_key(REQUEST_ID_HEADER) {
                    let id =
                        current_request_id().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                    if let Ok(value) = HeaderValue::from_str(&id) {
                        headers.insert(REQUEST_ID_HEADER, value);
                    }
                }
                if let Some(credentials) = credentials {
                    match credentials.token(&shared.audience).await {
                        Ok(token) => {
                            if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
                                request
                                    .headers_mut()
                                    .insert(http::header::AUTHORIZATION, value);
                            }
                        }
                        Err(status) if caused_by_caller(&status) => {
                            // The caller's deadline ran out while the token was fetched.
                            return Ok(call::no_time_left(shared.balancer.peer()));
                        }
                        Err(status) => {
                            return Ok(Status::unavailable(format!(
                                "no service credentials for calling {}: {}",
                                shared.balancer.peer(),
                                status.message()
                            ))
                            .into_http());
                        }
                    }
                }
                let path = request.uri().path().to_owned();
                let span = rpc::client_span(&path, &shared.span_target, request.headers_mut());
                let attempts = call::Attempts(Arc::clone(&shared));
                let response = tower::Layer::layer(&shared.breaker, attempts)
                    .oneshot(request)
                    .instrument(span.clone())
                    .await
                    .unwrap_or_else(|never| match never {});
                drop(fault);
                Ok(rpc::finish_client_response(span, response))
            })
    }
}
