//! Mutual TLS between workloads, with SPIFFE identities (the `tls` section).
//!
//! Each workload holds one certificate whose only URI SAN is its SPIFFE ID,
//! `spiffe://<trust domain>/ns/<namespace>/sa/<service>` (an X.509-SVID), issued by a CA
//! in the trust bundle (`tls.ca`). With `tls` set:
//!
//! - **the server** ([`crate::server`]) speaks only TLS (1.3 preferred, ALPN `h2`) and
//!   *requests* a client certificate: end users and grpcurl connect with server-only TLS;
//!   a certificate a client sends must chain to the bundle, and its facts
//!   ([`PeerCertificate`]) go with every call of the connection. The auth layer requires
//!   one on internal methods, naming the service the call's token names;
//! - **peer connections** ([`PeerTls`]) present this workload's certificate and accept
//!   only a peer certificate that chains to the bundle *and* carries the SPIFFE ID
//!   expected for that peer — not a DNS name, so a registry or DNS answer that points a
//!   peer's name elsewhere reaches no impostor: the handshake fails;
//! - **rotation**: the files are re-read every `tls.reload_interval_ms` ([`TlsSource`]);
//!   new handshakes use a changed pair, and `server.max_connection_age_ms` recycles the
//!   connections made before. A bad pair is refused, logged, and the old one kept.

mod config;
mod source;
mod spiffe;

pub use config::{DEFAULT_TRUST_DOMAIN, TlsConfig};
pub use source::{Material, TlsSource};
pub use spiffe::{CertificateFacts, SpiffeId, thumbprint};

use std::path::PathBuf;
use std::sync::Arc;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM of its kind.
    #[error("{0}: {1}")]
    Pem(&'static str, String),
    /// The certificate names another workload.
    #[error("tls.cert names {found}, but this workload is {expected}")]
    Identity {
        /// The SPIFFE ID this workload has.
        expected: String,
        /// What the certificate carries.
        found: String,
    },
    /// The certificate's notAfter has passed.
    #[error("tls.cert has expired")]
    Expired,
    /// rustls refused the material (e.g. the key is not the certificate's).
    #[error("tls: {0}")]
    Rustls(#[source] rustls::Error),
}

/// The CA certificates of a PEM bundle; a message naming what is wrong otherwise (no
/// certificate, or one that cannot be a trust anchor).
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.map_err(|err| err.to_string())?)
            .map_err(|err| err.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate".to_owned());
    }
    Ok(roots)
}

/// What a connection's client certificate proved, verified against the trust bundle
/// during the handshake; in the connection info of each of its calls (the server's
/// `ConnectionInfo::peer_certificate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The workload's SPIFFE ID; `None` when the certificate carries no Trellis one.
    pub spiffe_id: Option<SpiffeId>,
    /// The certificate's SHA-256 thumbprint (RFC 8705 `x5t#S256`), which a bound token's
    /// `cnf` must equal.
    pub thumbprint: String,
}

impl PeerCertificate {
    /// Reads the leaf of a verified chain; `None` when it cannot be parsed (never the
    /// case after rustls verified it).
    pub fn of_chain(chain: &[CertificateDer<'_>]) -> Option<Self> {
        let facts = CertificateFacts::read(chain.first()?).ok()?;
        Some(Self {
            spiffe_id: facts.spiffe_id,
            thumbprint: facts.thumbprint,
        })
    }
}

/// Always the one certificate of this generation (server and client side).
#[derive(Debug)]
struct FixedKey(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedKey {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

impl ResolvesClientCert for FixedKey {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts a server certificate that chains to the trust bundle (for server
/// authentication) and carries exactly the expected SPIFFE ID; the name the connection
/// was made to plays no part (X509-SVID spec §5).
#[derive(Debug)]
struct SpiffeVerifier {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let found = CertificateFacts::read(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?
            .spiffe_id;
        if found.as_ref() != Some(&self.expected) {
            tracing::warn!(
                expected = %self.expected,
                found = found.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string),
                "refusing a peer whose certificate names another workload"
            );
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A peer's side of mutual TLS: this workload's current certificate, and the SPIFFE ID
/// the peer must prove. Cheap to clone.
#[derive(Clone)]
pub struct PeerTls {
    source: TlsSource,
    expected: SpiffeId,
    /// The client config of the material's generation, made once per generation.
    cached: Arc<parking_lot::Mutex<Option<GenerationConfig>>>,
}

/// A client config and the generation of the material it was made from.
type GenerationConfig = (u64, Arc<ClientConfig>);

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

/// The error of a connection attempt.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl PeerTls {
    /// Mutual TLS with `source`'s certificate to a peer that must prove `expected`.
    pub fn new(source: TlsSource, expected: SpiffeId) -> Self {
        Self {
            source,
            expected,
            cached: Arc::default(),
        }
    }

    /// The generation of this workload's material that new connections present.
    pub fn generation(&self) -> u64 {
        self.source.current().generation()
    }

    fn client_config(&self) -> Result<Arc<ClientConfig>, rustls::Error> {
        let material = self.source.current();
        let mut cached = self.cached.lock();
        if let Some((generation, config)) = cached.as_ref()
            && *generation == material.generation()
        {
            return Ok(Arc::clone(config));
        }
        let verifier = SpiffeVerifier {
            roots: Arc::clone(&material.roots),
            expected: self.expected.clone(),
            provider: Arc::clone(self.source.provider()),
        };
        let mut config = ClientConfig::builder_with_provider(Arc::clone(self.source.provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(FixedKey(Arc::clone(&material.certified))));
        config.alpn_protocols = vec![source::ALPN_H2.to_vec()];
        let config = Arc::new(config);
        *cached = Some((material.generation(), Arc::clone(&config)));
        Ok(config)
    }

    /// A lazily connected channel to `authority` (`host:port`) over mutual TLS through
    /// this connector, whatever scheme the address was given with: tonic sees `http://`
    /// so that it leaves the TLS to us, and requests carry `:scheme https`.
    ///
    /// # Errors
    /// When `authority` makes no valid URI.
    pub fn channel(
        &self,
        authority: &str,
        connect_timeout: std::time::Duration,
    ) -> Result<tonic::transport::Channel, String> {
        let origin: Uri = format!("https://{authority}")
            .parse()
            .map_err(|err: http::uri::InvalidUri| err.to_string())?;
        let connector = self.clone();
        Ok(
            tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
                .map_err(|err| err.to_string())?
                .origin(origin)
                .connect_timeout(connect_timeout)
                .connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
                    let connector = connector.clone();
                    async move { connector.connect(uri).await }
                })),
        )
    }

    /// Connects to `uri`'s host and port over TCP (`TCP_NODELAY`), then mutual TLS; fails
    /// unless the peer proves the expected identity and agrees to `h2`.
    ///
    /// # Errors
    /// The connection's or the handshake's failure.
    pub async fn connect(
        &self,
        uri: Uri,
    ) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, BoxError> {
        let host = uri
            .host()
            .ok_or("the peer's address has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        // SNI for a name, none for an address; the verifier checks the SPIFFE ID only.
        let name = ServerName::try_from(host)?;
        let stream = tokio_rustls::TlsConnector::from(self.client_config()?)
            .connect(name, tcp)
            .await?;
        if stream.get_ref().1.alpn_protocol() != Some(source::ALPN_H2) {
            return Err("the peer did not agree to HTTP/2 (ALPN h2)".into());
        }
        Ok(TokioIo::new(stream))
    }
}
