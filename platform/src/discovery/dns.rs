//! DNS discovery: A/AAAA records of each configured address's host, or an SRV name,
//! re-resolved at the records' TTL (bounded) and at once after a connection failure.
//!
//! This is how gRPC's own `dns:///` resolver finds peers, and what Kubernetes headless
//! Services (one A/AAAA record per ready pod, and SRV records `_<port>._<proto>.<svc>`)
//! and compose's `--scale` (one A record per replica on the project network) publish.
//!
//! - `peers.<name>.srv` set: an SRV lookup, then the A and AAAA records of every target
//!   host, each address with its record's port. Targets of the lowest priority that has
//!   any address are used (RFC 2782: a client must try the lowest priority it can reach);
//!   weights are not used, every target is balanced equally. A target of `.` (RFC 2782:
//!   the service is decidedly not available) is skipped.
//! - Otherwise every `peers.<name>.addresses` URI: an IP literal host is used as it is; a
//!   name's A and AAAA records each give one instance with the URI's scheme and port.
//!
//! A resolution is used for the shortest TTL of its records (an empty answer: its
//! negative TTL, RFC 2308), clamped to `discovery.dns.min_ttl_s..=max_ttl_s`; then the
//! names are resolved again. [`Watch::refresh`] resolves at once, but never sooner than
//! `min_ttl_s` after the last resolution. NXDOMAIN or no records publish an empty set (a
//! service scaled to zero); a failure (timeout, SERVFAIL, REFUSED, an unreachable server)
//! keeps the last set (gRPC's name-resolution rule) and retries after `min_ttl_s`,
//! doubling up to `max_ttl_s` while failures last.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::rdata::SRV;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use serde::Deserialize;
use serde_with::serde_as;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use super::{
    BoxFuture, DiscoveryError, Instance, Publisher, Registered, Registration, Registry, Target,
    Watch,
};
use crate::config::{ConfigError, NonZeroMilliSeconds, require_positive};

/// The port a name server listens on when `nameservers` gives none (RFC 1035, 4.2).
const DNS_PORT: u16 = 53;

/// The `discovery.dns.*` section.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Shortest time between two resolutions of one name, s, whatever the TTL (also the
    /// first retry delay after a failure). Default 1.
    pub min_ttl_s: u64,
    /// Longest time a resolution is used, s, whatever the TTL (also the longest retry
    /// delay). Default 30.
    pub max_ttl_s: u64,
    /// Comma-separated `ip:port` name servers (UDP and TCP), e.g.
    /// `10.96.0.10:53,[fd00::10]:53`; a bare IP means port 53. Names are then resolved as
    /// given, without a search list. Default: the system's (`/etc/resolv.conf`, with its
    /// `search` domains and `ndots`).
    pub nameservers: Option<String>,
    /// `timeout_ms`: time to wait for one answer from a name server, ms. Default: the system's
    /// (`options timeout:` in `/etc/resolv.conf`, else 5000).
    #[serde(rename = "timeout_ms")]
    #[serde_as(as = "Option<NonZeroMilliSeconds>")]
    pub timeout: Option<Duration>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            min_ttl_s: 1,
            max_ttl_s: 30,
            nameservers: None,
            timeout: None,
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
        if let Some(list) = &self.nameservers {
            parse_nameservers(list).map_err(|message| {
                ConfigError::invalid(format!("{prefix}.nameservers"), message)
            })?;
        }
        Ok(())
    }

    fn bounds(&self) -> TtlBounds {
        let min = Duration::from_secs(self.min_ttl_s.max(1));
        TtlBounds {
            min,
            max: Duration::from_secs(self.max_ttl_s).max(min),
        }
    }
}

