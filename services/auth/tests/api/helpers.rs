//! The test harness: [`spawn_app`] starts the real auth service with the platform's
//! testkit, its `user` peer a [`FakeUsers`], and returns a typed client plus helpers
//! that verify the tokens it issues.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use auth_service::domain::keys::{KeyRecord, KeyRing};
use auth_service::domain::{TokenIssuer, TokenSettings};
use auth_service::storage::SeaOrmAuthRepository;
use auth_service::storage::migration::Migrator;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use secrecy::SecretString;
use tonic::Status;
use tonic::transport::Channel;
use trellis_platform::auth::{
    AuthConfig, Claims, DEFAULT_AUDIENCE, DEFAULT_ISSUER, Principal, RemoteKeySource, TokenVerifier,
};
use trellis_platform::peer::{PeerConfig, Peers};
use trellis_platform::service::Launch;
use trellis_platform::testing::{
    TestCa, TestServer, WorkloadFiles, local_listener, test_config, with_token,
};
use trellis_proto::auth_v1 as pb;
use trellis_proto::auth_v1::auth_internal_service_client::AuthInternalServiceClient;
use trellis_proto::auth_v1::auth_service_client::AuthServiceClient;

use crate::fakes::{FakeUsers, Serving};

pub(crate) use trellis_platform::testing::{
    TEST_PASSWORD as PASSWORD, assert_eventually, violated_fields,
};

/// An account the fake user service knows, not an admin.
pub(crate) const ADA: &str = "ada@example.com";
/// An account the fake user service knows, with the `admin` role.
pub(crate) const ADMIN: &str = "admin@example.com";
/// A service client the auth service is configured with.
pub(crate) const CLIENT_ID: &str = "notification";
/// Its secret (≥ 16 bytes, as the config requires).
pub(crate) const CLIENT_SECRET: &str = "notification-client-secret-for-tests";
/// The service client of the user service, which calls `AuthInternalService`.
pub(crate) const USER_CLIENT_ID: &str = "user";
/// Its secret.
pub(crate) const USER_CLIENT_SECRET: &str = "user-client-secret-for-the-tests";

/// A running auth service, the fake user service it asks, and a client.
pub(crate) struct TestApp {
    pub(crate) auth: AuthServiceClient<Channel>,
    pub(crate) channel: Channel,
    pub(crate) addr: SocketAddr,
    /// Its metrics endpoint.
    pub(crate) metrics_addr: SocketAddr,
    /// The fake user service behind the `user` peer.
    pub(crate) users: FakeUsers,
    server: TestServer,
    _users_serving: Serving,
}

/// Starts the auth service with the test settings (see [`spawn_app_with`]).
pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the auth service on 127.0.0.1 (a port the system chose) with a fresh in-memory
/// database, its `user` peer a fresh [`FakeUsers`], its `notification` peer the discard
/// port (sign-in notices wait in the outbox), and two service clients ([`CLIENT_ID`],
/// [`USER_CLIENT_ID`]); then `configure` changes what a test needs. Waits until it
/// reports SERVING.
pub(crate) async fn spawn_app_with(configure: impl FnOnce(&mut auth_service::Config)) -> TestApp {
    spawn(configure, None).await
}

/// [`spawn_app`] over mutual TLS with `ca`'s certificates: the client presents the
/// certificate of [`CLIENT_ID`] (the fake user service stays plaintext: calls to it
/// fail).
pub(crate) async fn spawn_tls_app(ca: &TestCa) -> TestApp {
    let files = ca.workload("auth");
    spawn(
        move |config| config.tls = files.config(),
        Some(ca.workload(CLIENT_ID)),
    )
    .await
}

