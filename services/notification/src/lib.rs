//! Trellis's notification service: stores notifications sent by other services
//! (idempotently) and delivers them live to every open stream of their user.
//!
//! Layers: [`grpc`] (wire types, streams, statuses), [`domain`] (rules and fan-out),
//! [`storage`] (sea-orm). [`build`] wires them onto the platform.

pub mod config;
pub mod domain;
pub mod grpc;
pub mod storage;

use std::sync::Arc;

use anyhow::Context as _;
use trellis_platform::app::App;
use trellis_platform::auth::{Access, AccessPolicy, AuthLayer, KeySource};
use trellis_platform::pagination::PageTokenCodec;
use trellis_platform::peer::Peers;
use trellis_platform::server::Server;
use trellis_proto::notification_v1::notification_internal_service_server::NotificationInternalServiceServer;
use trellis_proto::notification_v1::notification_service_server::NotificationServiceServer;

pub use config::{Config, SERVICE};

use domain::Notifications;
use domain::hub::Hub;
use grpc::NotificationHandlers;
use storage::SeaOrmNotificationRepository;

/// Who may call what: end users the public service, services the internal one.
pub fn access_policy() -> AccessPolicy {
    AccessPolicy::new(Access::Authenticated).service(
        "trellis.notification.v1.NotificationInternalService",
        Access::Internal,
    )
}

/// Opens and migrates the database, assembles the handlers and binds the listener.
///
/// # Errors
/// When the database or the listener cannot be set up.
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
        auth,
        page_token_secret,
        ..
    } = config;
    let db = trellis_platform::data::connect::<storage::migration::Migrator>(&database)
        .await
        .context("database")?;
    let (verifier, _peers) = trellis_platform::auth::client_side(&SERVICE, &auth, peers, keys)?;
    let page_tokens = page_token_secret
        .as_ref()
        .map_or_else(PageTokenCodec::random, PageTokenCodec::new);
    let limit = server.max_message_bytes;
    let builder = Server::builder(server).authenticate(AuthLayer::new(verifier, access_policy()));
    let handlers = NotificationHandlers::new(
        Notifications::new(
            SeaOrmNotificationRepository::new(db.clone()),
            Hub::default(),
        ),
        page_tokens,
        builder.shutdown_token(),
    );
    let server = builder
        .add_service(
            NotificationServiceServer::new(handlers.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            NotificationInternalServiceServer::new(handlers)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .file_descriptor_set(trellis_proto::FILE_DESCRIPTOR_SET)
        .database_readiness(db.clone())
        .bind()
        .await?;
    Ok(App::new(server, db, Vec::new()))
}