/// `ip:port` (or a bare IP, port 53) entries of a comma-separated list; empty entries are
/// skipped, an empty list is an error.
fn parse_nameservers(list: &str) -> Result<Vec<SocketAddr>, String> {
    let servers = list
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            SocketAddr::from_str(entry)
                .or_else(|_| IpAddr::from_str(entry).map(|ip| SocketAddr::new(ip, DNS_PORT)))
                .map_err(|_| format!("{entry:?} is not an ip:port address"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err("must name at least one ip:port address".to_owned());
    }
    Ok(servers)
}

/// The DNS backend: one resolver shared by every watch, each watch a task of its own.
#[derive(Debug)]
pub struct DnsRegistry {
    resolver: TokioResolver,
    bounds: TtlBounds,
}

impl DnsRegistry {
    /// A resolver with `config`'s name servers and TTL bounds.
    ///
    /// The resolver's own response cache is bypassed (every resolution asks the name
    /// server), so the TTL rules above decide alone when an answer is renewed.
    ///
    /// # Errors
    /// [`DiscoveryError`] when `nameservers` is malformed or the system's resolver
    /// configuration (`/etc/resolv.conf`) cannot be read.
    pub fn new(config: &DnsConfig) -> Result<Self, DiscoveryError> {
        let mut builder = match config.nameservers.as_deref() {
            Some(list) => {
                let servers = parse_nameservers(list).map_err(|message| {
                    DiscoveryError::backend("dns", format!("discovery.dns.nameservers: {message}"))
                })?;
                let servers = servers.iter().map(|server| {
                    let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                        .into_iter()
                        .map(|mut connection| {
                            connection.port = server.port();
                            connection
                        })
                        .collect();
                    NameServerConfig::new(server.ip(), true, connections)
                });
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(servers.collect()),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(|error| {
                DiscoveryError::backend(
                    "dns",
                    format!(
                        "reading the system resolver configuration (/etc/resolv.conf): {error}"
                    ),
                )
            })?,
        };
        if let Some(timeout) = config.timeout {
            builder.options_mut().timeout = timeout;
        }
        let resolver = builder.build().map_err(|error| {
            DiscoveryError::backend("dns", format!("building the resolver: {error}"))
        })?;
        Ok(Self {
            resolver,
            bounds: config.bounds(),
        })
    }
}

impl Registry for DnsRegistry {
    fn name(&self) -> &'static str {
        "dns"
    }

    /// Resolves `target` in a task of its own (see the module's documentation); needs a
    /// Tokio runtime, without one the watch stays empty (`None`) and an error is logged.
    fn watch(&self, target: &Target) -> Watch {
        let (publisher, watch) = super::channel();
        let Some(query) = Query::from_target(target) else {
            return watch;
        };
        let resolution = Resolution {
            resolver: self.resolver.clone(),
            query,
            bounds: self.bounds,
            peer: target.peer.clone(),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(resolution.run(publisher));
            }
            Err(error) => tracing::error!(
                peer = %target.peer,
                %error,
                "DNS discovery needs a Tokio runtime; the peer has no instances"
            ),
        }
        watch
    }

    /// DNS has nothing to register: the platform publishes the records (a Kubernetes
    /// headless Service, compose's service name); this returns [`super::NotRegistered`].
    fn register<'a>(
        &'a self,
        _registration: &'a Registration,
    ) -> BoxFuture<'a, Result<Box<dyn Registered>, DiscoveryError>> {
        Box::pin(async { Ok(Box::new(super::NotRegistered) as Box<dyn Registered>) })
    }
}

/// How long a resolution is used and how long to wait after a failure.
#[derive(Debug, Clone, Copy)]
struct TtlBounds {
    min: Duration,
    max: Duration,
}

impl TtlBounds {
    /// The time until the next resolution for the shortest TTL of an answer, s (`None`:
    /// nothing in it expires, e.g. IP literals only).
    fn next_after(self, ttl_s: Option<u32>) -> Duration {
        ttl_s.map_or(self.max, |ttl| {
            Duration::from_secs(u64::from(ttl)).clamp(self.min, self.max)
        })
    }

    /// The retry delay after `failures` (≥ 1) failed resolutions in a row: `min`, doubling,
    /// at most `max`.
    fn backoff(self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.min.saturating_mul(1 << doublings).min(self.max)
    }
}

/// What one watch resolves.
#[derive(Debug, Clone)]
enum Query {
    /// SRV records of this name.
    Srv(Name),
    /// Each configured address.
    Addresses(Vec<Address>),
}

/// One `peers.<name>.addresses` URI, split.
#[derive(Debug, Clone)]
struct Address {
    /// `http` or `https`.
    scheme: String,
    host: Host,
    /// The URI's port; `None` keeps the scheme's default.
    port: Option<u16>,
}