async fn spawn(
    configure: impl FnOnce(&mut auth_service::Config),
    client: Option<WorkloadFiles>,
) -> TestApp {
    let (users, users_serving) = FakeUsers::start().await;
    let listener = local_listener();
    let mut config = test_config::<auth_service::Service>();
    config.peers.get_mut("user").expect("a user peer").addresses = users_serving.uri();
    for (id, secret) in [
        (CLIENT_ID, CLIENT_SECRET),
        (USER_CLIENT_ID, USER_CLIENT_SECRET),
    ] {
        config
            .service
            .service_clients
            .insert(id.to_owned(), SecretString::from(secret));
    }
    configure(&mut config);
    config.validate().expect("the test config is valid");
    let launch = Launch::new(config)
        .listener(listener)
        .metrics_listener(local_listener());
    let server = match &client {
        Some(files) => TestServer::start_tls(launch, files).await,
        None => TestServer::start(launch).await,
    };
    let channel = server.channel.clone();
    TestApp {
        auth: AuthServiceClient::new(channel.clone()),
        channel,
        addr: server.addr,
        metrics_addr: server.metrics_addr.expect("a metrics endpoint"),
        users,
        server,
        _users_serving: users_serving,
    }
}

impl TestApp {
    /// Logs in.
    pub(crate) async fn login(
        &mut self,
        email: &str,
        password: &str,
    ) -> Result<pb::LoginResponse, Status> {
        self.auth
            .login(pb::LoginRequest {
                email: email.to_owned(),
                password: password.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Logs `email` in with the right password, asserting success; returns the tokens.
    pub(crate) async fn sign_in(&mut self, email: &str) -> pb::TokenPair {
        self.login(email, PASSWORD)
            .await
            .unwrap_or_else(|status| panic!("{email} signs in: {status:?}"))
            .tokens
            .expect("the response carries tokens")
    }

    /// Exchanges a refresh token.
    pub(crate) async fn refresh(&mut self, refresh_token: &str) -> Result<pb::TokenPair, Status> {
        self.auth
            .refresh_token(pb::RefreshTokenRequest {
                refresh_token: refresh_token.to_owned(),
            })
            .await
            .map(|r| r.into_inner().tokens.expect("the response carries tokens"))
    }

    /// Logs out.
    pub(crate) async fn logout(&mut self, refresh_token: &str) -> Result<(), Status> {
        self.auth
            .logout(pb::LogoutRequest {
                refresh_token: refresh_token.to_owned(),
            })
            .await
            .map(drop)
    }

    /// Calls `AuthInternalService/RevokeUserTokens` with `token` as the bearer credential
    /// (none when `None`).
    pub(crate) async fn revoke_user_tokens(
        &self,
        user_id: &str,
        token: Option<&str>,
    ) -> Result<pb::RevokeUserTokensResponse, Status> {
        let message = pb::RevokeUserTokensRequest {
            user_id: user_id.to_owned(),
        };
        let request = match token {
            Some(token) => with_token(message, token),
            None => tonic::Request::new(message),
        };
        AuthInternalServiceClient::new(self.channel.clone())
            .revoke_user_tokens(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// A service token of the user service's client, as auth issues it.
    pub(crate) async fn user_service_token(&mut self) -> String {
        self.issue_service_token(USER_CLIENT_ID, USER_CLIENT_SECRET)
            .await
            .expect("the user service's client gets a token")
            .access_token
    }

    /// Asks for a service token for calling auth itself.
    pub(crate) async fn issue_service_token(
        &mut self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<pb::IssueServiceTokenResponse, Status> {
        self.issue_service_token_for(client_id, client_secret, "auth")
            .await
    }

    /// Asks for a service token for calling `audience`.
    pub(crate) async fn issue_service_token_for(
        &mut self,
        client_id: &str,
        client_secret: &str,
        audience: &str,
    ) -> Result<pb::IssueServiceTokenResponse, Status> {
        self.auth
            .issue_service_token(pb::IssueServiceTokenRequest {
                client_id: client_id.to_owned(),
                client_secret: client_secret.to_owned(),
                audience: audience.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// The published signing keys.
    pub(crate) async fn signing_keys(&mut self) -> Vec<pb::SigningKey> {
        self.auth
            .list_signing_keys(pb::ListSigningKeysRequest {})
            .await
            .expect("ListSigningKeys")
            .into_inner()
            .keys
    }

    /// Verifies `token` as RFC 8725 says a client should — EdDSA only, whatever the
    /// header says; the published key its `kid` names; `iss` and `aud` required and
    /// checked — and returns its header and claims.
    ///
    /// # Panics
    /// When any of that fails: the token is not one a verifier accepts.
    pub(crate) async fn verify(&mut self, token: &str) -> (Header, Claims) {
        let header = jsonwebtoken::decode_header(token).expect("a JWT header");
        assert_eq!(header.alg, Algorithm::EdDSA, "signed with Ed25519");
        let kid = header.kid.clone().expect("the header names its key");
        let key = self
            .signing_keys()
            .await
            .into_iter()
            .find(|k| k.kid == kid)
            .unwrap_or_else(|| panic!("kid {kid} is published"));
        let key = DecodingKey::from_ed_components(&key.x).expect("an Ed25519 public key");
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.leeway = 0;
        validation.set_issuer(&[DEFAULT_ISSUER]);
        validation.set_audience(&[DEFAULT_AUDIENCE, "auth", "user", "notification"]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .unwrap_or_else(|err| panic!("the token verifies: {err}"));
        (header, data.claims)
    }

    /// The platform's verifier — what every other service runs — fetching keys from
    /// this auth service over gRPC, as a service whose `auth` peer is this one does;
    /// the verifier of the service named `service` (the audience of the service tokens
    /// it accepts).
    pub(crate) fn platform_verifier(&self, service: &str) -> TokenVerifier {
        let peers = Peers::new(HashMap::from([(
            "auth".to_owned(),
            PeerConfig::with_address(format!("http://{}", self.addr)),
        )]));
        let channel = peers.anonymous_channel("auth").expect("a channel to auth");
        TokenVerifier::new(
            &AuthConfig::default(),
            service,
            RemoteKeySource::new(channel),
        )
    }

    /// The principal the platform's verifier at `service` makes of `token`.
    pub(crate) async fn principal_of(&self, token: &str, service: &str) -> Principal {
        self.platform_verifier(service)
            .verify(token)
            .await
            .unwrap_or_else(|err| panic!("the platform accepts the token: {err:?}"))
    }

    /// Stops the service, asserting a clean stop.
    pub(crate) async fn stop(self) {
        self.server.stop().await;
    }
}

/// A token issuer with a fresh key, as the service makes one (15-minute access tokens,
/// one-hour refresh families), for tests that drive the domain directly.
pub(crate) fn test_issuer() -> TokenIssuer {
    let keys = KeyRing::default();
    let now = chrono::Utc::now();
    keys.replace(vec![KeyRecord::generate(now, now).expect("a key")]);
    TokenIssuer::new(
        keys,
        TokenSettings {
            issuer: DEFAULT_ISSUER.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            access_ttl: Duration::from_secs(900),
            service_ttl: Duration::from_secs(300),
            refresh_ttl: Duration::from_secs(3600),
        },
    )
}

/// A repository over a fresh, migrated in-memory database.
pub(crate) async fn migrated_repository() -> SeaOrmAuthRepository {
    let db = sea_orm::Database::connect("sqlite::memory:")
        .await
        .expect("connects");
    <Migrator as sea_orm_migration::MigratorTrait>::up(&db, None)
        .await
        .expect("migrates");
    SeaOrmAuthRepository::new(
        db,
        auth_service::peers::sign_in_events(trellis_platform::outbox::OutboxWaker::default()),
    )
}

/// The delay of a status's `google.rpc.RetryInfo` detail.
pub(crate) fn retry_delay(status: &Status) -> Option<Duration> {
    use tonic_types::StatusExt as _;
    status.get_details_retry_info().and_then(|r| r.retry_delay)
}

/// The bearer token of an `authorization` header value.
pub(crate) fn bearer(header: Option<&str>) -> &str {
    header
        .and_then(|h| h.strip_prefix("Bearer "))
        .expect("a bearer credential")
}
