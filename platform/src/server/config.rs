//! The `server` section of a service's configuration: listen address, message and
//! concurrency limits, deadlines, HTTP/2 settings, connection ages, the drain bound and
//! the browser origins allowed to call (CORS).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use serde_with::serde_as;

use crate::config::{ConfigError, NonZeroMilliSeconds, require_positive};

/// The `server` section of a service's configuration.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `0.0.0.0:50051`; port 0 picks a free port.
    pub listen_addr: SocketAddr,
    /// Largest message accepted or sent, in bytes. Default 4 MiB (gRPC's usual limit).
    pub max_message_bytes: usize,
    /// Most requests handled at once across all connections: the hard ceiling of
    /// admission ([`super::admission`]); a call over it is answered RESOURCE_EXHAUSTED at
    /// once, never queued. Health and reflection are not counted. Default 1024.
    pub max_concurrent_requests: usize,
    /// Where the adaptive concurrency limit of unary calls starts (TCP Vegas; see
    /// [`super::admission`]), in calls; kept between `min_concurrency_limit` and
    /// `max_concurrent_requests`. Default 64.
    pub initial_concurrency_limit: usize,
    /// The floor of the adaptive concurrency limit, in calls: however latency moves, this
    /// many unary calls may run at once (at most `max_concurrent_requests`). Setting it
    /// to `max_concurrent_requests` turns adaptation off. Default 8.
    pub min_concurrency_limit: usize,
    /// `request_body_timeout_ms`: how long a unary or server-streaming call's request
    /// body may take to arrive, in ms, counted from its headers; a call still waiting then
    /// is answered DEADLINE_EXCEEDED (slowloris). The body's wait holds no concurrency
    /// slot. Client-streaming and bidirectional calls are not bounded here. Default 5000.
    #[serde(rename = "request_body_timeout_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub request_body_timeout: Duration,
    /// Most connections open at once from one client address (IPv6: one /64); over it a
    /// new connection is closed as soon as it is accepted. Peers in `trusted_proxies` are
    /// exempt (they carry many clients). Default 256.
    pub max_connections_per_address: usize,
    /// `request_timeout_ms`: longest deadline of a call, in ms: the deadline of calls that set no
    /// `grpc-timeout` and the cap of those that set a longer one; at it the call is answered
    /// DEADLINE_EXCEEDED (see [`super::deadline`]). Default 30000.
    #[serde(rename = "request_timeout_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub request_timeout: Duration,
    /// `drain_timeout_ms`: how long shutdown waits for in-flight calls before ending open streams,
    /// in ms. Default 10000.
    #[serde(rename = "drain_timeout_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub drain_timeout: Duration,
    /// `readiness_interval_ms`: how often the readiness probe (e.g. a database ping) runs, in ms.
    /// Default 5000.
    #[serde(rename = "readiness_interval_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub readiness_interval: Duration,
    /// Most concurrent streams (calls) a client may open on one HTTP/2 connection
    /// (RFC 9113 `SETTINGS_MAX_CONCURRENT_STREAMS`); a well-behaved client queues the
    /// rest. Default 200 (hyper's own default, which tonic otherwise overrides with
    /// "unlimited").
    pub http2_max_concurrent_streams: u32,
    /// `http2_keepalive_interval_ms`: how often the server pings an idle connection's client
    /// (HTTP/2 PING), in ms. Default 60000.
    #[serde(rename = "http2_keepalive_interval_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub http2_keepalive_interval: Duration,
    /// `http2_keepalive_timeout_ms`: how long the server waits for a ping's acknowledgement before
    /// it closes the connection, in ms. Default 20000 (grpc-go's).
    #[serde(rename = "http2_keepalive_timeout_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub http2_keepalive_timeout: Duration,
    /// Most streams a client may open and reset before the server answers them
    /// (CVE-2023-44487, "rapid reset"); over it the connection is closed. Default 20
    /// (h2's).
    pub http2_max_pending_accept_reset_streams: usize,
    /// Most streams the server resets because of a client's protocol errors before it
    /// closes the connection (CVE-2024-27316 class). Default 1024 (hyper's).
    pub http2_max_local_error_reset_streams: usize,
    /// `max_connection_age_ms`: age after which a connection is told to go away (HTTP/2 GOAWAY), in
    /// ms, so clients reconnect and rebalance across replicas (gRFC A9 `MAX_CONNECTION_AGE`).
    /// Default 1800000 (30 min).
    #[serde(rename = "max_connection_age_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub max_connection_age: Duration,
    /// `max_connection_age_grace_ms`: how long calls still open on a connection past its maximum
    /// age may go on, in ms; then the connection is closed (gRFC A9 `MAX_CONNECTION_AGE_GRACE`).
    /// Long-lived streams end here and clients resubscribe. Default 300000 (5 min).
    #[serde(rename = "max_connection_age_grace_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub max_connection_age_grace: Duration,
    /// The proxies (CIDR ranges, e.g. `10.0.0.0/8`, `2001:db8::/32`; a bare address is
    /// one host) whose connections may name the client's address in `Forwarded`
    /// (RFC 7239) or `X-Forwarded-For` (see [`super::client_address`]). From any other
    /// peer those headers are ignored and the TCP peer's address is the client's. A list,
    /// or one string separated by commas (an environment variable). Default: none.
    #[serde(deserialize_with = "super::client_address::deserialize_trusted_proxies")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header the trusted proxies name the client in: `x-forwarded-for` (default;
    /// ingress-nginx, Envoy, HAProxy, cloud load balancers) or `forwarded` (RFC 7239).
    /// Only that one is read: the other comes from the client unchecked.
    pub forwarded_header: super::client_address::ForwardedHeader,
    /// Which web pages may call from a browser (gRPC-Web and HTTP/JSON; see
    /// [`super::cors`]). Default: none.
    pub cors: super::cors::CorsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: 1024,
            initial_concurrency_limit: 64,
            min_concurrency_limit: 8,
            request_body_timeout: Duration::from_secs(5),
            max_connections_per_address: 256,
            request_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            readiness_interval: Duration::from_secs(5),
            http2_max_concurrent_streams: 200,
            http2_keepalive_interval: Duration::from_secs(60),
            http2_keepalive_timeout: Duration::from_secs(20),
            http2_max_pending_accept_reset_streams: 20,
            http2_max_local_error_reset_streams: 1024,
            max_connection_age: Duration::from_secs(30 * 60),
            max_connection_age_grace: Duration::from_secs(5 * 60),
            trusted_proxies: Vec::new(),
            forwarded_header: super::client_address::ForwardedHeader::default(),
            cors: super::cors::CorsConfig::default(),
        }
    }
}

