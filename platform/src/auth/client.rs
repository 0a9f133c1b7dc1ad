//! The platform's own clients of the auth contract (`trellis.auth.v1.AuthService`):
//! [`RemoteKeySource`] fetches the keys tokens are verified with (`ListSigningKeys`), and
//! [`ClientCredentials`] obtains this service's own tokens for calling peers
//! (`IssueServiceToken`, OAuth 2.0 client credentials). Both talk to the identity peer
//! (`auth.peer`) over a [`PeerChannel`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::watch;
use tonic::Status;
use trellis_proto::auth_v1::{
    IssueServiceTokenRequest, ListSigningKeysRequest, auth_service_client::AuthServiceClient,
};

use super::verifier::{KeySource, PublicKey};
use crate::peer::{CredentialSource, PeerChannel};
use crate::tls::TlsSource;

/// Keys fetched from `trellis.auth.v1.AuthService/ListSigningKeys`.
#[derive(Debug, Clone)]
pub struct RemoteKeySource {
    client: AuthServiceClient<PeerChannel>,
}

impl RemoteKeySource {
    /// Fetches over `channel`, a peer channel to the auth service.
    pub fn new(channel: PeerChannel) -> Self {
        Self {
            client: AuthServiceClient::new(channel),
        }
    }
}

impl KeySource for RemoteKeySource {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Vec<PublicKey>, Status>> + Send + '_>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            let keys = client
                .list_signing_keys(ListSigningKeysRequest {})
                .await?
                .into_inner()
                .keys;
            Ok(keys
                .into_iter()
                .filter(|k| k.kty == "OKP" && k.crv == "Ed25519")
                .map(|k| PublicKey { kid: k.kid, x: k.x })
                .collect())
        })
    }
}

/// This service's credentials for calling peers: `client_id` and secret exchanged for a
/// short-lived service token at the auth service (OAuth 2.0 client credentials,
/// RFC 6749 §4.4), one per target service (its `aud`), each cached and renewed before it
/// expires. Under mutual TLS the auth service binds each token to this workload's
/// certificate (RFC 8705); when the certificate changes, the tokens are fetched again.
///
/// A fetch is single-flight and detached: concurrent callers share one, and it runs in a
/// task of its own, so a caller's short deadline or cancellation ends only its own wait —
/// the fetch keeps the identity peer's own `timeout_ms` and its outcome counts for that
/// peer's breaker as the peer caused it (see [`crate::peer::call`]).
pub struct ClientCredentials {
    inner: Arc<Inner>,
}

struct Inner {
    client_id: String,
    client_secret: SecretString,
    client: AuthServiceClient<PeerChannel>,
    /// Per target service.
    states: parking_lot::Mutex<HashMap<String, State>>,
    /// This workload's certificate, which the tokens are bound to.
    tls: Option<TlsSource>,
}

/// The outcome of one fetch, once known.
type Outcome = Option<Result<String, Status>>;

#[derive(Default)]
struct State {
    /// The token, when to renew it, and the generation of the certificate it is bound
    /// to (0 without TLS).
    cached: Option<(String, Instant, u64)>,
    /// The fetch running, if any; it sends its outcome, then drops its sender.
    /// With the generation of the certificate it runs under: a fetch started before
    /// the certificate changed is not joined after.
    in_flight: Option<(u64, watch::Receiver<Outcome>)>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.inner.client_id)
            .finish_non_exhaustive()
    }
}

/// Renew a token when less than this much of its life is left.
const RENEW_MARGIN: Duration = Duration::from_secs(30);

impl ClientCredentials {
    /// Credentials of `client_id`, obtained over `auth`, an anonymous channel to the auth
    /// service.
    pub fn new(
        client_id: impl Into<String>,
        client_secret: SecretString,
        auth: PeerChannel,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client_id: client_id.into(),
                client_secret,
                client: AuthServiceClient::new(auth),
                states: parking_lot::Mutex::default(),
                tls: None,
            }),
        }
    }

    /// Fetches the tokens again whenever `tls`'s certificate changes (the auth service
    /// binds them to the certificate the fetch's connection presented).
    #[must_use]
    pub fn bound_to(mut self, tls: Option<TlsSource>) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.tls = tls,
            // Shared by a fetch already: credentials of their own, with no token yet.
            None => {
                self.inner = Arc::new(Inner {
                    client_id: self.inner.client_id.clone(),
                    client_secret: self.inner.client_secret.clone(),
                    client: self.inner.client.clone(),
                    states: parking_lot::Mutex::default(),
                    tls,
                });
            }
        }
        self
    }
}

impl Inner {
    /// The generation of the certificate new connections present (0 without TLS).
    fn generation(&self) -> u64 {
        self.tls
            .as_ref()
            .map_or(0, |tls| tls.current().generation())
    }

    /// Asks the auth service for a token for calling `audience`; caches it when it comes.
    async fn fetch(&self, audience: String) -> Result<String, Status> {
        let generation = self.generation();
        let response = self
            .client
            .clone()
            .issue_service_token(IssueServiceTokenRequest {
                client_id: self.client_id.clone(),
                client_secret: self.client_secret.expose_secret().to_owned(),
                audience: audience.clone(),
            })
            .await?
            .into_inner();
        let lifetime = Duration::from_secs(u64::try_from(response.expires_in).unwrap_or(0));
        let renew_at = Instant::now() + lifetime.saturating_sub(RENEW_MARGIN.min(lifetime / 2));
        self.states.lock().entry(audience).or_default().cached =
            Some((response.access_token.clone(), renew_at, generation));
        Ok(response.access_token)
    }
}

impl CredentialSource for ClientCredentials {
    fn token<'a>(
        &'a self,
        audience: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<String, Status>> + Send + 'a>> {
        Box::pin(async move {
            let generation = self.inner.generation();
            let mut outcome = {
                let mut states = self.inner.states.lock();
                let state = states.entry(audience.to_owned()).or_default();
                if let Some((token, renew_at, bound)) = state.cached.as_ref()
                    && Instant::now() < *renew_at
                    && *bound == generation
                {
                    return Ok(token.clone());
                }
                // A fetch that ended (its sender dropped) is not waited for again.
                let running = state
                    .in_flight
                    .as_ref()
                    .filter(|(bound, outcome)| {
                        *bound == generation && outcome.has_changed().is_ok()
                    })
                    .map(|(_, outcome)| outcome.clone());
                match running {
                    Some(outcome) => outcome,
                    None => {
                        let (sender, outcome) = watch::channel(None);
                        state.in_flight = Some((generation, outcome.clone()));
                        let inner = Arc::clone(&self.inner);
                        let audience = audience.to_owned();
                        tokio::spawn(async move {
                            let fetched = inner.fetch(audience).await;
                            sender.send_replace(Some(fetched));
                        });
                        outcome
                    }
                }
            };
            let ended = outcome.wait_for(Option::is_some).await;
            match ended.as_deref() {
                Ok(Some(fetched)) => fetched.clone(),
                _ => Err(Status::unavailable(
                    "the service token fetch ended without an answer",
                )),
            }
        })
    }
}
