//! Trellis's auth service: sign-in against the user service, Ed25519 JWT access tokens,
//! rotating refresh tokens with reuse detection, published signing keys, and service
//! identities by OAuth 2.0 client credentials.
//!
//! Layers: [`grpc`] (wire types, statuses, the user-service adapter), [`domain`] (rules,
//! no gRPC, no SQL), [`storage`] (sea-orm). [`build`] wires them onto the platform.

pub mod config;
pub mod domain;
pub mod grpc;
pub mod storage;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use trellis_platform::app::App;
use trellis_platform::outbox::Dispatcher;
use trellis_platform::peer::{CredentialSource, Peers};
use trellis_platform::server::Server;
use trellis_proto::auth_v1::auth_service_server::AuthServiceServer;

pub use config::{Config, SERVICE};

use domain::keys::{KeyRing, RotationPolicy};
use domain::throttle::LoginThrottle;
use domain::{Auth, TokenIssuer, TokenSettings};
use grpc::{AuthHandlers, UserServiceChecker};
use storage::SeaOrmAuthRepository;

/// How often signing keys are reloaded, rotated and retired.
const KEY_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

/// The auth service's own credentials for calling peers: it signs its service tokens
/// itself instead of asking itself over the network.
struct LocalCredentials {
    issuer: TokenIssuer,
}

impl CredentialSource for LocalCredentials {
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<String, Status>> + Send + '_>> {
        Box::pin(async move {
            self.issuer
                .sign_service(SERVICE.name)
                .map(|(token, _)| token)
                .map_err(|err| Status::internal(err.to_string()))
        })
    }
}

/// Opens and migrates the database, makes sure a signing key exists, assembles the
/// handlers, binds the listener and starts the outbox dispatcher and key maintenance.
///
/// # Errors
/// When the database, the keys or the listener cannot be set up.
pub async fn build(config: Config) -> anyhow::Result<App> {
    {
        let peers_config = config.peers();
        let admin_emails = config.admin_email_list();
        let Config {
            server,
            database,
            tokens,
            login_throttle,
            service_clients,
            outbox,
            ..
        } = config;
        let db = trellis_platform::data::connect::<storage::migration::Migrator>(&database)
            .await
            .context("database")?;
        let settings = TokenSettings {
            issuer: tokens.issuer.clone(),
            audience: tokens.audience.clone(),
            access_ttl: Duration::from_secs(tokens.access_token_ttl_secs),
            service_ttl: Duration::from_secs(tokens.service_token_ttl_secs),
            refresh_ttl: Duration::from_secs(tokens.refresh_token_ttl_secs),
        };
        let longest_token = settings.access_ttl.max(settings.service_ttl);
        let policy = RotationPolicy {
            rotation_interval: seconds(tokens.key_rotation_interval_secs),
            publish_lead: seconds(tokens.key_publish_lead_secs),
            retain_after_superseded: chrono::Duration::from_std(longest_token).unwrap_or_default()
                + chrono::Duration::seconds(30)
                + chrono::Duration::from_std(KEY_MAINTENANCE_INTERVAL).unwrap_or_default(),
        };

        let keys = KeyRing::default();
        let issuer = TokenIssuer::new(keys.clone(), settings);
        let peers = Peers::new(peers_config).with_credentials(Arc::new(LocalCredentials {
            issuer: issuer.clone(),
        }));
        let dispatcher = Dispatcher::new(db.clone(), peers.clone(), outbox);
        let repository = SeaOrmAuthRepository::new(db.clone(), dispatcher.waker());
        maintain_keys(&repository, &policy, &keys)
            .await
            .context("signing keys")?;

        let checker = UserServiceChecker::new(peers.channel("user")?);
        let throttle = LoginThrottle::new(
            login_throttle.max_failures_per_account_per_hour,
            login_throttle.max_failures_per_source_per_hour,
        );
        let auth = Arc::new(Auth::new(
            repository.clone(),
            checker,
            issuer,
            throttle,
            service_clients,
            admin_emails,
        ));
        let limit = server.max_message_bytes;
        // Every AuthService method is public: each authenticates by what it carries.
        let builder = Server::builder(server)
            .add_service(
                AuthServiceServer::new(AuthHandlers::new(auth))
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            )
            .file_descriptor_set(trellis_proto::FILE_DESCRIPTOR_SET)
            .database_readiness(db.clone());
        let shutdown = builder.shutdown_token();
        let server = builder.bind().await?;

        let background = vec![
            tokio::spawn(dispatcher.run(shutdown.clone())),
            tokio::spawn(run_key_maintenance(repository, policy, keys, shutdown)),
        ];
        Ok(App::new(server, db, background))
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
