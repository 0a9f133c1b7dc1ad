//! TLS handshakes of accepted connections, each in a task of its own (the signatures
//! and chain checks run on the runtime's workers, not on the accept loop), bounded so
//! that a client cannot hold them all.
//!
//! A client that opens connections and never finishes its handshake holds each for up
//! to `tls.handshake_timeout_ms`. So one client address (IPv6: one /64; peers in
//! `server.trusted_proxies` are exempt) may have at most [`MAX_HANDSHAKES_PER_ADDRESS`]
//! in progress: a connection over it is closed as soon as it is accepted. And at most
//! `tls.max_handshakes` run in all: past it, the *oldest* handshake in progress is
//! abandoned for the new one — an honest handshake takes milliseconds, so only
//! connections that stall are evicted, and a flood from many addresses cannot stop a
//! new client from connecting. Both count in `trellis_server_connections_refused_total`.
//! A failed or late handshake closes its connection (logged at DEBUG).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_stream::Stream;

use super::connection::{AddressCap, AgedConnection, Connection};
use crate::tls::TlsSource;

/// Most TLS handshakes in progress at once from one client address (IPv6: one /64).
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 32;

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
    let (done, finished) = mpsc::unbounded_channel();
    Box::pin(Handshakes {
        timeout: tls.config().handshake_timeout,
        max: tls.config().max_handshakes,
        tls,
        accepted: Box::pin(accepted),
        accepted_done: false,
        running: VecDeque::new(),
        done,
        finished,
        per_address,
    })
}

/// The stream [`secured`] makes under TLS.
struct Handshakes {
    tls: TlsSource,
    timeout: Duration,
    max: usize,
    accepted: Pin<Box<dyn Stream<Item = io::Result<AgedConnection>> + Send>>,
    accepted_done: bool,
    /// The handshakes in progress, oldest first (some may have ended since the last
    /// look).
    running: VecDeque<AbortHandle>,
    done: mpsc::UnboundedSender<Option<Connection>>,
    finished: mpsc::UnboundedReceiver<Option<Connection>>,
    per_address: AddressCap,
}

impl Handshakes {
    /// Starts `connection`'s handshake in a task of its own, or closes it when its
    /// address is over its bound; evicts the oldest handshake when all are taken.
    fn start(&mut self, connection: AgedConnection) {
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
        // At most `max` entries: one pass over them per accepted connection.
        self.running.retain(|handshake| !handshake.is_finished());
        if self.running.len() >= self.max
            && let Some(oldest) = self.running.pop_front()
        {
            oldest.abort();
            self.per_address.refuse();
            tracing::debug!(
                max = self.max,
                "abandoning the oldest TLS handshake for a new connection"
            );
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.current().server_config());
        let (timeout, done) = (self.timeout, self.done.clone());
        let task = tokio::spawn(async move {
            // Held until the handshake ends.
            let _slot = slot;
            let connection = match tokio::time::timeout(timeout, acceptor.accept(connection)).await
            {
                Ok(Ok(stream)) => Some(Connection::Tls(Box::new(stream))),
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    None
                }
            };
            // The server stopped accepting when nobody receives.
            drop(done.send(connection));
        });
        self.running.push_back(task.abort_handle());
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
            match this.finished.poll_recv(cx) {
                Poll::Ready(Some(Some(connection))) => return Poll::Ready(Some(Ok(connection))),
                // A failed handshake: look at the next one.
                Poll::Ready(Some(None)) => {}
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending
                    if this.accepted_done && this.running.iter().all(AbortHandle::is_finished) =>
                {
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Handshakes {
    fn drop(&mut self) {
        for handshake in self.running.drain(..) {
            handshake.abort();
        }
    }
}