#[derive(Debug, Clone)]
enum Host {
    Ip(IpAddr),
    Name(Name),
}

impl Query {
    /// The query for `target`, or `None` (logged) when nothing in it can be resolved.
    /// Malformed addresses are logged and skipped (`peers.<name>.addresses` is validated
    /// at start-up, so this is a last resort).
    fn from_target(target: &Target) -> Option<Self> {
        if let Some(srv) = target.srv.as_deref() {
            return match Name::from_utf8(srv) {
                Ok(name) => Some(Self::Srv(name)),
                Err(error) => {
                    tracing::error!(peer = %target.peer, srv, %error, "not a DNS name; the peer has no instances");
                    None
                }
            };
        }
        let addresses = target
            .addresses
            .iter()
            .filter_map(|uri| match Address::parse(uri) {
                Ok(address) => Some(address),
                Err(error) => {
                    tracing::error!(peer = %target.peer, uri, error, "address skipped");
                    None
                }
            })
            .collect();
        Some(Self::Addresses(addresses))
    }
}

impl Address {
    fn parse(uri: &str) -> Result<Self, String> {
        let parsed = http::Uri::from_str(uri).map_err(|error| error.to_string())?;
        let scheme = parsed.scheme_str().ok_or("no scheme")?.to_owned();
        let host = parsed.host().ok_or("no host")?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let host = match IpAddr::from_str(bare) {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(Name::from_utf8(host).map_err(|error| error.to_string())?),
        };
        Ok(Self {
            scheme,
            host,
            port: parsed.port_u16(),
        })
    }

    fn instance(&self, ip: IpAddr) -> Instance {
        let host = match ip {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        match self.port {
            Some(port) => Instance::new(format!("{}://{host}:{port}", self.scheme)),
            None => Instance::new(format!("{}://{host}", self.scheme)),
        }
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Srv(name) => write!(f, "SRV {name}"),
            Self::Addresses(addresses) => {
                let mut names = addresses.iter().filter_map(|address| match &address.host {
                    Host::Name(name) => Some(name),
                    Host::Ip(_) => None,
                });
                if let Some(first) = names.next() {
                    write!(f, "A/AAAA {first}")?;
                }
                names.try_for_each(|name| write!(f, ", {name}"))
            }
        }
    }
}

/// Records of one kind and the shortest TTL among them, s (`None`: nothing expires).
#[derive(Debug)]
struct Answer<T> {
    records: Vec<T>,
    ttl_s: Option<u32>,
}

