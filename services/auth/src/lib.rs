//! Trellis's auth service: sign-in against the user service, Ed25519 JWT access tokens,
//! rotating refresh tokens with reuse detection, published signing keys, and service
//! identities by OAuth 2.0 client credentials.
//!
//! Layers: [`grpc`] (wire types, statuses, the local key source for internal calls),
//! [`domain`] (rules, no gRPC, no SQL; a sign-in is stated as a [`domain::SignInEvent`]),
//! [`storage`] (sea-orm; enqueues those events with the change) and [`peers`] (the calls
//! out: the user service as a [`domain::UserDirectory`], the notice each sign-in becomes,
//! the service's own credentials). [`Service`] wires them onto the platform.

pub mod config;
pub mod domain;
pub mod grpc;
pub mod peers;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use trellis_platform::auth::{Access, AccessPolicy, RateClass};
use trellis_platform::metrics::prometheus::IntCounter;
use trellis_platform::{BuildError, Context, ServiceInfo};
use trellis_proto::auth_v1::auth_internal_service_server::AuthInternalServiceServer;
use trellis_proto::auth_v1::auth_service_server::AuthServiceServer;

use domain::keys::{KeyRing, RotationPolicy};
use domain::throttle::LoginThrottle;
use domain::{Auth, TokenIssuer, TokenSettings};
use grpc::{AuthHandlers, LocalKeys};
use peers::{LocalCredentials, UserServiceDirectory};
use storage::SeaOrmAuthRepository;

/// How often signing keys are reloaded, rotated and retired.
const KEY_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

/// The auth service, as the platform runs it: `trellis_platform::run::<Service>()`.
#[derive(Debug)]
pub struct Service;

/// Every setting of the auth service: the platform's sections (default port 50052,
/// database `sqlite://.data/auth.db?mode=rwc`, peers `user` and `notification`) and
/// [`config::Settings`], from `TRELLIS_AUTH__*`.
pub type Config = trellis_platform::Config<Service>;

impl trellis_platform::Service for Service {
    const INFO: ServiceInfo = ServiceInfo {
        name: "auth",
        env_prefix: "TRELLIS_AUTH",
    };
    const DEFAULT_PORT: u16 = 50052;
    /// `user` (credential checks, roles) and `notification` (sign-in notices, through
    /// the outbox). Tokens sent to `AuthInternalService` are verified against the local
    /// key ring ([`LocalKeys`]), so auth needs no peer entry for itself.
    const DEFAULT_PEERS: &'static [(&'static str, &'static str)] = &[
        ("user", "http://127.0.0.1:50051"),
        ("notification", "http://127.0.0.1:50053"),
    ];
    type Settings = config::Settings;
    type Migrator = storage::migration::Migrator;

    /// Every AuthService method is public: each authenticates by what it carries. The
    /// internal `RevokeUserTokens` is for the user service only. Rate classes, per
    /// client address: a password or client-secret check is a sign-in, the published
    /// keys a cheap read, refresh and logout writes ([`RateClass::WRITE`]); the internal
    /// service is not limited.
    fn access_policy() -> AccessPolicy {
        AccessPolicy::new(Access::Public)
            .rate("trellis.auth.v1.AuthService/Login", RateClass::SIGN_IN)
            .rate(
                "trellis.auth.v1.AuthService/IssueServiceToken",
                RateClass::SIGN_IN,
            )
            .rate(
                "trellis.auth.v1.AuthService/ListSigningKeys",
                RateClass::READ,
            )
            .rate("trellis.auth.v1.AuthService/RefreshToken", RateClass::WRITE)
            .rate("trellis.auth.v1.AuthService/Logout", RateClass::WRITE)
            .internal(trellis_proto::paths::REVOKE_USER_TOKENS, &["user"])
            // Any other internal method admits no one until it declares its callers.
            .internal("trellis.auth.v1.AuthInternalService", &[])
    }

    /// Makes sure a signing key exists, then adds the handlers and key maintenance.
    async fn build(ctx: &mut Context<Self>) -> Result<(), BuildError> {
        let settings = ctx.settings().clone();
        let tokens = &settings.tokens;
        let token_settings = TokenSettings {
            issuer: tokens.issuer.clone(),
            audience: tokens.audience.clone(),
            access_ttl: Duration::from_secs(tokens.access_token_ttl_secs),
            service_ttl: Duration::from_secs(tokens.service_token_ttl_secs),
            refresh_ttl: Duration::from_secs(tokens.refresh_token_ttl_secs),
        };
        let longest_token = token_settings.access_ttl.max(token_settings.service_ttl);
        let policy = RotationPolicy {
            rotation_interval: seconds(tokens.key_rotation_interval_secs),
            publish_lead: seconds(tokens.key_publish_lead_secs),
            retain_after_superseded: chrono::Duration::from_std(longest_token).unwrap_or_default()
                + chrono::Duration::seconds(30)
                + chrono::Duration::from_std(KEY_MAINTENANCE_INTERVAL).unwrap_or_default(),
        };

        let keys = KeyRing::default();
        let issuer = TokenIssuer::new(keys.clone(), token_settings);
        ctx.use_credentials(Arc::new(LocalCredentials::new(
            issuer.clone(),
            <Self as trellis_platform::Service>::INFO.name,
            ctx.tls().cloned(),
        )));
        ctx.use_key_source(Arc::new(LocalKeys::new(keys.clone())));
        let repository =
            SeaOrmAuthRepository::new(ctx.db().clone(), peers::sign_in_events(ctx.outbox()));
        maintain_keys(&repository, &policy, &keys)
            .await
            .context("signing keys")?;

        let users = UserServiceDirectory::new(ctx.peer(peers::USER_PEER)?);
        let throttle = LoginThrottle::new(
            settings.login_throttle.max_failures_per_account_per_hour,
            settings.login_throttle.max_failures_per_source_per_hour,
        );
        let auth = Arc::new(Auth::new(
            repository.clone(),
            users,
            issuer,
            throttle,
            settings.service_clients,
        ));
        let throttled = ctx.metrics().register(IntCounter::new(
            "trellis_auth_login_throttled_total",
            "Sign-ins refused by the login throttle (too many failures for the account or source).",
        )?)?;
        let handlers = AuthHandlers::new(auth)
            .count_throttled(throttled)
            .requiring_certificates(ctx.tls().map(|tls| tls.current().identity().clone()));
        ctx.add_service(AuthServiceServer::new(handlers.clone()));
        ctx.add_service(AuthInternalServiceServer::new(handlers));
        ctx.spawn(move |stop| run_key_maintenance(repository, policy, keys, stop));
        Ok(())
    }
}

fn seconds(secs: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000))
}

/// Loads the keys, creates or retires as the policy says, and refreshes the ring.
async fn maintain_keys(
    repository: &SeaOrmAuthRepository,
    policy: &RotationPolicy,
    ring: &KeyRing,
) -> anyhow::Result<()> {
    let keys = repository.load_keys().await?;
    let plan = policy.plan(&keys, chrono::Utc::now())?;
    if !plan.create.is_empty() || !plan.retire.is_empty() {
        repository.apply_key_plan(plan).await?;
    }
    ring.replace(repository.load_keys().await?);
    Ok(())
}

async fn run_key_maintenance(
    repository: SeaOrmAuthRepository,
    policy: RotationPolicy,
    ring: KeyRing,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(KEY_MAINTENANCE_INTERVAL) => {}
        }
        if let Err(err) = maintain_keys(&repository, &policy, &ring).await {
            tracing::warn!(error = %format!("{err:#}"), "signing-key maintenance failed; keeping current keys");
        }
    }
}
