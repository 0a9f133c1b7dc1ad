//! The platform's own clients of the auth contract (`trellis.auth.v1.AuthService`):
//! [`RemoteKeySource`] fetches the keys tokens are verified with (`ListSigningKeys`), and
//! [`ClientCredentials`] obtains this service's own tokens for calling peers
//! (`IssueServiceToken`, OAuth 2.0 client credentials). Both talk to the identity peer
//! (`auth.peer`) over a [`PeerChannel`].

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::Mutex;
use tonic::Status;
use trellis_proto::auth_v1::{
    IssueServiceTokenRequest, ListSigningKeysRequest, auth_service_client::AuthServiceClient,
};

use super::verifier::{KeySource, PublicKey};
use crate::peer::{CredentialSource, PeerChannel};

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
/// RFC 6749 §4.4), cached and renewed before it expires.
pub struct ClientCredentials {
    client_id: String,
    client_secret: SecretString,
    client: AuthServiceClient<PeerChannel>,
    cached: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
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
            client_id: client_id.into(),
            client_secret,
            client: AuthServiceClient::new(auth),
            cached: Mutex::new(None),
        }
    }
}

impl CredentialSource for ClientCredentials {
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<String, Status>> + Send + '_>> {
        Box::pin(async move {
            // Holding the lock while fetching makes concurrent callers share one fetch.
            let mut cached = self.cached.lock().await;
            if let Some((token, renew_at)) = cached.as_ref()
                && Instant::now() < *renew_at
            {
                return Ok(token.clone());
            }
            let response = self
                .client
                .clone()
                .issue_service_token(IssueServiceTokenRequest {
                    client_id: self.client_id.clone(),
                    client_secret: self.client_secret.expose_secret().to_owned(),
                })
                .await?
                .into_inner();
            let lifetime = Duration::from_secs(u64::try_from(response.expires_in).unwrap_or(0));
            let renew_at = Instant::now() + lifetime.saturating_sub(RENEW_MARGIN.min(lifetime / 2));
            *cached = Some((response.access_token.clone(), renew_at));
            Ok(response.access_token)
        })
    }
}
