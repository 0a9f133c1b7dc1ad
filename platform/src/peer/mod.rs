//! Clients to peer services, by name: addresses from discovery (static for now, behind
//! the [`Discovery`] trait so DNS and Consul can follow), load-balanced lazy channels, a
//! deadline on every call (sent as `grpc-timeout`), the current request id forwarded as
//! `x-request-id`, service credentials attached as a bearer token, the
//! `grpc_client_*` metrics of every call ([`crate::metrics`]), and — with tracing on —
//! a client span per call whose W3C trace context goes along
//! ([`crate::telemetry::rpc::client_span`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::HeaderValue;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument as _;
use trellis_proto::auth_v1::{IssueServiceTokenRequest, auth_service_client::AuthServiceClient};

use crate::config::{ConfigError, require_positive};
use crate::context::{REQUEST_ID_HEADER, current_request_id};
use crate::discovery::{Backend, Target};
use crate::metrics::{ClientMetrics, Metrics};
use crate::telemetry::rpc::{self, PeerTarget};

/// How to reach one peer.
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
    /// Deadline of each call, ms. Default 5000.
    pub timeout_ms: u64,
    /// Deadline of establishing a connection, ms. Default 2000.
    pub connect_timeout_ms: u64,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            addresses: String::new(),
            service: None,
            srv: None,
            timeout_ms: 5_000,
            connect_timeout_ms: 2_000,
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
        require_positive(&format!("{prefix}.timeout_ms"), self.timeout_ms)?;
        require_positive(
            &format!("{prefix}.connect_timeout_ms"),
            self.connect_timeout_ms,
        )
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
    /// Discovery found no address.
    #[error("no address for peer {0:?}")]
    NoAddress(String),
    /// An address is not a valid URI.
    #[error("invalid address for peer {peer:?}")]
    InvalidAddress {
        /// The peer.
        peer: String,
        /// The parse failure.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Finds the addresses of a peer by name.
pub trait Discovery: Send + Sync + 'static {
    /// The peer's current addresses (base URIs).
    ///
    /// # Errors
    /// [`PeerError::Unknown`] when the name is not known.
    fn resolve(&self, peer: &str) -> Result<Vec<String>, PeerError>;
}

/// Discovery from configuration: each peer's fixed address list.
#[derive(Debug, Clone, Default)]
pub struct StaticDiscovery {
    peers: HashMap<String, Vec<String>>,
}

impl StaticDiscovery {
    /// Discovery over `peers`' configured addresses.
    pub fn new(peers: &HashMap<String, PeerConfig>) -> Self {
        Self {
            peers: peers
                .iter()
                .map(|(name, config)| {
                    (
                        name.clone(),
                        config
                            .address_list()
                            .into_iter()
                            .map(str::to_owned)
                            .collect(),
                    )
                })
                .collect(),
        }
    }
}

impl Discovery for StaticDiscovery {
    fn resolve(&self, peer: &str) -> Result<Vec<String>, PeerError> {
        self.peers
            .get(peer)
            .cloned()
            .ok_or_else(|| PeerError::Unknown(peer.to_owned()))
    }
}

/// Something that supplies this service's own access token for peer calls.
pub trait CredentialSource: Send + Sync + 'static {
    /// A currently valid service access token.
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<String, Status>> + Send + '_>>;
}

/// The peers of a service: makes [`PeerChannel`]s by name.
#[derive(Clone)]
pub struct Peers {
    configs: HashMap<String, PeerConfig>,
    discovery: Arc<dyn Discovery>,
    credentials: Option<Arc<dyn CredentialSource>>,
    metrics: ClientMetrics,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("configs", &self.configs)
            .finish_non_exhaustive()
    }
}

impl Peers {
    /// Peers from configuration, with static discovery, no credentials and no metrics.
    pub fn new(configs: HashMap<String, PeerConfig>) -> Self {
        Self {
            discovery: Arc::new(StaticDiscovery::new(&configs)),
            configs,
            credentials: None,
            metrics: ClientMetrics::default(),
        }
    }

    /// Records the `grpc_client_*` metrics of calls through channels made after this
    /// into `metrics` (the service's handle).
    #[must_use]
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = metrics.client();
        self
    }

    /// Attaches `credentials` to every call made through channels made after this.
    #[must_use]
    pub fn with_credentials(mut self, credentials: Arc<dyn CredentialSource>) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// A channel to `peer`, carrying this service's credentials if it has any.
    ///
    /// # Errors
    /// [`PeerError`] when the peer is unknown or has no valid address.
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

    fn make_channel(
        &self,
        peer: &str,
        credentials: Option<Arc<dyn CredentialSource>>,
    ) -> Result<PeerChannel, PeerError> {
        let config = self
            .configs
            .get(peer)
            .ok_or_else(|| PeerError::Unknown(peer.to_owned()))?;
        let addresses = self.discovery.resolve(peer)?;
        let target = Arc::new(PeerTarget::new(peer, &addresses));
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut endpoints = Vec::with_capacity(addresses.len());
        for address in addresses {
            let endpoint = Endpoint::from_shared(address)
                .map_err(|source| PeerError::InvalidAddress {
                    peer: peer.to_owned(),
                    source,
                })?
                .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
                .timeout(timeout);
            endpoints.push(endpoint);
        }
        // One address: a plain lazy channel. tonic's balancer does not eject dead
        // endpoints, so it is only worth its cost with several.
        let channel = match endpoints.len() {
            0 => return Err(PeerError::NoAddress(peer.to_owned())),
            1 => endpoints.remove(0).connect_lazy(),
            _ => Channel::balance_list(endpoints.into_iter()),
        };
        Ok(PeerChannel {
            peer: Arc::from(peer),
            channel,
            timeout,
            credentials,
            target,
            metrics: self.metrics.clone(),
        })
    }
}

