//! The accept path: every accepted TCP connection gets `TCP_NODELAY` and a hard end of
//! life.
//!
//! tonic's `serve_with_incoming*` ignores the builder's `tcp_nodelay` (our listener is
//! our own), so Nagle's algorithm would hold back responses written in several segments
//! until the client's delayed ACK (~40 ms). And tonic 0.14's `max_connection_age_grace`
//! does not do what gRPC's `MAX_CONNECTION_AGE_GRACE` does: with a grace set, it sends
//! no GOAWAY at the age and drops the connection at age + grace. So the server asks tonic
//! only for the age (a graceful GOAWAY then, which waits for open streams with no bound)
//! and bounds the grace here: at age + grace the connection's reads and writes fail, and
//! hyper closes it, ending streams that were still open (gRFC A9).

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection that fails every read and write once its lifetime is over.
/// `Unpin` (tonic requires it), so the timer is boxed.
#[derive(Debug)]
pub struct AgedConnection {
    stream: TcpStream,
    end_of_life: Pin<Box<Sleep>>,
    expired: bool,
}

impl AgedConnection {
    /// Wraps `stream`, setting `TCP_NODELAY`; it fails with `TimedOut` after `lifetime`.
    pub fn new(stream: TcpStream, lifetime: Duration) -> Self {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        Self {
            stream,
            end_of_life: Box::pin(tokio::time::sleep(lifetime)),
            expired: false,
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

/// The accepted connections of `listener`, each an [`AgedConnection`] living at most
/// `lifetime`.
pub fn incoming(
    listener: TcpListener,
    lifetime: Duration,
) -> impl Stream<Item = io::Result<AgedConnection>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
        .map(move |accepted| accepted.map(|stream| AgedConnection::new(stream, lifetime)))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn pair(lifetime: Duration) -> (AgedConnection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let client = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut accepted = Box::pin(incoming(listener, lifetime));
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
}
