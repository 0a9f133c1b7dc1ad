//! Workload identities: SPIFFE IDs (`spiffe://<trust domain>/ns/<namespace>/sa/<service>`,
//! the shape Istio, Linkerd and Dapr give Kubernetes workloads) and the certificate facts
//! the platform reads off a verified peer certificate.

use std::fmt;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};
use x509_cert::der::Decode as _;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

/// The SubjectAltName extension's OID (RFC 5280 §4.2.1.6).
const SUBJECT_ALT_NAME: x509_cert::der::oid::ObjectIdentifier =
    x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.29.17");

/// A Trellis workload's SPIFFE ID (SPIFFE-ID spec §2), in the Kubernetes shape:
/// `spiffe://<trust domain>/ns/<namespace>/sa/<service>`, the service being its service
/// account's name. Other SPIFFE IDs are not Trellis workloads and do not parse.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service: String,
}

impl SpiffeId {
    /// The ID of `service` in `namespace` of `trust_domain`.
    pub fn workload(trust_domain: &str, namespace: &str, service: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service: service.to_owned(),
        }
    }

    /// Parses `uri`; `None` unless it is `spiffe://<td>/ns/<ns>/sa/<service>` with
    /// non-empty segments of the SPIFFE character set (lower-case letters, digits, `.`,
    /// `-`, `_`).
    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let mut parts = rest.split('/');
        let trust_domain = parts.next()?;
        let (Some("ns"), Some(namespace), Some("sa"), Some(service), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let valid = |segment: &str| {
            !segment.is_empty()
                && segment.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
                })
        };
        (valid(trust_domain) && valid(namespace) && valid(service))
            .then(|| Self::workload(trust_domain, namespace, service))
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service (its service account's name), e.g. `user`.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Whether `other` is a workload of the same trust domain and namespace.
    pub fn is_neighbour(&self, other: &Self) -> bool {
        self.trust_domain == other.trust_domain && self.namespace == other.namespace
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service
        )
    }
}

/// What a certificate says about its holder, read from its DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The SPIFFE ID of its one URI SAN; `None` when it has no URI SAN, several, or one
    /// that is not a Trellis workload's SPIFFE ID.
    pub spiffe_id: Option<SpiffeId>,
    /// Its SHA-256 thumbprint, base64url without padding: RFC 8705 §3.1's `x5t#S256`.
    pub thumbprint: String,
    /// Its notAfter.
    pub not_after: SystemTime,
}

impl CertificateFacts {
    /// Reads `der`, an X.509 certificate.
    ///
    /// # Errors
    /// A message when `der` is not a certificate.
    pub fn read(der: &[u8]) -> Result<Self, String> {
        let cert = x509_cert::Certificate::from_der(der).map_err(|err| err.to_string())?;
        let mut uris = Vec::new();
        for extension in cert.tbs_certificate.extensions.iter().flatten() {
            if extension.extn_id != SUBJECT_ALT_NAME {
                continue;
            }
            let names = SubjectAltName::from_der(extension.extn_value.as_bytes())
                .map_err(|err| err.to_string())?;
            for name in names.0 {
                if let GeneralName::UniformResourceIdentifier(uri) = name {
                    uris.push(uri.as_str().to_owned());
                }
            }
        }
        // An X.509-SVID has exactly one URI SAN, its SPIFFE ID (X509-SVID spec §2).
        let spiffe_id = match uris.as_slice() {
            [one] => SpiffeId::parse(one),
            _ => None,
        };
        Ok(Self {
            spiffe_id,
            thumbprint: thumbprint(der),
            not_after: cert.tbs_certificate.validity.not_after.to_system_time(),
        })
    }
}

/// The SHA-256 thumbprint of a DER certificate, base64url without padding (RFC 8705
/// `x5t#S256`).
pub fn thumbprint(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_id_round_trips() {
        let id = SpiffeId::workload("trellis.local", "default", "user");
        assert_eq!(id.to_string(), "spiffe://trellis.local/ns/default/sa/user");
        assert_eq!(SpiffeId::parse(&id.to_string()), Some(id));
    }

    #[test]
    fn other_shapes_do_not_parse() {
        for uri in [
            "spiffe://trellis.local/user",
            "spiffe://trellis.local/ns/default/sa/user/extra",
            "spiffe://trellis.local/ns//sa/user",
            "spiffe://Trellis/ns/default/sa/user",
            "https://trellis.local/ns/default/sa/user",
            "spiffe://trellis.local/sa/user/ns/default",
        ] {
            assert_eq!(SpiffeId::parse(uri), None, "{uri}");
        }
    }
}
