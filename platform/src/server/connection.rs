//! The accept path: every accepted TCP connection gets `TCP_NODELAY` and a hard end of
//! life, and no client address may hold more than its share of connections
//! ([`AddressCap`]).
//!
//! tonic's `serve_with_incoming*` ignores the builder's `tcp_nodelay` (our listener is
//! our own), so Nagle's algorithm would hold back responses written in several segments
//! until the client's delayed ACK (~40 ms). And tonic 0.14's `max_connection_age_grace`
//! does not do what gRPC's `MAX_CONNECTION_AGE_GRACE` does: with a grace set, it sends
//! no GOAWAY at the age and drops the connection at age + grace. So the server asks tonic
//! only for the age (a graceful GOAWAY then, which waits for open streams with no bound)
//! and bounds the grace here: at age + grace the connection's reads and writes fail, and
//! hyper closes it, ending streams that were still open (gRFC A9).
//!
//! With TLS ([`crate::tls`]), [`super::handshake`] turns accepted connections into
//! [`Connection::Tls`]; the client certificate a handshake verified goes into every call's
//! [`ConnectionInfo`].

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::tls::PeerCertificate;

/// What every call of a connection knows about it: the TCP addresses and, over TLS, the
/// client certificate verified in the handshake.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The local and peer addresses.
    pub tcp: TcpConnectInfo,
    /// The client certificate; `None` over plaintext or when the client sent none.
    pub peer_certificate: Option<Arc<PeerCertificate>>,
}

impl ConnectionInfo {
    /// The connection info in a request's extensions.
    pub fn of(extensions: &http::Extensions) -> Option<&Self> {
        extensions.get::<Self>()
    }

    /// The client certificate of the connection a request came on; `None` over
    /// plaintext, or when the client sent none.
    pub fn peer_certificate(extensions: &http::Extensions) -> Option<&PeerCertificate> {
        Self::of(extensions).and_then(|info| info.peer_certificate.as_deref())
    }

    /// The client's address (the TCP peer's).
    pub fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp.remote_addr()
    }

    /// The address the connection came in on.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp.local_addr()
    }
}

/// An accepted connection, plaintext or TLS.
#[derive(Debug)]
pub enum Connection {
    /// Plaintext.
    Plain(AgedConnection),
    /// TLS, handshake done.
    Tls(Box<tokio_rustls::server::TlsStream<AgedConnection>>),
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        match self {
            Self::Plain(stream) => ConnectionInfo {
                tcp: stream.connect_info(),
                peer_certificate: None,
            },
            Self::Tls(stream) => {
                let (tcp, session) = stream.get_ref();
                ConnectionInfo {
                    tcp: tcp.connect_info(),
                    peer_certificate: session
                        .peer_certificates()
                        .and_then(PeerCertificate::of_chain)
                        .map(Arc::new),
                }
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }
}

/// An accepted connection that fails every read and write once its lifetime is over.
/// `Unpin` (tonic requires it), so the timer is boxed.
#[derive(Debug)]
pub struct AgedConnection {
    stream: TcpStream,
    end_of_life: Pin<Box<Sleep>>,
    expired: bool,
    /// The connection's place in its address's count, given back when it closes.
    _slot: Option<AddressSlot>,
}

impl AgedConnection {
    /// The client's address (the TCP peer's).
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.stream.peer_addr()
    }

    /// Wraps `stream`, setting `TCP_NODELAY`; it fails with `TimedOut` after `lifetime`.
    pub fn new(stream: TcpStream, lifetime: Duration) -> Self {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        Self {
            stream,
            end_of_life: Box::pin(tokio::time::sleep(lifetime)),
            expired: false,
            _slot: None,
        }
    }

    /// The stream while the lifetime lasts; registers the task to be woken when it ends.
    fn check(self: Pin<&mut Self>, cx: &mut Context<'_>) -> io::Result<Pin<&mut TcpStream>> {
        let this = self.get_mut();
        if !this.expired && this.end_of_life.as_mut().poll(cx).is_ready() {
            this.expired = true;
            tracing::debug!("closing a connection past its maximum age and grace");
        }
        if this.expired {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection exceeded its maximum age and grace",
            ));
        }
        Ok(Pin::new(&mut this.stream))
    }
}

