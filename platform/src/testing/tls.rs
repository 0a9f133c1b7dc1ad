//! A test CA issuing workload certificates with SPIFFE IDs, written to files as the
//! `tls` section reads them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::tls::{DEFAULT_TRUST_DOMAIN, SpiffeId, TlsConfig};

/// A certificate authority for one test, with its files in a temporary directory.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A workload's files, as [`TestCa::workload`] wrote them.
#[derive(Debug, Clone)]
pub struct WorkloadFiles {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// The private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// The CA's certificate (PEM): the trust bundle.
    pub ca: PathBuf,
}

impl WorkloadFiles {
    /// The SHA-256 thumbprint of the certificate (RFC 8705 `x5t#S256`), which a token
    /// bound to it carries.
    pub fn thumbprint(&self) -> String {
        use rustls::pki_types::pem::PemObject as _;
        let der = rustls::pki_types::CertificateDer::from_pem_file(&self.cert)
            .expect("the certificate file");
        crate::tls::thumbprint(&der)
    }

    /// The `tls` section that loads these files, in the default trust domain and
    /// namespace `default`.
    pub fn config(&self) -> TlsConfig {
        TlsConfig {
            cert: Some(self.cert.clone()),
            key: Some(self.key.clone()),
            ca: Some(self.ca.clone()),
            ..TlsConfig::default()
        }
    }
}

impl TestCa {
    /// A new CA (ECDSA P-256), its certificate written to `ca.pem`.
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Trellis test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).expect("a CA certificate").pem();
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("ca.pem"), &pem).expect("ca.pem written");
        Self {
            issuer: Issuer::new(params, key),
            pem,
            dir,
        }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The directory the files are written to.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a certificate for `service` in the default trust domain and namespace
    /// `default`, written as `<service>.pem` and `<service>-key.pem`.
    pub fn workload(&self, service: &str) -> WorkloadFiles {
        self.issue(
            &SpiffeId::workload(DEFAULT_TRUST_DOMAIN, "default", service),
            service,
        )
    }

    /// The paths [`Self::issue`] writes `name`'s files to (nothing is written).
    pub fn files(&self, name: &str) -> WorkloadFiles {
        WorkloadFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}-key.pem")),
            ca: self.dir.path().join("ca.pem"),
        }
    }

    /// Issues a certificate carrying `id` (server and client authentication; DNS names
    /// `localhost` and 127.0.0.1 for clients such as grpcurl), written under `name`.
    pub fn issue(&self, id: &SpiffeId, name: &str) -> WorkloadFiles {
        let (cert, key) = self.issue_pem(id);
        let files = self.files(name);
        write_replacing(&files.cert, &cert);
        write_replacing(&files.key, &key);
        files
    }

    /// A certificate and key (PEM) carrying `id`.
    pub fn issue_pem(&self, id: &SpiffeId) -> (String, String) {
        let key = KeyPair::generate().expect("a workload key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("workload params");
        params.subject_alt_names.push(SanType::URI(
            id.to_string().try_into().expect("a SPIFFE ID is IA5"),
        ));
        params
            .distinguished_name
            .push(DnType::CommonName, id.service());
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a workload certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `contents` to `path` by renaming a sibling over it, as a Kubernetes secret
/// volume swaps its files: a reader never sees half a file.
pub fn write_replacing(path: &Path, contents: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents).expect("a staged file");
    std::fs::rename(&staged, path).expect("the staged file moved into place");
}
