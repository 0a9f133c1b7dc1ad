//! The workload's TLS material, loaded from the `tls` files and re-read while it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;

use super::{CertificateFacts, SpiffeId, TlsConfig, TlsError};
use crate::metrics::{Metrics, MetricsError};

/// ALPN's name of HTTP/2 (RFC 7301, RFC 9113 §3.2): gRPC runs on nothing else.
pub(super) const ALPN_H2: &[u8] = b"h2";

/// One generation of the workload's TLS material: what new handshakes use until the
/// files change.
pub struct Material {
    generation: u64,
    pub(super) certified: Arc<CertifiedKey>,
    pub(super) roots: Arc<RootCertStore>,
    server: Arc<ServerConfig>,
    facts: CertificateFacts,
    identity: SpiffeId,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("generation", &self.generation)
            .field("identity", &self.identity)
            .field("thumbprint", &self.facts.thumbprint)
            .finish_non_exhaustive()
    }
}

impl Material {
    /// Counts from 1; each accepted change of the files adds one.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// This workload's SPIFFE ID, as its certificate carries it.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The certificate's SHA-256 thumbprint (RFC 8705 `x5t#S256`).
    pub fn thumbprint(&self) -> &str {
        &self.facts.thumbprint
    }

    /// The certificate's notAfter.
    pub fn not_after(&self) -> SystemTime {
        self.facts.not_after
    }

    /// The server side: this certificate, client certificates requested (verified
    /// against the trust bundle when sent; required for internal methods by the auth
    /// layer), TLS 1.3 preferred over 1.2, ALPN `h2`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server)
    }
}

/// The files as last read, to tell a change.
type FileBytes = [Vec<u8>; 3];

/// How long a reload waits to read the files again when what it read does not make a
/// pair: a Kubernetes secret volume swaps its files at once, a plain copy one by one.
const RESWAP_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// This workload's TLS material from the `tls` files, re-read every
/// `tls.reload_interval_ms` by [`Self::run_reloader`]. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct TlsSource {
    inner: Arc<Inner>,
}

