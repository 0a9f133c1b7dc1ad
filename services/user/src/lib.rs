//! Trellis's user service: user accounts and credentials behind `trellis.user.v1`.
//!
//! Layers, each testable without the one above: [`grpc`] (wire types and statuses),
//! [`domain`] (rules, no gRPC, no SQL), [`storage`] (sea-orm). [`build`] wires them onto the
//! platform's server.

pub mod config;
pub mod domain;
pub mod grpc;
pub mod storage;

use std::sync::Arc;

use anyhow::Context as _;
use trellis_platform::app::App;
use trellis_platform::auth::{Access, AccessPolicy, AuthLayer, KeySource};
use trellis_platform::outbox::Dispatcher;
use trellis_platform::pagination::PageTokenCodec;
use trellis_platform::peer::Peers;
use trellis_platform::server::Server;
use trellis_proto::user_v1::user_internal_service_server::UserInternalServiceServer;
use trellis_proto::user_v1::user_service_server::UserServiceServer;

pub use config::{Config, SERVICE};

use domain::{PasswordHasher, Users};
use grpc::UserHandlers;
use storage::SeaOrmUserRepository;

/// Who may call what, in one place: sign-up is public, the internal service needs a
/// service identity, everything else a valid token (handlers then check self/admin).
pub fn access_policy() -> AccessPolicy {
    AccessPolicy::new(Access::Authenticated)
        .method("trellis.user.v1.UserService/CreateUser", Access::Public)
        .service("trellis.user.v1.UserInternalService", Access::Internal)
}

/// Opens and migrates the database, assembles the handlers, binds the listener and
/// starts the outbox dispatcher.
///
/// # Errors
/// When the database cannot be opened or migrated, the hasher's cost is refused, or the
/// address cannot be bound.
pub async fn build(config: Config) -> anyhow::Result<App> {
    build_with_keys(config, None).await
}

/// [`build`], verifying tokens against `keys` instead of the auth service's published
/// keys when given (for tests).
///
/// # Errors
/// As [`build`].
pub async fn build_with_keys(
    config: Config,
    keys: Option<Arc<dyn KeySource>>,
) -> anyhow::Result<App> {
    let peers = Peers::new(config.peers());
    let Config {
        server,
        database,
        password_hashing,
        page_token_secret,
        auth,
        outbox,
        ..
    } = config;
    let db = trellis_platform::data::connect::<storage::migration::Migrator>(&database)
        .await
        .context("database")?;
    if auth.client_secret.is_none() {
        tracing::warn!(
            "auth.client_secret is not set: welcome notifications wait in the outbox until it is"
        );
    }
    let (verifier, peers) = trellis_platform::auth::client_side(&SERVICE, &auth, peers, keys)?;
    let dispatcher = Dispatcher::new(db.clone(), peers, outbox);
    let hasher = PasswordHasher::new(password_hashing)?;
    let page_tokens = page_token_secret
        .as_ref()
        .map_or_else(PageTokenCodec::random, PageTokenCodec::new);
    let repository = SeaOrmUserRepository::new(db.clone(), dispatcher.waker());
    let handlers = UserHandlers::new(Users::new(repository, hasher), page_tokens);
    let limit = server.max_message_bytes;
    let builder = Server::builder(server).authenticate(AuthLayer::new(verifier, access_policy()));
    let shutdown = builder.shutdown_token();
    let server = builder
        .add_service(
            UserServiceServer::new(handlers.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            UserInternalServiceServer::new(handlers)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .file_descriptor_set(trellis_proto::FILE_DESCRIPTOR_SET)
        .database_readiness(db.clone())
        .bind()
        .await?;
    let background = vec![tokio::spawn(dispatcher.run(shutdown))];
    Ok(App::new(server, db, background))
}
