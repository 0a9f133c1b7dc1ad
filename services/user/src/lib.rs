//! Trellis's user service: user accounts and credentials behind `trellis.user.v1`.
//!
//! Layers, each testable without the one above: [`grpc`] (wire types and statuses),
//! [`domain`] (rules, no gRPC, no SQL), [`storage`] (sea-orm). [`Application`] wires them
//! onto the platform's server.

pub mod config;
pub mod domain;
pub mod grpc;
pub mod storage;

use std::net::SocketAddr;

use anyhow::Context as _;
use sea_orm::DatabaseConnection;
use trellis_platform::pagination::PageTokenCodec;
use trellis_platform::server::{BoundServer, Server};
use trellis_proto::user_v1::user_internal_service_server::UserInternalServiceServer;
use trellis_proto::user_v1::user_service_server::UserServiceServer;

pub use config::{Config, SERVICE};

use domain::{PasswordHasher, Users};
use grpc::UserHandlers;
use storage::SeaOrmUserRepository;

/// The user service, built and bound, ready to serve.
#[derive(Debug)]
pub struct Application {
    server: BoundServer,
    db: DatabaseConnection,
}

impl Application {
    /// Opens and migrates the database, assembles the handlers and binds the listener.
    ///
    /// # Errors
    /// When the database cannot be opened or migrated, the hasher's cost is refused, or
    /// the address cannot be bound.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let Config {
            server,
            database,
            password_hashing,
            page_token_secret,
            telemetry: _,
        } = config;
        let db = trellis_platform::data::connect::<storage::migration::Migrator>(&database)
            .await
            .context("database")?;
        let hasher = PasswordHasher::new(password_hashing)?;
        let page_tokens = page_token_secret
            .as_ref()
            .map_or_else(PageTokenCodec::random, PageTokenCodec::new);
        let handlers = UserHandlers::new(
            Users::new(SeaOrmUserRepository::new(db.clone()), hasher),
            page_tokens,
        );
        let limit = server.max_message_bytes;
        let probe_db = db.clone();
        let server = Server::builder(server)
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
            .readiness(move || {
                let db = probe_db.clone();
                async move { db.ping().await.is_ok() }
            })
            .bind()
            .await?;
        Ok(Self { server, db })
    }

    /// The bound address (the real port when configured with 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until SIGINT/SIGTERM, then drains and closes the database.
    ///
    /// # Errors
    /// When serving fails.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(trellis_platform::server::shutdown_signal())
            .await
    }

    /// Serves until `shutdown` completes, then drains and closes the database.
    ///
    /// # Errors
    /// When serving fails.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        self.server.run_until(shutdown).await?;
        self.db.close().await.context("closing the database")?;
        Ok(())
    }
}