impl<T> Answer<T> {
    fn shorter_ttl(&mut self, ttl_s: Option<u32>) {
        self.ttl_s = match (self.ttl_s, ttl_s) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// A watch's task: resolve, publish, wait, until every [`Watch`] is gone.
struct Resolution {
    resolver: TokioResolver,
    query: Query,
    bounds: TtlBounds,
    peer: String,
}

impl Resolution {
    async fn run(self, publisher: Publisher) {
        let mut failures = 0_u32;
        loop {
            let outcome = tokio::select! {
                () = publisher.closed() => return,
                outcome = self.resolve() => outcome,
            };
            let resolved_at = Instant::now();
            let wait = match outcome {
                Ok(answer) => {
                    failures = 0;
                    publisher.publish(answer.records);
                    self.bounds.next_after(answer.ttl_s)
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let retry = self.bounds.backoff(failures);
                    tracing::warn!(
                        peer = %self.peer,
                        query = %self.query,
                        %error,
                        retry_in_s = retry.as_secs(),
                        "DNS resolution failed; keeping the last instances"
                    );
                    retry
                }
            };
            tokio::select! {
                () = publisher.closed() => return,
                () = sleep_until(resolved_at + wait) => {}
                () = publisher.refresh_requested() => tokio::select! {
                    () = publisher.closed() => return,
                    () = sleep_until(resolved_at + self.bounds.min) => {}
                },
            }
        }
    }

    /// The instances the query names now.
    async fn resolve(&self) -> Result<Answer<Instance>, NetError> {
        match &self.query {
            Query::Srv(name) => resolve_srv(&self.resolver, name).await,
            Query::Addresses(addresses) => resolve_addresses(&self.resolver, addresses).await,
        }
    }
}

async fn resolve_addresses(
    resolver: &TokioResolver,
    addresses: &[Address],
) -> Result<Answer<Instance>, NetError> {
    let names = addresses.iter().filter_map(|address| match &address.host {
        Host::Name(name) => Some(name.clone()),
        Host::Ip(_) => None,
    });
    let resolved = resolve_hosts(resolver, names).await?;
    let mut answer = Answer {
        records: Vec::new(),
        ttl_s: None,
    };
    for address in addresses {
        match &address.host {
            Host::Ip(ip) => answer.records.push(address.instance(*ip)),
            Host::Name(name) => {
                if let Some(ips) = resolved.get(name) {
                    answer.shorter_ttl(ips.ttl_s);
                    let instances = ips.records.iter().map(|ip| address.instance(*ip));
                    answer.records.extend(instances);
                }
            }
        }
    }
    Ok(answer)
}

async fn resolve_srv(resolver: &TokioResolver, name: &Name) -> Result<Answer<Instance>, NetError> {
    let srv = lookup(resolver, name, RecordType::SRV).await?;
    let mut records: Vec<SRV> = srv
        .records
        .into_iter()
        .filter_map(|data| match data {
            RData::SRV(record) if !record.target.is_root() => Some(record),
            _ => None,
        })
        .collect();
    records.sort_by_key(|record| record.priority);
    let targets = records.iter().map(|record| record.target.clone());
    let resolved = resolve_hosts(resolver, targets).await?;

    let mut answer = Answer {
        records: Vec::new(),
        ttl_s: srv.ttl_s,
    };
    for ips in resolved.values() {
        answer.shorter_ttl(ips.ttl_s);
    }
    // The lowest priority that has an address (RFC 2782).
    for group in records.chunk_by(|a, b| a.priority == b.priority) {
        answer.records = group
            .iter()
            .filter_map(|record| Some((record, resolved.get(&record.target)?)))
            .flat_map(|(record, ips)| {
                ips.records
                    .iter()
                    .map(|ip| Instance::from_host_port(&ip.to_string(), record.port))
            })
            .collect();
        if !answer.records.is_empty() {
            break;
        }
    }
    Ok(answer)
}

/// The A and AAAA records of each distinct name, looked up concurrently; the first
/// failure fails them all.
async fn resolve_hosts(
    resolver: &TokioResolver,
    names: impl IntoIterator<Item = Name>,
) -> Result<BTreeMap<Name, Answer<IpAddr>>, NetError> {
    let mut lookups = JoinSet::new();
    for name in names.into_iter().collect::<BTreeSet<_>>() {
        let resolver = resolver.clone();
        lookups.spawn(async move {
            let answer = resolve_host(&resolver, &name).await;
            (name, answer)
        });
    }
    let mut resolved = BTreeMap::new();
    while let Some(joined) = lookups.join_next().await {
        let (name, answer) =
            joined.map_err(|error| NetError::from(format!("a lookup task failed: {error}")))?;
        resolved.insert(name, answer?);
    }
    Ok(resolved)
}

/// The A and AAAA records of `name`: both must answer (records or none) for a result.
async fn resolve_host(resolver: &TokioResolver, name: &Name) -> Result<Answer<IpAddr>, NetError> {
    let (v4, v6) = tokio::join!(
        lookup(resolver, name, RecordType::A),
        lookup(resolver, name, RecordType::AAAA),
    );
    let (v4, v6) = (v4?, v6?);
    let mut answer = Answer {
        records: Vec::with_capacity(v4.records.len() + v6.records.len()),
        ttl_s: v4.ttl_s,
    };
    answer.shorter_ttl(v6.ttl_s);
    for data in v4.records.into_iter().chain(v6.records) {
        match data {
            RData::A(ip) => answer.records.push(IpAddr::V4(ip.0)),
            RData::AAAA(ip) => answer.records.push(IpAddr::V6(ip.0)),
            _ => {}
        }
    }
    Ok(answer)
}

/// The `kind` records of `name`, asked of the name server (the resolver's cached answer
/// is dropped first). No records (NXDOMAIN, NODATA) is an empty answer that lasts its
/// negative TTL (RFC 2308; none given: 0, i.e. `min_ttl_s`); any other failure is an error.
async fn lookup(
    resolver: &TokioResolver,
    name: &Name,
    kind: RecordType,
) -> Result<Answer<RData>, NetError> {
    resolver.clear_lookup_cache(name.clone(), kind);
    match resolver.lookup(name.clone(), kind).await {
        Ok(lookup) => Ok(Answer {
            // CNAMEs on the way count for the TTL, not as records.
            ttl_s: lookup.answers().iter().map(|record| record.ttl).min(),
            records: lookup
                .answers()
                .iter()
                .filter(|record| record.record_type() == kind)
                .map(|record| record.data.clone())
                .collect(),
        }),
        Err(NetError::Dns(DnsError::NoRecordsFound(none))) => Ok(Answer {
            records: Vec::new(),
            ttl_s: Some(none.negative_ttl.unwrap_or(0)),
        }),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hickory_server::Server;
    use hickory_server::proto::rr::Name;
    use hickory_server::proto::serialize::txt::Parser;
    use hickory_server::store::in_memory::InMemoryZoneHandler;
    use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
    use tokio::net::{TcpListener, UdpSocket};
    use tracing_subscriber::layer::{Context, SubscriberExt};

    use super::*;

    /// The longest any test waits for an answer it expects.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// An authoritative name server for the zone `test.` on 127.0.0.1 (UDP and TCP on one
    /// port) whose records a test replaces while it runs.
    struct TestDns {
        zone: Arc<InMemoryZoneHandler>,
        server: Server<Catalog>,
        address: SocketAddr,
    }

    impl TestDns {
        async fn start(records: &str) -> Self {
            let origin = Name::from_str("test.").unwrap();
            let zone = InMemoryZoneHandler::new(
                origin.clone(),
                parse_zone(records),
                ZoneType::Primary,
                AxfrPolicy::Deny,
            )
            .unwrap();
            let zone = Arc::new(zone);
            let mut catalog = Catalog::new();
            catalog.upsert(origin.into(), vec![zone.clone()]);
            let mut server = Server::new(catalog);
            let (udp, tcp) = bind_udp_and_tcp().await;
            let address = udp.local_addr().unwrap();
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(5), 16);
            Self {
                zone,
                server,
                address,
            }
        }

        /// Replaces every record of the zone.
        async fn set(&self, records: &str) {
            *self.zone.records_mut().await = parse_zone(records)
                .into_iter()
                .map(|(key, set)| (key, Arc::new(set)))
                .collect();
        }

        async fn stop(&mut self) {
            self.server.shutdown_gracefully().await.unwrap();
        }

        /// A registry asking only this server, with TTL bounds `min_ttl_s..=max_ttl_s`.
        fn registry(&self, min_ttl_s: u64, max_ttl_s: u64) -> DnsRegistry {
            DnsRegistry::new(&DnsConfig {
                min_ttl_s,
                max_ttl_s,
                nameservers: Some(self.address.to_string()),
                timeout: Some(Duration::from_millis(300)),
            })
            .unwrap()
        }

        /// A watch of [`USER`] through [`Self::registry`].
        fn watch_user(&self, min_ttl_s: u64, max_ttl_s: u64) -> Watch {
            self.registry(min_ttl_s, max_ttl_s)
                .watch(&addresses("user", &[USER]))
        }
    }

    /// The `user` peer at `http://user.test:50051`.
    const USER: &str = "http://user.test:50051";

    /// `records` (zone-file lines, names relative to `test.`) after a SOA whose negative
    /// TTL (RFC 2308) is an hour: an empty answer (here, the AAAA query for a name with
    /// only A records) never brings a re-resolution sooner than the records' own TTL.
    fn parse_zone(
        records: &str,
    ) -> BTreeMap<hickory_server::proto::rr::RrKey, hickory_server::proto::rr::RecordSet> {
        let text = format!(
            "@ 3600 IN SOA ns.test. admin.test. 1 60 60 60 3600\n\
             @ 3600 IN NS ns.test.\n\
             ns 3600 IN A 127.0.0.1\n\
             {records}\n"
        );
        let (_, records) = Parser::new(text, None, Some(Name::from_str("test.").unwrap()))
            .parse()
            .unwrap();
        records
    }

    async fn bind_udp_and_tcp() -> (UdpSocket, TcpListener) {
        for _ in 0..50 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                return (udp, tcp);
            }
        }
        panic!("no port free for both UDP and TCP");
    }

