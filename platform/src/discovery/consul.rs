//! Consul discovery and registration through the local agent's HTTP API.
//!
//! - Registration: `PUT /v1/agent/service/register` with the instance's address, port and
//!   metadata and a gRPC check the agent runs against the service's `grpc.health.v1`
//!   status, with `DeregisterCriticalServiceAfter` so a crashed instance disappears on its
//!   own (Consul docs: "Service - Agent HTTP API", "Health checks: gRPC checks").
//! - Deregistration: `PUT /v1/agent/service/deregister/:service_id`.
//! - Discovery: blocking queries on
//!   `GET /v1/health/service/:service?passing=true&index=<X-Consul-Index>&wait=<wait_s>s`
//!   (Consul docs: "Health - HTTP API", "Blocking Queries"). As those docs' implementation
//!   details ask, the index restarts at 0 when it goes backwards, is never reused as 0 after
//!   an answer (no loop of non-blocking queries), and queries are at least
//!   100 ms apart.
//!
//! The HTTP client is hyper-util's (HTTP/1.1 to the agent, which normally listens on
//! `127.0.0.1:8500`; over TLS with `ca`, and a client certificate, see [`tls`]); the ACL
//! token goes in `X-Consul-Token`, and is required outside local development.

mod tls;
mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{
    BoxFuture, DiscoveryError, Instance, Registered, Registration, Registry, Target, Watch,
};
use crate::config::{ConfigError, require_positive};
use crate::status::ErrorChain;
use watch::spawn_watch;

const BACKEND: &str = "consul";

/// The variable Consul's own tools read the ACL token from (Consul docs: "Commands:
/// environment variables").
pub const TOKEN_VARIABLE: &str = "CONSUL_HTTP_TOKEN";

/// The longest `wait` Consul honours for a blocking query: 10 minutes.
const MAX_WAIT_S: u64 = 600;

/// Deadline of a registration or deregistration request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Extra time a blocking query's HTTP request gets beyond `wait` plus Consul's jitter of up
/// to `wait / 16`.
const QUERY_GRACE: Duration = Duration::from_secs(5);

/// Largest response body read from the agent, bytes.
const MAX_BODY_BYTES: usize = 16 << 20;

/// RFC 3986's unreserved characters stay as they are; everything else in a path segment
/// or query value is percent-encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

static CONSUL_INDEX: HeaderName = HeaderName::from_static("x-consul-index");
static CONSUL_TOKEN: HeaderName = HeaderName::from_static("x-consul-token");

/// The `discovery.consul.*` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsulConfig {
    /// The agent's HTTP API: an `http://` URL, or `https://` with `ca`. Default
    /// `http://127.0.0.1:8500`.
    pub address: String,
    /// PEM file of the CA the agent's HTTPS certificate chains to (it must name the
    /// address's host): required by, and only with, an `https://` address.
    pub ca: Option<std::path::PathBuf>,
    /// PEM files of a client certificate and its key, for an agent with
    /// `verify_incoming` on its HTTPS API. Both or neither; `https://` only.
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's key (see `cert`).
    pub key: Option<std::path::PathBuf>,
    /// ACL token sent as `X-Consul-Token`. Default: none (the `CONSUL_HTTP_TOKEN`
    /// variable when set). Secret.
    pub token: Option<SecretString>,
    /// Interval of the agent's gRPC health check, s. Default 10.
    pub check_interval_s: u64,
    /// `DeregisterCriticalServiceAfter`: the agent removes an instance whose check has
    /// been critical this long, s. Default 60.
    pub deregister_critical_after_s: u64,
    /// Longest wait of one blocking query, s, 1..=600. Default 55 (Consul caps it at
    /// 600).
    pub wait_s: u64,
    /// Datacenter to query. Default: the agent's.
    pub datacenter: Option<String>,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:8500".to_owned(),
            ca: None,
            cert: None,
            key: None,
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
        if let Err(message) = agent_base(&self.address, self.ca.is_some()) {
            return Err(ConfigError::invalid(format!("{prefix}.address"), message));
        }
        if let Err(message) = self.tls_files().client_config() {
            return Err(ConfigError::invalid(format!("{prefix}.ca"), message));
        }
        require_positive(&format!("{prefix}.check_interval_s"), self.check_interval_s)?;
        require_positive(
            &format!("{prefix}.deregister_critical_after_s"),
            self.deregister_critical_after_s,
        )?;
        require_positive(&format!("{prefix}.wait_s"), self.wait_s)?;
        if self.wait_s > MAX_WAIT_S {
            return Err(ConfigError::invalid(
                format!("{prefix}.wait_s"),
                format!(
                    "{} is above {MAX_WAIT_S}: Consul caps a blocking query's wait at 10 minutes",
                    self.wait_s
                ),
            ));
        }
        Ok(())
    }
}

