//! The client's address, computed once per request: the TCP peer's, unless that peer is a
//! trusted proxy (`server.trusted_proxies`), in which case the address the proxies name in
//! `Forwarded` (RFC 7239) or `X-Forwarded-For` (`server.forwarded_header` says which).
//!
//! The forwarding header is read from the right — the hop the nearest proxy added first
//! — skipping hops that are themselves trusted proxies; the first untrusted address is
//! the client's. Anything to its left was written by that client and could be forged.
//! A hop that names no usable address (`unknown`, an obfuscated identifier such as
//! `_hidden`, garbage) stops the walk at the trusted proxy that reported it, since what
//! lies beyond cannot be checked; when every hop is trusted, the leftmost one is taken.
//! From any peer that is not a trusted proxy, the headers are ignored.
//!
//! [`ClientAddressLayer`] puts the result into the request's extensions as
//! [`ClientAddress`]; handlers read it with [`client_address`], layers with
//! [`client_address_of`]. Every per-address budget (the rate limits, the sign-up limit,
//! the login throttle) keys on it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use super::connection::ConnectionInfo;
use http::{HeaderMap, Request};
use ipnet::IpNet;
use serde::Deserialize;
use tower::{Layer, Service};

/// The header a trusted proxy names the client in (`server.forwarded_header`). Only one
/// is read: a proxy that writes one header passes the other on from the client untouched,
/// so reading both would let any client choose its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the de facto standard; ingress-nginx,
    /// Envoy, HAProxy, cloud load balancers). The default.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for="[2001:db8::1]:4711"` (RFC 7239 §4), its `for=`
    /// parameters.
    Forwarded,
}

impl ForwardedHeader {
    /// The header's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
    }
}

/// The client's address of a request (a request extension), as [`ClientAddressLayer`]
/// computed it. IPv4-mapped IPv6 addresses are given as IPv4 (RFC 4291 §2.5.5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddress(pub IpAddr);

/// The proxies whose forwarding headers are believed: CIDR ranges.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    /// Trusts the peers in `ranges`.
    pub fn new(ranges: &[IpNet]) -> Self {
        Self(ranges.iter().map(IpNet::trunc).collect())
    }

    /// Whether `ip` (IPv4-mapped IPv6 counts as IPv4) is in a trusted range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|range| range.contains(&ip))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The client's address of a request whose TCP peer is `peer`, reading `header` from
/// `headers` only when `peer` is in `trusted` (see the module docs for the walk).
pub fn resolve(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
    header: ForwardedHeader,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    // Several header lines form one list, in order (RFC 9110 §5.3): walk the lines
    // from the last, each from its last element.
    let lines = headers.get_all(header.name()).iter().rev();
    let hops = lines.flat_map(move |line| {
        let elements: Box<dyn Iterator<Item = Hop>> = match line.to_str() {
            Ok(line) => Box::new(
                line.split(',')
                    .rev()
                    .map(str::trim)
                    .filter(|element| !element.is_empty())
                    .map(move |element| match header {
                        ForwardedHeader::XForwardedFor => x_forwarded_for_hop(element),
                        ForwardedHeader::Forwarded => forwarded_hop(element),
                    }),
            ),
            Err(_) => Box::new(std::iter::once(Hop::Unidentified)),
        };
        elements
    });
    walk(peer, hops, trusted)
}

/// One hop a forwarding header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// A node with this address.
    Address(IpAddr),
    /// `unknown`, an obfuscated identifier, a missing `for=`, or garbage.
    Unidentified,
}

/// From the right: the first untrusted address; at an unidentified hop, the trusted hop
/// that reported it; when all are trusted, the leftmost.
fn walk(peer: IpAddr, hops: impl Iterator<Item = Hop>, trusted: &TrustedProxies) -> IpAddr {
    let mut nearest = peer;
    for hop in hops {
        match hop {
            Hop::Address(ip) => {
                let ip = ip.to_canonical();
                if !trusted.contains(ip) {
                    return ip;
                }
                nearest = ip;
            }
            Hop::Unidentified => return nearest,
        }
    }
    nearest
}

/// An `X-Forwarded-For` element: an address, also as `[v6]`, `v4:port` or `[v6]:port`
/// (some proxies add the port).
fn x_forwarded_for_hop(element: &str) -> Hop {
    let element = element.trim_matches('"');
    element
        .parse::<IpAddr>()
        .ok()
        .or_else(|| element.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
        .or_else(|| {
            element
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inner| inner.parse::<IpAddr>().ok())
        })
        .map_or(Hop::Unidentified, Hop::Address)
}

/// A `Forwarded` element (`for=…;by=…;proto=…`): the address of its `for=` node.
fn forwarded_hop(element: &str) -> Hop {
    match rfc7239::parse(element).next() {
        Some(Ok(forwarded)) => forwarded
            .forwarded_for
            .as_ref()
            .and_then(|node| node.ip().copied())
            .map_or(Hop::Unidentified, Hop::Address),
        _ => Hop::Unidentified,
    }
}

