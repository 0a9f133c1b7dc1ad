//! The `tls` section: this workload's certificate, key and trust bundle, and the SPIFFE
//! trust domain and namespace its peers' identities are expected in.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_with::serde_as;

use super::SpiffeId;
use crate::config::{ConfigError, NonZeroMilliSeconds};

/// The default SPIFFE trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "trellis.local";

/// The `tls` section. Unset (no `cert`), every hop is plaintext; set, the server speaks
/// only TLS (client certificates requested on every method, required on internal ones)
/// and every peer connection is mutual TLS verified against the peer's SPIFFE ID.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of this workload's certificate chain (leaf first), whose one URI SAN is
    /// its SPIFFE ID `spiffe://<trust_domain>/ns/<namespace>/sa/<service name>`.
    pub cert: Option<PathBuf>,
    /// PEM file of the certificate's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: Option<PathBuf>,
    /// PEM file of the trust bundle: the CA certificates peers' and clients'
    /// certificates must chain to.
    pub ca: Option<PathBuf>,
    /// The SPIFFE trust domain of this workload and its peers. Default `trellis.local`.
    pub trust_domain: String,
    /// The namespace part of the SPIFFE IDs (Kubernetes: the pod's namespace). Default
    /// `default`.
    pub namespace: String,
    /// `reload_interval_ms`: how often the three files are read again, in ms; a changed
    /// pair is used for new handshakes (a bad one is refused with an error log and the
    /// old one kept). Polled rather than watched: Kubernetes swaps a `..data` symlink,
    /// which file watches miss. Default 10000.
    #[serde(rename = "reload_interval_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub reload_interval: Duration,
    /// `handshake_timeout_ms`: how long an accepted connection may take to finish its
    /// TLS handshake, in ms; then it is closed. Each handshake runs in a task of its
    /// own. Default 10000.
    #[serde(rename = "handshake_timeout_ms")]
    #[serde_as(as = "NonZeroMilliSeconds")]
    pub handshake_timeout: Duration,
    /// Most TLS handshakes in progress at once; past it the oldest is abandoned for a
    /// new connection (an honest handshake takes milliseconds: only stalled ones are
    /// evicted). One client address may hold at most 32. Default 1024.
    pub max_handshakes: usize,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            ca: None,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            namespace: "default".to_owned(),
            reload_interval: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 1024,
        }
    }
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    /// The SPIFFE ID `service` has under this configuration.
    pub fn identity_of(&self, service: &str) -> SpiffeId {
        SpiffeId::workload(&self.trust_domain, &self.namespace, service)
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when only some of `cert`, `key` and `ca` are set, or the
    /// trust domain or namespace would make no valid SPIFFE ID.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let set = [&self.cert, &self.key, &self.ca]
            .iter()
            .filter(|path| path.is_some())
            .count();
        if set != 0 && set != 3 {
            return Err(ConfigError::invalid(
                "tls",
                "set all of tls.cert, tls.key and tls.ca, or none",
            ));
        }
        crate::config::require_positive("tls.max_handshakes", self.max_handshakes as u64)?;
        let probe = self.identity_of("service").to_string();
        if SpiffeId::parse(&probe).is_none() {
            return Err(ConfigError::invalid(
                "tls.trust_domain",
                format!(
                    "`{}` and namespace `{}` make no valid SPIFFE ID: use lower-case letters, \
                     digits, `.`, `-` and `_`",
                    self.trust_domain, self.namespace
                ),
            ));
        }
        Ok(())
    }
}