/// The agent's base URL without a trailing `/`, or why `address` is not one: `https://`
/// exactly when `tls`.
fn agent_base(address: &str, tls: bool) -> Result<String, String> {
    let base = address.trim_end_matches('/');
    match (
        base.starts_with("https://"),
        base.starts_with("http://"),
        tls,
    ) {
        (true, _, true) | (false, true, false) => {}
        (true, _, false) => return Err(format!("{address:?}: an https:// address needs `ca`")),
        (false, true, true) => {
            return Err(format!(
                "{address:?}: with `ca` set, the address is https://"
            ));
        }
        (false, false, _) => return Err(format!("{address:?} is not an http(s):// URL")),
    }
    let uri: Uri = format!("{base}/v1/")
        .parse()
        .map_err(|error| format!("{address:?} is not a valid URL: {error}"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{address:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{address:?} must not have a query"));
    }
    Ok(base.to_owned())
}

/// The ACL token: the configured one, else `CONSUL_HTTP_TOKEN` (`from_env`) when not empty.
fn token_header(
    configured: Option<&SecretString>,
    from_env: Option<String>,
) -> Result<Option<HeaderValue>, DiscoveryError> {
    let token = match configured {
        Some(token) => Some(token.expose_secret().to_owned()),
        None => from_env.filter(|token| !token.is_empty()),
    };
    token
        .map(|token| {
            let mut value = HeaderValue::from_str(&token).map_err(|_| {
                DiscoveryError::backend(
                    BACKEND,
                    "the ACL token (discovery.consul.token or CONSUL_HTTP_TOKEN) has characters an HTTP header cannot carry",
                )
            })?;
            value.set_sensitive(true);
            Ok(value)
        })
        .transpose()
}

/// Delays between retries of a failed blocking query: doubling from `initial` up to
/// `max`.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// The Consul backend: a client of the local agent's HTTP API.
#[derive(Debug, Clone)]
pub struct ConsulRegistry {
    agent: Arc<Agent>,
}

/// What every request to the agent needs.
struct Agent {
    http: Client<tls::AgentConnector, Full<Bytes>>,
    base: String,
    token: Option<HeaderValue>,
    check_interval_s: u64,
    deregister_critical_after_s: u64,
    wait_s: u64,
    datacenter: Option<String>,
    backoff: Backoff,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("wait_s", &self.wait_s)
            .field("datacenter", &self.datacenter)
            .finish_non_exhaustive()
    }
}

impl ConsulConfig {
    fn tls_files(&self) -> tls::TlsFiles {
        tls::TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    /// Whether an ACL token is set: `token`, or a non-empty `CONSUL_HTTP_TOKEN`.
    pub fn has_token(&self) -> bool {
        self.token.is_some() || std::env::var(TOKEN_VARIABLE).is_ok_and(|token| !token.is_empty())
    }
}

impl ConsulRegistry {
    /// A client of the agent at `config.address`; the token is `config.token`, else the
    /// `CONSUL_HTTP_TOKEN` variable when set and not empty.
    ///
    /// # Errors
    /// [`DiscoveryError`] when the address is not a valid `http://` URL or the token
    /// cannot be sent in a header.
    pub fn new(config: &ConsulConfig) -> Result<Self, DiscoveryError> {
        let base = agent_base(&config.address, config.ca.is_some())
            .map_err(|message| DiscoveryError::backend(BACKEND, message))?;
        let token = token_header(config.token.as_ref(), std::env::var(TOKEN_VARIABLE).ok())?;
        let tls = config
            .tls_files()
            .client_config()
            .map_err(|message| DiscoveryError::backend(BACKEND, message))?;
        let http = Client::builder(TokioExecutor::new()).build(tls::AgentConnector::new(tls));
        Ok(Self {
            agent: Arc::new(Agent {
                http,
                base,
                token,
                check_interval_s: config.check_interval_s,
                deregister_critical_after_s: config.deregister_critical_after_s,
                wait_s: config.wait_s,
                datacenter: config.datacenter.clone(),
                backoff: Backoff::default(),
            }),
        })
    }
}

impl Registry for ConsulRegistry {
    fn name(&self) -> &'static str {
        BACKEND
    }

    /// Spawns the blocking-query loop on the current Tokio runtime (call it inside one).
    fn watch(&self, target: &Target) -> Watch {
        let (publisher, watch) = super::channel();
        drop(spawn_watch(Arc::clone(&self.agent), target, publisher));
        watch
    }

    fn register<'a>(
        &'a self,
        registration: &'a Registration,
    ) -> BoxFuture<'a, Result<Box<dyn Registered>, DiscoveryError>> {
        Box::pin(async move {
            self.agent.register(registration).await?;
            Ok(Box::new(ConsulRegistration {
                agent: Arc::clone(&self.agent),
                id: registration.id.clone(),
            }) as Box<dyn Registered>)
        })
    }
}