    fn addresses(peer: &str, addresses: &[&str]) -> Target {
        Target {
            peer: peer.into(),
            service: peer.into(),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            srv: None,
        }
    }

    fn uris(watch: &Watch) -> Option<Vec<String>> {
        watch
            .current()
            .map(|set| set.iter().map(|i| i.uri.clone()).collect())
    }

    /// Waits (at most [`DEADLINE`]) until the watch holds exactly `expected` (any order).
    async fn wait_for(watch: &mut Watch, expected: &[&str]) {
        let mut expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        expected.sort();
        let deadline = Instant::now() + DEADLINE;
        while uris(watch).as_ref() != Some(&expected) {
            let changed = tokio::time::timeout_at(deadline, watch.changed()).await;
            assert!(
                matches!(changed, Ok(true)),
                "still {:?}, expected {expected:?}",
                uris(watch)
            );
        }
    }

    #[test]
    fn nameservers_are_ip_port_pairs_or_bare_ips() {
        assert_eq!(
            parse_nameservers(" 10.0.0.10:5353, [::1]:53 ,10.0.0.11").unwrap(),
            [
                SocketAddr::from(([10, 0, 0, 10], 5353)),
                SocketAddr::from_str("[::1]:53").unwrap(),
                SocketAddr::from(([10, 0, 0, 11], 53)),
            ]
        );
        let config = DnsConfig {
            nameservers: Some("10.0.0.10:53,dns.local:53".into()),
            ..DnsConfig::default()
        };
        let error = config.validate("discovery.dns").unwrap_err().to_string();
        assert!(error.contains("discovery.dns.nameservers"), "{error}");
        assert!(error.contains("dns.local:53"), "{error}");
        let config = DnsConfig {
            nameservers: Some(" , ".into()),
            ..DnsConfig::default()
        };
        assert!(config.validate("discovery.dns").is_err());
        assert!(DnsRegistry::new(&config).is_err());
    }

