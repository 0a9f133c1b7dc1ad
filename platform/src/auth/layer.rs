//! The server layer that enforces an [`AccessPolicy`] and attaches the [`Principal`],
//! counting rejected tokens by reason
//! (`trellis_auth_token_verification_failures_total{reason}`).
//!
//! A server-streaming or bidirectional call lives no longer than the token it was opened
//! with: its response ends with UNAUTHENTICATED
//! ([`TOKEN_EXPIRED_MESSAGE`](super::TOKEN_EXPIRED_MESSAGE)) when the token expires
//! ([`Principal::expires_at`](super::Principal::expires_at)), between two messages; the
//! client reconnects with a fresh token. Unary and client-streaming calls are never cut: their one
//! response is the outcome of work already done.
//!
//! **Certificates** (mutual TLS, [`crate::tls`]): a token bound to a certificate (its
//! `cnf`, RFC 8705) is refused — UNAUTHENTICATED, like any bad token — on a connection
//! that presents another certificate or none. With [`AuthLayer::requiring_certificates`],
//! an internal method also needs a client certificate (UNAUTHENTICATED without one)
//! whose SPIFFE ID names the service the token names (PERMISSION_DENIED otherwise), and
//! a bound token. The certificate's SPIFFE ID goes into the [`Principal`](super::Principal).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use prometheus::{IntCounter, IntCounterVec, Opts};
use tonic::Status;
use tower::{Layer, Service};

use super::expiry::ExpiringBody;
use super::{
    Access, AccessPolicy, PrincipalKind, TokenVerifier, UNAUTHENTICATED_MESSAGE, VerifyError,
};
use crate::metrics::grpc::{KnownMethod, RpcType};
use crate::metrics::{Metrics, MetricsError};
use crate::server::connection::ConnectionInfo;
use crate::server::trace::CallerTrust;
use crate::tls::SpiffeId;

/// Enforces `policy`, verifying bearer tokens with `verifier`.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    inner: Arc<Inner>,
}

#[derive(Debug, Clone)]
struct Inner {
    verifier: TokenVerifier,
    policy: AccessPolicy,
    failures: Option<Failures>,
    /// This workload's identity, when internal methods need a certificate.
    require_certificates: Option<SpiffeId>,
}