impl AsyncRead for AgedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.check(cx) {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

impl AsyncWrite for AgedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.check(cx) {
            Ok(stream) => stream.poll_write(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.check(cx) {
            Ok(stream) => stream.poll_flush(cx),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.check(cx) {
            Ok(stream) => stream.poll_write_vectored(cx, bufs),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for AgedConnection {
    /// The same connect info as a plain `TcpStream`, so layers reading the peer address
    /// (`TcpConnectInfo`) see no difference.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

/// The per-address cap on open connections (`server.max_connections_per_address`): an
/// IPv4 address, or an IPv6 /64 ([`crate::context::source_bucket`]), holds at most `max`
/// connections at once; a peer inside `trusted_proxies` is exempt (it carries many
/// clients). Cheap to clone; clones share the counts.
#[derive(Debug, Clone)]
pub struct AddressCap {
    max: usize,
    trusted: Arc<[ipnet::IpNet]>,
    open: OpenCounts,
    refused: IntCounter,
}

impl AddressCap {
    /// A cap of `max` connections per address, `trusted` exempt; every refused
    /// connection increments `refused`.
    pub fn new(max: usize, trusted: &[ipnet::IpNet], refused: IntCounter) -> Self {
        Self {
            max,
            trusted: trusted.into(),
            open: Arc::default(),
            refused,
        }
    }

    /// A place for a new connection from `peer`, held until dropped: `Some` when the cap
    /// allows it or `peer` is a trusted proxy (not counted), `None` when `peer`'s address
    /// already holds `max` connections.
    pub fn try_open(&self, peer: IpAddr) -> Option<AddressSlot> {
        let peer = peer.to_canonical();
        if self.trusted.iter().any(|net| net.contains(&peer)) {
            return Some(AddressSlot { counted: None });
        }
        let key = crate::context::source_bucket(peer);
        let mut open = self.open.lock();
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            drop(open);
            self.refused.inc();
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counted: Some((key, Arc::clone(&self.open))),
        })
    }

    /// Counts a connection closed for another reason than this cap (e.g. too many TLS
    /// handshakes in progress).
    pub fn refuse(&self) {
        self.refused.inc();
    }

    /// Connections open now from `peer`'s address (its /64 for IPv6).
    pub fn open_from(&self, peer: IpAddr) -> usize {
        let key = crate::context::source_bucket(peer);
        self.open.lock().get(&key).copied().unwrap_or(0)
    }
}

/// Open connections by client address (IPv6: /64), shared by the cap and its slots.
type OpenCounts = Arc<parking_lot::Mutex<HashMap<IpAddr, usize>>>;

/// One connection's place in its address's count ([`AddressCap`]).
#[derive(Debug)]
pub struct AddressSlot {
    /// The address counted and the counts; `None` for a trusted proxy.
    counted: Option<(IpAddr, OpenCounts)>,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some((key, open)) = &self.counted else {
            return;
        };
        let mut open = open.lock();
        if let Some(count) = open.get_mut(key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Forgotten at zero: the map holds only addresses with open connections.
                open.remove(key);
            }
        }
    }
}

/// The accepted connections of `listener`, each an [`AgedConnection`] living at most
/// `lifetime`; a connection over `cap` is closed as soon as it is accepted (logged at
/// DEBUG, counted in `trellis_server_connections_refused_total`).
pub fn incoming(
    listener: TcpListener,
    lifetime: Duration,
    cap: AddressCap,
) -> impl Stream<Item = io::Result<AgedConnection>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).filter_map(move |accepted| {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(err) => return Some(Err(err)),
        };
        let slot = match stream.peer_addr() {
            Ok(peer) => match cap.try_open(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(
                        peer = %peer.ip(),
                        max = cap.max,
                        "closing a connection over server.max_connections_per_address"
                    );
                    return None;
                }
            },
            // Already gone: hyper sees the error on its first read.
            Err(_) => None,
        };
        let mut connection = AgedConnection::new(stream, lifetime);
        connection._slot = slot;
        Some(Ok(connection))
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn cap(max: usize, trusted: &[&str]) -> AddressCap {
        let trusted: Vec<ipnet::IpNet> = trusted
            .iter()
            .map(|net| net.parse().unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let refused =
            IntCounter::new("refused_total", "Refused.").unwrap_or_else(|e| panic!("{e}"));
        AddressCap::new(max, &trusted, refused)
    }

    async fn pair(lifetime: Duration) -> (AgedConnection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let client = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut accepted = Box::pin(incoming(listener, lifetime, cap(8, &[])));
        let server = accepted
            .next()
            .await
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("no connection accepted"));
        (server, client)
    }

    #[tokio::test]
    async fn accepted_connections_have_nodelay_and_the_peer_address() {
        let (server, client) = pair(Duration::from_secs(60)).await;
        assert_eq!(server.stream.nodelay().ok(), Some(true));
        assert_eq!(server.connect_info().remote_addr, client.local_addr().ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_fails_once_its_lifetime_is_over() {
        let (server, _client) = pair(Duration::from_secs(60)).await;
        let mut server = Box::pin(server);
        // A read waiting for data that never comes ends with an error when the lifetime
        // ends (the paused clock jumps there once nothing else can run).
        let mut buf = [0_u8; 2];
        let err = server.read(&mut buf).await.err();
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
        assert!(server.write_all(b"late").await.is_err());
    }

    #[test]
    fn the_cap_counts_per_ipv4_address_and_per_ipv6_64_and_frees_on_drop() {
        let cap = cap(2, &[]);
        let ip = |text: &str| text.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}"));
        let first = cap.try_open(ip("192.0.2.1"));
        let second = cap.try_open(ip("::ffff:192.0.2.1"));
        assert!(first.is_some() && second.is_some());
        assert!(
            cap.try_open(ip("192.0.2.1")).is_none(),
            "the third is refused"
        );
        assert!(
            cap.try_open(ip("192.0.2.2")).is_some(),
            "another address has its own"
        );
        assert_eq!(cap.refused.get(), 1);
        drop(first);
        assert_eq!(cap.open_from(ip("192.0.2.1")), 1);
        assert!(
            cap.try_open(ip("192.0.2.1")).is_some(),
            "a closed one frees its place"
        );

        // One /64 is one client, whichever of its addresses it uses.
        let _a = cap.try_open(ip("2001:db8:1:2::1"));
        let _b = cap.try_open(ip("2001:db8:1:2:ffff::9"));
        assert!(cap.try_open(ip("2001:db8:1:2::77")).is_none());
        assert!(cap.try_open(ip("2001:db8:1:3::1")).is_some());
    }

    #[test]
    fn a_trusted_proxy_is_not_capped() {
        let cap = cap(1, &["10.0.0.0/8"]);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap_or_else(|e| panic!("{e}"));
        let held: Vec<_> = (0..5).map(|_| cap.try_open(proxy)).collect();
        assert!(held.iter().all(Option::is_some));
        assert_eq!(
            cap.open_from(proxy),
            0,
            "a proxy's connections are not counted"
        );
    }
}