/// A service registered with the agent; deregistering removes its ID.
#[derive(Debug)]
struct ConsulRegistration {
    agent: Arc<Agent>,
    id: String,
}

impl Registered for ConsulRegistration {
    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<(), DiscoveryError>> {
        Box::pin(async move { self.agent.deregister(&self.id).await })
    }
}

/// The service definition `PUT /v1/agent/service/register` takes (Consul's field names).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceDefinition<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    address: &'a str,
    port: u16,
    meta: &'a BTreeMap<String, String>,
    check: GrpcCheck,
}

/// An agent-run gRPC health check (`grpc.health.v1.Health/Check` on `GRPC`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct GrpcCheck {
    /// `host:port/<health service>`.
    #[serde(rename = "GRPC")]
    grpc: String,
    #[serde(rename = "GRPCUseTLS")]
    grpc_use_tls: bool,
    interval: String,
    deregister_critical_service_after: String,
}

/// One element of `/v1/health/service/:service`'s answer (the fields used here).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceEntry {
    node: NodeInfo,
    service: ServiceInfo,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeInfo {
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceInfo {
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
}

/// A blocking query's answer.
#[derive(Debug)]
struct Health {
    index: u64,
    instances: Vec<Instance>,
}

/// A successful answer's headers and body.
struct Answer {
    headers: http::HeaderMap,
    body: Bytes,
}

impl Agent {
    async fn register(&self, registration: &Registration) -> Result<(), DiscoveryError> {
        let host = registration
            .host
            .trim_start_matches('[')
            .trim_end_matches(']');
        let definition = ServiceDefinition {
            id: &registration.id,
            name: &registration.service,
            address: host,
            port: registration.port,
            meta: &registration.metadata,
            check: GrpcCheck {
                grpc: grpc_check_target(registration),
                grpc_use_tls: false,
                interval: format!("{}s", self.check_interval_s),
                deregister_critical_service_after: format!("{}s", self.deregister_critical_after_s),
            },
        };
        let body = serde_json::to_vec(&definition).map_err(|error| {
            DiscoveryError::backend(BACKEND, format!("encoding the registration: {error}"))
        })?;
        self.send(
            Method::PUT,
            "/v1/agent/service/register".to_owned(),
            Some(body),
            REQUEST_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    async fn deregister(&self, id: &str) -> Result<(), DiscoveryError> {
        let path = format!("/v1/agent/service/deregister/{}", encode(id));
        self.send(Method::PUT, path, None, REQUEST_TIMEOUT).await?;
        Ok(())
    }

    /// One blocking query for `service`'s passing instances, waiting for a change after
    /// `index` (0: answer at once).
    async fn health(&self, service: &str, index: u64) -> Result<Health, DiscoveryError> {
        let mut path = format!(
            "/v1/health/service/{}?passing=true&index={index}&wait={}s",
            encode(service),
            self.wait_s
        );
        if let Some(datacenter) = &self.datacenter {
            path.push_str("&dc=");
            path.push_str(&encode(datacenter));
        }
        // Consul adds up to wait/16 of jitter to the wait.
        let wait = Duration::from_secs(self.wait_s);
        let timeout = wait + wait / 16 + QUERY_GRACE;
        let answer = self.send(Method::GET, path.clone(), None, timeout).await?;
        let index = answer
            .headers
            .get(&CONSUL_INDEX)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                DiscoveryError::backend(
                    BACKEND,
                    format!("GET {}{path}: no valid X-Consul-Index header", self.base),
                )
            })?;
        let entries: Vec<ServiceEntry> = serde_json::from_slice(&answer.body).map_err(|error| {
            DiscoveryError::backend(
                BACKEND,
                format!("GET {}{path}: unexpected answer: {error}", self.base),
            )
        })?;
        let instances = entries
            .into_iter()
            .filter_map(|entry| entry_instance(service, entry))
            .collect();
        Ok(Health { index, instances })
    }

    /// Sends one request to the agent and reads the whole answer.
    ///
    /// # Errors
    /// [`DiscoveryError`] naming the method and URL when the agent cannot be reached,
    /// does not answer within `timeout`, or answers with a status other than 2xx (with
    /// the status and the start of the body).
    async fn send(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, DiscoveryError> {
        let url = format!("{}{path}", self.base);
        let fail = |message: String| {
            DiscoveryError::backend(BACKEND, format!("{method} {url}: {message}"))
        };
        let mut request = Request::builder().method(method.clone()).uri(&url);
        if let Some(token) = &self.token {
            request = request.header(&CONSUL_TOKEN, token.clone());
        }
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|error| fail(error.to_string()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|error| ErrorChain(&error).to_string())?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|error| format!("reading the answer: {error}"))?
                .to_bytes();
            Ok::<_, String>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| fail(format!("no answer within {} ms", timeout.as_millis())))?
            .map_err(fail)?;
        if !parts.status.is_success() {
            return Err(fail(status_message(parts.status, &body)));
        }
        Ok(Answer {
            headers: parts.headers,
            body,
        })
    }
}