/// The client's address of a request: what [`ClientAddressLayer`] computed, else (a
/// server without the layer) the TCP peer's; `None` when the transport has no address.
pub fn client_address<T>(request: &tonic::Request<T>) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ClientAddress>()
        .map(|address| address.0)
        .or_else(|| {
            ConnectionInfo::of(request.extensions())
                .and_then(ConnectionInfo::remote_addr)
                .map(|addr| addr.ip().to_canonical())
        })
}

/// [`client_address`] from an HTTP request's extensions (for tower layers).
pub fn client_address_of(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<ClientAddress>()
        .map(|address| address.0)
        .or_else(|| {
            ConnectionInfo::of(extensions)
                .and_then(ConnectionInfo::remote_addr)
                .map(|addr| addr.ip().to_canonical())
        })
}

/// Puts the [`ClientAddress`] of every request into its extensions.
#[derive(Debug, Clone)]
pub struct ClientAddressLayer {
    trusted: TrustedProxies,
    header: ForwardedHeader,
}

impl ClientAddressLayer {
    /// A layer believing `header` from the peers in `trusted`.
    pub fn new(trusted: &[IpNet], header: ForwardedHeader) -> Self {
        Self {
            trusted: TrustedProxies::new(trusted),
            header,
        }
    }
}

impl<S> Layer<S> for ClientAddressLayer {
    type Service = ClientAddressService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientAddressService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ClientAddressLayer`].
#[derive(Debug, Clone)]
pub struct ClientAddressService<S> {
    inner: S,
    layer: ClientAddressLayer,
}

impl<S, B> Service<Request<B>> for ClientAddressService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let peer = ConnectionInfo::of(request.extensions()).and_then(ConnectionInfo::remote_addr);
        if let Some(peer) = peer {
            let address = resolve(
                peer.ip(),
                request.headers(),
                &self.layer.trusted,
                self.layer.header,
            );
            request.extensions_mut().insert(ClientAddress(address));
        }
        self.inner.call(request)
    }
}

/// Reads `server.trusted_proxies`: a list of CIDR ranges or bare addresses (one host),
/// or one string of them separated by commas (as an environment variable gives it).
///
/// # Errors
/// A serde error naming the entry that is neither.
pub(crate) fn deserialize_trusted_proxies<'de, D>(deserializer: D) -> Result<Vec<IpNet>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    crate::config::list_or_commas(deserializer, "CIDR ranges or addresses", parse_range)
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address as a one-host range.
fn parse_range(entry: &str) -> Result<IpNet, String> {
    entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{entry}` is neither a CIDR range nor an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    fn trusted(ranges: &[&str]) -> TrustedProxies {
        let ranges: Vec<IpNet> = ranges.iter().filter_map(|r| parse_range(r).ok()).collect();
        TrustedProxies::new(&ranges)
    }

