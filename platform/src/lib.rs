//! The Trellis platform: everything a production gRPC service needs besides its business
//! logic — configuration, the server (health, reflection, limits, per-RPC tracing,
//! graceful shutdown), telemetry, error statuses, pagination tokens and data access.
//!
//! A service is a `main.rs` that calls [`run`] with its config type and a closure that
//! builds and serves its [`server::Server`]:
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     trellis_platform::run::<Config, _, _, _>(&SERVICE, |config| async move {
//!         my_service::build(config).await?.run_until_stopped().await
//!     })
//! }
//! ```

pub mod app;
pub mod auth;
pub mod config;
pub mod data;
pub mod outbox;
pub mod pagination;
pub mod peer;
pub mod runtime;
pub mod server;
pub mod status;
pub mod telemetry;

pub use config::{ConfigError, ServiceConfig, ServiceInfo};
pub use runtime::run;