/// `status: body`, the body cut to its first 512 characters.
fn status_message(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let cut: String = text.chars().take(512).collect();
    if cut.is_empty() {
        status.to_string()
    } else if cut.len() < text.len() {
        format!("{status}: {cut}…")
    } else {
        format!("{status}: {cut}")
    }
}

/// Percent-encodes a path segment or query value.
fn encode(value: &str) -> String {
    utf8_percent_encode(value, COMPONENT).to_string()
}

/// The gRPC check's target, `host:port/<health service>` (an IPv6 host bracketed), or
/// `host:port` for the server's overall health (`""`).
fn grpc_check_target(registration: &Registration) -> String {
    let instance = registration.instance();
    let authority = instance
        .uri
        .strip_prefix("http://")
        .unwrap_or(&instance.uri);
    if registration.health_service.is_empty() {
        authority.to_owned()
    } else {
        format!("{authority}/{}", registration.health_service)
    }
}

/// The instance an entry describes: `Service.Address` (or `Node.Address` when it is
/// empty, as Consul's DNS interface does) and `Service.Port`; `None`, logged, when it
/// has no usable address.
fn entry_instance(service: &str, entry: ServiceEntry) -> Option<Instance> {
    let host = if entry.service.address.is_empty() {
        entry.node.address
    } else {
        entry.service.address
    };
    if host.is_empty() || entry.service.port == 0 {
        tracing::warn!(
            service,
            host,
            port = entry.service.port,
            "consul: skipping an instance without an address or port"
        );
        return None;
    }
    let instance = Instance::from_host_port(&host, entry.service.port);
    if instance.uri.parse::<Uri>().is_err() {
        tracing::warn!(service, uri = %instance, "consul: skipping an instance whose address is not a valid URI");
        return None;
    }
    Some(instance)
}

#[cfg(test)]
mod tests;