impl ServerConfig {
    /// The defaults, listening on `0.0.0.0:port`.
    pub fn with_port(port: u16) -> Self {
        Self {
            listen_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            ..Self::default()
        }
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first count set to 0 (a duration of 0 fails
    /// loading already), or a trusted proxy range of prefix length 0 (trusting every
    /// address would let any client choose its own).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(everyone) = self
            .trusted_proxies
            .iter()
            .find(|range| range.prefix_len() == 0)
        {
            return Err(ConfigError::invalid(
                "server.trusted_proxies",
                format!(
                    "`{everyone}` trusts every address, so any client could choose its own; \
                     list only your proxies' ranges"
                ),
            ));
        }
        require_positive("server.max_message_bytes", self.max_message_bytes as u64)?;
        require_positive(
            "server.max_concurrent_requests",
            self.max_concurrent_requests as u64,
        )?;
        require_positive(
            "server.min_concurrency_limit",
            self.min_concurrency_limit as u64,
        )?;
        require_positive(
            "server.max_connections_per_address",
            self.max_connections_per_address as u64,
        )?;
        require_positive(
            "server.http2_max_concurrent_streams",
            u64::from(self.http2_max_concurrent_streams),
        )?;
        require_positive(
            "server.http2_max_pending_accept_reset_streams",
            self.http2_max_pending_accept_reset_streams as u64,
        )?;
        require_positive(
            "server.http2_max_local_error_reset_streams",
            self.http2_max_local_error_reset_streams as u64,
        )
    }

    /// The longest a connection lives: its maximum age plus the grace.
    pub fn max_connection_lifetime(&self) -> Duration {
        self.max_connection_age
            .saturating_add(self.max_connection_age_grace)
    }

    /// The address a client on this host uses to reach the server: the listen address,
    /// with an unspecified IP (`0.0.0.0`, `::`) replaced by loopback.
    pub fn local_client_addr(&self) -> SocketAddr {
        let ip = match self.listen_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.listen_addr.port())
    }
}
