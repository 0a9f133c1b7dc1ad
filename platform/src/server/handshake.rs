//! TLS handshakes of accepted connections, run beside the accept loop so that a slow one
//! holds up no other, and bounded so that a client cannot hold them all.
//!
//! A handshake costs the server a signature and some memory, and a client that opens
//! connections and never finishes its handshake holds each for up to
//! `tls.handshake_timeout_ms`. So at most [`MAX_HANDSHAKES`] run at once and at most
//! [`MAX_HANDSHAKES_PER_ADDRESS`] per client address (IPv6: per /64; peers in
//! `server.trusted_proxies` are exempt); a connection over either bound is closed as
//! soon as it is accepted (counted in `trellis_server_connections_refused_total`), never
//! queued: accepting goes on for everyone else. A failed or late handshake closes its
//! connection (logged at DEBUG).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use tokio_stream::Stream;

use super::connection::{AddressCap, AgedConnection, Connection};
use crate::tls::TlsSource;

/// Most TLS handshakes in progress at once.
pub const MAX_HANDSHAKES: usize = 1024;

/// Most TLS handshakes in progress at once from one client address (IPv6: one /64).
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 32;

/// A handshake in progress: the connection when it succeeds.
type Pending = Pin<Box<dyn Future<Output = Option<Connection>> + Send>>;

/// `accepted` as the server serves them: plaintext without `tls`; with it, each after
/// its TLS handshake, with the material current when it was accepted. `per_address`
/// bounds the handshakes of one client address (see the module docs).
pub fn secured(
    accepted: impl Stream<Item = io::Result<AgedConnection>> + Send + 'static,
    tls: Option<TlsSource>,
    per_address: AddressCap,
) -> Pin<Box<dyn Stream<Item = io::Result<Connection>> + Send>> {
    let Some(tls) = tls else {
        return Box::pin(tokio_stream::StreamExt::map(accepted, |accepted| {
            accepted.map(Connection::Plain)
        }));
    };
    Box::pin(Handshakes {
        timeout: tls.config().handshake_timeout,
        tls,
        accepted: Box::pin(accepted),
        accepted_done: false,
        pending: FuturesUnordered::new(),
        per_address,
    })
}

/// The stream [`secured`] makes under TLS.
struct Handshakes {
    tls: TlsSource,
    timeout: Duration,
    accepted: Pin<Box<dyn Stream<Item = io::Result<AgedConnection>> + Send>>,
    accepted_done: bool,
    pending: FuturesUnordered<Pending>,
    per_address: AddressCap,
}

impl Handshakes {
    /// Starts `connection`'s handshake, or closes it when over a bound.
    fn start(&mut self, connection: AgedConnection) {
        if self.pending.len() >= MAX_HANDSHAKES {
            self.per_address.refuse();
            tracing::debug!("closing a connection: {MAX_HANDSHAKES} TLS handshakes in progress");
            return;
        }
        let slot = match connection.peer_addr() {
            Ok(peer) => match self.per_address.try_open(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(
                        peer = %peer.ip(),
                        "closing a connection: {MAX_HANDSHAKES_PER_ADDRESS} TLS handshakes in progress from its address"
                    );
                    return;
                }
            },
            Err(_) => None,
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.current().server_config());
        let timeout = self.timeout;
        self.pending.push(Box::pin(async move {
            // Held until the handshake ends.
            let _slot = slot;
            match tokio::time::timeout(timeout, acceptor.accept(connection)).await {
                Ok(Ok(stream)) => Some(Connection::Tls(Box::new(stream))),
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    None
                }
            }
        }));
    }
}

impl Stream for Handshakes {
    type Item = io::Result<Connection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        while !this.accepted_done {
            match this.accepted.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(connection))) => this.start(connection),
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err))),
                Poll::Ready(None) => this.accepted_done = true,
                Poll::Pending => break,
            }
        }
        loop {
            match Pin::new(&mut this.pending).poll_next(cx) {
                Poll::Ready(Some(Some(connection))) => return Poll::Ready(Some(Ok(connection))),
                // A failed handshake: look at the next one.
                Poll::Ready(Some(None)) => {}
                Poll::Ready(None) if this.accepted_done => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}