struct Inner {
    config: TlsConfig,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
    current: parking_lot::RwLock<Arc<Material>>,
    read: parking_lot::Mutex<FileBytes>,
    generations: AtomicU64,
    /// One reload at a time, so an older read never replaces a newer one.
    reloading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSource")
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

impl TlsSource {
    /// Loads the material of `config` for `service` (whose SPIFFE ID the certificate
    /// must carry); `None` when `config` sets no certificate.
    ///
    /// # Errors
    /// [`TlsError`] when a file cannot be read or parsed, the key does not match the
    /// certificate, the certificate carries another identity or has expired.
    pub fn load(config: &TlsConfig, service: &str) -> Result<Option<Self>, TlsError> {
        let (Some(cert), Some(key), Some(ca)) = (&config.cert, &config.key, &config.ca) else {
            return Ok(None);
        };
        let read = |path: &std::path::PathBuf| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            })
        };
        let files = [read(cert)?, read(key)?, read(ca)?];
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let expected = config.identity_of(service);
        let material = build(&files, &provider, &expected, 1)?;
        tracing::info!(
            identity = %material.identity,
            not_after = %chrono::DateTime::<chrono::Utc>::from(material.not_after()).to_rfc3339(),
            "TLS on: mutual TLS to peers, client certificates required for internal methods"
        );
        Ok(Some(Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                expected,
                provider,
                current: parking_lot::RwLock::new(Arc::new(material)),
                read: parking_lot::Mutex::new(files),
                generations: AtomicU64::new(1),
                reloading: tokio::sync::Mutex::new(()),
            }),
        }))
    }

    /// The material new handshakes use.
    pub fn current(&self) -> Arc<Material> {
        Arc::clone(&self.inner.current.read())
    }

    /// The crypto provider (ring).
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.inner.provider
    }

    /// The configuration loaded from.
    pub fn config(&self) -> &TlsConfig {
        &self.inner.config
    }

    /// Reads the files again; when they changed and make a valid pair for this workload,
    /// new handshakes use them from now on. A bad change is logged at ERROR and the
    /// material in use kept; it is tried again at the next change only.
    ///
    /// # Errors
    /// [`TlsError`] when the files changed but cannot be used.
    pub async fn reload(&self) -> Result<bool, TlsError> {
        let _one_at_a_time = self.inner.reloading.lock().await;
        let Some(mut files) = self.read_files().await? else {
            return Ok(false);
        };
        if *self.inner.read.lock() != files
            && build(&files, &self.inner.provider, &self.inner.expected, 0).is_err()
        {
            // Read while the files were being replaced (the certificate of one pair, the
            // key of the next)? Read once more before calling the change bad.
            tokio::time::sleep(RESWAP_PAUSE).await;
            if let Some(again) = self.read_files().await? {
                files = again;
            }
        }
        {
            let mut read = self.inner.read.lock();
            if *read == files {
                return Ok(false);
            }
            // Remembered even when bad: a bad pair is reported once, not every poll.
            read.clone_from(&files);
        }
        let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let material = build(
            &files,
            &self.inner.provider,
            &self.inner.expected,
            generation,
        )?;
        tracing::info!(
            identity = %material.identity,
            thumbprint = material.thumbprint(),
            not_after = %chrono::DateTime::<chrono::Utc>::from(material.not_after()).to_rfc3339(),
            generation,
            "TLS certificate reloaded: new handshakes use it"
        );
        *self.inner.current.write() = Arc::new(material);
        Ok(true)
    }

    /// The three files' bytes; `None` without TLS.
    async fn read_files(&self) -> Result<Option<FileBytes>, TlsError> {
        let config = &self.inner.config;
        let (Some(cert), Some(key), Some(ca)) = (&config.cert, &config.key, &config.ca) else {
            return Ok(None);
        };
        let mut files: FileBytes = Default::default();
        for (slot, path) in files.iter_mut().zip([cert, key, ca]) {
            *slot = tokio::fs::read(path)
                .await
                .map_err(|source| TlsError::Read {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(Some(files))
    }

    /// Re-reads the files every `tls.reload_interval_ms` until `stop` is cancelled.
    pub async fn run_reloader(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.inner.config.reload_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(err) = self.reload().await {
                tracing::error!(
                    error = %err,
                    kept = self.current().thumbprint(),
                    "cannot use the changed TLS files; keeping the certificate in use"
                );
            }
        }
    }

    /// Registers `trellis_tls_certificate_expiry_seconds`: seconds until the certificate
    /// in use expires (negative once it has), read at each scrape.
    ///
    /// # Errors
    /// [`MetricsError`] when the name is taken.
    pub fn register_metrics(&self, metrics: &Metrics) -> Result<(), MetricsError> {
        let source = self.clone();
        metrics.gauge_fn(
            "trellis_tls_certificate_expiry_seconds",
            "Seconds until this workload's TLS certificate expires (negative once it has).",
            move || {
                let not_after = source.current().not_after();
                match not_after.duration_since(SystemTime::now()) {
                    Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                    Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
                }
            },
        )
    }
}

/// Makes the material of `files` (certificate chain, key, trust bundle, PEM).
fn build(
    files: &FileBytes,
    provider: &Arc<CryptoProvider>,
    expected: &SpiffeId,
    generation: u64,
) -> Result<Material, TlsError> {
    let [cert, key, ca] = files;
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Pem("tls.cert", err.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::Pem("tls.cert", "no certificate".to_owned()));
    };
    let facts = CertificateFacts::read(leaf).map_err(|err| TlsError::Pem("tls.cert", err))?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|err| TlsError::Pem("tls.key", err.to_string()))?;
    let roots = super::roots_from_pem(ca).map_err(|err| TlsError::Pem("tls.ca", err))?;
    let identity = facts.spiffe_id.clone().ok_or_else(|| TlsError::Identity {
        expected: expected.to_string(),
        found: "no single SPIFFE ID URI SAN".to_owned(),
    })?;
    if identity != *expected {
        return Err(TlsError::Identity {
            expected: expected.to_string(),
            found: identity.to_string(),
        });
    }
    if facts.not_after <= SystemTime::now() {
        return Err(TlsError::Expired);
    }
    // What peers will check, checked first: the leaf chains to the bundle it comes with
    // and is valid now (notBefore too), for server authentication.
    let parsed = rustls::server::ParsedCertificate::try_from(leaf).map_err(TlsError::Rustls)?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &chain[1..],
        rustls::pki_types::UnixTime::now(),
        provider.signature_verification_algorithms.all,
    )
    .map_err(TlsError::Rustls)?;
    // Fails when the key is not the certificate's.
    let certified =
        Arc::new(CertifiedKey::from_der(chain, key, provider).map_err(TlsError::Rustls)?);
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(provider))
            .allow_unauthenticated()
            .build()
            .map_err(|err| TlsError::Pem("tls.ca", err.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Rustls)?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(Arc::new(super::FixedKey(Arc::clone(&certified))));
    // h2 first (gRPC); HTTP/1.1 for HTTP/JSON clients that offer only it.
    server.alpn_protocols = vec![ALPN_H2.to_vec(), b"http/1.1".to_vec()];
    Ok(Material {
        generation,
        certified,
        roots,
        server: Arc::new(server),
        facts,
        identity,
    })
}
