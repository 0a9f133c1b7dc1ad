//! Authentication: verifying bearer access tokens, the [`Principal`] a request runs as,
//! and the per-method [`AccessPolicy`] a service declares in one place.
//!
//! Access tokens are JWTs signed by the auth service with Ed25519 (`alg: EdDSA`). Every
//! service verifies them locally against the auth service's published keys
//! (`trellis.auth.v1.AuthService/ListSigningKeys`), cached and refetched when a token
//! names an unknown `kid` — at most once per `min_refresh_interval`. Verification follows
//! RFC 8725: the algorithm comes from our allowlist, never from the token; `iss` and
//! `aud` are required and checked; `exp` and `nbf` are checked with a small leeway. Every
//! failure gives the same UNAUTHENTICATED status.
//!
//! The platform's own clients of the auth contract sit together in `client`:
//! [`RemoteKeySource`] (the keys) and [`ClientCredentials`] (this service's tokens for
//! calling peers).

mod client;
mod expiry;
mod layer;
mod policy;
mod verifier;

pub use client::{ClientCredentials, RemoteKeySource};

pub use expiry::{ExpiringBody, TOKEN_EXPIRED_MESSAGE};
pub use layer::{AuthLayer, Authenticated};
pub use policy::{Access, AccessPolicy, RateClass};
pub use verifier::{AuthConfig, KeySource, MAX_LEEWAY_SECS, PublicKey, TokenVerifier, VerifyError};

use serde::{Deserialize, Serialize};
use tonic::Status;

/// The default `iss` of Trellis access tokens.
pub const DEFAULT_ISSUER: &str = "trellis-auth";
/// The default `aud` of Trellis access tokens.
pub const DEFAULT_AUDIENCE: &str = "trellis";
/// The peer that publishes signing keys and issues service tokens, unless `auth.peer`
/// names another.
pub const DEFAULT_IDENTITY_PEER: &str = "auth";
/// The role that may read and list every user.
pub const ADMIN_ROLE: &str = "admin";

/// Who a token was issued to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// An end user; `sub` is the user's id.
    User,
    /// A Trellis service (OAuth 2.0 client credentials); `sub` is `service:<name>`.
    Service,
}

/// The claims of a Trellis access token (RFC 7519 registered claims plus `kind` and
/// `roles`). Times are seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Subject: a user id, or `service:<name>`.
    pub sub: String,
    /// Issued at, s.
    pub iat: i64,
    /// Not before, s.
    pub nbf: i64,
    /// Expires at, s.
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
    /// User or service.
    pub kind: PrincipalKind,
    /// Roles, e.g. `["admin"]`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Confirmation (RFC 7800): under mutual TLS, the certificate a service token is
    /// bound to (RFC 8705 §3); it is refused on a connection presenting another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// A token's `cnf` claim: the SHA-256 thumbprint of the client certificate it is bound
/// to (RFC 8705 §3.1, `x5t#S256`, base64url without padding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The certificate's thumbprint.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// The authenticated caller of a request, put into the request's extensions by
/// [`AuthLayer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject.
    pub subject: String,
    /// User or service.
    pub kind: PrincipalKind,
    /// The token's roles.
    pub roles: Vec<String>,
    /// When this service stops accepting the token: its `exp` plus the clock-skew leeway
    /// (`auth.leeway_secs`). An open server stream of this caller ends with
    /// UNAUTHENTICATED then ([`AuthLayer`]). `None` for a principal not made from a token.
    pub expires_at: Option<std::time::SystemTime>,
    /// The certificate thumbprint the token is bound to (its `cnf`), if any.
    pub bound_to: Option<String>,
    /// The SPIFFE ID the connection's client certificate proved (mutual TLS), set by
    /// [`AuthLayer`]; `None` over plaintext or without a client certificate.
    pub workload: Option<crate::tls::SpiffeId>,
}

impl Principal {
    /// Whether the caller is an end user with the admin role.
    pub fn is_admin(&self) -> bool {
        self.kind == PrincipalKind::User && self.roles.iter().any(|r| r == ADMIN_ROLE)
    }

    /// The user id of an end user; `None` for a service.
    pub fn user_id(&self) -> Option<&str> {
        (self.kind == PrincipalKind::User).then_some(self.subject.as_str())
    }

    /// The service name of a service; `None` for a user.
    pub fn service_name(&self) -> Option<&str> {
        match self.kind {
            PrincipalKind::Service => self.subject.strip_prefix("service:"),
            PrincipalKind::User => None,
        }
    }

    /// The principal of `request`.
    ///
    /// # Errors
    /// UNAUTHENTICATED when the request carries none (a method the policy made public).
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Self, Status> {
        request
            .extensions()
            .get::<Self>()
            .ok_or_else(|| Status::unauthenticated(UNAUTHENTICATED_MESSAGE))
    }

    /// The end user's id of `request`'s caller.
    ///
    /// # Errors
    /// UNAUTHENTICATED with no principal; PERMISSION_DENIED for a service.
    pub fn user_of<T>(request: &tonic::Request<T>) -> Result<&str, Status> {
        Self::of(request)?
            .user_id()
            .ok_or_else(|| Status::permission_denied("this method is for end users"))
    }
}

/// The one message of every authentication failure, so failures cannot be told apart.
pub const UNAUTHENTICATED_MESSAGE: &str = "missing, invalid or expired access token";
