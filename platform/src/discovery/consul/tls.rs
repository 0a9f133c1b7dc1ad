//! The agent's HTTP API over TLS (`https://` with `discovery.consul.ca`, and a client
//! certificate with `.cert` and `.key` for an agent with `verify_incoming`): hyper-util's
//! HTTP connector for TCP, then rustls (ring) checking the agent's certificate against
//! the CA for the address's host name, ALPN `http/1.1`.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// The files of `discovery.consul`'s TLS settings.
#[derive(Debug, Clone, Default)]
pub(super) struct TlsFiles {
    pub(super) ca: Option<PathBuf>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
}

impl TlsFiles {
    /// The client config the files make; `None` without `ca`.
    pub(super) fn client_config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
        let Some(ca) = &self.ca else {
            if self.cert.is_some() || self.key.is_some() {
                return Err("a client certificate needs `ca` and an https:// address".to_owned());
            }
            return Ok(None);
        };
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))
        };
        let roots = crate::tls::roots_from_pem(&read(ca)?)
            .map_err(|err| format!("{}: {err}", ca.display()))?;
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_slice_iter(&read(cert)?)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| format!("{}: {err}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                    .map_err(|err| format!("{}: {err}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|err| err.to_string())?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("set both `cert` and `key`, or neither".to_owned()),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }
}

/// Connects to the agent: plain TCP, or TLS over it.
#[derive(Clone)]
pub(super) struct AgentConnector {
    http: HttpConnector,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl AgentConnector {
    /// Plaintext without `tls`.
    pub(super) fn new(tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        let mut http = HttpConnector::new();
        // The scheme is ours to handle: https too.
        http.enforce_http(false);
        http.set_nodelay(true);
        Self {
            http,
            tls: tls.map(tokio_rustls::TlsConnector::from),
        }
    }
}

/// A connection to the agent: plain TCP or TLS over it.
pub(super) struct AgentStream(
    TokioIo<Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>>,
);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for AgentConnector {
    type Response = AgentStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<AgentStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let tcp = connecting.await?;
            let tcp = tcp.into_inner();
            let Some(tls) = tls else {
                return Ok(AgentStream(TokioIo::new(Either::Left(tcp))));
            };
            let name = ServerName::try_from(host)?;
            let stream = tls.connect(name, tcp).await?;
            Ok(AgentStream(TokioIo::new(Either::Right(stream))))
        })
    }
}

impl Connection for AgentStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for AgentStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for AgentStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
