//! A token issuer with its own Ed25519 key, and the static key source that publishes it,
//! so a service's tests need no auth service.

use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore as _;

use crate::auth::{Claims, DEFAULT_AUDIENCE, DEFAULT_ISSUER, KeySource, PrincipalKind, PublicKey};

/// Signs test tokens the way the auth service does.
#[derive(Clone)]
pub struct TestIssuer {
    kid: String,
    encoding: EncodingKey,
    public: PublicKey,
}

impl std::fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestIssuer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Default for TestIssuer {
    fn default() -> Self {
        Self::new()
    }
}

impl TestIssuer {
    /// An issuer with a fresh random key.
    pub fn new() -> Self {
        let mut secret = [0_u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let key = ed25519_dalek::SigningKey::from_bytes(&secret);
        let der = key
            .to_pkcs8_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        let kid = uuid::Uuid::new_v4().simple().to_string();
        Self {
            public: PublicKey {
                kid: kid.clone(),
                x: URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()),
            },
            kid,
            encoding: EncodingKey::from_ed_der(&der),
        }
    }

    /// This issuer's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    /// The key source that publishes this issuer's key.
    pub fn key_source(&self) -> StaticKeySource {
        StaticKeySource(vec![self.public.clone()])
    }

    /// A valid token (5 minutes) for a user with `roles`.
    pub fn user_token(&self, user_id: &str, roles: &[&str]) -> String {
        self.token(user_id, PrincipalKind::User, roles)
    }

    /// A valid token (5 minutes) for a new user with the admin role.
    pub fn admin_token(&self) -> String {
        self.user_token(
            &uuid::Uuid::now_v7().to_string(),
            &[crate::auth::ADMIN_ROLE],
        )
    }

    /// A valid 5-minute token for `service` to call `audience` (a service name: the
    /// callee refuses a token for another), bound to no certificate.
    pub fn service_token(&self, service: &str, audience: &str) -> String {
        self.claims(
            &format!("service:{service}"),
            PrincipalKind::Service,
            &[],
            audience,
        )
    }

    /// [`Self::service_token`] bound to the certificate whose thumbprint is
    /// `thumbprint` (RFC 8705 `cnf.x5t#S256`).
    pub fn bound_service_token(&self, service: &str, audience: &str, thumbprint: &str) -> String {
        let mut claims = self.claims_for(
            &format!("service:{service}"),
            PrincipalKind::Service,
            &[],
            audience,
        );
        claims.cnf = Some(crate::auth::Confirmation {
            x5t_s256: thumbprint.to_owned(),
        });
        self.sign(&claims)
    }

    fn token(&self, subject: &str, kind: PrincipalKind, roles: &[&str]) -> String {
        self.claims(subject, kind, roles, DEFAULT_AUDIENCE)
    }

    fn claims(&self, subject: &str, kind: PrincipalKind, roles: &[&str], audience: &str) -> String {
        self.sign(&self.claims_for(subject, kind, roles, audience))
    }

    fn claims_for(
        &self,
        subject: &str,
        kind: PrincipalKind,
        roles: &[&str],
        audience: &str,
    ) -> Claims {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let now = i64::try_from(now).unwrap_or(0);
        Claims {
            iss: DEFAULT_ISSUER.to_owned(),
            aud: audience.to_owned(),
            sub: subject.to_owned(),
            iat: now,
            nbf: now,
            exp: now + 300,
            jti: uuid::Uuid::new_v4().to_string(),
            kind,
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            cnf: None,
        }
    }

    /// Signs arbitrary claims with this issuer's key and `kid`.
    pub fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap_or_default()
    }
}

/// A fixed set of public keys.
#[derive(Debug, Clone)]
pub struct StaticKeySource(pub Vec<PublicKey>);

impl KeySource for StaticKeySource {
    fn fetch(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<PublicKey>, tonic::Status>> + Send + '_>> {
        let keys = self.0.clone();
        Box::pin(async move { Ok(keys) })
    }
}