/// A channel to one peer; use it with any generated client.
#[derive(Clone)]
pub struct PeerChannel {
    peer: Arc<str>,
    channel: Channel,
    timeout: Duration,
    credentials: Option<Arc<dyn CredentialSource>>,
    /// Where calls go, for the client spans.
    target: Arc<PeerTarget>,
    metrics: ClientMetrics,
}

impl std::fmt::Debug for PeerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerChannel")
            .field("peer", &self.peer)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl tower::Service<http::Request<Body>> for PeerChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Use the channel that was polled ready; leave a clone for the next call.
        let clone = self.channel.clone();
        let mut channel = std::mem::replace(&mut self.channel, clone);
        let credentials = self.credentials.clone();
        let timeout = self.timeout;
        let peer = Arc::clone(&self.peer);
        let target = Arc::clone(&self.target);
        self.metrics
            .observe(request, move |mut request| async move {
                let headers = request.headers_mut();
                if !headers.contains_key("grpc-timeout")
                    && let Ok(value) = HeaderValue::from_str(&format!("{}m", timeout.as_millis()))
                {
                    headers.insert("grpc-timeout", value);
                }
                if !headers.contains_key(REQUEST_ID_HEADER) {
                    let id =
                        current_request_id().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                    if let Ok(value) = HeaderValue::from_str(&id) {
                        headers.insert(REQUEST_ID_HEADER, value);
                    }
                }
                if let Some(credentials) = credentials {
                    match credentials.token().await {
                        Ok(token) => {
                            if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
                                request
                                    .headers_mut()
                                    .insert(http::header::AUTHORIZATION, value);
                            }
                        }
                        Err(status) => {
                            return Ok(Status::unavailable(format!(
                                "no service credentials for calling {peer}: {}",
                                status.message()
                            ))
                            .into_http());
                        }
                    }
                }
                let path = request.uri().path().to_owned();
                let span = rpc::client_span(&path, &target, request.headers_mut());
                let call =
                    tokio::time::timeout(timeout, tower::Service::call(&mut channel, request));
                let response = match call.instrument(span.clone()).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(err)) => {
                        rpc::record_status(
                            &span,
                            rpc::Side::Client,
                            tonic::Code::Unavailable,
                            None,
                        );
                        return Err(err);
                    }
                    Err(_) => Status::deadline_exceeded(format!(
                        "{peer} did not answer within {} ms",
                        timeout.as_millis()
                    ))
                    .into_http(),
                };
                Ok(rpc::finish_client_response(span, response))
            })
    }
}

/// This service's credentials for calling peers: `client_id` and secret exchanged for a
/// short-lived service token at the auth service (OAuth 2.0 client credentials,
/// RFC 6749 §4.4), cached and renewed before it expires.
pub struct ClientCredentials {
    client_id: String,
    client_secret: SecretString,
    client: AuthServiceClient<PeerChannel>,
    cached: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Renew a token when less than this much of its life is left.
const RENEW_MARGIN: Duration = Duration::from_secs(30);

impl ClientCredentials {
    /// Credentials of `client_id`, obtained over `auth`, an anonymous channel to the auth
    /// service.
    pub fn new(
        client_id: impl Into<String>,
        client_secret: SecretString,
        auth: PeerChannel,
    ) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret,
            client: AuthServiceClient::new(auth),
            cached: Mutex::new(None),
        }
    }
}

impl CredentialSource for ClientCredentials {
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<String, Status>> + Send + '_>> {
        Box::pin(async move {
            // Holding the lock while fetching makes concurrent callers share one fetch.
            let mut cached = self.cached.lock().await;
            if let Some((token, renew_at)) = cached.as_ref()
                && Instant::now() < *renew_at
            {
                return Ok(token.clone());
            }
            let response = self
                .client
                .clone()
                .issue_service_token(IssueServiceTokenRequest {
                    client_id: self.client_id.clone(),
                    client_secret: self.client_secret.expose_secret().to_owned(),
                })
                .await?
                .into_inner();
            let lifetime = Duration::from_secs(u64::try_from(response.expires_in).unwrap_or(0));
            let renew_at = Instant::now() + lifetime.saturating_sub(RENEW_MARGIN.min(lifetime / 2));
            *cached = Some((response.access_token.clone(), renew_at));
            Ok(response.access_token)
        })
    }
}
