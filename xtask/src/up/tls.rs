//! `up --tls`: a development CA and one certificate per service under `.data/tls/`, made
//! afresh each run (rcgen), and the `tls.*` variables that make every service speak
//! mutual TLS with them.
//!
//! Each certificate carries the service's SPIFFE ID (`spiffe://trellis.local/ns/default/
//! sa/<service>`, what peers verify) and `localhost`/127.0.0.1 (what grpcurl verifies),
//! for server and client authentication, valid 30 days. The CA's key is not kept: a new
//! run makes a new CA.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::services::SERVICES;

/// Where the files go, under the workspace root.
pub(super) const TLS_DIR: &str = ".data/tls";

/// The SPIFFE trust domain and namespace of the development certificates (the
/// platform's defaults, so no variable has to name them).
const TRUST_DOMAIN: &str = "trellis.local";
const NAMESPACE: &str = "default";

/// How long the development certificates are valid, in days.
const VALIDITY_DAYS: u64 = 30;

/// Writes a new CA and every service's certificate and key under `root`/[`TLS_DIR`];
/// returns the variables pointing each service at its files.
pub(super) fn make_certificates(root: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let dir = root.join(TLS_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "Trellis development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut ca);
    let ca_pem = ca.self_signed(&ca_key).context("signing the CA")?.pem();
    let ca_path = dir.join("ca.pem");
    write(&ca_path, &ca_pem, false)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut environment = Vec::new();
    for spec in SERVICES {
        let key = KeyPair::generate().context("generating a service key")?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        let id = format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{}", spec.name);
        params
            .subject_alt_names
            .push(SanType::URI(id.clone().try_into().context("a SPIFFE ID")?));
        params
            .distinguished_name
            .push(DnType::CommonName, spec.name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params);
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("signing {id}"))?;
        let cert_path = dir.join(format!("{}.pem", spec.name));
        let key_path = dir.join(format!("{}-key.pem", spec.name));
        write(&cert_path, &cert.pem(), false)?;
        write(&key_path, &key.serialize_pem(), true)?;
        for (name, path) in [("CERT", &cert_path), ("KEY", &key_path), ("CA", &ca_path)] {
            environment.push((
                format!("{}__TLS__{name}", spec.env_prefix),
                path.display().to_string(),
            ));
        }
    }
    Ok(environment)
}

/// Valid from an hour ago (clock skew) for [`VALIDITY_DAYS`].
fn set_validity(params: &mut CertificateParams) {
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(VALIDITY_DAYS * 24 * 3600)).into();
}

/// Writes `contents` to `path`; a private key readable by its owner only, from the
/// moment the file exists (a key written first and restricted after is readable by
/// anyone in between).
fn write(path: &PathBuf, contents: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(0o600);
        // A file from an earlier run keeps its mode: make sure of it before writing.
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("restricting {}", path.display()))?;
        }
    }
    #[cfg(not(unix))]
    let _ = private;
    options
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_gets_its_own_certificate_key_and_the_ca() {
        let root = tempfile::tempdir().unwrap();
        let environment = make_certificates(root.path()).unwrap();
        assert_eq!(environment.len(), SERVICES.len() * 3);
        for spec in SERVICES {
            let cert = root.path().join(TLS_DIR).join(format!("{}.pem", spec.name));
            let pem = std::fs::read_to_string(&cert).unwrap();
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
            assert!(environment.contains(&(
                format!("{}__TLS__CERT", spec.env_prefix),
                cert.display().to_string()
            )));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let key = root.path().join(TLS_DIR).join("user-key.pem");
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is its owner's only: {mode:o}");
        }
    }
}