    fn headers(name: &str, lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(line),
            ) {
                map.append(name, value);
            }
        }
        map
    }

    fn xff(peer: &str, lines: &[&str], proxies: &[&str]) -> IpAddr {
        resolve(
            ip(peer),
            &headers("x-forwarded-for", lines),
            &trusted(proxies),
            ForwardedHeader::XForwardedFor,
        )
    }

    fn fwd(peer: &str, lines: &[&str], proxies: &[&str]) -> IpAddr {
        resolve(
            ip(peer),
            &headers("forwarded", lines),
            &trusted(proxies),
            ForwardedHeader::Forwarded,
        )
    }

    const PROXY: &str = "10.0.0.7";
    const PROXIES: &[&str] = &["10.0.0.0/8", "2001:db8:ffff::/48"];

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(
            xff("198.51.100.9", &["203.0.113.5"], PROXIES),
            ip("198.51.100.9")
        );
        assert_eq!(
            xff("198.51.100.9", &["203.0.113.5"], &[]),
            ip("198.51.100.9")
        );
        assert_eq!(
            fwd("198.51.100.9", &["for=203.0.113.5"], PROXIES),
            ip("198.51.100.9")
        );
        // A mapped peer address is its IPv4 address.
        assert_eq!(xff("::ffff:198.51.100.9", &[], &[]), ip("198.51.100.9"));
    }

    #[test]
    fn x_forwarded_for_gives_the_rightmost_untrusted_hop() {
        // The client forged the leftmost entry; the proxy appended the real one.
        assert_eq!(
            xff(PROXY, &["1.1.1.1, 203.0.113.5, 10.1.2.3"], PROXIES),
            ip("203.0.113.5")
        );
        // Several lines are one list.
        assert_eq!(
            xff(PROXY, &["1.1.1.1", "203.0.113.5", "10.1.2.3"], PROXIES),
            ip("203.0.113.5")
        );
        // A trusted peer speaking through a mapped IPv6 address is still trusted.
        assert_eq!(
            xff("::ffff:10.0.0.7", &["203.0.113.5"], PROXIES),
            ip("203.0.113.5")
        );
        // Ports and brackets, as some proxies write them.
        assert_eq!(
            xff(PROXY, &["203.0.113.5:4711"], PROXIES),
            ip("203.0.113.5")
        );
        assert_eq!(
            xff(PROXY, &["[2001:db8::1]:4711"], PROXIES),
            ip("2001:db8::1")
        );
        assert_eq!(xff(PROXY, &["[2001:db8::1]"], PROXIES), ip("2001:db8::1"));
        assert_eq!(xff(PROXY, &["2001:db8::1"], PROXIES), ip("2001:db8::1"));
    }

    #[test]
    fn when_every_hop_is_trusted_the_leftmost_is_taken() {
        assert_eq!(xff(PROXY, &["10.9.9.9, 10.1.2.3"], PROXIES), ip("10.9.9.9"));
        // No header at all: the proxy itself.
        assert_eq!(xff(PROXY, &[], PROXIES), ip(PROXY));
        assert_eq!(xff(PROXY, &[" , "], PROXIES), ip(PROXY));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_proxy_that_reported_it() {
        assert_eq!(xff(PROXY, &["203.0.113.5, garbage"], PROXIES), ip(PROXY));
        assert_eq!(
            xff(PROXY, &["203.0.113.5, unknown, 10.1.2.3"], PROXIES),
            ip("10.1.2.3")
        );
        assert_eq!(xff(PROXY, &["999.1.1.1"], PROXIES), ip(PROXY));
    }

    #[test]
    fn forwarded_reads_for_parameters_with_quoted_ipv6_and_ports() {
        assert_eq!(
            fwd(
                PROXY,
                &["for=192.0.2.43, for=\"[2001:db8:cafe::17]:4711\""],
                PROXIES
            ),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            fwd(
                PROXY,
                &["for=192.0.2.60;proto=http;by=203.0.113.43"],
                PROXIES
            ),
            ip("192.0.2.60")
        );
        // Parameter names are case-insensitive (RFC 7239 §4).
        assert_eq!(fwd(PROXY, &["For=192.0.2.60"], PROXIES), ip("192.0.2.60"));
        // Multiple hops and lines, skipping trusted ones.
        assert_eq!(
            fwd(
                PROXY,
                &[
                    "for=198.51.100.1",
                    "for=192.0.2.60, for=\"[2001:db8:ffff::2]\""
                ],
                PROXIES
            ),
            ip("192.0.2.60")
        );
        assert_eq!(
            fwd(PROXY, &["for=10.3.3.3;by=10.0.0.1, for=10.2.2.2"], PROXIES),
            ip("10.3.3.3")
        );
    }

    #[test]
    fn forwarded_stops_at_unknown_obfuscated_and_malformed_nodes() {
        // An obfuscated or unknown client: the proxy that hid it is all we know.
        assert_eq!(
            fwd(PROXY, &["for=192.0.2.1, for=_hidden"], PROXIES),
            ip(PROXY)
        );
        assert_eq!(fwd(PROXY, &["for=unknown"], PROXIES), ip(PROXY));
        assert_eq!(
            fwd(
                PROXY,
                &["for=192.0.2.1, for=unknown, for=10.1.1.1"],
                PROXIES
            ),
            ip("10.1.1.1")
        );
        // IPv6 must be bracketed and quoted; a bare one is garbage.
        assert_eq!(fwd(PROXY, &["for=2001:db8::1"], PROXIES), ip(PROXY));
        assert_eq!(fwd(PROXY, &["by=10.0.0.1"], PROXIES), ip(PROXY));
        assert_eq!(fwd(PROXY, &["garbage"], PROXIES), ip(PROXY));
        assert_eq!(fwd(PROXY, &["for=\"[not-an-ip]\""], PROXIES), ip(PROXY));
        // X-Forwarded-For is not read when Forwarded is the configured header.
        let mut both = headers("x-forwarded-for", &["203.0.113.5"]);
        both.extend(headers("forwarded", &["for=192.0.2.9"]));
        assert_eq!(
            resolve(
                ip(PROXY),
                &both,
                &trusted(PROXIES),
                ForwardedHeader::Forwarded
            ),
            ip("192.0.2.9")
        );
        assert_eq!(
            resolve(
                ip(PROXY),
                &both,
                &trusted(PROXIES),
                ForwardedHeader::XForwardedFor
            ),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn trusted_proxies_are_read_as_a_list_or_a_comma_separated_string() {
        use serde::de::value::{Error, SeqDeserializer, StrDeserializer};
        let from_str = deserialize_trusted_proxies(StrDeserializer::<Error>::new(
            "10.0.0.0/8, 192.0.2.1,2001:db8::/32",
        ));
        assert_eq!(
            from_str.map(|ranges| ranges.iter().map(ToString::to_string).collect::<Vec<_>>()),
            Ok(vec![
                "10.0.0.0/8".to_owned(),
                "192.0.2.1/32".to_owned(),
                "2001:db8::/32".to_owned()
            ])
        );
        let from_seq = deserialize_trusted_proxies(SeqDeserializer::<_, Error>::new(
            ["127.0.0.1/32".to_owned(), "::1".to_owned()].into_iter(),
        ));
        assert_eq!(from_seq.map(|ranges| ranges.len()), Ok(2));
        let bad = deserialize_trusted_proxies(StrDeserializer::<Error>::new("10.0.0.0/8,nope"));
        assert!(bad.is_err_and(|err| err.to_string().contains("`nope`")));
    }
}