/// `trellis_auth_token_verification_failures_total`, one handle per reason.
#[derive(Debug, Clone)]
struct Failures(Vec<(&'static str, IntCounter)>);

impl Failures {
    fn count(&self, reason: &str) {
        if let Some((_, counter)) = self.0.iter().find(|(name, _)| *name == reason) {
            counter.inc();
        }
    }
}

impl AuthLayer {
    /// A layer that authenticates with `verifier` according to `policy`.
    pub fn new(verifier: TokenVerifier, policy: AccessPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                verifier,
                policy,
                failures: None,
                require_certificates: None,
            }),
        }
    }

    /// With `own`, this workload's SPIFFE ID (the server speaks mutual TLS): internal
    /// methods need a client certificate whose SPIFFE ID is the token's service in
    /// `own`'s trust domain and namespace, and a token bound to it.
    #[must_use]
    pub fn requiring_certificates(self, own: Option<SpiffeId>) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.require_certificates = own;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Counts rejected tokens in `metrics`, as
    /// `trellis_auth_token_verification_failures_total{reason}` (the reasons of
    /// [`VerifyError::REASONS`], each present at zero from the start).
    ///
    /// # Errors
    /// [`MetricsError::Register`] when `metrics` already has the family.
    pub fn with_metrics(self, metrics: &Metrics) -> Result<Self, MetricsError> {
        let family = metrics.register(IntCounterVec::new(
            Opts::new(
                "trellis_auth_token_verification_failures_total",
                "Access tokens rejected by this service, by reason.",
            ),
            &["reason"],
        )?)?;
        let failures = Failures(
            VerifyError::REASONS
                .iter()
                .map(|reason| (*reason, family.with_label_values(&[*reason])))
                .collect(),
        );
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.failures = Some(failures);
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The server's [`CallerTrust`]: a caller is a Trellis service whose trace context the
    /// server continues when its bearer token verifies (with this layer's verifier, whose
    /// cache then serves this layer) as a service token.
    pub fn caller_trust(&self) -> CallerTrust {
        let verifier = self.inner.verifier.clone();
        CallerTrust::new(move |token: &str| {
            let (verifier, token) = (verifier.clone(), token.to_owned());
            async move {
                verifier
                    .verify(&token)
                    .await
                    .is_ok_and(|principal| principal.kind == PrincipalKind::Service)
            }
        })
    }

    fn rejected(&self, reason: &str) {
        if let Some(failures) = &self.inner.failures {
            failures.count(reason);
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            auth: self.clone(),
        }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: AuthLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Authenticated<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ExpiringBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // Take the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let Inner {
                verifier,
                policy,
                require_certificates,
                ..
            } = &*auth.inner;
            let access = policy.access(request.uri().path());
            if access == Access::Public {
                return Ok(inner.call(request).await?.map(ExpiringBody::unbounded));
            }
            let token = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| {
                    value
                        .strip_prefix("Bearer ")
                        .or_else(|| value.strip_prefix("bearer "))
                })
                .map(str::trim);
            let Some(token) = token else {
                auth.rejected("missing");
                return Ok(Status::unauthenticated(UNAUTHENTICATED_MESSAGE).into_http());
            };
            let mut principal = match verifier.verify(token).await {
                Ok(principal) => principal,
                Err(err) => {
                    auth.rejected(err.reason());
                    tracing::info!(reason = %err, "access token rejected");
                    return Ok(Status::unauthenticated(UNAUTHENTICATED_MESSAGE).into_http());
                }
            };
            let certificate = ConnectionInfo::peer_certificate(request.extensions());
            if let Some(bound_to) = &principal.bound_to
                && certificate.is_none_or(|certificate| certificate.thumbprint != *bound_to)
            {
                auth.rejected("wrong_certificate");
                tracing::info!("access token rejected: bound to another client certificate");
                return Ok(Status::unauthenticated(UNAUTHENTICATED_MESSAGE).into_http());
            }
            principal.workload = certificate.and_then(|certificate| certificate.spiffe_id.clone());
            if access == Access::Internal {
                let Some(caller) = principal.service_name() else {
                    return Ok(Status::permission_denied(
                        "this method is for Trellis services only",
                    )
                    .into_http());
                };
                if let Some(own) = require_certificates {
                    if certificate.is_none() {
                        return Ok(Status::unauthenticated(
                            "internal methods need a client certificate",
                        )
                        .into_http());
                    }
                    // The whole ID: the token's service in this trust domain and
                    // namespace, not a namesake another issuer of the bundle signed.
                    let proven = principal
                        .workload
                        .as_ref()
                        .filter(|workload| workload.is_neighbour(own));
                    if proven.is_none_or(|workload| workload.service() != caller)
                        || principal.bound_to.is_none()
                    {
                        let workload = principal
                            .workload
                            .as_ref()
                            .map_or_else(|| "none".to_owned(), ToString::to_string);
                        let (service, method) = KnownMethod::names_in(request.extensions());
                        tracing::warn!(
                            caller,
                            certificate = %workload,
                            service,
                            method,
                            "internal call whose certificate does not prove its token's service"
                        );
                        return Ok(Status::permission_denied(
                            "the client certificate does not prove the token's service",
                        )
                        .into_http());
                    }
                }
                if !policy.allows_caller(request.uri().path(), caller) {
                    // Named from the method table: a made-up path is no log field.
                    let (service, method) = KnownMethod::names_in(request.extensions());
                    tracing::warn!(
                        caller,
                        service,
                        method,
                        "service not allowed to call this internal method"
                    );
                    return Ok(
                        Status::permission_denied("this service may not call this method")
                            .into_http(),
                    );
                }
            }
            let streams_responses =
                request
                    .extensions()
                    .get::<KnownMethod>()
                    .is_some_and(|known| {
                        matches!(
                            known.rpc_type(),
                            RpcType::ServerStream | RpcType::BidiStream
                        )
                    });
            let expires_at = principal.expires_at.filter(|_| streams_responses);
            request.extensions_mut().insert(principal);
            let response = inner.call(request).await?;
            Ok(response.map(|body| ExpiringBody::new(body, expires_at)))
        })
    }
}