    #[test]
    fn ttls_are_clamped_and_failures_back_off_within_the_bounds() {
        let bounds = DnsConfig {
            min_ttl_s: 2,
            max_ttl_s: 10,
            ..DnsConfig::default()
        }
        .bounds();
        let secs = |d: Duration| d.as_secs();
        assert_eq!(secs(bounds.next_after(Some(0))), 2);
        assert_eq!(secs(bounds.next_after(Some(5))), 5);
        assert_eq!(secs(bounds.next_after(Some(3600))), 10);
        assert_eq!(secs(bounds.next_after(None)), 10);
        let delays: Vec<u64> = (1..=5).map(|n| secs(bounds.backoff(n))).collect();
        assert_eq!(delays, [2, 4, 8, 10, 10]);
        assert_eq!(secs(bounds.backoff(u32::MAX)), 10);
    }

    #[tokio::test]
    async fn a_records_give_one_instance_per_ip_with_the_uri_scheme_and_port() {
        let dns = TestDns::start("user 60 IN A 10.0.0.1\nuser 60 IN A 10.0.0.2").await;
        let mut watch = dns.registry(1, 30).watch(&addresses(
            "user",
            &[USER, "https://user.test", "http://127.0.0.9:7"],
        ));
        wait_for(
            &mut watch,
            &[
                "http://10.0.0.1:50051",
                "http://10.0.0.2:50051",
                "https://10.0.0.1",
                "https://10.0.0.2",
                "http://127.0.0.9:7",
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn aaaa_records_give_bracketed_uris() {
        let dns = TestDns::start("user 60 IN AAAA 2001:db8::5\nuser 60 IN AAAA ::1").await;
        let mut watch = dns.watch_user(1, 30);
        wait_for(
            &mut watch,
            &["http://[2001:db8::5]:50051", "http://[::1]:50051"],
        )
        .await;
    }

    #[tokio::test]
    async fn srv_records_give_the_targets_addresses_with_the_srv_ports_of_the_lowest_priority() {
        let dns = TestDns::start(
            "_grpc._tcp.user 60 IN SRV 0 50 50051 a.user.test.\n\
             _grpc._tcp.user 60 IN SRV 0 50 50052 b.user.test.\n\
             _grpc._tcp.user 60 IN SRV 10 0 50053 backup.user.test.\n\
             a.user 60 IN A 10.0.0.1\n\
             b.user 60 IN AAAA 2001:db8::2\n\
             backup.user 60 IN A 10.0.0.9",
        )
        .await;
        let target = Target {
            // The SRV name wins over addresses.
            srv: Some("_grpc._tcp.user.test".into()),
            ..addresses("user", &["http://ignored.test:1"])
        };
        let mut watch = dns.registry(1, 30).watch(&target);
        wait_for(
            &mut watch,
            &["http://10.0.0.1:50051", "http://[2001:db8::2]:50052"],
        )
        .await;
    }

    #[tokio::test]
    async fn a_changed_record_is_seen_once_its_ttl_expires() {
        let dns = TestDns::start("user 1 IN A 10.0.0.1").await;
        // max_ttl far beyond the deadline: only the record's TTL can bring the change.
        let mut watch = dns.watch_user(1, 600);
        wait_for(&mut watch, &["http://10.0.0.1:50051"]).await;
        dns.set("user 1 IN A 10.0.0.2\nuser 1 IN A 10.0.0.3").await;
        wait_for(
            &mut watch,
            &["http://10.0.0.2:50051", "http://10.0.0.3:50051"],
        )
        .await;
    }

    #[tokio::test]
    async fn refresh_resolves_again_at_once_whatever_the_ttl() {
        let dns = TestDns::start("user 3600 IN A 10.0.0.1").await;
        let mut watch = dns.watch_user(1, 3600);
        wait_for(&mut watch, &["http://10.0.0.1:50051"]).await;
        dns.set("user 3600 IN A 10.0.0.2").await;
        watch.refresh();
        wait_for(&mut watch, &["http://10.0.0.2:50051"]).await;
    }

    #[tokio::test]
    async fn nxdomain_publishes_an_empty_set() {
        let dns = TestDns::start("user 1 IN A 10.0.0.1").await;
        let registry = dns.registry(1, 600);
        let mut missing = registry.watch(&addresses("gone", &["http://gone.test:50051"]));
        wait_for(&mut missing, &[]).await;

        // A service scaled to zero: its name disappears.
        let mut watch = registry.watch(&addresses("user", &[USER]));
        wait_for(&mut watch, &["http://10.0.0.1:50051"]).await;
        dns.set("").await;
        wait_for(&mut watch, &[]).await;
    }

    /// Counts the warnings of the DNS backend (not its tests').
    struct Warnings(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let metadata = event.metadata();
            let backend = module_path!().strip_suffix("::tests");
            if *metadata.level() == tracing::Level::WARN && Some(metadata.target()) == backend {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[tokio::test]
    async fn a_stopped_server_leaves_the_last_set_in_place() {
        // The test's runtime runs on this thread only, so the watch's task logs here.
        let warnings = Arc::new(AtomicUsize::new(0));
        // WARN and above only: a subscriber interested in everything would make other
        // tests' filtered-out events get evaluated while it is installed.
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::WARN)
            .with(Warnings(Arc::clone(&warnings)));
        let _guard = tracing::subscriber::set_default(subscriber);

        let mut dns = TestDns::start("user 1 IN A 10.0.0.1").await;
        let mut watch = dns.watch_user(1, 600);
        wait_for(&mut watch, &["http://10.0.0.1:50051"]).await;
        watch.mark_seen();
        dns.stop().await;

        // Two failed resolutions (the record's TTL is 1 s, the retry 1 s then 2 s).
        let deadline = Instant::now() + DEADLINE;
        while warnings.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline, "no failed resolution logged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(uris(&watch), Some(vec!["http://10.0.0.1:50051".to_owned()]));
        assert!(
            !watch.updates.has_changed().unwrap(),
            "nothing was published meanwhile"
        );
    }
}
